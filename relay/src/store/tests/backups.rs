//! Backup history: reports stored once per (agent, run, key), each database's latest state and
//! newest success, staleness against a controlled `now`, the fleet view, alert levels and
//! retention. Against real SQLite files (writer plus read-only connections).

use super::*;
use crate::store::sql::{params, ConnExt};
use chrono::Duration;
use flotilla_shared::backup::{
    BackupAlertLevel, BackupEngine, BackupStatus, DatabaseOutcome, ReportSource,
};

/// A file database in its own directory, removed on drop.
struct FileStore {
    store: Store,
    dir: std::path::PathBuf,
}

impl Drop for FileStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn file_store() -> FileStore {
    let dir = std::env::temp_dir().join(new_id("relay-backups-test"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("relay.db")).await.unwrap();
    assert_eq!(store.read_connections(), READ_CONNECTIONS);
    FileStore { store, dir }
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// A fixed "now" every test measures against.
fn t0() -> DateTime<Utc> {
    at("2026-03-10T06:00:00Z")
}

const S: BackupStatus = BackupStatus::Success;
const F: BackupStatus = BackupStatus::Failed;

/// A report of the agent's job `pg` that finished at `finished`, one database per entry.
fn report(
    run_id: &str,
    finished: DateTime<Utc>,
    databases: &[(&str, BackupStatus)],
) -> BackupReport {
    BackupReport {
        run_id: run_id.into(),
        source: ReportSource::Agent,
        job: Some("pg".into()),
        trigger: None,
        started_at: finished - Duration::minutes(2),
        finished_at: finished,
        databases: databases
            .iter()
            .map(|(key, status)| DatabaseOutcome {
                key: key.to_string(),
                container: Some("pg".into()),
                database: key.split('/').nth(1).map(String::from),
                engine: Some(BackupEngine::Postgres),
                status: *status,
                error: (*status == F).then(|| "pg_dump: connection refused".into()),
                backup_id: (*status == S).then(|| format!("bk_{run_id}_{key}")),
                size_bytes: (*status == S).then_some(4096),
                duration_ms: Some(900),
            })
            .collect(),
        remote_sync: None,
        pruned: 0,
    }
}

async fn record(store: &Store, agent_id: &str, r: BackupReport) -> RecordedBackups {
    store
        .record_backup_report(agent_id.into(), r)
        .await
        .unwrap()
}

async fn backups_of(
    store: &Store,
    agent_id: &str,
    key: Option<&str>,
    now: DateTime<Utc>,
) -> AgentBackups {
    store
        .agent_backups(
            agent_id.into(),
            BackupQuery {
                key: key.map(String::from),
                limit: 100,
            },
            now,
        )
        .await
        .unwrap()
}

/// `key=state` of every database, in order.
fn states(b: &AgentBackups) -> Vec<String> {
    b.databases
        .iter()
        .map(|d| format!("{}={}", d.key, d.state.as_str()))
        .collect()
}

#[tokio::test]
async fn reports_are_stored_once_per_agent_run_and_key() {
    let fs = file_store().await;
    let store = &fs.store;
    token(store, "t", 3600, 5, "").await;
    let a = enroll_ok(store, "t", new_agent("a", "")).await;
    let b = enroll_ok(store, "t", new_agent("b", "")).await;
    let first = report("run_1", t0(), &[("pg/app", S), ("pg/shop", F)]);
    assert_eq!(
        record(store, &a.id, first.clone()).await,
        RecordedBackups {
            succeeded: 1,
            failed: 1,
            stored: vec![("pg/app".into(), S), ("pg/shop".into(), F)],
        }
    );
    // The outbox re-sends (same or new seq): nothing new.
    assert_eq!(record(store, &a.id, first.clone()).await.total(), 0);
    // The same run on another agent is that agent's.
    assert_eq!(record(store, &b.id, first.clone()).await.total(), 2);
    // A re-sent report that gained a database adds only that one.
    let grown = report(
        "run_1",
        t0(),
        &[("pg/app", S), ("pg/shop", F), ("pg/crm", S)],
    );
    assert_eq!(
        record(store, &a.id, grown).await,
        RecordedBackups {
            succeeded: 1,
            failed: 0,
            stored: vec![("pg/crm".into(), S)],
        }
    );
    // A status file read again unchanged keeps its run id: stored once as well.
    let mut file = report("status-2026-03-10", t0(), &[("nightly/erp", S)]);
    file.source = ReportSource::StatusFile {
        path: "/var/backups/backup-status.json".into(),
    };
    file.job = None;
    assert_eq!(record(store, &a.id, file.clone()).await.total(), 1);
    assert_eq!(record(store, &a.id, file).await.total(), 0);

    let got = backups_of(store, &a.id, None, t0()).await;
    assert_eq!(got.history.len(), 4);
    let erp = got.history.iter().find(|r| r.key == "nightly/erp").unwrap();
    assert_eq!(erp.source, "status_file");
    assert_eq!(erp.job, None);
    let shop = got.history.iter().find(|r| r.key == "pg/shop").unwrap();
    assert_eq!(
        (shop.status, shop.error.as_deref(), shop.size_bytes),
        (F, Some("pg_dump: connection refused"), None)
    );
    let app = got.history.iter().find(|r| r.key == "pg/app").unwrap();
    assert_eq!(app.engine.as_deref(), Some("postgres"));
    assert_eq!(app.database.as_deref(), Some("app"));
    assert_eq!(app.backup_id.as_deref(), Some("bk_run_1_pg/app"));
    assert_eq!(app.size_bytes, Some(4096));
    assert_eq!(app.finished_at, t0());
    assert_eq!(app.started_at, t0() - Duration::minutes(2));
    assert_eq!(backups_of(store, &b.id, None, t0()).await.history.len(), 2);
}

#[tokio::test]
async fn latest_state_and_newest_success_per_database() {
    let fs = file_store().await;
    let store = &fs.store;
    token(store, "t", 3600, 5, "").await;
    let a = enroll_ok(store, "t", new_agent("a", "")).await;
    let day = Duration::days(1);
    record(
        store,
        &a.id,
        report("run_1", t0() - day * 2, &[("pg/app", S), ("pg/shop", S)]),
    )
    .await;
    record(
        store,
        &a.id,
        report("run_2", t0() - day, &[("pg/app", S), ("pg/shop", F)]),
    )
    .await;
    // An older run arriving late (an agent back from a long outage) does not become the latest.
    record(
        store,
        &a.id,
        report("run_0", t0() - day * 3, &[("pg/app", F), ("pg/shop", F)]),
    )
    .await;

    let got = backups_of(store, &a.id, None, t0()).await;
    assert_eq!(states(&got), ["pg/app=ok", "pg/shop=failed"]);
    let shop = &got.databases[1];
    assert_eq!(shop.agent_name, "a");
    assert_eq!(shop.latest.run_id, "run_2");
    assert_eq!(shop.last_success_at, Some(t0() - day * 2));
    assert_eq!(got.databases[0].last_success_at, Some(t0() - day));
    // History newest first.
    assert_eq!(
        got.history
            .iter()
            .map(|r| r.run_id.as_str())
            .collect::<Vec<_>>(),
        ["run_2", "run_2", "run_1", "run_1", "run_0", "run_0"]
    );
    assert_eq!(got.alert.level, BackupAlertLevel::Medium);

    // The key filter narrows databases and history; the alert stays the agent's.
    let one = backups_of(store, &a.id, Some("pg/app"), t0()).await;
    assert_eq!(states(&one), ["pg/app=ok"]);
    assert_eq!(one.history.len(), 3);
    assert!(one.history.iter().all(|r| r.key == "pg/app"));
    assert_eq!(one.alert.level, BackupAlertLevel::Medium);
    // The history limit.
    let page = store
        .agent_backups(
            a.id.clone(),
            BackupQuery {
                key: None,
                limit: 2,
            },
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(page.history.len(), 2);
    assert_eq!(page.databases.len(), 2);
}

#[tokio::test]
async fn databases_go_stale_48_hours_after_their_last_success() {
    let store = Store::open_for_test();
    token(&store, "t", 3600, 5, "").await;
    let a = enroll_ok(&store, "t", new_agent("a", "")).await;
    let done = t0();
    record(
        &store,
        &a.id,
        report("run_1", done, &[("pg/app", S), ("pg/new", F)]),
    )
    .await;

    let check = |hours: i64| {
        let store = store.clone();
        let id = a.id.clone();
        async move { backups_of(&store, &id, None, done + Duration::hours(hours)).await }
    };
    let fresh = check(47).await;
    // A database that never succeeded is failed until its first failure is 48 h old.
    assert_eq!(states(&fresh), ["pg/app=ok", "pg/new=failed"]);
    assert_eq!(fresh.alert.level, BackupAlertLevel::Medium);
    let old = check(49).await;
    assert_eq!(states(&old), ["pg/app=stale", "pg/new=stale"]);
    assert_eq!(old.alert.level, BackupAlertLevel::Hard);
    assert!(old.alert.reason.contains("48 h"), "{}", old.alert.reason);

    // A new success makes it fresh again. A database that never succeeded stays stale, however
    // recent its latest failure: 48 h have passed since its first one.
    let second = done + Duration::hours(48);
    record(
        &store,
        &a.id,
        report("run_2", second, &[("pg/app", S), ("pg/new", F)]),
    )
    .await;
    assert_eq!(states(&check(49).await), ["pg/app=ok", "pg/new=stale"]);
    // A failure after a success more than 48 h ago is stale.
    record(
        &store,
        &a.id,
        report("run_3", done + Duration::hours(97), &[("pg/app", F)]),
    )
    .await;
    assert_eq!(states(&check(97).await), ["pg/app=stale", "pg/new=stale"]);
}

#[tokio::test]
async fn a_version_3_database_gains_the_backup_history() {
    let dir = std::env::temp_dir().join(new_id("relay-backups-migrate"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relay.db");
    // The schema as the previous release left it, with an agent in it.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in &sqlite::MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute(
            "INSERT INTO agents (id, name, public_key, labels, facts, enrolled_at) \
             VALUES ('ag_old', 'old', 'key', '{}', \
             '{\"hostname\":\"h\",\"os\":\"linux\",\"arch\":\"x86_64\",\"agent_version\":\"0.1.0\"}', \
             '2026-01-01T00:00:00.000000Z')",
            [],
        )
        .unwrap();
    }
    let store = Store::open(&path).await.unwrap();
    let version: i64 = store
        .read(|c| Ok(c.query_row("PRAGMA user_version", params![], |r| r.get(0))?))
        .await
        .unwrap();
    assert!(version >= 4);
    assert_eq!(version as usize, sqlite::MIGRATIONS.len());
    record(&store, "ag_old", report("r1", t0(), &[("pg/app", S)])).await;
    let got = backups_of(&store, "ag_old", None, t0()).await;
    assert_eq!(got.databases[0].agent_name, "old");
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn fleet_view_filters_by_state_and_leaves_out_revoked_agents() {
    let fs = file_store().await;
    let store = &fs.store;
    token(store, "t", 3600, 5, "").await;
    let web = enroll_ok(store, "t", new_agent("web-1", "")).await;
    let db = enroll_ok(store, "t", new_agent("db-1", "")).await;
    let gone = enroll_ok(store, "t", new_agent("gone", "")).await;
    record(
        store,
        &web.id,
        report("r1", t0() - Duration::hours(2), &[("pg/app", S)]),
    )
    .await;
    record(
        store,
        &db.id,
        report(
            "r2",
            t0() - Duration::hours(3),
            &[("pg/shop", F), ("pg/app", S)],
        ),
    )
    .await;
    record(
        store,
        &db.id,
        report("r3", t0() - Duration::hours(60), &[("pg/old", S)]),
    )
    .await;
    record(store, &gone.id, report("r4", t0(), &[("pg/app", F)])).await;
    store.revoke_agent(gone.id.clone()).await.unwrap();

    let fleet = |state: Option<DatabaseState>, limit: u32| store.fleet_backups(state, limit, t0());
    let all = fleet(None, 100).await.unwrap();
    assert!(!all.truncated);
    // By agent name, then key; the revoked agent is left out.
    assert_eq!(
        all.databases
            .iter()
            .map(|d| format!("{}:{}={}", d.agent_name, d.key, d.state.as_str()))
            .collect::<Vec<_>>(),
        [
            "db-1:pg/app=ok",
            "db-1:pg/old=stale",
            "db-1:pg/shop=failed",
            "web-1:pg/app=ok"
        ]
    );
    let failed = fleet(Some(DatabaseState::Failed), 100).await.unwrap();
    assert_eq!(failed.databases.len(), 1);
    assert_eq!(failed.databases[0].agent_id, db.id);
    assert_eq!(failed.databases[0].key, "pg/shop");
    assert_eq!(failed.databases[0].last_success_at, None);
    let stale = fleet(Some(DatabaseState::Stale), 100).await.unwrap();
    assert_eq!(stale.databases.len(), 1);
    assert_eq!(stale.databases[0].key, "pg/old");
    let ok = fleet(Some(DatabaseState::Ok), 1).await.unwrap();
    assert_eq!(ok.databases.len(), 1);
    assert!(ok.truncated);
    // The revoked agent's own view still works (its history is kept).
    assert_eq!(
        backups_of(store, &gone.id, None, t0())
            .await
            .databases
            .len(),
        1
    );
}

#[tokio::test]
async fn alert_levels_follow_the_databases_states() {
    let store = Store::open_for_test();
    token(&store, "t", 3600, 5, "").await;
    let a = enroll_ok(&store, "t", new_agent("a", "")).await;
    let none = backups_of(&store, &a.id, None, t0()).await;
    assert_eq!(none.alert.level, BackupAlertLevel::None);
    assert!(none.databases.is_empty() && none.history.is_empty());

    record(
        &store,
        &a.id,
        report("r1", t0(), &[("pg/app", S), ("pg/shop", S)]),
    )
    .await;
    let ok = backups_of(&store, &a.id, None, t0()).await;
    assert_eq!(ok.alert.level, BackupAlertLevel::None);
    assert_eq!(ok.alert.reason, "all 2 databases backed up");

    let later = t0() + Duration::hours(1);
    record(
        &store,
        &a.id,
        report("r2", later, &[("pg/app", S), ("pg/shop", F)]),
    )
    .await;
    let medium = backups_of(&store, &a.id, None, later).await;
    assert_eq!(medium.alert.level, BackupAlertLevel::Medium);

    let latest = t0() + Duration::hours(2);
    record(
        &store,
        &a.id,
        report("r3", latest, &[("pg/app", F), ("pg/shop", F)]),
    )
    .await;
    let hard = backups_of(&store, &a.id, None, latest).await;
    assert_eq!(hard.alert.level, BackupAlertLevel::Hard);
    assert_eq!(
        hard.alert.reason,
        "all 2 databases failed their latest backup"
    );
}

#[tokio::test]
async fn retention_keeps_each_databases_latest_row_and_newest_success() {
    let fs = file_store().await;
    let store = &fs.store;
    token(store, "t", 3600, 5, "").await;
    let a = enroll_ok(store, "t", new_agent("a", "")).await;
    let base = now();
    let days = |n: i64| base - Duration::days(n);
    record(
        store,
        &a.id,
        report("r50", days(50), &[("pg/app", S), ("pg/shop", S)]),
    )
    .await;
    record(
        store,
        &a.id,
        report("r40", days(40), &[("pg/app", S), ("pg/shop", F)]),
    )
    .await;
    record(store, &a.id, report("r35", days(35), &[("pg/app", F)])).await;
    record(store, &a.id, report("r31", days(31), &[("pg/app", F)])).await;
    record(store, &a.id, report("r1", days(1), &[("pg/shop", S)])).await;

    let pruned = store.prune(days(30)).await.unwrap();
    // pg/app: r31 is its latest, r40 its newest success; r50 and r35 go.
    // pg/shop: r1 is latest and newest success; r50 and r40 go.
    assert_eq!(pruned.backups, 4);
    let left = backups_of(store, &a.id, None, base).await;
    let mut rows: Vec<String> = left
        .history
        .iter()
        .map(|r| format!("{}:{}", r.key, r.run_id))
        .collect();
    rows.sort();
    assert_eq!(rows, ["pg/app:r31", "pg/app:r40", "pg/shop:r1"]);
    // Nothing else is old enough; the state still knows pg/app's last good backup.
    assert_eq!(store.prune(days(30)).await.unwrap().backups, 0);
    let app = &left.databases[0];
    assert_eq!(app.last_success_at, Some(days(40)));
    assert_eq!(app.state, DatabaseState::Stale);
}

#[tokio::test]
async fn a_forgotten_key_leaves_the_history_and_the_alert() {
    let fs = file_store().await;
    let store = &fs.store;
    token(store, "t", 3600, 5, "").await;
    let a = enroll_ok(store, "t", new_agent("a", "")).await;
    record(
        store,
        &a.id,
        report("run_1", t0(), &[("pg/app", S), ("pg/dropped", F)]),
    )
    .await;
    record(store, &a.id, report("run_2", t0(), &[("pg/dropped", F)])).await;
    let before = backups_of(store, &a.id, None, t0()).await;
    assert_eq!(before.alert.level, BackupAlertLevel::Medium);
    let removed = store
        .forget_backup_key(a.id.clone(), "pg/dropped".into())
        .await
        .unwrap();
    assert_eq!(removed, 2);
    let after = backups_of(store, &a.id, None, t0()).await;
    assert_eq!(after.alert.level, BackupAlertLevel::None);
    assert_eq!(after.databases.len(), 1);
    assert!(after.history.iter().all(|r| r.key == "pg/app"));
    // Forgetting what is not there removes nothing.
    let removed = store
        .forget_backup_key(a.id.clone(), "pg/dropped".into())
        .await
        .unwrap();
    assert_eq!(removed, 0);
}
