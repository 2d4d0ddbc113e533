//! Store lifecycle of alerts (real SQLite, in memory): fire, dedup, resolve, re-fire as a new
//! alert, ack, silence, medium delay, no double notification.

use super::*;
use crate::store::Store;
use flotilla_shared::alert::{AlertState, Severity, Silence};
use flotilla_shared::selector::Labels;

fn cond(agent: &str, rule: Rule, subject: &str, severity: Severity, labels: &Labels) -> Condition {
    Condition {
        agent_id: Some(agent.into()),
        agent_name: Some(format!("{agent}-name")),
        agent_labels: labels.clone(),
        rule,
        subject: subject.into(),
        severity,
        message: format!("{} on {agent}", rule.as_str()),
        since: None,
    }
}

fn policy(now: DateTime<Utc>) -> AlertPolicy {
    AlertPolicy {
        outbox: Default::default(),
        now,
        medium_after: chrono::Duration::seconds(300),
        held: Vec::new(),
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

#[tokio::test]
async fn lifecycle_fire_dedup_resolve_refire() {
    let store = Store::open_for_test();
    let eu: Labels = [("region".to_string(), "eu".to_string())].into();
    let hard = cond("a", Rule::AgentUnreachable, "agent", Severity::Hard, &eu);
    let medium = cond("a", Rule::DiskFull, "/", Severity::Medium, &eu);
    let soft = cond(
        "a",
        Rule::AgentVersionSkew,
        "agent_version",
        Severity::Soft,
        &eu,
    );

    let r = store
        .apply_alert_conditions(
            vec![hard.clone(), medium.clone(), soft.clone(), hard.clone()],
            policy(at(0)),
        )
        .await
        .unwrap();
    assert_eq!(r.fired, 3, "a duplicate condition is one alert");
    assert_eq!(r.firing, [1, 1, 1]);
    // Hard notifies at once; medium waits; soft never.
    assert_eq!(r.notify.len(), 1);
    assert_eq!(r.notify[0].0, NotificationKind::Firing);
    assert_eq!(r.notify[0].1.rule, "agent_unreachable");
    let hard_id = r.notify[0].1.id.clone();
    assert!(hard_id.starts_with("alr_"));

    // Still present: no new rows, no second notification; medium becomes due after 300 s.
    let r = store
        .apply_alert_conditions(
            vec![hard.clone(), medium.clone(), soft.clone()],
            policy(at(100)),
        )
        .await
        .unwrap();
    assert_eq!((r.fired, r.resolved, r.notify.len()), (0, 0, 0));
    let r = store
        .apply_alert_conditions(
            vec![hard.clone(), medium.clone(), soft.clone()],
            policy(at(300)),
        )
        .await
        .unwrap();
    assert_eq!(r.notify.len(), 1);
    assert_eq!(r.notify[0].1.rule, "disk_full");

    // The hard condition clears: resolved, and its resolution notified (it was notified).
    let r = store
        .apply_alert_conditions(vec![medium.clone(), soft.clone()], policy(at(400)))
        .await
        .unwrap();
    assert_eq!(r.resolved, 1);
    assert_eq!(r.notify.len(), 1);
    assert_eq!(r.notify[0].0, NotificationKind::Resolved);
    assert_eq!(r.notify[0].1.id, hard_id);
    let a = store.alert(hard_id.clone()).await.unwrap().unwrap();
    assert_eq!(a.state, AlertState::Resolved);
    assert_eq!(a.resolved_at, Some(at(400)));
    assert_eq!(a.agent_labels, eu);

    // The soft alert resolves without a notification (never notified).
    let r = store
        .apply_alert_conditions(vec![medium.clone(), hard.clone()], policy(at(500)))
        .await
        .unwrap();
    assert_eq!(r.resolved, 1);
    assert_eq!(r.fired, 1, "the hard key fires again");
    assert_eq!(r.notify.len(), 1);
    assert_eq!(r.notify[0].0, NotificationKind::Firing);
    assert_ne!(r.notify[0].1.id, hard_id, "a re-fire is a new alert");

    let firing = store
        .alerts(AlertQuery {
            state: Some(AlertState::Firing),
            limit: 100,
            ..AlertQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(firing.len(), 2);
    let hard_only = store
        .alerts(AlertQuery {
            severity: Some(Severity::Hard),
            limit: 100,
            ..AlertQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(hard_only.len(), 2, "the resolved and the new one");
    assert_eq!(hard_only[0].state, AlertState::Firing, "firing first");
}

#[tokio::test]
async fn ack_and_silence_stop_notifications() {
    let store = Store::open_for_test();
    let eu: Labels = [("region".to_string(), "eu".to_string())].into();
    let us: Labels = [("region".to_string(), "us".to_string())].into();
    let now = crate::store::now();
    store
        .create_silence(Silence {
            id: "sil_1".into(),
            selector: "region=eu".parse().unwrap(),
            rule: Some("disk_full".into()),
            subject: None,
            starts_at: now - chrono::Duration::minutes(1),
            ends_at: now + chrono::Duration::hours(1),
            created_by: "admin".into(),
            created_at: now,
            comment: "maintenance".into(),
        })
        .await
        .unwrap();
    let silenced = cond("a", Rule::DiskFull, "/", Severity::Hard, &eu);
    let other = cond("b", Rule::DiskFull, "/", Severity::Medium, &us);
    let r = store
        .apply_alert_conditions(vec![silenced.clone(), other.clone()], policy(now))
        .await
        .unwrap();
    assert!(r.notify.is_empty(), "silenced hard and not yet due medium");
    let all = store
        .alerts(AlertQuery {
            limit: 10,
            ..AlertQuery::default()
        })
        .await
        .unwrap();
    let s = all
        .iter()
        .find(|a| a.agent_id.as_deref() == Some("a"))
        .unwrap();
    assert!(s.silenced);
    assert_eq!(s.silence_id.as_deref(), Some("sil_1"));
    let o = all
        .iter()
        .find(|a| a.agent_id.as_deref() == Some("b"))
        .unwrap()
        .clone();
    assert!(!o.silenced);

    // Ack the other before it is due: never notified, and resolving does not notify either.
    let acked = store
        .ack_alert(o.id.clone(), "ops".into(), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acked.acknowledged_by.as_deref(), Some("ops"));
    assert_eq!(acked.state, AlertState::Firing, "ack does not resolve");
    assert!(store
        .ack_alert("alr_nope".into(), "ops".into(), now)
        .await
        .unwrap()
        .is_none());
    let later = now + chrono::Duration::minutes(10);
    let r = store
        .apply_alert_conditions(vec![silenced.clone(), other.clone()], policy(later))
        .await
        .unwrap();
    assert!(r.notify.is_empty());

    // The silence ends: the hard alert notifies at the next evaluation.
    assert!(store.end_silence("sil_1".into(), later).await.unwrap());
    assert!(!store.end_silence("sil_1".into(), later).await.unwrap());
    assert!(store.silences(later).await.unwrap().is_empty());
    let r = store
        .apply_alert_conditions(vec![silenced.clone(), other.clone()], policy(later))
        .await
        .unwrap();
    assert_eq!(r.notify.len(), 1);
    assert_eq!(r.notify[0].1.agent_id.as_deref(), Some("a"));
    assert!(!r.notify[0].1.silenced);

    // Pruning keeps firing alerts.
    let r = store
        .apply_alert_conditions(vec![], policy(later))
        .await
        .unwrap();
    assert_eq!(r.resolved, 2);
    assert_eq!(
        store
            .prune_alerts(later - chrono::Duration::seconds(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .prune_alerts(later + chrono::Duration::seconds(1))
            .await
            .unwrap(),
        2
    );
}

#[test]
fn urls_and_unreachable_after() {
    let mut config = RelayConfig::default();
    assert_eq!(unreachable_after(&config), Duration::from_secs(180));
    assert_eq!(
        alert_url(&config, "alr_1"),
        "http://127.0.0.1:8700/api/v1/alerts/alr_1"
    );
    config.alerts.public_url = "https://relay.example.com/".into();
    assert_eq!(
        alert_url(&config, "alr_1"),
        "https://relay.example.com/api/v1/alerts/alr_1"
    );
}

#[test]
fn rules_wait_for_their_sources_after_a_start() {
    let after = Duration::from_secs(180);
    assert_eq!(
        held_rules(Duration::from_secs(10), after, false),
        vec![
            Rule::AgentUnreachable,
            Rule::AgentVersionSkew,
            Rule::TlsExpiry
        ]
    );
    assert_eq!(
        held_rules(Duration::from_secs(10), after, true),
        vec![Rule::AgentUnreachable, Rule::AgentVersionSkew]
    );
    assert_eq!(held_rules(after, after, false), vec![Rule::TlsExpiry]);
    assert!(held_rules(after, after, true).is_empty());
    // The TLS cache is ready after its first round of checks.
    let tls = tls::TlsResults::default();
    assert!(!tls.ready());
    tls.store(Vec::new());
    assert!(tls.ready());
}

#[tokio::test]
async fn a_restart_keeps_held_rules_firing_without_refiring() {
    let store = Store::open_for_test();
    let none = Labels::new();
    let unreachable = cond("a", Rule::AgentUnreachable, "agent", Severity::Hard, &none);
    let tls = Condition {
        agent_id: None,
        ..cond(
            "",
            Rule::TlsExpiry,
            "relay.example.com:443",
            Severity::Hard,
            &none,
        )
    };
    let disk = cond("a", Rule::DiskFull, "/", Severity::Hard, &none);
    let r = store
        .apply_alert_conditions(
            vec![unreachable.clone(), tls.clone(), disk.clone()],
            policy(at(0)),
        )
        .await
        .unwrap();
    assert_eq!(r.fired, 3);
    let ids: Vec<String> = r.notify.iter().map(|(_, a)| a.id.clone()).collect();

    // The relay restarted: the held rules' sources report nothing yet. Their alerts stay
    // firing (same ids, no notification); a rule that is not held resolves as usual; a new
    // condition of a held rule waits.
    let held = AlertPolicy {
        held: vec![
            Rule::AgentUnreachable,
            Rule::AgentVersionSkew,
            Rule::TlsExpiry,
        ],
        ..policy(at(600))
    };
    let skew = cond(
        "b",
        Rule::AgentVersionSkew,
        "agent_version",
        Severity::Soft,
        &none,
    );
    let r = store
        .apply_alert_conditions(vec![skew.clone()], held.clone())
        .await
        .unwrap();
    assert_eq!((r.fired, r.resolved), (0, 1), "only disk_full resolves");
    assert_eq!(r.firing, [0, 0, 2]);
    assert_eq!(r.notify.len(), 1);
    assert_eq!(r.notify[0].1.rule, "disk_full");
    // Ready again, conditions back: the same alerts, no new firing or notification.
    let r = store
        .apply_alert_conditions(vec![unreachable, tls, skew], policy(at(900)))
        .await
        .unwrap();
    assert_eq!(
        (r.fired, r.resolved, r.notify.len()),
        (1, 0, 0),
        "only the skew is new"
    );
    let firing = store
        .alerts(AlertQuery {
            state: Some(AlertState::Firing),
            limit: 10,
            ..AlertQuery::default()
        })
        .await
        .unwrap();
    for id in &ids[..2] {
        assert!(firing.iter().any(|a| a.id == *id), "{id} still firing");
    }
}

#[tokio::test]
async fn a_resolution_under_a_silence_is_not_notified() {
    let store = Store::open_for_test();
    let eu: Labels = [("region".to_string(), "eu".to_string())].into();
    let c = cond("a", Rule::DiskFull, "/", Severity::Hard, &eu);
    let r = store
        .apply_alert_conditions(vec![c.clone()], policy(at(0)))
        .await
        .unwrap();
    assert_eq!(r.notify.len(), 1, "notified firing");
    let id = r.notify[0].1.id.clone();
    store
        .create_silence(Silence {
            id: "sil_m".into(),
            selector: "region=eu".parse().unwrap(),
            rule: None,
            subject: None,
            starts_at: at(50),
            ends_at: at(10_000),
            created_by: "admin".into(),
            created_at: at(50),
            comment: "maintenance".into(),
        })
        .await
        .unwrap();
    let r = store
        .apply_alert_conditions(vec![], policy(at(100)))
        .await
        .unwrap();
    assert_eq!(r.resolved, 1);
    assert!(r.notify.is_empty(), "silenced at resolution time");
    let a = store.alert(id).await.unwrap().unwrap();
    assert_eq!(a.state, AlertState::Resolved);
    assert_eq!(a.silence_id.as_deref(), Some("sil_m"));
}

#[tokio::test]
async fn an_unchanged_firing_alert_is_not_rewritten() {
    let store = Store::open_for_test();
    let none = Labels::new();
    let mut c = cond("a", Rule::DiskFull, "/", Severity::Medium, &none);
    let r = store
        .apply_alert_conditions(vec![c.clone()], policy(at(0)))
        .await
        .unwrap();
    assert!(r.notify.is_empty(), "medium waits");
    let get = || async {
        store
            .alerts(AlertQuery {
                limit: 10,
                ..AlertQuery::default()
            })
            .await
            .unwrap()
            .remove(0)
    };
    // Nothing changed: no write (last_seen_at stays).
    store
        .apply_alert_conditions(vec![c.clone()], policy(at(100)))
        .await
        .unwrap();
    assert_eq!(get().await.last_seen_at, at(0));
    // The message changed: written.
    c.message = "now 95 %".into();
    store
        .apply_alert_conditions(vec![c.clone()], policy(at(200)))
        .await
        .unwrap();
    let a = get().await;
    assert_eq!((a.last_seen_at, a.message.as_str()), (at(200), "now 95 %"));
    // Its notification became due: written, and the notification built in memory matches
    // the stored row.
    let r = store
        .apply_alert_conditions(vec![c.clone()], policy(at(300)))
        .await
        .unwrap();
    assert_eq!(r.notify.len(), 1);
    let stored = get().await;
    assert_eq!(r.notify[0].1, stored);
    assert_eq!(stored.notified_at, Some(at(300)));
}
