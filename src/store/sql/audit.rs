//! The audit log: append-only for writers, bounded by the retention policy.

use async_trait::async_trait;

use super::*;

#[async_trait]
impl AuditStore for SqlStore {
    async fn append_audit(&self, event: &AuditEvent) -> StoreResult<()> {
        sqlx::query(
            &self.engine.sql("INSERT INTO audit_log (id, type, effective_at, project_id, actor_key_id, actor_user_id, actor_ip, details) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
        )
        .bind(&event.id)
        .bind(event.kind)
        .bind(event.effective_at)
        .bind(&event.project_id)
        .bind(event.actor_key_id.as_ref().map(PublicId::as_str))
        .bind(&event.actor_user_id)
        .bind(&event.actor_ip)
        .bind(event.details.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_audit(&self, f: &AuditFilter) -> StoreResult<Page<AuditRecord>> {
        let mut sql = String::from(
            "SELECT a.id, a.type, a.effective_at, a.project_id, p.name AS project_name, a.actor_key_id, a.actor_user_id, a.actor_ip, a.details \
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
        if !f.actor_ids.is_empty() {
            let list = values_list(f.actor_ids.len(), 1);
            sql.push_str(&format!(" AND (('key_' || a.actor_key_id) IN {list} OR a.actor_user_id IN {list})"));
            binds.extend(f.actor_ids.iter().cloned());
            binds.extend(f.actor_ids.iter().cloned());
        }
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
            let actor_user = match row.try_get::<Option<String>, _>("actor_user_id")? {
                Some(id) => Some(self.get_user(&id).await?.ok_or(id)),
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
                actor_user,
                actor_ip: row.try_get("actor_ip")?,
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
