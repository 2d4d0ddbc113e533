//! Plain-text rendering of the host-upkeep command outputs (issue 17 parts 4 and 6):
//! `backup.forget` and `image.prune`.

use flotilla_shared::upkeep::{BackupForgetOutput, ImagePruneOutput, PrunedImage};
use std::fmt::Write;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn name(i: &PrunedImage) -> String {
    i.tags
        .first()
        .cloned()
        .unwrap_or_else(|| i.id.chars().take(19).collect())
}

/// `backup.forget`'s output, or None when it has another shape.
pub fn backup_forget(output: &serde_json::Value) -> Option<String> {
    let f: BackupForgetOutput = serde_json::from_value(output.clone()).ok()?;
    Some(format!(
        "backup job {} forgotten{}: {}; its backups stay in the agent's catalogue\n",
        f.job,
        f.container
            .map(|c| format!(" (container {c})"))
            .unwrap_or_default(),
        if f.keys.is_empty() {
            "no databases were reported".to_string()
        } else {
            format!("no longer expected: {}", f.keys.join(", "))
        }
    ))
}

/// `image.prune`'s output, or None when it has another shape.
pub fn image_prune(output: &serde_json::Value) -> Option<String> {
    let p: ImagePruneOutput = serde_json::from_value(output.clone()).ok()?;
    let mut out = String::new();
    let verb = if p.dry_run { "would remove" } else { "removed" };
    for i in &p.removed {
        let _ = writeln!(out, "{verb} {} ({})", name(i), mib(i.unique_bytes));
    }
    for i in &p.kept {
        let _ = writeln!(
            out,
            "kept {}: {}",
            name(i),
            i.kept_because.as_deref().unwrap_or("needed")
        );
    }
    for i in &p.failed {
        let _ = writeln!(
            out,
            "FAILED {}: {}",
            name(i),
            i.error.as_deref().unwrap_or("unknown error")
        );
    }
    let _ = writeln!(
        out,
        "{} {} image(s), {} {}",
        verb,
        p.removed.len(),
        mib(p.bytes_freed),
        if p.dry_run { "to free" } else { "freed" }
    );
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outputs_render_and_other_shapes_do_not() {
        let text = image_prune(&json!({
            "dry_run": true,
            "removed": [{"id": "sha256:abc", "tags": ["junk:1"], "unique_bytes": 2097152}],
            "kept": [{"id": "sha256:def", "tags": ["web:1"], "unique_bytes": 1,
                      "kept_because": "rollback image of web"}],
            "failed": [],
            "bytes_freed": 2097152
        }))
        .unwrap();
        assert!(text.contains("would remove junk:1 (2.0 MiB)"), "{text}");
        assert!(text.contains("kept web:1: rollback image of web"), "{text}");
        assert!(text.contains("2.0 MiB to free"), "{text}");
        let text = backup_forget(&json!({"job": "shop-db", "keys": ["shop-db/0"]})).unwrap();
        assert!(text.contains("shop-db/0"), "{text}");
        assert!(image_prune(&json!({"nope": 1})).is_none());
    }
}
