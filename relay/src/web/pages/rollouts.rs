//! Rollouts: the list with a start form (the CLI's defaults), and one rollout with each stage
//! as a progress bar, the soak countdown, per-agent outcomes with the rollback evidence, the
//! event log, and its actions (operate scope, confirmed). Live on rollout and update events.

use super::{or_error, query, render, Ctx, PageResult};
use crate::api;
use crate::web::layout::{self, Live};
use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use flotilla_shared::api::Scope;
use flotilla_shared::rollout::{RolloutCounts, RolloutInfo, DEFAULT_STAGES};
use maud::{html, Markup};

pub async fn list((State(state), viewer): Ctx) -> PageResult {
    let Json(rollouts) = or_error(
        &viewer,
        api::rollouts::list(
            State(state.clone()),
            viewer.caller.clone(),
            query(&[("limit", "100")])?,
        )
        .await,
    )?;
    let now = crate::store::now();
    let operate = viewer.caller.scope() >= Scope::Operate;
    let body = html! {
        @if operate { (start_form()) }
        @if rollouts.is_empty() { p.muted { "No rollouts yet." } } @else {
            table data-test="rollouts-table" {
                thead { tr { th { "Name" } th { "State" } th { "Stage" } th { "Progress" } th { "Started" } th { "By" } } }
                tbody {
                    @for r in &rollouts {
                        tr data-test="rollout-row" data-rollout-id=(r.id) {
                            td { a href={ "/ui/rollouts/" (r.id) } { (r.name) } }
                            td { span class={ "state " (r.state.as_str()) } data-test="rollout-state" { (r.state.as_str()) } }
                            td { (r.stage + 1) "/" (r.stages.len()) " " (r.stage_phase.as_str()) }
                            td { (counts_bar(&r.counts)) }
                            td { (layout::when(r.created_at, now)) }
                            td { (r.created_by) }
                        }
                    }
                }
            }
        }
    };
    render(
        "Rollouts",
        "/ui/rollouts",
        &viewer,
        &Live::kinds("rollout"),
        body,
    )
}

/// The start form: the JSON API's `POST /api/v1/rollouts`, with the CLI's defaults (a staging
/// selector soaks 48 h first when given, then 5 % 24 h, 25 % 12 h, 100 %).
fn start_form() -> Markup {
    html! {
        form.api-form #rollout-form data-method="POST" data-url="/api/v1/rollouts"
            data-confirm="Start this rollout?" data-go="/ui/rollouts/" {
            h2 { "Start a rollout" }
            label { "Selector " input name="selector" data-keep="" placeholder="region=eu (empty: every agent)"; }
            label { "Container " input name="container" required; }
            label { "Image " input name="image" required placeholder="registry/app:tag"; }
            label { "Staging selector " input name="staging" placeholder="env=staging (optional: soaks 48 h first)"; }
            label { "Stages " input name="stages" placeholder=(DEFAULT_STAGES); }
            label { "Health " input name="health" placeholder="auto"; }
            button type="submit" data-test="start-rollout" { "Start" }
        }
    }
}

/// The members of a stage or rollout as one bar.
pub fn counts_bar(c: &RolloutCounts) -> Markup {
    layout::segments(&[
        ("updated", c.updated, "ok"),
        ("updating", c.updating + c.reverting, "info"),
        ("pending", c.pending, "idle"),
        ("failed", c.failed + c.revert_failed, "bad"),
        ("undelivered", c.undelivered, "warn"),
        ("reverted", c.reverted, "warn"),
        ("skipped", c.skipped + c.no_target, "idle"),
    ])
}

pub async fn page((State(state), viewer): Ctx, Path(id): Path<String>) -> PageResult {
    let Json(r) = or_error(
        &viewer,
        api::rollouts::show(
            State(state.clone()),
            viewer.caller.clone(),
            Path(id.clone()),
        )
        .await,
    )?;
    let live = Live {
        kinds: "rollout,update,command",
        agent: None,
        subject: Some(id),
    };
    let operate = viewer.caller.scope() >= Scope::Operate;
    let title = format!("Rollout {}", r.name);
    render(
        &title,
        "/ui/rollouts",
        &viewer,
        &live,
        markup(&r, operate, crate::store::now()),
    )
}

fn markup(r: &RolloutInfo, operate: bool, now: DateTime<Utc>) -> Markup {
    let base = format!("/api/v1/rollouts/{}", r.id);
    let state = r.state.as_str();
    html! {
        section.facts {
            dl {
                dt { "State" } dd { span class={ "state " (state) } data-test="rollout-state" { (state) }
                    @if let Some(reason) = &r.reason { " " span.reason data-test="rollout-reason" { (reason) } } }
                dt { "Target" } dd { (r.target.to_string()) " → " code { (r.image) } }
                dt { "Selector" } dd { (r.selector.to_string()) }
                dt { "Stage" } dd { (r.stage + 1) " of " (r.stages.len()) ", " (r.stage_phase.as_str()) }
                @if let Some(secs) = r.soak_remaining_secs {
                    dt { "Soak" } dd data-test="soak" { (layout::span(secs as i64)) " left"
                        @if let Some(t) = r.soak_ends_at { " (until " (t.format("%Y-%m-%d %H:%M UTC")) ")" } }
                }
                dt { "Failures" } dd { (r.stage_failures) " this stage, " (r.accepted_failures) " accepted; on failure: " (r.on_failure.to_string()) }
                dt { "Started" } dd { (layout::when(r.created_at, now)) " by " (r.created_by) }
            }
        }
        @if operate {
            div.actions data-test="rollout-actions" {
                // Abort and revert is the API's abort with `{"revert": true}`.
                @for (action, body, label, confirm) in [
                    ("pause", "{}", "Pause", "Pause this rollout?"),
                    ("resume", "{}", "Resume", "Resume this rollout?"),
                    ("promote", "{}", "Promote", "Promote to the next stage now, skipping the soak?"),
                    ("abort", "{}", "Abort", "Abort this rollout (updated agents keep the new image)?"),
                    ("abort", r#"{"revert":true}"#, "Abort and revert", "Abort and put the old image back on every updated agent?"),
                ] {
                    (layout::action(label, "POST", &format!("{base}/{action}"), Some(body), confirm))
                }
            }
        }
        h2 { "Stages" }
        @for ((i, stage), counts) in r.stages.iter().enumerate().zip(stage_counts(r)) {
            div.stage data-test="stage" data-stage=(i) data-current[i == r.stage] {
                h3 { "Stage " (i + 1) ": " (stage.to_string()) }
                (counts_bar(&counts))
            }
        }
        h2 { "Agents" }
        table data-test="rollout-agents" {
            thead { tr { th { "Agent" } th { "Stage" } th { "Outcome" } th { "Containers" } th { "Reason" } } }
            tbody {
                @for a in &r.agents {
                    tr data-test="rollout-agent" data-agent-id=(a.agent_id) {
                        td { a href={ "/ui/agents/" (a.agent_id) } { (a.agent_name) } }
                        td { (a.stage + 1) }
                        td { span class={ "state " (a.outcome.as_str()) } { (a.outcome.as_str()) } }
                        td {
                            @for c in &a.containers {
                                div { (c.name) ": " (c.outcome.as_str())
                                    @if let Some(old) = &c.old_image { " (was " code { (old) } ")" }
                                    @if let Some(reason) = &c.reason { " — " span.evidence { (reason) } } }
                            }
                        }
                        td { (a.reason.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        h2 { "Events" }
        table data-test="rollout-events" {
            thead { tr { th { "When" } th { "Who" } th { "What" } th { "Detail" } } }
            tbody {
                @for e in r.events.iter().rev() {
                    tr {
                        td { (layout::when(e.at, now)) }
                        td { (e.actor) }
                        td { (e.action) @if let Some(s) = e.stage { " (stage " (s + 1) ")" } }
                        td.message { (e.detail) }
                    }
                }
            }
        }
    }
}

/// Each stage's members by outcome.
fn stage_counts(r: &RolloutInfo) -> Vec<RolloutCounts> {
    let mut counts = vec![RolloutCounts::default(); r.stages.len()];
    for a in &r.agents {
        if let Some(c) = counts.get_mut(a.stage) {
            c.add(a.outcome, 1);
        }
    }
    counts
}
