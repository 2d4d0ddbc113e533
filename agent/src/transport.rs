//! How the agent reaches the relay: the relay's base URL as configured or enrolled
//! (`normalise_relay_url`), its agent websocket URL, the rule that plain `ws://`/`http://` goes
//! to loopback hosts only, and whom TLS trusts (a private CA file instead of the system's
//! roots, for `wss://` and for `https://` alike). Shared by enrollment, the session and the
//! download of agent builds.

use anyhow::{anyhow, bail, Context, Result};
use flotilla_shared::protocol::CONNECT_PATH;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// An HTTP client trusting the relay as `run` does (a private CA file replaces the system's
/// roots); also used to download agent builds.
pub fn http_client_builder(ca_file: Option<&Path>) -> Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder().user_agent(format!(
        "flotilla-agent/{}",
        flotilla_shared::release::version()
    ));
    // A private CA replaces the system's roots, exactly as `run` uses it for wss.
    if let Some(ca) = ca_file {
        let pem =
            std::fs::read(ca).with_context(|| format!("cannot read CA file {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("invalid CA file {}", ca.display()))?;
        if certs.is_empty() {
            bail!("CA file {} holds no PEM certificates", ca.display());
        }
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
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

/// Turns the relay's http(s) base URL into its agent websocket URL. Plain `ws://` is only
/// allowed to loopback hosts unless `allow_insecure_ws`.
pub fn websocket_url(relay_url: &str, allow_insecure_ws: bool) -> Result<String> {
    let base = normalise_relay_url(relay_url)?;
    let url = reqwest::Url::parse(&base).map_err(|e| anyhow!("invalid relay URL {base:?}: {e}"))?;
    let secure = url.scheme() == "https";
    if !secure && !allow_insecure_ws && !is_loopback(&url) {
        bail!(
            "refusing plain ws:// to {}: only loopback relays may be reached without TLS \
             (use https://, or set allow_insecure_ws)",
            url.host_str().unwrap_or("?")
        );
    }
    let rest = base
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(base.as_str());
    let scheme = if secure { "wss" } else { "ws" };
    Ok(format!("{scheme}://{rest}{CONNECT_PATH}"))
}

/// Whether `url` names this host (a loopback address or `localhost`).
pub fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// rustls client settings for `wss://`: the CAs in `ca_file` when given, else the system roots.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    Ok(flotilla_daemon::tls::client_config(ca_file)?)
}

/// Longest pause before trying the next relay of the list (uniform in `[0, this]`, so a
/// fleet leaving a dead relay does not knock at the next one all at once).
pub const NEXT_RELAY_MAX_DELAY: Duration = Duration::from_millis(500);

/// One relay of the list: its base URL (downloads) and its agent websocket URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayEndpoint {
    pub base: String,
    pub ws: String,
}

/// The relays an agent tries in turn (`relay_url`, `relay_urls`). After a failed connect, a
/// refusal or a lost link the agent moves to the next; only when every relay of the list has
/// failed since the last good connection does it wait with the reconnect backoff.
#[derive(Clone, Debug)]
pub struct RelayRotation {
    relays: Vec<RelayEndpoint>,
    current: usize,
    /// Relays that failed since the last good connection.
    failed_in_round: usize,
}

/// What to do after an attempt failed or a link ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextTry {
    /// Another relay of the list has not been tried since the last good connection: try it
    /// after a short jittered pause.
    NextRelay,
    /// Every relay failed once: wait with the backoff, then start the round again.
    Backoff,
}

impl RelayRotation {
    /// Checks every URL (`websocket_url`); the list must not be empty.
    pub fn new(urls: &[String], allow_insecure_ws: bool) -> Result<RelayRotation> {
        if urls.is_empty() {
            bail!("no relay URL: set relay_url or relay_urls, or enroll the agent");
        }
        let relays = urls
            .iter()
            .map(|u| {
                Ok(RelayEndpoint {
                    base: normalise_relay_url(u)?,
                    ws: websocket_url(u, allow_insecure_ws)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RelayRotation {
            relays,
            current: 0,
            failed_in_round: 0,
        })
    }

    pub fn current(&self) -> &RelayEndpoint {
        &self.relays[self.current]
    }

    pub fn len(&self) -> usize {
        self.relays.len()
    }

    /// Whether any relay uses TLS (`wss://`).
    pub fn any_tls(&self) -> bool {
        self.relays.iter().any(|r| r.ws.starts_with("wss://"))
    }

    /// The current relay accepted the agent: a later failure starts a new round.
    pub fn connected(&mut self) {
        self.failed_in_round = 0;
    }

    /// The current relay failed (or its link ended): moves to the next one, and says whether
    /// to try it soon or to back off first.
    pub fn failed(&mut self) -> NextTry {
        self.current = (self.current + 1) % self.relays.len();
        self.failed_in_round += 1;
        if self.failed_in_round >= self.relays.len() {
            self.failed_in_round = 0;
            NextTry::Backoff
        } else {
            NextTry::NextRelay
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(n: usize) -> RelayRotation {
        let urls: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 8700 + i))
            .collect();
        RelayRotation::new(&urls, false).unwrap()
    }

    #[test]
    fn one_relay_backs_off_after_every_failure() {
        let mut r = rotation(1);
        assert_eq!(r.current().ws, "ws://127.0.0.1:8700/api/v1/agent/connect");
        for _ in 0..3 {
            assert_eq!(r.failed(), NextTry::Backoff);
            assert_eq!(r.current().base, "http://127.0.0.1:8700");
        }
    }

    #[test]
    fn several_relays_are_tried_in_turn_before_backing_off() {
        let mut r = rotation(3);
        assert_eq!(r.current().base, "http://127.0.0.1:8700");
        assert_eq!(r.failed(), NextTry::NextRelay);
        assert_eq!(r.current().base, "http://127.0.0.1:8701");
        assert_eq!(r.failed(), NextTry::NextRelay);
        assert_eq!(r.current().base, "http://127.0.0.1:8702");
        // All three failed: back off, then start over at the first.
        assert_eq!(r.failed(), NextTry::Backoff);
        assert_eq!(r.current().base, "http://127.0.0.1:8700");
        assert_eq!(r.failed(), NextTry::NextRelay);
        // A good connection starts a new round from the relay that accepted.
        r.connected();
        assert_eq!(r.current().base, "http://127.0.0.1:8701");
        assert_eq!(r.failed(), NextTry::NextRelay);
        assert_eq!(r.failed(), NextTry::NextRelay);
        assert_eq!(r.current().base, "http://127.0.0.1:8700");
        assert_eq!(r.failed(), NextTry::Backoff);
        assert_eq!(r.current().base, "http://127.0.0.1:8701");
    }

    #[test]
    fn a_bad_url_in_the_list_is_refused_by_name() {
        let urls = vec!["http://127.0.0.1:1".to_string(), "relay-b".to_string()];
        let e = RelayRotation::new(&urls, false).unwrap_err().to_string();
        assert!(e.contains("relay-b"), "{e}");
        let remote = vec!["http://192.0.2.1:8700".to_string()];
        assert!(RelayRotation::new(&remote, false).is_err());
        assert!(RelayRotation::new(&[], false).is_err());
        let tls = vec![
            "http://127.0.0.1:1".into(),
            "https://relay.example.com".into(),
        ];
        assert!(RelayRotation::new(&tls, false).unwrap().any_tls());
    }

    #[test]
    fn relay_urls() {
        assert_eq!(
            normalise_relay_url("http://127.0.0.1:8700/").unwrap(),
            "http://127.0.0.1:8700"
        );
        assert!(normalise_relay_url("ftp://x").is_err());
        assert!(normalise_relay_url("relay.example.com").is_err());
    }

    #[test]
    fn websocket_urls() {
        assert_eq!(
            websocket_url("http://127.0.0.1:8700", false).unwrap(),
            "ws://127.0.0.1:8700/api/v1/agent/connect"
        );
        assert_eq!(
            websocket_url("http://localhost:8700/", false).unwrap(),
            "ws://localhost:8700/api/v1/agent/connect"
        );
        assert_eq!(
            websocket_url("http://[::1]:8700", false).unwrap(),
            "ws://[::1]:8700/api/v1/agent/connect"
        );
        assert_eq!(
            websocket_url("https://relay.example.com/flotilla", false).unwrap(),
            "wss://relay.example.com/flotilla/api/v1/agent/connect"
        );
        let e = websocket_url("http://relay.example.com", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("refusing plain ws://"), "{e}");
        assert_eq!(
            websocket_url("http://10.0.0.5:8700", true).unwrap(),
            "ws://10.0.0.5:8700/api/v1/agent/connect"
        );
    }

    #[test]
    fn tls_config_builds_from_system_roots() {
        tls_config(None).unwrap();
        assert!(tls_config(Some(Path::new("/nonexistent.pem"))).is_err());
    }
}
