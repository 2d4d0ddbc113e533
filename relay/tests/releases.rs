//! Agent releases against an in-process relay on 127.0.0.1:0 with a real data directory:
//! publishing (streamed, capped, immutable), listing, the signed manifest, downloads and
//! `latest`, broken marks (410, skipped by `latest`), `/install.sh` and the units; then
//! `agent.upgrade` issuance and its refusals with scripted agents speaking the real protocol
//! over a websocket, a reverted upgrade marking its build broken (and raising the alert), and
//! rollouts of agent versions (completion, `no_target`, a broken build stopping dispatch at
//! once, the soak's version check, revert with and without the previous build).

mod support;

use flotilla_relay_server::embed::RolloutEngine;
use flotilla_shared::api::{
    AgentFacts, CommandInfo, CreateEnrollmentToken, DeliveryState, EnrollmentTokenCreated,
};
use flotilla_shared::command::{
    error_codes, AgentUpgradeOutput, Command, CommandEnvelope, CommandResult, ErrorInfo,
    ResultStatus,
};
use flotilla_shared::protocol::{AgentFrame, OutboxItem};
use flotilla_shared::release::{
    this_arch, ReleaseInfo, ReleaseManifest, SignedManifest, MAX_RELEASE_BYTES,
};
use flotilla_shared::rollout::{AgentOutcome, RolloutInfo, RolloutState, RolloutTarget};
use flotilla_shared::signing::{PublicKey, SigningKey};
use flotilla_testkit::agent::ScriptedAgent;
use flotilla_testkit::eventually;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use support::TestRelay;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

fn other_arch() -> &'static str {
    if this_arch() == "x86_64" {
        "aarch64"
    } else {
        "x86_64"
    }
}

/// A 64-bit little-endian ELF header for `arch` followed by `len` bytes derived from `seed`:
/// what the relay checks of a build (agents run the real thing; the relay only stores it).
fn fake_build(arch: &str, len: usize, seed: u64) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    b[6] = 1;
    let machine: u16 = if arch == "x86_64" { 62 } else { 183 };
    b[18..20].copy_from_slice(&machine.to_le_bytes());
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    for _ in 0..len {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        b.push((x >> 56) as u8);
    }
    b
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

impl TestRelay {
    async fn start() -> TestRelay {
        TestRelay::in_process("relay-releases")
            .config(|c| c.alerts.evaluate_interval_secs = 1)
            .start()
            .await
    }

    fn key(&self) -> PublicKey {
        self.relay.state().key.public_key()
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn put(&self, version: &str, arch: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .http
            .put(format!("{}/api/v1/releases/{version}/{arch}", self.base))
            .bearer_auth(&self.admin)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    async fn publish(&self, version: &str, arch: &str, seed: u64) -> ReleaseInfo {
        let (status, v) = self.put(version, arch, fake_build(arch, 4096, seed)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        serde_json::from_value(v).unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn releases(&self) -> Vec<ReleaseInfo> {
        let (s, v) = self.call(Method::GET, "/api/v1/releases", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        serde_json::from_value(v).unwrap()
    }

    async fn upgrade(&self, agent: &str, args: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/commands"),
            Some(json!({"kind": "agent.upgrade", "args": args})),
        )
        .await
    }

    async fn command(&self, id: &str, agent: &str) -> CommandInfo {
        let (s, v) = self
            .call(
                Method::GET,
                &format!("/api/v1/commands/{id}?agent={agent}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        serde_json::from_value(v).unwrap()
    }

    async fn rollout(&self, id: &str) -> RolloutInfo {
        let (s, v) = self
            .call(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        serde_json::from_value(v).unwrap()
    }

    async fn wait_rollout(
        &self,
        id: &str,
        what: &str,
        pick: impl Fn(&RolloutInfo) -> bool,
    ) -> RolloutInfo {
        eventually(WAIT, what, || async {
            let r = self.rollout(id).await;
            pick(&r).then_some(r)
        })
        .await
    }

    /// A raw HTTP/1.1 exchange: writes `head` and `body` (write errors ignored: the relay may
    /// answer before reading everything), then reads the whole answer.
    async fn raw(&self, head: String, body: Vec<u8>) -> String {
        let mut s = tokio::net::TcpStream::connect(self.relay.local_addr())
            .await
            .unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let _ = s.write_all(&body).await;
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut out))
            .await
            .expect("the relay answers")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }
}

// === a scripted agent speaking the real protocol ===

/// The scripted agent with the build architecture it reports.
struct Agent {
    scripted: ScriptedAgent,
    arch: String,
}

impl std::ops::Deref for Agent {
    type Target = ScriptedAgent;
    fn deref(&self) -> &ScriptedAgent {
        &self.scripted
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut ScriptedAgent {
        &mut self.scripted
    }
}

impl Agent {
    async fn enroll(t: &TestRelay, name: &str, arch: &str, version: &str) -> Agent {
        let (s, v) = t
            .call(
                Method::POST,
                "/api/v1/enrollment-tokens",
                Some(serde_json::to_value(CreateEnrollmentToken::default()).unwrap()),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let token: EnrollmentTokenCreated = serde_json::from_value(v).unwrap();
        let key = SigningKey::generate();
        let facts = AgentFacts {
            hostname: name.into(),
            os: "linux".into(),
            arch: arch.into(),
            agent_version: version.into(),
        };
        let enrolled =
            flotilla_testkit::agent::enroll(&t.http, &t.base, token.token, name, facts, &key)
                .await
                .unwrap();
        Agent {
            scripted: ScriptedAgent::new(enrolled.agent_id, key, version),
            arch: arch.into(),
        }
    }

    async fn start(t: &TestRelay, name: &str, arch: &str, version: &str) -> Agent {
        let mut a = Agent::enroll(t, name, arch, version).await;
        a.connect(t).await;
        a
    }

    /// Connects and authenticates, announcing `self.version`.
    async fn connect(&mut self, t: &TestRelay) {
        self.scripted.connect(&t.ws_url()).await.unwrap();
    }

    /// Reconnects announcing another version (what a restarted agent binary does).
    async fn reconnect_as(&mut self, t: &TestRelay, version: &str) {
        self.scripted
            .reconnect_as(&t.ws_url(), version)
            .await
            .unwrap();
    }

    /// The next command not seen before (re-sent copies are skipped), verified with the
    /// relay's key.
    async fn next_command(&mut self, relay_key: &PublicKey) -> CommandEnvelope {
        self.scripted.next_command(relay_key, WAIT).await.unwrap()
    }

    /// The next command, which must be an `agent.upgrade`: its envelope, the manifest (checked
    /// against the relay's key) and the rollback flag.
    async fn next_upgrade(&mut self, relay_key: &PublicKey) -> (String, ReleaseManifest, bool) {
        let env = self.next_command(relay_key).await;
        let Command::AgentUpgrade(args) = env.command else {
            panic!("expected agent.upgrade, got {:?}", env.command);
        };
        let manifest = args.manifest.verify(relay_key).expect("manifest verifies");
        (env.id, manifest, args.rollback)
    }

    async fn received(&mut self, command_id: &str) {
        let f = AgentFrame::Received {
            command_id: command_id.into(),
        };
        self.send(&f).await.unwrap();
    }

    /// Sends a result through the outbox and waits for the relay's ack.
    async fn result(
        &mut self,
        command_id: &str,
        status: ResultStatus,
        output: Option<Value>,
        error: Option<(&str, &str)>,
    ) {
        let now = chrono::Utc::now();
        let item = OutboxItem::Result(CommandResult {
            command_id: command_id.into(),
            status,
            output,
            error: error.map(|(code, message)| ErrorInfo {
                code: code.into(),
                message: message.into(),
            }),
            started_at: now,
            finished_at: now,
        });
        self.outbox(item, WAIT).await.unwrap();
    }

    /// What a real agent does for a successful upgrade: accept it, restart as the new version
    /// (a new connection announcing it), then report success.
    async fn upgrade_ok(&mut self, t: &TestRelay, command_id: &str, to: &str) {
        self.received(command_id).await;
        let from = self.version.clone();
        self.reconnect_as(t, to).await;
        let output = AgentUpgradeOutput {
            from_version: from,
            to_version: to.into(),
            arch: self.arch.clone(),
            running_version: to.into(),
        };
        self.result(
            command_id,
            ResultStatus::Succeeded,
            Some(serde_json::to_value(output).unwrap()),
            None,
        )
        .await;
    }

    /// A reverted upgrade: the updater put the old binary back, which reports the failure.
    async fn upgrade_reverted(&mut self, command_id: &str) {
        self.received(command_id).await;
        self.result(
            command_id,
            ResultStatus::Failed,
            None,
            Some((
                error_codes::UPGRADE_REVERTED,
                "the new version did not reach the relay within 120 s; the previous binary was \
                 restored",
            )),
        )
        .await;
    }
}

// === publishing and downloads ===

/// The version `latest` resolves to for `arch`.
async fn latest_version(t: &TestRelay, arch: &str) -> String {
    let r = t
        .get(&format!("/download/agent/latest/{arch}/manifest"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let m: ReleaseManifest = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    m.version
}

#[tokio::test]
async fn publish_list_download_latest_and_broken() {
    let t = TestRelay::start().await;
    let arch = this_arch();
    let build = fake_build(arch, 300_000, 1);

    // Publish: 201 with the recorded size and hash; the same bytes again: 200, unchanged.
    let (s, v) = t.put("0.2.0", arch, build.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let info: ReleaseInfo = serde_json::from_value(v).unwrap();
    assert_eq!(
        (info.size, info.sha256.as_str()),
        (build.len() as u64, sha256_hex(&build).as_str())
    );
    assert_eq!(info.published_by, "admin");
    let (s, v) = t.put("0.2.0", arch, build.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(serde_json::from_value::<ReleaseInfo>(v).unwrap(), info);
    // Different bytes for a published build: 409, and the stored build is untouched.
    let (s, v) = t.put("0.2.0", arch, fake_build(arch, 300_000, 2)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "conflict");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&info.sha256),
        "{v}"
    );
    // The same version but for its build metadata: agents could not tell them apart.
    let (s, v) = t
        .put("0.2.0+rebuild.1", arch, fake_build(arch, 300_000, 3))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "conflict");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("0.2.0+rebuild.1") && m.contains("build metadata"),
        "{m}"
    );

    // The file on disk, the listing, the download (streamed, with its length).
    let stored = t
        .relay
        .state()
        .config
        .data_dir
        .join(format!("releases/0.2.0/{arch}/flotilla-agent"));
    assert_eq!(std::fs::read(&stored).unwrap(), build);
    // Damaged in place, same length: publishing the same bytes again rewrites the file from
    // the verified upload (and leaves no temporary file behind).
    let mut damaged = build.clone();
    damaged[100_000] ^= 0xff;
    std::fs::write(&stored, &damaged).unwrap();
    let (s, v) = t.put("0.2.0", arch, build.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(std::fs::read(&stored).unwrap(), build, "not repaired");
    let files: Vec<String> = std::fs::read_dir(stored.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, vec!["flotilla-agent".to_string()]);
    let resp = t.get(&format!("/download/agent/0.2.0/{arch}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        resp.headers()["content-length"],
        build.len().to_string().as_str()
    );
    assert_eq!(resp.headers()["x-flotilla-version"], "0.2.0");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), build.as_slice());

    // The manifest is the exact signed text; its signature verifies with the relay's key
    // over the release domain, as install.sh checks it with openssl.
    let manifest_text = t
        .get(&format!("/download/agent/0.2.0/{arch}/manifest"))
        .await
        .text()
        .await
        .unwrap();
    let sig_resp = t
        .get(&format!("/download/agent/0.2.0/{arch}/manifest.sig"))
        .await;
    assert!(sig_resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let signature = sig_resp.text().await.unwrap();
    assert!(!signature.ends_with('\n'));
    let manifest = SignedManifest {
        manifest: manifest_text.clone(),
        signature,
    }
    .verify(&t.key())
    .expect("the manifest verifies with the relay's key");
    assert_eq!(
        (
            manifest.name.as_str(),
            manifest.version.as_str(),
            manifest.arch.as_str(),
            manifest.size,
            manifest.sha256.as_str()
        ),
        (
            "flotilla-agent",
            "0.2.0",
            arch,
            info.size,
            info.sha256.as_str()
        )
    );
    // Flat JSON in the documented field order.
    assert!(
        manifest_text.starts_with(&format!(
            "{{\"name\":\"flotilla-agent\",\"version\":\"0.2.0\",\"arch\":\"{arch}\",\"size\":"
        )),
        "{manifest_text}"
    );
    // Debian's spelling of the architecture works too.
    let debian = if arch == "x86_64" { "amd64" } else { "arm64" };
    assert_eq!(
        t.get(&format!("/download/agent/0.2.0/{debian}/manifest"))
            .await
            .text()
            .await
            .unwrap(),
        manifest_text
    );

    // latest follows semantic versions (0.10.0 > 0.3.0 > 0.2.0), per architecture.
    t.publish("0.10.0", arch, 10).await;
    t.publish("0.3.0", arch, 3).await;
    t.publish("0.9.0", other_arch(), 9).await;
    assert_eq!(latest_version(&t, arch).await, "0.10.0");
    let listed: Vec<(String, String)> = t
        .releases()
        .await
        .into_iter()
        .map(|r| (r.version, r.arch))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("0.10.0".to_string(), arch.to_string()),
            ("0.9.0".to_string(), other_arch().to_string()),
            ("0.3.0".to_string(), arch.to_string()),
            ("0.2.0".to_string(), arch.to_string()),
        ]
    );

    // Broken: 410 for its downloads, latest skips it, the list shows who and why.
    let (s, v) = t
        .call(
            Method::POST,
            &format!("/api/v1/releases/0.10.0/{arch}/broken"),
            Some(json!({"reason": "crashes at start"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["broken"]["reason"], "crashes at start");
    assert_eq!(v["broken"]["by"], "admin");
    let r = t.get(&format!("/download/agent/0.10.0/{arch}")).await;
    assert_eq!(r.status(), StatusCode::GONE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "release_broken");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("crashes at start"));
    assert_eq!(latest_version(&t, arch).await, "0.3.0");
    // Cleared: latest again.
    let (s, v) = t
        .call(
            Method::DELETE,
            &format!("/api/v1/releases/0.10.0/{arch}/broken"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v.get("broken").is_none() || v["broken"].is_null(), "{v}");
    assert_eq!(latest_version(&t, arch).await, "0.10.0");
    // A higher pre-release is published, but latest stays on the highest release.
    t.publish("0.11.0-rc.1", arch, 11).await;
    assert_eq!(latest_version(&t, arch).await, "0.10.0");
    // It is downloadable by its name.
    assert_eq!(
        t.get(&format!("/download/agent/0.11.0-rc.1/{arch}/manifest"))
            .await
            .status(),
        StatusCode::OK
    );

    // 404s name what exists.
    let r = t.get(&format!("/download/agent/0.4.0/{arch}")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let m = r.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        m.contains("0.4.0") && m.contains("0.10.0") && m.contains("0.3.0"),
        "{m}"
    );
    let r = t.get("/download/agent/latest/riscv64").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let m = r.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        m.contains("riscv64") && m.contains("x86_64") && m.contains("aarch64"),
        "{m}"
    );
    assert_eq!(
        t.get(&format!("/download/agent/0.2.0/{arch}/other"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    // Units, and install.sh with the placeholders filled in.
    let unit = t.get("/download/systemd/flotilla-agent.service").await;
    assert_eq!(unit.status(), StatusCode::OK);
    assert_eq!(
        unit.text().await.unwrap(),
        include_str!("../../packaging/systemd/flotilla-agent.service")
    );
    for u in [
        "flotilla-agent-updater.service",
        "flotilla-agent-updater.path",
    ] {
        assert_eq!(
            t.get(&format!("/download/systemd/{u}")).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        t.get("/download/systemd/ssh.service").await.status(),
        StatusCode::NOT_FOUND
    );
    let script = t.get("/install.sh").await;
    assert_eq!(script.status(), StatusCode::OK);
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/x-shellscript"));
    assert_eq!(script.headers()["cache-control"], "no-store");
    let script = script.text().await.unwrap();
    assert!(!script.contains("@@RELAY_"), "placeholders left");
    assert!(script.starts_with("#!/bin/sh"));
    assert!(
        script.contains(&format!("'{}'", t.base)),
        "relay URL missing"
    );
    assert!(script.contains(&format!("'{}'", t.relay.fingerprint())));
    assert!(script.contains(&format!("'{}'", t.key().to_base64())));

    // Every publish and mark is audited.
    let (_, audit) = t.call(Method::GET, "/api/v1/audit?limit=100", None).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for a in ["release.publish", "release.broken", "release.unbroken"] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
    t.relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn publishing_refuses_bad_input_with_clear_errors() {
    let t = TestRelay::start().await;
    let arch = this_arch();
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or_default().to_string();
    let message = |v: &Value| {
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    let (s, v) = t.put("1.2", arch, fake_build(arch, 10, 1)).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_version")
    );
    assert!(message(&v).contains("MAJOR.MINOR.PATCH"), "{v}");
    let (s, v) = t.put("1.02.3", arch, fake_build(arch, 10, 1)).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_version")
    );
    assert!(message(&v).contains("leading zero"), "{v}");
    let (s, v) = t.put("1.2.3", "riscv64", fake_build(arch, 10, 1)).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_arch")
    );
    assert!(message(&v).contains("riscv64"), "{v}");
    let (s, v) = t
        .put(
            "1.2.3",
            arch,
            b"#!/bin/sh\necho flotilla-agent 1.2.3\n".to_vec(),
        )
        .await;
    assert_eq!(
        (s, code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_build")
    );
    assert!(message(&v).contains("not an ELF"), "{v}");
    let (s, v) = t.put("1.2.3", arch, fake_build(other_arch(), 10, 1)).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_build")
    );
    assert!(message(&v).contains(other_arch()), "{v}");
    let (s, v) = t.put("1.2.3", arch, Vec::new()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("empty"), "{v}");
    // Publishing needs the admin scope; without a token nothing is read.
    let r = t
        .http
        .put(format!("{}/api/v1/releases/1.2.3/{arch}", t.base))
        .body(fake_build(arch, 10, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (s, v) = t
        .call(
            Method::POST,
            "/api/v1/api-tokens",
            Some(json!({"name": "ci", "scope": "operate"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let r = t
        .http
        .put(format!("{}/api/v1/releases/1.2.3/{arch}", t.base))
        .bearer_auth(v["token"].as_str().unwrap())
        .body(fake_build(arch, 10, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Over the cap, declared: 413 before a byte of the body is read.
    let addr = t.relay.local_addr();
    let answer = t
        .raw(
            format!(
                "PUT /api/v1/releases/1.2.3/{arch} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: \
                 Bearer {}\r\nContent-Length: {}\r\n\r\n",
                t.admin,
                MAX_RELEASE_BYTES + 1
            ),
            Vec::new(),
        )
        .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"too_large\"") && answer.contains("64 MiB"),
        "{answer}"
    );
    // Over the cap, streamed without a length: 413 once the cap is passed; nothing is kept.
    let mut body = Vec::new();
    let first = fake_build(arch, 1024 * 1024 - 64, 7);
    let mut sent = 0u64;
    let chunk = |data: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    };
    chunk(&first, &mut body);
    sent += first.len() as u64;
    let filler = vec![0x5au8; 1024 * 1024];
    while sent + filler.len() as u64 <= MAX_RELEASE_BYTES {
        chunk(&filler, &mut body);
        sent += filler.len() as u64;
    }
    let rest = (MAX_RELEASE_BYTES + 1 - sent) as usize;
    chunk(&filler[..rest], &mut body);
    let answer = t
        .raw(
            format!(
                "PUT /api/v1/releases/1.2.3/{arch} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: \
                 Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n",
                t.admin
            ),
            body,
        )
        .await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    assert!(t.releases().await.is_empty());
    let dir = t
        .relay
        .state()
        .config
        .data_dir
        .join(format!("releases/1.2.3/{arch}"));
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temporary files left: {left:?}");

    // Marking: unknown build 404, bad reason 400.
    let (s, _) = t
        .call(
            Method::POST,
            &format!("/api/v1/releases/9.9.9/{arch}/broken"),
            Some(json!({"reason": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    t.publish("1.0.0", arch, 1).await;
    let (s, _) = t
        .call(
            Method::POST,
            &format!("/api/v1/releases/1.0.0/{arch}/broken"),
            Some(json!({"reason": " "})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    t.relay.shutdown().await.unwrap();
}

// === agent.upgrade ===

#[tokio::test]
async fn agent_upgrade_issuance_refusals_and_a_reverted_upgrade() {
    let t = TestRelay::start().await;
    let arch = this_arch();
    let key = t.key();
    for (v, seed) in [("0.1.0", 1), ("0.2.0", 2), ("0.3.0", 3)] {
        t.publish(v, arch, seed).await;
    }
    let mut a = Agent::start(&t, "a", arch, "0.2.0").await;
    // Offline, with a queued upgrade to the build that is about to be reverted.
    let offline = Agent::enroll(&t, "offline", arch, "0.2.0").await;
    let odd = Agent::start(&t, "odd", "riscv64", "0.2.0").await;

    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or_default().to_string();
    // Refusals, each naming why. The version the agent runs, even as a rollback: the agent
    // would refuse it.
    for rollback in [false, true] {
        let (s, v) = t
            .upgrade(&a.id, json!({"version": "0.2.0", "rollback": rollback}))
            .await;
        assert_eq!(
            (s, code(&v).as_str()),
            (StatusCode::CONFLICT, "already_runs"),
            "{v}"
        );
        let m = v["error"]["message"].as_str().unwrap();
        assert!(
            m.contains(&format!("agent {} already runs 0.2.0", a.id)),
            "{m}"
        );
    }
    let (s, v) = t.upgrade(&a.id, json!({"version": "0.1.0"})).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (StatusCode::CONFLICT, "not_newer"),
        "{v}"
    );
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("newer than 0.1.0") && m.contains("rollback") && m.contains("older"),
        "{m}"
    );
    let (s, v) = t.upgrade(&a.id, json!({"version": "0.4.0"})).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (StatusCode::CONFLICT, "no_such_release"),
        "{v}"
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("0.3.0"));
    let (s, v) = t.upgrade(&odd.id, json!({"version": "0.3.0"})).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (StatusCode::CONFLICT, "no_such_release"),
        "{v}"
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("riscv64"));
    let (s, v) = t.upgrade(&a.id, json!({"version": "0.3"})).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_args"),
        "{v}"
    );
    let (s, v) = t.upgrade(&a.id, json!({"manifest": "x"})).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_args"),
        "{v}"
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("version"));
    let (s, v) = t
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"selector": "*", "kind": "agent.upgrade", "args": {"version": "0.3.0"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("rollout"));

    // A rollback is the explicit way back; it carries the older build's signed manifest.
    let (s, v) = t
        .upgrade(&a.id, json!({"version": "0.1.0", "rollback": true}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (id, manifest, rollback) = a.next_upgrade(&key).await;
    assert_eq!((manifest.version.as_str(), rollback), ("0.1.0", true));
    // The updater could not go back either and reverted the rollback: that does not make the
    // older, known-good build broken (the failure and the alert remain).
    a.received(&id).await;
    a.result(
        &id,
        ResultStatus::Failed,
        None,
        Some((
            error_codes::UPGRADE_REVERTED,
            "0.1.0 did not reach the relay within 120 s; 0.2.0 was restored",
        )),
    )
    .await;
    assert_eq!(t.command(&id, &a.id).await.state, DeliveryState::Failed);
    let old = t
        .releases()
        .await
        .into_iter()
        .find(|r| r.version == "0.1.0")
        .unwrap();
    assert_eq!(old.broken, None, "a reverted rollback marked 0.1.0 broken");

    // The offline agent's copy waits, queued, with somebody waiting for its outcome.
    let waiter = {
        let http = t.http.clone();
        let url = format!("{}/api/v1/agents/{}/commands?wait=120", t.base, offline.id);
        let admin = t.admin.clone();
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(admin)
                .json(&json!({"kind": "agent.upgrade", "args": {"version": "0.3.0"}}))
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<CommandInfo>().await.unwrap())
        })
    };
    eventually(WAIT, "the offline agent's upgrade to be queued", || async {
        let (_, audit) = t.call(Method::GET, "/api/v1/audit?limit=100", None).await;
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "command.create" && e["target"] == offline.id.as_str())
            .then_some(())
    })
    .await;

    // Upgrade to 0.3.0; the agent's updater reverts it.
    let (s, v) = t.upgrade(&a.id, json!({"version": "latest"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let sent: CommandInfo = serde_json::from_value(v).unwrap();
    let (id, manifest, rollback) = a.next_upgrade(&key).await;
    assert_eq!(id, sent.id);
    assert_eq!(
        (manifest.version.as_str(), manifest.arch.as_str(), rollback),
        ("0.3.0", arch, false)
    );
    a.upgrade_reverted(&id).await;
    let info = t.command(&id, &a.id).await;
    assert_eq!(info.state, DeliveryState::Failed);
    // The mark ended the offline agent's queued copy, and its waiter hears of it at once
    // (not when its two minutes are up).
    let (status, queued) = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("the waiter returns once the mark ended its delivery")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(queued.state, DeliveryState::Undelivered);

    // The build is broken, marked by the agent, at once: refused, not served, not latest, and
    // the offline agent's queued copy will never be sent.
    let r = t
        .releases()
        .await
        .into_iter()
        .find(|r| r.version == "0.3.0")
        .unwrap();
    let broken = r.broken.expect("0.3.0 marked broken");
    assert_eq!(broken.by, a.id);
    assert!(broken.reason.contains("within 120 s"), "{}", broken.reason);
    let (s, v) = t.upgrade(&a.id, json!({"version": "0.3.0"})).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (StatusCode::CONFLICT, "release_broken"),
        "{v}"
    );
    assert_eq!(
        t.get(&format!("/download/agent/0.3.0/{arch}"))
            .await
            .status(),
        StatusCode::GONE
    );
    // latest is 0.2.0 again, which the agent runs.
    let (s, v) = t.upgrade(&a.id, json!({"version": "latest"})).await;
    assert_eq!(
        (s, code(&v).as_str()),
        (StatusCode::CONFLICT, "already_runs"),
        "{v}"
    );
    assert_eq!(
        t.command(&queued.id, &offline.id).await.state,
        DeliveryState::Undelivered
    );

    // The alerts: medium, for the agent, naming the build: the reverted upgrade (its build
    // marked broken) and the reverted rollback (nothing marked).
    let alerts = eventually(WAIT, "both agent_upgrade_reverted alerts", || async {
        let (_, v) = t
            .call(
                Method::GET,
                "/api/v1/alerts?rule=agent_upgrade_reverted",
                None,
            )
            .await;
        v.as_array().filter(|l| l.len() == 2).cloned()
    })
    .await;
    let mut subjects: Vec<&str> = alerts
        .iter()
        .map(|a| a["subject"].as_str().unwrap())
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        vec![format!("0.1.0/{arch}"), format!("0.3.0/{arch}")]
    );
    for alert in &alerts {
        assert_eq!(alert["agent_id"], a.id.as_str());
        assert_eq!(alert["severity"], "medium");
    }
    let rollback_alert = alerts
        .iter()
        .find(|a| a["subject"] == format!("0.1.0/{arch}").as_str())
        .unwrap();
    assert!(
        rollback_alert["message"]
            .as_str()
            .unwrap()
            .contains("not marked broken"),
        "{rollback_alert}"
    );
    t.relay.shutdown().await.unwrap();
}

// === rollouts of agent versions ===

async fn start_agent_rollout(t: &TestRelay, body: Value) -> RolloutInfo {
    let (s, v) = t.call(Method::POST, "/api/v1/rollouts", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    serde_json::from_value(v).unwrap()
}

fn member<'a>(r: &'a RolloutInfo, agent: &Agent) -> &'a flotilla_shared::rollout::RolloutAgent {
    r.agents
        .iter()
        .find(|m| m.agent_id == agent.id)
        .unwrap_or_else(|| panic!("{} is not a member", agent.id))
}

#[tokio::test]
async fn agent_rollout_completes_and_skips_agents_without_a_build() {
    let t = TestRelay::start().await;
    let arch = this_arch();
    let key = t.key();
    t.publish("0.2.0", arch, 2).await;
    let mut a = Agent::start(&t, "a", arch, "0.1.0").await;
    let mut b = Agent::start(&t, "b", arch, "0.1.0").await;
    let current = Agent::start(&t, "current", arch, "0.2.0").await;
    let odd = Agent::start(&t, "odd", other_arch(), "0.1.0").await;

    // Refused before anything starts: no such build, a malformed version.
    let (s, v) = t
        .call(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({"selector": "*", "agent_version": "9.9.9"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("no_such_release"))
    );
    let (s, _) = t
        .call(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({"selector": "*", "agent_version": "latest"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let r = start_agent_rollout(
        &t,
        json!({"selector": "*", "agent_version": "0.2.0", "stages": "100%", "parallelism": "4"}),
    )
    .await;
    assert_eq!(r.target, RolloutTarget::Agent);
    assert_eq!(r.image, "0.2.0");
    assert_eq!(r.name, "flotilla-agent → 0.2.0");
    // Another agent rollout over the same agents conflicts.
    let (s, v) = t
        .call(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({"selector": "*", "agent_version": "0.2.0"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );

    for agent in [&mut a, &mut b] {
        let (id, manifest, rollback) = agent.next_upgrade(&key).await;
        assert_eq!((manifest.version.as_str(), rollback), ("0.2.0", false));
        agent.upgrade_ok(&t, &id, "0.2.0").await;
    }
    let done = t
        .wait_rollout(&r.id, "the rollout to complete", |r| r.state.is_final())
        .await;
    assert_eq!(done.state, RolloutState::Completed, "{done:?}");
    assert_eq!((done.counts.updated, done.counts.no_target), (2, 2));
    for agent in [&a, &b] {
        let m = member(&done, agent);
        assert_eq!(m.outcome, AgentOutcome::Updated);
        assert_eq!(m.containers.len(), 1);
        assert_eq!(m.containers[0].name, "flotilla-agent");
        assert_eq!(m.containers[0].old_image.as_deref(), Some("0.1.0"));
    }
    let m = member(&done, &current);
    assert_eq!(m.outcome, AgentOutcome::NoTarget);
    assert_eq!(m.reason.as_deref(), Some("already runs 0.2.0"));
    assert!(m.containers.is_empty());
    let m = member(&done, &odd);
    assert_eq!(m.outcome, AgentOutcome::NoTarget);
    assert!(
        m.reason.as_deref().unwrap().contains(other_arch()),
        "{:?}",
        m.reason
    );
    t.relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reverted_upgrade_stops_the_version_at_once() {
    let t = TestRelay::start().await;
    let arch = this_arch();
    let key = t.key();
    t.publish("0.3.0", arch, 3).await;
    let mut agents = Vec::new();
    for name in ["a", "b", "c"] {
        agents.push(Agent::start(&t, name, arch, "0.2.0").await);
    }
    // One failure tolerated, one agent at a time: without the broken mark the others would
    // get the build next.
    let r = start_agent_rollout(
        &t,
        json!({"selector": "*", "agent_version": "0.3.0", "stages": "100%",
               "max_failures": "1", "parallelism": "1"}),
    )
    .await;
    // Whoever comes first reverts.
    let (first, id) = {
        let [a0, a1, a2] = agents.as_mut_slice() else {
            unreachable!()
        };
        tokio::select! {
            (id, _, _) = a0.next_upgrade(&key) => (0, id),
            (id, _, _) = a1.next_upgrade(&key) => (1, id),
            (id, _, _) = a2.next_upgrade(&key) => (2, id),
        }
    };
    agents[first].upgrade_reverted(&id).await;
    let paused = t
        .wait_rollout(&r.id, "the stage to end", |r| {
            r.state == RolloutState::Paused
        })
        .await;
    assert_eq!(
        (paused.counts.failed, paused.counts.skipped),
        (1, 2),
        "{paused:?}"
    );
    let failed = member(&paused, &agents[first]);
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap()
            .contains("upgrade_reverted"),
        "{:?}",
        failed.reason
    );
    for (i, agent) in agents.iter().enumerate() {
        if i == first {
            continue;
        }
        let m = member(&paused, agent);
        assert_eq!(m.outcome, AgentOutcome::Skipped);
        assert!(
            m.reason.as_deref().unwrap().contains("marked broken"),
            "{:?}",
            m.reason
        );
        assert!(
            m.containers.is_empty(),
            "{} was sent the broken build",
            agent.id
        );
    }
    assert!(paused.events.iter().any(|e| e.action == "skipped"));
    assert!(
        paused
            .reason
            .as_deref()
            .unwrap()
            .contains("updated no agent"),
        "{:?}",
        paused.reason
    );
    t.relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn agent_rollout_soak_checks_the_version_and_revert_rolls_back() {
    let t = TestRelay::start().await;
    let arch = this_arch();
    let key = t.key();
    t.publish("0.1.0", arch, 1).await;
    t.publish("0.2.0", arch, 2).await;
    let mut a = Agent::start(&t, "a", arch, "0.1.0").await;
    let mut c = Agent::start(&t, "c", arch, "0.1.0").await;
    // Its previous version was never published on this relay: it cannot be rolled back.
    let mut b = Agent::start(&t, "b", arch, "0.0.5").await;
    let r = start_agent_rollout(
        &t,
        json!({"selector": "*", "agent_version": "0.2.0", "stages": "100%:1h",
               "parallelism": "3"}),
    )
    .await;
    for agent in [&mut a, &mut b, &mut c] {
        let (id, _, _) = agent.next_upgrade(&key).await;
        agent.upgrade_ok(&t, &id, "0.2.0").await;
    }
    t.wait_rollout(&r.id, "the soak", |r| {
        r.stage_phase == flotilla_shared::rollout::StagePhase::Soaking
    })
    .await;
    // A heartbeat of c's previous process flushed late puts its old version back into the
    // agents table: the soak (and the revert below) go by what c's live connection announced.
    t.relay
        .state()
        .store
        .set_agent_version(c.id.clone(), "0.1.0".into())
        .await
        .unwrap();
    // During the soak a comes back on its old version (reverted after it had reported
    // success): the soak fails it and the rollout pauses.
    a.reconnect_as(&t, "0.1.0").await;
    let paused = t
        .wait_rollout(&r.id, "the soak failure", |r| {
            r.state == RolloutState::Paused
        })
        .await;
    let m = member(&paused, &a);
    assert_eq!(m.outcome, AgentOutcome::Failed);
    assert!(
        m.reason
            .as_deref()
            .unwrap()
            .contains("reports version 0.1.0, not 0.2.0"),
        "{:?}",
        m.reason
    );
    assert_eq!(member(&paused, &b).outcome, AgentOutcome::Updated);
    assert_eq!(
        member(&paused, &c).outcome,
        AgentOutcome::Updated,
        "{paused:?}"
    );

    // Abort with revert: c gets a rollback to 0.1.0; a already runs 0.1.0 again, so it is
    // sent nothing (it would refuse an upgrade to the version it runs) and counts as reverted;
    // b's previous build does not exist.
    let (s, v) = t
        .call(
            Method::POST,
            &format!("/api/v1/rollouts/{}/abort", r.id),
            Some(json!({"revert": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (id, manifest, rollback) = c.next_upgrade(&key).await;
    assert_eq!((manifest.version.as_str(), rollback), ("0.1.0", true));
    c.upgrade_ok(&t, &id, "0.1.0").await;
    let done = t
        .wait_rollout(&r.id, "the revert to end", |r| r.state.is_final())
        .await;
    assert_eq!(done.state, RolloutState::Aborted, "{done:?}");
    assert!(
        done.reason
            .as_deref()
            .unwrap()
            .contains("revert failed on 1"),
        "{:?}",
        done.reason
    );
    assert_eq!(member(&done, &c).outcome, AgentOutcome::Reverted);
    let ma = member(&done, &a);
    assert_eq!(ma.outcome, AgentOutcome::Reverted, "{ma:?}");
    assert_eq!(ma.containers[0].revert_command_id, None, "{ma:?}");
    assert!(
        ma.containers[0]
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("already runs 0.1.0"),
        "{ma:?}"
    );
    assert!(
        done.events
            .iter()
            .any(|e| e.action == "already_reverted" && e.detail.contains(&a.id)),
        "{:?}",
        done.events
    );
    let mb = member(&done, &b);
    assert_eq!(mb.outcome, AgentOutcome::RevertFailed);
    let why = mb.containers[0].reason.as_deref().unwrap_or_default();
    assert!(
        why.contains("not reverted to 0.0.5") && why.contains("no build"),
        "{mb:?}"
    );
    t.relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stage_whose_agents_already_run_the_version_passes_without_pausing() {
    let t = TestRelay::start().await;
    let arch = this_arch();
    t.publish("0.2.0", arch, 2).await;
    let on_it = Agent::start(&t, "on-it", arch, "0.2.0").await;
    let ahead = Agent::start(&t, "ahead", arch, "0.3.0").await;
    let r = start_agent_rollout(
        &t,
        json!({"selector": "*", "agent_version": "0.2.0", "stages": "50%,100%",
               "order": "oldest-first"}),
    )
    .await;
    let done = t
        .wait_rollout(&r.id, "the rollout to end", |r| {
            r.state.is_final() || r.state == RolloutState::Paused
        })
        .await;
    assert_eq!(done.state, RolloutState::Completed, "{done:?}");
    assert!(
        !done.events.iter().any(|e| e.action == "paused"),
        "{:?}",
        done.events
    );
    let m = member(&done, &on_it);
    assert_eq!(
        (m.outcome, m.reason.as_deref()),
        (AgentOutcome::NoTarget, Some("already runs 0.2.0"))
    );
    let m = member(&done, &ahead);
    assert_eq!(
        (m.outcome, m.reason.as_deref()),
        (
            AgentOutcome::NoTarget,
            Some("already runs 0.3.0, newer than 0.2.0")
        )
    );
    t.relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_agent_upgrade_waits_until_container_work_finished() {
    let t = TestRelay::start().await;
    let arch = this_arch();
    let key = t.key();
    t.publish("0.2.0", arch, 2).await;
    let mut a = Agent::start(&t, "a", arch, "0.1.0").await;
    // A container restart the agent is busy with.
    let (s, v) = t
        .call(
            Method::POST,
            &format!("/api/v1/agents/{}/commands", a.id),
            Some(json!({"kind": "container.restart", "args": {"container": "web"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let restart = a.next_command(&key).await;
    assert_eq!(restart.command.kind().as_str(), "container.restart");
    a.received(&restart.id).await;
    let r = start_agent_rollout(
        &t,
        json!({"selector": "*", "agent_version": "0.2.0", "stages": "100%"}),
    )
    .await;
    // Several engine steps later the member still waits, without a command (stepped here, on
    // an engine over the relay's own parts, rather than waiting for its ticks).
    let state = t.relay.state();
    let engine = RolloutEngine::new(
        state.store.clone(),
        state.commands.clone(),
        state.hub.clone(),
        state.heartbeats.clone(),
        state.alerts.started_at,
        &state.config,
    );
    for _ in 0..3 {
        engine.step(chrono::Utc::now()).await.unwrap();
    }
    let waiting = t.rollout(&r.id).await;
    let m = member(&waiting, &a);
    assert_eq!(m.outcome, AgentOutcome::Pending, "{waiting:?}");
    assert!(m.containers.is_empty(), "{m:?}");
    assert_eq!(waiting.state, RolloutState::Running);
    // The restart finishes: the upgrade goes out, and the rollout completes.
    a.result(&restart.id, ResultStatus::Succeeded, None, None)
        .await;
    let (id, manifest, _) = a.next_upgrade(&key).await;
    assert_eq!(manifest.version, "0.2.0");
    a.upgrade_ok(&t, &id, "0.2.0").await;
    let done = t
        .wait_rollout(&r.id, "the rollout to complete", |r| r.state.is_final())
        .await;
    assert_eq!(done.state, RolloutState::Completed, "{done:?}");
    t.relay.shutdown().await.unwrap();
}

// === the CLI against the relay ===

/// Runs the `flotilla` binary against the relay: (exit code, stdout, stderr).
async fn flotilla(t: &TestRelay, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(flotilla_tests::harness::bin("flotilla"))
        .args(["--addr", &t.base, "--token", &t.admin])
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_publishes_lists_marks_and_upgrades() {
    let t = TestRelay::start().await;
    let arch = this_arch();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flotilla-agent");
    let build = fake_build(arch, 2 * 1024 * 1024, 5);
    std::fs::write(&file, &build).unwrap();
    let path = file.to_str().unwrap();

    // The architecture comes from the ELF header; the upload is streamed and hashed.
    let (code, out, err) = flotilla(
        &t,
        &["release", "publish", "--file", path, "--version", "0.5.0"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("flotilla-agent 0.5.0 for {arch}")),
        "{out}"
    );
    assert!(out.contains(&sha256_hex(&build)), "{out}");
    let stored = t
        .relay
        .state()
        .config
        .data_dir
        .join(format!("releases/0.5.0/{arch}/flotilla-agent"));
    assert_eq!(std::fs::read(stored).unwrap(), build);
    // Refused locally, before any upload: the wrong architecture, a script.
    let (code, _, err) = flotilla(
        &t,
        &[
            "release",
            "publish",
            "--file",
            path,
            "--version",
            "0.6.0",
            "--arch",
            other_arch(),
        ],
    )
    .await;
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("built for {arch}, not {}", other_arch())),
        "{err}"
    );
    let script = dir.path().join("agent.sh");
    std::fs::write(&script, "#!/bin/sh\necho flotilla-agent 0.6.0\n").unwrap();
    let (code, _, err) = flotilla(
        &t,
        &[
            "release",
            "publish",
            "--file",
            script.to_str().unwrap(),
            "--version",
            "0.6.0",
        ],
    )
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("not an ELF"), "{err}");
    // Different bytes for a published version: the relay's 409 sentence.
    std::fs::write(&file, fake_build(arch, 1000, 6)).unwrap();
    let (code, _, err) = flotilla(
        &t,
        &["release", "publish", "--file", path, "--version", "0.5.0"],
    )
    .await;
    assert_eq!(code, 2);
    assert!(
        err.contains("already published with different bytes"),
        "{err}"
    );

    let (code, out, _) = flotilla(&t, &["release", "list"]).await;
    assert_eq!(code, 0);
    let line = out.lines().nth(1).unwrap();
    assert!(line.starts_with(&format!("0.5.0    {arch}")), "{out}");
    assert!(
        line.contains(&sha256_hex(&build)[..12]) && line.trim_end().ends_with('-'),
        "{out}"
    );

    // Upgrading an agent through the CLI; refused once the build is broken.
    let mut a = Agent::start(&t, "a", arch, "0.4.0").await;
    let (code, out, err) = flotilla(&t, &["agent", "upgrade", &a.id, "--version", "0.5.0"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("agent.upgrade"), "{out}");
    let (id, m, _) = a.next_upgrade(&t.key()).await;
    assert_eq!(m.version, "0.5.0");
    a.upgrade_ok(&t, &id, "0.5.0").await;
    let (code, out, err) = flotilla(
        &t,
        &[
            "release",
            "broken",
            "0.5.0",
            "--arch",
            arch,
            "--reason",
            "leaks memory",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = flotilla(&t, &["release", "list"]).await;
    assert!(out.contains("leaks memory (by admin"), "{out}");
    let (code, _, err) = flotilla(
        &t,
        &[
            "agent",
            "upgrade",
            &a.id,
            "--version",
            "0.5.0",
            "--rollback",
        ],
    )
    .await;
    assert_eq!(code, 2);
    assert!(
        err.contains("marked broken") && err.contains("leaks memory"),
        "{err}"
    );
    let (code, _, _) = flotilla(&t, &["release", "unbroken", "0.5.0", "--arch", arch]).await;
    assert_eq!(code, 0);
    let (_, json, _) = flotilla(&t, &["--json", "release", "list"]).await;
    let list: Vec<ReleaseInfo> = serde_json::from_str(&json).unwrap();
    assert!(list[0].broken.is_none());

    // An agent-version rollout from the CLI.
    let (code, out, err) = flotilla(
        &t,
        &[
            "rollout",
            "start",
            "--selector",
            "*",
            "--agent-version",
            "0.5.0",
            "--stages",
            "100%",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("flotilla-agent → version 0.5.0"), "{out}");
    t.relay.shutdown().await.unwrap();
}
