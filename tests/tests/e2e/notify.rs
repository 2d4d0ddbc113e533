//! Notifications survive a relay crash (issue 18 part 2): a real relay process, an alert
//! raised for real (an enrolled agent that never connects becomes `agent_unreachable`, hard),
//! receivers that refuse (a webhook receiver answering 503, aiosmtpd answering 451), the relay
//! killed -9 while it retries, the receiver recovering, the relay started again on the same
//! data dir: the same delivery id arrives and is accepted once. And the give-up path: a
//! receiver that never recovers, a short give-up time, the `notification_failed` alert on
//! another channel and `GET /api/v1/notifications` showing it.

use crate::DEADLINE;
use flotilla_shared::alert::{AlertInfo, AlertState, NotificationDelivery, NotificationState};
use flotilla_tests::fake_agent;
use flotilla_tests::fixtures::{start_smtp_sink, start_webhook_receiver, Reply, WebhookReceiver};
use flotilla_tests::harness::{eventually, Api, Relay};

const SECRET: &str = "notify-e2e-secret";

/// `[alerts]` for a fast `agent_unreachable` (hard, so notified at once) and `[notify]` retry
/// timing of about a second, plus `channels`.
fn relay_toml(give_up_secs: u64, channels: &str) -> String {
    format!(
        r#"
[alerts]
evaluate_interval_secs = 1
unreachable_intervals = 1
notify_give_up_after_secs = {give_up_secs}

[notify]
initial_backoff_secs = 1
max_backoff_secs = 2
{channels}
"#
    )
}

fn webhook_channel(name: &str, receiver: &WebhookReceiver) -> String {
    format!(
        "[[notify.webhooks]]\nname = \"{name}\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n",
        receiver.url(&format!("/hooks/{name}"))
    )
}

/// The firing `agent_unreachable` alert of `agent`.
async fn wait_unreachable(api: &Api, agent: &str) -> AlertInfo {
    eventually(DEADLINE, "agent_unreachable to fire", || async {
        let alerts: Vec<AlertInfo> = api.get("/api/v1/alerts?state=firing").await.ok()?;
        alerts
            .into_iter()
            .find(|a| a.rule == "agent_unreachable" && a.agent_id.as_deref() == Some(agent))
    })
    .await
}

async fn notifications(api: &Api, query: &str) -> Vec<NotificationDelivery> {
    api.get(&format!("/api/v1/notifications?{query}"))
        .await
        .expect("list notifications")
}

/// Waits until `receiver` saw at least `n` requests carrying `delivery_id`.
async fn wait_attempts(receiver: &WebhookReceiver, delivery_id: &str, n: usize) {
    eventually(
        DEADLINE,
        &format!("{n} attempts of {delivery_id}"),
        || async {
            let seen = receiver
                .requests()
                .iter()
                .filter(|r| r.header("x-flotilla-delivery") == Some(delivery_id))
                .count();
            (seen >= n).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_refused_before_a_relay_crash_is_delivered_once_after_the_restart() {
    let receiver = start_webhook_receiver(Some(SECRET.as_bytes())).expect("webhook receiver");
    receiver.set_default_reply(Reply::Status(503));
    let mut relay =
        Relay::start_with_config(&relay_toml(86_400, &webhook_channel("ops", &receiver)), &[])
            .await;
    let api = relay.api();
    let (agent, _key) = fake_agent::enroll(&relay, "never-connects", "tier=notify").await;
    let alert = wait_unreachable(&api, &agent).await;
    let delivery_id = format!("{}.firing", alert.id);
    assert_eq!(alert.notified_at, None, "refused so far: not notified");

    // Refused and retried: the outbox says so, with the next attempt planned.
    wait_attempts(&receiver, &delivery_id, 2).await;
    let pending = notifications(&api, &format!("alert={}", alert.id)).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].state, NotificationState::Pending);
    assert_eq!(pending[0].delivery_id, delivery_id);
    assert!(
        pending[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("503"),
        "{pending:?}"
    );

    // kill -9 while retrying; the receiver recovers while the relay is down.
    relay.kill().await;
    let before_restart = receiver.requests().len();
    receiver.set_default_reply(Reply::Status(200));
    relay.start_again().await;

    let delivered = eventually(
        DEADLINE,
        "the notification delivered after the restart",
        || async {
            let rows = notifications(&api, &format!("alert={}&state=delivered", alert.id)).await;
            rows.into_iter().next()
        },
    )
    .await;
    assert_eq!(delivered.delivery_id, delivery_id);
    assert!(delivered.attempts as usize > 2, "{delivered:?}");
    let requests = receiver.requests();
    assert!(
        requests.len() > before_restart,
        "nothing sent after the restart"
    );
    let of_alert: Vec<_> = requests
        .iter()
        .filter(|r| r.json().is_ok_and(|j| j["alert_id"] == alert.id))
        .collect();
    assert!(
        of_alert.iter().all(
            |r| r.header("x-flotilla-delivery") == Some(delivery_id.as_str())
                && r.header("webhook-id") == Some(delivery_id.as_str())
                && r.signature_valid == Some(true)
        ),
        "the same delivery id, signed, before and after the crash: {of_alert:?}"
    );
    let accepted = of_alert
        .iter()
        .filter(|r| r.reply == Reply::Status(200))
        .count();
    assert_eq!(accepted, 1, "accepted once: {of_alert:?}");
    let shown: AlertInfo = api
        .get(&format!("/api/v1/alerts/{}", alert.id))
        .await
        .unwrap();
    assert_eq!(shown.state, AlertState::Firing);
    assert!(
        shown.notified_at.is_some(),
        "notified once delivered: {shown:?}"
    );
    // Once delivered, never sent again.
    flotilla_testkit::hold(
        std::time::Duration::from_secs(3),
        "longer than the retry backoff: a delivered notification must not be sent again",
    )
    .await;
    assert_eq!(
        receiver
            .requests()
            .iter()
            .filter(
                |r| r.header("x-flotilla-delivery") == Some(delivery_id.as_str())
                    && r.reply == Reply::Status(200)
            )
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_refused_before_a_relay_crash_arrives_once_after_the_restart() {
    let sink = tokio::task::spawn_blocking(start_smtp_sink)
        .await
        .unwrap()
        .expect("SMTP sink (aiosmtpd)");
    sink.set_refusing(true).unwrap();
    let channel = format!(
        "[[notify.email]]\nname = \"pager\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\n\
         starttls = false\nfrom = \"flotilla@example.com\"\nto = [\"oncall@example.com\"]\n",
        sink.port()
    );
    let mut relay = Relay::start_with_config(&relay_toml(86_400, &channel), &[]).await;
    let api = relay.api();
    let (agent, _key) = fake_agent::enroll(&relay, "mail-never-connects", "tier=notify").await;
    let alert = wait_unreachable(&api, &agent).await;
    let message_id = format!("<{}.firing@example.com>", alert.id);
    eventually(DEADLINE, "two refused e-mail attempts", || async {
        (sink.attempts().iter().filter(|m| **m == message_id).count() >= 2).then_some(())
    })
    .await;
    assert!(
        sink.messages().unwrap().is_empty(),
        "refused messages are not stored"
    );

    relay.kill().await;
    sink.set_refusing(false).unwrap();
    relay.start_again().await;

    let mails = tokio::task::block_in_place(|| sink.wait_for_messages(1, DEADLINE)).unwrap();
    assert_eq!(mails[0].header("message-id"), Some(message_id.as_str()));
    assert!(
        mails[0].subject.contains("agent_unreachable"),
        "{}",
        mails[0].subject
    );
    let delivered = eventually(DEADLINE, "the e-mail recorded as delivered", || async {
        notifications(&api, &format!("alert={}&state=delivered", alert.id))
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(delivered.channel, "pager");
    assert_eq!(delivered.delivery_id, format!("{}.firing", alert.id));
    // Every attempt, before and after the crash, was the same message.
    let attempts = sink.attempts();
    assert!(attempts.len() >= 3, "{attempts:?}");
    assert!(attempts.iter().all(|m| *m == message_id), "{attempts:?}");
    assert_eq!(sink.messages().unwrap().len(), 1, "accepted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_recovers_is_given_up_and_raises_notification_failed() {
    let dead = start_webhook_receiver(Some(SECRET.as_bytes())).expect("webhook receiver");
    dead.set_default_reply(Reply::Status(503));
    let healthy = start_webhook_receiver(Some(SECRET.as_bytes())).expect("webhook receiver");
    let channels = format!(
        "{}{}",
        webhook_channel("dead", &dead),
        webhook_channel("healthy", &healthy)
    );
    let relay = Relay::start_with_config(&relay_toml(4, &channels), &[]).await;
    let api = relay.api();
    let (agent, _key) = fake_agent::enroll(&relay, "given-up", "tier=notify").await;
    let alert = wait_unreachable(&api, &agent).await;

    // The dead channel gives the firing notification up after 4 s of refusals.
    let failed = eventually(DEADLINE, "the notification given up", || async {
        notifications(
            &api,
            &format!("alert={}&channel=dead&state=failed", alert.id),
        )
        .await
        .into_iter()
        .next()
    })
    .await;
    assert_eq!(failed.delivery_id, format!("{}.firing", alert.id));
    assert!(failed.attempts >= 2, "{failed:?}");
    let error = failed.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("notify_give_up_after_secs") && error.contains("503"),
        "{failed:?}"
    );
    assert!(failed.finished_at.is_some() && failed.next_attempt_at.is_none());

    // Its own alert, hard, about the channel; the healthy channel is told.
    let raised = eventually(DEADLINE, "notification_failed to fire", || async {
        let alerts: Vec<AlertInfo> = api.get("/api/v1/alerts?state=firing").await.ok()?;
        alerts
            .into_iter()
            .find(|a| a.rule == "notification_failed" && a.subject == "dead")
    })
    .await;
    assert_eq!(raised.severity, flotilla_shared::alert::Severity::Hard);
    assert!(raised.message.contains(&failed.delivery_id), "{raised:?}");
    let told = eventually(DEADLINE, "the healthy channel told", || async {
        healthy.requests().into_iter().find(|r| {
            r.json()
                .is_ok_and(|j| j["rule"] == "notification_failed" && j["subject"] == "dead")
        })
    })
    .await;
    assert_eq!(told.header("x-flotilla-event"), Some("alert.firing"));
    // The healthy channel got the original alert once, delivered.
    let healthy_rows = notifications(&api, &format!("alert={}&channel=healthy", alert.id)).await;
    assert_eq!(healthy_rows.len(), 1);
    assert_eq!(healthy_rows[0].state, NotificationState::Delivered);
    // The alert counts as notified: delivered on one channel, given up on the other.
    let shown: AlertInfo = api
        .get(&format!("/api/v1/alerts/{}", alert.id))
        .await
        .unwrap();
    assert!(shown.notified_at.is_some(), "{shown:?}");
    // A bad filter is a clear 400.
    let e = api
        .get::<Vec<NotificationDelivery>>("/api/v1/notifications?state=lost")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown state"), "{e:#}");
}
