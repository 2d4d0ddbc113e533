//! The fleet overview, the dashboard's first page: counts by state (each a link to the
//! filtered list), what is in flight, and the newest firing alerts. Live on every event.

use super::{or_error, query, render, Ctx, PageResult};
use crate::api;
use crate::web::layout::Live;
use axum::extract::State;
use axum::Json;
use flotilla_shared::alert::{AlertInfo, Severity};
use flotilla_shared::api::{AgentInfo, AgentStatus, UpdateRecord};
use flotilla_shared::rollout::RolloutInfo;
use maud::{html, Markup};

/// Newest firing alerts shown.
const NEWEST_ALERTS: usize = 10;

pub async fn page((State(state), viewer): Ctx) -> PageResult {
    let caller = viewer.caller.clone();
    let Json(agents) = or_error(
        &viewer,
        api::agents::list(State(state.clone()), caller.clone(), query(&[])?).await,
    )?;
    let Json(alerts) = or_error(
        &viewer,
        api::alerts::list(
            State(state.clone()),
            caller.clone(),
            query(&[("state", "firing"), ("limit", "1000")])?,
        )
        .await,
    )?;
    let Json(rollouts) = or_error(
        &viewer,
        api::rollouts::list(
            State(state.clone()),
            caller.clone(),
            query(&[("state", "active")])?,
        )
        .await,
    )?;
    let Json(updating) = or_error(
        &viewer,
        api::updates::fleet_updates(
            State(state.clone()),
            caller.clone(),
            query(&[("active", "true")])?,
        )
        .await,
    )?;
    let Json(failed) = or_error(
        &viewer,
        api::backups::fleet_backups(
            State(state.clone()),
            caller.clone(),
            query(&[("status", "failed")])?,
        )
        .await,
    )?;
    let Json(stale) = or_error(
        &viewer,
        api::backups::fleet_backups(State(state.clone()), caller, query(&[("status", "stale")])?)
            .await,
    )?;
    let view = View {
        agents: &agents,
        alerts: &alerts,
        rollouts: &rollouts,
        updating: &updating,
        backups_failed: failed.databases.len(),
        backups_stale: stale.databases.len(),
    };
    render(
        "Fleet overview",
        "/ui/",
        &viewer,
        &Live::kinds(""),
        markup(&view, crate::store::now()),
    )
}

struct View<'a> {
    agents: &'a [AgentInfo],
    alerts: &'a [AlertInfo],
    rollouts: &'a [RolloutInfo],
    updating: &'a [UpdateRecord],
    backups_failed: usize,
    backups_stale: usize,
}

fn tile(label: &str, n: usize, href: &str, test: &str, class: &str) -> Markup {
    html! {
        a.tile class=(class) href=(href) data-test=(test) {
            span.n { (n) } span.label { (label) }
        }
    }
}

fn markup(v: &View, now: chrono::DateTime<chrono::Utc>) -> Markup {
    let count = |s: AgentStatus| v.agents.iter().filter(|a| a.status == s).count();
    let severity = |s: Severity| v.alerts.iter().filter(|a| a.severity == s).count();
    let updating_agents = {
        let mut ids: Vec<&str> = v.updating.iter().map(|u| u.agent_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    html! {
        section.tiles {
            (tile("online", count(AgentStatus::Online), "/ui/agents?status=online", "count-online", "ok"))
            (tile("offline", count(AgentStatus::Offline), "/ui/agents?status=offline", "count-offline", "warn"))
            (tile("updating now", updating_agents, "/ui/rollouts", "count-updating", "info"))
            (tile("hard alerts", severity(Severity::Hard), "/ui/alerts?state=firing&severity=hard", "count-alerts-hard", "bad"))
            (tile("medium alerts", severity(Severity::Medium), "/ui/alerts?state=firing&severity=medium", "count-alerts-medium", "warn"))
            (tile("soft alerts", severity(Severity::Soft), "/ui/alerts?state=firing&severity=soft", "count-alerts-soft", "info"))
            (tile("backups failed", v.backups_failed, "/ui/backups?status=failed", "count-backups-failed", "bad"))
            (tile("backups stale", v.backups_stale, "/ui/backups?status=stale", "count-backups-stale", "warn"))
        }
        h2 { "In flight" }
        @if v.rollouts.is_empty() && v.updating.is_empty() {
            p.muted data-test="nothing-in-flight" { "Nothing in flight." }
        }
        @for r in v.rollouts {
            div.flight data-test="flight-rollout" {
                a href={ "/ui/rollouts/" (r.id) } { (r.name) }
                " · " (r.state.as_str()) " · stage " (r.stage + 1) "/" (r.stages.len())
                (super::rollouts::counts_bar(&r.counts))
            }
        }
        @for u in v.updating {
            div.flight data-test="flight-update" {
                "update of " (u.container_name.as_deref().unwrap_or(&u.container)) " on "
                a href={ "/ui/agents/" (u.agent_id) } { (u.agent_id) }
                " to " code { (u.image) } " · " (u.phase.as_deref().unwrap_or("queued"))
            }
        }
        h2 { "Newest firing alerts" }
        @if v.alerts.is_empty() {
            p.muted data-test="no-alerts" { "No alert is firing." }
        } @else {
            (super::alerts::table(&v.alerts[..v.alerts.len().min(NEWEST_ALERTS)], now, false))
        }
        h2 { "Agents" }
        p { (v.agents.len()) " enrolled · " a href="/ui/agents" { "all agents" } }
        (super::agents::table(&v.agents[..v.agents.len().min(20)], now))
    }
}
