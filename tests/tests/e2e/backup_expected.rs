//! Expected backups end to end (issue 17 part 4): a discovered database that was backed up
//! once is expected in every later run. Real Redis servers in containers, a real agent and
//! relay: stopping one makes the next run fail with the reason in the status file, the run's
//! output and the relay's history, fires the relay's backup alert and keeps the earlier backup;
//! once the container is removed and forgotten, the next run is clean again and the relay has
//! audited the forgetting.

use crate::DEADLINE;
use flotilla_shared::alert::{AlertInfo, AlertState};
use flotilla_shared::api::{AuditRecord, CommandInfo, CreateCommand, DeliveryState};
use flotilla_shared::backup::{
    AgentBackups, BackupListArgs, BackupListOutput, BackupRunArgs, BackupRunOutput, BackupStatus,
};
use flotilla_shared::command::Command;
use flotilla_shared::upkeep::{BackupForgetArgs, BackupForgetOutput};
use flotilla_tests::fixtures::{DbContainer, DbEngine};
use flotilla_tests::harness::{docker_cli, eventually, scope, Agent, Api, Relay};
use std::time::Duration;

/// A few small Redis dumps; allow for a loaded machine.
const RUN_DEADLINE: Duration = Duration::from_secs(180);

async fn redis(scope: &str, role: &str) -> DbContainer {
    let name = flotilla_tests::fixtures::unique_name(&format!("{scope}-{role}"));
    let scope = scope.to_string();
    tokio::task::spawn_blocking(move || {
        DbContainer::start(
            DbEngine::Redis,
            &name,
            &[("flotilla.test.scope", scope.as_str())],
            &[],
        )
    })
    .await
    .unwrap()
    .expect("start a Redis container")
}

async fn command(api: &Api, agent: &str, command: Command) -> CommandInfo {
    let info: CommandInfo = api
        .post(
            &format!("/api/v1/agents/{agent}/commands"),
            &CreateCommand {
                command,
                ttl_secs: Some(3600),
            },
        )
        .await
        .unwrap();
    api.wait_final(&info.id, RUN_DEADLINE).await
}

fn output<T: serde::de::DeserializeOwned>(info: &CommandInfo) -> T {
    let out = info.result.as_ref().and_then(|r| r.output.clone());
    serde_json::from_value(out.unwrap_or_else(|| panic!("no output: {info:?}"))).unwrap()
}

async fn run_all(api: &Api, agent: &str) -> (CommandInfo, BackupRunOutput) {
    let info = command(api, agent, Command::BackupRun(BackupRunArgs { job: None })).await;
    let out = output(&info);
    (info, out)
}

fn status_file(agent: &Agent) -> serde_json::Value {
    let path = agent.state_dir().join("backups/backup-status.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("backup-status.json")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_fails_the_run_until_it_is_removed_and_forgotten() {
    let scope = scope("bk-exp");
    let stay = redis(&scope, "cache").await;
    let gone = redis(&scope, "shop").await;
    stay.redis(&["SET", "k", "v"]).unwrap();
    gone.redis(&["SET", "order", "42"]).unwrap();
    let relay = Relay::start_with_config(
        "[alerts]\nevaluate_interval_secs = 1\nmedium_notify_after_secs = 0\n",
        &[],
    )
    .await;
    let mut agent = Agent::enroll(&relay, "exp-host", "", &scope).await;
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    let gone_key = format!("{}/_all", gone.name());
    let stay_key = format!("{}/_all", stay.name());

    // 1. Both discovered databases are backed up.
    let (info, _) = run_all(&api, &agent.id).await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let first: BackupListOutput = output(
        &command(
            &api,
            &agent.id,
            Command::BackupList(BackupListArgs {
                job: Some(gone.name().to_string()),
                database: None,
                limit: Some(10),
                offsite: false,
                destination: None,
                source_agent: None,
            }),
        )
        .await,
    );
    let earlier = first
        .backups
        .first()
        .expect("a backup of the shop database")
        .clone();
    assert_eq!(earlier.status, BackupStatus::Success);
    let earlier_file = agent.state_dir().join("backups").join(&earlier.file);
    assert!(earlier_file.is_file(), "{}", earlier_file.display());

    // 2. Stopped: the run reports it failed, with the reason, instead of leaving it out.
    let g = gone.name().to_string();
    docker_cli(&["stop", "--time", "5", &g])
        .await
        .expect("docker stop");
    let (info, out) = run_all(&api, &agent.id).await;
    assert_eq!(info.state, DeliveryState::Failed, "{info:?}");
    let reason = format!("container {g} is not running");
    let shop = out
        .reports
        .iter()
        .flat_map(|r| r.databases.iter())
        .find(|d| d.key == gone_key)
        .unwrap_or_else(|| panic!("the stopped database is in the run: {out:?}"));
    assert_eq!(shop.status, BackupStatus::Failed);
    assert_eq!(shop.error.as_deref(), Some(reason.as_str()));
    let file = status_file(&agent);
    assert_eq!(file["databases"][&gone_key]["status"], "failed", "{file}");
    assert_eq!(
        file["databases"][&gone_key]["error"],
        reason.as_str(),
        "{file}"
    );
    assert_eq!(file["databases"][&stay_key]["status"], "success", "{file}");
    // At the relay: the database's latest state and the medium backup alert.
    let b: AgentBackups = eventually(DEADLINE, "the failure at the relay", || async {
        let b: AgentBackups = api
            .get(&format!("/api/v1/agents/{}/backups", agent.id))
            .await
            .ok()?;
        let d = b.databases.iter().find(|d| d.key == gone_key)?;
        (d.latest.status == BackupStatus::Failed).then_some(b)
    })
    .await;
    let d = b.databases.iter().find(|d| d.key == gone_key).unwrap();
    assert_eq!(d.latest.error.as_deref(), Some(reason.as_str()), "{d:?}");
    let alert: AlertInfo = eventually(DEADLINE, "backup_failed firing", || async {
        let list: Vec<AlertInfo> = api.get("/api/v1/alerts?state=all&limit=1000").await.ok()?;
        list.into_iter().find(|a| {
            a.rule == "backup_failed" && a.subject == gone_key && a.state == AlertState::Firing
        })
    })
    .await;
    assert!(alert.message.contains("not running"), "{alert:?}");
    // Nothing was pruned: the earlier backup is listed and on disk.
    assert!(earlier_file.is_file(), "the earlier backup is intact");

    // 3. Removed: still expected (gone, with how to forget it).
    docker_cli(&["rm", "--force", &g]).await.expect("docker rm");
    let (info, out) = run_all(&api, &agent.id).await;
    assert_eq!(info.state, DeliveryState::Failed, "{info:?}");
    let shop = out
        .reports
        .iter()
        .flat_map(|r| r.databases.iter())
        .find(|d| d.key == gone_key)
        .expect("the removed database is still expected");
    let e = shop.error.clone().unwrap_or_default();
    assert!(
        e.contains(&format!("container {g} is gone")) && e.contains("forget"),
        "{e}"
    );

    // 4. Forgotten: the next run is clean; the relay forgot the key and audited it.
    let info = command(
        &api,
        &agent.id,
        Command::BackupForget(BackupForgetArgs { job: g.clone() }),
    )
    .await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?}");
    let forgot: BackupForgetOutput = output(&info);
    assert_eq!(forgot.keys, vec![gone_key.clone()]);
    let (info, out) = run_all(&api, &agent.id).await;
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:?} {out:?}");
    assert!(out
        .reports
        .iter()
        .all(|r| r.databases.iter().all(|d| d.key != gone_key)));
    let file = status_file(&agent);
    assert!(file["databases"].get(&gone_key).is_none(), "{file}");
    assert_eq!(file["databases"][&stay_key]["status"], "success", "{file}");
    let audit: AuditRecord = eventually(DEADLINE, "backup.forgotten in the audit log", || async {
        let trail: Vec<AuditRecord> = api.get("/api/v1/audit?limit=1000").await.ok()?;
        trail.into_iter().find(|a| a.action == "backup.forgotten")
    })
    .await;
    assert_eq!(audit.actor, format!("agent:{}", agent.id));
    assert!(audit.target.ends_with(&g), "{audit:?}");
    assert!(audit.detail.unwrap_or_default().contains("operator"));
    eventually(DEADLINE, "the key gone at the relay", || async {
        let b: AgentBackups = api
            .get(&format!("/api/v1/agents/{}/backups", agent.id))
            .await
            .ok()?;
        b.databases.iter().all(|d| d.key != gone_key).then_some(())
    })
    .await;
    eventually(DEADLINE, "the backup alert resolved", || async {
        let a: AlertInfo = api
            .get(&format!("/api/v1/alerts/{}", alert.id))
            .await
            .ok()?;
        (a.state == AlertState::Resolved).then_some(())
    })
    .await;
    // The earlier backup of the forgotten database is still restorable material.
    assert!(earlier_file.is_file());
}
