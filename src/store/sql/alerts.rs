//! Alerts and the state of their webhook deliveries.

use async_trait::async_trait;

use super::*;

/// The columns [`alert_from_row`] reads.
pub(super) const ALERT_COLUMNS: &str =
    "id, at, key_id, project_id, kind, severity, message, details, delivery_id, delivery_status, \
     delivery_attempts, delivery_next_at, delivery_last_at, delivery_last_error, acknowledged_at, acknowledged_by";

pub(super) fn alert_from_row(row: &AnyRow) -> StoreResult<Alert> {
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
        acknowledged: match (row.try_get::<Option<i64>, _>("acknowledged_at")?, row.try_get("acknowledged_by")?) {
            (Some(at), Some(by)) => Some(Acknowledgement { at, by }),
            _ => None,
        },
    })
}

#[async_trait]
impl AlertStore for SqlStore {
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

    async fn list_alerts(
        &self,
        since: Timestamp,
        project_ids: Option<&[String]>,
        q: &PageQuery,
    ) -> StoreResult<Page<Alert>> {
        let projects = match project_ids {
            None => String::new(),
            Some([]) => return Ok(Page { items: Vec::new(), has_more: false }),
            Some(ids) => format!(" AND project_id IN {}", values_list(ids.len(), 1)),
        };
        let sql = self.engine.sql(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE at >= ?{projects} \
             AND (? IS NULL OR rowid < (SELECT rowid FROM alerts WHERE id = ?)) ORDER BY rowid DESC LIMIT ?"
        ));
        let mut query = sqlx::query(&sql).bind(since);
        for id in project_ids.unwrap_or_default() {
            query = query.bind(id);
        }
        let rows = query.bind(&q.after).bind(&q.after).bind(i64::from(q.limit) + 1).fetch_all(&self.pool).await?;
        Ok(page(rows.iter().map(alert_from_row).collect::<StoreResult<Vec<_>>>()?, q.limit))
    }

    async fn get_alert(&self, id: &str) -> StoreResult<Option<Alert>> {
        self.one(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?"), id, alert_from_row).await
    }

    async fn acknowledge_alert(&self, id: &str, by: &Acknowledgement) -> StoreResult<Option<Alert>> {
        sqlx::query(&self.engine.sql(
            "UPDATE alerts SET acknowledged_at = ?, acknowledged_by = ? WHERE id = ? AND acknowledged_at IS NULL",
        ))
        .bind(by.at)
        .bind(&by.by)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.get_alert(id).await
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

    async fn claim_delivery(&self, alert_id: &str, now: Timestamp, hold_until: Timestamp) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(&self.engine.sql(
            "UPDATE alerts SET delivery_attempts = delivery_attempts + 1, delivery_last_at = ?, delivery_next_at = ? \
             WHERE id = ? AND delivery_status = 'pending' AND delivery_next_at <= ? RETURNING delivery_attempts",
        ))
        .bind(now)
        .bind(hold_until)
        .bind(alert_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn finish_delivery(
        &self,
        alert_id: &str,
        claimed_at: Timestamp,
        status: DeliveryStatus,
        next_attempt_at: Option<Timestamp>,
        error: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query(&self.engine.sql(
            "UPDATE alerts SET delivery_status = ?, delivery_next_at = ?, delivery_last_error = ? \
             WHERE id = ? AND delivery_status = 'pending' AND delivery_last_at = ?",
        ))
        .bind(status.as_str())
        .bind(next_attempt_at)
        .bind(error)
        .bind(alert_id)
        .bind(claimed_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn prune_alerts(&self, before: Timestamp) -> StoreResult<u64> {
        Ok(sqlx::query(&self.engine.sql("DELETE FROM alerts WHERE at < ?"))
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
