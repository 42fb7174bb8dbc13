//! Usage records, their per-minute rollups, and the client networks seen per key.

use async_trait::async_trait;

use super::*;

#[async_trait]
impl UsageStore for SqlStore {
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
}
