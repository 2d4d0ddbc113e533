//! The fleet's backups, releases, the audit trail and (admin) the API tokens.

use super::{or_error, query, render, Ctx, PageResult};
use crate::api;
use crate::web::layout::{self, Live};
use axum::extract::{Query, State};
use axum::Json;
use flotilla_shared::api::Scope;
use maud::html;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct BackupFilter {
    #[serde(default)]
    status: String,
}

pub async fn backups((State(state), viewer): Ctx, Query(f): Query<BackupFilter>) -> PageResult {
    let Json(fleet) = or_error(
        &viewer,
        api::backups::fleet_backups(
            State(state.clone()),
            viewer.caller.clone(),
            query(&[("status", &f.status), ("limit", "500")])?,
        )
        .await,
    )?;
    let now = crate::store::now();
    let body = html! {
        form.filters method="get" action="/ui/backups" {
            label { "State " select name="status" {
                @for s in ["", "ok", "failed", "stale"] { option value=(s) selected[s == f.status] { (if s.is_empty() { "any" } else { s }) } }
            } }
            button type="submit" { "Filter" }
        }
        @if fleet.databases.is_empty() { p.muted { "No backups." } } @else {
            table data-test="backups-table" {
                thead { tr { th { "Agent" } th { "Database" } th { "State" } th { "Last success" } th { "Latest" } th { "Size" } } }
                tbody { @for d in &fleet.databases { tr {
                    td { a href={ "/ui/agents/" (d.agent_id) } { (d.agent_name) } }
                    td { (d.key) }
                    td { span class={ "state " (d.state.as_str()) } { (d.state.as_str()) } }
                    td { @if let Some(t) = d.last_success_at { (layout::when(t, now)) } @else { "never" } }
                    td { (d.latest.status.as_str()) @if let Some(e) = &d.latest.error { " " span.error { (e) } } }
                    td { @if let Some(n) = d.latest.size_bytes { (layout::bytes(n)) } }
                } } }
            }
            @if fleet.truncated { p.muted { "More databases match than are shown." } }
        }
    };
    render(
        "Backups",
        "/ui/backups",
        &viewer,
        &Live::kinds("backup"),
        body,
    )
}

pub async fn releases((State(state), viewer): Ctx) -> PageResult {
    let Json(releases) = or_error(
        &viewer,
        api::releases::list(State(state.clone()), viewer.caller.clone()).await,
    )?;
    let now = crate::store::now();
    let admin = viewer.caller.scope() >= Scope::Admin;
    let body = html! {
        @if releases.is_empty() { p.muted { "No agent builds published." } } @else {
            table data-test="releases-table" {
                thead { tr { th { "Version" } th { "Arch" } th { "Size" } th { "SHA-256" } th { "Published" } th { "Broken" } th {} } }
                tbody { @for r in &releases { tr {
                    td { (r.version) } td { (r.arch) } td { (layout::bytes(r.size)) }
                    td { code { (&r.sha256[..r.sha256.len().min(16)]) } }
                    td { (layout::when(r.created_at, now)) " by " (r.published_by) }
                    td { @if let Some(b) = &r.broken { span.error { (b.reason) } } }
                    td { @if admin {
                        @let url = format!("/api/v1/releases/{}/{}/broken", r.version, r.arch);
                        @if r.broken.is_some() {
                            (layout::action("Unmark broken", "DELETE", &url, None, &format!("Unmark {} {} as broken?", r.version, r.arch)))
                        } @else {
                            (layout::action("Mark broken", "POST", &url, Some(r#"{"reason":"marked broken from the dashboard"}"#), &format!("Mark {} {} as broken?", r.version, r.arch)))
                        }
                    } }
                } } }
            }
        }
    };
    render(
        "Releases",
        "/ui/releases",
        &viewer,
        &Live::kinds("release"),
        body,
    )
}

pub async fn audit((State(state), viewer): Ctx) -> PageResult {
    let Json(rows) = or_error(
        &viewer,
        api::system::audit_trail(
            State(state.clone()),
            viewer.caller.clone(),
            query(&[("limit", "200")])?,
        )
        .await,
    )?;
    let now = crate::store::now();
    let body = html! {
        table data-test="audit-table" {
            thead { tr { th { "When" } th { "Who" } th { "What" } th { "Target" } th { "Outcome" } th { "Detail" } } }
            tbody { @for r in &rows { tr data-test="audit-row" {
                td { (layout::when(r.ts, now)) } td { (r.actor) } td { (r.action) } td { (r.target) }
                td { (r.outcome) } td.message { (r.detail.as_deref().unwrap_or("")) }
            } } }
        }
    };
    render("Audit", "/ui/audit", &viewer, &Live::default(), body)
}

pub async fn tokens((State(state), viewer): Ctx) -> PageResult {
    let Json(tokens) = or_error(
        &viewer,
        api::tokens::list_api_tokens(State(state.clone()), viewer.caller.clone()).await,
    )?;
    let now = crate::store::now();
    let body = html! {
        form.api-form #token-form data-method="POST" data-url="/api/v1/api-tokens"
            data-confirm="Create this API token?" data-output="token" {
            h2 { "Create an API token" }
            label { "Name " input name="name" required; }
            label { "Scope " select name="scope" { option value="read" { "read" } option value="operate" { "operate" } option value="admin" { "admin" } } }
            button type="submit" { "Create" }
            p.muted { "The token is shown once, below, and never again." }
        }
        table data-test="tokens-table" {
            thead { tr { th { "Name" } th { "Scope" } th { "Created" } th { "By" } th { "Revoked" } th {} } }
            tbody { @for t in &tokens { tr {
                td { (t.name) } td { (t.scope.as_str()) } td { (layout::when(t.created_at, now)) }
                td { (t.created_by) }
                td { @if let Some(at) = t.revoked_at { (layout::when(at, now)) } }
                td { @if t.revoked_at.is_none() {
                    (layout::action("Revoke", "DELETE", &format!("/api/v1/api-tokens/{}", t.id), None, &format!("Revoke token {}? Its dashboard sessions end too.", t.name)))
                } }
            } } }
        }
    };
    render("API tokens", "/ui/tokens", &viewer, &Live::default(), body)
}
