//! The relay backs up its own database (issue 15 item 8): real relays, a real agent, a real
//! PostgreSQL. SQLite: a scheduled backup under the lease and a `backup run` while the relay
//! serves, `verify`, `list`, restore onto a fresh data dir from the destination copy, and a
//! relay started there keeps the agent's enrollment and the history; a non-empty target is
//! refused without `--force`. PostgreSQL: `pg_dump` and `pg_restore` into a fresh database.
//! A failing backup raises the hard `relay_backup` alert.

use crate::DEADLINE;
use flotilla_shared::alert::{AlertInfo, Severity};
use flotilla_shared::api::{AuditRecord, DeliveryState};
use flotilla_shared::command::Command;
use flotilla_tests::harness::{bin, eventually, scope, Agent, Api, Relay};
use flotilla_tests::pg::PgServer;
use std::path::Path;

/// `flotilla-relay <args>`: (success, stdout + stderr).
async fn relay_cli(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(bin("flotilla-relay"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("spawn flotilla-relay");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn backup_toml(enabled: bool, destination: &Path) -> String {
    format!(
        "[backup]\nenabled = {enabled}\n\n[[backup.destinations]]\nname = \"nas\"\ntype = \"dir\"\n\
         path = \"{}\"\n",
        destination.display()
    )
}

/// The name in `backup run`'s output (`backup relay-... done: ...`).
fn backup_name(out: &str) -> String {
    out.split_whitespace()
        .find(|w| w.starts_with("relay-"))
        .unwrap_or_else(|| panic!("no backup name in {out:?}"))
        .to_string()
}

async fn ping(api: &Api, agent: &str) -> String {
    let info = api
        .command(agent, Command::Ping(Default::default()), Some(30))
        .await
        .expect("ping");
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    info.id
}

async fn audit(api: &Api) -> Vec<AuditRecord> {
    api.get("/api/v1/audit?limit=1000").await.expect("audit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backup_while_serving_then_restore_onto_a_fresh_data_dir() {
    let scope = scope("relay_backup");
    let nas = tempfile::tempdir().unwrap();
    let mut relay = Relay::start_with_config(&backup_toml(true, nas.path()), &[]).await;
    let agent = Agent::start(&relay, "rb-agent", "", &scope).await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    let pinged = ping(&api, &agent.id).await;

    // The scheduled engine backs up at once (no success yet), to the local dir and the NAS.
    let local = relay.dir.path().join("backups");
    eventually(
        DEADLINE,
        "the scheduled backup's manifest at the NAS",
        || {
            let dir = nas.path().join("relay");
            async move {
                std::fs::read_dir(&dir)
                    .ok()?
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .then_some(())
            }
        },
    )
    .await;

    // `backup run` beside the serving relay: the snapshot is online. (One backup per second,
    // so it may have to wait out the scheduled one's second.)
    let data_dir = relay.dir.path().to_str().unwrap().to_string();
    let config = relay.dir.path().join("relay.toml");
    let config = config.to_str().unwrap().to_string();
    let state = ["--data-dir", data_dir.as_str(), "--config", config.as_str()];
    let out = eventually(DEADLINE, "flotilla-relay backup run", || async {
        let (ok, out) = relay_cli(&[&["backup", "run"][..], &state[..]].concat()).await;
        ok.then_some(out)
    })
    .await;
    let name = backup_name(&out);
    let (ok, out) =
        relay_cli(&[&["backup", "verify", name.as_str()][..], &state[..]].concat()).await;
    assert!(ok && out.contains("integrity_check ok"), "{out}");
    let (ok, out) = relay_cli(&[&["backup", "list"][..], &state[..]].concat()).await;
    assert!(ok, "{out}");
    for place in ["local", "nas"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&name) && l.contains(place)),
            "{name} {place} in {out}"
        );
    }
    assert!(local.join(format!("{name}.json")).is_file());
    let audit_before = audit(&api).await;
    assert!(!audit_before.is_empty());

    // A damaged copy fails verify, naming the checksum.
    let snapshot = local.join(format!("{name}.sqlite.zst"));
    let good = std::fs::read(&snapshot).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0xff;
    std::fs::write(&snapshot, &bad).unwrap();
    let (ok, out) =
        relay_cli(&[&["backup", "verify", name.as_str()][..], &state[..]].concat()).await;
    assert!(!ok && out.contains("checksum mismatch"), "{out}");
    std::fs::write(&snapshot, &good).unwrap();

    relay.terminate(DEADLINE).await;

    // The old data dir still holds a relay: refused without --force.
    let (ok, out) = relay_cli(&[&["restore", name.as_str()][..], &state[..]].concat()).await;
    assert!(!ok, "{out}");
    assert!(out.contains("refuses a non-empty target"), "{out}");

    // Onto a fresh data dir, from the NAS copy (the fresh dir has no local copies).
    let fresh = tempfile::Builder::new()
        .prefix("flotilla-relay-")
        .tempdir()
        .unwrap();
    let fresh_dir = fresh.path().to_str().unwrap().to_string();
    let (ok, out) = relay_cli(&[
        "restore",
        name.as_str(),
        "--data-dir",
        fresh_dir.as_str(),
        "--config",
        config.as_str(),
    ])
    .await;
    assert!(ok, "{out}");
    assert!(fresh.path().join("relay.db").is_file() && fresh.path().join("relay.key").is_file());

    let restored = Relay::start_on(fresh, &relay.addr, &relay.admin_token, &[]).await;
    let api = restored.api();
    // The agent comes back with its enrollment and accepts the restored relay's commands.
    api.wait_online(&agent.id, DEADLINE).await;
    assert_eq!(
        api.command_info(&pinged).await.state,
        DeliveryState::Succeeded
    );
    ping(&api, &agent.id).await;
    let audit_after = audit(&api).await;
    for row in &audit_before {
        assert!(audit_after.contains(row), "audit row {row:?} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_relay_backup_is_a_hard_alert() {
    // The destination is a path below a regular file: every copy fails.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let toml = backup_toml(true, &blocker.join("nas")).replace(
        "[backup]\n",
        "[alerts]\nevaluate_interval_secs = 1\n\n[backup]\n",
    );
    let relay = Relay::start_with_config(&toml, &[]).await;
    let api = relay.api();
    let alert = eventually(DEADLINE, "a firing relay_backup alert", || async {
        let all: Vec<AlertInfo> = api.get("/api/v1/alerts?limit=1000").await.ok()?;
        all.into_iter().find(|a| a.rule == "relay_backup")
    })
    .await;
    assert_eq!(alert.severity, Severity::Hard);
    assert_eq!(alert.subject, "failed");
    assert!(
        alert.message.contains("destination nas"),
        "{}",
        alert.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_with_pg_dump_restores_into_a_fresh_database() {
    let pg = PgServer::start();
    let scope = scope("relay_backup_pg");
    let nas = tempfile::tempdir().unwrap();
    let mut relay = Relay::start_with_config(
        &backup_toml(false, nas.path()),
        &[("FLOTILLA_DATABASE_URL", &pg.url)],
    )
    .await;
    let agent = Agent::start(&relay, "rb-pg-agent", "", &scope).await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    let pinged = ping(&api, &agent.id).await;

    let data_dir = relay.dir.path().to_str().unwrap().to_string();
    let config = relay.dir.path().join("relay.toml");
    let config = config.to_str().unwrap().to_string();
    let state = [
        "--data-dir",
        data_dir.as_str(),
        "--config",
        config.as_str(),
        "--database",
        pg.url.as_str(),
    ];
    let (ok, out) = relay_cli(&[&["backup", "run"][..], &state[..]].concat()).await;
    assert!(ok, "{out}");
    let name = backup_name(&out);
    assert!(out.contains(".pgdump"), "{out}");
    let (ok, out) =
        relay_cli(&[&["backup", "verify", name.as_str()][..], &state[..]].concat()).await;
    assert!(ok && out.contains("pg_restore --list ok"), "{out}");
    relay.terminate(DEADLINE).await;

    let created = std::process::Command::new("psql")
        .args([pg.url.as_str(), "-c", "CREATE DATABASE restored"])
        .output()
        .expect("run psql");
    assert!(created.status.success(), "{created:?}");
    let url = format!("{}/restored", pg.url.rsplit_once('/').unwrap().0);
    let fresh = tempfile::Builder::new()
        .prefix("flotilla-relay-")
        .tempdir()
        .unwrap();
    let fresh_dir = fresh.path().to_str().unwrap().to_string();
    let manifest = relay
        .dir
        .path()
        .join("backups")
        .join(format!("{name}.json"));
    let target = [
        "restore",
        manifest.to_str().unwrap(),
        "--data-dir",
        fresh_dir.as_str(),
        "--database",
        url.as_str(),
    ];
    let (ok, out) = relay_cli(&target).await;
    assert!(ok, "{out}");
    // Now it holds the relay's tables (and the key): refused without --force.
    std::fs::remove_file(fresh.path().join("relay.key")).unwrap();
    let (ok, out) = relay_cli(&target).await;
    assert!(!ok && out.contains("is not empty"), "{out}");
    let (ok, out) = relay_cli(&[&target[..], &["--force"][..]].concat()).await;
    assert!(ok, "{out}");

    let restored = Relay::start_on(
        fresh,
        &relay.addr,
        &relay.admin_token,
        &[("FLOTILLA_DATABASE_URL", &url)],
    )
    .await;
    let api = restored.api();
    api.wait_online(&agent.id, DEADLINE).await;
    assert_eq!(
        api.command_info(&pinged).await.state,
        DeliveryState::Succeeded
    );
    ping(&api, &agent.id).await;
}
