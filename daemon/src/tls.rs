//! TLS client settings both daemons use: the agent towards its relay (`wss://`), the relay
//! towards PostgreSQL. Trust comes from a PEM file of CA certificates when one is given (a
//! private CA), else from the system's roots; the crypto is rustls with ring.

use std::path::Path;
use std::sync::Arc;

/// Why TLS settings could not be made; the message names the file and what was wrong.
#[derive(Debug)]
pub struct TlsSetupError(pub String);

impl std::fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsSetupError {}

/// rustls client settings trusting the CAs in `ca_file` when given, else the system roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                TlsSetupError(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            let mut reader = std::io::BufReader::new(pem.as_slice());
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut reader) {
                let cert = cert.map_err(|e| {
                    TlsSetupError(format!("invalid certificate in {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    TlsSetupError(format!("unusable certificate in {}: {e}", path.display()))
                })?;
                added += 1;
            }
            if added == 0 {
                return Err(TlsSetupError(format!(
                    "CA file {} holds no PEM certificates",
                    path.display()
                )));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::debug!(error = %e, "skipping unreadable system certificate");
            }
            let (ok, _bad) = roots.add_parsable_certificates(native.certs);
            if ok == 0 {
                tracing::warn!("no system CA certificates found; TLS connections will fail");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError(format!("cannot configure TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_system_roots_or_a_named_file() {
        client_config(None).unwrap();
        let err = client_config(Some(Path::new("/nonexistent.pem"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(Some(&empty)).unwrap_err();
        assert!(err.to_string().contains("no PEM certificates"), "{err}");
    }
}
