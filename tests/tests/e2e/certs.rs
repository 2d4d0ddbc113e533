//! Certificates seen from the tenant (issue 17 §2), end to end: a real agent reads a
//! directory of certificate files made by the openssl tool and a local TLS endpoint served
//! by `openssl s_server`, reports them in its heartbeats, and the relay raises and resolves
//! `certificate_expiry` per agent and certificate. Garbage and unreadable files are warnings
//! in the heartbeat; the agent keeps running.

use crate::DEADLINE;
use flotilla_shared::alert::{AlertInfo, AlertState, Severity};
use flotilla_shared::api::AgentDetail;
use flotilla_shared::heartbeat::HostCertificate;
use flotilla_tests::harness::{eventually, free_port, scope, Agent, Api, Relay};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A self-signed certificate for `name` valid for `days`, written as `<stem>.pem` (the
/// certificate) and `<stem>.key` in `dir`.
fn openssl_certificate(dir: &Path, stem: &str, name: &str, days: u32) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", &days.to_string(), "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{name},DNS:www.{name}"))
        .arg("-keyout")
        .arg(dir.join(format!("{stem}.key")))
        .arg("-out")
        .arg(dir.join(format!("{stem}.pem")))
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn alerts(api: &Api, agent: &str) -> Vec<AlertInfo> {
    api.get(&format!(
        "/api/v1/alerts?state=all&rule=certificate_expiry&agent={agent}&limit=1000"
    ))
    .await
    .expect("list alerts")
}

async fn certificates(api: &Api, agent: &str) -> Vec<HostCertificate> {
    let d: AgentDetail = api.get(&format!("/api/v1/agents/{agent}")).await.unwrap();
    d.heartbeat.map(|h| h.host.certificates).unwrap_or_default()
}

/// `openssl s_server`, stopped when dropped.
struct TlsServer(Child);

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_certificates_alert_per_agent_and_resolve_after_renewal() {
    let scope = scope("certs");
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().join("live");
    std::fs::create_dir(&dir).unwrap();
    openssl_certificate(&dir, "shop", "shop.example.test", 5);
    std::fs::write(dir.join("garbage.pem"), "this is not a certificate\n").unwrap();
    // A FIFO named like a certificate: opening it for reading would block forever.
    let fifo = certs.path().join("fifo.pem");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A local endpoint presenting a certificate that expires in 2 days: hard.
    openssl_certificate(certs.path(), "endpoint", "app.example.test", 2);
    let port = free_port();
    let server = TlsServer(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(certs.path().join("endpoint.pem"))
            .arg("-key")
            .arg(certs.path().join("endpoint.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    let endpoint = format!("app.example.test@127.0.0.1:{port}");

    let relay = Relay::start_with_config("[alerts]\nevaluate_interval_secs = 1\n", &[]).await;
    let mut agent = Agent::enroll(&relay, "cert-host", "", &scope).await;
    agent.set_config(&format!(
        "[certificates]\ncertbot = false\ninterval_secs = 1\npaths = [\"{}\", \"{}\"]\n\
         endpoints = [\"{endpoint}\"]\n",
        dir.display(),
        fifo.display(),
    ));
    agent.run().await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;

    // The 5-day certificate: medium, naming the agent and the file.
    let shop = dir.join("shop.pem").display().to_string();
    let alert = eventually(DEADLINE, "the medium certificate alert", || async {
        alerts(&api, &agent.id)
            .await
            .into_iter()
            .find(|a| a.subject == shop && a.state == AlertState::Firing)
    })
    .await;
    assert_eq!(alert.severity, Severity::Medium, "{alert:?}");
    assert_eq!(alert.agent_id.as_deref(), Some(agent.id.as_str()));
    assert!(alert.message.contains("cert-host"), "{}", alert.message);
    assert!(alert.message.contains(&shop), "{}", alert.message);
    assert!(
        alert.message.contains("shop.example.test"),
        "{}",
        alert.message
    );
    assert!(
        alert.message.contains("expires in 4d") || alert.message.contains("expires in 5d"),
        "{}",
        alert.message
    );

    // The endpoint's 2-day certificate: hard.
    let hard = eventually(DEADLINE, "the hard endpoint alert", || async {
        alerts(&api, &agent.id)
            .await
            .into_iter()
            .find(|a| a.subject == endpoint && a.state == AlertState::Firing)
    })
    .await;
    assert_eq!(hard.severity, Severity::Hard, "{hard:?}");
    assert!(
        hard.message.contains("app.example.test"),
        "{}",
        hard.message
    );

    // The heartbeat carries every reading, garbage and the FIFO as clear warnings.
    let read = certificates(&api, &agent.id).await;
    let by = |source: &str| read.iter().find(|c| c.source == source).cloned();
    let leaf = by(&shop).unwrap_or_else(|| panic!("{read:?}"));
    assert_eq!(leaf.subject.as_deref(), Some("shop.example.test"));
    assert_eq!(
        leaf.sans,
        vec!["shop.example.test", "www.shop.example.test"]
    );
    assert_eq!(leaf.issuer.as_deref(), Some("shop.example.test"));
    assert!(leaf.warning.is_none());
    let garbage = by(&dir.join("garbage.pem").display().to_string()).expect("garbage reported");
    assert!(garbage.not_after.is_none());
    assert!(
        garbage
            .warning
            .as_deref()
            .unwrap()
            .contains("no certificate"),
        "{garbage:?}"
    );
    let fifo_read = by(&fifo.display().to_string()).expect("fifo reported");
    assert_eq!(fifo_read.warning.as_deref(), Some("not a regular file"));
    // The private keys beside the certificates are not reported at all.
    assert!(read.iter().all(|c| !c.source.ends_with(".key")), "{read:?}");
    // A certificate the agent cannot read is a soft alert (never notified).
    let soft = alerts(&api, &agent.id)
        .await
        .into_iter()
        .find(|a| a.subject.ends_with("garbage.pem"))
        .expect("a soft alert for the garbage file");
    assert_eq!(soft.severity, Severity::Soft);

    // Renewed: a 90-day certificate replaces the file (atomically, as certbot's symlink
    // swap does); the next reading resolves the alert.
    let renewed = certs.path().join("renewed");
    std::fs::create_dir(&renewed).unwrap();
    openssl_certificate(&renewed, "shop", "shop.example.test", 90);
    std::fs::rename(renewed.join("shop.pem"), dir.join("shop.pem")).unwrap();
    eventually(DEADLINE, "the certificate alert to resolve", || async {
        let a: AlertInfo = api
            .get(&format!("/api/v1/alerts/{}", alert.id))
            .await
            .ok()?;
        (a.state == AlertState::Resolved).then_some(())
    })
    .await;
    let read = certificates(&api, &agent.id).await;
    let leaf = read.iter().find(|c| c.source == shop).unwrap();
    let days_left = (leaf.not_after.unwrap() - chrono::Utc::now()).num_days();
    assert!((88..=90).contains(&days_left), "{leaf:?}");
    // The endpoint's alert is untouched, and the agent never stopped.
    assert!(alerts(&api, &agent.id)
        .await
        .iter()
        .any(|a| a.id == hard.id && a.state == AlertState::Firing));
    assert!(agent.pid().is_some());
    api.wait_online(&agent.id, DEADLINE).await;
    drop(server);
}
