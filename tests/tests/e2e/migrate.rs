//! `flotilla-relay migrate`: a single SQLite relay's state moved into PostgreSQL, after which
//! the relay runs on PostgreSQL and its agents keep their enrollment and history.

use crate::DEADLINE;
use flotilla_shared::api::{AuditRecord, DeliveryState};
use flotilla_shared::command::Command;
use flotilla_tests::harness::{bin, scope, Agent, Relay};
use flotilla_tests::pg::PgServer;
use std::time::Duration;

async fn migrate(relay: &Relay, url: &str) -> std::process::Output {
    tokio::process::Command::new(bin("flotilla-relay"))
        .arg("migrate")
        .arg("--from")
        .arg(relay.dir.path())
        .arg("--to")
        .arg(url)
        .output()
        .await
        .expect("run flotilla-relay migrate")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_relay_moves_to_postgres_and_its_agents_keep_enrollment_and_history() {
    let pg = PgServer::start();
    let mut relay = Relay::start().await;
    let scope = scope("migrate");
    let agent = Agent::start(&relay, "moved", "tier=migrate", &scope).await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    let before = api
        .command(&agent.id, Command::Ping(Default::default()), Some(20))
        .await
        .expect("a command on SQLite");
    assert_eq!(before.state, DeliveryState::Succeeded, "{before:#?}");
    let audit_before: Vec<AuditRecord> = api.get("/api/v1/audit?limit=500").await.unwrap();

    // Refused while the target is not PostgreSQL, naming what is wrong, before touching
    // anything.
    let out = migrate(&relay, "mysql://db/flotilla").await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("postgres://"), "{}", text(&out));

    relay.terminate(Duration::from_secs(20)).await;
    let out = migrate(&relay, &pg.url).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("migrated "), "{stdout}");
    assert!(stdout.contains("agents  1 rows"), "{stdout}");

    // The same relay (data dir, key, address) on PostgreSQL: the agent reconnects with its
    // enrollment, and the history is there.
    relay.set_env("FLOTILLA_DATABASE_URL", &pg.url);
    relay.start_again().await;
    let api = relay.api();
    let status: flotilla_shared::api::ClusterStatus = api.get("/api/v1/cluster").await.unwrap();
    assert_eq!(status.backend, "postgres");
    let detail = api.wait_online(&agent.id, DEADLINE).await;
    assert_eq!(detail.agent.name, "moved");
    let again = api.command_info(&before.id).await;
    assert_eq!(again.state, DeliveryState::Succeeded);
    assert_eq!(again.result, before.result);
    let audit_after: Vec<AuditRecord> = api.get("/api/v1/audit?limit=500").await.unwrap();
    for entry in &audit_before {
        assert!(
            audit_after.contains(entry),
            "audit row lost in the move: {entry:?}"
        );
    }
    let after = api
        .command(&agent.id, Command::Ping(Default::default()), Some(20))
        .await
        .expect("a command on PostgreSQL");
    assert_eq!(after.state, DeliveryState::Succeeded, "{after:#?}");

    // A second migration into the now used database is refused and changes nothing.
    let out = migrate(&relay, &pg.url).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("not empty") && text(&out).contains("agents"),
        "{}",
        text(&out)
    );
    assert_eq!(
        api.command_info(&after.id).await.state,
        DeliveryState::Succeeded
    );
}
