//! Restore onto a replacement server (issue 17 §3), end to end: agent A backs a real
//! PostgreSQL up to moto's S3 with age encryption; A's state directory (catalogue and local
//! backups) and the database container with its volume are destroyed; a new agent B, enrolled
//! on the same engine with the same destination settings and an empty catalogue, lists A's
//! backups off-site (command, `flotilla-agent backup list --offsite`, `flotilla backup list
//! --offsite`) and restores one into a new empty PostgreSQL container with the identity file;
//! row count and content checksum match. A tampered off-site copy is refused before anything
//! reaches the database.

use super::backup::{
    backup_run, blocking, database, error_code, error_message, output, pg_checksum, run,
};
use crate::DEADLINE;
use flotilla_shared::api::DeliveryState;
use flotilla_shared::backup::{
    BackupListArgs, BackupListOutput, BackupRestoreArgs, BackupRestoreOutput, BackupStatus,
};
use flotilla_shared::command::Command;
use flotilla_tests::fixtures::{start_s3, DbEngine};
use flotilla_tests::harness::{scope, Agent, Relay};

/// `[backup]` with one S3 destination at moto (credentials files in `dir`) and `extra`.
fn backup_config(dir: &std::path::Path, endpoint: &str, extra: &str) -> String {
    let key_id = dir.join("s3-key-id");
    let secret = dir.join("s3-secret");
    std::fs::write(&key_id, "testing\n").unwrap();
    std::fs::write(&secret, "testing\n").unwrap();
    format!(
        r#"
[backup]
discover = false
{extra}
[[backup.destinations]]
name = "offsite"
type = "s3"
endpoint = "{endpoint}"
region = "us-east-1"
bucket = "backups"
prefix = "fleet"
access_key_id_file = "{}"
secret_access_key_file = "{}"
path_style = true
allow_http = true
"#,
        key_id.display(),
        secret.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_servers_encrypted_backup_restores_on_a_new_agent() {
    let scope = scope("restore");
    // The operator's identity, kept off the servers (here: a directory of the test).
    let safe = tempfile::tempdir().unwrap();
    let identity = safe.path().join("backup-key.txt");
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .expect("age-keygen (Debian package age)");
    assert!(out.status.success());
    let recipient = std::fs::read_to_string(&identity)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();

    let env = [
        ("POSTGRES_USER", "app"),
        ("POSTGRES_PASSWORD", "pg-secret-restore"),
        ("POSTGRES_DB", "appdb"),
    ];
    let db = std::sync::Arc::new(database(DbEngine::Postgres, &scope, &env).await);
    let seeded = {
        let db = db.clone();
        blocking(move || {
            db.psql(
                "appdb",
                "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric);
                 INSERT INTO items SELECT i, 'item ' || i, i * 1.5 FROM generate_series(1, 20000) i;",
            )
            .unwrap();
            pg_checksum(&db, "appdb", "items")
        })
        .await
    };
    assert!(seeded.starts_with("20000:"), "{seeded}");
    let s3 = blocking(|| {
        let s3 = start_s3().expect("start moto (pip install 'moto[server]')");
        s3.create_bucket("backups").unwrap();
        s3
    })
    .await;

    // Server A: its nightly job, encrypted, copied off-site.
    let relay = Relay::start().await;
    let api = relay.api();
    let mut a = Agent::enroll(&relay, "vps-a", "", &scope).await;
    let job = format!(
        "age_recipients = [\"{recipient}\"]\n[[backup.jobs]]\nname = \"pg\"\ncontainer = \"{}\"\n\
         databases = [\"appdb\"]\ndestinations = [\"offsite\"]\n",
        db.name()
    );
    a.set_config(&backup_config(a.state_dir(), &s3.endpoint(), &job));
    a.run().await;
    api.wait_online(&a.id, DEADLINE).await;
    let (info, report) = backup_run(&api, &a.id, Some("pg")).await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let sync = report.reports[0].remote_sync.clone().unwrap();
    assert_eq!(sync.status, BackupStatus::Success, "{sync:?}");
    let backup_id = report.reports[0]
        .databases
        .iter()
        .find(|d| d.database.as_deref() == Some("appdb"))
        .and_then(|d| d.backup_id.clone())
        .expect("the appdb backup");

    // Server A is gone: its agent, its state directory (catalogue, local backups, the
    // credentials files) and the database container with its volume.
    a.kill().await;
    std::fs::remove_dir_all(a.state_dir()).unwrap();
    drop(std::sync::Arc::into_inner(db).expect("one owner"));

    // Server B: freshly enrolled on the same engine, same destination, empty catalogue.
    let mut b = Agent::enroll(&relay, "vps-b", "", &scope).await;
    b.set_config(&backup_config(b.state_dir(), &s3.endpoint(), ""));
    b.run().await;
    api.wait_online(&b.id, DEADLINE).await;
    let fresh = std::sync::Arc::new(database(DbEngine::Postgres, &scope, &env).await);

    let list = |args: BackupListArgs| run(&api, &b.id, Command::BackupList(args));
    let own: BackupListOutput = output(&list(BackupListArgs::default()).await);
    assert!(own.backups.is_empty() && own.offsite.is_empty(), "{own:?}");
    let info = list(BackupListArgs {
        offsite: true,
        ..Default::default()
    })
    .await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let listed: BackupListOutput = output(&info);
    assert!(listed.offsite_errors.is_empty(), "{listed:?}");
    let found = listed
        .offsite
        .iter()
        .find(|o| o.manifest.id == backup_id)
        .unwrap_or_else(|| panic!("{backup_id} not listed off-site: {listed:?}"));
    assert_eq!(found.source_agent, "vps-a");
    assert_eq!(found.destination, "offsite");
    assert_eq!(found.manifest.job, "pg");
    assert_eq!(found.manifest.database, "appdb");
    assert!(found.manifest.encrypted, "{found:?}");
    assert!(found.location.starts_with("fleet/vps-a/"), "{found:?}");
    // Filters: by source agent and job; an unknown agent lists nothing.
    let other: BackupListOutput = output(
        &list(BackupListArgs {
            offsite: true,
            source_agent: Some("vps-z".into()),
            ..Default::default()
        })
        .await,
    );
    assert!(other.offsite.is_empty(), "{other:?}");

    // The host CLI and the operator CLI list the same.
    let out = tokio::process::Command::new(flotilla_tests::harness::bin("flotilla-agent"))
        .args([
            "backup",
            "list",
            "--offsite",
            "--source-agent",
            "vps-a",
            "--state-dir",
        ])
        .arg(b.state_dir())
        .arg("--config")
        .arg(b.state_dir().join("agent-test.toml"))
        .env("FLOTILLA_ONLY_LABEL", &b.only_label)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&backup_id) && text.contains("vps-a") && text.contains("pg/appdb"),
        "{text}"
    );
    let out =
        flotilla_tests::harness::cli(&relay, &["backup", "list", "--agent", &b.id, "--offsite"])
            .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&backup_id) && text.contains("vps-a"),
        "{text}"
    );

    let restore_args = |identity: Option<&std::path::Path>, force: bool| BackupRestoreArgs {
        id: backup_id.clone(),
        into: Some(fresh.name().to_string()),
        force,
        offsite: true,
        identity_file: identity.map(|p| p.display().to_string()),
        ..Default::default()
    };
    // Without the identity: refused, saying how.
    let info = run(
        &api,
        &b.id,
        Command::BackupRestore(restore_args(None, false)),
    )
    .await;
    assert_eq!(error_code(&info), "restore_refused", "{info:?}");
    assert!(error_message(&info).contains("identity"), "{info:?}");
    // A wrong identity: refused before anything is written.
    let wrong = safe.path().join("wrong-key.txt");
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&wrong)
        .output()
        .unwrap();
    assert!(out.status.success());
    let info = run(
        &api,
        &b.id,
        Command::BackupRestore(restore_args(Some(&wrong), false)),
    )
    .await;
    assert_eq!(error_code(&info), "restore_refused", "{info:?}");
    assert!(error_message(&info).contains("no key"), "{info:?}");

    // With it: downloaded, verified, decrypted and restored into the new container.
    let info = run(
        &api,
        &b.id,
        Command::BackupRestore(restore_args(Some(&identity), false)),
    )
    .await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let restored: BackupRestoreOutput = output(&info);
    assert_eq!(restored.container, fresh.name());
    assert_eq!(restored.database, "appdb");
    let check = {
        let fresh = fresh.clone();
        move || pg_checksum(&fresh, "appdb", "items")
    };
    assert_eq!(blocking(check.clone()).await, seeded);
    // The download is not left behind.
    let leftovers: Vec<_> = std::fs::read_dir(b.state_dir().join("backups/restore"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The safety rules hold: the database now holds tables.
    let info = run(
        &api,
        &b.id,
        Command::BackupRestore(restore_args(Some(&identity), false)),
    )
    .await;
    assert_eq!(error_code(&info), "restore_refused", "{info:?}");
    assert!(error_message(&info).contains("force"), "{info:?}");

    // A damaged off-site copy fails its checksum before anything is written, even forced
    // (pg_restore --clean would have dropped the table).
    let mut damaged = s3.get_object("backups", &found.location).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    s3.put_object("backups", &found.location, &damaged).unwrap();
    let info = run(
        &api,
        &b.id,
        Command::BackupRestore(restore_args(Some(&identity), true)),
    )
    .await;
    assert_eq!(error_code(&info), "restore_failed", "{info:?}");
    assert!(error_message(&info).contains("damaged"), "{info:?}");
    assert_eq!(blocking(check).await, seeded);
}
