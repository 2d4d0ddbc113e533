//! Certificates seen from the tenant (issue 17 §2): the agent reads the certificates on its
//! host — certbot's (`/etc/letsencrypt/live/*/fullchain.pem`), the `[certificates] paths`
//! (files, directories, globs) and local TLS `endpoints` — every `interval_secs` (hourly by
//! default), and publishes the readings on a watch channel that every heartbeat carries
//! (`host.certificates`). The relay alerts per agent and certificate.
//!
//! A reading is cheap and bounded: at most [`MAX_CERTIFICATES`] files of at most 1 MiB each,
//! on the blocking pool, and endpoints with a 10-second deadline per network step. Nothing is
//! kept between readings but the latest result. A file that cannot be read or holds garbage
//! is a report with a `warning`, never an error of the agent.

pub mod config;
mod endpoint;
mod files;

pub use endpoint::{parse_endpoint, Endpoint};

use config::{CertificatesConfig, CERTBOT_GLOB};
use flotilla_shared::heartbeat::{CertificateSourceKind, HostCertificate};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Most certificates one reading reports (files and endpoints together).
pub const MAX_CERTIFICATES: usize = 256;
/// Connect and handshake deadline of one endpoint.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate reader's wiring.
pub struct CertificateScanner {
    pub config: CertificatesConfig,
    /// Where each reading is published (the heartbeat task reads it).
    pub out: watch::Sender<Vec<HostCertificate>>,
    /// Asks the heartbeat task for a heartbeat now, after a reading that changed something.
    pub poke: Arc<Notify>,
}

impl CertificateScanner {
    /// Whether there is anything to read.
    pub fn active(config: &CertificatesConfig) -> bool {
        config.enabled
            && (config.certbot || !config.paths.is_empty() || !config.endpoints.is_empty())
    }

    /// Reads now and then every `interval_secs` until shutdown.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(self.config.interval_secs.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let reading = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = read_all(&self.config) => r,
            };
            for c in reading.iter().filter(|c| c.warning.is_some()) {
                debug!(
                    source = c.source,
                    warning = c.warning.as_deref().unwrap_or_default(),
                    "certificate not read"
                );
            }
            let changed = self.out.send_if_modified(|old| {
                let same = same_facts(old, &reading);
                *old = reading;
                !same
            });
            if changed {
                self.poke.notify_one();
            }
        }
    }
}

/// Equal but for when they were read.
fn same_facts(a: &[HostCertificate], b: &[HostCertificate]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            HostCertificate {
                checked_at: y.checked_at,
                ..x.clone()
            } == *y
        })
}

/// One reading: every file of the configured patterns, then every endpoint.
pub async fn read_all(config: &CertificatesConfig) -> Vec<HostCertificate> {
    let mut patterns: Vec<(String, bool)> = Vec::new();
    if config.certbot {
        patterns.push((CERTBOT_GLOB.to_string(), true));
    }
    patterns.extend(config.paths.iter().map(|p| (p.trim().to_string(), false)));
    let limit = MAX_CERTIFICATES.saturating_sub(config.endpoints.len().min(MAX_CERTIFICATES));
    let mut out = tokio::task::spawn_blocking(move || {
        files::targets(&patterns, limit)
            .into_iter()
            .filter_map(|t| match t {
                files::Target::File(path) => files::read(&path),
                files::Target::Problem { source, warning } => Some(HostCertificate {
                    kind: CertificateSourceKind::File,
                    source,
                    subject: None,
                    sans: Vec::new(),
                    issuer: None,
                    not_after: None,
                    warning: Some(warning),
                    checked_at: chrono::Utc::now(),
                }),
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_else(|e| {
        warn!(error = %e, "reading certificate files failed");
        Vec::new()
    });
    let endpoints: Vec<_> = config
        .endpoints
        .iter()
        .take(MAX_CERTIFICATES)
        .map(|e| {
            let e = e.clone();
            tokio::task::spawn_blocking(move || endpoint::read(&e, ENDPOINT_TIMEOUT))
        })
        .collect();
    for handle in endpoints {
        match handle.await {
            Ok(r) => out.push(r),
            Err(e) => warn!(error = %e, "reading a TLS endpoint's certificate failed"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reading_reports_garbage_and_missing_files_without_failing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("garbage.pem"), "not a certificate").unwrap();
        let config = CertificatesConfig {
            certbot: false,
            paths: vec![
                dir.path().display().to_string(),
                dir.path().join("missing.pem").display().to_string(),
            ],
            ..Default::default()
        };
        let got = read_all(&config).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got
            .iter()
            .all(|c| c.warning.is_some() && c.not_after.is_none()));
        assert!(same_facts(&got, &read_all(&config).await));
        assert!(CertificateScanner::active(&config));
        assert!(!CertificateScanner::active(&CertificatesConfig {
            enabled: false,
            ..config
        }));
    }
}
