//! TLS as deployed: a real nginx terminates TLS in front of the relay (websocket upgrade headers,
//! long read timeouts), with a certificate from a private CA. An agent given that CA enrolls over
//! https and connects over wss; an agent trusting only the system roots is refused.

use crate::DEADLINE;
use flotilla_shared::api::{AgentInfo, AgentStatus};
use flotilla_tests::harness::{bin, eventually, Relay};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a server certificate for localhost / 127.0.0.1, made with the openssl CLI:
/// (CA, certificate, key).
pub(crate) fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=flotilla test CA", "-keyout"])
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.pem")));
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx in the foreground with a config of our own; killed on drop (kill_on_drop).
struct Nginx {
    _process: tokio::process::Child,
}

impl Nginx {
    async fn start(dir: &Path, port: u16, upstream: &str, cert: &Path, key: &Path) -> Nginx {
        let d = dir.display();
        let conf = format!(
            r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = tokio::process::Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx is installed (scripts/test installs nginx-light)");
        let addr = format!("127.0.0.1:{port}");
        eventually(DEADLINE, "nginx listening", || async {
            tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ())
        })
        .await;
        Nginx { _process: child }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_enroll_and_connect_through_nginx_with_a_private_ca() {
    let relay = Relay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path());
    let port = free_port();
    let _nginx = Nginx::start(dir.path(), port, &relay.addr, &cert, &key).await;
    let public_url = format!("https://localhost:{port}");
    let api = relay.api();

    // Enroll over https, trusting the private CA, then connect over wss.
    let token = relay.enrollment_token("tier=tls").await;
    let state = dir.path().join("agent");
    let out = tokio::process::Command::new(bin("flotilla-agent"))
        .args([
            "enroll",
            "--relay",
            &public_url,
            "--token",
            &token,
            "--name",
            "tls-host",
        ])
        .arg("--state-dir")
        .arg(&state)
        .env("FLOTILLA_CA_FILE", &ca)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "enroll over https: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let _agent = tokio::process::Command::new(bin("flotilla-agent"))
        .arg("run")
        .arg("--state-dir")
        .arg(&state)
        .env("FLOTILLA_CA_FILE", &ca)
        .env("FLOTILLA_ONLY_LABEL", "flotilla.test.scope=none")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let agent = eventually(DEADLINE, "tls agent online through nginx", || async {
        let list: Vec<AgentInfo> = api.get("/api/v1/agents").await.ok()?;
        list.into_iter()
            .find(|a| a.name == "tls-host" && a.status == AgentStatus::Online)
    })
    .await;
    api.wait_online(&agent.id, DEADLINE).await;

    // Without the private CA (system roots only) the same relay is not trusted.
    let token = relay.enrollment_token("tier=tls").await;
    let out = tokio::process::Command::new(bin("flotilla-agent"))
        .args([
            "enroll",
            "--relay",
            &public_url,
            "--token",
            &token,
            "--name",
            "untrusting",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("agent2"))
        .env_remove("FLOTILLA_CA_FILE")
        .output()
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "a relay signed by an unknown CA must be refused"
    );
    let text = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("tls") || text.contains("issuer"),
        "{text}"
    );
}
