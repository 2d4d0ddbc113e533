//! Tests of the agent database, table family by table family.

use super::*;
use chrono::Duration as ChronoDuration;
use flotilla_shared::command::{CommandResult, ResultStatus};
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::protocol::OutboxItem;
use rusqlite::params;

/// A fresh state directory under the system temp dir (removed by the caller if it cares).
pub(crate) fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(flotilla_shared::ids::new_id("flotilla-agent-test"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn result(id: &str) -> CommandResult {
    CommandResult {
        command_id: id.into(),
        status: ResultStatus::Succeeded,
        output: Some(serde_json::json!({"pong": true})),
        error: None,
        started_at: Utc::now(),
        finished_at: Utc::now(),
    }
}

fn event(msg: &str) -> OutboxItem {
    OutboxItem::Event(AgentEvent {
        kind: EventKind::AgentStarted,
        at: Utc::now(),
        container_id: None,
        container_name: None,
        message: msg.into(),
        attributes: Default::default(),
    })
}

#[tokio::test]
async fn file_is_private_and_reopens() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    drop(state);
    State::open(&dir).await.unwrap();
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn identity_is_never_overwritten() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    assert!(state.identity().await.unwrap().is_none());
    let id = Identity {
        agent_id: "ag_1".into(),
        name: "host".into(),
        pkcs8: vec![1, 2, 3],
        relay_public_key: "key".into(),
        relay_url: "http://127.0.0.1:1".into(),
        enrolled_at: Utc::now(),
    };
    state.save_identity(id.clone()).await.unwrap();
    let back = state.identity().await.unwrap().unwrap();
    assert_eq!(back.agent_id, "ag_1");
    assert_eq!(back.pkcs8, vec![1, 2, 3]);
    let e = state.save_identity(id).await.unwrap_err().to_string();
    assert!(e.contains("ag_1") && e.contains("refusing"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn the_identity_leaves_its_id_in_the_agent_id_file_for_the_updater() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let id = Identity {
        agent_id: "ag_1".into(),
        name: "host".into(),
        pkcs8: vec![1, 2, 3],
        relay_public_key: "key".into(),
        relay_url: "http://127.0.0.1:1".into(),
        enrolled_at: Utc::now(),
    };
    state.save_identity(id.clone()).await.unwrap();
    assert_eq!(crate::agent_id::read_agent_id(&dir).unwrap(), "ag_1");
    // A refused second identity leaves the file alone.
    let other = Identity {
        agent_id: "ag_2".into(),
        ..id
    };
    state.save_identity(other).await.unwrap_err();
    assert_eq!(crate::agent_id::read_agent_id(&dir).unwrap(), "ag_1");
    // An install enrolled before the file existed gets it at start.
    std::fs::remove_file(crate::agent_id::agent_id_path(&dir)).unwrap();
    assert!(state.ensure_agent_id_file("ag_1").await.unwrap());
    assert!(!state.ensure_agent_id_file("ag_1").await.unwrap());
    assert_eq!(crate::agent_id::read_agent_id(&dir).unwrap(), "ag_1");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn outbox_round_trip_and_cumulative_ack() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let seqs = state
        .append_outbox(vec![event("a"), event("b"), event("c")])
        .await
        .unwrap();
    assert_eq!(seqs.len(), 3);
    assert!(seqs[0] < seqs[1] && seqs[1] < seqs[2]);
    let items = state.outbox_after(0, 10).await.unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[1].1, event_message(&items[1].1, "b"));
    let after_first = state.outbox_after(seqs[0], 10).await.unwrap();
    assert_eq!(after_first.len(), 2);
    assert_eq!(state.outbox_after(0, 1).await.unwrap().len(), 1);
    assert_eq!(state.ack_outbox(seqs[1]).await.unwrap(), 2);
    let rest = state.outbox_after(0, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0, seqs[2]);
    // Seqs keep growing after deletes (AUTOINCREMENT), so the relay never sees one reused.
    state.ack_outbox(seqs[2]).await.unwrap();
    let next = state.append_outbox(vec![event("d")]).await.unwrap();
    assert!(next[0] > seqs[2]);
    std::fs::remove_dir_all(dir).ok();
}

fn event_message(item: &OutboxItem, expected: &str) -> OutboxItem {
    match item {
        OutboxItem::Event(e) if e.message == expected => item.clone(),
        other => panic!("unexpected item {other:?}"),
    }
}

#[tokio::test]
async fn unfinished_updates_survive_pruning_and_always_finish() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let long_ago = Utc::now() - ChronoDuration::days(10);
    for id in ["cmd_upd", "cmd_plain"] {
        state.journal_begin(id, long_ago, long_ago).await.unwrap();
    }
    state
        .save_update("cmd_upd", "health_gate", "{\"name\":\"web\"}".into())
        .await
        .unwrap();
    // The unfinished update is not "interrupted": it converges from its own journal.
    assert_eq!(state.journal_running().await.unwrap(), vec!["cmd_plain"]);
    // Pruning keeps the command of an unfinished update.
    assert_eq!(state.prune_journal(Utc::now()).await.unwrap(), 1);
    assert!(state.journal_get("cmd_upd").await.unwrap().is_some());
    assert_eq!(state.unfinished_updates().await.unwrap().len(), 1);
    // Finishing works even when the journal row is gone, and is final.
    state
        .call(|c| Ok(c.execute("DELETE FROM journal WHERE id = 'cmd_upd'", [])?))
        .await
        .unwrap();
    state
        .finish_update(result("cmd_upd"), "{}".into())
        .await
        .unwrap();
    assert!(state.unfinished_updates().await.unwrap().is_empty());
    assert!(matches!(
        state.journal_get("cmd_upd").await.unwrap(),
        Some(JournalEntry::Done(_))
    ));
    assert_eq!(state.outbox_after(0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn journal_round_trip() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let now = Utc::now();
    let exp = now + ChronoDuration::minutes(10);
    assert_eq!(
        state.journal_begin("cmd_1", now, exp).await.unwrap(),
        JournalBegin::New
    );
    assert_eq!(
        state.journal_begin("cmd_1", now, exp).await.unwrap(),
        JournalBegin::Existing(JournalEntry::Running)
    );
    assert_eq!(state.journal_running().await.unwrap(), vec!["cmd_1"]);
    let r = result("cmd_1");
    let seq = state.finish_command(r.clone()).await.unwrap();
    assert_eq!(
        state.journal_get("cmd_1").await.unwrap(),
        Some(JournalEntry::Done(Box::new(r.clone())))
    );
    let items = state.outbox_after(0, 10).await.unwrap();
    assert_eq!(items, vec![(seq, OutboxItem::Result(r))]);
    assert!(state.finish_command(result("cmd_unknown")).await.is_err());
    // The failed finish must not have left an outbox row behind.
    assert_eq!(state.outbox_len().await.unwrap(), 1);
    std::fs::remove_dir_all(dir).ok();
}

fn dropped_count(item: &OutboxItem) -> Option<u64> {
    match item {
        OutboxItem::Event(e) => e
            .attributes
            .get(DROPPED_EVENTS_ATTRIBUTE)
            .map(|n| n.parse().unwrap()),
        OutboxItem::Result(_) | OutboxItem::BackupReport(_) => None,
    }
}

#[tokio::test]
async fn events_are_capped_results_never_dropped() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    state.set_max_outbox_events(5);
    let now = Utc::now();
    state
        .journal_begin("cmd_1", now, now + ChronoDuration::minutes(5))
        .await
        .unwrap();
    state.finish_command(result("cmd_1")).await.unwrap();
    for i in 0..8 {
        state
            .append_outbox(vec![event(&format!("e{i}"))])
            .await
            .unwrap();
    }
    let items = state.outbox_after(0, 100).await.unwrap();
    let messages: Vec<String> = items
        .iter()
        .filter_map(|(_, i)| match i {
            OutboxItem::Event(e) if dropped_count(i).is_none() => Some(e.message.clone()),
            _ => None,
        })
        .collect();
    // 4 newest events + one notice = 5 events; the result stays.
    assert_eq!(messages, vec!["e4", "e5", "e6", "e7"], "{items:?}");
    let notices: Vec<u64> = items.iter().filter_map(|(_, i)| dropped_count(i)).collect();
    assert_eq!(notices, vec![4]);
    assert!(items
        .iter()
        .any(|(_, i)| matches!(i, OutboxItem::Result(r) if r.command_id == "cmd_1")));

    // More overflow updates the same notice instead of adding notices.
    state
        .append_outbox(vec![event("e8"), event("e9")])
        .await
        .unwrap();
    let items = state.outbox_after(0, 100).await.unwrap();
    let notices: Vec<u64> = items.iter().filter_map(|(_, i)| dropped_count(i)).collect();
    assert_eq!(notices, vec![6], "{items:?}");
    assert_eq!(items.len(), 6, "5 events and the result: {items:?}");

    // Once the notice was acknowledged, the next overflow starts a new one.
    let last = items.last().unwrap().0;
    state.ack_outbox(last).await.unwrap();
    for i in 0..6 {
        state
            .append_outbox(vec![event(&format!("f{i}"))])
            .await
            .unwrap();
    }
    let items = state.outbox_after(0, 100).await.unwrap();
    let notices: Vec<u64> = items.iter().filter_map(|(_, i)| dropped_count(i)).collect();
    assert_eq!(notices, vec![2], "{items:?}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_queued_result_is_not_queued_twice() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let now = Utc::now();
    state
        .journal_begin("cmd_1", now, now + ChronoDuration::minutes(5))
        .await
        .unwrap();
    let seq = state.finish_command(result("cmd_1")).await.unwrap();
    // Still queued: the duplicate adds nothing.
    assert!(!state.requeue_result(result("cmd_1")).await.unwrap());
    assert_eq!(state.outbox_len().await.unwrap(), 1);
    // Acknowledged: a later duplicate queues it again, once.
    state.ack_outbox(seq).await.unwrap();
    assert!(state.requeue_result(result("cmd_1")).await.unwrap());
    assert!(!state.requeue_result(result("cmd_1")).await.unwrap());
    assert_eq!(state.outbox_len().await.unwrap(), 1);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn replacing_an_item_keeps_its_place_and_updates_the_journal() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let now = Utc::now();
    state
        .journal_begin("cmd_1", now, now + ChronoDuration::minutes(5))
        .await
        .unwrap();
    let seq = state.finish_command(result("cmd_1")).await.unwrap();
    state.append_outbox(vec![event("after")]).await.unwrap();
    let mut small = result("cmd_1");
    small.status = ResultStatus::Failed;
    small.output = None;
    state
        .replace_outbox_item(seq, OutboxItem::Result(small.clone()))
        .await
        .unwrap();
    let items = state.outbox_after(0, 10).await.unwrap();
    assert_eq!(items[0], (seq, OutboxItem::Result(small.clone())));
    assert_eq!(items.len(), 2);
    assert_eq!(
        state.journal_get("cmd_1").await.unwrap(),
        Some(JournalEntry::Done(Box::new(small)))
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn events_cursor_is_stored_with_the_events() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    assert_eq!(state.events_cursor().await.unwrap(), None);
    let cursor = EventCursor {
        time_nano: 1_700_000_000_000_000_123,
        keys: vec!["abc/die".into()],
    };
    state
        .append_events(vec![event("died")], cursor.clone())
        .await
        .unwrap();
    drop(state);
    let state = State::open(&dir).await.unwrap();
    assert_eq!(state.events_cursor().await.unwrap(), Some(cursor));
    assert_eq!(state.outbox_len().await.unwrap(), 1);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn migration_marks_existing_outbox_rows() {
    // A version-1 database with a queued result and event.
    let dir = temp_dir();
    {
        let mut conn = Connection::open(dir.join(DB_FILE)).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[0]).unwrap();
        tx.pragma_update(None, "user_version", 1).unwrap();
        for item in [OutboxItem::Result(result("cmd_old")), event("old")] {
            tx.execute(
                "INSERT INTO outbox (item) VALUES (?1)",
                params![serde_json::to_string(&item).unwrap()],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let state = State::open(&dir).await.unwrap();
    assert!(!state.requeue_result(result("cmd_old")).await.unwrap());
    state.set_max_outbox_events(1);
    state.append_outbox(vec![event("new")]).await.unwrap();
    let items = state.outbox_after(0, 10).await.unwrap();
    // The old event went, the result stayed, and the notice took the one event place.
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(matches!(&items[0].1, OutboxItem::Result(r) if r.command_id == "cmd_old"));
    assert_eq!(dropped_count(&items[1].1), Some(2));
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn prune_drops_only_long_expired_entries() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let now = Utc::now();
    state
        .journal_begin("old", now, now - ChronoDuration::hours(25))
        .await
        .unwrap();
    state
        .journal_begin("recent", now, now - ChronoDuration::hours(23))
        .await
        .unwrap();
    state
        .journal_begin("live", now, now + ChronoDuration::minutes(5))
        .await
        .unwrap();
    assert_eq!(state.prune_journal(now).await.unwrap(), 1);
    assert!(state.journal_get("old").await.unwrap().is_none());
    assert!(state.journal_get("recent").await.unwrap().is_some());
    assert!(state.journal_get("live").await.unwrap().is_some());
    std::fs::remove_dir_all(dir).ok();
}
