//! `flotilla rollout start|status|list|pause|resume|promote|abort`: canary rollouts through
//! `/api/v1/rollouts` (see `flotilla_shared::rollout`). `status --watch` looks again whenever
//! the relay's event stream reports a change (polling every second on a relay without it),
//! redraws on a terminal (clear and redraw, the soak countdown every second) and otherwise
//! prints whenever something changed, until the rollout reaches a final state.

use super::client::{decode, ApiClient, CliError};
use super::events::{StreamQuery, Wake, WatchFeed};
use super::render::{self, Table};
use super::run::{emit, print_value};
use super::Outcome;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use flotilla_shared::duration::parse_duration;
use flotilla_shared::limit::Limit;
use flotilla_shared::rollout::{
    format_stages, AbortRollout, CreateAgentRollout, CreateRollout, FailureAction, PauseRollout,
    RolloutInfo, RolloutOrder, RolloutState, RolloutTarget, StagePhase, StageWhat,
};
use flotilla_shared::selector::Selector;
use flotilla_shared::stream::FleetEvent;
use flotilla_shared::update::{HealthSpec, UpdateStrategy};
use std::io::IsTerminal;
use std::time::Duration;

/// Pause between two looks at a watched rollout on a relay without the event stream; on a
/// terminal, also how often the countdown is redrawn.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a canary rollout of a new image (or, with --agent-version, of a new agent
    /// version), stage by stage.
    Start(Box<StartArgs>),
    /// A rollout's stage, per-agent outcome and soak time left (`--watch` follows it).
    Status {
        id: String,
        /// Redraw every second until the rollout is final.
        #[arg(long)]
        watch: bool,
    },
    /// Rollouts, newest first.
    List {
        /// Only rollouts in this state (running, paused, completed, aborted, reverting,
        /// reverted) or `active`.
        #[arg(long)]
        state: Option<String>,
        /// Most rollouts to show (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Pause: no new updates, soak clock stopped.
    Pause {
        id: String,
        /// Why (shown in status).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused rollout (the current stage's failures are accepted).
    Resume { id: String },
    /// End the current soak now and move on.
    Promote { id: String },
    /// Stop the rollout; with --revert, roll every updated container back.
    Abort {
        id: String,
        #[arg(long)]
        revert: bool,
    },
}

/// `flotilla rollout start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The fleet: agents matching this selector (percentages count them).
    #[arg(long)]
    pub selector: Selector,
    /// Update the container with this name on each agent.
    #[arg(
        long,
        required_unless_present_any = ["container_label", "agent_version", "compose_project", "compose_service"],
        conflicts_with_all = ["container_label", "compose_project", "compose_service"]
    )]
    pub container: Option<String>,
    /// Update every container carrying this Docker label (`k=v`) on each agent.
    #[arg(long, conflicts_with_all = ["compose_project", "compose_service"])]
    pub container_label: Option<String>,
    // --- compose (issue 17, part 1) ---
    /// Update every container of this compose project on each agent (the label
    /// `com.docker.compose.project`); the agents also edit the project's files.
    #[arg(long, conflicts_with = "compose_service")]
    pub compose_project: Option<String>,
    /// Update every container of this compose service on each agent (the label
    /// `com.docker.compose.service`).
    #[arg(long)]
    pub compose_service: Option<String>,
    /// The new image.
    #[arg(long, required_unless_present = "agent_version")]
    pub image: Option<String>,
    /// Upgrade the agents themselves to this published version (`flotilla release list`)
    /// instead of a container: each gets `agent.upgrade` with the build for its architecture.
    #[arg(
        long,
        conflicts_with_all = ["container", "container_label", "compose_project", "compose_service", "image", "health", "health_timeout", "stable", "strategy"]
    )]
    pub agent_version: Option<String>,
    /// Stages: `<N%|selector>[:<soak>]`, separated by `,` (or `;` when a selector has several
    /// terms). Default: `--staging` for 48h if given, then `5%:24h,25%:12h,100%`.
    #[arg(long)]
    pub stages: Option<String>,
    /// Staging selector the default stages start with.
    #[arg(long)]
    pub staging: Option<Selector>,
    /// newest-first (default), oldest-first or random.
    #[arg(long)]
    pub order: Option<RolloutOrder>,
    /// Failures a stage tolerates before the failure action (`0`, `2`, `10%`; default 0).
    #[arg(long)]
    pub max_failures: Option<Limit>,
    /// pause (default), abort or revert.
    #[arg(long)]
    pub on_failure: Option<FailureAction>,
    /// Agents updating at once (`5`, `10%`; default 1). An agent with several target
    /// containers (`--container-label`) updates them one at a time.
    #[arg(long)]
    pub parallelism: Option<Limit>,
    /// Health check of each update (auto, docker, running, http:<port><path>, tcp:<port>).
    #[arg(long)]
    pub health: Option<HealthSpec>,
    #[arg(long, value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    #[arg(long, value_parser = parse_duration)]
    pub stable: Option<Duration>,
    #[arg(long)]
    pub strategy: Option<UpdateStrategy>,
    /// How long a stage waits for offline agents (default 1h).
    #[arg(long, value_parser = parse_duration)]
    pub stage_timeout: Option<Duration>,
    /// Update compose containers even where an agent may not edit their project's files
    /// (outside its `[compose] allowed_dirs`): the container alone is updated and the drift
    /// is reported (the member's reason). Without it such a member fails with the agent's
    /// error saying how to allow the edit.
    #[arg(long, conflicts_with = "agent_version")]
    pub allow_drift: bool,
    /// A name for people.
    #[arg(long)]
    pub name: Option<String>,
}

fn secs32(flag: &str, d: Option<Duration>) -> Result<Option<u32>, CliError> {
    d.map(|d| {
        u32::try_from(d.as_secs()).map_err(|_| CliError::Usage(format!("{flag} is too large")))
    })
    .transpose()
}

/// An agent rollout's request from the flags (`--agent-version`), checked like
/// [`build_request`]; None without `--agent-version`.
pub fn build_agent_request(a: &StartArgs) -> Result<Option<CreateAgentRollout>, CliError> {
    let Some(version) = &a.agent_version else {
        return Ok(None);
    };
    flotilla_shared::release::validate_version(version).map_err(|e| {
        CliError::Usage(format!(
            "--agent-version: {e} (a rollout names one published version)"
        ))
    })?;
    let req = CreateAgentRollout {
        name: a.name.clone(),
        selector: a.selector.clone(),
        agent_version: version.clone(),
        stages: a.stages.clone(),
        staging: a.staging.clone(),
        order: a.order,
        max_failures: a.max_failures,
        on_failure: a.on_failure,
        parallelism: a.parallelism,
        stage_timeout_secs: a.stage_timeout.map(|d| d.as_secs()),
    };
    req.stage_specs()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(Some(req))
}

// --- compose (issue 17, part 1) ---
/// `--compose-project P` / `--compose-service S` as the container label they stand for.
fn compose_label(a: &StartArgs) -> Option<String> {
    match (&a.compose_project, &a.compose_service) {
        (Some(p), _) => Some(format!("com.docker.compose.project={p}")),
        (None, Some(s)) => Some(format!("com.docker.compose.service={s}")),
        (None, None) => None,
    }
}

/// The request from the flags (stages checked here too, for an early clear error).
pub fn build_request(a: &StartArgs) -> Result<CreateRollout, CliError> {
    let req = CreateRollout {
        name: a.name.clone(),
        selector: a.selector.clone(),
        container: a.container.clone(),
        container_label: compose_label(a).or_else(|| a.container_label.clone()),
        image: a.image.clone().unwrap_or_default(),
        stages: a.stages.clone(),
        staging: a.staging.clone(),
        order: a.order,
        max_failures: a.max_failures,
        on_failure: a.on_failure,
        parallelism: a.parallelism,
        health: a.health.clone(),
        health_timeout_secs: secs32("--health-timeout", a.health_timeout)?,
        stable_secs: secs32("--stable", a.stable)?,
        strategy: a.strategy,
        stage_timeout_secs: a.stage_timeout.map(|d| d.as_secs()),
        allow_drift: a.allow_drift,
    };
    req.target().map_err(|e| CliError::Usage(e.to_string()))?;
    req.stage_specs()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(req)
}

pub async fn rollout(
    client: &ApiClient,
    cmd: &RolloutCommand,
    json: bool,
) -> Result<Outcome, CliError> {
    let base = ["api", "v1", "rollouts"];
    let now = Utc::now();
    match cmd {
        RolloutCommand::Start(a) => {
            let value = match build_agent_request(a)? {
                Some(req) => client.post(&base, &[], &req, Duration::ZERO).await?,
                None => {
                    let req = build_request(a)?;
                    client.post(&base, &[], &req, Duration::ZERO).await?
                }
            };
            let info: RolloutInfo = decode(&value, "rollout")?;
            print_value(&value, json, || status(&info, now));
        }
        RolloutCommand::Status { id, watch } => {
            if *watch {
                return watch_status(client, id, json).await;
            }
            let value = client.get(&[base[0], base[1], base[2], id], &[]).await?;
            let info: RolloutInfo = decode(&value, "rollout")?;
            print_value(&value, json, || status(&info, now));
        }
        RolloutCommand::List { state, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(s) = state {
                query.push(("state", s.clone()));
            }
            let value = client.get(&base, &query).await?;
            let list: Vec<RolloutInfo> = decode(&value, "rollouts")?;
            print_value(&value, json, || list_table(&list, now));
        }
        RolloutCommand::Pause { id, reason } => {
            let body = PauseRollout {
                reason: reason.clone(),
            };
            act(client, id, "pause", &body, json).await?;
        }
        RolloutCommand::Resume { id } => {
            act(client, id, "resume", &serde_json::json!({}), json).await?
        }
        RolloutCommand::Promote { id } => {
            act(client, id, "promote", &serde_json::json!({}), json).await?
        }
        RolloutCommand::Abort { id, revert } => {
            let body = AbortRollout { revert: *revert };
            act(client, id, "abort", &body, json).await?;
        }
    }
    Ok(Outcome::Success)
}

async fn act<B: serde::Serialize>(
    client: &ApiClient,
    id: &str,
    action: &str,
    body: &B,
    json: bool,
) -> Result<(), CliError> {
    let value = client
        .post(
            &["api", "v1", "rollouts", id, action],
            &[],
            body,
            Duration::ZERO,
        )
        .await?;
    let info: RolloutInfo = decode(&value, "rollout")?;
    print_value(&value, json, || status(&info, Utc::now()));
    Ok(())
}

async fn watch_status(client: &ApiClient, id: &str, json: bool) -> Result<Outcome, CliError> {
    let tty = std::io::stdout().is_terminal() && !json;
    watch_with(client, id, json, tty, &mut |s| emit(s)).await
}

/// `status --watch`: fetches once, then again when the event stream reports a transition of
/// this rollout or a finished update/command of one of its agents (or, on a relay without the
/// stream, every [`WATCH_INTERVAL`]), until the rollout is final. On a terminal the soak
/// countdown is redrawn every second from the last answer.
pub(crate) async fn watch_with(
    client: &ApiClient,
    id: &str,
    json: bool,
    tty: bool,
    out: &mut dyn FnMut(&str),
) -> Result<Outcome, CliError> {
    let query = StreamQuery::kinds("rollout.transition,update.finished,command.finished");
    let mut feed = WatchFeed::open(client, query, WATCH_INTERVAL).await?;
    let mut last: Option<String> = None;
    loop {
        let value = client.get(&["api", "v1", "rollouts", id], &[]).await?;
        let info: RolloutInfo = decode(&value, "rollout")?;
        let now = Utc::now();
        if tty {
            // Clear the screen and move home, then redraw (soak time left changes each second).
            out(&format!("\x1b[2J\x1b[H{}", status(&info, now)));
        } else {
            // Only print when something other than the clock changed.
            let text = if json {
                format!("{}\n", serde_json::to_string(&value).unwrap_or_default())
            } else {
                status(&info, now)
            };
            let key = serde_json::to_string(&(
                &info.state,
                &info.stage,
                &info.stage_phase,
                &info.counts,
                &info.agents,
                &info.events.len(),
                &info.reason,
            ))
            .unwrap_or_default();
            if last.as_deref() != Some(key.as_str()) {
                out(&text);
                last = Some(key);
            }
        }
        if info.state.is_final() {
            return Ok(match info.state {
                RolloutState::Completed | RolloutState::Reverted => Outcome::Success,
                s => Outcome::Failed(format!(
                    "rollout {} {s}{}",
                    info.id,
                    info.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )),
            });
        }
        let relevant = |e: &FleetEvent| relevant(&info, e);
        while feed.wait(tty.then_some(WATCH_INTERVAL), relevant).await? == Wake::Tick {
            out(&format!("\x1b[2J\x1b[H{}", status(&info, Utc::now())));
        }
    }
}

/// Whether a stream event can change what `status` shows of rollout `r`: its own transitions,
/// and finished updates and commands (agent upgrades) of its agents.
fn relevant(r: &RolloutInfo, e: &FleetEvent) -> bool {
    match e.kind.as_str() {
        "rollout.transition" => e.subject.as_deref() == Some(r.id.as_str()),
        "update.finished" | "command.finished" => e
            .agent_id
            .as_deref()
            .is_none_or(|a| r.agents.iter().any(|m| m.agent_id == a)),
        _ => false,
    }
}

/// Seconds from `now` until `t` (0 when past).
fn left(t: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    (t - now).num_seconds().max(0) as u64
}

/// The human status of one rollout.
pub fn status(r: &RolloutInfo, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    out.push_str(&format!("Rollout {}  {}\n", r.id, r.name));
    let agent_rollout = r.target == RolloutTarget::Agent;
    out.push_str(&format!(
        "  {} → {}{} on agents matching {}\n",
        r.target,
        if agent_rollout { "version " } else { "" },
        r.image,
        r.selector
    ));
    out.push_str(&format!(
        "  stages {}  order {}  parallelism {}  max-failures {}  on-failure {}\n",
        format_stages(&r.stages),
        r.order,
        r.parallelism,
        r.max_failures,
        r.on_failure
    ));
    let stage = r.stages.get(r.stage);
    let stage_text = stage.map(ToString::to_string).unwrap_or_default();
    let mut state_line = format!(
        "  state {}  stage {}/{} ({})  {}",
        r.state,
        r.stage + 1,
        r.stages.len(),
        stage_text,
        r.stage_phase.as_str()
    );
    match (r.state, r.stage_phase) {
        (RolloutState::Running, StagePhase::Soaking) => {
            if let Some(t) = r.soak_ends_at {
                state_line.push_str(&format!(", soak left {}", render::span(left(t, now))));
            }
        }
        (RolloutState::Running, StagePhase::Dispatching) => {
            if let Some(t) = r.stage_deadline {
                state_line.push_str(&format!(
                    ", offline agents wait {} more",
                    render::span(left(t, now))
                ));
            }
        }
        (RolloutState::Paused, _) => {
            if let Some(s) = r.soak_remaining_secs {
                state_line.push_str(&format!(", soak left {} (stopped)", render::span(s)));
            }
        }
        _ => {}
    }
    out.push_str(&state_line);
    out.push('\n');
    if let Some(reason) = &r.reason {
        out.push_str(&format!("  reason: {reason}\n"));
    }
    if r.stage_failures > 0 || r.accepted_failures > 0 {
        out.push_str(&format!(
            "  failures in this stage: {} ({} accepted at resume)\n",
            r.stage_failures, r.accepted_failures
        ));
    }
    if r.partial {
        let last = r
            .stages
            .last()
            .map(|s| match &s.what {
                StageWhat::Percent(p) => format!("{p}%"),
                StageWhat::Selector(sel) => sel.to_string(),
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "  note: the last stage is {last}, not 100%: the rollout ends there\n"
        ));
    }
    let c = &r.counts;
    out.push_str(&format!(
        "  agents {}: {} updated, {} updating, {} pending, {} failed, {} undelivered, {} no target, {} skipped",
        c.total, c.updated, c.updating, c.pending, c.failed, c.undelivered, c.no_target, c.skipped
    ));
    if c.reverting + c.reverted + c.revert_failed > 0 {
        out.push_str(&format!(
            ", {} reverting, {} reverted, {} revert failed",
            c.reverting, c.reverted, c.revert_failed
        ));
    }
    out.push('\n');
    if !r.agents.is_empty() {
        let what = if agent_rollout {
            "UPGRADE"
        } else {
            "CONTAINERS"
        };
        let mut t = Table::new(&["AGENT", "STAGE", "OUTCOME", what, "REASON"]);
        for a in &r.agents {
            let containers = a
                .containers
                .iter()
                .map(|c| format!("{}:{}", c.name, c.outcome.as_str()))
                .collect::<Vec<_>>()
                .join(" ");
            t.row(vec![
                a.agent_name.clone(),
                (a.stage + 1).to_string(),
                a.outcome.to_string(),
                containers,
                a.reason.clone().unwrap_or_default(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    if !r.events.is_empty() {
        out.push_str("\nEvents:\n");
        for e in r.events.iter().rev().take(10).rev() {
            out.push_str(&format!(
                "  {}  {:<14} {:<10} {}\n",
                render::time(e.at),
                e.action,
                e.actor,
                e.detail
            ));
        }
    }
    out
}

fn list_table(list: &[RolloutInfo], now: DateTime<Utc>) -> String {
    if list.is_empty() {
        return "no rollouts\n".into();
    }
    let mut t = Table::new(&[
        "ID", "NAME", "STATE", "STAGE", "UPDATED", "FAILED", "AGENTS", "CREATED",
    ]);
    for r in list {
        t.row(vec![
            r.id.clone(),
            r.name.clone(),
            r.state.to_string(),
            format!(
                "{}/{} {}",
                r.stage + 1,
                r.stages.len(),
                r.stage_phase.as_str()
            ),
            r.counts.updated.to_string(),
            r.counts.failed.to_string(),
            r.counts.total.to_string(),
            render::ago(r.created_at, now),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod compose_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: StartArgs,
    }

    #[test]
    fn compose_flags_target_the_compose_labels() {
        let parse = |args: &[&str]| {
            let mut v = vec!["t", "--selector", "a=b", "--image", "x:2"];
            v.extend_from_slice(args);
            T::try_parse_from(v).map(|t| build_request(&t.a))
        };
        let r = parse(&["--compose-project", "shop"]).unwrap().unwrap();
        assert_eq!(
            r.container_label.as_deref(),
            Some("com.docker.compose.project=shop")
        );
        let r = parse(&["--compose-service", "web"]).unwrap().unwrap();
        assert_eq!(
            r.container_label.as_deref(),
            Some("com.docker.compose.service=web")
        );
        assert!(parse(&["--compose-service", "web", "--container", "x"]).is_err());
        assert!(parse(&["--compose-project", "p", "--compose-service", "web"]).is_err());
        assert!(!r.allow_drift);
        // --allow-drift carries into the request (each member's container.update).
        let r = parse(&["--compose-project", "shop", "--allow-drift"])
            .unwrap()
            .unwrap();
        assert!(r.allow_drift);
        // A compose target is one target: with --container or --container-label too, clap
        // refuses the pair and names both flags (the README's rollout section says so).
        for other in [
            &["--container", "web"][..],
            &["--container-label", "a=b"][..],
        ] {
            let mut args = vec!["--compose-project", "shop"];
            args.extend_from_slice(other);
            let e = parse(&args)
                .expect_err("both targets are refused")
                .to_string();
            assert!(
                e.contains("--compose-project") && e.contains(other[0]),
                "{e}"
            );
        }
    }

    #[test]
    fn allow_drift_is_for_container_rollouts_only() {
        let Err(e) = T::try_parse_from([
            "t",
            "--selector",
            "a=b",
            "--agent-version",
            "0.2.0",
            "--allow-drift",
        ]) else {
            panic!("an agent rollout has no compose files");
        };
        let e = e.to_string();
        assert!(e.contains("--allow-drift"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, CliCommand};
    use clap::Parser;

    fn start_agents(args: &[&str]) -> Result<Option<CreateAgentRollout>, String> {
        let mut argv = vec!["flotilla", "rollout", "start"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            CliCommand::Rollout(RolloutCommand::Start(a)) => {
                build_agent_request(&a).map_err(|e| e.to_string())
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn agent_version_flags_build_an_agent_rollout() {
        let req = start_agents(&[
            "--selector",
            "env=prod",
            "--agent-version",
            "0.2.0",
            "--stages",
            "10%:1h,100%",
            "--on-failure",
            "revert",
            "--parallelism",
            "2",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(req.agent_version, "0.2.0");
        assert_eq!(req.on_failure, Some(FailureAction::Revert));
        assert_eq!(req.parallelism, Some(Limit::Count(2)));
        assert_eq!(format_stages(&req.stage_specs().unwrap()), "10%:1h,100%");
        // Container flags do not mix with an agent version; a bad version is refused early.
        assert!(start_agents(&[
            "--selector",
            "a=b",
            "--agent-version",
            "0.2.0",
            "--container",
            "web"
        ])
        .is_err());
        assert!(start_agents(&[
            "--selector",
            "a=b",
            "--agent-version",
            "0.2.0",
            "--image",
            "x"
        ])
        .is_err());
        let e = start_agents(&["--selector", "a=b", "--agent-version", "latest"]).unwrap_err();
        assert!(e.contains("--agent-version"), "{e}");
        // Without it, a container rollout.
        assert_eq!(
            start_agents(&["--selector", "a=b", "--container", "web", "--image", "x:1"]).unwrap(),
            None
        );
    }

    fn start(args: &[&str]) -> Result<CreateRollout, String> {
        let mut argv = vec!["flotilla", "rollout", "start"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            CliCommand::Rollout(RolloutCommand::Start(a)) => {
                build_request(&a).map_err(|e| e.to_string())
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn start_flags_build_the_request() {
        let req = start(&[
            "--selector",
            "tier=build",
            "--container-label",
            "com.docker.compose.service=ghost",
            "--image",
            "registry.example.com/ghost:5.3",
            "--staging",
            "env=staging",
            "--max-failures",
            "10%",
            "--on-failure",
            "revert",
            "--parallelism",
            "5",
            "--order",
            "oldest-first",
            "--stage-timeout",
            "30m",
        ])
        .unwrap();
        assert_eq!(
            req.container_label.as_deref(),
            Some("com.docker.compose.service=ghost")
        );
        assert_eq!(req.on_failure, Some(FailureAction::Revert));
        assert_eq!(req.order, Some(RolloutOrder::OldestFirst));
        assert_eq!(req.stage_timeout_secs, Some(1800));
        assert_eq!(
            format_stages(&req.stage_specs().unwrap()),
            "env=staging:2d,5%:1d,25%:12h,100%"
        );
        // A bad stages string is refused before any request, naming the stage.
        let err = start(&[
            "--selector",
            "tier=build",
            "--container",
            "ghost",
            "--image",
            "x:1",
            "--stages",
            "50%,10%",
        ])
        .unwrap_err();
        assert!(err.contains("must not decrease"), "{err}");
        // A target is required, and only one.
        assert!(start(&["--selector", "a=b", "--image", "x:1"]).is_err());
        assert!(start(&["--selector", "a=b", "--container", "a"]).is_err());
        assert!(start(&[
            "--selector",
            "a=b",
            "--image",
            "x:1",
            "--container",
            "a",
            "--container-label",
            "k=v"
        ])
        .is_err());
    }
}
