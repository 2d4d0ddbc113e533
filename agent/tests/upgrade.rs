//! Signed self-update without systemd: the agent's `agent.upgrade` handler against a real HTTP
//! server on loopback serving stamped copies of the compiled agent, and the root updater
//! (`flotilla-agent self-update apply`, the real binary) against temporary directories with a
//! fake `systemctl` on PATH that records its calls and reports the restart counts a test sets.
//!
//! The debug build is about 100 MiB, more than a release may be (`MAX_RELEASE_BYTES`), so the
//! tests serve a stripped copy (`strip`, from binutils, which the Rust toolchain's linker needs
//! anyway).

use chrono::{Duration as ChronoDuration, Utc};
use flotilla_agent::state::{Identity, State};
use flotilla_agent::upgrade::{
    Resumed, UpgradeOptions, UpgradeOutcome, UpgradePaths, UpgradeRequest, UpgradeResult,
    UpgradeSettings, UpgradeStatus, Upgrades,
};
use flotilla_shared::command::{
    error_codes, AgentUpgradeArgs, AgentUpgradeOutput, Audience, Command, CommandEnvelope,
    CommandResult, ResultStatus, SignedCommand,
};
use flotilla_shared::protocol::OutboxItem;
use flotilla_shared::release::{stamp_version, this_arch, ReleaseManifest, SignedManifest};
use flotilla_shared::signing::SigningKey;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

// === fixtures ===

/// The compiled agent, stripped (read once).
fn stripped_agent() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("flotilla-agent");
        std::fs::copy(env!("CARGO_BIN_EXE_flotilla-agent"), &copy).unwrap();
        let status = std::process::Command::new("strip")
            .arg(&copy)
            .status()
            .expect("strip (binutils) must be installed");
        assert!(status.success(), "strip failed");
        std::fs::read(&copy).unwrap()
    })
}

/// The agent binary stamped with `version`.
fn agent_build(version: &str) -> Vec<u8> {
    let mut bytes = stripped_agent().to_vec();
    stamp_version(&mut bytes, version).unwrap();
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn manifest_for(bytes: &[u8], version: &str, arch: &str) -> ReleaseManifest {
    ReleaseManifest {
        name: "flotilla-agent".into(),
        version: version.into(),
        arch: arch.into(),
        size: bytes.len() as u64,
        sha256: sha256_hex(bytes),
        created_at: Utc::now(),
    }
}

fn other_arch() -> &'static str {
    if this_arch() == "x86_64" {
        "aarch64"
    } else {
        "x86_64"
    }
}

struct Route {
    status: u16,
    body: Vec<u8>,
    content_length: bool,
}

impl Route {
    fn ok(body: Vec<u8>) -> Route {
        Route {
            status: 200,
            body,
            content_length: true,
        }
    }
}

/// A tiny HTTP/1.1 server on loopback: one request per connection, answered from `routes`
/// (404 for anything else). Returns its base URL and a counter of requests served.
fn serve(routes: HashMap<String, Route>) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body, with_length) = match routes.get(&path) {
                Some(r) => (r.status, r.body.as_slice(), r.content_length),
                None => (404, &b"no such build"[..], true),
            };
            let mut response = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
            if with_length {
                response.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            response.push_str("\r\n");
            // The client may hang up early (an oversized download): errors are expected.
            let _ = stream.write_all(response.as_bytes());
            let _ = stream.write_all(body);
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
    });
    (url, hits)
}

fn download_path(version: &str, arch: &str) -> String {
    format!("/download/agent/{version}/{arch}")
}

fn settings() -> UpgradeSettings {
    UpgradeSettings {
        updater_pickup: Duration::from_secs(20),
        download_timeout: Duration::from_secs(60),
        smoke_timeout: Duration::from_secs(10),
        confirm_ack: Duration::from_secs(3),
        restart_wait: Duration::from_secs(120),
    }
}

struct Agent {
    _dir: tempfile::TempDir,
    state_dir: PathBuf,
    state: State,
    upgrades: Upgrades,
    paths: UpgradePaths,
}

async fn agent(relay_url: &str, relay: &SigningKey, settings: UpgradeSettings) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let state = State::open(&state_dir).await.unwrap();
    let upgrades = Upgrades::new(
        UpgradeOptions {
            state_dir: state_dir.clone(),
            relay_url: relay_url.into(),
            ca_file: None,
            relay_key: relay.public_key(),
            settings,
        },
        state.clone(),
    )
    .unwrap();
    Agent {
        paths: UpgradePaths::new(&state_dir),
        _dir: dir,
        state_dir,
        state,
        upgrades,
    }
}

/// A relay-signed `agent.upgrade` command carrying `manifest`.
fn signed_command(
    relay: &SigningKey,
    id: &str,
    manifest: &SignedManifest,
    rollback: bool,
) -> (AgentUpgradeArgs, SignedCommand) {
    let args = AgentUpgradeArgs {
        manifest: manifest.clone(),
        rollback,
    };
    let now = Utc::now();
    let env = CommandEnvelope {
        id: id.into(),
        audience: Audience::Agent {
            agent_id: "ag_test".into(),
        },
        command: Command::AgentUpgrade(args.clone()),
        issued_at: now,
        expires_at: now + ChronoDuration::minutes(10),
    };
    (args, SignedCommand::sign(&env, relay))
}

/// Nothing left behind: no request, no staged or partial file.
fn assert_nothing_staged(paths: &UpgradePaths) {
    assert!(!paths.request().exists(), "request.json was left behind");
    let staged: Vec<_> = std::fs::read_dir(paths.staged_dir())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(staged.is_empty(), "staged files left behind: {staged:?}");
}

async fn refused_with(agent: &Agent, args: &AgentUpgradeArgs, running: &str) -> String {
    let outcome = agent
        .upgrades
        .upgrade_from(
            "cmd_refused",
            args,
            None,
            running,
            &CancellationToken::new(),
        )
        .await;
    let UpgradeOutcome::Failed(e) = outcome else {
        panic!("expected a refusal, got {outcome:?}");
    };
    assert_eq!(e.code, error_codes::UPGRADE_REFUSED, "{}", e.message);
    assert_nothing_staged(&agent.paths);
    e.message
}

// === the agent's handler ===

#[tokio::test]
async fn tampered_oversized_and_mislabelled_builds_are_refused_with_nothing_staged() {
    let relay = SigningKey::generate();
    let good = agent_build("0.2.0");
    let manifest = manifest_for(&good, "0.2.0", this_arch());

    let mut tampered = good.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    let mut oversized = good.clone();
    oversized.extend_from_slice(&[0u8; 100]);
    // Prints 0.3.0 although the manifest (whose hash matches) says 0.2.5.
    let liar = agent_build("0.3.0");

    let mut routes = HashMap::new();
    routes.insert(download_path("0.2.0", this_arch()), Route::ok(tampered));
    // No Content-Length: the cap must stop the stream itself.
    routes.insert(
        download_path("0.2.1", this_arch()),
        Route {
            status: 200,
            body: oversized.clone(),
            content_length: false,
        },
    );
    routes.insert(download_path("0.2.2", this_arch()), Route::ok(oversized));
    routes.insert(download_path("0.2.5", this_arch()), Route::ok(liar.clone()));
    routes.insert(
        download_path("0.2.6", this_arch()),
        Route {
            status: 410,
            body: b"build 0.2.6 is marked broken".to_vec(),
            content_length: true,
        },
    );
    let (url, hits) = serve(routes);
    let agent = agent(&url, &relay, settings()).await;
    let args = |m: SignedManifest| AgentUpgradeArgs {
        manifest: m,
        rollback: false,
    };

    // Tampered bytes: the hash names both digests.
    let msg = refused_with(&agent, &args(manifest.sign(&relay)), "0.1.0").await;
    let mut tampered_sha = good.clone();
    tampered_sha[middle] ^= 0xff;
    assert!(
        msg.contains(&format!(
            "sha256 of the download is {}, the signed manifest says {}",
            sha256_hex(&tampered_sha),
            manifest.sha256
        )),
        "{msg}"
    );

    // Larger than the manifest, streamed without a length, and announced with one.
    let m = ReleaseManifest {
        version: "0.2.1".into(),
        ..manifest.clone()
    };
    let msg = refused_with(&agent, &args(m.sign(&relay)), "0.1.0").await;
    assert!(msg.contains("exceeds the signed manifest's size"), "{msg}");
    let m = ReleaseManifest {
        version: "0.2.2".into(),
        ..manifest.clone()
    };
    let msg = refused_with(&agent, &args(m.sign(&relay)), "0.1.0").await;
    assert!(msg.contains("announces"), "{msg}");

    // The smoke test: --version must print the manifest's version.
    let m = manifest_for(&liar, "0.2.5", this_arch());
    let msg = refused_with(&agent, &args(m.sign(&relay)), "0.1.0").await;
    assert!(
        msg.contains("--version prints 0.3.0, the signed manifest says 0.2.5"),
        "{msg}"
    );

    // Refused before downloading anything.
    let before = hits.load(Ordering::SeqCst);
    let msg = refused_with(
        &agent,
        &args(manifest.sign(&SigningKey::generate())),
        "0.1.0",
    )
    .await;
    assert!(
        msg.contains("does not verify with the pinned relay key")
            && msg.contains(&relay.public_key().fingerprint()),
        "{msg}"
    );
    let mut forged = manifest.sign(&relay);
    forged.manifest = forged.manifest.replace("0.2.0", "0.9.0");
    let msg = refused_with(&agent, &args(forged), "0.1.0").await;
    assert!(msg.contains("does not verify"), "{msg}");
    let m = manifest_for(&good, "0.2.0", other_arch());
    let msg = refused_with(&agent, &args(m.sign(&relay)), "0.1.0").await;
    assert_eq!(
        msg,
        format!(
            "the build is for {}, this agent runs on {}",
            other_arch(),
            this_arch()
        )
    );
    let m = manifest_for(&good, "0.1.0", this_arch());
    let msg = refused_with(&agent, &args(m.sign(&relay)), "0.2.0").await;
    assert_eq!(
        msg,
        "0.1.0 is older than the running 0.2.0; the relay must send rollback"
    );
    let msg = refused_with(&agent, &args(manifest.sign(&relay)), "0.2.0").await;
    assert!(msg.contains("already runs"), "{msg}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "nothing was downloaded"
    );

    // A build the relay marked broken is a failure to download, not a refusal.
    let m = ReleaseManifest {
        version: "0.2.6".into(),
        ..manifest.clone()
    };
    let outcome = agent
        .upgrades
        .upgrade_from(
            "cmd_broken",
            &args(m.sign(&relay)),
            None,
            "0.1.0",
            &CancellationToken::new(),
        )
        .await;
    let UpgradeOutcome::Failed(e) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(e.code, error_codes::UPGRADE_FAILED);
    assert!(
        e.message.contains("410") && e.message.contains("broken"),
        "{}",
        e.message
    );
    assert_nothing_staged(&agent.paths);
}

#[tokio::test]
async fn without_an_updater_the_request_is_withdrawn() {
    let relay = SigningKey::generate();
    let build = agent_build("0.2.0");
    let manifest = manifest_for(&build, "0.2.0", this_arch());
    let mut routes = HashMap::new();
    routes.insert(download_path("0.2.0", this_arch()), Route::ok(build));
    let (url, _) = serve(routes);
    let agent = agent(
        &url,
        &relay,
        UpgradeSettings {
            updater_pickup: Duration::from_secs(1),
            ..settings()
        },
    )
    .await;
    let (args, signed) = signed_command(&relay, "cmd_nobody", &manifest.sign(&relay), false);

    // Watch the request appear while the handler waits for the updater.
    let request_path = agent.paths.request();
    let seen = tokio::task::spawn_blocking(move || {
        for _ in 0..400 {
            if let Ok(text) = std::fs::read_to_string(&request_path) {
                return Some(text);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    });
    let outcome = agent
        .upgrades
        .upgrade_from(
            "cmd_nobody",
            &args,
            Some(&signed),
            "0.1.0",
            &CancellationToken::new(),
        )
        .await;
    let UpgradeOutcome::Failed(e) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(e.code, error_codes::UPGRADE_FAILED);
    assert_eq!(
        e.message,
        "the updater did not pick up the request; is flotilla-agent-updater.path enabled?"
    );
    let request: UpgradeRequest =
        serde_json::from_str(&seen.await.unwrap().expect("request.json was written")).unwrap();
    assert_eq!(request.command_id, "cmd_nobody");
    assert_eq!(request.command, Some(signed));
    assert_nothing_staged(&agent.paths);
}

// === the root updater (the real binary, a fake systemctl) ===

const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
# Records every call; `show` prints the restart count in $FAKE_DIR/nrestarts (and adds
# $FAKE_NRESTARTS_STEP to it); `restart` plays the restarted agent when $FAKE_CONFIRM is set:
# the installed binary's version goes to the state directory's upgrade/confirmed, as the new
# agent writes it after the relay welcomed it.
echo "$*" >> "$FAKE_DIR/calls"
case "$1" in
  show)
    n=$(cat "$FAKE_DIR/nrestarts" 2>/dev/null || echo 0)
    echo $((n + ${FAKE_NRESTARTS_STEP:-0})) > "$FAKE_DIR/nrestarts"
    echo "NRestarts=$n"
    echo "ActiveState=${FAKE_ACTIVE:-active}"
    echo "SubState=running"
    ;;
  restart)
    if [ -n "$FAKE_CONFIRM" ]; then
      "$FAKE_BINARY" --version | awk '{print $2}' > "$FAKE_STATE/upgrade/confirmed"
    fi
    ;;
esac
exit 0
"#;

/// An installed binary, a root key file, a fake systemctl and an updater directory.
struct Host {
    dir: tempfile::TempDir,
    state_dir: PathBuf,
    paths: UpgradePaths,
    binary: PathBuf,
    updater_dir: PathBuf,
    key_file: PathBuf,
    fake: PathBuf,
}

impl Host {
    fn new(state_dir: &Path, installed: &[u8], relay: &SigningKey) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        let binary = bin_dir.join("flotilla-agent");
        std::fs::write(&binary, installed).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let fake = dir.path().join("fake");
        std::fs::create_dir_all(&fake).unwrap();
        let systemctl = fake.join("systemctl");
        std::fs::write(&systemctl, FAKE_SYSTEMCTL).unwrap();
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let key_file = dir.path().join("relay.pub");
        std::fs::write(&key_file, format!("{}\n", relay.public_key().to_base64())).unwrap();
        Host {
            updater_dir: dir.path().join("updater"),
            state_dir: state_dir.to_path_buf(),
            paths: UpgradePaths::new(state_dir),
            binary,
            key_file,
            fake,
            dir,
        }
    }

    /// Runs `flotilla-agent self-update apply` (blocking); returns (success, stderr).
    fn apply(&self, deadline_secs: u64, env: &[(&str, &str)]) -> (bool, String) {
        let path = format!(
            "{}:{}",
            self.fake.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
            .args(["self-update", "apply", "--state-dir"])
            .arg(&self.state_dir)
            .arg("--deadline-secs")
            .arg(deadline_secs.to_string())
            .arg("--binary")
            .arg(&self.binary)
            .arg("--relay-key-file")
            .arg(&self.key_file)
            .arg("--updater-dir")
            .arg(&self.updater_dir)
            .env("PATH", path)
            .env("FAKE_DIR", &self.fake)
            .env("FAKE_BINARY", &self.binary)
            .env("FAKE_STATE", &self.state_dir)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.fake.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn result(&self) -> UpgradeResult {
        serde_json::from_str(&std::fs::read_to_string(self.paths.result()).unwrap()).unwrap()
    }

    fn installed(&self) -> Vec<u8> {
        std::fs::read(&self.binary).unwrap()
    }

    fn previous(&self) -> Vec<u8> {
        std::fs::read(self.updater_dir.join("flotilla-agent.previous")).unwrap()
    }

    /// The binary's directory holds only the binary (no temporary files left behind).
    fn assert_bin_dir_clean(&self) {
        let names: Vec<String> = std::fs::read_dir(self.dir.path().join("bin"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["flotilla-agent".to_string()]);
    }

    fn assert_finished(&self) {
        assert!(!self.paths.request().exists(), "request.json still there");
        assert!(
            !self.updater_dir.join("inflight.json").exists(),
            "inflight.json still there"
        );
        self.assert_bin_dir_clean();
    }

    /// Stages `bytes` and writes the request the agent would (for updater-only tests).
    fn request(
        &self,
        relay: &SigningKey,
        id: &str,
        from: &str,
        bytes: &[u8],
        version: &str,
        rollback: bool,
    ) -> AgentUpgradeArgs {
        let manifest = manifest_for(bytes, version, this_arch()).sign(relay);
        let (args, signed) = signed_command(relay, id, &manifest, rollback);
        let staged = self.paths.staged(version);
        std::fs::create_dir_all(self.paths.staged_dir()).unwrap();
        std::fs::write(&staged, bytes).unwrap();
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
        let request = UpgradeRequest {
            command_id: id.into(),
            from_version: from.into(),
            to_version: version.into(),
            arch: this_arch().into(),
            binary: staged,
            manifest,
            rollback,
            command: Some(signed),
            requested_at: Utc::now(),
        };
        std::fs::write(self.paths.request(), serde_json::to_vec(&request).unwrap()).unwrap();
        args
    }
}

async fn results(state: &State) -> Vec<CommandResult> {
    state
        .outbox_after(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|(_, item)| match item {
            OutboxItem::Result(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Handler → real updater → "restarted" new version → confirmed and reported.
#[tokio::test]
async fn an_upgrade_goes_through_the_updater_and_the_new_process_reports_it() {
    let relay = SigningKey::generate();
    let old = agent_build("0.1.0");
    let new = agent_build("0.2.0");
    let manifest = manifest_for(&new, "0.2.0", this_arch());
    let mut routes = HashMap::new();
    routes.insert(download_path("0.2.0", this_arch()), Route::ok(new.clone()));
    let (url, _) = serve(routes);
    let agent = agent(&url, &relay, settings()).await;
    let host = Arc::new(Host::new(&agent.state_dir, &old, &relay));
    let (args, signed) = signed_command(&relay, "cmd_up", &manifest.sign(&relay), false);
    let now = Utc::now();
    agent
        .state
        .journal_begin_with(
            "cmd_up",
            now,
            now + ChronoDuration::minutes(10),
            Some(serde_json::to_string(&Command::AgentUpgrade(args.clone())).unwrap()),
        )
        .await
        .unwrap();

    // The path unit: run the updater once the request appears.
    let stop = CancellationToken::new();
    let updater = {
        let (host, stop, request) = (host.clone(), stop.clone(), agent.paths.request());
        let new = new.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..1200 {
                if let Ok(text) = std::fs::read_to_string(&request) {
                    let r: UpgradeRequest = serde_json::from_str(&text).unwrap();
                    // Written last: the staged binary is complete and verified.
                    assert_eq!(std::fs::read(&r.binary).unwrap(), new);
                    let mode = std::fs::metadata(&r.binary).unwrap().permissions().mode();
                    assert_eq!(mode & 0o777, 0o755);
                    assert_eq!(
                        (r.from_version.as_str(), r.to_version.as_str()),
                        ("0.1.0", "0.2.0")
                    );
                    let ran = host.apply(30, &[("FAKE_CONFIRM", "1")]);
                    stop.cancel();
                    return ran;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            stop.cancel();
            (false, "request.json never appeared".into())
        })
    };
    let outcome = agent
        .upgrades
        .upgrade_from("cmd_up", &args, Some(&signed), "0.1.0", &stop)
        .await;
    let (ok, stderr) = updater.await.unwrap();
    assert!(ok, "the updater failed: {stderr}");
    assert_eq!(outcome, UpgradeOutcome::Applied, "{stderr}");

    // Swapped in place, the previous binary kept, the result confirmed.
    assert!(host.installed() == new, "the new build is installed");
    assert!(host.previous() == old, "the previous build is kept");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Confirmed, "{stderr}");
    assert_eq!(
        (
            result.command_id.as_str(),
            result.from_version.as_str(),
            result.to_version.as_str()
        ),
        ("cmd_up", "0.1.0", "0.2.0")
    );
    host.assert_finished();
    let calls = host.calls();
    assert_eq!(
        calls.first().map(String::as_str),
        Some("restart --no-block flotilla-agent")
    );
    assert!(
        calls.iter().all(|c| !c.starts_with("reset-failed")),
        "{calls:?}"
    );
    assert!(stderr.contains("installed the new build"), "{stderr}");

    // The new process: the command is pending until the first welcome, then succeeds.
    assert_eq!(
        agent.upgrades.resume_as("cmd_up", &args, "0.2.0"),
        Resumed::Pending
    );
    agent.upgrades.confirm_pending_as("0.2.0").await;
    assert_eq!(agent.paths.read_confirmed().as_deref(), Some("0.2.0"));
    let results = results(&agent.state).await;
    let r = results.iter().find(|r| r.command_id == "cmd_up").unwrap();
    assert_eq!(r.status, ResultStatus::Succeeded, "{r:?}");
    let out: AgentUpgradeOutput = serde_json::from_value(r.output.clone().unwrap()).unwrap();
    assert_eq!(
        out,
        AgentUpgradeOutput {
            from_version: "0.1.0".into(),
            to_version: "0.2.0".into(),
            arch: this_arch().into(),
            running_version: "0.2.0".into(),
        }
    );
    assert!(agent.state.journal_running().await.unwrap().is_empty());
    assert_nothing_staged(&agent.paths);
}

#[tokio::test]
async fn a_crash_looping_build_is_reverted_and_the_old_process_reports_it() {
    let relay = SigningKey::generate();
    let old = agent_build("0.1.0");
    let new = agent_build("0.2.0");
    let agent = agent("http://127.0.0.1:9", &relay, settings()).await;
    let host = Host::new(&agent.state_dir, &old, &relay);
    let args = host.request(&relay, "cmd_loop", "0.1.0", &new, "0.2.0", false);

    let (ok, stderr) = host.apply(60, &[("FAKE_NRESTARTS_STEP", "1")]);
    assert!(ok, "a revert is a handled outcome: {stderr}");
    assert!(host.installed() == old, "the previous build is back");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Reverted);
    let reason = result.reason.clone().unwrap();
    assert!(
        reason.contains("flotilla-agent restarted 3 times after 0.2.0 was installed"),
        "{reason}"
    );
    host.assert_finished();
    let calls = host.calls();
    let restarts = calls
        .iter()
        .filter(|c| *c == "restart --no-block flotilla-agent")
        .count();
    assert_eq!(restarts, 2, "{calls:?}");
    assert!(
        calls.contains(&"reset-failed flotilla-agent".to_string()),
        "{calls:?}"
    );

    // The old process starts again and reports the revert with the updater's reason.
    let resumed = agent.upgrades.resume_as("cmd_loop", &args, "0.1.0");
    let Resumed::Finished(result) = resumed else {
        panic!("{resumed:?}")
    };
    let e = result.error.clone().unwrap();
    assert_eq!(e.code, error_codes::UPGRADE_REVERTED);
    assert!(
        e.message
            .starts_with("version 0.2.0 was installed but the updater reverted to 0.1.0: ")
            && e.message.contains("crash loop"),
        "{}",
        e.message
    );
    let out: AgentUpgradeOutput = serde_json::from_value(result.output.clone().unwrap()).unwrap();
    assert_eq!(out.running_version, "0.1.0");
    assert_nothing_staged(&agent.paths);
}

#[tokio::test]
async fn a_build_that_never_reaches_the_relay_is_reverted_at_the_deadline() {
    let relay = SigningKey::generate();
    let old = agent_build("0.1.0");
    let new = agent_build("0.1.1");
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(&dir.path().join("state"), &old, &relay);
    host.request(&relay, "cmd_silent", "0.1.0", &new, "0.1.1", false);
    let (ok, stderr) = host.apply(2, &[]);
    assert!(ok, "{stderr}");
    assert!(host.installed() == old);
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Reverted);
    assert_eq!(
        result.reason.as_deref(),
        Some("0.1.1 did not reach the relay within 2 s (flotilla-agent is active/running)")
    );
    host.assert_finished();
}

#[tokio::test]
async fn the_updater_refuses_downgrades_and_tampered_staged_files_but_takes_a_signed_rollback() {
    let relay = SigningKey::generate();
    let installed = agent_build("0.2.0");
    let older = agent_build("0.1.0");
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let host = Host::new(&state_dir, &installed, &relay);

    // A downgrade without rollback.
    host.request(&relay, "cmd_down", "0.2.0", &older, "0.1.0", false);
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "{stderr}");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Refused);
    assert_eq!(
        result.reason.as_deref(),
        Some("0.1.0 is older than the installed 0.2.0; the relay must send rollback")
    );
    assert!(host.installed() == installed);
    host.assert_finished();

    // The staged file changed after the agent verified it.
    let newer = agent_build("0.3.0");
    host.request(&relay, "cmd_swap", "0.2.0", &newer, "0.3.0", false);
    let mut evil = newer.clone();
    evil[1000] ^= 1;
    std::fs::write(host.paths.staged("0.3.0"), &evil).unwrap();
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "{stderr}");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Refused);
    let reason = result.reason.unwrap();
    assert!(
        reason.contains(&format!("the signed manifest says {}", sha256_hex(&newer))),
        "{reason}"
    );
    assert!(host.installed() == installed);
    host.assert_finished();

    // A manifest signed by another key (the agent's database may say otherwise: root trusts
    // relay.pub).
    let stranger = SigningKey::generate();
    host.request(&stranger, "cmd_forged", "0.2.0", &newer, "0.3.0", false);
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "{stderr}");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Refused);
    assert!(
        result
            .reason
            .as_deref()
            .unwrap()
            .contains("does not verify with the relay key"),
        "{result:?}"
    );
    assert!(host.installed() == installed);

    // A rollback the relay signed: installed, and confirmed by the "restarted" old version.
    // Without relay.pub the key pinned in agent.db is used.
    std::fs::remove_file(&host.key_file).unwrap();
    let state = State::open(&state_dir).await.unwrap();
    state
        .save_identity(Identity {
            agent_id: "ag_test".into(),
            name: "test".into(),
            pkcs8: SigningKey::generate().pkcs8().to_vec(),
            relay_public_key: relay.public_key().to_base64(),
            relay_url: "http://127.0.0.1:9".into(),
            enrolled_at: Utc::now(),
        })
        .await
        .unwrap();
    host.request(&relay, "cmd_back", "0.2.0", &older, "0.1.0", true);
    let (ok, stderr) = host.apply(30, &[("FAKE_CONFIRM", "1")]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("falling back to the key pinned in agent.db"),
        "{stderr}"
    );
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Confirmed, "{stderr}");
    assert!(host.installed() == older);
    assert!(host.previous() == installed);
    host.assert_finished();
}

#[tokio::test]
async fn an_interrupted_updater_finishes_on_the_next_run() {
    let relay = SigningKey::generate();
    let old = agent_build("0.1.0");
    let new = agent_build("0.2.0");
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(&dir.path().join("state"), &new, &relay);
    std::fs::create_dir_all(&host.updater_dir).unwrap();
    std::fs::write(host.updater_dir.join("flotilla-agent.previous"), &old).unwrap();
    let manifest = manifest_for(&new, "0.2.0", this_arch()).sign(&relay);
    let record = |stage: &str, id: &str| {
        serde_json::json!({
            "request": {
                "command_id": id,
                "from_version": "0.1.0",
                "to_version": "0.2.0",
                "arch": this_arch(),
                "binary": host.paths.staged("0.2.0"),
                "manifest": manifest,
                "rollback": false,
                "command": null,
                "requested_at": Utc::now(),
            },
            "stage": stage,
            "previous_size": old.len(),
            "previous_sha256": sha256_hex(&old),
            "reason": "the updater was stopped while reverting",
            "accepted_at": Utc::now(),
        })
        .to_string()
    };

    // Stopped while watching, the new version confirmed meanwhile: confirmed.
    std::fs::create_dir_all(&host.paths.dir).unwrap();
    std::fs::write(host.paths.confirmed(), "0.2.0\n").unwrap();
    std::fs::write(
        host.updater_dir.join("inflight.json"),
        record("applied", "cmd_a"),
    )
    .unwrap();
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("resuming an upgrade"), "{stderr}");
    assert_eq!(host.result().status, UpgradeStatus::Confirmed);
    assert_eq!(host.result().command_id, "cmd_a");
    assert!(host.installed() == new);
    host.assert_finished();

    // Stopped while reverting: the revert is completed.
    std::fs::write(
        host.updater_dir.join("inflight.json"),
        record("reverting", "cmd_b"),
    )
    .unwrap();
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "{stderr}");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Reverted);
    assert_eq!(
        result.reason.as_deref(),
        Some("the updater was stopped while reverting")
    );
    assert!(host.installed() == old);
    host.assert_finished();
    assert!(host
        .calls()
        .contains(&"reset-failed flotilla-agent".to_string()));

    // Stopped while watching, but the installed binary is not the new build: reverted.
    std::fs::write(
        host.updater_dir.join("inflight.json"),
        record("applied", "cmd_c"),
    )
    .unwrap();
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "{stderr}");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Reverted);
    assert!(result
        .reason
        .unwrap()
        .contains("no longer the installed binary"));
    assert!(host.installed() == old);
    host.assert_finished();

    // Nothing to do.
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok && stderr.contains("nothing to do"), "{stderr}");
}

#[test]
fn version_flag_prints_the_stamped_version() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("flotilla-agent");
    std::fs::write(&bin, agent_build("4.5.6-rc.1")).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "flotilla-agent 4.5.6-rc.1\n"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("flotilla-agent {}\n", flotilla_shared::VERSION)
    );
}
