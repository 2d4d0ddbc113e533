//! The SQLite file itself, for the relay's backups (`crate::selfbackup`): an online snapshot
//! of `relay.db` (`VACUUM INTO` on a connection of its own: one read transaction, so the copy
//! is consistent while the relay keeps writing) and the check that a snapshot opens.

use super::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

/// The schema version (migrations applied) of a database this relay opened.
pub fn schema_version() -> i64 {
    super::sqlite::MIGRATIONS.len() as i64
}

/// Writes a consistent copy of the SQLite database `db` to `out` (which must not exist), while
/// other connections (the running relay) go on reading and writing. Blocking.
pub fn sqlite_snapshot(db: &Path, out: &Path) -> Result<(), StoreError> {
    if !db.is_file() {
        return Err(StoreError::Corrupt(format!(
            "{} does not exist or is not a file",
            db.display()
        )));
    }
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let out = out
        .to_str()
        .ok_or_else(|| StoreError::Corrupt(format!("{} is not UTF-8", out.display())))?;
    conn.execute("VACUUM INTO ?1", [out])?;
    Ok(())
}

/// Opens the SQLite file `path` read-only and runs `PRAGMA integrity_check`; its schema version
/// on success, else what is wrong. Blocking.
pub fn sqlite_check(path: &Path) -> Result<i64, String> {
    let opened = |e: rusqlite::Error| format!("it does not open as SQLite: {e}");
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(opened)?;
    let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(opened)?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(opened)?
        .collect::<Result<_, _>>()
        .map_err(opened)?;
    if problems != ["ok"] {
        return Err(format!("integrity check failed: {}", problems.join("; ")));
    }
    match conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)) {
        Ok(0) => Err("it holds no relay schema (user_version 0)".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(opened(e)),
    }
}

/// How many tables the PostgreSQL database at `url` holds outside the system schemas (a
/// restore refuses a database that has any). Blocking.
pub fn postgres_table_count(url: &str, password: Option<&str>) -> Result<i64, String> {
    let (mut config, connector) = super::postgres::tls::parse(url).map_err(|e| e.to_string())?;
    if let Some(p) = password {
        config.password(p);
    }
    config.connect_timeout(Duration::from_secs(10));
    let shown = super::redact_database_url(url);
    let mut client = connector
        .connect(&config)
        .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_tables \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .map_err(|e| format!("cannot list the tables of {shown}: {e}"))?;
    Ok(row.get(0))
}
