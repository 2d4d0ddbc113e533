//! Secrets never reach a log: a relay (log files in JSON) and an agent (log files in text), both
//! at level `debug`, go through everything that handles a secret — enrollment with a one-time
//! token, API calls with the admin token and with a newly created API token, a command sent to
//! the agent and its result, and an alert notification signed with a webhook secret — and then
//! every log file and the processes' captured stdout/stderr are searched for each secret. The
//! test also checks that the log files exist with their daily rotation names and that the JSON
//! ones are JSON lines.

use crate::DEADLINE;
use base64::Engine;
use flotilla_shared::api::{AgentInfo, ApiTokenCreated, CreateApiToken, Scope};
use flotilla_shared::command::{Command, ResultStatus};
use flotilla_tests::fixtures::start_webhook_receiver;
use flotilla_tests::harness::{bin, eventually, scope, Agent, Relay};
use std::path::{Path, PathBuf};
use std::process::Stdio;

const WEBHOOK_SECRET: &str = "whsec-e2e-secrets-3f9a1c7d5b";

/// The files directly in `dir` (the log directories hold no subdirectories).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read log dir {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Whether `name` is `<program>.YYYY-MM-DD.log`, the daily appender's file name.
fn is_daily_log_name(name: &str, program: &str) -> bool {
    name.strip_prefix(program)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_suffix(".log"))
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .is_some()
}

/// Polls until the log directory holds this program's file and it contains `needle`.
async fn wait_log_contains(dir: &Path, program: &str, needle: &str) {
    eventually(
        DEADLINE,
        &format!("{program}'s log file to mention {needle:?}"),
        || async {
            files_in(dir)
                .iter()
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| is_daily_log_name(n, program))
                })
                .any(|p| {
                    std::fs::read_to_string(p)
                        .map(|t| t.contains(needle))
                        .unwrap_or(false)
                })
                .then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let webhook =
        start_webhook_receiver(Some(WEBHOOK_SECRET.as_bytes())).expect("webhook receiver");
    let relay_logs = tempfile::Builder::new()
        .prefix("flotilla-relay-logs-")
        .tempdir()
        .expect("tempdir");
    let agent_logs = tempfile::Builder::new()
        .prefix("flotilla-agent-logs-")
        .tempdir()
        .expect("tempdir");
    let relay_toml = format!(
        r#"
log_format = "json"
log_keep_files = 3

[alerts]
evaluate_interval_secs = 1
unreachable_intervals = 1

[[notify.webhooks]]
name = "ops"
url = "{}"
secret = "{WEBHOOK_SECRET}"
min_severity = "medium"
"#,
        webhook.url("/hook")
    );
    let relay_log_dir = relay_logs.path().to_string_lossy().into_owned();
    let relay = Relay::start_with_config(
        &relay_toml,
        &[
            ("FLOTILLA_LOG", "debug"),
            ("FLOTILLA_LOG_DIR", relay_log_dir.as_str()),
        ],
    )
    .await;
    let admin = relay.api();

    // === enrollment with a token we know, at debug level, as the installer would run it ===
    let enroll_token = relay.enrollment_token("tier=secrets").await;
    let enroll_dir = tempfile::Builder::new()
        .prefix("flotilla-agent-")
        .tempdir()
        .expect("tempdir");
    let enrolled = tokio::process::Command::new(bin("flotilla-agent"))
        .arg("enroll")
        .arg("--relay")
        .arg(relay.url())
        .arg("--state-dir")
        .arg(enroll_dir.path())
        .arg("--name")
        .arg("host-enrolled")
        // The token through the environment, like the installer's unit; --token works too.
        .env("FLOTILLA_ENROLL_TOKEN", &enroll_token)
        .env("FLOTILLA_LOG", "debug")
        .env("FLOTILLA_LOG_DIR", agent_logs.path())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run flotilla-agent enroll");
    let enroll_output = format!(
        "{}{}",
        String::from_utf8_lossy(&enrolled.stdout),
        String::from_utf8_lossy(&enrolled.stderr)
    );
    assert!(enrolled.status.success(), "enroll failed: {enroll_output}");

    // === the running agent: text log files at debug level ===
    let mut agent = Agent::enroll(&relay, "host-secrets", "tier=secrets", &scope("secrets")).await;
    agent.set_env("FLOTILLA_LOG", "debug");
    agent.set_env("FLOTILLA_LOG_DIR", &agent_logs.path().to_string_lossy());
    agent.set_env("FLOTILLA_LOG_FORMAT", "text");
    agent.run().await;
    admin.wait_online(&agent.id, DEADLINE).await;

    // === a new API token, used for reads and a command; the admin token for another ===
    let created: ApiTokenCreated = admin
        .post(
            "/api/v1/api-tokens",
            &CreateApiToken {
                name: "secrets-test".into(),
                scope: Scope::Operate,
            },
        )
        .await
        .expect("create API token");
    let operator = admin.with_token(&created.token);
    let agents: Vec<AgentInfo> = operator.get("/api/v1/agents").await.expect("list");
    assert_eq!(agents.len(), 2);
    for api in [&admin, &operator] {
        let done = api
            .command(&agent.id, Command::Ping(Default::default()), Some(20))
            .await
            .expect("send ping");
        let done = api.wait_final(&done.id, DEADLINE).await;
        assert_eq!(
            done.result.as_ref().map(|r| r.status),
            Some(ResultStatus::Succeeded),
            "{done:?}"
        );
    }
    // A wrong token is refused (and not echoed anywhere either).
    let wrong = "flt_wrong-token-for-the-secrets-test";
    assert!(admin
        .with_token(wrong)
        .get::<Vec<AgentInfo>>("/api/v1/agents")
        .await
        .is_err());

    // === the agent stops → agent_unreachable → a webhook signed with the secret ===
    agent.terminate(DEADLINE).await;
    let requests = eventually(DEADLINE, "a signed webhook notification", || async {
        let r = webhook.requests();
        r.iter()
            .any(|r| r.signature_valid == Some(true))
            .then_some(r)
    })
    .await;
    assert!(requests.iter().all(|r| r.signature_valid == Some(true)));

    // The relay logged at debug level to its file (the webhook delivery is the last effect).
    wait_log_contains(
        relay_logs.path(),
        "flotilla-relay",
        "notification delivered",
    )
    .await;
    wait_log_contains(agent_logs.path(), "flotilla-agent", "DEBUG").await;

    // === the log files: daily names, JSON lines for the relay ===
    let relay_files = files_in(relay_logs.path());
    assert!(!relay_files.is_empty(), "the relay wrote no log file");
    let mut json_lines = 0;
    for f in &relay_files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            is_daily_log_name(&name, "flotilla-relay"),
            "unexpected file {name}"
        );
        let text = std::fs::read_to_string(f).expect("read relay log");
        // The last line may still be being written.
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line in {name}: {e}: {line}"));
            assert!(
                v.get("level").is_some() && v.get("timestamp").is_some(),
                "{line}"
            );
            json_lines += 1;
        }
    }
    assert!(json_lines > 10, "only {json_lines} JSON lines");
    let agent_files = files_in(agent_logs.path());
    assert!(!agent_files.is_empty(), "the agent wrote no log file");
    for f in &agent_files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        // `enroll` logs to stderr only; the files are `run`'s.
        assert!(
            is_daily_log_name(&name, "flotilla-agent"),
            "unexpected file {name}"
        );
        let text = std::fs::read_to_string(f).expect("read agent log");
        assert!(
            text.lines().all(|l| !l.starts_with('{')),
            "text format expected"
        );
    }

    // === no secret anywhere ===
    let relay_key = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(relay.dir.path().join("relay.key")).expect("relay.key"));
    let secrets = [
        ("admin token", relay.admin_token.clone()),
        ("API token", created.token.clone()),
        ("enrollment token", enroll_token.clone()),
        ("webhook secret", WEBHOOK_SECRET.to_string()),
        ("wrong token", wrong.to_string()),
        ("relay key", relay_key),
    ];
    let mut searched: Vec<(String, String)> = Vec::new();
    for f in relay_files.iter().chain(&agent_files) {
        searched.push((
            f.display().to_string(),
            String::from_utf8_lossy(&std::fs::read(f).expect("read log")).into_owned(),
        ));
    }
    for f in [relay.log_path(), agent.log_path()] {
        searched.push((
            f.display().to_string(),
            String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default()).into_owned(),
        ));
    }
    searched.push(("flotilla-agent enroll output".into(), enroll_output));
    let total: usize = searched.iter().map(|(_, t)| t.len()).sum();
    assert!(
        total > 10_000,
        "suspiciously little log output: {total} bytes"
    );
    // A positive control: the search sees what the processes logged (ids are not secret).
    for (file, text) in &searched[..relay_files.len()] {
        assert!(text.contains(&agent.id), "{file} never names the agent");
    }
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is too short to search for");
        for (file, text) in &searched {
            if let Some(at) = text.find(secret.as_str()) {
                let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                panic!(
                    "the {what} appears in {file}: {}",
                    &text[line_start..line_end]
                );
            }
        }
    }
}
