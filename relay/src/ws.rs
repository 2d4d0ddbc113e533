//! One agent's websocket (`GET /api/v1/agent/connect`): challenge–response authentication, the
//! signed welcome, re-sending unfinished commands, then heartbeats, `received` and outbox frames
//! in, commands and acks out.
//!
//! Each connection is one task that owns its socket and selects over the socket, the hub's queue
//! for it, the ping timer and the dead-peer deadline. Buffers are small on purpose: a relay holds
//! many thousands of these.
//!
//! What an unauthenticated peer can hold is bounded three ways (review findings 9 and 10): a
//! pending-handshake slot (`ratelimit/handshakes.rs`: `max_pending_handshakes` in all, a per-address share,
//! a reserve for addresses holding none) taken before the upgrade and given back once the agent
//! authenticated or the attempt ended; [`AUTH_TIMEOUT`] to authenticate; and at most
//! `upgrade::PRE_AUTH_MAX_BYTES` read from it before it has (`upgrade.rs` does the upgrade
//! itself so that the budget sits under the websocket). Only then may frames reach
//! `max_frame_bytes`.

mod upgrade;

use crate::ratelimit::handshakes::{Pending, Refusal};
pub use upgrade::PRE_AUTH_MAX_BYTES;

use crate::api::ApiError;
use crate::commands::Completion;
use crate::hub::{encode, Outgoing};
use crate::metrics::ProtocolError;
use crate::state::AppState;
use crate::store::{now, ResultOutcome};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use flotilla_shared::protocol::{error_codes, AgentFrame, OutboxItem, RelayFrame};
use flotilla_shared::signing::{auth_message, PublicKey, AUTH_DOMAIN};
use flotilla_shared::PROTOCOL_VERSION;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Socket buffer sizes: small, since the relay holds one socket per agent.
pub const READ_BUFFER_BYTES: usize = 4096;
pub const WRITE_BUFFER_BYTES: usize = 4096;
/// How long an agent has to answer the challenge: one round trip and a signature, so a few
/// seconds are plenty even far away; an unauthenticated socket holds its slot no longer.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Websocket ping period.
pub const PING_INTERVAL: Duration = Duration::from_secs(25);
/// A peer silent for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A write that does not complete in this time means the peer stopped reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

// Close codes (RFC 6455).
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;

pub async fn connect(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: upgrade::Upgrade,
) -> Response {
    if let Some((_, message)) = state.cluster.step_down_reason() {
        // The agent backs off and tries again (through its load balancer or its next relay).
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    }
    let client =
        crate::ratelimit::client_address(peer.ip(), &headers, &state.config.trusted_proxies);
    let handshake = match state.handshakes.try_take(client) {
        Ok(slot) => slot,
        Err(refusal) => {
            state
                .metrics
                .protocol_error(ProtocolError::TooManyHandshakes);
            let message = match refusal {
                Refusal::Address => format!(
                    "too many agent connections from {client} are authenticating (at most {}); retry later",
                    state.config.max_pending_handshakes_per_address
                ),
                Refusal::Full => {
                    "too many agent connections are authenticating; retry later".to_string()
                }
            };
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_handshakes",
                message,
            )
            .into_response();
        }
    };
    let max = state.config.max_frame_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // Bounded so a peer that stops reading cannot make the relay buffer without limit. A
        // single message larger than this can never be written, so leave room for what the test
        // hook may inject (its body limit is 4 × max_frame_bytes).
        .max_write_buffer_size(4 * max + WRITE_BUFFER_BYTES)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    ws.on_upgrade(config, move |socket| async move {
        let mut conn = Connection {
            state,
            socket,
            agent_id: String::new(),
            handshake: Some(handshake),
            unknown_delivery_logged: false,
        };
        conn.run().await;
    })
}

struct Connection {
    state: AppState,
    socket: upgrade::Socket,
    /// Empty until authenticated.
    agent_id: String,
    /// Held until authenticated: counts this connection as a pending handshake.
    handshake: Option<Pending>,
    /// `received`/results for deliveries the relay does not know are logged once per connection.
    unknown_delivery_logged: bool,
}

/// True when a websocket read failed because the peer's message or frame exceeded the limit.
fn is_too_large(e: &tungstenite::Error) -> bool {
    matches!(
        e,
        tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong { .. })
    )
}

/// Why the connection ends.
enum End {
    Done,
}

impl Connection {
    async fn send_text(&mut self, text: Utf8Bytes) -> Result<(), End> {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Text(text))).await {
            Ok(Ok(())) => {
                self.state.metrics.frame_out();
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::debug!(agent_id = %self.agent_id, error = %e, "agent websocket write failed");
                Err(End::Done)
            }
            Err(_) => {
                tracing::info!(agent_id = %self.agent_id, "agent stopped reading; dropping its connection");
                Err(End::Done)
            }
        }
    }

    async fn send_frame(&mut self, frame: &RelayFrame) -> Result<(), End> {
        self.send_text(encode(frame)).await
    }

    async fn send_error(&mut self, code: &str, message: &str) -> Result<(), End> {
        self.send_frame(&RelayFrame::Error {
            code: code.to_string(),
            message: message.to_string(),
        })
        .await
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(2), self.socket.send(frame)).await;
    }

    /// Sends an error frame, then closes.
    async fn refuse(&mut self, reason: ProtocolError, code: &str, message: &str) {
        self.state.metrics.protocol_error(reason);
        tracing::info!(agent_id = %self.agent_id, code, message, "refusing agent connection");
        let _ = self.send_error(code, message).await;
        self.close(CLOSE_POLICY, "refused").await;
    }

    async fn run(&mut self) {
        let mut challenge = [0u8; 32];
        flotilla_shared::ids::random_bytes(&mut challenge);
        let challenge = B64.encode(challenge);
        if self
            .send_frame(&RelayFrame::Hello {
                protocol_version: PROTOCOL_VERSION,
                challenge: challenge.clone(),
            })
            .await
            .is_err()
        {
            return;
        }
        let auth = tokio::time::timeout(AUTH_TIMEOUT, self.read_auth()).await;
        let (agent_id, protocol_version, agent_version, signature) = match auth {
            Err(_) => {
                let message = format!("no auth frame within {} seconds", AUTH_TIMEOUT.as_secs());
                self.refuse(
                    ProtocolError::AuthTimeout,
                    error_codes::AUTH_FAILED,
                    &message,
                )
                .await;
                return;
            }
            Ok(None) => return,
            Ok(Some(a)) => a,
        };
        if protocol_version != PROTOCOL_VERSION {
            self.refuse(
                ProtocolError::UnsupportedVersion,
                error_codes::UNSUPPORTED_VERSION,
                &format!(
                    "protocol version {protocol_version} is not supported; this relay speaks {PROTOCOL_VERSION}"
                ),
            )
            .await;
            return;
        }
        if !self.authenticate(&challenge, &agent_id, &signature).await {
            return;
        }
        self.agent_id = agent_id;
        // Authenticated: no longer counts as a pending handshake, and frames may now be as
        // large as `max_frame_bytes`.
        self.handshake = None;
        self.socket.get_mut().authenticated();
        self.serve(agent_version).await;
    }

    /// Waits for the `auth` frame. None when the connection ended or was refused.
    async fn read_auth(&mut self) -> Option<(String, u32, String, String)> {
        loop {
            let msg = match self.socket.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    if self.socket.get_ref().exceeded() || is_too_large(&e) {
                        let message = format!(
                            "before authentication frames may be at most {PRE_AUTH_MAX_BYTES} bytes in all (the auth frame is small)"
                        );
                        self.state
                            .metrics
                            .protocol_error(ProtocolError::FrameTooLarge);
                        tracing::info!(error = %e, "unauthenticated agent websocket sent too much; closing it");
                        let _ = self
                            .send_error(error_codes::FRAME_TOO_LARGE, &message)
                            .await;
                        self.close(CLOSE_TOO_BIG, "frame too large before auth")
                            .await;
                    } else {
                        tracing::debug!(error = %e, "agent websocket failed before auth");
                    }
                    return None;
                }
                None => return None,
            };
            self.state.metrics.frame_in();
            let text = match msg {
                Message::Text(t) => t,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Close(_) => return None,
                Message::Binary(_) => {
                    self.refuse(
                        ProtocolError::MalformedFrame,
                        error_codes::MALFORMED_FRAME,
                        "frames must be JSON text",
                    )
                    .await;
                    return None;
                }
            };
            return match serde_json::from_str::<AgentFrame>(&text) {
                Ok(AgentFrame::Auth {
                    agent_id,
                    protocol_version,
                    agent_version,
                    signature,
                }) => Some((agent_id, protocol_version, agent_version, signature)),
                Ok(_) => {
                    self.refuse(
                        ProtocolError::UnexpectedFrame,
                        error_codes::UNEXPECTED_FRAME,
                        "the first frame must be auth",
                    )
                    .await;
                    None
                }
                Err(e) => {
                    self.refuse(
                        ProtocolError::MalformedFrame,
                        error_codes::MALFORMED_FRAME,
                        &format!("invalid auth frame: {e}"),
                    )
                    .await;
                    None
                }
            };
        }
    }

    async fn authenticate(&mut self, challenge: &str, agent_id: &str, signature: &str) -> bool {
        let agent = match self.state.store.agent_auth(agent_id.to_string()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot look up connecting agent");
                let _ = self
                    .send_error(error_codes::INTERNAL, "relay cannot read its database")
                    .await;
                self.close(CLOSE_GOING_AWAY, "internal error").await;
                return false;
            }
        };
        let Some(agent) = agent else {
            self.refuse(
                ProtocolError::AuthFailed,
                error_codes::AUTH_FAILED,
                "unknown agent",
            )
            .await;
            return false;
        };
        if agent.revoked {
            self.refuse(
                ProtocolError::Revoked,
                error_codes::REVOKED,
                "this agent has been revoked",
            )
            .await;
            return false;
        }
        let verified = PublicKey::from_base64(&agent.public_key)
            .map_err(|e| e.to_string())
            .and_then(|key| {
                key.verify(AUTH_DOMAIN, &auth_message(challenge, agent_id), signature)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = verified {
            tracing::info!(agent_id, reason = %e, "agent authentication failed");
            self.refuse(
                ProtocolError::AuthFailed,
                error_codes::AUTH_FAILED,
                "signature does not verify against the enrolled key",
            )
            .await;
            return false;
        }
        true
    }

    /// The authenticated part of the connection.
    async fn serve(&mut self, agent_version: String) {
        let agent_id = self.agent_id.clone();
        let registration = self
            .state
            .hub
            .register_with_version(&agent_id, &agent_version);
        let generation = registration.generation;
        let connected_at = registration.connected_at;
        let cluster = self.state.cluster.clone();
        cluster
            .connected(&agent_id, connected_at, &agent_version)
            .await;
        let _ = self.serve_registered(agent_version, registration).await;
        self.state.hub.unregister(&agent_id, generation);
        cluster.disconnected(&agent_id, connected_at).await;
        tracing::info!(agent_id = %agent_id, "agent disconnected");
        use flotilla_shared::stream::EventKind;
        let summary = format!("agent {agent_id} disconnected");
        (self.state.stream).publish(
            EventKind::AgentDisconnected,
            Some(&agent_id),
            None,
            summary,
            None,
        );
    }

    async fn serve_registered(
        &mut self,
        agent_version: String,
        registration: crate::hub::Registration,
    ) -> Result<(), End> {
        let crate::hub::Registration { mut rx, close, .. } = registration;
        let agent_id = self.agent_id.clone();
        let state = self.state.clone();

        // Read the agent again after registering: a label change or revocation that happened
        // meanwhile is either seen here or sent through the hub.
        let agent = match state.store.agent_auth(agent_id.clone()).await {
            Ok(Some(a)) if !a.revoked => a,
            Ok(_) => {
                self.refuse(
                    ProtocolError::Revoked,
                    error_codes::REVOKED,
                    "this agent has been revoked",
                )
                .await;
                return Err(End::Done);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read connecting agent");
                return Err(End::Done);
            }
        };
        if agent.agent_version != agent_version {
            if let Err(e) = state
                .store
                .set_agent_version(agent_id.clone(), agent_version.clone())
                .await
            {
                tracing::warn!(error = %e, "cannot record agent version");
            }
        }
        tracing::info!(agent_id = %agent_id, agent_version = %agent_version, "agent connected");
        state.stream.publish(
            flotilla_shared::stream::EventKind::AgentConnected,
            Some(&agent_id),
            None,
            format!("agent {} connected ({agent_version})", agent.name),
            Some(serde_json::json!({ "agent_version": agent_version })),
        );
        self.send_text(state.welcome_frame(&agent_id, &agent.labels))
            .await?;

        // Everything unfinished and unexpired goes out again; the agent deduplicates by id.
        let pending = state
            .store
            .pending_commands(agent_id.clone())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read pending commands");
                End::Done
            })?;
        for (command_id, signed) in pending {
            self.send_frame(&RelayFrame::Command(signed)).await?;
            if let Err(e) = state
                .store
                .mark_sent(command_id, vec![agent_id.clone()])
                .await
            {
                tracing::warn!(error = %e, "cannot mark command sent");
            }
        }

        let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        let mut last_heard = Instant::now();
        let mut malformed_logged = false;
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => {
                    self.close(CLOSE_GOING_AWAY, "relay shutting down").await;
                    return Ok(());
                }
                _ = close.cancelled() => {
                    // Write what the hub queued (e.g. the reason for closing), then close.
                    while let Ok(Outgoing::Frame(f)) = rx.try_recv() {
                        self.send_text(f).await?;
                    }
                    self.close(CLOSE_POLICY, "closed by relay").await;
                    return Ok(());
                }
                out = rx.recv() => match out {
                    Some(Outgoing::Frame(f)) => self.send_text(f).await?,
                    None => return Ok(()),
                },
                _ = ping.tick() => {
                    if tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Ping(Bytes::new()))).await.map(|r| r.is_err()).unwrap_or(true) {
                        return Err(End::Done);
                    }
                }
                _ = tokio::time::sleep_until(last_heard + IDLE_TIMEOUT) => {
                    tracing::info!(agent_id = %agent_id, "agent silent for 60 seconds; dropping its connection");
                    self.close(CLOSE_GOING_AWAY, "peer silent").await;
                    return Ok(());
                }
                msg = self.socket.next() => {
                    last_heard = Instant::now();
                    let msg = match msg {
                        None => return Ok(()),
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            let text = e.to_string();
                            if is_too_large(&e) {
                                state.metrics.protocol_error(ProtocolError::FrameTooLarge);
                                tracing::warn!(agent_id = %agent_id, error = %text, "agent frame larger than max_frame_bytes; closing its connection");
                                let _ = self.send_error(error_codes::FRAME_TOO_LARGE, &format!("frames may be at most {} bytes", state.config.max_frame_bytes)).await;
                                self.close(CLOSE_TOO_BIG, "frame too large").await;
                            } else {
                                tracing::debug!(agent_id = %agent_id, error = %text, "agent websocket failed");
                            }
                            return Err(End::Done);
                        }
                    };
                    state.metrics.frame_in();
                    match msg {
                        Message::Text(text) => self.handle_text(&text, &mut malformed_logged).await?,
                        Message::Binary(_) => self.malformed("binary frames are not accepted".into(), &mut malformed_logged).await?,
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                        Message::Close(_) => return Ok(()),
                    }
                }
            }
        }
    }

    async fn malformed(&mut self, reason: String, logged: &mut bool) -> Result<(), End> {
        self.state
            .metrics
            .protocol_error(ProtocolError::MalformedFrame);
        if !*logged {
            // Once per connection: a broken agent must not flood the log.
            tracing::warn!(agent_id = %self.agent_id, reason = %reason, "malformed frame from agent (further ones on this connection are not logged)");
            *logged = true;
        }
        self.send_error(
            error_codes::MALFORMED_FRAME,
            &format!("malformed frame: {reason}"),
        )
        .await
    }

    async fn handle_text(&mut self, text: &str, malformed_logged: &mut bool) -> Result<(), End> {
        let frame = match serde_json::from_str::<AgentFrame>(text) {
            Ok(f) => f,
            Err(e) => return self.malformed(e.to_string(), malformed_logged).await,
        };
        let state = self.state.clone();
        let agent_id = self.agent_id.clone();
        match frame {
            AgentFrame::Heartbeat(hb) => {
                // Published only when the fleet-list figures moved (`moved_from`: a container
                // count, or a 10-point band of CPU, memory or disk): compared with the cached
                // previous heartbeat the cache hands back (nothing more is kept per agent).
                let summary = flotilla_shared::api::MetricsSummary::of(&hb);
                let previous = state.heartbeats.record(&agent_id, *hb, now());
                if previous.is_none_or(|p| {
                    summary.moved_from(&flotilla_shared::api::MetricsSummary::of(&p))
                }) {
                    let line = format!(
                        "agent {agent_id}: cpu {:.0}%, memory {:.0}%, disk {:.0}%, {}/{} containers running",
                        summary.cpu_percent,
                        summary.memory_used_percent,
                        summary.disk_max_used_percent,
                        summary.containers_running,
                        summary.containers_total
                    );
                    let data = serde_json::to_value(&summary).ok();
                    (state.stream).publish(
                        flotilla_shared::stream::EventKind::AgentHeartbeat,
                        Some(&agent_id),
                        None,
                        line,
                        data,
                    );
                }
            }
            AgentFrame::Received { command_id } => {
                match state
                    .store
                    .mark_received(command_id.clone(), agent_id.clone())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        state.metrics.protocol_error(ProtocolError::UnknownDelivery);
                        if !std::mem::replace(&mut self.unknown_delivery_logged, true) {
                            tracing::warn!(agent_id = %agent_id, command_id = %command_id, "agent received a command the relay has no delivery of (further ones on this connection are not logged)");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot record command received");
                        return Err(End::Done);
                    }
                }
            }
            AgentFrame::Outbox { seq, item } => {
                if let Err(e) = self.persist_outbox(seq, item).await {
                    // Not acknowledged: the agent keeps the item and re-sends it after
                    // reconnecting, so nothing is lost.
                    tracing::error!(agent_id = %agent_id, seq, error = %e, "cannot persist outbox item; dropping the connection");
                    return Err(End::Done);
                }
                self.send_frame(&RelayFrame::Ack { seq }).await?;
            }
            AgentFrame::Auth { .. } => {
                state.metrics.protocol_error(ProtocolError::UnexpectedFrame);
                self.send_error(error_codes::UNEXPECTED_FRAME, "already authenticated")
                    .await?;
            }
            AgentFrame::Error { code, message } => {
                tracing::info!(agent_id = %agent_id, code = %code, message = %message, "agent reported an error");
            }
        }
        Ok(())
    }

    async fn persist_outbox(
        &mut self,
        seq: u64,
        item: OutboxItem,
    ) -> Result<(), crate::store::StoreError> {
        let state = self.state.clone();
        let agent_id = self.agent_id.clone();
        match item {
            OutboxItem::Result(result) => {
                let command_id = result.command_id.clone();
                match state.store.record_result(agent_id.clone(), result).await? {
                    ResultOutcome::Recorded {
                        state: delivery,
                        job_id,
                        replaced,
                        ended,
                        update,
                    } => {
                        match replaced {
                            None => {
                                tracing::info!(agent_id = %agent_id, command_id = %command_id, outcome = delivery.as_str(), "command finished")
                            }
                            Some(before) => {
                                tracing::info!(agent_id = %agent_id, command_id = %command_id, outcome = delivery.as_str(), replaced = before.as_str(), "late result replaced the relay's own ending")
                            }
                        }
                        if let Some(update) = &update {
                            state
                                .commands
                                .update_finished(&command_id, &agent_id, update);
                        }
                        state.commands.finished(Completion {
                            command_id: command_id.clone(),
                            agent_id: agent_id.clone(),
                            job_id,
                            state: delivery,
                        });
                        // Deliveries the result ended too (the undelivered copies of a build
                        // its reverted upgrade marked broken): waiters, metrics, job and
                        // rollout kicks, as when the API marks a build.
                        state.commands.all_finished(&ended);
                    }
                    ResultOutcome::AlreadyFinal => {
                        tracing::debug!(agent_id = %agent_id, command_id = %command_id, seq, "duplicate result ignored");
                    }
                    ResultOutcome::Unknown => {
                        state.metrics.protocol_error(ProtocolError::UnknownDelivery);
                        if !std::mem::replace(&mut self.unknown_delivery_logged, true) {
                            tracing::warn!(agent_id = %agent_id, command_id = %command_id, seq, "result for a command the relay never sent to this agent; acknowledged and dropped (further ones on this connection are not logged)");
                        }
                    }
                }
            }
            OutboxItem::Event(event) => {
                let kind = event.kind.as_str();
                let forgotten = (event.kind
                    == flotilla_shared::heartbeat::EventKind::BackupForgotten)
                    .then(|| event.clone());
                let inserted = state
                    .store
                    .insert_event(agent_id.clone(), seq, event)
                    .await?;
                tracing::debug!(agent_id = %agent_id, seq, kind, inserted, "agent event");
                // issue 17 part 4: the agent stopped expecting a backup job
                if let Some(event) = forgotten.filter(|_| inserted) {
                    crate::backups::record_forgotten(&state.store, &agent_id, &event).await?;
                }
                if inserted {
                    let summary = format!("{kind} on agent {agent_id}");
                    (state.stream).publish(
                        flotilla_shared::stream::EventKind::ContainerEvent,
                        Some(&agent_id),
                        None,
                        summary,
                        Some(serde_json::json!({ "kind": kind })),
                    );
                }
            }
            OutboxItem::BackupReport(report) => {
                crate::backups::record_report(
                    &state.store,
                    &state.metrics,
                    &state.stream,
                    &agent_id,
                    seq,
                    report,
                )
                .await?;
            }
        }
        Ok(())
    }
}
