//! `flotilla update`: a `container.update` to one agent; with `--wait`, follows its phases on
//! stderr, then renders the report and exits 0 only when the container was updated.

use super::client::{decode, ApiClient, CliError};
use super::run::print_value;
use super::{render, Outcome, UpdateArgs};
use chrono::Utc;
use flotilla_shared::api::{CommandInfo, CreateCommand, DeliveryState, UpdateRecord};
use flotilla_shared::command::Command;
use flotilla_shared::duration::format_duration;
use flotilla_shared::update::{ContainerUpdateArgs, UpdateOutcome, UpdateReport};
use std::time::{Duration, Instant};

/// Pause between two looks at an update in progress.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Added to the update's run budget for `--wait`: delivery and the last poll.
const WAIT_MARGIN: Duration = Duration::from_secs(60);

fn secs(flag: &str, d: Option<Duration>) -> Result<Option<u32>, CliError> {
    d.map(|d| {
        u32::try_from(d.as_secs()).map_err(|_| CliError::Usage(format!("{flag} is too large")))
    })
    .transpose()
}

/// The `container.update` arguments from the flags, validated as the relay and agent will.
pub fn build_update(args: &UpdateArgs) -> Result<ContainerUpdateArgs, CliError> {
    let update = ContainerUpdateArgs {
        container: args.container.clone(),
        image: args.image.clone(),
        health: args.health.clone().unwrap_or_default(),
        health_timeout_secs: secs("--health-timeout", args.health_timeout)?,
        stable_secs: secs("--stable", args.stable)?,
        strategy: args.strategy.unwrap_or_default(),
        allow_drift: args.allow_drift,
    };
    Command::ContainerUpdate(update.clone())
        .validate()
        .map_err(|e| CliError::Usage(e.into()))?;
    Ok(update)
}

/// How long `--wait` waits by default: the update's run budget (both health gates, stability
/// windows and slack for pull and stop/start) plus a minute.
pub fn default_wait(update: &ContainerUpdateArgs) -> Duration {
    flotilla_shared::update::run_budget(update) + WAIT_MARGIN
}

pub async fn update(
    client: &ApiClient,
    args: &UpdateArgs,
    json: bool,
) -> Result<Outcome, CliError> {
    let update = build_update(args)?;
    let wait_timeout = args.wait_timeout.unwrap_or_else(|| default_wait(&update));
    let body = CreateCommand {
        command: Command::ContainerUpdate(update),
        ttl_secs: args.ttl.map(|d| d.as_secs()),
    };
    let agent = args.agent.as_str();
    let value = client
        .post(
            &["api", "v1", "agents", agent, "commands"],
            &[],
            &body,
            Duration::ZERO,
        )
        .await?;
    let info: CommandInfo = decode(&value, "command")?;
    if !args.wait {
        print_value(&value, json, || {
            render::command_info(&info, Utc::now())
                + &format!(
                    "follow it with: flotilla updates {agent} --container {}\n",
                    args.container
                )
        });
        return Ok(update_outcome(&info, false, wait_timeout));
    }
    if !json {
        eprintln!(
            "update {} sent to agent {agent}; waiting up to {} for the outcome",
            info.id,
            format_duration(wait_timeout)
        );
    }
    let deadline = Instant::now() + wait_timeout;
    let mut last_phase: Option<String> = None;
    let mut last_pull = None;
    let mut final_state = info.state.is_final();
    while !final_state && Instant::now() < deadline {
        tokio::time::sleep(POLL_INTERVAL).await;
        // The history row follows the agent's progress events and finishes with the result in
        // the same transaction as the delivery.
        let records = client
            .get(
                &["api", "v1", "agents", agent, "updates"],
                &[("command_id", info.id.clone()), ("limit", "1".into())],
            )
            .await?;
        let records: Vec<UpdateRecord> = decode(&records, "updates")?;
        match records.first() {
            Some(r) => {
                if !json && r.phase.is_some() && r.phase != last_phase {
                    eprintln!("  phase: {}", r.phase.as_deref().unwrap_or_default());
                    last_phase = r.phase.clone();
                }
                if !json && r.active && r.pull.is_some() && r.pull != last_pull {
                    if let Some(p) = r.pull {
                        eprintln!("  pulled {}/{} layers", p.done, p.total);
                    }
                    last_pull = r.pull;
                }
                final_state = !r.active;
            }
            None => {
                let v = client
                    .get(
                        &["api", "v1", "commands", &info.id],
                        &[("agent", agent.to_string())],
                    )
                    .await?;
                final_state = decode::<CommandInfo>(&v, "command")?.state.is_final();
            }
        }
    }
    let value = client
        .get(
            &["api", "v1", "commands", &info.id],
            &[("agent", agent.to_string())],
        )
        .await?;
    let info: CommandInfo = decode(&value, "command")?;
    print_value(&value, json, || render::command_info(&info, Utc::now()));
    Ok(update_outcome(&info, true, wait_timeout))
}

/// The report an update's result carries (on failure too), if any.
pub fn report_of(info: &CommandInfo) -> Option<UpdateReport> {
    info.result
        .as_ref()
        .and_then(|r| r.output.as_ref())
        .and_then(|o| serde_json::from_value(o.clone()).ok())
}

/// Success only when the container was updated; without `--wait` being accepted is enough.
pub fn update_outcome(info: &CommandInfo, waited: bool, wait_timeout: Duration) -> Outcome {
    if !info.state.is_final() {
        return if waited {
            Outcome::Failed(format!(
                "update {} is still {} after waiting {}; follow it with `flotilla updates {}`",
                info.id,
                info.state.as_str(),
                format_duration(wait_timeout),
                info.agent_id
            ))
        } else {
            Outcome::Success
        };
    }
    let report = report_of(info);
    if info.state == DeliveryState::Succeeded
        && report.as_ref().map(|r| r.outcome) == Some(UpdateOutcome::Updated)
    {
        return Outcome::Success;
    }
    let how = match &report {
        Some(r) => r.outcome.as_str().to_string(),
        None => info.state.as_str().to_string(),
    };
    let why = report
        .as_ref()
        .and_then(|r| r.reason.clone())
        .or_else(|| {
            info.result
                .as_ref()
                .and_then(|r| r.error.as_ref())
                .map(|e| e.message.clone())
        })
        .map(|w| format!(": {w}"))
        .unwrap_or_default();
    Outcome::Failed(format!("update {} {how}{why}", info.id))
}
