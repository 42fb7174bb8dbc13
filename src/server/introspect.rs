//! keygate's own routes under `/v1/keygate/`, matched exactly by the router and
//! never forwarded: what a key, or the path its requests take, looks like from
//! the gateway's side. `keygate doctor` reads them.

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use crate::auth::Authorized;
use crate::dialect::ApiError;

/// `GET /v1/keygate/echo-auth` (ours, any valid key): the length and a
/// SHA-256 prefix of the Authorization header that arrived, so `keygate doctor`
/// can tell whether something on the way stripped or rewrote it.
pub(super) async fn echo_auth(req: Request) -> Response {
    use sha2::Digest as _;
    let value = req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    let digest = hex::encode(sha2::Sha256::digest(value));
    axum::Json(
        serde_json::json!({"object": "keygate.echo_auth", "length": value.len(), "sha256_prefix": &digest[..16]}),
    )
    .into_response()
}

/// `GET /v1/keygate/key` (ours, any valid project key): what the presenting
/// key may do, from the decision already made for this request: its id, name,
/// permissions, the model calls they allow, the key's and its project's model
/// allow-lists, limits and budgets. Never the secret. `keygate doctor` reads it
/// to warn about a key that cannot call any model before a call fails.
pub(super) async fn key_info(req: Request) -> Response {
    let Some(authorized) = req.extensions().get::<Authorized>() else { return ApiError::Internal.into_response() };
    let key = &authorized.key;
    let policy = &key.policy;
    let project = authorized.project.as_deref();
    let model_calls = policy.permissions.model_calls();
    let no_models = |models: Option<&Vec<String>>| models.is_some_and(|m| m.is_empty());
    let project_models = project.and_then(|p| p.access.models.as_ref());
    let can_call_models =
        !model_calls.is_empty() && !no_models(policy.access.models.as_ref()) && !no_models(project_models);
    let usd = |nanos: i64| nanos as f64 / 1e9;
    let project_limits: Vec<_> = project
        .map(|p| &p.rate_limits[..])
        .unwrap_or_default()
        .iter()
        .map(|l| serde_json::json!({"model": l.model, "rate_limits": l.limits}))
        .collect();
    axum::Json(serde_json::json!({
        "object": "keygate.key",
        "id": key.id.api_id(),
        "name": &*key.name,
        "prefix": key.prefix(),
        "project_id": project.map(|p| p.id.as_str()).or(key.placement.project_id.as_deref()),
        "permissions": policy.permissions.level(),
        "scopes": policy.permissions.scopes(),
        "model_calls": model_calls,
        "can_call_models": can_call_models,
        "models": policy.access.models,
        "project_models": project_models,
        "rate_limits": policy.limits,
        "project_rate_limits": project_limits,
        "monthly_budget_usd": policy.budget.map(|b| usd(b.monthly_nanos)),
        "project_monthly_budget_usd": project.and_then(|p| p.budget).map(|b| usd(b.monthly_nanos)),
        "expires_at": authorized.expires_at,
    }))
    .into_response()
}
