//! The store's backend-neutral SQL layer: one connection trait ([`Conn`]) that the SQLite and
//! PostgreSQL backends implement, dynamic values in and out ([`Value`], [`Row`]), and the few
//! places where the two dialects differ ([`Dialect`]).
//!
//! Every statement of the relay is written once, in the common subset of the two dialects, with
//! positional `?N` parameters (the PostgreSQL backend rewrites them to `$N`). Values cross the
//! seam with SQLite's dynamic types (integer, real, text, blob, null): timestamps are fixed-width
//! RFC 3339 UTC text with microseconds and JSON is text. The PostgreSQL backend stores them as
//! `timestamptz`, `jsonb`, `bigint`, `boolean` and converts on the way in (by the parameter
//! type the server inferred) and out (by the column type), so a value written and read back is
//! the same on both backends and the domain code never knows which one it talks to.
//!
//! A [`Conn`] is always inside a transaction the backend opened ([`super::Store`] decides where
//! it starts and ends); the domain functions never begin or commit.

use std::fmt;

/// A value crossing the seam, with SQLite's storage classes.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn class(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Blob(_) => "blob",
        }
    }
}

/// What went wrong below the store.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(String),
    /// A query that had to return a row returned none.
    #[error("query returned no rows")]
    NoRows,
    #[error("column {index}: expected {expected}, found {found}")]
    Type {
        index: usize,
        expected: &'static str,
        found: &'static str,
    },
    /// A PostgreSQL serialization failure or deadlock: the transaction may be retried.
    #[error("transaction conflict: {0}")]
    Conflict(String),
    /// The connection to the database is gone (the backend reconnects on the next call).
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

pub type SqlResult<T> = Result<T, SqlError>;

/// A Rust value that can be a statement parameter.
pub trait ToValue {
    fn to_value(&self) -> Value;
}

/// A Rust value a column can be read as.
pub trait FromValue: Sized {
    const EXPECTED: &'static str;
    fn from_value(v: &Value) -> Option<Self>;
}

macro_rules! int_values {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
        impl FromValue for $t {
            const EXPECTED: &'static str = "integer";
            fn from_value(v: &Value) -> Option<Self> {
                match v {
                    Value::Int(n) => <$t>::try_from(*n).ok(),
                    _ => None,
                }
            }
        }
    )*};
}
int_values!(i64, i32, u32, u64, usize, u16, u8);

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(*self as i64)
    }
}
impl FromValue for bool {
    const EXPECTED: &'static str = "boolean";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(n) => Some(*n != 0),
            _ => None,
        }
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl FromValue for f64 {
    const EXPECTED: &'static str = "real";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(x) => Some(*x),
            Value::Int(n) => Some(*n as f64),
            _ => None,
        }
    }
}
impl ToValue for f32 {
    fn to_value(&self) -> Value {
        Value::Real(*self as f64)
    }
}
impl FromValue for f32 {
    const EXPECTED: &'static str = "real";
    fn from_value(v: &Value) -> Option<Self> {
        f64::from_value(v).map(|x| x as f32)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl FromValue for String {
    const EXPECTED: &'static str = "text";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl FromValue for Vec<u8> {
    const EXPECTED: &'static str = "blob";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl FromValue for Value {
    const EXPECTED: &'static str = "any";
    fn from_value(v: &Value) -> Option<Self> {
        Some(v.clone())
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

/// Statement parameters: `params![a, b]` (any [`ToValue`]s).
#[macro_export]
#[doc(hidden)]
macro_rules! sql_params {
    () => { &[] as &[&dyn $crate::store::sql::ToValue] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::sql::ToValue),+] as &[&dyn $crate::store::sql::ToValue] };
}
pub use crate::sql_params as params;

/// Statement parameters as values.
pub fn values(params: &[&dyn ToValue]) -> Vec<Value> {
    params.iter().map(|p| p.to_value()).collect()
}

/// One result row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    values: Vec<Value>,
}

impl Row {
    pub fn new(values: Vec<Value>) -> Row {
        Row { values }
    }

    /// Column `index` as a `T`.
    pub fn get<T: FromValue>(&self, index: usize) -> SqlResult<T> {
        let v = self.values.get(index).unwrap_or(&Value::Null);
        T::from_value(v).ok_or(SqlError::Type {
            index,
            expected: T::EXPECTED,
            found: v.class(),
        })
    }
}

/// Which SQL dialect a [`Conn`] speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The smaller of two values (SQLite's two-argument `MIN`).
    pub fn least(self, a: &str, b: &str) -> String {
        match self {
            Dialect::Sqlite => format!("MIN({a}, {b})"),
            Dialect::Postgres => format!("LEAST({a}, {b})"),
        }
    }
}

/// A connection inside a transaction.
pub trait Conn {
    fn dialect(&self) -> Dialect;

    /// Runs one statement; the number of rows it changed.
    fn exec(&mut self, sql: &str, params: &[Value]) -> SqlResult<usize>;

    /// Runs one statement and returns all its rows.
    fn rows(&mut self, sql: &str, params: &[Value]) -> SqlResult<Vec<Row>>;
}

/// What a statement's parameters can be given as: `params![a, b]`, an array of one type
/// (`[id]`), or values from an iterator ([`params_from_iter`]).
pub trait Params {
    fn into_values(self) -> Vec<Value>;
}

impl Params for &[&dyn ToValue] {
    fn into_values(self) -> Vec<Value> {
        values(self)
    }
}

impl<T: ToValue, const N: usize> Params for [T; N] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(|p| p.to_value()).collect()
    }
}

impl<T: ToValue, const N: usize> Params for &[T; N] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(|p| p.to_value()).collect()
    }
}

impl Params for Vec<Value> {
    fn into_values(self) -> Vec<Value> {
        self
    }
}

/// Parameters from an iterator of values.
pub fn params_from_iter<T: ToValue>(items: impl IntoIterator<Item = T>) -> Vec<Value> {
    items.into_iter().map(|p| p.to_value()).collect()
}

/// The convenience calls on any [`Conn`] (generic, so they live outside the object-safe trait).
pub trait ConnExt: Conn {
    fn execute(&mut self, sql: &str, params: impl Params) -> SqlResult<usize> {
        self.exec(sql, &params.into_values())
    }

    /// Every row, each mapped by `f`.
    fn query_map<T>(
        &mut self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&Row) -> SqlResult<T>,
    ) -> SqlResult<Vec<T>> {
        self.rows(sql, &params.into_values())?
            .iter()
            .map(&mut f)
            .collect()
    }

    /// The first row mapped by `f`; [`SqlError::NoRows`] when there is none.
    fn query_row<T>(
        &mut self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row) -> SqlResult<T>,
    ) -> SqlResult<T> {
        let rows = self.rows(sql, &params.into_values())?;
        match rows.first() {
            Some(r) => f(r),
            None => Err(SqlError::NoRows),
        }
    }

    /// A statement to run several times (the backends cache prepared statements by text, so
    /// this is only a convenience).
    fn prepare(&mut self, sql: &str) -> SqlResult<Statement<'_, Self>> {
        Ok(Statement {
            conn: self,
            sql: sql.to_string(),
        })
    }

    /// Same as [`ConnExt::prepare`].
    fn prepare_cached(&mut self, sql: &str) -> SqlResult<Statement<'_, Self>> {
        self.prepare(sql)
    }
}

impl<C: Conn + ?Sized> ConnExt for C {}

/// A statement bound to its connection.
pub struct Statement<'c, C: ?Sized> {
    conn: &'c mut C,
    sql: String,
}

impl<C: Conn + ?Sized> Statement<'_, C> {
    pub fn execute(&mut self, params: impl Params) -> SqlResult<usize> {
        self.conn.exec(&self.sql, &params.into_values())
    }

    pub fn query_map<T>(
        &mut self,
        params: impl Params,
        f: impl FnMut(&Row) -> SqlResult<T>,
    ) -> SqlResult<Vec<T>> {
        self.conn.query_map(&self.sql, params, f)
    }

    pub fn query_row<T>(
        &mut self,
        params: impl Params,
        f: impl FnOnce(&Row) -> SqlResult<T>,
    ) -> SqlResult<T> {
        self.conn.query_row(&self.sql, params, f)
    }
}

/// `.optional()` on a [`ConnExt::query_row`] result: no row is `None`.
pub trait Optional<T> {
    fn optional(self) -> SqlResult<Option<T>>;
}

impl<T> Optional<T> for SqlResult<T> {
    fn optional(self) -> SqlResult<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(SqlError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A statement in the common dialect as PostgreSQL's: `?N` placeholders become `$N`,
/// SQLite's JSON functions PostgreSQL's (`json_extract(x, '$.a.b')` → `((x)::jsonb #>> '{a,b}')`,
/// `json_each(x) [alias]` → `jsonb_array_elements_text((x)::jsonb) AS alias(value)`),
/// `INSERT OR IGNORE` an `ON CONFLICT DO NOTHING`, and `rowid` the `ctid`. Done once per
/// statement text (the backend caches the prepared statement).
pub fn to_postgres(sql: &str) -> String {
    let mut s = postgres_placeholders(sql);
    s = replace_calls(&s, "json_extract(", |args| {
        let (expr, path) = match args.rfind(',') {
            Some(i) => (args[..i].trim(), args[i + 1..].trim()),
            None => (args.trim(), "'$'"),
        };
        let keys = path
            .trim_matches('\'')
            .trim_start_matches('$')
            .trim_start_matches('.')
            .replace('.', ",");
        format!("(({expr})::jsonb #>> '{{{keys}}}')")
    });
    s = replace_json_each(&s);
    let trimmed = s.trim_start();
    if let Some(rest) = trimmed.strip_prefix("INSERT OR IGNORE ") {
        s = match rest.find(" RETURNING ") {
            Some(i) => format!("INSERT {} ON CONFLICT DO NOTHING{}", &rest[..i], &rest[i..]),
            None => format!("INSERT {rest} ON CONFLICT DO NOTHING"),
        };
    }
    replace_word(&s, "rowid", "ctid")
}

/// Replaces every call `name(args)` (balanced parentheses, innermost first) by `f(args)`.
fn replace_calls(sql: &str, name: &str, f: impl Fn(&str) -> String + Copy) -> String {
    let Some(start) = sql.find(name) else {
        return sql.to_string();
    };
    let open = start + name.len();
    let mut depth = 1;
    let mut end = None;
    let mut quote = false;
    for (i, c) in sql[open..].char_indices() {
        match c {
            '\'' => quote = !quote,
            '(' if !quote => depth += 1,
            ')' if !quote => {
                depth -= 1;
                if depth == 0 {
                    end = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let Some(end) = end else {
        return sql.to_string();
    };
    let args = replace_calls(&sql[open..end], name, f);
    format!(
        "{}{}{}",
        &sql[..start],
        f(&args),
        replace_calls(&sql[end + 1..], name, f)
    )
}

fn replace_json_each(sql: &str) -> String {
    const KEYWORDS: [&str; 8] = [
        "WHERE", "ON", "JOIN", "AND", "ORDER", "GROUP", "LIMIT", "AS",
    ];
    let mut out = String::new();
    let mut rest = sql;
    while let Some(start) = rest.find("json_each(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "json_each(".len()..];
        let mut depth = 1;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let arg = &after[..end];
        let tail = &after[(end + 1).min(after.len())..];
        let alias: String = tail
            .strip_prefix(' ')
            .map(|t| {
                t.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .unwrap_or_default();
        if !alias.is_empty() && !KEYWORDS.contains(&alias.to_ascii_uppercase().as_str()) {
            out.push_str(&format!(
                "jsonb_array_elements_text(({arg})::jsonb) AS {alias}(value)"
            ));
            rest = &tail[1 + alias.len()..];
        } else {
            out.push_str(&format!(
                "jsonb_array_elements_text(({arg})::jsonb) AS json_each(value)"
            ));
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// Replaces a whole word outside string literals.
fn replace_word(sql: &str, word: &str, by: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let bytes = sql.as_bytes();
    let mut i = 0;
    let mut quote = false;
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    while i < sql.len() {
        let c = bytes[i];
        if c == b'\'' {
            quote = !quote;
        }
        if !quote
            && sql[i..].starts_with(word)
            && (i == 0 || !is_word(bytes[i - 1]))
            && bytes.get(i + word.len()).is_none_or(|b| !is_word(*b))
        {
            out.push_str(by);
            i += word.len();
            continue;
        }
        let ch = sql[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Rewrites `?N` placeholders to PostgreSQL's `$N`, leaving string literals and quoted
/// identifiers alone.
pub fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    out.push(c);
                }
                '?' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => out.push('$'),
                _ => out.push(c),
            },
        }
    }
    out
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        })
    }
}

/// The SQLite connection: a transaction (or the connection itself, for reads) of rusqlite.
pub struct SqliteConn<'a> {
    conn: &'a rusqlite::Connection,
}

impl<'a> SqliteConn<'a> {
    pub fn new(conn: &'a rusqlite::Connection) -> SqliteConn<'a> {
        SqliteConn { conn }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(n) => ValueRef::Integer(*n),
            Value::Real(x) => ValueRef::Real(*x),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Int(n),
        ValueRef::Real(x) => Value::Real(x),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

impl Conn for SqliteConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn exec(&mut self, sql: &str, params: &[Value]) -> SqlResult<usize> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))?)
    }

    fn rows(&mut self, sql: &str, params: &[Value]) -> SqlResult<Vec<Row>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let n = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                values.push(sqlite_value(r.get_ref(i)?));
            }
            out.push(Row::new(values));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_quotes() {
        assert_eq!(
            postgres_placeholders("SELECT ?1, '?2', \"a?3\" FROM t WHERE x = ?10 AND y = ?"),
            "SELECT $1, '?2', \"a?3\" FROM t WHERE x = $10 AND y = ?"
        );
    }

    #[test]
    fn statements_translate_to_postgres() {
        assert_eq!(
            to_postgres(
                "INSERT OR IGNORE INTO u (a, b) SELECT c.id, a.value FROM c JOIN json_each(?2) a \
                 ON 1 = 1 WHERE json_extract(json_extract(c.x, '$.m.n'), '$.v') = ?1"
            ),
            "INSERT INTO u (a, b) SELECT c.id, a.value FROM c JOIN \
             jsonb_array_elements_text(($2)::jsonb) AS a(value) ON 1 = 1 WHERE \
             ((((c.x)::jsonb #>> '{m,n}'))::jsonb #>> '{v}') = $1 ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            to_postgres("DELETE FROM t WHERE rowid IN (SELECT rowid FROM t WHERE id IN (SELECT value FROM json_each(?1)) LIMIT 5)"),
            "DELETE FROM t WHERE ctid IN (SELECT ctid FROM t WHERE id IN (SELECT value FROM \
             jsonb_array_elements_text(($1)::jsonb) AS json_each(value)) LIMIT 5)"
        );
        assert_eq!(
            to_postgres("INSERT OR IGNORE INTO t (a) VALUES (?1) RETURNING a"),
            "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING RETURNING a"
        );
    }

    #[test]
    fn values_convert_with_range_checks() {
        let row = Row::new(vec![
            Value::Int(-1),
            Value::Int(7),
            Value::Null,
            Value::Text("x".into()),
        ]);
        assert!(row.get::<u32>(0).is_err());
        assert_eq!(row.get::<u32>(1).unwrap(), 7);
        assert_eq!(row.get::<Option<String>>(2).unwrap(), None);
        assert_eq!(row.get::<String>(3).unwrap(), "x");
        assert!(matches!(
            row.get::<i64>(3),
            Err(SqlError::Type {
                index: 3,
                expected: "integer",
                found: "text"
            })
        ));
    }

    #[test]
    fn sqlite_conn_round_trips_values() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let mut c = SqliteConn::new(&db);
        c.execute("CREATE TABLE t (a INTEGER, b TEXT, c REAL)", params![])
            .unwrap();
        let n = c
            .execute(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                params![5u32, "five", 5.5f64],
            )
            .unwrap();
        assert_eq!(n, 1);
        let (a, b, x): (u32, String, f64) = c
            .query_row("SELECT a, b, c FROM t WHERE a = ?1", params![5i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((a, b.as_str(), x), (5, "five", 5.5));
        let none = c
            .query_row("SELECT a FROM t WHERE a = 6", params![], |r| {
                r.get::<i64>(0)
            })
            .optional()
            .unwrap();
        assert_eq!(none, None);
    }
}
