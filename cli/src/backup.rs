//! `flotilla backups`: the fleet's (or one agent's) backup state from the relay's history; and
//! `flotilla backup list|run|verify|restore|forget`: `backup.*` commands to one agent, always waited
//! for, their typed output rendered, exit 0 only when the command succeeded.

use super::client::{decode, ApiClient, CliError};
use super::run::print_value;
use super::{render, Outcome};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use flotilla_shared::api::{CommandInfo, CreateCommand, DeliveryState};
use flotilla_shared::backup::{
    AgentBackups, BackupListArgs, BackupRestoreArgs, BackupRunArgs, BackupVerifyArgs,
    DatabaseState, FleetBackups,
};
use flotilla_shared::command::Command;
use flotilla_shared::duration::{format_duration, parse_duration};
use std::time::{Duration, Instant};

/// How long `backup list` and `backup verify` wait by default.
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(60);
/// First and longest pause between two looks at a command in progress: quick answers come
/// quickly, a six-hour restore is not polled twice a second.
const FIRST_POLL: Duration = Duration::from_millis(250);
const MAX_POLL: Duration = Duration::from_secs(5);

/// `flotilla backups`.
#[derive(Debug, Args)]
pub struct BackupsArgs {
    /// The agent; without it, the latest backup of every database in the fleet.
    pub agent: Option<String>,
    /// Fleet view: only databases in this state (ok, failed or stale).
    #[arg(long, conflicts_with = "agent")]
    pub status: Option<DatabaseState>,
    /// Agent view: only this database (its key, `<job>/<database>`).
    #[arg(long, requires = "agent")]
    pub key: Option<String>,
    /// Most rows: history rows of the agent (default 50), databases of the fleet (default
    /// 1000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Forget the database named by --key on that agent (every stored row of it): for a
    /// database that was dropped or a job that was renamed, which would stay stale for ever.
    #[arg(long, requires = "key")]
    pub forget: bool,
}

/// Where a `backup.*` command goes and how long to wait for it.
#[derive(Debug, Args)]
pub struct BackupTarget {
    /// The agent.
    #[arg(long)]
    pub agent: String,
    /// How long to wait for the outcome (default 6h for run and restore, 60s for list and
    /// verify).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// How long the relay keeps trying to deliver it (default: the relay's default TTL, at
    /// least 6h for run and restore).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
}

/// `flotilla backup ...`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// The agent's backups, newest first (its own catalogue).
    List {
        #[command(flatten)]
        target: BackupTarget,
        /// Only backups of this job.
        #[arg(long)]
        job: Option<String>,
        /// Only backups of this database.
        #[arg(long)]
        database: Option<String>,
        /// At most this many (default 100, at most 1000).
        #[arg(long)]
        limit: Option<u32>,
        /// The backups at the agent's off-site destinations (every agent's, from the
        /// manifests stored there) instead of its catalogue: on a replacement server.
        #[arg(long)]
        offsite: bool,
        /// With --offsite: only this destination.
        #[arg(long, requires = "offsite")]
        destination: Option<String>,
        /// With --offsite: only the backups made by this agent (its name).
        #[arg(long, requires = "offsite")]
        source_agent: Option<String>,
    },
    /// Run a backup job now (every job without --job) and show each database's outcome.
    Run {
        #[command(flatten)]
        target: BackupTarget,
        /// The job to run.
        #[arg(long)]
        job: Option<String>,
    },
    /// Check a backup: its checksum, decompression and the engine's own listing of the dump.
    Verify {
        #[command(flatten)]
        target: BackupTarget,
        /// The backup's id (`bk_...`, from `flotilla backup list`).
        id: String,
    },
    /// Restore a backup into the database it came from, or into another one.
    Restore {
        #[command(flatten)]
        target: BackupTarget,
        /// The backup's id (`bk_...`, from `flotilla backup list`).
        id: String,
        /// Restore into this container instead of the one the backup came from.
        #[arg(long)]
        into: Option<String>,
        /// Restore into this database instead of the backup's own (created if missing).
        #[arg(long)]
        database: Option<String>,
        /// Restore even when the target database already holds tables.
        #[arg(long)]
        force: bool,
        /// Restore from the off-site copy (see `backup list --offsite`): downloaded and
        /// checksum-verified by the agent before anything is written.
        #[arg(long)]
        offsite: bool,
        /// With --offsite: only look at this destination.
        #[arg(long, requires = "offsite")]
        destination: Option<String>,
        /// With --offsite: the agent that made the backup (when two share the id).
        #[arg(long, requires = "offsite")]
        source_agent: Option<String>,
        /// An age identity file ON THE AGENT'S HOST decrypting an encrypted backup (the key
        /// never travels through the relay).
        #[arg(long)]
        identity: Option<String>,
    },
    /// Stop expecting a backup job (a discovered database whose container was removed on
    /// purpose): its runs stop failing, its backups stay, the relay audits it.
    Forget {
        #[command(flatten)]
        target: BackupTarget,
        /// The job (for a discovered database: its container's name).
        job: String,
    },
}

impl BackupCommand {
    pub fn target(&self) -> &BackupTarget {
        match self {
            BackupCommand::List { target, .. }
            | BackupCommand::Run { target, .. }
            | BackupCommand::Verify { target, .. }
            | BackupCommand::Restore { target, .. }
            | BackupCommand::Forget { target, .. } => target,
        }
    }

    /// The command to send, validated as the relay and agent will.
    pub fn command(&self) -> Result<Command, CliError> {
        let command = match self {
            BackupCommand::List {
                job,
                database,
                limit,
                offsite,
                destination,
                source_agent,
                ..
            } => Command::BackupList(BackupListArgs {
                job: job.clone(),
                database: database.clone(),
                limit: *limit,
                offsite: *offsite,
                destination: destination.clone(),
                source_agent: source_agent.clone(),
            }),
            BackupCommand::Run { job, .. } => {
                Command::BackupRun(BackupRunArgs { job: job.clone() })
            }
            BackupCommand::Verify { id, .. } => {
                Command::BackupVerify(BackupVerifyArgs { id: id.clone() })
            }
            BackupCommand::Restore {
                id,
                into,
                database,
                force,
                offsite,
                destination,
                source_agent,
                identity,
                ..
            } => Command::BackupRestore(BackupRestoreArgs {
                id: id.clone(),
                into: into.clone(),
                database: database.clone(),
                force: *force,
                offsite: *offsite,
                destination: destination.clone(),
                source_agent: source_agent.clone(),
                identity_file: identity.clone(),
            }),
            BackupCommand::Forget { job, .. } => {
                Command::BackupForget(flotilla_shared::upkeep::BackupForgetArgs {
                    job: job.clone(),
                })
            }
        };
        command.validate().map_err(|e| CliError::Usage(e.into()))?;
        Ok(command)
    }
}

/// How long a backup command is waited for when `--timeout` is not given: as long as the
/// relay keeps a long one (run, restore) by default, a minute for the others.
pub fn default_timeout(command: &Command) -> Duration {
    if flotilla_shared::command::is_long(command) {
        flotilla_shared::command::LONG_BACKUP_TTL
    } else {
        SHORT_TIMEOUT
    }
}

/// `flotilla backup ...`: sends the command, waits for its outcome, renders it.
pub async fn backup(
    client: &ApiClient,
    cmd: &BackupCommand,
    json: bool,
) -> Result<Outcome, CliError> {
    let command = cmd.command()?;
    let target = cmd.target();
    let timeout = target.timeout.unwrap_or_else(|| default_timeout(&command));
    let kind = command.kind();
    let body = CreateCommand {
        command,
        ttl_secs: target.ttl.map(|d| d.as_secs()),
    };
    let agent = target.agent.as_str();
    let mut value = client
        .post(
            &["api", "v1", "agents", agent, "commands"],
            &[],
            &body,
            Duration::ZERO,
        )
        .await?;
    let mut info: CommandInfo = decode(&value, "command")?;
    if !json && !info.state.is_final() {
        eprintln!(
            "{kind} {} sent to agent {agent}; waiting up to {} for the outcome",
            info.id,
            format_duration(timeout)
        );
    }
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_POLL;
    while !info.state.is_final() && Instant::now() < deadline {
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(MAX_POLL);
        value = client
            .get(
                &["api", "v1", "commands", &info.id],
                &[("agent", agent.to_string())],
            )
            .await?;
        info = decode(&value, "command")?;
    }
    print_value(&value, json, || render::command_info(&info, Utc::now()));
    Ok(backup_outcome(&info, timeout))
}

/// Success only when the command succeeded; a failure names its error code and message.
pub fn backup_outcome(info: &CommandInfo, timeout: Duration) -> Outcome {
    if info.state == DeliveryState::Succeeded {
        return Outcome::Success;
    }
    if !info.state.is_final() {
        return Outcome::Failed(format!(
            "{} {} is still {} after waiting {}; see it later with `flotilla command show {}`",
            info.kind,
            info.id,
            info.state.as_str(),
            format_duration(timeout),
            info.id
        ));
    }
    let why = info
        .result
        .as_ref()
        .and_then(|r| r.error.as_ref())
        .map(|e| format!(": {} ({})", e.message, e.code))
        .unwrap_or_default();
    Outcome::Failed(format!(
        "{} {} {}{why}",
        info.kind,
        info.id,
        info.state.as_str()
    ))
}

/// `flotilla backups [<agent>]`: a view, so it succeeds whatever state the backups are in.
pub async fn backups(
    client: &ApiClient,
    args: &BackupsArgs,
    json: bool,
    now: DateTime<Utc>,
) -> Result<Outcome, CliError> {
    let mut query = Vec::new();
    if let Some(l) = args.limit {
        query.push(("limit", l.to_string()));
    }
    if let (true, Some(agent), Some(key)) = (args.forget, &args.agent, &args.key) {
        client
            .delete_with_query(
                &["api", "v1", "agents", agent, "backups"],
                &[("key", key.clone())],
            )
            .await?;
        if !json {
            println!("forgot {key} on agent {agent}");
        }
        return Ok(Outcome::Success);
    }
    match &args.agent {
        Some(agent) => {
            if let Some(k) = &args.key {
                query.push(("key", k.clone()));
            }
            let value = client
                .get(&["api", "v1", "agents", agent, "backups"], &query)
                .await?;
            let backups: AgentBackups = decode(&value, "agent backups")?;
            print_value(&value, json, || render::agent_backups(&backups, now));
        }
        None => {
            if let Some(s) = args.status {
                query.push(("status", s.as_str().to_string()));
            }
            let value = client.get(&["api", "v1", "backups"], &query).await?;
            let fleet: FleetBackups = decode(&value, "fleet backups")?;
            print_value(&value, json, || render::fleet_backups(&fleet, now));
        }
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests;
