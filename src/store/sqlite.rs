//! The embedded SQLite store: one file, WAL journal, a small pool.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::Row;

use super::migrate::{self, SQLITE};
use super::*;

pub struct SqliteStore {
    pool: SqlitePool,
}

const KEY_COLUMNS: &str = "k.id, k.kind, k.name, k.project_id, k.owner_id, k.prefix, k.state, k.created_at, \
     k.expires_at, k.last_used_at, k.revoked_at, k.revoked_by, k.revoke_reason, \
     sa.id AS sa_id, sa.project_id AS sa_project_id, sa.name AS sa_name, sa.role AS sa_role, sa.created_at AS sa_created_at";
const KEY_FROM: &str = "api_keys k LEFT JOIN service_accounts sa ON sa.id = k.owner_id";

impl SqliteStore {
    pub async fn open(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        Ok(Self { pool })
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        sqlx::query("CREATE TABLE IF NOT EXISTS keygate_schema (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")
            .execute(&self.pool)
            .await?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM keygate_schema").fetch_one(&self.pool).await?;
        let known = migrate::latest(SQLITE);
        if current > known {
            return Err(StoreError::SchemaTooNew { found: current, known });
        }
        for m in SQLITE.iter().filter(|m| m.version > current) {
            let mut tx = self.pool.begin().await?;
            sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO keygate_schema (version, name, applied_at) VALUES (?, ?, ?)")
                .bind(m.version)
                .bind(m.name)
                .bind(crate::clock::unix_now())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version = m.version, name = m.name, "applied migration");
        }
        Ok(())
    }

    async fn secrets_of(&self, ids: &[String]) -> StoreResult<std::collections::HashMap<String, Vec<SecretVersion>>> {
        let mut out: std::collections::HashMap<String, Vec<SecretVersion>> = std::collections::HashMap::new();
        // Chunked IN lists keep the statement under SQLite's variable limit.
        for chunk in ids.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT key_id, digest, algorithm, last4, created_at, expires_at FROM api_key_secrets \
                 WHERE key_id IN ({placeholders}) ORDER BY created_at DESC, rowid DESC"
            );
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
        let sql = format!("SELECT {KEY_COLUMNS} FROM {KEY_FROM} WHERE {clause} ORDER BY k.rowid{limit_sql}");
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
                let versions = secrets.remove(&id).unwrap_or_default();
                key_from_row(row, versions)
            })
            .collect()
    }
}

fn key_from_row(row: &SqliteRow, secrets: Vec<SecretVersion>) -> StoreResult<KeyRecord> {
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
    let owner = match row.try_get::<Option<String>, _>("sa_id")? {
        Some(sa_id) => Some(ServiceAccount {
            id: sa_id,
            project_id: row.try_get("sa_project_id")?,
            name: row.try_get("sa_name")?,
            role: row.try_get("sa_role")?,
            created_at: row.try_get("sa_created_at")?,
        }),
        None => None,
    };
    let revocation = match row.try_get::<Option<i64>, _>("revoked_at")? {
        Some(at) => Some(Revocation { at, by: row.try_get("revoked_by")?, reason: row.try_get("revoke_reason")? }),
        None => None,
    };
    Ok(KeyRecord {
        id: PublicId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("bad key id `{id}`")))?,
        kind,
        name: row.try_get("name")?,
        project_id: row.try_get("project_id")?,
        owner,
        prefix: row.try_get("prefix")?,
        state,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revocation,
        secrets,
    })
}

fn project_from_row(row: &SqliteRow) -> StoreResult<Project> {
    Ok(Project {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        archived_at: row.try_get("archived_at")?,
    })
}

fn service_account_from_row(row: &SqliteRow) -> StoreResult<ServiceAccount> {
    Ok(ServiceAccount {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        created_at: row.try_get("created_at")?,
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
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn bootstrap(&self, now: Timestamp) -> StoreResult<Bootstrap> {
        let mut tx = self.pool.begin().await?;
        let existing =
            sqlx::query("SELECT value FROM settings WHERE name = 'default_project'").fetch_optional(&mut *tx).await?;
        let (project_id, first_start) = match existing {
            Some(row) => (row.try_get::<String, _>("value")?, false),
            None => {
                let id = crate::ids::project_id();
                sqlx::query("INSERT INTO projects (id, name, created_at) VALUES (?, 'Default project', ?)")
                    .bind(&id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                insert_default_service_account(&mut tx, &id, now).await?;
                sqlx::query("INSERT INTO settings (name, value) VALUES ('default_project', ?)")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                (id, true)
            }
        };
        let organization_id =
            match sqlx::query_scalar::<_, String>("SELECT value FROM settings WHERE name = 'organization_id'")
                .fetch_optional(&mut *tx)
                .await?
            {
                Some(id) => id,
                None => {
                    let id = crate::ids::organization_id();
                    sqlx::query("INSERT INTO settings (name, value) VALUES ('organization_id', ?)")
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
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
        let rows = sqlx::query(
            "SELECT id, name, created_at, archived_at FROM projects p \
             WHERE (? OR archived_at IS NULL) \
               AND (? IS NULL OR rowid > (SELECT rowid FROM projects WHERE id = ?)) \
             ORDER BY rowid LIMIT ?",
        )
        .bind(include_archived)
        .bind(&q.after)
        .bind(&q.after)
        .bind(i64::from(q.limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(project_from_row).collect::<StoreResult<Vec<_>>>()?;
        Ok(page(items, q.limit))
    }

    async fn get_project(&self, id: &str) -> StoreResult<Option<Project>> {
        let row = sqlx::query("SELECT id, name, created_at, archived_at FROM projects WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(project_from_row).transpose()
    }

    async fn create_project(&self, name: &str, now: Timestamp) -> StoreResult<Project> {
        let id = crate::ids::project_id();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO projects (id, name, created_at) VALUES (?, ?, ?)")
            .bind(&id)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        insert_default_service_account(&mut tx, &id, now).await?;
        tx.commit().await?;
        Ok(Project { id, name: name.to_owned(), created_at: now, archived_at: None })
    }

    async fn default_service_account(&self, project_id: &str) -> StoreResult<Option<ServiceAccount>> {
        let row = sqlx::query(
            "SELECT id, project_id, name, role, created_at FROM service_accounts \
             WHERE project_id = ? AND is_default = 1 AND deleted_at IS NULL",
        )
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(service_account_from_row).transpose()
    }

    async fn insert_key(&self, key: &NewKey) -> StoreResult<KeyRecord> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO api_keys (id, kind, name, project_id, owner_type, owner_id, prefix, state, created_at, expires_at) \
             VALUES (?, ?, ?, ?, 'service_account', ?, ?, 'active', ?, ?)",
        )
        .bind(key.id.as_str())
        .bind(kind_str(key.kind))
        .bind(&key.name)
        .bind(&key.project_id)
        .bind(&key.owner_id)
        .bind(&key.prefix)
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO api_key_secrets (digest, key_id, algorithm, last4, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
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
        let key_id: Option<String> = sqlx::query_scalar("SELECT key_id FROM api_key_secrets WHERE digest = ?")
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
        // Insertion order (rowid) is the list order, as stable as the ids.
        const CURSOR: &str = "(? = '' OR k.rowid > (SELECT rowid FROM api_keys WHERE id = ?))";
        let items = match filter {
            KeyFilter::Project(project_id) => {
                let clause = format!("k.kind = 'project' AND k.project_id = ? AND k.state != 'revoked' AND {CURSOR}");
                self.keys_where(&clause, &[project_id, after, after], Some(q.limit + 1)).await?
            }
            KeyFilter::Admin => {
                let clause = format!("k.kind = 'admin' AND k.state != 'revoked' AND {CURSOR}");
                self.keys_where(&clause, &[after, after], Some(q.limit + 1)).await?
            }
        };
        Ok(page(items, q.limit))
    }

    async fn all_keys(&self) -> StoreResult<Vec<KeyRecord>> {
        self.keys_where("1 = 1", &[], None).await
    }

    async fn revoke_key(&self, id: &PublicId, revocation: &Revocation) -> StoreResult<Option<KeyRecord>> {
        sqlx::query(
            "UPDATE api_keys SET state = 'revoked', revoked_at = ?, revoked_by = ?, revoke_reason = ? \
             WHERE id = ? AND state != 'revoked'",
        )
        .bind(revocation.at)
        .bind(&revocation.by)
        .bind(&revocation.reason)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        self.get_key(id).await
    }

    async fn touch_keys(&self, batch: &[(PublicId, Timestamp)]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        for (id, at) in batch {
            sqlx::query("UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?")
                .bind(at)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn append_audit(&self, event: &AuditEvent) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (id, type, effective_at, project_id, actor_key_id, details) VALUES (?, ?, ?, ?, ?, ?)",
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
}

async fn insert_default_service_account(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    project_id: &str,
    now: Timestamp,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO service_accounts (id, project_id, name, role, is_default, created_at) \
         VALUES (?, ?, 'default', 'member', 1, ?)",
    )
    .bind(crate::ids::service_account_id())
    .bind(project_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
