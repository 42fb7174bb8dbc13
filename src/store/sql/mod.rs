//! The SQL store: one implementation of [`Store`] over two engines, SQLite
//! (embedded, one file, WAL) and PostgreSQL (shared by replicas), through
//! sqlx's `Any` driver so the queries and the row mapping exist once.
//!
//! The SQL is written once, portable to both: `?` placeholders (numbered for
//! PostgreSQL by [`Engine::sql`]), `ON CONFLICT` upserts, `CASE` instead of the
//! two-argument `MIN`/`MAX`, and `rowid` for insertion order (SQLite's
//! implicit one; an identity column of that name in PostgreSQL's schema).
//! The few statements that differ come from [`Engine`].
//!
//! This file holds the engine, the pool, migrations and what every aggregate
//! shares; each aggregate's SQL lives in a file of its own, implementing its
//! part of [`Store`]: `keys` (keys and secret versions), `owners` (projects,
//! users, service accounts), `usage` (records, rollups, client networks),
//! `denials`, `audit`, `alerts` (with webhook deliveries) and `jobs` (leases).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

use super::migrate::{self, Migration};
use super::*;
use crate::policy::{Budget, ModelLimits, RateLimits};

mod alerts;
mod audit;
mod denials;
mod jobs;
mod keys;
mod owners;
mod sessions;
mod usage;

/// Which database a [`SqlStore`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// How long opening a database may wait for a connection.
const CONNECT_SECONDS: u64 = 5;

/// The directory a `sqlite:` URL's file would go in, when it does not exist.
fn missing_directory(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    let dir = std::path::Path::new(path).parent()?;
    (!dir.as_os_str().is_empty() && !dir.exists()).then(|| dir.to_owned())
}

impl Engine {
    /// The engine a database URL names, if keygate supports it.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    pub fn migrations(self) -> &'static [Migration] {
        match self {
            Self::Sqlite => migrate::SQLITE,
            Self::Postgres => migrate::POSTGRES,
        }
    }

    /// A project's rate limits as one JSON array, `[{"model":..,"limits":{..}}]`.
    fn project_select(self) -> String {
        let aggregate = match self {
            Self::Sqlite => "json_group_array(json_object('model', r.model, 'limits', json(r.limits)))",
            Self::Postgres => "json_agg(json_build_object('model', r.model, 'limits', r.limits::json))::text",
        };
        format!(
            "SELECT id, name, created_at, archived_at, models, allowed_ips, max_key_age_seconds, \
             budget_nanos, budget_alert_percent, \
             (SELECT {aggregate} FROM project_rate_limits r WHERE r.project_id = projects.id) AS rate_limits FROM projects"
        )
    }

    /// The text of field `field` of the JSON object in `column`.
    fn json_field(self, column: &str, field: &str) -> String {
        match self {
            Self::Sqlite => format!("json_extract({column}, '$.{field}')"),
            Self::Postgres => format!("({column}::json ->> '{field}')"),
        }
    }

    /// `sql` as this engine takes it: PostgreSQL numbers its placeholders
    /// (`$1`); SQLite keeps `?`, since it looks named parameters up by a
    /// linear scan, which made many-row INSERTs quadratic.
    pub(super) fn sql<'a>(self, sql: impl Into<Cow<'a, str>>) -> Cow<'a, str> {
        let sql = sql.into();
        match self {
            Self::Sqlite => sql,
            Self::Postgres => Cow::Owned(numbered(&sql)),
        }
    }

    /// Whether `table` exists.
    fn table_exists(self) -> &'static str {
        match self {
            Self::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
            Self::Postgres => {
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?"
            }
        }
    }

    /// Every table of keygate's schema but the migration ledger.
    pub(super) fn list_tables(self) -> &'static str {
        match self {
            Self::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != 'keygate_schema'"
            }
            Self::Postgres => {
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() \
                 AND table_type = 'BASE TABLE' AND table_name != 'keygate_schema'"
            }
        }
    }

    /// How a transaction that writes begins. SQLite's default (deferred)
    /// transaction reads under a shared lock and, when it then writes after
    /// another connection has written, fails at once with SQLITE_BUSY
    /// whatever the busy timeout; `BEGIN IMMEDIATE` takes the write lock up
    /// front, so concurrent writers wait their turn instead.
    fn begin_write(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Postgres => "BEGIN",
        }
    }

    /// Serialises transactions that read then write shared setup rows
    /// (migrations, bootstrap) across replicas starting together. SQLite's
    /// single writer needs nothing more.
    pub(super) async fn lock_setup(self, tx: &mut Transaction<'_, Any>) -> StoreResult<()> {
        if self == Self::Postgres {
            // An arbitrary constant: keygate's setup lock ("kg" in ASCII).
            sqlx::query("SELECT pg_advisory_xact_lock(27495)").execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// Rewrites `?` and `?N` placeholders as PostgreSQL's `$N`: a bare `?` takes the number after the largest so far,
/// as SQLite numbers them. Quoted text is left alone.
pub(super) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    let (mut highest, mut quoted) = (0u32, false);
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                let mut digits = String::new();
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    digits.push(d);
                }
                let n = match digits.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => highest + 1,
                };
                highest = highest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

pub struct SqlStore {
    pub(super) pool: AnyPool,
    pub(super) engine: Engine,
    project_select: String,
}

/// Rows per multi-row INSERT: 50 rows of 19 columns stay far under both
/// engines' parameter limits (SQLite 32766, PostgreSQL 65535).
const ROWS_PER_STATEMENT: usize = 50;

/// `(?, ?), (?, ?)`: `rows` groups of `columns` placeholders.
pub(super) fn values_list(columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

impl SqlStore {
    /// Connects to the database `url` names (`sqlite://PATH`, created if
    /// missing, or `postgres://...`); [`SqlStore::migrate`] brings its schema
    /// up to date.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let engine = Engine::of_url(url).ok_or_else(|| StoreError::UnsupportedUrl(url.to_owned()))?;
        sqlx::any::install_default_drivers();
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(CONNECT_SECONDS));
        let pool = match engine {
            Engine::Sqlite => {
                if let Some(dir) = missing_directory(url) {
                    return Err(StoreError::NoDirectory(dir));
                }
                // The Any driver takes SQLite's options from the URL alone.
                let url = if url.contains("mode=") {
                    url.to_owned()
                } else {
                    format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
                };
                // Each connection keeps its own page cache (SQLite's default
                // is 2 MB): at 512 KiB a connection still holds the pages a
                // write walks (the B-trees' right edges), and an idle gateway
                // with four connections open holds 6 MB less.
                options
                    .max_connections(4)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA cache_size = -512",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            Engine::Postgres => {
                // The pool retries a refused connection until its acquire
                // timeout, then reports only `pool timed out`; one direct
                // attempt first brings the real cause (connection refused,
                // bad password, no such database) back at once.
                let attempt = <sqlx::AnyConnection as sqlx::Connection>::connect(url);
                match tokio::time::timeout(Duration::from_secs(CONNECT_SECONDS), attempt).await {
                    Err(_) => return Err(StoreError::NoAnswer(CONNECT_SECONDS)),
                    Ok(connection) => {
                        let _ = sqlx::Connection::close(connection?).await;
                    }
                }
                options.max_connections(16).connect(url).await?
            }
        };
        Ok(Self { pool, engine, project_select: engine.project_select() })
    }

    /// A transaction that writes (see [`Engine::begin_write`]).
    async fn begin_write(&self) -> StoreResult<Transaction<'static, Any>> {
        Ok(self.pool.begin_with(self.engine.begin_write()).await?)
    }

    /// Applies pending migrations, each in its own transaction; returns
    /// (version, name) of each one applied.
    pub async fn migrate(&self) -> StoreResult<Vec<(i64, &'static str)>> {
        let migrations = self.engine.migrations();
        let known = migrate::latest(migrations);
        let mut applied = Vec::new();
        loop {
            let mut tx = self.begin_write().await?;
            self.engine.lock_setup(&mut tx).await?;
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS keygate_schema (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
            )
            .execute(&mut *tx)
            .await?;
            let current: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM keygate_schema").fetch_one(&mut *tx).await?;
            if current > known {
                return Err(StoreError::SchemaTooNew { found: current, known });
            }
            let Some(m) = migrations.iter().find(|m| m.version > current) else {
                tx.commit().await?;
                return Ok(applied);
            };
            sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
            sqlx::query(&self.engine.sql("INSERT INTO keygate_schema (version, name, applied_at) VALUES (?, ?, ?)"))
                .bind(m.version)
                .bind(m.name)
                .bind(crate::clock::unix_now())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version = m.version, name = m.name, "applied migration");
            applied.push((m.version, m.name));
        }
    }

    /// The schema version recorded in the database (0 for a new one).
    pub async fn schema_version(&self) -> StoreResult<i64> {
        let exists: i64 = sqlx::query_scalar(&self.engine.sql(self.engine.table_exists()))
            .bind("keygate_schema")
            .fetch_one(&self.pool)
            .await?;
        if exists == 0 {
            return Ok(0);
        }
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM keygate_schema").fetch_one(&self.pool).await?)
    }

    /// Writes a consistent copy of the live database to `path` (`VACUUM
    /// INTO`: readers and writers carry on meanwhile).
    pub async fn backup_to(&self, path: &std::path::Path) -> StoreResult<()> {
        if self.engine != Engine::Sqlite {
            return Err(StoreError::Unsupported(
                "`keygate backup` copies a SQLite database; back PostgreSQL up with pg_dump",
            ));
        }
        let path = path.to_str().ok_or_else(|| StoreError::Corrupt("the backup path is not UTF-8".into()))?;
        sqlx::query(&self.engine.sql("VACUUM INTO ?")).bind(path).execute(&self.pool).await?;
        Ok(())
    }

    /// One page of `select` rows matching `filter` (its `?`s take `binds`), in
    /// insertion order after the `after` cursor.
    async fn paged<T>(
        &self,
        select: &str,
        table: &str,
        filter: &str,
        binds: &[&str],
        q: &PageQuery,
        map: fn(&AnyRow) -> StoreResult<T>,
    ) -> StoreResult<Page<T>> {
        let sql = format!(
            "{select} WHERE {filter} AND (? IS NULL OR rowid > (SELECT rowid FROM {table} WHERE id = ?)) ORDER BY rowid LIMIT ?"
        );
        let sql = self.engine.sql(sql);
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = query.bind(*b);
        }
        let rows = query.bind(&q.after).bind(&q.after).bind(i64::from(q.limit) + 1).fetch_all(&self.pool).await?;
        Ok(page(rows.iter().map(map).collect::<StoreResult<Vec<_>>>()?, q.limit))
    }

    async fn one<T>(&self, sql: &str, id: &str, map: fn(&AnyRow) -> StoreResult<T>) -> StoreResult<Option<T>> {
        let sql = self.engine.sql(sql);
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(map).transpose()
    }

    async fn setting(&self, tx: &mut Transaction<'_, Any>, name: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(&self.engine.sql("SELECT value FROM settings WHERE name = ?"))
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?)
    }

    async fn set_setting(&self, tx: &mut Transaction<'_, Any>, name: &str, value: &str) -> StoreResult<()> {
        sqlx::query(&self.engine.sql("INSERT INTO settings (name, value) VALUES (?, ?)"))
            .bind(name)
            .bind(value)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

fn budget_from_row(row: &AnyRow) -> StoreResult<Option<Budget>> {
    let nanos: Option<i64> = row.try_get("budget_nanos")?;
    let percent: Option<i64> = row.try_get("budget_alert_percent")?;
    Ok(nanos.map(|monthly_nanos| Budget {
        monthly_nanos,
        alert_percent: percent.and_then(|p| u8::try_from(p).ok()).unwrap_or(80),
    }))
}

fn limits_json(limits: &RateLimits) -> Option<String> {
    (!limits.is_empty()).then(|| serde_json::to_string(limits).unwrap_or_default())
}

fn json_list(list: Option<&Vec<String>>) -> Option<String> {
    list.map(|l| serde_json::Value::from(l.clone()).to_string())
}

fn ips_json(ips: &[IpNet]) -> Option<String> {
    (!ips.is_empty())
        .then(|| serde_json::Value::from(ips.iter().map(ToString::to_string).collect::<Vec<_>>()).to_string())
}

fn parse_list(text: Option<String>, column: &str) -> StoreResult<Option<Vec<String>>> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("`{column}` is not a JSON list: {e}")))
    })
    .transpose()
}

fn parse_ips(text: Option<String>) -> StoreResult<Vec<IpNet>> {
    parse_list(text, "allowed_ips")?
        .unwrap_or_default()
        .iter()
        .map(|s| s.parse().map_err(|_| StoreError::Corrupt(format!("bad CIDR `{s}` in allowed_ips"))))
        .collect()
}

fn access_from_row(row: &AnyRow) -> StoreResult<Access> {
    Ok(Access {
        models: parse_list(row.try_get("models")?, "models")?,
        allowed_ips: parse_ips(row.try_get("allowed_ips")?)?,
    })
}

fn page<T>(mut items: Vec<T>, limit: u32) -> Page<T> {
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Page { items, has_more }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query(&self.engine.sql("SELECT 1")).execute(&self.pool).await?;
        Ok(())
    }

    async fn bootstrap(&self, now: Timestamp) -> StoreResult<Bootstrap> {
        let mut tx = self.begin_write().await?;
        self.engine.lock_setup(&mut tx).await?;
        let (project_id, first_start) = match self.setting(&mut tx, "default_project").await? {
            Some(id) => (id, false),
            None => {
                let id = crate::ids::project_id();
                sqlx::query(
                    &self.engine.sql("INSERT INTO projects (id, name, created_at) VALUES (?, 'Default project', ?)"),
                )
                .bind(&id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                self.insert_service_account(&mut tx, Some(&id), "default", "member", true, now).await?;
                self.insert_service_account(&mut tx, None, "keygate admin", "owner", true, now).await?;
                self.set_setting(&mut tx, "default_project", &id).await?;
                (id, true)
            }
        };
        let organization_id = match self.setting(&mut tx, "organization_id").await? {
            Some(id) => id,
            None => {
                let id = crate::ids::organization_id();
                self.set_setting(&mut tx, "organization_id", &id).await?;
                id
            }
        };
        tx.commit().await?;
        let default_project = self
            .get_project(&project_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("the default project is missing".into()))?;
        Ok(Bootstrap { organization_id, default_project, first_start })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_only_and_quoted_text_is_left_alone() {
        let sql = "SELECT '?', x FROM t WHERE a = ? AND b = ?3 AND c = ? AND d = 'it''s ?'";
        assert_eq!(numbered(sql), "SELECT '?', x FROM t WHERE a = $1 AND b = $3 AND c = $4 AND d = 'it''s ?'");
        assert_eq!(
            numbered("UPDATE t SET e = ?1 WHERE e > ?1 AND k = ?2"),
            "UPDATE t SET e = $1 WHERE e > $1 AND k = $2"
        );
        assert_eq!(Engine::Sqlite.sql(sql), sql, "SQLite keeps anonymous placeholders");
        assert_eq!(Engine::Postgres.sql("a = ?"), "a = $1");
    }

    #[test]
    fn database_urls_name_their_engine() {
        assert_eq!(Engine::of_url("sqlite://k.db"), Some(Engine::Sqlite));
        assert_eq!(Engine::of_url("sqlite:k.db?mode=ro"), Some(Engine::Sqlite));
        assert_eq!(Engine::of_url("postgres://u@h/db"), Some(Engine::Postgres));
        assert_eq!(Engine::of_url("postgresql://u:p@h:5432/db"), Some(Engine::Postgres));
        for other in ["mysql://h/db", "", "keygate.db", "POSTGRES://h/db"] {
            assert_eq!(Engine::of_url(other), None, "{other}");
        }
    }

    #[test]
    fn a_sqlite_file_in_a_missing_directory_is_named_before_sqlite_tries() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nodir");
        let url = format!("sqlite://{}/keygate.db", missing.display());
        assert_eq!(missing_directory(&url), Some(missing.clone()));
        assert_eq!(missing_directory(&format!("sqlite:{}/k.db?mode=rwc", missing.display())), Some(missing));
        let here = format!("sqlite://{}/keygate.db", dir.path().display());
        for fine in [here.as_str(), "sqlite://keygate.db", "sqlite::memory:", "sqlite://x/k.db?mode=memory"] {
            assert_eq!(missing_directory(fine), None, "{fine}");
        }
    }

    #[test]
    fn many_row_values_lists() {
        assert_eq!(values_list(2, 3), "(?, ?), (?, ?), (?, ?)");
        assert_eq!(values_list(1, 1), "(?)");
    }
}
