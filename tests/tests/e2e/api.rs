//! The dashboard API: scopes, clear errors, health and metrics endpoints, label changes.

use crate::DEADLINE;
use flotilla_shared::api::{
    AgentInfo, ApiTokenCreated, ApiTokenInfo, AuditRecord, CreateApiToken, PatchAgent, RelayStatus,
    Scope,
};
use flotilla_shared::command::Command;
use flotilla_tests::harness::{api_error, eventually, labels, scope, Agent, Api, Relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_errors_health_and_metrics() {
    let relay = Relay::start().await;
    let agent = Agent::start(&relay, "host-a", "tier=build", &scope("api")).await;
    let admin = relay.api();
    admin.wait_online(&agent.id, DEADLINE).await;

    let health: RelayStatus = admin.get("/healthz").await.unwrap();
    assert_eq!(health.connected_agents, 1);
    assert!(health.relay_key_fingerprint.starts_with("SHA256:"));

    // No token, unknown token.
    let anon = Api::new(&relay.url(), "");
    let e = anon
        .get::<Vec<AgentInfo>>("/api/v1/agents")
        .await
        .unwrap_err();
    assert_eq!(api_error(&e).status, 401);
    let e = admin
        .with_token("flt_bogus")
        .get::<Vec<AgentInfo>>("/api/v1/agents")
        .await
        .unwrap_err();
    assert_eq!(api_error(&e).status, 401);

    // A read token reads but cannot operate.
    let read: ApiTokenCreated = admin
        .post(
            "/api/v1/api-tokens",
            &CreateApiToken {
                name: "dash".into(),
                scope: Scope::Read,
            },
        )
        .await
        .unwrap();
    let reader = admin.with_token(&read.token);
    assert_eq!(
        reader
            .get::<Vec<AgentInfo>>("/api/v1/agents")
            .await
            .unwrap()
            .len(),
        1
    );
    let e = reader
        .command(&agent.id, Command::Ping(Default::default()), None)
        .await
        .unwrap_err();
    assert_eq!(api_error(&e).status, 403, "{e:#}");
    let e = reader
        .post::<_, ApiTokenCreated>(
            "/api/v1/api-tokens",
            &CreateApiToken {
                name: "x".into(),
                scope: Scope::Admin,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(&e).status, 403);

    // Unknown agent, bad command, bad selector: 404 / 400 with messages naming the problem.
    let e = admin
        .command("ag_nope", Command::Ping(Default::default()), None)
        .await
        .unwrap_err();
    assert_eq!(api_error(&e).status, 404);
    let e = admin
        .post::<_, serde_json::Value>(
            &format!("/api/v1/agents/{}/commands", agent.id),
            &serde_json::json!({"kind": "container.nuke", "args": {}}),
        )
        .await
        .unwrap_err();
    let err = api_error(&e);
    assert_eq!(err.status, 400);
    assert!(err.message.contains("container.nuke"), "{}", err.message);
    let e = admin
        .get::<Vec<AgentInfo>>("/api/v1/agents?selector=a%20b")
        .await
        .unwrap_err();
    assert_eq!(api_error(&e).status, 400);

    // Label changes take effect for selectors at once.
    let patched: AgentInfo = admin
        .patch(
            &format!("/api/v1/agents/{}", agent.id),
            &PatchAgent {
                labels: labels("tier=web"),
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.labels, labels("tier=web"));
    let web: Vec<AgentInfo> = admin
        .get("/api/v1/agents?selector=tier%3Dweb")
        .await
        .unwrap();
    assert_eq!(web.len(), 1);

    // API tokens are listed without secrets and can be revoked; a revoked token stops working.
    let tokens: Vec<ApiTokenInfo> = admin.get("/api/v1/api-tokens").await.unwrap();
    assert!(tokens
        .iter()
        .any(|t| t.id == read.id && t.revoked_at.is_none()));
    assert!(!serde_json::to_string(&tokens)
        .unwrap()
        .contains(&read.token));
    let e = reader
        .get::<Vec<ApiTokenInfo>>("/api/v1/api-tokens")
        .await
        .unwrap_err();
    assert_eq!(api_error(&e).status, 403, "listing tokens needs admin");
    admin
        .delete(&format!("/api/v1/api-tokens/{}", read.id))
        .await
        .unwrap();
    let e = reader
        .get::<Vec<AgentInfo>>("/api/v1/agents")
        .await
        .unwrap_err();
    assert_eq!(api_error(&e).status, 401, "revoked token refused: {e:#}");
    let e = admin
        .delete("/api/v1/api-tokens/tok_nope")
        .await
        .unwrap_err();
    assert_eq!(api_error(&e).status, 404);
    let tokens: Vec<ApiTokenInfo> = admin.get("/api/v1/api-tokens").await.unwrap();
    assert!(tokens
        .iter()
        .any(|t| t.id == read.id && t.revoked_at.is_some()));

    // Every mutating call left an audit row: who, what, when, target, outcome; readers can see it.
    let trail: Vec<AuditRecord> = admin.get("/api/v1/audit?limit=1000").await.unwrap();
    let has = |action: &str, target: &str, outcome: &str| {
        trail.iter().any(|r| {
            r.actor == "admin"
                && r.action == action
                && r.target.contains(target)
                && r.outcome == outcome
        })
    };
    assert!(has("api_token.create", "", "ok"), "{trail:#?}");
    assert!(has("api_token.revoke", &read.id, "ok"), "{trail:#?}");
    assert!(has("agent.set_labels", &agent.id, "ok"), "{trail:#?}");
    assert!(
        has("command.create", "ag_nope", "error: not_found"),
        "{trail:#?}"
    );
    assert!(trail.windows(2).all(|w| w[0].ts >= w[1].ts), "newest first");

    // Prometheus text with the promised series.
    let ping = admin
        .command(&agent.id, Command::Ping(Default::default()), Some(30))
        .await
        .unwrap();
    assert!(ping.state.is_final());
    let metrics = eventually(DEADLINE, "metrics", || async {
        let m = reqwest::Client::new()
            .get(format!("{}/metrics", relay.url()))
            .bearer_auth(&relay.admin_token)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        m.contains("flotilla_connected_agents 1").then_some(m)
    })
    .await;
    for series in [
        "flotilla_frames_in_total",
        "flotilla_frames_out_total",
        "flotilla_commands_total",
        "flotilla_heartbeat_lag_seconds",
        "flotilla_build_info{version=",
        // The command above, by its route template.
        "flotilla_http_request_duration_seconds_count{route=\"/api/v1/agents/{id}/commands\",method=\"POST\",status=\"2xx\"}",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
}
