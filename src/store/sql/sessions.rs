//! Dashboard sessions and single sign-ons in progress.

use async_trait::async_trait;

use super::*;

const SESSION_SELECT: &str = "SELECT token_hash, user_id, admin_key_id, created_at, last_seen_at, expires_at, \
     client_ip, user_agent FROM dashboard_sessions";

fn session_from_row(row: &AnyRow) -> StoreResult<SessionRecord> {
    let user: Option<String> = row.try_get("user_id")?;
    let key: Option<String> = row.try_get("admin_key_id")?;
    let holder = match (user, key.as_deref().and_then(PublicId::parse)) {
        (Some(user), None) => SessionHolder::User(user),
        (None, Some(key)) => SessionHolder::AdminKey(key),
        _ => return Err(StoreError::Corrupt("a dashboard session with no single holder".into())),
    };
    Ok(SessionRecord {
        token_hash: row.try_get("token_hash")?,
        holder,
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        expires_at: row.try_get("expires_at")?,
        client_ip: row.try_get("client_ip")?,
        user_agent: row.try_get("user_agent")?,
    })
}

fn holder_columns(holder: &SessionHolder) -> (Option<&str>, Option<&str>) {
    match holder {
        SessionHolder::User(id) => (Some(id.as_str()), None),
        SessionHolder::AdminKey(id) => (None, Some(id.as_str())),
    }
}

#[async_trait]
impl SessionStore for SqlStore {
    async fn insert_session(&self, s: &SessionRecord) -> StoreResult<()> {
        let (user, key) = holder_columns(&s.holder);
        sqlx::query(&self.engine.sql(
            "INSERT INTO dashboard_sessions (token_hash, user_id, admin_key_id, created_at, last_seen_at, expires_at, \
             client_ip, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(&s.token_hash)
        .bind(user)
        .bind(key)
        .bind(s.created_at)
        .bind(s.last_seen_at)
        .bind(s.expires_at)
        .bind(&s.client_ip)
        .bind(&s.user_agent)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_session(&self, token_hash: &str) -> StoreResult<Option<SessionRecord>> {
        self.one(&format!("{SESSION_SELECT} WHERE token_hash = ?"), token_hash, session_from_row).await
    }

    async fn touch_session(&self, token_hash: &str, at: Timestamp) -> StoreResult<()> {
        sqlx::query(
            &self
                .engine
                .sql("UPDATE dashboard_sessions SET last_seen_at = ? WHERE token_hash = ? AND last_seen_at < ?"),
        )
        .bind(at)
        .bind(token_hash)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        sqlx::query(&self.engine.sql("DELETE FROM dashboard_sessions WHERE token_hash = ?"))
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_sessions_of(&self, holder: &SessionHolder) -> StoreResult<u64> {
        let (column, id) = match holder {
            SessionHolder::User(id) => ("user_id", id.as_str()),
            SessionHolder::AdminKey(id) => ("admin_key_id", id.as_str()),
        };
        let sql = format!("DELETE FROM dashboard_sessions WHERE {column} = ?");
        Ok(sqlx::query(&self.engine.sql(sql)).bind(id).execute(&self.pool).await?.rows_affected())
    }

    async fn insert_sso_login(&self, l: &SsoLogin) -> StoreResult<()> {
        sqlx::query(&self.engine.sql(
            "INSERT INTO sso_logins (login_hash, state, verifier, nonce, next_path, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        ))
        .bind(&l.login_hash)
        .bind(&l.state)
        .bind(&l.verifier)
        .bind(&l.nonce)
        .bind(&l.next_path)
        .bind(l.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_sso_login(&self, login_hash: &str) -> StoreResult<Option<SsoLogin>> {
        // Read first, outside any write: a callback with a made-up login
        // costs no write lock.
        let row = sqlx::query(&self.engine.sql(
            "SELECT login_hash, state, verifier, nonce, next_path, created_at FROM sso_logins WHERE login_hash = ?",
        ))
        .bind(login_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        // Whoever deletes it takes it: a second callback with the same login
        // finds nothing, on any replica.
        let deleted = sqlx::query(&self.engine.sql("DELETE FROM sso_logins WHERE login_hash = ?"))
            .bind(login_hash)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Ok(None);
        }
        Ok(Some(SsoLogin {
            login_hash: row.try_get("login_hash")?,
            state: row.try_get("state")?,
            verifier: row.try_get("verifier")?,
            nonce: row.try_get("nonce")?,
            next_path: row.try_get("next_path")?,
            created_at: row.try_get("created_at")?,
        }))
    }

    async fn prune_sessions(
        &self,
        now: Timestamp,
        idle_before: Timestamp,
        logins_before: Timestamp,
    ) -> StoreResult<u64> {
        let sessions =
            sqlx::query(&self.engine.sql("DELETE FROM dashboard_sessions WHERE expires_at <= ? OR last_seen_at < ?"))
                .bind(now)
                .bind(idle_before)
                .execute(&self.pool)
                .await?
                .rows_affected();
        let logins = sqlx::query(&self.engine.sql("DELETE FROM sso_logins WHERE created_at < ?"))
            .bind(logins_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(sessions + logins)
    }
}
