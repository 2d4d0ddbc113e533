//! Human output of database backups: the `backup.*` command outputs, the relay's fleet and
//! per-agent backup views, and the backup line of `flotilla agent show`.

use super::{ago, bytes, indent, millis, or_dash, time, Table};
use chrono::{DateTime, Utc};
use flotilla_shared::backup::{
    AgentBackups, BackupAlertLevel, BackupListOutput, BackupRecord, BackupReport,
    BackupRestoreOutput, BackupRunOutput, BackupStatus, BackupSummary, BackupVerifyOutput,
    CopyState, DatabaseBackupState, FleetBackups, STALE_AFTER_HOURS,
};
use std::fmt::Write;

/// Longest error text a table cell shows (the JSON has all of it).
const ERROR_CELL_CHARS: usize = 80;

/// The first line of an error, shortened to fit a table cell.
fn error_cell(e: Option<&str>) -> String {
    let Some(first) = e.and_then(|e| e.lines().map(str::trim).find(|l| !l.is_empty())) else {
        return "-".into();
    };
    if first.chars().count() > ERROR_CELL_CHARS {
        let cut: String = first.chars().take(ERROR_CELL_CHARS - 3).collect();
        format!("{cut}...")
    } else {
        first.to_string()
    }
}

fn size(n: Option<u64>) -> String {
    n.map(bytes).unwrap_or_else(|| "-".into())
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

// === impl command outputs ===

/// `backup.list`: the agent's catalogue, newest first.
pub fn backup_list(out: &BackupListOutput) -> String {
    if out.backups.is_empty() && (!out.offsite.is_empty() || !out.offsite_errors.is_empty()) {
        return offsite_list(out);
    }
    if out.backups.is_empty() {
        return "no backups\n".into();
    }
    let mut table = Table::new(&[
        "ID",
        "JOB",
        "DATABASE",
        "STATUS",
        "FINISHED",
        "SIZE",
        "SHA256",
        "DESTINATIONS",
    ]);
    for b in &out.backups {
        let destinations = b
            .destinations
            .iter()
            .map(|d| match d.state {
                CopyState::Stored => d.name.clone(),
                CopyState::Failed => format!("{} (failed)", d.name),
                CopyState::Pruned => format!("{} (pruned)", d.name),
            })
            .collect::<Vec<_>>()
            .join(", ");
        table.row(vec![
            b.id.clone(),
            b.job.clone(),
            b.database.clone(),
            match b.status {
                BackupStatus::Success if b.encrypted => "success (encrypted)".into(),
                s => s.as_str().into(),
            },
            time(b.finished_at),
            bytes(b.compressed_bytes),
            or_dash(Some(&b.sha256.chars().take(12).collect::<String>())),
            or_dash(Some(&destinations)),
        ]);
    }
    let mut text = table.render();
    if out.truncated {
        text.push_str("(more backups match; raise --limit or narrow with --job/--database)\n");
    }
    text
}

/// `backup.list --offsite` (issue 17 §3): the backups at the destinations, by source agent.
fn offsite_list(out: &BackupListOutput) -> String {
    let mut table = Table::new(&[
        "ID",
        "SOURCE AGENT",
        "JOB",
        "DATABASE",
        "FINISHED",
        "SIZE",
        "DESTINATION",
    ]);
    for b in &out.offsite {
        let m = &b.manifest;
        table.row(vec![
            m.id.clone(),
            b.source_agent.clone(),
            m.job.clone(),
            m.database.clone(),
            time(m.finished_at),
            if m.encrypted {
                format!("{} (encrypted)", bytes(m.compressed_bytes))
            } else {
                bytes(m.compressed_bytes)
            },
            b.destination.clone(),
        ]);
    }
    let mut text = if out.offsite.is_empty() {
        "no backups at the destinations\n".to_string()
    } else {
        table.render()
    };
    for e in &out.offsite_errors {
        let _ = writeln!(text, "warning: {e}");
    }
    if out.truncated {
        text.push_str("(more backups match; raise --limit or narrow with --job/--database)\n");
    }
    text
}

/// One run of a `backup.run` (or a report): every database's outcome, then the off-site copy
/// and retention.
pub fn backup_report(r: &BackupReport) -> String {
    let mut out = String::new();
    let failed = r.failed();
    let took = (r.finished_at - r.started_at).num_milliseconds().max(0) as u64;
    let _ = writeln!(
        out,
        "run {}{}: {}, {} failed, took {}",
        r.run_id,
        r.job
            .as_deref()
            .map(|j| format!(" of job {j}"))
            .unwrap_or_default(),
        plural(r.databases.len(), "database", "databases"),
        failed,
        millis(took)
    );
    if !r.databases.is_empty() {
        let mut table = Table::new(&["DATABASE", "STATUS", "SIZE", "TOOK", "BACKUP", "ERROR"]);
        for d in &r.databases {
            table.row(vec![
                d.key.clone(),
                match d.status {
                    BackupStatus::Success => "success".into(),
                    BackupStatus::Failed => "FAILED".into(),
                },
                size(d.size_bytes),
                d.duration_ms.map(millis).unwrap_or_else(|| "-".into()),
                or_dash(d.backup_id.as_deref()),
                error_cell(d.error.as_deref()),
            ]);
        }
        out.push_str(&indent(&table.render()));
    }
    if let Some(sync) = &r.remote_sync {
        let _ = match sync.status {
            BackupStatus::Success => writeln!(
                out,
                "  off-site copies: done, {} uploaded",
                bytes(sync.uploaded_bytes)
            ),
            BackupStatus::Failed => writeln!(
                out,
                "  off-site copies: FAILED after {} uploaded: {}",
                bytes(sync.uploaded_bytes),
                or_dash(sync.error.as_deref())
            ),
        };
    }
    if failed > 0 {
        let _ = writeln!(
            out,
            "  retention: nothing pruned (a run with a failure never prunes)"
        );
    } else {
        let _ = writeln!(
            out,
            "  retention: {} pruned",
            plural(r.pruned as usize, "old backup", "old backups")
        );
    }
    out
}

/// `backup.run`: one block per job that ran.
pub fn backup_run(out: &BackupRunOutput) -> String {
    if out.reports.is_empty() {
        return "no backup job ran (none configured or discovered)\n".into();
    }
    out.reports
        .iter()
        .map(backup_report)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `backup.verify`: the verdict, then every check.
pub fn backup_verify(out: &BackupVerifyOutput) -> String {
    let mut text = if out.ok {
        format!("backup {}: verified, every check passed\n", out.id)
    } else {
        format!("backup {}: VERIFY FAILED\n", out.id)
    };
    let mut table = Table::new(&["RESULT", "CHECK", "DETAIL"]);
    for c in &out.checks {
        table.row(vec![
            if c.ok { "ok" } else { "FAIL" }.into(),
            c.check.clone(),
            or_dash(Some(&c.detail)),
        ]);
    }
    if !out.checks.is_empty() {
        text.push_str(&indent(&table.render()));
    }
    text
}

/// `backup.restore`: what went where.
pub fn backup_restore(out: &BackupRestoreOutput) -> String {
    format!(
        "restored backup {} into database {} of container {}: {} in {}\n",
        out.id,
        out.database,
        out.container,
        bytes(out.bytes),
        millis(out.duration_ms)
    )
}

// === impl relay views ===

fn state_row(d: &DatabaseBackupState, now: DateTime<Utc>, with_agent: bool) -> Vec<String> {
    let mut row = Vec::with_capacity(7);
    if with_agent {
        row.push(d.agent_name.clone());
    }
    row.extend([
        d.key.clone(),
        d.state.as_str().into(),
        ago(d.latest.finished_at, now),
        d.last_success_at
            .map(|t| ago(t, now))
            .unwrap_or_else(|| "never".into()),
        size(d.latest.size_bytes),
        error_cell(d.latest.error.as_deref()),
    ]);
    row
}

fn state_table(list: &[DatabaseBackupState], now: DateTime<Utc>, with_agent: bool) -> String {
    let mut headers = Vec::with_capacity(7);
    if with_agent {
        headers.push("AGENT");
    }
    headers.extend([
        "KEY",
        "STATE",
        "LAST BACKUP",
        "LAST SUCCESS",
        "SIZE",
        "ERROR",
    ]);
    let mut table = Table::new(&headers);
    for d in list {
        table.row(state_row(d, now, with_agent));
    }
    table.render()
}

/// `flotilla backups`: the latest backup of every database in the fleet.
pub fn fleet_backups(f: &FleetBackups, now: DateTime<Utc>) -> String {
    if f.databases.is_empty() {
        return "no backups reported\n".into();
    }
    let mut text = state_table(&f.databases, now, true);
    if f.truncated {
        text.push_str("(more databases match; raise --limit)\n");
    }
    text
}

/// `none`, `medium alert` or `HARD ALERT`, with the reason.
pub fn alert_line(b: &AgentBackups) -> String {
    let level = match b.alert.level {
        BackupAlertLevel::None => "no alert",
        BackupAlertLevel::Medium => "medium alert",
        BackupAlertLevel::Hard => "HARD ALERT",
    };
    format!("{level}: {}", b.alert.reason)
}

fn history_table(list: &[BackupRecord], now: DateTime<Utc>) -> String {
    let mut table = Table::new(&[
        "FINISHED", "KEY", "STATUS", "SIZE", "SOURCE", "RUN", "BACKUP", "ERROR",
    ]);
    for r in list {
        table.row(vec![
            format!("{} ({})", time(r.finished_at), ago(r.finished_at, now)),
            r.key.clone(),
            r.status.as_str().into(),
            size(r.size_bytes),
            r.source.clone(),
            r.run_id.clone(),
            or_dash(r.backup_id.as_deref()),
            error_cell(r.error.as_deref()),
        ]);
    }
    table.render()
}

/// `flotilla backups <agent>`: the alert line, each database's latest state, the history.
pub fn agent_backups(b: &AgentBackups, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "backups of agent {}: {}", b.agent_id, alert_line(b));
    if b.databases.is_empty() && b.history.is_empty() {
        let _ = writeln!(out, "no backups reported");
        return out;
    }
    let _ = writeln!(out, "\nlatest per database:");
    out.push_str(&indent(&state_table(&b.databases, now, false)));
    let _ = writeln!(out, "\nhistory (newest first):");
    out.push_str(&indent(&history_table(&b.history, now)));
    out
}

/// The heartbeat's backup summary in one line (`flotilla agent show`).
pub fn backup_summary(s: &BackupSummary, now: DateTime<Utc>) -> String {
    let mut parts = vec![
        format!(
            "{}, {}",
            plural(s.jobs as usize, "job", "jobs"),
            plural(s.databases as usize, "database", "databases")
        ),
        if s.failed > 0 {
            format!("{} FAILED", s.failed)
        } else {
            "none failed".into()
        },
    ];
    let when = |t: Option<DateTime<Utc>>, none: &str| t.map(|t| ago(t, now)).unwrap_or(none.into());
    parts.push(format!("last success {}", when(s.last_success_at, "never")));
    parts.push(format!("next run {}", when(s.next_run_at, "not scheduled")));
    if s.status_file_stale {
        parts.push(format!(
            "STATUS FILE STALE (older than {STALE_AFTER_HOURS} h or unreadable)"
        ));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests;
