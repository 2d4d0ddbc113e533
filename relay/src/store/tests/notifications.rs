//! The notification outbox (`store/notifications.rs`), on both backends: written with the
//! alert decision, claimed once, retried, given up, delivered; two claimers never share a row.

use super::*;
use crate::model::alerts::outbox::{
    AttemptOutcome, ChannelRoute, Claimed, DeliveryState, NewNotification, NotificationQuery,
    OutboxPolicy,
};
use crate::model::alerts::rules::{Condition, Rule};
use crate::model::alerts::AlertPolicy;
use flotilla_shared::alert::Severity;

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn route(name: &str) -> ChannelRoute {
    ChannelRoute {
        name: name.into(),
        min_severity: Severity::Medium,
        events: vec!["alert.firing".into(), "alert.resolved".into()],
    }
}

fn policy(at: DateTime<Utc>, channels: &[&str]) -> AlertPolicy {
    AlertPolicy {
        outbox: OutboxPolicy {
            routes: channels.iter().map(|c| route(c)).collect(),
            url_prefix: "https://relay.example/api/v1/alerts/".into(),
            capacity: 100,
        },
        now: at,
        medium_after: secs(300),
        held: Vec::new(),
    }
}

fn unreachable(agent: &str) -> Condition {
    Condition {
        agent_id: Some(agent.into()),
        agent_name: Some(agent.into()),
        agent_labels: Labels::new(),
        rule: Rule::AgentUnreachable,
        subject: "agent".into(),
        severity: Severity::Hard,
        message: format!("{agent} is unreachable"),
        since: None,
    }
}

async fn rows(store: &Store, state: Option<DeliveryState>) -> Vec<NotificationDelivery> {
    store
        .notifications(NotificationQuery {
            state,
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn claim(store: &Store, channel: &str, at: DateTime<Utc>) -> Option<Claimed> {
    store
        .claim_notifications(channel.into(), at, at + secs(30), 1)
        .await
        .unwrap()
        .pop()
}

use flotilla_shared::alert::NotificationDelivery;

#[tokio::test]
async fn a_decided_notification_is_claimed_retried_and_delivered_once_per_channel() {
    let store = Store::open_for_test();
    let t0 = now();
    let applied = store
        .apply_alert_conditions(vec![unreachable("agt_1")], policy(t0, &["ops", "mail"]))
        .await
        .unwrap();
    assert_eq!((applied.notify.len(), applied.queued), (1, 2));
    let alert_id = applied.notify[0].1.id.clone();
    assert_eq!(
        applied.notify[0].1.notified_at, None,
        "decided, not delivered"
    );
    // Written in the evaluation's transaction, one row per channel, same delivery id.
    let pending = rows(&store, Some(DeliveryState::Pending)).await;
    assert_eq!(pending.len(), 2, "{pending:?}");
    let delivery_id = format!("{alert_id}.firing");
    assert!(pending.iter().all(|r| r.delivery_id == delivery_id
        && r.alert_id.as_deref() == Some(alert_id.as_str())
        && r.event == "alert.firing"
        && r.attempts == 0));
    // The next evaluation decides nothing again.
    let again = store
        .apply_alert_conditions(
            vec![unreachable("agt_1")],
            policy(t0 + secs(15), &["ops", "mail"]),
        )
        .await
        .unwrap();
    assert_eq!((again.notify.len(), again.queued), (0, 0));

    // Claimed once: the claim moves its next attempt forward.
    let first = claim(&store, "ops", t0).await.expect("due");
    assert_eq!(
        (first.attempt, first.delivery_id.as_str()),
        (1, delivery_id.as_str())
    );
    let payload: serde_json::Value = serde_json::from_str(&first.payload).unwrap();
    assert_eq!(payload["alert_id"], alert_id);
    assert_eq!(
        payload["url"],
        format!("https://relay.example/api/v1/alerts/{alert_id}")
    );
    assert!(
        claim(&store, "ops", t0 + secs(1)).await.is_none(),
        "claimed"
    );
    // Retried later.
    let retry = AttemptOutcome::Retry {
        at: t0 + secs(10),
        error: "HTTP 503".into(),
    };
    assert!(store
        .finish_notification(first.clone(), retry, t0)
        .await
        .unwrap());
    assert!(
        claim(&store, "ops", t0 + secs(9)).await.is_none(),
        "not due yet"
    );
    let second = claim(&store, "ops", t0 + secs(10))
        .await
        .expect("due again");
    assert_eq!(second.attempt, 2);
    // The first attempt can no longer finish it.
    assert!(!store
        .finish_notification(first, AttemptOutcome::Delivered, t0 + secs(11))
        .await
        .unwrap());
    assert!(store
        .finish_notification(second, AttemptOutcome::Delivered, t0 + secs(11))
        .await
        .unwrap());
    let alert = store.alert(alert_id.clone()).await.unwrap().unwrap();
    assert_eq!(alert.notified_at, None, "still pending on mail");

    // The other channel gives up: the alert counts as notified, the channel as failing.
    let mail = claim(&store, "mail", t0 + secs(12))
        .await
        .expect("mail due");
    let failed = AttemptOutcome::Failed {
        error: "not delivered within notify_give_up_after_secs (60s): 451".into(),
    };
    assert!(store
        .finish_notification(mail, failed, t0 + secs(13))
        .await
        .unwrap());
    let alert = store.alert(alert_id.clone()).await.unwrap().unwrap();
    assert_eq!(
        alert.notified_at.map(|t| t.timestamp()),
        Some((t0 + secs(13)).timestamp())
    );
    let all = rows(&store, None).await;
    let by_channel = |c: &str| all.iter().find(|r| r.channel == c).unwrap().clone();
    let ops = by_channel("ops");
    assert_eq!((ops.state, ops.attempts), (DeliveryState::Delivered, 2));
    assert_eq!(
        ops.last_error.as_deref(),
        Some("HTTP 503"),
        "kept after delivery"
    );
    assert!(ops.next_attempt_at.is_none() && ops.finished_at.is_some());
    let mail = by_channel("mail");
    assert_eq!((mail.state, mail.attempts), (DeliveryState::Failed, 1));
    let failures = store.notification_failures().await.unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(
        (failures[0].channel.as_str(), failures[0].failed),
        ("mail", 1)
    );
    assert_eq!(failures[0].latest_delivery_id, delivery_id);
    assert!(failures[0].latest_error.contains("451"), "{failures:?}");

    // The resolution is decided for both channels; once mail delivers, it is healthy again.
    let resolved = store
        .apply_alert_conditions(Vec::new(), policy(t0 + secs(20), &["ops", "mail"]))
        .await
        .unwrap();
    assert_eq!((resolved.notify.len(), resolved.queued), (1, 2));
    let mail = claim(&store, "mail", t0 + secs(20))
        .await
        .expect("resolution due");
    assert_eq!(mail.delivery_id, format!("{alert_id}.resolved"));
    store
        .finish_notification(mail, AttemptOutcome::Delivered, t0 + secs(21))
        .await
        .unwrap();
    assert!(store.notification_failures().await.unwrap().is_empty());
    let of_alert = store
        .notifications(NotificationQuery {
            alert_id: Some(alert_id),
            channel: Some("mail".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(of_alert.len(), 2, "{of_alert:?}");
}

#[tokio::test]
async fn two_claimers_never_get_the_same_notification() {
    let store = Store::open_for_test();
    let t0 = now();
    let rows: Vec<NewNotification> = (0..24)
        .map(|i| NewNotification {
            delivery_id: format!("evt_{i}.agent.enrolled"),
            channel: "ops".into(),
            event: "agent.enrolled".into(),
            alert_id: None,
            payload: "{}".into(),
        })
        .collect();
    assert_eq!(
        store
            .queue_notifications(rows.clone(), 100, t0)
            .await
            .unwrap(),
        (24, 0)
    );
    // Deciding the same notifications again changes nothing.
    assert_eq!(
        store.queue_notifications(rows, 100, t0).await.unwrap(),
        (0, 0)
    );
    let claimer = |store: Store| async move {
        let mut got = Vec::new();
        loop {
            let batch = store
                .claim_notifications("ops".into(), t0, t0 + secs(60), 2)
                .await
                .unwrap();
            if batch.is_empty() {
                return got;
            }
            got.extend(batch.into_iter().map(|c| c.delivery_id));
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(claimer(store.clone())),
        tokio::spawn(claimer(store.clone()))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut all: Vec<_> = a.iter().chain(&b).cloned().collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a row claimed twice: {a:?} {b:?}");
    assert_eq!(all.len(), 24);
    // A claim that ran out (its claimer died mid-attempt) is due again, as the next attempt.
    let again = store
        .claim_notifications("ops".into(), t0 + secs(61), t0 + secs(90), 100)
        .await
        .unwrap();
    assert_eq!(again.len(), 24);
    assert!(again.iter().all(|c| c.attempt == 2));
}

#[tokio::test]
async fn a_full_channel_gives_new_notifications_up_at_once_and_pruning_forgets_old_ones() {
    let store = Store::open_for_test();
    let t0 = now();
    let row = |i: u32, channel: &str| NewNotification {
        delivery_id: format!("evt_{i}.agent.revoked"),
        channel: channel.into(),
        event: "agent.revoked".into(),
        alert_id: None,
        payload: "{}".into(),
    };
    let (queued, dropped) = store
        .queue_notifications(
            vec![row(1, "ops"), row(2, "ops"), row(3, "ops"), row(3, "other")],
            2,
            t0,
        )
        .await
        .unwrap();
    assert_eq!((queued, dropped), (4, 1));
    let failed = rows(&store, Some(DeliveryState::Failed)).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].delivery_id.as_str(), failed[0].channel.as_str()),
        ("evt_3.agent.revoked", "ops")
    );
    assert_eq!(
        failed[0].last_error.as_deref(),
        Some(sql::notifications::QUEUE_FULL)
    );
    assert_eq!(
        store
            .next_notification_due("ops".into())
            .await
            .unwrap()
            .map(|t| t.timestamp()),
        Some(t0.timestamp())
    );
    // Retention: finished rows and stale pending ones (a channel no longer configured) go.
    store.prune_alerts(t0 + secs(1)).await.unwrap();
    assert!(rows(&store, None).await.is_empty());
    assert_eq!(
        store.next_notification_due("ops".into()).await.unwrap(),
        None
    );
}
