//! Alerts end to end: a real agent on the real engine, real conditions (a full tmpfs-backed
//! volume the agent reports, a killed container, an OOM kill under a small memory limit, an
//! unhealthy container, a restart loop, a stopped agent), the relay's rules firing and resolving
//! them, acknowledgements and silences, and notifications reaching a real HTTP receiver on
//! loopback (HMAC-SHA256 checked) and a real SMTP sink (aiosmtpd).

use crate::{images, DEADLINE};
use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use flotilla_shared::alert::{AlertInfo, AlertState, CreateSilence, Severity, Silence};
use flotilla_shared::heartbeat::{DockerSnapshot, Heartbeat, HostMetrics};
use flotilla_shared::protocol::AgentFrame;
use flotilla_tests::fake_agent;
use flotilla_tests::fixtures::{start_smtp_sink, start_webhook_receiver, ReceivedRequest};
use flotilla_tests::harness::{cli, eventually, free_port, scope, Agent, Api, Containers, Relay};

const SECRET: &str = "webhook-secret-for-tests";

/// The relay's alerts as the API lists them (every state).
async fn alerts(api: &Api) -> Vec<AlertInfo> {
    api.get("/api/v1/alerts?state=all&limit=1000")
        .await
        .expect("list alerts")
}

/// Waits for a firing alert of `rule` about `subject` (any subject when None).
async fn wait_firing(api: &Api, rule: &str, subject: Option<&str>) -> AlertInfo {
    eventually(
        DEADLINE,
        &format!("{rule} ({subject:?}) to fire"),
        || async {
            alerts(api).await.into_iter().find(|a| {
                a.rule == rule
                    && a.state == AlertState::Firing
                    && subject.is_none_or(|s| a.subject == s)
            })
        },
    )
    .await
}

/// Waits until the alert with this id is resolved.
async fn wait_resolved(api: &Api, id: &str) -> AlertInfo {
    eventually(DEADLINE, &format!("alert {id} to resolve"), || async {
        let a: AlertInfo = api.get(&format!("/api/v1/alerts/{id}")).await.ok()?;
        (a.state == AlertState::Resolved).then_some(a)
    })
    .await
}

/// The webhook requests about one alert, as (kind, parsed body) pairs.
fn notifications_of(requests: &[ReceivedRequest], alert_id: &str) -> Vec<serde_json::Value> {
    requests
        .iter()
        .filter_map(|r| r.json().ok())
        .filter(|j| j["alert_id"] == alert_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_fire_resolve_and_notify_from_real_conditions() {
    let img = images().await;
    let webhook = start_webhook_receiver(Some(SECRET.as_bytes())).expect("webhook receiver");
    let smtp = start_smtp_sink().expect("SMTP sink (aiosmtpd)");
    let relay_toml = format!(
        r#"
[alerts]
evaluate_interval_secs = 1
medium_notify_after_secs = 0
event_hold_secs = 0
unreachable_intervals = 2
public_url = "https://flotilla.example"

[[notify.webhooks]]
name = "ops"
url = "{}"
secret = "{SECRET}"
min_severity = "medium"

[[notify.email]]
name = "pager"
smtp_host = "127.0.0.1"
smtp_port = {}
starttls = false
from = "flotilla@example.com"
to = ["oncall@example.com"]
min_severity = "hard"
"#,
        webhook.url("/hook"),
        smtp.port()
    );
    let relay = Relay::start_with_config(&relay_toml, &[]).await;
    let api = relay.api();
    let scope = scope("alerts");
    let docker = Containers::new(&scope).await;

    // A 2 MiB tmpfs volume, mounted on the host while `disk` uses it; the agent reports it.
    let volume = docker.tmpfs_volume("small", "2m").await;
    docker
        .create(
            "disk",
            ContainerCreateBody {
                image: Some(img.v1.clone()),
                host_config: Some(HostConfig {
                    binds: Some(vec![format!("{volume}:/data")]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            true,
        )
        .await;
    let volume_dir = docker.volume_dir(&volume).await;
    let web = docker.run("web", &img.v1, &[], &[], true).await;

    let mut agent = Agent::enroll(&relay, "host-alerts", "team=core,tier=alerts", &scope).await;
    agent.set_env("FLOTILLA_DISK_PATHS", &volume_dir.to_string_lossy());
    agent.run().await;
    api.wait_online(&agent.id, DEADLINE).await;

    // === disk > 85 % → medium, notified at once (medium delay 0), resolved when freed ===
    let filler = volume_dir.join("filler");
    std::fs::write(&filler, vec![7u8; 1900 * 1024]).expect("fill the tmpfs volume");
    let full = wait_firing(&api, "disk_full", Some(&volume_dir.to_string_lossy())).await;
    assert_eq!(full.severity, Severity::Medium);
    assert_eq!(full.agent_id.as_deref(), Some(agent.id.as_str()));
    assert_eq!(
        full.agent_labels.get("team").map(String::as_str),
        Some("core")
    );
    let fired = eventually(DEADLINE, "the disk_full notification", || async {
        let n = notifications_of(&webhook.requests(), &full.id);
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert_eq!(fired[0]["kind"], "firing");
    assert_eq!(fired[0]["rule"], "disk_full");
    assert_eq!(fired[0]["agent_labels"]["tier"], "alerts");
    assert_eq!(
        fired[0]["url"],
        format!("https://flotilla.example/api/v1/alerts/{}", full.id)
    );
    std::fs::remove_file(&filler).unwrap();
    wait_resolved(&api, &full.id).await;
    eventually(DEADLINE, "the disk_full resolution", || async {
        let n = notifications_of(&webhook.requests(), &full.id);
        n.iter().any(|j| j["kind"] == "resolved").then_some(())
    })
    .await;
    // Every request carried a valid signature over its timestamp and body.
    let requests = webhook.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r.signature_valid, Some(true), "{:?}", r.headers);
        assert!(r.header("x-flotilla-delivery").is_some());
    }

    // === a killed container → container_died; running again → resolved ===
    docker
        .docker
        .kill_container(
            &web,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();
    let died = wait_firing(&api, "container_died", Some(&web)).await;
    assert_eq!(died.severity, Severity::Medium);
    docker.docker.start_container(&web, None).await.unwrap();
    wait_resolved(&api, &died.id).await;

    // === OOM-killed under a 32 MiB limit → container_oom ===
    let hog = docker
        .create(
            "hog",
            ContainerCreateBody {
                image: Some(img.v1.clone()),
                env: Some(vec!["APP_ALLOC_MB=128".into()]),
                host_config: Some(HostConfig {
                    memory: Some(32 * 1024 * 1024),
                    memory_swap: Some(32 * 1024 * 1024),
                    ..Default::default()
                }),
                ..Default::default()
            },
            true,
        )
        .await;
    let oom = wait_firing(&api, "container_oom", Some(&hog)).await;
    assert_eq!(oom.severity, Severity::Medium);

    // === unhealthy → container_unhealthy; acknowledged through the CLI ===
    let sick = docker
        .create(
            "sick",
            ContainerCreateBody {
                image: Some(img.v1.clone()),
                env: Some(vec!["APP_MODE=unhealthy".into()]),
                healthcheck: Some(HealthConfig {
                    test: Some(img.healthcheck_cmd()),
                    interval: Some(300_000_000),
                    timeout: Some(1_000_000_000),
                    retries: Some(1),
                    start_period: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            },
            true,
        )
        .await;
    let unhealthy = wait_firing(&api, "container_unhealthy", Some(&sick)).await;
    let out = cli(&relay, &["alerts", "ack", &unhealthy.id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acked: AlertInfo = api
        .get(&format!("/api/v1/alerts/{}", unhealthy.id))
        .await
        .unwrap();
    assert!(acked.acknowledged_by.is_some() && acked.acknowledged_at.is_some());
    assert_eq!(acked.state, AlertState::Firing, "ack does not resolve");

    // === a restart loop → container_restart_loop ===
    let looping = docker
        .create(
            "loop",
            ContainerCreateBody {
                image: Some(img.broken.clone()),
                host_config: Some(HostConfig {
                    restart_policy: Some(RestartPolicy {
                        name: Some(RestartPolicyNameEnum::ALWAYS),
                        maximum_retry_count: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            true,
        )
        .await;
    wait_firing(&api, "container_restart_loop", Some(&looping)).await;

    // === a silence by label: the alert is recorded, never notified ===
    let silence: Silence = api
        .post(
            "/api/v1/silences",
            &CreateSilence {
                selector: "team=core".parse().unwrap(),
                rule: Some("container_died".into()),
                subject: None,
                starts_at: None,
                ends_at: None,
                duration_secs: Some(3600),
                comment: "maintenance".into(),
            },
        )
        .await
        .expect("create silence");
    docker
        .docker
        .kill_container(
            &web,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();
    let silenced = wait_firing(&api, "container_died", Some(&web)).await;
    assert_ne!(silenced.id, died.id, "a new firing is a new alert");
    assert!(silenced.silenced, "{silenced:?}");
    assert_eq!(silenced.silence_id.as_deref(), Some(silence.id.as_str()));

    // === the agent stops → agent_unreachable (hard): webhook and e-mail at once ===
    agent.kill().await;
    let unreachable = wait_firing(&api, "agent_unreachable", None).await;
    assert_eq!(unreachable.severity, Severity::Hard);
    let smtp = std::sync::Arc::new(smtp);
    let sink = smtp.clone();
    let mails = tokio::task::spawn_blocking(move || sink.wait_for_messages(1, DEADLINE))
        .await
        .unwrap();
    let mails = mails.expect("the hard alert's e-mail");
    let mail = &mails[0];
    assert!(mail.subject.contains("HARD"), "{}", mail.subject);
    assert!(
        mail.subject.contains("agent_unreachable"),
        "{}",
        mail.subject
    );
    assert!(mail.body.contains(&unreachable.id), "{}", mail.body);
    assert!(
        mail.body.contains("team=core") || mail.body.contains("team: core"),
        "{}",
        mail.body
    );
    assert_eq!(mail.rcpt_tos, vec!["oncall@example.com".to_string()]);
    // Only hard alerts go to the pager address.
    assert_eq!(smtp.messages().unwrap().len(), 1);
    agent.run().await;
    api.wait_online(&agent.id, DEADLINE).await;
    wait_resolved(&api, &unreachable.id).await;

    // Nothing was ever notified about the silenced alert; soft alerts never are either.
    let requests = webhook.requests();
    assert!(notifications_of(&requests, &silenced.id).is_empty());
    for r in &requests {
        let j = r.json().unwrap();
        assert_ne!(j["severity"], "soft", "{j}");
    }

    // Containers that are gone no longer alert: the OOM, unhealthy and restart-loop alerts
    // resolve once a heartbeat no longer lists them.
    let restart_loop = wait_firing(&api, "container_restart_loop", Some(&looping)).await;
    for name in [&hog, &sick, &looping] {
        docker
            .docker
            .remove_container(
                name,
                Some(
                    bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .build(),
                ),
            )
            .await
            .unwrap();
    }
    for id in [&oom.id, &unhealthy.id, &restart_loop.id] {
        wait_resolved(&api, id).await;
    }

    // The CLI lists what is firing, with the filters of the API.
    let out = cli(&relay, &["alerts", "--state", "firing"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("container_died") && text.contains(&web),
        "{text}"
    );
    let hard: Vec<AlertInfo> = api
        .get("/api/v1/alerts?state=firing&severity=hard")
        .await
        .unwrap();
    assert!(
        hard.iter().all(|a| a.severity == Severity::Hard),
        "{hard:?}"
    );
}

/// A TLS server on loopback (`openssl s_server`) with a self-signed certificate valid for
/// `days`, on `port`.
async fn tls_server(dir: &std::path::Path, port: u16, days: u32) -> tokio::process::Child {
    let cert = dir.join(format!("cert-{days}.pem"));
    let key = dir.join(format!("key-{days}.pem"));
    let out = tokio::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-subj", "/CN=tenant.example", "-days"])
        .arg(days.to_string())
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .await
        .expect("run openssl req");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = tokio::process::Command::new("openssl")
        .arg("s_server")
        .arg("-accept")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .args(["-www", "-quiet"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn openssl s_server");
    eventually(DEADLINE, "openssl s_server to listen", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    child
}

/// A configured endpoint whose certificate expires in 5 days → tls_expiry (medium, no agent),
/// resolved once the endpoint serves a certificate valid for 90 days. An agent reporting an
/// older version than the fleet's newest → agent_version_skew (soft, never notified), resolved
/// once it reports the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_expiry_and_version_skew_fire_and_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = tls_server(dir.path(), port, 5).await;
    let webhook = start_webhook_receiver(Some(SECRET.as_bytes())).expect("webhook receiver");
    let relay_toml = format!(
        r#"
[alerts]
evaluate_interval_secs = 1
medium_notify_after_secs = 0
tls_endpoints = ["127.0.0.1:{port}"]
tls_check_interval_secs = 1
tls_timeout_secs = 5

[[notify.webhooks]]
name = "ops"
url = "{}"
secret = "{SECRET}"
min_severity = "soft"
"#,
        webhook.url("/hook")
    );
    let relay = Relay::start_with_config(&relay_toml, &[]).await;
    let api = relay.api();
    let endpoint = format!("127.0.0.1:{port}");

    let expiring = wait_firing(&api, "tls_expiry", Some(&endpoint)).await;
    assert_eq!(expiring.severity, Severity::Medium);
    assert!(expiring.agent_id.is_none(), "{expiring:?}");
    assert!(
        expiring.message.contains("expires in 4d"),
        "the message says when it expires: {}",
        expiring.message
    );
    eventually(DEADLINE, "the tls_expiry notification", || async {
        (!notifications_of(&webhook.requests(), &expiring.id).is_empty()).then_some(())
    })
    .await;
    // Renewed: the same endpoint now serves a certificate valid for 90 days.
    server.kill().await.unwrap();
    let _renewed = tls_server(dir.path(), port, 90).await;
    wait_resolved(&api, &expiring.id).await;

    // Two agents: one reports this build's version, the other an older one.
    let mut current = fake_agent::start(&relay, "current", "team=core").await;
    let mut old = fake_agent::start(&relay, "old", "team=core").await;
    let heartbeat = |version: &str| {
        AgentFrame::Heartbeat(Box::new(Heartbeat {
            at: chrono::Utc::now(),
            agent_version: version.to_string(),
            host: HostMetrics::default(),
            docker: DockerSnapshot::default(),
            backup: None,
            compose_drift: Vec::new(),
        }))
    };
    current
        .send(&heartbeat(flotilla_shared::VERSION))
        .await
        .unwrap();
    old.send(&heartbeat("0.0.9")).await.unwrap();
    let skew = wait_firing(&api, "agent_version_skew", None).await;
    assert_eq!(skew.severity, Severity::Soft);
    assert_eq!(skew.agent_id.as_deref(), Some(old.id.as_str()));
    assert!(skew.message.contains("0.0.9"), "{}", skew.message);
    old.send(&heartbeat(flotilla_shared::VERSION))
        .await
        .unwrap();
    wait_resolved(&api, &skew.id).await;
    // Soft alerts are never notified, whatever a channel's minimum severity.
    assert!(notifications_of(&webhook.requests(), &skew.id).is_empty());
}
