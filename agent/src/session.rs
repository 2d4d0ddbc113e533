//! The websocket session with the relay: connect, authenticate, verify the welcome, then pump
//! frames both ways until the link drops — and reconnect with backoff, forever.
//!
//! Handshake: the relay sends `hello{challenge}`; the agent answers `auth` signed with its key;
//! the relay answers `welcome` (signed with the relay key the agent pinned at enrollment) or an
//! `error` and closes. After the welcome the agent sends a heartbeat at once, then every
//! interval; it sends its outbox in seq order (everything unacknowledged after each connect, then
//! new items as they are appended), hands `command` frames to the executor and deletes outbox
//! items as the relay acknowledges them.

use crate::executor::IncomingCommand;
use crate::frame::{effective_frame_limit, encode, fit_outbox_item, FrameLimit};
use crate::heartbeat::{fit_heartbeat, interval_from_secs};
use crate::state::State;
use crate::transport::{NextTry, RelayRotation, NEXT_RELAY_MAX_DELAY};
use anyhow::{anyhow, Result};
use flotilla_daemon::backoff::Backoff;
use flotilla_shared::heartbeat::Heartbeat;
use flotilla_shared::protocol::{
    error_codes, AgentFrame, OutboxItem, RelayFrame, SignedWelcome, WelcomeBody,
};
use flotilla_shared::signing::{auth_message, PublicKey, SigningKey, AUTH_DOMAIN};
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Websocket ping interval.
pub const PING_INTERVAL: Duration = Duration::from_secs(25);
/// A relay silent this long is considered gone.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// A link up this long resets the reconnect backoff to its first step.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// TCP + TLS + websocket upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// The contract gives the agent 10 s to answer `hello`; the same bound applies to each
/// handshake step on our side.
const HANDSHAKE_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// A send that cannot complete in this time means the link is dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Outbox items read per batch.
const OUTBOX_BATCH: usize = 64;
/// How much older than the stored welcome a welcome may be and still be taken: the clock
/// difference tolerated between the relays of one fleet (the relay's `cluster::LEASE_MARGIN`,
/// which their leases already rely on). See `welcome_age`.
pub const WELCOME_CLOCK_SKEW: Duration = Duration::from_secs(4);
/// Per-connection socket buffers are kept small (the relay holds many of these).
const SOCKET_BUFFER_BYTES: usize = 4096;
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a connection attempt or a connection ended.
#[derive(Debug)]
enum End {
    Shutdown,
    /// The relay refused this agent (`auth_failed`, `revoked`): retry at the slowest pace.
    Refused {
        code: String,
        message: String,
    },
    /// The welcome does not verify with the pinned relay key (or names another agent).
    BadWelcome(String),
    /// Anything else: network, protocol, relay restart.
    Lost(String),
}

/// How a verified welcome compares with the stored one (`welcome_age`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WelcomeAge {
    /// At least as new as the stored one (or nothing is stored): it replaces it.
    Newer,
    /// Up to `WELCOME_CLOCK_SKEW` older, with the very labels already stored: another relay
    /// whose clock is a little behind. It is taken for the session but not stored, so it
    /// changes nothing and the stored issue time never goes back.
    SameLabelsWithinSkew,
}

/// Replay protection with relays whose clocks differ a little. A replayed old welcome could
/// roll the labels back (and with them which selector jobs this agent accepts), so:
/// - a welcome at least as new as the stored one is taken and stored;
/// - one older by at most `WELCOME_CLOCK_SKEW` is taken only when its labels are exactly the
///   stored ones (it cannot roll anything back), and is not stored: the stored issue time, the
///   bar every later welcome is measured against, never moves back;
/// - anything else older is refused: a replay, or a relay whose clock is far off.
///
/// A label change signed by a relay whose clock is behind is refused until its clock passes the
/// stored time (at most the skew); the agent reconnects and gets a fresh welcome meanwhile.
fn welcome_age(stored: Option<&WelcomeBody>, new: &WelcomeBody) -> Result<WelcomeAge, String> {
    let Some(stored) = stored else {
        return Ok(WelcomeAge::Newer);
    };
    if new.issued_at >= stored.issued_at {
        return Ok(WelcomeAge::Newer);
    }
    let skew = chrono::Duration::from_std(WELCOME_CLOCK_SKEW).expect("a few seconds");
    let within_skew = new.issued_at >= stored.issued_at - skew;
    if within_skew && new.labels == stored.labels {
        return Ok(WelcomeAge::SameLabelsWithinSkew);
    }
    Err(format!(
        "welcome issued at {} is older than the one already stored (issued at {}){}; \
         refusing to roll its labels back",
        new.issued_at.to_rfc3339(),
        stored.issued_at.to_rfc3339(),
        if within_skew {
            " with other labels"
        } else {
            ""
        }
    ))
}

/// A verified welcome.
struct Welcome {
    signed: SignedWelcome,
    body: WelcomeBody,
    age: WelcomeAge,
    heartbeat_interval: Duration,
    /// The relay's frame limit, when it says.
    max_frame_bytes: Option<usize>,
}

/// The session task's wiring.
pub struct Session {
    pub state: State,
    pub agent_id: String,
    pub key: SigningKey,
    pub relay_key: PublicKey,
    /// The relays tried in turn (`relay_url`, `relay_urls`).
    pub relays: RelayRotation,
    /// The base URL of the relay the agent is connected to (or last was): agent builds are
    /// downloaded from it.
    pub connected_relay: Arc<std::sync::Mutex<String>>,
    /// TLS settings for wss (None for ws).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The agent's own frame limit (`max_frame_bytes` from its configuration).
    pub max_frame_bytes: usize,
    /// The effective limit for what the agent sends; set from each welcome.
    pub frame_limit: FrameLimit,
    /// Test hook: append to the outbox but never send it.
    pub hold_outbox: bool,
    pub heartbeats: watch::Receiver<Option<Arc<Heartbeat>>>,
    pub heartbeat_interval: watch::Sender<Duration>,
    pub heartbeat_poke: Arc<Notify>,
    pub welcome: watch::Sender<Option<WelcomeBody>>,
    pub commands: mpsc::Sender<IncomingCommand>,
    /// Frames from the executor (`received`).
    pub control: mpsc::Receiver<AgentFrame>,
}

// === impl Session ===

impl Session {
    /// Connects and reconnects until shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let mut backoff = Backoff::reconnect();
        // One log line per outage, not per retry.
        let mut outage_logged = false;
        let mut failed_attempts = 0u32;
        let mut refused_logged = false;
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = self.connect() => r,
            };
            let url = self.relays.current().ws.clone();
            let end = match attempt {
                Ok((ws, welcome)) => {
                    if outage_logged {
                        info!(failed_attempts, url, "reconnected to relay");
                    } else {
                        info!(url, "connected to relay");
                    }
                    self.relays.connected();
                    *self
                        .connected_relay
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = self.relays.current().base.clone();
                    outage_logged = false;
                    refused_logged = false;
                    failed_attempts = 0;
                    let up_since = Instant::now();
                    let end = self.serve(ws, welcome, &shutdown).await;
                    if up_since.elapsed() >= STABLE_AFTER {
                        backoff.reset();
                    }
                    if let End::Lost(why) = &end {
                        warn!(reason = why, "lost connection to relay; reconnecting");
                        outage_logged = true;
                    }
                    end
                }
                Err(end) => {
                    failed_attempts += 1;
                    end
                }
            };
            if matches!(end, End::Shutdown) {
                return Ok(());
            }
            // Another relay of the list is tried after a short pause; once every relay has
            // failed since the last good connection, the backoff applies as with one relay.
            let next = self.relays.failed();
            // Refused: the slowest pace; otherwise the next step of the backoff.
            let at_cap = match end {
                End::Shutdown => return Ok(()),
                End::Refused { code, message } => {
                    if !refused_logged {
                        error!(
                            code,
                            message,
                            "relay refused this agent; retrying every {} s",
                            backoff.cap().as_secs()
                        );
                        refused_logged = true;
                    }
                    outage_logged = true;
                    true
                }
                End::BadWelcome(why) => {
                    if !outage_logged {
                        error!(
                            reason = why,
                            "relay welcome failed verification; disconnected"
                        );
                        outage_logged = true;
                    } else {
                        debug!(reason = why, "relay welcome failed verification again");
                    }
                    false
                }
                End::Lost(why) => {
                    if !outage_logged {
                        warn!(
                            error = why,
                            url,
                            relays = self.relays.len(),
                            "cannot connect to relay; retrying with backoff"
                        );
                        outage_logged = true;
                    } else {
                        debug!(error = why, "still cannot connect to relay");
                    }
                    false
                }
            };
            let delay = match next {
                NextTry::Backoff if at_cap => backoff.cap(),
                NextTry::Backoff => backoff.next_delay(),
                NextTry::NextRelay => {
                    let ms = NEXT_RELAY_MAX_DELAY.as_millis() as u64;
                    let pause =
                        Duration::from_millis(flotilla_shared::ids::random_u64() % (ms + 1));
                    debug!(next = self.relays.current().ws, "trying the next relay");
                    pause
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(SOCKET_BUFFER_BYTES)
            .write_buffer_size(SOCKET_BUFFER_BYTES)
            .max_write_buffer_size(self.max_frame_bytes.saturating_mul(2) + SOCKET_BUFFER_BYTES)
            .max_message_size(Some(self.max_frame_bytes))
            .max_frame_size(Some(self.max_frame_bytes))
    }

    /// Dials, authenticates and verifies the welcome.
    async fn connect(&mut self) -> Result<(Ws, Welcome), End> {
        let connector = match &self.tls {
            Some(cfg) => Connector::Rustls(cfg.clone()),
            None => Connector::Plain,
        };
        let (mut ws, _) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async_tls_with_config(
                self.relays.current().ws.as_str(),
                Some(self.ws_config()),
                true,
                Some(connector),
            ),
        )
        .await
        .map_err(|_| End::Lost("timed out connecting".into()))?
        .map_err(|e| End::Lost(e.to_string()))?;

        let challenge = match read_frame(&mut ws).await? {
            RelayFrame::Hello {
                protocol_version,
                challenge,
            } => {
                if protocol_version != flotilla_shared::PROTOCOL_VERSION {
                    debug!(
                        relay = protocol_version,
                        agent = flotilla_shared::PROTOCOL_VERSION,
                        "relay speaks another protocol version"
                    );
                }
                challenge
            }
            RelayFrame::Error { code, message } => return Err(refusal(code, message)),
            other => {
                return Err(End::Lost(format!(
                    "expected hello, got {}",
                    frame_name(&other)
                )))
            }
        };
        let signature = self
            .key
            .sign(AUTH_DOMAIN, &auth_message(&challenge, &self.agent_id));
        send(
            &mut ws,
            &AgentFrame::Auth {
                agent_id: self.agent_id.clone(),
                protocol_version: flotilla_shared::PROTOCOL_VERSION,
                agent_version: flotilla_shared::release::version().to_string(),
                signature,
            },
        )
        .await
        .map_err(|e| End::Lost(e.to_string()))?;
        match read_frame(&mut ws).await? {
            RelayFrame::Welcome {
                welcome,
                heartbeat_interval_secs,
                max_frame_bytes,
            } => {
                let (body, age) = self.verify_welcome(&welcome).map_err(End::BadWelcome)?;
                Ok((
                    ws,
                    Welcome {
                        signed: welcome,
                        body,
                        age,
                        heartbeat_interval: interval_from_secs(heartbeat_interval_secs),
                        max_frame_bytes,
                    },
                ))
            }
            RelayFrame::Error { code, message } => Err(refusal(code, message)),
            other => Err(End::Lost(format!(
                "expected welcome, got {}",
                frame_name(&other)
            ))),
        }
    }

    fn verify_welcome(&self, welcome: &SignedWelcome) -> Result<(WelcomeBody, WelcomeAge), String> {
        let body = welcome.verify(&self.relay_key).map_err(|e| {
            format!(
                "welcome does not verify with the pinned relay key {}: {e}",
                self.relay_key.fingerprint()
            )
        })?;
        if body.agent_id != self.agent_id {
            return Err(format!(
                "welcome is for agent {}, this agent is {}",
                body.agent_id, self.agent_id
            ));
        }
        let age = welcome_age(self.welcome.borrow().as_ref(), &body)?;
        Ok((body, age))
    }

    /// Stores and publishes a verified welcome.
    async fn apply_welcome(&self, welcome: Welcome) {
        match welcome.age {
            WelcomeAge::Newer => {
                if let Err(e) = self.state.save_welcome(welcome.signed).await {
                    warn!(error = format!("{e:#}"), "cannot store welcome");
                }
                debug!(labels = ?welcome.body.labels, "welcome verified");
                self.welcome.send_replace(Some(welcome.body));
            }
            WelcomeAge::SameLabelsWithinSkew => debug!(
                issued_at = welcome.body.issued_at.to_rfc3339(),
                "welcome a little older than the stored one, same labels (relay clock skew); \
                 keeping the stored one"
            ),
        }
        let limit = effective_frame_limit(self.max_frame_bytes, welcome.max_frame_bytes);
        if self.frame_limit.swap(limit, Ordering::Relaxed) != limit && limit < self.max_frame_bytes
        {
            info!(
                limit,
                configured = self.max_frame_bytes,
                "the relay accepts smaller frames than configured; keeping frames below its limit"
            );
        }
        let interval = welcome.heartbeat_interval;
        self.heartbeat_interval.send_if_modified(|current| {
            let changed = *current != interval && !interval.is_zero();
            if changed {
                *current = interval;
            }
            changed
        });
    }

    /// Pumps frames on an authenticated connection until it ends.
    async fn serve(&mut self, mut ws: Ws, welcome: Welcome, shutdown: &CancellationToken) -> End {
        self.apply_welcome(welcome).await;
        // Oversized heartbeats are reported once per connection, not every interval.
        let mut trim_logged = false;
        // Heartbeat immediately after the welcome, and ask for a fresh one.
        let latest = self.heartbeats.borrow_and_update().clone();
        if let Some(hb) = latest {
            if let Err(e) = self.send_heartbeat(&mut ws, &hb, &mut trim_logged).await {
                return End::Lost(e.to_string());
            }
        }
        self.heartbeat_poke.notify_one();

        let notify = self.state.outbox_notify();
        // Highest seq sent on THIS connection: nothing is sent twice per connection; after a
        // reconnect everything unacknowledged goes again.
        let mut sent_up_to = 0u64;
        let mut outbox_pending = !self.hold_outbox;
        let mut heartbeats_open = true;
        let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        let mut last_seen = Instant::now();
        let mut malformed_logged = false;

        loop {
            // Biased: `received` frames (control) go out before the results that follow them.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    return End::Shutdown;
                }
                Some(frame) = self.control.recv() => {
                    if let Err(e) = send(&mut ws, &frame).await {
                        return End::Lost(e.to_string());
                    }
                }
                msg = ws.next() => {
                    last_seen = Instant::now();
                    match msg {
                        None => return End::Lost("relay closed the connection".into()),
                        Some(Err(e)) => return End::Lost(e.to_string()),
                        Some(Ok(Message::Text(text))) => {
                            if let Some(end) = self
                                .on_text(text.as_str(), &mut ws, &mut malformed_logged)
                                .await
                            {
                                return end;
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame
                                .map(|f| format!("relay closed the connection: {} {}", f.code, f.reason))
                                .unwrap_or_else(|| "relay closed the connection".into());
                            return End::Lost(why);
                        }
                        // Pings are answered by tungstenite; pongs only prove liveness.
                        Some(Ok(_)) => {}
                    }
                }
                _ = notify.notified(), if !self.hold_outbox => outbox_pending = true,
                _ = std::future::ready(()), if outbox_pending => {
                    let items = match self.state.outbox_after(sent_up_to, OUTBOX_BATCH).await {
                        Ok(items) => items,
                        Err(e) => {
                            error!(error = format!("{e:#}"), "cannot read outbox");
                            return End::Lost("cannot read the outbox".into());
                        }
                    };
                    if items.len() < OUTBOX_BATCH {
                        outbox_pending = false;
                    }
                    for (seq, item) in items {
                        let text = self.outbox_frame(seq, item).await;
                        if let Err(e) = send_text(&mut ws, text).await {
                            return End::Lost(e.to_string());
                        }
                        sent_up_to = seq;
                    }
                }
                changed = self.heartbeats.changed(), if heartbeats_open => {
                    if changed.is_err() {
                        heartbeats_open = false;
                        continue;
                    }
                    let latest = self.heartbeats.borrow_and_update().clone();
                    if let Some(hb) = latest {
                        if let Err(e) = self.send_heartbeat(&mut ws, &hb, &mut trim_logged).await {
                            return End::Lost(e.to_string());
                        }
                    }
                }
                _ = ping.tick() => {
                    let sent = tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::Ping(Default::default()))).await;
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return End::Lost(e.to_string()),
                        Err(_) => return End::Lost("timed out sending a ping".into()),
                    }
                }
                _ = tokio::time::sleep_until(last_seen + SILENCE_LIMIT) => {
                    return End::Lost(format!("relay silent for {} s", SILENCE_LIMIT.as_secs()));
                }
            }
        }
    }

    /// Sends a heartbeat cut down to the frame limit (see `fit_heartbeat`).
    async fn send_heartbeat(
        &self,
        ws: &mut Ws,
        hb: &Heartbeat,
        trim_logged: &mut bool,
    ) -> Result<()> {
        let limit = self.frame_limit.load(Ordering::Relaxed);
        match fit_heartbeat(hb, limit) {
            Some(fitted) => {
                if (fitted.containers_omitted > 0 || fitted.filesystems_omitted) && !*trim_logged {
                    warn!(
                        containers = hb.docker.containers.len(),
                        containers_omitted = fitted.containers_omitted,
                        filesystems_omitted = fitted.filesystems_omitted,
                        limit,
                        "heartbeat too large for one frame; leaving healthy running containers out"
                    );
                    *trim_logged = true;
                }
                send_text(ws, fitted.text).await
            }
            None => {
                if !*trim_logged {
                    warn!(
                        limit,
                        "heartbeat does not fit in one frame even without containers; not sent"
                    );
                    *trim_logged = true;
                }
                Ok(())
            }
        }
    }

    /// The `outbox` frame for an item. An item too large for the relay would be refused (and
    /// the connection closed) on every attempt, blocking everything queued behind it, so it is
    /// replaced — in the outbox too — by one that fits (see `fit_outbox_item`).
    async fn outbox_frame(&self, seq: u64, item: OutboxItem) -> String {
        let limit = self.frame_limit.load(Ordering::Relaxed);
        let frame = AgentFrame::Outbox { seq, item };
        let text = encode(&frame);
        if text.len() <= limit {
            return text;
        }
        let AgentFrame::Outbox { item, .. } = frame else {
            unreachable!("built as an outbox frame")
        };
        let replacement = fit_outbox_item(seq, item, text.len(), limit);
        warn!(
            seq,
            bytes = text.len(),
            limit,
            "outbox item too large for the relay; sending a shortened one in its place"
        );
        if let Err(e) = self
            .state
            .replace_outbox_item(seq, replacement.clone())
            .await
        {
            warn!(
                error = format!("{e:#}"),
                "cannot store the shortened outbox item"
            );
        }
        encode(&AgentFrame::Outbox {
            seq,
            item: replacement,
        })
    }

    /// Handles one text frame; returns how the connection ends if it must.
    async fn on_text(&self, text: &str, ws: &mut Ws, malformed_logged: &mut bool) -> Option<End> {
        let frame = match serde_json::from_str::<RelayFrame>(text) {
            Ok(f) => f,
            Err(e) => {
                // A command that cannot even be read still gets a rejection report.
                if let Some(command_id) = malformed_command_id(text) {
                    let cmd = IncomingCommand::Malformed {
                        command_id,
                        reason: format!("command frame is malformed: {e}"),
                    };
                    if self.commands.send(cmd).await.is_err() {
                        return Some(End::Shutdown);
                    }
                    return None;
                }
                if !*malformed_logged {
                    warn!(error = %e, "malformed frame from relay; ignoring it");
                    *malformed_logged = true;
                }
                let reply = AgentFrame::Error {
                    code: error_codes::MALFORMED_FRAME.into(),
                    message: format!("malformed frame: {e}"),
                };
                if let Err(e) = send(ws, &reply).await {
                    return Some(End::Lost(e.to_string()));
                }
                return None;
            }
        };
        match frame {
            RelayFrame::Command(signed) => {
                if self
                    .commands
                    .send(IncomingCommand::Signed(signed))
                    .await
                    .is_err()
                {
                    return Some(End::Shutdown);
                }
            }
            RelayFrame::Ack { seq } => {
                if let Err(e) = self.state.ack_outbox(seq).await {
                    error!(
                        error = format!("{e:#}"),
                        "cannot delete acknowledged outbox items"
                    );
                }
            }
            RelayFrame::Welcome {
                welcome,
                heartbeat_interval_secs,
                max_frame_bytes,
            } => match self.verify_welcome(&welcome) {
                Ok((body, age)) => {
                    info!(labels = ?body.labels, "relay sent new labels");
                    self.apply_welcome(Welcome {
                        signed: welcome,
                        body,
                        age,
                        heartbeat_interval: interval_from_secs(heartbeat_interval_secs),
                        max_frame_bytes,
                    })
                    .await;
                }
                Err(why) => return Some(End::BadWelcome(why)),
            },
            RelayFrame::Error { code, message } => match code.as_str() {
                error_codes::AUTH_FAILED | error_codes::REVOKED => {
                    return Some(End::Refused { code, message })
                }
                error_codes::REPLACED => {
                    return Some(End::Lost(format!(
                        "replaced by a newer connection of this agent: {message}"
                    )))
                }
                _ => warn!(code, message, "relay reported an error"),
            },
            RelayFrame::Hello { .. } => debug!("ignoring a hello in the middle of a session"),
        }
        None
    }
}

fn refusal(code: String, message: String) -> End {
    match code.as_str() {
        error_codes::AUTH_FAILED | error_codes::REVOKED => End::Refused { code, message },
        _ => End::Lost(format!("relay error {code}: {message}")),
    }
}

fn frame_name(f: &RelayFrame) -> &'static str {
    match f {
        RelayFrame::Hello { .. } => "hello",
        RelayFrame::Welcome { .. } => "welcome",
        RelayFrame::Command(_) => "command",
        RelayFrame::Ack { .. } => "ack",
        RelayFrame::Error { .. } => "error",
    }
}

/// For a frame of type `command` that failed to parse: `Some(id if readable)`; None when the
/// frame is not a command at all.
fn malformed_command_id(text: &str) -> Option<Option<String>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v.get("type")?.as_str()? != "command" {
        return None;
    }
    let id = v
        .get("envelope")
        .and_then(|e| e.as_str())
        .and_then(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .and_then(|e| e.get("id").and_then(|i| i.as_str()).map(str::to_string));
    Some(id)
}

/// Reads the next relay frame during the handshake (bounded in time).
async fn read_frame(ws: &mut Ws) -> Result<RelayFrame, End> {
    let deadline = Instant::now() + HANDSHAKE_STEP_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| {
                End::Lost("timed out waiting for the relay during the handshake".into())
            })?;
        match msg {
            None => {
                return Err(End::Lost(
                    "relay closed the connection during the handshake".into(),
                ))
            }
            Some(Err(e)) => return Err(End::Lost(e.to_string())),
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str())
                    .map_err(|e| End::Lost(format!("malformed frame from relay: {e}")))
            }
            Some(Ok(Message::Close(f))) => {
                return Err(End::Lost(
                    f.map(|f| format!("relay closed the connection: {} {}", f.code, f.reason))
                        .unwrap_or_else(|| "relay closed the connection".into()),
                ))
            }
            Some(Ok(_)) => {}
        }
    }
}

async fn send(ws: &mut Ws, frame: &AgentFrame) -> Result<()> {
    send_text(ws, encode(frame)).await
}

async fn send_text(ws: &mut Ws, text: String) -> Result<()> {
    tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::text(text)))
        .await
        .map_err(|_| anyhow!("timed out sending to the relay"))?
        .map_err(|e| anyhow!("cannot send to the relay: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn body(at: DateTime<Utc>, labels: &[(&str, &str)]) -> WelcomeBody {
        WelcomeBody {
            agent_id: "agt_1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            issued_at: at,
        }
    }

    #[test]
    fn a_welcome_as_new_as_the_stored_one_or_newer_replaces_it() {
        let t = Utc::now();
        assert_eq!(welcome_age(None, &body(t, &[])), Ok(WelcomeAge::Newer));
        let stored = body(t, &[("env", "prod")]);
        for new in [
            body(t, &[("env", "prod")]),
            body(t + chrono::Duration::seconds(1), &[]),
        ] {
            assert_eq!(welcome_age(Some(&stored), &new), Ok(WelcomeAge::Newer));
        }
    }

    #[test]
    fn a_relay_a_few_seconds_behind_is_accepted_with_the_same_labels() {
        let t = Utc::now();
        let stored = body(t, &[("env", "prod"), ("team", "a")]);
        let skew = chrono::Duration::from_std(WELCOME_CLOCK_SKEW).unwrap();
        for behind in [
            chrono::Duration::milliseconds(1),
            chrono::Duration::seconds(2),
            skew,
        ] {
            let new = body(t - behind, &[("team", "a"), ("env", "prod")]);
            assert_eq!(
                welcome_age(Some(&stored), &new),
                Ok(WelcomeAge::SameLabelsWithinSkew),
                "{behind}"
            );
        }
    }

    #[test]
    fn a_replayed_old_welcome_is_still_refused() {
        let t = Utc::now();
        let stored = body(t, &[("env", "prod")]);
        let skew = chrono::Duration::from_std(WELCOME_CLOCK_SKEW).unwrap();
        // Older than the tolerated skew: refused whatever its labels.
        for labels in [&[("env", "prod")][..], &[("env", "staging")][..], &[][..]] {
            let old = body(t - skew - chrono::Duration::milliseconds(1), labels);
            let e = welcome_age(Some(&stored), &old).unwrap_err();
            assert!(e.contains("older than the one already stored"), "{e}");
        }
        // Within the skew but with other labels: it would roll them back, so refused.
        for labels in [
            &[("env", "staging")][..],
            &[][..],
            &[("env", "prod"), ("x", "y")][..],
        ] {
            let rollback = body(t - chrono::Duration::seconds(1), labels);
            let e = welcome_age(Some(&stored), &rollback).unwrap_err();
            assert!(e.contains("with other labels"), "{e}");
        }
    }

    #[test]
    fn malformed_command_frames_are_recognised() {
        assert_eq!(malformed_command_id(r#"{"type":"ack"}"#), None);
        assert_eq!(malformed_command_id("not json"), None);
        assert_eq!(
            malformed_command_id(r#"{"type":"command","envelope":5}"#),
            Some(None)
        );
        assert_eq!(
            malformed_command_id(r#"{"type":"command","envelope":"{\"id\":\"cmd_7\"}"}"#),
            Some(Some("cmd_7".into()))
        );
    }
}
