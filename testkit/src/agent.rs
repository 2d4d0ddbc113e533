//! The scripted agent: enrolls through the real API and speaks the wire protocol frame by frame
//! over a real websocket, so a test decides every frame (including those a well-behaved agent
//! never sends: malformed JSON, oversized frames, duplicate outbox items, a wrong key) and sees
//! exactly what the relay answers. One identity, reconnectable (a restarted agent announcing
//! another version keeps its outbox sequence and the commands it has seen).
//!
//! The simulated fleet of flotilla-tests (`sim.rs`) shares [`enroll`] and [`auth_frame`] but
//! runs its own select loop: it answers on its own, thousands at a time, with small buffers.

use anyhow::{bail, Context, Result};
use flotilla_shared::api::{AgentFacts, EnrollRequest, EnrollResponse};
use flotilla_shared::command::CommandEnvelope;
use flotilla_shared::protocol::{AgentFrame, OutboxItem, RelayFrame, SignedWelcome};
use flotilla_shared::signing::{auth_message, PublicKey, SigningKey, AUTH_DOMAIN};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A websocket to the relay.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long [`ScriptedAgent::next_frame`] and the handshake wait for the relay.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);

/// What the relay sent, as parsed, or that it closed the connection.
#[derive(Debug, PartialEq)]
pub enum Received {
    Frame(RelayFrame),
    Closed,
}

impl Received {
    /// The frame, or `None` for a closed connection.
    pub fn frame(self) -> Option<RelayFrame> {
        match self {
            Received::Frame(f) => Some(f),
            Received::Closed => None,
        }
    }
}

/// Enrolls `key` with the enrollment `token` at the relay `base_url` (`http://…`); fails on any
/// answer but success, with its status and body.
pub async fn enroll(
    http: &reqwest::Client,
    base_url: &str,
    token: String,
    name: &str,
    facts: AgentFacts,
    key: &SigningKey,
) -> Result<EnrollResponse> {
    let resp = http
        .post(format!("{base_url}/api/v1/enroll"))
        .json(&EnrollRequest {
            token,
            name: Some(name.to_string()),
            public_key: key.public_key().to_base64(),
            labels: Default::default(),
            facts,
        })
        .send()
        .await
        .context("enroll request")?;
    if !resp.status().is_success() {
        bail!("enroll {name}: {} {}", resp.status(), resp.text().await?);
    }
    resp.json().await.context("enroll response")
}

/// The `auth` frame answering `challenge` for `agent_id`, signed with `key`.
pub fn auth_frame(key: &SigningKey, agent_id: &str, challenge: &str, version: &str) -> AgentFrame {
    AgentFrame::Auth {
        agent_id: agent_id.to_string(),
        protocol_version: flotilla_shared::PROTOCOL_VERSION,
        agent_version: version.to_string(),
        signature: key.sign(AUTH_DOMAIN, &auth_message(challenge, agent_id)),
    }
}

/// One agent identity and (while connected) its websocket.
pub struct ScriptedAgent {
    pub id: String,
    pub key: SigningKey,
    /// The version announced in `auth`.
    pub version: String,
    ws: Option<Ws>,
    /// The last outbox sequence number sent.
    seq: u64,
    /// Ids of the commands [`ScriptedAgent::next_command`] returned (re-sent copies are skipped).
    seen: HashSet<String>,
}

impl ScriptedAgent {
    /// An identity, not connected yet.
    pub fn new(id: impl Into<String>, key: SigningKey, version: impl Into<String>) -> Self {
        ScriptedAgent {
            id: id.into(),
            key,
            version: version.into(),
            ws: None,
            seq: 0,
            seen: HashSet::new(),
        }
    }

    /// Opens a websocket to `ws_url` without authenticating (the relay sends its hello).
    pub async fn open(&mut self, ws_url: &str) -> Result<()> {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .context("websocket connect")?;
        self.ws = Some(ws);
        Ok(())
    }

    /// Opens a websocket and completes the handshake: hello, `auth` signed with our key,
    /// welcome (returned). Fails if the relay answers anything but a welcome.
    pub async fn connect(&mut self, ws_url: &str) -> Result<SignedWelcome> {
        self.open(ws_url).await?;
        self.handshake().await
    }

    /// The handshake on an open websocket (see [`ScriptedAgent::connect`]).
    pub async fn handshake(&mut self) -> Result<SignedWelcome> {
        let challenge = match self.recv(FRAME_WAIT).await? {
            Received::Frame(RelayFrame::Hello { challenge, .. }) => challenge,
            other => bail!("expected hello, got {other:?}"),
        };
        let auth = self.auth(&challenge);
        self.send(&auth).await?;
        match self.recv(FRAME_WAIT).await? {
            Received::Frame(RelayFrame::Welcome { welcome, .. }) => Ok(welcome),
            other => bail!("expected welcome, got {other:?}"),
        }
    }

    /// Our `auth` frame for `challenge`.
    pub fn auth(&self, challenge: &str) -> AgentFrame {
        auth_frame(&self.key, &self.id, challenge, &self.version)
    }

    /// Closes the websocket (politely; errors ignored).
    pub async fn disconnect(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
    }

    /// Closes the websocket, then connects again announcing `version` (what a restarted agent
    /// binary does).
    pub async fn reconnect_as(&mut self, ws_url: &str, version: &str) -> Result<SignedWelcome> {
        self.disconnect().await;
        self.version = version.to_string();
        self.connect(ws_url).await
    }

    fn ws(&mut self) -> Result<&mut Ws> {
        self.ws
            .as_mut()
            .context("the scripted agent is not connected")
    }

    pub async fn send(&mut self, frame: &AgentFrame) -> Result<()> {
        self.send_text(serde_json::to_string(frame)?).await
    }

    /// Sends `text` as one text message, whatever it holds.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.ws()?
            .send(Message::text(text.into()))
            .await
            .context("websocket send")
    }

    /// The next relay frame within `within` (pings are answered by the library and skipped); a
    /// close or a broken connection is [`Received::Closed`]; an unparsable frame is an error.
    pub async fn recv(&mut self, within: Duration) -> Result<Received> {
        let ws = self.ws()?;
        let next = tokio::time::timeout(within, async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                        return Ok(Received::Closed)
                    }
                    Some(Ok(Message::Text(t))) => {
                        let f: RelayFrame = serde_json::from_str(t.as_str())
                            .with_context(|| format!("relay sent an unparsable frame: {t}"))?;
                        return Ok(Received::Frame(f));
                    }
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        next.unwrap_or_else(|_| bail!("no frame from the relay within {within:?}"))
    }

    /// The next frame within [`FRAME_WAIT`], `None` once the relay closed the connection;
    /// panics when the relay sends nothing in time or something unparsable.
    pub async fn next_frame(&mut self) -> Option<RelayFrame> {
        self.recv(FRAME_WAIT)
            .await
            .expect("the relay answers within 10 s")
            .frame()
    }

    /// Receives until `pick` accepts a frame (other frames are skipped); fails on a close or at
    /// the deadline.
    pub async fn recv_until<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&RelayFrame) -> Option<T>,
    ) -> Result<T> {
        let end = tokio::time::Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await? {
                Received::Frame(f) => {
                    if let Some(v) = pick(&f) {
                        return Ok(v);
                    }
                }
                Received::Closed => bail!("connection closed"),
            }
        }
    }

    /// Waits until the relay closes this connection (frames before the close are skipped).
    pub async fn expect_closed(&mut self, within: Duration) {
        let end = tokio::time::Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Ok(Received::Closed) => return,
                Ok(Received::Frame(_)) => continue,
                Err(e) => panic!("relay did not close the connection: {e:#}"),
            }
        }
    }

    /// The next command not returned before (re-sent copies are skipped), verified with the
    /// relay's key; other frames are skipped.
    pub async fn next_command(
        &mut self,
        relay_key: &PublicKey,
        within: Duration,
    ) -> Result<CommandEnvelope> {
        let end = tokio::time::Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let signed = self
                .recv_until(left, |f| match f {
                    RelayFrame::Command(signed) => Some(signed.clone()),
                    _ => None,
                })
                .await?;
            let env = signed.verify(relay_key).context("signed by the relay")?;
            if self.seen.insert(env.id.clone()) {
                return Ok(env);
            }
        }
    }

    /// Sends `item` through the outbox with the next sequence number and waits for the relay's
    /// ack of it (or of a later one); returns the sequence number used.
    pub async fn outbox(&mut self, item: OutboxItem, within: Duration) -> Result<u64> {
        self.seq += 1;
        let seq = self.seq;
        self.send(&AgentFrame::Outbox { seq, item }).await?;
        self.recv_until(within, |f| match f {
            RelayFrame::Ack { seq: s } if *s >= seq => Some(()),
            _ => None,
        })
        .await?;
        Ok(seq)
    }
}
