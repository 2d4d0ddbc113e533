//! Canary rollouts end to end: ten real agents (processes) share this machine's engine, each
//! scoped to its own containers with `only_label` (the documented `FLOTILLA_ONLY_LABEL`), each
//! running one `web` container from v1 in a real local registry. Rollouts target the containers
//! by a Docker label they all carry, and update them through the relay's stages.

use crate::{images, DEADLINE};
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use flotilla_shared::alert::{AlertInfo, Severity};
use flotilla_shared::api::UpdateRecord;
use flotilla_shared::rollout::{AgentOutcome, CreateRollout, RolloutInfo, RolloutState};
use flotilla_tests::fixtures::{self, Registry};
use flotilla_tests::harness::{cli, eventually, scope, Agent, Api, Containers, Relay};
use std::collections::HashMap;
use std::time::Duration;

/// Agents in every rollout test (the issue asks for at least ten).
const FLEET: usize = 10;
/// Upper bound for a whole rollout of the test fleet (second-scale soaks, local registry).
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(240);

/// One test's fleet: a relay, ten agents each scoped to its own containers, one `web`
/// container per agent carrying the test's app label, and a registry with the test images.
struct Fleet {
    // Dropped first: agents stop acting before containers go.
    agents: Vec<Agent>,
    relay: Relay,
    docker: Vec<Containers>,
    _registry: Registry,
    api: Api,
    refs: HashMap<&'static str, String>,
    /// `rollout.app=<scope>`: the Docker label every `web` container carries.
    app_label: String,
    /// Full container names, by agent index.
    web: Vec<String>,
}

impl Fleet {
    /// Agents are enrolled in index order, so the last one is the newest; agent 0 carries
    /// `env=staging` besides `tier=build`.
    async fn new(test: &str, variants: &[&'static str]) -> Fleet {
        let img = images().await.clone();
        let variants = variants.to_vec();
        let (registry, refs) = tokio::task::spawn_blocking(move || {
            fixtures::registry_with_variants(&img, &variants, None)
        })
        .await
        .expect("registry thread")
        .expect("a local registry with the test images");
        let base = scope(test);
        let app_label = format!("rollout.app={base}");
        // Alerts evaluated every second, so rollout and update alerts show up at once.
        let relay = Relay::start_with_config("[alerts]\nevaluate_interval_secs = 1\n", &[]).await;
        let api = relay.api();
        let mut agents = Vec::new();
        let mut docker = Vec::new();
        let mut web = Vec::new();
        for i in 0..FLEET {
            let agent_scope = format!("{base}-{i}");
            let labels = if i == 0 {
                "tier=build,env=staging"
            } else {
                "tier=build"
            };
            let mut agent =
                Agent::enroll(&relay, &format!("{base}-a{i}"), labels, &agent_scope).await;
            let containers = Containers::new(&agent_scope).await;
            let mut labels = HashMap::new();
            labels.insert("rollout.app".to_string(), base.clone());
            let body = ContainerCreateBody {
                image: Some(refs["v1"].clone()),
                labels: Some(labels),
                host_config: Some(HostConfig {
                    restart_policy: Some(RestartPolicy {
                        name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                        maximum_retry_count: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            web.push(containers.create("web", body, true).await);
            docker.push(containers);
            agent.run().await;
            agents.push(agent);
        }
        for a in &agents {
            api.wait_online(&a.id, DEADLINE).await;
        }
        Fleet {
            agents,
            relay,
            docker,
            _registry: registry,
            api,
            refs,
            app_label,
            web,
        }
    }

    fn image(&self, variant: &str) -> String {
        self.refs[variant].clone()
    }

    /// A rollout of the app label to `variant` with second-scale timings.
    fn request(&self, variant: &str, stages: &str) -> CreateRollout {
        CreateRollout {
            name: Some(format!("web → {variant}")),
            selector: "tier=build".parse().unwrap(),
            container: None,
            container_label: Some(self.app_label.clone()),
            image: self.image(variant),
            stages: Some(stages.to_string()),
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
            allow_drift: false,
        }
    }

    async fn start(&self, req: &CreateRollout) -> RolloutInfo {
        self.api
            .post("/api/v1/rollouts", req)
            .await
            .unwrap_or_else(|e| panic!("start rollout: {e:#}"))
    }

    async fn rollout(&self, id: &str) -> RolloutInfo {
        self.api
            .get(&format!("/api/v1/rollouts/{id}"))
            .await
            .unwrap_or_else(|e| panic!("get rollout {id}: {e:#}"))
    }

    async fn wait_state(&self, id: &str, state: RolloutState) -> RolloutInfo {
        self.wait_for(id, &format!("rollout {id} to be {state}"), |r| {
            r.state == state
        })
        .await
    }

    async fn wait_for(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&RolloutInfo) -> bool,
    ) -> RolloutInfo {
        let pred = &pred;
        eventually(ROLLOUT_DEADLINE, what, || async move {
            let r = self.rollout(id).await;
            pred(&r).then_some(r)
        })
        .await
    }

    /// The image reference agent `i`'s `web` container runs (`Config.Image`).
    async fn web_image(&self, i: usize) -> String {
        let json = self.docker[i].inspect_json(&self.web[i]).await;
        json["Config"]["Image"]
            .as_str()
            .expect("Config.Image")
            .to_string()
    }

    /// The image id (`sha256:...`) agent `i`'s `web` container runs: a revert names the old
    /// image by digest, so the reference differs while the image is the same.
    async fn web_image_id(&self, i: usize) -> String {
        let json = self.docker[i].inspect_json(&self.web[i]).await;
        json["Image"].as_str().expect("Image").to_string()
    }

    /// The image id of a pushed variant (v1 is present locally).
    async fn image_id(&self, variant: &str) -> String {
        let json = self.docker[0]
            .inspect_image_json(&self.image(variant))
            .await;
        json["Id"].as_str().expect("Id").to_string()
    }

    /// Every update the relay recorded for agent `i`.
    async fn updates_of(&self, i: usize) -> Vec<UpdateRecord> {
        self.api
            .get(&format!("/api/v1/agents/{}/updates", self.agents[i].id))
            .await
            .expect("agent updates")
    }

    fn index_of(&self, agent_id: &str) -> usize {
        self.agents
            .iter()
            .position(|a| a.id == agent_id)
            .unwrap_or_else(|| panic!("agent {agent_id} is not in this fleet"))
    }
}

fn outcome_of(r: &RolloutInfo, agent_id: &str) -> Option<AgentOutcome> {
    r.agents
        .iter()
        .find(|a| a.agent_id == agent_id)
        .map(|a| a.outcome)
}

/// Fleet indexes of a stage's members, in the rollout's order.
fn stage_members(fleet: &Fleet, r: &RolloutInfo, stage: usize) -> Vec<usize> {
    let mut m: Vec<(u32, usize)> = r
        .agents
        .iter()
        .filter(|a| a.stage == stage)
        .map(|a| (a.position, fleet.index_of(&a.agent_id)))
        .collect();
    m.sort();
    m.into_iter().map(|(_, i)| i).collect()
}

fn actions(r: &RolloutInfo) -> Vec<String> {
    r.events.iter().map(|e| e.action.clone()).collect()
}

/// A healthy rollout through three stages with second-scale soaks: newest agents first, stage
/// sizes from the fleet's percentages, every container ends on v2 with one update each. One
/// agent is offline when its stage starts and comes back before the stage deadline (updated);
/// another stays offline (undelivered, not a failure). The CLI shows and lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthy_rollout_goes_through_every_stage_newest_first() {
    let mut fleet = Fleet::new("ro-healthy", &["v2"]).await;
    // Agent 1 stays offline; agent 2 is offline until the last stage has started.
    fleet.agents[1].kill().await;
    fleet.agents[2].kill().await;
    for i in [1, 2] {
        let id = fleet.agents[i].id.clone();
        fleet
            .api
            .wait_status(&id, flotilla_shared::api::AgentStatus::Offline, DEADLINE)
            .await;
    }
    let mut req = fleet.request("v2", "10%:2s,50%:2s,100%");
    req.parallelism = Some("3".parse().unwrap());
    req.stage_timeout_secs = Some(25);
    let started = fleet.start(&req).await;
    assert_eq!(started.state, RolloutState::Running);
    let id = started.id.clone();

    let last_stage = fleet
        .wait_for(&id, "the last stage to start", |r| r.stage == 2)
        .await;
    // The first two stages ran on the newest agents: 1 (10 % of 10) then 4 more (50 %).
    assert_eq!(stage_members(&fleet, &last_stage, 0), vec![9]);
    assert_eq!(stage_members(&fleet, &last_stage, 1), vec![8, 7, 6, 5]);
    fleet.agents[2].run().await;

    let done = fleet.wait_state(&id, RolloutState::Completed).await;
    let mut last = stage_members(&fleet, &done, 2);
    last.sort();
    assert_eq!(last, vec![0, 1, 2, 3, 4]);
    assert_eq!(
        outcome_of(&done, &fleet.agents[1].id),
        Some(AgentOutcome::Undelivered)
    );
    assert_eq!(done.counts.updated, 9, "{:#?}", done.counts);
    assert_eq!(done.counts.undelivered, 1, "{:#?}", done.counts);
    assert_eq!(done.counts.failed, 0, "{:#?}", done.counts);
    for i in 0..FLEET {
        if i == 1 {
            assert_eq!(fleet.web_image(i).await, fleet.image("v1"));
            assert!(fleet.updates_of(i).await.is_empty());
            continue;
        }
        assert_eq!(
            outcome_of(&done, &fleet.agents[i].id),
            Some(AgentOutcome::Updated),
            "agent {i}"
        );
        assert_eq!(fleet.web_image(i).await, fleet.image("v2"), "agent {i}");
        assert_eq!(fleet.updates_of(i).await.len(), 1, "agent {i}: one update");
    }
    // Every stage started, soaked (the first two for their 2 s) and the rollout completed.
    let acts = actions(&done);
    assert_eq!(
        acts.iter().filter(|a| *a == "stage_started").count(),
        3,
        "{acts:?}"
    );
    assert!(acts.contains(&"completed".to_string()), "{acts:?}");
    for stage in [0, 1] {
        let at = |action: &str| {
            done.events
                .iter()
                .find(|e| e.action == action && e.stage == Some(stage))
                .map(|e| e.at)
        };
        let soak = at("soak_started").expect("soak_started event");
        let next = done
            .events
            .iter()
            .find(|e| e.action == "stage_started" && e.stage == Some(stage + 1))
            .expect("next stage started")
            .at;
        assert!(
            next - soak >= chrono::Duration::seconds(2),
            "stage {stage} soaked {:?}",
            next - soak
        );
    }

    let out = cli(&fleet.relay, &["rollout", "status", &id]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("completed"), "{text}");
    assert!(
        text.contains(&fleet.agents[1].name) && text.contains("undelivered"),
        "{text}"
    );
    let out = cli(&fleet.relay, &["rollout", "list"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&id), "{text}");
}

/// The first canary's new image fails its health check: the agent rolls it back, the rollout
/// pauses at once, and no other agent is touched. An operator aborts it; the rest is skipped.
/// A conflicting rollout is refused while the first is paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_canary_pauses_and_the_fleet_is_untouched() {
    let fleet = Fleet::new("ro-pause", &["v2-unhealthy", "v2"]).await;
    let mut req = fleet.request("v2-unhealthy", "10%:2s,100%");
    req.health = Some("docker".parse().unwrap());
    let id = fleet.start(&req).await.id;
    let paused = fleet.wait_state(&id, RolloutState::Paused).await;
    let canary = fleet.index_of(&paused.agents[0].agent_id);
    assert_eq!(canary, FLEET - 1, "the newest agent is the first canary");
    assert_eq!(
        outcome_of(&paused, &fleet.agents[canary].id),
        Some(AgentOutcome::Failed)
    );
    assert!(paused.reason.is_some(), "{paused:#?}");
    assert_eq!(
        paused.agents.len(),
        1,
        "only the canary's stage has members"
    );
    // The canary runs v1 again (the agent rolled back); nobody else got an update.
    assert_eq!(fleet.web_image(canary).await, fleet.image("v1"));
    let fleet_updates: Vec<UpdateRecord> = fleet.api.get("/api/v1/updates").await.unwrap();
    assert_eq!(fleet_updates.len(), 1, "{fleet_updates:#?}");
    for i in 0..FLEET - 1 {
        assert_eq!(fleet.web_image(i).await, fleet.image("v1"), "agent {i}");
    }

    // A hard alert for the paused rollout, a medium one for the canary's rolled-back update.
    let firing = |rule: &'static str| {
        let api = fleet.api.clone();
        async move {
            let list: Vec<AlertInfo> = api
                .get("/api/v1/alerts?state=firing")
                .await
                .expect("alerts");
            list.into_iter().find(|a| a.rule == rule)
        }
    };
    let paused_alert = eventually(DEADLINE, "a rollout_paused alert", || {
        firing("rollout_paused")
    })
    .await;
    assert_eq!(paused_alert.severity, Severity::Hard);
    assert_eq!(paused_alert.subject, id);
    let rolled_back = eventually(DEADLINE, "an update_rolled_back alert", || {
        firing("update_rolled_back")
    })
    .await;
    assert_eq!(rolled_back.severity, Severity::Medium);
    assert_eq!(
        rolled_back.agent_id.as_deref(),
        Some(fleet.agents[canary].id.as_str())
    );

    // Same target, overlapping selector: refused while the first is not finished.
    let err = fleet
        .api
        .post::<_, RolloutInfo>("/api/v1/rollouts", &fleet.request("v2", "100%"))
        .await
        .expect_err("a conflicting rollout must be refused");
    assert!(format!("{err:#}").contains(&id), "{err:#}");

    let out = cli(&fleet.relay, &["rollout", "abort", &id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let aborted = fleet.wait_state(&id, RolloutState::Aborted).await;
    assert!(actions(&aborted).contains(&"paused".to_string()));
    assert!(actions(&aborted).contains(&"aborted".to_string()));
    eventually(DEADLINE, "a rollout_aborted alert", || {
        firing("rollout_aborted")
    })
    .await;
    assert!(aborted
        .events
        .iter()
        .any(|e| e.action == "aborted" && e.actor != "relay"));
    assert_eq!(
        fleet
            .api
            .get::<Vec<UpdateRecord>>("/api/v1/updates")
            .await
            .unwrap()
            .len(),
        1
    );
    // Finished: a new rollout of the same target may start now.
    let next = fleet.start(&fleet.request("v2", "100%")).await;
    assert_eq!(next.state, RolloutState::Running);
}

/// The canaries pass their update's health gate but crash during the soak: the failure action
/// `revert` puts every updated canary back on its previous image; the rest is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_failure_reverts_the_canaries() {
    let fleet = Fleet::new("ro-revert", &["v2-crash-later"]).await;
    let mut req = fleet.request("v2-crash-later", "20%:60s,100%");
    req.parallelism = Some("2".parse().unwrap());
    req.on_failure = Some("revert".parse().unwrap());
    let id = fleet.start(&req).await.id;
    let done = fleet.wait_state(&id, RolloutState::Reverted).await;
    let canaries: Vec<usize> = done
        .agents
        .iter()
        .map(|a| fleet.index_of(&a.agent_id))
        .collect();
    assert_eq!(canaries.len(), 2, "{done:#?}");
    assert!(
        actions(&done).contains(&"revert_started".to_string()),
        "{:?}",
        actions(&done)
    );
    for &i in &canaries {
        assert_eq!(
            outcome_of(&done, &fleet.agents[i].id),
            Some(AgentOutcome::Reverted),
            "{done:#?}"
        );
        assert_eq!(
            fleet.web_image_id(i).await,
            fleet.image_id("v1").await,
            "canary {i} runs v1 again"
        );
        assert!(
            fleet.web_image(i).await.contains("@sha256:"),
            "a revert names the previous image by digest"
        );
        // The update, then the revert.
        assert_eq!(fleet.updates_of(i).await.len(), 2, "canary {i}");
        let running = fleet.docker[i].running(&fleet.web[i]).await;
        assert!(running, "canary {i} runs again on v1");
    }
    for i in (0..FLEET).filter(|i| !canaries.contains(i)) {
        assert_eq!(fleet.web_image(i).await, fleet.image("v1"), "agent {i}");
        assert!(fleet.updates_of(i).await.is_empty(), "agent {i}");
    }
}

/// The relay is SIGKILLed during a soak and again while the next stage dispatches: it resumes
/// where it was (the soak keeps its absolute end), and no agent is updated twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_restart_mid_rollout_resumes_without_double_updates() {
    let mut fleet = Fleet::new("ro-restart", &["v2"]).await;
    let mut req = fleet.request("v2", "30%:6s,100%");
    req.parallelism = Some("2".parse().unwrap());
    let id = fleet.start(&req).await.id;
    let soaking = fleet
        .wait_for(&id, "stage 0 to soak", |r| {
            r.stage == 0 && r.soak_ends_at.is_some() && r.counts.updated == 3
        })
        .await;
    let soak_ends = soaking.soak_ends_at.unwrap();
    fleet.relay.restart().await;
    let in_stage_1 = fleet
        .wait_for(&id, "stage 1 to dispatch", |r| {
            r.stage == 1 && r.counts.updated >= 4
        })
        .await;
    // The soak was not cut short by the restart.
    let stage_1_started = in_stage_1
        .events
        .iter()
        .find(|e| e.action == "stage_started" && e.stage == Some(1))
        .expect("stage 1 started")
        .at;
    assert!(
        stage_1_started >= soak_ends,
        "{stage_1_started} < {soak_ends}"
    );
    fleet.relay.restart().await;
    let done = fleet.wait_state(&id, RolloutState::Completed).await;
    assert_eq!(done.counts.updated as usize, FLEET, "{:#?}", done.counts);
    for i in 0..FLEET {
        let ups = fleet.updates_of(i).await;
        assert_eq!(ups.len(), 1, "agent {i} updated exactly once: {ups:#?}");
        assert_eq!(fleet.web_image(i).await, fleet.image("v2"), "agent {i}");
    }
}
