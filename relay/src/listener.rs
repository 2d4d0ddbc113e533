//! The relay's HTTP listener (review finding 8): our own accept loop over hyper's HTTP/1.1
//! server instead of `axum::serve`, which sets no timeouts, so that
//!
//! - a connection has `header_read_timeout_secs` to send a whole request head, and a
//!   kept-alive connection may stay idle between requests no longer than that (hyper starts
//!   the same timer whenever it waits for a request head; after it fires the connection is
//!   closed), so partial requests cannot pin file descriptors;
//! - one client address (IPv6 by /64) holds at most `max_connections_per_address` open
//!   connections, websockets included (the count is released when the socket is dropped,
//!   after an upgrade too); over it the connection is closed at accept, before a byte is read.
//!   The `trusted_proxies` are exempt: a reverse proxy carries everyone's connections.
//!
//! HTTP/1.1 only: every client of the relay (agents, the CLI, browsers and Prometheus through
//! or beside a proxy) speaks it, and h2c's version sniffing would read a preface with no
//! deadline. TCP_NODELAY is set on every connection: frames are small and latency matters (a
//! command, then its ack and result); with Nagle's algorithm and delayed ACKs every exchange
//! would wait ~40 ms.

use crate::metrics::Metrics;
use crate::ratelimit::client_key;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// What the listener enforces (from the relay's settings).
#[derive(Clone, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    /// 0: no cap.
    pub max_per_address: usize,
    /// Addresses without a cap (the trusted proxies).
    pub exempt: Vec<IpAddr>,
}

/// Open connections per client address.
#[derive(Default)]
pub struct Connections {
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it gives the count back.
pub struct Slot {
    owner: Arc<Connections>,
    key: IpAddr,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Plain counters; a poisoned lock still guards usable numbers.
        self.by_address.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `peer`, unless its address already holds `max`.
    pub fn try_take(self: &Arc<Self>, peer: IpAddr, max: usize) -> Option<Slot> {
        let key = client_key(peer);
        let mut map = self.lock();
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: self.clone(),
            key,
        })
    }

    /// Open connections of `peer`'s address now.
    #[cfg(test)]
    fn of(&self, peer: IpAddr) -> usize {
        self.lock().get(&client_key(peer)).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.owner.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// A TCP stream that holds its address's slot for as long as it lives.
struct Counted {
    tcp: TcpStream,
    _slot: Option<Slot>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// Serves `app` on `listener` until `shutdown`, then stops accepting and waits for the open
/// HTTP connections to finish their requests (upgraded websockets end with the shutdown
/// token on their own).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let connections = Arc::new(Connections::default());
    let tasks = tokio_util::task::TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset before accept: keep
                    // serving; a short pause lets closing connections free descriptors.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            },
        };
        let slot = if limits.max_per_address == 0
            || limits
                .exempt
                .iter()
                .any(|p| client_key(*p) == client_key(peer.ip()))
        {
            None
        } else {
            match connections.try_take(peer.ip(), limits.max_per_address) {
                Some(slot) => Some(slot),
                None => {
                    metrics.connection_refused();
                    tracing::debug!(%peer, "connection refused: its address holds max_connections_per_address");
                    drop(tcp);
                    continue;
                }
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on an accepted connection: {e}");
        }
        let service = app.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request.map(axum::body::Body::new)
            },
        );
        let connection = http
            .serve_connection(
                TokioIo::new(Counted { tcp, _slot: slot }),
                TowerToHyperService::new(service),
            )
            .with_upgrades();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stop.cancelled() => {
                    // Finish the request in progress, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_per_address_and_given_back() {
        let c = Arc::new(Connections::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| c.try_take(a, 3).unwrap()).collect();
        assert!(c.try_take(a, 3).is_none());
        assert!(c.try_take("192.0.2.2".parse().unwrap(), 3).is_some());
        // One /64 is one client.
        let v6: Vec<_> = (0..3)
            .map(|i| {
                c.try_take(format!("2001:db8::{i}").parse().unwrap(), 3)
                    .unwrap()
            })
            .collect();
        assert!(c.try_take("2001:db8::beef".parse().unwrap(), 3).is_none());
        drop(held);
        assert_eq!(c.of(a), 0);
        drop(v6);
        assert!(c.lock().is_empty());
    }
}
