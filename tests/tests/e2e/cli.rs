//! The operator CLI `flotilla` and the all-in-one `flotilla-relay dev` mode, as a user runs them.

use crate::{images, DEADLINE};
use flotilla_shared::api::{AgentInfo, CommandInfo, DeliveryState, JobInfo, JobState};
use flotilla_shared::command::ContainerListOutput;
use flotilla_tests::harness::{bin, cli, eventually, scope, Api, Containers, Relay};
use std::process::Stdio;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn both(o: &std::process::Output) -> String {
    format!("{}{}", stdout(o), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_tokens_agents_commands_and_jobs() {
    let img = images().await;
    let scope = scope("cli");
    let docker = Containers::new(&scope).await;
    let web = docker.run("web", &img.v1, &[], &[], true).await;
    let relay = Relay::start().await;

    // token create --json prints {"token": ...}
    let out = cli(
        &relay,
        &[
            "token",
            "create",
            "--labels",
            "region=eu,tier=build",
            "--ttl",
            "1h",
            "--uses",
            "1",
            "--json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", both(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = created["token"].as_str().unwrap().to_string();

    let dir = tempfile::tempdir().unwrap();
    let enrolled =
        flotilla_tests::harness::enroll_with_token(&relay.url(), &token, dir.path(), "cli-host")
            .await
            .unwrap();
    assert!(enrolled.status.success(), "{}", both(&enrolled));
    let mut agent_proc = tokio::process::Command::new(bin("flotilla-agent"))
        .arg("run")
        .arg("--state-dir")
        .arg(dir.path())
        .env(
            "FLOTILLA_ONLY_LABEL",
            format!("flotilla.test.scope={scope}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let api = relay.api();
    let agents = eventually(DEADLINE, "cli agent listed online", || async {
        let out = cli(&relay, &["agents", "--selector", "tier=build", "--json"]).await;
        let list: Vec<AgentInfo> = serde_json::from_slice(&out.stdout).ok()?;
        (list.len() == 1 && list[0].status.as_str() == "online").then_some(list)
    })
    .await;
    let id = agents[0].id.clone();
    api.wait_online(&id, DEADLINE).await;

    // Human table mentions the agent; show prints heartbeat facts.
    let out = cli(&relay, &["agents"]).await;
    assert!(
        out.status.success() && stdout(&out).contains("cli-host"),
        "{}",
        both(&out)
    );
    let out = cli(&relay, &["agent", "show", &id]).await;
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        stdout(&out).contains(&web),
        "container listed in show: {}",
        stdout(&out)
    );

    // run --wait --json returns the agent's real containers.
    let out = cli(
        &relay,
        &["run", "--agent", &id, "container.list", "--wait", "--json"],
    )
    .await;
    assert!(out.status.success(), "{}", both(&out));
    let info: CommandInfo = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info.state, DeliveryState::Succeeded);
    let list: ContainerListOutput =
        serde_json::from_value(info.result.unwrap().output.unwrap()).unwrap();
    assert_eq!(list.containers.len(), 1);
    assert_eq!(list.containers[0].name, web);

    // stop with a timeout, for real.
    let out = cli(
        &relay,
        &[
            "run",
            "--agent",
            &id,
            "container.stop",
            "--container",
            &web,
            "--timeout",
            "1",
            "--wait",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", both(&out));
    assert!(!docker.running(&web).await);

    // A failing command exits 1 and says why.
    let out = cli(
        &relay,
        &[
            "run",
            "--agent",
            &id,
            "container.start",
            "--container",
            "nope",
            "--wait",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(both(&out).contains("no such container"), "{}", both(&out));

    // Fan-out with limits, then job show.
    let out = cli(
        &relay,
        &[
            "run",
            "--selector",
            "tier=build",
            "container.start",
            "--container",
            &web,
            "--max-concurrency",
            "1",
            "--max-errors",
            "0",
            "--wait",
            "--json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", both(&out));
    let job: JobInfo = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job.state, JobState::Completed);
    assert!(docker.running(&web).await);
    let out = cli(&relay, &["job", "show", &job.id]).await;
    assert!(
        out.status.success() && stdout(&out).contains("cli-host"),
        "{}",
        both(&out)
    );

    // API tokens: create, list, revoke through the CLI.
    let out = cli(
        &relay,
        &[
            "api-token",
            "create",
            "--name",
            "ci-bot",
            "--scope",
            "read",
            "--json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", both(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tok_id = created["id"].as_str().unwrap().to_string();
    let out = cli(&relay, &["api-token", "list"]).await;
    assert!(stdout(&out).contains("ci-bot"), "{}", both(&out));
    let out = cli(&relay, &["api-token", "revoke", &tok_id]).await;
    assert!(out.status.success(), "{}", both(&out));
    let bot = Api::new(&relay.url(), created["token"].as_str().unwrap());
    assert!(bot.get::<Vec<AgentInfo>>("/api/v1/agents").await.is_err());

    // The audit trail shows what this session did.
    let out = cli(&relay, &["audit", "--json"]).await;
    assert!(out.status.success(), "{}", both(&out));
    let trail: Vec<flotilla_shared::api::AuditRecord> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        trail
            .iter()
            .any(|r| r.action == "job.create" && r.outcome == "ok"),
        "{trail:#?}"
    );
    let out = cli(&relay, &["audit"]).await;
    assert!(stdout(&out).contains("command.create"), "{}", both(&out));

    // Missing token: a clear error and exit 2.
    let out = tokio::process::Command::new(bin("flotilla"))
        .args(["agents"])
        .env("FLOTILLA_ADDR", relay.url())
        .env_remove("FLOTILLA_TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    agent_proc.kill().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_starts_a_relay_with_a_local_agent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
    let mut dev = tokio::process::Command::new(bin("flotilla-relay"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("FLOTILLA_HEARTBEAT_INTERVAL_SECS", "1")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = eventually(DEADLINE, "dev relay listen-addr", || async {
        std::fs::read_to_string(data.join("listen-addr"))
            .ok()
            .filter(|s| !s.trim().is_empty())
    })
    .await;
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let api = Api::new(&format!("http://{}", addr.trim()), token.trim());
    let agent = eventually(DEADLINE, "dev agent online", || async {
        let list: Vec<AgentInfo> = api.get("/api/v1/agents").await.ok()?;
        list.into_iter().find(|a| a.status.as_str() == "online")
    })
    .await;
    api.wait_online(&agent.id, DEADLINE).await;
    let printed = std::fs::read_to_string(dir.path().join("dev.log")).unwrap();
    assert!(
        printed.contains(token.trim()),
        "dev mode prints the admin token: {printed}"
    );
    assert!(
        printed.contains("flotilla agents"),
        "dev mode prints example commands: {printed}"
    );
    // The printed dashboard URL serves the sign-in page.
    let dashboard = format!("http://{}/ui/", addr.trim());
    assert!(
        printed.contains(&dashboard),
        "dev mode prints the dashboard URL: {printed}"
    );
    let login = reqwest::get(&dashboard).await.unwrap();
    assert_eq!(login.url().path(), "/ui/login");
    assert!(login.text().await.unwrap().contains("name=\"token\""));
    dev.kill().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_refused_naming_what_was_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("relay.toml");
    std::fs::write(&conf, "listen = \"127.0.0.1:0\"\nheartbeat_interval = 5\n").unwrap();
    let out = tokio::process::Command::new(bin("flotilla-relay"))
        .args(["serve", "--config"])
        .arg(&conf)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("RUST_BACKTRACE")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("heartbeat_interval") && err.contains("line 2"),
        "{err}"
    );
    // One line for the operator, not a debug dump with a backtrace.
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{err}"
    );

    let out = tokio::process::Command::new(bin("flotilla-relay"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("FLOTILLA_MAX_FRAME_BYTES", "lots")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FLOTILLA_MAX_FRAME_BYTES"));

    let out = tokio::process::Command::new(bin("flotilla-agent"))
        .arg("run")
        .arg("--state-dir")
        .arg(dir.path().join("agent"))
        .env("FLOTILLA_ONLY_LABEL", "nolabel")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only_label"),
        "{}",
        both(&out)
    );
}

/// `flotilla events --json` follows the real relay's stream, authenticated from
/// `FLOTILLA_TOKEN_FILE`: an agent that enrolls and connects shows up as events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_tails_the_event_stream_with_a_token_file() {
    use tokio::io::AsyncBufReadExt;
    let scope = scope("cli-events");
    let relay = Relay::start().await;
    let dir = flotilla_testkit::temp_dir("cli-events");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", relay.admin_token)).unwrap();
    let clients = |m: &str| -> Option<u64> {
        m.lines()
            .find_map(|l| l.strip_prefix("flotilla_stream_clients "))
            .and_then(|n| n.trim().parse().ok())
    };
    let metrics = || async {
        reqwest::Client::new()
            .get(format!("{}/metrics", relay.url()))
            .bearer_auth(&relay.admin_token)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    let before = clients(&metrics().await.expect("metrics")).expect("the stream clients gauge");
    let mut events = tokio::process::Command::new(bin("flotilla"))
        .args(["events", "--json", "--kinds", "agent"])
        .env("FLOTILLA_ADDR", relay.url())
        .env_remove("FLOTILLA_TOKEN")
        .env("FLOTILLA_TOKEN_FILE", &token_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn flotilla events");
    let mut lines = tokio::io::BufReader::new(events.stdout.take().unwrap()).lines();
    // The stream is open once the relay counts its client; then the agent comes.
    eventually(DEADLINE, "the CLI's stream client counted", || async {
        (clients(&metrics().await?)? > before).then_some(())
    })
    .await;
    let agent =
        flotilla_tests::harness::Agent::start(&relay, &format!("{scope}-host"), "", &scope).await;
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let e: flotilla_shared::stream::FleetEvent =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(e.kind.starts_with("agent."), "{line}");
            if e.agent_id.as_deref() == Some(agent.id.as_str()) {
                seen.push(e.kind.clone());
            }
            if seen.iter().any(|k| k == "agent.enrolled")
                && seen.iter().any(|k| k == "agent.connected")
            {
                return;
            }
        }
        panic!("the stream ended; saw {seen:?}");
    })
    .await
    .unwrap_or_else(|_| {
        panic!("no agent.enrolled and agent.connected for the agent; saw {seen:?}")
    });
    events.kill().await.unwrap();
}
