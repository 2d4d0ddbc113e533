//! The agent's side of the wire protocol, against a minimal in-test relay endpoint (a real
//! websocket server speaking the contract's frames). Docker is whatever the host has; the
//! commands used here (ping, container.list with an `only_label` nobody carries) do not depend
//! on any container existing.

use chrono::{Duration as ChronoDuration, Utc};
use flotilla_agent::config::AgentConfig;
use flotilla_agent::state::{Identity, JournalEntry, State};
use flotilla_shared::command::{
    Audience, Command, CommandEnvelope, CommandResult, ContainerListArgs, ContainerRef, PingArgs,
    ResultStatus, SignedCommand,
};
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::protocol::{AgentFrame, OutboxItem, RelayFrame, SignedWelcome, WelcomeBody};
use flotilla_shared::selector::parse_labels;
use flotilla_shared::signing::{auth_message, PublicKey, SigningKey, AUTH_DOMAIN};
use flotilla_testkit::eventually;
use futures_util::{SinkExt, StreamExt};
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

type Conn = WebSocketStream<tokio::net::TcpStream>;

struct Harness {
    relay_key: SigningKey,
    agent_id: String,
    listener: TcpListener,
    state_dir: PathBuf,
    shutdown: CancellationToken,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// An enrolled state directory and a listening fake relay, before the agent runs.
struct Prepared {
    relay_key: SigningKey,
    agent_id: String,
    listener: TcpListener,
    state_dir: PathBuf,
    /// The agent's database (tests may queue items before the agent starts).
    state: State,
}

async fn start(hold_outbox: bool) -> Harness {
    launch(prepare().await, hold_outbox)
}

async fn prepare() -> Prepared {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let relay_key = SigningKey::generate();
    let agent_key = SigningKey::generate();
    let agent_id = flotilla_shared::ids::new_id("ag");
    let state_dir =
        std::env::temp_dir().join(flotilla_shared::ids::new_id("flotilla-agent-protocol"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_url = format!("http://{}", listener.local_addr().unwrap());
    let state = State::open(&state_dir).await.unwrap();
    state
        .save_identity(Identity {
            agent_id: agent_id.clone(),
            name: "test-agent".into(),
            pkcs8: agent_key.pkcs8().to_vec(),
            relay_public_key: relay_key.public_key().to_base64(),
            relay_url,
            enrolled_at: Utc::now(),
        })
        .await
        .unwrap();
    Prepared {
        relay_key,
        agent_id,
        listener,
        state_dir,
        state,
    }
}

fn launch(p: Prepared, hold_outbox: bool) -> Harness {
    drop(p.state);
    let config = AgentConfig {
        state_dir: p.state_dir.clone(),
        only_label: Some(format!("flotilla.test={}", p.agent_id)),
        test_hold_outbox: hold_outbox,
        ..AgentConfig::default()
    };
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(flotilla_agent::run(config, shutdown.clone()));
    Harness {
        relay_key: p.relay_key,
        agent_id: p.agent_id,
        listener: p.listener,
        state_dir: p.state_dir,
        shutdown,
        agent,
    }
}

async fn recv(ws: &mut Conn) -> AgentFrame {
    recv_sized(ws).await.1
}

/// The next agent frame and its size in bytes.
async fn recv_sized(ws: &mut Conn) -> (usize, AgentFrame) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("agent frame within 10 s")
            .expect("connection open")
            .expect("websocket ok");
        if let Message::Text(t) = msg {
            let frame = serde_json::from_str(t.as_str()).expect("valid agent frame");
            return (t.len(), frame);
        }
    }
}

async fn send(ws: &mut Conn, frame: &RelayFrame) {
    ws.send(Message::text(serde_json::to_string(frame).unwrap()))
        .await
        .unwrap();
}

/// Accepts the agent's connection and runs the relay side of the handshake.
async fn accept(h: &Harness, labels: &str) -> Conn {
    accept_with(h, labels, Utc::now(), None).await
}

/// `accept` with the welcome's issue time and announced frame limit chosen by the test.
async fn accept_with(
    h: &Harness,
    labels: &str,
    issued_at: chrono::DateTime<Utc>,
    max_frame_bytes: Option<usize>,
) -> Conn {
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), h.listener.accept())
        .await
        .expect("agent connects within 10 s")
        .unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let challenge = "Y2hhbGxlbmdl".to_string();
    send(
        &mut ws,
        &RelayFrame::Hello {
            protocol_version: 1,
            challenge: challenge.clone(),
        },
    )
    .await;
    match recv(&mut ws).await {
        AgentFrame::Auth {
            agent_id,
            signature,
            ..
        } => {
            assert_eq!(agent_id, h.agent_id);
            // Recover the agent's public key from the state file to check the signature.
            let state = State::open(&h.state_dir).await.unwrap();
            let id = state.identity().await.unwrap().unwrap();
            let pk: PublicKey = SigningKey::from_pkcs8(&id.pkcs8).unwrap().public_key();
            pk.verify(
                AUTH_DOMAIN,
                &auth_message(&challenge, &agent_id),
                &signature,
            )
            .expect("auth signature verifies");
        }
        other => panic!("expected auth, got {other:?}"),
    }
    let body = WelcomeBody {
        agent_id: h.agent_id.clone(),
        labels: parse_labels(labels).unwrap(),
        issued_at,
    };
    send(
        &mut ws,
        &RelayFrame::Welcome {
            welcome: SignedWelcome::sign(&body, &h.relay_key),
            heartbeat_interval_secs: 1,
            max_frame_bytes,
        },
    )
    .await;
    ws
}

fn command(h: &Harness, id: &str, audience: Audience, command: Command) -> SignedCommand {
    let now = Utc::now();
    SignedCommand::sign(
        &CommandEnvelope {
            id: id.into(),
            audience,
            command,
            issued_at: now,
            expires_at: now + ChronoDuration::minutes(5),
        },
        &h.relay_key,
    )
}

fn me(h: &Harness) -> Audience {
    Audience::Agent {
        agent_id: h.agent_id.clone(),
    }
}

/// Reads frames (acking outbox items) until `pred` picks one out; returns it.
async fn until<T>(ws: &mut Conn, mut pred: impl FnMut(&AgentFrame) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected frame did not arrive"
        );
        let f = recv(ws).await;
        eprintln!("relay got: {}", frame_summary(&f));
        if let AgentFrame::Outbox { seq, .. } = &f {
            send(ws, &RelayFrame::Ack { seq: *seq }).await;
        }
        if let Some(t) = pred(&f) {
            return t;
        }
    }
}

fn frame_summary(f: &AgentFrame) -> String {
    match f {
        AgentFrame::Heartbeat(hb) => format!("heartbeat at {}", hb.at),
        other => serde_json::to_string(other).unwrap(),
    }
}

#[tokio::test]
async fn handshake_outbox_commands_replay_and_forgery() {
    let h = start(false).await;
    let mut ws = accept(&h, "tier=build").await;

    // Heartbeat and the agent.started event arrive (in either order).
    let (mut heartbeat, mut started) = (false, false);
    until(&mut ws, |f| {
        match f {
            AgentFrame::Heartbeat(_) => heartbeat = true,
            AgentFrame::Outbox {
                item: OutboxItem::Event(e),
                ..
            } if e.kind == EventKind::AgentStarted => started = true,
            _ => {}
        }
        (heartbeat && started).then_some(())
    })
    .await;

    // A ping: received, then a succeeded result.
    let ping = command(&h, "cmd_ping", me(&h), Command::Ping(PingArgs {}));
    send(&mut ws, &RelayFrame::Command(ping.clone())).await;
    until(&mut ws, |f| match f {
        AgentFrame::Received { command_id } if command_id == "cmd_ping" => Some(()),
        _ => None,
    })
    .await;
    let result = until(&mut ws, |f| match f {
        AgentFrame::Outbox {
            item: OutboxItem::Result(r),
            ..
        } if r.command_id == "cmd_ping" => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(result.status, ResultStatus::Succeeded, "{result:?}");
    assert!(result.output.unwrap()["agent_version"].is_string());

    // Replaying it re-sends the stored result instead of running it again.
    send(&mut ws, &RelayFrame::Command(ping)).await;
    let replayed = until(&mut ws, |f| match f {
        AgentFrame::Outbox {
            item: OutboxItem::Result(r),
            ..
        } if r.command_id == "cmd_ping" => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(replayed.started_at, result.started_at);

    // A selector job matching the welcome labels runs; the container list is empty because no
    // container carries this test's only_label.
    let list = command(
        &h,
        "cmd_list",
        Audience::Selector {
            selector: "tier=build".parse().unwrap(),
        },
        Command::ContainerList(ContainerListArgs {
            all: true,
            label: None,
        }),
    );
    send(&mut ws, &RelayFrame::Command(list)).await;
    let r = until(&mut ws, |f| match f {
        AgentFrame::Outbox {
            item: OutboxItem::Result(r),
            ..
        } if r.command_id == "cmd_list" => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(r.status, ResultStatus::Succeeded, "{r:?}");
    assert_eq!(r.output.unwrap()["containers"], serde_json::json!([]));

    // An invisible/unknown container fails like an unknown one.
    let start = command(
        &h,
        "cmd_start",
        me(&h),
        Command::ContainerStart(ContainerRef {
            container: "flotilla-not-there".into(),
        }),
    );
    send(&mut ws, &RelayFrame::Command(start)).await;
    let r = until(&mut ws, |f| match f {
        AgentFrame::Outbox {
            item: OutboxItem::Result(r),
            ..
        } if r.command_id == "cmd_start" => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(r.status, ResultStatus::Failed);
    let err = r.error.unwrap();
    assert_eq!(err.code, "no_such_container");
    assert_eq!(err.message, "no such container: flotilla-not-there");

    // A forged command: a command.rejected event, and no result.
    let forged = SignedCommand::sign(
        &CommandEnvelope {
            id: "cmd_forged".into(),
            audience: me(&h),
            command: Command::Ping(PingArgs {}),
            issued_at: Utc::now(),
            expires_at: Utc::now() + ChronoDuration::minutes(5),
        },
        &SigningKey::generate(),
    );
    send(&mut ws, &RelayFrame::Command(forged)).await;
    let ev = until(&mut ws, |f| match f {
        AgentFrame::Outbox {
            item: OutboxItem::Result(r),
            ..
        } if r.command_id == "cmd_forged" => panic!("forged command got a result: {r:?}"),
        AgentFrame::Outbox {
            item: OutboxItem::Event(e),
            ..
        } if e.kind == EventKind::CommandRejected => Some(e.clone()),
        _ => None,
    })
    .await;
    assert_eq!(ev.attributes["code"], "bad_signature");
    assert_eq!(ev.attributes["command_id"], "cmd_forged");

    // Mis-addressed: event + rejected result.
    let other = command(
        &h,
        "cmd_other",
        Audience::Agent {
            agent_id: "ag_someone_else".into(),
        },
        Command::Ping(PingArgs {}),
    );
    send(&mut ws, &RelayFrame::Command(other)).await;
    let r = until(&mut ws, |f| match f {
        AgentFrame::Outbox {
            item: OutboxItem::Result(r),
            ..
        } if r.command_id == "cmd_other" => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(r.status, ResultStatus::Rejected);
    assert_eq!(r.error.unwrap().code, "wrong_audience");

    // Everything was acked: after a reconnect nothing old is re-sent... except what was
    // appended after the last ack we sent. Drop the link; the agent comes back.
    drop(ws);
    let mut ws = accept(&h, "tier=build").await;
    until(&mut ws, |f| {
        matches!(f, AgentFrame::Heartbeat(_)).then_some(())
    })
    .await;

    h.shutdown.cancel();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(20), h.agent)
        .await
        .expect("agent stops within 20 s")
        .unwrap()
        .unwrap();
    let state = State::open(&h.state_dir).await.unwrap();
    assert!(
        state.outbox_len().await.unwrap() <= 1,
        "acked outbox items are deleted"
    );
    std::fs::remove_dir_all(&h.state_dir).ok();
}

#[tokio::test]
async fn held_outbox_is_not_sent_and_survives_for_the_next_run() {
    let h = start(true).await;
    let mut ws = accept(&h, "").await;
    until(&mut ws, |f| {
        matches!(f, AgentFrame::Heartbeat(_)).then_some(())
    })
    .await;
    let ping = command(&h, "cmd_held", me(&h), Command::Ping(PingArgs {}));
    send(&mut ws, &RelayFrame::Command(ping)).await;
    until(&mut ws, |f| match f {
        AgentFrame::Received { command_id } if command_id == "cmd_held" => Some(()),
        _ => None,
    })
    .await;
    // For a few heartbeats, no outbox frame at all.
    for _ in 0..3 {
        let f = until(&mut ws, |f| match f {
            AgentFrame::Outbox { .. } => Some(Some(f.clone())),
            AgentFrame::Heartbeat(_) => Some(None),
            _ => None,
        })
        .await;
        assert!(f.is_none(), "outbox item sent while held: {f:?}");
    }
    h.shutdown.cancel();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(20), h.agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let state = State::open(&h.state_dir).await.unwrap();
    let items = state.outbox_after(0, 100).await.unwrap();
    assert!(
        items
            .iter()
            .any(|(_, i)| matches!(i, OutboxItem::Result(r) if r.command_id == "cmd_held")),
        "{items:?}"
    );
    std::fs::remove_dir_all(&h.state_dir).ok();
}

async fn stop(h: Harness, ws: Conn) -> PathBuf {
    h.shutdown.cancel();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(20), h.agent)
        .await
        .expect("agent stops within 20 s")
        .unwrap()
        .unwrap();
    h.state_dir
}

#[tokio::test]
async fn items_too_large_for_the_relay_are_shortened_and_the_queue_moves_on() {
    let p = prepare().await;
    // Queued before the agent starts: a result and an event far over the relay's limit, and a
    // small event behind them that must still get through.
    let now = Utc::now();
    p.state
        .journal_begin("cmd_huge", now, now + ChronoDuration::minutes(5))
        .await
        .unwrap();
    p.state
        .finish_command(CommandResult {
            command_id: "cmd_huge".into(),
            status: ResultStatus::Succeeded,
            output: Some(serde_json::json!({ "blob": "x".repeat(100_000) })),
            error: None,
            started_at: now,
            finished_at: now,
        })
        .await
        .unwrap();
    p.state
        .append_outbox(vec![
            OutboxItem::Event(AgentEvent {
                kind: EventKind::CommandRejected,
                at: now,
                container_id: None,
                container_name: None,
                message: "y".repeat(100_000),
                attributes: [("command_id".to_string(), "cmd_x".to_string())].into(),
            }),
            OutboxItem::Event(AgentEvent {
                kind: EventKind::ContainerDied,
                at: now,
                container_id: None,
                container_name: Some("web".into()),
                message: "behind the big ones".into(),
                attributes: Default::default(),
            }),
        ])
        .await
        .unwrap();
    let h = launch(p, false);
    let limit = 16 * 1024;
    let mut ws = accept_with(&h, "", Utc::now(), Some(limit)).await;
    let (mut result, mut trimmed, mut behind) = (None, None, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while result.is_none() || trimmed.is_none() || !behind {
        assert!(
            tokio::time::Instant::now() < deadline,
            "items did not arrive"
        );
        let (len, f) = recv_sized(&mut ws).await;
        assert!(
            len <= limit,
            "frame of {len} bytes exceeds the relay's {limit}"
        );
        if let AgentFrame::Outbox { seq, item } = &f {
            send(&mut ws, &RelayFrame::Ack { seq: *seq }).await;
            match item {
                OutboxItem::Result(r) if r.command_id == "cmd_huge" => result = Some(r.clone()),
                OutboxItem::Event(e) if e.kind == EventKind::CommandRejected => {
                    trimmed = Some(e.clone())
                }
                OutboxItem::Event(e) if e.message == "behind the big ones" => behind = true,
                _ => {}
            }
        }
    }
    let r = result.unwrap();
    assert_eq!(r.status, ResultStatus::Failed);
    assert_eq!(r.error.unwrap().code, "result_too_large");
    let e = trimmed.unwrap();
    assert_eq!(e.attributes["truncated"], "true");
    assert_eq!(e.attributes["command_id"], "cmd_x");

    let dir = stop(h, ws).await;
    // The replacement was stored: a re-sent duplicate of the command gets the same answer.
    let state = State::open(&dir).await.unwrap();
    match state.journal_get("cmd_huge").await.unwrap() {
        Some(JournalEntry::Done(r)) => assert_eq!(r.error.unwrap().code, "result_too_large"),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn an_older_welcome_than_the_stored_one_is_refused() {
    let h = start(false).await;
    let ws = accept(&h, "tier=new").await;
    let mut ws = ws;
    until(&mut ws, |f| {
        matches!(f, AgentFrame::Heartbeat(_)).then_some(())
    })
    .await;
    drop(ws);

    // A replayed, validly signed but older welcome (with older labels): the agent hangs up
    // instead of sending anything.
    let mut ws = accept_with(&h, "tier=old", Utc::now() - ChronoDuration::hours(1), None).await;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the agent hangs up within 10 s");
        match msg {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Text(t))) => panic!("agent accepted an older welcome and sent {t}"),
            Some(Ok(_)) => {}
        }
    }
    let state = State::open(&h.state_dir).await.unwrap();
    let stored = state.last_welcome().await.unwrap().unwrap();
    assert!(stored.body.contains("\"tier\":\"new\""), "{}", stored.body);
    drop(state);

    // A current welcome is accepted again.
    let mut ws = accept(&h, "tier=new").await;
    until(&mut ws, |f| {
        matches!(f, AgentFrame::Heartbeat(_)).then_some(())
    })
    .await;
    let dir = stop(h, ws).await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn duplicates_of_a_finished_command_do_not_pile_up_results() {
    let h = start(true).await;
    let mut ws = accept(&h, "").await;
    until(&mut ws, |f| {
        matches!(f, AgentFrame::Heartbeat(_)).then_some(())
    })
    .await;
    let ping = command(&h, "cmd_dup", me(&h), Command::Ping(PingArgs {}));
    send(&mut ws, &RelayFrame::Command(ping.clone())).await;
    let state = State::open(&h.state_dir).await.unwrap();
    let results = |items: Vec<(u64, OutboxItem)>| {
        items
            .into_iter()
            .filter(|(_, i)| matches!(i, OutboxItem::Result(r) if r.command_id == "cmd_dup"))
            .count()
    };
    eventually(Duration::from_secs(20), "a result for cmd_dup", || async {
        (results(state.outbox_after(0, 1000).await.unwrap()) > 0).then_some(())
    })
    .await;
    // The relay re-sends it (e.g. after reconnects) while the result is still queued.
    for _ in 0..3 {
        send(&mut ws, &RelayFrame::Command(ping.clone())).await;
    }
    // Commands are admitted in order: once this one is received, the copies were handled.
    let marker = command(&h, "cmd_marker", me(&h), Command::Ping(PingArgs {}));
    send(&mut ws, &RelayFrame::Command(marker)).await;
    until(&mut ws, |f| match f {
        AgentFrame::Received { command_id } if command_id == "cmd_marker" => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(results(state.outbox_after(0, 1000).await.unwrap()), 1);
    drop(state);
    let dir = stop(h, ws).await;
    std::fs::remove_dir_all(&dir).ok();
}
