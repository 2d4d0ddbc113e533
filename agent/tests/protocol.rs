//! The agent's side of the wire protocol, against a minimal in-test relay endpoint (a real
//! websocket server speaking the contract's frames). Docker is whatever the host has; the
//! commands used here (ping, container.list with an `only_label` nobody carries) do not depend
//! on any container existing.

use chrono::{Duration as ChronoDuration, Utc};
use flotilla_agent::config::AgentConfig;
use flotilla_agent::state::{Identity, State};
use flotilla_shared::command::{
    Audience, Command, CommandEnvelope, ContainerListArgs, ContainerRef, PingArgs, ResultStatus,
    SignedCommand,
};
use flotilla_shared::heartbeat::EventKind;
use flotilla_shared::protocol::{AgentFrame, OutboxItem, RelayFrame, SignedWelcome, WelcomeBody};
use flotilla_shared::selector::parse_labels;
use flotilla_shared::signing::{auth_message, PublicKey, SigningKey, AUTH_DOMAIN};
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

async fn start(hold_outbox: bool) -> Harness {
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
    drop(state);
    let config = AgentConfig {
        state_dir: state_dir.clone(),
        only_label: Some(format!("flotilla.test={agent_id}")),
        test_hold_outbox: hold_outbox,
        ..AgentConfig::default()
    };
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(flotilla_agent::run(config, shutdown.clone()));
    Harness {
        relay_key,
        agent_id,
        listener,
        state_dir,
        shutdown,
        agent,
    }
}

async fn recv(ws: &mut Conn) -> AgentFrame {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("agent frame within 10 s")
            .expect("connection open")
            .expect("websocket ok");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("valid agent frame");
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
        issued_at: Utc::now(),
    };
    send(
        &mut ws,
        &RelayFrame::Welcome {
            welcome: SignedWelcome::sign(&body, &h.relay_key),
            heartbeat_interval_secs: 1,
            max_frame_bytes: None,
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
        Command::ContainerList(ContainerListArgs { all: true }),
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
