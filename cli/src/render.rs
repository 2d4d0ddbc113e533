//! Human output of the CLI: plain aligned tables and short fact lists. Every function here is
//! pure (data in, text out, `now` passed in), so the formatting is unit-tested.

use chrono::{DateTime, Utc};
use flotilla_shared::api::{
    AgentDetail, AgentInfo, ApiTokenCreated, ApiTokenInfo, AuditRecord, CommandInfo,
    EnrollmentTokenCreated, EnrollmentTokenInfo, EventRecord, JobInfo, RelayStatus, UpdateRecord,
};
use flotilla_shared::backup::{
    BackupListOutput, BackupRestoreOutput, BackupRunOutput, BackupVerifyOutput,
};
use flotilla_shared::command::{
    CommandKind, CommandResult, ContainerActionOutput, ContainerInfo, ContainerListOutput,
    ContainerLogsOutput, PingOutput,
};
use flotilla_shared::heartbeat::Heartbeat;
use flotilla_shared::selector::Labels;
use flotilla_shared::update::{HealthEvidence, UpdateOutcome, UpdatePhase, UpdateReport};
use std::fmt::Write;

mod backup;

pub use backup::{
    agent_backups, backup_list, backup_restore, backup_run, backup_summary, backup_verify,
    fleet_backups,
};

// === impl Table ===

/// Columns separated by two spaces, each as wide as its widest cell; no trailing spaces.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

// === impl formatting helpers ===

/// `5s ago`, `3m ago`, `2h ago`, `4d ago` (`in 5m` for the future).
pub fn ago(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds();
    if secs < 0 {
        format!("in {}", span(secs.unsigned_abs()))
    } else {
        format!("{} ago", span(secs.unsigned_abs()))
    }
}

/// The largest whole unit: `45s`, `3m`, `2h`, `4d`.
pub fn span(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Uptime-style: `3d 4h`, `2h 5m`, `4m 10s`.
pub fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {s}s")
    }
}

/// Binary units: `512 B`, `1.5 KiB`, `23.4 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Agent-controlled text made safe for a terminal: line breaks and tabs become spaces, other
/// control characters (escape sequences, bells, ...) are dropped.
pub fn clean(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn labels(l: &Labels) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `sha256:0123456789abcdef...` → `0123456789ab`, as `docker images` shows ids.
pub fn short_id(id: &str) -> String {
    let bare = id.strip_prefix("sha256:").unwrap_or(id);
    bare.chars().take(12).collect()
}

fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

// === impl tokens ===

pub fn enrollment_token_created(
    t: &EnrollmentTokenCreated,
    relay_addr: &str,
    now: DateTime<Utc>,
) -> String {
    let i = &t.info;
    let mut out = String::new();
    let _ = writeln!(out, "enrollment token (shown only now): {}", t.token);
    let _ = writeln!(out, "  id:       {}", i.id);
    let _ = writeln!(out, "  labels:   {}", labels(&i.labels));
    let _ = writeln!(
        out,
        "  expires:  {} ({})",
        time(i.expires_at),
        ago(i.expires_at, now)
    );
    let _ = writeln!(out, "  uses:     {}/{}", i.uses, i.max_uses);
    if let Some(note) = &i.note {
        let _ = writeln!(out, "  note:     {note}");
    }
    let _ = writeln!(
        out,
        "enroll a host with:\n  flotilla-agent enroll --relay {relay_addr} --token {} --state-dir /var/lib/flotilla-agent",
        t.token
    );
    out
}

pub fn enrollment_tokens(tokens: &[EnrollmentTokenInfo], now: DateTime<Utc>) -> String {
    let mut table = Table::new(&[
        "ID",
        "LABELS",
        "CREATED",
        "EXPIRES",
        "USES",
        "REVOKED",
        "CREATED BY",
        "NOTE",
    ]);
    for t in tokens {
        table.row(vec![
            t.id.clone(),
            labels(&t.labels),
            ago(t.created_at, now),
            if t.expires_at <= now {
                format!("expired {}", ago(t.expires_at, now))
            } else {
                ago(t.expires_at, now)
            },
            format!("{}/{}", t.uses, t.max_uses),
            if t.revoked { "yes" } else { "no" }.into(),
            t.created_by.clone(),
            or_dash(t.note.as_deref()),
        ]);
    }
    table.render()
}

pub fn api_tokens(tokens: &[ApiTokenInfo], now: DateTime<Utc>) -> String {
    let mut table = Table::new(&["ID", "NAME", "SCOPE", "CREATED", "CREATED BY", "REVOKED"]);
    for t in tokens {
        table.row(vec![
            t.id.clone(),
            t.name.clone(),
            t.scope.as_str().into(),
            ago(t.created_at, now),
            t.created_by.clone(),
            t.revoked_at.map_or_else(|| "no".into(), |at| ago(at, now)),
        ]);
    }
    table.render()
}

pub fn api_token_created(t: &ApiTokenCreated) -> String {
    format!(
        "api token (shown only now): {}\n  id:       {}\n  name:     {}\n  scope:    {}\n  created:  {}\n",
        t.token,
        t.id,
        t.name,
        t.scope.as_str(),
        time(t.created_at)
    )
}

// === impl agents ===

pub fn agents(list: &[AgentInfo], now: DateTime<Utc>) -> String {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "STATUS",
        "LAST HEARTBEAT",
        "VERSION",
        "LABELS",
        "CPU",
        "MEM",
        "DISK",
        "CONTAINERS",
    ]);
    for a in list {
        let (cpu, mem, disk, containers) = match &a.summary {
            Some(s) => (
                format!("{:.1}%", s.cpu_percent),
                format!("{:.0}%", s.memory_used_percent),
                format!("{:.0}%", s.disk_max_used_percent),
                if s.containers_unhealthy > 0 {
                    format!(
                        "{}/{} ({} unhealthy)",
                        s.containers_running, s.containers_total, s.containers_unhealthy
                    )
                } else {
                    format!("{}/{}", s.containers_running, s.containers_total)
                },
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        table.row(vec![
            a.id.clone(),
            a.name.clone(),
            a.status.as_str().into(),
            a.last_heartbeat_at
                .map(|t| ago(t, now))
                .unwrap_or_else(|| "never".into()),
            or_dash(Some(&a.agent_version)),
            labels(&a.labels),
            cpu,
            mem,
            disk,
            containers,
        ]);
    }
    table.render()
}

pub fn agent_detail(d: &AgentDetail, now: DateTime<Utc>) -> String {
    let a = &d.agent;
    let mut out = String::new();
    let _ = writeln!(out, "agent {} ({})", a.id, a.name);
    let status = match (a.status.as_str(), a.connected_at) {
        ("online", Some(c)) => format!("online, connected {}", ago(c, now)),
        (s, _) => s.to_string(),
    };
    let _ = writeln!(out, "  status:          {status}");
    let _ = writeln!(out, "  labels:          {}", labels(&a.labels));
    if !d.claimed_labels.is_empty() {
        // What the agent asked for at enrollment, apart from the labels it was given.
        let _ = writeln!(out, "  claimed labels:  {}", labels(&d.claimed_labels));
    }
    let _ = writeln!(
        out,
        "  enrolled:        {} ({})",
        time(a.enrolled_at),
        ago(a.enrolled_at, now)
    );
    let _ = writeln!(
        out,
        "  last heartbeat:  {}",
        a.last_heartbeat_at
            .map(|t| format!("{} ({})", time(t), ago(t, now)))
            .unwrap_or_else(|| "never".into())
    );
    let _ = writeln!(
        out,
        "  agent version:   {}",
        or_dash(Some(&a.agent_version))
    );
    let _ = writeln!(
        out,
        "  host:            {} ({}, {})",
        or_dash(Some(&a.facts.hostname)),
        or_dash(Some(&a.facts.os)),
        or_dash(Some(&a.facts.arch))
    );
    if let Some(hb) = &d.heartbeat {
        let _ = writeln!(
            out,
            "  backups:         {}",
            hb.backup
                .as_ref()
                .map(|b| backup_summary(b, now))
                .unwrap_or_else(|| "none configured".into())
        );
    }
    match &d.heartbeat {
        Some(hb) => out.push_str(&heartbeat(hb)),
        None => out.push_str("\nno heartbeat received yet\n"),
    }
    out
}

pub fn heartbeat(hb: &Heartbeat) -> String {
    let h = &hb.host;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nhost (heartbeat at {}, agent {}):",
        time(hb.at),
        hb.agent_version
    );
    let _ = writeln!(out, "  hostname:  {}", h.hostname);
    let _ = writeln!(
        out,
        "  os:        {} (kernel {}, {})",
        h.os, h.kernel, h.arch
    );
    let _ = writeln!(out, "  uptime:    {}", uptime(h.uptime_secs));
    let _ = writeln!(
        out,
        "  cpu:       {:.1}% of {} cpus",
        h.cpu_percent, h.cpu_count
    );
    let _ = writeln!(
        out,
        "  load:      {:.2} {:.2} {:.2}",
        h.load_1, h.load_5, h.load_15
    );
    let _ = writeln!(
        out,
        "  memory:    {} of {} used ({:.1}%)",
        bytes(h.memory_used_bytes),
        bytes(h.memory_total_bytes),
        h.memory_used_percent()
    );
    let _ = writeln!(
        out,
        "  swap:      {} of {} used",
        bytes(h.swap_used_bytes),
        bytes(h.swap_total_bytes)
    );
    let _ = writeln!(out, "\nfilesystems:");
    if h.filesystems.is_empty() {
        let _ = writeln!(out, "  none reported");
    } else {
        let mut table = Table::new(&["MOUNT", "DEVICE", "TYPE", "SIZE", "AVAILABLE", "USED"]);
        for f in &h.filesystems {
            table.row(vec![
                f.mount_point.clone(),
                f.device.clone(),
                f.fs_type.clone(),
                bytes(f.total_bytes),
                bytes(f.available_bytes),
                format!("{:.1}%", f.used_percent),
            ]);
        }
        out.push_str(&indent(&table.render()));
    }
    // issue 17 §2: the certificates the agent read on its host.
    if !h.certificates.is_empty() {
        let _ = writeln!(out, "\ncertificates:");
        let mut table = Table::new(&["SOURCE", "NAMES", "ISSUER", "NOT AFTER"]);
        for c in &h.certificates {
            table.row(vec![
                c.source.clone(),
                match (&c.warning, c.not_after) {
                    (Some(w), None) => format!("unreadable: {w}"),
                    _ => c.names(),
                },
                or_dash(c.issuer.as_deref()),
                c.not_after
                    .map(|t| format!("{} ({})", time(t), ago(t, hb.at)))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        out.push_str(&indent(&table.render()));
    }
    let docker = &hb.docker;
    let _ = writeln!(
        out,
        "\ndocker: {}{}",
        docker.version.as_deref().unwrap_or("unavailable"),
        docker
            .api_version
            .as_deref()
            .map(|v| format!(" (api {v})"))
            .unwrap_or_default()
    );
    if let Some(e) = &docker.error {
        let _ = writeln!(out, "  error: {e}");
    }
    let _ = writeln!(out, "\ncontainers ({}):", docker.containers.len());
    if docker.containers.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        out.push_str(&indent(&containers_detail(&docker.containers)));
    }
    out
}

/// Every fact a heartbeat holds about each container.
fn containers_detail(list: &[ContainerInfo]) -> String {
    let mut table = Table::new(&[
        "NAME", "IMAGE", "IMAGE ID", "STATE", "HEALTH", "RESTARTS", "OOM", "EXIT", "COMPOSE",
        "STATUS",
    ]);
    for c in list {
        let compose = match (&c.compose_project, &c.compose_service) {
            (Some(p), Some(s)) => format!("{p}/{s}"),
            (Some(p), None) => p.clone(),
            (None, Some(s)) => format!("-/{s}"),
            (None, None) => "-".into(),
        };
        table.row(vec![
            c.name.clone(),
            c.image.clone(),
            short_id(&c.image_id),
            c.state.clone(),
            or_dash(c.health.as_deref()),
            c.restart_count.to_string(),
            if c.oom_killed { "yes" } else { "no" }.into(),
            c.exit_code
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            compose,
            c.status.clone(),
        ]);
    }
    table.render()
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

pub fn events(list: &[EventRecord]) -> String {
    let mut table = Table::new(&["ID", "TIME", "KIND", "CONTAINER", "MESSAGE", "ATTRIBUTES"]);
    for e in list {
        let ev = &e.event;
        table.row(vec![
            e.id.to_string(),
            time(ev.at),
            ev.kind.as_str().into(),
            or_dash(ev.container_name.as_deref().or(ev.container_id.as_deref())),
            ev.message.clone(),
            if ev.attributes.is_empty() {
                "-".into()
            } else {
                ev.attributes
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        ]);
    }
    table.render()
}

pub fn audit(rows: &[AuditRecord]) -> String {
    let mut table = Table::new(&["TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "DETAIL"]);
    for r in rows {
        table.row(vec![
            time(r.ts),
            r.actor.clone(),
            r.action.clone(),
            r.target.clone(),
            r.outcome.clone(),
            or_dash(r.detail.as_deref()),
        ]);
    }
    table.render()
}

// === impl commands and jobs ===

pub fn command_info(c: &CommandInfo, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "command {} ({}) on agent {}: {}",
        c.id,
        c.kind,
        c.agent_id,
        c.state.as_str()
    );
    let _ = writeln!(
        out,
        "  created {} by {}, expires {}{}",
        ago(c.created_at, now),
        c.created_by,
        ago(c.expires_at, now),
        c.job_id
            .as_deref()
            .map(|j| format!(", part of job {j}"))
            .unwrap_or_default()
    );
    if let Some(result) = &c.result {
        out.push_str(&command_result(c.kind, result));
    }
    out
}

/// A result's output in the form that suits its kind; unknown shapes print as JSON.
pub fn command_result(kind: CommandKind, r: &CommandResult) -> String {
    let mut out = String::new();
    if let Some(e) = &r.error {
        let _ = writeln!(out, "  error: {} ({})", e.message, e.code);
    }
    let Some(output) = &r.output else {
        return out;
    };
    let typed = match kind {
        CommandKind::Ping => serde_json::from_value::<PingOutput>(output.clone())
            .ok()
            .map(|p| format!("pong from {} (agent {})\n", p.hostname, p.agent_version)),
        CommandKind::ContainerList => serde_json::from_value::<ContainerListOutput>(output.clone())
            .ok()
            .map(|l| containers(&l.containers)),
        CommandKind::ContainerLogs => serde_json::from_value::<ContainerLogsOutput>(output.clone())
            .ok()
            .map(|l| {
                let mut text: String = l.lines.iter().map(|line| format!("{line}\n")).collect();
                if l.truncated {
                    text.push_str("(older lines were dropped to fit the result size limit)\n");
                }
                text
            }),
        CommandKind::ContainerStart
        | CommandKind::ContainerStop
        | CommandKind::ContainerRestart => {
            serde_json::from_value::<ContainerActionOutput>(output.clone())
                .ok()
                .map(|a| {
                    format!(
                        "container {}: {} ({}){}\n",
                        a.container.name,
                        a.container.state,
                        a.container.status,
                        if a.changed {
                            ""
                        } else {
                            ", already in that state"
                        }
                    )
                })
        }
        CommandKind::ContainerInspect => None,
        CommandKind::AgentUpgrade => {
            serde_json::from_value::<flotilla_shared::command::AgentUpgradeOutput>(output.clone())
                .ok()
                .map(|u| {
                    format!(
                        "agent upgraded from {} to {} ({}); running {}\n",
                        u.from_version, u.to_version, u.arch, u.running_version
                    )
                })
        }
        CommandKind::ContainerUpdate => serde_json::from_value::<UpdateReport>(output.clone())
            .ok()
            .map(|r| update_report(&r)),
        // --- compose (issue 17, part 1) ---
        CommandKind::ComposeUpdate => {
            serde_json::from_value::<flotilla_shared::compose::ComposeUpdateReport>(output.clone())
                .ok()
                .map(|g| {
                    let mut text = format!(
                        "compose project {} → {}: {}{}\n",
                        g.project,
                        g.image,
                        g.outcome,
                        g.reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    );
                    for r in &g.services {
                        text.push_str(&update_report(r));
                    }
                    text
                })
        }
        CommandKind::BackupList => serde_json::from_value::<BackupListOutput>(output.clone())
            .ok()
            .map(|l| backup_list(&l)),
        CommandKind::BackupRun => serde_json::from_value::<BackupRunOutput>(output.clone())
            .ok()
            .map(|r| backup_run(&r)),
        CommandKind::BackupVerify => serde_json::from_value::<BackupVerifyOutput>(output.clone())
            .ok()
            .map(|v| backup_verify(&v)),
        CommandKind::BackupRestore => serde_json::from_value::<BackupRestoreOutput>(output.clone())
            .ok()
            .map(|r| backup_restore(&r)),
        // --- issue 17 parts 4 and 6 ---
        CommandKind::BackupForget => super::render_upkeep::backup_forget(output),
        CommandKind::ImagePrune => super::render_upkeep::image_prune(output),
    };
    out.push_str(
        &typed.unwrap_or_else(|| serde_json::to_string_pretty(output).unwrap_or_default() + "\n"),
    );
    out
}

/// Containers as `container.list` returns them.
pub fn containers(list: &[ContainerInfo]) -> String {
    let mut table = Table::new(&[
        "NAME", "ID", "IMAGE", "STATE", "HEALTH", "RESTARTS", "STATUS",
    ]);
    for c in list {
        table.row(vec![
            c.name.clone(),
            short_id(&c.id),
            c.image.clone(),
            c.state.clone(),
            or_dash(c.health.as_deref()),
            c.restart_count.to_string(),
            c.status.clone(),
        ]);
    }
    table.render()
}

pub fn job_info(j: &JobInfo, now: DateTime<Utc>) -> String {
    let c = &j.counts;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "job {} ({} to {}): {}",
        j.id,
        j.kind,
        j.selector,
        job_state(j)
    );
    let _ = writeln!(
        out,
        "  {} targets: {} succeeded, {} failed, {} rejected, {} undelivered, {} skipped, {} in flight, {} pending",
        c.targets, c.succeeded, c.failed, c.rejected, c.undelivered, c.skipped, c.in_flight, c.pending
    );
    let _ = writeln!(
        out,
        "  max concurrency {}, max errors {}; created {} by {}, expires {}",
        j.max_concurrency,
        j.max_errors
            .map(|e| e.to_string())
            .unwrap_or_else(|| "unlimited".into()),
        ago(j.created_at, now),
        j.created_by,
        ago(j.expires_at, now)
    );
    if j.targets.is_empty() {
        let _ = writeln!(out, "no agent matched the selector");
        return out;
    }
    let mut table = Table::new(&["AGENT", "NAME", "STATE", "ERROR"]);
    for t in &j.targets {
        table.row(vec![
            t.agent_id.clone(),
            t.agent_name.clone(),
            t.state.as_str().into(),
            t.result
                .as_ref()
                .and_then(|r| r.error.as_ref())
                .map(|e| format!("{} ({})", e.message, e.code))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push('\n');
    out.push_str(&table.render());
    out
}

/// Per-target outputs of a job, for kinds whose output is worth reading (lists, logs, pings,
/// update reports, backup outcomes): not the one-line container start/stop/restart.
pub fn job_outputs(j: &JobInfo) -> String {
    if matches!(
        j.kind,
        CommandKind::ContainerStart | CommandKind::ContainerStop | CommandKind::ContainerRestart
    ) {
        return String::new();
    }
    let mut out = String::new();
    for t in &j.targets {
        if let Some(r) = t.result.as_ref().filter(|r| r.output.is_some()) {
            let _ = writeln!(out, "\n== {} ({}) ==", t.agent_name, t.agent_id);
            let mut without_error = r.clone();
            without_error.error = None;
            out.push_str(&command_result(j.kind, &without_error));
        }
    }
    out
}

fn job_state(j: &JobInfo) -> &'static str {
    match j.state {
        flotilla_shared::api::JobState::Running => "running",
        flotilla_shared::api::JobState::Completed => "completed",
        flotilla_shared::api::JobState::Stopped => "stopped (max errors exceeded)",
    }
}

// === impl updates ===

/// `850ms`, `12.3s`, `2m 5s`.
pub fn millis(ms: u64) -> String {
    match ms {
        m if m < 1000 => format!("{m}ms"),
        m if m < 60_000 => format!("{:.1}s", m as f64 / 1000.0),
        m => {
            let s = m / 1000;
            format!("{}m {}s", s / 60, s % 60)
        }
    }
}

/// One sentence per outcome, saying what state the container is in.
fn outcome_sentence(o: UpdateOutcome) -> &'static str {
    match o {
        UpdateOutcome::Updated => "updated: the new container passed its health check",
        UpdateOutcome::RolledBack => {
            "rolled back: the new container failed, the old one runs again"
        }
        UpdateOutcome::FailedUnchanged => "failed, nothing was changed",
        UpdateOutcome::RollbackFailed => {
            "ROLLBACK FAILED: the new container failed and so did the old one; \
             it is left in place, needs an operator"
        }
    }
}

/// `reg/app:v1, image 49115dfa4e6f, digest reg/app@sha256:..., container 0123456789ab`.
fn image_facts(
    image: Option<&str>,
    image_id: Option<&str>,
    digest: Option<&str>,
    container_id: Option<&str>,
) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(i) = image {
        parts.push(i.to_string());
    }
    if let Some(id) = image_id {
        parts.push(format!("image {}", short_id(id)));
    }
    if let Some(d) = digest {
        parts.push(format!("digest {d}"));
    }
    if let Some(c) = container_id {
        parts.push(format!("container {}", short_id(c)));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn evidence(h: &HealthEvidence) -> String {
    let mut text = format!(
        "{} {} after {} check{} in {}",
        h.method,
        if h.passed { "passed" } else { "FAILED" },
        h.checks,
        if h.checks == 1 { "" } else { "s" },
        millis(h.check_ms)
    );
    if h.stable_ms > 0 {
        let _ = write!(text, ", then up for {}", millis(h.stable_ms));
    }
    let _ = write!(text, ": {}", h.detail);
    if let Some(o) = h.last_output.as_deref().filter(|o| !o.trim().is_empty()) {
        let _ = write!(text, " (last output: {})", o.trim());
    }
    text
}

/// A `container.update` report for people: outcome, images, health evidence, reason, timings
/// and the failed container's last log lines.
pub fn update_report(r: &UpdateReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "update of {} to {}: {}",
        r.container,
        r.image,
        outcome_sentence(r.outcome)
    );
    let _ = writeln!(
        out,
        "  strategy {}, health check {}{}",
        r.strategy,
        r.health,
        if r.old_stopped {
            ""
        } else {
            "; the old container was never stopped"
        }
    );
    if let Some(old) = image_facts(
        r.old_image.as_deref(),
        r.old_image_id.as_deref(),
        r.old_image_digest.as_deref(),
        r.old_container_id.as_deref(),
    ) {
        let _ = writeln!(out, "  old:              {old}");
    }
    if let Some(new) = image_facts(
        None,
        r.new_image_id.as_deref(),
        r.new_image_digest.as_deref(),
        r.new_container_id.as_deref(),
    ) {
        let _ = writeln!(out, "  new:              {new}");
    }
    if let Some(reason) = &r.reason {
        let _ = writeln!(out, "  reason:           {reason}");
    }
    if r.phase != UpdatePhase::Done {
        let _ = writeln!(out, "  ended in phase:   {}", r.phase);
    }
    if let Some(h) = &r.health_evidence {
        let _ = writeln!(out, "  health:           {}", evidence(h));
    }
    if let Some(h) = &r.rollback_health_evidence {
        let _ = writeln!(out, "  rollback health:  {}", evidence(h));
    }
    let timings = r
        .timings
        .iter()
        .map(|t| format!("{} {}", t.phase, millis(t.ms)))
        .collect::<Vec<_>>();
    let _ = writeln!(
        out,
        "  timings:          {}{}total {}",
        timings.join(", "),
        if timings.is_empty() { "" } else { "; " },
        millis(r.total_ms)
    );
    if r.recovered {
        let _ = writeln!(
            out,
            "  recovered:        the agent restarted during the update and finished it from its journal"
        );
    }
    if !r.failed_logs.is_empty() {
        let _ = writeln!(
            out,
            "  last {} log line{} of the failed container:",
            r.failed_logs.len(),
            if r.failed_logs.len() == 1 { "" } else { "s" }
        );
        for line in &r.failed_logs {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

/// Where an update stands in one word or two: `in progress (received)`, `updated`,
/// `rolled_back`, `failed: no_result`, `undelivered`.
pub fn update_status(u: &UpdateRecord) -> String {
    if u.active {
        return format!("in progress ({})", u.state.as_str());
    }
    match (u.outcome, &u.error) {
        (Some(o), _) => o.as_str().to_string(),
        (None, Some(e)) => format!("{}: {}", u.state.as_str(), e.code),
        (None, None) => u.state.as_str().to_string(),
    }
}

/// The update history as a table, newest first (`with_agent` for the fleet-wide list).
pub fn updates(list: &[UpdateRecord], now: DateTime<Utc>, with_agent: bool) -> String {
    let mut headers = vec!["CREATED"];
    if with_agent {
        headers.push("AGENT");
    }
    headers.extend([
        "CONTAINER",
        "IMAGE",
        "STATUS",
        "PHASE",
        "TOOK",
        "COMMAND",
        "BY",
    ]);
    let mut table = Table::new(&headers);
    for u in list {
        let took = match (&u.report, u.finished_at) {
            (Some(r), _) => millis(r.total_ms),
            (None, Some(f)) => span((f - u.created_at).num_seconds().max(0) as u64),
            (None, None) => "-".into(),
        };
        let mut row = vec![ago(u.created_at, now)];
        if with_agent {
            row.push(u.agent_id.clone());
        }
        row.extend([
            u.target_label(),
            u.image.clone(),
            update_status(u),
            or_dash(u.phase.as_deref()),
            took,
            u.command_id.clone(),
            u.requested_by.clone(),
        ]);
        table.row(row);
    }
    table.render()
}

pub fn relay_status(s: &RelayStatus, addr: &str) -> String {
    format!(
        "relay {addr}: {}\n  version:           {}\n  key fingerprint:   {}\n  connected agents:  {}\n",
        s.status, s.version, s.relay_key_fingerprint, s.connected_agents
    )
}

#[cfg(test)]
mod tests;
