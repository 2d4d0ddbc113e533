//! Moving a relay's whole state from one store to another (`flotilla-relay migrate`): a single
//! SQLite relay's `relay.db` into PostgreSQL, so it can become one of several relays.
//!
//! The copy is generic over the schema, so a table added by a later migration is copied without
//! anyone remembering to: every table of the source (in creation order, which is also the
//! order foreign keys need) except the live cluster state (`relays`, `agent_routes`, `leases`:
//! nothing of it outlives the relay processes), row by row through the backend-neutral
//! [`Conn`] seam, which converts SQLite's text timestamps and JSON into PostgreSQL's types the
//! way every domain write does. Both sides must have the same schema version (the same relay
//! binary opens both, and opening migrates them).
//!
//! Nothing is lost or half-done: the source is read from a snapshot (`VACUUM INTO`, consistent
//! even if a relay were running on it, which the command also refuses), the whole target is
//! written in ONE transaction (a failure leaves it as empty as it was), the target must be empty
//! (refused, naming the table, otherwise), and every table's row count is compared after the
//! copy, inside that transaction. Identity columns (`events.id`, `audit.id`, ...) get their
//! sequences moved past the copied ids, so new rows do not collide.

use super::sql::{params, ConnExt, Value};
use super::*;

/// Live state of the cluster: not copied.
const NOT_COPIED: [&str; 3] = ["relays", "agent_routes", "leases"];
/// Rows read from the source and inserted into the target at a time.
const BATCH_ROWS: usize = 200;

/// What a copy moved: each table and its number of rows, in copy order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub tables: Vec<(String, u64)>,
}

impl CopyReport {
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.1).sum()
    }
}

/// Why a copy was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the source must be a SQLite store")]
    SourceNotSqlite,
    #[error("the target is the SQLite store itself; migrate into PostgreSQL")]
    TargetNotPostgres,
    #[error(
        "the target database is not empty: table {table} holds {rows} rows; migrate into an \
         empty database (a fresh one, or drop this one's tables first)"
    )]
    TargetNotEmpty { table: String, rows: u64 },
    #[error(
        "table {table} has columns [{source_columns}] in the source but [{target_columns}] in \
         the target; both must be at the same schema version"
    )]
    Columns {
        table: String,
        source_columns: String,
        target_columns: String,
    },
    #[error("table {table}: {copied} rows copied but the target counts {counted}")]
    Count {
        table: String,
        copied: u64,
        counted: u64,
    },
    #[error("unexpected table name {0:?} in the source")]
    BadName(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sql::SqlError> for CopyError {
    fn from(e: sql::SqlError) -> CopyError {
        CopyError::Store(e.into())
    }
}

/// Our own table and column names only: they are written into statements.
fn check_name(name: &str) -> Result<(), CopyError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CopyError::BadName(name.to_string()))
    }
}

/// One table to copy, with its columns in the source's order.
#[derive(Clone, Debug)]
struct Table {
    name: String,
    columns: Vec<String>,
    /// What the rows are read in order of: the primary key's columns, or `rowid`.
    key: Vec<String>,
}

impl Store {
    /// Copies a SQLite snapshot of `path` into a fresh SQLite file `snapshot` (`VACUUM INTO`;
    /// `snapshot` must not exist), consistent even while another connection writes.
    pub async fn snapshot_sqlite(path: &Path, snapshot: &Path) -> Result<(), StoreError> {
        let (path, snapshot) = (path.to_path_buf(), snapshot.to_path_buf());
        tokio::task::spawn_blocking(move || super::snapshot::sqlite_snapshot(&path, &snapshot))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Copies every table of this (SQLite) store into `target` (PostgreSQL), which must be
    /// empty: see the module documentation.
    pub async fn copy_into(&self, target: &Store) -> Result<CopyReport, CopyError> {
        if !matches!(&*self.backend, Backend::Sqlite(_)) {
            return Err(CopyError::SourceNotSqlite);
        }
        if !target.is_shared() {
            return Err(CopyError::TargetNotPostgres);
        }
        let tables = self.read(|c| Ok(source_tables(c))).await??;
        let source = self.backend.clone();
        // A refused or failed copy must roll the transaction back, so the closure fails; the
        // copy's own error is kept aside to be returned as it is.
        let failed: Arc<std::sync::Mutex<Option<CopyError>>> = Arc::default();
        let failure = failed.clone();
        let outcome = target
            .write_unfenced(move |c| {
                copy_all(&source, &tables, c).map_err(|e| {
                    let message = e.to_string();
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    StoreError::Task(message)
                })
            })
            .await;
        let kept = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (outcome, kept) {
            (Ok(report), _) => Ok(report),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(e.into()),
        }
    }
}

/// The source's tables in creation order, with their columns.
fn source_tables(c: &mut dyn sql::Conn) -> Result<Vec<Table>, CopyError> {
    let names: Vec<String> = c.query_map(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY rowid",
        params![],
        |r| r.get(0),
    )?;
    let mut tables = Vec::new();
    for name in names {
        if NOT_COPIED.contains(&name.as_str()) {
            continue;
        }
        check_name(&name)?;
        let info: Vec<(String, i64)> = c.query_map(
            "SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid",
            params![name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        for (col, _) in &info {
            check_name(col)?;
        }
        let mut key: Vec<(i64, String)> = info
            .iter()
            .filter(|(_, pk)| *pk > 0)
            .map(|(col, pk)| (*pk, col.clone()))
            .collect();
        key.sort();
        let mut key: Vec<String> = key.into_iter().map(|k| k.1).collect();
        if key.is_empty() {
            key.push("rowid".to_string());
        }
        let columns = info.into_iter().map(|i| i.0).collect();
        tables.push(Table { name, columns, key });
    }
    Ok(tables)
}

fn count(c: &mut dyn sql::Conn, table: &str) -> Result<u64, CopyError> {
    let n: i64 = c.query_row(&format!("SELECT COUNT(*) FROM {table}"), params![], |r| {
        r.get(0)
    })?;
    Ok(n.max(0) as u64)
}

/// Inside the target's one transaction: checks, copies, counts, moves the sequences.
fn copy_all(
    source: &Backend,
    tables: &[Table],
    c: &mut dyn sql::Conn,
) -> Result<CopyReport, CopyError> {
    let Backend::Sqlite(source) = source else {
        return Err(CopyError::SourceNotSqlite);
    };
    for t in tables {
        let mut target_columns: Vec<String> = c.query_map(
            "SELECT column_name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = ?1",
            params![t.name],
            |r| r.get(0),
        )?;
        let mut source_columns = t.columns.clone();
        target_columns.sort();
        source_columns.sort();
        if target_columns != source_columns {
            return Err(CopyError::Columns {
                table: t.name.clone(),
                source_columns: source_columns.join(", "),
                target_columns: target_columns.join(", "),
            });
        }
        let rows = count(c, &t.name)?;
        if rows > 0 {
            return Err(CopyError::TargetNotEmpty {
                table: t.name.clone(),
                rows,
            });
        }
    }
    let mut report = CopyReport::default();
    for t in tables {
        let copied = copy_table(source, t, c)?;
        let counted = count(c, &t.name)?;
        if counted != copied {
            return Err(CopyError::Count {
                table: t.name.clone(),
                copied,
                counted,
            });
        }
        report.tables.push((t.name.clone(), copied));
    }
    // Identity columns continue after the copied ids.
    let identities: Vec<(String, String)> = c.query_map(
        "SELECT table_name, column_name FROM information_schema.columns \
         WHERE table_schema = current_schema() AND is_identity = 'YES'",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    for (table, column) in identities {
        check_name(&table)?;
        check_name(&column)?;
        c.rows(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), \
                 (SELECT COALESCE(MAX({column}), 0) + 1 FROM {table}), false)"
            ),
            &[],
        )?;
    }
    Ok(report)
}

/// Copies one table in batches of [`BATCH_ROWS`], in the order of its key (keyset paging, so
/// a large table costs no more per batch than a small one); the number of rows copied.
fn copy_table(
    source: &sqlite::SqliteBackend,
    t: &Table,
    c: &mut dyn sql::Conn,
) -> Result<u64, CopyError> {
    let cols = t.columns.join(", ");
    let keys = t.key.join(", ");
    let marks: Vec<String> = (1..=t.key.len()).map(|n| format!("?{n}")).collect();
    let first = format!(
        "SELECT {keys}, {cols} FROM {} ORDER BY {keys} LIMIT {BATCH_ROWS}",
        t.name
    );
    let next = format!(
        "SELECT {keys}, {cols} FROM {} WHERE ({keys}) > ({}) ORDER BY {keys} LIMIT {BATCH_ROWS}",
        t.name,
        marks.join(", ")
    );
    let (nkeys, width) = (t.key.len(), t.columns.len());
    let mut after: Option<Vec<Value>> = None;
    let mut copied = 0u64;
    loop {
        let batch: Vec<Vec<Value>> = source.read(&mut |sc| {
            let rows = match &after {
                None => sc.rows(&first, &[])?,
                Some(key) => sc.rows(&next, key)?,
            };
            rows.iter()
                .map(|r| {
                    (0..nkeys + width)
                        .map(|i| r.get::<Value>(i))
                        .collect::<Result<Vec<_>, _>>()
                })
                .collect::<Result<Vec<_>, sql::SqlError>>()
                .map_err(StoreError::from)
        })?;
        let Some(last) = batch.last() else {
            break;
        };
        after = Some(last[..nkeys].to_vec());
        let mut placeholders = Vec::with_capacity(batch.len());
        let mut values = Vec::with_capacity(batch.len() * width);
        for (i, row) in batch.into_iter().enumerate() {
            let first = i * width + 1;
            let marks: Vec<String> = (first..first + width).map(|n| format!("?{n}")).collect();
            placeholders.push(format!("({})", marks.join(", ")));
            values.extend(row.into_iter().skip(nkeys));
        }
        copied += placeholders.len() as u64;
        c.exec(
            &format!(
                "INSERT INTO {} ({cols}) VALUES {}",
                t.name,
                placeholders.join(", ")
            ),
            &values,
        )?;
    }
    Ok(copied)
}
