//! Delivery from the outbox (see the module doc of `notify`): one loop per channel that
//! claims the channel's due notifications one at a time (in `next_attempt_at` order, so a
//! resolution follows its firing), sends each outside any store transaction, and records how
//! the attempt ended. [`Notifier::step`] is one pass over every channel at a given time;
//! [`Notifier::run`] loops it per channel until shutdown, waking when a row is due, when the
//! deciding code kicks it, and at least every [`POLL`] (rows written by another relay).

use super::{
    email, loggable_url, slack, webhook, Channel, ChannelInfo, Notification, Notifier, NotifyEvent,
};
use crate::config::notify::ResolvedChannel;
use crate::model::alerts::outbox::{AttemptOutcome, Claimed};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use webhook::Outgoing;

/// Longest wait between two looks at a channel's outbox when nothing is due sooner.
pub(super) const POLL: Duration = Duration::from_secs(1);

/// The outcome of one delivery attempt.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Attempt {
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

pub(super) enum Transport {
    Webhook(Box<webhook::WebhookTransport>),
    Slack(slack::SlackTransport),
    Email(Box<email::EmailTransport>),
}

impl Transport {
    /// The channel's description, its transport and the longest one attempt can take.
    pub(super) fn new(resolved: ResolvedChannel) -> (ChannelInfo, Transport, Duration) {
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
                Duration::from_secs(timeout_secs),
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
                Duration::from_secs(timeout_secs),
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
                Duration::from_secs(timeout_secs),
            ),
        }
    }

    /// One attempt. Cancel-safe: dropping the future abandons the attempt (the receiver may or
    /// may not have got it; the delivery id lets it deduplicate the retry).
    async fn attempt(&self, out: &Outgoing<'_>) -> Attempt {
        let alert = || -> Result<Notification, Attempt> {
            if out.event != NotifyEvent::AlertFiring.as_str()
                && out.event != NotifyEvent::AlertResolved.as_str()
            {
                // Slack and e-mail channels only subscribe to alerts (their config has no
                // `events`), so the relay never writes a lifecycle event for them.
                return Err(Attempt::GiveUp {
                    error: "this channel does not deliver lifecycle events".into(),
                });
            }
            serde_json::from_slice(out.body).map_err(|e| Attempt::GiveUp {
                error: format!("the stored notification does not parse: {e}"),
            })
        };
        match self {
            Transport::Webhook(t) => t.attempt(out).await,
            Transport::Slack(t) => match alert() {
                Ok(n) => t.attempt(out.delivery_id, &n).await,
                Err(refused) => refused,
            },
            Transport::Email(t) => match alert() {
                Ok(n) => t.attempt(&n).await,
                Err(refused) => refused,
            },
        }
    }
}

/// Backoff between attempts of one notification.
#[derive(Clone, Copy, Debug)]
pub(super) struct RetryPolicy {
    /// 0: no limit (only the give-up time ends the retries).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Wait after `failed_attempts` failures (≥ 1): `initial × 2^(n-1)` capped at the maximum,
    /// the upper half random (`random` is a uniform u64); a receiver's `Retry-After` replaces
    /// it, capped at the maximum too.
    pub(super) fn delay(
        &self,
        failed_attempts: u32,
        retry_after: Option<Duration>,
        random: u64,
    ) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.max_backoff);
        }
        let doublings = failed_attempts.saturating_sub(1).min(31);
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32 << doublings)
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

/// The decision after a failed attempt (pure): retry at a time no later than the give-up
/// deadline, or give up once the deadline has passed or the attempts ran out.
pub(super) fn after_failure(
    policy: &RetryPolicy,
    give_up_after: chrono::Duration,
    claimed: &Claimed,
    now: DateTime<Utc>,
    error: String,
    retry_after: Option<Duration>,
    random: u64,
) -> AttemptOutcome {
    let deadline = claimed.created_at + give_up_after;
    if now >= deadline {
        return AttemptOutcome::Failed {
            error: format!(
                "not delivered within notify_give_up_after_secs ({}s): {error}",
                give_up_after.num_seconds()
            ),
        };
    }
    if policy.max_attempts > 0 && claimed.attempt >= policy.max_attempts {
        return AttemptOutcome::Failed {
            error: format!("given up after {} attempts: {error}", claimed.attempt),
        };
    }
    let wait = policy.delay(claimed.attempt, retry_after, random);
    let at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    AttemptOutcome::Retry {
        at: at.min(deadline),
        error,
    }
}

impl Notifier {
    /// One pass at `now`: every channel delivers what is due (one at a time per channel,
    /// channels side by side). Returns how many attempts were made.
    pub async fn step(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let passes = (0..self.channels.len()).map(|i| self.step_channel(i, now));
        let mut made = 0;
        for result in futures_util::future::join_all(passes).await {
            made += result?;
        }
        Ok(made)
    }

    /// Runs one delivery loop per channel until `shutdown`. Not cancel-safe within an
    /// attempt: a cancelled attempt's row stays claimed until its claim runs out, then it is
    /// retried (its receiver may see the delivery id twice).
    pub async fn run(self, shutdown: CancellationToken) {
        let loops = (0..self.channels.len()).map(|i| self.run_channel(i, shutdown.clone()));
        futures_util::future::join_all(loops).await;
    }

    async fn run_channel(&self, index: usize, shutdown: CancellationToken) {
        let channel = &self.channels[index];
        loop {
            // Registered before looking, so a kick during the pass is not lost.
            let kicked = self.kick.notified();
            tokio::pin!(kicked);
            kicked.as_mut().enable();
            let now = crate::store::now();
            let made = tokio::select! {
                _ = shutdown.cancelled() => break,
                made = self.step_channel(index, now) => made,
            };
            let wait = match made {
                Ok(n) if n > 0 => continue,
                Ok(_) => match self
                    .store
                    .next_notification_due(channel.info.name.clone())
                    .await
                {
                    Ok(Some(at)) => (at - crate::store::now())
                        .to_std()
                        .unwrap_or_default()
                        .min(POLL),
                    Ok(None) | Err(_) => POLL,
                },
                Err(_) => POLL,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
                () = &mut kicked => {}
            }
        }
    }

    /// Claims and attempts `channel`'s notifications due at `now`, one at a time, until none
    /// is due. Returns the attempts made.
    async fn step_channel(&self, index: usize, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let channel = &self.channels[index];
        let result = self.deliver_due(channel, now).await;
        match &result {
            Ok(_) => {
                if channel.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(channel = %channel.info.name, "notification outbox readable again");
                }
            }
            Err(StoreError::Fenced { .. }) => {}
            Err(e) => {
                if !channel.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        channel = %channel.info.name,
                        error = %e,
                        "cannot read or update the notification outbox; retrying"
                    );
                }
            }
        }
        result
    }

    async fn deliver_due(
        &self,
        channel: &Channel,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        // A claim outlasts the attempt (connect + answer, each up to the timeout) with room to
        // record it; a relay killed mid-attempt leaves the row due again after it.
        let claim_for = channel.timeout * 3 + Duration::from_secs(5);
        let claim_for = chrono::Duration::from_std(claim_for).unwrap_or(chrono::Duration::MAX);
        let mut made = 0;
        loop {
            // `now` only decides what is due: the first pass of a step takes what was due at
            // `now`, later ones what became due while attempting.
            let at = if made == 0 {
                now
            } else {
                crate::store::now().max(now)
            };
            let Some(claimed) = self
                .store
                .claim_notifications(channel.info.name.clone(), at, at + claim_for, 1)
                .await?
                .pop()
            else {
                return Ok(made);
            };
            made += 1;
            let outcome = self.attempt(channel, &claimed).await;
            let finished_at = crate::store::now().max(at);
            self.store
                .finish_notification(claimed, outcome, finished_at)
                .await?;
        }
    }

    /// One attempt of a claimed notification, logged and counted; the outcome to record.
    async fn attempt(&self, channel: &Channel, claimed: &Claimed) -> AttemptOutcome {
        let out = Outgoing {
            delivery_id: &claimed.delivery_id,
            event: &claimed.event,
            body: claimed.payload.as_bytes(),
        };
        let info = &channel.info;
        let counters = &channel.counters;
        let (event, delivery_id, attempt) = (&claimed.event, &claimed.delivery_id, claimed.attempt);
        match channel.transport.attempt(&out).await {
            Attempt::Delivered => {
                counters.sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(channel = %info.name, %event, %delivery_id, attempt, "notification delivered");
                AttemptOutcome::Delivered
            }
            Attempt::GiveUp { error } => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    channel = %info.name,
                    target = %info.target,
                    %event,
                    %delivery_id,
                    attempt,
                    %error,
                    "notification refused by the receiver; not retried"
                );
                AttemptOutcome::Failed { error }
            }
            Attempt::Retry { error, retry_after } => {
                let now = crate::store::now();
                let random = flotilla_shared::ids::random_u64();
                let outcome = after_failure(
                    &self.policy,
                    self.give_up_after,
                    claimed,
                    now,
                    error.clone(),
                    retry_after,
                    random,
                );
                match &outcome {
                    AttemptOutcome::Failed { error } => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            channel = %info.name,
                            target = %info.target,
                            %event,
                            %delivery_id,
                            attempts = attempt,
                            %error,
                            "notification given up"
                        );
                    }
                    AttemptOutcome::Retry { at, .. } => {
                        counters.retries.fetch_add(1, Ordering::Relaxed);
                        let retry_in_ms = (*at - now).num_milliseconds().max(0);
                        if attempt == 1 {
                            tracing::warn!(
                                channel = %info.name,
                                target = %info.target,
                                %event,
                                %delivery_id,
                                %error,
                                retry_in_ms,
                                "notification attempt failed; retrying with backoff"
                            );
                        } else {
                            tracing::debug!(
                                channel = %info.name,
                                %event,
                                %delivery_id,
                                attempt,
                                %error,
                                retry_in_ms,
                                "notification attempt failed again"
                            );
                        }
                    }
                    AttemptOutcome::Delivered => {}
                }
                outcome
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

    #[test]
    fn a_failure_retries_until_the_give_up_time_or_the_last_attempt() {
        let policy = RetryPolicy {
            max_attempts: 0,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        };
        let t0: DateTime<Utc> = "2026-12-08T00:00:00Z".parse().unwrap();
        let claimed = |attempt| Claimed {
            delivery_id: "alr_1.firing".into(),
            channel: "ops".into(),
            event: "alert.firing".into(),
            alert_id: Some("alr_1".into()),
            payload: "{}".into(),
            attempt,
            created_at: t0,
        };
        let hour = chrono::Duration::hours(1);
        let secs = chrono::Duration::seconds;
        // Early: retried after the backoff (attempt 1: 0.5 to 1 s).
        let o = after_failure(&policy, hour, &claimed(1), t0, "HTTP 503".into(), None, 0);
        assert_eq!(
            o,
            AttemptOutcome::Retry {
                at: t0 + chrono::Duration::milliseconds(500),
                error: "HTTP 503".into()
            }
        );
        // A retry is never later than the deadline.
        let o = after_failure(
            &policy,
            hour,
            &claimed(30),
            t0 + secs(3590),
            "x".into(),
            None,
            0,
        );
        assert_eq!(
            o,
            AttemptOutcome::Retry {
                at: t0 + hour,
                error: "x".into()
            }
        );
        // At the deadline: given up, saying why.
        let AttemptOutcome::Failed { error } = after_failure(
            &policy,
            hour,
            &claimed(31),
            t0 + hour,
            "HTTP 503".into(),
            None,
            0,
        ) else {
            panic!("not given up at the deadline");
        };
        assert!(
            error.contains("notify_give_up_after_secs (3600s): HTTP 503"),
            "{error}"
        );
        // With an attempt limit, the last attempt ends it early.
        let limited = RetryPolicy {
            max_attempts: 3,
            ..policy
        };
        let o = after_failure(&limited, hour, &claimed(3), t0, "HTTP 503".into(), None, 0);
        assert!(
            matches!(o, AttemptOutcome::Failed { ref error } if error.contains("after 3 attempts")),
            "{o:?}"
        );
        assert!(matches!(
            after_failure(&limited, hour, &claimed(2), t0, "e".into(), None, 0),
            AttemptOutcome::Retry { .. }
        ));
    }
}
