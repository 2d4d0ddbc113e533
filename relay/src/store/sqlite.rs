//! The SQLite backend, the embedded default for one relay: one file in WAL mode, the schema by
//! `PRAGMA user_version`, writes through one connection behind a mutex (SQLite has one writer
//! anyway) and pure reads on a small pool of read-only connections to the same file, so API
//! reads and agent handshakes do not queue behind writes (WAL readers see every committed
//! write). Each call is one transaction: committed when the domain function returns `Ok`,
//! rolled back otherwise.

use super::sql::{self, Conn, SqliteConn};
use super::{StoreError, READ_CONNECTIONS};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

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
    // 5: canary rollouts (see `sql/rollouts.rs`).
    sql::rollouts::SCHEMA,
    // 6: alerts and silences (see `sql/alerts.rs`).
    sql::alerts::SCHEMA,
    // 7: published agent builds (see `sql/releases.rs`).
    sql::releases::SCHEMA,
    // 8: dashboard sessions (see `sql/sessions.rs`).
    sql::sessions::SCHEMA,
    // 9: the agents' metrics history (see `sql/metrics.rs`).
    sql::metrics::SCHEMA,
    // 10: keyset paging of the agents list (see `sql/agents.rs`).
    sql::agents::LIST_INDEXES,
    // 11: the newest firing alerts and their counts (see `sql/alerts.rs`).
    sql::alerts::FIRING_INDEXES,
    // 12: counting revoked agents (see `sql/agents.rs`).
    sql::agents::REVOKED_INDEX,
    // 13: image pull progress of an update (the agent's pull events, `sql/events.rs`).
    "ALTER TABLE updates ADD COLUMN layers_done INTEGER;\n\
     ALTER TABLE updates ADD COLUMN layers_total INTEGER;",
    // 14: several relays on one database: membership, routes, leases (see `sql/cluster.rs`).
    sql::cluster::SCHEMA,
    // 15: the relay's own backup runs (see `sql/relaybackups.rs`).
    sql::relaybackups::SCHEMA,
    // 16: the bytes of published agent builds (see `sql/releasefiles.rs`).
    sql::releasefiles::SCHEMA,
    // 17: the durable notification outbox (see `sql/notifications.rs`).
    sql::notifications::SCHEMA,
    // 18: enrollment: the label keys a token lets agents add (NULL: a token from before, any key)
    // and the labels each agent claimed, shown apart (see `model/enrollment.rs`).
    "ALTER TABLE enrollment_tokens ADD COLUMN agent_label_keys TEXT;\n\
     ALTER TABLE agents ADD COLUMN claimed_labels TEXT NOT NULL DEFAULT '{}';",
    // 19: `compose.update` in the update history: one row per container (see `sql/updates.rs`).
    sql::updates::COMPOSE_COLUMNS,
];

/// The fewest migrations a relay must know to run on a database this build migrated (several
/// relays on PostgreSQL, during a rolling upgrade: see `postgres.rs`). Every migration after it
/// only adds what an older relay never reads (tables, columns with defaults, indexes). Raise it
/// to `MIGRATIONS.len()` with a migration that changes what existing columns mean, drops any, or
/// adds rows older relays would handle wrongly: running relays that know fewer then step down
/// instead of writing, and refuse to start.
///
/// At 18: migration 18 (the label keys an enrollment token lets agents add) would be ignored by
/// an older relay, which would then let an agent enrolling through it claim any label. (Relays
/// before this build do not read this value at all: they refuse to start on any newer schema
/// and keep running beside one. Migrations 16, the builds' bytes, and 17, the notification
/// outbox, alone would have kept 15: older relays ignore both harmlessly; so would 19, the
/// `compose.update` columns of the update history.)
pub(super) const COMPATIBLE_FROM: i64 = 18;

pub(super) struct SqliteBackend {
    writer: Mutex<Connection>,
    /// Read-only connections; empty for an in-memory database (its reads use the writer).
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl SqliteBackend {
    /// Opens (creating and migrating as needed) the database file, with its writer and
    /// [`READ_CONNECTIONS`] read-only connections.
    pub(super) fn open(path: &Path) -> Result<SqliteBackend, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let writer = init(conn)?;
        let readers = (0..READ_CONNECTIONS)
            .map(|_| open_reader(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SqliteBackend {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    pub(super) fn open_in_memory() -> Result<SqliteBackend, StoreError> {
        Ok(SqliteBackend {
            writer: Mutex::new(init(Connection::open_in_memory()?)?),
            readers: Vec::new(),
            next_reader: AtomicUsize::new(0),
        })
    }

    /// Runs `f` in a write transaction (blocking).
    pub(super) fn write<T>(
        &self,
        f: &mut dyn FnMut(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is safe to keep using.
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&mut SqliteConn::new(&tx))?;
        tx.commit()?;
        Ok(value)
    }

    /// Runs a pure read on a read-only connection (a free one if any, else the next in turn),
    /// in one read transaction (one snapshot).
    pub(super) fn read<T>(
        &self,
        f: &mut dyn FnMut(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.readers.is_empty() {
            return self.write(f);
        }
        let n = self.readers.len();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        // Same reasoning as in `write`: a poisoned lock guards a usable connection.
        let guard = (0..n)
            .find_map(|i| self.readers[(start + i) % n].try_lock().ok())
            .unwrap_or_else(|| {
                self.readers[start % n]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            });
        let tx = guard.unchecked_transaction()?;
        f(&mut SqliteConn::new(&tx))
    }

    #[cfg(test)]
    pub(super) fn read_connections(&self) -> usize {
        self.readers.len()
    }
}

/// A read-only connection to the same (WAL) database file, for pure reads that should not
/// queue behind the writer. Open the writer first: it creates and migrates the file.
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn init(mut conn: Connection) -> Result<Connection, StoreError> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Whatever the relay acknowledges is on disk (ARCHITECTURE.md): in WAL mode FULL syncs the
    // WAL at every commit, so a power cut cannot take back a result, event or backup report the
    // agent was told is stored (and has deleted from its outbox). NORMAL syncs only at
    // checkpoints: safe against a crash of the process, not of the machine. The cost is one
    // fsync per write transaction (BENCHMARKS.md, "Acknowledged data on disk").
    conn.pragma_update(None, "synchronous", "FULL")?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
            needs: version,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// A migrated in-memory connection, for the domain functions' own tests.
#[cfg(test)]
pub(super) fn test_connection() -> Connection {
    init(Connection::open_in_memory().expect("in-memory sqlite")).expect("migrations apply")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_syncs_every_commit_to_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = SqliteBackend::open(&dir.path().join("relay.db")).expect("open");
        let writer = backend.writer.lock().expect("writer");
        let mode: String = writer
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal_mode");
        let synchronous: i64 = writer
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .expect("synchronous");
        // WAL with synchronous = FULL (2): every commit is on disk before the call returns, so
        // before the relay acknowledges what it wrote.
        assert_eq!((mode.as_str(), synchronous), ("wal", 2));
    }
}
