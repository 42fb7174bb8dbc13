//! Refused requests, kept for `keygate explain`.

use async_trait::async_trait;

use super::*;

#[async_trait]
impl DenialStore for SqlStore {
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

    async fn denial_counts(
        &self,
        start: Timestamp,
        end: Timestamp,
        project_ids: Option<&[String]>,
    ) -> StoreResult<Vec<(String, i64)>> {
        let (projects, ids) = project_clause(project_ids);
        let sql = self.engine.sql(format!(
            "SELECT reason, COUNT(*) AS n FROM denials WHERE at >= ? AND at < ?{projects} GROUP BY reason ORDER BY n DESC, reason"
        ));
        let mut query = sqlx::query(&sql).bind(start).bind(end);
        for id in ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get("reason")?, r.try_get("n")?))).collect()
    }

    async fn denial_series(
        &self,
        start: Timestamp,
        end: Timestamp,
        bucket_seconds: i64,
        project_ids: Option<&[String]>,
    ) -> StoreResult<Vec<(Timestamp, i64)>> {
        let (projects, ids) = project_clause(project_ids);
        let bucket = bucket_seconds.max(1);
        let sql = self.engine.sql(format!(
            "SELECT (at - ((at - {start}) % {bucket})) AS bucket, COUNT(*) AS n FROM denials \
             WHERE at >= ? AND at < ?{projects} GROUP BY bucket ORDER BY bucket"
        ));
        let mut query = sqlx::query(&sql).bind(start).bind(end);
        for id in ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get("bucket")?, r.try_get("n")?))).collect()
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
}

/// ` AND project_id IN (...)` and its values; a member with no project matches nothing.
fn project_clause(project_ids: Option<&[String]>) -> (String, &[String]) {
    match project_ids {
        None => (String::new(), &[]),
        Some([]) => (" AND 1 = 0".to_owned(), &[]),
        Some(ids) => (format!(" AND project_id IN {}", values_list(ids.len(), 1)), ids),
    }
}
