//! The agent's durable state: one SQLite file, `<state-dir>/agent.db` (WAL, mode 0600).
//!
//! It holds the identity (agent id, private key, pinned relay key) and the last verified
//! welcome (`identity`), the command journal (`journal`: every command runs at most once and its
//! result is remembered), the outbox of results and events not yet acknowledged by the relay
//! (`outbox`), the container update journal (`update_journal`) and the backup catalogue
//! (`backup_catalogue`). This file opens the database and migrates its schema — forward, or
//! back with the undo scripts a newer agent stored in `schema_downgrades` when a self-update
//! to it was reverted (`downgrade`); each table family's methods on `State` live in its own
//! file.
//!
//! SQLite calls block, so every method hops onto the blocking pool; the connection sits behind a
//! std mutex that is only ever held inside those blocking closures, never across an `.await`.

mod backup_catalogue;
// issue 17 part 4: the databases a run is expected to back up
mod backup_expected;
// issue 17 part 6: the images a rollback may need
mod identity;
mod journal;
mod outbox;
mod rollback_images;
mod update_journal;

pub use backup_expected::ExpectedJob;
pub use identity::Identity;
pub use journal::{JournalBegin, JournalEntry};
pub use outbox::{
    dropped_notice, EventCursor, DEFAULT_MAX_OUTBOX_EVENTS, DROPPED_EVENTS_ATTRIBUTE,
};
pub use rollback_images::RollbackImages;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "agent.db";

const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    r#"
    CREATE TABLE identity (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        agent_id TEXT NOT NULL,
        name TEXT NOT NULL,
        pkcs8 BLOB NOT NULL,
        relay_public_key TEXT NOT NULL,
        relay_url TEXT NOT NULL,
        enrolled_at TEXT NOT NULL
    );
    CREATE TABLE journal (
        id TEXT PRIMARY KEY,
        received_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'done')),
        result TEXT
    );
    CREATE INDEX journal_expires ON journal (expires_at);
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        item TEXT NOT NULL
    );
    CREATE TABLE welcome (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        body TEXT NOT NULL,
        signature TEXT NOT NULL,
        received_at TEXT NOT NULL
    );
    "#,
    // 2: outbox rows say what they hold (event cap, one pending result per command); the Docker
    // events cursor; the pending "events dropped" notice
    r#"
    ALTER TABLE outbox ADD COLUMN is_event INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN command_id TEXT;
    UPDATE outbox SET is_event = 1 WHERE json_extract(item, '$.item') = 'event';
    UPDATE outbox SET command_id = json_extract(item, '$.command_id')
        WHERE json_extract(item, '$.item') = 'result';
    CREATE INDEX outbox_events ON outbox (is_event, seq);
    CREATE INDEX outbox_command ON outbox (command_id);
    CREATE TABLE events_cursor (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        time_nano INTEGER NOT NULL,
        keys TEXT NOT NULL
    );
    CREATE TABLE outbox_dropped (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        count INTEGER NOT NULL
    );
    "#,
    // 3: container.update journal: what an update needs to converge after a crash
    r#"
    CREATE TABLE updates (
        command_id TEXT PRIMARY KEY,
        phase TEXT NOT NULL,
        record TEXT NOT NULL,
        finished INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX updates_unfinished ON updates (finished);
    "#,
    // 4: the journal keeps the command itself, so one interrupted before it did anything can
    // still be reported in its kind's terms
    r#"
    ALTER TABLE journal ADD COLUMN command TEXT;
    "#,
    // 5: the backup catalogue (one row per database backup, its manifest as JSON) and the
    // reports of recent runs (backup-status.json and the heartbeat summary are derived from them)
    r#"
    CREATE TABLE backups (
        id TEXT PRIMARY KEY,
        job TEXT NOT NULL,
        database TEXT NOT NULL,
        status TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        manifest TEXT NOT NULL
    );
    CREATE INDEX backups_series ON backups (job, database, finished_at);
    CREATE INDEX backups_finished ON backups (finished_at);
    CREATE TABLE backup_runs (
        run_id TEXT PRIMARY KEY,
        job TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        report TEXT NOT NULL
    );
    CREATE INDEX backup_runs_job ON backup_runs (job, finished_at);
    "#,
    // --- issue 17 parts 4 and 6: host upkeep ---
    // 6: the discovered database jobs the agent has backed up and so expects to back up again
    // (a run where one cannot be dumped fails instead of leaving it out); seeded from the
    // catalogue's successful backups of discovered jobs (named after their container)
    r#"
    CREATE TABLE backup_expected (
        job TEXT PRIMARY KEY,
        container TEXT NOT NULL,
        engine TEXT NOT NULL,
        last_success_at TEXT NOT NULL,
        last_seen_at TEXT NOT NULL
    );
    INSERT OR IGNORE INTO backup_expected (job, container, engine, last_success_at, last_seen_at)
        SELECT job, json_extract(manifest, '$.container'), json_extract(manifest, '$.engine'),
               MAX(finished_at), MAX(finished_at)
        FROM backups
        WHERE status = 'success' AND job = json_extract(manifest, '$.container')
        GROUP BY job;
    "#,
];

/// Handle to the agent database; cheap to clone.
#[derive(Clone)]
pub struct State {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    outbox_notify: Arc<Notify>,
    /// Events (not results) the outbox may hold; older ones are dropped beyond it.
    max_outbox_events: Arc<AtomicUsize>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("path", &self.path).finish()
    }
}

// === impl State ===

impl State {
    /// Opens (creating if needed) `<state_dir>/agent.db` and brings its schema up to date.
    pub async fn open(state_dir: &Path) -> Result<State> {
        let dir = state_dir.to_path_buf();
        tokio::task::spawn_blocking(move || State::open_blocking(&dir))
            .await
            .context("state open task failed")?
    }

    /// The blocking body of `open`.
    pub fn open_blocking(state_dir: &Path) -> Result<State> {
        State::open_blocking_with(state_dir, &[])
    }

    /// `open_blocking` for a build that carries `extra` migrations after this build's own
    /// (numbered from `MIGRATIONS.len() + 1`). Only the test build that plays a newer release
    /// with one more migration (`examples/flotilla-agent-next-schema.rs`) passes any.
    pub fn open_blocking_with(state_dir: &Path, extra: &[ExtraMigration]) -> Result<State> {
        create_private_dir(state_dir)?;
        let path = state_dir.join(DB_FILE);
        create_private_file(&path)?;
        let mut conn = Connection::open(&path)
            .with_context(|| format!("cannot open agent database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .context("cannot enable WAL on the agent database")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut migrations: Vec<(&str, Option<&str>)> = MIGRATIONS
            .iter()
            .enumerate()
            .map(|(i, up)| (*up, downgrade_of(i as i64 + 1)))
            .collect();
        migrations.extend(extra.iter().map(|m| (m.up, Some(m.down))));
        migrate(&mut conn, &migrations)
            .with_context(|| format!("cannot migrate {}", path.display()))?;
        Ok(State {
            conn: Arc::new(Mutex::new(conn)),
            path,
            outbox_notify: Arc::new(Notify::new()),
            max_outbox_events: Arc::new(AtomicUsize::new(DEFAULT_MAX_OUTBOX_EVENTS)),
        })
    }

    /// Caps the events the outbox holds (for every clone of this handle). While the relay is
    /// unreachable a restart-looping container would otherwise grow it without bound; the
    /// oldest events go first, results are never dropped.
    pub fn set_max_outbox_events(&self, max: usize) {
        self.max_outbox_events.store(max.max(1), Ordering::Relaxed);
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Woken (one permit is stored) whenever an item is appended to the outbox.
    pub fn outbox_notify(&self) -> Arc<Notify> {
        self.outbox_notify.clone()
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn call<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| anyhow!("agent database lock poisoned"))?;
            f(&mut guard)
        })
        .await
        .context("agent database task failed")?
    }
}

/// Timestamps are stored as fixed-width RFC 3339 UTC text, so text order is time order.
fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// Undo scripts of the migrations above [`DOWNGRADES_FROM`], by version: applying migration N
/// also stores its undo script in `schema_downgrades`, so an OLDER binary that finds the
/// database at N (a reverted or rolled-back self-update) can bring it back to the schema it
/// knows without knowing migration N itself (see `downgrade`). An undo script drops what its
/// migration added (or converts it back); `every_downgrade_restores_the_previous_schema` checks
/// that the schema after it is exactly the one before the migration.
const DOWNGRADES: &[(i64, &str)] = &[];

/// The newest schema version that has no undo script: binaries from before stored undo scripts
/// know at least this version, so every migration above it must come with one (a test checks).
#[cfg(test)]
const DOWNGRADES_FROM: i64 = 6;

/// A migration a build carries beyond this build's own, with its undo script (see
/// [`State::open_blocking_with`]).
#[derive(Clone, Copy, Debug)]
pub struct ExtraMigration {
    pub up: &'static str,
    pub down: &'static str,
}

fn downgrade_of(version: i64) -> Option<&'static str> {
    DOWNGRADES
        .iter()
        .find(|(v, _)| *v == version)
        .map(|(_, sql)| *sql)
}

/// Bookkeeping outside the numbered migrations (it must exist whatever the version is): the
/// undo script of every applied migration that has one.
const DOWNGRADES_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_downgrades (
    version INTEGER PRIMARY KEY,
    down TEXT NOT NULL
)";

/// Brings the schema to `migrations.len()`: forward by applying (and recording the undo script
/// of) each missing migration; backward, when a newer agent migrated the file, by the undo
/// scripts that agent stored. Each step is one transaction.
fn migrate(conn: &mut Connection, migrations: &[(&str, Option<&str>)]) -> Result<()> {
    conn.execute_batch(DOWNGRADES_TABLE)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = migrations.len() as i64;
    if version > known {
        return downgrade(conn, version, known);
    }
    for (i, (up, down)) in migrations.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(up)?;
        if let Some(down) = down {
            tx.execute(
                "INSERT OR REPLACE INTO schema_downgrades (version, down) VALUES (?1, ?2)",
                rusqlite::params![i as i64 + 1, down],
            )?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Undoes schema versions `known + 1 ..= version` (newest first) with the scripts the newer agent
/// stored, in ONE transaction: a crash or a failing script leaves the file as it was. The rows
/// of every table stay (the outbox's unacknowledged results and events, with their seqs, the
/// journal, the update journal, the backup catalogue); only what the newer migrations added goes.
fn downgrade(conn: &mut Connection, version: i64, known: i64) -> Result<()> {
    let tx = conn.transaction()?;
    let mut scripts = Vec::new();
    let mut missing = Vec::new();
    for v in (known + 1..=version).rev() {
        let down: Option<String> = tx
            .query_row(
                "SELECT down FROM schema_downgrades WHERE version = ?1",
                [v],
                |r| r.get(0),
            )
            .optional()?;
        match down {
            Some(sql) => scripts.push((v, sql)),
            None => missing.push(v),
        }
    }
    if !missing.is_empty() {
        bail!(
            "database schema version {version} is newer than this agent understands ({known}) \
             and the newer agent left no undo script for version(s) {missing:?}; upgrade the \
             agent"
        );
    }
    for (v, sql) in &scripts {
        tx.execute_batch(sql).with_context(|| {
            format!("cannot undo schema version {v} (written by a newer agent)")
        })?;
        tx.execute("DELETE FROM schema_downgrades WHERE version = ?1", [v])?;
    }
    tx.pragma_update(None, "user_version", known)?;
    tx.commit()?;
    tracing::warn!(
        from = version,
        to = known,
        "the database was migrated by a newer agent; undid its migrations with the scripts it \
         stored (a reverted or rolled-back upgrade)"
    );
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("cannot create state directory {}", dir.display()))
}

/// Creates the database file with mode 0600 before SQLite opens it, so the private key is never
/// readable by others, not even for a moment. Tightens the mode of an existing file too.
fn create_private_file(path: &Path) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot set mode 0600 on {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
