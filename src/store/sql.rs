//! The SQL store: one implementation of [`Store`] over two engines, SQLite
//! (embedded, one file, WAL) and PostgreSQL (shared by replicas), through
//! sqlx's `Any` driver so the queries and the row mapping exist once.
//!
//! The SQL is written once, portable to both: `?` placeholders (numbered for
//! PostgreSQL by [`Engine::sql`]), `ON CONFLICT` upserts, `CASE` instead of the
//! two-argument `MIN`/`MAX`, and `rowid` for insertion order (SQLite's
//! implicit one; an identity column of that name in PostgreSQL's schema).
//! The few statements that differ come from [`Engine`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

use super::migrate::{self, Migration};
use super::*;
use crate::policy::{Budget, ModelLimits, RateLimits};

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

const KEY_SELECT: &str = "SELECT k.id, k.kind, k.name, k.project_id, k.owner_type, k.owner_id, k.prefix, k.state, \
     k.permissions, k.scopes, k.models, k.allowed_ips, k.rate_limits, k.budget_nanos, k.budget_alert_percent, k.created_at, k.expires_at, k.last_used_at, k.last_used_ip, k.last_used_user_agent, \
     k.revoked_at, k.revoked_by, k.revoke_reason, \
     sa.id AS sa_id, sa.project_id AS sa_project_id, sa.name AS sa_name, sa.role AS sa_role, sa.created_at AS sa_created_at, \
     u.id AS u_id, u.name AS u_name, u.email AS u_email, u.role AS u_role, u.added_at AS u_added_at \
     FROM api_keys k \
     LEFT JOIN service_accounts sa ON k.owner_type = 'service_account' AND sa.id = k.owner_id \
     LEFT JOIN users u ON k.owner_type = 'user' AND u.id = k.owner_id";
/// Rows per multi-row INSERT: 50 rows of 19 columns stay far under both
/// engines' parameter limits (SQLite 32766, PostgreSQL 65535).
const ROWS_PER_STATEMENT: usize = 50;

/// `(?, ?), (?, ?)`: `rows` groups of `columns` placeholders.
pub(super) fn values_list(columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

const SA_SELECT: &str = "SELECT id, project_id, name, role, created_at FROM service_accounts";
const USER_SELECT: &str = "SELECT id, name, email, role, added_at FROM users";

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

    /// Soft-deletes a key owner (a row of `table`) and revokes its keys in one
    /// transaction; the revoked keys, or `None` when there was no such owner.
    async fn delete_owner(
        &self,
        table: &'static str,
        owner_type: &'static str,
        id: &str,
        revocation: &Revocation,
    ) -> StoreResult<Option<Vec<KeyRecord>>> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query(
            &self.engine.sql(format!("UPDATE {table} SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL")),
        )
        .bind(revocation.at)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Ok(None);
        }
        let filter = format!("owner_type = '{owner_type}' AND owner_id = ?");
        let ids = self.revoke_where(&mut tx, &filter, id, revocation).await?;
        tx.commit().await?;
        Ok(Some(self.keys_by_ids(&ids).await?))
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

    async fn secrets_of(&self, ids: &[String]) -> StoreResult<HashMap<String, Vec<SecretVersion>>> {
        let mut out: HashMap<String, Vec<SecretVersion>> = HashMap::new();
        // Chunked IN lists keep the statement under SQLite's variable limit.
        for chunk in ids.chunks(500) {
            let placeholders = values_list(chunk.len(), 1);
            let sql = format!(
                "SELECT key_id, digest, algorithm, last4, created_at, expires_at FROM api_key_secrets \
                 WHERE key_id IN {placeholders} ORDER BY created_at DESC, rowid DESC"
            );
            let sql = self.engine.sql(sql);
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&self.pool).await? {
                let key_id: String = row.try_get("key_id")?;
                let digest: Vec<u8> = row.try_get("digest")?;
                let algorithm: String = row.try_get("algorithm")?;
                out.entry(key_id).or_default().push(SecretVersion {
                    digest: KeyDigest::from_slice(&digest)
                        .ok_or_else(|| StoreError::Corrupt("secret digest is not 32 bytes".into()))?,
                    legacy: algorithm == "legacy",
                    last4: row.try_get("last4")?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                });
            }
        }
        Ok(out)
    }

    async fn keys_where(&self, clause: &str, binds: &[&str], limit: Option<u32>) -> StoreResult<Vec<KeyRecord>> {
        let limit_sql = limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default();
        let sql = format!("{KEY_SELECT} WHERE {clause} ORDER BY k.rowid{limit_sql}");
        let sql = self.engine.sql(sql);
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = query.bind(*b);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let ids: Vec<String> = rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
        let mut secrets = self.secrets_of(&ids).await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                key_from_row(row, secrets.remove(&id).unwrap_or_default())
            })
            .collect()
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

    /// Revokes every live key matching `clause` inside `tx`; returns their ids.
    async fn revoke_where(
        &self,
        tx: &mut Transaction<'_, Any>,
        clause: &str,
        bind: &str,
        revocation: &Revocation,
    ) -> StoreResult<Vec<String>> {
        let ids: Vec<String> = sqlx::query_scalar(
            &self.engine.sql(format!("SELECT id FROM api_keys WHERE {clause} AND state != 'revoked'")),
        )
        .bind(bind)
        .fetch_all(&mut **tx)
        .await?;
        for id in &ids {
            sqlx::query(&self.engine.sql(
                "UPDATE api_keys SET state = 'revoked', revoked_at = ?, revoked_by = ?, revoke_reason = ? WHERE id = ?",
            ))
            .bind(revocation.at)
            .bind(&revocation.by)
            .bind(&revocation.reason)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
        Ok(ids)
    }

    async fn keys_by_ids(&self, ids: &[String]) -> StoreResult<Vec<KeyRecord>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.iter().filter_map(|id| PublicId::parse(id)) {
            out.extend(self.get_key(&id).await?);
        }
        Ok(out)
    }

    async fn insert_service_account(
        &self,
        tx: &mut Transaction<'_, Any>,
        project_id: Option<&str>,
        name: &str,
        role: &str,
        is_default: bool,
        now: Timestamp,
    ) -> StoreResult<ServiceAccount> {
        let id = crate::ids::service_account_id();
        sqlx::query(&self.engine.sql(
        "INSERT INTO service_accounts (id, project_id, name, role, is_default, created_at) VALUES (?, ?, ?, ?, ?, ?)",
    ))
    .bind(&id)
    .bind(project_id)
    .bind(name)
    .bind(role)
    .bind(i64::from(is_default))
    .bind(now)
    .execute(&mut **tx)
    .await?;
        Ok(ServiceAccount {
            id,
            project_id: project_id.map(str::to_owned),
            name: name.to_owned(),
            role: role.to_owned(),
            created_at: now,
        })
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

fn key_from_row(row: &AnyRow, secrets: Vec<SecretVersion>) -> StoreResult<KeyRecord> {
    let id: String = row.try_get("id")?;
    let kind = match row.try_get::<String, _>("kind")?.as_str() {
        "project" => KeyKind::Project,
        "admin" => KeyKind::Admin,
        other => return Err(StoreError::Corrupt(format!("unknown key kind `{other}`"))),
    };
    let state = match row.try_get::<String, _>("state")?.as_str() {
        "active" => KeyState::Active,
        "suspended" => KeyState::Suspended,
        "revoked" => KeyState::Revoked,
        other => return Err(StoreError::Corrupt(format!("unknown key state `{other}`"))),
    };
    let owner = if let Some(sa_id) = row.try_get::<Option<String>, _>("sa_id")? {
        Some(Owner::ServiceAccount(ServiceAccount {
            id: sa_id,
            project_id: row.try_get("sa_project_id")?,
            name: row.try_get("sa_name")?,
            role: row.try_get("sa_role")?,
            created_at: row.try_get("sa_created_at")?,
        }))
    } else if let Some(u_id) = row.try_get::<Option<String>, _>("u_id")? {
        Some(Owner::User(User {
            id: u_id,
            name: row.try_get("u_name")?,
            email: row.try_get("u_email")?,
            role: row.try_get("u_role")?,
            added_at: row.try_get("u_added_at")?,
        }))
    } else {
        None
    };
    let revocation = match row.try_get::<Option<i64>, _>("revoked_at")? {
        Some(at) => Some(Revocation { at, by: row.try_get("revoked_by")?, reason: row.try_get("revoke_reason")? }),
        None => None,
    };
    let scopes = parse_list(row.try_get("scopes")?, "scopes")?.unwrap_or_default();
    let level: String = row.try_get("permissions")?;
    let permissions =
        Permissions::parse(&level, &scopes).map_err(|e| StoreError::Corrupt(format!("key {id} permissions: {e}")))?;
    Ok(KeyRecord {
        id: PublicId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("bad key id `{id}`")))?,
        kind,
        name: row.try_get("name")?,
        project_id: row.try_get("project_id")?,
        owner,
        prefix: row.try_get("prefix")?,
        state,
        permissions,
        access: access_from_row(row)?,
        limits: match row.try_get::<Option<String>, _>("rate_limits")? {
            Some(text) => {
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("key {id} rate limits: {e}")))?
            }
            None => RateLimits::default(),
        },
        budget: budget_from_row(row)?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        last_used: match row.try_get::<Option<i64>, _>("last_used_at")? {
            Some(at) => {
                Some(Touch { at, ip: row.try_get("last_used_ip")?, user_agent: row.try_get("last_used_user_agent")? })
            }
            None => None,
        },
        revocation,
        secrets,
    })
}

/// The columns [`alert_from_row`] reads.
const ALERT_COLUMNS: &str =
    "id, at, key_id, project_id, kind, severity, message, details, delivery_id, delivery_status, \
     delivery_attempts, delivery_next_at, delivery_last_at, delivery_last_error";

fn alert_from_row(row: &AnyRow) -> StoreResult<Alert> {
    let key_id: String = row.try_get("key_id")?;
    let details: String = row.try_get("details")?;
    let delivery = match row.try_get::<Option<String>, _>("delivery_status")? {
        None => None,
        Some(status) => Some(Delivery {
            id: row.try_get::<Option<String>, _>("delivery_id")?.unwrap_or_default(),
            status: DeliveryStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("bad delivery status `{status}` in alerts")))?,
            attempts: row.try_get("delivery_attempts")?,
            next_attempt_at: row.try_get("delivery_next_at")?,
            last_attempt_at: row.try_get("delivery_last_at")?,
            last_error: row.try_get("delivery_last_error")?,
        }),
    };
    Ok(Alert {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        key_id: PublicId::parse(&key_id)
            .ok_or_else(|| StoreError::Corrupt(format!("bad key id `{key_id}` in alerts")))?,
        project_id: row.try_get("project_id")?,
        kind: row.try_get("kind")?,
        severity: row.try_get("severity")?,
        message: row.try_get("message")?,
        details: serde_json::from_str(&details).map_err(|e| StoreError::Corrupt(format!("alert details: {e}")))?,
        delivery,
    })
}

fn project_from_row(row: &AnyRow) -> StoreResult<Project> {
    Ok(Project {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        archived_at: row.try_get("archived_at")?,
        access: access_from_row(row)?,
        max_key_age_seconds: row.try_get("max_key_age_seconds")?,
        rate_limits: project_rate_limits(row.try_get("rate_limits")?)?,
        budget: budget_from_row(row)?,
    })
}

fn budget_from_row(row: &AnyRow) -> StoreResult<Option<Budget>> {
    let nanos: Option<i64> = row.try_get("budget_nanos")?;
    let percent: Option<i64> = row.try_get("budget_alert_percent")?;
    Ok(nanos.map(|monthly_nanos| Budget {
        monthly_nanos,
        alert_percent: percent.and_then(|p| u8::try_from(p).ok()).unwrap_or(80),
    }))
}

fn project_rate_limits(json: Option<String>) -> StoreResult<Vec<ModelLimits>> {
    #[derive(serde::Deserialize)]
    struct Entry {
        model: String,
        limits: RateLimits,
    }
    let entries: Vec<Entry> = match json {
        Some(text) => {
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("project rate limits: {e}")))?
        }
        None => Vec::new(),
    };
    Ok(entries.into_iter().map(|e| ModelLimits { model: e.model, limits: e.limits }).collect())
}

fn limits_json(limits: &RateLimits) -> Option<String> {
    (!limits.is_empty()).then(|| serde_json::to_string(limits).unwrap_or_default())
}

fn service_account_from_row(row: &AnyRow) -> StoreResult<ServiceAccount> {
    Ok(ServiceAccount {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        created_at: row.try_get("created_at")?,
    })
}

fn user_from_row(row: &AnyRow) -> StoreResult<User> {
    Ok(User {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        role: row.try_get("role")?,
        added_at: row.try_get("added_at")?,
    })
}

fn page<T>(mut items: Vec<T>, limit: u32) -> Page<T> {
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Page { items, has_more }
}

fn kind_str(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Project => "project",
        KeyKind::Admin => "admin",
    }
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

    async fn list_projects(&self, q: &PageQuery, include_archived: bool) -> StoreResult<Page<Project>> {
        let filter = if include_archived { "1 = 1" } else { "archived_at IS NULL" };
        self.paged(&self.project_select, "projects", filter, &[], q, project_from_row).await
    }

    async fn all_projects(&self) -> StoreResult<Vec<Project>> {
        let rows = sqlx::query(&self.engine.sql(format!("{} ORDER BY rowid", self.project_select)))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(project_from_row).collect()
    }

    async fn get_project(&self, id: &str) -> StoreResult<Option<Project>> {
        self.one(&format!("{} WHERE id = ?", self.project_select), id, project_from_row).await
    }

    async fn create_project(&self, name: &str, access: &Access, now: Timestamp) -> StoreResult<Project> {
        let id = crate::ids::project_id();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            &self.engine.sql("INSERT INTO projects (id, name, created_at, models, allowed_ips) VALUES (?, ?, ?, ?, ?)"),
        )
        .bind(&id)
        .bind(name)
        .bind(now)
        .bind(json_list(access.models.as_ref()))
        .bind(ips_json(&access.allowed_ips))
        .execute(&mut *tx)
        .await?;
        self.insert_service_account(&mut tx, Some(&id), "default", "member", true, now).await?;
        tx.commit().await?;
        Ok(Project {
            id,
            name: name.to_owned(),
            created_at: now,
            archived_at: None,
            access: access.clone(),
            max_key_age_seconds: None,
            rate_limits: Vec::new(),
            budget: None,
        })
    }

    async fn update_project(&self, id: &str, update: &ProjectUpdate) -> StoreResult<Option<Project>> {
        let mut tx = self.begin_write().await?;
        if let Some(name) = &update.name {
            sqlx::query(&self.engine.sql("UPDATE projects SET name = ? WHERE id = ?"))
                .bind(name)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(models) = &update.models {
            sqlx::query(&self.engine.sql("UPDATE projects SET models = ? WHERE id = ?"))
                .bind(json_list(models.as_ref()))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(ips) = &update.allowed_ips {
            sqlx::query(&self.engine.sql("UPDATE projects SET allowed_ips = ? WHERE id = ?"))
                .bind(ips_json(ips))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(budget) = update.budget {
            sqlx::query(
                &self.engine.sql("UPDATE projects SET budget_nanos = ?, budget_alert_percent = ? WHERE id = ?"),
            )
            .bind(budget.map(|b| b.monthly_nanos))
            .bind(budget.map(|b| i64::from(b.alert_percent)))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(age) = update.max_key_age_seconds {
            sqlx::query(&self.engine.sql("UPDATE projects SET max_key_age_seconds = ? WHERE id = ?"))
                .bind(age)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.get_project(id).await
    }

    async fn set_project_rate_limit(
        &self,
        id: &str,
        model: &str,
        limits: Option<&RateLimits>,
    ) -> StoreResult<Option<Project>> {
        match limits.and_then(limits_json) {
            Some(json) => {
                sqlx::query(&self.engine.sql(
                    "INSERT INTO project_rate_limits (project_id, model, limits) VALUES (?, ?, ?) \
                     ON CONFLICT (project_id, model) DO UPDATE SET limits = excluded.limits",
                ))
                .bind(id)
                .bind(model)
                .bind(json)
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query(&self.engine.sql("DELETE FROM project_rate_limits WHERE project_id = ? AND model = ?"))
                    .bind(id)
                    .bind(model)
                    .execute(&self.pool)
                    .await?;
            }
        }
        self.get_project(id).await
    }

    async fn archive_project(&self, id: &str, now: Timestamp) -> StoreResult<Option<Project>> {
        sqlx::query(&self.engine.sql("UPDATE projects SET archived_at = ? WHERE id = ? AND archived_at IS NULL"))
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.get_project(id).await
    }

    async fn create_user(&self, name: &str, email: &str, role: &str, now: Timestamp) -> StoreResult<User> {
        let id = crate::ids::user_id();
        sqlx::query(&self.engine.sql("INSERT INTO users (id, name, email, role, added_at) VALUES (?, ?, ?, ?, ?)"))
            .bind(&id)
            .bind(name)
            .bind(email)
            .bind(role)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.is_unique_violation() => {
                    StoreError::Duplicate("a user with this email")
                }
                _ => StoreError::Database(e),
            })?;
        Ok(User { id, name: name.to_owned(), email: email.to_owned(), role: role.to_owned(), added_at: now })
    }

    async fn list_users(&self, q: &PageQuery) -> StoreResult<Page<User>> {
        self.paged(USER_SELECT, "users", "deleted_at IS NULL", &[], q, user_from_row).await
    }

    async fn get_user(&self, id: &str) -> StoreResult<Option<User>> {
        self.one(&format!("{USER_SELECT} WHERE id = ? AND deleted_at IS NULL"), id, user_from_row).await
    }

    async fn update_user_role(&self, id: &str, role: &str) -> StoreResult<Option<User>> {
        sqlx::query(&self.engine.sql("UPDATE users SET role = ? WHERE id = ? AND deleted_at IS NULL"))
            .bind(role)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.get_user(id).await
    }

    async fn delete_user(&self, id: &str, revocation: &Revocation) -> StoreResult<Option<Vec<KeyRecord>>> {
        self.delete_owner("users", "user", id, revocation).await
    }

    async fn create_service_account(
        &self,
        project_id: &str,
        name: &str,
        now: Timestamp,
    ) -> StoreResult<ServiceAccount> {
        let mut tx = self.begin_write().await?;
        let sa = self.insert_service_account(&mut tx, Some(project_id), name, "member", false, now).await?;
        tx.commit().await?;
        Ok(sa)
    }

    async fn list_service_accounts(&self, project_id: &str, q: &PageQuery) -> StoreResult<Page<ServiceAccount>> {
        let filter = "project_id = ? AND deleted_at IS NULL";
        self.paged(SA_SELECT, "service_accounts", filter, &[project_id], q, service_account_from_row).await
    }

    async fn get_service_account(&self, id: &str) -> StoreResult<Option<ServiceAccount>> {
        self.one(&format!("{SA_SELECT} WHERE id = ? AND deleted_at IS NULL"), id, service_account_from_row).await
    }

    async fn default_service_account(&self, project_id: &str) -> StoreResult<Option<ServiceAccount>> {
        self.one(
            &format!("{SA_SELECT} WHERE project_id = ? AND is_default = 1 AND deleted_at IS NULL"),
            project_id,
            service_account_from_row,
        )
        .await
    }

    async fn organization_service_account(&self) -> StoreResult<Option<ServiceAccount>> {
        let row = sqlx::query(
            &self.engine.sql(format!("{SA_SELECT} WHERE project_id IS NULL AND is_default = 1 AND deleted_at IS NULL")),
        )
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(service_account_from_row).transpose()
    }

    async fn delete_service_account(&self, id: &str, revocation: &Revocation) -> StoreResult<Option<Vec<KeyRecord>>> {
        self.delete_owner("service_accounts", "service_account", id, revocation).await
    }

    async fn insert_key(&self, key: &NewKey) -> StoreResult<KeyRecord> {
        let (owner_type, owner_id) = match &key.owner {
            Some(OwnerRef::ServiceAccount(id)) => ("service_account", Some(id.as_str())),
            Some(OwnerRef::User(id)) => ("user", Some(id.as_str())),
            None => ("service_account", None),
        };
        let scopes = match &key.permissions {
            Permissions::Restricted(_) => json_list(Some(&key.permissions.scopes())),
            _ => None,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            &self.engine.sql("INSERT INTO api_keys (id, kind, name, project_id, owner_type, owner_id, prefix, state, permissions, scopes, \
             models, allowed_ips, rate_limits, budget_nanos, budget_alert_percent, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        )
        .bind(key.id.as_str())
        .bind(kind_str(key.kind))
        .bind(&key.name)
        .bind(&key.project_id)
        .bind(owner_type)
        .bind(owner_id)
        .bind(&key.prefix)
        .bind(key.permissions.level())
        .bind(scopes)
        .bind(json_list(key.access.models.as_ref()))
        .bind(ips_json(&key.access.allowed_ips))
        .bind(limits_json(&key.limits))
        .bind(key.budget.map(|b| b.monthly_nanos))
        .bind(key.budget.map(|b| i64::from(b.alert_percent)))
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            &self.engine.sql("INSERT INTO api_key_secrets (digest, key_id, algorithm, last4, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)"),
        )
        .bind(&key.secret.digest.0[..])
        .bind(key.id.as_str())
        .bind(if key.secret.legacy { "legacy" } else { "v1" })
        .bind(&key.secret.last4)
        .bind(key.secret.created_at)
        .bind(key.secret.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get_key(&key.id).await?.ok_or_else(|| StoreError::Corrupt("inserted key vanished".into()))
    }

    async fn get_key(&self, id: &PublicId) -> StoreResult<Option<KeyRecord>> {
        Ok(self.keys_where("k.id = ?", &[id.as_str()], None).await?.into_iter().next())
    }

    async fn find_key_by_digest(&self, digest: &KeyDigest) -> StoreResult<Option<KeyRecord>> {
        let key_id: Option<String> =
            sqlx::query_scalar(&self.engine.sql("SELECT key_id FROM api_key_secrets WHERE digest = ?"))
                .bind(&digest.0[..])
                .fetch_optional(&self.pool)
                .await?;
        match key_id.as_deref().and_then(PublicId::parse) {
            Some(id) => self.get_key(&id).await,
            None => Ok(None),
        }
    }

    async fn list_keys(&self, filter: &KeyFilter, q: &PageQuery) -> StoreResult<Page<KeyRecord>> {
        // An empty cursor means "from the start"; ids are stored without `key_`.
        let after = q.after.as_deref().map_or("", |a| a.strip_prefix("key_").unwrap_or(a));
        const CURSOR: &str = "(? = '' OR k.rowid > (SELECT rowid FROM api_keys WHERE id = ?))";
        let limit = Some(q.limit + 1);
        let items = match filter {
            KeyFilter::Project { project_id, include_revoked } => {
                let live = if *include_revoked { "" } else { "AND k.state != 'revoked'" };
                let clause = format!("k.kind = 'project' AND k.project_id = ? {live} AND {CURSOR}");
                self.keys_where(&clause, &[project_id, after, after], limit).await?
            }
            KeyFilter::Admin => {
                let clause = format!("k.kind = 'admin' AND k.state != 'revoked' AND {CURSOR}");
                self.keys_where(&clause, &[after, after], limit).await?
            }
        };
        Ok(page(items, q.limit))
    }

    async fn keys_page(&self, after: Option<&PublicId>, limit: u32) -> StoreResult<Vec<KeyRecord>> {
        match after {
            None => self.keys_where("1 = 1", &[], Some(limit)).await,
            Some(after) => {
                let after = after.as_str();
                self.keys_where("k.rowid > (SELECT rowid FROM api_keys WHERE id = ?)", &[after], Some(limit)).await
            }
        }
    }

    async fn update_key(&self, id: &PublicId, update: &KeyUpdate) -> StoreResult<Option<KeyRecord>> {
        let mut tx = self.begin_write().await?;
        if let Some(name) = &update.name {
            sqlx::query(&self.engine.sql("UPDATE api_keys SET name = ? WHERE id = ?"))
                .bind(name)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(limits) = &update.limits {
            sqlx::query(&self.engine.sql("UPDATE api_keys SET rate_limits = ? WHERE id = ?"))
                .bind(limits_json(limits))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(budget) = update.budget {
            sqlx::query(
                &self.engine.sql("UPDATE api_keys SET budget_nanos = ?, budget_alert_percent = ? WHERE id = ?"),
            )
            .bind(budget.map(|b| b.monthly_nanos))
            .bind(budget.map(|b| i64::from(b.alert_percent)))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        if let Some(expires_at) = update.expires_at {
            sqlx::query(&self.engine.sql("UPDATE api_keys SET expires_at = ? WHERE id = ?"))
                .bind(expires_at)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(p) = &update.permissions {
            let scopes = matches!(p, Permissions::Restricted(_)).then(|| json_list(Some(&p.scopes()))).flatten();
            sqlx::query(&self.engine.sql("UPDATE api_keys SET permissions = ?, scopes = ? WHERE id = ?"))
                .bind(p.level())
                .bind(scopes)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(models) = &update.models {
            sqlx::query(&self.engine.sql("UPDATE api_keys SET models = ? WHERE id = ?"))
                .bind(json_list(models.as_ref()))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(ips) = &update.allowed_ips {
            sqlx::query(&self.engine.sql("UPDATE api_keys SET allowed_ips = ? WHERE id = ?"))
                .bind(ips_json(ips))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.get_key(id).await
    }

    async fn revoke_key(&self, id: &PublicId, revocation: &Revocation) -> StoreResult<Option<KeyRecord>> {
        let mut tx = self.begin_write().await?;
        self.revoke_where(&mut tx, "id = ?", id.as_str(), revocation).await?;
        tx.commit().await?;
        self.get_key(id).await
    }

    async fn set_key_active(&self, id: &PublicId, active: bool) -> StoreResult<Option<KeyRecord>> {
        sqlx::query(&self.engine.sql("UPDATE api_keys SET state = ? WHERE id = ? AND state != 'revoked'"))
            .bind(if active { "active" } else { "suspended" })
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        self.get_key(id).await
    }

    async fn rotate_key(
        &self,
        id: &PublicId,
        secret: &SecretVersion,
        grace_ends: Timestamp,
    ) -> StoreResult<Option<KeyRecord>> {
        let mut tx = self.begin_write().await?;
        let live: Option<String> =
            sqlx::query_scalar(&self.engine.sql("SELECT id FROM api_keys WHERE id = ? AND state != 'revoked'"))
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if live.is_none() {
            return Ok(None);
        }
        sqlx::query(&self.engine.sql("UPDATE api_key_secrets SET expires_at = CASE WHEN expires_at < ?1 THEN expires_at ELSE ?1 END WHERE key_id = ?2"))
            .bind(grace_ends)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            &self.engine.sql("INSERT INTO api_key_secrets (digest, key_id, algorithm, last4, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)"),
        )
        .bind(&secret.digest.0[..])
        .bind(id.as_str())
        .bind(if secret.legacy { "legacy" } else { "v1" })
        .bind(&secret.last4)
        .bind(secret.created_at)
        .bind(secret.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get_key(id).await
    }

    async fn touch_keys(&self, batch: &[(PublicId, Touch)]) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        for (id, touch) in batch {
            sqlx::query(&self.engine.sql(
                "UPDATE api_keys SET last_used_at = ?, last_used_ip = ?, last_used_user_agent = ? \
                 WHERE id = ? AND COALESCE(last_used_at, 0) <= ?",
            ))
            .bind(touch.at)
            .bind(&touch.ip)
            .bind(&touch.user_agent)
            .bind(id.as_str())
            .bind(touch.at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn append_audit(&self, event: &AuditEvent) -> StoreResult<()> {
        sqlx::query(
            &self.engine.sql("INSERT INTO audit_log (id, type, effective_at, project_id, actor_key_id, details) VALUES (?, ?, ?, ?, ?, ?)"),
        )
        .bind(&event.id)
        .bind(event.kind)
        .bind(event.effective_at)
        .bind(&event.project_id)
        .bind(event.actor_key_id.as_ref().map(PublicId::as_str))
        .bind(event.details.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_audit(&self, f: &AuditFilter) -> StoreResult<Page<AuditRecord>> {
        let mut sql = String::from(
            "SELECT a.id, a.type, a.effective_at, a.project_id, p.name AS project_name, a.actor_key_id, a.details \
             FROM audit_log a LEFT JOIN projects p ON p.id = a.project_id WHERE 1 = 1",
        );
        let mut binds: Vec<String> = Vec::new();
        let mut any_of = |sql: &mut String, column: &str, values: &[String]| {
            if !values.is_empty() {
                sql.push_str(&format!(" AND {column} IN {}", values_list(values.len(), 1)));
                binds.extend(values.iter().cloned());
            }
        };
        any_of(&mut sql, "a.type", &f.event_types);
        any_of(&mut sql, "a.project_id", &f.project_ids);
        any_of(&mut sql, &self.engine.json_field("a.details", "id"), &f.resource_ids);
        any_of(&mut sql, "('key_' || a.actor_key_id)", &f.actor_ids);
        if let Some(gte) = f.effective_at_gte {
            sql.push_str(&format!(" AND a.effective_at >= {gte}"));
        }
        if let Some(lte) = f.effective_at_lte {
            sql.push_str(&format!(" AND a.effective_at <= {lte}"));
        }
        // Newest first, as OpenAI lists audit logs; `after` pages towards older events.
        if let Some(after) = &f.after {
            sql.push_str(" AND a.seq < (SELECT seq FROM audit_log WHERE id = ?)");
            binds.push(after.clone());
        }
        // `before` pages towards newer events: take the nearest ones, then show them newest first.
        let backwards = f.before.is_some() && f.after.is_none();
        if let Some(before) = &f.before {
            sql.push_str(" AND a.seq > (SELECT seq FROM audit_log WHERE id = ?)");
            binds.push(before.clone());
        }
        let order = if backwards { "ASC" } else { "DESC" };
        sql.push_str(&format!(" ORDER BY a.seq {order} LIMIT {}", u64::from(f.limit) + 1));
        let sql = self.engine.sql(sql);
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            let actor: Option<String> = row.try_get("actor_key_id")?;
            let actor_key = match actor.as_deref().and_then(PublicId::parse) {
                Some(id) => self.get_key(&id).await?,
                None => None,
            };
            let details: String = row.try_get("details")?;
            items.push(AuditRecord {
                id: row.try_get("id")?,
                kind: row.try_get("type")?,
                effective_at: row.try_get("effective_at")?,
                project: match row.try_get::<Option<String>, _>("project_id")? {
                    Some(id) => Some((id, row.try_get("project_name")?)),
                    None => None,
                },
                actor_key,
                details: serde_json::from_str(&details)
                    .map_err(|e| StoreError::Corrupt(format!("audit details: {e}")))?,
            });
        }
        let mut result = page(items, f.limit);
        if backwards {
            result.items.reverse();
        }
        Ok(result)
    }

    async fn insert_denials(&self, batch: &[DenialRecord]) -> StoreResult<()> {
        // Many rows per statement: each statement is a round trip (to
        // SQLite's worker thread or to PostgreSQL). A request id appears once
        // per statement (the last record wins), as an upsert requires.
        let mut latest: HashMap<&str, &DenialRecord> = HashMap::new();
        let mut order = Vec::with_capacity(batch.len());
        for d in batch {
            if latest.insert(&d.request_id, d).is_none() {
                order.push(d.request_id.as_str());
            }
        }
        let rows: Vec<&DenialRecord> = order.iter().filter_map(|id| latest.get(id).copied()).collect();
        let mut tx = self.begin_write().await?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = self.engine.sql(format!(
                "INSERT INTO denials (request_id, at, reason, explanation, key_id, project_id, status, method, path, client_ip) \
                 VALUES {} ON CONFLICT (request_id) DO UPDATE SET at = excluded.at, \
                 reason = excluded.reason, explanation = excluded.explanation, key_id = excluded.key_id, \
                 project_id = excluded.project_id, status = excluded.status, method = excluded.method, \
                 path = excluded.path, client_ip = excluded.client_ip",
                values_list(10, chunk.len())
            ));
            let mut query = sqlx::query(&sql);
            for d in chunk {
                query = query
                    .bind(&d.request_id)
                    .bind(d.at)
                    .bind(&d.reason)
                    .bind(&d.explanation)
                    .bind(d.key_id.as_ref().map(PublicId::as_str))
                    .bind(&d.project_id)
                    .bind(i64::from(d.status))
                    .bind(&d.method)
                    .bind(&d.path)
                    .bind(&d.client_ip);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_denial(&self, request_id: &str) -> StoreResult<Option<DenialRecord>> {
        let row = sqlx::query(
            &self.engine.sql("SELECT request_id, at, reason, explanation, key_id, project_id, status, method, path, client_ip FROM denials WHERE request_id = ?"),
        )
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let status: i64 = row.try_get("status")?;
        Ok(Some(DenialRecord {
            request_id: row.try_get("request_id")?,
            at: row.try_get("at")?,
            reason: row.try_get("reason")?,
            explanation: row.try_get("explanation")?,
            key_id: row.try_get::<Option<String>, _>("key_id")?.as_deref().and_then(PublicId::parse),
            project_id: row.try_get("project_id")?,
            status: u16::try_from(status).map_err(|_| StoreError::Corrupt(format!("bad status {status}")))?,
            method: row.try_get("method")?,
            path: row.try_get("path")?,
            client_ip: row.try_get("client_ip")?,
        }))
    }

    async fn prune_denials(&self, before: Timestamp, max_rows: u64) -> StoreResult<u64> {
        let old = sqlx::query(&self.engine.sql("DELETE FROM denials WHERE at < ?"))
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let count: i64 =
            sqlx::query_scalar(&self.engine.sql("SELECT COUNT(*) FROM denials")).fetch_one(&self.pool).await?;
        let excess = u64::try_from(count).unwrap_or(0).saturating_sub(max_rows);
        let capped = if excess > 0 {
            sqlx::query(
                &self
                    .engine
                    .sql("DELETE FROM denials WHERE rowid IN (SELECT rowid FROM denials ORDER BY at, rowid LIMIT ?)"),
            )
            .bind(i64::try_from(excess).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?
            .rows_affected()
        } else {
            0
        };
        Ok(old + capped)
    }

    async fn insert_usage(&self, batch: &[UsageRecord]) -> StoreResult<()> {
        // Rows one by one (a repeated request id is skipped), then one rollup
        // upsert per (minute, project, key, model, kind) of the batch.
        type Group = (i64, String, String, String, &'static str);
        // Ordered, so replicas writing the same rollup rows lock them in the
        // same order and cannot deadlock.
        let mut groups: BTreeMap<Group, (String, [i64; 7])> = BTreeMap::new();
        let mut tx = self.begin_write().await?;
        let mut inserted: HashSet<String> = HashSet::with_capacity(batch.len());
        for chunk in batch.chunks(ROWS_PER_STATEMENT) {
            let sql = self.engine.sql(format!(
                "INSERT INTO usage_records (request_id, at, key_id, prefix, project_id, owner_id, model, route, kind, \
                 status, input_tokens, output_tokens, cached_tokens, reasoning_tokens, estimated, cost_nanos, latency_ms, upstream, client_ip) \
                 VALUES {} ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                values_list(19, chunk.len())
            ));
            let mut query = sqlx::query(&sql);
            for u in chunk {
                query = query
                    .bind(&u.request_id)
                    .bind(u.at)
                    .bind(u.key_id.as_str())
                    .bind(&u.prefix)
                    .bind(&u.project_id)
                    .bind(&u.owner_id)
                    .bind(&u.model)
                    .bind(&u.route)
                    .bind(u.kind.as_str())
                    .bind(i64::from(u.status))
                    .bind(u.tokens.input)
                    .bind(u.tokens.output)
                    .bind(u.tokens.cached)
                    .bind(u.tokens.reasoning)
                    .bind(i64::from(u.estimated))
                    .bind(u.cost_nanos)
                    .bind(u.latency_ms)
                    .bind(&u.upstream)
                    .bind(&u.client_ip);
            }
            for row in query.fetch_all(&mut *tx).await? {
                inserted.insert(row.try_get("request_id")?);
            }
        }
        // Rows already stored (a retried batch) add nothing to the rollups;
        // a request id twice in one batch counts once.
        for u in batch {
            if !inserted.remove(&u.request_id) {
                continue;
            }
            let key = (
                u.at - u.at.rem_euclid(60),
                u.project_id.clone(),
                u.key_id.as_str().to_owned(),
                u.model.clone().unwrap_or_default(),
                u.kind.as_str(),
            );
            let (_, sums) = groups.entry(key).or_insert_with(|| (u.prefix.clone(), [0; 7]));
            let succeeded = (200..300).contains(&u.status);
            for (sum, value) in sums.iter_mut().zip([
                i64::from(succeeded),
                i64::from(!succeeded),
                u.tokens.input,
                u.tokens.output,
                u.tokens.cached,
                u.tokens.reasoning,
                u.cost_nanos,
            ]) {
                *sum += value;
            }
        }
        for ((minute, project_id, key_id, model, kind), (prefix, sums)) in &groups {
            sqlx::query(
                &self.engine.sql("INSERT INTO usage_rollups (minute, project_id, key_id, prefix, model, kind, requests, failed_requests, input_tokens, output_tokens, \
                 cached_tokens, reasoning_tokens, cost_nanos) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (minute, project_id, key_id, model, kind) DO UPDATE SET requests = usage_rollups.requests + excluded.requests, \
                 failed_requests = usage_rollups.failed_requests + excluded.failed_requests, \
                 input_tokens = usage_rollups.input_tokens + excluded.input_tokens, output_tokens = usage_rollups.output_tokens + excluded.output_tokens, \
                 cached_tokens = usage_rollups.cached_tokens + excluded.cached_tokens, reasoning_tokens = usage_rollups.reasoning_tokens + excluded.reasoning_tokens, \
                 cost_nanos = usage_rollups.cost_nanos + excluded.cost_nanos"),
            )
            .bind(minute)
            .bind(project_id)
            .bind(key_id)
            .bind(prefix)
            .bind(model)
            .bind(*kind)
            .bind(sums[0])
            .bind(sums[1])
            .bind(sums[2])
            .bind(sums[3])
            .bind(sums[4])
            .bind(sums[5])
            .bind(sums[6])
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn query_usage(&self, q: &UsageQuery) -> StoreResult<Vec<UsageRow>> {
        let width = q.bucket_seconds.max(60);
        let sum = |column: &str| format!("CAST(SUM({column}) AS BIGINT)");
        let mut columns = Vec::new();
        for g in &q.group_by {
            columns.push(match g {
                UsageGroup::Project => "project_id",
                UsageGroup::ApiKey => "key_id",
                UsageGroup::Model => "model",
                UsageGroup::Prefix => "prefix",
            });
        }
        let group_sql: String = columns.iter().map(|c| format!(", {c}")).collect();
        // Whole minutes come from the rollups; the partial minutes at either
        // edge of an unaligned window come from the request rows themselves.
        let (inner_start, inner_end) = (q.start + (60 - q.start.rem_euclid(60)) % 60, q.end - q.end.rem_euclid(60));
        let mut sql = format!(
            "SELECT ((t - ?) / {width}) * {width} + ? AS bucket{group_sql}, {} AS requests, {} AS failed_requests, \
             {} AS input_tokens, {} AS output_tokens, {} AS cached_tokens, \
             {} AS reasoning_tokens, {} AS cost_nanos FROM ( \
               SELECT minute AS t, project_id, key_id, prefix, model, kind, requests, failed_requests, input_tokens, output_tokens, \
                 cached_tokens, reasoning_tokens, cost_nanos FROM usage_rollups WHERE minute >= {inner_start} AND minute < {inner_end} \
               UNION ALL \
               SELECT at AS t, project_id, key_id, prefix, COALESCE(model, '') AS model, kind, \
                 CASE WHEN status >= 200 AND status < 300 THEN 1 ELSE 0 END AS requests, \
                 CASE WHEN status >= 200 AND status < 300 THEN 0 ELSE 1 END AS failed_requests, input_tokens, \
                 output_tokens, cached_tokens, reasoning_tokens, cost_nanos FROM usage_records \
                 WHERE at >= ? AND at < ? AND NOT (at >= {inner_start} AND at < {inner_end}) \
             ) AS u WHERE 1 = 1",
            // PostgreSQL sums BIGINTs as NUMERIC; both engines give them back as integers.
            sum("requests"), sum("failed_requests"), sum("input_tokens"), sum("output_tokens"), sum("cached_tokens"), sum("reasoning_tokens"), sum("cost_nanos")
        );
        let mut binds: Vec<String> = Vec::new();
        if let Some(kind) = q.kind {
            sql.push_str(" AND kind = ?");
            binds.push(kind.as_str().to_owned());
        }
        for (column, values) in
            [("project_id", &q.project_ids), ("key_id", &q.key_ids), ("model", &q.models), ("prefix", &q.prefixes)]
        {
            if !values.is_empty() {
                sql.push_str(&format!(" AND {column} IN {}", values_list(values.len(), 1)));
                binds.extend(
                    values
                        .iter()
                        .map(|v| v.strip_prefix("key_").filter(|_| column == "key_id").unwrap_or(v).to_owned()),
                );
            }
        }
        sql.push_str(&format!(" GROUP BY bucket{group_sql} ORDER BY bucket{group_sql}"));
        let sql = self.engine.sql(sql);
        let mut query = sqlx::query(&sql).bind(q.start).bind(q.start).bind(q.start).bind(q.end);
        for b in &binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let opt = |row: &AnyRow, group: UsageGroup, column: &str| -> StoreResult<Option<String>> {
            if q.group_by.contains(&group) {
                Ok(Some(row.try_get(column)?))
            } else {
                Ok(None)
            }
        };
        rows.iter()
            .map(|row| {
                Ok(UsageRow {
                    bucket_start: row.try_get("bucket")?,
                    project_id: opt(row, UsageGroup::Project, "project_id")?,
                    key_id: opt(row, UsageGroup::ApiKey, "key_id")?,
                    model: opt(row, UsageGroup::Model, "model")?,
                    prefix: opt(row, UsageGroup::Prefix, "prefix")?,
                    requests: row.try_get("requests")?,
                    failed_requests: row.try_get("failed_requests")?,
                    tokens: Tokens {
                        input: row.try_get("input_tokens")?,
                        output: row.try_get("output_tokens")?,
                        cached: row.try_get("cached_tokens")?,
                        reasoning: row.try_get("reasoning_tokens")?,
                    },
                    cost_nanos: row.try_get("cost_nanos")?,
                })
            })
            .collect()
    }

    async fn prune_usage(&self, records_before: Timestamp, rollups_before: Timestamp) -> StoreResult<u64> {
        let a = sqlx::query(&self.engine.sql("DELETE FROM usage_records WHERE at < ?"))
            .bind(records_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let b = sqlx::query(&self.engine.sql("DELETE FROM usage_rollups WHERE minute < ?"))
            .bind(rollups_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(a + b)
    }

    async fn count_networks(&self, batch: &[NetworkSighting]) -> StoreResult<Vec<KnownNetwork>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let mut known = Vec::with_capacity(batch.len());
        for s in batch {
            // The update adds a window only once: a window examined again (a
            // replica that took over mid-window) finds it counted.
            sqlx::query(&self.engine.sql(
                "INSERT INTO key_networks (key_id, network, first_seen, last_seen, requests, counted_until) VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (key_id, network) DO UPDATE SET last_seen = excluded.last_seen, \
                 requests = key_networks.requests + excluded.requests, counted_until = excluded.counted_until \
                 WHERE key_networks.counted_until < excluded.counted_until",
            ))
            .bind(s.key_id.as_str())
            .bind(&s.network)
            .bind(s.window_end)
            .bind(s.window_end)
            .bind(s.requests)
            .bind(s.window_end)
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query(&self.engine.sql(
                "SELECT n.first_seen, n.requests, n.alerted_at, CAST(CASE WHEN EXISTS (SELECT 1 FROM key_networks o \
                 WHERE o.key_id = n.key_id AND o.first_seen < n.first_seen) THEN 1 ELSE 0 END AS BIGINT) AS had_others \
                 FROM key_networks n WHERE n.key_id = ? AND n.network = ?",
            ))
            .bind(s.key_id.as_str())
            .bind(&s.network)
            .fetch_one(&mut *tx)
            .await?;
            known.push(KnownNetwork {
                key_id: s.key_id,
                network: s.network.clone(),
                first_seen: row.try_get("first_seen")?,
                requests: row.try_get("requests")?,
                key_had_others: row.try_get::<i64, _>("had_others")? == 1,
                alerted_at: row.try_get("alerted_at")?,
            });
        }
        tx.commit().await?;
        Ok(known)
    }

    async fn mark_network_alerted(&self, key_id: &PublicId, network: &str, at: Timestamp) -> StoreResult<()> {
        sqlx::query(&self.engine.sql("UPDATE key_networks SET alerted_at = ? WHERE key_id = ? AND network = ?"))
            .bind(at)
            .bind(key_id.as_str())
            .bind(network)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn usage_clients(&self, start: Timestamp, end: Timestamp) -> StoreResult<Vec<(String, String, i64)>> {
        let rows = sqlx::query(&self.engine.sql(
            "SELECT key_id, client_ip, COUNT(*) AS requests FROM usage_records \
             WHERE at >= ? AND at < ? AND client_ip IS NOT NULL GROUP BY key_id, client_ip",
        ))
        .bind(start)
        .bind(end)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("key_id")?, r.try_get("client_ip")?, r.try_get("requests")?))).collect()
    }

    async fn last_usage_before(&self, key_id: &PublicId, before: Timestamp) -> StoreResult<Option<Timestamp>> {
        // The rollups, not the request rows: they are kept far longer
        // (`retention.usage_rollups_days`), and a dormant key is one idle for weeks.
        Ok(sqlx::query_scalar(
            &self.engine.sql("SELECT MAX(minute) FROM usage_rollups WHERE key_id = ? AND minute < ?"),
        )
        .bind(key_id.as_str())
        .bind(before)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn insert_alert(&self, a: &Alert) -> StoreResult<bool> {
        let d = a.delivery.as_ref();
        let inserted = sqlx::query(&self.engine.sql(
            "INSERT INTO alerts (id, at, key_id, project_id, kind, severity, message, details, delivery_id, delivery_status, \
             delivery_attempts, delivery_next_at, delivery_last_at, delivery_last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO NOTHING",
        ))
        .bind(&a.id)
        .bind(a.at)
        .bind(a.key_id.as_str())
        .bind(&a.project_id)
        .bind(&a.kind)
        .bind(&a.severity)
        .bind(&a.message)
        .bind(a.details.to_string())
        .bind(d.map(|d| d.id.clone()))
        .bind(d.map(|d| d.status.as_str()))
        .bind(d.map_or(0, |d| d.attempts))
        .bind(d.and_then(|d| d.next_attempt_at))
        .bind(d.and_then(|d| d.last_attempt_at))
        .bind(d.and_then(|d| d.last_error.clone()))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn list_alerts(&self, since: Timestamp, q: &PageQuery) -> StoreResult<Page<Alert>> {
        let rows = sqlx::query(&self.engine.sql(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE at >= ? \
             AND (? IS NULL OR rowid < (SELECT rowid FROM alerts WHERE id = ?)) ORDER BY rowid DESC LIMIT ?"
        )))
        .bind(since)
        .bind(&q.after)
        .bind(&q.after)
        .bind(i64::from(q.limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(page(rows.iter().map(alert_from_row).collect::<StoreResult<Vec<_>>>()?, q.limit))
    }

    async fn last_alert(&self, key_id: &PublicId, kind: &str) -> StoreResult<Option<Alert>> {
        let row = sqlx::query(&self.engine.sql(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE key_id = ? AND kind = ? ORDER BY at DESC, rowid DESC LIMIT 1"
        )))
        .bind(key_id.as_str())
        .bind(kind)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(alert_from_row).transpose()
    }

    async fn due_deliveries(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<Alert>> {
        let rows = sqlx::query(&self.engine.sql(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE delivery_status = 'pending' AND delivery_next_at <= ? \
             ORDER BY delivery_next_at, rowid LIMIT ?"
        )))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alert_from_row).collect()
    }

    async fn claim_delivery(&self, alert_id: &str, now: Timestamp, hold_until: Timestamp) -> StoreResult<bool> {
        let claimed = sqlx::query(&self.engine.sql(
            "UPDATE alerts SET delivery_attempts = delivery_attempts + 1, delivery_last_at = ?, delivery_next_at = ? \
             WHERE id = ? AND delivery_status = 'pending' AND delivery_next_at <= ?",
        ))
        .bind(now)
        .bind(hold_until)
        .bind(alert_id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }

    async fn finish_delivery(
        &self,
        alert_id: &str,
        status: DeliveryStatus,
        next_attempt_at: Option<Timestamp>,
        error: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query(
            &self.engine.sql(
                "UPDATE alerts SET delivery_status = ?, delivery_next_at = ?, delivery_last_error = ? WHERE id = ?",
            ),
        )
        .bind(status.as_str())
        .bind(next_attempt_at)
        .bind(error)
        .bind(alert_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn hold_lease(&self, job: &str, holder: &str, now: Timestamp, ttl_seconds: i64) -> StoreResult<bool> {
        // The update happens only for the holder or over an expired lease; a
        // row comes back only when it did.
        let held = sqlx::query(&self.engine.sql(
            "INSERT INTO job_leases (name, holder, expires_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE job_leases.holder = excluded.holder OR job_leases.expires_at <= ? RETURNING holder",
        ))
        .bind(job)
        .bind(holder)
        .bind(now.saturating_add(ttl_seconds))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(held.is_some())
    }

    async fn release_lease(&self, job: &str, holder: &str) -> StoreResult<()> {
        sqlx::query(&self.engine.sql("UPDATE job_leases SET expires_at = 0 WHERE name = ? AND holder = ?"))
            .bind(job)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn job_position(&self, job: &str) -> StoreResult<Option<Timestamp>> {
        Ok(sqlx::query_scalar(&self.engine.sql("SELECT position FROM job_leases WHERE name = ?"))
            .bind(job)
            .fetch_optional(&self.pool)
            .await?
            .flatten())
    }

    async fn advance_job(&self, job: &str, holder: &str, position: Timestamp) -> StoreResult<bool> {
        let moved = sqlx::query(&self.engine.sql(
            "UPDATE job_leases SET position = ? WHERE name = ? AND holder = ? AND (position IS NULL OR position < ?)",
        ))
        .bind(position)
        .bind(job)
        .bind(holder)
        .bind(position)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(moved == 1)
    }

    async fn prune_alerts(&self, before: Timestamp) -> StoreResult<u64> {
        Ok(sqlx::query(&self.engine.sql("DELETE FROM alerts WHERE at < ?"))
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn prune_audit(&self, before: Timestamp, max_rows: u64) -> StoreResult<u64> {
        let old = sqlx::query(&self.engine.sql("DELETE FROM audit_log WHERE effective_at < ?"))
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let count: i64 =
            sqlx::query_scalar(&self.engine.sql("SELECT COUNT(*) FROM audit_log")).fetch_one(&self.pool).await?;
        let excess = u64::try_from(count).unwrap_or(0).saturating_sub(max_rows);
        if excess == 0 {
            return Ok(old);
        }
        let capped =
            sqlx::query(&self.engine.sql(
                "DELETE FROM audit_log WHERE seq IN (SELECT seq FROM audit_log ORDER BY effective_at, seq LIMIT ?)",
            ))
            .bind(i64::try_from(excess).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(old + capped)
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
