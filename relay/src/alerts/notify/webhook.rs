//! The generic JSON webhook: the [`Notification`] as the body, signed with HMAC-SHA256 over
//! `"<timestamp>.<body>"` (see the module documentation of `notify` for the headers and how a
//! receiver verifies them).

use super::{http, Attempt, Notification, NotificationKind};
use reqwest::Url;
use ring::hmac;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `alert.firing` or `alert.resolved`.
pub const EVENT_HEADER: &str = "X-Flotilla-Event";
/// Unique per notification, the same on every retry: the receiver's deduplication key.
pub const DELIVERY_HEADER: &str = "X-Flotilla-Delivery";
/// Unix seconds at which this attempt was signed.
pub const TIMESTAMP_HEADER: &str = "X-Flotilla-Timestamp";
/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "X-Flotilla-Signature";

/// The `X-Flotilla-Event` value of a notification kind.
pub fn event_name(kind: NotificationKind) -> &'static str {
    match kind {
        NotificationKind::Firing => "alert.firing",
        NotificationKind::Resolved => "alert.resolved",
    }
}

/// The `X-Flotilla-Signature` value for `body` sent at `timestamp` (its exact header text).
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!(
        "sha256={}",
        hex::encode(sign(&key, timestamp, body).as_ref())
    )
}

/// Whether `signature_header` is the signature of `body` at `timestamp_header` (constant-time
/// comparison). Receivers should also reject timestamps far from their clock.
pub fn verify(secret: &[u8], timestamp_header: &str, body: &[u8], signature_header: &str) -> bool {
    let Some(hex_tag) = signature_header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(tag) = hex::decode(hex_tag) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut message = Vec::with_capacity(timestamp_header.len() + 1 + body.len());
    message.extend_from_slice(timestamp_header.as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    hmac::verify(&key, &message, &tag).is_ok()
}

fn sign(key: &hmac::Key, timestamp: &str, body: &[u8]) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    context.update(timestamp.as_bytes());
    context.update(b".");
    context.update(body);
    context.sign()
}

/// One configured webhook.
pub(super) struct WebhookTransport {
    client: reqwest::Client,
    url: Url,
    key: hmac::Key,
    timeout: Duration,
}

impl WebhookTransport {
    pub(super) fn new(url: Url, secret: &[u8], timeout: Duration) -> Self {
        WebhookTransport {
            client: http::client(timeout),
            url,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            timeout,
        }
    }

    /// POSTs the notification, signed afresh with the current time.
    pub(super) async fn attempt(&self, delivery_id: &str, n: &Notification) -> Attempt {
        let body = match serde_json::to_vec(n) {
            Ok(body) => body,
            Err(e) => {
                return Attempt::GiveUp {
                    error: format!("cannot serialise the notification: {e}"),
                }
            }
        };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string();
        let tag = sign(&self.key, &timestamp, &body);
        let request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, event_name(n.kind))
            .header(DELIVERY_HEADER, delivery_id)
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(
                SIGNATURE_HEADER,
                format!("sha256={}", hex::encode(tag.as_ref())),
            )
            .body(body);
        http::send(request, self.timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_hmac_and_verifies() {
        // Computed independently with Python's hmac module over b'1700000000.{"a":1}'.
        assert_eq!(
            signature(b"secret", "1700000000", b"{\"a\":1}"),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
        let sig = signature(b"secret", "1700000000", b"{\"a\":1}");
        assert!(verify(b"secret", "1700000000", b"{\"a\":1}", &sig));
        assert!(!verify(b"secret", "1700000001", b"{\"a\":1}", &sig));
        assert!(!verify(b"other", "1700000000", b"{\"a\":1}", &sig));
        assert!(!verify(b"secret", "1700000000", b"{\"a\":2}", &sig));
        assert!(!verify(b"secret", "1700000000", b"{\"a\":1}", "sha256=zz"));
        assert!(!verify(
            b"secret",
            "1700000000",
            b"{\"a\":1}",
            sig.trim_start_matches("sha256=")
        ));
    }
}
