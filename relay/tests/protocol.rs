//! The relay's side of the agent protocol, driven by a scripted agent over a real websocket
//! against an in-process relay on 127.0.0.1:0.

mod support;

use flotilla_relay_server::config::RelayConfig;
use flotilla_shared::api::{
    AgentFacts, CommandInfo, CreateEnrollmentToken, DeliveryState, EnrollRequest, EnrollResponse,
    EnrollmentTokenCreated, JobInfo, JobState,
};
use flotilla_shared::command::{CommandResult, ResultStatus};
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::protocol::{AgentFrame, OutboxItem, RelayFrame};
use flotilla_shared::signing::{auth_message, SigningKey, AUTH_DOMAIN};
use flotilla_testkit::agent::ScriptedAgent;
use flotilla_testkit::{eventually, Poller};
use std::time::Duration;
use support::TestRelay as Relay;

async fn relay(max_frame_bytes: usize) -> Relay {
    relay_with(|c| c.max_frame_bytes = max_frame_bytes).await
}

async fn relay_with(configure: impl FnOnce(&mut RelayConfig)) -> Relay {
    let relay = Relay::in_process("relay-proto")
        .config(|c| c.test_hooks = true)
        .config(configure)
        .start()
        .await;
    let listen =
        std::fs::read_to_string(relay.relay.state().config.data_dir.join("listen-addr")).unwrap();
    assert_eq!(listen.trim(), relay.relay.local_addr().to_string());
    relay
}

impl Relay {
    async fn enroll(&self, key: &SigningKey) -> EnrollResponse {
        let token: EnrollmentTokenCreated = self
            .http
            .post(format!("{}/api/v1/enrollment-tokens", self.base))
            .bearer_auth(&self.admin)
            .json(&CreateEnrollmentToken::default())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let resp = self
            .http
            .post(format!("{}/api/v1/enroll", self.base))
            .json(&EnrollRequest {
                token: token.token,
                name: Some("scripted".into()),
                public_key: key.public_key().to_base64(),
                labels: Default::default(),
                facts: AgentFacts::default(),
            })
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// A websocket that has not authenticated yet (the relay's hello is the next frame).
    async fn connect(&self) -> ScriptedAgent {
        let mut anonymous = ScriptedAgent::new("", SigningKey::generate(), "t");
        anonymous.open(&self.ws_url()).await.unwrap();
        anonymous
    }
}

/// The next frame within 10 s; `None` once the relay closed the connection.
async fn next_frame(ws: &mut ScriptedAgent) -> Option<RelayFrame> {
    ws.next_frame().await
}

async fn send(ws: &mut ScriptedAgent, frame: &AgentFrame) {
    ws.send(frame).await.unwrap();
}

/// The scripted agent `agent_id` holding `key`, not connected.
fn scripted(key: &SigningKey, agent_id: &str) -> ScriptedAgent {
    let key = SigningKey::from_pkcs8(key.pkcs8()).unwrap();
    ScriptedAgent::new(agent_id, key, "test")
}

/// Connects and authenticates; returns the agent after the welcome.
async fn login(relay: &Relay, key: &SigningKey, agent_id: &str) -> ScriptedAgent {
    let mut agent = scripted(key, agent_id);
    agent.open(&relay.ws_url()).await.unwrap();
    authenticate(relay, &mut agent).await;
    agent
}

/// Answers the hello on an open socket; checks the welcome is the relay's, for this agent.
async fn authenticate(relay: &Relay, agent: &mut ScriptedAgent) {
    let welcome = agent.handshake().await.unwrap();
    let body = welcome
        .verify(
            &flotilla_shared::signing::PublicKey::from_base64(&relay.relay_public_key()).unwrap(),
        )
        .unwrap();
    assert_eq!(body.agent_id, agent.id);
}

impl Relay {
    fn relay_public_key(&self) -> String {
        self.relay.state().key.public_key().to_base64()
    }

    async fn command(&self, agent_id: &str, query: &str) -> (u16, CommandInfo) {
        let resp = self
            .http
            .post(format!(
                "{}/api/v1/agents/{agent_id}/commands{query}",
                self.base
            ))
            .bearer_auth(&self.admin)
            .json(&serde_json::json!({"kind": "ping", "args": {}}))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }
}

#[tokio::test]
async fn auth_commands_results_events_and_abuse() {
    let relay = relay(64 * 1024).await;
    let key = SigningKey::generate();
    let agent_id = relay.enroll(&key).await.agent_id;

    // A wrong key is refused with auth_failed.
    {
        let mut ws = relay.connect().await;
        let Some(RelayFrame::Hello { challenge, .. }) = next_frame(&mut ws).await else {
            panic!()
        };
        let wrong = SigningKey::generate();
        send(
            &mut ws,
            &AgentFrame::Auth {
                agent_id: agent_id.clone(),
                protocol_version: 1,
                agent_version: "t".into(),
                signature: wrong.sign(AUTH_DOMAIN, &auth_message(&challenge, &agent_id)),
            },
        )
        .await;
        match next_frame(&mut ws).await {
            Some(RelayFrame::Error { code, .. }) => assert_eq!(code, "auth_failed"),
            other => panic!("{other:?}"),
        }
        assert!(next_frame(&mut ws).await.is_none(), "closed after refusal");
    }

    // A command queued while offline is sent after the welcome.
    let (status, queued) = relay.command(&agent_id, "").await;
    assert_eq!(status, 201);
    assert_eq!(queued.state, DeliveryState::Queued);
    let mut ws = login(&relay, &key, &agent_id).await;
    let Some(RelayFrame::Command(signed)) = next_frame(&mut ws).await else {
        panic!("pending command not re-sent")
    };
    let env = signed
        .verify(&relay.relay.state().key.public_key())
        .unwrap();
    assert_eq!(env.id, queued.id);

    // Malformed frames get an error and the connection continues.
    ws.send_text("{not json").await.unwrap();
    match next_frame(&mut ws).await {
        Some(RelayFrame::Error { code, .. }) => assert_eq!(code, "malformed_frame"),
        other => panic!("{other:?}"),
    }
    send(
        &mut ws,
        &AgentFrame::Received {
            command_id: queued.id.clone(),
        },
    )
    .await;
    let result = CommandResult {
        command_id: queued.id.clone(),
        status: ResultStatus::Succeeded,
        output: None,
        error: None,
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
    };
    for _ in 0..2 {
        // The second copy is a harmless duplicate: acked again.
        send(
            &mut ws,
            &AgentFrame::Outbox {
                seq: 1,
                item: OutboxItem::Result(result.clone()),
            },
        )
        .await;
        assert_eq!(next_frame(&mut ws).await, Some(RelayFrame::Ack { seq: 1 }));
    }
    let event = AgentEvent {
        kind: EventKind::ContainerDied,
        at: chrono::Utc::now(),
        container_id: None,
        container_name: Some("web".into()),
        message: "died".into(),
        attributes: Default::default(),
    };
    for _ in 0..2 {
        send(
            &mut ws,
            &AgentFrame::Outbox {
                seq: 2,
                item: OutboxItem::Event(event.clone()),
            },
        )
        .await;
        assert_eq!(next_frame(&mut ws).await, Some(RelayFrame::Ack { seq: 2 }));
    }
    // A result for a command never sent to this agent is acked and dropped.
    send(
        &mut ws,
        &AgentFrame::Outbox {
            seq: 3,
            item: OutboxItem::Result(CommandResult {
                command_id: "cmd_unknown".into(),
                ..result.clone()
            }),
        },
    )
    .await;
    assert_eq!(next_frame(&mut ws).await, Some(RelayFrame::Ack { seq: 3 }));

    let events: Vec<serde_json::Value> = relay
        .http
        .get(format!("{}/api/v1/agents/{agent_id}/events", relay.base))
        .bearer_auth(&relay.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");

    let info: CommandInfo = relay
        .http
        .get(format!("{}/api/v1/commands/{}", relay.base, queued.id))
        .bearer_auth(&relay.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info.state, DeliveryState::Succeeded);

    // ?wait returns 200 once the result is in.
    let waiter = {
        let http = relay.http.clone();
        let url = format!("{}/api/v1/agents/{agent_id}/commands?wait=10", relay.base);
        let admin = relay.admin.clone();
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(admin)
                .json(&serde_json::json!({"kind": "ping", "args": {}}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<CommandInfo>().await.unwrap())
        })
    };
    let Some(RelayFrame::Command(signed)) = next_frame(&mut ws).await else {
        panic!("no command")
    };
    let id = signed.peek().unwrap().id;
    send(
        &mut ws,
        &AgentFrame::Outbox {
            seq: 4,
            item: OutboxItem::Result(CommandResult {
                command_id: id.clone(),
                ..result.clone()
            }),
        },
    )
    .await;
    assert_eq!(next_frame(&mut ws).await, Some(RelayFrame::Ack { seq: 4 }));
    let (status, info) = waiter.await.unwrap();
    assert_eq!((status, info.id.as_str()), (200, id.as_str()));
    assert_eq!(info.state, DeliveryState::Succeeded);

    // A second connection replaces the first.
    let mut second = login(&relay, &key, &agent_id).await;
    match next_frame(&mut ws).await {
        Some(RelayFrame::Error { code, .. }) => assert_eq!(code, "replaced_by_new_connection"),
        other => panic!("{other:?}"),
    }
    assert!(next_frame(&mut ws).await.is_none());

    // An oversized frame closes only that connection.
    let big = "x".repeat(70 * 1024);
    let _ = second.send_text(big).await;
    loop {
        match next_frame(&mut second).await {
            Some(RelayFrame::Error { code, .. }) => assert_eq!(code, "frame_too_large"),
            None => break,
            other => panic!("{other:?}"),
        }
    }

    // Revocation closes the connection and refuses the agent from then on.
    let mut third = login(&relay, &key, &agent_id).await;
    let resp = relay
        .http
        .delete(format!("{}/api/v1/agents/{agent_id}", relay.base))
        .bearer_auth(&relay.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    match next_frame(&mut third).await {
        Some(RelayFrame::Error { code, .. }) => assert_eq!(code, "revoked"),
        other => panic!("{other:?}"),
    }
    let mut ws = relay.connect().await;
    let Some(RelayFrame::Hello { challenge, .. }) = next_frame(&mut ws).await else {
        panic!()
    };
    send(
        &mut ws,
        &AgentFrame::Auth {
            agent_id: agent_id.clone(),
            protocol_version: 1,
            agent_version: "t".into(),
            signature: key.sign(AUTH_DOMAIN, &auth_message(&challenge, &agent_id)),
        },
    )
    .await;
    match next_frame(&mut ws).await {
        Some(RelayFrame::Error { code, .. }) => assert_eq!(code, "revoked"),
        other => panic!("{other:?}"),
    }

    let metrics = relay
        .http
        .get(format!("{}/metrics", relay.base))
        .bearer_auth(&relay.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("flotilla_protocol_errors_total{reason=\"malformed_frame\"} 1"));
    assert!(metrics.contains("flotilla_protocol_errors_total{reason=\"frame_too_large\"} 1"));
    assert!(metrics.contains("flotilla_commands_total{outcome=\"succeeded\"} 2"));
    relay.relay.shutdown().await.unwrap();
}

fn ok_result(command_id: &str) -> CommandResult {
    CommandResult {
        command_id: command_id.into(),
        status: ResultStatus::Succeeded,
        output: None,
        error: None,
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn accepted_command_without_result_fails_then_late_result_wins() {
    let relay = relay_with(|c| c.result_grace_secs = 0).await;
    let key = SigningKey::generate();
    let agent_id = relay.enroll(&key).await.agent_id;
    let mut ws = login(&relay, &key, &agent_id).await;

    // A one-agent job whose command expires in a second; the agent accepts it, then goes quiet.
    let resp = relay
        .http
        .post(format!("{}/api/v1/jobs", relay.base))
        .bearer_auth(&relay.admin)
        .json(&serde_json::json!({"selector": "", "kind": "ping", "args": {}, "ttl_secs": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let job: JobInfo = resp.json().await.unwrap();
    let Some(RelayFrame::Command(signed)) = next_frame(&mut ws).await else {
        panic!("no command")
    };
    let command_id = signed.peek().unwrap().id;
    send(
        &mut ws,
        &AgentFrame::Received {
            command_id: command_id.clone(),
        },
    )
    .await;

    // The job does not hang in `running`: the delivery fails with no_result.
    let path = format!("/api/v1/jobs/{}", job.id);
    let done: JobInfo = eventually(
        Duration::from_secs(15),
        "job finishes without a result",
        || async {
            let j: JobInfo = relay.get_json(&path).await;
            (j.state != JobState::Running).then_some(j)
        },
    )
    .await;
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.targets[0].state, DeliveryState::Failed);
    let error = done.targets[0]
        .result
        .as_ref()
        .unwrap()
        .error
        .clone()
        .unwrap();
    assert_eq!(error.code, "no_result");

    // The real result arriving afterwards replaces the relay's guess.
    send(
        &mut ws,
        &AgentFrame::Outbox {
            seq: 1,
            item: OutboxItem::Result(ok_result(&command_id)),
        },
    )
    .await;
    assert_eq!(next_frame(&mut ws).await, Some(RelayFrame::Ack { seq: 1 }));
    let after: JobInfo = relay.get_json(&path).await;
    assert_eq!(after.targets[0].state, DeliveryState::Succeeded);
    assert_eq!((after.counts.succeeded, after.counts.failed), (1, 0));

    // Revocation forgets the agent's cached heartbeat.
    send(
        &mut ws,
        &AgentFrame::Heartbeat(Box::new(flotilla_shared::heartbeat::Heartbeat {
            at: chrono::Utc::now(),
            agent_version: "test".into(),
            host: Default::default(),
            docker: Default::default(),
            backup: None,
            compose_drift: Vec::new(),
        })),
    )
    .await;
    let heartbeats = relay.relay.state().heartbeats.clone();
    eventually(Duration::from_secs(10), "heartbeat cached", || async {
        heartbeats.latest(&agent_id).map(|_| ())
    })
    .await;
    let resp = relay
        .http
        .delete(format!("{}/api/v1/agents/{agent_id}", relay.base))
        .bearer_auth(&relay.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(heartbeats.latest(&agent_id).is_none());
    relay.relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn unauthenticated_connections_are_capped() {
    let relay = relay_with(|c| c.max_pending_handshakes = 1).await;
    let key = SigningKey::generate();
    let agent_id = relay.enroll(&key).await.agent_id;
    let url = relay.ws_url();

    // One connection sits in the handshake: the next upgrade is refused with 503.
    let mut idle = relay.connect().await;
    assert!(matches!(
        next_frame(&mut idle).await,
        Some(RelayFrame::Hello { .. })
    ));
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_handshakes");
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }

    // It leaves: its slot is free again.
    drop(idle);
    let mut authenticated = scripted(&key, &agent_id);
    let released = Poller::new(Duration::from_secs(10));
    while authenticated.open(&url).await.is_err() {
        assert!(!released.expired(), "timed out: handshake slot released");
        released.pause().await;
    }

    // Once authenticated, the agent no longer holds the slot.
    authenticate(&relay, &mut authenticated).await;
    let mut another = ScriptedAgent::new("", SigningKey::generate(), "t");
    another
        .open(&url)
        .await
        .expect("slot free while the agent is connected");
    assert!(matches!(
        next_frame(&mut another).await,
        Some(RelayFrame::Hello { .. })
    ));
    relay.relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn enrollment_limit_keys_on_forwarded_for_only_behind_trusted_proxy() {
    let relay = relay_with(|c| {
        c.enroll_rate_per_minute = 1;
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let enroll = |forwarded: &'static str| {
        let http = relay.http.clone();
        let url = format!("{}/api/v1/enroll", relay.base);
        async move {
            http.post(url)
                .header("x-forwarded-for", forwarded)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // The test's requests come from 127.0.0.1, the trusted proxy: clients are told apart by
    // the address the proxy appended last, not by the proxy's own address.
    assert_ne!(enroll("10.9.9.9, 203.0.113.1").await, 429);
    assert_eq!(enroll("203.0.113.1").await, 429);
    assert_ne!(enroll("10.9.9.9, 203.0.113.2").await, 429);
    relay.relay.shutdown().await.unwrap();
}

impl Relay {
    async fn get_status(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }
}

fn rolled_back_report() -> flotilla_shared::update::UpdateReport {
    serde_json::from_value(serde_json::json!({
        "outcome": "rolled_back", "container": "web", "image": "reg.example/app:v2",
        "strategy": "stop-first", "health": "tcp:8080", "old_image": "reg.example/app:v1",
        "old_image_id": "sha256:1111", "new_image_id": "sha256:2222", "phase": "done",
        "timings": [{"phase": "pull", "ms": 800}, {"phase": "health", "ms": 30000}],
        "health_evidence": {"method": "tcp", "passed": false, "checks": 30, "check_ms": 30000,
                            "stable_ms": 0, "detail": "connection refused until the deadline"},
        "reason": "the new container failed its health check",
        "failed_logs": ["listening on 8081"], "old_stopped": true, "total_ms": 32000
    }))
    .unwrap()
}

#[tokio::test]
async fn update_history_follows_progress_and_results() {
    use flotilla_shared::api::UpdateRecord;
    use flotilla_shared::update::UpdateOutcome;
    let relay = relay(256 * 1024).await;
    let key = SigningKey::generate();
    let agent_id = relay.enroll(&key).await.agent_id;
    let mut ws = login(&relay, &key, &agent_id).await;
    let post = |body: serde_json::Value| {
        let req = relay
            .http
            .post(format!("{}/api/v1/agents/{agent_id}/commands", relay.base))
            .bearer_auth(&relay.admin)
            .json(&body);
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 201);
            resp.json::<CommandInfo>().await.unwrap()
        }
    };

    // Without a TTL an update gets at least its run budget: 2 × (30 + 10) + 15 min, more than
    // the 10 minute default; an explicit TTL is kept.
    let web = post(serde_json::json!({"kind": "container.update", "args": {
        "container": "web", "image": "reg.example/app:v2", "health": "tcp:8080",
        "health_timeout_secs": 30}}))
    .await;
    assert_eq!((web.expires_at - web.created_at).num_seconds(), 980);
    let Some(RelayFrame::Command(signed)) = next_frame(&mut ws).await else {
        panic!("no command")
    };
    assert_eq!(signed.peek().unwrap().id, web.id);
    let db = post(
        serde_json::json!({"kind": "container.update", "ttl_secs": 120,
        "args": {"container": "db", "image": "reg.example/db:2"}}),
    )
    .await;
    assert_eq!((db.expires_at - db.created_at).num_seconds(), 120);
    let Some(RelayFrame::Command(_)) = next_frame(&mut ws).await else {
        panic!("no command")
    };

    send(
        &mut ws,
        &AgentFrame::Received {
            command_id: web.id.clone(),
        },
    )
    .await;
    let progress = AgentEvent {
        kind: EventKind::ContainerUpdate,
        at: chrono::Utc::now(),
        container_id: None,
        container_name: Some("web".into()),
        message: "pulling reg.example/app:v2".into(),
        attributes: [
            ("command_id".to_string(), web.id.clone()),
            ("phase".to_string(), "pulling".to_string()),
            ("layers_done".to_string(), "1".to_string()),
            ("layers_total".to_string(), "3".to_string()),
        ]
        .into_iter()
        .collect(),
    };
    send(
        &mut ws,
        &AgentFrame::Outbox {
            seq: 1,
            item: OutboxItem::Event(progress),
        },
    )
    .await;
    assert_eq!(next_frame(&mut ws).await, Some(RelayFrame::Ack { seq: 1 }));
    let path = format!("/api/v1/agents/{agent_id}/updates?container=web");
    let rows: Vec<UpdateRecord> = relay.get_json(&path).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].command_id, web.id);
    assert!(rows[0].active);
    assert_eq!(rows[0].state, DeliveryState::Received);
    assert_eq!(rows[0].phase.as_deref(), Some("pulling"));
    assert_eq!(
        rows[0].pull,
        Some(flotilla_shared::api::PullLayers { done: 1, total: 3 })
    );
    assert_eq!(rows[0].requested_by, "admin");
    let active: Vec<UpdateRecord> = relay.get_json("/api/v1/updates?active=true").await;
    assert_eq!(active.len(), 2);
    assert!(relay
        .relay
        .state()
        .store
        .is_updating(agent_id.clone(), "web".into())
        .await
        .unwrap()
        .is_some());

    // The failed result carries the report: history and command both show it.
    let report = rolled_back_report();
    let result = CommandResult {
        command_id: web.id.clone(),
        status: ResultStatus::Failed,
        output: Some(serde_json::to_value(&report).unwrap()),
        error: Some(flotilla_shared::command::ErrorInfo {
            code: "update_rolled_back".into(),
            message: "the new container failed its health check; rolled back".into(),
        }),
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
    };
    send(
        &mut ws,
        &AgentFrame::Outbox {
            seq: 2,
            item: OutboxItem::Result(result),
        },
    )
    .await;
    assert_eq!(next_frame(&mut ws).await, Some(RelayFrame::Ack { seq: 2 }));
    let rows: Vec<UpdateRecord> = relay.get_json(&path).await;
    assert!(!rows[0].active);
    assert_eq!(rows[0].state, DeliveryState::Failed);
    assert_eq!(rows[0].outcome, Some(UpdateOutcome::RolledBack));
    assert_eq!(rows[0].report.as_ref(), Some(&report));
    let info: CommandInfo = relay
        .get_json(&format!("/api/v1/commands/{}", web.id))
        .await;
    assert_eq!(info.state, DeliveryState::Failed);
    assert_eq!(
        info.result.unwrap().output,
        Some(serde_json::to_value(&report).unwrap())
    );
    let active: Vec<UpdateRecord> = relay.get_json("/api/v1/updates?active=true").await;
    assert_eq!(
        active
            .iter()
            .map(|u| u.command_id.as_str())
            .collect::<Vec<_>>(),
        vec![db.id.as_str()]
    );
    let all: Vec<UpdateRecord> = relay
        .get_json(&format!("/api/v1/agents/{agent_id}/updates"))
        .await;
    assert_eq!(
        all.iter()
            .map(|u| u.command_id.as_str())
            .collect::<Vec<_>>(),
        vec![db.id.as_str(), web.id.as_str()]
    );

    // A fan-out job's update gets its row when dispatched, with the job's id.
    let resp = relay
        .http
        .post(format!("{}/api/v1/jobs", relay.base))
        .bearer_auth(&relay.admin)
        .json(
            &serde_json::json!({"selector": "", "kind": "container.update",
            "args": {"container": "cache", "image": "reg.example/cache:7"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let job: JobInfo = resp.json().await.unwrap();
    // One round of default updates (2 × (120 + 10) + 15 min).
    assert_eq!((job.expires_at - job.created_at).num_seconds(), 1160);
    let rows: Vec<UpdateRecord> = relay
        .get_json(&format!(
            "/api/v1/agents/{agent_id}/updates?container=cache"
        ))
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].job_id.as_deref(), Some(job.id.as_str()));
    assert_eq!(rows[0].command_id, job.command_id);

    // Read scope is enough; unknown agents and bad filters are clear errors.
    let read: flotilla_shared::api::ApiTokenCreated = relay
        .http
        .post(format!("{}/api/v1/api-tokens", relay.base))
        .bearer_auth(&relay.admin)
        .json(&serde_json::json!({"name": "viewer", "scope": "read"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (status, body) = relay
        .get_status("/api/v1/updates?active=false&limit=1", &read.token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 1);
    let (status, body) = relay
        .get_status("/api/v1/agents/ag_nope/updates", &read.token)
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["message"], "no agent with id ag_nope");
    for bad in ["limit=0", "limit=1001", "active=maybe", "colour=red"] {
        let (status, body) = relay
            .get_status(
                &format!("/api/v1/agents/{agent_id}/updates?{bad}"),
                &read.token,
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    relay.relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn backup_reports_are_stored_once_and_listed_by_state() {
    use flotilla_shared::backup::{
        AgentBackups, BackupAlertLevel, BackupReport, DatabaseState, FleetBackups,
    };
    let relay = relay(256 * 1024).await;
    let key = SigningKey::generate();
    let agent_id = relay.enroll(&key).await.agent_id;
    let mut ws = login(&relay, &key, &agent_id).await;
    let report: BackupReport = serde_json::from_value(serde_json::json!({
        "run_id": "run_1", "source": {"type": "agent"}, "job": "pg", "trigger": "schedule",
        "started_at": chrono::Utc::now() - chrono::Duration::minutes(3),
        "finished_at": chrono::Utc::now(),
        "databases": [
            {"key": "pg/app", "container": "pg", "database": "app", "engine": "postgres",
             "status": "success", "backup_id": "bk_1", "size_bytes": 4096},
            {"key": "pg/shop", "container": "pg", "database": "shop", "engine": "postgres",
             "status": "failed", "error": "pg_dump: connection refused"},
        ],
    }))
    .unwrap();

    // The outbox is at-least-once: the same item again (same seq, then re-sent under a new
    // seq after a reconnect) is acknowledged every time and stored once.
    for seq in [1, 1, 2] {
        send(
            &mut ws,
            &AgentFrame::Outbox {
                seq,
                item: OutboxItem::BackupReport(report.clone()),
            },
        )
        .await;
        assert_eq!(next_frame(&mut ws).await, Some(RelayFrame::Ack { seq }));
    }
    let mine: AgentBackups = relay
        .get_json(&format!("/api/v1/agents/{agent_id}/backups"))
        .await;
    assert_eq!(mine.history.len(), 2);
    assert_eq!(
        mine.databases
            .iter()
            .map(|d| (d.key.as_str(), d.state))
            .collect::<Vec<_>>(),
        [
            ("pg/app", DatabaseState::Ok),
            ("pg/shop", DatabaseState::Failed)
        ]
    );
    assert_eq!(mine.alert.level, BackupAlertLevel::Medium);
    let one: AgentBackups = relay
        .get_json(&format!(
            "/api/v1/agents/{agent_id}/backups?key=pg/shop&limit=1"
        ))
        .await;
    assert_eq!(one.history.len(), 1);
    assert_eq!(
        one.history[0].error.as_deref(),
        Some("pg_dump: connection refused")
    );

    let failed: FleetBackups = relay.get_json("/api/v1/backups?status=failed").await;
    assert_eq!(failed.databases.len(), 1);
    let shop = &failed.databases[0];
    assert_eq!(
        (
            shop.agent_id.as_str(),
            shop.agent_name.as_str(),
            shop.key.as_str()
        ),
        (agent_id.as_str(), "scripted", "pg/shop")
    );
    assert_eq!(shop.last_success_at, None);
    let stale: FleetBackups = relay.get_json("/api/v1/backups?status=stale").await;
    assert!(stale.databases.is_empty());
    let all: FleetBackups = relay.get_json("/api/v1/backups").await;
    assert_eq!(all.databases.len(), 2);

    // Each database is counted once, labelled by status only.
    let metrics = relay
        .http
        .get(format!("{}/metrics", relay.base))
        .bearer_auth(&relay.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("flotilla_backup_databases_total{status=\"success\"} 1\n"));
    assert!(metrics.contains("flotilla_backup_databases_total{status=\"failed\"} 1\n"));

    // Clear errors: a state that does not exist, an unknown agent, a bad limit.
    let (status, body) = relay
        .get_status("/api/v1/backups?status=broken", &relay.admin)
        .await;
    assert_eq!(status, 400);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"broken\"") && message.contains("ok, failed, stale"),
        "{message}"
    );
    let (status, body) = relay
        .get_status("/api/v1/agents/ag_nope/backups", &relay.admin)
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["message"], "no agent with id ag_nope");
    for bad in ["limit=0", "limit=1001", "colour=red"] {
        let (status, body) = relay
            .get_status(
                &format!("/api/v1/agents/{agent_id}/backups?{bad}"),
                &relay.admin,
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // backup.run and backup.restore get six hours unless the caller names a TTL; backup.list
    // and backup.verify the relay's default.
    for (kind, args, ttl) in [
        ("backup.run", serde_json::json!({"job": "pg"}), 6 * 3600),
        (
            "backup.restore",
            serde_json::json!({"id": "bk_1"}),
            6 * 3600,
        ),
        ("backup.list", serde_json::json!({}), 600),
        ("backup.verify", serde_json::json!({"id": "bk_1"}), 600),
    ] {
        let resp = relay
            .http
            .post(format!("{}/api/v1/agents/{agent_id}/commands", relay.base))
            .bearer_auth(&relay.admin)
            .json(&serde_json::json!({"kind": kind, "args": args}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{kind}");
        let info: CommandInfo = resp.json().await.unwrap();
        assert_eq!(
            (info.expires_at - info.created_at).num_seconds(),
            ttl,
            "{kind}"
        );
        let Some(RelayFrame::Command(_)) = next_frame(&mut ws).await else {
            panic!("no command")
        };
    }
    relay.relay.shutdown().await.unwrap();
}
