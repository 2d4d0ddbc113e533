//! `container.update` against the real engine and a real local registry: a healthy update keeps
//! the container's name, configuration and data; every kind of failing new image rolls back to
//! the old container; failed pulls and refusals change nothing; a SIGKILLed agent converges from
//! its journal; and the CLI drives it.
//!
//! Every test pushes the images it needs to its own registry and creates its containers from
//! `127.0.0.1:PORT/flotilla-testapp:v1`, so the agent's default image policy (the registry of the
//! container's current image) allows the update and the agent really pulls (the other tags are
//! removed locally after the push).

use crate::{images, DEADLINE};
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HealthConfig, HostConfig,
    HostConfigLogConfig, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::Docker;
use flotilla_shared::api::{EventRecord, UpdateRecord};
use flotilla_shared::heartbeat::EventKind;
use flotilla_shared::update::{
    UpdateOutcome, UpdatePhase, UpdateStrategy, BACKUP_NAME_MARKER, NEW_NAME_MARKER, UPDATE_LABEL,
};
use flotilla_tests::fixtures::{self, Registry, VARIANT_LABEL};
use flotilla_tests::harness::{
    cli, docker_cli, eventually, free_port, scope, update_args, Agent, Api, Containers, Relay,
    UpdateResult, SCOPE_LABEL, UPDATE_PAUSE_ENV,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upper bound for one update to reach its final result (pull, stop, start, health gate,
/// stability window, maybe a rollback with its own gate): tests poll and return at once.
const UPDATE_DEADLINE: Duration = Duration::from_secs(120);
/// Repository of the test images in each test's registry.
const REPO: &str = "flotilla-testapp";
/// Where the testapp records its starts inside the test containers (a named volume).
const DATA_FILE: &str = "/data/starts";

// === setup ===

/// One test's world: a relay, an enrolled agent (not necessarily running), the test's
/// containers, and a registry holding the images the test asked for.
struct Setup {
    // Dropped in this order: the agent stops acting before its containers are removed.
    agent: Agent,
    relay: Relay,
    docker: Containers,
    registry: Registry,
    api: Api,
    /// Registry references by variant (`v1`, `v2`, `v2-health`, ...). Only `v1` has a local tag.
    refs: HashMap<&'static str, String>,
}

impl Setup {
    /// Starts a registry (with credentials when `auth` is set), pushes `variants` (always v1,
    /// which keeps its local tag), starts a relay and enrolls an agent without running it.
    async fn new(test: &str, variants: &[&'static str], auth: Option<(&str, &str)>) -> Setup {
        let img = images().await.clone();
        let auth = auth.map(|(u, p)| (u.to_string(), p.to_string()));
        let variants = variants.to_vec();
        let (registry, refs) = tokio::task::spawn_blocking(move || {
            let auth = auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            fixtures::registry_with_variants(&img, &variants, auth)
        })
        .await
        .expect("registry thread")
        .expect("a local registry with the test images");
        let scope = scope(test);
        let docker = Containers::new(&scope).await;
        let relay = Relay::start().await;
        let agent = Agent::enroll(&relay, "host-a", "", &scope).await;
        let api = relay.api();
        Setup {
            agent,
            relay,
            docker,
            registry,
            api,
            refs,
        }
    }

    fn image(&self, variant: &str) -> String {
        self.refs
            .get(variant)
            .unwrap_or_else(|| panic!("variant {variant} was not pushed in this test"))
            .clone()
    }

    /// Runs the agent and waits until it is online.
    async fn run_agent(&mut self) {
        self.agent.run().await;
        self.api.wait_online(&self.agent.id, DEADLINE).await;
    }

    /// The standard container: from v1 in this test's registry, a named volume on /data where
    /// the testapp records its starts, user env `FOO=bar`, restart policy unless-stopped, a user
    /// label; plus whatever `extra` sets. Waits until v1 recorded its start in the volume.
    async fn web(&self, extra: ContainerCreateBody) -> Web {
        self.web_with(extra, serde_json::Map::new()).await
    }

    /// [`Setup::web`] with raw fields for the engine (see [`Containers::create_with`]).
    async fn web_with(
        &self,
        extra: ContainerCreateBody,
        raw: serde_json::Map<String, Value>,
    ) -> Web {
        let volume = self.docker.volume("data").await;
        let mut labels = extra.labels.clone().unwrap_or_default();
        labels.insert("app".into(), "web".into());
        let mut env = vec!["FOO=bar".to_string(), format!("APP_DATA_FILE={DATA_FILE}")];
        env.extend(extra.env.clone().unwrap_or_default());
        let mut host_config = extra.host_config.clone().unwrap_or_default();
        host_config
            .binds
            .get_or_insert_with(Vec::new)
            .push(format!("{volume}:/data"));
        if host_config.restart_policy.is_none() {
            host_config.restart_policy = Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            });
        }
        let body = ContainerCreateBody {
            image: Some(self.image("v1")),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(host_config),
            ..extra
        };
        let name = self.docker.create_with("web", body, raw, true).await;
        let web = Web {
            data: self.docker.volume_dir(&volume).await.join("starts"),
            name,
            volume,
        };
        eventually(DEADLINE, "v1 to record its start in the volume", || async {
            (web.data_lines() == ["v1 started"]).then_some(())
        })
        .await;
        web
    }

    /// The container's inspect with the inspect of its image (for telling image defaults apart).
    async fn snapshot(&self, name: &str) -> Snapshot {
        let container = self.docker.inspect_json(name).await;
        let image_id = container["Image"].as_str().expect("Image").to_string();
        let image = self.docker.inspect_image_json(&image_id).await;
        Snapshot { container, image }
    }

    /// Every container of this test whose name is `name` or one of its update names (backup,
    /// start-first temporary), with its state.
    async fn family(&self, name: &str) -> Vec<Member> {
        family_of(&self.docker, name).await
    }

    /// After an update ended: exactly one container named `name` exists and runs `image`, no
    /// backup or temporary container is left, and the volume still holds v1's first start.
    async fn assert_converged(&self, web: &Web, image: &str, result: &UpdateResult) {
        let family = self.family(&web.name).await;
        let named: Vec<&Member> = family.iter().filter(|m| m.name == web.name).collect();
        assert_eq!(
            named.len(),
            1,
            "exactly one container named {} must exist after {:?}: {family:#?}\nreport: {:#?}",
            web.name,
            result.report.outcome,
            result.report
        );
        assert!(
            named[0].running,
            "{} must run after outcome {:?}: {family:#?}\nreport: {:#?}",
            web.name, result.report.outcome, result.report
        );
        assert_eq!(
            named[0].image, image,
            "{} must run {image} after outcome {:?}\nreport: {:#?}",
            web.name, result.report.outcome, result.report
        );
        assert_eq!(
            family.len(),
            1,
            "no backup or temporary container may be left after outcome {:?}: {family:#?}",
            result.report.outcome
        );
        self.assert_volume_intact(web).await;
    }

    async fn assert_volume_intact(&self, web: &Web) {
        self.docker
            .docker
            .inspect_volume(&web.volume)
            .await
            .unwrap_or_else(|e| panic!("the volume {} must still exist: {e}", web.volume));
        let lines = web.data_lines();
        assert_eq!(
            lines.first().map(String::as_str),
            Some("v1 started"),
            "the volume's data must survive: {lines:?}"
        );
    }
}

/// The standard test container.
struct Web {
    name: String,
    volume: String,
    /// The data file on the host (inside the volume's mountpoint).
    data: PathBuf,
}

impl Web {
    /// The lines the testapp wrote to the volume: one `<version> started` per container start.
    fn data_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.data)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

#[derive(Clone, Debug)]
struct Member {
    id: String,
    name: String,
    /// `Config.Image`: the reference the container was created from.
    image: String,
    running: bool,
    update_label: Option<String>,
}

/// Names of the containers of `scope` related to `name` (itself, its backup, its start-first
/// temporary), running ones only unless `all`.
async fn family_names(docker: &Docker, scope: &str, name: &str, all: bool) -> Vec<String> {
    let mut filters = HashMap::new();
    filters.insert("label".to_string(), vec![format!("{SCOPE_LABEL}={scope}")]);
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(all)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(opts))
        .await
        .expect("list containers")
        .into_iter()
        .filter_map(|c| {
            let n = c
                .names
                .as_ref()?
                .first()?
                .trim_start_matches('/')
                .to_string();
            (n == name
                || n.starts_with(&format!("{name}{BACKUP_NAME_MARKER}"))
                || n.starts_with(&format!("{name}{NEW_NAME_MARKER}")))
            .then_some(n)
        })
        .collect()
}

async fn family_of(docker: &Containers, name: &str) -> Vec<Member> {
    let mut members = Vec::new();
    for n in family_names(&docker.docker, &docker.scope, name, true).await {
        // Gone between the list and the inspect: an update is moving things; not a member now.
        let Ok(c) = docker.docker.inspect_container(&n, None).await else {
            continue;
        };
        let config = c.config.unwrap_or_default();
        members.push(Member {
            id: c.id.unwrap_or_default(),
            name: n,
            image: config.image.unwrap_or_default(),
            running: c.state.and_then(|s| s.running) == Some(true),
            update_label: config.labels.and_then(|l| l.get(UPDATE_LABEL).cloned()),
        });
    }
    members
}

/// Watches a container's family while an update runs and remembers the most members seen
/// running at once (stop-first must never run two).
struct RunningWatch {
    stop: Arc<AtomicBool>,
    max_running: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningWatch {
    fn start(docker: &Containers, name: &str) -> RunningWatch {
        let (client, scope, name) = (
            docker.docker.clone(),
            docker.scope.clone(),
            name.to_string(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let max_running = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, max_running, seen) = (stop.clone(), max_running.clone(), seen.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    let running = family_names(&client, &scope, &name, false).await;
                    if running.len() > max_running.load(Ordering::SeqCst) {
                        max_running.store(running.len(), Ordering::SeqCst);
                        *seen.lock().unwrap() = running;
                    }
                    flotilla_testkit::hold(
                        Duration::from_millis(100),
                        "the watch samples the running containers",
                    )
                    .await;
                }
            }
        });
        RunningWatch {
            stop,
            max_running,
            seen,
            task,
        }
    }

    /// Stops watching and panics if two members ever ran at once.
    async fn assert_never_both_running(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("watch task");
        let max = self.max_running.load(Ordering::SeqCst);
        assert!(
            max <= 1,
            "the old and the new container ran at the same time: {:?}",
            self.seen.lock().unwrap()
        );
    }
}

// === inspect comparison ===

/// A container's inspect and its image's.
struct Snapshot {
    container: Value,
    image: Value,
}

impl Snapshot {
    fn id(&self) -> &str {
        self.container["Id"].as_str().expect("Id")
    }

    fn config_image(&self) -> &str {
        self.container["Config"]["Image"]
            .as_str()
            .expect("Config.Image")
    }

    fn env(&self) -> Vec<String> {
        strings(&self.container["Config"]["Env"])
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.container["Config"]["Labels"][key].as_str()
    }

    /// The configuration a user gave the container: the inspect minus runtime state, minus what
    /// the engine derives per container (ids, paths, dynamic addresses, the short-id alias),
    /// minus values that are just its image's defaults, minus the update's own label.
    fn user_config(&self) -> Value {
        let mut c = self.container.clone();
        let id = self.id().to_string();
        let short = &id[..12];
        let obj = c.as_object_mut().expect("inspect is an object");
        for k in [
            "Id",
            "Created",
            "Image",
            "State",
            "ResolvConfPath",
            "HostnamePath",
            "HostsPath",
            "LogPath",
            "RestartCount",
            "GraphDriver",
            "SizeRw",
            "SizeRootFs",
            "ExecIDs",
        ] {
            obj.remove(k);
        }
        let image_config = &self.image["Config"];
        if let Some(config) = obj.get_mut("Config").and_then(Value::as_object_mut) {
            config.remove("Image");
            if config.get("Hostname").and_then(Value::as_str) == Some(short) {
                config.remove("Hostname");
            }
            // Values equal to the image's are image defaults, not the user's.
            for k in [
                "Cmd",
                "Entrypoint",
                "WorkingDir",
                "User",
                "Healthcheck",
                "Volumes",
                "ExposedPorts",
                "StopSignal",
                "OnBuild",
                "Shell",
            ] {
                if config.get(k) == image_config.get(k)
                    || config.get(k).is_some_and(Value::is_null) && image_config.get(k).is_none()
                {
                    config.remove(k);
                }
            }
            let image_env = strings(&image_config["Env"]);
            let mut env: Vec<String> = strings(&config["Env"])
                .into_iter()
                .filter(|e| !image_env.contains(e))
                .collect();
            env.sort();
            config.insert("Env".into(), env.into());
            if let Some(labels) = config.get_mut("Labels").and_then(Value::as_object_mut) {
                labels.retain(|k, v| k != UPDATE_LABEL && image_config["Labels"].get(k) != Some(v));
            }
        }
        if let Some(ns) = obj
            .get_mut("NetworkSettings")
            .and_then(Value::as_object_mut)
        {
            // Runtime, and the legacy mirror of the default bridge endpoint; port bindings are
            // compared through HostConfig.PortBindings.
            ns.retain(|k, _| k == "Networks");
            if let Some(nets) = ns.get_mut("Networks").and_then(Value::as_object_mut) {
                for ep in nets.values_mut() {
                    let Some(ep) = ep.as_object_mut() else {
                        continue;
                    };
                    let static_ip = ep["IPAMConfig"]["IPv4Address"]
                        .as_str()
                        .is_some_and(|s| !s.is_empty());
                    ep.remove("EndpointID");
                    if !static_ip {
                        for k in ["IPAddress", "MacAddress"] {
                            ep.remove(k);
                        }
                    }
                    if ep["GlobalIPv6Address"].as_str() == Some("") {
                        ep.remove("GlobalIPv6Address");
                    }
                    if let Some(aliases) = ep.get_mut("Aliases").and_then(Value::as_array_mut) {
                        aliases.retain(|a| a.as_str() != Some(short));
                    }
                    // `docker network connect` stores empty settings as {} where a create
                    // stores null: the same configuration.
                    for k in ["Aliases", "Links", "IPAMConfig", "DriverOpts"] {
                        let empty = match ep.get(k) {
                            Some(Value::Object(o)) => o.is_empty(),
                            Some(Value::Array(a)) => a.is_empty(),
                            _ => false,
                        };
                        if empty {
                            ep.insert(k.into(), Value::Null);
                        }
                    }
                }
            }
        }
        c
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Where two JSON documents differ, one line per path.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let null = Value::Null;
                diff(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a != b => out.push(format!("{path}: before {a} / after {b}")),
        _ => {}
    }
}

/// Panics listing every difference between two containers' user configuration.
fn assert_same_config(before: &Snapshot, after: &Snapshot, what: &str) {
    let mut out = Vec::new();
    diff("", &before.user_config(), &after.user_config(), &mut out);
    assert!(
        out.is_empty(),
        "{what}: the configuration changed ({} differences):\n  {}",
        out.len(),
        out.join("\n  ")
    );
}

// === report checks ===

fn assert_report_basics(r: &UpdateResult, container: &str, image: &str, before: &Snapshot) {
    let report = &r.report;
    assert_eq!(report.container, container, "{report:#?}");
    assert_eq!(report.image, image, "{report:#?}");
    assert_eq!(
        report.old_container_id.as_deref(),
        Some(before.id()),
        "{report:#?}"
    );
    assert_eq!(
        report.old_image_id.as_deref(),
        before.container["Image"].as_str(),
        "{report:#?}"
    );
    assert!(report.total_ms > 0, "{report:#?}");
    assert!(!report.timings.is_empty(), "timings: {report:#?}");
}

/// How the new container of a rollback case fails.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Its health check reports unhealthy: the gate fails before any stability window.
    Unhealthy,
    /// It passes its health check, then exits inside the stability window.
    ExitsInWindow,
}

/// The rollback cases: v1 → `variant` fails its gate, and the old container runs again.
async fn rolls_back(
    test: &str,
    variant: &'static str,
    health: &str,
    stable: u32,
    failure: Failure,
    log: &str,
) {
    let mut s = Setup::new(test, &[variant], None).await;
    s.run_agent().await;
    let web = s.web(ContainerCreateBody::default()).await;
    let before = s.snapshot(&web.name).await;
    let image = s.image(variant);
    let watch = RunningWatch::start(&s.docker, &web.name);
    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&web.name, &image, health, stable),
            UPDATE_DEADLINE,
        )
        .await;
    watch.assert_never_both_running().await;
    r.assert_outcome(UpdateOutcome::RolledBack);
    assert_report_basics(&r, &web.name, &image, &before);
    let report = &r.report;
    assert!(report.old_stopped, "{report:#?}");
    assert!(report.reason.is_some(), "a rollback says why: {report:#?}");
    let evidence = report
        .health_evidence
        .as_ref()
        .unwrap_or_else(|| panic!("the failed gate's evidence: {report:#?}"));
    assert!(!evidence.passed, "{report:#?}");
    assert!(!evidence.detail.is_empty(), "{report:#?}");
    match failure {
        Failure::Unhealthy => assert!(
            evidence.stable_ms == 0 && evidence.detail.contains("unhealthy"),
            "the health check itself failed, reporting unhealthy: {evidence:#?}"
        ),
        Failure::ExitsInWindow => assert!(
            evidence.stable_ms > 0 && evidence.stable_ms < u64::from(stable) * 1000,
            "the check passed, then the container failed inside the {stable} s stability \
             window: {evidence:#?}"
        ),
    }
    let back = report
        .rollback_health_evidence
        .as_ref()
        .unwrap_or_else(|| panic!("the old container's gate after the rollback: {report:#?}"));
    assert!(back.passed, "{report:#?}");
    assert!(
        !report.failed_logs.is_empty() && report.failed_logs.len() <= 100,
        "the failed container's last log lines: {report:#?}"
    );
    assert!(
        report.failed_logs.iter().any(|l| l.contains(log)),
        "the failed container's logs must contain {log:?}: {:#?}",
        report.failed_logs
    );
    assert!(r.timing_ms("rollback").is_some(), "{report:#?}");

    // The old container itself runs again: same id, same configuration, same data.
    s.assert_converged(&web, &s.image("v1"), &r).await;
    let after = s.snapshot(&web.name).await;
    assert_eq!(
        after.id(),
        before.id(),
        "the old container is restored, not recreated"
    );
    assert_same_config(&before, &after, "after the rollback");
    let lines = web.data_lines();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("v1 started"),
        "v1 started again on the same volume: {lines:?}"
    );
    // The failed new container is gone.
    let leftover: Vec<Member> = s
        .family(&web.name)
        .await
        .into_iter()
        .filter(|m| m.update_label.is_some())
        .collect();
    assert!(leftover.is_empty(), "{leftover:#?}");
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_update_keeps_name_config_and_data() {
    let mut s = Setup::new("upd-ok", &["v2-health"], None).await;
    s.run_agent().await;
    let web = s.web(ContainerCreateBody::default()).await;
    let before = s.snapshot(&web.name).await;
    let image = s.image("v2-health");
    let watch = RunningWatch::start(&s.docker, &web.name);
    let t = Instant::now();
    let id = s
        .api
        .start_update(&s.agent.id, update_args(&web.name, &image, "auto", 2))
        .await;
    let r = s.api.wait_update(&id, UPDATE_DEADLINE).await;
    println!(
        "v1 → v2-health updated in {:.2}s (report total {} ms)",
        t.elapsed().as_secs_f64(),
        r.report.total_ms
    );
    watch.assert_never_both_running().await;
    r.assert_outcome(UpdateOutcome::Updated);
    assert_report_basics(&r, &web.name, &image, &before);
    let report = &r.report;
    assert_eq!(report.phase, UpdatePhase::Done, "{report:#?}");
    assert!(
        report.old_stopped,
        "stop-first stops the old one: {report:#?}"
    );
    assert!(!report.recovered, "{report:#?}");
    assert!(
        report.reason.is_none() && report.failed_logs.is_empty(),
        "{report:#?}"
    );

    // The new container: same name, the new image, carrying the update's label.
    let after = s.snapshot(&web.name).await;
    assert_ne!(after.id(), before.id(), "a new container");
    assert_eq!(report.new_container_id.as_deref(), Some(after.id()));
    assert_eq!(after.config_image(), image);
    assert_eq!(
        report.new_image_id.as_deref(),
        after.container["Image"].as_str(),
        "{report:#?}"
    );
    assert_eq!(after.label(UPDATE_LABEL), Some(id.as_str()));
    let digest = tokio::task::block_in_place(|| s.registry.manifest_digest(REPO, "v2-health"))
        .expect("registry digest of v2-health");
    assert!(
        report
            .new_image_digest
            .as_deref()
            .is_some_and(|d| d.ends_with(&digest)),
        "new_image_digest {:?} must name the registry's manifest {digest}",
        report.new_image_digest
    );
    // The image's HEALTHCHECK was the gate (auto → docker), then the stability window.
    let evidence = report.health_evidence.as_ref().expect("health evidence");
    assert_eq!(evidence.method, "docker", "{evidence:#?}");
    assert!(evidence.passed, "{evidence:#?}");
    assert!(
        evidence.stable_ms >= 2000,
        "the 2 s stability window was observed: {evidence:#?}"
    );
    for phase in ["pull", "stop_old", "start", "health", "stable"] {
        assert!(
            r.timing_ms(phase).is_some(),
            "timing {phase} missing: {:?}",
            report.timings
        );
    }

    // Exactly the old configuration, and the data in the named volume.
    s.assert_converged(&web, &image, &r).await;
    assert_same_config(&before, &after, "after the update");
    assert_eq!(web.data_lines(), ["v1 started", "v2-health started"]);

    // Progress events reached the relay, and the old container's stop is marked as the
    // update's doing (so alerts can be suppressed).
    let has = |events: &[EventRecord], kind: EventKind, key: &str, value: &str| {
        events.iter().any(|e| {
            e.event.kind == kind && e.event.attributes.get(key).map(String::as_str) == Some(value)
        })
    };
    let waited = flotilla_testkit::Poller::new(DEADLINE).every(Duration::from_millis(200));
    let events = loop {
        let events = s.api.events(&s.agent.id).await;
        let done = has(&events, EventKind::ContainerUpdate, "outcome", "updated")
            && has(&events, EventKind::ContainerDied, "updating", &id);
        if done || waited.expired() {
            break events;
        }
        waited.pause().await;
    };
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| {
            e.event.kind == EventKind::ContainerUpdate
                && e.event.attributes.get("command_id") == Some(&id)
        })
        .filter_map(|e| e.event.attributes.get("phase").map(String::as_str))
        .collect();
    assert!(
        phases.contains(&"pulling") && phases.contains(&"health_gate"),
        "progress phases of {id}: {phases:?}\nevents: {events:#?}"
    );
    assert!(
        has(&events, EventKind::ContainerUpdate, "outcome", "updated"),
        "a final container.update event with outcome=updated: {events:#?}"
    );
    assert!(
        has(&events, EventKind::ContainerDied, "updating", &id),
        "the old container's death carries updating={id}: {events:#?}"
    );
    // The relay's update history has it.
    let history: Vec<UpdateRecord> = s
        .api
        .get(&format!("/api/v1/agents/{}/updates", s.agent.id))
        .await
        .expect("update history");
    let rec = history
        .iter()
        .find(|h| h.command_id == id)
        .unwrap_or_else(|| panic!("update {id} in the history: {history:#?}"));
    assert!(!rec.active, "{rec:#?}");
    assert_eq!(rec.outcome, Some(UpdateOutcome::Updated), "{rec:#?}");
    assert_eq!(rec.container_name.as_deref(), Some(web.name.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_ip_networks_ports_compose_labels_and_limits_are_kept() {
    let mut s = Setup::new("upd-net", &["v2"], None).await;
    s.run_agent().await;
    let (net, prefix) = s.docker.network_with_free_subnet("net").await;
    let other = s.docker.network("other", None).await;
    let ip = format!("{prefix}.10");
    let port = free_port();
    let mac = format!("02:42:0a:{:02x}:00:0a", port % 256);
    let mut endpoints = HashMap::new();
    endpoints.insert(
        net.clone(),
        EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some(ip.clone()),
                ..Default::default()
            }),
            aliases: Some(vec!["web-alias".into()]),
            ..Default::default()
        },
    );
    let mut bindings = HashMap::new();
    bindings.insert(
        format!("{}/tcp", fixtures::TESTAPP_PORT),
        Some(vec![PortBinding {
            host_ip: Some("127.0.0.1".into()),
            host_port: Some(port.to_string()),
        }]),
    );
    let mut labels = HashMap::new();
    for (k, v) in [
        ("com.docker.compose.project", s.docker.scope.as_str()),
        ("com.docker.compose.service", "web"),
        ("com.docker.compose.container-number", "1"),
        ("com.docker.compose.oneoff", "False"),
    ] {
        labels.insert(k.to_string(), v.to_string());
    }
    let mut log_opts = HashMap::new();
    log_opts.insert("max-size".to_string(), "1m".to_string());
    log_opts.insert("max-file".to_string(), "2".to_string());
    let body = ContainerCreateBody {
        hostname: Some("web-host".into()),
        labels: Some(labels),
        env: Some(vec!["APP_LOG_LINES=3".into()]),
        healthcheck: Some(HealthConfig {
            test: Some(images().await.healthcheck_cmd()),
            interval: Some(1_000_000_000),
            timeout: Some(2_000_000_000),
            retries: Some(3),
            start_period: Some(0),
            ..Default::default()
        }),
        host_config: Some(HostConfig {
            network_mode: Some(net.clone()),
            port_bindings: Some(bindings),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: Some(3),
            }),
            memory: Some(64 * 1024 * 1024),
            cpu_shares: Some(512),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(log_opts),
            }),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(endpoints),
        }),
        ..Default::default()
    };
    // The engine's API 1.41 sets a MAC address in the container config (newer client models
    // moved it to the endpoint).
    let mut raw = serde_json::Map::new();
    raw.insert("MacAddress".into(), Value::String(mac.clone()));
    let web = s.web_with(body, raw).await;
    // A second network with its own alias, connected after creation like `docker network
    // connect`; the container runs on both.
    docker_cli(&[
        "network",
        "connect",
        "--alias",
        "second-alias",
        &other,
        &web.name,
    ])
    .await
    .expect("connect the second network");
    let before = s.snapshot(&web.name).await;
    let addr = format!("127.0.0.1:{port}");
    let version = |addr: String| async move {
        tokio::task::spawn_blocking(move || fixtures::http_get(&addr, "/"))
            .await
            .unwrap()
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.body)
    };
    let body = eventually(DEADLINE, "v1 answering on the published port", || {
        version(addr.clone())
    })
    .await;
    assert!(body.contains("\"v1\""), "{body}");

    let image = s.image("v2");
    let r = s
        .api
        .update(
            &s.agent.id,
            // The compose labels above are hand-made (no project files to edit): the update
            // goes ahead for the container only, and reports the drift.
            flotilla_shared::update::ContainerUpdateArgs {
                allow_drift: true,
                ..update_args(&web.name, &image, "auto", 2)
            },
            UPDATE_DEADLINE,
        )
        .await;
    r.assert_outcome(UpdateOutcome::Updated);
    // The container's own HEALTHCHECK (v2 has none) is what `auto` used.
    let evidence = r.report.health_evidence.as_ref().expect("evidence");
    assert_eq!(evidence.method, "docker", "{evidence:#?}");
    s.assert_converged(&web, &image, &r).await;
    let after = s.snapshot(&web.name).await;
    assert_same_config(&before, &after, "after the update");
    let ep = &after.container["NetworkSettings"]["Networks"][&net];
    assert_eq!(
        ep["IPAddress"].as_str(),
        Some(ip.as_str()),
        "static address: {ep:#}"
    );
    assert_eq!(ep["MacAddress"].as_str(), Some(mac.as_str()), "{ep:#}");
    assert!(
        strings(&ep["Aliases"]).contains(&"web-alias".to_string()),
        "{ep:#}"
    );
    let ep2 = &after.container["NetworkSettings"]["Networks"][&other];
    assert!(
        strings(&ep2["Aliases"]).contains(&"second-alias".to_string()),
        "the second network with its alias: {:#}",
        after.container["NetworkSettings"]["Networks"]
    );
    for k in ["com.docker.compose.project", "com.docker.compose.service"] {
        assert_eq!(after.label(k), before.label(k), "{k}");
    }
    assert_eq!(
        after.container["HostConfig"]["RestartPolicy"],
        serde_json::json!({"Name": "on-failure", "MaximumRetryCount": 3})
    );
    let body = eventually(DEADLINE, "v2 answering on the same published port", || {
        version(addr.clone())
    })
    .await;
    assert!(body.contains("\"v2\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_env_and_label_defaults_follow_the_new_image() {
    let mut s = Setup::new("upd-env", &["v2"], None).await;
    s.run_agent().await;
    let web = s.web(ContainerCreateBody::default()).await;
    // A second container whose user pinned a variable the image also sets.
    let pinned = s
        .docker
        .run(
            "pinned",
            &s.image("v1"),
            &["APP_VERSION=pinned", "BAR=baz"],
            &[("team", "blue")],
            true,
        )
        .await;
    let image = s.image("v2");
    for name in [&web.name, &pinned] {
        let r = s
            .api
            .update(
                &s.agent.id,
                update_args(name, &image, "running", 1),
                UPDATE_DEADLINE,
            )
            .await;
        r.assert_outcome(UpdateOutcome::Updated);
    }
    let after = s.snapshot(&web.name).await;
    let env = after.env();
    assert!(
        env.contains(&"APP_VERSION=v2".to_string()),
        "new image default: {env:?}"
    );
    assert!(
        !env.contains(&"APP_VERSION=v1".to_string()),
        "old default gone: {env:?}"
    );
    assert!(
        env.contains(&"FOO=bar".to_string()),
        "user env kept: {env:?}"
    );
    assert_eq!(
        after.label(VARIANT_LABEL),
        Some("v2"),
        "image label from v2"
    );
    assert_eq!(
        after.container["Config"]["Labels"][fixtures::BUILD_LABEL],
        after.image["Config"]["Labels"][fixtures::BUILD_LABEL],
        "v1's build label must not survive"
    );
    assert_eq!(after.label("app"), Some("web"), "user label kept");
    assert_eq!(web.data_lines(), ["v1 started", "v2 started"]);

    let after = s.snapshot(&pinned).await;
    let env = after.env();
    assert!(
        env.contains(&"APP_VERSION=pinned".to_string()) && env.contains(&"BAR=baz".to_string()),
        "what the user set wins over either image's default: {env:?}"
    );
    assert_eq!(after.label("team"), Some("blue"));
    assert_eq!(after.label(VARIANT_LABEL), Some("v2"));
    let logs = eventually(DEADLINE, "the pinned container's start line", || async {
        let logs = docker_cli(&["logs", &pinned]).await.ok()?;
        logs.contains("testapp pinned listening").then_some(logs)
    })
    .await;
    assert!(!logs.contains("testapp v2 listening"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_new_image_rolls_back() {
    rolls_back(
        "upd-unhealthy",
        "v2-unhealthy",
        "auto",
        2,
        Failure::Unhealthy,
        "testapp v2-unhealthy listening on 8080",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_image_exiting_on_start_rolls_back() {
    rolls_back(
        "upd-broken",
        "broken",
        "running",
        3,
        Failure::ExitsInWindow,
        "exiting with code 1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_inside_the_stability_window_rolls_back() {
    rolls_back(
        "upd-crash",
        "v2-crash-later",
        "auto",
        10,
        Failure::ExitsInWindow,
        "exiting with code 3",
    )
    .await;
}

/// v1 is untouched and was never stopped: same container, same start, no restart.
async fn assert_untouched(s: &Setup, web: &Web, before: &Snapshot) {
    let now = s.snapshot(&web.name).await;
    assert_eq!(now.id(), before.id());
    assert_eq!(now.config_image(), before.config_image());
    for k in ["StartedAt", "Running", "Status"] {
        assert_eq!(
            now.container["State"][k], before.container["State"][k],
            "State.{k} must not change"
        );
    }
    assert_eq!(
        now.container["RestartCount"],
        before.container["RestartCount"]
    );
    assert_eq!(
        now.container["HostConfig"]["RestartPolicy"],
        before.container["HostConfig"]["RestartPolicy"]
    );
    assert_eq!(web.data_lines(), ["v1 started"], "v1 started only once");
    let family = s.family(&web.name).await;
    assert_eq!(family.len(), 1, "nothing was created: {family:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_missing_from_the_registry_changes_nothing() {
    let mut s = Setup::new("upd-missing", &[], None).await;
    s.run_agent().await;
    let web = s.web(ContainerCreateBody::default()).await;
    let before = s.snapshot(&web.name).await;
    let image = s.registry.reference(&format!("{REPO}:v9-does-not-exist"));
    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&web.name, &image, "running", 1),
            UPDATE_DEADLINE,
        )
        .await;
    r.assert_outcome(UpdateOutcome::FailedUnchanged);
    assert!(!r.report.old_stopped, "{:#?}", r.report);
    assert!(r.report.reason.is_some(), "{:#?}", r.report);
    assert_untouched(&s, &web, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_wrong_change_nothing_and_right_ones_update() {
    let mut s = Setup::new("upd-auth", &["v2"], Some(("deploy", "right-password"))).await;
    let pw_file = s.agent.state_dir().join("registry-password");
    std::fs::write(&pw_file, "wrong-password\n").unwrap();
    let config = format!(
        "[update]\n\n[[update.registries]]\nregistry = \"{}\"\nusername = \"deploy\"\n\
         password_file = \"{}\"\n",
        s.registry.host(),
        pw_file.display()
    );
    s.agent.set_config(&config);
    s.run_agent().await;
    let web = s.web(ContainerCreateBody::default()).await;
    let before = s.snapshot(&web.name).await;
    let image = s.image("v2");
    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&web.name, &image, "running", 1),
            UPDATE_DEADLINE,
        )
        .await;
    r.assert_outcome(UpdateOutcome::FailedUnchanged);
    assert!(!r.report.old_stopped, "{:#?}", r.report);
    let reason = r.report.reason.clone().unwrap_or_default();
    assert!(
        !reason.contains("wrong-password") && !reason.contains("right-password"),
        "a reason never carries a password: {reason}"
    );
    assert_untouched(&s, &web, &before).await;

    // The right password (read from the file at the next start): the same update works,
    // which proves the credentials were really used.
    std::fs::write(&pw_file, "right-password\n").unwrap();
    s.agent.restart().await;
    s.api.wait_online(&s.agent.id, DEADLINE).await;
    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&web.name, &image, "running", 1),
            UPDATE_DEADLINE,
        )
        .await;
    r.assert_outcome(UpdateOutcome::Updated);
    s.assert_converged(&web, &image, &r).await;

    // Without agent.toml credentials, the Docker config file's auths serve too.
    use base64::Engine;
    let docker_config = s.agent.state_dir().join("docker-config-with-auth.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("deploy:right-password");
    std::fs::write(
        &docker_config,
        serde_json::json!({"auths": {s.registry.host(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    s.agent.set_config("[update]\n");
    s.agent.set_env(
        flotilla_tests::harness::UPDATE_DOCKER_CONFIG_ENV,
        &docker_config.to_string_lossy(),
    );
    s.agent.restart().await;
    s.api.wait_online(&s.agent.id, DEADLINE).await;
    let back = s.image("v1");
    tokio::task::spawn_blocking({
        let back = back.clone();
        move || fixtures::docker(&["rmi", &back])
    })
    .await
    .unwrap()
    .expect("untag v1 locally so it must be pulled");
    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&web.name, &back, "running", 1),
            UPDATE_DEADLINE,
        )
        .await;
    r.assert_outcome(UpdateOutcome::Updated);
    s.assert_converged(&web, &back, &r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_refuses_other_registries_and_unknown_containers() {
    let mut s = Setup::new("upd-policy", &["v2"], None).await;
    let img = images().await.clone();
    let (elsewhere, other_ref) = tokio::task::spawn_blocking(move || {
        let r = fixtures::start_registry().expect("second registry");
        let reference = r
            .push_remote_only(&img.v2, &format!("{REPO}:v2"))
            .expect("push v2 to the second registry");
        (r, reference)
    })
    .await
    .unwrap();
    s.run_agent().await;
    let web = s.web(ContainerCreateBody::default()).await;
    let before = s.snapshot(&web.name).await;

    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&web.name, &other_ref, "running", 1),
            UPDATE_DEADLINE,
        )
        .await;
    assert_eq!(r.error_code(), Some("policy_denied"), "{:#?}", r.result);
    assert_eq!(
        r.report.outcome,
        UpdateOutcome::FailedUnchanged,
        "{:#?}",
        r.report
    );
    assert!(!r.report.old_stopped);
    let message = &r.result.error.as_ref().unwrap().message;
    assert!(
        message.contains(&elsewhere.host()),
        "says which registry: {message}"
    );
    assert_untouched(&s, &web, &before).await;

    let r = s
        .api
        .update(
            &s.agent.id,
            update_args("no-such-container-anywhere", &s.image("v2"), "running", 1),
            UPDATE_DEADLINE,
        )
        .await;
    assert_eq!(r.error_code(), Some("no_such_container"), "{:#?}", r.result);
    assert_eq!(r.report.outcome, UpdateOutcome::FailedUnchanged);

    // Allowed explicitly in the agent's configuration, the same update goes through.
    s.agent
        .set_env("FLOTILLA_UPDATE_ALLOWED_IMAGES", &elsewhere.host());
    s.agent.restart().await;
    s.api.wait_online(&s.agent.id, DEADLINE).await;
    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&web.name, &other_ref, "running", 1),
            UPDATE_DEADLINE,
        )
        .await;
    r.assert_outcome(UpdateOutcome::Updated);
    s.assert_converged(&web, &other_ref, &r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_update_of_the_same_container_is_refused_while_one_runs() {
    let mut s = Setup::new("upd-busy", &["v2"], None).await;
    s.run_agent().await;
    let web = s.web(ContainerCreateBody::default()).await;
    let image = s.image("v2");
    // A long stability window keeps the first update busy.
    let first = s
        .api
        .start_update(&s.agent.id, update_args(&web.name, &image, "running", 8))
        .await;
    eventually(
        DEADLINE,
        "the first update's new container running",
        || async {
            s.family(&web.name)
                .await
                .iter()
                .any(|m| m.running && m.update_label.as_deref() == Some(first.as_str()))
                .then_some(())
        },
    )
    .await;
    let second = s
        .api
        .update(
            &s.agent.id,
            update_args(&web.name, &s.image("v1"), "running", 1),
            UPDATE_DEADLINE,
        )
        .await;
    assert_eq!(
        second.error_code(),
        Some("container_busy"),
        "{:#?}",
        second.result
    );
    assert_eq!(second.report.outcome, UpdateOutcome::FailedUnchanged);
    assert!(!second.report.old_stopped);
    let first_done = s.api.wait_update(&first, UPDATE_DEADLINE).await;
    assert!(
        second.result.finished_at < first_done.result.finished_at,
        "the refusal came while the first ran"
    );
    first_done.assert_outcome(UpdateOutcome::Updated);
    s.assert_converged(&web, &image, &first_done).await;
    let after = s.snapshot(&web.name).await;
    assert_eq!(after.label(UPDATE_LABEL), Some(first.as_str()));
}

/// SIGKILL of the agent paused at `phase`; after a restart without the hook the agent converges
/// and reports the update's real result (`recovered`), with one container running.
async fn killed_at(test: &str, phase: &str, allowed: &[UpdateOutcome]) {
    let mut s = Setup::new(test, &["v2-health"], None).await;
    s.agent.set_env(UPDATE_PAUSE_ENV, phase);
    s.run_agent().await;
    let web = s.web(ContainerCreateBody::default()).await;
    let before = s.snapshot(&web.name).await;
    let image = s.image("v2-health");
    let watch = RunningWatch::start(&s.docker, &web.name);
    let id = s
        .api
        .start_update(&s.agent.id, update_args(&web.name, &image, "auto", 2))
        .await;
    let marker = s.agent.state_dir().join(format!("update-paused-{phase}"));
    eventually(
        UPDATE_DEADLINE,
        &format!("the update to pause at {phase}"),
        || {
            let marker = marker.clone();
            async move { marker.exists().then_some(()) }
        },
    )
    .await;
    // Where it paused, the containers are as the phase says.
    let family = s.family(&web.name).await;
    match phase {
        "pulling" => assert!(
            family.len() == 1 && family[0].id == before.id() && family[0].running,
            "nothing touched while pulling: {family:#?}"
        ),
        "old_stopped" => assert!(
            family.iter().all(|m| !m.running)
                && family.iter().any(|m| m.id == before.id()
                    && m.name
                        .starts_with(&format!("{}{BACKUP_NAME_MARKER}", web.name))),
            "the old container is stopped under its backup name: {family:#?}"
        ),
        _ => assert!(
            family
                .iter()
                .any(|m| m.running && m.name == web.name && m.id != before.id()),
            "the new container runs in the health gate: {family:#?}"
        ),
    }
    s.agent.kill().await;
    s.agent.remove_env(UPDATE_PAUSE_ENV);
    s.agent.run().await;
    let r = s.api.wait_update(&id, UPDATE_DEADLINE).await;
    watch.assert_never_both_running().await;
    assert!(
        allowed.contains(&r.report.outcome),
        "killed at {phase}: outcome {} is not one of {allowed:?}: {:#?}",
        r.report.outcome,
        r.report
    );
    r.assert_outcome(r.report.outcome);
    assert!(
        r.report.recovered,
        "the report says it was finished after a restart: {:#?}",
        r.report
    );
    let expected_image = if r.report.outcome == UpdateOutcome::Updated {
        image.clone()
    } else {
        s.image("v1")
    };
    s.assert_converged(&web, &expected_image, &r).await;
    let after = s.snapshot(&web.name).await;
    if r.report.outcome == UpdateOutcome::Updated {
        assert_same_config(&before, &after, &format!("updated after a kill at {phase}"));
    } else {
        assert_eq!(after.id(), before.id(), "the old container is restored");
        assert_same_config(
            &before,
            &after,
            &format!("restored after a kill at {phase}"),
        );
    }
    println!(
        "killed at {phase}: converged to {} in {} ms of update time",
        r.report.outcome, r.report.total_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_while_pulling_converges() {
    killed_at(
        "upd-kill-pull",
        "pulling",
        &[UpdateOutcome::Updated, UpdateOutcome::FailedUnchanged],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_after_stopping_the_old_container_converges() {
    killed_at(
        "upd-kill-stopped",
        "old_stopped",
        &[UpdateOutcome::Updated, UpdateOutcome::RolledBack],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_in_the_health_gate_converges() {
    killed_at(
        "upd-kill-gate",
        "health_gate",
        &[UpdateOutcome::Updated, UpdateOutcome::RolledBack],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_first_proves_the_new_container_before_stopping_the_old_one() {
    let mut s = Setup::new("upd-start-first", &["v2", "v2-unhealthy"], None).await;
    s.run_agent().await;
    let web = s.web(ContainerCreateBody::default()).await;
    let before = s.snapshot(&web.name).await;

    // A failing new image: the old container is never stopped, the new one is removed.
    let mut args = update_args(&web.name, &s.image("v2-unhealthy"), "auto", 1);
    args.strategy = UpdateStrategy::StartFirst;
    let r = s.api.update(&s.agent.id, args, UPDATE_DEADLINE).await;
    r.assert_outcome(UpdateOutcome::RolledBack);
    assert!(
        !r.report.old_stopped,
        "start-first never stopped the old container: {:#?}",
        r.report
    );
    assert!(!r.report.failed_logs.is_empty(), "{:#?}", r.report);
    // The old container ran throughout (the new one shared its volume for a while: it wrote
    // its start there), and nothing of the new one is left.
    let now = s.snapshot(&web.name).await;
    assert_eq!(now.id(), before.id());
    for k in ["StartedAt", "Running"] {
        assert_eq!(
            now.container["State"][k], before.container["State"][k],
            "State.{k} must not change"
        );
    }
    assert_eq!(
        now.container["HostConfig"]["RestartPolicy"],
        before.container["HostConfig"]["RestartPolicy"]
    );
    assert_eq!(web.data_lines(), ["v1 started", "v2-unhealthy started"]);
    let family = s.family(&web.name).await;
    assert_eq!(family.len(), 1, "the new container is gone: {family:#?}");

    // A healthy one, probed over HTTP on the container's address: the new container ran and
    // passed before the old one was stopped, and ends under the original name.
    let image = s.image("v2");
    let mut args = update_args(
        &web.name,
        &image,
        &format!("http:{}/health", fixtures::TESTAPP_PORT),
        1,
    );
    args.strategy = UpdateStrategy::StartFirst;
    let r = s.api.update(&s.agent.id, args, UPDATE_DEADLINE).await;
    r.assert_outcome(UpdateOutcome::Updated);
    let evidence = r.report.health_evidence.as_ref().expect("health evidence");
    assert_eq!(evidence.method, "http", "{evidence:#?}");
    assert!(
        evidence
            .last_output
            .as_deref()
            .is_some_and(|o| o.contains("200")),
        "{evidence:#?}"
    );
    let order: Vec<&str> = r.report.timings.iter().map(|t| t.phase.as_str()).collect();
    let pos = |p: &str| order.iter().position(|x| *x == p);
    assert!(
        pos("stable") < pos("stop_old") && pos("stop_old").is_some(),
        "gate and stability window before stopping the old one: {order:?}"
    );
    s.assert_converged(&web, &image, &r).await;
    let after = s.snapshot(&web.name).await;
    assert_same_config(&before, &after, "after a start-first update");

    // Refused for a container publishing a host port, without touching it.
    let port = free_port();
    let published = s
        .docker
        .create(
            "published",
            ContainerCreateBody {
                image: Some(s.image("v1")),
                host_config: Some(HostConfig {
                    port_bindings: Some(
                        [(
                            format!("{}/tcp", fixtures::TESTAPP_PORT),
                            Some(vec![PortBinding {
                                host_ip: Some("127.0.0.1".into()),
                                host_port: Some(port.to_string()),
                            }]),
                        )]
                        .into_iter()
                        .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            },
            true,
        )
        .await;
    let mut args = update_args(&published, &image, "running", 1);
    args.strategy = UpdateStrategy::StartFirst;
    let r = s.api.update(&s.agent.id, args, UPDATE_DEADLINE).await;
    assert_eq!(
        r.report.outcome,
        UpdateOutcome::FailedUnchanged,
        "{:#?}",
        r.report
    );
    let e = r.result.error.clone().expect("an error");
    assert_eq!(e.code, "invalid_args", "{e:?}");
    assert!(e.message.contains("publishes host ports"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_and_auto_remove_containers_are_refused_unchanged() {
    let mut s = Setup::new("upd-refuse", &["v2"], None).await;
    s.run_agent().await;
    let image = s.image("v2");
    // A stopped container: a rollback would start it, so it is not updated at all.
    let stopped = s
        .docker
        .create(
            "stopped",
            ContainerCreateBody {
                image: Some(s.image("v1")),
                ..Default::default()
            },
            false,
        )
        .await;
    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&stopped, &image, "running", 1),
            UPDATE_DEADLINE,
        )
        .await;
    assert_eq!(r.report.outcome, UpdateOutcome::FailedUnchanged);
    let e = r.result.error.clone().expect("an error");
    assert_eq!(e.code, "container_not_running", "{e:?}");
    assert!(e.message.contains("start it first"), "{e:?}");
    let state = s.docker.state(&stopped).await;
    assert_eq!(
        state.status.map(|x| x.to_string()).as_deref(),
        Some("created")
    );

    // A --rm container: stopping it would delete it, so there would be nothing to roll back to.
    let auto_remove = s
        .docker
        .create(
            "autorm",
            ContainerCreateBody {
                image: Some(s.image("v1")),
                host_config: Some(HostConfig {
                    auto_remove: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            },
            true,
        )
        .await;
    let before = s.snapshot(&auto_remove).await;
    let r = s
        .api
        .update(
            &s.agent.id,
            update_args(&auto_remove, &image, "running", 1),
            UPDATE_DEADLINE,
        )
        .await;
    assert_eq!(r.report.outcome, UpdateOutcome::FailedUnchanged);
    let e = r.result.error.clone().expect("an error");
    assert!(e.message.contains("AutoRemove"), "{e:?}");
    let after = s.snapshot(&auto_remove).await;
    assert_eq!(after.id(), before.id());
    assert_eq!(
        after.container["State"]["StartedAt"],
        before.container["State"]["StartedAt"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_during_the_health_gate_rolls_back_at_once() {
    let mut s = Setup::new("upd-sigterm", &["v2"], None).await;
    s.run_agent().await;
    let web = s.web(ContainerCreateBody::default()).await;
    let before = s.snapshot(&web.name).await;
    // A probe that can never pass (nothing listens on port 9), with a long deadline.
    let mut args = update_args(&web.name, &s.image("v2"), "tcp:9", 1);
    args.health_timeout_secs = Some(600);
    let id = s.api.start_update(&s.agent.id, args).await;
    eventually(
        UPDATE_DEADLINE,
        "the new container in its health gate",
        || async {
            let family = s.family(&web.name).await;
            family
                .iter()
                .any(|m| m.running && m.name == web.name && m.id != before.id())
                .then_some(())
        },
    )
    .await;
    // systemctl stop: the gate is cut short and the update rolls back before the agent exits,
    // well inside the agent's shutdown grace.
    let took = s.agent.terminate(Duration::from_secs(40)).await;
    assert!(
        took < Duration::from_secs(30),
        "the agent took {took:?} to stop"
    );
    let family = s.family(&web.name).await;
    assert!(
        family.len() == 1 && family[0].id == before.id() && family[0].running,
        "the old container runs again under its name, nothing else is left: {family:#?}"
    );
    let now = s.snapshot(&web.name).await;
    assert_eq!(
        now.container["HostConfig"]["RestartPolicy"],
        before.container["HostConfig"]["RestartPolicy"]
    );
    // The outcome reaches the relay when the agent is back.
    s.run_agent().await;
    let r = s.api.wait_update(&id, UPDATE_DEADLINE).await;
    r.assert_outcome(UpdateOutcome::RolledBack);
    assert!(
        r.report
            .reason
            .as_deref()
            .is_some_and(|m| m.contains("stopping")),
        "{:#?}",
        r.report
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_old_container_fails_too_it_is_left_in_place() {
    let mut s = Setup::new("upd-rbfail", &["v2"], None).await;
    s.run_agent().await;
    // The container's own configuration makes /health fail (APP_MODE=unhealthy is user env, so
    // the new container inherits it): the new one fails the http check, and so does the old one
    // on the way back.
    let web = s
        .web(ContainerCreateBody {
            env: Some(vec!["APP_MODE=unhealthy".into()]),
            ..Default::default()
        })
        .await;
    let before = s.snapshot(&web.name).await;
    let mut args = update_args(
        &web.name,
        &s.image("v2"),
        &format!("http:{}/health", fixtures::TESTAPP_PORT),
        1,
    );
    args.health_timeout_secs = Some(3);
    let r = s.api.update(&s.agent.id, args, UPDATE_DEADLINE).await;
    r.assert_outcome(UpdateOutcome::RollbackFailed);
    let rb = r
        .report
        .rollback_health_evidence
        .as_ref()
        .expect("the old container's health evidence");
    assert!(!rb.passed && rb.method == "http", "{rb:#?}");
    assert!(
        r.report
            .reason
            .as_deref()
            .is_some_and(|m| m.contains("the old container failed its health check too")),
        "{:#?}",
        r.report
    );
    assert!(!r.report.failed_logs.is_empty(), "{:#?}", r.report);
    // The old container is in place — same id, its name, its restart policy, running — and
    // nothing of the new one is left.
    let family = s.family(&web.name).await;
    assert!(
        family.len() == 1 && family[0].id == before.id() && family[0].running,
        "{family:#?}"
    );
    let now = s.snapshot(&web.name).await;
    assert_eq!(
        now.container["HostConfig"]["RestartPolicy"],
        before.container["HostConfig"]["RestartPolicy"]
    );
    assert_same_config(&before, &now, "the old container after a failed rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_updates_and_waits_for_the_outcome() {
    let mut s = Setup::new("upd-cli", &["v2"], None).await;
    s.run_agent().await;
    let web = s.web(ContainerCreateBody::default()).await;
    let image = s.image("v2");
    let out = cli(
        &s.relay,
        &[
            "update",
            "--agent",
            &s.agent.id,
            "--container",
            &web.name,
            "--image",
            &image,
            "--health",
            "running",
            "--health-timeout",
            "20s",
            "--stable",
            "2s",
            "--wait",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "flotilla update failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("updated"),
        "prints the outcome:\n{stdout}\n{stderr}"
    );
    let family = s.family(&web.name).await;
    assert!(
        family.len() == 1 && family[0].running && family[0].image == image,
        "{family:#?}"
    );
}

// === long mode ===

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    u64::from_le_bytes(b) % n
}

/// `scripts/test --long`: at least 20 updates (v1 ↔ v2) each interrupted by a SIGKILL of the
/// agent after a random delay (0-4 s); after every restart the update's final result arrives and
/// exactly one container with the name runs, no backup runs beside it, the volume is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: scripts/test --long runs it"]
async fn update_kill_loop() {
    let iterations: usize = std::env::var("FLOTILLA_KILL_LOOP_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut s = Setup::new("upd-kill-loop", &["v2"], None).await;
    s.run_agent().await;
    let web = s.web(ContainerCreateBody::default()).await;
    let (v1, v2) = (s.image("v1"), s.image("v2"));
    let mut current = v1.clone();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut recovered = 0;
    let started = Instant::now();
    for i in 0..iterations {
        let target = if current == v1 {
            v2.clone()
        } else {
            v1.clone()
        };
        // A window of 2-4 s keeps most kills (0-4 s) inside the update rather than after it.
        let stable = 2 + random_below(3) as u32;
        let watch = RunningWatch::start(&s.docker, &web.name);
        let id = s
            .api
            .start_update(
                &s.agent.id,
                update_args(&web.name, &target, "running", stable),
            )
            .await;
        let delay = Duration::from_millis(random_below(4001));
        // The kill lands at a random point of the update: this hold chooses that point, it
        // does not wait for an effect.
        flotilla_testkit::hold(delay, "the kill lands at a random point of the update").await;
        s.agent.kill().await;
        s.agent.run().await;
        let r = s.api.wait_update(&id, UPDATE_DEADLINE).await;
        watch.assert_never_both_running().await;
        r.assert_outcome(r.report.outcome);
        let expected = match r.report.outcome {
            UpdateOutcome::Updated => target.clone(),
            UpdateOutcome::RolledBack | UpdateOutcome::FailedUnchanged => current.clone(),
            UpdateOutcome::RollbackFailed => panic!(
                "iteration {i}: a healthy old image must not fail its rollback: {:#?}",
                r.report
            ),
        };
        s.assert_converged(&web, &expected, &r).await;
        println!(
            "kill loop {i}: {} → {}, killed after {} ms, outcome {}{}",
            current.rsplit(':').next().unwrap_or_default(),
            target.rsplit(':').next().unwrap_or_default(),
            delay.as_millis(),
            r.report.outcome,
            if r.report.recovered {
                " (recovered)"
            } else {
                ""
            }
        );
        recovered += usize::from(r.report.recovered);
        *outcomes.entry(r.report.outcome.to_string()).or_default() += 1;
        current = expected;
    }
    println!(
        "update_kill_loop: {iterations} kills in {:.0}s, outcomes {outcomes:?}, {recovered} \
         finished from the journal after a restart; every time one container named {} ran and \
         its volume was intact",
        started.elapsed().as_secs_f64(),
        web.name
    );
}
