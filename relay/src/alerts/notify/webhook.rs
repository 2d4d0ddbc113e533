//! The generic JSON webhook: the [`Notification`] (or a lifecycle event's `{type, timestamp,
//! data}`) as the body, signed twice on every request (see the module documentation of
//! `notify` for the headers and how a receiver verifies them):
//!
//! - Flotilla's own scheme, unchanged since the first release: `X-Flotilla-Signature:
//!   sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, keyed with the configured
//!   secret's bytes as written.
//! - [Standard Webhooks](https://www.standardwebhooks.com/): `webhook-id` (the delivery id,
//!   the same on every retry), `webhook-timestamp` (Unix seconds of this attempt) and
//!   `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`. The key
//!   follows the spec: a secret written `whsec_<base64>` is keyed with the base64-decoded
//!   bytes (the relay refuses to start when that part is not valid base64); any other secret
//!   is keyed with its bytes as written, like the Flotilla header ([`standard_key`]).

use super::{http, Attempt, NotificationKind};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use reqwest::Url;
use ring::hmac;
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The event name: `alert.firing`, `alert.resolved` or a lifecycle event (`agent.enrolled`, ...).
pub const EVENT_HEADER: &str = "X-Flotilla-Event";
/// Unique per notification, the same on every retry: the receiver's deduplication key.
pub const DELIVERY_HEADER: &str = "X-Flotilla-Delivery";
/// Unix seconds at which this attempt was signed.
pub const TIMESTAMP_HEADER: &str = "X-Flotilla-Timestamp";
/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "X-Flotilla-Signature";

/// Standard Webhooks: the delivery id (the same value as `X-Flotilla-Delivery`).
pub const STANDARD_ID_HEADER: &str = "webhook-id";
/// Standard Webhooks: Unix seconds of this attempt (the same value as `X-Flotilla-Timestamp`).
pub const STANDARD_TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Standard Webhooks: `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`.
pub const STANDARD_SIGNATURE_HEADER: &str = "webhook-signature";

/// The prefix of a Standard Webhooks secret whose rest is the base64 key.
pub const STANDARD_SECRET_PREFIX: &str = "whsec_";

/// The Standard Webhooks HMAC key of a configured secret: the base64-decoded bytes after
/// `whsec_`, else the secret's bytes as they are. `Err` when the secret starts with `whsec_`
/// but the rest is not standard base64 (a configuration error: the relay refuses to start).
pub fn standard_key(secret: &[u8]) -> Result<Cow<'_, [u8]>, base64::DecodeError> {
    match secret.strip_prefix(STANDARD_SECRET_PREFIX.as_bytes()) {
        Some(encoded) => B64.decode(encoded).map(Cow::Owned),
        None => Ok(Cow::Borrowed(secret)),
    }
}

/// The `webhook-signature` value for `body` of delivery `id` sent at `timestamp` (their exact
/// header texts), keyed with [`standard_key`] of `secret`; `None` when that key is invalid.
pub fn standard_signature(secret: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Option<String> {
    let key = standard_key(secret).ok()?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    Some(format!(
        "v1,{}",
        B64.encode(sign_standard(&key, id, timestamp, body).as_ref())
    ))
}

/// Whether one of the space-separated `v1,<base64>` signatures in `signature_header` signs
/// `body` of delivery `id_header` at `timestamp_header`, keyed with [`standard_key`] of
/// `secret` (constant-time comparison; other versions are ignored). Receivers should also
/// reject timestamps far from their clock and treat a repeated id as one delivery.
pub fn verify_standard(
    secret: &[u8],
    id_header: &str,
    timestamp_header: &str,
    body: &[u8],
    signature_header: &str,
) -> bool {
    let Ok(key) = standard_key(secret) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let mut message = Vec::with_capacity(id_header.len() + timestamp_header.len() + 2 + body.len());
    message.extend_from_slice(id_header.as_bytes());
    message.push(b'.');
    message.extend_from_slice(timestamp_header.as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    signature_header.split_ascii_whitespace().any(|candidate| {
        candidate
            .strip_prefix("v1,")
            .and_then(|tag| B64.decode(tag).ok())
            .is_some_and(|tag| hmac::verify(&key, &message, &tag).is_ok())
    })
}

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

fn sign_standard(key: &hmac::Key, id: &str, timestamp: &str, body: &[u8]) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp.as_bytes());
    context.update(b".");
    context.update(body);
    context.sign()
}

fn sign(key: &hmac::Key, timestamp: &str, body: &[u8]) -> hmac::Tag {
    let mut context = hmac::Context::with_key(key);
    context.update(timestamp.as_bytes());
    context.update(b".");
    context.update(body);
    context.sign()
}

/// What one attempt sends: the stored row's delivery id, event and payload.
pub(super) struct Outgoing<'a> {
    /// `X-Flotilla-Delivery`, `webhook-id`, Slack's `flotilla_delivery_id`.
    pub delivery_id: &'a str,
    /// `X-Flotilla-Event`.
    pub event: &'a str,
    /// The generic webhook's body: the payload exactly as stored when it was decided.
    pub body: &'a [u8],
}

/// One configured webhook.
pub(super) struct WebhookTransport {
    client: reqwest::Client,
    url: Url,
    /// The `X-Flotilla-Signature` key: the secret's bytes as written.
    key: hmac::Key,
    /// The `webhook-signature` key: [`standard_key`] of the secret.
    standard_key: hmac::Key,
    timeout: Duration,
}

impl WebhookTransport {
    /// `secret` was checked by the config's validation ([`standard_key`] accepts it).
    pub(super) fn new(url: Url, secret: &[u8], timeout: Duration) -> Self {
        let standard = standard_key(secret).unwrap_or(Cow::Borrowed(secret));
        WebhookTransport {
            client: http::client(timeout),
            url,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            standard_key: hmac::Key::new(hmac::HMAC_SHA256, &standard),
            timeout,
        }
    }

    /// POSTs the stored payload, signed afresh with the current time.
    pub(super) async fn attempt(&self, out: &Outgoing<'_>) -> Attempt {
        let (delivery_id, body) = (out.delivery_id, out.body.to_vec());
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string();
        let tag = sign(&self.key, &timestamp, &body);
        let standard = sign_standard(&self.standard_key, delivery_id, &timestamp, &body);
        let request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, out.event)
            .header(DELIVERY_HEADER, delivery_id)
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(
                SIGNATURE_HEADER,
                format!("sha256={}", hex::encode(tag.as_ref())),
            )
            .header(STANDARD_ID_HEADER, delivery_id)
            .header(STANDARD_TIMESTAMP_HEADER, &timestamp)
            .header(
                STANDARD_SIGNATURE_HEADER,
                format!("v1,{}", B64.encode(standard.as_ref())),
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

    // Computed independently with Python's hmac and base64 modules:
    //   key = b"flotilla-test-key-0123456789abcd"
    //   "whsec_" + base64.b64encode(key)
    //   "v1," + base64.b64encode(hmac.new(key, b'alr_test1.firing.1700000000.{"a":1}',
    //                                     hashlib.sha256).digest())
    // and the same message keyed with b"hook-secret" (a secret without the whsec_ prefix).
    const WHSEC: &str = "whsec_ZmxvdGlsbGEtdGVzdC1rZXktMDEyMzQ1Njc4OWFiY2Q=";
    const WHSEC_SIGNATURE: &str = "v1,uG5ozgvpv6Cev+mAXk5v+WHp/E9D2p4BFIUtVeD+7D4=";
    const RAW_SIGNATURE: &str = "v1,Kp5fo9/RsvSnah/zzIiVlekfiaGnrUb3Qt2wUJ6CDOc=";
    const ID: &str = "alr_test1.firing";
    const TS: &str = "1700000000";
    const BODY: &[u8] = b"{\"a\":1}";

    #[test]
    fn standard_key_decodes_whsec_secrets_only() {
        assert_eq!(
            standard_key(WHSEC.as_bytes()).unwrap().as_ref(),
            b"flotilla-test-key-0123456789abcd"
        );
        assert_eq!(
            standard_key(b"hook-secret").unwrap().as_ref(),
            b"hook-secret"
        );
        assert!(standard_key(b"whsec_not base64!").is_err());
    }

    #[test]
    fn standard_signature_matches_an_independent_hmac_and_verifies() {
        assert_eq!(
            standard_signature(WHSEC.as_bytes(), ID, TS, BODY).as_deref(),
            Some(WHSEC_SIGNATURE)
        );
        assert_eq!(
            standard_signature(b"hook-secret", ID, TS, BODY).as_deref(),
            Some(RAW_SIGNATURE)
        );
        let secret = WHSEC.as_bytes();
        assert!(verify_standard(secret, ID, TS, BODY, WHSEC_SIGNATURE));
        assert!(verify_standard(b"hook-secret", ID, TS, BODY, RAW_SIGNATURE));
        // Several signatures (a receiver rotating keys): any valid v1 one is enough.
        assert!(verify_standard(
            secret,
            ID,
            TS,
            BODY,
            &format!("v1a,xyz {RAW_SIGNATURE} {WHSEC_SIGNATURE}")
        ));
        assert!(!verify_standard(
            secret,
            "alr_test1.resolved",
            TS,
            BODY,
            WHSEC_SIGNATURE
        ));
        assert!(!verify_standard(
            secret,
            ID,
            "1700000001",
            BODY,
            WHSEC_SIGNATURE
        ));
        assert!(!verify_standard(
            secret,
            ID,
            TS,
            b"{\"a\":2}",
            WHSEC_SIGNATURE
        ));
        assert!(!verify_standard(
            b"hook-secret",
            ID,
            TS,
            BODY,
            WHSEC_SIGNATURE
        ));
        assert!(!verify_standard(secret, ID, TS, BODY, RAW_SIGNATURE));
        assert!(!verify_standard(secret, ID, TS, BODY, "v1,!!!"));
        assert!(!verify_standard(
            secret,
            ID,
            TS,
            BODY,
            WHSEC_SIGNATURE.trim_start_matches("v1,")
        ));
        assert!(!verify_standard(
            b"whsec_###",
            ID,
            TS,
            BODY,
            WHSEC_SIGNATURE
        ));
    }
}
