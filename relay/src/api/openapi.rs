//! The OpenAPI 3.1 document of the relay's HTTP API, served unauthenticated at
//! `GET /api/v1/openapi.json` (it describes the API, it holds no fleet data; an integrator
//! fetches it before it has a token).
//!
//! The schemas are derived (utoipa, feature `openapi` of flotilla-shared, which only the relay
//! enables) from the same request/response types the handlers and the CLI use. The operations
//! are the data in [`ROUTES`]: method, path, the scope the handler's `caller.require` asks for,
//! body and answer types. A test holds [`ROUTES`] and the router's `.route(` table in
//! `relay/src/api.rs` equal (both directions), so a route cannot be added without its
//! description. Covered: every `/api/` route plus the machine endpoints (`/healthz`, `/readyz`,
//! `/metrics`, enrollment, `/install.sh`, `/download/...`); not covered: the dashboard's `/ui/`
//! HTML pages, the agent websocket ([`CONNECT_PATH`]) and the test-only debug route.
//!
//! [`CONNECT_PATH`]: flotilla_shared::protocol::CONNECT_PATH

use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{Array, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi as Document, OpenApiBuilder, Paths, Ref, RefOr, Required,
    ResponseBuilder, Schema,
};
use utoipa::OpenApi;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// What a request body or an answer carries.
#[derive(Clone, Copy, Debug)]
pub enum Body {
    /// Nothing (a 204, or an operation without a body).
    None,
    /// JSON of the named shared schema.
    Json(&'static str),
    /// A JSON array of the named shared schema.
    List(&'static str),
    /// Any JSON value (this document itself).
    AnyJson,
    /// Bytes of this media type (agent builds, scripts, Prometheus text).
    Raw(&'static str),
    /// Server-Sent Events whose `data:` is JSON of the named schema.
    EventStream(&'static str),
}

/// One operation of the route table.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    /// The scope the handler requires; `None`: unauthenticated.
    pub scope: Option<&'static str>,
    pub summary: &'static str,
    pub request: Body,
    /// Success status and body.
    pub status: u16,
    pub response: Body,
}

const fn route(
    method: &'static str,
    path: &'static str,
    scope: Option<&'static str>,
    summary: &'static str,
    request: Body,
    status: u16,
    response: Body,
) -> Route {
    Route {
        method,
        path,
        scope,
        summary,
        request,
        status,
        response,
    }
}

const READ: Option<&str> = Some("read");
const OPERATE: Option<&str> = Some("operate");
const ADMIN: Option<&str> = Some("admin");
use Body::{AnyJson, EventStream, Json, List, None as Empty, Raw};

/// Every operation the document describes (see the module doc for what is left out).
pub const ROUTES: &[Route] = &[
    route("get", "/healthz", None, "Liveness and relay status", Empty, 200, Json("RelayStatus")),
    route("get", "/readyz", None, "Readiness (503 while the store is unreachable)", Empty, 200, Json("RelayStatus")),
    route("get", "/metrics", READ, "Prometheus metrics", Empty, 200, Raw("text/plain")),
    route("post", "/api/v1/enroll", None, "An agent enrolls with a one-time enrollment token", Json("EnrollRequest"), 200, Json("EnrollResponse")),
    route("get", OPENAPI_PATH, None, "This document", Empty, 200, AnyJson),
    route("post", "/api/v1/enrollment-tokens", OPERATE, "Create an enrollment token (shown once)", Json("CreateEnrollmentToken"), 201, Json("EnrollmentTokenCreated")),
    route("get", "/api/v1/enrollment-tokens", READ, "List enrollment tokens", Empty, 200, List("EnrollmentTokenInfo")),
    route("delete", "/api/v1/enrollment-tokens/{id}", OPERATE, "Revoke an enrollment token", Empty, 204, Empty),
    route("post", "/api/v1/api-tokens", ADMIN, "Create an API token (shown once)", Json("CreateApiToken"), 201, Json("ApiTokenCreated")),
    route("get", "/api/v1/api-tokens", ADMIN, "List API tokens", Empty, 200, List("ApiTokenInfo")),
    route("delete", "/api/v1/api-tokens/{id}", ADMIN, "Revoke an API token (and its sessions)", Empty, 204, Empty),
    route("get", "/api/v1/agents", READ, "One page of agents (the next page's cursor is in X-Next-Cursor and Link)", Empty, 200, List("AgentInfo")),
    route("get", "/api/v1/agents/{id}", READ, "One agent with its latest heartbeat", Empty, 200, Json("AgentDetail")),
    route("patch", "/api/v1/agents/{id}", OPERATE, "Change an agent's name or labels", Json("PatchAgent"), 200, Json("AgentInfo")),
    route("delete", "/api/v1/agents/{id}", OPERATE, "Revoke an agent", Empty, 204, Empty),
    route("get", "/api/v1/agents/{id}/metrics", READ, "An agent's CPU, memory and disk history (5-minute points over 24 h, hourly over 30 days)", Empty, 200, Json("MetricsHistory")),
    route("get", "/api/v1/fleet/overview", READ, "The fleet at a glance: counts by state and what is in flight", Empty, 200, Json("FleetOverview")),
    route("get", "/api/v1/agents/{id}/events", READ, "An agent's events, newest first", Empty, 200, List("EventRecord")),
    route("post", "/api/v1/agents/{id}/commands", OPERATE, "Send a signed command to an agent", Json("CreateCommand"), 201, Json("CommandInfo")),
    route("get", "/api/v1/agents/{id}/updates", READ, "An agent's update history", Empty, 200, List("UpdateRecord")),
    route("get", "/api/v1/updates", READ, "The fleet's update history", Empty, 200, List("UpdateRecord")),
    route("get", "/api/v1/agents/{id}/backups", READ, "An agent's databases and backup history", Empty, 200, Json("AgentBackups")),
    route("delete", "/api/v1/agents/{id}/backups", OPERATE, "Forget a backup key (query `key`)", Empty, 204, Empty),
    route("get", "/api/v1/backups", READ, "The fleet's backups", Empty, 200, Json("FleetBackups")),
    route("get", "/api/v1/commands/{id}", READ, "One command", Empty, 200, Json("CommandInfo")),
    route("post", "/api/v1/jobs", OPERATE, "Send a command to every agent a selector matches", Json("CreateJob"), 201, Json("JobInfo")),
    route("get", "/api/v1/jobs/{id}", READ, "One job", Empty, 200, Json("JobInfo")),
    route("get", "/api/v1/alerts", READ, "List alerts", Empty, 200, List("AlertInfo")),
    route("get", "/api/v1/alerts/{id}", READ, "One alert", Empty, 200, Json("AlertInfo")),
    route("post", "/api/v1/alerts/{id}/ack", OPERATE, "Acknowledge an alert (body optional)", Json("AckRequest"), 200, Json("AlertInfo")),
    route("get", "/api/v1/notifications", READ, "Alert and lifecycle notifications per channel, newest first: pending (with the next attempt), delivered or failed (given up)", Empty, 200, List("NotificationDelivery")),
    route("get", "/api/v1/silences", READ, "List silences", Empty, 200, List("Silence")),
    route("post", "/api/v1/silences", OPERATE, "Create a silence", Json("CreateSilence"), 201, Json("Silence")),
    route("delete", "/api/v1/silences/{id}", OPERATE, "Delete a silence", Empty, 204, Empty),
    route("post", "/api/v1/rollouts", OPERATE, "Start a staged rollout", Json("CreateRollout"), 201, Json("RolloutInfo")),
    route("get", "/api/v1/rollouts", READ, "List rollouts", Empty, 200, List("RolloutInfo")),
    route("get", "/api/v1/rollouts/{id}", READ, "One rollout", Empty, 200, Json("RolloutInfo")),
    route("post", "/api/v1/rollouts/{id}/{action}", OPERATE, "pause, resume, promote or abort a rollout (409 when it does not apply now)", Empty, 200, Json("RolloutInfo")),
    route("get", "/api/v1/releases", READ, "List published agent builds", Empty, 200, List("ReleaseInfo")),
    route("put", "/api/v1/releases/{version}/{arch}", ADMIN, "Publish an agent build (the binary as the body)", Raw("application/octet-stream"), 201, Json("ReleaseInfo")),
    route("post", "/api/v1/releases/{version}/{arch}/broken", ADMIN, "Mark a build broken", Json("MarkBrokenRequest"), 200, Json("ReleaseInfo")),
    route("delete", "/api/v1/releases/{version}/{arch}/broken", ADMIN, "Clear a build's broken mark", Empty, 200, Json("ReleaseInfo")),
    route("get", "/install.sh", None, "The agent installer script", Empty, 200, Raw("text/x-shellscript")),
    route("get", "/download/agent/{version}/{arch}", None, "An agent build", Empty, 200, Raw("application/octet-stream")),
    route("get", "/download/agent/{version}/{arch}/{file}", None, "A build's manifest or signature", Empty, 200, Raw("application/octet-stream")),
    route("get", "/download/systemd/{unit}", None, "A systemd unit of the agent", Empty, 200, Raw("text/plain")),
    route("get", "/api/v1/events/stream", READ, "Server-Sent Events of the fleet (query `kinds`, `selector`; `Last-Event-ID` resumes); each `data:` is a FleetEvent, an `event: reset` carries a Reset", Empty, 200, EventStream("FleetEvent")),
    route("get", "/api/v1/audit", READ, "The audit trail, newest first", Empty, 200, List("AuditRecord")),
    route("get", "/api/v1/cluster", READ, "The relays sharing the database and the singleton leases", Empty, 200, Json("ClusterStatus")),
];

/// A documented query parameter: name, description, and the values it takes when they are a
/// closed set (else any string).
type Param = (&'static str, &'static str, &'static [&'static str]);

/// The query parameters of the operations that document theirs: (method, path, parameters).
pub const QUERY: &[(&str, &str, &[Param])] = &[
    (
        "get",
        "/api/v1/agents",
        &[
            ("selector", "Label selector (`region=eu,tier=build`)", &[]),
            (
                "q",
                "Free text: part of the name, the id or a `key=value` label (case-insensitive)",
                &[],
            ),
            (
                "status",
                "Only agents in this state (updating: an update in progress; rolled_back: an \
                 update rolled back in the last 24 h)",
                &["online", "offline", "revoked", "updating", "rolled_back"],
            ),
            (
                "sort",
                "Order of the list (default `name`)",
                &["name", "-name", "enrolled_at", "-enrolled_at"],
            ),
            ("limit", "Page size, 1 to 1000 (default 500)", &[]),
            (
                "cursor",
                "The X-Next-Cursor of the previous page, unchanged",
                &[],
            ),
        ],
    ),
    (
        "get",
        "/api/v1/notifications",
        &[
            (
                "state",
                "Only notifications in this state (default all)",
                &["pending", "delivered", "failed", "all"],
            ),
            ("alert", "Only the notifications of this alert id", &[]),
            ("channel", "Only this channel's (its configured name)", &[]),
            ("limit", "At most this many, 1 to 10000 (default 100)", &[]),
        ],
    ),
    (
        "get",
        "/api/v1/agents/{id}/metrics",
        &[(
            "range",
            "`24h` (5-minute points, default) or `30d` (hourly points)",
            &["24h", "30d"],
        )],
    ),
];

/// The shared types whose schemas the document carries (nested ones come along).
#[derive(OpenApi)]
#[openapi(components(schemas(
    flotilla_shared::api::ErrorBody,
    flotilla_shared::api::RelayStatus,
    flotilla_shared::api::EnrollRequest,
    flotilla_shared::api::EnrollResponse,
    flotilla_shared::api::CreateEnrollmentToken,
    flotilla_shared::api::EnrollmentTokenCreated,
    flotilla_shared::api::EnrollmentTokenInfo,
    flotilla_shared::api::CreateApiToken,
    flotilla_shared::api::ApiTokenCreated,
    flotilla_shared::api::ApiTokenInfo,
    flotilla_shared::api::AgentInfo,
    flotilla_shared::api::AgentDetail,
    flotilla_shared::api::PatchAgent,
    flotilla_shared::api::EventRecord,
    flotilla_shared::api::MetricsHistory,
    flotilla_shared::api::FleetOverview,
    flotilla_shared::api::CreateCommand,
    flotilla_shared::api::CommandInfo,
    flotilla_shared::api::CreateJob,
    flotilla_shared::api::JobInfo,
    flotilla_shared::api::UpdateRecord,
    flotilla_shared::api::PullLayers,
    flotilla_shared::api::AuditRecord,
    flotilla_shared::api::ClusterStatus,
    flotilla_shared::backup::AgentBackups,
    flotilla_shared::backup::FleetBackups,
    flotilla_shared::alert::AlertInfo,
    flotilla_shared::alert::AckRequest,
    flotilla_shared::alert::NotificationDelivery,
    flotilla_shared::alert::Silence,
    flotilla_shared::alert::CreateSilence,
    flotilla_shared::rollout::CreateRollout,
    flotilla_shared::rollout::RolloutInfo,
    flotilla_shared::release::ReleaseInfo,
    flotilla_shared::release::MarkBrokenRequest,
    flotilla_shared::stream::FleetEvent,
    flotilla_shared::stream::Reset,
)))]
struct Schemas;

fn schema_ref(name: &str) -> RefOr<Schema> {
    Ref::from_schema_name(name).into()
}

fn content(body: Body) -> Option<(&'static str, RefOr<Schema>)> {
    match body {
        Body::None => None,
        Body::Json(name) => Some(("application/json", schema_ref(name))),
        Body::List(name) => Some(("application/json", Array::new(schema_ref(name)).into())),
        Body::AnyJson => Some(("application/json", ObjectBuilder::new().into())),
        Body::EventStream(name) => Some((
            "text/event-stream",
            // One SSE event as its fields (OpenAPI 3.1 has no item schema for streams): `data`
            // is the JSON text of the named schema.
            ObjectBuilder::new()
                .property("id", ObjectBuilder::new().schema_type(Type::String))
                .property("event", ObjectBuilder::new().schema_type(Type::String))
                .property(
                    "data",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .content_media_type("application/json")
                        .description(Some(format!(
                            "JSON of the {name} schema, or of Reset on an `event: reset`"
                        ))),
                )
                .property("retry", ObjectBuilder::new().schema_type(Type::Integer))
                .into(),
        )),
        Body::Raw(media) => Some((
            media,
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Binary,
                )))
                .into(),
        )),
    }
}

fn method_of(method: &str) -> HttpMethod {
    match method {
        "get" => HttpMethod::Get,
        "post" => HttpMethod::Post,
        "put" => HttpMethod::Put,
        "patch" => HttpMethod::Patch,
        "delete" => HttpMethod::Delete,
        other => unreachable!("ROUTES has an unknown method {other}"),
    }
}

/// The `{name}` segments of a path template.
pub fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(schema_ref("ErrorBody")))
                .build(),
        )
        .build()
}

fn operation(r: &Route) -> utoipa::openapi::path::Operation {
    let id = format!(
        "{}{}",
        r.method,
        r.path.replace(['{', '}', '.'], "").replace(['/', '-'], "_")
    );
    let mut op = OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(r.summary));
    for name in path_params(r.path) {
        op = op.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
        );
    }
    let query = QUERY
        .iter()
        .filter(|(method, path, _)| *method == r.method && *path == r.path)
        .flat_map(|(_, _, params)| params.iter());
    for (name, description, values) in query {
        let numeric = *name == "limit";
        let mut schema =
            ObjectBuilder::new().schema_type(if numeric { Type::Integer } else { Type::String });
        if numeric {
            schema = schema.minimum(Some(1)).maximum(Some(1000));
        }
        if !values.is_empty() {
            schema = schema.enum_values(Some(values.iter().copied()));
        }
        op = op.parameter(
            ParameterBuilder::new()
                .name(*name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(*description))
                .schema(Some(schema)),
        );
    }
    if let Some((media, schema)) = content(r.request) {
        // The ack body is optional (empty means no note); every other body is required.
        let required = if r.path.ends_with("/ack") {
            Required::False
        } else {
            Required::True
        };
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .content(media, ContentBuilder::new().schema(Some(schema)).build())
                .required(Some(required))
                .build(),
        ));
    }
    let mut ok = ResponseBuilder::new().description("success");
    if let Some((media, schema)) = content(r.response) {
        ok = ok.content(media, ContentBuilder::new().schema(Some(schema)).build());
    }
    if r.method == "get" && r.path == "/api/v1/agents" {
        let text = || ObjectBuilder::new().schema_type(Type::String);
        ok = ok
            .header(
                "X-Next-Cursor",
                HeaderBuilder::new()
                    .schema(text())
                    .description(Some("The next page's cursor (absent on the last page)."))
                    .build(),
            )
            .header(
                "Link",
                HeaderBuilder::new()
                    .schema(text())
                    .description(Some(
                        "`<url of the next page>; rel=\"next\"` (absent on the last page).",
                    ))
                    .build(),
            );
    }
    op = op
        .response(r.status.to_string(), ok.build())
        .response(
            "400",
            error_response("invalid request (names what was wrong)"),
        )
        .response("404", error_response("no such object"))
        .response("default", error_response("any other error"));
    if let Some(scope) = r.scope {
        op = op
            .response("401", error_response("no or unknown credentials"))
            .response(
                "403",
                error_response(&format!("the caller lacks the {scope} scope")),
            )
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
            .description(Some(format!("Requires the `{scope}` scope.")))
            .extensions(Some(
                ExtensionsBuilder::new()
                    .add("x-required-scope", scope)
                    .build(),
            ));
    } else {
        op = op.description(Some("Unauthenticated."));
    }
    op.build()
}

/// Builds the document from [`ROUTES`] and the shared schemas.
pub fn document() -> Document {
    let mut paths = Paths::new();
    for r in ROUTES {
        paths.add_path_operation(r.path, vec![method_of(r.method)], operation(r));
    }
    let mut components = Schemas::openapi().components.unwrap_or_default();
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token (the admin token or one from `flotilla api-token create`)",
                ))
                .build(),
        ),
    );
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Flotilla relay API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Every error answer is `{\"error\": {\"code\", \"message\"}}` (schema ErrorBody).",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components))
        .build()
}

/// `GET /api/v1/openapi.json` (unauthenticated): the document, built once.
pub async fn serve() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let json = JSON.get_or_init(|| {
        document()
            .to_json()
            .expect("the OpenAPI document serializes")
    });
    ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// (method, path) of every `.route(` in relay/src/api.rs, read from the source: axum cannot
    /// list a router's routes. Path constants are resolved by name.
    fn router_routes() -> BTreeSet<(String, String)> {
        let source = include_str!("../api.rs");
        let mut found = BTreeSet::new();
        for chunk in source.split(".route(").skip(1) {
            // The call's text up to its closing parenthesis.
            let mut depth = 1;
            let end = chunk
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .expect("a .route( call closes");
            let call = &chunk[..end];
            let first = call.split(',').next().unwrap().trim();
            let path = match first {
                "CONNECT_PATH" => flotilla_shared::protocol::CONNECT_PATH.to_string(),
                "ENROLL_PATH" => flotilla_shared::protocol::ENROLL_PATH.to_string(),
                "OPENAPI_PATH" | "openapi::OPENAPI_PATH" => OPENAPI_PATH.to_string(),
                "stream::STREAM_PATH" => super::super::stream::STREAM_PATH.to_string(),
                quoted if quoted.starts_with('"') => quoted.trim_matches('"').to_string(),
                other => panic!("api.rs routes a path this test cannot resolve: {other}"),
            };
            let rest = &call[first.len()..];
            let mut methods = 0;
            for m in ["get", "post", "put", "patch", "delete"] {
                let calls = rest.matches(&format!("{m}(")).count()
                    - rest.matches(&format!("_{m}(")).count();
                if calls > 0 {
                    found.insert((m.to_string(), path.clone()));
                    methods += 1;
                }
            }
            if methods == 0 {
                // A MethodRouter passed in (the agent websocket) or a handler the scan cannot see.
                found.insert(("?".to_string(), path));
            }
        }
        found
    }

    /// Routes the document leaves out on purpose (see the module doc).
    fn undocumented(method: &str, path: &str) -> bool {
        path == flotilla_shared::protocol::CONNECT_PATH
            || path.starts_with("/api/v1/debug/")
            || path.starts_with("/ui")
            || (method == "?" && !path.starts_with("/api/"))
    }

    #[test]
    fn every_routed_operation_is_documented_and_every_documented_one_is_routed() {
        let routed: BTreeSet<_> = router_routes()
            .into_iter()
            .filter(|(m, p)| !undocumented(m, p))
            .collect();
        let documented: BTreeSet<_> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        let missing: Vec<_> = routed.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&routed).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "routed but not in the OpenAPI document: {missing:?}\n\
             in the document but not routed: {extra:?}"
        );
        assert!(routed.len() > 30, "the scan found only {routed:?}");
    }

    #[test]
    fn document_is_openapi_3_1_and_every_schema_reference_resolves() {
        let json = serde_json::to_value(document()).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
        let schemas = json["components"]["schemas"].as_object().unwrap();
        let text = json.to_string();
        for piece in text.split("\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(schemas.contains_key(name), "unresolved schema {name}");
        }
        let ops = json["paths"]["/api/v1/agents/{id}"].as_object().unwrap();
        assert!(ops.contains_key("get") && ops.contains_key("patch") && ops.contains_key("delete"));
        assert_eq!(
            json["paths"]["/api/v1/api-tokens"]["post"]["x-required-scope"],
            "admin"
        );
    }

    #[test]
    fn documented_query_parameters_belong_to_documented_operations() {
        for (method, path, params) in QUERY {
            assert!(
                ROUTES
                    .iter()
                    .any(|r| r.method == *method && r.path == *path),
                "query parameters of {method} {path}, which is not in ROUTES"
            );
            assert!(!params.is_empty());
        }
        let json = serde_json::to_value(document()).unwrap();
        let params = json["paths"]["/api/v1/agents"]["get"]["parameters"]
            .as_array()
            .unwrap();
        assert!(params
            .iter()
            .any(|p| p["name"] == "cursor" && p["in"] == "query"));
    }
}
