//! Every SQL statement of the relay, written once for both backends (SQLite and PostgreSQL):
//! the row mappers and helpers shared by the domain files (`sql/<domain>.rs`, one per facade
//! file of the store), on the backend-neutral connection of [`tx`].
//!
//! Timestamps cross the seam as fixed-width RFC 3339 UTC text with microseconds (SQLite stores
//! that text, so text order is time order; PostgreSQL stores `timestamptz`), JSON as text of
//! the shared wire types. Statements use the common subset of the two dialects; where they
//! differ (JSON paths, `INSERT OR IGNORE`, two-argument `MIN`), [`Dialect`] writes the
//! fragment. Each function runs inside the transaction its caller (the backend) opened.

use super::{
    relay_error_codes, AgentAuth, AgentKey, AgentOrder, AgentPosition, AgentRecord, ApiCaller,
    AuditEntry, CommandLookup, EnrollRefusal, EventQuery, Finalised, HeartbeatWrite, JobStep,
    LatestBackup, NewAgent, NewApiToken, NewCommand, NewEnrollmentToken, NewJob, Pruned,
    RecordedBackups, ResultOutcome, StoreError, UpdateEnded, UpdateQuery,
};
use crate::model::jobs::plan_step;
use chrono::{DateTime, SecondsFormat, Utc};
use flotilla_shared::api::{
    AgentFacts, ApiTokenInfo, CommandInfo, DeliveryState, EnrollmentTokenInfo, EventRecord,
    JobCounts, JobInfo, JobState, JobTarget, PullLayers, Scope, UpdateRecord,
};
use flotilla_shared::backup::{BackupRecord, BackupReport, BackupStatus, ReportSource};
use flotilla_shared::command::{
    Command, CommandKind, CommandResult, ErrorInfo, ResultStatus, SignedCommand,
};
use flotilla_shared::heartbeat::{AgentEvent, EventKind, Heartbeat};
use flotilla_shared::selector::{Labels, Selector};
use flotilla_shared::update::{UpdateOutcome, UpdateReport};
use serde::de::DeserializeOwned;
use serde::Deserialize;

pub mod conn;
pub use conn::{
    params, params_from_iter, to_postgres, Conn, ConnExt, Dialect, Optional, Row, SqlError,
    SqlResult, SqliteConn, ToValue, Value,
};

pub(super) mod agents;
pub(super) mod alerts;
pub(super) mod audit;
pub(super) mod backups;
pub(super) mod cluster;
pub(super) mod commands;
pub(super) mod enrollment;
pub(super) mod events;
pub(super) mod fleet;
pub(super) mod jobs;
pub(super) mod metrics;
pub(super) mod notifications;
pub(super) mod relaybackups;
pub(super) mod releasefiles;
pub(super) mod releases;
pub(super) mod retention;
pub(super) mod rollouts;
pub(super) mod sessions;
pub(super) mod tokens;
pub(super) mod updates;

/// Inserts a command with its deliveries (and, for `container.update`, the update-history rows
/// of its dispatched targets) inside the caller's transaction. The one place these rows are
/// written: single commands, jobs and rollouts.
pub(super) fn insert_command(tx: &mut dyn Conn, c: &NewCommand) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO commands (id, kind, command, envelope, signature, audience, created_at, \
         expires_at, created_by, job_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            c.id,
            c.command.kind().as_str(),
            to_json(&c.command),
            c.signed.envelope,
            c.signed.signature,
            to_json(&c.audience),
            ts(c.created_at),
            ts(c.expires_at),
            c.created_by,
            c.job_id
        ],
    )?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO deliveries (command_id, agent_id, position, state, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (i, (agent_id, state)) in c.targets.iter().enumerate() {
            stmt.execute(params![
                c.id,
                agent_id,
                i as i64,
                state.as_str(),
                ts(c.created_at)
            ])?;
        }
    }
    if matches!(
        c.command.kind(),
        CommandKind::ContainerUpdate | CommandKind::ComposeUpdate
    ) {
        // A job's pending targets get their row when they are dispatched (`advance_job`).
        let dispatched: Vec<&str> = c
            .targets
            .iter()
            .filter(|(_, state)| *state != DeliveryState::Pending)
            .map(|(agent_id, _)| agent_id.as_str())
            .collect();
        start_updates(tx, &c.id, &dispatched, c.created_at)?;
    }
    Ok(())
}

/// States in which a delivery is still waiting to reach the agent or to finish.
const UNFINISHED: &str = "('pending','queued','sent','received')";

/// The namespace of the domain functions (`Sql::create_command(tx, ...)`).
pub(super) struct Sql;

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("bad timestamp {s:?}: {e}")))
}

fn parse_opt_ts(s: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    s.as_deref().map(parse_ts).transpose()
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("shared types serialise")
}

fn from_json<T: DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("bad {what} json: {e}")))
}

fn parse_state(s: &str) -> Result<DeliveryState, StoreError> {
    DeliveryState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("bad delivery state {s:?}")))
}

fn job_state_str(s: JobState) -> &'static str {
    match s {
        JobState::Running => "running",
        JobState::Completed => "completed",
        JobState::Stopped => "stopped",
    }
}

fn parse_job_state(s: &str) -> Result<JobState, StoreError> {
    match s {
        "running" => Ok(JobState::Running),
        "completed" => Ok(JobState::Completed),
        "stopped" => Ok(JobState::Stopped),
        other => Err(StoreError::Corrupt(format!("bad job state {other:?}"))),
    }
}

const AGENT_COLUMNS: &str = "id, name, public_key, labels, facts, enrolled_at, revoked_at, \
     agent_version, last_heartbeat, last_heartbeat_at, claimed_labels";
/// [`AGENT_COLUMNS`] without the heartbeat JSON (NULL in its place): listing many agents must
/// not parse every agent's last heartbeat; the heartbeat cache has the latest ones.
const AGENT_LIST_COLUMNS: &str = "id, name, public_key, labels, facts, enrolled_at, revoked_at, \
     agent_version, NULL, last_heartbeat_at, claimed_labels";

/// Raw agent row; converted outside the rusqlite closure so JSON errors surface as ours.
struct AgentRow {
    id: String,
    name: String,
    public_key: String,
    labels: String,
    facts: String,
    enrolled_at: String,
    revoked_at: Option<String>,
    agent_version: String,
    last_heartbeat: Option<String>,
    last_heartbeat_at: Option<String>,
    claimed_labels: String,
}

impl AgentRow {
    fn read(r: &Row) -> SqlResult<AgentRow> {
        Ok(AgentRow {
            id: r.get(0)?,
            name: r.get(1)?,
            public_key: r.get(2)?,
            labels: r.get(3)?,
            facts: r.get(4)?,
            enrolled_at: r.get(5)?,
            revoked_at: r.get(6)?,
            agent_version: r.get(7)?,
            last_heartbeat: r.get(8)?,
            last_heartbeat_at: r.get(9)?,
            claimed_labels: r.get(10)?,
        })
    }

    fn into_record(self) -> Result<AgentRecord, StoreError> {
        Ok(AgentRecord {
            labels: from_json("labels", &self.labels)?,
            claimed_labels: from_json("claimed_labels", &self.claimed_labels)?,
            facts: from_json::<AgentFacts>("facts", &self.facts)?,
            enrolled_at: parse_ts(&self.enrolled_at)?,
            revoked_at: parse_opt_ts(self.revoked_at)?,
            last_heartbeat: self
                .last_heartbeat
                .as_deref()
                .map(|s| from_json::<Heartbeat>("heartbeat", s))
                .transpose()?,
            last_heartbeat_at: parse_opt_ts(self.last_heartbeat_at)?,
            id: self.id,
            name: self.name,
            public_key: self.public_key,
            agent_version: self.agent_version,
        })
    }
}

const UPDATE_COLUMNS: &str = "u.command_id, u.agent_id, u.job_id, u.container, \
     u.container_name, u.image, u.health, u.strategy, u.requested_by, u.created_at, \
     COALESCE(u.state, d.state), u.phase, u.phase_at, u.outcome, u.error_code, u.error_message, \
     u.finished_at, u.report, u.layers_done, u.layers_total, u.group_id, u.compose_project, \
     u.compose_service";

/// Raw `updates` row (joined with its delivery's live state).
struct UpdateRow {
    command_id: String,
    agent_id: String,
    job_id: Option<String>,
    container: String,
    container_name: Option<String>,
    image: String,
    health: String,
    strategy: String,
    requested_by: String,
    created_at: String,
    state: Option<String>,
    phase: Option<String>,
    phase_at: Option<String>,
    outcome: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    finished_at: Option<String>,
    report: Option<String>,
    layers_done: Option<u32>,
    layers_total: Option<u32>,
    group_id: Option<String>,
    compose_project: Option<String>,
    compose_service: Option<String>,
}

impl UpdateRow {
    fn read(r: &Row) -> SqlResult<UpdateRow> {
        Ok(UpdateRow {
            command_id: r.get(0)?,
            agent_id: r.get(1)?,
            job_id: r.get(2)?,
            container: r.get(3)?,
            container_name: r.get(4)?,
            image: r.get(5)?,
            health: r.get(6)?,
            strategy: r.get(7)?,
            requested_by: r.get(8)?,
            created_at: r.get(9)?,
            state: r.get(10)?,
            phase: r.get(11)?,
            phase_at: r.get(12)?,
            outcome: r.get(13)?,
            error_code: r.get(14)?,
            error_message: r.get(15)?,
            finished_at: r.get(16)?,
            report: r.get(17)?,
            layers_done: r.get(18)?,
            layers_total: r.get(19)?,
            group_id: r.get(20)?,
            compose_project: r.get(21)?,
            compose_service: r.get(22)?,
        })
    }

    fn into_record(self) -> Result<UpdateRecord, StoreError> {
        let corrupt = |what: &str, v: &str| StoreError::Corrupt(format!("bad update {what} {v:?}"));
        let state = match self.state.as_deref() {
            Some(s) => parse_state(s)?,
            // Unfinished rows keep their delivery until it is final, so this cannot happen.
            None => return Err(corrupt("without a delivery state", &self.command_id)),
        };
        let outcome = match self.outcome.as_deref() {
            Some(o) => Some(
                serde_json::from_value(serde_json::Value::String(o.to_string()))
                    .map_err(|_| corrupt("outcome", o))?,
            ),
            None => None,
        };
        Ok(UpdateRecord {
            health: self
                .health
                .parse()
                .map_err(|_| corrupt("health", &self.health))?,
            strategy: self
                .strategy
                .parse()
                .map_err(|_| corrupt("strategy", &self.strategy))?,
            created_at: parse_ts(&self.created_at)?,
            active: self.finished_at.is_none(),
            state,
            phase_at: parse_opt_ts(self.phase_at)?,
            pull: match (self.layers_done, self.layers_total) {
                (Some(done), Some(total)) => Some(PullLayers { done, total }),
                _ => None,
            },
            outcome,
            error: self.error_code.map(|code| ErrorInfo {
                code,
                message: self.error_message.unwrap_or_default(),
            }),
            finished_at: parse_opt_ts(self.finished_at)?,
            report: self
                .report
                .as_deref()
                .map(|r| from_json::<UpdateReport>("update report", r))
                .transpose()?,
            command_id: self.command_id,
            agent_id: self.agent_id,
            job_id: self.job_id,
            container: self.container,
            container_name: self.container_name,
            image: self.image,
            phase: self.phase,
            requested_by: self.requested_by,
            group_id: self.group_id,
            compose_project: self.compose_project,
            compose_service: self.compose_service,
        })
    }
}

const BACKUP_COLUMNS: &str = "b.agent_id, b.run_id, b.source, b.job, b.key, b.container, \
     b.database, b.engine, b.status, b.error, b.backup_id, b.size_bytes, b.started_at, \
     b.finished_at";

/// Raw `backup_results` row ([`BACKUP_COLUMNS`]).
struct BackupRow {
    agent_id: String,
    run_id: String,
    source: String,
    job: Option<String>,
    key: String,
    container: Option<String>,
    database: Option<String>,
    engine: Option<String>,
    status: String,
    error: Option<String>,
    backup_id: Option<String>,
    size_bytes: Option<i64>,
    started_at: String,
    finished_at: String,
}

impl BackupRow {
    fn read(r: &Row) -> SqlResult<BackupRow> {
        Ok(BackupRow {
            agent_id: r.get(0)?,
            run_id: r.get(1)?,
            source: r.get(2)?,
            job: r.get(3)?,
            key: r.get(4)?,
            container: r.get(5)?,
            database: r.get(6)?,
            engine: r.get(7)?,
            status: r.get(8)?,
            error: r.get(9)?,
            backup_id: r.get(10)?,
            size_bytes: r.get(11)?,
            started_at: r.get(12)?,
            finished_at: r.get(13)?,
        })
    }

    fn into_record(self) -> Result<BackupRecord, StoreError> {
        let status = match self.status.as_str() {
            "success" => BackupStatus::Success,
            "failed" => BackupStatus::Failed,
            other => return Err(StoreError::Corrupt(format!("bad backup status {other:?}"))),
        };
        Ok(BackupRecord {
            status,
            size_bytes: self.size_bytes.map(|n| n.max(0) as u64),
            started_at: parse_ts(&self.started_at)?,
            finished_at: parse_ts(&self.finished_at)?,
            agent_id: self.agent_id,
            run_id: self.run_id,
            source: self.source,
            job: self.job,
            key: self.key,
            container: self.container,
            database: self.database,
            engine: self.engine,
            error: self.error,
            backup_id: self.backup_id,
        })
    }
}

struct TokenRow {
    id: String,
    labels: String,
    created_at: String,
    expires_at: String,
    max_uses: u32,
    uses: u32,
    revoked_at: Option<String>,
    note: Option<String>,
    created_by: String,
    /// JSON list; NULL for tokens made before the column existed (any key, as then).
    agent_label_keys: Option<String>,
}

const TOKEN_COLUMNS: &str = "id, labels, created_at, expires_at, max_uses, uses, revoked_at, \
     note, created_by, agent_label_keys";

impl TokenRow {
    fn read(r: &Row) -> SqlResult<TokenRow> {
        Ok(TokenRow {
            id: r.get(0)?,
            labels: r.get(1)?,
            created_at: r.get(2)?,
            expires_at: r.get(3)?,
            max_uses: r.get(4)?,
            uses: r.get(5)?,
            revoked_at: r.get(6)?,
            note: r.get(7)?,
            created_by: r.get(8)?,
            agent_label_keys: r.get(9)?,
        })
    }

    fn into_info(self) -> Result<EnrollmentTokenInfo, StoreError> {
        Ok(EnrollmentTokenInfo {
            id: self.id,
            labels: from_json("labels", &self.labels)?,
            created_at: parse_ts(&self.created_at)?,
            expires_at: parse_ts(&self.expires_at)?,
            max_uses: self.max_uses,
            uses: self.uses,
            revoked: self.revoked_at.is_some(),
            note: self.note,
            created_by: self.created_by,
            agent_label_keys: match self.agent_label_keys {
                Some(keys) => from_json("agent_label_keys", &keys)?,
                None => vec![flotilla_shared::api::ANY_LABEL_KEY.to_string()],
            },
        })
    }
}

/// Adds one delivery state to a job's counts.
fn count_state(c: &mut JobCounts, state: DeliveryState, n: u32) {
    c.targets += n;
    let bucket = match state {
        DeliveryState::Pending => &mut c.pending,
        DeliveryState::Queued | DeliveryState::Sent | DeliveryState::Received => &mut c.in_flight,
        DeliveryState::Succeeded => &mut c.succeeded,
        DeliveryState::Failed => &mut c.failed,
        DeliveryState::Rejected => &mut c.rejected,
        DeliveryState::Undelivered => &mut c.undelivered,
        DeliveryState::Skipped => &mut c.skipped,
    };
    *bucket += n;
}

fn delivery_counts(tx: &mut dyn Conn, command_id: &str) -> Result<JobCounts, StoreError> {
    let mut stmt =
        tx.prepare("SELECT state, COUNT(*) FROM deliveries WHERE command_id = ?1 GROUP BY state")?;
    let rows = stmt.query_map([command_id], |r| {
        Ok((r.get::<String>(0)?, r.get::<u32>(1)?))
    })?;
    let mut counts = JobCounts::default();
    for (state, n) in rows {
        count_state(&mut counts, parse_state(&state)?, n);
    }
    Ok(counts)
}

/// How [`finalise_where`] ends deliveries.
enum Ending {
    Undelivered,
    /// Failed with a relay-made result carrying this error.
    Failed {
        code: &'static str,
        message: &'static str,
    },
}

/// Ends the unfinished deliveries matched by `condition` (over `deliveries d JOIN commands c`)
/// as `ending` says and returns them.
fn finalise_where(
    tx: &mut dyn Conn,
    condition: &str,
    args: &[&dyn ToValue],
    now: DateTime<Utc>,
    ending: Ending,
) -> Result<Vec<Finalised>, StoreError> {
    let state = match ending {
        Ending::Undelivered => DeliveryState::Undelivered,
        Ending::Failed { .. } => DeliveryState::Failed,
    };
    let mut stmt = tx.prepare(&format!(
        "SELECT d.command_id, d.agent_id, c.job_id, c.kind FROM deliveries d \
         JOIN commands c ON c.id = d.command_id WHERE {condition}"
    ))?;
    let rows = stmt.query_map(args, |r| {
        Ok((
            Finalised {
                command_id: r.get(0)?,
                agent_id: r.get(1)?,
                job_id: r.get(2)?,
                state,
                update: None,
            },
            r.get::<String>(3)?,
        ))
    })?;
    drop(stmt);
    let mut ended = Vec::with_capacity(rows.len());
    let mut updates = Vec::new();
    for (f, kind) in rows {
        if kind == CommandKind::ContainerUpdate.as_str()
            || kind == CommandKind::ComposeUpdate.as_str()
        {
            updates.push(ended.len());
        }
        ended.push(f);
    }
    let mut upd = tx.prepare(&format!(
        "UPDATE deliveries SET state = ?4, result = ?5, updated_at = ?3 \
         WHERE command_id = ?1 AND agent_id = ?2 AND state IN {UNFINISHED}"
    ))?;
    for f in &ended {
        let result = match &ending {
            Ending::Undelivered => None,
            Ending::Failed { code, message } => Some(to_json(&CommandResult {
                command_id: f.command_id.clone(),
                status: ResultStatus::Failed,
                output: None,
                error: Some(ErrorInfo {
                    code: code.to_string(),
                    message: message.to_string(),
                }),
                started_at: now,
                finished_at: now,
            })),
        };
        upd.execute(params![
            f.command_id,
            f.agent_id,
            ts(now),
            state.as_str(),
            result
        ])?;
    }
    drop(upd);
    if !updates.is_empty() {
        // The relay's own ending of an update: no report, but clearly not in progress any more.
        let (code, message) = match &ending {
            Ending::Undelivered => (None, None),
            Ending::Failed { code, message } => (Some(*code), Some(*message)),
        };
        let mut fin = tx.prepare(
            "UPDATE updates SET state = ?3, error_code = ?4, error_message = ?5, \
             finished_at = ?6 WHERE command_id = ?1 AND agent_id = ?2 AND finished_at IS NULL \
             RETURNING image",
        )?;
        for &i in &updates {
            let f = &mut ended[i];
            let image: Option<Option<String>> = fin
                .query_row(
                    params![
                        f.command_id,
                        f.agent_id,
                        state.as_str(),
                        code,
                        message,
                        ts(now)
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            f.update = image.map(|image| UpdateEnded {
                outcome: state.as_str().to_string(),
                image: image.unwrap_or_default(),
                replaced: false,
            });
        }
        drop(fin);
        // A compose.update's containers the agent had started reporting on end with it.
        for &i in &updates {
            let f = &ended[i];
            updates::end_compose_members(
                tx,
                &f.command_id,
                &f.agent_id,
                state,
                code,
                message,
                now,
            )?;
        }
    }
    Ok(ended)
}

/// Starts the update-history rows of a `container.update` command for these agents (when it is
/// dispatched to them). A no-op for other kinds and for rows that already exist.
fn start_updates(
    tx: &mut dyn Conn,
    command_id: &str,
    agent_ids: &[&str],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    if agent_ids.is_empty() {
        return Ok(());
    }
    // The arguments come from the stored command itself, so a job's deliveries need no copy.
    tx.execute(
        "INSERT OR IGNORE INTO updates (command_id, agent_id, job_id, container, image, health, \
         strategy, requested_by, created_at) \
         SELECT c.id, a.value, c.job_id, json_extract(c.command, '$.args.container'), \
         json_extract(c.command, '$.args.image'), \
         COALESCE(json_extract(c.command, '$.args.health'), 'auto'), \
         COALESCE(json_extract(c.command, '$.args.strategy'), 'stop-first'), \
         c.created_by, ?3 \
         FROM commands c JOIN json_each(?2) a ON 1 = 1 WHERE c.id = ?1 AND c.kind = 'container.update'",
        params![command_id, to_json(&agent_ids), ts(at)],
    )?;
    updates::start_compose_updates(tx, command_id, agent_ids, at)?;
    Ok(())
}

/// Finishes an update's history row with the agent's result (replacing a relay-made ending).
/// The report is the result's output whatever the outcome; a result without one (rejected,
/// interrupted, too large) leaves `outcome` and `report` empty and says why in `error_*`.
/// Returns the row's final outcome and image.
fn finish_update(
    tx: &mut dyn Conn,
    agent_id: &str,
    result: &CommandResult,
    state: DeliveryState,
    now: DateTime<Utc>,
) -> Result<Option<UpdateEnded>, StoreError> {
    // Normally there since the command was dispatched; a missing row is made now.
    start_updates(tx, &result.command_id, &[agent_id], now)?;
    let report: Option<UpdateReport> = result
        .output
        .as_ref()
        .and_then(|o| UpdateReport::deserialize(o).ok());
    let replaced: bool = tx
        .query_row(
            "SELECT finished_at IS NOT NULL FROM updates WHERE command_id = ?1 AND agent_id = ?2",
            params![result.command_id, agent_id],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    let image: Option<String> = tx
        .query_row(
            "UPDATE updates SET state = ?3, error_code = ?4, error_message = ?5, outcome = ?6, \
         report = ?7, finished_at = ?8, phase = COALESCE(?9, phase), \
         container_name = COALESCE(?10, container_name) \
         WHERE command_id = ?1 AND agent_id = ?2 RETURNING image",
            params![
                result.command_id,
                agent_id,
                state.as_str(),
                result.error.as_ref().map(|e| e.code.as_str()),
                result.error.as_ref().map(|e| e.message.as_str()),
                report.as_ref().map(|r| r.outcome.as_str()),
                report.as_ref().map(to_json),
                ts(result.finished_at),
                report.as_ref().map(|r| r.phase.as_str()),
                report.as_ref().map(|r| r.container.as_str()),
            ],
            |r| r.get(0),
        )
        .optional()?;
    Ok(image.map(|image| UpdateEnded {
        outcome: report
            .as_ref()
            .map_or(state.as_str(), |r| r.outcome.as_str())
            .to_string(),
        image,
        replaced,
    }))
}
