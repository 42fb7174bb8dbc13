//! The Usage API (`/v1/organization/usage/completions`, `/usage/embeddings`),
//! the Costs API (`/v1/organization/costs`) in OpenAI's `page` shape, and the
//! alerts list (ours), all answered from the per-minute rollups.

use std::collections::HashMap;

use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::objects::List;
use super::{bad, ListParams};
use crate::dialect::{ApiError, ErrorResponse};
use crate::session::Principal;
use crate::state::AppState;
use crate::store::{Acknowledgement, Alert, Tokens, UsageGroup, UsageKind, UsageQuery, UsageRow};
use crate::time::Timestamp;
use crate::usage::{alert_json, delivery_json};

/// OpenAI's `page` envelope of time buckets.
#[derive(Serialize, ToSchema)]
pub struct UsagePage {
    /// Always `page`.
    object: &'static str,
    #[schema(value_type = Vec<Object>)]
    data: Vec<Value>,
    has_more: bool,
    next_page: Option<String>,
}

struct Params {
    start: Timestamp,
    end: Option<Timestamp>,
    width: i64,
    limit: i64,
    page: Option<Timestamp>,
    group_by: Vec<UsageGroup>,
    project_ids: Vec<String>,
    key_ids: Vec<String>,
    models: Vec<String>,
    prefixes: Vec<String>,
}

/// Unix seconds between 1970 and 9999 (larger values would overflow bucket arithmetic).
pub(super) fn timestamp(name: &str, value: &str) -> Result<Timestamp, ApiError> {
    value
        .parse::<Timestamp>()
        .ok()
        .filter(|t| (0..=253_402_300_799).contains(t))
        .ok_or_else(|| bad(format!("Invalid '{name}': `{value}` is not a unix timestamp."), name_param(name)))
}

fn name_param(name: &str) -> &'static str {
    if name.starts_with("end") {
        "end_time"
    } else if name.starts_with("effective") {
        "effective_at"
    } else {
        "start_time"
    }
}

fn parse(raw: Option<&str>, costs: bool) -> Result<Params, ApiError> {
    let mut start = None;
    let mut p = Params {
        start: 0,
        end: None,
        width: 86_400,
        limit: 0,
        page: None,
        group_by: Vec::new(),
        project_ids: Vec::new(),
        key_ids: Vec::new(),
        models: Vec::new(),
        prefixes: Vec::new(),
    };
    let mut limit = None;
    let int = |name: &str, v: &str| {
        v.parse::<i64>().map_err(|_| bad(format!("Invalid '{name}': `{v}` is not an integer."), "query"))
    };
    for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let key = name.trim_end_matches("[]");
        let value = value.into_owned();
        match key {
            "start_time" => start = Some(timestamp(key, &value)?),
            "end_time" => p.end = Some(timestamp(key, &value)?),
            "bucket_width" => {
                p.width = match (value.as_str(), costs) {
                    ("1d", _) => 86_400,
                    ("1h", false) => 3_600,
                    ("1m", false) => 60,
                    _ => return Err(bad(format!("Invalid 'bucket_width': `{value}`."), "bucket_width")),
                }
            }
            "limit" => limit = Some(int(key, &value)?),
            "page" => {
                let at = value.strip_prefix("page_").and_then(|t| t.parse().ok());
                p.page = Some(at.ok_or_else(|| bad(format!("Invalid 'page': `{value}`."), "page"))?);
            }
            "group_by" => {
                for g in value.split(',') {
                    p.group_by.push(match g {
                        "project_id" => UsageGroup::Project,
                        "api_key_id" => UsageGroup::ApiKey,
                        "model" | "line_item" => UsageGroup::Model,
                        "prefix" => UsageGroup::Prefix,
                        // OpenAI's other dimensions carry no data here; grouping by them is a no-op.
                        "user_id" | "batch" | "service_tier" => continue,
                        other => return Err(bad(format!("Invalid 'group_by': `{other}`."), "group_by")),
                    });
                }
            }
            "project_ids" => p.project_ids.push(value),
            "api_key_ids" => p.key_ids.push(value),
            "models" => p.models.push(value),
            "prefixes" => p.prefixes.push(value),
            "user_ids" | "batch" => {}
            other => return Err(bad(format!("Unknown query parameter '{other}'."), "query")),
        }
    }
    p.start = start.ok_or_else(|| bad("Missing required parameter: 'start_time'.", "start_time"))?;
    let (default, max) = match (p.width, costs) {
        (_, true) => (7, 180),
        (86_400, _) => (7, 31),
        (3_600, _) => (24, 168),
        _ => (60, 1440),
    };
    p.limit = limit.unwrap_or(default);
    if !(1..=max).contains(&p.limit) {
        return Err(bad(format!("Invalid 'limit': {}. Expected a value between 1 and {max}.", p.limit), "limit"));
    }
    if p.end.is_some_and(|end| end <= p.start) {
        return Err(bad("'end_time' must be after 'start_time'.", "end_time"));
    }
    Ok(p)
}

/// Buckets `[from, from + width)` up to `limit` of them, before `end`.
async fn buckets(
    state: &AppState,
    actor: &Principal,
    p: &Params,
    kind: Option<UsageKind>,
    result: impl Fn(&UsageRow) -> Value,
) -> Result<UsagePage, ApiError> {
    // Without an end, "now" includes the current second.
    let end = p.end.unwrap_or_else(|| state.clock.now() + 1);
    let from = p.page.unwrap_or(p.start).max(p.start);
    let count = ((end - from + p.width - 1) / p.width).clamp(0, p.limit);
    let until = (from + count * p.width).min(end);
    let rows = match super::visible_projects(actor, &p.project_ids)? {
        // A member of no project has no usage to see.
        Some(projects) if projects.is_empty() => Vec::new(),
        projects => {
            state
                .store
                .query_usage(&UsageQuery {
                    kind,
                    start: from,
                    end: until,
                    bucket_seconds: p.width,
                    group_by: p.group_by.clone(),
                    project_ids: projects.unwrap_or_default(),
                    key_ids: p.key_ids.clone(),
                    models: p.models.clone(),
                    prefixes: p.prefixes.clone(),
                })
                .await?
        }
    };
    let mut by_bucket: HashMap<Timestamp, Vec<Value>> = HashMap::new();
    // A group whose every call failed served no model request: OpenAI lists
    // no result for it.
    for row in rows.iter().filter(|r| r.requests > 0 || r.cost_nanos != 0 || r.tokens != Tokens::default()) {
        by_bucket.entry(row.bucket_start).or_default().push(result(row));
    }
    let data = (0..count)
        .map(|i| {
            let start = from + i * p.width;
            json!({
                "object": "bucket",
                "start_time": start,
                // Always the full width, as OpenAI reports buckets, even
                // the last one, which is counted only up to `end`.
                "end_time": start + p.width,
                "results": by_bucket.remove(&start).unwrap_or_default(),
            })
        })
        .collect();
    let has_more = from + count * p.width < end;
    Ok(UsagePage {
        object: "page",
        data,
        has_more,
        next_page: has_more.then(|| format!("page_{}", from + count * p.width)),
    })
}

fn key_id(row: &UsageRow) -> Option<String> {
    row.key_id.as_ref().map(|id| format!("key_{id}"))
}

fn model(row: &UsageRow) -> Option<String> {
    row.model.clone().filter(|m| !m.is_empty())
}

#[utoipa::path(
    get,
    path = "/v1/organization/usage/completions",
    operation_id = "usage-completions",
    summary = "Completions usage",
    tag = "usage",
    params(
        ("start_time" = i64, Query), ("end_time" = Option<i64>, Query), ("bucket_width" = Option<String>, Query, description = "1m, 1h or 1d"),
        ("group_by" = Option<Vec<String>>, Query, description = "project_id, api_key_id, model, prefix (ours)"),
        ("project_ids" = Option<Vec<String>>, Query), ("api_key_ids" = Option<Vec<String>>, Query),
        ("models" = Option<Vec<String>>, Query), ("prefixes" = Option<Vec<String>>, Query, description = "Ours"),
        ("limit" = Option<i64>, Query), ("page" = Option<String>, Query),
    ),
    responses((status = 200, body = UsagePage), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse))
)]
pub async fn completions(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Json<UsagePage>, ApiError> {
    let p = parse(raw.as_deref(), false)?;
    let page = buckets(&state, &actor, &p, Some(UsageKind::Completions), |r| {
        json!({
            "object": "organization.usage.completions.result",
            "input_tokens": r.tokens.input,
            "input_cached_tokens": r.tokens.cached,
            "output_tokens": r.tokens.output,
            "input_audio_tokens": 0,
            "output_audio_tokens": 0,
            "num_model_requests": r.requests,
            "project_id": r.project_id,
            "user_id": null,
            "api_key_id": key_id(r),
            "model": model(r),
            "batch": null,
            "service_tier": null,
            "prefix": r.prefix,
            "output_reasoning_tokens": r.tokens.reasoning,
        })
    })
    .await?;
    Ok(Json(page))
}

#[utoipa::path(
    get,
    path = "/v1/organization/usage/embeddings",
    operation_id = "usage-embeddings",
    summary = "Embeddings usage",
    tag = "usage",
    params(
        ("start_time" = i64, Query), ("end_time" = Option<i64>, Query), ("bucket_width" = Option<String>, Query),
        ("group_by" = Option<Vec<String>>, Query), ("project_ids" = Option<Vec<String>>, Query),
        ("api_key_ids" = Option<Vec<String>>, Query), ("models" = Option<Vec<String>>, Query),
        ("prefixes" = Option<Vec<String>>, Query), ("limit" = Option<i64>, Query), ("page" = Option<String>, Query),
    ),
    responses((status = 200, body = UsagePage), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse))
)]
pub async fn embeddings(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Json<UsagePage>, ApiError> {
    let p = parse(raw.as_deref(), false)?;
    let page = buckets(&state, &actor, &p, Some(UsageKind::Embeddings), |r| {
        json!({
            "object": "organization.usage.embeddings.result",
            "input_tokens": r.tokens.input,
            "num_model_requests": r.requests,
            "project_id": r.project_id,
            "user_id": null,
            "api_key_id": key_id(r),
            "model": model(r),
            "prefix": r.prefix,
        })
    })
    .await?;
    Ok(Json(page))
}

#[utoipa::path(
    get,
    path = "/v1/organization/costs",
    operation_id = "usage-costs",
    summary = "Costs",
    tag = "usage",
    params(
        ("start_time" = i64, Query), ("end_time" = Option<i64>, Query), ("bucket_width" = Option<String>, Query, description = "1d"),
        ("group_by" = Option<Vec<String>>, Query, description = "project_id, line_item, api_key_id, prefix (ours)"),
        ("project_ids" = Option<Vec<String>>, Query), ("api_key_ids" = Option<Vec<String>>, Query),
        ("limit" = Option<i64>, Query), ("page" = Option<String>, Query),
    ),
    responses((status = 200, body = UsagePage), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse))
)]
pub async fn costs(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Json<UsagePage>, ApiError> {
    let p = parse(raw.as_deref(), true)?;
    let page = buckets(&state, &actor, &p, None, |r| {
        json!({
            "object": "organization.costs.result",
            // Display only: the sums are kept in integer nano-dollars.
            "amount": {"value": r.cost_nanos as f64 / 1e9, "currency": "usd"},
            "line_item": model(r),
            "project_id": r.project_id,
            "api_key_id": key_id(r),
            "prefix": r.prefix,
            "amount_nanos": r.cost_nanos,
        })
    })
    .await?;
    Ok(Json(page))
}

/// A usage alert (ours).
#[derive(Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct AlertObject(Value);

#[utoipa::path(
    get,
    path = "/v1/organization/alerts",
    operation_id = "list-alerts",
    summary = "List usage alerts",
    tag = "usage",
    description = "Ours: alerts (usage spikes, new client networks, dormant keys, leaked keys, budget thresholds), newest first. `delivery` is the state of the alert's webhook delivery (`pending`, `delivered` or `failed`, with attempts and the last error), or null when no webhook was configured when it was raised.",
    params(("since" = Option<i64>, Query), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = List<AlertObject>), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse))
)]
pub async fn alerts(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Json<List<AlertObject>>, ApiError> {
    #[derive(serde::Deserialize)]
    struct AlertParams {
        since: Option<Timestamp>,
        after: Option<String>,
        limit: Option<u32>,
    }
    let params: AlertParams = super::query(raw.as_deref())?;
    let page = ListParams { after: params.after, limit: params.limit, include_archived: false }.page()?;
    let alerts = state.store.list_alerts(params.since.unwrap_or(0), actor.project_filter(), &page).await?;
    Ok(Json(List::new(alerts, |a| a.id.clone(), |a| alert_object(&state, a))))
}

fn alert_object(state: &AppState, alert: &Alert) -> AlertObject {
    let name = state.index.by_id(&alert.key_id).map(|k| k.name.to_string());
    let mut object = alert_json(alert, name.as_deref());
    object["delivery"] = alert.delivery.as_ref().map_or(Value::Null, delivery_json);
    object["acknowledged_at"] = json!(alert.acknowledged.as_ref().map(|a| a.at));
    object["acknowledged_by"] = json!(alert.acknowledged.as_ref().map(|a| &a.by));
    AlertObject(object)
}

#[utoipa::path(
    post,
    path = "/v1/organization/alerts/{alert_id}/acknowledge",
    operation_id = "acknowledge-alert",
    summary = "Acknowledge a usage alert",
    tag = "usage",
    description = "Ours: marks the alert as seen, by whom and when (the first acknowledgement stays). The key is left as it is: suspend it with its own route.",
    params(("alert_id" = String, Path)),
    responses((status = 200, body = AlertObject), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn acknowledge(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(alert_id): Path<String>,
) -> Result<Json<AlertObject>, ApiError> {
    let not_found = || ApiError::NotFound { message: format!("No such alert: {alert_id}.") };
    let alert = state.store.get_alert(&alert_id).await?.ok_or_else(not_found)?;
    // A member acknowledges only their projects' alerts.
    if actor.project_filter().is_some() && !alert.project_id.as_deref().is_some_and(|p| actor.sees_project(p)) {
        return Err(not_found());
    }
    let by = Acknowledgement { at: state.clock.now(), by: actor.name() };
    let alert = state.store.acknowledge_alert(&alert_id, &by).await?.ok_or_else(not_found)?;
    super::audit(&state, &actor, "alert.acknowledged", alert.project_id.as_deref(), json!({"id": alert.id})).await;
    Ok(Json(alert_object(&state, &alert)))
}
