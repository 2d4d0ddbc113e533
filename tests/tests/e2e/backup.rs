//! Database backups end to end: real PostgreSQL, MariaDB and Redis servers in containers, a real
//! agent dumping them through the Docker exec API, the relay's commands and history, restores
//! compared row by row, and the failure paths (wrong credentials, a dump that exits non-zero or
//! writes nothing, the container stopped mid-dump, a full disk, an unreachable remote), each
//! leaving the right per-database status and every older backup in place.

use crate::DEADLINE;
use flotilla_shared::api::{CommandInfo, DeliveryState};
use flotilla_shared::backup::{
    AgentBackups, BackupAlertLevel, BackupListArgs, BackupListOutput, BackupRestoreArgs,
    BackupRestoreOutput, BackupRunArgs, BackupRunOutput, BackupStatus, BackupVerifyArgs,
    BackupVerifyOutput,
};
use flotilla_shared::command::Command;
use flotilla_tests::fixtures::{start_s3, DbContainer, DbEngine};
use flotilla_tests::harness::{eventually, scope, Agent, Api, Relay};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Dumps and restores of small databases take seconds; allow for a loaded CI machine.
const BACKUP_DEADLINE: Duration = Duration::from_secs(180);

/// Starts a database container visible to the test's agent (its scope label).
pub(super) async fn database(engine: DbEngine, scope: &str, env: &[(&str, &str)]) -> DbContainer {
    let name = flotilla_tests::fixtures::unique_name(&format!("{scope}-db"));
    let scope_label = ("flotilla.test.scope", scope.to_string());
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        DbContainer::start(engine, &name, &[(scope_label.0, &scope_label.1)], &env)
    })
    .await
    .unwrap()
    .expect("start a database container")
}

pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Sends a command and waits for its final state (ttl 1 h).
pub(super) async fn run(api: &Api, agent: &str, command: Command) -> CommandInfo {
    let info = api
        .post::<_, CommandInfo>(
            &format!("/api/v1/agents/{agent}/commands"),
            &flotilla_shared::api::CreateCommand {
                command,
                ttl_secs: Some(3600),
            },
        )
        .await
        .unwrap();
    api.wait_final(&info.id, BACKUP_DEADLINE).await
}

pub(super) fn output<T: serde::de::DeserializeOwned>(info: &CommandInfo) -> T {
    let result = info
        .result
        .as_ref()
        .unwrap_or_else(|| panic!("no result: {info:?}"));
    serde_json::from_value(
        result
            .output
            .clone()
            .unwrap_or_else(|| panic!("no output: {info:?}")),
    )
    .unwrap()
}

pub(super) fn error_code(info: &CommandInfo) -> String {
    info.result
        .as_ref()
        .and_then(|r| r.error.as_ref())
        .map(|e| e.code.clone())
        .unwrap_or_default()
}

pub(super) fn error_message(info: &CommandInfo) -> String {
    info.result
        .as_ref()
        .and_then(|r| r.error.as_ref())
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

pub(super) async fn backup_run(
    api: &Api,
    agent: &str,
    job: Option<&str>,
) -> (CommandInfo, BackupRunOutput) {
    let info = run(
        api,
        agent,
        Command::BackupRun(BackupRunArgs {
            job: job.map(str::to_string),
        }),
    )
    .await;
    let out = output(&info);
    (info, out)
}

async fn list(api: &Api, agent: &str, job: Option<&str>) -> BackupListOutput {
    let info = run(
        api,
        agent,
        Command::BackupList(BackupListArgs {
            job: job.map(str::to_string),
            database: None,
            limit: Some(100),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    output(&info)
}

async fn restore(api: &Api, agent: &str, args: BackupRestoreArgs) -> CommandInfo {
    run(api, agent, Command::BackupRestore(args)).await
}

fn restore_args(id: &str, database: Option<&str>, force: bool) -> BackupRestoreArgs {
    BackupRestoreArgs {
        id: id.to_string(),
        into: None,
        database: database.map(str::to_string),
        force,
        ..Default::default()
    }
}

/// A content checksum of a PostgreSQL table (row order fixed by id).
pub(super) fn pg_checksum(db: &DbContainer, database: &str, table: &str) -> String {
    db.psql(
        database,
        &format!(
            "SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t"
        ),
    )
    .unwrap()
}

fn mariadb_checksum(db: &DbContainer, database: &str, table: &str) -> String {
    db.mariadb(
        database,
        &format!(
            "SELECT CONCAT(COUNT(*), ':', MD5(GROUP_CONCAT(CONCAT_WS('|', id, name, amount) \
             ORDER BY id SEPARATOR ','))) FROM {table}"
        ),
    )
    .unwrap()
}

fn read_status_file(agent: &Agent) -> serde_json::Value {
    let path = agent.state_dir().join("backups/backup-status.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("backup-status.json")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_verify_and_restore_round_trip() {
    let scope = scope("bk-pg");
    let db = database(
        DbEngine::Postgres,
        &scope,
        &[
            ("POSTGRES_USER", "app"),
            ("POSTGRES_PASSWORD", "pg-secret-1"),
            ("POSTGRES_DB", "appdb"),
        ],
    )
    .await;
    let db = std::sync::Arc::new(db);
    let seeded = {
        let db = db.clone();
        blocking(move || {
            db.psql(
                "appdb",
                "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric);
                 INSERT INTO items SELECT i, 'item ' || i, i * 1.5 FROM generate_series(1, 5000) i;",
            )
            .unwrap();
            db.psql("appdb", "CREATE DATABASE shop").unwrap();
            db.psql(
                "shop",
                "CREATE TABLE orders (id int PRIMARY KEY, total int);
                 INSERT INTO orders SELECT i, i * 7 FROM generate_series(1, 300) i;",
            )
            .unwrap();
            (pg_checksum(&db, "appdb", "items"), pg_checksum(&db, "shop", "orders"))
        })
        .await
    };
    assert!(seeded.0.starts_with("5000:"), "{seeded:?}");

    let relay = Relay::start().await;
    let mut agent = Agent::enroll(&relay, "pg-host", "", &scope).await;
    agent.set_config("[backup]\nenabled = true\n");
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;

    // Discovered by image name; every database (and the globals) dumped on its own.
    let (info, out) = backup_run(&api, &agent.id, None).await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    assert_eq!(out.reports.len(), 1, "{out:?}");
    let report = &out.reports[0];
    assert_eq!(report.job.as_deref(), Some(db.name()));
    let mut keys: Vec<String> = report.databases.iter().map(|d| d.key.clone()).collect();
    keys.sort();
    let job = db.name().to_string();
    assert_eq!(
        keys,
        vec![
            format!("{job}/_globals"),
            format!("{job}/appdb"),
            format!("{job}/postgres"),
            format!("{job}/shop")
        ]
    );
    assert!(report
        .databases
        .iter()
        .all(|d| d.status == BackupStatus::Success && d.size_bytes.unwrap() > 0));

    // The catalogue and the manifest: checksum, sizes, tool versions, the file on disk.
    let listed = list(&api, &agent.id, Some(&job)).await;
    let appdb = listed
        .backups
        .iter()
        .find(|b| b.database == "appdb")
        .expect("appdb backup listed")
        .clone();
    assert!(appdb.bytes > appdb.compressed_bytes, "{appdb:?}");
    assert!(appdb.tool_versions["pg_dump"].contains("15"), "{appdb:?}");
    assert_eq!(appdb.exit_code, Some(0));
    let file = agent.state_dir().join("backups").join(&appdb.file);
    assert!(file.exists(), "{}", file.display());
    assert!(PathBuf::from(format!("{}.manifest.json", file.display())).exists());
    // No password reached the agent's log or any manifest.
    let log = std::fs::read_to_string(agent.log_path()).unwrap();
    assert!(!log.contains("pg-secret-1"));
    assert!(!serde_json::to_string(&listed)
        .unwrap()
        .contains("pg-secret-1"));

    // backup-status.json in the users' format.
    let status = read_status_file(&agent);
    assert_eq!(
        status["databases"][format!("{job}/appdb")]["status"],
        "success"
    );
    assert!(status["last_run"].as_str().unwrap().ends_with('Z'));
    assert!(status["duration_seconds"].is_u64());

    // verify: checksum, decompression, end marker, pg_restore --list in the container.
    let info = run(
        &api,
        &agent.id,
        Command::BackupVerify(BackupVerifyArgs {
            id: appdb.id.clone(),
        }),
    )
    .await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let verified: BackupVerifyOutput = output(&info);
    assert!(verified.ok, "{verified:?}");
    let listing = verified
        .checks
        .iter()
        .find(|c| c.check == "engine_listing")
        .expect("engine listing check");
    assert!(listing.detail.contains("entries"), "{listing:?}");

    // A restore over a database that holds tables is refused without force.
    let info = restore(&api, &agent.id, restore_args(&appdb.id, None, false)).await;
    assert_eq!(info.state, DeliveryState::Failed, "{info:?}");
    assert_eq!(error_code(&info), "restore_refused", "{info:?}");
    assert!(error_message(&info).contains("force"), "{info:?}");

    // Lose the data, restore, compare contents.
    {
        let db = db.clone();
        blocking(move || {
            db.psql("appdb", "DROP TABLE items").unwrap();
        })
        .await;
    }
    let info = restore(&api, &agent.id, restore_args(&appdb.id, None, false)).await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let restored: BackupRestoreOutput = output(&info);
    assert_eq!(restored.database, "appdb");
    assert_eq!(restored.bytes, appdb.bytes);
    let after = {
        let db = db.clone();
        blocking(move || pg_checksum(&db, "appdb", "items")).await
    };
    assert_eq!(after, seeded.0);

    // Into a new database (created by the restore), with force over existing data too.
    let shop = listed
        .backups
        .iter()
        .find(|b| b.database == "shop")
        .unwrap()
        .clone();
    let info = restore(
        &api,
        &agent.id,
        restore_args(&shop.id, Some("shop_copy"), false),
    )
    .await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    {
        let db = db.clone();
        blocking(move || db.psql("shop", "UPDATE orders SET total = 0").unwrap()).await;
    }
    let info = restore(&api, &agent.id, restore_args(&shop.id, None, true)).await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let (copy, original) = {
        let db = db.clone();
        blocking(move || {
            (
                pg_checksum(&db, "shop_copy", "orders"),
                pg_checksum(&db, "shop", "orders"),
            )
        })
        .await
    };
    assert_eq!(copy, seeded.1);
    assert_eq!(original, seeded.1);

    // The relay's history and fleet view.
    let backups: AgentBackups = eventually(DEADLINE, "backup history at the relay", || async {
        let b: AgentBackups = api
            .get(&format!("/api/v1/agents/{}/backups", agent.id))
            .await
            .ok()?;
        (b.databases.len() == 4).then_some(b)
    })
    .await;
    assert_eq!(backups.alert.level, BackupAlertLevel::None, "{backups:?}");

    // The operator CLI, through the relay.
    let out = flotilla_tests::harness::cli(
        &relay,
        &["backup", "verify", "--agent", &agent.id, &appdb.id],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("checksum") && text.contains("engine_listing"),
        "{text}"
    );
    let out = flotilla_tests::harness::cli(&relay, &["backups", &agent.id]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("{job}/appdb")), "{text}");

    // The local CLI reads the same catalogue.
    let out = tokio::process::Command::new(flotilla_tests::harness::bin("flotilla-agent"))
        .args(["backup", "list", "--json", "--state-dir"])
        .arg(agent.state_dir())
        .env("FLOTILLA_ONLY_LABEL", &agent.only_label)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local: BackupListOutput = serde_json::from_slice(&out.stdout).unwrap();
    assert!(local.backups.iter().any(|b| b.id == appdb.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_backups_are_isolated_per_job_and_restore() {
    let scope = scope("bk-maria");
    let db = std::sync::Arc::new(
        database(
            DbEngine::Mariadb,
            &scope,
            &[
                ("MARIADB_ROOT_PASSWORD", "maria-root-2"),
                ("MARIADB_DATABASE", "shop"),
            ],
        )
        .await,
    );
    let seeded = {
        let db = db.clone();
        blocking(move || {
            db.mariadb(
                "shop",
                "CREATE TABLE sales (id INT PRIMARY KEY, name VARCHAR(40), amount DECIMAL(10,2));
                 INSERT INTO sales SELECT seq, CONCAT('sale ', seq), seq / 3 FROM seq_1_to_2000;",
            )
            .unwrap();
            mariadb_checksum(&db, "shop", "sales")
        })
        .await
    };
    assert!(seeded.starts_with("2000:"), "{seeded}");

    let relay = Relay::start().await;
    let mut agent = Agent::enroll(&relay, "maria-host", "", &scope).await;
    let wrong = agent.state_dir().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let (ping_url, pings) = ping_receiver();
    let name = db.name();
    agent.set_config(&format!(
        r#"
[backup]
discover = false
[[backup.jobs]]
name = "good"
container = "{name}"
ping_url = "{ping_url}/good"
[[backup.jobs]]
name = "bad-credentials"
container = "{name}"
engine = "mariadb"
password_file = "{wrong}"
[[backup.jobs]]
name = "exits-nonzero"
container = "{name}"
ping_url = "{ping_url}/bad"
engine = "command"
command = ["sh", "-c", "echo half a dump; echo boom >&2; exit 3"]
[[backup.jobs]]
name = "writes-nothing"
container = "{name}"
engine = "command"
command = ["true"]
"#,
        wrong = wrong.display()
    ));
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;

    let (info, out) = backup_run(&api, &agent.id, None).await;
    assert_eq!(info.state, DeliveryState::Failed, "{info:?}");
    assert_eq!(error_code(&info), "backup_failed");
    let by_job = |job: &str| {
        out.reports
            .iter()
            .find(|r| r.job.as_deref() == Some(job))
            .unwrap_or_else(|| panic!("no report for {job}: {out:?}"))
    };
    let good = by_job("good");
    assert_eq!(good.failed(), 0, "{good:?}");
    assert_eq!(good.databases.len(), 1, "only the user database: {good:?}");
    assert_eq!(good.databases[0].key, "good/shop");
    let bad = by_job("bad-credentials");
    assert!(bad.failed() > 0, "{bad:?}");
    let e = bad.databases[0].error.clone().unwrap();
    assert!(e.contains("Access denied"), "{e}");
    let nonzero = by_job("exits-nonzero");
    let e = nonzero.databases[0].error.clone().unwrap();
    assert!(e.contains("code 3") && e.contains("boom"), "{e}");
    let empty = by_job("writes-nothing");
    assert!(
        empty.databases[0]
            .error
            .as_deref()
            .unwrap()
            .contains("empty"),
        "{empty:?}"
    );
    // Dead-man pings: start and success for the good job, start and fail for the failing one.
    let seen = pings.lock().unwrap().clone();
    for expected in [
        "GET /hc/good/start",
        "GET /hc/good HTTP",
        "GET /hc/bad/start",
        "GET /hc/bad/fail",
    ] {
        assert!(
            seen.iter().any(|l| l.starts_with(expected)),
            "{expected} not among {seen:?}"
        );
    }
    // Failed dumps leave no file behind, partial or whole.
    let files: Vec<String> = walk(&agent.state_dir().join("backups"));
    assert!(
        files
            .iter()
            .all(|f| !f.contains("exits-nonzero") && !f.ends_with(".partial")),
        "{files:?}"
    );

    // The status file says which database failed and why.
    let status = read_status_file(&agent);
    assert_eq!(status["databases"]["good/shop"]["status"], "success");
    assert_eq!(
        status["databases"]["exits-nonzero/_all"]["status"],
        "failed"
    );
    assert!(status["databases"]["exits-nonzero/_all"]["error"]
        .as_str()
        .unwrap()
        .contains("code 3"));

    // Restore the good backup after losing the table.
    let backup = list(&api, &agent.id, Some("good")).await.backups[0].clone();
    assert_eq!(backup.status, BackupStatus::Success);
    {
        let db = db.clone();
        blocking(move || db.mariadb("shop", "DROP TABLE sales").unwrap()).await;
    }
    let info = restore(&api, &agent.id, restore_args(&backup.id, None, false)).await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let after = {
        let db = db.clone();
        blocking(move || mariadb_checksum(&db, "shop", "sales")).await
    };
    assert_eq!(after, seeded);

    // The relay's fleet view lists the failed databases, and the agent's alert is medium.
    let failed: serde_json::Value =
        eventually(DEADLINE, "failed backups in the fleet view", || async {
            let v: serde_json::Value = api.get("/api/v1/backups?status=failed").await.ok()?;
            let n = v["databases"]
                .as_array()?
                .iter()
                .filter(|d| d["agent_id"] == agent.id.as_str())
                .count();
            (n >= 3).then_some(v)
        })
        .await;
    assert!(failed.to_string().contains("exits-nonzero"), "{failed}");
    let mine: AgentBackups = api
        .get(&format!("/api/v1/agents/{}/backups", agent.id))
        .await
        .unwrap();
    assert_eq!(mine.alert.level, BackupAlertLevel::Medium, "{mine:?}");

    // The failing jobs are removed from the configuration: the operator forgets their keys
    // (once through the CLI), and the agent is out of alert.
    let failing: Vec<String> = mine
        .databases
        .iter()
        .filter(|d| d.latest.status == BackupStatus::Failed)
        .map(|d| d.key.clone())
        .collect();
    assert_eq!(failing.len(), 3, "{failing:?}");
    let out = flotilla_tests::harness::cli(
        &relay,
        &["backups", &agent.id, "--key", &failing[0], "--forget"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for key in &failing[1..] {
        api.delete(&format!("/api/v1/agents/{}/backups?key={key}", agent.id))
            .await
            .unwrap();
    }
    let e = api
        .delete(&format!("/api/v1/agents/{}/backups?key=no/such", agent.id))
        .await
        .unwrap_err();
    assert_eq!(flotilla_tests::harness::api_error(&e).status, 404, "{e:#}");
    let mine: AgentBackups = api
        .get(&format!("/api/v1/agents/{}/backups", agent.id))
        .await
        .unwrap();
    assert_eq!(mine.alert.level, BackupAlertLevel::None, "{mine:?}");
    assert_eq!(mine.databases.len(), 1, "{mine:?}");
}

/// A loopback HTTP server that answers 200 to everything and records each request line
/// (a healthchecks.io stand-in for dead-man pings).
fn ping_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hc", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // The rest of the head, up to the blank line.
            let mut header = String::new();
            while reader
                .read_line(&mut header)
                .map(|n| n > 2)
                .unwrap_or(false)
            {
                header.clear();
            }
            record.lock().unwrap().push(line.trim().to_string());
            let mut stream = reader.into_inner();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOK");
        }
    });
    (url, seen)
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_stopped_mid_dump_and_a_full_disk_fail_without_losing_older_backups() {
    let scope = scope("bk-fail");
    let db = std::sync::Arc::new(
        database(
            DbEngine::Postgres,
            &scope,
            &[("POSTGRES_PASSWORD", "pg-secret-3")],
        )
        .await,
    );
    // A small tmpfs as the backup directory: the second, larger dump does not fit.
    let mount = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mount.path())
        .status()
        .expect("mount (the tests run as root)");
    assert!(
        status.success(),
        "cannot mount a tmpfs for the disk-full test"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.path().to_path_buf());

    let relay = Relay::start().await;
    let mut agent = Agent::enroll(&relay, "full-host", "", &scope).await;
    let name = db.name();
    agent.set_config(&format!(
        r#"
[backup]
discover = false
dir = "{dir}"
[[backup.jobs]]
name = "pg"
container = "{name}"
databases = ["postgres"]
[[backup.jobs]]
name = "slow"
container = "{name}"
engine = "command"
command = ["sh", "-c", "echo started; sleep 60; echo never"]
"#,
        dir = mount.path().display()
    ));
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;

    let (info, first) = backup_run(&api, &agent.id, Some("pg")).await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let first_id = first.reports[0].databases[0].backup_id.clone().unwrap();

    // 3 MB of random text: about 1.7 MB compressed, more than the 1 MiB disk.
    {
        let db = db.clone();
        blocking(move || {
            db.psql(
                "postgres",
                "CREATE TABLE filler AS SELECT md5(random()::text) || md5(random()::text) AS v \
                 FROM generate_series(1, 50000)",
            )
            .unwrap()
        })
        .await;
    }
    let (info, second) = backup_run(&api, &agent.id, Some("pg")).await;
    assert_eq!(info.state, DeliveryState::Failed, "{info:?}");
    let e = second.reports[0].databases[0].error.clone().unwrap();
    assert!(e.contains("No space left"), "{e}");
    let listed = list(&api, &agent.id, Some("pg")).await;
    let kept = listed.backups.iter().find(|b| b.id == first_id).unwrap();
    assert_eq!(kept.status, BackupStatus::Success);
    assert!(
        mount.path().join(&kept.file).exists(),
        "the older backup must stay"
    );
    assert!(walk(mount.path()).iter().all(|f| !f.ends_with(".partial")));

    // The container stops while the dump runs: that database fails, nothing is kept.
    let command = api
        .post::<_, CommandInfo>(
            &format!("/api/v1/agents/{}/commands", agent.id),
            &flotilla_shared::api::CreateCommand {
                command: Command::BackupRun(BackupRunArgs {
                    job: Some("slow".into()),
                }),
                ttl_secs: Some(600),
            },
        )
        .await
        .unwrap();
    let dir = mount.path().to_path_buf();
    eventually(DEADLINE, "the slow dump to start writing", || {
        let dir = dir.clone();
        async move {
            walk(&dir)
                .iter()
                .any(|f| f.ends_with(".partial"))
                .then_some(())
        }
    })
    .await;
    {
        let db = db.clone();
        blocking(move || db.stop().unwrap()).await;
    }
    let info = api.wait_final(&command.id, BACKUP_DEADLINE).await;
    assert_eq!(info.state, DeliveryState::Failed, "{info:?}");
    let out: BackupRunOutput = output(&info);
    let d = &out.reports[0].databases[0];
    assert_eq!(d.status, BackupStatus::Failed);
    assert!(walk(mount.path()).iter().all(|f| !f.ends_with(".partial")));
    assert!(mount.path().join(&kept.file).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsite_copies_use_multipart_and_remote_retention_and_encryption() {
    let scope = scope("bk-s3");
    let db = database(DbEngine::Redis, &scope, &[]).await;
    let db = std::sync::Arc::new(db);
    {
        let db = db.clone();
        blocking(move || {
            db.redis(&["SET", "greeting", "hello"]).unwrap();
        })
        .await;
    }
    let s3 = blocking(|| {
        let s3 = start_s3().expect("start moto (pip install 'moto[server]')");
        s3.create_bucket("backups").unwrap();
        s3
    })
    .await;
    let relay = Relay::start().await;
    let mut agent = Agent::enroll(&relay, "s3-host", "", &scope).await;
    let key_id = agent.state_dir().join("s3-key-id");
    let secret = agent.state_dir().join("s3-secret");
    std::fs::write(&key_id, "testing\n").unwrap();
    std::fs::write(&secret, "testing\n").unwrap();
    let name = db.name();
    agent.set_config(&format!(
        r#"
[backup]
discover = false
[[backup.destinations]]
name = "offsite"
type = "s3"
endpoint = "{endpoint}"
region = "us-east-1"
bucket = "backups"
prefix = "fleet"
access_key_id_file = "{key_id}"
secret_access_key_file = "{secret}"
path_style = true
allow_http = true
part_size_bytes = 5242880
[[backup.jobs]]
name = "cache"
container = "{name}"
retention = {{ daily = 1, weekly = 0, monthly = 0 }}
destinations = ["offsite"]
[[backup.jobs]]
name = "blob"
container = "{name}"
engine = "command"
command = ["head", "-c", "12000000", "/dev/urandom"]
destinations = ["offsite"]
[[backup.jobs]]
name = "unreachable"
container = "{name}"
engine = "command"
command = ["echo", "small"]
destinations = ["nowhere"]
[[backup.destinations]]
name = "nowhere"
type = "s3"
endpoint = "http://127.0.0.1:9"
region = "us-east-1"
bucket = "backups"
access_key_id_file = "{key_id}"
secret_access_key_file = "{secret}"
path_style = true
allow_http = true
"#,
        endpoint = s3.endpoint(),
        key_id = key_id.display(),
        secret = secret.display(),
    ));
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;

    // A Redis snapshot, copied off-site with its manifest.
    let (info, first) = backup_run(&api, &agent.id, Some("cache")).await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let sync = first.reports[0].remote_sync.clone().unwrap();
    assert_eq!(sync.status, BackupStatus::Success, "{sync:?}");
    let prefix = "fleet/s3-host/cache/";
    let listed = s3.list_keys("backups", prefix).unwrap();
    assert_eq!(listed.len(), 2, "dump + manifest: {listed:?}");
    let first_id = first.reports[0].databases[0].backup_id.clone().unwrap();
    // Verify reads the RDB end marker; a restore of Redis is refused with the manual way.
    let info = run(
        &api,
        &agent.id,
        Command::BackupVerify(BackupVerifyArgs {
            id: first_id.clone(),
        }),
    )
    .await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let info = restore(&api, &agent.id, restore_args(&first_id, None, true)).await;
    assert_eq!(error_code(&info), "restore_refused", "{info:?}");
    assert!(error_message(&info).contains("dump.rdb"), "{info:?}");

    // A second run the same day: daily = 1 keeps only the newest, here and at the remote.
    let (info, second) = backup_run(&api, &agent.id, Some("cache")).await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    assert_eq!(second.reports[0].pruned, 1, "{second:?}");
    let listed = s3.list_keys("backups", prefix).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed
        .iter()
        .all(|k| !k.contains(first_id.trim_start_matches("bk_"))));
    let local = list(&api, &agent.id, Some("cache")).await;
    assert_eq!(local.backups.len(), 1);

    // 12 MB of random bytes: a multipart upload in 5 MiB parts, identical when read back.
    let (info, _) = backup_run(&api, &agent.id, Some("blob")).await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let manifest = list(&api, &agent.id, Some("blob")).await.backups[0].clone();
    assert!(manifest.compressed_bytes > 10_000_000, "{manifest:?}");
    let copy = manifest
        .destinations
        .iter()
        .find(|d| d.name == "offsite")
        .unwrap();
    let remote = s3.get_object("backups", &copy.location).unwrap();
    let local = std::fs::read(agent.state_dir().join("backups").join(&manifest.file)).unwrap();
    assert_eq!(remote.len(), local.len());
    assert!(
        remote == local,
        "the remote copy differs from the local file"
    );

    // An unreachable remote: the dump is kept locally, the run reports the remote failure.
    let (info, out) = backup_run(&api, &agent.id, Some("unreachable")).await;
    assert_eq!(info.state, DeliveryState::Failed, "{info:?}");
    assert_eq!(error_code(&info), "backup_failed");
    let r = &out.reports[0];
    assert_eq!(r.failed(), 0, "the dump itself worked: {r:?}");
    let sync = r.remote_sync.clone().unwrap();
    assert_eq!(sync.status, BackupStatus::Failed);
    assert!(sync.error.unwrap().contains("nowhere"));
    assert_eq!(r.pruned, 0);
    let status = read_status_file(&agent);
    assert_eq!(status["remote_sync"]["status"], "failed", "{status}");
    // The relay shows the failed copy like a failed database, so the alert is raised.
    let b: AgentBackups = eventually(DEADLINE, "the failed copy at the relay", || async {
        let b: AgentBackups = api
            .get(&format!("/api/v1/agents/{}/backups", agent.id))
            .await
            .ok()?;
        b.databases
            .iter()
            .any(|d| d.key == "unreachable/_offsite")
            .then_some(b)
    })
    .await;
    let offsite = b
        .databases
        .iter()
        .find(|d| d.key == "unreachable/_offsite")
        .unwrap();
    assert_eq!(offsite.latest.status, BackupStatus::Failed);
    assert_eq!(b.alert.level, BackupAlertLevel::Medium, "{b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_backups_decrypt_with_the_age_tool() {
    let scope = scope("bk-age");
    let db = database(
        DbEngine::Postgres,
        &scope,
        &[("POSTGRES_PASSWORD", "pg-secret-4")],
    )
    .await;
    let keys = tempfile::tempdir().unwrap();
    let identity = keys.path().join("key.txt");
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .expect("age-keygen (Debian package age; scripts/test installs it)");
    assert!(out.status.success());
    let text = std::fs::read_to_string(&identity).unwrap();
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();

    let relay = Relay::start().await;
    let mut agent = Agent::enroll(&relay, "age-host", "", &scope).await;
    agent.set_config(&format!(
        "[backup]\ndiscover = false\nage_recipients = [\"{recipient}\"]\n[[backup.jobs]]\nname = \"pg\"\ncontainer = \"{}\"\ndatabases = [\"postgres\"]\n",
        db.name()
    ));
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    let (info, _) = backup_run(&api, &agent.id, Some("pg")).await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let m = list(&api, &agent.id, Some("pg"))
        .await
        .backups
        .into_iter()
        .find(|b| b.database == "postgres")
        .unwrap();
    assert!(m.encrypted && m.file.ends_with(".zst.age"), "{m:?}");
    let file = agent.state_dir().join("backups").join(&m.file);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("age -d -i \"$1\" \"$2\" | zstd -d -c | head -c 5")
        .arg("sh")
        .arg(&identity)
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        b"PGDMP",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // verify checks the checksum; restore is refused (the agent holds no private key).
    let info = run(
        &api,
        &agent.id,
        Command::BackupVerify(BackupVerifyArgs { id: m.id.clone() }),
    )
    .await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let info = restore(&api, &agent.id, restore_args(&m.id, None, true)).await;
    assert_eq!(error_code(&info), "restore_refused", "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_status_file_is_reported_and_stale() {
    let scope = scope("bk-watch");
    let relay = Relay::start_with_config("[alerts]\nevaluate_interval_secs = 1\n", &[]).await;
    let mut agent = Agent::enroll(&relay, "watch-host", "", &scope).await;
    let path = agent.state_dir().join("external-status.json");
    // The users' own example, as their existing script writes it (and long stale by now).
    std::fs::write(
        &path,
        r#"{
  "last_run": "2026-02-27T02:15:00Z",
  "duration_seconds": 342,
  "databases": {
    "chatwoot": { "status": "success", "size_mb": 45 },
    "ghost": { "status": "success", "size_mb": 12 },
    "nextcloud": { "status": "failed", "error": "connection refused" }
  },
  "remote_sync": { "status": "success", "uploaded_mb": 230 }
}"#,
    )
    .unwrap();
    agent.set_config(&format!(
        "[backup]\ndiscover = false\nwatch_status_file = \"{}\"\nwatch_interval_secs = 1\n",
        path.display()
    ));
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    let b: AgentBackups = eventually(DEADLINE, "the watched file at the relay", || async {
        let b: AgentBackups = api
            .get(&format!("/api/v1/agents/{}/backups", agent.id))
            .await
            .ok()?;
        // The three databases and the file's remote_sync.
        (b.databases.len() == 4).then_some(b)
    })
    .await;
    let mut keys: Vec<&str> = b.databases.iter().map(|d| d.key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["_offsite", "chatwoot", "ghost", "nextcloud"]);
    // Everything is older than 48 hours: stale, a hard alert.
    assert_eq!(b.alert.level, BackupAlertLevel::Hard, "{b:?}");
    let nextcloud = b.databases.iter().find(|d| d.key == "nextcloud").unwrap();
    assert_eq!(
        nextcloud.latest.error.as_deref(),
        Some("connection refused")
    );
    // The heartbeat says the file is stale.
    eventually(
        DEADLINE,
        "a heartbeat with the stale status file",
        || async {
            let d = api.agent(&agent.id).await;
            let hb = d.heartbeat?;
            hb.backup.filter(|s| s.status_file_stale).map(|_| ())
        },
    )
    .await;

    // The alerts engine raises it: a hard alert for the agent's backups, one per stale key.
    let firing = |rule: &'static str, subject: &'static str| {
        let api = api.clone();
        let agent_id = agent.id.clone();
        async move {
            let list: Vec<flotilla_shared::alert::AlertInfo> =
                api.get("/api/v1/alerts?state=firing").await.ok()?;
            list.into_iter().find(|a| {
                a.rule == rule
                    && a.subject == subject
                    && a.agent_id.as_deref() == Some(agent_id.as_str())
            })
        }
    };
    let all = eventually(DEADLINE, "a backups_all_failed alert", || {
        firing("backups_all_failed", "backups")
    })
    .await;
    assert_eq!(all.severity, flotilla_shared::alert::Severity::Hard);
    let stale = eventually(DEADLINE, "a backup_stale alert for ghost", || {
        firing("backup_stale", "ghost")
    })
    .await;
    // The script runs again and everything succeeds: the alerts resolve.
    std::fs::write(
        &path,
        format!(
            r#"{{"last_run": "{}", "duration_seconds": 30,
  "databases": {{"chatwoot": {{"status": "success", "size_mb": 45}},
                "ghost": {{"status": "success", "size_mb": 12}},
                "nextcloud": {{"status": "success", "size_mb": 80}}}},
  "remote_sync": {{"status": "success", "uploaded_mb": 137}}}}"#,
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    )
    .unwrap();
    for id in [&all.id, &stale.id] {
        eventually(DEADLINE, "the backup alerts to resolve", || async {
            let a: flotilla_shared::alert::AlertInfo =
                api.get(&format!("/api/v1/alerts/{id}")).await.ok()?;
            (a.state == flotilla_shared::alert::AlertState::Resolved).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_that_hangs_fails_at_its_timeout_and_the_next_job_still_runs() {
    let scope = scope("bk-hang");
    let db = database(DbEngine::Redis, &scope, &[]).await;
    let relay = Relay::start().await;
    let mut agent = Agent::enroll(&relay, "hang-host", "", &scope).await;
    agent.set_config(&format!(
        r#"
[backup]
discover = false
dump_timeout_secs = 3
[[backup.jobs]]
name = "hangs"
container = "{name}"
engine = "command"
command = ["sh", "-c", "echo started; sleep 600"]
[[backup.jobs]]
name = "quick"
container = "{name}"
engine = "command"
command = ["echo", "a small dump"]
"#,
        name = db.name()
    ));
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    let started = std::time::Instant::now();
    let (info, out) = backup_run(&api, &agent.id, None).await;
    assert_eq!(info.state, DeliveryState::Failed, "{info:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let hangs = out
        .reports
        .iter()
        .find(|r| r.job.as_deref() == Some("hangs"))
        .unwrap();
    let e = hangs.databases[0].error.clone().unwrap();
    assert!(e.contains("dump_timeout_secs"), "{e}");
    let quick = out
        .reports
        .iter()
        .find(|r| r.job.as_deref() == Some("quick"))
        .unwrap();
    assert_eq!(quick.failed(), 0, "{quick:?}");
    assert!(walk(&agent.state_dir().join("backups"))
        .iter()
        .all(|f| !f.ends_with(".partial")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_databases_are_backed_up_on_schedule() {
    let scope = scope("bk-cron");
    let db = database(DbEngine::Redis, &scope, &[]).await;
    let relay = Relay::start().await;
    let mut agent = Agent::enroll(&relay, "cron-host", "", &scope).await;
    // Every minute, no jitter: the first run starts at the next minute boundary.
    agent.set_config("[backup]\nschedule = \"* * * * *\"\njitter_secs = 0\n");
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    // The heartbeat announces the next run before it happens.
    eventually(DEADLINE, "a heartbeat with the next run", || async {
        let hb = api.agent(&agent.id).await.heartbeat?;
        hb.backup?.next_run_at.map(|_| ())
    })
    .await;
    let key = format!("{}/_all", db.name());
    let b: AgentBackups = eventually(
        Duration::from_secs(150),
        "a scheduled backup of the discovered Redis at the relay",
        || async {
            let b: AgentBackups = api
                .get(&format!("/api/v1/agents/{}/backups", agent.id))
                .await
                .ok()?;
            b.databases.iter().any(|d| d.key == key).then_some(b)
        },
    )
    .await;
    let d = b.databases.iter().find(|d| d.key == key).unwrap();
    assert_eq!(d.latest.status, BackupStatus::Success, "{d:?}");
    let listed = list(&api, &agent.id, Some(db.name())).await;
    assert!(!listed.backups.is_empty());
    let log = std::fs::read_to_string(agent.log_path()).unwrap();
    assert!(
        log.contains("backup run succeeded"),
        "the run came from the scheduler"
    );
}
