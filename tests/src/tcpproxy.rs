//! A TCP proxy of the tests' own, on a free loopback port, to cut a link without closing it: in
//! front of PostgreSQL it plays a network partition of one relay. `blackhole` stops forwarding
//! in both directions — sockets stay open, bytes stay unread, new connections are accepted and
//! left hanging — like packets dropped on the floor; `heal` forwards again, the held bytes
//! first.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    forwarding: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (forwarding, open) = watch::channel(true);
        let accept = tokio::spawn(async move {
            // Dropped (and so every connection's task aborted) with the accept task.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        connections.spawn(forward(client, upstream, open.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        TcpProxy {
            addr,
            forwarding,
            accept,
        }
    }

    /// Stops forwarding without closing anything.
    pub fn blackhole(&self) {
        self.forwarding.send_replace(false);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.forwarding.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Waits until the link is open.
async fn until_open(open: &mut watch::Receiver<bool>) {
    // The sender lives as long as the proxy; if it is gone, so are these tasks.
    let _ = open.wait_for(|o| *o).await;
}

async fn forward(client: TcpStream, upstream: SocketAddr, mut open: watch::Receiver<bool>) {
    until_open(&mut open).await;
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, open.clone());
    let down = pump(server_read, client_write, open);
    // Either side closing ends the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Copies `from` to `to` while the link is open; while it is cut, reads nothing more and holds
/// what it read.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut open: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        until_open(&mut open).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        until_open(&mut open).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
