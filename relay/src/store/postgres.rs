//! The PostgreSQL backend (14 or newer), for several relays sharing one database: a small pool
//! of blocking clients (the `postgres` crate, used on tokio's blocking pool like rusqlite),
//! every write a SERIALIZABLE transaction retried on a serialization failure or deadlock — so
//! a domain function sees the same "one writer at a time" world it sees on SQLite, whichever
//! relay runs it — and every read a REPEATABLE READ READ ONLY transaction (one snapshot).
//!
//! The schema is SQLite's, translated ([`translate_ddl`]): the same migrations, numbered the
//! same, recorded in `flotilla_schema`; they run once, under a transaction-scoped advisory
//! lock, so relays starting together never both migrate. `flotilla_schema` also records the
//! oldest schema whose relays can still run on it (`compatible_from`, the migrating build's
//! [`super::sqlite::COMPATIBLE_FROM`]): during a rolling upgrade a relay that knows fewer
//! migrations than the database has starts (and keeps running) without migrating when it knows
//! at least that many, and is refused ([`StoreError::TooNew`]) otherwise, before anything is
//! written; a running relay re-checks ([`super::Store::check_schema`]) and steps down.
//!
//! Values cross the seam with SQLite's classes ([`Value`]); here they are converted by the
//! type the server inferred for each parameter and by each column's type: timestamps are
//! `timestamptz` (RFC 3339 text on the Rust side), integers `bigint`, reals `double precision`,
//! JSON `text` (read inside with `::jsonb` casts, see [`super::sql::Dialect`]), text
//! `COLLATE "C"` so that order and comparison are byte order, as on SQLite.

use super::cluster::Notice;
use super::sql::{to_postgres, Conn, Dialect, Row, SqlError, SqlResult, Value};
use super::StoreError;
use bytes::{BufMut, BytesMut};
use chrono::{DateTime, SecondsFormat, Utc};
use flotilla_daemon::backoff::Backoff;
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use postgres::{Client, IsolationLevel, Statement};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Connections per relay process.
pub const POOL_SIZE: usize = 8;
/// How long a call waits for a free connection, or for a connection to be made.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of a write transaction that keeps conflicting.
const MAX_ATTEMPTS: u32 = 20;
/// The advisory lock key under which migrations run ("flotilla" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x666c_6f74_696c_6c61;

/// One pooled client and its prepared statements.
struct PgClient {
    client: Client,
    statements: HashMap<String, Statement>,
}

pub(crate) mod tls;

pub(super) struct PgBackend {
    config: postgres::Config,
    /// Plain or TLS, from the URL's `sslmode` (see [`tls`]).
    connector: tls::Connector,
    idle: Mutex<Pool>,
    freed: Condvar,
}

struct Pool {
    clients: Vec<PgClient>,
    /// Clients in existence (idle or lent out).
    open: usize,
}

impl PgBackend {
    /// Connects and migrates. `password` overrides the URL's (read from a file by the caller).
    pub(super) fn open(url: &str, password: Option<&str>) -> Result<PgBackend, StoreError> {
        let (mut config, connector) = tls::parse(url)?;
        if let Some(p) = password {
            config.password(p);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("flotilla-relay");
        // A relay cut off from the database must notice within its lease (it then steps down),
        // not after the kernel's default of many minutes of retransmissions.
        config
            .tcp_user_timeout(Duration::from_secs(8))
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(2);
        let backend = PgBackend {
            config,
            connector,
            idle: Mutex::new(Pool {
                clients: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        };
        let mut client = backend.acquire()?;
        let migrated = migrate(&mut client.client);
        backend.release(client, migrated.is_ok());
        migrated?;
        Ok(backend)
    }

    fn connect(&self) -> Result<PgClient, StoreError> {
        let client = self.connector.connect(&self.config).map_err(pg_error)?;
        Ok(PgClient {
            client,
            statements: HashMap::new(),
        })
    }

    fn acquire(&self) -> Result<PgClient, StoreError> {
        let deadline = Instant::now() + ACQUIRE_TIMEOUT;
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = pool.clients.pop() {
                if !c.client.is_closed() {
                    return Ok(c);
                }
                pool.open -= 1;
                continue;
            }
            if pool.open < POOL_SIZE {
                pool.open += 1;
                drop(pool);
                return self.connect().inspect_err(|_| {
                    self.idle.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                    self.freed.notify_one();
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SqlError::Unavailable(
                    "no free PostgreSQL connection within 10 s".into(),
                )
                .into());
            }
            pool = self
                .freed
                .wait_timeout(pool, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Returns a client to the pool; a broken one is dropped (and made again when needed).
    fn release(&self, client: PgClient, healthy: bool) {
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if healthy && !client.client.is_closed() {
            pool.clients.push(client);
        } else {
            pool.open -= 1;
        }
        drop(pool);
        self.freed.notify_one();
    }

    /// Runs `f` in a SERIALIZABLE transaction, retried while it conflicts (blocking).
    pub(super) fn write<T>(
        &self,
        f: &mut dyn FnMut(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(IsolationLevel::Serializable, false, f)
    }

    /// Runs a pure read in one REPEATABLE READ, READ ONLY transaction (blocking).
    pub(super) fn read<T>(
        &self,
        f: &mut dyn FnMut(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(IsolationLevel::RepeatableRead, true, f)
    }

    fn run<T>(
        &self,
        level: IsolationLevel,
        read_only: bool,
        f: &mut dyn FnMut(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Full jitter, so relays whose transactions conflicted do not retry in step.
        let mut backoff = Backoff::new(Duration::from_millis(2), Duration::from_millis(50));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut pc = self.acquire()?;
            let outcome = once(&mut pc, level, read_only, f);
            let healthy = !matches!(&outcome, Err(StoreError::Sql(SqlError::Unavailable(_))));
            self.release(pc, healthy);
            match outcome {
                Err(StoreError::Sql(SqlError::Conflict(_))) if attempt < MAX_ATTEMPTS => {
                    std::thread::sleep(backoff.next_delay());
                }
                other => return other,
            }
        }
    }
}

/// The notification channel of the relays sharing a database.
pub(super) const CHANNEL: &str = "flotilla";

impl PgBackend {
    /// Listens on [`CHANNEL`] on a connection of its own, reconnecting with backoff, handing
    /// everything to `deliver` until it returns false (blocking; runs on a thread of its own).
    pub(super) fn listen(&self, deliver: &mut dyn FnMut(Notice) -> bool) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let connected = self.connector.connect(&self.config).and_then(|mut c| {
                c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
                Ok(c)
            });
            let mut client = match connected {
                Ok(c) => c,
                Err(e) => {
                    if !deliver(Notice::Broken(e.to_string())) {
                        return;
                    }
                    std::thread::sleep(backoff.next_delay());
                    continue;
                }
            };
            backoff.reset();
            if !deliver(Notice::Connected) {
                return;
            }
            let broke = loop {
                let mut failed = None;
                {
                    let mut notices = client.notifications();
                    let mut arrived = notices.timeout_iter(Duration::from_millis(500));
                    loop {
                        match arrived.next() {
                            Ok(Some(n)) => {
                                if !deliver(Notice::Payload(n.payload().to_string())) {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                failed = Some(e.to_string());
                                break;
                            }
                        }
                    }
                }
                // A quiet connection may be a dead one: ask it something.
                if failed.is_none() {
                    if let Err(e) = client.simple_query("SELECT 1") {
                        failed = Some(e.to_string());
                    }
                }
                if failed.is_some() || !deliver(Notice::Idle) {
                    break failed;
                }
            };
            let Some(error) = broke else { return };
            if !deliver(Notice::Broken(error)) {
                return;
            }
        }
    }
}

fn once<T>(
    pc: &mut PgClient,
    level: IsolationLevel,
    read_only: bool,
    f: &mut dyn FnMut(&mut dyn Conn) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let PgClient { client, statements } = pc;
    let mut tx = client
        .build_transaction()
        .isolation_level(level)
        .read_only(read_only)
        .start()
        .map_err(pg_error)?;
    let value = f(&mut PgConn {
        tx: &mut tx,
        statements,
    })?;
    tx.commit().map_err(pg_error)?;
    Ok(value)
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        // Closing a blocking client runs its own little runtime, which must not happen on an
        // async worker: close them on a thread of their own.
        let pool = self.idle.get_mut().unwrap_or_else(|p| p.into_inner());
        let clients = std::mem::take(&mut pool.clients);
        if !clients.is_empty() {
            std::thread::spawn(move || drop(clients));
        }
    }
}

/// A PostgreSQL transaction as a [`Conn`].
pub(super) struct PgConn<'a, 'b> {
    tx: &'a mut postgres::Transaction<'b>,
    statements: &'a mut HashMap<String, Statement>,
}

impl PgConn<'_, '_> {
    fn statement(&mut self, sql: &str, params: &[Value]) -> SqlResult<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let text = to_postgres(sql);
        // In a savepoint: a failed prepare would abort the whole transaction.
        let mut sp = self.tx.transaction().map_err(sql_error)?;
        let first = sp.prepare(&text);
        match &first {
            Ok(_) => sp.commit().map_err(sql_error)?,
            Err(_) => sp.rollback().map_err(sql_error)?,
        }
        let stmt = match first {
            Ok(s) => s,
            // A parameter only ever tested with `IS NULL` (or compared with another
            // parameter) has no type the server can infer: give the parameters the types of
            // the values at hand (text for a NULL), which is what SQLite does.
            Err(e)
                if e.code() == Some(&SqlState::INDETERMINATE_DATATYPE)
                    || e.code() == Some(&SqlState::AMBIGUOUS_PARAMETER) =>
            {
                let types: Vec<Type> = params
                    .iter()
                    .map(|v| match v {
                        Value::Int(_) => Type::INT8,
                        Value::Real(_) => Type::FLOAT8,
                        Value::Blob(_) => Type::BYTEA,
                        Value::Text(_) | Value::Null => Type::TEXT,
                    })
                    .collect();
                self.tx
                    .prepare_typed(&text, &types)
                    .map_err(|e| statement_error(e, &text))?
            }
            Err(e) => return Err(statement_error(e, &text)),
        };
        // Statements built with `format!` from bounded fragments are few; cap the cache anyway.
        if self.statements.len() > 2000 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }
}

impl Conn for PgConn<'_, '_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec(&mut self, sql: &str, params: &[Value]) -> SqlResult<usize> {
        let stmt = self.statement(sql, params)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let n = self.tx.execute(&stmt, &refs).map_err(sql_error)?;
        Ok(n as usize)
    }

    fn rows(&mut self, sql: &str, params: &[Value]) -> SqlResult<Vec<Row>> {
        let stmt = self.statement(sql, params)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = self.tx.query(&stmt, &refs).map_err(sql_error)?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get::<_, Value>(i).map_err(sql_error))
                    .collect::<SqlResult<Vec<_>>>()
                    .map(Row::new)
            })
            .collect()
    }
}

fn sql_error(e: postgres::Error) -> SqlError {
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            SqlError::Conflict(e.to_string())
        }
        _ if e.is_closed() || e.code().is_none() && e.as_db_error().is_none() => {
            SqlError::Unavailable(with_causes(&e))
        }
        _ => SqlError::Postgres(match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        }),
    }
}

/// The error and what caused it ("error performing TLS handshake: invalid peer certificate:
/// UnknownIssuer"): the driver's own message alone rarely says what to fix.
fn with_causes(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// A statement PostgreSQL refused to prepare: a bug of ours, so the error names the statement.
fn statement_error(e: postgres::Error, sql: &str) -> SqlError {
    match sql_error(e) {
        SqlError::Postgres(msg) => {
            let head: String = sql.chars().take(200).collect();
            SqlError::Postgres(format!("{msg} (in: {head})"))
        }
        other => other,
    }
}

fn pg_error(e: postgres::Error) -> StoreError {
    StoreError::Sql(sql_error(e))
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

fn bad(msg: String) -> Box<dyn std::error::Error + Sync + Send> {
    msg.into()
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => return Ok(IsNull::Yes),
            (Value::Int(n), &Type::INT8) => out.put_i64(*n),
            (Value::Int(n), &Type::INT4) => out.put_i32(
                i32::try_from(*n).map_err(|_| bad(format!("{n} does not fit an integer")))?,
            ),
            (Value::Int(n), &Type::INT2) => out.put_i16(
                i16::try_from(*n).map_err(|_| bad(format!("{n} does not fit a smallint")))?,
            ),
            (Value::Int(n), &Type::BOOL) => out.put_u8((*n != 0) as u8),
            (Value::Int(n), &Type::FLOAT8) => out.put_f64(*n as f64),
            (Value::Int(n), &Type::FLOAT4) => out.put_f32(*n as f32),
            (Value::Int(n), t) if is_text(t) => out.put_slice(n.to_string().as_bytes()),
            (Value::Real(x), &Type::FLOAT8) => out.put_f64(*x),
            (Value::Real(x), &Type::FLOAT4) => out.put_f32(*x as f32),
            (Value::Real(x), t) if is_text(t) => out.put_slice(x.to_string().as_bytes()),
            (Value::Text(s), &Type::TIMESTAMPTZ | &Type::TIMESTAMP) => {
                let t = DateTime::parse_from_rfc3339(s)
                    .map_err(|e| bad(format!("bad timestamp {s:?}: {e}")))?
                    .with_timezone(&Utc);
                out.put_i64(t.timestamp_micros() - PG_EPOCH_MICROS)
            }
            (Value::Text(s), &Type::JSONB) => {
                out.put_u8(1);
                out.put_slice(s.as_bytes())
            }
            (Value::Text(s), t) if is_text(t) || *t == Type::JSON => out.put_slice(s.as_bytes()),
            (Value::Text(s), &Type::INT8) => out.put_i64(
                s.parse()
                    .map_err(|_| bad(format!("{s:?} is not an integer")))?,
            ),
            (Value::Blob(b), &Type::BYTEA) => out.put_slice(b),
            (v, t) => return Err(bad(format!("cannot bind a {v:?} to a {t} parameter"))),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn is_text(t: &Type) -> bool {
    matches!(
        *t,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    )
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)? as i64),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)? as i64),
            Type::OID => Value::Int(u32::from_sql(ty, raw)? as i64),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)? as i64),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)? as f64),
            Type::NUMERIC => numeric(raw)?,
            Type::TIMESTAMPTZ | Type::TIMESTAMP => {
                let micros = i64::from_sql(&Type::INT8, raw)?;
                let t = DateTime::from_timestamp_micros(micros + PG_EPOCH_MICROS)
                    .ok_or_else(|| bad(format!("timestamp out of range ({micros} µs)")))?;
                Value::Text(t.to_rfc3339_opts(SecondsFormat::Micros, true))
            }
            Type::JSONB => match raw.split_first() {
                Some((1, rest)) => Value::Text(std::str::from_utf8(rest)?.to_string()),
                _ => return Err(bad("unknown jsonb format".into())),
            },
            Type::BYTEA => Value::Blob(raw.to_vec()),
            _ => Value::Text(std::str::from_utf8(raw)?.to_string()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A binary `numeric` (what `SUM` of integers returns) as an integer when it has no fraction,
/// else as a real.
fn numeric(raw: &[u8]) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
    let word = |i: usize| -> Result<i16, Box<dyn std::error::Error + Sync + Send>> {
        raw.get(i..i + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| bad("short numeric".into()))
    };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i32;
    let sign = word(4)? as u16;
    let scale = word(6)?;
    if sign == 0xC000 {
        return Ok(Value::Real(f64::NAN));
    }
    let mut x = 0f64;
    for i in 0..ndigits {
        let d = word(8 + 2 * i)? as f64;
        x += d * 10000f64.powi(weight - i as i32);
    }
    if sign == 0x4000 {
        x = -x;
    }
    if scale == 0 && x.abs() < 9.0e15 {
        Ok(Value::Int(x as i64))
    } else {
        Ok(Value::Real(x))
    }
}

/// SQLite's DDL (the relay's migrations) as PostgreSQL's: integers are `bigint`, reals
/// `double precision`, the timestamp columns (`*_at`, `ts`, `at`, `stage_deadline`)
/// `timestamptz`, other text `COLLATE "C"`, blobs `bytea`, `INTEGER PRIMARY KEY [AUTOINCREMENT]`
/// an identity column; `WITHOUT ROWID` goes.
pub(super) fn translate_ddl(sqlite: &str) -> String {
    let mut out = String::with_capacity(sqlite.len() + 256);
    for line in sqlite.lines() {
        let mut l = line.replace(") WITHOUT ROWID;", ");");
        l = l.replace(
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        );
        l = l.replace(
            "INTEGER PRIMARY KEY",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        );
        l = column_types(&l);
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// Rewrites the type of a column definition (`    name TYPE ...,`) or of `ADD COLUMN name TYPE`.
fn column_types(line: &str) -> String {
    let trimmed = line.trim_start();
    let (prefix, def) = if let Some(i) = line.find("ADD COLUMN ") {
        let at = i + "ADD COLUMN ".len();
        (&line[..at], &line[at..])
    } else if line.starts_with("    ")
        && !trimmed.starts_with("PRIMARY KEY")
        && !trimmed.starts_with("FOREIGN KEY")
        && !trimmed.starts_with("UNIQUE")
    {
        (&line[..line.len() - trimmed.len()], trimmed)
    } else {
        return line.to_string();
    };
    let mut parts = def.splitn(3, ' ');
    let (Some(name), Some(ty)) = (parts.next(), parts.next()) else {
        return line.to_string();
    };
    let rest = parts.next().map(|r| format!(" {r}")).unwrap_or_default();
    let (ty, tail) = match ty.find([',', ';']) {
        Some(i) => (&ty[..i], &ty[i..]),
        None => (ty, ""),
    };
    let timestamp = name.ends_with("_at") || matches!(name, "ts" | "at" | "stage_deadline");
    let new_ty = match ty {
        "INTEGER" => "BIGINT",
        "REAL" => "DOUBLE PRECISION",
        "TEXT" if timestamp => "TIMESTAMPTZ",
        "TEXT" => "TEXT COLLATE \"C\"",
        "BIGINT" => "BIGINT",
        "BLOB" => "BYTEA",
        _ => return line.to_string(),
    };
    format!("{prefix}{name} {new_ty}{tail}{rest}")
}

/// The schema a database holds: how many migrations it has, and the fewest a relay must know
/// to run on it.
pub(super) fn schema_state(tx: &mut dyn Conn) -> Result<(i64, i64), StoreError> {
    let row = tx
        .rows("SELECT version, compatible_from FROM flotilla_schema", &[])?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Corrupt("flotilla_schema has no row".into()))?;
    let version: i64 = row.get(0)?;
    let compatible_from: Option<i64> = row.get(1)?;
    Ok((version, compatible_from.unwrap_or(version)))
}

/// Whether a relay that knows `known` migrations may run on a database at `version` whose
/// migrations keep relays from `compatible_from` on working.
pub(super) fn runs_on(version: i64, compatible_from: i64, known: i64) -> Result<(), StoreError> {
    if version > known && compatible_from > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
            needs: compatible_from,
        });
    }
    Ok(())
}

fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let migrations = super::sqlite::MIGRATIONS;
    let known = migrations.len() as i64;
    let mut tx = client.transaction().map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg_error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS flotilla_schema (version BIGINT NOT NULL)")
        .map_err(pg_error)?;
    // Altered once (a relay running with a role that may only read and write rows starts on a
    // database that already has the column).
    let has_column = tx
        .query_opt(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() \
             AND table_name = 'flotilla_schema' AND column_name = 'compatible_from'",
            &[],
        )
        .map_err(pg_error)?
        .is_some();
    if !has_column {
        tx.batch_execute("ALTER TABLE flotilla_schema ADD COLUMN compatible_from BIGINT")
            .map_err(pg_error)?;
    }
    let row = tx
        .query_opt("SELECT version, compatible_from FROM flotilla_schema", &[])
        .map_err(pg_error)?;
    let (version, compatible_from): (i64, i64) = match row {
        Some(r) => {
            let version: i64 = r.get(0);
            (version, r.get::<_, Option<i64>>(1).unwrap_or(version))
        }
        None => {
            tx.execute("INSERT INTO flotilla_schema (version) VALUES (0)", &[])
                .map_err(pg_error)?;
            (0, 0)
        }
    };
    runs_on(version, compatible_from, known)?;
    if version >= known {
        if version > known {
            tracing::warn!(
                schema = version,
                known,
                compatible_from,
                "the database was migrated by a newer relay whose schema this relay can run on: \
                 running side by side (rolling upgrade); upgrade this relay soon"
            );
        }
        tx.commit().map_err(pg_error)?;
        return Ok(());
    }
    for (i, sql) in migrations.iter().enumerate().skip(version as usize) {
        tx.batch_execute(&translate_ddl(sql)).map_err(|e| {
            StoreError::Corrupt(format!("PostgreSQL migration {} failed: {e}", i + 1))
        })?;
    }
    tx.execute(
        "UPDATE flotilla_schema SET version = $1, compatible_from = $2",
        &[&known, &super::sqlite::COMPATIBLE_FROM],
    )
    .map_err(pg_error)?;
    tx.commit().map_err(pg_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_translation_types_columns() {
        let got = translate_ddl(
            "CREATE TABLE t (\n    id INTEGER PRIMARY KEY AUTOINCREMENT,\n    name TEXT NOT NULL,\n    created_at TEXT NOT NULL,\n    cpu REAL NOT NULL,\n    n INTEGER,\n    PRIMARY KEY (a, b)\n) WITHOUT ROWID;\nALTER TABLE updates ADD COLUMN layers_done INTEGER;",
        );
        assert_eq!(
            got,
            "CREATE TABLE t (\n    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,\n    name TEXT COLLATE \"C\" NOT NULL,\n    created_at TIMESTAMPTZ NOT NULL,\n    cpu DOUBLE PRECISION NOT NULL,\n    n BIGINT,\n    PRIMARY KEY (a, b)\n);\nALTER TABLE updates ADD COLUMN layers_done BIGINT;\n"
        );
    }

    #[test]
    fn numerics_decode() {
        // 12345 = digits [1, 2345], weight 1, positive, scale 0.
        let raw = [0, 2, 0, 1, 0, 0, 0, 0, 0, 1, 0x09, 0x29];
        assert_eq!(numeric(&raw).unwrap(), Value::Int(12345));
        let zero = [0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(numeric(&zero).unwrap(), Value::Int(0));
    }
}
