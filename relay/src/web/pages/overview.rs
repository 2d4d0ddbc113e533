//! The fleet overview, the dashboard's first page: counts by state (each a link to the
//! filtered list), what is in flight, and the newest firing alerts. Live on every event.

use super::{or_error, query, render, Ctx, PageResult};
use crate::api;
use crate::api::error::QueryParams;
use crate::web::layout::Live;
use axum::extract::State;
use flotilla_shared::api::{AgentInfo, FleetOverview};
use maud::{html, Markup};

/// Agents listed under the counts.
const AGENTS_SHOWN: &str = "20";

pub async fn page((State(state), viewer): Ctx) -> PageResult {
    let overview = or_error(
        &viewer,
        api::fleet::overview(&state, &viewer.caller, crate::store::now()).await,
    )?;
    let QueryParams(params) = query(&[("limit", AGENTS_SHOWN)])?;
    let agents = or_error(
        &viewer,
        api::agents::page(&state, &viewer.caller, params).await,
    )?;
    render(
        "Fleet overview",
        "/ui/",
        &viewer,
        &Live::kinds(""),
        markup(&overview, &agents.agents, crate::store::now()),
    )
}

fn tile(label: &str, n: u64, href: &str, test: &str, class: &str) -> Markup {
    html! {
        a.tile class=(class) href=(href) data-test=(test) {
            span.n { (n) } span.label { (label) }
        }
    }
}

fn markup(v: &FleetOverview, agents: &[AgentInfo], now: chrono::DateTime<chrono::Utc>) -> Markup {
    let (a, al, b) = (&v.agents, &v.alerts_firing, &v.backups);
    html! {
        section.tiles {
            (tile("online", a.online, "/ui/agents?status=online", "count-online", "ok"))
            (tile("offline", a.offline, "/ui/agents?status=offline", "count-offline", "warn"))
            (tile("updating now", a.updating, "/ui/agents?status=updating", "count-updating", "info"))
            (tile("rolled back (24 h)", a.rolled_back_24h, "/ui/agents?status=rolled_back", "count-rolled-back", "warn"))
            (tile("hard alerts", al.hard, "/ui/alerts?state=firing&severity=hard", "count-alerts-hard", "bad"))
            (tile("medium alerts", al.medium, "/ui/alerts?state=firing&severity=medium", "count-alerts-medium", "warn"))
            (tile("soft alerts", al.soft, "/ui/alerts?state=firing&severity=soft", "count-alerts-soft", "info"))
            (tile("backups failed", b.failed, "/ui/backups?status=failed", "count-backups-failed", "bad"))
            (tile("backups stale", b.stale, "/ui/backups?status=stale", "count-backups-stale", "warn"))
        }
        h2 { "In flight" }
        @if v.rollouts.is_empty() && v.updates.is_empty() && v.jobs.is_empty() {
            p.muted data-test="nothing-in-flight" { "Nothing in flight." }
        }
        @for r in &v.rollouts {
            div.flight data-test="flight-rollout" {
                a href={ "/ui/rollouts/" (r.id) } { (r.name) }
                " · " (r.state.as_str()) " · stage " (r.stage + 1) "/" (r.stages.len())
                (super::rollouts::counts_bar(&r.counts))
            }
        }
        @for j in &v.jobs {
            div.flight data-test="flight-job" {
                "job " code { (j.id) } " · " (j.kind.as_str()) " on " code { (j.selector.to_string()) }
                " · " (j.counts.succeeded + j.counts.failed + j.counts.rejected + j.counts.undelivered + j.counts.skipped)
                "/" (j.counts.targets) " done, " (j.counts.in_flight) " in flight"
            }
        }
        @if v.jobs_total > v.jobs.len() as u64 {
            p.muted { (v.jobs_total) " jobs running in all" }
        }
        @for u in &v.updates {
            div.flight data-test="flight-update" {
                "update of " (u.target_label()) " on "
                a href={ "/ui/agents/" (u.agent_id) } { (u.agent_id) }
                " to " code { (u.image) } " · " (u.phase.as_deref().unwrap_or("queued"))
            }
        }
        @if v.updates_total > v.updates.len() as u64 {
            p.muted { (v.updates_total) " updates in progress in all" }
        }
        h2 { "Newest firing alerts" }
        @if v.newest_alerts.is_empty() {
            p.muted data-test="no-alerts" { "No alert is firing." }
        } @else {
            (super::alerts::table(&v.newest_alerts, now, false))
        }
        h2 { "Agents" }
        p { (a.enrolled) " enrolled · " a href="/ui/agents" { "all agents" } }
        (super::agents::table(agents, now))
    }
}
