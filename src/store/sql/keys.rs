//! API keys and their secret versions (digests only), last uses, revocations.

use async_trait::async_trait;

use super::*;

pub(super) const KEY_SELECT: &str = "SELECT k.id, k.kind, k.name, k.project_id, k.owner_type, k.owner_id, k.prefix, k.state, \
     k.permissions, k.scopes, k.models, k.allowed_ips, k.rate_limits, k.budget_nanos, k.budget_alert_percent, k.created_at, k.expires_at, k.last_used_at, k.last_used_ip, k.last_used_user_agent, \
     k.revoked_at, k.revoked_by, k.revoke_reason, \
     sa.id AS sa_id, sa.project_id AS sa_project_id, sa.name AS sa_name, sa.role AS sa_role, sa.created_at AS sa_created_at, \
     u.id AS u_id, u.name AS u_name, u.email AS u_email, u.role AS u_role, u.added_at AS u_added_at \
     FROM api_keys k \
     LEFT JOIN service_accounts sa ON k.owner_type = 'service_account' AND sa.id = k.owner_id \
     LEFT JOIN users u ON k.owner_type = 'user' AND u.id = k.owner_id";

pub(super) fn key_from_row(row: &AnyRow, secrets: Vec<SecretVersion>) -> StoreResult<KeyRecord> {
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

pub(super) fn kind_str(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Project => "project",
        KeyKind::Admin => "admin",
    }
}

#[async_trait]
impl KeyStore for SqlStore {
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
            KeyFilter::Search(search) => {
                let (clause, binds) = search_clause(search);
                let clause = format!("{clause} AND {CURSOR}");
                let mut binds: Vec<&str> = binds.iter().map(String::as_str).collect();
                binds.extend([after, after]);
                self.keys_where(&clause, &binds, limit).await?
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
}

impl SqlStore {
    pub(super) async fn secrets_of(&self, ids: &[String]) -> StoreResult<HashMap<String, Vec<SecretVersion>>> {
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

    pub(super) async fn keys_where(
        &self,
        clause: &str,
        binds: &[&str],
        limit: Option<u32>,
    ) -> StoreResult<Vec<KeyRecord>> {
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

    /// Revokes every live key matching `clause` inside `tx`; returns their ids.
    pub(super) async fn revoke_where(
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

    pub(super) async fn keys_by_ids(&self, ids: &[String]) -> StoreResult<Vec<KeyRecord>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.iter().filter_map(|id| PublicId::parse(id)) {
            out.extend(self.get_key(&id).await?);
        }
        Ok(out)
    }
}

/// The `WHERE` clause of a key search and its values, in order.
fn search_clause(search: &KeySearch) -> (String, Vec<String>) {
    let mut clause = String::from("k.kind = 'project'");
    let mut binds = Vec::new();
    if let Some(text) = search.text.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        // A key's id matches whole; a name matches on any part, without case.
        let escaped = text.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        clause.push_str(" AND (k.id = ? OR LOWER(k.name) LIKE ? ESCAPE '\\')");
        binds.push(text.strip_prefix("key_").unwrap_or(text).to_owned());
        binds.push(format!("%{escaped}%"));
    }
    if let Some(prefix) = &search.prefix {
        clause.push_str(" AND k.prefix = ?");
        binds.push(prefix.clone());
    }
    if let Some(projects) = &search.project_ids {
        if projects.is_empty() {
            clause.push_str(" AND 1 = 0");
        } else {
            clause.push_str(&format!(" AND k.project_id IN {}", values_list(projects.len(), 1)));
            binds.extend(projects.iter().cloned());
        }
    }
    let now = search.now;
    clause.push_str(&match search.status {
        None => " AND k.state != 'revoked'".to_owned(),
        Some(KeyStatus::Active) => {
            format!(" AND k.state = 'active' AND (k.expires_at IS NULL OR k.expires_at > {now})")
        }
        Some(KeyStatus::Suspended) => " AND k.state = 'suspended'".to_owned(),
        Some(KeyStatus::Revoked) => " AND k.state = 'revoked'".to_owned(),
        Some(KeyStatus::Expired) => format!(" AND k.state != 'revoked' AND k.expires_at <= {now}"),
    });
    (clause, binds)
}
