//! Enrollment: the agent makes its own key pair, presents a one-time enrollment token to the
//! relay, and stores the agent id it gets together with the relay's public key, which it pins
//! from then on. The private key never leaves the state directory.
//!
//! Everything later rests on that pinned key, so enrollment is careful about where it gets it:
//! plain `http://` only to a loopback relay (unless explicitly allowed), optionally a private CA
//! for `https://`, and optionally the relay key's fingerprint as obtained out of band — when
//! given, an answer with any other key is refused and nothing is stored.

use crate::state::{Identity, State};
use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use flotilla_shared::api::{AgentFacts, EnrollRequest, EnrollResponse, ErrorBody};
use flotilla_shared::selector::{validate_labels, Labels};
use flotilla_shared::signing::{PublicKey, SigningKey};
use std::path::{Path, PathBuf};
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

/// How enrollment decides to trust the relay it talks to (`EnrollTrust::default()`: TLS with
/// the system's roots, or plain HTTP to loopback only, and no fingerprint check).
#[derive(Clone, Debug, Default)]
pub struct EnrollTrust {
    /// Allow plain `http://` to a relay that is not on this host. The token and the relay's
    /// public key then travel unprotected.
    pub allow_insecure: bool,
    /// The relay key fingerprint (`SHA256:...`) the operator expects, obtained out of band
    /// (`flotilla-relay` prints it at start; `GET /healthz` shows it).
    pub relay_fingerprint: Option<String>,
    /// PEM file of CA certificates trusted for `https://` instead of the system's roots.
    pub ca_file: Option<PathBuf>,
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
/// Refuses when that state directory already holds an identity. Trusts the relay as
/// `EnrollTrust::default()` says; see `enroll_with`.
pub async fn enroll(opts: EnrollOptions) -> Result<EnrollResponse> {
    enroll_with(opts, EnrollTrust::default()).await
}

/// `enroll` with explicit trust settings. Every local check happens before the token is sent,
/// so a refused setting does not use the token up.
pub async fn enroll_with(opts: EnrollOptions, trust: EnrollTrust) -> Result<EnrollResponse> {
    let base = crate::transport::normalise_relay_url(&opts.relay_url)?;
    check_transport(&base, trust.allow_insecure)?;
    let expected_fingerprint = trust
        .relay_fingerprint
        .as_deref()
        .map(parse_fingerprint)
        .transpose()?;
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
            agent_version: flotilla_shared::release::version().to_string(),
        },
    };

    let client = http_client(trust.ca_file.as_deref())?;
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
    let actual = relay_key.fingerprint();
    if enrolled.relay_key_fingerprint != actual {
        bail!(
            "enrollment failed: the relay's answer is inconsistent: it names key fingerprint {} \
             but its public key has fingerprint {actual}; nothing was stored",
            enrolled.relay_key_fingerprint
        );
    }
    if let Some(expected) = expected_fingerprint {
        if expected != actual {
            bail!(
                "enrollment refused: the relay's key fingerprint is {actual}, not the expected \
                 {expected}; nothing was stored (the relay may have used the token up: create a \
                 new one once the relay is verified)"
            );
        }
    }

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
    if !enrolled.ignored_labels.is_empty() {
        let ignored: Vec<String> = enrolled
            .ignored_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        // The relay enrolled the agent with its token's labels; say which asked-for ones it
        // did not apply, so an operator is not surprised by a missing label later.
        tracing::warn!(
            ignored = %ignored.join(","),
            labels = ?enrolled.labels,
            "the relay did not apply these labels: the enrollment token sets them itself or does not let agents set their keys (token create --agent-labels)"
        );
    }
    Ok(enrolled)
}

/// Plain HTTP only to loopback unless allowed: the same rule `run` applies to `ws://`.
fn check_transport(base: &str, allow_insecure: bool) -> Result<()> {
    let url = reqwest::Url::parse(base).map_err(|e| anyhow!("invalid relay URL {base:?}: {e}"))?;
    if url.scheme() == "http" && !allow_insecure && !crate::transport::is_loopback(&url) {
        bail!(
            "refusing plain http:// enrollment with {}: only loopback relays may be reached \
             without TLS (use https://, or pass --allow-insecure)",
            url.host_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// Checks the form of an expected fingerprint (`SHA256:<base64>`, as the relay prints it).
fn parse_fingerprint(fp: &str) -> Result<String> {
    let fp = fp.trim();
    let valid = fp.strip_prefix("SHA256:").is_some_and(|b64| {
        b64.len() == 43
            && b64
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    });
    if !valid {
        bail!("invalid relay fingerprint {fp:?}: expected SHA256: followed by 43 base64 characters, as the relay prints it");
    }
    Ok(fp.to_string())
}

fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client> {
    crate::transport::http_client_builder(ca_file)?
        .timeout(ENROLL_TIMEOUT)
        .build()
        .context("cannot build HTTP client")
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

    /// A one-shot HTTP server answering the enrollment request with `status` and `body`.
    async fn fake_relay(status: u16, body: String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            // Read the request: headers, then Content-Length bytes of body.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = sock.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(reply.as_bytes()).await.unwrap();
            sock.shutdown().await.ok();
        });
        url
    }

    fn answer(key: &PublicKey, fingerprint: &str) -> String {
        serde_json::to_string(&EnrollResponse {
            agent_id: "ag_new".into(),
            name: "host".into(),
            labels: Labels::new(),
            ignored_labels: Labels::new(),
            relay_public_key: key.to_base64(),
            relay_key_fingerprint: fingerprint.into(),
            heartbeat_interval_secs: 60,
        })
        .unwrap()
    }

    fn options(url: &str, dir: &Path) -> EnrollOptions {
        EnrollOptions {
            relay_url: url.into(),
            token: "t".into(),
            state_dir: dir.to_path_buf(),
            name: None,
            labels: Labels::new(),
        }
    }

    async fn stored_identity(dir: &Path) -> Option<Identity> {
        State::open(dir).await.unwrap().identity().await.unwrap()
    }

    #[tokio::test]
    async fn plain_http_only_to_loopback_unless_allowed() {
        let dir = crate::state::tests::temp_dir();
        let e = enroll(options("http://relay.example.com:8700", &dir))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("refusing plain http://"), "{e}");
        assert!(e.contains("--allow-insecure"), "{e}");
        assert!(check_transport("http://10.0.0.5:8700", true).is_ok());
        assert!(check_transport("http://[::1]:8700", false).is_ok());
        assert!(check_transport("http://localhost:8700", false).is_ok());
        assert!(check_transport("https://relay.example.com", false).is_ok());
        assert!(check_transport("http://10.0.0.5:8700", false).is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn expected_fingerprint_must_match_the_relays_key() {
        let relay = SigningKey::generate().public_key();
        let other = SigningKey::generate().public_key();

        // The operator expects another key: refused, nothing stored.
        let dir = crate::state::tests::temp_dir();
        let url = fake_relay(200, answer(&relay, &relay.fingerprint())).await;
        let trust = EnrollTrust {
            relay_fingerprint: Some(other.fingerprint()),
            ..EnrollTrust::default()
        };
        let e = enroll_with(options(&url, &dir), trust)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&relay.fingerprint()) && e.contains(&other.fingerprint()),
            "{e}"
        );
        assert!(stored_identity(&dir).await.is_none());
        std::fs::remove_dir_all(&dir).ok();

        // The relay claims the expected fingerprint but sends another key: refused too.
        let dir = crate::state::tests::temp_dir();
        let url = fake_relay(200, answer(&relay, &other.fingerprint())).await;
        let trust = EnrollTrust {
            relay_fingerprint: Some(other.fingerprint()),
            ..EnrollTrust::default()
        };
        let e = enroll_with(options(&url, &dir), trust)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("inconsistent"), "{e}");
        assert!(stored_identity(&dir).await.is_none());
        std::fs::remove_dir_all(&dir).ok();

        // The right key: enrolled and pinned.
        let dir = crate::state::tests::temp_dir();
        let url = fake_relay(200, answer(&relay, &relay.fingerprint())).await;
        let trust = EnrollTrust {
            relay_fingerprint: Some(format!(" {} ", relay.fingerprint())),
            ..EnrollTrust::default()
        };
        let enrolled = enroll_with(options(&url, &dir), trust).await.unwrap();
        assert_eq!(enrolled.agent_id, "ag_new");
        let id = stored_identity(&dir).await.unwrap();
        assert_eq!(id.relay_public_key, relay.to_base64());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn bad_trust_settings_fail_before_the_token_is_sent() {
        let dir = crate::state::tests::temp_dir();
        // Port 1 is closed: reaching the network would say "cannot reach the relay".
        let trust = EnrollTrust {
            relay_fingerprint: Some("md5:abc".into()),
            ..EnrollTrust::default()
        };
        let e = enroll_with(options("http://127.0.0.1:1", &dir), trust)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid relay fingerprint"), "{e}");
        let trust = EnrollTrust {
            ca_file: Some(dir.join("missing-ca.pem")),
            ..EnrollTrust::default()
        };
        let e = enroll_with(options("http://127.0.0.1:1", &dir), trust)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read CA file"), "{e}");
        std::fs::write(dir.join("empty.pem"), "").unwrap();
        let trust = EnrollTrust {
            ca_file: Some(dir.join("empty.pem")),
            ..EnrollTrust::default()
        };
        let e = enroll_with(options("http://127.0.0.1:1", &dir), trust)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no PEM certificates"), "{e}");
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
