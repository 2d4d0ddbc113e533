//! A scripted agent: enrolls through the real API and speaks the wire protocol frame by frame, so
//! tests can send what a well-behaved agent never would (malformed JSON, oversized frames,
//! duplicate outbox items) and see exactly what the relay answers.

use crate::harness::Relay;
use anyhow::{bail, Context, Result};
use flotilla_shared::api::{AgentFacts, EnrollRequest, EnrollResponse};
use flotilla_shared::protocol::{AgentFrame, RelayFrame};
use flotilla_shared::signing::{auth_message, SigningKey, AUTH_DOMAIN};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the relay sent, as parsed or as it came.
#[derive(Debug)]
pub enum Received {
    Frame(RelayFrame),
    Closed,
}

pub struct FakeAgent {
    pub id: String,
    pub key: SigningKey,
    ws: Ws,
}

impl FakeAgent {
    /// Enrolls a new identity with a fresh token carrying `labels`.
    pub async fn enroll(relay: &Relay, name: &str, labels: &str) -> (String, SigningKey) {
        let token = relay.enrollment_token(labels).await;
        let key = SigningKey::generate();
        let req = EnrollRequest {
            token,
            name: Some(name.to_string()),
            public_key: key.public_key().to_base64(),
            labels: Default::default(),
            facts: AgentFacts {
                hostname: name.to_string(),
                os: "test".into(),
                arch: std::env::consts::ARCH.into(),
                agent_version: "fake".into(),
            },
        };
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/enroll", relay.url()))
            .json(&req)
            .send()
            .await
            .expect("enroll request");
        assert!(resp.status().is_success(), "enroll: {}", resp.status());
        let body: EnrollResponse = resp.json().await.expect("enroll response");
        (body.agent_id, key)
    }

    /// Enrolls and connects, completing the handshake.
    pub async fn start(relay: &Relay, name: &str, labels: &str) -> FakeAgent {
        let (id, key) = Self::enroll(relay, name, labels).await;
        Self::connect(relay, id, key)
            .await
            .expect("fake agent connects")
    }

    /// Connects and answers the relay's challenge; fails if the relay does not welcome us.
    pub async fn connect(relay: &Relay, id: String, key: SigningKey) -> Result<FakeAgent> {
        let (ws, _) = tokio_tungstenite::connect_async(relay.ws_url())
            .await
            .context("websocket connect")?;
        let mut me = FakeAgent { id, key, ws };
        let challenge = match me.recv(Duration::from_secs(10)).await? {
            Received::Frame(RelayFrame::Hello { challenge, .. }) => challenge,
            other => bail!("expected hello, got {other:?}"),
        };
        let signature = me.key.sign(AUTH_DOMAIN, &auth_message(&challenge, &me.id));
        me.send(&AgentFrame::Auth {
            agent_id: me.id.clone(),
            protocol_version: flotilla_shared::PROTOCOL_VERSION,
            agent_version: "fake".into(),
            signature,
        })
        .await?;
        match me.recv(Duration::from_secs(10)).await? {
            Received::Frame(RelayFrame::Welcome { .. }) => Ok(me),
            other => bail!("expected welcome, got {other:?}"),
        }
    }

    pub async fn send(&mut self, frame: &AgentFrame) -> Result<()> {
        self.send_text(serde_json::to_string(frame)?).await
    }

    pub async fn send_text(&mut self, text: String) -> Result<()> {
        self.ws
            .send(Message::text(text))
            .await
            .context("websocket send")
    }

    /// Next relay frame within `deadline` (pings are answered by the library and skipped).
    pub async fn recv(&mut self, deadline: Duration) -> Result<Received> {
        let next = tokio::time::timeout(deadline, async {
            loop {
                match self.ws.next().await {
                    None | Some(Err(_)) => return Ok(Received::Closed),
                    Some(Ok(Message::Close(_))) => return Ok(Received::Closed),
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
        next.unwrap_or_else(|_| bail!("no frame from the relay within {deadline:?}"))
    }

    /// Receives until `pick` accepts a frame (other frames are skipped), or the deadline.
    pub async fn recv_until<T>(
        &mut self,
        deadline: Duration,
        mut pick: impl FnMut(&RelayFrame) -> Option<T>,
    ) -> Result<T> {
        let end = tokio::time::Instant::now() + deadline;
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
    pub async fn expect_closed(&mut self, deadline: Duration) {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Ok(Received::Closed) => return,
                Ok(Received::Frame(_)) => continue,
                Err(e) => panic!("relay did not close the connection: {e:#}"),
            }
        }
    }
}
