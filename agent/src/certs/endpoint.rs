//! Local TLS endpoints (`shop.example.com@127.0.0.1:443`): a handshake whose verifier accepts
//! whatever the server presents, so the leaf certificate can be read. No trust decision is
//! made and nothing is sent after the handshake: the point is to read an expiring (or
//! already expired, or self-signed) certificate. Blocking, bounded by a timeout per step.

use chrono::Utc;
use flotilla_shared::heartbeat::{CertificateSourceKind, HostCertificate};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// An endpoint entry: the SNI name (None: the host is sent, or nothing for an address), the
/// host and the port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub sni: Option<String>,
    pub host: String,
    pub port: u16,
}

/// `host:port` or `name@host:port` (IPv6 as `[::1]:443`); the error says what is expected.
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    const EXPECTED: &str = "expected host:port or sni-name@host:port";
    let s = s.trim();
    let (sni, address) = match s.split_once('@') {
        Some((name, addr)) => (Some(name.trim().to_string()), addr.trim()),
        None => (None, s),
    };
    let (host, port) = address.rsplit_once(':').ok_or(EXPECTED)?;
    let port: u16 = port.parse().map_err(|_| EXPECTED)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(EXPECTED.into());
    }
    if let Some(name) = &sni {
        ServerName::try_from(name.clone()).map_err(|_| format!("{name:?} is not a DNS name"))?;
    }
    Ok(Endpoint {
        sni,
        host: host.to_string(),
        port,
    })
}

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

/// Reads the certificate an endpoint presents; the report carries a warning instead when
/// it cannot (refused, timed out, not TLS, garbage certificate).
pub(super) fn read(entry: &str, timeout: Duration) -> HostCertificate {
    let mut report = HostCertificate {
        kind: CertificateSourceKind::Endpoint,
        source: entry.to_string(),
        subject: None,
        sans: Vec::new(),
        issuer: None,
        not_after: None,
        warning: None,
        checked_at: Utc::now(),
    };
    match leaf(entry, timeout)
        .and_then(|der| flotilla_shared::x509::parse_certificate(&der).map_err(|e| e.0))
    {
        Ok(f) => {
            report.subject = f.subject_cn;
            report.sans = f.sans;
            report.issuer = f.issuer;
            report.not_after = Some(f.not_after);
        }
        Err(e) => report.warning = Some(e),
    }
    report
}

fn leaf(entry: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let e = parse_endpoint(entry)?;
    let addr: SocketAddr = (e.host.as_str(), e.port)
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {}: {err}", e.host))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", e.host))?;
    let name = e.sni.clone().unwrap_or_else(|| e.host.clone());
    let server_name =
        ServerName::try_from(name.clone()).map_err(|_| format!("invalid server name {name}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let mut tcp = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|err| format!("cannot connect to {addr}: {err}"))?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|_| tcp.set_write_timeout(Some(timeout)))
        .map_err(|err| format!("cannot set socket timeouts: {err}"))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name)
        .map_err(|err| format!("cannot start TLS: {err}"))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|err| format!("TLS handshake with {addr} failed: {err}"))?;
    }
    let der = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| "the server sent no certificate".to_string())?;
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse() {
        assert_eq!(
            parse_endpoint("shop.example.com@127.0.0.1:443").unwrap(),
            Endpoint {
                sni: Some("shop.example.com".into()),
                host: "127.0.0.1".into(),
                port: 443
            }
        );
        assert_eq!(parse_endpoint("[::1]:8443").unwrap().host, "::1");
        for bad in [
            "127.0.0.1",
            "x@",
            ":443",
            "a b@127.0.0.1:443",
            "h:0",
            "h:http",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_closed_port_is_a_warning() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let entry = format!("127.0.0.1:{}", closed.local_addr().unwrap().port());
        drop(closed);
        let r = read(&entry, Duration::from_secs(5));
        assert!(r.not_after.is_none());
        assert!(r.warning.unwrap().contains("cannot connect"));
    }
}
