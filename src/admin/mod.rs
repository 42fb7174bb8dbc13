//! The Administration API under `/v1/organization`, in OpenAI's shapes
//! (`shared/spec/openai-wire.md` §4) plus documented extensions, and the
//! library functions the CLI and bootstrap share.
//!
//! Owns: admin handlers, API objects, key issuance and revocation, audit
//! events for each action. Authentication (admin keys only) is applied by the
//! server around these routes; every change reaches the key index before the
//! answer is sent. One route here takes no key at all: the leaked-key report
//! (`leaks`), which the server mounts apart, among the public routes.

mod admin_keys;
mod audit_logs;
mod bootstrap;
mod declared;
mod key_import;
mod keys;
mod leaks;
mod objects;
mod overview;
mod project_users;
mod projects;
mod requests;
mod service_accounts;
mod upstreams;
mod usage;
mod users;

use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::dialect::ApiError;
use crate::session::Principal;
use crate::state::AppState;
use crate::store::{AuditEvent, PageQuery};

pub use bootstrap::bootstrap_admin_key;
pub use declared::{apply_declared, reload, Applied};
pub use leaks::LeakApi;
pub use projects::not_found as project_not_found;

/// The Administration API's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    projects::list,
    projects::create,
    projects::get,
    projects::update,
    projects::archive,
    projects::rate_limits,
    projects::update_rate_limit,
    keys::list,
    keys::create,
    keys::get,
    keys::update,
    keys::delete,
    keys::rotate,
    keys::suspend,
    keys::resume,
    service_accounts::list,
    service_accounts::create,
    service_accounts::get,
    service_accounts::delete,
    users::list,
    users::create,
    users::get,
    users::update,
    users::delete,
    project_users::list,
    project_users::create,
    project_users::get,
    project_users::update,
    project_users::delete,
    keys::search,
    overview::get,
    upstreams::list,
    declared::reload_route,
    key_import::import,
    admin_keys::list,
    admin_keys::create,
    admin_keys::get,
    admin_keys::delete,
    audit_logs::list,
    requests::get,
    usage::completions,
    usage::embeddings,
    usage::costs,
    usage::alerts,
    usage::acknowledge,
))]
pub struct AdminApi;

/// The largest Administration API request body (imports of many keys included).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/organization/projects", get(projects::list).post(projects::create))
        .route("/v1/organization/projects/{project_id}", get(projects::get).post(projects::update))
        .route("/v1/organization/projects/{project_id}/archive", post(projects::archive))
        .route("/v1/organization/projects/{project_id}/rate_limits", get(projects::rate_limits))
        .route("/v1/organization/projects/{project_id}/rate_limits/{rate_limit_id}", post(projects::update_rate_limit))
        .route("/v1/organization/projects/{project_id}/api_keys", get(keys::list).post(keys::create))
        .route(
            "/v1/organization/projects/{project_id}/api_keys/{key_id}",
            get(keys::get).post(keys::update).delete(keys::delete),
        )
        .route("/v1/organization/projects/{project_id}/api_keys/import", post(key_import::import))
        .route("/v1/organization/projects/{project_id}/api_keys/{key_id}/rotate", post(keys::rotate))
        .route("/v1/organization/projects/{project_id}/api_keys/{key_id}/suspend", post(keys::suspend))
        .route("/v1/organization/projects/{project_id}/api_keys/{key_id}/resume", post(keys::resume))
        .route("/v1/organization/audit_logs", get(audit_logs::list))
        .route("/v1/organization/requests/{request_id}", get(requests::get))
        .route("/v1/organization/usage/completions", get(usage::completions))
        .route("/v1/organization/usage/embeddings", get(usage::embeddings))
        .route("/v1/organization/costs", get(usage::costs))
        .route("/v1/organization/alerts", get(usage::alerts))
        .route("/v1/organization/alerts/{alert_id}/acknowledge", post(usage::acknowledge))
        .route(
            "/v1/organization/projects/{project_id}/service_accounts",
            get(service_accounts::list).post(service_accounts::create),
        )
        .route(
            "/v1/organization/projects/{project_id}/service_accounts/{sa_id}",
            get(service_accounts::get).delete(service_accounts::delete),
        )
        .route("/v1/organization/projects/{project_id}/users", get(project_users::list).post(project_users::create))
        .route(
            "/v1/organization/projects/{project_id}/users/{user_id}",
            get(project_users::get).post(project_users::update).delete(project_users::delete),
        )
        .route("/v1/organization/api_keys", get(keys::search))
        .route("/v1/organization/overview", get(overview::get))
        .route("/v1/keygate/upstreams", get(upstreams::list))
        .route("/v1/keygate/reload", post(declared::reload_route))
        .route("/v1/organization/users", get(users::list).post(users::create))
        .route("/v1/organization/users/{user_id}", get(users::get).post(users::update).delete(users::delete))
        .route("/v1/organization/admin_api_keys", get(admin_keys::list).post(admin_keys::create))
        .route("/v1/organization/admin_api_keys/{key_id}", get(admin_keys::get).delete(admin_keys::delete))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(openai_shaped))
}

/// `POST /v1/keys/leaked`, public (no key): the server mounts it outside the
/// admin-key layer. Every other method on the path is refused here, so none
/// falls through to the data plane.
pub fn leak_report_routes() -> Router<AppState> {
    Router::new().route("/v1/keys/leaked", post(leaks::report).fallback(leaks::other_method))
}

/// Gives the router's and extractors' own refusals (wrong method, a body over
/// the limit, a path parameter that is not UTF-8) OpenAI's envelope, as every
/// other Administration API error has. Handlers' errors pass unchanged.
async fn openai_shaped(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    use http::StatusCode;
    let method = req.method().clone();
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<std::sync::Arc<ApiError>>().is_some()
        || response.extensions().get::<std::sync::Arc<crate::auth::Denial>>().is_some()
    {
        return response;
    }
    let error = match status {
        // The router adds its `Allow` header to this answer on the way out.
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed { method },
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge { limit: MAX_BODY_BYTES },
        status if status.is_client_error() => ApiError::BadRequest {
            message: "Invalid request: a path parameter or the body could not be read.".into(),
            param: None,
        },
        _ => ApiError::Internal,
    };
    error.into_response()
}

/// Tells an absent list field (leave as is) from `null` (clear the restriction).
mod nullable {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Vec<String>>>, D::Error> {
        Option::<Vec<String>>::deserialize(d).map(Some)
    }
}

/// Like [`nullable`], for an optional amount.
fn nullable_f64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

/// Like [`nullable`], for an optional number.
fn nullable_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

/// Like [`nullable`], for a count.
fn nullable_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// A change to rate limits, field by field, as OpenAI's project rate-limit
/// update takes it: a field left out keeps its value, a number sets it, and
/// `null` removes that one limit.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsPatch {
    #[serde(default, deserialize_with = "nullable_u64")]
    #[schema(value_type = Option<u64>)]
    max_requests_per_1_minute: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable_u64")]
    #[schema(value_type = Option<u64>)]
    max_tokens_per_1_minute: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable_u64")]
    #[schema(value_type = Option<u64>)]
    max_requests_per_1_day: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable_u64")]
    #[schema(value_type = Option<u64>)]
    max_tokens_per_1_day: Option<Option<u64>>,
    /// Ours: requests in flight at once.
    #[serde(default, deserialize_with = "nullable_u64")]
    #[schema(value_type = Option<u64>)]
    max_concurrent_requests: Option<Option<u64>>,
}

impl RateLimitsPatch {
    /// `base` with the named fields changed, checked like new limits.
    fn apply(self, base: crate::policy::RateLimits) -> Result<crate::policy::RateLimits, ApiError> {
        let pick = |change: Option<Option<u64>>, old: Option<u64>| change.unwrap_or(old);
        rate_limits(crate::policy::RateLimits {
            max_requests_per_1_minute: pick(self.max_requests_per_1_minute, base.max_requests_per_1_minute),
            max_tokens_per_1_minute: pick(self.max_tokens_per_1_minute, base.max_tokens_per_1_minute),
            max_requests_per_1_day: pick(self.max_requests_per_1_day, base.max_requests_per_1_day),
            max_tokens_per_1_day: pick(self.max_tokens_per_1_day, base.max_tokens_per_1_day),
            max_concurrent_requests: pick(self.max_concurrent_requests, base.max_concurrent_requests),
        })
    }
}

/// Parses a JSON body into `T`, with OpenAI-shaped errors.
fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| ApiError::InvalidJson)?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::BadRequest { message: format!("Invalid request body: {e}."), param: None })
}

/// Parses the query string into `T`, with OpenAI-shaped errors.
fn query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::BadRequest { message: format!("Invalid query parameters: {e}."), param: None })
}

fn bad(message: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::BadRequest { message: message.into(), param: Some(param) }
}

/// A name between 1 and 256 characters, trimmed.
fn name(value: &str, what: &str) -> Result<String, ApiError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 256 {
        return Err(bad(format!("{what} name must be between 1 and 256 characters."), "name"));
    }
    Ok(trimmed.to_owned())
}

/// Model glob patterns: non-empty, printable, at most 256.
fn models(list: Vec<String>) -> Result<Vec<String>, ApiError> {
    if list.len() > 256 || list.iter().any(|m| m.trim().is_empty() || m.len() > 256 || m.chars().any(char::is_control))
    {
        return Err(bad("`models` must be a list of model names or `*` patterns.", "models"));
    }
    Ok(list)
}

/// A monthly budget from US dollars and an alert threshold.
fn budget(usd: Option<f64>, alert_percent: Option<u8>) -> Result<Option<crate::policy::Budget>, ApiError> {
    let Some(usd) = usd else { return Ok(None) };
    if !usd.is_finite() || !(0.0..=1e9).contains(&usd) {
        return Err(bad(
            format!("Invalid 'monthly_budget_usd': {usd}. Expected 0 to 1000000000."),
            "monthly_budget_usd",
        ));
    }
    let alert_percent = alert_percent.unwrap_or(80);
    if !(1..=100).contains(&alert_percent) {
        return Err(bad(
            format!("Invalid 'budget_alert_percent': {alert_percent}. Expected 1 to 100."),
            "budget_alert_percent",
        ));
    }
    Ok(Some(crate::policy::Budget { monthly_nanos: (usd * 1e9).round() as i64, alert_percent }))
}

/// Rate limits must be positive where given.
fn rate_limits(limits: crate::policy::RateLimits) -> Result<crate::policy::RateLimits, ApiError> {
    let values = [
        limits.max_requests_per_1_minute,
        limits.max_tokens_per_1_minute,
        limits.max_requests_per_1_day,
        limits.max_tokens_per_1_day,
        limits.max_concurrent_requests,
    ];
    if values.iter().flatten().any(|v| *v == 0 || *v > 1_000_000_000_000) {
        return Err(bad("Rate limits must be between 1 and 1000000000000.", "rate_limits"));
    }
    Ok(limits)
}

fn cidrs(list: &[String]) -> Result<Vec<IpNet>, ApiError> {
    list.iter()
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| bad(format!("`{c}` is not an IP address or CIDR range."), "allowed_ips"))
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
struct ListParams {
    after: Option<String>,
    limit: Option<u32>,
    #[serde(default)]
    include_archived: bool,
}

impl ListParams {
    fn page(&self) -> Result<PageQuery, ApiError> {
        let limit = self.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(bad(format!("Invalid 'limit': {limit}. Expected a value between 1 and 100."), "limit"));
        }
        Ok(PageQuery { after: self.after.clone(), limit })
    }
}

/// The projects a listing covers: those asked for (`None`: every one when
/// none is named), narrowed to a member's own. A member who names another
/// project finds nothing, as if it did not exist.
fn visible_projects(actor: &Principal, asked: &[String]) -> Result<Option<Vec<String>>, ApiError> {
    match actor.project_filter() {
        None => Ok((!asked.is_empty()).then(|| asked.to_vec())),
        Some(mine) => {
            if let Some(other) = asked.iter().find(|p| !mine.contains(p)) {
                return Err(projects::not_found(other));
            }
            Ok(Some(if asked.is_empty() { mine.to_vec() } else { asked.to_vec() }))
        }
    }
}

/// Records an admin action; the action already happened, so a failure to
/// record is logged loudly rather than undoing it.
pub async fn audit(
    state: &AppState,
    actor: &Principal,
    kind: &'static str,
    project_id: Option<&str>,
    details: serde_json::Value,
) {
    let event = AuditEvent {
        id: crate::ids::audit_log_id(),
        kind,
        effective_at: state.clock.now(),
        project_id: project_id.map(str::to_owned),
        actor_key_id: actor.key_id(),
        actor_user_id: actor.user_id().map(str::to_owned),
        actor_ip: actor.client_ip.clone(),
        details,
    };
    record_audit(state, event).await;
}

/// Writes an audit event before the answer, so the log is current when the
/// client reads it; a failed write is handed to the background writer, which retries.
pub async fn record_audit(state: &AppState, event: AuditEvent) {
    if let Err(error) = state.store.append_audit(&event).await {
        tracing::warn!(%error, kind = event.kind, "could not write an audit event; queued for retry");
        state.recorder.audit(event);
    }
}
