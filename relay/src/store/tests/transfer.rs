//! `migrate`: a SQLite store copied into PostgreSQL (`store/transfer.rs`). The copy needs a
//! PostgreSQL target, so its full check runs in the PostgreSQL pass of the store suite
//! (`FLOTILLA_TEST_POSTGRES_URL`, scripts/test); on SQLite alone the refusal is checked.

use super::*;
use crate::store::transfer::CopyError;

fn audit_entry(action: &str) -> AuditEntry {
    AuditEntry {
        ts: now(),
        actor: "test".into(),
        action: action.into(),
        target: "-".into(),
        outcome: "ok".into(),
        detail: Some("{\"why\": \"kept as text\"}".into()),
    }
}

fn event(message: &str) -> AgentEvent {
    AgentEvent {
        kind: EventKind::ContainerDied,
        at: now(),
        container_id: None,
        container_name: Some("web".into()),
        message: message.into(),
        attributes: Default::default(),
    }
}

async fn all_events(store: &Store, agent: &str) -> Vec<EventRecord> {
    store
        .events(
            agent.into(),
            EventQuery {
                limit: 100,
                ..EventQuery::default()
            },
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_sqlite_store_is_copied_into_an_empty_database_whole_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let source = Store::open(&dir.path().join("relay.db")).await.unwrap();
    token(&source, "secret", 3600, 5, "region=eu").await;
    let agent = enroll_ok(&source, "secret", new_agent("web1", "role=web")).await;
    let other = enroll_ok(&source, "secret", new_agent("web2", "role=web")).await;
    source.revoke_agent(other.id.clone()).await.unwrap();
    source
        .create_command(command(
            "cmd_1",
            vec![(agent.id.clone(), DeliveryState::Queued)],
            3600,
        ))
        .await
        .unwrap();
    source
        .record_result(agent.id.clone(), result("cmd_1", ResultStatus::Succeeded))
        .await
        .unwrap();
    for (seq, msg) in [(1, "web died"), (2, "web died again")] {
        source
            .insert_event(agent.id.clone(), seq, event(msg))
            .await
            .unwrap();
    }
    source.audit(audit_entry("agent.enroll")).await.unwrap();
    source.audit(audit_entry("command.create")).await.unwrap();

    let target = Store::open_for_test();
    if !target.is_shared() {
        let err = source.copy_into(&target).await.unwrap_err();
        assert!(matches!(err, CopyError::TargetNotPostgres), "{err}");
        return;
    }
    let report = source.copy_into(&target).await.unwrap();
    let rows = |table: &str| {
        report
            .tables
            .iter()
            .find(|t| t.0 == table)
            .map(|t| t.1)
            .unwrap_or_else(|| panic!("{table} not copied: {report:?}"))
    };
    assert_eq!(rows("agents"), 2);
    assert_eq!(rows("events"), 2);
    assert_eq!(rows("audit"), 2);
    assert_eq!(rows("deliveries"), 1);
    assert!(
        report
            .tables
            .iter()
            .all(|t| t.0 != "leases" && t.0 != "relays"),
        "live cluster state is not copied: {report:?}"
    );

    // The same state, read through the domain operations of both backends.
    for id in [&agent.id, &other.id] {
        assert_eq!(
            target.agent(id.clone()).await.unwrap(),
            source.agent(id.clone()).await.unwrap()
        );
    }
    assert_eq!(
        info_of(&target, "cmd_1", &agent.id).await,
        info_of(&source, "cmd_1", &agent.id).await
    );
    assert_eq!(
        all_events(&target, &agent.id).await,
        all_events(&source, &agent.id).await
    );
    assert_eq!(
        target.recent_audit(10).await.unwrap(),
        source.recent_audit(10).await.unwrap()
    );
    assert_eq!(
        target.list_enrollment_tokens().await.unwrap(),
        source.list_enrollment_tokens().await.unwrap()
    );

    // New rows get ids after the copied ones (the identity sequences moved on).
    target
        .insert_event(agent.id.clone(), 3, event("after the move"))
        .await
        .unwrap();
    let events = all_events(&target, &agent.id).await;
    assert_eq!(events.len(), 3);
    assert!(events[1].id < events[2].id, "{events:?}");
    target.audit(audit_entry("after.move")).await.unwrap();
    assert_eq!(target.recent_audit(10).await.unwrap().len(), 3);

    // A second copy finds the target not empty and changes nothing.
    let err = source.copy_into(&target).await.unwrap_err();
    match &err {
        CopyError::TargetNotEmpty { table, rows } => {
            assert_eq!((table.as_str(), *rows), ("agents", 2), "{err}")
        }
        other => panic!("{other}"),
    }
    assert_eq!(all_events(&target, &agent.id).await.len(), 3);
}
