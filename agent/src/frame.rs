//! What fits in one frame to the relay: the frame limit the session learns from each welcome
//! and the executor and the updater size command output by, what the session sends in place of
//! an outbox item too large for it (a `result_too_large` result, a trimmed event or report),
//! and the trimming of log lines to a byte budget.

use flotilla_shared::command::error_codes::RESULT_TOO_LARGE;
use flotilla_shared::command::{CommandResult, ErrorInfo, ResultStatus};
use flotilla_shared::heartbeat::AgentEvent;
use flotilla_shared::protocol::{AgentFrame, OutboxItem};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// The smallest frame limit a relay may announce (its own configuration minimum); a smaller
/// announcement is not believed.
const MIN_RELAY_FRAME_BYTES: usize = 4096;
/// Event fields are cut to these lengths when an event does not fit in a frame.
const TRIMMED_MESSAGE_BYTES: usize = 1024;
const TRIMMED_FIELD_BYTES: usize = 256;
const MINIMAL_FIELD_BYTES: usize = 128;

/// The largest frame the agent may send on the current connection: its own `max_frame_bytes`,
/// lowered to the relay's when the welcome announces a smaller one. Shared with the executor,
/// which sizes command output by it.
pub type FrameLimit = Arc<AtomicUsize>;

/// The largest frame to send: the agent's own limit, or the relay's when that is smaller.
pub fn effective_frame_limit(configured: usize, relay: Option<usize>) -> usize {
    match relay {
        Some(r) => configured.min(r.max(MIN_RELAY_FRAME_BYTES)),
        None => configured,
    }
}

/// What to send in place of an outbox item whose frame (`size` bytes) exceeds `limit`:
/// - a result becomes a `failed` result with code `result_too_large` for the same command;
/// - an event keeps its kind, time and container but its message and attributes are cut
///   (marked with the attribute `truncated=true`) until the frame fits.
pub fn fit_outbox_item(seq: u64, item: OutboxItem, size: usize, limit: usize) -> OutboxItem {
    let fits = |item: &OutboxItem| {
        encode(&AgentFrame::Outbox {
            seq,
            item: item.clone(),
        })
        .len()
            <= limit
    };
    match item {
        OutboxItem::Result(r) => {
            // Small whatever the output was: the relay's ids and the message are short.
            OutboxItem::Result(CommandResult {
                command_id: r.command_id,
                status: ResultStatus::Failed,
                output: None,
                error: Some(ErrorInfo {
                    code: RESULT_TOO_LARGE.into(),
                    message: format!(
                        "the result ({size} bytes) does not fit in the relay's frame limit of \
                         {limit} bytes"
                    ),
                }),
                started_at: r.started_at,
                finished_at: r.finished_at,
            })
        }
        OutboxItem::BackupReport(mut r) => {
            // Errors (dump tool output) are what makes a report large: cut them first, then
            // drop databases from the end; what remains is still a true record of the run.
            for d in &mut r.databases {
                if let Some(e) = &mut d.error {
                    truncate_utf8(e, TRIMMED_FIELD_BYTES);
                }
            }
            while !fits(&OutboxItem::BackupReport(r.clone())) && r.databases.pop().is_some() {}
            OutboxItem::BackupReport(r)
        }
        OutboxItem::Event(mut e) => {
            e.attributes.insert("truncated".into(), "true".into());
            truncate_utf8(&mut e.message, TRIMMED_MESSAGE_BYTES);
            for v in e.attributes.values_mut() {
                truncate_utf8(v, TRIMMED_FIELD_BYTES);
            }
            for f in [&mut e.container_id, &mut e.container_name]
                .into_iter()
                .flatten()
            {
                truncate_utf8(f, TRIMMED_FIELD_BYTES);
            }
            // Then the largest attributes go, one by one.
            while !fits(&OutboxItem::Event(e.clone())) {
                let largest = e
                    .attributes
                    .iter()
                    .filter(|(k, _)| k.as_str() != "truncated")
                    .max_by_key(|(k, v)| k.len() + v.len())
                    .map(|(k, _)| k.clone());
                match largest {
                    Some(k) => {
                        e.attributes.remove(&k);
                    }
                    None => break,
                }
            }
            if !fits(&OutboxItem::Event(e.clone())) {
                truncate_utf8(&mut e.message, MINIMAL_FIELD_BYTES);
                for f in [&mut e.container_id, &mut e.container_name]
                    .into_iter()
                    .flatten()
                {
                    truncate_utf8(f, MINIMAL_FIELD_BYTES);
                }
            }
            if !fits(&OutboxItem::Event(e.clone())) {
                e = AgentEvent {
                    kind: e.kind,
                    at: e.at,
                    container_id: None,
                    container_name: None,
                    message: "event too large to send".into(),
                    attributes: [("truncated".to_string(), "true".to_string())].into(),
                };
            }
            OutboxItem::Event(e)
        }
    }
}

/// Cuts `s` to at most `max` bytes (on a character boundary), ending it with "..." when cut.
fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str("...");
}

/// The text of an agent frame.
pub fn encode(frame: &AgentFrame) -> String {
    serde_json::to_string(frame).expect("agent frames always encode")
}

/// Drops the oldest lines until the lines' JSON encoding fits in `budget` bytes.
pub fn keep_newest_lines(mut lines: Vec<String>, budget: usize) -> (Vec<String>, bool) {
    let mut used = 2; // the brackets
    let mut keep_from = lines.len();
    for (i, line) in lines.iter().enumerate().rev() {
        let cost = serde_json::to_string(line)
            .map(|s| s.len())
            .unwrap_or(line.len())
            + 1;
        if used + cost > budget {
            break;
        }
        used += cost;
        keep_from = i;
    }
    let truncated = keep_from > 0;
    if truncated {
        lines.drain(..keep_from);
    }
    (lines, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_keep_the_newest_lines_within_budget() {
        let lines: Vec<String> = (0..100).map(|i| format!("line {i:03}")).collect();
        let (all, truncated) = keep_newest_lines(lines.clone(), 1_000_000);
        assert_eq!(all.len(), 100);
        assert!(!truncated);
        let (some, truncated) = keep_newest_lines(lines.clone(), 100);
        assert!(truncated);
        assert_eq!(some.last().unwrap(), "line 099");
        assert!(serde_json::to_string(&some).unwrap().len() <= 100);
        assert!(some.len() < 100 && !some.is_empty());
        let (none, truncated) = keep_newest_lines(lines, 0);
        assert!(none.is_empty() && truncated);
        let (empty, truncated) = keep_newest_lines(Vec::new(), 0);
        assert!(empty.is_empty() && !truncated);
    }

    #[test]
    fn frame_limit_is_the_smaller_one() {
        assert_eq!(effective_frame_limit(1 << 20, None), 1 << 20);
        assert_eq!(effective_frame_limit(1 << 20, Some(65_536)), 65_536);
        assert_eq!(effective_frame_limit(65_536, Some(1 << 20)), 65_536);
        // An absurd announcement is not believed below the relay's own minimum.
        assert_eq!(effective_frame_limit(1 << 20, Some(10)), 4096);
    }

    fn frame_len(seq: u64, item: &OutboxItem) -> usize {
        encode(&AgentFrame::Outbox {
            seq,
            item: item.clone(),
        })
        .len()
    }

    #[test]
    fn an_oversized_result_becomes_result_too_large() {
        let started = chrono::Utc::now();
        let big = OutboxItem::Result(CommandResult {
            command_id: "cmd_big".into(),
            status: ResultStatus::Succeeded,
            output: Some(serde_json::json!({ "lines": vec!["x".repeat(1000); 100] })),
            error: None,
            started_at: started,
            finished_at: started,
        });
        let size = frame_len(7, &big);
        let limit = 16 * 1024;
        assert!(size > limit);
        let small = fit_outbox_item(7, big, size, limit);
        assert!(frame_len(7, &small) <= limit);
        match small {
            OutboxItem::Result(r) => {
                assert_eq!(r.command_id, "cmd_big");
                assert_eq!(r.status, ResultStatus::Failed);
                assert!(r.output.is_none());
                assert_eq!(r.started_at, started);
                let e = r.error.unwrap();
                assert_eq!(e.code, "result_too_large");
                assert!(e.message.contains(&size.to_string()), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_oversized_event_is_trimmed_to_fit() {
        let at = chrono::Utc::now();
        let mut attributes = std::collections::BTreeMap::new();
        attributes.insert("code".to_string(), "malformed_command".to_string());
        attributes.insert("reason".to_string(), "é".repeat(50_000));
        attributes.insert("command_id".to_string(), "cmd_1".to_string());
        let event = AgentEvent {
            kind: flotilla_shared::heartbeat::EventKind::CommandRejected,
            at,
            container_id: None,
            container_name: Some("web".into()),
            message: "m".repeat(100_000),
            attributes,
        };
        let item = OutboxItem::Event(event);
        let size = frame_len(3, &item);
        for limit in [16 * 1024, 4096] {
            let small = fit_outbox_item(3, item.clone(), size, limit);
            assert!(frame_len(3, &small) <= limit, "limit {limit}");
            match small {
                OutboxItem::Event(e) => {
                    assert_eq!(
                        e.kind,
                        flotilla_shared::heartbeat::EventKind::CommandRejected
                    );
                    assert_eq!(e.at, at);
                    assert_eq!(e.container_name.as_deref(), Some("web"));
                    assert_eq!(e.attributes["truncated"], "true");
                    assert_eq!(e.attributes["command_id"], "cmd_1");
                    assert_eq!(e.attributes["code"], "malformed_command");
                    assert!(e.attributes["reason"].ends_with("..."));
                    assert!(e.message.len() <= TRIMMED_MESSAGE_BYTES);
                    assert!(e.message.starts_with("mmm"));
                }
                other => panic!("{other:?}"),
            }
        }
        // Far too many attributes: the largest go until it fits.
        let mut many = std::collections::BTreeMap::new();
        for i in 0..200 {
            many.insert(format!("attr{i:03}"), "v".repeat(100 + i));
        }
        let item = OutboxItem::Event(AgentEvent {
            kind: flotilla_shared::heartbeat::EventKind::ContainerDied,
            at,
            container_id: None,
            container_name: None,
            message: "died".into(),
            attributes: many,
        });
        let size = frame_len(4, &item);
        let small = fit_outbox_item(4, item, size, 4096);
        assert!(frame_len(4, &small) <= 4096);
        match small {
            OutboxItem::Event(e) => {
                assert_eq!(e.message, "died");
                assert!(e.attributes.contains_key("attr000"), "smallest kept");
                assert!(!e.attributes.contains_key("attr199"), "largest dropped");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncation_respects_characters() {
        let mut s = "ééééé".to_string(); // 10 bytes
        truncate_utf8(&mut s, 8);
        assert_eq!(s, "éé...");
        let mut short = "abc".to_string();
        truncate_utf8(&mut short, 8);
        assert_eq!(short, "abc");
    }
}
