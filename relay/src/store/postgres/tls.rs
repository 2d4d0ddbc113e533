//! The PostgreSQL URL as the relay reads it, and TLS to the database.
//!
//! The URL is libpq's: `sslmode` and `sslrootcert` are read here (the driver knows neither the
//! verifying modes nor the CA file) and the rest goes to the driver. TLS is used with
//! `sslmode=require`, `verify-ca` or `verify-full`, and then the server's certificate is always
//! verified, chain and host name, against `sslrootcert` (a PEM file of CA certificates) or the
//! system's roots: stricter than libpq's `require`, which checks nothing, because a relay's
//! database holds the fleet's keys and tokens. `disable`, `allow`, `prefer` or no `sslmode`
//! connect without TLS, as before. The same URL works for `pg_dump` (the relay's backup), which
//! reads both parameters itself.

use super::super::StoreError;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::{Client, Config, NoTls, Socket};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How the relay reaches its database.
#[derive(Clone)]
pub(crate) struct Connector {
    tls: Option<MakeRustls>,
}

impl Connector {
    /// Opens one client.
    pub(crate) fn connect(&self, config: &Config) -> Result<Client, postgres::Error> {
        match &self.tls {
            None => config.connect(NoTls),
            Some(tls) => config.connect(tls.clone()),
        }
    }

    /// Whether connections use TLS.
    #[cfg(test)]
    fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// The URL's base and its query's `key=value` pairs.
fn split(url: &str) -> (&str, Vec<(&str, &str)>) {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let pairs = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    (base, pairs)
}

/// Splits the relay's database URL into the driver's settings and the connector. Only
/// `postgres://` / `postgresql://` URLs: a `key=value` connection string would carry its own
/// `sslmode` past this parsing (and its password into error messages).
pub(crate) fn parse(url: &str) -> Result<(Config, Connector), StoreError> {
    let bad = |why: String| StoreError::Corrupt(format!("bad PostgreSQL URL: {why}"));
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(bad(
            "give the database as a postgres://user@host/database URL (key=value connection \
             strings are not accepted)"
                .into(),
        ));
    }
    let (base, pairs) = split(url);
    let mut mode = None;
    let mut root_cert = None;
    let mut rest = Vec::new();
    for (key, value) in pairs {
        match key {
            "sslmode" => mode = Some(value.to_string()),
            "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(value))),
            "channel_binding" if value == "require" => {
                return Err(bad(
                    "channel_binding=require is not supported (the relay verifies the server's \
                     certificate instead): remove it"
                        .into(),
                ))
            }
            _ => rest.push(format!("{key}={value}")),
        }
    }
    let driver_url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let mut config: Config = driver_url.parse().map_err(|e| bad(format!("{e}")))?;
    let tls = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => {
            if matches!(mode.as_deref(), Some("allow" | "prefer")) {
                tracing::warn!(
                    "sslmode={} connects to PostgreSQL without TLS; use sslmode=verify-full for TLS",
                    mode.as_deref().unwrap_or_default()
                );
            }
            if root_cert.is_some() {
                return Err(bad(
                    "sslrootcert is set but sslmode is not require, verify-ca or verify-full: \
                     the connection would not use TLS"
                        .into(),
                ));
            }
            config.ssl_mode(postgres::config::SslMode::Disable);
            None
        }
        Some("require" | "verify-ca" | "verify-full") => {
            let client = flotilla_daemon::tls::client_config(root_cert.as_deref())
                .map_err(|e| bad(e.to_string()))?;
            config.ssl_mode(postgres::config::SslMode::Require);
            Some(MakeRustls(client))
        }
        Some(other) => {
            return Err(bad(format!(
                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, \
                 verify-full"
            )))
        }
    };
    Ok((config, Connector { tls }))
}

/// The URL for libpq's own tools (`pg_dump`, `pg_restore`: the relay's backup), with the
/// relay's TLS rule: any TLS mode becomes `verify-full`, and without `sslrootcert` the
/// system's CA bundle is named (libpq would otherwise look for `~/.postgresql/root.crt`), so the
/// tools verify the server exactly as the relay does.
pub(crate) fn libpq_url(url: &str) -> String {
    let (base, pairs) = split(url);
    let tls = pairs
        .iter()
        .any(|(k, v)| *k == "sslmode" && matches!(*v, "require" | "verify-ca" | "verify-full"));
    if !tls {
        return url.to_string();
    }
    let mut out: Vec<String> = pairs
        .iter()
        .map(|(k, v)| match *k {
            "sslmode" => "sslmode=verify-full".to_string(),
            _ => format!("{k}={v}"),
        })
        .collect();
    if !pairs.iter().any(|(k, _)| *k == "sslrootcert") {
        let bundle = [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file());
        if let Some(bundle) = bundle {
            out.push(format!("sslrootcert={bundle}"));
        }
    }
    format!("{base}?{}", out.join("&"))
}

/// `%2F` and friends in a path given in the URL.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// rustls for the driver: one per host name it connects to.
#[derive(Clone)]
struct MakeRustls(Arc<rustls::ClientConfig>);

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        let name = rustls::pki_types::ServerName::try_from(domain.to_string())?;
        Ok(RustlsConnect {
            config: self.0.clone(),
            name,
        })
    }
}

struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (SCRAM-SHA-256, not -PLUS): the certificate is
        // verified instead.
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_read_and_the_rest_reaches_the_driver() {
        let (config, c) = parse("postgres://relay@db.example/flotilla").unwrap();
        assert!(!c.uses_tls());
        assert_eq!(config.get_dbname(), Some("flotilla"));
        let (config, c) =
            parse("postgres://relay@db.example/flotilla?sslmode=require&connect_timeout=3")
                .unwrap();
        assert!(c.uses_tls());
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        let err = parse("postgres://db/f?sslmode=verify-full&sslrootcert=%2Fnonexistent%2Fca.pem")
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let err = parse("postgres://db/f?sslmode=sometimes").err().unwrap();
        assert!(err.to_string().contains("sslmode=sometimes"), "{err}");
        let err = parse("postgres://db/f?sslrootcert=/ca.pem").err().unwrap();
        assert!(err.to_string().contains("would not use TLS"), "{err}");
        let err = parse("host=db password=s3cret sslmode=require")
            .err()
            .unwrap();
        assert!(err.to_string().contains("postgres://"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert_eq!(percent_decode("%2Fa%+fb%zz"), "/a%+fb%zz");

        // The backup's tools verify as the relay does.
        assert_eq!(
            libpq_url("postgres://db/f?sslmode=require&sslrootcert=/ca.pem"),
            "postgres://db/f?sslmode=verify-full&sslrootcert=/ca.pem"
        );
        assert_eq!(libpq_url("postgres://db/f"), "postgres://db/f");
        assert!(libpq_url("postgres://db/f?sslmode=verify-ca")
            .starts_with("postgres://db/f?sslmode=verify-full"));
    }
}
