//! The agent websocket's HTTP/1.1 upgrade, done here rather than by axum's `WebSocketUpgrade`
//! so that the connection's reads pass through [`PreAuth`]: axum fixes a websocket's limits at
//! the upgrade and hides the stream, and tokio-tungstenite cannot change them afterwards, so
//! the size limit before authentication (review finding 10) is a byte budget on the socket
//! itself. Until [`PreAuth::authenticated`] is called the peer may send at most
//! [`PRE_AUTH_MAX_BYTES`] in all (the `auth` frame is a few hundred bytes); a read past that
//! fails without reading more, so an unauthenticated peer can make the relay buffer no more
//! than that, and the connection reports [`PreAuth::exceeded`] so it can say why it closes.
//! After authentication the frame limit is `max_frame_bytes`, checked by tungstenite.

use crate::api::ApiError;
use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// Bytes an agent may send before it has authenticated (its `auth` frame and pings).
pub const PRE_AUTH_MAX_BYTES: usize = 8 * 1024;

/// The upgraded connection as the websocket sees it.
pub type Socket = WebSocketStream<PreAuth<TokioIo<hyper::upgrade::Upgraded>>>;

/// A websocket upgrade request (`GET` with `Upgrade: websocket`, version 13, a key).
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn not_websocket(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "not_a_websocket", message)
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        if parts.method != Method::GET {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the agent websocket is opened with GET",
            ));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(not_websocket(
                "this is the agent websocket: the request must carry Connection: upgrade and Upgrade: websocket",
            ));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(not_websocket("Sec-WebSocket-Version must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or_else(|| not_websocket("Sec-WebSocket-Key is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UPGRADE_REQUIRED,
                    "not_upgradable",
                    "this connection cannot be upgraded to a websocket",
                )
            })?;
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers 101 and runs `callback` with the websocket once hyper hands the connection over.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, callback: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "agent websocket upgrade failed");
                    return;
                }
            };
            let io = PreAuth::new(TokioIo::new(upgraded));
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            callback(socket).await;
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// A connection whose reads are capped at [`PRE_AUTH_MAX_BYTES`] until authentication.
pub struct PreAuth<IO> {
    io: IO,
    /// Bytes still allowed before authentication; `None` once authenticated.
    remaining: Option<usize>,
    exceeded: bool,
}

impl<IO> PreAuth<IO> {
    pub fn new(io: IO) -> PreAuth<IO> {
        PreAuth {
            io,
            remaining: Some(PRE_AUTH_MAX_BYTES),
            exceeded: false,
        }
    }

    /// Lifts the budget: the peer authenticated.
    pub fn authenticated(&mut self) {
        self.remaining = None;
    }

    /// True when a read failed because the peer sent more than the budget before
    /// authenticating.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PreAuth<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(remaining) = this.remaining else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if remaining == 0 {
            this.exceeded = true;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {PRE_AUTH_MAX_BYTES} bytes before authentication"),
            )));
        }
        // Through a small buffer of our own, so the peer's bytes never exceed the budget.
        let mut chunk = [0u8; 1024];
        let n = remaining.min(chunk.len()).min(buf.remaining());
        let mut limited = ReadBuf::new(&mut chunk[..n]);
        match Pin::new(&mut this.io).poll_read(cx, &mut limited) {
            Poll::Ready(Ok(())) => {
                let read = limited.filled();
                this.remaining = Some(remaining - read.len());
                buf.put_slice(read);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PreAuth<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_stop_at_the_budget_until_authenticated() {
        let (mut peer, relay) = tokio::io::duplex(64 * 1024);
        let mut relay = PreAuth::new(relay);
        peer.write_all(&vec![7u8; 3 * PRE_AUTH_MAX_BYTES])
            .await
            .unwrap();
        let mut got = vec![0u8; 4 * PRE_AUTH_MAX_BYTES];
        let mut total = 0;
        let err = loop {
            match relay.read(&mut got[total..]).await {
                Ok(n) => total += n,
                Err(e) => break e,
            }
        };
        assert_eq!(total, PRE_AUTH_MAX_BYTES, "exactly the budget was read");
        assert!(relay.exceeded(), "{err}");
        relay.authenticated();
        let n = relay.read(&mut got).await.unwrap();
        assert!(n > 0, "after authentication reads pass through");
    }
}
