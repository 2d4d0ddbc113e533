//! Trust: revoked agents are refused; the agent refuses forged, expired, replayed and
//! mis-addressed commands (injected raw through the relay's test hook).

use crate::{images, DEADLINE};
use chrono::{Duration as Span, Utc};
use flotilla_shared::api::{AgentStatus, DeliveryState, EventRecord};
use flotilla_shared::command::{
    Audience, Command, CommandEnvelope, ContainerRef, ContainerStopArgs, SignedCommand,
};
use flotilla_shared::heartbeat::EventKind;
use flotilla_shared::protocol::{RelayFrame, CONNECT_PATH};
use flotilla_shared::signing::SigningKey;
use flotilla_tests::fake_agent;
use flotilla_tests::harness::{api_error, eventually, scope, Agent, Api, Containers, Relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_is_disconnected_and_refused() {
    let relay = Relay::start().await;
    let agent = Agent::start(&relay, "host-a", "", &scope("revoke")).await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;

    api.delete(&format!("/api/v1/agents/{}", agent.id))
        .await
        .unwrap();
    api.wait_status(&agent.id, AgentStatus::Revoked, DEADLINE)
        .await;
    // Commands to it are refused.
    let err = api
        .command(&agent.id, Command::Ping(Default::default()), None)
        .await
        .unwrap_err();
    assert_eq!(api_error(&err).status, 410, "{err:#}");

    // A scripted agent with a revoked identity gets a revoked error and a closed socket.
    let (id, key) = fake_agent::enroll(&relay, "fake", "").await;
    api.delete(&format!("/api/v1/agents/{id}")).await.unwrap();
    let err = fake_agent::connect(&relay, id, key)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("revoked"), "{err:#}");

    // The real agent keeps retrying but never gets back online.
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", relay.url()))
        .bearer_auth(&relay.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("flotilla_connected_agents 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_refused() {
    let relay = Relay::start().await;
    // An unknown agent id.
    let err = fake_agent::connect(
        &relay,
        "ag_00000000000000000000".into(),
        SigningKey::generate(),
    )
    .await
    .err()
    .expect("refused");
    assert!(format!("{err:#}").contains("auth_failed"), "{err:#}");
    // A known id with the wrong key.
    let (id, _key) = fake_agent::enroll(&relay, "fake", "").await;
    let err = fake_agent::connect(&relay, id, SigningKey::generate())
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("auth_failed"), "{err:#}");
    // Speaking before the handshake: a command-looking frame instead of auth.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}{CONNECT_PATH}", relay.addr))
            .await
            .unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"heartbeat"}"#,
    ))
    .await
    .unwrap();
    let closed = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "relay closes a connection that does not authenticate"
    );
}

fn envelope(audience: Audience, command: Command, issued: Span, expires: Span) -> CommandEnvelope {
    let now = Utc::now();
    CommandEnvelope {
        id: flotilla_shared::ids::new_id("cmd"),
        audience,
        command,
        issued_at: now + issued,
        expires_at: now + expires,
    }
}

fn frame(signed: SignedCommand) -> String {
    serde_json::to_string(&RelayFrame::Command(signed)).unwrap()
}

async fn rejection(api: &Api, agent: &str, command_id: &str) -> EventRecord {
    eventually(
        DEADLINE,
        &format!("command.rejected event for {command_id}"),
        || async {
            api.events(agent).await.into_iter().find(|e| {
                e.event.kind == EventKind::CommandRejected
                    && e.event.attributes.get("command_id").map(String::as_str) == Some(command_id)
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_forged_expired_replayed_and_misaddressed_commands() {
    let img = images().await;
    let scope = scope("trust");
    let docker = Containers::new(&scope).await;
    let web = docker.run("web", &img.v1, &[], &[], true).await;
    let relay = Relay::start().await;
    let agent = Agent::start(&relay, "host-a", "tier=build", &scope).await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    let relay_key = relay.signing_key();
    let me = Audience::Agent {
        agent_id: agent.id.clone(),
    };
    let stop = Command::ContainerStop(ContainerStopArgs {
        container: web.clone(),
        timeout_secs: Some(1),
    });
    let ten_min = Span::minutes(10);

    let cases: Vec<(&str, SignedCommand)> = vec![
        (
            "bad_signature",
            SignedCommand::sign(
                &envelope(me.clone(), stop.clone(), Span::zero(), ten_min),
                &SigningKey::generate(),
            ),
        ),
        (
            "expired",
            SignedCommand::sign(
                &envelope(
                    me.clone(),
                    stop.clone(),
                    Span::minutes(-20),
                    Span::minutes(-10),
                ),
                &relay_key,
            ),
        ),
        (
            "wrong_audience",
            SignedCommand::sign(
                &envelope(
                    Audience::Agent {
                        agent_id: "ag_someoneelse0000000".into(),
                    },
                    stop.clone(),
                    Span::zero(),
                    ten_min,
                ),
                &relay_key,
            ),
        ),
        (
            "wrong_audience",
            SignedCommand::sign(
                &envelope(
                    Audience::Selector {
                        selector: "tier=web".parse().unwrap(),
                    },
                    stop.clone(),
                    Span::zero(),
                    ten_min,
                ),
                &relay_key,
            ),
        ),
        (
            "not_yet_valid",
            SignedCommand::sign(
                &envelope(me.clone(), stop.clone(), Span::hours(2), Span::hours(3)),
                &relay_key,
            ),
        ),
    ];
    for (code, signed) in cases {
        let id = signed.peek().unwrap().id;
        api.inject_frame(&agent.id, frame(signed)).await.unwrap();
        let ev = rejection(&api, &agent.id, &id).await;
        assert_eq!(
            ev.event.attributes.get("code").map(String::as_str),
            Some(code),
            "{ev:?}"
        );
    }
    // A tampered envelope (valid signature over different bytes) is refused too.
    let good = SignedCommand::sign(
        &envelope(me.clone(), stop.clone(), Span::zero(), ten_min),
        &relay_key,
    );
    let tampered = SignedCommand {
        envelope: good
            .envelope
            .replace("\"timeout_secs\":1", "\"timeout_secs\":2"),
        signature: good.signature.clone(),
    };
    let id = tampered.peek().unwrap().id;
    api.inject_frame(&agent.id, frame(tampered)).await.unwrap();
    let ev = rejection(&api, &agent.id, &id).await;
    assert_eq!(
        ev.event.attributes.get("code").map(String::as_str),
        Some("bad_signature")
    );
    assert!(
        docker.running(&web).await,
        "no refused command touched the container"
    );

    // Replay: a real relay-issued restart runs once; the same signed id sent again does not run.
    let real = api
        .command(
            &agent.id,
            Command::ContainerRestart(ContainerStopArgs {
                container: web.clone(),
                timeout_secs: Some(1),
            }),
            Some(60),
        )
        .await
        .unwrap();
    assert_eq!(real.state, DeliveryState::Succeeded, "{real:?}");
    let started_at = docker.state(&web).await.started_at.unwrap();
    let replay = CommandEnvelope {
        id: real.id.clone(),
        audience: me.clone(),
        command: real.command.clone(),
        issued_at: Utc::now(),
        expires_at: Utc::now() + ten_min,
    };
    api.inject_frame(&agent.id, frame(SignedCommand::sign(&replay, &relay_key)))
        .await
        .unwrap();
    api.inject_frame(&agent.id, frame(SignedCommand::sign(&replay, &relay_key)))
        .await
        .unwrap();
    // Frames on one connection are handled in order: once a later marker is refused, the
    // replays have been handled.
    let marker = SignedCommand::sign(
        &envelope(me.clone(), stop.clone(), Span::zero(), ten_min),
        &SigningKey::generate(),
    );
    let marker_id = marker.peek().unwrap().id;
    api.inject_frame(&agent.id, frame(marker)).await.unwrap();
    rejection(&api, &agent.id, &marker_id).await;
    assert_eq!(
        docker.state(&web).await.started_at.unwrap(),
        started_at,
        "replayed restart did not run again"
    );
    assert_eq!(
        api.command_info(&real.id).await.state,
        DeliveryState::Succeeded
    );

    // Malformed command frames are refused without harming the agent.
    api.inject_frame(
        &agent.id,
        r#"{"type":"command","envelope":"{not json","signature":"AAAA"}"#.into(),
    )
    .await
    .unwrap();
    let ok = api
        .command(
            &agent.id,
            Command::ContainerInspect(ContainerRef {
                container: web.clone(),
            }),
            Some(30),
        )
        .await
        .unwrap();
    assert_eq!(ok.state, DeliveryState::Succeeded);
    // The agent process is still the same one (it did not crash and restart).
    assert!(agent.pid().is_some());
}
