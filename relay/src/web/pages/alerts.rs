//! Alerts: firing and recent ones with ack (operate), the silences, and a silence form with a
//! duration and reason. Live on alert events.

use super::{or_error, query, render, Ctx, PageResult};
use crate::api;
use crate::web::layout::{self, Live};
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use flotilla_shared::alert::AlertInfo;
use flotilla_shared::api::Scope;
use maud::{html, Markup};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    #[serde(default)]
    state: String,
    #[serde(default)]
    severity: String,
}

pub async fn page((State(state), viewer): Ctx, Query(f): Query<Filter>) -> PageResult {
    let Json(alerts) = or_error(
        &viewer,
        api::alerts::list(
            State(state.clone()),
            viewer.caller.clone(),
            query(&[
                ("state", &f.state),
                ("severity", &f.severity),
                ("limit", "200"),
            ])?,
        )
        .await,
    )?;
    let Json(silences) = or_error(
        &viewer,
        api::alerts::list_silences(State(state.clone()), viewer.caller.clone()).await,
    )?;
    let now = crate::store::now();
    let operate = viewer.caller.scope() >= Scope::Operate;
    let body = html! {
        form.filters method="get" action="/ui/alerts" {
            label { "State " select name="state" {
                @for s in ["", "firing", "resolved", "all"] { option value=(s) selected[s == f.state] { (if s.is_empty() { "default" } else { s }) } }
            } }
            label { "Severity " select name="severity" {
                @for s in ["", "hard", "medium", "soft"] { option value=(s) selected[s == f.severity] { (if s.is_empty() { "any" } else { s }) } }
            } }
            button type="submit" { "Filter" }
        }
        @if alerts.is_empty() { p.muted data-test="no-alerts" { "No alerts." } } @else { (table(&alerts, now, operate)) }
        h2 { "Silences" }
        @if silences.is_empty() { p.muted { "No silence is active." } } @else {
            table data-test="silences" {
                thead { tr { th { "Selector" } th { "Rule" } th { "Subject" } th { "Until" } th { "By" } th {} } }
                tbody { @for s in &silences { tr {
                    td { (s.selector.to_string()) } td { (s.rule.as_deref().unwrap_or("any")) }
                    td { (s.subject.as_deref().unwrap_or("any")) } td { (layout::when(s.ends_at, now)) }
                    td { (s.created_by) }
                    td { @if operate { (layout::action("End", "DELETE", &format!("/api/v1/silences/{}", s.id), None, "End this silence?")) } }
                } } }
            }
        }
        @if operate {
            form.api-form #silence-form data-method="POST" data-url="/api/v1/silences" data-confirm="Create this silence?" {
                h3 { "Silence" }
                label { "Selector " input name="selector" data-keep="" placeholder="region=eu (empty: every agent)"; }
                label { "Rule " input name="rule" placeholder="any"; }
                label { "Subject " input name="subject" placeholder="any"; }
                label { "Duration (s) " input name="duration_secs" type="number" min="60" value="3600" required; }
                label { "Reason " input name="comment" required; }
                button type="submit" { "Silence" }
            }
        }
    };
    render("Alerts", "/ui/alerts", &viewer, &Live::kinds("alert"), body)
}

/// The alerts table (also on the overview and the agent page); `operate` shows the ack button.
pub fn table(alerts: &[AlertInfo], now: DateTime<Utc>, operate: bool) -> Markup {
    html! {
        table.alerts data-test="alerts-table" {
            thead { tr { th { "Severity" } th { "Rule" } th { "Agent" } th { "Subject" } th { "Message" } th { "State" } th { "Since" } th {} } }
            tbody {
                @for a in alerts {
                    tr data-test="alert-row" data-alert-id=(a.id) {
                        td { span class={ "severity " (a.severity.as_str()) } { (a.severity.as_str()) } }
                        td { (a.rule) }
                        td { @if let Some(id) = &a.agent_id { a href={ "/ui/agents/" (id) } { (a.agent_name.as_deref().unwrap_or(id)) } } }
                        td { (a.subject) }
                        td.message { (a.message) }
                        td data-test="alert-state" {
                            (a.state.as_str())
                            @if a.silenced { " (silenced)" }
                            @if let Some(by) = &a.acknowledged_by { " · acked by " span data-test="acked-by" { (by) } }
                        }
                        td { (layout::when(a.fired_at, now)) }
                        td {
                            @if operate && a.acknowledged_by.is_none() && a.resolved_at.is_none() {
                                (layout::action("Ack", "POST", &format!("/api/v1/alerts/{}/ack", a.id), Some("{}"), &format!("Acknowledge {}?", a.rule)))
                            }
                        }
                    }
                }
            }
        }
    }
}
