//! Notifications of alerts, and of fleet lifecycle events: a generic JSON webhook (HMAC-SHA256
//! signed, in Flotilla's own scheme and in the Standard Webhooks one), a Slack-compatible
//! webhook and e-mail over SMTP, delivered at least once from the relay's store.
//!
//! # Design: a durable outbox
//!
//! The alerts engine decides WHEN an alert notifies, and writes the decision as one outbox row
//! per channel that takes it (`notifications`, see `model/alerts/outbox.rs`) in the SAME
//! transaction that records the firing or resolution (`Store::apply_alert_conditions`, with
//! the channels' [`Notifier::routes`] in its policy); lifecycle events are written by their
//! task ([`Notifier::queue_lifecycle`]). Nothing is queued in memory: a relay that crashes
//! between a decision and its delivery, or while retrying one, delivers it after it restarts.
//!
//! Delivery ([`delivery`]) runs under the `notify` lease (one relay of a cluster delivers;
//! its store writes are fenced), one loop per channel, so a slow SMTP server never delays a
//! webhook. A loop claims its channel's due rows (`next_attempt_at <= now`; a claim moves
//! `next_attempt_at` past the attempt's longest duration, so a relay killed mid-attempt
//! leaves a row that is due again soon after), sends each OUTSIDE any store transaction, and
//! records the outcome: delivered; retried at `initial_backoff_secs × 2^(attempt-1)` (capped at
//! `max_backoff_secs`, the upper half random jitter; an HTTP `Retry-After` in seconds honoured
//! up to `max_backoff_secs`) after connection errors, timeouts, HTTP 5xx / 408 / 429 and
//! transient SMTP replies; failed at once on any other HTTP 4xx or a permanent SMTP reply
//! (5xx); failed when `[alerts] notify_give_up_after_secs` have passed since the decision, or
//! after `max_attempts` attempts. A failed notification is logged as an error, counted, shown
//! by `GET /api/v1/notifications`, and raises the hard `notification_failed` alert for its
//! channel until the channel delivers again. A channel holding `queue_capacity` undelivered
//! notifications gets new ones recorded as failed at once (counted as dropped), so a dead
//! receiver cannot grow the table without bound. Only the first failed attempt of a
//! notification is logged as a warning, later ones at debug.
//!
//! # At least once per (alert, transition, channel)
//!
//! The evaluation decides a notification once (`notify_decided_at`, committed with the
//! outbox rows), so no later evaluation or restart decides it again; the rows are retried
//! until delivered or given up, across restarts. An alert's `notified_at` is written when
//! its firing notification has been delivered or given up on every channel (at once when no
//! channel takes it). A receiver may see one notification more than once (an answer lost
//! after it was processed, a relay killed after the send and before recording it): the
//! delivery id, `<alert_id>.<firing|resolved>`, is the same on every attempt, after every
//! restart and on every relay, so receivers de-duplicate on it (webhook: `X-Flotilla-Delivery`
//! and `webhook-id`; Slack: the payload's `flotilla_delivery_id`; e-mail: the `Message-ID`
//! `<delivery id@sender's domain>`).
//!
//! # Lifecycle events
//!
//! A generic webhook whose `events` lists them also receives `agent.enrolled`,
//! `agent.revoked`, `agent.offline`, `update.finished`, `rollout.finished` and
//! `backup.failed` ([`NotifyEvent`]; without `events` a channel gets `alert.firing` and
//! `alert.resolved` only). One task reads the live event bus and decides them ([`lifecycle`],
//! which also says why `agent.offline` waits for the unreachable grace), writing them to the
//! same outbox, so they share the attempts, backoff and restarts of alerts. Their body is the
//! Standard Webhooks payload shape, [`LifecycleEvent`]: `{"type": "agent.enrolled",
//! "timestamp": "<RFC 3339>", "data": {...}}` with the fleet event's fields in `data`; their
//! delivery id is `evt_<fleet event id>.<type>`. What a lagging bus subscriber skips (counted,
//! see [`lifecycle`]) or a crash interrupts before the row is written is lost. Slack and
//! e-mail channels have no `events` and receive alerts only.
//!
//! Secrets (webhook keys, SMTP passwords) are read at start and never logged; URLs are logged
//! as scheme and host only, since Slack-style URLs embed a token.
//!
//! # Generic webhook
//!
//! `POST <url>` with the [`Notification`] (or the [`LifecycleEvent`]) as JSON and these headers:
//!
//! | header                | value                                                          |
//! |-----------------------|----------------------------------------------------------------|
//! | `Content-Type`        | `application/json`                                             |
//! | `X-Flotilla-Event`    | `alert.firing`, `alert.resolved` or the lifecycle event        |
//! | `X-Flotilla-Delivery` | `<alert_id>.<firing|resolved>`: stable per (alert, kind), across retries and restarts (dedup); `evt_<id>.<type>` for lifecycle events |
//! | `X-Flotilla-Timestamp`| Unix seconds when this attempt was sent                        |
//! | `X-Flotilla-Signature`| `sha256=` + hex HMAC-SHA256 of `"<timestamp>.<body>"`          |
//! | `webhook-id`          | the delivery id again (Standard Webhooks)                      |
//! | `webhook-timestamp`   | the timestamp again (Standard Webhooks)                        |
//! | `webhook-signature`   | `v1,` + base64 HMAC-SHA256 of `"<id>.<timestamp>.<body>"`      |
//!
//! The `X-Flotilla-*` headers are unchanged from the first release, keyed with the configured
//! secret's bytes as written. The `webhook-*` headers follow the
//! [Standard Webhooks](https://www.standardwebhooks.com/) specification, so its libraries
//! verify them: a secret written `whsec_<base64>` keys `webhook-signature` with the decoded
//! bytes (the relay refuses to start when the rest is not base64), any other secret with its
//! bytes as written ([`webhook::standard_key`]).
//!
//! A receiver verifies a request by computing HMAC-SHA256 with the shared secret over the
//! timestamp header's exact text, a `.`, and the raw body bytes (before any JSON parsing),
//! comparing its hex form with the signature header in constant time, and rejecting
//! timestamps more than a few minutes from its own clock (replays). The same delivery id may
//! arrive more than once (a retry after a lost answer): treat it as one. For example, in
//! Python:
//!
//! ```text
//! import hmac, hashlib, time
//! def verify(secret: bytes, headers, body: bytes) -> bool:
//!     ts = headers["X-Flotilla-Timestamp"]
//!     expected = "sha256=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
//!     return (hmac.compare_digest(expected, headers["X-Flotilla-Signature"])
//!             and abs(time.time() - int(ts)) < 300)
//! ```
//!
//! [`webhook::signature`] and [`webhook::verify`] are the Rust forms;
//! [`webhook::standard_signature`] and [`webhook::verify_standard`] those of `webhook-signature`.
//!
//! # Slack-compatible webhook
//!
//! `POST <url>` with `{"text": "<one line>\n<labels and link>", "flotilla_delivery_id":
//! "<delivery id>"}`, which Slack, Mattermost, Rocket.Chat and Discord's `/slack` endpoint all
//! accept (they ignore the field they do not know).
//!
//! # E-mail
//!
//! One plain-text message per notification to all of the channel's recipients, subject
//! `[flotilla HARD] agent_unreachable on web-12: <message>`, with a `Message-ID` derived from
//! (alert id, kind) so a resolution threads under its firing message (`In-Reply-To`).

mod delivery;
mod email;
mod http;
pub mod lifecycle;
mod slack;
pub mod webhook;

pub use crate::config::notify::{
    loggable_url, EmailConfig, InlineSecret, NotifyConfig, NotifyConfigError, NotifyEvent,
    SlackConfig, SmtpSecurity, WebhookConfig,
};
pub use crate::model::alerts::outbox::Notification;
pub use crate::model::alerts::NotificationKind;
pub use lifecycle::LifecycleEvent;

use crate::model::alerts::outbox::{ChannelRoute, NewNotification};
use crate::store::{Store, StoreError};
use delivery::{Attempt, RetryPolicy, Transport};
use flotilla_shared::alert::Severity;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Notification {
    /// `alert.firing` or `alert.resolved`.
    pub fn event(&self) -> NotifyEvent {
        match self.kind {
            NotificationKind::Firing => NotifyEvent::AlertFiring,
            NotificationKind::Resolved => NotifyEvent::AlertResolved,
        }
    }
}

// === impl Notifier ===

/// Delivery counters of one channel or of all of them (monotonic since this relay started,
/// for `/metrics`; the store's `notifications` table is the durable record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotifyStats {
    /// Notifications the receiver accepted.
    pub sent: u64,
    /// Notifications given up: refused (HTTP 4xx, permanent SMTP error), out of time or out
    /// of attempts.
    pub failed: u64,
    /// Notifications recorded as given up at once because their channel's queue was full
    /// (counted where this relay wrote them, in the total only: 0 per channel).
    pub dropped: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> NotifyStats {
        NotifyStats {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: 0,
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// What a channel is, for logs at start and metric labels (bounded: one per configured channel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The configured `name`.
    pub name: String,
    /// `webhook`, `slack` or `email`.
    pub kind: &'static str,
    /// Where it delivers, safe to log: `https://host` for URLs, `smtp://host:port` for e-mail.
    pub target: String,
    /// Alerts below this severity skip the channel.
    pub min_severity: Severity,
    /// What the channel subscribes to (`events`; alert.firing and alert.resolved by default).
    pub events: Vec<NotifyEvent>,
}

struct Channel {
    info: ChannelInfo,
    transport: Transport,
    /// How long one attempt may take at most (its claim lasts longer).
    timeout: Duration,
    counters: Counters,
    /// Whether the store failed on this channel's last pass (warned once per spell).
    failing: AtomicBool,
}

/// The configured channels and their delivery from the outbox. Cheap to clone. Building it
/// sends nothing; [`Notifier::run`] (under the `notify` lease) delivers, [`Notifier::step`] is
/// one pass of it.
#[derive(Clone)]
pub struct Notifier {
    channels: Arc<Vec<Channel>>,
    store: Store,
    policy: RetryPolicy,
    /// `[alerts] notify_give_up_after_secs`.
    give_up_after: chrono::Duration,
    /// `[notify] queue_capacity`: undelivered notifications per channel.
    capacity: usize,
    /// Wakes the delivery loops (new rows were written).
    kick: Arc<tokio::sync::Notify>,
    /// Notifications this relay recorded as given up at once for a full queue.
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("channels", &self.channels())
            .finish()
    }
}

impl Notifier {
    /// Validates `config` and reads its secret files; delivers nothing until [`Notifier::run`].
    /// Errors name the bad key.
    pub fn new(
        config: &NotifyConfig,
        give_up_after_secs: u64,
        store: Store,
    ) -> Result<Notifier, NotifyConfigError> {
        let policy = RetryPolicy {
            max_attempts: config.max_attempts,
            initial_backoff: Duration::from_secs(config.initial_backoff_secs),
            max_backoff: Duration::from_secs(config.max_backoff_secs),
        };
        let channels = config
            .resolve()?
            .into_iter()
            .map(|resolved| {
                let (info, transport, timeout) = Transport::new(resolved);
                Channel {
                    info,
                    transport,
                    timeout,
                    counters: Counters::default(),
                    failing: AtomicBool::new(false),
                }
            })
            .collect();
        Ok(Notifier {
            channels: Arc::new(channels),
            store,
            policy,
            give_up_after: chrono::Duration::seconds(
                i64::try_from(give_up_after_secs).unwrap_or(i64::MAX / 1000),
            ),
            capacity: config.queue_capacity,
            kick: Arc::new(tokio::sync::Notify::new()),
            dropped: Arc::default(),
        })
    }

    /// [`Notifier::new`] plus its delivery loops spawned until `shutdown` (a relay of its own,
    /// or a test; the relay server runs [`Notifier::run`] under the `notify` lease instead).
    pub fn start(
        config: &NotifyConfig,
        give_up_after_secs: u64,
        store: Store,
        shutdown: CancellationToken,
    ) -> Result<Notifier, NotifyConfigError> {
        let notifier = Notifier::new(config, give_up_after_secs, store)?;
        tokio::spawn(notifier.clone().run(shutdown));
        Ok(notifier)
    }

    /// A notifier with no channels: nothing is written or sent.
    pub fn disabled(store: Store) -> Notifier {
        Notifier::new(&NotifyConfig::default(), 86_400, store)
            .expect("the default [notify] section is valid")
    }

    /// The channels as the store routes notifications to them.
    pub fn routes(&self) -> Vec<ChannelRoute> {
        self.channels
            .iter()
            .map(|c| ChannelRoute {
                name: c.info.name.clone(),
                min_severity: c.info.min_severity,
                events: c
                    .info
                    .events
                    .iter()
                    .map(|e| e.as_str().to_string())
                    .collect(),
            })
            .collect()
    }

    /// `[notify] queue_capacity`.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Wakes the delivery loops now (rows were written). Never blocks; a kick while no loop
    /// waits is covered by their polling.
    pub fn kick(&self) {
        self.kick.notify_waiters();
    }

    /// Writes `notification` to the outbox of every channel that subscribes to its kind and
    /// whose `min_severity` it reaches (the alerts engine writes its own inside the
    /// evaluation; this is for callers outside it, such as tests).
    pub async fn queue(&self, notification: Notification) -> Result<(), StoreError> {
        let payload = serde_json::to_string(&notification)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialise a notification: {e}")))?;
        let event = notification.event();
        let severity = notification.severity;
        self.write(
            notification.delivery_id(),
            event,
            Some(notification.alert_id),
            payload,
            |c| severity >= c.info.min_severity,
        )
        .await
    }

    /// Writes a lifecycle event to the outbox of every channel subscribed to its kind
    /// (`min_severity` is about alerts and does not apply).
    pub async fn queue_lifecycle(&self, event: LifecycleEvent) -> Result<(), StoreError> {
        let payload = serde_json::to_string(&event)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialise an event: {e}")))?;
        self.write(event.delivery_id(), event.kind, None, payload, |_| true)
            .await
    }

    async fn write(
        &self,
        delivery_id: String,
        event: NotifyEvent,
        alert_id: Option<String>,
        payload: String,
        accepts: impl Fn(&Channel) -> bool,
    ) -> Result<(), StoreError> {
        let rows: Vec<NewNotification> = self
            .channels
            .iter()
            .filter(|c| c.info.events.contains(&event) && accepts(c))
            .map(|c| NewNotification {
                delivery_id: delivery_id.clone(),
                channel: c.info.name.clone(),
                event: event.as_str().to_string(),
                alert_id: alert_id.clone(),
                payload: payload.clone(),
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let (_, dropped) = self
            .store
            .queue_notifications(rows, self.capacity, crate::store::now())
            .await?;
        self.count_dropped(dropped, &delivery_id);
        self.kick();
        Ok(())
    }

    /// Counts (and warns about) notifications given up at once for a full queue.
    pub fn count_dropped(&self, dropped: usize, what: &str) {
        if dropped == 0 {
            return;
        }
        self.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        tracing::warn!(
            dropped,
            delivery_id = %what,
            "notifications given up at once: their channel's queue is full (notify.queue_capacity)"
        );
    }

    /// Whether any channel subscribes to `event` (so the caller can skip building it).
    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.channels.iter().any(|c| c.info.events.contains(&event))
    }

    /// The configured channels (for a log line at start).
    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.channels.iter().map(|c| c.info.clone()).collect()
    }

    /// Notifications given up at once for a full queue so far.
    pub fn dropped(&self) -> u64 {
        self.stats().dropped
    }

    /// Counters summed over all channels (for `/metrics`).
    pub fn stats(&self) -> NotifyStats {
        let sum = self.channels.iter().map(|c| c.counters.snapshot()).fold(
            NotifyStats::default(),
            |a, b| NotifyStats {
                sent: a.sent + b.sent,
                failed: a.failed + b.failed,
                dropped: 0,
                retries: a.retries + b.retries,
            },
        );
        NotifyStats {
            dropped: self.dropped.load(Ordering::Relaxed),
            ..sum
        }
    }

    /// Counters of each channel (for `/metrics` with a bounded `channel` label).
    pub fn channel_stats(&self) -> Vec<(ChannelInfo, NotifyStats)> {
        self.channels
            .iter()
            .map(|c| (c.info.clone(), c.counters.snapshot()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disabled_notifier_discards() {
        let store = Store::open_for_test();
        let notifier = Notifier::disabled(store.clone());
        notifier.queue(sample(Severity::Hard)).await.unwrap();
        assert!(notifier.channels().is_empty());
        assert!(notifier.routes().is_empty());
        assert_eq!(notifier.stats(), NotifyStats::default());
        let rows = store
            .notifications(crate::model::alerts::outbox::NotificationQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(rows.is_empty(), "{rows:?}");
    }

    #[tokio::test]
    async fn new_refuses_a_bad_config() {
        let config: NotifyConfig = toml::from_str(
            "[[webhooks]]\nname = \"x\"\nurl = \"https://h/\"\nsecret_file = \"/nonexistent/s\"",
        )
        .unwrap();
        let e = Notifier::new(&config, 60, Store::open_for_test())
            .unwrap_err()
            .to_string();
        assert!(e.contains("notify.webhooks[0].secret_file"), "{e}");
    }

    /// A notification for unit tests.
    pub(super) fn sample(severity: Severity) -> Notification {
        Notification {
            alert_id: "alr_test1".into(),
            kind: NotificationKind::Firing,
            rule: "agent_unreachable".into(),
            severity,
            agent_id: Some("agt_1".into()),
            agent_name: Some("web-12".into()),
            agent_labels: [("env", "prod"), ("region", "eu")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            subject: "agent".into(),
            message: "no heartbeat for 3m".into(),
            started_at: "2026-01-02T03:04:05Z".parse().unwrap(),
            resolved_at: None,
            url: "https://relay.example.com/api/v1/alerts/alr_test1".into(),
        }
    }
}
