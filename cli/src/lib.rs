//! The `flotilla` operator CLI: a thin client of the relay's dashboard API. Requests and answers
//! are the typed structs of `flotilla_shared::api`; `--json` prints the API's JSON unchanged.
//!
//! Exit status: 0 on success; 1 when what was asked for did not happen (a command failed, was
//! rejected or undelivered, a job had errors or stopped, an update ended other than `updated`,
//! a backup command did not succeed, a wait timed out); 2 on usage errors and API errors, with
//! `error: <message>` on stderr.

mod alerts;
mod backup;
mod client;
mod events;
mod release;
mod render;
// issue 17 parts 4 and 6: backup.forget and image.prune outputs
mod render_upkeep;
mod rollout;
mod run;
mod update;

pub use alerts::{AlertsArgs, AlertsCommand};
pub use backup::{BackupCommand, BackupTarget, BackupsArgs};
pub use client::{ApiClient, CliError};
pub use release::{ReleaseCommand, UpgradeArgs};
pub use rollout::{RolloutCommand, StartArgs as RolloutStartArgs};

use chrono::Utc;
use clap::{Args, Parser, Subcommand};
use flotilla_shared::api::{
    AgentDetail, AgentInfo, ApiTokenCreated, ApiTokenInfo, AuditRecord, CommandInfo,
    CreateApiToken, CreateEnrollmentToken, EnrollmentTokenCreated, EnrollmentTokenInfo,
    EventRecord, JobInfo, PatchAgent, RelayStatus, Scope, UpdateRecord,
};
use flotilla_shared::duration::parse_duration;
use flotilla_shared::limit::Limit;
use flotilla_shared::selector::{parse_labels, Labels, Selector};
use flotilla_shared::update::{HealthSpec, UpdateStrategy};
use run::print_value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Operate a Flotilla fleet through its relay.
#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version = flotilla_shared::release::version(),
    propagate_version = true
)]
pub struct Cli {
    /// Base URL of the relay's API.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_ADDR",
        default_value = "http://127.0.0.1:8700"
    )]
    pub addr: String,
    /// API token (the relay's admin token, or one made with `flotilla api-token create`).
    #[arg(long, global = true, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the API token from this file (trimmed) instead of --token.
    #[arg(long, global = true, env = "FLOTILLA_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Also trust the CA certificates in this PEM file for an https relay.
    #[arg(long, global = true, env = "FLOTILLA_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Print the API's JSON instead of the human form.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Enrollment tokens, with which new agents join the fleet.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List agents.
    Agents {
        /// Only agents matching this label selector (`region=eu,tier!=build,gpu,!old`).
        #[arg(long)]
        selector: Option<Selector>,
    },
    /// Inspect and manage one agent.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Send a command to one agent (--agent) or to every agent a selector matches (--selector).
    Run(RunArgs),
    /// Update a container to a new image, health-checked, rolled back if the new one fails.
    Update(UpdateArgs),
    /// Update history: one agent's (or, without an agent, the fleet's) container updates.
    Updates {
        /// The agent; without it, every agent's updates.
        agent: Option<String>,
        /// Only updates of this container (name or id).
        #[arg(long)]
        container: Option<String>,
        /// Only updates still in progress.
        #[arg(long)]
        active: bool,
        /// Most updates to show, newest first (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Backup state: the latest backup of every database in the fleet, or one agent's
    /// databases, alert level and history.
    Backups(BackupsArgs),
    /// Database backups on one agent: list, run, verify, restore (waits for the outcome).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Alerts (firing by default; `--watch` follows them), and `alerts ack|silence|silences|
    /// unsilence`.
    Alerts(AlertsArgs),
    /// Canary rollouts: start one, follow it (`status --watch`), pause, resume, promote,
    /// abort (`--revert`), list.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Agent builds on the relay: publish, list, mark broken (agents upgrade with
    /// `flotilla agent upgrade` or `flotilla rollout start --agent-version`).
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Commands already sent.
    #[command(subcommand)]
    Command(CommandCommand),
    /// Fan-out jobs already created.
    #[command(subcommand)]
    Job(JobCommand),
    /// API tokens for operators and automation.
    #[command(name = "api-token", subcommand)]
    ApiToken(ApiTokenCommand),
    /// The audit trail: who did what and when, newest first.
    Audit {
        /// Most rows to show (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Tail the relay's live event stream: one line per event (`--json`: one event object
    /// per line) until Ctrl-C.
    Events {
        /// Only these kinds: a comma list of kind prefixes (`alert`, `rollout,update.finished`).
        #[arg(long)]
        kinds: Option<String>,
        /// Only events about agents matching this label selector (events about no agent pass).
        #[arg(long)]
        selector: Option<Selector>,
    },
    /// The relay's health, version and key fingerprint (no token needed).
    Status,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an enrollment token; its secret is shown only this once.
    Create {
        /// Labels every agent enrolled with it gets (`k=v,k2=v2`).
        #[arg(long, value_parser = parse_labels)]
        labels: Option<Labels>,
        /// How long it stays valid (`90s`, `30m`, `1h`, `7d`; default 1h).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// How many agents may enroll with it (default 1).
        #[arg(long)]
        uses: Option<u32>,
        /// Free text shown in `token list`.
        #[arg(long)]
        note: Option<String>,
        /// Label keys an enrolling agent may set itself (`key1,key2`, or `*` for any); the
        /// token's own labels always win. Default: none.
        #[arg(long, value_delimiter = ',')]
        agent_labels: Vec<String>,
    },
    /// List enrollment tokens (never their secrets).
    List,
    /// Revoke an enrollment token so nobody can enroll with it any more.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Everything the agent's latest heartbeat says: host, filesystems, Docker, containers.
    Show { id: String },
    /// Replace the agent's labels (`k=v,k2=v2`; an empty string removes them all).
    Label {
        id: String,
        #[arg(value_parser = parse_labels)]
        labels: Labels,
    },
    /// Revoke the agent: it is disconnected and refused from then on.
    Revoke { id: String },
    /// Upgrade (or, with --rollback, downgrade) the agent to a published build: the relay sends
    /// the signed manifest for the agent's architecture; the agent's updater swaps the binary
    /// and reverts it if the new version does not come back.
    #[command(disable_version_flag = true)]
    Upgrade(UpgradeArgs),
    /// Events the agent raised (container died, health changed, command rejected, ...).
    Events {
        id: String,
        /// Only events of this kind (`container.died`, `command.rejected`, ...).
        #[arg(long)]
        kind: Option<String>,
        /// At most this many events.
        #[arg(long)]
        limit: Option<u32>,
        /// Only events with an id above this one.
        #[arg(long)]
        after: Option<i64>,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["agent", "selector"])))]
pub struct RunArgs {
    /// The agent to run it on.
    #[arg(long)]
    pub agent: Option<String>,
    /// Run it on every agent matching this selector, as one job.
    #[arg(long)]
    pub selector: Option<Selector>,
    /// Command kind: ping, container.list, container.inspect, container.start, container.stop,
    /// container.restart, container.logs, container.update (easier with `flotilla update`),
    /// backup.list, backup.run, backup.verify, backup.restore, backup.forget (easier with
    /// `flotilla backup`), image.prune (`--args '{"dry_run": true}'` to only list).
    pub kind: String,
    /// Container name or id.
    #[arg(long)]
    pub container: Option<String>,
    /// Stop/restart: how long to wait after SIGTERM before killing (`10`, `30s`).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Logs: the last N lines.
    #[arg(long)]
    pub tail: Option<u32>,
    /// Logs: only lines since this time (RFC 3339 or unix seconds).
    #[arg(long)]
    pub since: Option<String>,
    /// Logs: prefix each line with its timestamp.
    #[arg(long)]
    pub timestamps: bool,
    /// List: include stopped containers (the default).
    #[arg(long, conflicts_with = "running")]
    pub all: bool,
    /// List: only running containers.
    #[arg(long)]
    pub running: bool,
    /// Arguments as a JSON object; the flags above override the same keys.
    #[arg(long)]
    pub args: Option<String>,
    /// How long the relay keeps trying to deliver it (default 10m).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Wait for the outcome and exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub wait_timeout: Duration,
    /// Jobs: most agents working on it at once (`5` or `10%`).
    #[arg(long, conflicts_with = "agent")]
    pub max_concurrency: Option<Limit>,
    /// Jobs: stop dispatching once more than this many agents failed (`0`, `2` or `10%`).
    #[arg(long, conflicts_with = "agent")]
    pub max_errors: Option<Limit>,
}

/// `flotilla update`: a `container.update` command to one agent.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The agent running the container.
    #[arg(long)]
    pub agent: String,
    /// The container to update (name or id).
    #[arg(long)]
    pub container: String,
    /// The image to update to (`registry/repo:tag` or `registry/repo@sha256:...`).
    #[arg(long)]
    pub image: String,
    /// How the new container proves it works: auto (its Docker HEALTHCHECK if it has one, else
    /// running), docker, running, http:<port><path> (e.g. http:8080/healthz) or tcp:<port>.
    #[arg(long)]
    pub health: Option<HealthSpec>,
    /// Deadline for the health check (`120s`, `5m`; default 2m).
    #[arg(long, value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    /// How long the new container must then stay up without restarting (default 10s).
    #[arg(long, value_parser = parse_duration)]
    pub stable: Option<Duration>,
    /// stop-first (default): stop the old container, then start the new one. start-first: start
    /// the new one first (only for containers without published ports).
    #[arg(long)]
    pub strategy: Option<UpdateStrategy>,
    /// Wait for the outcome, render the report, and exit 0 only if the container was updated.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (default: long enough for the pull, both health gates and a
    /// rollback: 2 × (health timeout + stable) + 15m).
    #[arg(long, value_parser = parse_duration)]
    pub wait_timeout: Option<Duration>,
    /// How long the relay keeps trying to deliver it (default: the relay's default TTL, but at
    /// least as long as --wait's default, so the delivery does not end while the agent works).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    // --- compose (issue 17, part 1) ---
    /// For a container of a compose project whose files the agent may not edit (outside its
    /// `[compose] allowed_dirs`): update the container only and report the drift.
    #[arg(long)]
    pub allow_drift: bool,
}

#[derive(Debug, Subcommand)]
pub enum CommandCommand {
    /// A command's state and result.
    Show {
        id: String,
        /// For a job's command: which agent's copy.
        #[arg(long)]
        agent: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// A job's state and the outcome on every target agent.
    Show { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ApiTokenCommand {
    /// Create an API token; its secret is shown only this once.
    Create {
        /// Who or what uses it (shown in the audit log).
        #[arg(long)]
        name: String,
        /// read < operate < admin.
        #[arg(long)]
        scope: Scope,
    },
    /// List API tokens (never their secrets).
    List,
    /// Revoke an API token; its next request is refused.
    Revoke {
        /// Token id (`tok_...`).
        id: String,
    },
}

/// What a CLI invocation concluded; [`main`] maps it to the exit status.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Exit 1, after printing the reason on stderr.
    Failed(String),
}

/// Runs the parsed command line and returns the process exit status.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(execute(&cli)) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failed(reason)) => {
            eprintln!("error: {reason}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The API token from `--token` / `FLOTILLA_TOKEN` or `--token-file` / `FLOTILLA_TOKEN_FILE`
/// (not both).
pub fn resolve_token(
    token: Option<&str>,
    token_file: Option<&std::path::Path>,
) -> Result<Option<String>, CliError> {
    let token = token.filter(|t| !t.trim().is_empty());
    match (token, token_file) {
        (Some(_), Some(_)) => Err(CliError::Usage(
            "both --token (FLOTILLA_TOKEN) and --token-file (FLOTILLA_TOKEN_FILE) are set; \
             use one"
                .into(),
        )),
        (Some(t), None) => Ok(Some(t.to_string())),
        (None, Some(path)) => client::read_token_file(path).map(Some),
        (None, None) => Ok(None),
    }
}

async fn execute(cli: &Cli) -> Result<Outcome, CliError> {
    let token = match resolve_token(cli.token.as_deref(), cli.token_file.as_deref()) {
        // `status` needs no token: a bad token setting must not stop it.
        Err(_) if matches!(cli.command, CliCommand::Status) => None,
        other => other?,
    };
    let client = ApiClient::with_ca_file(&cli.addr, token, cli.ca_file.as_deref())?;
    let json = cli.json;
    let now = Utc::now();
    match &cli.command {
        CliCommand::Token(TokenCommand::Create {
            labels,
            ttl,
            uses,
            note,
            agent_labels,
        }) => {
            let body = CreateEnrollmentToken {
                labels: labels.clone().unwrap_or_default(),
                ttl_secs: ttl.map(|d| d.as_secs()),
                max_uses: *uses,
                note: note.clone(),
                agent_label_keys: agent_labels.iter().map(|k| k.trim().to_string()).collect(),
            };
            let value = client
                .post(
                    &["api", "v1", "enrollment-tokens"],
                    &[],
                    &body,
                    Duration::ZERO,
                )
                .await?;
            let created: EnrollmentTokenCreated = client::decode(&value, "enrollment token")?;
            print_value(&value, json, || {
                render::enrollment_token_created(&created, &cli.addr, now)
            });
        }
        CliCommand::Token(TokenCommand::List) => {
            let value = client.get(&["api", "v1", "enrollment-tokens"], &[]).await?;
            let list: Vec<EnrollmentTokenInfo> = client::decode(&value, "enrollment tokens")?;
            print_value(&value, json, || render::enrollment_tokens(&list, now));
        }
        CliCommand::Token(TokenCommand::Revoke { id }) => {
            client
                .delete(&["api", "v1", "enrollment-tokens", id])
                .await?;
            print_done(json, id, "revoked enrollment token");
        }
        CliCommand::Agents { selector } => {
            let query: Vec<(&str, String)> = selector
                .iter()
                .map(|s| ("selector", s.to_string()))
                .collect();
            let value = client
                .get_all_pages(&["api", "v1", "agents"], &query)
                .await?;
            let list: Vec<AgentInfo> = client::decode(&value, "agents")?;
            print_value(&value, json, || render::agents(&list, now));
        }
        CliCommand::Agent(AgentCommand::Show { id }) => {
            let value = client.get(&["api", "v1", "agents", id], &[]).await?;
            let detail: AgentDetail = client::decode(&value, "agent")?;
            print_value(&value, json, || render::agent_detail(&detail, now));
        }
        CliCommand::Agent(AgentCommand::Label { id, labels }) => {
            let body = PatchAgent {
                labels: labels.clone(),
            };
            let value = client.patch(&["api", "v1", "agents", id], &body).await?;
            let agent: AgentInfo = client::decode(&value, "agent")?;
            print_value(&value, json, || {
                format!(
                    "agent {} ({}) labels: {}\n",
                    agent.id,
                    agent.name,
                    render::labels(&agent.labels)
                )
            });
        }
        CliCommand::Agent(AgentCommand::Revoke { id }) => {
            client.delete(&["api", "v1", "agents", id]).await?;
            print_done(json, id, "revoked agent");
        }
        CliCommand::Agent(AgentCommand::Events {
            id,
            kind,
            limit,
            after,
        }) => {
            let mut query = Vec::new();
            if let Some(k) = kind {
                query.push(("kind", k.clone()));
            }
            if let Some(a) = after {
                query.push(("after_id", a.to_string()));
            }
            if let Some(l) = limit {
                query.push(("limit", l.to_string()));
            }
            let value = client
                .get(&["api", "v1", "agents", id, "events"], &query)
                .await?;
            let events: Vec<EventRecord> = client::decode(&value, "events")?;
            print_value(&value, json, || render::events(&events));
        }
        CliCommand::Run(args) => return run::run(&client, args, json).await,
        CliCommand::Update(args) => return update::update(&client, args, json).await,
        CliCommand::Backups(args) => return backup::backups(&client, args, json, now).await,
        CliCommand::Backup(cmd) => return backup::backup(&client, cmd, json).await,
        CliCommand::Rollout(cmd) => return rollout::rollout(&client, cmd, json).await,
        CliCommand::Release(cmd) => return release::release(&client, cmd, json, &cli.addr).await,
        CliCommand::Agent(AgentCommand::Upgrade(args)) => {
            return release::upgrade(&client, args, json).await
        }
        CliCommand::Alerts(args) => return alerts::alerts(&client, args, json, now).await,
        CliCommand::Events { kinds, selector } => {
            return events::events(&client, kinds.as_deref(), selector.as_ref(), json).await
        }
        CliCommand::Updates {
            agent,
            container,
            active,
            limit,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(c) = container {
                query.push(("container", c.clone()));
            }
            if *active {
                query.push(("active", "true".into()));
            }
            let value = match agent {
                Some(id) => {
                    client
                        .get(&["api", "v1", "agents", id, "updates"], &query)
                        .await?
                }
                None => client.get(&["api", "v1", "updates"], &query).await?,
            };
            let list: Vec<UpdateRecord> = client::decode(&value, "updates")?;
            print_value(&value, json, || {
                render::updates(&list, now, agent.is_none())
            });
        }
        CliCommand::Command(CommandCommand::Show { id, agent }) => {
            let query: Vec<(&str, String)> = agent.iter().map(|a| ("agent", a.clone())).collect();
            let value = client.get(&["api", "v1", "commands", id], &query).await?;
            let info: CommandInfo = client::decode(&value, "command")?;
            print_value(&value, json, || render::command_info(&info, now));
        }
        CliCommand::Job(JobCommand::Show { id }) => {
            let value = client.get(&["api", "v1", "jobs", id], &[]).await?;
            let job: JobInfo = client::decode(&value, "job")?;
            print_value(&value, json, || {
                render::job_info(&job, now) + &render::job_outputs(&job)
            });
        }
        CliCommand::ApiToken(ApiTokenCommand::Create { name, scope }) => {
            let body = CreateApiToken {
                name: name.clone(),
                scope: *scope,
            };
            let value = client
                .post(&["api", "v1", "api-tokens"], &[], &body, Duration::ZERO)
                .await?;
            let created: ApiTokenCreated = client::decode(&value, "api token")?;
            print_value(&value, json, || render::api_token_created(&created));
        }
        CliCommand::ApiToken(ApiTokenCommand::List) => {
            let value = client.get(&["api", "v1", "api-tokens"], &[]).await?;
            let list: Vec<ApiTokenInfo> = client::decode(&value, "api tokens")?;
            print_value(&value, json, || render::api_tokens(&list, now));
        }
        CliCommand::ApiToken(ApiTokenCommand::Revoke { id }) => {
            client.delete(&["api", "v1", "api-tokens", id]).await?;
            print_done(json, id, "revoked API token");
        }
        CliCommand::Audit { limit } => {
            let value = client
                .get(&["api", "v1", "audit"], &[("limit", limit.to_string())])
                .await?;
            let rows: Vec<AuditRecord> = client::decode(&value, "audit trail")?;
            print_value(&value, json, || render::audit(&rows));
        }
        CliCommand::Status => {
            let value = client.get_public(&["healthz"]).await?;
            let status: RelayStatus = client::decode(&value, "relay status")?;
            print_value(&value, json, || render::relay_status(&status, &cli.addr));
        }
    }
    Ok(Outcome::Success)
}

/// DELETE answers 204 with no body; `--json` still prints an object scripts can read.
fn print_done(json: bool, id: &str, what: &str) {
    if json {
        run::emit(&format!(
            "{}\n",
            serde_json::json!({"id": id, "revoked": true})
        ));
    } else {
        run::emit(&format!("{what} {id}\n"));
    }
}

#[cfg(test)]
mod tests;
