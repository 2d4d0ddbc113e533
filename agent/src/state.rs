//! The agent's durable state: one SQLite file, `<state-dir>/agent.db` (WAL, mode 0600).
//!
//! It holds the identity (agent id, private key, pinned relay key), the command journal (which
//! makes every command run at most once and remembers its result), the outbox of results and
//! events not yet acknowledged by the relay, and the last verified welcome.
//!
//! SQLite calls block, so every method hops onto the blocking pool; the connection sits behind a
//! std mutex that is only ever held inside those blocking closures, never across an `.await`.

use crate::agent_id::{ensure_agent_id, write_agent_id};
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use flotilla_shared::backup::{BackupManifest, BackupReport};
use flotilla_shared::command::CommandResult;
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::protocol::{OutboxItem, SignedWelcome};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "agent.db";

/// Journal entries are kept this long after their command expired: past expiry a replay is
/// refused as expired anyway, so the entry is no longer needed for deduplication.
const JOURNAL_KEEP_AFTER_EXPIRY_HOURS: i64 = 24;

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
];

/// Reports of runs kept per job (the newest one feeds backup-status.json).
const BACKUP_RUNS_KEPT_PER_JOB: i64 = 30;

/// Events kept in the outbox when nothing else is configured.
pub const DEFAULT_MAX_OUTBOX_EVENTS: usize = 10_000;

/// Who this agent is, as stored at enrollment.
#[derive(Clone)]
pub struct Identity {
    pub agent_id: String,
    pub name: String,
    /// The agent's Ed25519 private key (PKCS#8). Never logged.
    pub pkcs8: Vec<u8>,
    /// The relay's public key (base64), pinned at enrollment.
    pub relay_public_key: String,
    pub relay_url: String,
    pub enrolled_at: DateTime<Utc>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("agent_id", &self.agent_id)
            .field("name", &self.name)
            .field("relay_url", &self.relay_url)
            .finish_non_exhaustive()
    }
}

/// Where a command stands in the journal.
#[derive(Clone, Debug, PartialEq)]
pub enum JournalEntry {
    Running,
    Done(Box<CommandResult>),
}

/// What `journal_begin` found.
#[derive(Clone, Debug, PartialEq)]
pub enum JournalBegin {
    /// First time this id is seen: it is now journaled as running.
    New,
    /// Already journaled.
    Existing(JournalEntry),
}

/// Where the Docker event follower stands: the engine time of the last event it stored, and
/// the events (`id/action`) seen at exactly that time. Resuming from `time_nano` (inclusive)
/// and skipping those keys loses nothing and repeats nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventCursor {
    pub time_nano: i64,
    pub keys: Vec<String>,
}

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
        migrate(&mut conn).with_context(|| format!("cannot migrate {}", path.display()))?;
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

    // --- identity ---

    pub async fn identity(&self) -> Result<Option<Identity>> {
        self.call(|c| {
            c.query_row(
                "SELECT agent_id, name, pkcs8, relay_public_key, relay_url, enrolled_at
                 FROM identity WHERE id = 1",
                [],
                |r| {
                    Ok(Identity {
                        agent_id: r.get(0)?,
                        name: r.get(1)?,
                        pkcs8: r.get(2)?,
                        relay_public_key: r.get(3)?,
                        relay_url: r.get(4)?,
                        enrolled_at: parse_ts(&r.get::<_, String>(5)?),
                    })
                },
            )
            .optional()
            .context("cannot read identity")
        })
        .await
    }

    /// Stores the identity and writes its id to `<state_dir>/agent-id` (for the root updater;
    /// see `agent_id`); refuses to replace an existing identity. The file is written before the
    /// row is committed, so a stored identity always has it; a file left by a failed commit is
    /// rewritten by the next enrollment or start.
    pub async fn save_identity(&self, identity: Identity) -> Result<()> {
        let path = self.path.clone();
        self.call(move |c| {
            let tx = c.transaction()?;
            let existing: Option<String> = tx
                .query_row("SELECT agent_id FROM identity WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .optional()?;
            if let Some(id) = existing {
                bail!(
                    "{} already holds the identity of agent {id}; refusing to overwrite it",
                    path.display()
                );
            }
            tx.execute(
                "INSERT INTO identity (id, agent_id, name, pkcs8, relay_public_key, relay_url,
                 enrolled_at) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    identity.agent_id,
                    identity.name,
                    identity.pkcs8,
                    identity.relay_public_key,
                    identity.relay_url,
                    ts(identity.enrolled_at)
                ],
            )?;
            write_agent_id(state_dir_of(&path), &identity.agent_id)
                .with_context(|| format!("cannot store the agent id of {}", path.display()))?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Rewrites `<state_dir>/agent-id` when it is missing or holds another id than `agent_id`
    /// (an install enrolled before the file existed); returns whether it wrote.
    pub async fn ensure_agent_id_file(&self, agent_id: &str) -> Result<bool> {
        let (path, id) = (self.path.clone(), agent_id.to_string());
        tokio::task::spawn_blocking(move || {
            ensure_agent_id(state_dir_of(&path), &id)
                .with_context(|| format!("cannot store the agent id of {}", path.display()))
        })
        .await
        .context("agent id file task failed")?
    }

    // --- welcome ---

    pub async fn save_welcome(&self, welcome: SignedWelcome) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO welcome (id, body, signature, received_at) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body,
                 signature = excluded.signature, received_at = excluded.received_at",
                params![welcome.body, welcome.signature, ts(Utc::now())],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn last_welcome(&self) -> Result<Option<SignedWelcome>> {
        self.call(|c| {
            c.query_row(
                "SELECT body, signature FROM welcome WHERE id = 1",
                [],
                |r| {
                    Ok(SignedWelcome {
                        body: r.get(0)?,
                        signature: r.get(1)?,
                    })
                },
            )
            .optional()
            .context("cannot read last welcome")
        })
        .await
    }

    // --- command journal ---

    pub async fn journal_get(&self, command_id: &str) -> Result<Option<JournalEntry>> {
        let id = command_id.to_string();
        self.call(move |c| journal_get(c, &id)).await
    }

    /// Journals a command as running unless its id is already journaled (atomic: the lookup and
    /// the insert happen under one lock).
    pub async fn journal_begin(
        &self,
        command_id: &str,
        received_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<JournalBegin> {
        self.journal_begin_with(command_id, received_at, expires_at, None)
            .await
    }

    /// `journal_begin` that also keeps the command (JSON) with the entry.
    pub async fn journal_begin_with(
        &self,
        command_id: &str,
        received_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        command: Option<String>,
    ) -> Result<JournalBegin> {
        let id = command_id.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            if let Some(existing) = journal_get(&tx, &id)? {
                return Ok(JournalBegin::Existing(existing));
            }
            tx.execute(
                "INSERT INTO journal (id, received_at, expires_at, status, command)
                 VALUES (?1, ?2, ?3, 'running', ?4)",
                params![id, ts(received_at), ts(expires_at), command],
            )?;
            tx.commit()?;
            Ok(JournalBegin::New)
        })
        .await
    }

    /// Records a command's result in the journal and appends it to the outbox, in one
    /// transaction: either the relay will hear about the result or the command still shows as
    /// running. Returns the outbox seq.
    pub async fn finish_command(&self, result: CommandResult) -> Result<u64> {
        let notify = self.outbox_notify.clone();
        let seq = self
            .call(move |c| {
                let result_json = serde_json::to_string(&result)?;
                let tx = c.transaction()?;
                let n = tx.execute(
                    "UPDATE journal SET status = 'done', result = ?2 WHERE id = ?1",
                    params![result.command_id, result_json],
                )?;
                if n == 0 {
                    bail!("command {} is not in the journal", result.command_id);
                }
                let seq = insert_outbox(&tx, &OutboxItem::Result(result))?;
                tx.commit()?;
                Ok(seq)
            })
            .await?;
        notify.notify_one();
        Ok(seq)
    }

    /// Commands journaled as running, with the command JSON when it was kept (see
    /// `journal_running`).
    pub async fn journal_running_commands(&self) -> Result<Vec<(String, Option<String>)>> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT id, command FROM journal WHERE status = 'running'
                 AND id NOT IN (SELECT command_id FROM updates WHERE finished = 0)
                 ORDER BY received_at",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<(String, Option<String>)>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Ids of commands journaled as running (used at startup: a previous process died while
    /// running them), except unfinished updates, which converge from their own journal.
    pub async fn journal_running(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT id FROM journal WHERE status = 'running'
                 AND id NOT IN (SELECT command_id FROM updates WHERE finished = 0)
                 ORDER BY received_at",
            )?;
            let ids = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(ids)
        })
        .await
    }

    /// Deletes journal entries whose command expired more than a day before `now`.
    pub async fn prune_journal(&self, now: DateTime<Utc>) -> Result<usize> {
        let cutoff = now - ChronoDuration::hours(JOURNAL_KEEP_AFTER_EXPIRY_HOURS);
        self.call(move |c| {
            // An unfinished update keeps its command: its result is still to be filed.
            let n = c.execute(
                "DELETE FROM journal WHERE expires_at < ?1
                 AND id NOT IN (SELECT command_id FROM updates WHERE finished = 0)",
                params![ts(cutoff)],
            )?;
            c.execute(
                "DELETE FROM updates WHERE finished = 1
                 AND command_id NOT IN (SELECT id FROM journal)",
                [],
            )?;
            Ok(n)
        })
        .await
    }

    // --- update journal ---

    /// Saves an update's journal record (JSON) and the phase it reached; durable when this
    /// returns.
    pub async fn save_update(&self, command_id: &str, phase: &str, record: String) -> Result<()> {
        let (id, phase) = (command_id.to_string(), phase.to_string());
        self.call(move |c| {
            c.execute(
                "INSERT INTO updates (command_id, phase, record, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (command_id) DO UPDATE SET phase = excluded.phase,
                 record = excluded.record, updated_at = excluded.updated_at",
                params![id, phase, record, ts(Utc::now())],
            )?;
            Ok(())
        })
        .await
    }

    /// Records of updates that have not finished (a previous process stopped during them).
    pub async fn unfinished_updates(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut stmt =
                c.prepare("SELECT record FROM updates WHERE finished = 0 ORDER BY updated_at")?;
            let rows = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Finishes an update: its journal record, the command journal and the outbox in one
    /// transaction.
    pub async fn finish_update(&self, result: CommandResult, record: String) -> Result<u64> {
        let notify = self.outbox_notify.clone();
        let seq = self
            .call(move |c| {
                let result_json = serde_json::to_string(&result)?;
                let tx = c.transaction()?;
                tx.execute(
                    "UPDATE updates SET finished = 1, phase = 'done', record = ?2, updated_at = ?3
                     WHERE command_id = ?1",
                    params![result.command_id, record, ts(Utc::now())],
                )?;
                // The journal row may be gone (an older agent pruned it): write it again, so the
                // update is finished for good and its result still reaches the relay.
                let now = ts(Utc::now());
                tx.execute(
                    "INSERT INTO journal (id, received_at, expires_at, status, result)
                     VALUES (?1, ?3, ?3, 'done', ?2)
                     ON CONFLICT (id) DO UPDATE SET status = 'done', result = excluded.result",
                    params![result.command_id, result_json, now],
                )?;
                let seq = insert_outbox(&tx, &OutboxItem::Result(result))?;
                tx.commit()?;
                Ok(seq)
            })
            .await?;
        notify.notify_one();
        Ok(seq)
    }

    // --- backup catalogue ---

    /// Inserts or replaces a backup's catalogue row.
    pub async fn backup_put(&self, manifest: BackupManifest) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO backups (id, job, database, status, finished_at, manifest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                 finished_at = excluded.finished_at, manifest = excluded.manifest",
                params![
                    manifest.id,
                    manifest.job,
                    manifest.database,
                    manifest.status.as_str(),
                    ts(manifest.finished_at),
                    serde_json::to_string(&manifest)?
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn backup_get(&self, id: &str) -> Result<Option<BackupManifest>> {
        let id = id.to_string();
        self.call(move |c| {
            let text: Option<String> = c
                .query_row("SELECT manifest FROM backups WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            text.map(|t| serde_json::from_str(&t).context("corrupt backup manifest"))
                .transpose()
        })
        .await
    }

    /// Backups newest first, optionally of one job and/or database; the flag says whether more
    /// matched than `limit`.
    pub async fn backup_list(
        &self,
        job: Option<String>,
        database: Option<String>,
        limit: usize,
    ) -> Result<(Vec<BackupManifest>, bool)> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT manifest FROM backups
                 WHERE (?1 IS NULL OR job = ?1) AND (?2 IS NULL OR database = ?2)
                 ORDER BY finished_at DESC, id DESC LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![job, database, limit as i64 + 1], |r| {
                    r.get::<_, String>(0)
                })?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            let truncated = rows.len() > limit;
            let list = rows
                .into_iter()
                .take(limit)
                .map(|t| serde_json::from_str(&t).context("corrupt backup manifest"))
                .collect::<Result<Vec<BackupManifest>>>()?;
            Ok((list, truncated))
        })
        .await
    }

    /// Successful backups of one series (job + database), newest first: what retention
    /// chooses from.
    pub async fn backup_series(&self, job: &str, database: &str) -> Result<Vec<BackupManifest>> {
        let (job, database) = (job.to_string(), database.to_string());
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT manifest FROM backups WHERE job = ?1 AND database = ?2
                 AND status = 'success' ORDER BY finished_at DESC",
            )?;
            let rows = stmt
                .query_map(params![job, database], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            rows.into_iter()
                .map(|t| serde_json::from_str(&t).context("corrupt backup manifest"))
                .collect()
        })
        .await
    }

    /// Removes a pruned backup's catalogue row.
    pub async fn backup_delete(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call(move |c| {
            c.execute("DELETE FROM backups WHERE id = ?1", [id])?;
            Ok(())
        })
        .await
    }

    /// Failed backups older than `before` (they have no file; the history is the relay's).
    pub async fn backup_prune_failed(&self, before: DateTime<Utc>) -> Result<usize> {
        self.call(move |c| {
            Ok(c.execute(
                "DELETE FROM backups WHERE status = 'failed' AND finished_at < ?1",
                [ts(before)],
            )?)
        })
        .await
    }

    /// Records a finished run and queues its report for the relay, in one transaction.
    pub async fn backup_finish_run(&self, report: BackupReport) -> Result<u64> {
        let notify = self.outbox_notify.clone();
        let seq = self
            .call(move |c| {
                let tx = c.transaction()?;
                let job = report.job.clone().unwrap_or_default();
                tx.execute(
                    "INSERT OR REPLACE INTO backup_runs (run_id, job, finished_at, report)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        report.run_id,
                        job,
                        ts(report.finished_at),
                        serde_json::to_string(&report)?
                    ],
                )?;
                tx.execute(
                    "DELETE FROM backup_runs WHERE job = ?1 AND run_id NOT IN
                     (SELECT run_id FROM backup_runs WHERE job = ?1
                      ORDER BY finished_at DESC LIMIT ?2)",
                    params![job, BACKUP_RUNS_KEPT_PER_JOB],
                )?;
                let seq = insert_outbox(&tx, &OutboxItem::BackupReport(report))?;
                tx.commit()?;
                Ok(seq)
            })
            .await?;
        notify.notify_one();
        Ok(seq)
    }

    /// The newest report of every job.
    pub async fn backup_latest_reports(&self) -> Result<Vec<BackupReport>> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT report FROM backup_runs r WHERE finished_at =
                 (SELECT MAX(finished_at) FROM backup_runs WHERE job = r.job)
                 ORDER BY finished_at",
            )?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            rows.into_iter()
                .map(|t| serde_json::from_str(&t).context("corrupt backup report"))
                .collect()
        })
        .await
    }

    // --- outbox ---

    /// Appends items in one transaction; returns their seqs.
    pub async fn append_outbox(&self, items: Vec<OutboxItem>) -> Result<Vec<u64>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.append_events_at(items, None).await
    }

    /// Appends container events and moves the events cursor past them, in one transaction:
    /// after a restart the follower resumes exactly behind what was stored.
    pub async fn append_events(
        &self,
        items: Vec<OutboxItem>,
        cursor: EventCursor,
    ) -> Result<Vec<u64>> {
        self.append_events_at(items, Some(cursor)).await
    }

    async fn append_events_at(
        &self,
        items: Vec<OutboxItem>,
        cursor: Option<EventCursor>,
    ) -> Result<Vec<u64>> {
        let notify = self.outbox_notify.clone();
        let max_events = self.max_outbox_events.load(Ordering::Relaxed);
        let seqs = self
            .call(move |c| {
                let tx = c.transaction()?;
                let mut seqs = Vec::with_capacity(items.len());
                for item in &items {
                    seqs.push(insert_outbox(&tx, item)?);
                }
                if items.iter().any(|i| matches!(i, OutboxItem::Event(_))) {
                    cap_events(&tx, max_events)?;
                }
                if let Some(cursor) = cursor {
                    tx.execute(
                        "INSERT INTO events_cursor (id, time_nano, keys) VALUES (1, ?1, ?2)
                         ON CONFLICT (id) DO UPDATE SET time_nano = excluded.time_nano,
                         keys = excluded.keys",
                        params![cursor.time_nano, serde_json::to_string(&cursor.keys)?],
                    )?;
                }
                tx.commit()?;
                Ok(seqs)
            })
            .await?;
        notify.notify_one();
        Ok(seqs)
    }

    /// The Docker events cursor stored by `append_events`, if any.
    pub async fn events_cursor(&self) -> Result<Option<EventCursor>> {
        self.call(|c| {
            let row: Option<(i64, String)> = c
                .query_row(
                    "SELECT time_nano, keys FROM events_cursor WHERE id = 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(row.map(|(time_nano, keys)| EventCursor {
                time_nano,
                keys: serde_json::from_str(&keys).unwrap_or_default(),
            }))
        })
        .await
    }

    /// Queues a stored result again (the relay re-sent a command that already ran), unless
    /// the outbox still holds an unacknowledged result for that command: that one will reach
    /// the relay, and every duplicate would otherwise add another copy. Returns whether it was
    /// queued.
    pub async fn requeue_result(&self, result: CommandResult) -> Result<bool> {
        let notify = self.outbox_notify.clone();
        let queued = self
            .call(move |c| {
                let tx = c.transaction()?;
                let pending: Option<i64> = tx
                    .query_row(
                        "SELECT seq FROM outbox WHERE command_id = ?1 AND is_event = 0 LIMIT 1",
                        params![result.command_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                if pending.is_some() {
                    return Ok(false);
                }
                insert_outbox(&tx, &OutboxItem::Result(result))?;
                tx.commit()?;
                Ok(true)
            })
            .await?;
        if queued {
            notify.notify_one();
        }
        Ok(queued)
    }

    /// Replaces the item at `seq` (one that can never be sent as it is) keeping its place in
    /// the queue; a replaced result also replaces the journaled one, so a re-sent duplicate
    /// gets the same answer.
    pub async fn replace_outbox_item(&self, seq: u64, item: OutboxItem) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE outbox SET item = ?2 WHERE seq = ?1",
                params![seq as i64, serde_json::to_string(&item)?],
            )?;
            if let OutboxItem::Result(r) = &item {
                tx.execute(
                    "UPDATE journal SET result = ?2 WHERE id = ?1 AND status = 'done'",
                    params![r.command_id, serde_json::to_string(r)?],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` unacknowledged items with seq greater than `after`, in seq order.
    pub async fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, OutboxItem)>> {
        self.call(move |c| {
            let mut stmt =
                c.prepare("SELECT seq, item FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let rows = stmt
                .query_map(params![after as i64, limit as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for (seq, text) in rows {
                match serde_json::from_str(&text) {
                    Ok(item) => out.push((seq as u64, item)),
                    // An item this build cannot read would block the queue forever; it can only
                    // come from a newer agent version sharing the state dir, so skip it.
                    Err(e) => tracing::warn!(seq, error = %e, "skipping unreadable outbox item"),
                }
            }
            Ok(out)
        })
        .await
    }

    /// Deletes every item with seq at or below `seq` (the relay's acks are cumulative).
    pub async fn ack_outbox(&self, seq: u64) -> Result<usize> {
        self.call(
            move |c| Ok(c.execute("DELETE FROM outbox WHERE seq <= ?1", params![seq as i64])?),
        )
        .await
    }

    /// Number of unacknowledged outbox items.
    pub async fn outbox_len(&self) -> Result<u64> {
        self.call(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }
}

/// Inserts one outbox row; returns its seq.
fn insert_outbox(c: &Connection, item: &OutboxItem) -> Result<u64> {
    let (is_event, command_id) = match item {
        OutboxItem::Event(_) => (true, None),
        OutboxItem::Result(r) => (false, Some(r.command_id.as_str())),
        // Backup reports are never dropped by the event cap: they are the record of a run.
        OutboxItem::BackupReport(_) => (false, None),
    };
    c.execute(
        "INSERT INTO outbox (item, is_event, command_id) VALUES (?1, ?2, ?3)",
        params![serde_json::to_string(item)?, is_event, command_id],
    )?;
    Ok(c.last_insert_rowid() as u64)
}

/// Keeps at most `max` events in the outbox: beyond it the oldest are deleted and ONE notice
/// event (updated in place while it is still queued) says how many were dropped.
fn cap_events(c: &Connection, max: usize) -> Result<()> {
    let events: i64 = c.query_row("SELECT COUNT(*) FROM outbox WHERE is_event = 1", [], |r| {
        r.get(0)
    })?;
    let max = max.max(1) as i64;
    if events <= max {
        return Ok(());
    }
    let notice: Option<(i64, i64)> = c
        .query_row(
            "SELECT d.seq, d.count FROM outbox_dropped d JOIN outbox o ON o.seq = d.seq
             WHERE d.id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    // A new notice needs room for itself.
    let excess = events - max + i64::from(notice.is_none());
    let dropped = c.execute(
        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE is_event = 1
         AND seq != ?1 ORDER BY seq LIMIT ?2)",
        params![notice.map(|n| n.0).unwrap_or(-1), excess],
    )? as i64;
    let total = notice.map(|n| n.1).unwrap_or(0) + dropped;
    let item = serde_json::to_string(&OutboxItem::Event(dropped_notice(total as u64, max as u64)))?;
    match notice {
        Some((seq, _)) => {
            c.execute(
                "UPDATE outbox SET item = ?2 WHERE seq = ?1",
                params![seq, item],
            )?;
            c.execute(
                "UPDATE outbox_dropped SET count = ?1 WHERE id = 1",
                params![total],
            )?;
        }
        None => {
            c.execute(
                "INSERT INTO outbox (item, is_event) VALUES (?1, 1)",
                params![item],
            )?;
            c.execute(
                "INSERT INTO outbox_dropped (id, seq, count) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, count = excluded.count",
                params![c.last_insert_rowid(), total],
            )?;
        }
    }
    Ok(())
}

/// Attribute of the notice event that counts the events dropped from a full outbox.
pub const DROPPED_EVENTS_ATTRIBUTE: &str = "dropped_events";

/// The event that reports dropped events (`agent.events_dropped`, count in `dropped_events`).
pub fn dropped_notice(count: u64, max: u64) -> AgentEvent {
    let mut attributes = std::collections::BTreeMap::new();
    attributes.insert(DROPPED_EVENTS_ATTRIBUTE.to_string(), count.to_string());
    attributes.insert("max_outbox_events".to_string(), max.to_string());
    AgentEvent {
        kind: EventKind::AgentEventsDropped,
        at: Utc::now(),
        container_id: None,
        container_name: None,
        message: format!(
            "agent dropped its {count} oldest unsent events: the outbox holds at most {max} \
             events while the relay is unreachable"
        ),
        attributes,
    }
}

/// The state directory holding the database file `db`.
fn state_dir_of(db: &Path) -> &Path {
    db.parent().unwrap_or(Path::new("."))
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

fn journal_get(c: &Connection, id: &str) -> Result<Option<JournalEntry>> {
    let row: Option<(String, Option<String>)> = c
        .query_row(
            "SELECT status, result FROM journal WHERE id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match row {
        None => Ok(None),
        Some((status, Some(result))) if status == "done" => {
            let result: CommandResult = serde_json::from_str(&result)
                .with_context(|| format!("journaled result of {id} is unreadable"))?;
            Ok(Some(JournalEntry::Done(Box::new(result))))
        }
        Some(_) => Ok(Some(JournalEntry::Running)),
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        bail!(
            "database schema version {version} is newer than this agent understands ({known}); \
             upgrade the agent"
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
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
pub(crate) mod tests {
    use super::*;
    use flotilla_shared::command::ResultStatus;

    /// A fresh state directory under the system temp dir (removed by the caller if it cares).
    pub(crate) fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(flotilla_shared::ids::new_id("flotilla-agent-test"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub(crate) fn result(id: &str) -> CommandResult {
        CommandResult {
            command_id: id.into(),
            status: ResultStatus::Succeeded,
            output: Some(serde_json::json!({"pong": true})),
            error: None,
            started_at: Utc::now(),
            finished_at: Utc::now(),
        }
    }

    fn event(msg: &str) -> OutboxItem {
        OutboxItem::Event(AgentEvent {
            kind: EventKind::AgentStarted,
            at: Utc::now(),
            container_id: None,
            container_name: None,
            message: msg.into(),
            attributes: Default::default(),
        })
    }

    #[tokio::test]
    async fn file_is_private_and_reopens() {
        let dir = temp_dir();
        let state = State::open(&dir).await.unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(state.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(state);
        State::open(&dir).await.unwrap();
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn identity_is_never_overwritten() {
        let dir = temp_dir();
        let state = State::open(&dir).await.unwrap();
        assert!(state.identity().await.unwrap().is_none());
        let id = Identity {
            agent_id: "ag_1".into(),
            name: "host".into(),
            pkcs8: vec![1, 2, 3],
            relay_public_key: "key".into(),
            relay_url: "http://127.0.0.1:1".into(),
            enrolled_at: Utc::now(),
        };
        state.save_identity(id.clone()).await.unwrap();
        let back = state.identity().await.unwrap().unwrap();
        assert_eq!(back.agent_id, "ag_1");
        assert_eq!(back.pkcs8, vec![1, 2, 3]);
        let e = state.save_identity(id).await.unwrap_err().to_string();
        assert!(e.contains("ag_1") && e.contains("refusing"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn the_identity_leaves_its_id_in_the_agent_id_file_for_the_updater() {
        let dir = temp_dir();
        let state = State::open(&dir).await.unwrap();
        let id = Identity {
            agent_id: "ag_1".into(),
            name: "host".into(),
            pkcs8: vec![1, 2, 3],
            relay_public_key: "key".into(),
            relay_url: "http://127.0.0.1:1".into(),
            enrolled_at: Utc::now(),
        };
        state.save_identity(id.clone()).await.unwrap();
        assert_eq!(crate::agent_id::read_agent_id(&dir).unwrap(), "ag_1");
        // A refused second identity leaves the file alone.
        let other = Identity {
            agent_id: "ag_2".into(),
            ..id
        };
        state.save_identity(other).await.unwrap_err();
        assert_eq!(crate::agent_id::read_agent_id(&dir).unwrap(), "ag_1");
        // An install enrolled before the file existed gets it at start.
        std::fs::remove_file(crate::agent_id::agent_id_path(&dir)).unwrap();
        assert!(state.ensure_agent_id_file("ag_1").await.unwrap());
        assert!(!state.ensure_agent_id_file("ag_1").await.unwrap());
        assert_eq!(crate::agent_id::read_agent_id(&dir).unwrap(), "ag_1");
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn outbox_round_trip_and_cumulative_ack() {
        let dir = temp_dir();
        let state = State::open(&dir).await.unwrap();
        let seqs = state
            .append_outbox(vec![event("a"), event("b"), event("c")])
            .await
            .unwrap();
        assert_eq!(seqs.len(), 3);
        assert!(seqs[0] < seqs[1] && seqs[1] < seqs[2]);
        let items = state.outbox_after(0, 10).await.unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].1, event_message(&items[1].1, "b"));
        let after_first = state.outbox_after(seqs[0], 10).await.unwrap();
        assert_eq!(after_first.len(), 2);
        assert_eq!(state.outbox_after(0, 1).await.unwrap().len(), 1);
        assert_eq!(state.ack_outbox(seqs[1]).await.unwrap(), 2);
        let rest = state.outbox_after(0, 10).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0, seqs[2]);
        // Seqs keep growing after deletes (AUTOINCREMENT), so the relay never sees one reused.
        state.ack_outbox(seqs[2]).await.unwrap();
        let next = state.append_outbox(vec![event("d")]).await.unwrap();
        assert!(next[0] > seqs[2]);
        std::fs::remove_dir_all(dir).ok();
    }

    fn event_message(item: &OutboxItem, expected: &str) -> OutboxItem {
        match item {
            OutboxItem::Event(e) if e.message == expected => item.clone(),
            other => panic!("unexpected item {other:?}"),
        }
    }

    #[tokio::test]
    async fn unfinished_updates_survive_pruning_and_always_finish() {
        let dir = temp_dir();
        let state = State::open(&dir).await.unwrap();
        let long_ago = Utc::now() - ChronoDuration::days(10);
        for id in ["cmd_upd", "cmd_plain"] {
            state.journal_begin(id, long_ago, long_ago).await.unwrap();
        }
        state
            .save_update("cmd_upd", "health_gate", "{\"name\":\"web\"}".into())
            .await
            .unwrap();
        // The unfinished update is not "interrupted": it converges from its own journal.
        assert_eq!(state.journal_running().await.unwrap(), vec!["cmd_plain"]);
        // Pruning keeps the command of an unfinished update.
        assert_eq!(state.prune_journal(Utc::now()).await.unwrap(), 1);
        assert!(state.journal_get("cmd_upd").await.unwrap().is_some());
        assert_eq!(state.unfinished_updates().await.unwrap().len(), 1);
        // Finishing works even when the journal row is gone, and is final.
        state
            .call(|c| Ok(c.execute("DELETE FROM journal WHERE id = 'cmd_upd'", [])?))
            .await
            .unwrap();
        state
            .finish_update(result("cmd_upd"), "{}".into())
            .await
            .unwrap();
        assert!(state.unfinished_updates().await.unwrap().is_empty());
        assert!(matches!(
            state.journal_get("cmd_upd").await.unwrap(),
            Some(JournalEntry::Done(_))
        ));
        assert_eq!(state.outbox_after(0, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn journal_round_trip() {
        let dir = temp_dir();
        let state = State::open(&dir).await.unwrap();
        let now = Utc::now();
        let exp = now + ChronoDuration::minutes(10);
        assert_eq!(
            state.journal_begin("cmd_1", now, exp).await.unwrap(),
            JournalBegin::New
        );
        assert_eq!(
            state.journal_begin("cmd_1", now, exp).await.unwrap(),
            JournalBegin::Existing(JournalEntry::Running)
        );
        assert_eq!(state.journal_running().await.unwrap(), vec!["cmd_1"]);
        let r = result("cmd_1");
        let seq = state.finish_command(r.clone()).await.unwrap();
        assert_eq!(
            state.journal_get("cmd_1").await.unwrap(),
            Some(JournalEntry::Done(Box::new(r.clone())))
        );
        let items = state.outbox_after(0, 10).await.unwrap();
        assert_eq!(items, vec![(seq, OutboxItem::Result(r))]);
        assert!(state.finish_command(result("cmd_unknown")).await.is_err());
        // The failed finish must not have left an outbox row behind.
        assert_eq!(state.outbox_len().await.unwrap(), 1);
        std::fs::remove_dir_all(dir).ok();
    }

    fn dropped_count(item: &OutboxItem) -> Option<u64> {
        match item {
            OutboxItem::Event(e) => e
                .attributes
                .get(DROPPED_EVENTS_ATTRIBUTE)
                .map(|n| n.parse().unwrap()),
            OutboxItem::Result(_) | OutboxItem::BackupReport(_) => None,
        }
    }

    #[tokio::test]
    async fn events_are_capped_results_never_dropped() {
        let dir = temp_dir();
        let state = State::open(&dir).await.unwrap();
        state.set_max_outbox_events(5);
        let now = Utc::now();
        state
            .journal_begin("cmd_1", now, now + ChronoDuration::minutes(5))
            .await
            .unwrap();
        state.finish_command(result("cmd_1")).await.unwrap();
        for i in 0..8 {
            state
                .append_outbox(vec![event(&format!("e{i}"))])
                .await
                .unwrap();
        }
        let items = state.outbox_after(0, 100).await.unwrap();
        let messages: Vec<String> = items
            .iter()
            .filter_map(|(_, i)| match i {
                OutboxItem::Event(e) if dropped_count(i).is_none() => Some(e.message.clone()),
                _ => None,
            })
            .collect();
        // 4 newest events + one notice = 5 events; the result stays.
        assert_eq!(messages, vec!["e4", "e5", "e6", "e7"], "{items:?}");
        let notices: Vec<u64> = items.iter().filter_map(|(_, i)| dropped_count(i)).collect();
        assert_eq!(notices, vec![4]);
        assert!(items
            .iter()
            .any(|(_, i)| matches!(i, OutboxItem::Result(r) if r.command_id == "cmd_1")));

        // More overflow updates the same notice instead of adding notices.
        state
            .append_outbox(vec![event("e8"), event("e9")])
            .await
            .unwrap();
        let items = state.outbox_after(0, 100).await.unwrap();
        let notices: Vec<u64> = items.iter().filter_map(|(_, i)| dropped_count(i)).collect();
        assert_eq!(notices, vec![6], "{items:?}");
        assert_eq!(items.len(), 6, "5 events and the result: {items:?}");

        // Once the notice was acknowledged, the next overflow starts a new one.
        let last = items.last().unwrap().0;
        state.ack_outbox(last).await.unwrap();
        for i in 0..6 {
            state
                .append_outbox(vec![event(&format!("f{i}"))])
                .await
                .unwrap();
        }
        let items = state.outbox_after(0, 100).await.unwrap();
        let notices: Vec<u64> = items.iter().filter_map(|(_, i)| dropped_count(i)).collect();
        assert_eq!(notices, vec![2], "{items:?}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_queued_result_is_not_queued_twice() {
        let dir = temp_dir();
        let state = State::open(&dir).await.unwrap();
        let now = Utc::now();
        state
            .journal_begin("cmd_1", now, now + ChronoDuration::minutes(5))
            .await
            .unwrap();
        let seq = state.finish_command(result("cmd_1")).await.unwrap();
        // Still queued: the duplicate adds nothing.
        assert!(!state.requeue_result(result("cmd_1")).await.unwrap());
        assert_eq!(state.outbox_len().await.unwrap(), 1);
        // Acknowledged: a later duplicate queues it again, once.
        state.ack_outbox(seq).await.unwrap();
        assert!(state.requeue_result(result("cmd_1")).await.unwrap());
        assert!(!state.requeue_result(result("cmd_1")).await.unwrap());
        assert_eq!(state.outbox_len().await.unwrap(), 1);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn replacing_an_item_keeps_its_place_and_updates_the_journal() {
        let dir = temp_dir();
        let state = State::open(&dir).await.unwrap();
        let now = Utc::now();
        state
            .journal_begin("cmd_1", now, now + ChronoDuration::minutes(5))
            .await
            .unwrap();
        let seq = state.finish_command(result("cmd_1")).await.unwrap();
        state.append_outbox(vec![event("after")]).await.unwrap();
        let mut small = result("cmd_1");
        small.status = ResultStatus::Failed;
        small.output = None;
        state
            .replace_outbox_item(seq, OutboxItem::Result(small.clone()))
            .await
            .unwrap();
        let items = state.outbox_after(0, 10).await.unwrap();
        assert_eq!(items[0], (seq, OutboxItem::Result(small.clone())));
        assert_eq!(items.len(), 2);
        assert_eq!(
            state.journal_get("cmd_1").await.unwrap(),
            Some(JournalEntry::Done(Box::new(small)))
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn events_cursor_is_stored_with_the_events() {
        let dir = temp_dir();
        let state = State::open(&dir).await.unwrap();
        assert_eq!(state.events_cursor().await.unwrap(), None);
        let cursor = EventCursor {
            time_nano: 1_700_000_000_000_000_123,
            keys: vec!["abc/die".into()],
        };
        state
            .append_events(vec![event("died")], cursor.clone())
            .await
            .unwrap();
        drop(state);
        let state = State::open(&dir).await.unwrap();
        assert_eq!(state.events_cursor().await.unwrap(), Some(cursor));
        assert_eq!(state.outbox_len().await.unwrap(), 1);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn migration_marks_existing_outbox_rows() {
        // A version-1 database with a queued result and event.
        let dir = temp_dir();
        {
            let mut conn = Connection::open(dir.join(DB_FILE)).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(MIGRATIONS[0]).unwrap();
            tx.pragma_update(None, "user_version", 1).unwrap();
            for item in [OutboxItem::Result(result("cmd_old")), event("old")] {
                tx.execute(
                    "INSERT INTO outbox (item) VALUES (?1)",
                    params![serde_json::to_string(&item).unwrap()],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let state = State::open(&dir).await.unwrap();
        assert!(!state.requeue_result(result("cmd_old")).await.unwrap());
        state.set_max_outbox_events(1);
        state.append_outbox(vec![event("new")]).await.unwrap();
        let items = state.outbox_after(0, 10).await.unwrap();
        // The old event went, the result stayed, and the notice took the one event place.
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(matches!(&items[0].1, OutboxItem::Result(r) if r.command_id == "cmd_old"));
        assert_eq!(dropped_count(&items[1].1), Some(2));
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn prune_drops_only_long_expired_entries() {
        let dir = temp_dir();
        let state = State::open(&dir).await.unwrap();
        let now = Utc::now();
        state
            .journal_begin("old", now, now - ChronoDuration::hours(25))
            .await
            .unwrap();
        state
            .journal_begin("recent", now, now - ChronoDuration::hours(23))
            .await
            .unwrap();
        state
            .journal_begin("live", now, now + ChronoDuration::minutes(5))
            .await
            .unwrap();
        assert_eq!(state.prune_journal(now).await.unwrap(), 1);
        assert!(state.journal_get("old").await.unwrap().is_none());
        assert!(state.journal_get("recent").await.unwrap().is_some());
        assert!(state.journal_get("live").await.unwrap().is_some());
        std::fs::remove_dir_all(dir).ok();
    }
}
