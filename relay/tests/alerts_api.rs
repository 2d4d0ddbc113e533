//! The alerts API against an in-process relay on 127.0.0.1:0 with a real SQLite file: an
//! enrolled agent that never connects becomes unreachable (hard), and the alert is listed,
//! shown, acknowledged (audited) and silenced through the HTTP API; bad input gets 400s.

mod support;

use flotilla_shared::alert::{AlertInfo, AlertState, CreateSilence, Severity, Silence};
use flotilla_shared::api::{
    AgentFacts, AuditRecord, CreateEnrollmentToken, EnrollRequest, EnrollResponse,
    EnrollmentTokenCreated,
};
use flotilla_shared::signing::SigningKey;
use flotilla_testkit::eventually;
use serde_json::json;
use std::time::Duration;
use support::TestRelay;

/// How long an effect may take before a test fails.
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn unreachable_agent_alert_through_the_api() {
    let t = TestRelay::in_process("relay-alerts")
        .config(|c| {
            c.heartbeat_interval_secs = 1;
            c.alerts.evaluate_interval_secs = 1;
            c.alerts.unreachable_intervals = 1;
            c.alerts.medium_notify_after_secs = 0;
        })
        .start()
        .await;
    let (base, admin, http) = (t.base.clone(), t.admin.clone(), t.http.clone());

    let token: EnrollmentTokenCreated = http
        .post(format!("{base}/api/v1/enrollment-tokens"))
        .bearer_auth(&admin)
        .json(&CreateEnrollmentToken {
            labels: [("region".to_string(), "eu".to_string())].into(),
            ..CreateEnrollmentToken::default()
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = SigningKey::generate();
    let enrolled: EnrollResponse = http
        .post(format!("{base}/api/v1/enroll"))
        .json(&EnrollRequest {
            token: token.token,
            name: Some("silent".into()),
            public_key: key.public_key().to_base64(),
            labels: Default::default(),
            facts: AgentFacts::default(),
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let get = |path: String| {
        let http = http.clone();
        let admin = admin.clone();
        async move { http.get(path).bearer_auth(&admin).send().await.unwrap() }
    };
    let alert: AlertInfo = eventually(WAIT, "the unreachable alert", || {
        let get = &get;
        let base = base.clone();
        async move {
            let list: Vec<AlertInfo> = get(format!(
                "{base}/api/v1/alerts?state=firing&severity=hard&rule=agent_unreachable"
            ))
            .await
            .json()
            .await
            .unwrap();
            list.into_iter().next()
        }
    })
    .await;
    assert_eq!(alert.agent_id.as_deref(), Some(enrolled.agent_id.as_str()));
    assert_eq!(alert.agent_name.as_deref(), Some("silent"));
    assert_eq!(
        alert.agent_labels.get("region").map(String::as_str),
        Some("eu")
    );
    assert_eq!(alert.severity, Severity::Hard);
    assert_eq!(alert.state, AlertState::Firing);
    assert!(
        alert.notified_at.is_some(),
        "hard alerts are notified at once"
    );
    assert!(alert.id.starts_with("alr_"));

    let shown: AlertInfo = get(format!("{base}/api/v1/alerts/{}", alert.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown.id, alert.id);
    assert_eq!(
        get(format!("{base}/api/v1/alerts/alr_nope")).await.status(),
        404
    );
    for bad in [
        "state=open",
        "severity=loud",
        "rule=nope",
        "limit=0",
        "colour=red",
    ] {
        let r = get(format!("{base}/api/v1/alerts?{bad}")).await;
        assert_eq!(r.status(), 400, "{bad}");
    }

    // Ack, audited; the body is optional.
    let acked: AlertInfo = http
        .post(format!("{base}/api/v1/alerts/{}/ack", alert.id))
        .bearer_auth(&admin)
        .json(&json!({"comment": "on it"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(acked.acknowledged_by.as_deref(), Some("admin"));
    assert_eq!(acked.state, AlertState::Firing);
    let r = http
        .post(format!("{base}/api/v1/alerts/alr_nope/ack"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Silence by label: the firing alert becomes silenced at the next evaluation.
    let r = http
        .post(format!("{base}/api/v1/silences"))
        .bearer_auth(&admin)
        .json(&CreateSilence {
            selector: "region=eu".parse().unwrap(),
            rule: Some("agent_unreachable".into()),
            subject: None,
            starts_at: None,
            ends_at: None,
            duration_secs: Some(3600),
            comment: "maintenance".into(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let silence: Silence = r.json().await.unwrap();
    assert!(silence.id.starts_with("sil_"));
    let silenced: AlertInfo = eventually(WAIT, "the alert to be silenced", || {
        let get = &get;
        let url = format!("{base}/api/v1/alerts/{}", alert.id);
        async move {
            let a: AlertInfo = get(url).await.json().await.unwrap();
            a.silenced.then_some(a)
        }
    })
    .await;
    assert_eq!(silenced.silence_id.as_deref(), Some(silence.id.as_str()));
    let list: Vec<Silence> = get(format!("{base}/api/v1/silences"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    for bad in [
        json!({"selector": "region=eu"}),
        json!({"selector": "region=eu", "duration_secs": 0}),
        json!({"selector": "region=eu", "duration_secs": 60, "rule": "nope"}),
        json!({"selector": "=bad", "duration_secs": 60}),
    ] {
        let r = http
            .post(format!("{base}/api/v1/silences"))
            .bearer_auth(&admin)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let del = |id: String| {
        let http = http.clone();
        let admin = admin.clone();
        let base = base.clone();
        async move {
            http.delete(format!("{base}/api/v1/silences/{id}"))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(del(silence.id.clone()).await, 204);
    assert_eq!(del(silence.id.clone()).await, 404);
    eventually(WAIT, "the silence to lift", || {
        let get = &get;
        let url = format!("{base}/api/v1/alerts/{}", alert.id);
        async move {
            let a: AlertInfo = get(url).await.json().await.unwrap();
            (!a.silenced).then_some(())
        }
    })
    .await;

    let audit: Vec<AuditRecord> = get(format!("{base}/api/v1/audit?limit=50"))
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    for action in ["alert.ack", "silence.create", "silence.delete"] {
        assert!(
            actions.contains(&action),
            "{action} not audited: {actions:?}"
        );
    }

    let metrics = get(format!("{base}/metrics")).await.text().await.unwrap();
    assert!(
        metrics.contains("flotilla_alerts_firing{severity=\"hard\"} 1"),
        "{metrics}"
    );
    t.relay.shutdown().await.unwrap();
}
