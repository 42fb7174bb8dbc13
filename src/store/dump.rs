//! A whole deployment as JSON Lines, for `keygate export` / `keygate import`.
//!
//! Line 1 is a header, `{"format":"keygate-export","version":1,"schema":N,
//! "exported_at":T,"rows":R}`; every other line is one row,
//! `{"table":"api_keys","row":{"id":"...",...}}`, tables in dependency order
//! and rows in insertion order (list cursors follow it). Values keep their
//! SQL type: integers, reals, text and null as JSON; blobs (key digests,
//! never secrets) as `{"hex":"..."}`. A file only imports into a database
//! with the same schema version.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::{AnyRow, AnyTypeInfoKind};
use sqlx::{Any, Column, Row, ValueRef};

use super::migrate;
use super::sql::values_list;
use super::{Engine, SqlStore, StoreError, StoreResult};

pub const FORMAT: &str = "keygate-export";
pub const VERSION: u32 = 1;

/// Every table, parents before children.
const TABLES: &[&str] = &[
    "settings",
    "projects",
    "project_rate_limits",
    "users",
    "project_users",
    "service_accounts",
    "api_keys",
    "api_key_secrets",
    "audit_log",
    "denials",
    "usage_records",
    "usage_rollups",
    "alerts",
    "key_networks",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub schema: i64,
    pub exported_at: i64,
    pub rows: u64,
}

/// One row of an export.
#[derive(Serialize, Deserialize)]
pub struct Line {
    pub table: String,
    pub row: BTreeMap<String, Value>,
}

/// Reads an export file: [`Reader::open`] checks the header, then each item
/// is a row with its line number.
pub struct Reader<'a> {
    pub header: Header,
    lines: std::io::Lines<&'a mut dyn BufRead>,
    number: u64,
}

impl<'a> Reader<'a> {
    pub fn open(input: &'a mut dyn BufRead) -> Result<Self, DumpError> {
        let format_error = |message: String| DumpError::Format { line: 1, message };
        let mut lines = input.lines();
        let first = lines.next().transpose()?.ok_or_else(|| format_error("the file is empty".into()))?;
        let header: Header =
            serde_json::from_str(&first).map_err(|e| format_error(format!("not a keygate export header ({e})")))?;
        if header.format != FORMAT || header.version != VERSION {
            return Err(format_error(format!(
                "format `{}` version {} is not {FORMAT} version {VERSION}",
                header.format, header.version
            )));
        }
        Ok(Self { header, lines, number: 1 })
    }
}

impl Iterator for Reader<'_> {
    type Item = Result<(u64, Line), DumpError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = match self.lines.next()? {
                Ok(text) => text,
                Err(error) => return Some(Err(error.into())),
            };
            self.number += 1;
            if text.trim().is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str(&text)
                    .map(|line| (self.number, line))
                    .map_err(|e| DumpError::Format { line: self.number, message: format!("not a row ({e})") }),
            );
        }
    }
}

/// Rows done and rows in all, after each row (for a progress bar).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("line {line}: {message}")]
    Format { line: u64, message: String },
    #[error("the file is schema version {file}, this keygate's database is version {database}; export and import with the same keygate version")]
    SchemaMismatch { file: i64, database: i64 },
    #[error("the target database already holds data (table `{0}` is not empty); import only into a new database")]
    NotEmpty(&'static str),
    #[error(
        "table `{0}` is in the database but not in keygate's export list; this is a keygate bug, please report it"
    )]
    UnknownTable(String),
    #[error("the file has {got} rows but its header announces {expected}; it was cut short or edited")]
    RowCount { got: u64, expected: u64 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for DumpError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

/// The column that orders a table's rows by insertion, in both engines.
fn insertion_order(table: &str) -> &'static str {
    if table == "audit_log" {
        "seq"
    } else {
        "rowid"
    }
}

fn value_of(row: &AnyRow, index: usize) -> StoreResult<Value> {
    let raw = row.try_get_raw(index)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let kind = raw.type_info().kind();
    Ok(match kind {
        _ if kind.is_integer() => Value::from(row.try_get::<i64, _>(index)?),
        AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => Value::from(row.try_get::<f64, _>(index)?),
        AnyTypeInfoKind::Blob => serde_json::json!({"hex": hex::encode(row.try_get::<Vec<u8>, _>(index)?)}),
        _ => Value::from(row.try_get::<String, _>(index)?),
    })
}

/// Tables whose rows only matter to the running replicas (job leases,
/// dashboard sessions and sign-ins in progress): left out of exports on
/// purpose; people sign in again on the new database.
const TRANSIENT: &[&str] = &["job_leases", "dashboard_sessions", "sso_logins"];

/// Refuses to run when the schema has a table [`TABLES`] does not name: an
/// export would silently leave it out.
async fn check_tables(engine: Engine, tx: &mut sqlx::Transaction<'_, Any>) -> Result<(), DumpError> {
    let names: Vec<String> = sqlx::query_scalar(engine.list_tables()).fetch_all(&mut **tx).await?;
    match names.into_iter().find(|name| !TABLES.contains(&name.as_str()) && !TRANSIENT.contains(&name.as_str())) {
        Some(name) => Err(DumpError::UnknownTable(name)),
        None => Ok(()),
    }
}

impl SqlStore {
    /// Writes every row to `out`.
    pub async fn export(
        &self,
        out: &mut dyn Write,
        exported_at: i64,
        progress: Progress<'_>,
    ) -> Result<u64, DumpError> {
        // One read transaction: the file is one consistent moment of a live database.
        let mut tx = self.pool.begin().await?;
        check_tables(self.engine, &mut tx).await?;
        let mut total = 0u64;
        for table in TABLES {
            let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&mut *tx).await?;
            total += u64::try_from(count).unwrap_or(0);
        }
        let schema: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM keygate_schema").fetch_one(&mut *tx).await?;
        let header = Header { format: FORMAT.into(), version: VERSION, schema, exported_at, rows: total };
        serde_json::to_writer(&mut *out, &header).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        let mut done = 0u64;
        for table in TABLES {
            let query = format!("SELECT * FROM {table} ORDER BY {}", insertion_order(table));
            let mut rows = sqlx::query(&query).fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                let mut fields = BTreeMap::new();
                // PostgreSQL's explicit `rowid` is SQLite's implicit one: the
                // file keeps rows in that order instead of naming it.
                for (index, column) in row.columns().iter().enumerate().filter(|(_, c)| c.name() != "rowid") {
                    fields.insert(column.name().to_owned(), value_of(&row, index)?);
                }
                serde_json::to_writer(&mut *out, &Line { table: (*table).to_owned(), row: fields })
                    .map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
                done += 1;
                progress(done, total);
            }
        }
        out.flush()?;
        Ok(done)
    }

    /// Loads an export into this (new, migrated, empty) database, all or nothing.
    pub async fn import(&self, input: &mut dyn BufRead, progress: Progress<'_>) -> Result<u64, DumpError> {
        let format_error = |line: u64, message: String| DumpError::Format { line, message };
        let reader = Reader::open(input)?;
        let header = reader.header.clone();
        let database = migrate::latest(self.engine.migrations());
        if header.schema != database {
            return Err(DumpError::SchemaMismatch { file: header.schema, database });
        }
        let mut tx = self.pool.begin().await?;
        check_tables(self.engine, &mut tx).await?;
        for table in TABLES {
            let any: Option<i64> =
                sqlx::query_scalar(&format!("SELECT 1 FROM {table} LIMIT 1")).fetch_optional(&mut *tx).await?;
            if any.is_some() {
                return Err(DumpError::NotEmpty(table));
            }
        }
        let mut done = 0u64;
        for read in reader {
            let (number, line) = read?;
            let Some(table) = TABLES.iter().find(|t| **t == line.table) else {
                return Err(format_error(number, format!("unknown table `{}`", line.table)));
            };
            if line.row.is_empty()
                || !line.row.keys().all(|c| {
                    c.starts_with(|ch: char| ch.is_ascii_lowercase())
                        && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                })
            {
                // Column names go into the statement: only plain identifiers pass.
                return Err(format_error(number, "a row needs columns named like `last_used_at`".into()));
            }
            // A null is left to the column's default (NULL): PostgreSQL would
            // refuse a NULL bound as text into an integer column.
            let values: Vec<(&str, &Value)> =
                line.row.iter().filter(|(_, v)| !v.is_null()).map(|(c, v)| (c.as_str(), v)).collect();
            let columns: Vec<&str> = values.iter().map(|(c, _)| *c).collect();
            let sql = self.engine.sql(format!(
                "INSERT INTO {table} ({}) VALUES {}",
                columns.join(", "),
                values_list(columns.len(), 1)
            ));
            let mut query = sqlx::query(&sql);
            for (_, value) in values {
                query = match value {
                    Value::Null => query,
                    Value::Bool(b) => query.bind(i64::from(*b)),
                    Value::Number(n) => match n.as_i64() {
                        Some(i) => query.bind(i),
                        None => query.bind(n.as_f64().unwrap_or(0.0)),
                    },
                    Value::String(s) => query.bind(s.clone()),
                    Value::Object(o) => match o.get("hex").and_then(Value::as_str).map(hex::decode) {
                        Some(Ok(bytes)) if o.len() == 1 => query.bind(bytes),
                        _ => return Err(format_error(number, "an object value must be {\"hex\": \"...\"}".into())),
                    },
                    Value::Array(_) => return Err(format_error(number, "arrays are stored as JSON text".into())),
                };
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(|e| format_error(number, format!("rejected by the database: {e}")))?;
            done += 1;
            progress(done, header.rows);
        }
        if done != header.rows {
            return Err(DumpError::RowCount { got: done, expected: header.rows });
        }
        if self.engine == Engine::Postgres {
            // The audit log's numbers came from the file; new events follow them.
            sqlx::query(
                "SELECT setval(pg_get_serial_sequence('audit_log', 'seq'), COALESCE(MAX(seq), 0) + 1, false) FROM audit_log",
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }
}
