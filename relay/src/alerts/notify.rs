//! Notifications of alerts, and of fleet lifecycle events: a generic JSON webhook (HMAC-SHA256
//! signed, in Flotilla's own scheme and in the Standard Webhooks one), a Slack-compatible
//! webhook and e-mail over SMTP. Queued, retried with backoff, never blocking the caller.
//!
//! INTERFACE CONTRACT (used by the alerts engine; keep these names and fields):
//! - [`NotifyConfig`]: the `[notify]` section of relay.toml (`RelayConfig::notify`).
//! - [`Notification`]: what the engine hands over, once when an alert starts notifying and once
//!   when a notified alert resolves.
//! - [`Notifier::start`] spawns the delivery task(s); [`Notifier::send`] never blocks or awaits.
//!
//! # Design
//!
//! The engine decides WHEN an alert notifies; this module only delivers. Every configured
//! channel (one webhook, one Slack URL, one SMTP server with its recipients) gets its own bounded
//! queue (`queue_capacity`) and its own task, so a slow SMTP server never delays a webhook.
//! [`Notifier::send`] filters by each channel's `min_severity` and `try_send`s into the
//! channel queues; a full queue drops the notification for that channel, counts it and logs a
//! warning naming the alert: the relay never waits for a receiver.
//!
//! A channel task delivers its queue in order. Each notification has its own attempt budget
//! (`max_attempts`): connection errors, timeouts, HTTP 5xx / 408 / 429 and transient SMTP
//! replies are retried after `initial_backoff_secs × 2^(attempt-1)` (capped at
//! `max_backoff_secs`, half of it random jitter; an HTTP `Retry-After` in seconds is honoured
//! up to `max_backoff_secs`); any other HTTP 4xx and permanent SMTP replies (5xx) are given up at
//! once. A notification that is given up is logged as an error and counted as failed; the
//! next one in the queue then gets its turn. Only the first failed attempt of a notification
//! is logged as a warning, later ones at debug, so a dead receiver does not flood the log.
//! Notifications still queued when the relay shuts down are lost (logged).
//!
//! # At most once per (alert, kind)
//!
//! From the relay's side each alert is notified at most once firing and at most once resolved:
//! the engine commits `notified_at` (and the resolution) in the evaluation's transaction
//! BEFORE it hands the notification to [`Notifier::send`], so no later evaluation, and no
//! restart, can decide the same notification again. The relay prefers never notifying twice to
//! the opposite: what is lost on a crash or shutdown is whatever was still queued (decided and
//! committed, not yet delivered), and a notification given up after its attempts. Retries of
//! one queued notification may reach a receiver more than once (an answer lost after it was
//! processed); the `X-Flotilla-Delivery` id, `<alert_id>.<firing|resolved>`, is stable per
//! (alert, kind), even across relay restarts, so receivers de-duplicate on it.
//!
//! # Lifecycle events
//!
//! A generic webhook whose `events` lists them also receives `agent.enrolled`,
//! `agent.revoked`, `agent.offline`, `update.finished`, `rollout.finished` and
//! `backup.failed` ([`NotifyEvent`]; without `events` a channel gets `alert.firing` and
//! `alert.resolved` only, as before). One task reads the live event bus and decides them
//! ([`lifecycle`], which also says why `agent.offline` waits for the unreachable grace); they
//! go through the same per-channel queues, attempts and backoff as alerts
//! ([`Notifier::send_lifecycle`]). Their body is the Standard Webhooks payload shape,
//! [`LifecycleEvent`]: `{"type": "agent.enrolled", "timestamp": "<RFC 3339>", "data": {...}}`
//! with the fleet event's fields in `data`; their delivery id is `evt_<fleet event id>.<type>`.
//! Unlike alerts they are not recorded before they are queued: what a lagging bus subscriber
//! skips (counted, see [`lifecycle`]) or a restart interrupts is lost (a durable outbox is
//! issue #18). Slack and e-mail channels have no `events` and receive alerts only.
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
//! | `X-Flotilla-Delivery` | `<alert_id>.<firing|resolved>`: stable per (alert, kind) (dedup); `evt_<id>.<type>` for lifecycle events |
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
//! `POST <url>` with `{"text": "<one line>\n<labels and link>"}`, which Slack, Mattermost,
//! Rocket.Chat and Discord's `/slack` endpoint all accept.
//!
//! # E-mail
//!
//! One plain-text message per notification to all of the channel's recipients, subject
//! `[flotilla HARD] agent_unreachable on web-12: <message>`, with a `Message-ID` derived from
//! (alert id, kind) so a resolution threads under its firing message (`In-Reply-To`).

mod email;
mod http;
pub mod lifecycle;
mod slack;
pub mod webhook;

pub use crate::config::notify::{
    loggable_url, EmailConfig, InlineSecret, NotifyConfig, NotifyConfigError, NotifyEvent,
    SlackConfig, SmtpSecurity, WebhookConfig,
};
pub use crate::model::alerts::NotificationKind;
pub use lifecycle::LifecycleEvent;

use crate::config::notify::ResolvedChannel;
use chrono::{DateTime, Utc};
use flotilla_shared::alert::Severity;
use flotilla_shared::selector::Labels;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One alert notification (the JSON body of the generic webhook is exactly this, serialised).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Link-friendly alert id (`alr_...`), stable across firing → resolved.
    pub alert_id: String,
    /// Firing or resolved.
    pub kind: NotificationKind,
    /// Rule name, e.g. `agent_unreachable`, `disk_full`.
    pub rule: String,
    /// The alert's severity (channels skip alerts below their `min_severity`).
    pub severity: Severity,
    /// None for alerts not about one agent (e.g. a TLS endpoint).
    pub agent_id: Option<String>,
    /// The agent's name (host name) when the alert is about one agent.
    pub agent_name: Option<String>,
    /// The agent's labels (empty when there is no agent).
    pub agent_labels: Labels,
    /// What the alert is about on that agent: container name, filesystem, backup key, ...
    pub subject: String,
    /// One sentence for people.
    pub message: String,
    /// When the condition started.
    pub started_at: DateTime<Utc>,
    /// Set for `resolved`.
    pub resolved_at: Option<DateTime<Utc>>,
    /// `<public_url>/api/v1/alerts/<alert_id>` (the relay's configured public URL).
    pub url: String,
}

impl Notification {
    /// `alert.firing` or `alert.resolved`.
    pub fn event(&self) -> NotifyEvent {
        match self.kind {
            NotificationKind::Firing => NotifyEvent::AlertFiring,
            NotificationKind::Resolved => NotifyEvent::AlertResolved,
        }
    }

    /// Where the alert is: the agent's name, else its id, else the alert's subject.
    pub fn location(&self) -> &str {
        self.agent_name
            .as_deref()
            .or(self.agent_id.as_deref())
            .unwrap_or(&self.subject)
    }

    /// The `X-Flotilla-Delivery` id: `<alert_id>.<firing|resolved>`, stable per (alert, kind)
    /// across retries and relay restarts.
    pub fn delivery_id(&self) -> String {
        format!("{}.{}", self.alert_id, self.kind.as_str())
    }

    /// The agent's labels as `k=v, k=v` (empty when there are none).
    pub fn labels_text(&self) -> String {
        self.agent_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// === impl Notifier ===

/// Delivery counters of one channel or of all of them (monotonic, for `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotifyStats {
    /// Notifications the receiver accepted.
    pub sent: u64,
    /// Notifications given up: refused (HTTP 4xx, permanent SMTP error) or out of attempts.
    pub failed: u64,
    /// Notifications dropped because the channel's queue was full (or the relay shutting down).
    pub dropped: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> NotifyStats {
        NotifyStats {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
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

/// What one queued delivery carries.
#[derive(Clone, Debug)]
pub(crate) enum Payload {
    Alert(Arc<Notification>),
    Lifecycle(Arc<LifecycleEvent>),
}

impl Payload {
    fn event(&self) -> NotifyEvent {
        match self {
            Payload::Alert(n) => n.event(),
            Payload::Lifecycle(e) => e.kind,
        }
    }

    /// The `X-Flotilla-Event` value.
    pub(crate) fn event_name(&self) -> &'static str {
        self.event().as_str()
    }

    /// The generic webhook's body.
    pub(crate) fn json(&self) -> serde_json::Result<Vec<u8>> {
        match self {
            Payload::Alert(n) => serde_json::to_vec(n.as_ref()),
            Payload::Lifecycle(e) => serde_json::to_vec(e.as_ref()),
        }
    }
}

/// One notification on its way through one channel's queue.
struct Queued {
    /// `X-Flotilla-Delivery` and `webhook-id`: [`Notification::delivery_id`] or
    /// [`LifecycleEvent::delivery_id`], the same on every attempt.
    delivery_id: String,
    payload: Payload,
}

struct Channel {
    info: ChannelInfo,
    queue: mpsc::Sender<Queued>,
    counters: Arc<Counters>,
}

/// Hands notifications to the channel tasks. Cheap to clone; the tasks end when the shutdown
/// token is cancelled or every clone is dropped.
#[derive(Clone)]
pub struct Notifier {
    channels: Arc<Vec<Channel>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("channels", &self.channels())
            .finish()
    }
}

impl Notifier {
    /// Validates `config`, reads its secret files and spawns one delivery task per channel on
    /// the current tokio runtime (must be called inside one). Errors name the bad key.
    pub fn start(
        config: &NotifyConfig,
        shutdown: CancellationToken,
    ) -> Result<Notifier, NotifyConfigError> {
        let policy = RetryPolicy {
            max_attempts: config.max_attempts,
            initial_backoff: Duration::from_secs(config.initial_backoff_secs),
            max_backoff: Duration::from_secs(config.max_backoff_secs),
        };
        let mut channels = Vec::new();
        for resolved in config.resolve()? {
            let (info, transport) = Transport::new(resolved);
            let (queue, receiver) = mpsc::channel(config.queue_capacity);
            let counters = Arc::new(Counters::default());
            tokio::spawn(run_channel(
                info.clone(),
                transport,
                receiver,
                policy,
                counters.clone(),
                shutdown.clone(),
            ));
            channels.push(Channel {
                info,
                queue,
                counters,
            });
        }
        Ok(Notifier {
            channels: Arc::new(channels),
        })
    }

    /// A notifier with no channels: every notification is discarded (tests, `dev`, or a relay
    /// without a `[notify]` section).
    pub fn disabled() -> Notifier {
        Notifier {
            channels: Arc::new(Vec::new()),
        }
    }

    /// Queues `notification` for every channel that subscribes to its kind (by default every
    /// channel does) and whose `min_severity` it reaches. Never blocks or awaits: a channel
    /// whose queue is full drops it (counted in [`Notifier::dropped`], logged as a warning with
    /// the delivery id).
    pub fn send(&self, notification: Notification) {
        let severity = notification.severity;
        let delivery_id = notification.delivery_id();
        self.enqueue(
            delivery_id,
            Payload::Alert(Arc::new(notification)),
            |c: &Channel| severity >= c.info.min_severity,
        );
    }

    /// Queues a lifecycle event for every channel subscribed to its kind (`min_severity` is
    /// about alerts and does not apply). Never blocks or awaits, like [`Notifier::send`].
    pub fn send_lifecycle(&self, event: LifecycleEvent) {
        let delivery_id = event.delivery_id();
        self.enqueue(delivery_id, Payload::Lifecycle(Arc::new(event)), |_| true);
    }

    /// Whether any channel subscribes to `event` (so the caller can skip building it).
    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.channels.iter().any(|c| c.info.events.contains(&event))
    }

    fn enqueue(&self, delivery_id: String, payload: Payload, accepts: impl Fn(&Channel) -> bool) {
        let event = payload.event();
        for channel in self
            .channels
            .iter()
            .filter(|c| c.info.events.contains(&event) && accepts(c))
        {
            let queued = Queued {
                delivery_id: delivery_id.clone(),
                payload: payload.clone(),
            };
            match channel.queue.try_send(queued) {
                Ok(()) => {}
                Err(e) => {
                    channel.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    let reason = match e {
                        mpsc::error::TrySendError::Full(_) => "its queue is full",
                        mpsc::error::TrySendError::Closed(_) => "the relay is shutting down",
                    };
                    tracing::warn!(
                        channel = %channel.info.name,
                        delivery_id = %delivery_id,
                        event = event.as_str(),
                        "notification dropped for this channel: {reason}"
                    );
                }
            }
        }
    }

    /// The configured channels (for a log line at start).
    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.channels.iter().map(|c| c.info.clone()).collect()
    }

    /// Notifications dropped so far because a queue was full, over all channels.
    pub fn dropped(&self) -> u64 {
        self.stats().dropped
    }

    /// Counters summed over all channels (for `/metrics`).
    pub fn stats(&self) -> NotifyStats {
        self.channels
            .iter()
            .map(|c| c.counters.snapshot())
            .fold(NotifyStats::default(), |a, b| NotifyStats {
                sent: a.sent + b.sent,
                failed: a.failed + b.failed,
                dropped: a.dropped + b.dropped,
                retries: a.retries + b.retries,
            })
    }

    /// Counters of each channel (for `/metrics` with a bounded `channel` label).
    pub fn channel_stats(&self) -> Vec<(ChannelInfo, NotifyStats)> {
        self.channels
            .iter()
            .map(|c| (c.info.clone(), c.counters.snapshot()))
            .collect()
    }
}

// === delivery ===

/// The outcome of one delivery attempt.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Delivered,
    /// Worth trying again (connection error, timeout, 5xx, 429, transient SMTP reply).
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The receiver refused it for good (other 4xx, permanent SMTP reply, unbuildable message).
    GiveUp {
        error: String,
    },
}

enum Transport {
    Webhook(Box<webhook::WebhookTransport>),
    Slack(slack::SlackTransport),
    Email(Box<email::EmailTransport>),
}

impl Transport {
    fn new(resolved: ResolvedChannel) -> (ChannelInfo, Transport) {
        match resolved {
            ResolvedChannel::Webhook {
                name,
                url,
                secret,
                min_severity,
                timeout_secs,
                events,
            } => (
                ChannelInfo {
                    name,
                    kind: "webhook",
                    target: loggable_url(&url),
                    min_severity,
                    events,
                },
                Transport::Webhook(Box::new(webhook::WebhookTransport::new(
                    url,
                    &secret,
                    Duration::from_secs(timeout_secs),
                ))),
            ),
            ResolvedChannel::Slack {
                name,
                url,
                min_severity,
                timeout_secs,
            } => (
                ChannelInfo {
                    name,
                    kind: "slack",
                    target: loggable_url(&url),
                    min_severity,
                    events: NotifyEvent::DEFAULT.to_vec(),
                },
                Transport::Slack(slack::SlackTransport::new(
                    url,
                    Duration::from_secs(timeout_secs),
                )),
            ),
            ResolvedChannel::Email {
                name,
                host,
                port,
                security,
                credentials,
                from,
                to,
                min_severity,
                timeout_secs,
            } => (
                ChannelInfo {
                    name,
                    kind: "email",
                    target: format!("smtp://{host}:{port}"),
                    min_severity,
                    events: NotifyEvent::DEFAULT.to_vec(),
                },
                Transport::Email(Box::new(email::EmailTransport::new(
                    &host,
                    port,
                    security,
                    credentials,
                    from,
                    to,
                    Duration::from_secs(timeout_secs),
                ))),
            ),
        }
    }

    /// One attempt. Cancel-safe: dropping the future abandons the attempt (the receiver may or
    /// may not have got it; the delivery id lets it deduplicate a later retry).
    async fn attempt(&self, queued: &Queued) -> Attempt {
        match (self, &queued.payload) {
            (Transport::Webhook(t), payload) => t.attempt(&queued.delivery_id, payload).await,
            (Transport::Slack(t), Payload::Alert(n)) => t.attempt(n).await,
            (Transport::Email(t), Payload::Alert(n)) => t.attempt(n).await,
            // Slack and e-mail channels only subscribe to alerts (their config has no
            // `events`), so the notifier never queues a lifecycle event for them.
            (Transport::Slack(_) | Transport::Email(_), Payload::Lifecycle(_)) => Attempt::GiveUp {
                error: "this channel does not deliver lifecycle events".into(),
            },
        }
    }
}

/// Backoff between attempts of one notification.
#[derive(Clone, Copy, Debug)]
struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl RetryPolicy {
    /// Wait after `failed_attempts` failures (≥ 1): `initial × 2^(n-1)` capped at the maximum,
    /// the upper half random (`random` is a uniform u64); a receiver's `Retry-After` replaces
    /// it, capped at the maximum too.
    fn delay(&self, failed_attempts: u32, retry_after: Option<Duration>, random: u64) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.max_backoff);
        }
        let doublings = failed_attempts.saturating_sub(1).min(32);
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max_backoff);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_millis() as u64;
        half + Duration::from_millis(if spread == 0 {
            0
        } else {
            random % (spread + 1)
        })
    }
}

/// One channel's task: delivers its queue in order until shutdown or until the notifier is
/// dropped.
async fn run_channel(
    info: ChannelInfo,
    transport: Transport,
    mut queue: mpsc::Receiver<Queued>,
    policy: RetryPolicy,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    loop {
        let queued = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = queue.recv() => match next {
                Some(queued) => queued,
                None => return,
            },
        };
        let finished = tokio::select! {
            _ = shutdown.cancelled() => false,
            () = deliver(&info, &transport, &queued, policy, &counters) => true,
        };
        if !finished {
            // The one in flight is lost too.
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    let pending = queue.len();
    if pending > 0 {
        counters
            .dropped
            .fetch_add(pending as u64, Ordering::Relaxed);
        tracing::warn!(
            channel = %info.name,
            pending,
            "relay shutting down: queued notifications were not delivered"
        );
    }
}

/// Tries one notification until it is delivered, refused or out of attempts.
async fn deliver(
    info: &ChannelInfo,
    transport: &Transport,
    queued: &Queued,
    policy: RetryPolicy,
    counters: &Counters,
) {
    let event = queued.payload.event_name();
    let mut attempt = 1;
    loop {
        match transport.attempt(queued).await {
            Attempt::Delivered => {
                counters.sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    channel = %info.name,
                    event,
                    delivery_id = %queued.delivery_id,
                    attempt,
                    "notification delivered"
                );
                return;
            }
            Attempt::GiveUp { error } => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    channel = %info.name,
                    target = %info.target,
                    event,
                    delivery_id = %queued.delivery_id,
                    attempt,
                    %error,
                    "notification refused by the receiver; not retried"
                );
                return;
            }
            Attempt::Retry { error, retry_after } => {
                if attempt >= policy.max_attempts {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        channel = %info.name,
                        target = %info.target,
                        event,
                        delivery_id = %queued.delivery_id,
                        attempts = attempt,
                        %error,
                        "notification given up after its last attempt"
                    );
                    return;
                }
                counters.retries.fetch_add(1, Ordering::Relaxed);
                let wait = policy.delay(attempt, retry_after, flotilla_shared::ids::random_u64());
                if attempt == 1 {
                    tracing::warn!(
                        channel = %info.name,
                        target = %info.target,
                        event,
                        delivery_id = %queued.delivery_id,
                        %error,
                        retry_in_ms = wait.as_millis() as u64,
                        "notification attempt failed; retrying with backoff"
                    );
                } else {
                    tracing::debug!(
                        channel = %info.name,
                        event,
                        attempt,
                        %error,
                        retry_in_ms = wait.as_millis() as u64,
                        "notification attempt failed again"
                    );
                }
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let policy = RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        };
        let check = |failed, random, expected_ms| {
            assert_eq!(
                policy.delay(failed, None, random),
                Duration::from_millis(expected_ms),
                "failed={failed} random={random}"
            );
        };
        check(1, 0, 500);
        check(1, 500, 1000);
        check(1, 501, 500);
        check(2, 0, 1000);
        check(2, 1000, 2000);
        check(3, 0, 2000);
        check(4, 0, 2500); // capped at 5 s: 2.5 s to 5 s
        check(4, 2500, 5000);
        check(40, u64::MAX, 2500 + u64::MAX % 2501);
        // Retry-After replaces the backoff, capped at the maximum.
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(3)), 7),
            Duration::from_secs(3)
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(3600)), 7),
            Duration::from_secs(5)
        );
    }

    #[tokio::test]
    async fn disabled_notifier_discards() {
        let notifier = Notifier::disabled();
        notifier.send(sample(Severity::Hard));
        assert!(notifier.channels().is_empty());
        assert_eq!(notifier.stats(), NotifyStats::default());
    }

    #[tokio::test]
    async fn start_refuses_a_bad_config() {
        let config: NotifyConfig = toml::from_str(
            "[[webhooks]]\nname = \"x\"\nurl = \"https://h/\"\nsecret_file = \"/nonexistent/s\"",
        )
        .unwrap();
        let e = Notifier::start(&config, CancellationToken::new())
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
