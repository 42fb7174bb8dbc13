//! Leases and positions of the cluster-wide periodic jobs (the usage watcher).

use async_trait::async_trait;

use super::*;

#[async_trait]
impl JobStore for SqlStore {
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
}
