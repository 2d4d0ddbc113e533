//! The live event stream (`GET /api/v1/events/stream`) of an in-process relay, read over real
//! HTTP on loopback: events of a scripted agent, resuming with `Last-Event-ID`, the reset of a
//! too-old id, a client that never reads, and authentication.

mod support;

use flotilla_shared::api::{CommandInfo, CreateEnrollmentToken, EnrollResponse, JobInfo};
use flotilla_shared::command::{CommandResult, ResultStatus};
use flotilla_shared::heartbeat::{Heartbeat, HostMetrics};
use flotilla_shared::protocol::{AgentFrame, OutboxItem};
use flotilla_shared::rollout::RolloutInfo;
use flotilla_shared::selector::Labels;
use flotilla_shared::signing::SigningKey;
use flotilla_shared::stream::{EventKind, FleetEvent};
use flotilla_testkit::agent::ScriptedAgent;
use serde_json::{json, Value};
use std::time::Duration;
use support::TestRelay;

/// One SSE event as read off the wire.
#[derive(Debug)]
struct Sse {
    id: Option<u64>,
    name: Option<String>,
    data: String,
}

/// Reads a stream's events, chunk by chunk.
struct Reader {
    resp: reqwest::Response,
    buf: String,
    /// Fleet events read but not asked for yet (see [`Reader::until`]).
    unclaimed: Vec<FleetEvent>,
}

impl Reader {
    /// The next event within 10 s; `None` once the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = Sse {
                    id: None,
                    name: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.name = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.trim_start());
                    }
                }
                if event.id.is_none() && event.name.is_none() && event.data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("no event within 10 s")
                .expect("stream read failed")?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn next_fleet_event(&mut self) -> FleetEvent {
        let e = self.next().await.expect("stream ended");
        assert_eq!(e.name, None, "expected a fleet event, got {e:?}");
        let event: FleetEvent = serde_json::from_str(&e.data).unwrap();
        assert_eq!(e.id, Some(event.id));
        event
    }

    /// The first event of `kind` that `pick` accepts, whether it was read already or comes
    /// next (events of other kinds, or not picked, stay for later calls): the relay's tasks
    /// publish concurrently, so their order is not the test's.
    async fn until(&mut self, kind: EventKind, pick: impl Fn(&FleetEvent) -> bool) -> FleetEvent {
        let wanted = |e: &FleetEvent| e.kind == kind.as_str() && pick(e);
        if let Some(i) = self.unclaimed.iter().position(wanted) {
            return self.unclaimed.remove(i);
        }
        loop {
            let event = self.next_fleet_event().await;
            if wanted(&event) {
                return event;
            }
            self.unclaimed.push(event);
        }
    }
}

async fn open(relay: &TestRelay, query: &str, last: Option<u64>) -> Reader {
    let mut req = relay
        .http
        .get(format!("{}/api/v1/events/stream{query}", relay.base))
        .bearer_auth(&relay.admin);
    if let Some(id) = last {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    Reader {
        resp,
        buf: String::new(),
        unclaimed: Vec::new(),
    }
}

/// Enrolls an agent named `name` through the API with a fresh enrollment token giving it
/// `labels`.
async fn enroll_agent(
    relay: &TestRelay,
    name: &str,
    labels: Labels,
) -> (EnrollResponse, SigningKey) {
    let token = relay
        .enrollment_token(&CreateEnrollmentToken {
            labels,
            ..CreateEnrollmentToken::default()
        })
        .await;
    let key = SigningKey::generate();
    let facts = Default::default();
    let enrolled =
        flotilla_testkit::agent::enroll(&relay.http, &relay.base, token, name, facts, &key)
            .await
            .unwrap();
    (enrolled, key)
}

fn publish(relay: &TestRelay, n: usize) {
    for i in 0..n {
        relay.relay.state().stream.publish(
            EventKind::JobFinished,
            None,
            Some(&format!("job_{i}")),
            format!("job {i} finished"),
            None,
        );
    }
}

#[tokio::test]
async fn a_connecting_agent_appears_on_the_stream() {
    let relay = TestRelay::in_process("stream-agent")
        .config(|c| c.heartbeat_interval_secs = 5)
        .start()
        .await;
    let mut stream = open(&relay, "?kinds=agent", None).await;
    let (enrolled, key) = enroll_agent(&relay, "streamed", Labels::new()).await;
    let mut agent = ScriptedAgent::new(enrolled.agent_id.clone(), key, "t");
    agent.connect(&relay.ws_url()).await.unwrap();
    let mut event = stream.next_fleet_event().await;
    if event.kind == EventKind::AgentEnrolled.as_str() {
        event = stream.next_fleet_event().await;
    }
    assert_eq!(event.kind, EventKind::AgentConnected.as_str());
    assert_eq!(event.agent_id.as_deref(), Some(enrolled.agent_id.as_str()));
    agent.disconnect().await;
    let event = stream.next_fleet_event().await;
    assert_eq!(event.kind, EventKind::AgentDisconnected.as_str());
}

#[tokio::test]
async fn a_client_resuming_with_last_event_id_loses_and_repeats_nothing() {
    let relay = TestRelay::in_process("stream-resume").start().await;
    let mut stream = open(&relay, "", None).await;
    publish(&relay, 10);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(stream.next_fleet_event().await);
    }
    drop(stream);
    publish(&relay, 20);
    let last = seen.last().unwrap().id;
    let mut stream = open(&relay, "", Some(last)).await;
    for _ in 0..26 {
        seen.push(stream.next_fleet_event().await);
    }
    let subjects: Vec<_> = seen.iter().map(|e| e.subject.clone().unwrap()).collect();
    let expected: Vec<_> = (0..10).chain(0..20).map(|i| format!("job_{i}")).collect();
    assert_eq!(subjects, expected);
    assert!(
        seen.windows(2).all(|w| w[1].id == w[0].id + 1),
        "ids: {seen:?}"
    );
    // The query parameter works as the header does.
    let mut by_query = open(&relay, &format!("?last_event_id={last}"), None).await;
    assert_eq!(by_query.next_fleet_event().await.id, last + 1);
}

#[tokio::test]
async fn a_too_old_last_event_id_gets_a_reset_then_live_events() {
    let relay = TestRelay::in_process("stream-reset").start().await;
    let mut stream = open(&relay, "", Some(1)).await;
    let reset = stream.next().await.unwrap();
    assert_eq!(reset.name.as_deref(), Some("reset"), "{reset:?}");
    assert!(reset.data.contains("reason"), "{reset:?}");
    publish(&relay, 1);
    assert_eq!(
        stream.next_fleet_event().await.subject.as_deref(),
        Some("job_0")
    );
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_client_that_never_reads_is_reset_and_memory_stays_bounded() {
    let relay = TestRelay::in_process("stream-slow").start().await;
    let mut slow = open(&relay, "", None).await;
    let mut reader = open(&relay, "", None).await;
    let bus = &relay.relay.state().stream;
    assert_eq!(bus.subscribers(), 2);
    publish(&relay, 20_000);
    let before = vm_rss_kib();
    const FLOOD: usize = 200_000;
    publish(&relay, FLOOD);
    let after = vm_rss_kib();
    println!(
        "published {FLOOD} more events with one client not reading: VmRSS {before} -> {after} KiB, replay ring {} events",
        bus.replay_len()
    );
    assert!(bus.replay_len() <= 10_000);
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    // The client that did not read: what was buffered, then a reset, then the end.
    let mut events = 0;
    let mut reset = false;
    while let Some(e) = slow.next().await {
        if e.name.as_deref() == Some("reset") {
            reset = true;
        } else {
            assert!(!reset, "an event after the reset");
            events += 1;
        }
    }
    println!("the slow client got {events} events, then a reset and the end of its stream");
    assert!(reset);
    assert!(events < 20_000 + FLOOD);
    // So did the other one (it did not read during the flood either); the bus keeps none.
    while reader.next().await.is_some() {}
    flotilla_testkit::eventually(
        Duration::from_secs(10),
        "the bus has no subscribers",
        || async { (bus.subscribers() == 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn the_stream_needs_a_token_and_read_scope_is_enough() {
    let relay = TestRelay::in_process("stream-auth").start().await;
    let url = format!("{}/api/v1/events/stream", relay.base);
    let resp = relay.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let created: serde_json::Value = relay
        .http
        .post(format!("{}/api/v1/api-tokens", relay.base))
        .bearer_auth(&relay.admin)
        .json(&serde_json::json!({ "name": "viewer", "scope": "read" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = created["token"].as_str().expect("token in the answer");
    let resp = relay
        .http
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = relay
        .http
        .get(format!("{url}?selector=%3D%3D"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

/// Posts `body` to `path` as the admin; the answer must be a success.
async fn post_json<T: serde::de::DeserializeOwned>(
    relay: &TestRelay,
    path: &str,
    body: Value,
) -> T {
    let resp = relay
        .http
        .post(format!("{}{path}", relay.base))
        .bearer_auth(&relay.admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "POST {path}: {}", resp.status());
    resp.json().await.unwrap()
}

/// The result of `command_id`, with `output`.
fn result(command_id: &str, status: ResultStatus, output: Option<Value>) -> OutboxItem {
    let now = chrono::Utc::now();
    OutboxItem::Result(CommandResult {
        command_id: command_id.to_string(),
        status,
        output,
        error: None,
        started_at: now,
        finished_at: now,
    })
}

/// A `container.update` report of container `web`.
fn update_report(outcome: &str, image: &str) -> Value {
    json!({
        "outcome": outcome, "container": "web", "image": image, "strategy": "stop-first",
        "health": "tcp:8080", "phase": "done", "timings": [], "old_stopped": true,
        "total_ms": 1200
    })
}

fn heartbeat(cpu_percent: f32) -> AgentFrame {
    AgentFrame::Heartbeat(Box::new(Heartbeat {
        at: chrono::Utc::now(),
        agent_version: "t".into(),
        host: HostMetrics {
            cpu_percent,
            ..HostMetrics::default()
        },
        docker: Default::default(),
        backup: None,
        compose_drift: Vec::new(),
    }))
}

/// Every kind the relay publishes besides those of the test above, each from where the relay
/// decides it: enrollment, the alerts engine (an enrolled agent that is not connected is
/// unreachable; connecting resolves it), heartbeats whose summary changed, a job, a
/// container update, a backup report, a rollout (the API's creation, then the engine's own
/// transition) and revocation.
#[tokio::test]
async fn every_decision_of_the_relay_is_on_the_stream() {
    const WAIT: Duration = Duration::from_secs(10);
    let relay = TestRelay::in_process("stream-kinds")
        .config(|c| {
            c.heartbeat_interval_secs = 1;
            c.alerts.evaluate_interval_secs = 1;
            c.alerts.unreachable_intervals = 1;
        })
        .start()
        .await;
    let relay_key = relay.relay.state().key.public_key();
    let mut stream = open(&relay, "", None).await;
    let labels: Labels = [("team".to_string(), "stream".to_string())].into();
    let (enrolled, key) = enroll_agent(&relay, "everything", labels).await;
    let id = enrolled.agent_id.clone();
    let mine = |e: &FleetEvent| e.agent_id.as_deref() == Some(id.as_str());

    let e = stream.until(EventKind::AgentEnrolled, mine).await;
    assert_eq!(e.subject.as_deref(), Some(id.as_str()));
    let data = e.data.unwrap();
    assert_eq!(data["name"], "everything");
    assert_eq!(data["labels"]["team"], "stream");

    let firing = stream.until(EventKind::AlertFiring, mine).await;
    let alert_id = firing.subject.clone().unwrap();
    assert!(alert_id.starts_with("alr_"), "{firing:?}");
    assert_eq!(firing.data.unwrap()["rule"], "agent_unreachable");
    let mut agent = ScriptedAgent::new(id.clone(), key, "t");
    agent.connect(&relay.ws_url()).await.unwrap();
    let resolved = stream
        .until(EventKind::AlertResolved, |e| {
            e.subject.as_deref() == Some(alert_id.as_str())
        })
        .await;
    assert_eq!(resolved.agent_id.as_deref(), Some(id.as_str()));

    // A move within a 10-point band is not published; into the next band it is.
    for cpu in [10.0, 13.0, 20.0] {
        agent.send(&heartbeat(cpu)).await.unwrap();
    }
    for cpu in [10.0, 20.0] {
        let e = stream.until(EventKind::AgentHeartbeat, mine).await;
        let data = e.data.clone().unwrap();
        assert_eq!(data["cpu_percent"], cpu, "heartbeat event {e:?}");
    }

    // One job.finished for the job (no agent: it is the job's).
    let job: JobInfo = post_json(
        &relay,
        "/api/v1/jobs",
        json!({"selector": "team=stream", "kind": "ping", "args": {}}),
    )
    .await;
    let env = agent.next_command(&relay_key, WAIT).await.unwrap();
    let ok = result(&env.id, ResultStatus::Succeeded, None);
    agent.outbox(ok, WAIT).await.unwrap();
    let e = stream
        .until(EventKind::JobFinished, |e| {
            e.subject.as_deref() == Some(job.id.as_str())
        })
        .await;
    assert_eq!(e.agent_id, None);
    assert_eq!(e.data.unwrap()["state"], "completed");

    let path = format!("/api/v1/agents/{id}/commands");
    let image = "reg.example/app:v2";
    let update: CommandInfo = post_json(
        &relay,
        &path,
        json!({"kind": "container.update", "args": {"container": "web", "image": image}}),
    )
    .await;
    let env = agent.next_command(&relay_key, WAIT).await.unwrap();
    assert_eq!(env.id, update.id);
    let report = update_report("rolled_back", image);
    let failed = result(&env.id, ResultStatus::Failed, Some(report));
    agent.outbox(failed, WAIT).await.unwrap();
    let e = stream
        .until(EventKind::UpdateFinished, |e| {
            e.subject.as_deref() == Some(update.id.as_str())
        })
        .await;
    assert_eq!(e.agent_id.as_deref(), Some(id.as_str()));
    let data = e.data.unwrap();
    assert_eq!(
        (&data["outcome"], &data["image"]),
        (&json!("rolled_back"), &json!(image))
    );

    let report = serde_json::from_value(json!({
        "run_id": "run_1", "source": {"type": "agent"}, "job": "pg",
        "started_at": chrono::Utc::now(), "finished_at": chrono::Utc::now(),
        "databases": [{"key": "pg/app", "status": "success"}],
    }))
    .unwrap();
    let item = OutboxItem::BackupReport(report);
    agent.outbox(item, WAIT).await.unwrap();
    let e = stream.until(EventKind::BackupReported, mine).await;
    assert_eq!(e.subject.as_deref(), Some("run_1"));
    let data = e.data.unwrap();
    assert_eq!(
        (&data["key"], &data["state"]),
        (&json!("pg/app"), &json!("success"))
    );

    // Created through the API; its update's result moves it on in the engine.
    let image = "reg.example/app:v3";
    let rollout: RolloutInfo = post_json(
        &relay,
        "/api/v1/rollouts",
        json!({"selector": "team=stream", "container": "web", "image": image,
               "stages": "100%"}),
    )
    .await;
    let of_rollout = |e: &FleetEvent| e.subject.as_deref() == Some(rollout.id.as_str());
    let created = stream.until(EventKind::RolloutTransition, of_rollout).await;
    assert_eq!(created.agent_id, None);
    assert_eq!(created.data.unwrap()["action"], "created");
    let env = agent.next_command(&relay_key, WAIT).await.unwrap();
    let report = update_report("updated", image);
    let updated = result(&env.id, ResultStatus::Succeeded, Some(report));
    agent.outbox(updated, WAIT).await.unwrap();
    let moved = stream.until(EventKind::RolloutTransition, of_rollout).await;
    let data = moved.data.unwrap();
    assert_ne!(data["action"], "created", "{data}");
    assert!(data["state"].is_string() && data["stage"] == 0, "{data}");

    let resp = relay
        .http
        .delete(format!("{}/api/v1/agents/{id}", relay.base))
        .bearer_auth(&relay.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let e = stream.until(EventKind::AgentRevoked, mine).await;
    assert_eq!(e.subject.as_deref(), Some(id.as_str()));
}
