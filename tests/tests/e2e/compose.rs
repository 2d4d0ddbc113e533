//! Updates of compose stacks with the real compose tool (Debian's `docker-compose` 1.29) on the
//! real engine and a real local registry: `container.update` edits the service's `image:` line
//! (or its `.env` tag) so that a later `docker-compose up -d` keeps v2 and recreates nothing; a
//! failing v2 rolls back and the file is byte-identical; files outside `[compose] allowed_dirs`
//! or reached through a symlink out of them are refused (or, with `allow_drift`, left alone and
//! the drift reported in the heartbeat); `compose.update` updates two services together and
//! rolls them back together.

use crate::{images, DEADLINE};
use flotilla_shared::api::CommandInfo;
use flotilla_shared::command::Command;
use flotilla_shared::compose::{ComposeUpdateArgs, ComposeUpdateReport};
use flotilla_shared::update::UpdateOutcome;
use flotilla_tests::fixtures::{self, Registry};
use flotilla_tests::harness::{eventually, scope, update_args, Agent, Api, Containers, Relay};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upper bound for one update (pull, stop, start, gate, maybe a rollback with its own gate).
const UPDATE_DEADLINE: Duration = Duration::from_secs(120);
const ALLOWED_ENV: &str = "FLOTILLA_COMPOSE_ALLOWED_DIRS";

/// One test's world: registry, relay, a running agent, a temporary directory holding the
/// allowed `stacks/` directory and an `elsewhere/` one.
struct Stack {
    agent: Agent,
    _relay: Relay,
    docker: Containers,
    _registry: Registry,
    api: Api,
    refs: HashMap<&'static str, String>,
    _tmp: tempfile::TempDir,
    stacks: PathBuf,
    elsewhere: PathBuf,
    /// Project directories brought up (taken down at the end).
    projects: std::sync::Mutex<Vec<(String, PathBuf)>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (project, dir) in self.projects.lock().unwrap().iter() {
            let _ = std::process::Command::new("docker-compose")
                .args(["-p", project, "down", "--volumes", "--timeout", "1"])
                .current_dir(dir)
                .output();
        }
    }
}

impl Stack {
    async fn new(test: &str, variants: &[&'static str], allowed: bool) -> Stack {
        let img = images().await.clone();
        let variants = variants.to_vec();
        let (registry, refs) = tokio::task::spawn_blocking(move || {
            fixtures::registry_with_variants(&img, &variants, None)
        })
        .await
        .expect("registry thread")
        .expect("a local registry with the test images");
        let scope = scope(test);
        let docker = Containers::new(&scope).await;
        let relay = Relay::start().await;
        let mut agent = Agent::enroll(&relay, "host-c", "", &scope).await;
        let tmp = flotilla_testkit::temp_dir("compose-e2e");
        let stacks = tmp.path().join("stacks");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&stacks).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        if allowed {
            agent.set_env(ALLOWED_ENV, &stacks.display().to_string());
        }
        agent.run().await;
        let api = relay.api();
        api.wait_online(&agent.id, DEADLINE).await;
        Stack {
            agent,
            _relay: relay,
            docker,
            _registry: registry,
            api,
            refs,
            _tmp: tmp,
            stacks,
            elsewhere,
            projects: Default::default(),
        }
    }

    fn image(&self, variant: &str) -> String {
        self.refs[variant].clone()
    }

    /// A compose project name for this test (compose 1.x wants lowercase letters and digits).
    fn project(&self, name: &str) -> String {
        let s: String = self
            .docker
            .scope
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        format!("{}{name}", s.to_lowercase())
    }

    /// A compose file with `services` (name, image value as written, extra environment),
    /// every container and the default network carrying the test's scope label.
    fn compose_file(&self, services: &[(&str, &str, &str)]) -> String {
        let scope = &self.docker.scope;
        let mut text = String::from("# a tenant's stack\nversion: \"3.8\"\n\nservices:\n");
        for (name, image, env) in services {
            text.push_str(&format!(
                "  {name}:\n    # the tag is bumped by the provisioner\n    image: {image}   # keep this comment\n    environment:\n      APP_VERSION_NOTE: \"x\"\n{env}    labels:\n      flotilla.test: \"1\"\n      flotilla.test.scope: \"{scope}\"\n"
            ));
        }
        text.push_str(&format!(
            "\nnetworks:\n  default:\n    labels:\n      flotilla.test.scope: \"{scope}\"\n"
        ));
        text
    }

    /// `docker-compose -p <project> <args>` in `dir`; panics with its output on failure.
    async fn compose(&self, project: &str, dir: &Path, args: &[&str]) -> String {
        let out = tokio::process::Command::new("docker-compose")
            .arg("-p")
            .arg(project)
            .args(args)
            .current_dir(dir)
            .output()
            .await
            .expect("docker-compose must be installed for these tests");
        assert!(
            out.status.success(),
            "docker-compose {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    async fn up(&self, project: &str, dir: &Path) -> String {
        {
            let mut p = self.projects.lock().unwrap();
            if !p.iter().any(|(n, _)| n == project) {
                p.push((project.to_string(), dir.to_path_buf()));
            }
        }
        self.compose(project, dir, &["up", "-d"]).await
    }

    /// Id and image reference of the container called `name`.
    async fn container(&self, name: &str) -> (String, String) {
        let j = self.docker.inspect_json(name).await;
        (
            j["Id"].as_str().unwrap_or_default().to_string(),
            j["Config"]["Image"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    async fn compose_update(&self, args: ComposeUpdateArgs) -> (CommandInfo, ComposeUpdateReport) {
        let info = self
            .api
            .command(&self.agent.id, Command::ComposeUpdate(args), None)
            .await
            .expect("create compose.update");
        let info = self.api.wait_final(&info.id, UPDATE_DEADLINE).await;
        let output = info
            .result
            .as_ref()
            .and_then(|r| r.output.clone())
            .unwrap_or_else(|| panic!("compose.update without output: {info:#?}"));
        let report: ComposeUpdateReport = serde_json::from_value(output.clone())
            .unwrap_or_else(|e| panic!("not a ComposeUpdateReport ({e}): {output:#}"));
        (info, report)
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updated_image_line_survives_docker_compose_up() {
    let s = Stack::new("cmp-line", &["v2", "broken"], true).await;
    let project = s.project("line");
    let dir = s.stacks.join(&project);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("docker-compose.yml");
    let v1 = s.image("v1");
    let original = s.compose_file(&[("web", &format!("\"{v1}\""), "")]);
    std::fs::write(&file, &original).unwrap();
    s.up(&project, &dir).await;
    let name = format!("{project}_web_1");
    let (old_id, _) = s.container(&name).await;

    let v2 = s.image("v2");
    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&name, &v2, "running", 2),
            UPDATE_DEADLINE,
        )
        .await;
    r.assert_outcome(UpdateOutcome::Updated);
    let compose = r.report.compose.clone().expect("a compose report");
    assert!(compose.config_hash.is_some(), "{compose:?}");
    assert!(compose.drift.is_none(), "{compose:?}");
    let edited = read(&file);
    assert_eq!(
        edited,
        original.replace(&format!("\"{v1}\""), &format!("\"{v2}\""))
    );
    assert_eq!(read(&dir.join("docker-compose.yml.flotilla.bak")), original);
    let (new_id, image) = s.container(&name).await;
    assert_ne!(new_id, old_id);
    assert_eq!(image, v2);

    // The provisioner runs `up -d`: nothing to do, v2 stays, same container.
    let out = s.up(&project, &dir).await;
    let (after_id, after_image) = s.container(&name).await;
    assert_eq!(
        after_id, new_id,
        "docker-compose up -d recreated the container: {out}"
    );
    assert_eq!(after_image, v2);
    assert!(out.contains("is up-to-date"), "{out}");

    // A failing update rolls back and leaves the file byte-identical.
    let before = std::fs::read(&file).unwrap();
    let broken = s.image("broken");
    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&name, &broken, "running", 3),
            UPDATE_DEADLINE,
        )
        .await;
    r.assert_outcome(UpdateOutcome::RolledBack);
    assert!(
        r.report.compose.as_ref().is_some_and(|c| c.restored),
        "{:?}",
        r.report.compose
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the file is byte-identical"
    );
    let out = s.up(&project, &dir).await;
    let (id, image) = s.container(&name).await;
    assert_eq!(
        (id.as_str(), image.as_str()),
        (new_id.as_str(), v2.as_str()),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_in_env_is_updated_there() {
    let s = Stack::new("cmp-env", &["v2"], true).await;
    let project = s.project("env");
    let dir = s.stacks.join(&project);
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = s.image("v1");
    let repo = v1.trim_end_matches(":v1").to_string();
    let file = dir.join("docker-compose.yml");
    let original = s.compose_file(&[("web", &format!("{repo}:${{APP_TAG}}"), "")]);
    std::fs::write(&file, &original).unwrap();
    let env_file = dir.join(".env");
    std::fs::write(&env_file, "# release\nAPP_TAG=v1 # bumped by CI\nOTHER=x\n").unwrap();
    s.up(&project, &dir).await;
    let name = format!("{project}_web_1");

    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&name, &s.image("v2"), "running", 2),
            UPDATE_DEADLINE,
        )
        .await;
    r.assert_outcome(UpdateOutcome::Updated);
    assert_eq!(read(&file), original, "the compose file is untouched");
    assert_eq!(
        read(&env_file),
        "# release\nAPP_TAG=v2 # bumped by CI\nOTHER=x\n"
    );
    let (id, _) = s.container(&name).await;
    let out = s.up(&project, &dir).await;
    let (after, image) = s.container(&name).await;
    assert_eq!(after, id, "up -d recreated the container: {out}");
    assert_eq!(image, s.image("v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_outside_allowed_dirs_or_behind_a_symlink_out_are_refused() {
    let s = Stack::new("cmp-refuse", &["v2"], true).await;
    let v1 = s.image("v1");
    let v2 = s.image("v2");
    // A project outside the allowed directory.
    let out_project = s.project("out");
    let out_dir = s.elsewhere.join(&out_project);
    std::fs::create_dir_all(&out_dir).unwrap();
    let out_file = out_dir.join("docker-compose.yml");
    let out_text = s.compose_file(&[("web", &v1, "")]);
    std::fs::write(&out_file, &out_text).unwrap();
    s.up(&out_project, &out_dir).await;
    let out_name = format!("{out_project}_web_1");
    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&out_name, &v2, "running", 1),
            UPDATE_DEADLINE,
        )
        .await;
    assert_eq!(
        r.report.outcome,
        UpdateOutcome::FailedUnchanged,
        "{:?}",
        r.result
    );
    let error = r.result.error.clone().unwrap();
    assert_eq!(error.code, "policy_denied");
    let message = error.message;
    assert!(
        message.contains("allowed_dirs") && message.contains("allow_drift"),
        "{message}"
    );
    assert_eq!(s.container(&out_name).await.1, v1);
    assert_eq!(read(&out_file), out_text);

    // A project inside it whose compose file is a symlink to a file outside.
    let link_project = s.project("link");
    let link_dir = s.stacks.join(&link_project);
    std::fs::create_dir_all(&link_dir).unwrap();
    let target = s.elsewhere.join("real-compose.yml");
    let link_text = s.compose_file(&[("web", &v1, "")]);
    std::fs::write(&target, &link_text).unwrap();
    std::os::unix::fs::symlink(&target, link_dir.join("docker-compose.yml")).unwrap();
    s.up(&link_project, &link_dir).await;
    let link_name = format!("{link_project}_web_1");
    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&link_name, &v2, "running", 1),
            UPDATE_DEADLINE,
        )
        .await;
    assert_eq!(
        r.report.outcome,
        UpdateOutcome::FailedUnchanged,
        "{:?}",
        r.result
    );
    let error = r.result.error.clone().unwrap();
    assert_eq!(error.code, "policy_denied");
    let message = error.message;
    assert!(message.contains("symlink"), "{message}");
    assert_eq!(read(&target), link_text);

    // With allow_drift: the container only, and the drift is reported.
    let mut args = update_args(&out_name, &v2, "running", 1);
    args.allow_drift = true;
    let r = s.api.update(&s.agent.id, args, UPDATE_DEADLINE).await;
    r.assert_outcome(UpdateOutcome::Updated);
    let drift = r
        .report
        .compose
        .clone()
        .and_then(|c| c.drift)
        .expect("drift reported");
    assert!(drift.contains("allowed"), "{drift}");
    assert_eq!(read(&out_file), out_text, "not edited");
    let d = eventually(DEADLINE, "the heartbeat to report the drift", || async {
        let hb = s.api.agent(&s.agent.id).await.heartbeat?;
        hb.compose_drift
            .into_iter()
            .find(|d| d.container == out_name)
    })
    .await;
    assert_eq!(d.running_image, v2);
    assert_eq!(d.declared_image.as_deref(), Some(v1.as_str()));
    assert_eq!(d.service, "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_are_updated_together_and_rolled_back_together() {
    let s = Stack::new("cmp-group", &["v2", "v2-health"], true).await;
    let project = s.project("grp");
    let dir = s.stacks.join(&project);
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = s.image("v1");
    let repo = v1.trim_end_matches(":v1").to_string();
    let file = dir.join("docker-compose.yml");
    let value = format!("{repo}:${{TAG}}");
    // The worker answers 500 on /health: fine for v1 (no HEALTHCHECK), fatal under v2-health's.
    let text = s.compose_file(&[
        ("web", &value, ""),
        ("worker", &value, "      APP_MODE: unhealthy\n"),
    ]);
    std::fs::write(&file, &text).unwrap();
    let env_file = dir.join(".env");
    std::fs::write(&env_file, "TAG=v1\n").unwrap();
    s.up(&project, &dir).await;
    let web = format!("{project}_web_1");
    let worker = format!("{project}_worker_1");

    let args = |image: String| ComposeUpdateArgs {
        project: project.clone(),
        services: Vec::new(),
        image,
        health: "auto".parse().unwrap(),
        health_timeout_secs: Some(20),
        stable_secs: Some(2),
        strategy: Default::default(),
        allow_drift: false,
    };
    let (info, report) = s.compose_update(args(s.image("v2"))).await;
    assert_eq!(report.outcome, UpdateOutcome::Updated, "{info:#?}");
    assert_eq!(report.services.len(), 2);
    assert!(report
        .services
        .iter()
        .all(|r| r.outcome == UpdateOutcome::Updated));
    assert_eq!(read(&env_file), "TAG=v2\n");
    assert_eq!(read(&file), text);
    let ids = (s.container(&web).await, s.container(&worker).await);
    assert_eq!(
        (ids.0 .1.as_str(), ids.1 .1.as_str()),
        (s.image("v2").as_str(), s.image("v2").as_str())
    );
    let out = s.up(&project, &dir).await;
    let after = (s.container(&web).await, s.container(&worker).await);
    assert_eq!(after, ids, "up -d recreated a service: {out}");

    // v2-health: the web passes its HEALTHCHECK, the worker does not → both rolled back.
    let (info, report) = s.compose_update(args(s.image("v2-health"))).await;
    assert_eq!(report.outcome, UpdateOutcome::RolledBack, "{info:#?}");
    assert!(
        report
            .services
            .iter()
            .all(|r| r.outcome == UpdateOutcome::RolledBack),
        "{report:#?}"
    );
    assert!(
        report.reason.as_deref().unwrap_or("").contains(&worker),
        "{report:?}"
    );
    assert!(
        report.compose.as_ref().is_some_and(|c| c.restored),
        "{report:?}"
    );
    assert_eq!(read(&env_file), "TAG=v2\n", "byte-identical");
    let now = (s.container(&web).await, s.container(&worker).await);
    assert_eq!(now, ids, "both old containers are back");
    let out = s.up(&project, &dir).await;
    assert_eq!(
        (s.container(&web).await, s.container(&worker).await),
        ids,
        "{out}"
    );
}
