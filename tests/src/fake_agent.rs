//! The scripted agent ([`flotilla_testkit::agent::ScriptedAgent`]) against a harness
//! [`Relay`]: enrolls through the real API with a fresh token, connects, and from then on speaks
//! the wire protocol frame by frame, so tests can send what a well-behaved agent never would
//! (malformed JSON, oversized frames, duplicate outbox items) and see exactly what the relay
//! answers.

use crate::harness::Relay;
use anyhow::Result;
use flotilla_shared::api::AgentFacts;
use flotilla_shared::signing::SigningKey;
pub use flotilla_testkit::agent::{Received, ScriptedAgent as FakeAgent};

/// The version the scripted agents announce.
const VERSION: &str = "fake";

/// Enrolls a new identity with a fresh token carrying `labels`.
pub async fn enroll(relay: &Relay, name: &str, labels: &str) -> (String, SigningKey) {
    let token = relay.enrollment_token(labels).await;
    let key = SigningKey::generate();
    let facts = AgentFacts {
        hostname: name.to_string(),
        os: "test".into(),
        arch: std::env::consts::ARCH.into(),
        agent_version: VERSION.into(),
    };
    let body = flotilla_testkit::agent::enroll(
        &reqwest::Client::new(),
        &relay.url(),
        token,
        name,
        facts,
        &key,
    )
    .await
    .expect("enroll");
    (body.agent_id, key)
}

/// Enrolls and connects, completing the handshake.
pub async fn start(relay: &Relay, name: &str, labels: &str) -> FakeAgent {
    let (id, key) = enroll(relay, name, labels).await;
    connect(relay, id, key).await.expect("fake agent connects")
}

/// Connects and answers the relay's challenge; fails if the relay does not welcome us.
pub async fn connect(relay: &Relay, id: String, key: SigningKey) -> Result<FakeAgent> {
    let mut agent = FakeAgent::new(id, key, VERSION);
    agent.connect(&relay.ws_url()).await?;
    Ok(agent)
}
