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
use flotilla_agent::upgrade::updater::MAX_RUNS;
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
use flotilla_testkit::{eventually_blocking, hold_blocking, Poller};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::symlink;
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
        updater_limit: Duration::from_secs(60),
        confirm_retry: Duration::from_millis(200),
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
        Poller::new(Duration::from_secs(10))
            .every(Duration::from_millis(25))
            .poll_blocking(|| std::fs::read_to_string(&request_path).ok())
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
# Records every call. `show` (counted in $FAKE_DIR/shows) prints the restart count in
# $FAKE_DIR/nrestarts (and adds $FAKE_NRESTARTS_STEP to it) and ActiveState $FAKE_ACTIVE, or
# `failed` on show number $FAKE_FAILED_AT; on show number $FAKE_CONFIRM_AT it plays the new
# agent confirming. `restart` plays the restarted agent when $FAKE_CONFIRM is set: the installed
# binary's version goes to the state directory's upgrade/confirmed, as the new agent writes it
# after the relay welcomed it. $FAKE_FAIL_SHOW / $FAKE_FAIL_RESTART: systemd does not answer.
echo "$*" >> "$FAKE_DIR/calls"
confirm() {
  "$FAKE_BINARY" --version | awk '{print $2}' > "$FAKE_STATE/upgrade/confirmed"
}
case "$1" in
  show)
    if [ -n "$FAKE_FAIL_SHOW" ]; then
      echo "Failed to connect to bus: No such file or directory" >&2
      exit 1
    fi
    shows=$(( $(cat "$FAKE_DIR/shows" 2>/dev/null || echo 0) + 1 ))
    echo "$shows" > "$FAKE_DIR/shows"
    n=$(cat "$FAKE_DIR/nrestarts" 2>/dev/null || echo 0)
    echo $((n + ${FAKE_NRESTARTS_STEP:-0})) > "$FAKE_DIR/nrestarts"
    active=${FAKE_ACTIVE:-active}
    [ "$shows" = "${FAKE_FAILED_AT:-0}" ] && active=failed
    [ "$shows" = "${FAKE_CONFIRM_AT:-0}" ] && confirm
    echo "NRestarts=$n"
    echo "ActiveState=$active"
    echo "SubState=running"
    ;;
  restart)
    if [ -n "$FAKE_FAIL_RESTART" ]; then
      echo "Failed to restart flotilla-agent.service: Access denied" >&2
      exit 1
    fi
    if [ -n "$FAKE_CONFIRM" ]; then
      confirm
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
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla-agent"));
        cmd.args(["self-update", "apply", "--state-dir"])
            .arg(&self.state_dir)
            .arg("--deadline-secs")
            .arg(deadline_secs.to_string())
            .arg("--binary")
            .arg(&self.binary)
            .arg("--relay-key-file")
            .arg(&self.key_file)
            .arg("--updater-dir")
            .arg(&self.updater_dir);
        self.run(cmd, env)
    }

    /// Runs the packaged flotilla-agent-updater.service's ExecStart, its paths pointed at this
    /// host's (blocking); returns (success, stderr).
    fn apply_as_the_unit(&self, env: &[(&str, &str)]) -> (bool, String) {
        let unit = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/systemd/flotilla-agent-updater.service"
        ))
        .unwrap();
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart=/bin/sh -c '"))
            .and_then(|l| l.strip_suffix('\''))
            .expect("ExecStart=/bin/sh -c '...'");
        let script = exec
            .replace("$$", "$")
            .replace(
                "/var/lib/flotilla-updater",
                &self.updater_dir.to_string_lossy(),
            )
            .replace("/var/lib/flotilla", &self.state_dir.to_string_lossy())
            .replace("/usr/bin/flotilla-agent", &self.binary.to_string_lossy())
            .replace("/etc/flotilla/relay.pub", &self.key_file.to_string_lossy());
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        self.run(cmd, env)
    }

    fn run(&self, mut cmd: std::process::Command, env: &[(&str, &str)]) -> (bool, String) {
        let path = format!(
            "{}:{}",
            self.fake.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = cmd
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

    /// Starts over: no calls recorded, no restart counts.
    fn reset_fake(&self) {
        for f in ["calls", "shows", "nrestarts"] {
            let _ = std::fs::remove_file(self.fake.join(f));
        }
    }

    fn mode(&self) -> u32 {
        std::fs::metadata(&self.binary)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
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
            let appeared = Poller::new(Duration::from_secs(30))
                .every(Duration::from_millis(25))
                .poll_blocking(|| std::fs::read_to_string(&request).ok());
            let Some(text) = appeared else {
                stop.cancel();
                return (false, "request.json never appeared".into());
            };
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
            ran
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
    // systemd must answer before anything is swapped.
    assert!(
        calls
            .first()
            .is_some_and(|c| c.starts_with("show ") && c.ends_with(" flotilla-agent")),
        "{calls:?}"
    );
    assert_eq!(
        calls
            .iter()
            .find(|c| c.starts_with("restart"))
            .map(String::as_str),
        Some("restart --no-block flotilla-agent")
    );
    assert_eq!(host.mode(), 0o755, "the swapped-in binary is executable");
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
        reason
            .starts_with("crash loop: flotilla-agent restarted 3 times after 0.2.0 was installed"),
        "{reason}"
    );
    assert_eq!(host.mode(), 0o755, "the reverted binary is executable");
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
        Some(
            "deadline: 0.1.1 did not reach the relay within 2 s while flotilla-agent was \
             active/running (it never got the relay's welcome; an unreachable relay looks the \
             same)"
        )
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

    // Without relay.pub root trusts no key: refused, whatever agent.db pins.
    let key = std::fs::read(&host.key_file).unwrap();
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
    host.request(&relay, "cmd_nokey", "0.2.0", &newer, "0.3.0", false);
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "{stderr}");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Refused);
    assert!(
        result
            .reason
            .as_deref()
            .unwrap()
            .contains("relay.pub is missing"),
        "{result:?}"
    );
    assert!(host.installed() == installed);
    std::fs::write(&host.key_file, key).unwrap();

    // Rollback requests that do not carry a matching, current rollback command for this agent.
    let refused_rollback = |id: &str, edit: &dyn Fn(&mut UpgradeRequest)| {
        host.request(&relay, id, "0.2.0", &older, "0.1.0", true);
        let mut r: UpgradeRequest =
            serde_json::from_slice(&std::fs::read(host.paths.request()).unwrap()).unwrap();
        edit(&mut r);
        std::fs::write(host.paths.request(), serde_json::to_vec(&r).unwrap()).unwrap();
        let (ok, stderr) = host.apply(30, &[]);
        assert!(ok, "{stderr}");
        let result = host.result();
        assert_eq!(result.status, UpgradeStatus::Refused, "{id}");
        assert!(host.installed() == installed, "{id}");
        host.assert_finished();
        result.reason.unwrap()
    };
    let signed_for = |env: CommandEnvelope| SignedCommand::sign(&env, &relay);
    let envelope =
        |r: &UpgradeRequest, id: &str, rollback: bool, agent: &str, expires: ChronoDuration| {
            let manifest = r.manifest.clone();
            CommandEnvelope {
                id: id.into(),
                audience: Audience::Agent {
                    agent_id: agent.into(),
                },
                command: Command::AgentUpgrade(AgentUpgradeArgs { manifest, rollback }),
                issued_at: Utc::now() - ChronoDuration::hours(2),
                expires_at: Utc::now() + expires,
            }
        };
    let reason = refused_rollback("cmd_rb1", &|r| r.command = None);
    assert!(
        reason.contains("must carry the relay-signed command"),
        "{reason}"
    );
    let reason = refused_rollback("cmd_rb2", &|r| {
        r.command = Some(signed_for(envelope(
            r,
            "cmd_rb2",
            false,
            "ag_test",
            ChronoDuration::minutes(5),
        )));
    });
    assert!(
        reason.contains("not a rollback to this manifest"),
        "{reason}"
    );
    let reason = refused_rollback("cmd_rb3", &|r| {
        r.command = Some(signed_for(envelope(
            r,
            "cmd_rb3",
            true,
            "ag_other",
            ChronoDuration::minutes(5),
        )));
    });
    assert!(
        reason.contains("not to this agent (ag_test)") && reason.contains("ag_other"),
        "{reason}"
    );
    let reason = refused_rollback("cmd_rb4", &|r| {
        r.command = Some(signed_for(envelope(
            r,
            "cmd_rb4",
            true,
            "ag_test",
            -ChronoDuration::minutes(16),
        )));
    });
    assert!(reason.contains("the rollback command expired"), "{reason}");
    let reason = refused_rollback("cmd_rb5", &|r| {
        r.command = Some(signed_for(envelope(
            r,
            "cmd_other_id",
            true,
            "ag_test",
            ChronoDuration::minutes(5),
        )));
    });
    assert!(
        reason.contains("not a rollback to this manifest"),
        "{reason}"
    );

    // Expired a few minutes ago (the download took that long): within the grace, installed,
    // and confirmed by the "restarted" old version.
    host.request(&relay, "cmd_back", "0.2.0", &older, "0.1.0", true);
    let mut r: UpgradeRequest =
        serde_json::from_slice(&std::fs::read(host.paths.request()).unwrap()).unwrap();
    r.command = Some(signed_for(envelope(
        &r,
        "cmd_back",
        true,
        "ag_test",
        -ChronoDuration::minutes(3),
    )));
    std::fs::write(host.paths.request(), serde_json::to_vec(&r).unwrap()).unwrap();
    let (ok, stderr) = host.apply(30, &[("FAKE_CONFIRM", "1")]);
    assert!(ok, "{stderr}");
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

/// A record of an upgrade stopped while watching `installed_bytes` as `to`, the previous binary
/// being `previous_bytes` (as a run killed mid-watch leaves it).
fn applied_record(
    host: &Host,
    relay: &SigningKey,
    id: &str,
    previous_bytes: &[u8],
    installed_bytes: &[u8],
    to: &str,
) -> String {
    let manifest = manifest_for(installed_bytes, to, this_arch()).sign(relay);
    serde_json::json!({
        "request": {
            "command_id": id,
            "from_version": "0.1.0",
            "to_version": to,
            "arch": this_arch(),
            "binary": host.paths.staged(to),
            "manifest": manifest,
            "rollback": false,
            "command": null,
            "requested_at": Utc::now(),
        },
        "stage": "applied",
        "previous_size": previous_bytes.len(),
        "previous_sha256": sha256_hex(previous_bytes),
        "reason": null,
        "accepted_at": Utc::now(),
    })
    .to_string()
}

/// H1: the run that resumes after the swap must not execute the build on trial (which may not
/// even start): the unit runs the known-good copy the updater keeps.
#[tokio::test]
async fn a_resumed_run_never_runs_the_build_on_trial() {
    let relay = SigningKey::generate();
    let old = agent_build("0.1.0");
    // Prints a version (the agent's smoke test passes), fails at anything else.
    let broken =
        b"#!/bin/sh\n[ \"$1\" = --version ] && { echo 'flotilla-agent 0.2.0'; exit 0; }\nexit 1\n"
            .to_vec();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(&dir.path().join("state"), &old, &relay);
    std::fs::create_dir_all(&host.paths.dir).unwrap();

    // The first run as the unit (nothing to do) keeps a copy of the installed binary.
    let (ok, stderr) = host.apply_as_the_unit(&[]);
    assert!(ok && stderr.contains("nothing to do"), "{stderr}");
    let copy = host.updater_dir.join("flotilla-agent.updater");
    assert!(std::fs::read(&copy).unwrap() == old, "the known-good copy");

    // Killed while watching the broken build: it is installed, the record says `applied`.
    std::fs::write(&host.binary, &broken).unwrap();
    std::fs::write(host.updater_dir.join("flotilla-agent.previous"), &old).unwrap();
    let record = applied_record(&host, &relay, "cmd_h1", &old, &broken, "0.2.0");
    std::fs::write(host.updater_dir.join("inflight.json"), &record).unwrap();

    // Run from the installed (broken) binary, as the unit did before, it cannot even start.
    std::fs::rename(&copy, dir.path().join("copy-aside")).unwrap();
    let (ok, _) = host.apply_as_the_unit(&[]);
    assert!(!ok, "the broken build ran the updater");
    assert!(host.installed() == broken);
    std::fs::rename(dir.path().join("copy-aside"), &copy).unwrap();

    // Run from the copy: the crash loop is seen and the previous build put back.
    let (ok, stderr) = host.apply_as_the_unit(&[("FAKE_NRESTARTS_STEP", "1")]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("resuming an upgrade"), "{stderr}");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Reverted, "{stderr}");
    assert!(result.reason.unwrap().starts_with("crash loop: "));
    assert!(host.installed() == old, "the previous build is back");
    assert_eq!(host.mode(), 0o755);
    host.assert_finished();
    assert!(
        std::fs::read(&copy).unwrap() == old,
        "the copy never takes the broken build"
    );
}

/// H2, L1, L2, L5: runs that keep failing end after `MAX_RUNS` with a final result; bad
/// requests are refused without echoing them; leftovers are removed; one updater at a time.
#[tokio::test]
async fn failing_runs_give_up_and_bad_requests_are_refused() {
    let relay = SigningKey::generate();
    let old = agent_build("0.1.0");
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(&dir.path().join("state"), &old, &relay);
    std::fs::create_dir_all(&host.paths.dir).unwrap();
    std::fs::create_dir_all(&host.updater_dir).unwrap();

    // A record whose manifest does not parse: every run fails at once.
    let mut record: serde_json::Value = serde_json::from_str(&applied_record(
        &host, &relay, "cmd_h2", &old, &old, "0.2.0",
    ))
    .unwrap();
    record["request"]["manifest"]["manifest"] = "not json".into();
    std::fs::write(host.updater_dir.join("inflight.json"), record.to_string()).unwrap();
    for run in 1..=MAX_RUNS {
        let (ok, stderr) = host.apply(30, &[]);
        assert!(!ok, "run {run} should fail: {stderr}");
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(host.updater_dir.join("inflight.json")).unwrap())
                .unwrap();
        assert_eq!(saved["runs"], run, "{saved}");
        assert!(
            saved["last_error"]
                .as_str()
                .unwrap()
                .contains("does not parse"),
            "{saved}"
        );
    }
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "the run that gives up exits 0: {stderr}");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Failed);
    let reason = result.reason.unwrap();
    assert!(
        reason.starts_with(&format!("the updater gave up after {MAX_RUNS} runs"))
            && reason.contains("does not parse"),
        "{reason}"
    );
    assert!(!host.updater_dir.join("inflight.json").exists());
    let aside: Vec<String> = std::fs::read_dir(&host.updater_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("inflight.json.gave-up-"))
        .collect();
    assert_eq!(aside.len(), 1, "the record is kept aside");

    // L1: a copy cut short in the binary's directory is removed.
    let leftover = host.binary.with_file_name(".flotilla-agent.new-1234-5678");
    std::fs::write(&leftover, b"half a binary").unwrap();
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "{stderr}");
    host.assert_bin_dir_clean();

    // L2: a request that is a link, a FIFO, too large, or malformed: removed and refused, its
    // content never copied into result.json.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "{\"command_id\": \"TOPSECRET\"}").unwrap();
    symlink(&secret, host.paths.request()).unwrap();
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "{stderr}");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Refused);
    assert!(
        result.reason.as_deref().unwrap().contains("symbolic link"),
        "{result:?}"
    );
    assert!(!std::fs::read_to_string(host.paths.result())
        .unwrap()
        .contains("TOPSECRET"));
    assert!(!host.paths.request().exists() && secret.exists());

    let status = std::process::Command::new("mkfifo")
        .arg(host.paths.request())
        .status()
        .unwrap();
    assert!(status.success());
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "a FIFO does not block the updater: {stderr}");
    assert!(host.result().reason.unwrap().contains("not a regular file"));
    assert!(!host.paths.request().exists());

    std::fs::write(host.paths.request(), vec![b' '; 70 * 1024]).unwrap();
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "{stderr}");
    assert!(host
        .result()
        .reason
        .unwrap()
        .contains("larger than 65536 bytes"));

    std::fs::write(
        host.paths.request(),
        r#"{"command_id": "cmd_bad", "from_version": "TOPSECRET", "to_version": 7}"#,
    )
    .unwrap();
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "{stderr}");
    let result = host.result();
    assert_eq!(result.command_id, "cmd_bad");
    assert!(result
        .reason
        .as_deref()
        .unwrap()
        .starts_with("the upgrade request is malformed"));
    assert!(!std::fs::read_to_string(host.paths.result())
        .unwrap()
        .contains("TOPSECRET"));
    assert!(!host.paths.request().exists());

    // A result that cannot be written does not stop the run from finishing.
    std::fs::remove_file(host.paths.result()).unwrap();
    std::fs::create_dir(host.paths.result()).unwrap();
    host.request(&relay, "cmd_noresult", "0.1.0", &old, "0.1.0", false);
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("cannot write the upgrade result"),
        "{stderr}"
    );
    host.assert_finished();
    std::fs::remove_dir(host.paths.result()).unwrap();

    // The agent's upgrade directory swapped for a link: nothing is written through it.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::remove_dir_all(&host.paths.dir).unwrap();
    symlink(&elsewhere, &host.paths.dir).unwrap();
    std::fs::write(elsewhere.join("request.json"), "{}").unwrap();
    let (ok, stderr) = host.apply(30, &[]);
    assert!(!ok && stderr.contains("a link?"), "{stderr}");
    assert!(!elsewhere.join("result.json").exists());
    std::fs::remove_file(&host.paths.dir).unwrap();

    // L5: one updater at a time.
    let mut holder = std::process::Command::new("flock")
        .arg(&host.updater_dir)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    // Once `flock -n` cannot take it, the holder has it.
    eventually_blocking(Duration::from_secs(10), "the holder takes the lock", || {
        let free = std::process::Command::new("flock")
            .arg("-n")
            .arg(&host.updater_dir)
            .arg("true")
            .status()
            .unwrap()
            .success();
        (!free).then_some(())
    });
    let (ok, stderr) = host.apply(30, &[]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(!ok && stderr.contains("locked by another"), "{stderr}");
}

/// M1: nothing is swapped while systemd does not answer; a restart that cannot be issued puts
/// the previous build back and ends `failed`, which the waiting old process reports at once.
#[tokio::test]
async fn without_systemd_nothing_is_swapped_and_a_failed_restart_is_undone() {
    let relay = SigningKey::generate();
    let old = agent_build("0.1.0");
    let new = agent_build("0.2.0");
    let mut routes = HashMap::new();
    routes.insert(download_path("0.2.0", this_arch()), Route::ok(new.clone()));
    let (url, _) = serve(routes);
    let agent = agent(&url, &relay, settings()).await;
    let host = Arc::new(Host::new(&agent.state_dir, &old, &relay));

    host.request(&relay, "cmd_nobus", "0.1.0", &new, "0.2.0", false);
    let (ok, stderr) = host.apply(30, &[("FAKE_FAIL_SHOW", "1")]);
    assert!(ok, "{stderr}");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Refused);
    assert!(
        result
            .reason
            .unwrap()
            .starts_with("systemd does not answer"),
        "{stderr}"
    );
    assert!(host.installed() == old);
    host.assert_finished();

    let manifest = manifest_for(&new, "0.2.0", this_arch()).sign(&relay);
    let (args, signed) = signed_command(&relay, "cmd_norestart", &manifest, false);
    let updater = {
        let (host, request) = (host.clone(), agent.paths.request());
        tokio::task::spawn_blocking(move || {
            let appeared = Poller::new(Duration::from_secs(30))
                .every(Duration::from_millis(25))
                .poll_blocking(|| request.exists().then_some(()));
            match appeared {
                Some(()) => host.apply(30, &[("FAKE_FAIL_RESTART", "1")]),
                None => (false, "request.json never appeared".into()),
            }
        })
    };
    let started = std::time::Instant::now();
    let outcome = agent
        .upgrades
        .upgrade_from(
            "cmd_norestart",
            &args,
            Some(&signed),
            "0.1.0",
            &CancellationToken::new(),
        )
        .await;
    let (ok, stderr) = updater.await.unwrap();
    assert!(ok, "{stderr}");
    let UpgradeOutcome::Failed(e) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(e.code, error_codes::UPGRADE_FAILED, "{}", e.message);
    assert!(
        e.message
            .contains("cannot restart flotilla-agent into 0.2.0")
            && e.message.contains("Access denied")
            && e.message
                .contains("the previous binary (0.1.0) is installed again"),
        "{}",
        e.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "reported without waiting for restart_wait"
    );
    assert_eq!(host.result().status, UpgradeStatus::Failed);
    assert!(host.installed() == old, "the previous build is back");
    assert_eq!(host.mode(), 0o755);
    host.assert_finished();
    assert_nothing_staged(&agent.paths);
}

/// M7, L6: `confirmed` is looked at again before a revert; `failed` must be seen twice in a row;
/// a restart count that drops (a manual restart) moves the baseline down.
#[tokio::test]
async fn the_watch_rechecks_confirmed_and_needs_failed_twice() {
    let relay = SigningKey::generate();
    let old = agent_build("0.1.0");
    let new = agent_build("0.2.0");
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(&dir.path().join("state"), &old, &relay);

    // Deadline 0: the confirmation written during the unit check wins over the deadline.
    host.request(&relay, "cmd_m7", "0.1.0", &new, "0.2.0", false);
    let (ok, stderr) = host.apply(0, &[("FAKE_CONFIRM_AT", "2")]);
    assert!(ok, "{stderr}");
    assert_eq!(host.result().status, UpgradeStatus::Confirmed, "{stderr}");
    assert!(host.installed() == new);

    // `failed` once (a stop running into TimeoutStopSec), confirmed right after: confirmed.
    std::fs::write(&host.binary, &old).unwrap();
    host.reset_fake();
    host.request(&relay, "cmd_l6", "0.1.0", &new, "0.2.0", false);
    let (ok, stderr) = host.apply(60, &[("FAKE_FAILED_AT", "2"), ("FAKE_CONFIRM_AT", "3")]);
    assert!(ok, "{stderr}");
    assert_eq!(host.result().status, UpgradeStatus::Confirmed, "{stderr}");

    // `failed` on every check: reverted, saying which trigger fired.
    std::fs::write(&host.binary, &old).unwrap();
    host.reset_fake();
    host.request(&relay, "cmd_failed", "0.1.0", &new, "0.2.0", false);
    let (ok, stderr) = host.apply(60, &[("FAKE_ACTIVE", "failed")]);
    assert!(ok, "{stderr}");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Reverted);
    assert_eq!(
        result.reason.as_deref(),
        Some(
            "unit failed: flotilla-agent is failed/running after 0.2.0 was installed (on 2 \
             checks in a row)"
        )
    );
    assert!(host.installed() == old);

    // NRestarts starts at 7 and drops to 0 (a manual restart): 3 restarts from there.
    host.reset_fake();
    std::fs::write(host.fake.join("nrestarts"), "7").unwrap();
    let fake = host.fake.clone();
    let dropper = std::thread::spawn(move || {
        // After the pre-swap check and the first watch check.
        let checked = Poller::new(Duration::from_secs(4))
            .every(Duration::from_millis(20))
            .poll_blocking(|| {
                let shows: u32 = std::fs::read_to_string(fake.join("shows"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                (shows >= 2).then_some(())
            });
        if checked.is_some() {
            std::fs::write(fake.join("nrestarts"), "0").unwrap();
        }
    });
    host.request(&relay, "cmd_base", "0.1.0", &new, "0.2.0", false);
    let (ok, stderr) = host.apply(60, &[("FAKE_NRESTARTS_STEP", "1")]);
    dropper.join().unwrap();
    assert!(ok, "{stderr}");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Reverted, "{stderr}");
    assert!(
        result
            .reason
            .unwrap()
            .starts_with("crash loop: flotilla-agent restarted 3 times"),
        "{stderr}"
    );
    host.assert_finished();
}

/// M3: an installed binary whose version cannot be told is not overwritten, unless by a
/// relay-signed rollback.
#[tokio::test]
async fn an_installed_binary_of_unknown_version_is_only_replaced_by_a_rollback() {
    let relay = SigningKey::generate();
    let unknown = b"#!/bin/sh\necho 'cannot start' >&2\nexit 3\n".to_vec();
    let older = agent_build("0.0.9");
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let host = Host::new(&state_dir, &unknown, &relay);
    host.request(&relay, "cmd_unknown", "9.9.9", &older, "0.0.9", false);
    let (ok, stderr) = host.apply(30, &[]);
    assert!(ok, "{stderr}");
    let result = host.result();
    assert_eq!(result.status, UpgradeStatus::Refused);
    let reason = result.reason.unwrap();
    assert!(
        reason.starts_with("cannot tell the installed version") && reason.contains("cannot start"),
        "{reason}"
    );
    assert!(host.installed() == unknown);

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
    host.request(&relay, "cmd_unknown_rb", "9.9.9", &older, "0.0.9", true);
    let (ok, stderr) = host.apply(30, &[("FAKE_CONFIRM", "1")]);
    assert!(ok, "{stderr}");
    assert_eq!(host.result().status, UpgradeStatus::Confirmed, "{stderr}");
    assert!(host.installed() == older);
}

/// M6: `accepted` stretches the wait beyond the pickup time. M5: a confirmation that cannot be
/// written is not reported as success, and is tried again.
#[tokio::test]
async fn accepted_extends_the_wait_and_an_unwritten_confirmation_is_not_success() {
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
    let (args, signed) = signed_command(&relay, "cmd_slow", &manifest.sign(&relay), false);

    // A slow updater: takes the request and says `accepted`, refuses 3 s later.
    let paths = agent.paths.clone();
    let slow = tokio::task::spawn_blocking(move || {
        let write = |status: &str| {
            let json = serde_json::json!({
                "command_id": "cmd_slow", "status": status, "from_version": "0.1.0",
                "to_version": "0.2.0", "reason": "checked slowly", "at": Utc::now(),
            });
            std::fs::write(paths.result(), json.to_string()).unwrap();
        };
        let taken = Poller::new(Duration::from_secs(10))
            .every(Duration::from_millis(25))
            .poll_blocking(|| std::fs::remove_file(paths.request()).ok());
        if taken.is_none() {
            return false;
        }
        write("accepted");
        hold_blocking(
            Duration::from_secs(3),
            "the slow updater refuses 3 s after accepting",
        );
        write("refused");
        true
    });
    let outcome = agent
        .upgrades
        .upgrade_from(
            "cmd_slow",
            &args,
            Some(&signed),
            "0.1.0",
            &CancellationToken::new(),
        )
        .await;
    assert!(slow.await.unwrap(), "request.json never appeared");
    let UpgradeOutcome::Failed(e) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        (e.code.as_str(), e.message.as_str()),
        (
            error_codes::UPGRADE_REFUSED,
            "the updater refused the upgrade to 0.2.0: checked slowly"
        )
    );

    // The new process cannot write `confirmed` (a directory is in its way): no success.
    let now = Utc::now();
    agent
        .state
        .journal_begin_with(
            "cmd_conf",
            now,
            now + ChronoDuration::minutes(10),
            Some(serde_json::to_string(&Command::AgentUpgrade(args.clone())).unwrap()),
        )
        .await
        .unwrap();
    std::fs::create_dir_all(agent.paths.confirmed()).unwrap();
    assert_eq!(
        agent.upgrades.resume_as("cmd_conf", &args, "0.2.0"),
        Resumed::Pending
    );
    agent.upgrades.confirm_pending_as("0.2.0").await;
    assert!(results(&agent.state)
        .await
        .iter()
        .all(|r| r.command_id != "cmd_conf"));
    assert_eq!(
        agent.state.journal_running().await.unwrap(),
        vec!["cmd_conf".to_string()]
    );
    // Once it can be written, the retry reports success.
    std::fs::remove_dir(agent.paths.confirmed()).unwrap();
    agent.upgrades.confirm_pending_as("0.2.0").await;
    let results = results(&agent.state).await;
    let r = results.iter().find(|r| r.command_id == "cmd_conf").unwrap();
    assert_eq!(r.status, ResultStatus::Succeeded, "{r:?}");
    assert_eq!(agent.paths.read_confirmed().as_deref(), Some("0.2.0"));
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
