//! What fits in one frame to the relay: the frame limit the session learns from each welcome
//! and the executor and the updater size command output by, and the trimming of log lines to a
//! byte budget.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// The largest frame the agent may send on the current connection: its own `max_frame_bytes`,
/// lowered to the relay's when the welcome announces a smaller one. Shared with the executor,
/// which sizes command output by it.
pub type FrameLimit = Arc<AtomicUsize>;

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
}
