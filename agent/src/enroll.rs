//! Enrollment: the agent makes its own key pair, presents a one-time enrollment token to the
//! relay, and stores the agent id it gets together with the relay's public key, which it pins
//! from then on. The private key never leaves the state directory.

use crate::state::{Identity, State};
use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use flotilla_shared::api::{AgentFacts, EnrollRequest, EnrollResponse, ErrorBody};
use flotilla_shared::selector::{validate_labels, Labels};
use flotilla_shared::signing::{PublicKey, SigningKey};
use std::path::PathBuf;
use std::time::Duration;
use tracing::info;

/// How long the enrollment request may take.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct EnrollOptions {
    /// Relay base URL, `http(s)://host:port`.
    pub relay_url: String,
    /// The one-time enrollment token (secret; never logged).
    pub token: String,
    pub state_dir: PathBuf,
    /// Display name (default: the relay uses the hostname).
    pub name: Option<String>,
    /// Labels the agent asks for; the token's labels win on conflict.
    pub labels: Labels,
}

impl std::fmt::Debug for EnrollOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollOptions")
            .field("relay_url", &self.relay_url)
            .field("token", &"<redacted>")
            .field("state_dir", &self.state_dir)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .finish()
    }
}

/// Enrolls this host with the relay and stores the identity in `<state_dir>/agent.db`.
/// Refuses when that state directory already holds an identity.
pub async fn enroll(opts: EnrollOptions) -> Result<EnrollResponse> {
    let base = normalise_relay_url(&opts.relay_url)?;
    validate_labels(&opts.labels).map_err(|e| anyhow!("{e}"))?;
    let state = State::open(&opts.state_dir).await?;
    if let Some(existing) = state.identity().await? {
        bail!(
            "{} already holds an enrolled agent ({}); use another --state-dir, or delete agent.db \
             there to enroll again",
            opts.state_dir.display(),
            existing.agent_id
        );
    }

    let key = SigningKey::generate();
    let (hostname, os, arch) = tokio::task::spawn_blocking(crate::heartbeat::host_facts)
        .await
        .context("host facts task failed")?;
    let request = EnrollRequest {
        token: opts.token.clone(),
        name: opts.name.clone(),
        public_key: key.public_key().to_base64(),
        labels: opts.labels.clone(),
        facts: AgentFacts {
            hostname,
            os,
            arch,
            agent_version: flotilla_shared::VERSION.to_string(),
        },
    };

    let client = http_client()?;
    let url = format!("{base}{}", flotilla_shared::protocol::ENROLL_PATH);
    let response = client
        .post(&url)
        .json(&request)
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach the relay at {base}: {}", error_chain(&e)))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("cannot read the relay's answer from {url}"))?;
    if !status.is_success() {
        if let Ok(err) = serde_json::from_str::<ErrorBody>(&body) {
            bail!(
                "enrollment refused: {} ({})",
                err.error.message,
                err.error.code
            );
        }
        let snippet: String = body.chars().take(200).collect();
        bail!("enrollment failed: relay answered HTTP {status}: {snippet}");
    }
    let enrolled: EnrollResponse = serde_json::from_str(&body)
        .map_err(|e| anyhow!("enrollment failed: the relay's answer is malformed: {e}"))?;
    let relay_key = PublicKey::from_base64(&enrolled.relay_public_key)
        .map_err(|e| anyhow!("enrollment failed: the relay's public key is invalid: {e}"))?;

    state
        .save_identity(Identity {
            agent_id: enrolled.agent_id.clone(),
            name: enrolled.name.clone(),
            pkcs8: key.pkcs8().to_vec(),
            relay_public_key: relay_key.to_base64(),
            relay_url: base.clone(),
            enrolled_at: Utc::now(),
        })
        .await?;
    info!(
        agent_id = enrolled.agent_id,
        name = enrolled.name,
        relay_key = relay_key.fingerprint(),
        "enrolled"
    );
    Ok(enrolled)
}

fn http_client() -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(ENROLL_TIMEOUT)
        .user_agent(concat!("flotilla-agent/", env!("CARGO_PKG_VERSION")));
    // A private CA for the relay, as `run` uses it for wss.
    if let Some(ca) = std::env::var_os("FLOTILLA_CA_FILE").filter(|v| !v.is_empty()) {
        let pem = std::fs::read(&ca)
            .with_context(|| format!("cannot read CA file {}", PathBuf::from(&ca).display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("invalid CA file {}", PathBuf::from(&ca).display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().context("cannot build HTTP client")
}

/// `http(s)://host[:port][/prefix]` without a trailing slash.
pub fn normalise_relay_url(url: &str) -> Result<String> {
    let trimmed = url.trim().trim_end_matches('/');
    let parsed =
        reqwest::Url::parse(trimmed).map_err(|e| anyhow!("invalid relay URL {url:?}: {e}"))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => bail!("invalid relay URL {url:?}: scheme {other} is not http or https"),
    }
    if parsed.host_str().is_none() {
        bail!("invalid relay URL {url:?}: no host");
    }
    Ok(trimmed.to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls() {
        assert_eq!(
            normalise_relay_url("http://127.0.0.1:8700/").unwrap(),
            "http://127.0.0.1:8700"
        );
        assert!(normalise_relay_url("ftp://x").is_err());
        assert!(normalise_relay_url("relay.example.com").is_err());
    }

    #[tokio::test]
    async fn refuses_to_overwrite_identity() {
        let dir = crate::state::tests::temp_dir();
        let state = State::open(&dir).await.unwrap();
        state
            .save_identity(Identity {
                agent_id: "ag_existing".into(),
                name: "n".into(),
                pkcs8: SigningKey::generate().pkcs8().to_vec(),
                relay_public_key: SigningKey::generate().public_key().to_base64(),
                relay_url: "http://127.0.0.1:1".into(),
                enrolled_at: Utc::now(),
            })
            .await
            .unwrap();
        drop(state);
        let e = enroll(EnrollOptions {
            relay_url: "http://127.0.0.1:1".into(),
            token: "t".into(),
            state_dir: dir.clone(),
            name: None,
            labels: Labels::new(),
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("ag_existing") && e.contains("already"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn unreachable_relay_is_reported() {
        let dir = crate::state::tests::temp_dir();
        let e = enroll(EnrollOptions {
            relay_url: "http://127.0.0.1:1".into(),
            token: "t".into(),
            state_dir: dir.clone(),
            name: None,
            labels: Labels::new(),
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot reach the relay"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }
}
