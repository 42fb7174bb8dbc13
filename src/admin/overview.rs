//! `GET /v1/organization/overview` (ours): the dashboard's first page in one
//! answer: requests, failures and refusals over a range (with a series to
//! chart), refusals by cause, the busiest keys, open alerts and budget burn.
//! A member sees their projects' figures only.

use axum::extract::{RawQuery, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::dialect::{ApiError, ErrorResponse};
use crate::ids::PublicId;
use crate::limits::month_start;
use crate::session::Principal;
use crate::state::AppState;
use crate::store::{PageQuery, UsageGroup, UsageQuery, UsageRow};
use crate::time::Timestamp;

const TOP_KEYS: usize = 10;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Params {
    start_time: Option<String>,
    end_time: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Reason {
    reason: String,
    count: i64,
}

#[derive(Serialize, ToSchema)]
pub struct TopKey {
    api_key_id: String,
    name: Option<String>,
    project_id: Option<String>,
    requests: i64,
    failed_requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
}

#[derive(Serialize, ToSchema)]
pub struct BudgetBurn {
    /// `key` or `project`.
    scope: &'static str,
    id: String,
    name: String,
    project_id: Option<String>,
    monthly_budget_usd: f64,
    /// Spent this calendar month (UTC).
    spent_usd: f64,
    percent: f64,
}

#[derive(Serialize, ToSchema)]
pub struct Point {
    start_time: Timestamp,
    requests: i64,
    failed_requests: i64,
    denied_requests: i64,
}

/// `organization.overview`.
#[derive(Serialize, ToSchema)]
pub struct Overview {
    object: &'static str,
    start_time: Timestamp,
    end_time: Timestamp,
    /// Requests the upstream answered with success.
    requests: i64,
    /// Forwarded requests the upstream failed or refused.
    failed_requests: i64,
    /// Requests keygate refused (keys, scopes, limits, budgets).
    denied_requests: i64,
    denials_by_reason: Vec<Reason>,
    top_keys: Vec<TopKey>,
    /// Alerts raised in the range and not yet acknowledged.
    active_alerts: i64,
    budgets: Vec<BudgetBurn>,
    bucket_width_seconds: i64,
    series: Vec<Point>,
}

#[utoipa::path(
    get,
    path = "/v1/organization/overview",
    operation_id = "organization-overview",
    summary = "Overview",
    tag = "keygate",
    description = "Ours: requests, failures and refusals over a range (default: the last 24 hours) with a series, refusals by cause, the ten busiest keys, unacknowledged alerts and this month's budget burn.",
    params(("start_time" = Option<i64>, Query), ("end_time" = Option<i64>, Query)),
    responses((status = 200, body = Overview), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse))
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Overview>, ApiError> {
    let params: Params = super::query(raw.as_deref())?;
    let now = state.clock.now();
    let end = match &params.end_time {
        Some(v) => super::usage::timestamp("end_time", v)?,
        None => now + 1,
    };
    let start = match &params.start_time {
        Some(v) => super::usage::timestamp("start_time", v)?,
        None => end - 86_400,
    };
    if start >= end || end - start > 400 * 86_400 {
        return Err(super::bad("The range must end after it starts and span at most 400 days.", "start_time"));
    }
    let width = if end - start <= 2 * 86_400 { 3_600 } else { 86_400 };
    let projects = actor.project_filter();
    let usage = |start: Timestamp, end: Timestamp, bucket: i64, group_by: Vec<UsageGroup>| UsageQuery {
        kind: None,
        start,
        end,
        bucket_seconds: bucket,
        group_by,
        project_ids: projects.map(<[String]>::to_vec).unwrap_or_default(),
        key_ids: Vec::new(),
        models: Vec::new(),
        prefixes: Vec::new(),
    };
    let member_of_none = projects.is_some_and(<[String]>::is_empty);
    let query = |q: UsageQuery| {
        let state = state.clone();
        async move {
            if member_of_none {
                return Ok::<_, ApiError>(Vec::new());
            }
            Ok(state.store.query_usage(&q).await?)
        }
    };
    let series_rows = query(usage(start, end, width, Vec::new())).await?;
    let by_key = query(usage(start, end, end - start, vec![UsageGroup::ApiKey])).await?;
    let denials = state.store.denial_counts(start, end, projects).await?;
    let denial_series = state.store.denial_series(start, end, width, projects).await?;

    let mut series: Vec<Point> = (0..(end - start + width - 1) / width)
        .map(|i| Point { start_time: start + i * width, requests: 0, failed_requests: 0, denied_requests: 0 })
        .collect();
    let slot = |at: Timestamp| usize::try_from((at - start) / width).ok();
    for row in &series_rows {
        if let Some(point) = slot(row.bucket_start).and_then(|i| series.get_mut(i)) {
            point.requests += row.requests;
            point.failed_requests += row.failed_requests;
        }
    }
    for (at, count) in &denial_series {
        if let Some(point) = slot(*at).and_then(|i| series.get_mut(i)) {
            point.denied_requests += count;
        }
    }

    let mut top: Vec<&UsageRow> = by_key.iter().collect();
    top.sort_by_key(|row| std::cmp::Reverse(row.requests + row.failed_requests));
    let top_keys = top
        .into_iter()
        .take(TOP_KEYS)
        .map(|row| {
            let key = row.key_id.as_deref().and_then(PublicId::parse).and_then(|id| state.index.by_id(&id));
            TopKey {
                api_key_id: row.key_id.as_deref().map(|id| format!("key_{id}")).unwrap_or_default(),
                name: key.as_ref().map(|k| k.name.to_string()),
                project_id: key.as_ref().and_then(|k| k.project_id().map(str::to_owned)),
                requests: row.requests,
                failed_requests: row.failed_requests,
                input_tokens: row.tokens.input,
                output_tokens: row.tokens.output,
                cost_usd: row.cost_nanos as f64 / 1e9,
            }
        })
        .collect();

    let alerts = if member_of_none {
        Vec::new()
    } else {
        state.store.list_alerts(start, projects, &PageQuery { after: None, limit: 100 }).await?.items
    };
    let active_alerts = alerts.iter().filter(|a| a.acknowledged.is_none()).count() as i64;

    Ok(Json(Overview {
        object: "organization.overview",
        start_time: start,
        end_time: end,
        requests: series.iter().map(|p| p.requests).sum(),
        failed_requests: series.iter().map(|p| p.failed_requests).sum(),
        denied_requests: denials.iter().map(|(_, n)| n).sum(),
        denials_by_reason: denials.into_iter().map(|(reason, count)| Reason { reason, count }).collect(),
        top_keys,
        active_alerts,
        budgets: budgets(&state, &actor, now, member_of_none).await?,
        bucket_width_seconds: width,
        series,
    }))
}

/// This month's spend against each budget that has any, most burnt first:
/// projects with a budget, and keys with a budget that spent this month.
async fn budgets(
    state: &AppState,
    actor: &Principal,
    now: Timestamp,
    member_of_none: bool,
) -> Result<Vec<BudgetBurn>, ApiError> {
    if member_of_none {
        return Ok(Vec::new());
    }
    let month = month_start(now);
    let spend = |group: UsageGroup| UsageQuery {
        kind: None,
        start: month,
        end: now + 60,
        bucket_seconds: now + 60 - month,
        group_by: vec![group],
        project_ids: actor.project_filter().map(<[String]>::to_vec).unwrap_or_default(),
        key_ids: Vec::new(),
        models: Vec::new(),
        prefixes: Vec::new(),
    };
    let usd = |nanos: i64| nanos as f64 / 1e9;
    let burn = |scope, id: String, name: String, project_id, budget: crate::policy::Budget, spent: i64| BudgetBurn {
        scope,
        id,
        name,
        project_id,
        monthly_budget_usd: usd(budget.monthly_nanos),
        spent_usd: usd(spent),
        percent: if budget.monthly_nanos > 0 { spent as f64 * 100.0 / budget.monthly_nanos as f64 } else { 100.0 },
    };
    let mut out = Vec::new();
    let by_project = state.store.query_usage(&spend(UsageGroup::Project)).await?;
    for project in state.store.all_projects().await? {
        let Some(budget) = project.budget else { continue };
        if !actor.sees_project(&project.id) || project.archived_at.is_some() {
            continue;
        }
        let spent =
            by_project.iter().filter(|r| r.project_id.as_deref() == Some(&project.id)).map(|r| r.cost_nanos).sum();
        out.push(burn("project", project.id.clone(), project.name, Some(project.id), budget, spent));
    }
    for row in state.store.query_usage(&spend(UsageGroup::ApiKey)).await? {
        let Some(key) = row.key_id.as_deref().and_then(PublicId::parse).and_then(|id| state.index.by_id(&id)) else {
            continue;
        };
        let Some(budget) = key.policy.budget else { continue };
        out.push(burn(
            "key",
            key.id.api_id(),
            key.name.to_string(),
            key.project_id().map(str::to_owned),
            budget,
            row.cost_nanos,
        ));
    }
    out.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    Ok(out)
}
