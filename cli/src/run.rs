//! `flotilla run`: one command to one agent, or a fan-out job to every agent a selector matches,
//! optionally waiting for the outcome.

use super::client::{decode, ApiClient, CliError};
use super::{render, Outcome, RunArgs};
use chrono::Utc;
use flotilla_shared::api::{CommandInfo, CreateCommand, CreateJob, JobInfo, JobState};
use flotilla_shared::command::Command;
use serde_json::{Map, Value};
use std::time::{Duration, Instant};

/// The relay holds a `?wait=` request open for at most this long.
const MAX_SERVER_WAIT: Duration = Duration::from_secs(300);
/// Pause between two polls of a job or command that is not final yet.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The command's arguments: `--args` JSON first, then the dedicated flags on top (a flag says
/// exactly what the operator meant, so it wins over the same key in `--args`).
pub fn build_command(args: &RunArgs) -> Result<Command, CliError> {
    let mut map = match &args.args {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(other) => {
                return Err(CliError::Usage(format!(
                    "--args must be a JSON object, not {other}"
                )))
            }
            Err(e) => return Err(CliError::Usage(format!("--args is not valid JSON: {e}"))),
        },
    };
    if let Some(c) = &args.container {
        map.insert("container".into(), c.clone().into());
    }
    if let Some(t) = args.timeout {
        let secs = u32::try_from(t.as_secs())
            .map_err(|_| CliError::Usage("--timeout is too large".into()))?;
        map.insert("timeout_secs".into(), secs.into());
    }
    if let Some(n) = args.tail {
        map.insert("tail".into(), n.into());
    }
    if let Some(s) = &args.since {
        map.insert("since".into(), s.clone().into());
    }
    if args.timestamps {
        map.insert("timestamps".into(), true.into());
    }
    if args.all {
        map.insert("all".into(), true.into());
    }
    if args.running {
        map.insert("all".into(), false.into());
    }
    let command = Command::from_parts(&args.kind, Value::Object(map))
        .map_err(|e| CliError::Usage(e.into()))?;
    command.validate().map_err(|e| CliError::Usage(e.into()))?;
    Ok(command)
}

pub async fn run(client: &ApiClient, args: &RunArgs, json: bool) -> Result<Outcome, CliError> {
    let command = build_command(args)?;
    let ttl_secs = args.ttl.map(|d| d.as_secs());
    let deadline = Instant::now() + args.wait_timeout;
    match (&args.agent, &args.selector) {
        (Some(agent), None) => {
            let body = CreateCommand { command, ttl_secs };
            send_to_agent(client, agent, &body, args.wait, args.wait_timeout, json).await
        }
        (None, Some(selector)) => {
            let body = CreateJob {
                selector: selector.clone(),
                command,
                max_concurrency: args.max_concurrency,
                max_errors: args.max_errors,
                ttl_secs,
            };
            let mut value = client
                .post(&["api", "v1", "jobs"], &[], &body, Duration::ZERO)
                .await?;
            let mut job: JobInfo = decode(&value, "job")?;
            if args.wait {
                while job.state == JobState::Running && Instant::now() < deadline {
                    tokio::time::sleep(POLL_INTERVAL).await;
                    value = client.get(&["api", "v1", "jobs", &job.id], &[]).await?;
                    job = decode(&value, "job")?;
                }
            }
            print_value(&value, json, || {
                render::job_info(&job, Utc::now()) + &render::job_outputs(&job)
            });
            Ok(job_outcome(&job, args.wait, args.wait_timeout))
        }
        // clap's ArgGroup makes exactly one of them required; this is for completeness.
        _ => Err(CliError::Usage(
            "give exactly one of --agent or --selector".into(),
        )),
    }
}

/// Prints the API's JSON as it came, or the human form.
/// `POST /api/v1/agents/{agent}/commands` with `body`; with `wait`, lets the relay hold the
/// answer (up to [`MAX_SERVER_WAIT`]) and then polls the command until it is final or
/// `wait_timeout` passed. Prints it and returns the outcome.
pub async fn send_to_agent<B: serde::Serialize>(
    client: &ApiClient,
    agent: &str,
    body: &B,
    wait: bool,
    wait_timeout: Duration,
    json: bool,
) -> Result<Outcome, CliError> {
    let deadline = Instant::now() + wait_timeout;
    let server_wait = if wait {
        wait_timeout.min(MAX_SERVER_WAIT)
    } else {
        Duration::ZERO
    };
    let query = if wait {
        vec![("wait", server_wait.as_secs().max(1).to_string())]
    } else {
        Vec::new()
    };
    let mut value = client
        .post(
            &["api", "v1", "agents", agent, "commands"],
            &query,
            body,
            server_wait,
        )
        .await?;
    let mut info: CommandInfo = decode(&value, "command")?;
    if wait {
        while !info.state.is_final() && Instant::now() < deadline {
            tokio::time::sleep(POLL_INTERVAL).await;
            value = client
                .get(
                    &["api", "v1", "commands", &info.id],
                    &[("agent", info.agent_id.clone())],
                )
                .await?;
            info = decode(&value, "command")?;
        }
    }
    print_value(&value, json, || render::command_info(&info, Utc::now()));
    Ok(command_outcome(&info, wait, wait_timeout))
}

pub fn print_value(value: &Value, json: bool, human: impl FnOnce() -> String) {
    if json {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        emit(&format!("{text}\n"));
    } else {
        emit(&human());
    }
}

/// Writes to stdout. A reader that went away (`flotilla agents | head`) is not an error worth
/// a panic; any other failure is reported once on stderr.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: cannot write to stdout: {e}");
        }
    }
}

/// Success only for a command that succeeded; without `--wait` being accepted is enough.
pub fn command_outcome(info: &CommandInfo, waited: bool, wait_timeout: Duration) -> Outcome {
    use flotilla_shared::api::DeliveryState as S;
    match info.state {
        S::Succeeded => Outcome::Success,
        S::Failed | S::Rejected | S::Undelivered | S::Skipped => {
            let reason = info
                .result
                .as_ref()
                .and_then(|r| r.error.as_ref())
                .map(|e| format!(": {}", e.message))
                .unwrap_or_default();
            Outcome::Failed(format!(
                "command {} {}{reason}",
                info.id,
                info.state.as_str()
            ))
        }
        _ if waited => Outcome::Failed(format!(
            "command {} is still {} after waiting {}",
            info.id,
            info.state.as_str(),
            flotilla_shared::duration::format_duration(wait_timeout)
        )),
        _ => Outcome::Success,
    }
}

/// Success when the job completed with no failed or rejected target (undelivered targets were
/// offline, which is not an error of the command); without `--wait` being accepted is enough.
pub fn job_outcome(job: &JobInfo, waited: bool, wait_timeout: Duration) -> Outcome {
    let errors = job.counts.failed + job.counts.rejected;
    match job.state {
        JobState::Stopped => Outcome::Failed(format!(
            "job {} stopped after {errors} errors (max errors {})",
            job.id,
            job.max_errors
                .map(|e| e.to_string())
                .unwrap_or_else(|| "unlimited".into())
        )),
        JobState::Completed if errors > 0 => Outcome::Failed(format!(
            "job {} completed with {errors} of {} targets failed or rejected",
            job.id, job.counts.targets
        )),
        JobState::Completed => Outcome::Success,
        JobState::Running if waited => Outcome::Failed(format!(
            "job {} is still running after waiting {}",
            job.id,
            flotilla_shared::duration::format_duration(wait_timeout)
        )),
        JobState::Running => Outcome::Success,
    }
}
