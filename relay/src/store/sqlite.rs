//! The SQLite backend: schema, migrations and every SQL statement of the relay.
//!
//! Timestamps are stored as fixed-width RFC 3339 UTC text with microseconds, so text order is
//! time order and comparisons can be done in SQL. JSON columns hold the shared wire types.

use super::{
    relay_error_codes, AgentAuth, AgentRecord, ApiCaller, AuditEntry, CommandLookup, EnrollRefusal,
    EventQuery, Finalised, HeartbeatWrite, JobStep, LatestBackup, NewAgent, NewApiToken,
    NewCommand, NewEnrollmentToken, NewJob, Pruned, RecordedBackups, ResultOutcome, StoreError,
    UpdateQuery,
};
use crate::model::jobs::plan_step;
use chrono::{DateTime, SecondsFormat, Utc};
use flotilla_shared::api::{
    AgentFacts, ApiTokenInfo, CommandInfo, DeliveryState, EnrollmentTokenInfo, EventRecord,
    JobCounts, JobInfo, JobState, JobTarget, Scope, UpdateRecord,
};
use flotilla_shared::backup::{BackupRecord, BackupReport, BackupStatus, ReportSource};
use flotilla_shared::command::{
    Command, CommandKind, CommandResult, ErrorInfo, ResultStatus, SignedCommand,
};
use flotilla_shared::heartbeat::{AgentEvent, EventKind, Heartbeat};
use flotilla_shared::selector::{Labels, Selector};
use flotilla_shared::update::UpdateReport;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, Transaction};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

mod alerts;
mod releases;
mod rollouts;

/// Schema migrations; `PRAGMA user_version` is the number applied so far.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    public_key TEXT NOT NULL,
    labels TEXT NOT NULL,
    facts TEXT NOT NULL,
    enrolled_at TEXT NOT NULL,
    revoked_at TEXT,
    agent_version TEXT NOT NULL DEFAULT '',
    last_heartbeat TEXT,
    last_heartbeat_at TEXT,
    enrollment_token_id TEXT
);
CREATE TABLE enrollment_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    max_uses INTEGER NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0,
    revoked_at TEXT,
    note TEXT,
    created_by TEXT NOT NULL
);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    command_id TEXT NOT NULL,
    selector TEXT NOT NULL,
    max_concurrency INTEGER NOT NULL,
    max_errors INTEGER,
    state TEXT NOT NULL,
    stopped INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX jobs_state ON jobs(state);
CREATE TABLE commands (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    command TEXT NOT NULL,
    envelope TEXT NOT NULL,
    signature TEXT NOT NULL,
    audience TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    job_id TEXT REFERENCES jobs(id)
);
CREATE TABLE deliveries (
    command_id TEXT NOT NULL REFERENCES commands(id),
    agent_id TEXT NOT NULL REFERENCES agents(id),
    position INTEGER NOT NULL,
    state TEXT NOT NULL,
    result TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (command_id, agent_id)
);
CREATE INDEX deliveries_agent_state ON deliveries(agent_id, state);
CREATE INDEX deliveries_state ON deliveries(state);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received_at TEXT NOT NULL,
    kind TEXT NOT NULL,
    event TEXT NOT NULL,
    UNIQUE (agent_id, seq)
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT
);
"#,
    // Retention deletes by age.
    r#"
CREATE INDEX events_received_at ON events(received_at);
CREATE INDEX audit_ts ON audit(ts);
CREATE INDEX commands_expires_at ON commands(expires_at);
"#,
    // 3: update history (`container.update`), one row per (command, agent) that was dispatched.
    // Not tied to `commands` by a foreign key: the history outlives the pruned command rows
    // until its own retention.
    r#"
CREATE TABLE updates (
    command_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    job_id TEXT,
    container TEXT NOT NULL,
    container_name TEXT,
    image TEXT NOT NULL,
    health TEXT NOT NULL,
    strategy TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    phase TEXT,
    phase_at TEXT,
    outcome TEXT,
    state TEXT,
    error_code TEXT,
    error_message TEXT,
    finished_at TEXT,
    report TEXT,
    PRIMARY KEY (command_id, agent_id)
);
CREATE INDEX updates_agent_created ON updates(agent_id, created_at);
CREATE INDEX updates_created ON updates(created_at);
CREATE INDEX updates_active ON updates(agent_id) WHERE finished_at IS NULL;
CREATE INDEX updates_finished_at ON updates(finished_at);
"#,
    // 4: database backup history, one row per database per backup report (the agent's own runs
    // and watched `backup-status.json` files). A report comes through the at-least-once outbox
    // and a status file may be read again unchanged, so (agent, run, key) is stored once.
    // `backup_results_agent_key` finds the latest row of a database, the partial index its
    // newest success; `backup_results_agent_finished` is an agent's history.
    r#"
CREATE TABLE backup_results (
    id INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    source TEXT NOT NULL,
    job TEXT,
    key TEXT NOT NULL,
    container TEXT,
    database TEXT,
    engine TEXT,
    status TEXT NOT NULL,
    error TEXT,
    backup_id TEXT,
    size_bytes INTEGER,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    UNIQUE (agent_id, run_id, key)
);
CREATE INDEX backup_results_agent_finished ON backup_results(agent_id, finished_at);
CREATE INDEX backup_results_agent_key ON backup_results(agent_id, key, finished_at);
CREATE INDEX backup_results_agent_key_success ON backup_results(agent_id, key, finished_at)
    WHERE status = 'success';
CREATE INDEX backup_results_finished_at ON backup_results(finished_at);
"#,
    // 5: canary rollouts (see `sqlite/rollouts.rs`).
    rollouts::SCHEMA,
    // 6: alerts and silences (see `sqlite/alerts.rs`).
    alerts::SCHEMA,
    // 7: published agent builds (see `sqlite/releases.rs`).
    releases::SCHEMA,
];

/// Inserts a command with its deliveries (and, for `container.update`, the update-history rows
/// of its dispatched targets) inside the caller's transaction. The one place these rows are
/// written: single commands, jobs and rollouts.
pub(super) fn insert_command(tx: &Transaction<'_>, c: &NewCommand) -> Result<(), StoreError> {
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
    if c.command.kind() == CommandKind::ContainerUpdate {
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

pub(super) struct Db {
    conn: Connection,
}

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
     agent_version, last_heartbeat, last_heartbeat_at";
/// [`AGENT_COLUMNS`] without the heartbeat JSON (NULL in its place): listing many agents must
/// not parse every agent's last heartbeat; the heartbeat cache has the latest ones.
const AGENT_LIST_COLUMNS: &str = "id, name, public_key, labels, facts, enrolled_at, revoked_at, \
     agent_version, NULL, last_heartbeat_at";

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
}

impl AgentRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<AgentRow> {
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
        })
    }

    fn into_record(self) -> Result<AgentRecord, StoreError> {
        Ok(AgentRecord {
            labels: from_json("labels", &self.labels)?,
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
     u.finished_at, u.report";

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
}

impl UpdateRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<UpdateRow> {
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
    fn read(r: &Row<'_>) -> rusqlite::Result<BackupRow> {
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
}

const TOKEN_COLUMNS: &str =
    "id, labels, created_at, expires_at, max_uses, uses, revoked_at, note, created_by";

impl TokenRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<TokenRow> {
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
        })
    }
}

impl Db {
    pub(super) fn open(path: &Path) -> Result<Db, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Self::init(conn)
    }

    /// A read-only connection to the same (WAL) database file, for pure reads that should not
    /// queue behind the writer. Open the writer first: it creates and migrates the file.
    pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }

    /// The writer connection, for reads done by the writer itself (in-memory stores).
    pub(super) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(super) fn open_in_memory() -> Result<Db, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Db, StoreError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let mut db = Db { conn };
        db.migrate()?;
        Ok(db)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    // === api tokens ===

    pub(super) fn has_admin_token(conn: &Connection) -> Result<bool, StoreError> {
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM api_tokens WHERE scope = 'admin' AND name = 'admin'",
            [],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    pub(super) fn create_api_token(&mut self, t: &NewApiToken) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO api_tokens (id, token_hash, name, scope, created_at, created_by) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                t.id,
                t.token_hash,
                t.name,
                t.scope.as_str(),
                ts(t.created_at),
                t.created_by
            ],
        )?;
        Ok(())
    }

    pub(super) fn api_tokens(conn: &Connection) -> Result<Vec<ApiTokenInfo>, StoreError> {
        let mut stmt = conn.prepare(
            "SELECT id, name, scope, created_at, created_by, revoked_at FROM api_tokens \
             ORDER BY created_at, id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, name, scope, created_at, created_by, revoked_at)| {
                Ok(ApiTokenInfo {
                    id,
                    name,
                    scope: scope.parse().map_err(StoreError::Corrupt)?,
                    created_at: parse_ts(&created_at)?,
                    created_by,
                    revoked_at: revoked_at.as_deref().map(parse_ts).transpose()?,
                })
            })
            .collect()
    }

    pub(super) fn revoke_api_token(
        &mut self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let exists = self
            .conn
            .query_row("SELECT 1 FROM api_tokens WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some();
        if exists {
            self.conn.execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, ts(now)],
            )?;
        }
        Ok(exists)
    }

    pub(super) fn api_caller(
        conn: &Connection,
        token_hash: &str,
    ) -> Result<Option<ApiCaller>, StoreError> {
        let row: Option<(String, String, String)> = conn
            .query_row(
                "SELECT id, name, scope FROM api_tokens \
                 WHERE token_hash = ?1 AND revoked_at IS NULL",
                [token_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(token_id, name, scope)| {
            let scope: Scope = scope.parse().map_err(StoreError::Corrupt)?;
            Ok(ApiCaller {
                token_id,
                name,
                scope,
            })
        })
        .transpose()
    }

    // === enrollment ===

    pub(super) fn create_enrollment_token(
        &mut self,
        t: &NewEnrollmentToken,
    ) -> Result<EnrollmentTokenInfo, StoreError> {
        self.conn.execute(
            "INSERT INTO enrollment_tokens \
             (id, token_hash, labels, created_at, expires_at, max_uses, note, created_by) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                t.id,
                t.token_hash,
                to_json(&t.labels),
                ts(t.created_at),
                ts(t.expires_at),
                t.max_uses,
                t.note,
                t.created_by
            ],
        )?;
        Ok(EnrollmentTokenInfo {
            id: t.id.clone(),
            labels: t.labels.clone(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            max_uses: t.max_uses,
            uses: 0,
            revoked: false,
            note: t.note.clone(),
            created_by: t.created_by.clone(),
        })
    }

    pub(super) fn list_enrollment_tokens(
        conn: &Connection,
    ) -> Result<Vec<EnrollmentTokenInfo>, StoreError> {
        let mut stmt = conn.prepare(&format!(
            "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY created_at, id"
        ))?;
        let rows = stmt
            .query_map([], TokenRow::read)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(TokenRow::into_info).collect()
    }

    pub(super) fn revoke_enrollment_token(
        &mut self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let exists: bool = self
            .conn
            .query_row(
                "SELECT 1 FROM enrollment_tokens WHERE id = ?1",
                [id],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if exists {
            self.conn.execute(
                "UPDATE enrollment_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, ts(now)],
            )?;
        }
        Ok(exists)
    }

    pub(super) fn enroll(
        &mut self,
        token_hash: &str,
        agent: NewAgent,
        now: DateTime<Utc>,
    ) -> Result<Result<(AgentRecord, String), EnrollRefusal>, StoreError> {
        let tx = self.conn.transaction()?;
        let token = tx
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE token_hash = ?1"),
                [token_hash],
                TokenRow::read,
            )
            .optional()?;
        let Some(token) = token else {
            return Ok(Err(EnrollRefusal::Unknown));
        };
        let token = token.into_info()?;
        if token.revoked {
            return Ok(Err(EnrollRefusal::Revoked));
        }
        if token.uses >= token.max_uses {
            return Ok(Err(EnrollRefusal::Used));
        }
        if token.expires_at <= now {
            return Ok(Err(EnrollRefusal::Expired));
        }
        let mut labels = agent.labels;
        labels.extend(token.labels.clone());
        let name = agent
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| {
                if agent.facts.hostname.is_empty() {
                    agent.id.clone()
                } else {
                    agent.facts.hostname.clone()
                }
            });
        let record = AgentRecord {
            id: agent.id,
            name,
            public_key: agent.public_key,
            labels,
            agent_version: agent.facts.agent_version.clone(),
            facts: agent.facts,
            enrolled_at: now,
            revoked_at: None,
            last_heartbeat: None,
            last_heartbeat_at: None,
        };
        tx.execute(
            "INSERT INTO agents (id, name, public_key, labels, facts, enrolled_at, agent_version, \
             enrollment_token_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                record.id,
                record.name,
                record.public_key,
                to_json(&record.labels),
                to_json(&record.facts),
                ts(now),
                record.agent_version,
                token.id
            ],
        )?;
        tx.execute(
            "UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ?1",
            [&token.id],
        )?;
        tx.commit()?;
        Ok(Ok((record, token.id)))
    }

    // === agents ===

    pub(super) fn agent(conn: &Connection, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let row = conn
            .query_row(
                &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?1"),
                [id],
                AgentRow::read,
            )
            .optional()?;
        row.map(AgentRow::into_record).transpose()
    }

    pub(super) fn agents(conn: &Connection) -> Result<Vec<AgentRecord>, StoreError> {
        let mut stmt = conn.prepare(&format!(
            "SELECT {AGENT_LIST_COLUMNS} FROM agents ORDER BY name, id"
        ))?;
        let rows = stmt
            .query_map([], AgentRow::read)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(AgentRow::into_record).collect()
    }

    /// What the websocket handshake needs, without the facts and heartbeat JSON.
    pub(super) fn agent_auth(conn: &Connection, id: &str) -> Result<Option<AgentAuth>, StoreError> {
        let row: Option<(String, bool, String, String, String)> = conn
            .query_row(
                "SELECT public_key, revoked_at IS NOT NULL, labels, name, agent_version \
                 FROM agents WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        row.map(|(public_key, revoked, labels, name, agent_version)| {
            Ok(AgentAuth {
                public_key,
                revoked,
                labels: from_json("labels", &labels)?,
                name,
                agent_version,
            })
        })
        .transpose()
    }

    /// Ids and labels of the agents that are not revoked (job target resolution).
    pub(super) fn agent_targets(conn: &Connection) -> Result<Vec<(String, Labels)>, StoreError> {
        let mut stmt = conn
            .prepare("SELECT id, labels FROM agents WHERE revoked_at IS NULL ORDER BY name, id")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, labels)| Ok((id, from_json("labels", &labels)?)))
            .collect()
    }

    /// The last flushed heartbeat of every agent that is not revoked (to fill the heartbeat
    /// cache once at startup).
    pub(super) fn latest_heartbeats(conn: &Connection) -> Result<Vec<HeartbeatWrite>, StoreError> {
        let mut stmt = conn.prepare(
            "SELECT id, last_heartbeat, last_heartbeat_at FROM agents \
             WHERE revoked_at IS NULL AND last_heartbeat IS NOT NULL \
             AND last_heartbeat_at IS NOT NULL",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(agent_id, heartbeat, at)| {
                Ok(HeartbeatWrite {
                    agent_id,
                    heartbeat: std::sync::Arc::new(from_json::<Heartbeat>(
                        "heartbeat",
                        &heartbeat,
                    )?),
                    received_at: parse_ts(&at)?,
                })
            })
            .collect()
    }

    pub(super) fn set_agent_labels(
        &mut self,
        id: &str,
        labels: &Labels,
    ) -> Result<Option<AgentRecord>, StoreError> {
        let n = self.conn.execute(
            "UPDATE agents SET labels = ?2 WHERE id = ?1",
            params![id, to_json(labels)],
        )?;
        if n == 0 {
            return Ok(None);
        }
        Db::agent(&self.conn, id)
    }

    pub(super) fn set_agent_version(&mut self, id: &str, version: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE agents SET agent_version = ?2 WHERE id = ?1",
            params![id, version],
        )?;
        Ok(())
    }

    pub(super) fn revoke_agent(
        &mut self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<Finalised>>, StoreError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "UPDATE agents SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
            params![id, ts(now)],
        )?;
        if n == 0 {
            return Ok(None);
        }
        let mut ended = finalise_where(
            &tx,
            "d.agent_id = ?1 AND d.state IN ('pending','queued','sent')",
            params![id],
            now,
            Ending::Undelivered,
        )?;
        // The agent journaled these and may have run them: "undelivered" would be a lie.
        ended.extend(finalise_where(
            &tx,
            "d.agent_id = ?1 AND d.state = 'received'",
            params![id],
            now,
            Ending::Failed {
                code: relay_error_codes::AGENT_REVOKED,
                message: "the agent was revoked after it accepted the command; \
                          whether the command ran is unknown",
            },
        )?);
        tx.commit()?;
        Ok(Some(ended))
    }

    pub(super) fn save_heartbeats(&mut self, batch: &[HeartbeatWrite]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "UPDATE agents SET last_heartbeat = ?2, last_heartbeat_at = ?3, \
                 agent_version = ?4 WHERE id = ?1",
            )?;
            for hb in batch {
                stmt.execute(params![
                    hb.agent_id,
                    to_json(&*hb.heartbeat),
                    ts(hb.received_at),
                    hb.heartbeat.agent_version
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    // === commands ===

    pub(super) fn create_command(
        &mut self,
        c: &NewCommand,
        job: Option<&NewJob>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        if let Some(job) = job {
            tx.execute(
                "INSERT INTO jobs (id, command_id, selector, max_concurrency, max_errors, state, \
                 created_at, expires_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8)",
                params![
                    job.id,
                    c.id,
                    job.selector.to_string(),
                    job.max_concurrency,
                    job.max_errors,
                    ts(job.created_at),
                    ts(job.expires_at),
                    job.created_by
                ],
            )?;
        }
        insert_command(&tx, c)?;
        tx.commit()?;
        Ok(())
    }

    pub(super) fn command_info(
        conn: &Connection,
        command_id: &str,
        agent_id: Option<&str>,
    ) -> Result<CommandLookup, StoreError> {
        let cmd: Option<(String, String, String, String, Option<String>)> = conn
            .query_row(
                "SELECT command, created_at, expires_at, created_by, job_id FROM commands \
                 WHERE id = ?1",
                [command_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((command, created_at, expires_at, created_by, job_id)) = cmd else {
            return Ok(CommandLookup::NotFound);
        };
        let agent_id = match agent_id {
            Some(a) => a.to_string(),
            None => {
                if job_id.is_some() {
                    return Ok(CommandLookup::NeedsAgent { job_id });
                }
                let only: Option<String> = conn
                    .query_row(
                        "SELECT agent_id FROM deliveries WHERE command_id = ?1 LIMIT 1",
                        [command_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                match only {
                    Some(a) => a,
                    None => return Ok(CommandLookup::NotFound),
                }
            }
        };
        let delivery: Option<(String, Option<String>)> = conn
            .query_row(
                "SELECT state, result FROM deliveries WHERE command_id = ?1 AND agent_id = ?2",
                params![command_id, agent_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((state, result)) = delivery else {
            return Ok(CommandLookup::NotFound);
        };
        let command: Command = from_json("command", &command)?;
        Ok(CommandLookup::Found(Box::new(CommandInfo {
            id: command_id.to_string(),
            agent_id,
            kind: command.kind(),
            command,
            state: parse_state(&state)?,
            created_at: parse_ts(&created_at)?,
            expires_at: parse_ts(&expires_at)?,
            created_by,
            job_id,
            result: result
                .as_deref()
                .map(|r| from_json::<CommandResult>("result", r))
                .transpose()?,
        })))
    }

    pub(super) fn pending_commands(
        conn: &Connection,
        agent_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, SignedCommand)>, StoreError> {
        let mut stmt = conn.prepare(
            "SELECT c.id, c.envelope, c.signature FROM deliveries d \
             JOIN commands c ON c.id = d.command_id \
             WHERE d.agent_id = ?1 AND d.state IN ('queued','sent','received') \
             AND c.expires_at > ?2 ORDER BY c.created_at, c.id",
        )?;
        let rows = stmt
            .query_map(params![agent_id, ts(now)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    SignedCommand {
                        envelope: r.get(1)?,
                        signature: r.get(2)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub(super) fn mark_sent(
        &mut self,
        command_id: &str,
        agent_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // One statement for the whole fan-out, not one per agent.
        self.conn.execute(
            "UPDATE deliveries SET state = 'sent', updated_at = ?3 \
             WHERE command_id = ?1 AND state = 'queued' \
             AND agent_id IN (SELECT value FROM json_each(?2))",
            params![command_id, to_json(&agent_ids), ts(now)],
        )?;
        Ok(())
    }

    pub(super) fn mark_received(
        &mut self,
        command_id: &str,
        agent_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE deliveries SET state = 'received', updated_at = ?3 \
             WHERE command_id = ?1 AND agent_id = ?2 AND state IN ('queued','sent')",
            params![command_id, agent_id, ts(now)],
        )?;
        if n > 0 {
            return Ok(true);
        }
        // Already received (a duplicate `received`) is still a known delivery.
        let known: Option<String> = self
            .conn
            .query_row(
                "SELECT state FROM deliveries WHERE command_id = ?1 AND agent_id = ?2",
                params![command_id, agent_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(known.is_some())
    }

    pub(super) fn record_result(
        &mut self,
        agent_id: &str,
        result: &CommandResult,
        now: DateTime<Utc>,
    ) -> Result<ResultOutcome, StoreError> {
        let tx = self.conn.transaction()?;
        let row: Option<(String, Option<String>, Option<String>, String)> = tx
            .query_row(
                "SELECT d.state, c.job_id, json_extract(d.result, '$.error.code'), c.kind \
                 FROM deliveries d JOIN commands c ON c.id = d.command_id \
                 WHERE d.command_id = ?1 AND d.agent_id = ?2",
                params![result.command_id, agent_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((state, job_id, error_code, kind)) = row else {
            return Ok(ResultOutcome::Unknown);
        };
        let state = parse_state(&state)?;
        // Endings the relay decided without hearing from the agent (expired before delivery,
        // no result in time) give way to the agent's real result: it says what happened.
        let relay_guess = state == DeliveryState::Undelivered
            || (state == DeliveryState::Failed
                && error_code.as_deref() == Some(relay_error_codes::NO_RESULT));
        if state.is_final() && !relay_guess {
            return Ok(ResultOutcome::AlreadyFinal);
        }
        let new_state = match result.status {
            ResultStatus::Succeeded => DeliveryState::Succeeded,
            ResultStatus::Failed => DeliveryState::Failed,
            ResultStatus::Rejected => DeliveryState::Rejected,
        };
        tx.execute(
            "UPDATE deliveries SET state = ?3, result = ?4, updated_at = ?5 \
             WHERE command_id = ?1 AND agent_id = ?2",
            params![
                result.command_id,
                agent_id,
                new_state.as_str(),
                to_json(result),
                ts(now)
            ],
        )?;
        if kind == CommandKind::ContainerUpdate.as_str() {
            finish_update(&tx, agent_id, result, new_state, now)?;
        }
        let ended = if kind == CommandKind::AgentUpgrade.as_str() {
            // A reverted upgrade marks its build broken, ending its undelivered copies (see
            // `sqlite/releases.rs`).
            releases::upgrade_failed(&tx, agent_id, result, now)?
        } else {
            Vec::new()
        };
        tx.commit()?;
        Ok(ResultOutcome::Recorded {
            state: new_state,
            job_id,
            replaced: relay_guess.then_some(state),
            ended,
        })
    }

    pub(super) fn expire_deliveries(
        &mut self,
        now: DateTime<Utc>,
        result_grace: chrono::Duration,
    ) -> Result<Vec<Finalised>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut ended = finalise_where(
            &tx,
            "d.state IN ('pending','queued','sent') AND c.expires_at <= ?1",
            params![ts(now)],
            now,
            Ending::Undelivered,
        )?;
        // Accepted but never answered: the agent vanished (or lost its state) after `received`.
        // Waiting for ever would leave the command, and its job, running for ever.
        ended.extend(finalise_where(
            &tx,
            "d.state = 'received' AND c.expires_at <= ?1",
            params![ts(now - result_grace)],
            now,
            Ending::Failed {
                code: relay_error_codes::NO_RESULT,
                message: "the agent accepted the command but no result arrived in time",
            },
        )?);
        tx.commit()?;
        Ok(ended)
    }

    // === jobs ===

    pub(super) fn running_jobs(conn: &Connection) -> Result<Vec<String>, StoreError> {
        let mut stmt =
            conn.prepare("SELECT id FROM jobs WHERE state = 'running' ORDER BY created_at")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    pub(super) fn advance_job(
        &mut self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<JobStep>, StoreError> {
        let tx = self.conn.transaction()?;
        let job: Option<(String, u32, Option<u32>, String, bool, String)> = tx
            .query_row(
                "SELECT j.command_id, j.max_concurrency, j.max_errors, j.state, j.stopped, c.kind \
                 FROM jobs j JOIN commands c ON c.id = j.command_id WHERE j.id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((command_id, max_concurrency, max_errors, state, stopped, kind)) = job else {
            return Ok(None);
        };
        let state = parse_job_state(&state)?;
        let mut step = JobStep {
            command_id: command_id.clone(),
            ..JobStep::default()
        };
        if state != JobState::Running {
            step.state = Some(state);
            return Ok(Some(step));
        }
        let counts = delivery_counts(&tx, &command_id)?;
        let plan = plan_step(&counts, max_concurrency, max_errors, stopped);
        if plan.stop {
            tx.execute("UPDATE jobs SET stopped = 1 WHERE id = ?1", [id])?;
            step.skipped = tx.execute(
                "UPDATE deliveries SET state = 'skipped', updated_at = ?2 \
                 WHERE command_id = ?1 AND state = 'pending'",
                params![command_id, ts(now)],
            )?;
        }
        if plan.dispatch > 0 {
            let mut stmt = tx.prepare(
                "SELECT agent_id FROM deliveries WHERE command_id = ?1 AND state = 'pending' \
                 ORDER BY position LIMIT ?2",
            )?;
            step.queued = stmt
                .query_map(params![command_id, plan.dispatch as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            drop(stmt);
            tx.execute(
                "UPDATE deliveries SET state = 'queued', updated_at = ?3 \
                 WHERE command_id = ?1 AND state = 'pending' \
                 AND agent_id IN (SELECT value FROM json_each(?2))",
                params![command_id, to_json(&step.queued), ts(now)],
            )?;
            if kind == CommandKind::ContainerUpdate.as_str() {
                let queued: Vec<&str> = step.queued.iter().map(String::as_str).collect();
                start_updates(&tx, &command_id, &queued, now)?;
            }
            step.signed = Some(tx.query_row(
                "SELECT envelope, signature FROM commands WHERE id = ?1",
                [&command_id],
                |r| {
                    Ok(SignedCommand {
                        envelope: r.get(0)?,
                        signature: r.get(1)?,
                    })
                },
            )?);
        }
        if plan.state != JobState::Running {
            tx.execute(
                "UPDATE jobs SET state = ?2 WHERE id = ?1",
                params![id, job_state_str(plan.state)],
            )?;
        }
        step.state = Some(plan.state);
        tx.commit()?;
        Ok(Some(step))
    }

    pub(super) fn job_info(conn: &Connection, id: &str) -> Result<Option<JobInfo>, StoreError> {
        type JobRow = (
            String,
            String,
            u32,
            Option<u32>,
            String,
            String,
            String,
            String,
            String,
        );
        let job: Option<JobRow> = conn
            .query_row(
                "SELECT j.command_id, j.selector, j.max_concurrency, j.max_errors, j.state, \
                 j.created_at, j.expires_at, j.created_by, c.command \
                 FROM jobs j JOIN commands c ON c.id = j.command_id WHERE j.id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                    ))
                },
            )
            .optional()?;
        let Some((
            command_id,
            selector,
            max_concurrency,
            max_errors,
            state,
            created_at,
            expires_at,
            created_by,
            command,
        )) = job
        else {
            return Ok(None);
        };
        let mut stmt = conn.prepare(
            "SELECT d.agent_id, a.name, d.state, d.result FROM deliveries d \
             JOIN agents a ON a.id = d.agent_id WHERE d.command_id = ?1 ORDER BY d.position",
        )?;
        let rows = stmt
            .query_map([&command_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut targets = Vec::with_capacity(rows.len());
        for (agent_id, agent_name, state, result) in rows {
            targets.push(JobTarget {
                agent_id,
                agent_name,
                state: parse_state(&state)?,
                result: result
                    .as_deref()
                    .map(|r| from_json::<CommandResult>("result", r))
                    .transpose()?,
            });
        }
        let mut counts = JobCounts::default();
        for t in &targets {
            count_state(&mut counts, t.state, 1);
        }
        let command: Command = from_json("command", &command)?;
        Ok(Some(JobInfo {
            id: id.to_string(),
            command_id,
            selector: selector
                .parse::<Selector>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            kind: command.kind(),
            command,
            state: parse_job_state(&state)?,
            max_concurrency,
            max_errors,
            created_at: parse_ts(&created_at)?,
            expires_at: parse_ts(&expires_at)?,
            created_by,
            counts,
            targets,
        }))
    }

    // === events ===

    pub(super) fn insert_event(
        &mut self,
        agent_id: &str,
        seq: u64,
        event: &AgentEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO events (agent_id, seq, received_at, kind, event) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                agent_id,
                seq as i64,
                ts(now),
                event.kind.as_str(),
                to_json(event)
            ],
        )?;
        if n > 0 && event.kind == EventKind::ContainerUpdate {
            if let Some(command_id) = event.attributes.get("command_id") {
                // Progress only moves an update that has no report yet (a late event after the
                // result must not overwrite the report's final phase).
                tx.execute(
                    "UPDATE updates SET phase = COALESCE(?3, phase), \
                     phase_at = CASE WHEN ?3 IS NULL THEN phase_at ELSE ?4 END, \
                     container_name = COALESCE(?5, container_name) \
                     WHERE command_id = ?1 AND agent_id = ?2 AND report IS NULL",
                    params![
                        command_id,
                        agent_id,
                        event.attributes.get("phase"),
                        ts(event.at),
                        event.container_name
                    ],
                )?;
            }
        }
        tx.commit()?;
        Ok(n > 0)
    }

    pub(super) fn events(
        conn: &Connection,
        agent_id: &str,
        q: &EventQuery,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let mut stmt = conn.prepare(
            "SELECT id, received_at, event FROM events WHERE agent_id = ?1 \
             AND (?2 IS NULL OR kind = ?2) AND id > ?3 ORDER BY id LIMIT ?4",
        )?;
        let rows = stmt
            .query_map(
                params![agent_id, q.kind, q.after_id.unwrap_or(0), q.limit as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, received_at, event)| {
                Ok(EventRecord {
                    id,
                    agent_id: agent_id.to_string(),
                    received_at: parse_ts(&received_at)?,
                    event: from_json("event", &event)?,
                })
            })
            .collect()
    }

    // === update history ===

    pub(super) fn updates(
        conn: &Connection,
        q: &UpdateQuery,
    ) -> Result<Vec<UpdateRecord>, StoreError> {
        let mut stmt = conn.prepare(&format!(
            "SELECT {UPDATE_COLUMNS} FROM updates u LEFT JOIN deliveries d \
             ON d.command_id = u.command_id AND d.agent_id = u.agent_id \
             WHERE (?1 IS NULL OR u.agent_id = ?1) \
             AND (?2 IS NULL OR u.container = ?2 OR u.container_name = ?2) \
             AND (?3 IS NULL OR (u.finished_at IS NULL) = ?3) \
             AND (?4 IS NULL OR u.command_id = ?4) \
             ORDER BY u.created_at DESC, u.command_id DESC, u.agent_id LIMIT ?5"
        ))?;
        let rows = stmt
            .query_map(
                params![q.agent_id, q.container, q.active, q.command_id, q.limit],
                UpdateRow::read,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(UpdateRow::into_record).collect()
    }

    /// The newest unfinished update of this container (asked for by this name or id, or
    /// reported under this name), if any: its command id.
    pub(super) fn updating(
        conn: &Connection,
        agent_id: &str,
        container: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(conn
            .query_row(
                "SELECT command_id FROM updates WHERE agent_id = ?1 AND finished_at IS NULL \
                 AND (container = ?2 OR container_name = ?2) \
                 ORDER BY created_at DESC LIMIT 1",
                params![agent_id, container],
                |r| r.get(0),
            )
            .optional()?)
    }

    // === backups ===

    /// Stores one row per database of the report; a database already stored for this (agent,
    /// run) is left as it is. Returns what was new.
    pub(super) fn record_backup_report(
        &mut self,
        agent_id: &str,
        report: &BackupReport,
        now: DateTime<Utc>,
    ) -> Result<RecordedBackups, StoreError> {
        let source = match report.source {
            ReportSource::Agent => "agent",
            ReportSource::StatusFile { .. } => "status_file",
        };
        let mut recorded = RecordedBackups::default();
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR IGNORE INTO backup_results (agent_id, run_id, source, job, key, \
                 container, database, engine, status, error, backup_id, size_bytes, started_at, \
                 finished_at, received_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?;
            // An agent's clock may run ahead: a report "from the future" would stay the latest
            // (and ok) until that time whatever came after it, so times are capped at now.
            let finished_at = report.finished_at.min(now);
            let started_at = report.started_at.min(finished_at);
            for d in &report.stored_outcomes() {
                let n = stmt.execute(params![
                    agent_id,
                    report.run_id,
                    source,
                    report.job,
                    d.key,
                    d.container,
                    d.database,
                    d.engine.map(|e| e.as_str()),
                    d.status.as_str(),
                    d.error,
                    d.backup_id,
                    d.size_bytes.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                    ts(started_at),
                    ts(finished_at),
                    ts(now)
                ])?;
                if n > 0 {
                    match d.status {
                        BackupStatus::Success => recorded.succeeded += 1,
                        BackupStatus::Failed => recorded.failed += 1,
                    }
                }
            }
        }
        tx.commit()?;
        Ok(recorded)
    }

    pub(super) fn forget_backup_key(
        &mut self,
        agent_id: &str,
        key: &str,
    ) -> Result<u64, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM backup_results WHERE agent_id = ?1 AND key = ?2",
            params![agent_id, key],
        )? as u64)
    }

    /// One agent's backup rows, newest first, optionally of one database key.
    pub(super) fn backup_history(
        conn: &Connection,
        agent_id: &str,
        key: Option<&str>,
        limit: u32,
    ) -> Result<Vec<BackupRecord>, StoreError> {
        let mut stmt = conn.prepare(&format!(
            "SELECT {BACKUP_COLUMNS} FROM backup_results b \
             WHERE b.agent_id = ?1 AND (?2 IS NULL OR b.key = ?2) \
             ORDER BY b.finished_at DESC, b.id DESC LIMIT ?3"
        ))?;
        let rows = stmt
            .query_map(params![agent_id, key, limit], BackupRow::read)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(BackupRow::into_record).collect()
    }

    /// The latest row of every database (agent, key) with the agent's name and the database's
    /// newest success, ordered by agent name, agent id and key. With `agent_id` one agent's
    /// (revoked or not); without, every agent's that is not revoked.
    pub(super) fn latest_backups(
        conn: &Connection,
        agent_id: Option<&str>,
    ) -> Result<Vec<LatestBackup>, StoreError> {
        // Walks the distinct (agent, key) pairs of the index and looks up each one's latest
        // row and newest success through the indexes, rather than ranking the whole history.
        // The agent condition is left out rather than made optional in SQL, so that one
        // agent's view seeks its part of the index instead of scanning all of it.
        let (pairs, agents) = match agent_id {
            Some(_) => ("WHERE agent_id = ?1", ""),
            None => ("", "WHERE a.revoked_at IS NULL"),
        };
        let mut stmt = conn.prepare(&format!(
            "WITH k AS (SELECT DISTINCT agent_id, key FROM backup_results {pairs}) \
             SELECT {BACKUP_COLUMNS}, a.name, \
                 (SELECT MAX(s.finished_at) FROM backup_results s \
                  WHERE s.agent_id = k.agent_id AND s.key = k.key AND s.status = 'success'), \
                 (SELECT MIN(f.finished_at) FROM backup_results f \
                  WHERE f.agent_id = k.agent_id AND f.key = k.key) \
             FROM k JOIN agents a ON a.id = k.agent_id \
             JOIN backup_results b ON b.id = (SELECT l.id FROM backup_results l \
                 WHERE l.agent_id = k.agent_id AND l.key = k.key \
                 ORDER BY l.finished_at DESC, l.id DESC LIMIT 1) \
             {agents} ORDER BY a.name, k.agent_id, k.key"
        ))?;
        let args = match agent_id {
            Some(id) => vec![id],
            None => Vec::new(),
        };
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok((
                    BackupRow::read(r)?,
                    r.get::<_, String>(14)?,
                    r.get::<_, Option<String>>(15)?,
                    r.get::<_, Option<String>>(16)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(row, agent_name, last_success_at, first_seen_at)| {
                let latest = row.into_record()?;
                Ok(LatestBackup {
                    agent_name,
                    first_seen_at: parse_opt_ts(first_seen_at)?.unwrap_or(latest.finished_at),
                    latest,
                    last_success_at: parse_opt_ts(last_success_at)?,
                })
            })
            .collect()
    }

    // === audit ===

    pub(super) fn audit(&mut self, e: &AuditEntry) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO audit (ts, actor, action, target, outcome, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![ts(e.ts), e.actor, e.action, e.target, e.outcome, e.detail],
        )?;
        Ok(())
    }

    pub(super) fn recent_audit(
        conn: &Connection,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut stmt = conn.prepare(
            "SELECT ts, actor, action, target, outcome, detail FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(t, actor, action, target, outcome, detail)| {
                Ok(AuditEntry {
                    ts: parse_ts(&t)?,
                    actor,
                    action,
                    target,
                    outcome,
                    detail,
                })
            })
            .collect()
    }
}

// === impl Db: retention ===

impl Db {
    /// Deletes at most `batch` rows of each kind older than `cutoff`: events, audit rows,
    /// finished updates, backup rows (but never a database's latest row or newest success), and
    /// commands that expired before it with every delivery final (with their deliveries and
    /// finished job). Called repeatedly until less than a batch goes, so the writer is never
    /// held for long.
    pub(super) fn prune_batch(
        &mut self,
        cutoff: DateTime<Utc>,
        batch: u32,
    ) -> Result<Pruned, StoreError> {
        let cutoff = ts(cutoff);
        let tx = self.conn.transaction()?;
        let events = tx.execute(
            "DELETE FROM events WHERE id IN \
             (SELECT id FROM events WHERE received_at < ?1 LIMIT ?2)",
            params![cutoff, batch],
        )?;
        let audit = tx.execute(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE ts < ?1 LIMIT ?2)",
            params![cutoff, batch],
        )?;
        // Finished updates only: an unfinished one is still somebody's business.
        let updates = tx.execute(
            "DELETE FROM updates WHERE rowid IN \
             (SELECT rowid FROM updates WHERE finished_at < ?1 LIMIT ?2)",
            params![cutoff, batch],
        )?;
        // A database's latest row and its newest success stay whatever their age: they are
        // its state ("failed", "stale since ...") and when it last had a good backup.
        let backups = tx.execute(
            "DELETE FROM backup_results WHERE id IN \
             (SELECT b.id FROM backup_results b WHERE b.finished_at < ?1 \
              AND b.id <> (SELECT l.id FROM backup_results l \
                  WHERE l.agent_id = b.agent_id AND l.key = b.key \
                  ORDER BY l.finished_at DESC, l.id DESC LIMIT 1) \
              AND b.id IS NOT (SELECT s.id FROM backup_results s \
                  WHERE s.agent_id = b.agent_id AND s.key = b.key AND s.status = 'success' \
                  ORDER BY s.finished_at DESC, s.id DESC LIMIT 1) \
              LIMIT ?2)",
            params![cutoff, batch],
        )?;
        let ids: Vec<String> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT c.id FROM commands c WHERE c.expires_at < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM deliveries d \
                     WHERE d.command_id = c.id AND d.state IN {UNFINISHED}) \
                 AND NOT EXISTS (SELECT 1 FROM jobs j \
                     WHERE j.id = c.job_id AND j.state = 'running') \
                 LIMIT ?2"
            ))?;
            let ids = stmt
                .query_map(params![cutoff, batch], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            ids
        };
        let commands = ids.len();
        if !ids.is_empty() {
            let ids = to_json(&ids);
            tx.execute(
                "DELETE FROM deliveries WHERE command_id IN (SELECT value FROM json_each(?1))",
                [&ids],
            )?;
            tx.execute(
                "DELETE FROM commands WHERE id IN (SELECT value FROM json_each(?1))",
                [&ids],
            )?;
            tx.execute(
                "DELETE FROM jobs WHERE state <> 'running' \
                 AND command_id IN (SELECT value FROM json_each(?1))",
                [&ids],
            )?;
        }
        tx.commit()?;
        Ok(Pruned {
            events,
            audit,
            commands,
            updates,
            backups,
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

fn delivery_counts(tx: &Transaction<'_>, command_id: &str) -> Result<JobCounts, StoreError> {
    let mut stmt =
        tx.prepare("SELECT state, COUNT(*) FROM deliveries WHERE command_id = ?1 GROUP BY state")?;
    let rows = stmt
        .query_map([command_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
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
    tx: &Transaction<'_>,
    condition: &str,
    args: impl rusqlite::Params + Clone,
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
    let rows = stmt
        .query_map(args, |r| {
            Ok((
                Finalised {
                    command_id: r.get(0)?,
                    agent_id: r.get(1)?,
                    job_id: r.get(2)?,
                    state,
                },
                r.get::<_, String>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    drop(stmt);
    let mut ended = Vec::with_capacity(rows.len());
    let mut updates = Vec::new();
    for (f, kind) in rows {
        if kind == CommandKind::ContainerUpdate.as_str() {
            updates.push((f.command_id.clone(), f.agent_id.clone()));
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
             finished_at = ?6 WHERE command_id = ?1 AND agent_id = ?2 AND finished_at IS NULL",
        )?;
        for (command_id, agent_id) in &updates {
            fin.execute(params![
                command_id,
                agent_id,
                state.as_str(),
                code,
                message,
                ts(now)
            ])?;
        }
    }
    Ok(ended)
}

/// Starts the update-history rows of a `container.update` command for these agents (when it is
/// dispatched to them). A no-op for other kinds and for rows that already exist.
fn start_updates(
    tx: &Transaction<'_>,
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
         FROM commands c JOIN json_each(?2) a WHERE c.id = ?1 AND c.kind = 'container.update'",
        params![command_id, to_json(&agent_ids), ts(at)],
    )?;
    Ok(())
}

/// Finishes an update's history row with the agent's result (replacing a relay-made ending).
/// The report is the result's output whatever the outcome; a result without one (rejected,
/// interrupted, too large) leaves `outcome` and `report` empty and says why in `error_*`.
fn finish_update(
    tx: &Transaction<'_>,
    agent_id: &str,
    result: &CommandResult,
    state: DeliveryState,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    // Normally there since the command was dispatched; a missing row is made now.
    start_updates(tx, &result.command_id, &[agent_id], now)?;
    let report: Option<UpdateReport> = result
        .output
        .as_ref()
        .and_then(|o| UpdateReport::deserialize(o).ok());
    tx.execute(
        "UPDATE updates SET state = ?3, error_code = ?4, error_message = ?5, outcome = ?6, \
         report = ?7, finished_at = ?8, phase = COALESCE(?9, phase), \
         container_name = COALESCE(?10, container_name) \
         WHERE command_id = ?1 AND agent_id = ?2",
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
    )?;
    Ok(())
}
