//! `install.sh` and the agent's self-update, for real: each test boots systemd in its own
//! container (`flotilla_tests::fixtures::systemd`), serves `install.sh` and agent builds from its
//! own relay on the host's 127.0.0.1, installs with the documented `curl .../install.sh | sh -s
//! -- --token ...` line, and drives upgrades through the relay's API. The agent in the container
//! manages the host's engine, scoped by `only_label` (a drop-in written before the install, which
//! install.sh must leave alone).
//!
//! Builds: `target/debug/flotilla-agent` without debug sections, stamped 0.1.0, 0.1.1, 0.2.0, ...
//! (`agent_build`); the broken build is the static testapp posing as `flotilla-agent 0.3.0`
//! (`broken_agent_build`: its `--version` passes the smoke test, it exits 1 at every start).
//!
//! Each test prints how long its steps took (`--nocapture` shows them).

use flotilla_shared::api::{AgentInfo, AgentStatus, CommandInfo};
use flotilla_shared::command::{error_codes, AgentUpgradeOutput, ResultStatus};
use flotilla_shared::release::ReleaseInfo;
use flotilla_tests::fixtures::systemd::{
    agent_build, broken_agent_build, ensure_systemd_image, ExecOutput, SystemdContainer,
};
use flotilla_tests::fixtures::{unique_name, workspace_root};
use flotilla_tests::harness::{api_error, bin, cli, eventually, scope, Api, Relay, SCOPE_LABEL};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// issue 17 part 5: a revert across a schema migration (in its own file: this one is long)
mod schema;

/// The agent reaching the relay after an install or a restart (start, enroll, connect).
const ONLINE_DEADLINE: Duration = Duration::from_secs(90);
/// An upgrade end to end: download, checks, smoke test, the updater's swap, the restart and the
/// new version's first welcome (several tests run at once on two cores).
const UPGRADE_DEADLINE: Duration = Duration::from_secs(240);
/// A broken build: the upgrade, then the crash loop the updater detects and reverts.
const REVERT_DEADLINE: Duration = Duration::from_secs(300);
/// A refused upgrade (nothing is installed).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(120);

const AGENT_UNIT: &str = "flotilla-agent.service";
const UPDATER_UNIT: &str = "flotilla-agent-updater.service";
const UPDATER_PATH_UNIT: &str = "flotilla-agent-updater.path";
const INSTALLED_BINARY: &str = "/usr/local/bin/flotilla-agent";
const UNINSTALLER: &str = "/usr/local/bin/flotilla-agent-uninstall";
const DROPIN: &str = "/etc/systemd/system/flotilla-agent.service.d/10-test.conf";
const PREVIOUS_BINARY: &str = "/var/lib/flotilla-updater/flotilla-agent.previous";
/// The known-good copy the updater unit runs from.
const UPDATER_COPY: &str = "/var/lib/flotilla-updater/flotilla-agent.updater";

/// Everything install.sh writes, plus the test's drop-in: what must not change when nothing
/// should.
const INSTALLED_FILES: [&str; 8] = [
    INSTALLED_BINARY,
    UNINSTALLER,
    "/etc/flotilla/agent.toml",
    "/etc/flotilla/relay.pub",
    "/etc/systemd/system/flotilla-agent.service",
    "/etc/systemd/system/flotilla-agent-updater.service",
    "/etc/systemd/system/flotilla-agent-updater.path",
    DROPIN,
];

/// Runs blocking fixture code (docker CLI calls) without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn text(out: &ExecOutput) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.code, out.stdout, out.stderr
    )
}

/// One test's world: a relay on the host, a booted systemd container, the only_label scope.
struct Host {
    relay: Relay,
    api: Api,
    container: SystemdContainer,
    scope: String,
    test: &'static str,
    started: Instant,
}

/// The agent unit's identity of one start: what tells a restart from none.
#[derive(Debug, PartialEq, Eq)]
struct UnitRun {
    invocation_id: String,
    active_since: String,
    main_pid: String,
}

impl Host {
    async fn start(test: &'static str) -> Host {
        let started = Instant::now();
        let relay = Relay::start().await;
        let scope = scope(test);
        let name = unique_name(&format!("flotilla-sd-{test}"));
        let container = blocking(|| SystemdContainer::start(&name, &[(SCOPE_LABEL, &scope)]))
            .expect("boot a systemd container");
        // The agent manages only this test's containers on the shared engine; install.sh must
        // never touch a drop-in.
        let dropin = format!(
            "[Service]\nEnvironment=FLOTILLA_ONLY_LABEL={SCOPE_LABEL}={scope}\n\
             Environment=FLOTILLA_LOG=info,flotilla_agent=debug\n"
        );
        blocking(|| {
            container.sh(&format!(
                "mkdir -p /etc/systemd/system/flotilla-agent.service.d && \
                 printf '%s' '{dropin}' > {DROPIN}"
            ))
        })
        .expect("write the test drop-in");
        let host = Host {
            api: relay.api(),
            relay,
            container,
            scope,
            test,
            started,
        };
        host.step("relay started and systemd booted");
        host
    }

    fn step(&self, what: &str) {
        eprintln!(
            "[{} +{:>6.1}s] {what}",
            self.test,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Publishes a build through the API (`PUT /api/v1/releases/{version}/x86_64`).
    async fn publish(&self, build: &Path, version: &str) -> ReleaseInfo {
        let bytes = std::fs::read(build).unwrap();
        let resp = reqwest::Client::new()
            .put(format!(
                "{}/api/v1/releases/{version}/x86_64",
                self.relay.url()
            ))
            .bearer_auth(&self.relay.admin_token)
            .body(bytes)
            .send()
            .await
            .expect("PUT release");
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert!(
            status.is_success(),
            "publishing {version} answered {status}: {body}"
        );
        serde_json::from_str(&body).unwrap()
    }

    /// `curl -fsSL <relay>/install.sh | sh -s -- ARGS` in the container, the token (when given)
    /// reaching the shell through the environment, never a command line on the host.
    async fn install(&self, args: &str, token: Option<&str>) -> ExecOutput {
        self.install_with_env(args, token, &[]).await
    }

    /// [`Host::install`] with `env` in the environment of the pipeline.
    async fn install_with_env(
        &self,
        args: &str,
        token: Option<&str>,
        env: &[(&str, &str)],
    ) -> ExecOutput {
        let token_arg = if token.is_some() {
            " --token \"$FLOTILLA_TEST_TOKEN\""
        } else {
            ""
        };
        // bash for pipefail (a failed download must fail the step); install.sh runs in sh.
        let script = format!(
            "set -o pipefail; curl -fsSL {}/install.sh | sh -s --{token_arg} {args}",
            self.relay.url()
        );
        let mut env = env.to_vec();
        if let Some(token) = token {
            env.push(("FLOTILLA_TEST_TOKEN", token));
        }
        let out = blocking(|| self.container.run(&["bash", "-c", &script], &env, None))
            .expect("docker exec");
        if let Some(token) = token {
            assert!(
                !out.stdout.contains(token) && !out.stderr.contains(token),
                "install.sh printed the token:\n{}",
                text(&out)
            );
        }
        out
    }

    async fn install_ok(&self, args: &str, token: Option<&str>) -> ExecOutput {
        let out = self.install(args, token).await;
        assert!(out.success(), "install.sh {args} failed:\n{}", text(&out));
        out
    }

    /// Publishes `version` (a stamped build of target/debug/flotilla-agent) and installs it with
    /// a fresh token; returns the build and the agent once it is online.
    async fn install_agent(&self, version: &str, args: &str) -> (PathBuf, AgentInfo) {
        let build = blocking(|| agent_build(&bin("flotilla-agent"), version)).unwrap();
        self.publish(&build, version).await;
        let token = self.relay.enrollment_token("").await;
        let out = self.install_ok(args, Some(&token)).await;
        if self.test == "install" {
            eprintln!("[install] install.sh said:\n{}{}", out.stdout, out.stderr);
        }
        let agent = self.wait_agent(version, None).await;
        self.step(&format!("installed {version}; agent {} online", agent.id));
        (build, agent)
    }

    /// The relay's only agent, once it is online with a heartbeat, reports `version` and (when
    /// given) connected after `after`.
    async fn wait_agent(&self, version: &str, after: Option<&AgentInfo>) -> AgentInfo {
        let after = after.and_then(|a| a.connected_at);
        eventually(
            ONLINE_DEADLINE,
            &format!("the agent online on {version}"),
            || async {
                let agents: Vec<AgentInfo> = self.api.get("/api/v1/agents").await.ok()?;
                let [agent] = &agents[..] else { return None };
                (agent.status == AgentStatus::Online
                    && agent.last_heartbeat_at.is_some()
                    && agent.agent_version == version
                    && (after.is_none() || agent.connected_at > after))
                    .then(|| agent.clone())
            },
        )
        .await
    }

    /// `agent.upgrade` through the API.
    async fn upgrade(
        &self,
        agent: &str,
        version: &str,
        rollback: bool,
    ) -> anyhow::Result<CommandInfo> {
        self.api
            .post(
                &format!("/api/v1/agents/{agent}/commands"),
                &serde_json::json!({
                    "kind": "agent.upgrade",
                    "args": {"version": version, "rollback": rollback},
                }),
            )
            .await
    }

    async fn upgrade_result(
        &self,
        agent: &str,
        version: &str,
        rollback: bool,
        deadline: Duration,
    ) -> CommandInfo {
        let started = Instant::now();
        let cmd = self
            .upgrade(agent, version, rollback)
            .await
            .unwrap_or_else(|e| panic!("agent.upgrade {version} refused by the relay: {e:#}"));
        let done = self.api.wait_final(&cmd.id, deadline).await;
        self.step(&format!(
            "agent.upgrade {version} (rollback {rollback}) ended {:?} in {:.1}s",
            done.result.as_ref().map(|r| r.status),
            started.elapsed().as_secs_f64()
        ));
        done
    }

    fn sh(&self, script: &str) -> String {
        blocking(|| self.container.sh(script)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn sha256(&self, path: &str) -> String {
        blocking(|| self.container.sha256(path)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn exists(&self, path: &str) -> bool {
        blocking(|| self.container.exists(path)).unwrap()
    }

    fn unit_run(&self) -> UnitRun {
        let prop = |p: &str| {
            blocking(|| self.container.unit_property(AGENT_UNIT, p))
                .unwrap_or_else(|e| panic!("{e:#}"))
        };
        UnitRun {
            invocation_id: prop("InvocationID"),
            active_since: prop("ActiveEnterTimestamp"),
            main_pid: prop("MainPID"),
        }
    }

    fn unit_state(&self, unit: &str) -> String {
        blocking(|| self.container.unit_state(unit)).unwrap()
    }

    /// Mode, owner, size, mtime and SHA-256 of every installed file, the listing of the
    /// directories install.sh writes to, and the service user: equal snapshots mean nothing
    /// was written.
    fn files_snapshot(&self) -> String {
        self.sh(&format!(
            "for f in {}; do stat -c '%n %a %U:%G %s %Y' \"$f\"; sha256sum \"$f\"; done; \
             ls -la /usr/local/bin /etc/flotilla /etc/systemd/system \
             /etc/systemd/system/flotilla-agent.service.d; \
             getent passwd flotilla-agent; id -nG flotilla-agent",
            INSTALLED_FILES.join(" ")
        ))
    }

    fn security(&self, unit: &str) -> String {
        self.sh(&format!("systemd-analyze security --no-pager {unit}"))
    }
}

fn release_of<'a>(list: &'a [ReleaseInfo], version: &str) -> &'a ReleaseInfo {
    list.iter()
        .find(|r| r.version == version && r.arch == "x86_64")
        .unwrap_or_else(|| panic!("{version} is not listed: {list:?}"))
}

fn upgrade_output(info: &CommandInfo) -> AgentUpgradeOutput {
    let result = info.result.as_ref().expect("a result");
    serde_json::from_value(result.output.clone().expect("an output"))
        .unwrap_or_else(|e| panic!("not an AgentUpgradeOutput ({e}): {result:?}"))
}

/// The command ended unsuccessfully with `code`; returns its message.
fn assert_error(info: &CommandInfo, code: &str) -> String {
    let result = info.result.as_ref().expect("a result");
    assert_ne!(result.status, ResultStatus::Succeeded, "{result:?}");
    let error = result.error.as_ref().expect("an error");
    assert_eq!(error.code, code, "{result:?}");
    error.message.clone()
}

// === the image ===

/// Builds the booted-systemd image (debootstrap the first time; scripts/test runs this alone
/// first) and shows that systemd boots in it and runs a sandboxed unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_image_builds_and_boots() {
    let started = Instant::now();
    let image = blocking(ensure_systemd_image).expect("build the systemd test image");
    eprintln!(
        "[systemd image] {image} ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let again = Instant::now();
    blocking(ensure_systemd_image).unwrap();
    assert!(
        again.elapsed() < Duration::from_secs(10),
        "a current image is not rebuilt"
    );
    let boot = Instant::now();
    let name = unique_name("flotilla-sd-boot");
    let container = blocking(|| SystemdContainer::start(&name, &[])).expect("boot");
    eprintln!(
        "[systemd image] booted to `running` in {:.1}s",
        boot.elapsed().as_secs_f64()
    );
    let out = blocking(|| {
        container.sh(
            "systemd-run --wait --quiet --property=ProtectSystem=strict --property=PrivateTmp=yes \
             --property=SystemCallFilter=@system-service --property=DynamicUser=yes \
             sh -c 'touch /tmp/ok && ! touch /usr/forbidden 2>/dev/null' && echo sandboxed; \
             getent group docker | cut -d: -f3; stat -c %g /run/docker.sock",
        )
    })
    .expect("a sandboxed unit runs");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"sandboxed"), "{out}");
    assert_eq!(
        lines[1], lines[2],
        "the docker group has the socket's gid: {out}"
    );
}

// === install.sh without a container ===

#[test]
fn install_sh_is_posix_sh_and_shellcheck_clean() {
    let script = workspace_root().join("install.sh");
    let out = Command::new("shellcheck")
        .args(["-s", "sh"])
        .arg(&script)
        .output()
        .expect("run shellcheck (scripts/test installs it: apt-get install shellcheck)");
    assert!(
        out.status.success(),
        "shellcheck -s sh install.sh:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for shell in ["sh", "dash", "bash"] {
        if shell == "dash" && !Path::new("/bin/dash").exists() {
            continue;
        }
        let out = Command::new(shell).arg("-n").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "{shell} -n install.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&script).unwrap();
    assert_eq!(
        text.lines().last(),
        Some("main \"$@\""),
        "main is the last line"
    );
    assert!(text.contains("\nset -eu\n"));
    // Each placeholder exactly once: the relay fills them in with a plain replace.
    for placeholder in [
        "@@RELAY_URL@@",
        "@@RELAY_FINGERPRINT@@",
        "@@RELAY_PUBLIC_KEY@@",
    ] {
        assert_eq!(text.matches(placeholder).count(), 1, "{placeholder}");
    }
}

/// Runs install.sh (a private copy) with `args` as `user` on the host; returns (success,
/// stdout + stderr).
fn run_install_sh_as(user: Option<&str>, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("install.sh");
    std::fs::copy(workspace_root().join("install.sh"), &copy).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut command = match user {
        Some(user) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={user}"),
                "--regid=nogroup",
                "--clear-groups",
                "--",
                "sh",
            ]);
            c
        }
        None => Command::new("sh"),
    };
    let out = command
        .arg(&copy)
        .args(args)
        .env_remove("FLOTILLA_ENROLL_TOKEN")
        .current_dir(dir.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn install_sh_checks_its_arguments_and_root_without_echoing_the_token() {
    let secret = "flt_secret_token_value_1234";
    let (ok, out) = run_install_sh_as(None, &["--help"]);
    assert!(
        ok && out.contains("--uninstall") && out.contains("--dry-run"),
        "{out}"
    );
    let (ok, out) = run_install_sh_as(None, &["--token", secret]);
    assert!(!ok && out.contains("--relay URL is required"), "{out}");
    assert!(!out.contains(secret), "{out}");
    let (ok, out) = run_install_sh_as(None, &["--bogus"]);
    assert!(!ok && out.contains("unknown option --bogus"), "{out}");
    // A value without its option may be the token: it is not echoed.
    let (ok, out) = run_install_sh_as(None, &[secret]);
    assert!(
        !ok && out.contains("unexpected argument") && !out.contains(secret),
        "{out}"
    );
    let (ok, out) = run_install_sh_as(
        None,
        &[
            "--relay",
            "http://relay.example.com",
            "--fingerprint",
            "SHA256:x",
            "--public-key",
            "AAAA",
        ],
    );
    assert!(!ok && out.contains("refusing plain http://"), "{out}");
    // Not root: the same command under sudo, the token replaced.
    let (ok, out) = run_install_sh_as(
        Some("nobody"),
        &[
            "--relay",
            "https://relay.example.com",
            "--fingerprint",
            "SHA256:x",
            "--public-key",
            "AAAA",
            "--token",
            secret,
            "--labels",
            "env=prod",
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("must run as root"), "{out}");
    assert!(out.contains("sudo sh "), "{out}");
    assert!(out.contains("--token '<TOKEN>' --labels env=prod"), "{out}");
    assert!(!out.contains(secret), "{out}");
}

// === in a booted systemd ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_sh_installs_enrolls_survives_restart_and_reruns_without_restarting() {
    let host = Host::start("install").await;
    let (build, agent) = host
        .install_agent("0.1.0", "--labels env=test --name box1")
        .await;
    assert_eq!(agent.name, "box1");
    assert_eq!(
        agent.labels.get("env").map(String::as_str),
        Some("test"),
        "{agent:?}"
    );

    // What is installed, and how.
    let build_sha = flotilla_tests::fixtures::systemd::sha256_file(&build).unwrap();
    assert_eq!(host.sha256(INSTALLED_BINARY), build_sha);
    let modes = host.sh(
        "stat -c '%n %a %U:%G' /usr/local/bin/flotilla-agent /usr/local/bin/flotilla-agent-uninstall \
         /etc/flotilla/agent.toml /etc/flotilla/relay.pub /var/lib/flotilla /var/lib/flotilla/agent.db",
    );
    for expected in [
        "/usr/local/bin/flotilla-agent 755 root:root",
        "/usr/local/bin/flotilla-agent-uninstall 755 root:root",
        "/etc/flotilla/agent.toml 640 root:flotilla-agent",
        "/etc/flotilla/relay.pub 644 root:root",
        "/var/lib/flotilla 700 flotilla-agent:flotilla-agent",
        "/var/lib/flotilla/agent.db ",
    ] {
        assert!(modes.contains(expected), "{expected} in:\n{modes}");
    }
    assert!(
        modes.contains("/var/lib/flotilla/agent.db 644 flotilla-agent:flotilla-agent")
            || modes.contains("/var/lib/flotilla/agent.db 600 flotilla-agent:flotilla-agent"),
        "agent.db belongs to the service user:\n{modes}"
    );
    let unit = host.sh("cat /etc/systemd/system/flotilla-agent.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/flotilla-agent run"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/bin/flotilla-agent"), "{unit}");
    // The updater: run from its known-good copy when there is one, else the installed binary;
    // write access to the installed binary's directory only.
    let updater = host.sh("cat /etc/systemd/system/flotilla-agent-updater.service");
    assert!(
        updater.contains(
            "[ -x \"$$updater\" ] || updater=/usr/local/bin/flotilla-agent; exec \"$$updater\" \
             self-update apply --binary /usr/local/bin/flotilla-agent "
        ) && updater.contains("\nReadWritePaths=/usr/local/bin /var/lib/flotilla\n"),
        "{updater}"
    );
    assert!(
        updater
            .lines()
            .all(|l| l.starts_with('#') || !l.contains("/usr/bin")),
        "{updater}"
    );
    let config = host.sh("cat /etc/flotilla/agent.toml");
    assert!(
        config.contains(&format!("relay_url = \"{}\"", host.relay.url())),
        "{config}"
    );
    let key = host.sh("cat /etc/flotilla/relay.pub");
    assert_eq!(
        key.trim(),
        host.relay.signing_key().public_key().to_base64(),
        "relay.pub is the relay's key"
    );
    assert!(
        host.sh("id -nG flotilla-agent")
            .split_whitespace()
            .any(|g| g == "docker"),
        "the service user is in the docker group"
    );
    for unit in [AGENT_UNIT, UPDATER_PATH_UNIT] {
        assert_eq!(host.unit_state(unit), "active", "{unit}");
        assert_eq!(
            host.sh(&format!("systemctl is-enabled {unit}")).trim(),
            "enabled",
            "{unit}"
        );
    }
    // The agent runs as the service user, with the drop-in applied.
    let environment = blocking(|| host.container.unit_property(AGENT_UNIT, "Environment")).unwrap();
    assert!(environment.contains(&host.scope), "{environment}");
    let user = host.sh("ps -o user= -p $(systemctl show --value -p MainPID flotilla-agent)");
    assert_eq!(user.trim(), "flotilla-agent");
    // The agent sees install.sh's nsswitch.conf ("hosts: files dns", so a static glibc build
    // loads no NSS module) in place of the host's, which stays untouched.
    let seen = host
        .sh("cat /proc/$(systemctl show --value -p MainPID flotilla-agent)/root/etc/nsswitch.conf");
    assert!(
        seen.lines().any(|l| l.trim() == "hosts: files dns"),
        "the agent's nsswitch.conf: {seen}"
    );
    assert_eq!(seen, host.sh("cat /etc/flotilla/nsswitch.conf"));
    assert_ne!(
        seen,
        host.sh("cat /etc/nsswitch.conf"),
        "the host's file is not replaced"
    );

    // `systemctl restart`: back online, on a new connection.
    let before = host.unit_run();
    host.sh("systemctl restart flotilla-agent");
    let restarted = host.wait_agent("0.1.0", Some(&agent)).await;
    assert_eq!(restarted.id, agent.id);
    assert_ne!(
        host.unit_run(),
        before,
        "systemctl restart started a new process"
    );
    assert_eq!(host.unit_state(AGENT_UNIT), "active");
    host.step("systemctl restart: active and online again");

    // Running it again with everything identical: no file written, no restart. (The token is
    // used up; the agent is enrolled already, which install.sh notices.)
    let run = host.unit_run();
    let files = host.files_snapshot();
    let token = host.relay.enrollment_token("").await;
    let out = host
        .install_ok("--labels env=test --name box1", Some(&token))
        .await;
    assert!(out.stdout.contains("not restarting"), "{}", text(&out));
    assert!(out.stdout.contains("already enrolled"), "{}", text(&out));
    assert_eq!(
        host.files_snapshot(),
        files,
        "an identical re-run writes nothing"
    );
    assert_eq!(
        host.unit_run(),
        run,
        "an identical re-run does not restart the agent"
    );
    host.step("identical re-run: nothing written, no restart");

    // A newer build is published: --dry-run says what it would do and does nothing.
    // (Published with the operator CLI this time.)
    let newer = blocking(|| agent_build(&bin("flotilla-agent"), "0.1.1")).unwrap();
    let newer_path = newer.to_string_lossy().into_owned();
    let out = cli(
        &host.relay,
        &[
            "release",
            "publish",
            "--file",
            &newer_path,
            "--version",
            "0.1.1",
        ],
    )
    .await;
    assert!(out.status.success(), "flotilla release publish: {out:?}");
    let out = cli(&host.relay, &["release", "list"]).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("0.1.1") && listed.contains("0.1.0"),
        "flotilla release list: {out:?}"
    );
    // (With a TMPDIR that does not allow running programs: install.sh works under /var/lib.)
    host.sh("mkdir -p /run/noexec-tmp && mount -t tmpfs -o noexec,size=64m tmpfs /run/noexec-tmp");
    let out = host
        .install_with_env("--dry-run", None, &[("TMPDIR", "/run/noexec-tmp")])
        .await;
    assert!(out.success(), "{}", text(&out));
    for expected in [
        "/run/noexec-tmp does not allow running programs (noexec): working in /var/lib/flotilla-install.",
        "/usr/local/bin/flotilla-agent is 0.1.0; the relay's build is 0.1.1",
        "would replace /usr/local/bin/flotilla-agent",
        "would restart flotilla-agent.service",
        "dry run: nothing was changed",
    ] {
        assert!(out.stdout.contains(expected), "{expected}:\n{}", text(&out));
    }
    assert_eq!(host.files_snapshot(), files, "--dry-run writes nothing");
    assert_eq!(
        host.sh("ls -A /var/lib /run/noexec-tmp | grep flotilla-install || true"),
        "",
        "install.sh removes its working directory"
    );
    assert_eq!(host.unit_run(), run, "--dry-run restarts nothing");
    host.step("--dry-run: described the change, changed nothing");

    // A locally edited agent.toml survives; the changed binary is installed and the agent
    // restarted on it.
    host.sh("echo '# a local note' >> /etc/flotilla/agent.toml");
    let config = host.sh("cat /etc/flotilla/agent.toml");
    let dropin = host.sh(&format!("cat {DROPIN}"));
    let out = host.install_ok("", None).await;
    assert!(
        out.stdout.contains("keeping the locally edited"),
        "{}",
        text(&out)
    );
    assert_eq!(host.sh("cat /etc/flotilla/agent.toml"), config);
    assert_eq!(
        host.sh(&format!("cat {DROPIN}")),
        dropin,
        "drop-ins are never touched"
    );
    assert_eq!(
        host.sha256(INSTALLED_BINARY),
        flotilla_tests::fixtures::systemd::sha256_file(&newer).unwrap()
    );
    assert_ne!(host.unit_run(), run, "a changed binary restarts the agent");
    let upgraded = host.wait_agent("0.1.1", Some(&restarted)).await;
    assert_eq!(upgraded.id, agent.id);
    host.step("changed re-run: binary replaced, agent restarted on 0.1.1, local edits kept");

    // For BENCHMARKS.md: the exposure of the installed units.
    for unit in [AGENT_UNIT, UPDATER_UNIT] {
        let report = host.security(unit);
        let overall = report
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or("(no overall line)");
        eprintln!(
            "[install] systemd-analyze security {unit}: {}",
            overall.trim()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_upgrade_installs_a_newer_build_and_keeps_the_previous_one() {
    let host = Host::start("upgrade").await;
    let (old, agent) = host.install_agent("0.1.0", "--name up1").await;
    let new = blocking(|| agent_build(&bin("flotilla-agent"), "0.2.0")).unwrap();
    let published = host.publish(&new, "0.2.0").await;

    let done = host
        .upgrade_result(&agent.id, "0.2.0", false, UPGRADE_DEADLINE)
        .await;
    let result = done.result.as_ref().unwrap();
    assert_eq!(result.status, ResultStatus::Succeeded, "{result:?}");
    let output = upgrade_output(&done);
    assert_eq!(output.from_version, "0.1.0");
    assert_eq!(output.to_version, "0.2.0");
    assert_eq!(output.running_version, "0.2.0");
    assert_eq!(output.arch, "x86_64");

    let upgraded = host.wait_agent("0.2.0", None).await;
    assert_eq!(upgraded.id, agent.id);
    assert_eq!(host.sha256(INSTALLED_BINARY), published.sha256);
    assert_eq!(
        host.sha256(PREVIOUS_BINARY),
        flotilla_tests::fixtures::systemd::sha256_file(&old).unwrap(),
        "the previous binary is kept"
    );
    let modes = host.sh(&format!("stat -c '%a %U' {INSTALLED_BINARY}"));
    assert_eq!(modes.trim(), "755 root", "still root's, still executable");
    assert_eq!(host.unit_state(AGENT_UNIT), "active");
    // Confirmed: the next updater runs from the new build.
    assert_eq!(host.sha256(UPDATER_COPY), published.sha256);
    host.step("upgraded to 0.2.0; previous binary kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_build_is_reverted_marked_broken_and_never_sent_again() {
    let host = Host::start("broken").await;
    let (old, agent) = host.install_agent("0.1.0", "--name broken1").await;
    let broken = blocking(|| broken_agent_build("0.3.0")).unwrap();
    host.publish(&broken, "0.3.0").await;

    // The updater is killed right after it swapped the broken build in (a reboot, an OOM
    // kill). The path unit starts it again; that run must not execute the broken build (it
    // exits 1 at every start) but the known-good copy, and revert.
    let old_sha = flotilla_tests::fixtures::systemd::sha256_file(&old).unwrap();
    let cmd = host.upgrade(&agent.id, "0.3.0", false).await.unwrap();
    let applied = flotilla_testkit::Poller::new(REVERT_DEADLINE).every(Duration::from_millis(200));
    loop {
        let result = host.sh("cat /var/lib/flotilla/upgrade/result.json 2>/dev/null || true");
        if result.contains("\"status\": \"applied\"") {
            break;
        }
        assert!(
            !applied.expired(),
            "the updater never applied 0.3.0: {result}"
        );
        applied.pause().await;
    }
    host.sh(&format!("systemctl kill --signal=SIGKILL {UPDATER_UNIT}"));
    host.step("updater killed after the swap");
    let done = host.api.wait_final(&cmd.id, REVERT_DEADLINE).await;
    let message = assert_error(&done, error_codes::UPGRADE_REVERTED);
    assert!(
        message.contains("crash loop: ") || message.contains("unit failed: "),
        "{message}"
    );
    let journal = blocking(|| host.container.journal(&[UPDATER_UNIT], 400));
    assert!(
        journal.contains("resuming an upgrade a previous run of the updater did not finish"),
        "{journal}"
    );
    assert_eq!(
        host.sha256(UPDATER_COPY),
        old_sha,
        "the copy is the build that ran"
    );
    assert_eq!(
        host.unit_state(UPDATER_PATH_UNIT),
        "active",
        "still watching"
    );
    host.step(&format!("reverted by the resumed updater: {message}"));

    // Back on the build that ran before, with that binary installed again.
    let back = host.wait_agent("0.1.0", None).await;
    assert_eq!(back.id, agent.id);
    assert_eq!(
        host.sha256(INSTALLED_BINARY),
        flotilla_tests::fixtures::systemd::sha256_file(&old).unwrap()
    );
    assert_eq!(host.unit_state(AGENT_UNIT), "active");

    // The relay marked the build broken (by this agent) and refuses to send it again.
    let releases: Vec<ReleaseInfo> = host.api.get("/api/v1/releases").await.unwrap();
    let info = release_of(&releases, "0.3.0");
    let broken_info = info.broken.as_ref().expect("0.3.0 is marked broken");
    assert_eq!(broken_info.by, agent.id);
    assert!(release_of(&releases, "0.1.0").broken.is_none());
    let err = host.upgrade(&agent.id, "0.3.0", false).await.unwrap_err();
    let err = api_error(&err);
    assert_eq!(
        (err.status, err.code.as_str()),
        (409, "release_broken"),
        "{err}"
    );
    // Nor is it served for download, and install.sh says why.
    let status = reqwest::get(format!("{}/download/agent/0.3.0/x86_64", host.relay.url()))
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 410);
    let out = host.install("--dry-run --version 0.3.0", None).await;
    assert!(
        !out.success() && out.stderr.contains("marked broken"),
        "{}",
        text(&out)
    );
    host.step("0.3.0 marked broken; refused for upgrades and downloads");
}

/// Overwrites the stored build of `version` on the relay with different bytes of the same size
/// (a few flipped in the middle); returns their SHA-256.
fn tamper_stored_build(relay: &Relay, version: &str) -> String {
    let path = relay
        .dir
        .path()
        .join("releases")
        .join(version)
        .join("x86_64")
        .join("flotilla-agent");
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b ^= 0xa5;
    }
    std::fs::write(&path, &bytes).unwrap();
    flotilla_tests::fixtures::systemd::sha256_bytes(&bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_builds_bad_signatures_and_downgrades_are_refused_rollback_is_not() {
    let host = Host::start("refusals").await;
    let (old, agent) = host.install_agent("0.1.0", "--name refuse1").await;
    let old_sha = flotilla_tests::fixtures::systemd::sha256_file(&old).unwrap();
    let source = bin("flotilla-agent");
    let builds: Vec<(String, PathBuf)> = blocking(|| {
        ["0.1.1", "0.1.5", "0.1.6", "0.2.0"]
            .iter()
            .map(|v| (v.to_string(), agent_build(&source, v).unwrap()))
            .collect()
    });
    for (version, build) in &builds {
        host.publish(build, version).await;
    }

    // A tampered binary: someone with write access to the relay's storage replaced the file.
    // The signed manifest's SHA-256 no longer matches.
    tamper_stored_build(&host.relay, "0.1.5");
    let done = host
        .upgrade_result(&agent.id, "0.1.5", false, REFUSAL_DEADLINE)
        .await;
    let message = assert_error(&done, error_codes::UPGRADE_REFUSED);
    assert!(
        message.to_lowercase().contains("sha-256") || message.contains("sha256"),
        "{message}"
    );
    assert_eq!(host.sha256(INSTALLED_BINARY), old_sha, "nothing installed");
    let out = host.install("--dry-run --version 0.1.5", None).await;
    assert!(
        !out.success() && out.stderr.contains("SHA-256"),
        "install.sh refuses it too:\n{}",
        text(&out)
    );
    host.step(&format!("tampered binary refused: {message}"));

    // A bad signature: the same attacker also rewrote the stored manifest to the tampered
    // file's SHA-256, but cannot sign it (the relay's key is not in its database).
    let tampered_sha = tamper_stored_build(&host.relay, "0.1.6");
    let db = rusqlite::Connection::open(host.relay.dir.path().join("relay.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let manifest: String = db
        .query_row(
            "SELECT manifest FROM releases WHERE version = '0.1.6' AND arch = 'x86_64'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let original_sha = &builds.iter().find(|(v, _)| v == "0.1.6").unwrap().1;
    let original_sha = flotilla_tests::fixtures::systemd::sha256_file(original_sha).unwrap();
    assert!(manifest.contains(&original_sha), "{manifest}");
    let forged = manifest.replace(&original_sha, &tampered_sha);
    db.execute(
        "UPDATE releases SET manifest = ?1, sha256 = ?2 WHERE version = '0.1.6' AND arch = 'x86_64'",
        rusqlite::params![forged, tampered_sha],
    )
    .unwrap();
    drop(db);
    let done = host
        .upgrade_result(&agent.id, "0.1.6", false, REFUSAL_DEADLINE)
        .await;
    let message = assert_error(&done, error_codes::UPGRADE_REFUSED);
    assert!(message.contains("signature"), "{message}");
    assert_eq!(host.sha256(INSTALLED_BINARY), old_sha, "nothing installed");
    let out = host.install("--dry-run --version 0.1.6", None).await;
    assert!(
        !out.success() && out.stderr.contains("signature does not verify"),
        "install.sh refuses it too:\n{}",
        text(&out)
    );
    host.step(&format!("forged manifest refused: {message}"));

    // A downgrade the agent itself refuses: an upgrade to 0.1.1 is queued while the agent is
    // stopped (the relay still believes it runs 0.1.0); meanwhile the host is moved to 0.2.0 by
    // hand with install.sh. The stale command reaches an agent on 0.2.0 without rollback.
    host.sh("systemctl stop flotilla-agent");
    host.api
        .wait_status(&agent.id, AgentStatus::Offline, ONLINE_DEADLINE)
        .await;
    let stale = host.upgrade(&agent.id, "0.1.1", false).await.unwrap();
    host.install_ok("--version 0.2.0", None).await;
    let new_sha = host.sha256(INSTALLED_BINARY);
    let done = host.api.wait_final(&stale.id, REFUSAL_DEADLINE).await;
    let message = assert_error(&done, error_codes::UPGRADE_REFUSED);
    assert!(
        message.contains("0.1.1") && message.contains("0.2.0"),
        "{message}"
    );
    assert_eq!(host.sha256(INSTALLED_BINARY), new_sha, "nothing installed");
    let on_020 = host.wait_agent("0.2.0", None).await;
    host.step(&format!("stale downgrade refused by the agent: {message}"));

    // The relay refuses to send a downgrade without rollback...
    let err = host.upgrade(&agent.id, "0.1.0", false).await.unwrap_err();
    let err = api_error(&err);
    assert_eq!((err.status, err.code.as_str()), (409, "not_newer"), "{err}");
    assert_eq!(host.sha256(INSTALLED_BINARY), new_sha);
    // ... and with it, the downgrade goes through.
    let done = host
        .upgrade_result(&agent.id, "0.1.0", true, UPGRADE_DEADLINE)
        .await;
    let result = done.result.as_ref().unwrap();
    assert_eq!(result.status, ResultStatus::Succeeded, "{result:?}");
    let output = upgrade_output(&done);
    assert_eq!(
        (output.from_version.as_str(), output.to_version.as_str()),
        ("0.2.0", "0.1.0")
    );
    host.wait_agent("0.1.0", Some(&on_020)).await;
    assert_eq!(host.sha256(INSTALLED_BINARY), old_sha);
    host.step("rollback to 0.1.0 done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_removes_units_and_binaries_keeps_state_and_purge_removes_it() {
    let host = Host::start("uninstall").await;
    let (_, agent) = host.install_agent("0.1.0", "--name gone1").await;

    // Without openssl the signature cannot be checked: install.sh stops and says what to do,
    // unless told to rely on HTTPS alone (the relay key's fingerprint is still checked, with
    // coreutils' base64 and sha256sum).
    host.sh("mv /usr/bin/openssl /usr/bin/openssl.hidden");
    let refused = host.install("--dry-run", None).await;
    let skipped = host.install("--dry-run --skip-signature-check", None).await;
    host.sh("mv /usr/bin/openssl.hidden /usr/bin/openssl");
    assert!(
        !refused.success()
            && refused.stderr.contains("openssl is missing")
            && refused.stderr.contains("--skip-signature-check"),
        "{}",
        text(&refused)
    );
    assert!(skipped.success(), "{}", text(&skipped));
    assert!(
        skipped.stderr.contains("signature is NOT checked")
            && skipped.stdout.contains("dry run: nothing was changed"),
        "{}",
        text(&skipped)
    );
    host.step("without openssl: refused, or --skip-signature-check with a warning");

    let out = blocking(|| {
        host.container
            .sh_output("flotilla-agent-uninstall --dry-run", &[])
    })
    .unwrap();
    assert!(out.success(), "{}", text(&out));
    assert!(
        out.stdout
            .contains("would remove /usr/local/bin/flotilla-agent"),
        "{}",
        text(&out)
    );
    assert!(host.exists(INSTALLED_BINARY), "--dry-run removes nothing");
    assert_eq!(host.unit_state(AGENT_UNIT), "active");

    let out = blocking(|| host.container.sh_output("flotilla-agent-uninstall", &[])).unwrap();
    assert!(out.success(), "{}", text(&out));
    host.api
        .wait_status(&agent.id, AgentStatus::Offline, ONLINE_DEADLINE)
        .await;
    for path in [
        INSTALLED_BINARY,
        UNINSTALLER,
        "/etc/flotilla/agent.toml",
        "/etc/flotilla/relay.pub",
        "/etc/flotilla/nsswitch.conf",
        "/etc/systemd/system/flotilla-agent.service",
        "/etc/systemd/system/flotilla-agent-updater.service",
        "/etc/systemd/system/flotilla-agent-updater.path",
        "/var/lib/flotilla-updater",
    ] {
        assert!(!host.exists(path), "{path} is left after uninstall");
    }
    for unit in [AGENT_UNIT, UPDATER_UNIT, UPDATER_PATH_UNIT] {
        let load = blocking(|| host.container.unit_property(unit, "LoadState")).unwrap();
        assert_eq!(load, "not-found", "{unit} is gone from systemd");
    }
    let leftovers = host.sh("find /usr/local/bin /etc/systemd/system /etc/flotilla -name '*flotilla*' 2>/dev/null || true");
    assert_eq!(
        leftovers.trim(),
        "/etc/systemd/system/flotilla-agent.service.d",
        "only the local drop-in directory is left"
    );
    assert!(host.exists("/var/lib/flotilla/agent.db"), "state is kept");
    assert!(host
        .sh("getent passwd flotilla-agent || true")
        .contains("flotilla-agent"));
    host.step("uninstalled; state and user kept");

    // Installing again needs no token: the kept identity comes back online. (With wget this
    // time: curl is hidden.)
    let script = format!(
        "set -o pipefail; mv /usr/bin/curl /usr/bin/curl.hidden; \
         wget -qO- {}/install.sh | sh -s --; status=$?; \
         mv /usr/bin/curl.hidden /usr/bin/curl; exit $status",
        host.relay.url()
    );
    let out = blocking(|| host.container.run(&["bash", "-c", &script], &[], None)).unwrap();
    assert!(out.success(), "{}", text(&out));
    assert!(out.stdout.contains("downloads with wget"), "{}", text(&out));
    let again = host.wait_agent("0.1.0", Some(&agent)).await;
    assert_eq!(again.id, agent.id, "the same identity");
    host.step("re-installed (with wget) without a token: same agent");

    // --purge (through the relay's install.sh) removes state, logs and user too.
    let out = host.install("--uninstall --purge", None).await;
    assert!(out.success(), "{}", text(&out));
    for path in [
        INSTALLED_BINARY,
        UNINSTALLER,
        "/etc/systemd/system/flotilla-agent.service",
        "/var/lib/flotilla",
        "/var/log/flotilla-agent",
    ] {
        assert!(!host.exists(path), "{path} is left after --purge");
    }
    assert_eq!(host.sh("getent passwd flotilla-agent || true").trim(), "");
    assert_eq!(host.sh("getent group flotilla-agent || true").trim(), "");
    host.step("purged");
}
