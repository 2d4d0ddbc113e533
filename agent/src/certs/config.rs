//! `[certificates]` of agent.toml: which certificates on the host the agent reads and how
//! often (issue 17 §2). Its keys' variables and ranges are in the settings table
//! (`crate::config`), which imports this, not the other way round.

use serde::{Deserialize, Serialize};

/// certbot's layout: one directory per certificate name, the chain the server sends.
pub const CERTBOT_GLOB: &str = "/etc/letsencrypt/live/*/fullchain.pem";

/// `[certificates]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertificatesConfig {
    /// Read certificates at all.
    pub enabled: bool,
    /// Also read certbot's certificates (`/etc/letsencrypt/live/*/fullchain.pem`); a host
    /// without certbot simply has none.
    pub certbot: bool,
    /// Certificate files, directories (every `*.pem`, `*.crt`, `*.cer` file in them) and
    /// globs (`*` and `?` within one path segment). PEM chains report their first
    /// certificate (the leaf); files holding only a private key are skipped.
    pub paths: Vec<String>,
    /// Local TLS endpoints whose certificate is read by a handshake: `host:port`, or
    /// `name@host:port` to send `name` as the SNI name (`shop.example.com@127.0.0.1:443`).
    pub endpoints: Vec<String>,
    /// Seconds between two readings (default hourly).
    pub interval_secs: u64,
}

impl Default for CertificatesConfig {
    fn default() -> Self {
        CertificatesConfig {
            enabled: true,
            certbot: true,
            paths: Vec::new(),
            endpoints: Vec::new(),
            interval_secs: 3600,
        }
    }
}
