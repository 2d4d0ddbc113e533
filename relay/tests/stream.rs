//! The live event stream (`GET /api/v1/events/stream`) of an in-process relay, read over real
//! HTTP on loopback: events of a scripted agent, resuming with `Last-Event-ID`, the reset of a
//! too-old id, a client that never reads, and authentication.

mod support;

use flotilla_shared::api::{CreateEnrollmentToken, EnrollmentTokenCreated};
use flotilla_shared::signing::SigningKey;
use flotilla_shared::stream::{EventKind, FleetEvent};
use flotilla_testkit::agent::ScriptedAgent;
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
    }
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
    let token: EnrollmentTokenCreated = relay
        .http
        .post(format!("{}/api/v1/enrollment-tokens", relay.base))
        .bearer_auth(&relay.admin)
        .json(&CreateEnrollmentToken::default())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = SigningKey::generate();
    let enrolled = flotilla_testkit::agent::enroll(
        &relay.http,
        &relay.base,
        token.token,
        "streamed",
        Default::default(),
        &key,
    )
    .await
    .unwrap();
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
