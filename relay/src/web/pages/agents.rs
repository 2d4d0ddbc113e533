//! The agents list: filter by selector and free text, sort, paginated.

use super::{or_error, query, render, Ctx, PageResult};
use crate::api;
use crate::web::layout::{self, Live};
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use flotilla_shared::api::AgentInfo;
use maud::{html, Markup};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    #[serde(default)]
    selector: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
}

pub async fn list((State(state), viewer): Ctx, Query(f): Query<Filter>) -> PageResult {
    let Json(agents) = or_error(
        &viewer,
        api::agents::list(
            State(state.clone()),
            viewer.caller.clone(),
            query(&[("selector", &f.selector)])?,
        )
        .await,
    )?;
    let text = f.q.to_lowercase();
    let shown: Vec<AgentInfo> = agents
        .into_iter()
        .filter(|a| f.status.is_empty() || a.status.as_str() == f.status)
        .filter(|a| {
            text.is_empty()
                || a.name.to_lowercase().contains(&text)
                || a.id.contains(&text)
                || a.labels
                    .iter()
                    .any(|(k, v)| format!("{k}={v}").to_lowercase().contains(&text))
        })
        .collect();
    let body = html! {
        form.filters method="get" action="/ui/agents" {
            label { "Selector " input name="selector" value=(f.selector) placeholder="region=eu,tier=build"; }
            label { "Text " input name="q" value=(f.q) placeholder="name, id or label"; }
            label { "Status "
                select name="status" {
                    @for s in ["", "online", "offline", "revoked"] {
                        option value=(s) selected[s == f.status] { (if s.is_empty() { "any" } else { s }) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        p { (shown.len()) " agents" }
        (table(&shown, crate::store::now()))
    };
    render("Agents", "/ui/agents", &viewer, &Live::kinds("agent"), body)
}

/// The agents table (also on the overview).
pub fn table(agents: &[AgentInfo], now: DateTime<Utc>) -> Markup {
    html! {
        table.agents data-test="agents-table" {
            thead { tr {
                th { "Name" } th { "Status" } th { "Labels" } th { "Version" }
                th { "CPU" } th { "Memory" } th { "Disk" } th { "Containers" } th { "Last heartbeat" }
            } }
            tbody {
                @for a in agents {
                    tr data-test="agent-row" data-agent-id=(a.id) {
                        td { a href={ "/ui/agents/" (a.id) } { (a.name) } }
                        td { span class={ "status " (a.status.as_str()) } data-test="agent-status" { (a.status.as_str()) } }
                        td.labels { @for (k, v) in &a.labels { span.label { (k) "=" (v) } " " } }
                        td { (a.agent_version) }
                        @if let Some(s) = &a.summary {
                            td { (layout::meter(s.cpu_percent)) }
                            td { (layout::meter(s.memory_used_percent)) }
                            td { (layout::meter(s.disk_max_used_percent)) }
                            td { (s.containers_running) "/" (s.containers_total) }
                        } @else {
                            td { (layout::none()) } td { (layout::none()) } td { (layout::none()) } td { (layout::none()) }
                        }
                        td { @if let Some(t) = a.last_heartbeat_at { (layout::when(t, now)) } @else { (layout::none()) } }
                    }
                }
            }
        }
    }
}
