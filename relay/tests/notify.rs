//! Alert notifications delivered from the outbox of a real store to real receivers on
//! loopback: a webhook receiver that checks the HMAC signature and can fail, throttle or hang
//! on cue, and aiosmtpd as an SMTP sink; and lifecycle webhooks from a real in-process relay
//! with scripted agents.

mod support;

use flotilla_relay_server::embed::notify::{
    webhook, Notification, NotificationKind, Notifier, NotifyConfig, NotifyStats,
};
use flotilla_relay_server::embed::Store;
use flotilla_shared::alert::Severity;
use flotilla_tests::fixtures::{start_smtp_sink, start_webhook_receiver, Reply, WebhookReceiver};
use flotilla_tests::harness::eventually;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "hook-secret";
const WAIT: Duration = Duration::from_secs(20);

fn notification(id: &str, severity: Severity) -> Notification {
    Notification {
        alert_id: id.to_string(),
        kind: NotificationKind::Firing,
        rule: "agent_unreachable".into(),
        severity,
        agent_id: Some("agt_web12".into()),
        agent_name: Some("web-12".into()),
        agent_labels: [("env", "prod"), ("region", "eu")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        subject: "agent".into(),
        message: "no heartbeat for 3m".into(),
        started_at: "2026-01-02T03:04:05Z".parse().unwrap(),
        resolved_at: None,
        url: format!("https://relay.example.com/api/v1/alerts/{id}"),
    }
}

/// A `[[webhooks]]` entry for `receiver`.
fn webhook_entry(name: &str, receiver: &WebhookReceiver, extra: &str) -> String {
    format!(
        "[[webhooks]]\nname = \"{name}\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n{extra}\n",
        receiver.url(&format!("/hooks/{name}"))
    )
}

/// Starts a notifier from `[notify]` TOML over a fresh in-memory store (give-up time: a day);
/// the returned token stops it when dropped.
fn start(toml_text: &str) -> (Notifier, tokio_util::sync::DropGuard) {
    let config: NotifyConfig = toml::from_str(toml_text).expect("test config parses");
    let shutdown = CancellationToken::new();
    let store = Store::open_in_memory().expect("in-memory store");
    let notifier =
        Notifier::start(&config, 86_400, store, shutdown.clone()).expect("notifier starts");
    (notifier, shutdown.drop_guard())
}

/// Writes `n` to the notifier's outbox (what the alerts engine does inside its evaluation).
async fn queue(notifier: &Notifier, n: Notification) {
    notifier.queue(n).await.expect("written to the outbox");
}

/// Waits (blocking this worker only) for `count` requests at `receiver`.
fn requests(
    receiver: &WebhookReceiver,
    count: usize,
) -> Vec<flotilla_tests::fixtures::ReceivedRequest> {
    tokio::task::block_in_place(|| receiver.wait_for_requests(count, WAIT)).unwrap()
}

async fn stats_reach(notifier: &Notifier, what: &str, check: impl Fn(NotifyStats) -> bool) {
    eventually(WAIT, what, || async {
        let stats = notifier.stats();
        check(stats).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gets_signed_json_filtered_by_severity() {
    let receiver = start_webhook_receiver(Some(SECRET.as_bytes())).unwrap();
    let (notifier, _stop) = start(&webhook_entry("ops", &receiver, ""));
    assert_eq!(notifier.channels().len(), 1);
    assert_eq!(notifier.channels()[0].kind, "webhook");

    // Below the channel's min_severity (medium): never sent.
    queue(&notifier, notification("alr_soft", Severity::Soft)).await;
    let firing = notification("alr_one", Severity::Hard);
    queue(&notifier, firing.clone()).await;
    let mut resolved = firing.clone();
    resolved.kind = NotificationKind::Resolved;
    resolved.resolved_at = Some("2026-01-02T04:00:00Z".parse().unwrap());
    queue(&notifier, resolved.clone()).await;

    let got = requests(&receiver, 2);
    for (request, expected, event) in [
        (&got[0], &firing, "alert.firing"),
        (&got[1], &resolved, "alert.resolved"),
    ] {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hooks/ops");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("x-flotilla-event"), Some(event));
        assert_eq!(request.signature_valid, Some(true), "{request:?}");
        // The relay's own verifier agrees with the receiver's independent check.
        assert!(webhook::verify(
            SECRET.as_bytes(),
            request.header("x-flotilla-timestamp").unwrap(),
            &request.body,
            request.header("x-flotilla-signature").unwrap(),
        ));
        assert_eq!(
            request.json().unwrap(),
            serde_json::to_value(expected).unwrap()
        );
        let delivery = format!("{}.{}", expected.alert_id, expected.kind.as_str());
        assert_eq!(
            request.header("x-flotilla-delivery"),
            Some(delivery.as_str()),
            "stable per (alert, kind)"
        );
    }
    assert_ne!(
        got[0].header("x-flotilla-delivery"),
        got[1].header("x-flotilla-delivery"),
        "each notification has its own delivery id"
    );
    stats_reach(&notifier, "two sent", |s| s.sent == 2).await;
    assert_eq!(receiver.requests().len(), 2, "the soft alert was not sent");
    assert_eq!(
        notifier.stats(),
        NotifyStats {
            sent: 2,
            ..NotifyStats::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_with_the_same_delivery_id() {
    let receiver = start_webhook_receiver(Some(SECRET.as_bytes())).unwrap();
    receiver.script([Reply::Status(503), Reply::Status(503)]);
    let (notifier, _stop) = start(&webhook_entry("ops", &receiver, ""));
    queue(&notifier, notification("alr_retry", Severity::Hard)).await;

    let got = requests(&receiver, 3);
    stats_reach(&notifier, "delivered after two 503s", |s| s.sent == 1).await;
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.header("x-flotilla-delivery").unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        vec![ids[0].clone(); 3],
        "the same delivery id on every attempt"
    );
    assert!(got.iter().all(|r| r.signature_valid == Some(true)));
    assert_eq!(
        got.iter().map(|r| r.reply.clone()).collect::<Vec<_>>(),
        [Reply::Status(503), Reply::Status(503), Reply::Status(200)]
    );
    // Backoff: 0.5-1 s, then 1-2 s.
    assert!(got[1].received_at - got[0].received_at >= Duration::from_millis(450));
    assert!(got[2].received_at - got[1].received_at >= Duration::from_millis(950));
    assert_eq!(
        notifier.stats(),
        NotifyStats {
            sent: 1,
            retries: 2,
            ..NotifyStats::default()
        }
    );
    assert_eq!(receiver.requests().len(), 3, "delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_honours_retry_after_and_attempts_run_out() {
    let receiver = start_webhook_receiver(Some(SECRET.as_bytes())).unwrap();
    receiver.set_default_reply(Reply::StatusRetryAfter(429, 0));
    let (notifier, _stop) = start(&format!(
        "max_attempts = 3\n{}",
        webhook_entry("ops", &receiver, "")
    ));
    queue(&notifier, notification("alr_throttled", Severity::Hard)).await;
    stats_reach(&notifier, "given up after 3 attempts", |s| s.failed == 1).await;
    assert_eq!(receiver.requests().len(), 3);
    // The next notification gets its own budget: it is not blocked by the failed one.
    receiver.set_default_reply(Reply::Status(200));
    queue(&notifier, notification("alr_next", Severity::Hard)).await;
    stats_reach(&notifier, "the next one sent", |s| s.sent == 1).await;
    assert_eq!(
        requests(&receiver, 4)[3].json().unwrap()["alert_id"],
        "alr_next"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried() {
    let receiver = start_webhook_receiver(Some(SECRET.as_bytes())).unwrap();
    receiver.script([Reply::Status(400)]);
    let (notifier, _stop) = start(&webhook_entry("ops", &receiver, ""));
    queue(&notifier, notification("alr_bad", Severity::Hard)).await;
    stats_reach(&notifier, "given up", |s| s.failed == 1).await;
    queue(&notifier, notification("alr_good", Severity::Hard)).await;
    stats_reach(&notifier, "the next one sent", |s| s.sent == 1).await;
    let got = receiver.requests();
    assert_eq!(got.len(), 2, "the 400 was not retried: {got:?}");
    assert_eq!(got[0].json().unwrap()["alert_id"], "alr_bad");
    assert_eq!(got[1].json().unwrap()["alert_id"], "alr_good");
    assert_eq!(notifier.stats().retries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_times_out_and_does_not_delay_other_channels() {
    let hanging = start_webhook_receiver(Some(SECRET.as_bytes())).unwrap();
    hanging.set_default_reply(Reply::NoAnswer);
    let fast = start_webhook_receiver(None).unwrap();
    let (notifier, _stop) = start(&format!(
        "{}{}",
        webhook_entry("slow", &hanging, "timeout_secs = 3"),
        format_args!(
            "[[slack]]\nname = \"chat\"\nurl = \"{}\"\n",
            fast.url("/services/T0/B0/TOKEN")
        )
    ));
    let sent_at = Instant::now();
    queue(&notifier, notification("alr_hol", Severity::Hard)).await;

    let got = requests(&fast, 1);
    assert!(
        got[0].received_at - sent_at < Duration::from_millis(2500),
        "the Slack channel waited for the hanging webhook"
    );
    // The Slack-compatible body: one readable line, then labels and the link.
    let text = got[0].json().unwrap()["text"].as_str().unwrap().to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].ends_with("[HARD] agent_unreachable on web-12: no heartbeat for 3m"),
        "{text}"
    );
    assert!(lines[1].contains("env=prod, region=eu"), "{text}");
    assert!(
        lines[1].contains("https://relay.example.com/api/v1/alerts/alr_hol"),
        "{text}"
    );

    // The hanging webhook: its first attempt times out after 3 s, then it is retried.
    let attempts = requests(&hanging, 2);
    assert!(got[0].received_at < attempts[0].received_at + Duration::from_secs(2));
    assert!(attempts[1].received_at - attempts[0].received_at >= Duration::from_millis(3400));
    assert_eq!(
        attempts[0].header("x-flotilla-delivery"),
        attempts[1].header("x-flotilla-delivery")
    );
    let per_channel = notifier.channel_stats();
    assert_eq!(per_channel[0].0.name, "slow");
    assert_eq!(per_channel[0].1.sent, 0);
    assert!(per_channel[0].1.retries >= 1);
    assert_eq!(per_channel[1].0.name, "chat");
    assert_eq!(
        per_channel[1].0.target,
        fast.url(""),
        "logged without the token"
    );
    assert_eq!(per_channel[1].1.sent, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_without_blocking() {
    let hanging = start_webhook_receiver(Some(SECRET.as_bytes())).unwrap();
    hanging.set_default_reply(Reply::NoAnswer);
    let (notifier, _stop) = start(&format!(
        "queue_capacity = 1\n{}",
        webhook_entry("slow", &hanging, "timeout_secs = 60")
    ));
    let started = Instant::now();
    for i in 0..10 {
        queue(&notifier, notification(&format!("alr_{i}"), Severity::Hard)).await;
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "writing to the outbox waited for the receiver: {:?}",
        started.elapsed()
    );
    // One undelivered (in flight); the nine after it were given up at once.
    assert_eq!(notifier.dropped(), 9);
    requests(&hanging, 1);
    assert_eq!(notifier.stats().sent, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_reaches_an_smtp_sink() {
    let sink = tokio::task::spawn_blocking(start_smtp_sink)
        .await
        .unwrap()
        .unwrap();
    let (notifier, _stop) = start(&format!(
        "[[email]]\nname = \"mail\"\nsmtp_host = \"{}\"\nsmtp_port = {}\nstarttls = false\n\
         from = \"Flotilla <alerts@example.com>\"\n\
         to = [\"ops@example.com\", \"Pager <pager@example.com>\"]\n",
        sink.host(),
        sink.port()
    ));
    assert_eq!(
        notifier.channels()[0].target,
        format!("smtp://{}:{}", sink.host(), sink.port())
    );
    let firing = notification("alr_mail", Severity::Hard);
    queue(&notifier, firing.clone()).await;
    let mut resolved = firing;
    resolved.kind = NotificationKind::Resolved;
    resolved.resolved_at = Some("2026-01-02T04:00:00Z".parse().unwrap());
    queue(&notifier, resolved).await;
    let mails = tokio::task::block_in_place(|| sink.wait_for_messages(2, WAIT)).unwrap();
    stats_reach(&notifier, "two e-mails sent", |s| s.sent == 2).await;

    let (first, second) = (&mails[0], &mails[1]);
    assert_eq!(first.mail_from, "alerts@example.com");
    assert_eq!(first.rcpt_tos, ["ops@example.com", "pager@example.com"]);
    assert_eq!(
        first.subject,
        "[flotilla HARD] agent_unreachable on web-12: no heartbeat for 3m"
    );
    for needle in [
        "Alert:     alr_mail",
        "Rule:      agent_unreachable",
        "Severity:  hard",
        "Agent:     web-12 (agt_web12)",
        "Labels:    env=prod, region=eu",
        "Link:      https://relay.example.com/api/v1/alerts/alr_mail",
    ] {
        assert!(
            first.body.contains(needle),
            "{needle:?} not in {}",
            first.body
        );
    }
    assert_eq!(
        first.header("message-id"),
        Some("<alr_mail.firing@example.com>")
    );
    assert_eq!(
        second.subject,
        "[flotilla HARD] RESOLVED agent_unreachable on web-12: no heartbeat for 3m"
    );
    assert_eq!(
        second.header("in-reply-to"),
        Some("<alr_mail.firing@example.com>")
    );
    assert!(second.body.contains("Resolved:  2026-01-02T04:00:00+00:00"));
}

// === lifecycle webhooks, from a real relay ===

/// A Standard Webhooks secret (`whsec_` + base64 of `flotilla-test-key-0123456789abcd`).
const WHSEC: &str = "whsec_ZmxvdGlsbGEtdGVzdC1rZXktMDEyMzQ1Njc4OWFiY2Q=";

/// Checks both signatures of a request: the receiver's independent check of the
/// `X-Flotilla-*` ones, and the Standard Webhooks headers with the relay's verifier.
fn assert_signed(request: &flotilla_tests::fixtures::ReceivedRequest, secret: &str) {
    assert_eq!(request.signature_valid, Some(true), "{request:?}");
    let id = request.header("webhook-id").expect("webhook-id");
    assert_eq!(Some(id), request.header("x-flotilla-delivery"));
    let ts = request
        .header("webhook-timestamp")
        .expect("webhook-timestamp");
    assert_eq!(Some(ts), request.header("x-flotilla-timestamp"));
    let signature = request
        .header("webhook-signature")
        .expect("webhook-signature");
    assert!(signature.starts_with("v1,"), "{signature}");
    assert!(
        webhook::verify_standard(secret.as_bytes(), id, ts, &request.body, signature),
        "{request:?}"
    );
    assert!(!webhook::verify_standard(
        b"another secret",
        id,
        ts,
        &request.body,
        signature
    ));
}

/// Enrolls a scripted agent called `name` through the relay's API.
async fn enroll(relay: &support::TestRelay, name: &str) -> flotilla_testkit::agent::ScriptedAgent {
    let token = relay
        .enrollment_token(&flotilla_shared::api::CreateEnrollmentToken::default())
        .await;
    let key = flotilla_shared::signing::SigningKey::generate();
    let enrolled = flotilla_testkit::agent::enroll(
        &relay.http,
        &relay.base,
        token,
        name,
        Default::default(),
        &key,
    )
    .await
    .unwrap();
    flotilla_testkit::agent::ScriptedAgent::new(enrolled.agent_id, key, "t")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_webhooks_get_agent_events_signed_both_ways() {
    let life = start_webhook_receiver(Some(WHSEC.as_bytes())).unwrap();
    let alerts = start_webhook_receiver(Some(SECRET.as_bytes())).unwrap();
    let notify: NotifyConfig = toml::from_str(&format!(
        "[[webhooks]]\nname = \"life\"\nurl = \"{}\"\nsecret = \"{WHSEC}\"\n\
         events = [\"agent.enrolled\", \"agent.revoked\", \"agent.offline\"]\n{}",
        life.url("/hooks/life"),
        webhook_entry("alerts", &alerts, "")
    ))
    .unwrap();
    // Offline grace (and agent_unreachable): 1 heartbeat interval of 1 s.
    let relay = support::TestRelay::in_process("notify-lifecycle")
        .config(|c| {
            c.notify = notify;
            c.heartbeat_interval_secs = 1;
            c.alerts.unreachable_intervals = 1;
            c.alerts.evaluate_interval_secs = 1;
        })
        .start()
        .await;

    // `blip` disconnects and reconnects at once: no agent.offline; later it is revoked.
    let mut blip = enroll(&relay, "blip").await;
    blip.connect(&relay.ws_url()).await.unwrap();
    blip.reconnect_as(&relay.ws_url(), "t").await.unwrap();
    // `gone` disconnects for good: agent.offline after the grace.
    let mut gone = enroll(&relay, "gone").await;
    gone.connect(&relay.ws_url()).await.unwrap();
    gone.disconnect().await;

    let got = requests(&life, 3);
    let events: Vec<(&str, String)> = got
        .iter()
        .map(|r| {
            let body = r.json().unwrap();
            assert_eq!(body["type"], r.header("x-flotilla-event").unwrap());
            assert!(body["timestamp"].is_string(), "{body}");
            (
                r.header("x-flotilla-event").unwrap(),
                body["data"]["agent_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        events.contains(&("agent.enrolled", blip.id.clone())),
        "{events:?}"
    );
    assert!(
        events.contains(&("agent.enrolled", gone.id.clone())),
        "{events:?}"
    );
    assert!(
        events.contains(&("agent.offline", gone.id.clone())),
        "{events:?}"
    );

    let revoked = relay
        .http
        .delete(format!("{}/api/v1/agents/{}", relay.base, blip.id))
        .bearer_auth(&relay.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let got = requests(&life, 4);
    let last = got[3].json().unwrap();
    assert_eq!(got[3].header("x-flotilla-event"), Some("agent.revoked"));
    assert_eq!(last["data"]["agent_id"], blip.id);
    assert_eq!(last["data"]["kind"], "agent.revoked");
    for request in &got {
        assert_signed(request, WHSEC);
        let id = request.header("x-flotilla-delivery").unwrap();
        assert!(
            id.starts_with("evt_")
                && id.ends_with(&format!(".{}", request.header("x-flotilla-event").unwrap())),
            "{id}"
        );
    }

    // The channel without `events` gets alerts only: `gone` becomes unreachable. Had it
    // subscribed to agent.enrolled, that would have been queued before the alert.
    let alert = requests(&alerts, 1);
    assert_eq!(alert[0].header("x-flotilla-event"), Some("alert.firing"));
    assert_eq!(alert[0].json().unwrap()["rule"], "agent_unreachable");
    assert_signed(&alert[0], SECRET);
    // The revoked agent's disconnect and the blip are no agent.offline; no alert went to the
    // lifecycle channel.
    flotilla_testkit::hold(
        Duration::from_secs(2),
        "longer than the offline grace after the revocation: no agent.offline may follow",
    )
    .await;
    let got = life.requests();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(alerts
        .requests()
        .iter()
        .all(|r| r.header("x-flotilla-event").unwrap().starts_with("alert.")));
}

#[tokio::test]
async fn an_unknown_event_name_stops_the_relay_naming_it() {
    let dir = flotilla_testkit::temp_dir("notify-bad-event");
    let mut config = flotilla_relay_server::config::RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    config.notify = toml::from_str(
        "[[webhooks]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"s\"\n\
         events = [\"agent.enrolled\", \"agent.exploded\"]",
    )
    .unwrap();
    let e = flotilla_relay_server::start(config)
        .await
        .err()
        .expect("the relay refuses to start")
        .to_string();
    assert!(e.contains("notify.webhooks[0].events[1]"), "{e}");
    assert!(e.contains("\"agent.exploded\""), "{e}");
    assert!(e.contains("agent.offline"), "{e}");
}
