//! The agents list: filter by selector, free text and status, sort, one page at a time (the
//! API's keyset cursor, so it stays fast at any fleet size).

use super::{encode, or_error, query, render, Ctx, PageResult};
use crate::api;
use crate::api::error::QueryParams;
use crate::web::layout::{self, Live};
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use flotilla_shared::api::AgentInfo;
use maud::{html, Markup};
use serde::Deserialize;

/// Agents per page.
const PAGE_SIZE: &str = "100";

#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    #[serde(default)]
    selector: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    cursor: String,
}

pub async fn list((State(state), viewer): Ctx, Query(f): Query<Filter>) -> PageResult {
    let QueryParams(params) = query(&[
        ("selector", &f.selector),
        ("q", &f.q),
        ("status", &f.status),
        ("sort", &f.sort),
        ("cursor", &f.cursor),
        ("limit", PAGE_SIZE),
    ])?;
    let page = or_error(
        &viewer,
        api::agents::page(&state, &viewer.caller, params).await,
    )?;
    // The same filter, for the next page's and the first page's links.
    let link = |cursor: &str| {
        let pairs = [
            ("selector", f.selector.as_str()),
            ("q", f.q.as_str()),
            ("status", f.status.as_str()),
            ("sort", f.sort.as_str()),
            ("cursor", cursor),
        ];
        let query: Vec<String> = pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        format!("/ui/agents?{}", query.join("&"))
    };
    let body = html! {
        form.filters method="get" action="/ui/agents" {
            label { "Selector " input name="selector" value=(f.selector) placeholder="region=eu,tier=build"; }
            label { "Text " input name="q" value=(f.q) placeholder="name, id or label"; }
            label { "Status "
                select name="status" {
                    @for (s, label) in [("", "any"), ("online", "online"), ("offline", "offline"), ("revoked", "revoked"), ("updating", "updating now"), ("rolled_back", "rolled back (24 h)")] {
                        option value=(s) selected[s == f.status] { (label) }
                    }
                }
            }
            label { "Sort "
                select name="sort" {
                    @for (value, label) in SORTS {
                        option value=(value) selected[value == f.sort] { (label) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        p data-test="agents-shown" {
            (page.agents.len()) " agents on this page"
            @if !f.cursor.is_empty() { " · " a href=(link("")) data-test="first-page" { "first page" } }
        }
        (table(&page.agents, crate::store::now()))
        @if let Some(next) = &page.next_cursor {
            p { a.next href=(link(next)) data-test="next-page" { "Next page →" } }
        }
    };
    render("Agents", "/ui/agents", &viewer, &Live::kinds("agent"), body)
}

/// The orders offered (value of `sort`, label).
const SORTS: [(&str, &str); 4] = [
    ("", "name"),
    ("-name", "name, descending"),
    ("-enrolled_at", "newest first"),
    ("enrolled_at", "oldest first"),
];

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
