//! TLS certificate expiry checks of the endpoints in `alerts.tls_endpoints`.
//!
//! Each check connects over TCP, runs a TLS handshake with a verifier that accepts any
//! certificate (the point is to read an expiring or already expired certificate, trusted or
//! not), and reads the leaf certificate's notAfter from its DER encoding
//! (`flotilla_shared::x509`). Checks run on their own task, every `tls_check_interval_secs`,
//! on blocking threads with a deadline; the engine only reads the cached results, so a slow
//! endpoint never delays an evaluation.

use super::rules::TlsCheck;
use chrono::{DateTime, Utc};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use crate::model::alerts::config::split_endpoint;

/// Accepts every certificate: the check reads certificates, it does not trust them.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

flotilla_shared::message_error!(
    /// Why a TLS endpoint's certificate could not be read (resolve, connect, handshake, parse).
    pub TlsCheckFailed
);

/// Connects, shakes hands and returns the leaf certificate's notAfter. Blocking; bounded by
/// `timeout` per network step.
pub fn check_blocking(endpoint: &str, timeout: Duration) -> Result<DateTime<Utc>, TlsCheckFailed> {
    check_blocking_message(endpoint, timeout).map_err(TlsCheckFailed)
}

fn check_blocking_message(endpoint: &str, timeout: Duration) -> Result<DateTime<Utc>, String> {
    let (host, port) = split_endpoint(endpoint).ok_or_else(|| "expected host:port".to_string())?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    let mut tcp =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("cannot connect: {e}"))?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|_| tcp.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("cannot set socket timeouts: {e}"))?;
    let name = ServerName::try_from(host.clone())
        .map_err(|e| format!("invalid server name {host}: {e}"))?;
    let mut conn = rustls::ClientConnection::new(client_config()?, name)
        .map_err(|e| format!("cannot start TLS: {e}"))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| "the server sent no certificate".to_string())?;
    let not_after = not_after(leaf.as_ref())?;
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    Ok(not_after)
}

/// A certificate whose validity could not be parsed.
pub use flotilla_shared::x509::BadCertificate;

/// The notAfter of a DER X.509 certificate (the DER reader is shared with the agent's
/// host-certificate checks: `flotilla_shared::x509`).
pub fn not_after(der: &[u8]) -> Result<DateTime<Utc>, BadCertificate> {
    flotilla_shared::x509::parse_certificate(der).map(|f| f.not_after)
}

/// The latest result of every configured endpoint, shared between the checker and the engine.
#[derive(Default)]
pub struct TlsResults {
    checks: Mutex<Vec<TlsCheck>>,
    /// Set once the first round of checks has completed (until then the results are not
    /// ready and `tls_expiry` alerts are held as they are).
    completed: std::sync::atomic::AtomicBool,
}

impl TlsResults {
    /// A copy of the latest results.
    pub fn snapshot(&self) -> Vec<TlsCheck> {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a round of checks has completed since the relay started.
    pub fn ready(&self) -> bool {
        self.completed.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn store(&self, checks: Vec<TlsCheck>) {
        *self.checks.lock().unwrap_or_else(|p| p.into_inner()) = checks;
        self.completed
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Checks every endpoint (concurrently, each on a blocking thread, each bounded by `timeout`).
pub async fn check_all(endpoints: &[String], timeout: Duration) -> Vec<TlsCheck> {
    let handles: Vec<_> = endpoints
        .iter()
        .map(|e| {
            let e = e.clone();
            tokio::task::spawn_blocking(move || {
                let result = check_blocking(&e, timeout).map_err(String::from);
                TlsCheck {
                    endpoint: e,
                    checked_at: Utc::now(),
                    result,
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for (h, e) in handles.into_iter().zip(endpoints) {
        out.push(h.await.unwrap_or_else(|j| TlsCheck {
            endpoint: e.clone(),
            checked_at: Utc::now(),
            result: Err(format!("check failed: {j}")),
        }));
    }
    out
}

/// Checks the endpoints now and then every `interval` until shutdown.
pub async fn run_checker(
    endpoints: Vec<String>,
    interval: Duration,
    timeout: Duration,
    results: Arc<TlsResults>,
    shutdown: CancellationToken,
) {
    if endpoints.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let checks = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = check_all(&endpoints, timeout) => c,
        };
        for c in &checks {
            if let Err(e) = &c.result {
                tracing::debug!(
                    endpoint = c.endpoint,
                    error = e,
                    "TLS endpoint check failed"
                );
            }
        }
        results.store(checks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn endpoints_split() {
        assert_eq!(
            split_endpoint("example.com:443"),
            Some(("example.com".into(), 443))
        );
        assert_eq!(split_endpoint("[::1]:8443"), Some(("::1".into(), 8443)));
        assert_eq!(split_endpoint("example.com"), None);
        assert_eq!(split_endpoint("example.com:http"), None);
        assert_eq!(split_endpoint(":443"), None);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(not_after(b"\x30\x03\x02\x01").is_err());
    }

    /// A real rustls server on loopback with a self-signed certificate expiring in 5 days.
    #[tokio::test]
    async fn expiring_certificate_is_reported() {
        let now = Utc::now();
        let expires = now + chrono::Duration::days(5);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = time_of(now - chrono::Duration::days(30));
        params.not_after = time_of(expires);
        let cert = params.self_signed(&key).unwrap();
        let cert_der = cert.der().clone();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert_der], key_der)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut conn = rustls::ServerConnection::new(server_config).unwrap();
            while conn.is_handshaking() {
                if conn.complete_io(&mut tcp).is_err() {
                    return;
                }
            }
            let mut buf = [0u8; 16];
            let mut s = rustls::Stream::new(&mut conn, &mut tcp);
            let _ = s.read(&mut buf);
            let _ = s.flush();
        });
        let endpoint = format!("localhost:{}", addr.port());
        let checks = check_all(std::slice::from_ref(&endpoint), Duration::from_secs(10)).await;
        server.join().unwrap();
        assert_eq!(checks.len(), 1);
        let got = checks[0]
            .result
            .clone()
            .expect("the check reads the certificate");
        assert!(
            (got - expires).num_seconds().abs() <= 1,
            "{got} vs {expires}"
        );

        let cfg = crate::model::alerts::AlertsConfig::default();
        let conditions = super::super::rules::tls_conditions(&cfg, &checks, now);
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].subject, endpoint);
        assert!(
            conditions[0].message.contains("expires in 4d")
                || conditions[0].message.contains("expires in 5d"),
            "{}",
            conditions[0].message
        );

        // Nobody listening: the alert says the endpoint cannot be checked.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("127.0.0.1:{}", closed.local_addr().unwrap().port());
        drop(closed);
        let checks = check_all(&[dead], Duration::from_secs(5)).await;
        let e = checks[0].result.clone().unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
        let conditions = super::super::rules::tls_conditions(&cfg, &checks, now);
        assert!(
            conditions[0].message.contains("cannot check"),
            "{}",
            conditions[0].message
        );
    }

    fn time_of(t: DateTime<Utc>) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap()
    }
}
