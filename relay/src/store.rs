//! The relay's persistent state behind a small repository layer.
//!
//! [`Store`] offers domain operations only ("enroll an agent with this token", "record this
//! result"); no SQL leaves this module and handlers never see a database client. Every call
//! runs on tokio's blocking pool, in one transaction the backend opens.
//!
//! Two backends: SQLite (`store/sqlite.rs`, the embedded default: one file, WAL, one writer
//! connection and a pool of read-only ones) and PostgreSQL (`store/postgres.rs`: a pool of
//! clients, SERIALIZABLE writes retried on conflict). Cut by domain: each domain has its
//! facade file here (`store/<domain>.rs`: the async methods of [`Store`], domain types in and
//! out) and its statements in `store/sql/<domain>.rs` (the `impl Sql` functions over the
//! backend-neutral connection of `store/sql/conn.rs`, written once for both backends):
//! tokens, enrollment, agents, commands, jobs, events, updates, backups, audit, alerts,
//! releases, rollouts, sessions, metrics (the agents' downsampled history), fleet (overview
//! counts), and the retention batches. A write's closure may run more than once (PostgreSQL
//! retries a transaction that conflicted), so it has no effects outside the transaction. The
//! store depends on the shared types and the pure `crate::model` only, never on an engine.
//!
//! Update history (`container.update`): one row per (command, agent), made when the command is
//! dispatched to the agent (at creation for a single command, when a job's pending delivery is
//! queued for a job), its `phase` advanced by the agent's `container.update` progress events
//! (matched by their `command_id` attribute), and finished by the agent's result (whose output
//! is the `UpdateReport`, also on failure) or by the relay's own endings (undelivered,
//! `no_result`, `agent_revoked`); a late real result replaces a relay-made ending.
//!
//! **Alert suppression hook.** Alerts about a container that an update is acting on (it is
//! stopped, renamed, restarted on purpose) should be suppressed. Two signals, in this order:
//! a container event raised during an update carries the attribute `updating=<command id>`;
//! otherwise ask [`Store::is_updating`] (agent + container name or id → the unfinished update's
//! command id) or take the whole set from [`Store::active_updates`]. An update counts as active
//! from dispatch until its result or the relay's ending; so a stuck one stops suppressing at
//! the latest when its delivery expires (command TTL + `result_grace_secs`).
//!
//! Backup history: one row per database per [`BackupReport`] (the agent's own runs and watched
//! `backup-status.json` files), stored once per (agent, run, key) however often the report
//! arrives. A database's state (ok, failed, stale) and an agent's alert level are computed when
//! read, from its latest row and newest success and the `now` the caller passes, with the
//! shared [`database_state`] and [`agent_alert`]; retention keeps those two rows of every
//! database whatever their age.

mod agents;
mod alerts;
mod audit;
mod backups;
pub mod cluster;
mod commands;
mod enrollment;
mod events;
mod fleet;
mod jobs;
mod metrics;
mod notifications;
mod postgres;
mod relaybackups;
pub mod releases;
mod rollouts;
mod sessions;
pub mod snapshot;
mod sql;
mod sqlite;
pub mod transfer;

use sql::Sql;
mod tokens;
mod updates;

use chrono::{DateTime, SubsecRound, Utc};
use flotilla_shared::api::{
    AgentFacts, ApiTokenInfo, DeliveryState, EnrollmentTokenInfo, EventRecord, JobInfo, JobState,
    Scope, UpdateRecord,
};
use flotilla_shared::backup::{
    agent_alert, database_state, AgentBackups, BackupRecord, BackupReport, BackupStatus,
    DatabaseBackupState, DatabaseState, FleetBackups,
};
use flotilla_shared::command::{CommandResult, SignedCommand};
use flotilla_shared::heartbeat::{AgentEvent, Heartbeat};
use flotilla_shared::selector::{Labels, Selector};
use std::path::Path;

use std::sync::Arc;

pub use crate::model::commands::NewCommand;
pub use cluster::{Fence, Notice, RelayRow, Route};
pub use flotilla_shared::api::CommandInfo;
pub use sessions::{NewWebSession, WebSession};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(#[from] sql::SqlError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// `needs`: the fewest migrations a relay must know to run on it (see
    /// `sqlite::COMPATIBLE_FROM`); a relay refused knows fewer.
    #[error(
        "database schema version {found} is newer than this relay understands ({known}), and \
         runs only relays that know schema {needs} or newer: upgrade this relay"
    )]
    TooNew { found: i64, known: i64, needs: i64 },
    #[error("database task failed: {0}")]
    Task(String),
    /// A file a write stores in the database could not be read (a build's bytes).
    #[error("{0}")]
    File(String),
    #[error("lease {lease} epoch {epoch} is no longer this relay's; the write was refused")]
    Fenced { lease: String, epoch: i64 },
}

impl StoreError {
    /// The database could not be reached (connection refused, lost, or no free connection in
    /// time): nothing was done.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Sql(sql::SqlError::Unavailable(_)))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sql(sql::SqlError::Sqlite(e))
    }
}

/// The database password kept in `path`: its first line (so a trailing newline, or a comment
/// line after it, is not part of the password).
pub fn read_password_file(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// The relay's database URL as libpq's tools (`pg_dump`, `pg_restore`) should get it: see
/// `postgres/tls.rs`.
pub fn libpq_url(url: &str) -> String {
    postgres::tls::libpq_url(url)
}

/// A database URL fit for logs and errors: the password, if any, replaced by `***`.
pub fn redact_database_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            // Query parameters may carry a password too (`?password=`): drop them.
            let tail = tail.split('?').next().unwrap_or_default();
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => format!(
            "{scheme}://{authority}{}",
            tail.split('?').next().unwrap_or_default()
        ),
    }
}

/// Error codes of results the relay writes itself when it cannot hear from the agent. They
/// could move to `flotilla_shared::command::error_codes` if agents ever need to know them.
pub mod relay_error_codes {
    /// The agent accepted (`received`) the command but no result arrived before the command's
    /// expiry plus `result_grace_secs`. A real result arriving later replaces this one.
    pub const NO_RESULT: &str = "no_result";
    /// The agent was revoked after it accepted the command; whether it ran is unknown.
    pub const AGENT_REVOKED: &str = "agent_revoked";
}

/// Read-only connections per file database.
pub const READ_CONNECTIONS: usize = 4;

/// Rows of each kind one retention batch deletes.
const PRUNE_BATCH: u32 = 5000;

/// Current time with the precision the store keeps (microseconds), so a value written and read
/// back compares equal.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// An enrolled agent as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRecord {
    pub id: String,
    pub name: String,
    /// Ed25519 public key, base64.
    pub public_key: String,
    pub labels: Labels,
    pub facts: AgentFacts,
    pub enrolled_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub agent_version: String,
    /// The latest heartbeat flushed to the database (the in-memory one may be newer). Only
    /// [`Store::agent`] loads it; [`Store::agents`] leaves it `None` (use the heartbeat cache).
    pub last_heartbeat: Option<Heartbeat>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// The labels the agent asked for when it enrolled (`model::enrollment`), applied or not.
    pub claimed_labels: Labels,
}

/// Orders of the paginated agents list; each is total (ties broken by id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentOrder {
    /// By name, then id (the default).
    Name,
    NameDesc,
    /// Oldest enrollment first.
    Enrolled,
    /// Newest enrollment first ("newest tenants first").
    EnrolledDesc,
}

impl AgentOrder {
    pub const ALL: [AgentOrder; 4] = [
        AgentOrder::Name,
        AgentOrder::NameDesc,
        AgentOrder::Enrolled,
        AgentOrder::EnrolledDesc,
    ];

    /// The `sort` query value.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentOrder::Name => "name",
            AgentOrder::NameDesc => "-name",
            AgentOrder::Enrolled => "enrolled_at",
            AgentOrder::EnrolledDesc => "-enrolled_at",
        }
    }

    pub fn parse(s: &str) -> Option<AgentOrder> {
        AgentOrder::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// A position in an [`AgentOrder`]: the sort key (the name, or the enrollment time as stored)
/// and the id of the last agent seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPosition {
    pub key: String,
    pub id: String,
}

/// What the agents list filters on, without facts or heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentKey {
    pub id: String,
    pub name: String,
    pub labels: Labels,
    pub revoked: bool,
    /// This agent's position in the order it was read in.
    pub position: AgentPosition,
}

/// What the websocket handshake needs to know about an agent.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentAuth {
    /// Ed25519 public key, base64.
    pub public_key: String,
    pub revoked: bool,
    pub labels: Labels,
    pub name: String,
    pub agent_version: String,
}

/// What one retention sweep deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: usize,
    pub audit: usize,
    pub commands: usize,
    /// Finished update-history rows.
    pub updates: usize,
    /// Backup rows that were neither their database's latest nor its newest success.
    pub backups: usize,
}

/// A new enrollment token (its secret is only given as a hash).
#[derive(Clone, Debug)]
pub struct NewEnrollmentToken {
    pub id: String,
    pub token_hash: String,
    pub labels: Labels,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub max_uses: u32,
    pub note: Option<String>,
    pub created_by: String,
    /// Label keys an agent may add (`model::enrollment`).
    pub agent_label_keys: Vec<String>,
}

/// What an agent presents when enrolling (after the handler validated it).
#[derive(Clone, Debug)]
pub struct NewAgent {
    pub id: String,
    /// Display name; `None` means the hostname from the facts.
    pub name: Option<String>,
    pub public_key: String,
    pub labels: Labels,
    pub facts: AgentFacts,
}

/// Why an enrollment token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnrollRefusal {
    Unknown,
    Used,
    Expired,
    Revoked,
}

/// The caller behind an API token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiCaller {
    pub token_id: String,
    pub name: String,
    pub scope: Scope,
}

/// A new API token (stored hashed).
#[derive(Clone, Debug)]
pub struct NewApiToken {
    pub id: String,
    pub token_hash: String,
    pub name: String,
    pub scope: Scope,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

/// A job's own row (its command and deliveries are stored with [`NewCommand`]).
#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: String,
    pub selector: Selector,
    pub max_concurrency: u32,
    pub max_errors: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub created_by: String,
}

/// What recording a result did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultOutcome {
    /// The delivery moved to this final state; `job_id` is set for job commands.
    Recorded {
        state: DeliveryState,
        job_id: Option<String>,
        /// Set when the result replaced an ending the relay had decided itself (undelivered, or
        /// failed with `no_result`): the state it replaced.
        replaced: Option<DeliveryState>,
        /// Other deliveries the result ended in the same transaction (a reverted
        /// `agent.upgrade` marks its build broken, which ends that build's undelivered
        /// copies): the caller does their bookkeeping (`Commands::all_finished`).
        ended: Vec<Finalised>,
        /// Set when the result finished a `container.update`'s history row.
        update: Option<UpdateEnded>,
    },
    /// The delivery was already final (a duplicate result): nothing changed.
    AlreadyFinal,
    /// No such (command, agent) delivery exists.
    Unknown,
}

/// A delivery the relay just ended without an agent's result (expiry, revocation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finalised {
    pub command_id: String,
    pub agent_id: String,
    pub job_id: Option<String>,
    /// Undelivered, or failed (`no_result`, `agent_revoked`) when the agent had accepted it.
    pub state: DeliveryState,
    /// Set when this ending finished a `container.update`'s history row.
    pub update: Option<UpdateEnded>,
}

/// A container update's history row that just reached its final outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateEnded {
    /// The agent's report's outcome (`updated`, `rolled_back`, ...); without a report (the
    /// relay ended it, or the agent rejected it), the delivery's state (`undelivered`, `failed`).
    pub outcome: String,
    /// The image the update asked for.
    pub image: String,
    /// The agent's late result replaced an ending the relay had already recorded (no result
    /// in time, undelivered): this is the correction, not a second update.
    pub replaced: bool,
}

/// What one step of a job's dispatch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobStep {
    /// Agents whose delivery went pending → queued now: send them the command.
    pub queued: Vec<String>,
    /// The job's signed command (set when `queued` is not empty).
    pub signed: Option<SignedCommand>,
    pub command_id: String,
    /// Agents whose delivery went pending → skipped now (max-errors exceeded).
    pub skipped: usize,
    pub state: Option<JobState>,
    /// True when this step ended the job (running → completed/stopped): exactly one step does.
    pub finished: bool,
}

/// One audit row (the API type itself: the trail is served as stored).
pub use flotilla_shared::api::AuditRecord as AuditEntry;

/// A heartbeat waiting to be flushed.
#[derive(Clone, Debug)]
pub struct HeartbeatWrite {
    pub agent_id: String,
    pub heartbeat: Arc<Heartbeat>,
    pub received_at: DateTime<Utc>,
}

/// Filter of `GET /api/v1/agents/{id}/events`.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub kind: Option<String>,
    pub after_id: Option<i64>,
    pub limit: u32,
}

/// Filter of the update history (`GET /api/v1/agents/{id}/updates`, `GET /api/v1/updates`).
#[derive(Clone, Debug, Default)]
pub struct UpdateQuery {
    /// One agent's updates; None for the whole fleet.
    pub agent_id: Option<String>,
    /// Updates of this container: as asked for (name or id) or as the agent reported its name.
    pub container: Option<String>,
    /// Only unfinished (true) or only finished (false) updates.
    pub active: Option<bool>,
    pub command_id: Option<String>,
    /// Newest first, at most this many.
    pub limit: u32,
}

/// Most rows [`Store::active_updates`] returns (active updates are bounded by command expiry).
pub const MAX_ACTIVE_UPDATES: u32 = 100_000;

/// Filter of one agent's backups (`GET /api/v1/agents/{id}/backups`).
#[derive(Clone, Debug, Default)]
pub struct BackupQuery {
    /// Only this database (its report key, `<job>/<database>` for the agent's own jobs).
    pub key: Option<String>,
    /// History rows, newest first, at most this many.
    pub limit: u32,
}

/// The rows a backup report added (databases already stored for its run are not counted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordedBackups {
    pub succeeded: usize,
    pub failed: usize,
    /// The keys stored now, with their state (a re-sent report's known keys are not here).
    pub stored: Vec<(String, BackupStatus)>,
}

impl RecordedBackups {
    pub fn total(&self) -> usize {
        self.succeeded + self.failed
    }
}

/// The latest backup row of one database, with what its state is computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct LatestBackup {
    pub agent_name: String,
    pub latest: BackupRecord,
    /// When its newest successful backup finished.
    pub last_success_at: Option<DateTime<Utc>>,
    /// When its oldest stored backup finished (a database that never succeeded is stale 48 h
    /// after its first failure).
    pub first_seen_at: DateTime<Utc>,
}

impl LatestBackup {
    fn into_state(self, now: DateTime<Utc>) -> DatabaseBackupState {
        DatabaseBackupState {
            state: database_state(&self.latest, self.last_success_at, self.first_seen_at, now),
            agent_id: self.latest.agent_id.clone(),
            agent_name: self.agent_name,
            key: self.latest.key.clone(),
            latest: self.latest,
            last_success_at: self.last_success_at,
        }
    }
}

/// The relay's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
}

/// Where the state lives.
enum Backend {
    Sqlite(sqlite::SqliteBackend),
    Postgres(Box<postgres::PgBackend>),
}

impl Store {
    /// Opens (creating and migrating as needed) the database file, with its writer and
    /// [`READ_CONNECTIONS`] read-only connections.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let path = path.to_path_buf();
        let backend = tokio::task::spawn_blocking(move || sqlite::SqliteBackend::open(&path))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(Store {
            backend: Arc::new(Backend::Sqlite(backend)),
        })
    }

    /// Connects to a PostgreSQL database (`postgres://user@host:port/db`), creating and
    /// migrating the schema as needed. `password` overrides the URL's.
    pub async fn open_postgres(url: &str, password: Option<String>) -> Result<Store, StoreError> {
        let url = url.to_string();
        let backend = tokio::task::spawn_blocking(move || {
            postgres::PgBackend::open(&url, password.as_deref())
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(Store {
            backend: Arc::new(Backend::Postgres(Box::new(backend))),
        })
    }

    /// Which backend this store runs on.
    pub fn backend_name(&self) -> &'static str {
        match &*self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// A fresh, empty store for a unit test: a new database on the PostgreSQL server named by
    /// `FLOTILLA_TEST_POSTGRES_URL` when it is set (the store suite's PostgreSQL run in
    /// `scripts/test`), else an in-memory SQLite database. A PostgreSQL that cannot be reached
    /// fails the test: it never falls back to SQLite.
    #[cfg(test)]
    pub fn open_for_test() -> Store {
        let Ok(url) = std::env::var("FLOTILLA_TEST_POSTGRES_URL") else {
            return Store::open_in_memory().expect("in-memory store");
        };
        // A thread of its own: the blocking client cannot run on an async worker.
        std::thread::spawn(move || {
            let name = flotilla_shared::ids::new_id("t").to_lowercase();
            let mut admin = ::postgres::Client::connect(&url, ::postgres::NoTls)
                .unwrap_or_else(|e| panic!("FLOTILLA_TEST_POSTGRES_URL {url}: {e}"));
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("create the test database");
            let (base, _) = url.rsplit_once('/').expect("URL with a database");
            let backend = postgres::PgBackend::open(&format!("{base}/{name}"), None)
                .expect("open the test database");
            Store {
                backend: Arc::new(Backend::Postgres(Box::new(backend))),
            }
        })
        .join()
        .expect("test store thread")
    }

    /// Whether this relay may still run on its database: on PostgreSQL a newer relay may have
    /// migrated it meanwhile (a rolling upgrade) to a schema this one must not write to, which
    /// is [`StoreError::TooNew`]. Always fine on SQLite, whose file only this relay migrates.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        if !self.is_shared() {
            return Ok(());
        }
        let (version, compatible_from) = self.read(postgres::schema_state).await?;
        postgres::runs_on(version, compatible_from, sqlite::MIGRATIONS.len() as i64)
    }

    /// An in-memory database, for unit tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Ok(Store {
            backend: Arc::new(Backend::Sqlite(sqlite::SqliteBackend::open_in_memory()?)),
        })
    }

    /// How many read-only connections serve reads (0: reads share the writer).
    #[cfg(test)]
    fn read_connections(&self) -> usize {
        match &*self.backend {
            Backend::Sqlite(b) => b.read_connections(),
            Backend::Postgres(_) => postgres::POOL_SIZE,
        }
    }

    /// Runs a pure read in one read transaction, off the async threads.
    async fn read<T, F>(&self, mut f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn sql::Conn) -> Result<T, StoreError> + Send + 'static,
    {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || match &*backend {
            Backend::Sqlite(b) => b.read(&mut f),
            Backend::Postgres(b) => b.read(&mut f),
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` in one write transaction, off the async threads: committed when it returns
    /// `Ok`. `f` may run more than once (a backend retries a transaction that conflicted), so
    /// it must not have effects outside the transaction. Inside a [`Fence::scope`] the
    /// transaction first checks the fence (and fails with [`StoreError::Fenced`]).
    async fn write<T, F>(&self, mut f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn sql::Conn) -> Result<T, StoreError> + Send + 'static,
    {
        match Fence::current() {
            Some(fence) => {
                self.write_unfenced(move |c| {
                    Sql::check_fence(c, &fence)?;
                    f(c)
                })
                .await
            }
            None => self.write_unfenced(f).await,
        }
    }

    /// [`Store::write`] without the fence check: the cluster's own bookkeeping (membership,
    /// routes, the leases themselves), which any relay does whatever it holds.
    async fn write_unfenced<T, F>(&self, mut f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn sql::Conn) -> Result<T, StoreError> + Send + 'static,
    {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || match &*backend {
            Backend::Sqlite(b) => b.write(&mut f),
            Backend::Postgres(b) => b.write(&mut f),
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// Answer to [`Store::command_info`].
#[derive(Clone, Debug, PartialEq)]
pub enum CommandLookup {
    Found(Box<CommandInfo>),
    /// No such command, or no delivery of it to the given agent.
    NotFound,
    /// A job command asked for without `?agent=`.
    NeedsAgent {
        job_id: Option<String>,
    },
}

#[cfg(test)]
mod tests;
