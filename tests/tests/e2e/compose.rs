//! Updates of compose stacks with the real compose tool (Debian's `docker-compose` 1.29) on the
//! real engine and a real local registry: `container.update` edits the service's `image:` line
//! (or its `.env` tag) so that a later `docker-compose up -d` keeps v2 and recreates nothing; a
//! failing v2 rolls back and the file is byte-identical; files outside `[compose] allowed_dirs`
//! or reached through a symlink out of them are refused (or, with `allow_drift`, left alone and
//! the drift reported in the heartbeat); `compose.update` updates two services together and
//! rolls them back together.

use crate::{images, DEADLINE};
use flotilla_shared::alert::AlertInfo;
use flotilla_shared::api::{CommandInfo, UpdateRecord};
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

/// The relay's update records of the `compose.update` `group` (its containers' records).
async fn group_records(api: &Api, agent: &str, group: &str) -> Vec<UpdateRecord> {
    let all: Vec<UpdateRecord> = api
        .get(&format!("/api/v1/agents/{agent}/updates?limit=1000"))
        .await
        .expect("list updates");
    let mut mine: Vec<UpdateRecord> = all
        .into_iter()
        .filter(|u| u.command_id == group || u.group_id.as_deref() == Some(group))
        .collect();
    mine.sort_by(|a, b| a.command_id.cmp(&b.command_id));
    mine
}

/// Checks the relay recorded one finished record per service of `group`, marked with the
/// group and the project, each with the outcome its service's report gave.
async fn assert_recorded(
    api: &Api,
    agent: &str,
    group: &str,
    project: &str,
    containers: &[(&str, &str)],
    outcome: UpdateOutcome,
) -> Vec<UpdateRecord> {
    let records = eventually(DEADLINE, "the relay records each service", || async {
        let r = group_records(api, agent, group).await;
        (r.len() == containers.len() && r.iter().all(|u| !u.active)).then_some(r)
    })
    .await;
    for (u, (service, container)) in records.iter().zip(containers) {
        assert_eq!(u.command_id, format!("{group}.{service}"), "{u:#?}");
        assert_eq!(u.group_id.as_deref(), Some(group), "{u:#?}");
        assert_eq!(u.compose_project.as_deref(), Some(project), "{u:#?}");
        assert_eq!(u.compose_service.as_deref(), Some(*service), "{u:#?}");
        assert_eq!(u.container_name.as_deref(), Some(*container), "{u:#?}");
        assert_eq!(u.outcome, Some(outcome), "{u:#?}");
        let report = u.report.as_ref().expect("the service's own report");
        assert_eq!(report.container, *container);
        assert_eq!(report.outcome, outcome);
    }
    records
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
    // The relay's update history: one record per container, marked with group and project.
    let services = [("web", web.as_str()), ("worker", worker.as_str())];
    let (agent, api) = (&s.agent.id, &s.api);
    assert_recorded(
        api,
        agent,
        &info.id,
        &project,
        &services,
        UpdateOutcome::Updated,
    )
    .await;

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
    // Recorded per container as rolled back, and each raises the alert a rolled-back
    // container.update raises (`update_rolled_back`, subject: the container).
    let failed = info.id.clone();
    let rolled = UpdateOutcome::RolledBack;
    assert_recorded(api, agent, &failed, &project, &services, rolled).await;
    let alerts = eventually(
        DEADLINE,
        "an update_rolled_back alert per container",
        || async {
            let list: Vec<AlertInfo> = api
                .get(&format!(
                    "/api/v1/alerts?state=firing&rule=update_rolled_back&agent={agent}&limit=100"
                ))
                .await
                .ok()?;
            let of = |c: &str| list.iter().find(|a| a.subject == c).cloned();
            Some((of(&web)?, of(&worker)?))
        },
    )
    .await;
    for a in [&alerts.0, &alerts.1] {
        assert!(a.message.contains(&failed), "names the command: {a:#?}");
        assert!(a.message.contains("was rolled back"), "{a:#?}");
    }
    let out = s.up(&project, &dir).await;
    assert_eq!(
        (s.container(&web).await, s.container(&worker).await),
        ids,
        "{out}"
    );
}

/// SIGKILL of the agent paused at `phase` of a two-service `compose.update`; restarted
/// without the hook, the agent converges the project as a whole and files ONE result for the
/// command (the group's report, `recovered`): all committed or all rolled back, the files
/// matching what runs. Returns the report.
async fn killed_in_compose_update(test: &str, phase: &str) -> ComposeUpdateReport {
    let mut s = Stack::new(test, &["v2"], true).await;
    let project = s.project("kill");
    let dir = s.stacks.join(&project);
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = s.image("v1");
    let repo = v1.trim_end_matches(":v1").to_string();
    let file = dir.join("docker-compose.yml");
    let value = format!("{repo}:${{TAG}}");
    let text = s.compose_file(&[("web", &value, ""), ("worker", &value, "")]);
    std::fs::write(&file, &text).unwrap();
    let env_file = dir.join(".env");
    std::fs::write(&env_file, "TAG=v1\n").unwrap();
    s.up(&project, &dir).await;
    let (web, worker) = (format!("{project}_web_1"), format!("{project}_worker_1"));
    let before = (s.container(&web).await, s.container(&worker).await);

    s.agent.kill().await;
    s.agent
        .set_env(flotilla_tests::harness::UPDATE_PAUSE_ENV, phase);
    s.agent.run().await;
    s.api.wait_online(&s.agent.id, DEADLINE).await;
    let args = ComposeUpdateArgs {
        project: project.clone(),
        services: Vec::new(),
        image: s.image("v2"),
        health: "running".parse().unwrap(),
        health_timeout_secs: Some(20),
        stable_secs: Some(1),
        strategy: Default::default(),
        allow_drift: false,
    };
    let info = s
        .api
        .command(&s.agent.id, Command::ComposeUpdate(args), None)
        .await
        .expect("create compose.update");
    let marker = s.agent.state_dir().join(format!("update-paused-{phase}"));
    eventually(
        UPDATE_DEADLINE,
        &format!("the group to pause at {phase}"),
        || {
            let marker = marker.clone();
            async move { marker.exists().then_some(()) }
        },
    )
    .await;
    // The files were edited before any container was touched.
    assert_eq!(read(&env_file), "TAG=v2\n", "edited before the pause");
    s.agent.kill().await;
    s.agent
        .remove_env(flotilla_tests::harness::UPDATE_PAUSE_ENV);
    s.agent.run().await;

    let info = s.api.wait_final(&info.id, UPDATE_DEADLINE).await;
    let output = info
        .result
        .as_ref()
        .and_then(|r| r.output.clone())
        .unwrap_or_else(|| panic!("the group's result carries its report: {info:#?}"));
    let report: ComposeUpdateReport = serde_json::from_value(output).unwrap();
    assert_eq!(report.services.len(), 2, "{report:#?}");
    assert!(
        report.services.iter().any(|r| r.recovered),
        "finished after the restart: {report:#?}"
    );
    let now = (s.container(&web).await, s.container(&worker).await);
    match report.outcome {
        UpdateOutcome::Updated => {
            assert!(report
                .services
                .iter()
                .all(|r| r.outcome == UpdateOutcome::Updated));
            assert_eq!(
                (now.0 .1.as_str(), now.1 .1.as_str()),
                (s.image("v2").as_str(), s.image("v2").as_str())
            );
            assert_eq!(read(&env_file), "TAG=v2\n", "the files declare what runs");
        }
        _ => {
            assert!(
                report
                    .services
                    .iter()
                    .all(|r| r.outcome != UpdateOutcome::Updated),
                "never half updated: {report:#?}"
            );
            assert_eq!(now, before, "both old containers run again");
            assert_eq!(
                read(&env_file),
                "TAG=v1\n",
                "the files are put back byte for byte"
            );
        }
    }
    assert_eq!(read(&file), text);
    // The project is coherent: compose finds nothing to recreate.
    let out = s.up(&project, &dir).await;
    let after = (s.container(&web).await, s.container(&worker).await);
    assert_eq!(after, now, "up -d recreated a service: {out}");
    // Exactly one result reached the relay: the command's result is the group's report, and
    // the history holds one record per container, each finished once with its outcome.
    let records = eventually(DEADLINE, "the relay records each service", || async {
        let r = group_records(&s.api, &s.agent.id, &info.id).await;
        (r.len() == 2 && r.iter().all(|u| !u.active && u.outcome.is_some())).then_some(r)
    })
    .await;
    for (u, r) in records.iter().zip(&report.services) {
        assert_eq!(u.outcome, Some(r.outcome), "{u:#?}");
    }
    let results = s
        .api
        .events(&s.agent.id)
        .await
        .into_iter()
        .filter(|e| {
            e.event.attributes.get("group") == Some(&info.id)
                && e.event.attributes.contains_key("outcome")
        })
        .count();
    assert_eq!(results, 2, "one final event per container");
    println!(
        "killed at {phase}: {} ({:?})",
        report.outcome, report.reason
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_file_edit_and_the_first_stop_rolls_the_project_back() {
    let r = killed_in_compose_update("cmp-kill-stop", "old_stopped").await;
    assert_eq!(r.outcome, UpdateOutcome::RolledBack, "{r:#?}");
    assert!(r.compose.as_ref().is_some_and(|c| c.restored), "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_committing_commits_every_service() {
    let r = killed_in_compose_update("cmp-kill-commit", "committing").await;
    assert_eq!(r.outcome, UpdateOutcome::Updated, "{r:#?}");
}

/// A rollout of `--compose-project` over a project outside `[compose] allowed_dirs`: the
/// member fails with the agent's refusal (nothing touched) until the rollout opts in with
/// `allow_drift`; then the container is updated alone, the member says `compose drift: …`,
/// and the relay raises the soft `compose_drift` alert from the heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_project_rollout_outside_allowed_dirs_opts_in_with_allow_drift() {
    use flotilla_shared::rollout::{
        AgentOutcome, ContainerOutcome, CreateRollout, RolloutInfo, RolloutState,
    };
    let s = Stack::new("cmp-rollout", &["v2"], true).await;
    let project = s.project("ro");
    let dir = s.elsewhere.join(&project);
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = s.image("v1");
    let file = dir.join("docker-compose.yml");
    let text = s.compose_file(&[("web", &v1, "")]);
    std::fs::write(&file, &text).unwrap();
    s.up(&project, &dir).await;
    let web = format!("{project}_web_1");
    let before = s.container(&web).await;

    let request = |allow_drift: bool| CreateRollout {
        name: None,
        selector: "*".parse().unwrap(),
        container: None,
        container_label: Some(format!("com.docker.compose.project={project}")),
        image: s.image("v2"),
        stages: Some("100%".into()),
        staging: None,
        order: None,
        max_failures: None,
        on_failure: None,
        parallelism: None,
        health: Some("running".parse().unwrap()),
        health_timeout_secs: Some(20),
        stable_secs: Some(1),
        strategy: None,
        stage_timeout_secs: None,
        allow_drift,
    };
    let run = |allow_drift: bool| {
        let req = request(allow_drift);
        let api = &s.api;
        async move {
            let r: RolloutInfo = api
                .post("/api/v1/rollouts", &req)
                .await
                .expect("start rollout");
            assert_eq!(r.allow_drift, allow_drift);
            eventually(UPDATE_DEADLINE, "the rollout to stop", || async {
                let r: RolloutInfo = api.get(&format!("/api/v1/rollouts/{}", r.id)).await.ok()?;
                matches!(r.state, RolloutState::Paused | RolloutState::Completed).then_some(r)
            })
            .await
        }
    };
    // Without allow_drift: refused by the agent, nothing changed.
    let refused = run(false).await;
    assert_eq!(refused.state, RolloutState::Paused, "{refused:#?}");
    let member = &refused.agents[0];
    assert_eq!(member.outcome, AgentOutcome::Failed, "{member:#?}");
    let reason = member.containers[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("allowed_dirs"),
        "says how to allow it: {reason}"
    );
    assert_eq!(s.container(&web).await, before, "not touched");
    let _: RolloutInfo = s
        .api
        .post(
            &format!("/api/v1/rollouts/{}/abort", refused.id),
            &serde_json::json!({}),
        )
        .await
        .expect("abort the refused rollout");

    // With allow_drift: updated, the drift reported on the member and alerted from heartbeats.
    let done = run(true).await;
    assert_eq!(done.state, RolloutState::Completed, "{done:#?}");
    let c = &done.agents[0].containers[0];
    assert_eq!(c.outcome, ContainerOutcome::Updated, "{c:#?}");
    let reason = c.reason.clone().unwrap_or_default();
    assert!(reason.starts_with("compose drift: "), "{reason}");
    assert!(reason.contains("allowed"), "{reason}");
    assert_eq!(s.container(&web).await.1, s.image("v2"));
    assert_eq!(read(&file), text, "the files were not edited");
    let agent = &s.agent.id;
    let alert = eventually(
        DEADLINE,
        "a compose_drift alert for the container",
        || async {
            let list: Vec<AlertInfo> = s
                .api
                .get(&format!(
                    "/api/v1/alerts?state=firing&rule=compose_drift&agent={agent}&limit=100"
                ))
                .await
                .ok()?;
            list.into_iter().find(|a| a.subject == web)
        },
    )
    .await;
    assert_eq!(
        alert.severity,
        flotilla_shared::alert::Severity::Soft,
        "{alert:#?}"
    );
    assert!(
        alert.message.contains(&v1),
        "names what the project declares: {alert:#?}"
    );
}
