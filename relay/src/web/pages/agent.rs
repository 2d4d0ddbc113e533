//! One agent: host metrics, every container with its actions (operate scope, confirmed), the
//! update form, and the agent's events, updates, backups and alerts. Live on events about it.

use super::{or_error, query, render, Ctx, PageResult};
use crate::api;
use crate::web::layout::{self, Live};
use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use flotilla_shared::alert::AlertInfo;
use flotilla_shared::api::{
    AgentDetail, EventRecord, MetricsHistory, MetricsPoint, Scope, UpdateRecord,
};
use flotilla_shared::backup::AgentBackups;
use flotilla_shared::command::ContainerInfo;
use maud::{html, Markup};

pub async fn page((State(state), viewer): Ctx, Path(id): Path<String>) -> PageResult {
    let caller = viewer.caller.clone();
    let Json(detail) = or_error(
        &viewer,
        api::agents::show(State(state.clone()), caller.clone(), Path(id.clone())).await,
    )?;
    let Json(events) = or_error(
        &viewer,
        api::agents::events(
            State(state.clone()),
            caller.clone(),
            Path(id.clone()),
            query(&[("limit", "1000")])?,
        )
        .await,
    )?;
    let Json(updates) = or_error(
        &viewer,
        api::updates::agent_updates(
            State(state.clone()),
            caller.clone(),
            Path(id.clone()),
            query(&[])?,
        )
        .await,
    )?;
    let Json(backups) = or_error(
        &viewer,
        api::backups::agent_backups(
            State(state.clone()),
            caller.clone(),
            Path(id.clone()),
            query(&[("limit", "20")])?,
        )
        .await,
    )?;
    let Json(metrics) = or_error(
        &viewer,
        api::agents::metrics(
            State(state.clone()),
            caller.clone(),
            Path(id.clone()),
            query(&[("range", "24h")])?,
        )
        .await,
    )?;
    let Json(alerts) = or_error(
        &viewer,
        api::alerts::list(
            State(state.clone()),
            caller,
            query(&[("agent", &id), ("limit", "50")])?,
        )
        .await,
    )?;
    let view = View {
        detail: &detail,
        events: newest(&events, 50),
        updates: &updates,
        backups: &backups,
        alerts: &alerts,
        metrics: &metrics,
        operate: viewer.caller.scope() >= Scope::Operate,
    };
    let live = Live {
        kinds: "",
        agent: Some(id),
        subject: None,
    };
    render(
        &detail.agent.name,
        "/ui/agents",
        &viewer,
        &live,
        markup(&view, crate::store::now()),
    )
}

/// The newest `n` events, newest first (the API lists oldest first).
fn newest(events: &[EventRecord], n: usize) -> Vec<&EventRecord> {
    events.iter().rev().take(n).collect()
}

struct View<'a> {
    detail: &'a AgentDetail,
    events: Vec<&'a EventRecord>,
    updates: &'a [UpdateRecord],
    backups: &'a AgentBackups,
    alerts: &'a [AlertInfo],
    metrics: &'a MetricsHistory,
    operate: bool,
}

/// CPU, memory and disk over the last 24 hours, in percent.
fn history(m: &MetricsHistory, now: DateTime<Utc>) -> Markup {
    let series = |f: fn(&MetricsPoint) -> f32| -> Vec<(i64, f64)> {
        m.points
            .iter()
            .map(|p| (p.at.timestamp(), f64::from(f(p))))
            .collect()
    };
    let all: [layout::Series; 3] = [
        ("CPU %", "cpu", series(|p| p.cpu_percent)),
        ("memory %", "mem", series(|p| p.memory_used_percent)),
        (
            "fullest disk %",
            "disk",
            series(|p| p.disk_max_used_percent),
        ),
    ];
    html! {
        div data-test="metrics-chart" data-points=(m.points.len()) {
            (layout::chart(
                "Last 24 hours (5-minute means)",
                &all,
                100.0,
                (now.timestamp() - 24 * 3600, now.timestamp()),
                2 * i64::from(m.resolution_seconds),
            ))
        }
    }
}

fn markup(v: &View, now: DateTime<Utc>) -> Markup {
    let a = &v.detail.agent;
    let hb = v.detail.heartbeat.as_ref();
    html! {
        section.facts data-test="agent-facts" {
            dl {
                dt { "Status" } dd { span class={ "status " (a.status.as_str()) } data-test="agent-status" { (a.status.as_str()) } }
                dt { "Id" } dd { code { (a.id) } }
                dt { "Labels" } dd { @for (k, val) in &a.labels { span.label { (k) "=" (val) } " " } }
                dt { "Version" } dd { (a.agent_version) }
                dt { "Last heartbeat" } dd { @if let Some(t) = a.last_heartbeat_at { (layout::when(t, now)) } @else { (layout::none()) } }
                @if let Some(hb) = hb {
                    dt { "Host" } dd { (hb.host.hostname) " · " (hb.host.os) " · " (hb.host.arch) " · " (hb.host.cpu_count) " CPUs" }
                    dt { "CPU" } dd { (layout::meter(hb.host.cpu_percent)) " load " (format!("{:.2}", hb.host.load_1)) }
                    dt { "Memory" } dd { (layout::meter(hb.host.memory_used_percent())) " " (layout::bytes(hb.host.memory_used_bytes)) " of " (layout::bytes(hb.host.memory_total_bytes)) }
                    @for fs in &hb.host.filesystems {
                        dt { "Disk " (fs.mount_point) } dd { (layout::meter(fs.used_percent)) " " (layout::bytes(fs.available_bytes)) " free of " (layout::bytes(fs.total_bytes)) }
                    }
                }
            }
        }
        (history(v.metrics, now))
        h2 { "Containers" }
        @match hb {
            None => p.muted { "No heartbeat yet." },
            Some(hb) => {
                @if let Some(e) = &hb.docker.error { p.error { "Docker: " (e) } }
                (containers(&a.id, &hb.docker.containers, v.operate))
            }
        }
        @if v.operate { (update_form(&a.id)) }
        // --- compose (issue 17, part 1) ---
        @if let Some(hb) = hb { @if !hb.compose_drift.is_empty() {
            h2 { "Compose drift" }
            (super::compose::drift_table(&hb.compose_drift))
        } }
        // --- host certificates (issue 17, part 2) ---
        @if let Some(hb) = hb { @if !hb.host.certificates.is_empty() {
            h2 { "Host certificates" }
            (super::certificates::table(&hb.host.certificates, now))
        } }
        h2 { "Alerts" }
        @if v.alerts.is_empty() { p.muted { "None." } } @else { (super::alerts::table(v.alerts, now, v.operate)) }
        h2 { "Updates" }
        (updates(v.updates, now))
        h2 { "Backups" }
        (backups(v.backups, now))
        h2 { "Events" }
        table data-test="agent-events" {
            thead { tr { th { "When" } th { "Kind" } th { "Container" } th { "Message" } } }
            tbody {
                @for e in &v.events {
                    tr {
                        td { (layout::when(e.event.at, now)) }
                        td { (e.event.kind.as_str()) }
                        td { (e.event.container_name.as_deref().unwrap_or("")) }
                        td.message { (e.event.message) }
                    }
                }
            }
        }
    }
}

fn containers(agent_id: &str, list: &[ContainerInfo], operate: bool) -> Markup {
    let url = format!("/api/v1/agents/{agent_id}/commands?wait=60");
    html! {
        table.containers data-test="containers" {
            thead { tr {
                th { "Name" } th { "State" } th { "Health" } th { "Restarts" } th { "Image" } th { "Digest" }
                th { "Actions" }
            } }
            tbody {
                @for c in list {
                    @let arg = serde_json::json!({"container": c.name}).to_string();
                    @let body = |kind: &str| serde_json::json!({"kind": kind, "args": {"container": c.name}}).to_string();
                    tr data-test="container-row" data-container=(c.name) {
                        td { (c.name) }
                        td { span class={ "state " (c.state) } data-test="container-state" { (c.state) } " " span.muted { (c.status) } }
                        td { (c.health.as_deref().unwrap_or("")) }
                        td { (c.restart_count) }
                        td { code { (c.image) } }
                        td { code title=(c.image_id) { (short_digest(&c.image_id)) } }
                        td.actions {
                            @if operate {
                                @if c.state == "running" {
                                    (layout::action("Stop", "POST", &url, Some(&body("container.stop")), &format!("Stop container {}?", c.name)))
                                    (layout::action("Restart", "POST", &url, Some(&body("container.restart")), &format!("Restart container {}?", c.name)))
                                } @else {
                                    (layout::action("Start", "POST", &url, Some(&body("container.start")), &format!("Start container {}?", c.name)))
                                }
                            }
                            button.logs type="button" data-url=(url) data-container=(c.name)
                                data-body=(serde_json::json!({"kind": "container.logs", "args": {"container": c.name, "tail": 200}}).to_string())
                                data-args=(arg) { "Logs" }
                        }
                    }
                }
            }
        }
        p.muted { "Logs show the last 200 lines, as text." }
    }
}

/// The update form: the JSON API's `container.update` with its health options.
fn update_form(agent_id: &str) -> Markup {
    html! {
        form.api-form #update-form data-method="POST"
            data-url={ "/api/v1/agents/" (agent_id) "/commands" }
            data-kind="container.update" data-confirm="Update this container?" {
            h3 { "Update a container" }
            label { "Container " input name="container" required; }
            label { "Image " input name="image" required placeholder="registry/app:tag"; }
            label { "Health " input name="health" value="auto" placeholder="auto, docker, running, http:8080/healthz, tcp:5432"; }
            label { "Health timeout (s) " input name="health_timeout_secs" type="number" min="1"; }
            button type="submit" { "Update" }
        }
    }
}

fn short_digest(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

fn updates(list: &[UpdateRecord], now: DateTime<Utc>) -> Markup {
    html! {
        @if list.is_empty() { p.muted { "No updates." } } @else {
            table data-test="agent-updates" {
                thead { tr { th { "When" } th { "Container" } th { "Image" } th { "By" } th { "State" } th { "Outcome" } } }
                tbody {
                    @for u in list.iter().take(50) {
                        tr {
                            td { (layout::when(u.created_at, now)) }
                            td { (u.target_label()) }
                            td { code { (u.image) } }
                            td { (u.requested_by) }
                            td data-test="update-progress" { (u.state.as_str()) @if let Some(p) = &u.phase { " · " (p) }
                                @if let (true, Some(l)) = (u.active, u.pull) { " · " (l.done) "/" (l.total) " layers pulled" } }
                            td {
                                @if let Some(o) = u.outcome { (o.as_str()) }
                                @if let Some(e) = &u.error { " " span.error { (e.message) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn backups(b: &AgentBackups, now: DateTime<Utc>) -> Markup {
    html! {
        @if b.databases.is_empty() { p.muted { "No backups reported." } } @else {
            table data-test="agent-backups" {
                thead { tr { th { "Database" } th { "State" } th { "Last success" } th { "Latest" } th { "Size" } } }
                tbody {
                    @for d in &b.databases {
                        tr {
                            td { (d.key) }
                            td { span class={ "state " (d.state.as_str()) } { (d.state.as_str()) } }
                            td { @if let Some(t) = d.last_success_at { (layout::when(t, now)) } @else { "never" } }
                            td { (d.latest.status.as_str()) " " (layout::when(d.latest.finished_at, now))
                                 @if let Some(e) = &d.latest.error { " " span.error { (e) } } }
                            td { @if let Some(n) = d.latest.size_bytes { (layout::bytes(n)) } }
                        }
                    }
                }
            }
        }
    }
}
