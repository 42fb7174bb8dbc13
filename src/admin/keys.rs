//! Project API keys: issue (extension), list, get, update (extension), revoke.
//! [`issue`] is the one place a key is generated, for project keys, service
//! account keys and admin keys alike.

use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::objects::{Deleted, List, ProjectApiKeyObject, WithValue};
use super::projects::find_active;
use super::{audit, bad, budget, cidrs, json_body, models, name, objects, query, rate_limits, ListParams};
use crate::dialect::{ApiError, ErrorResponse};
use crate::ids::PublicId;
use crate::key::{generate, KeyPrefix, Secret};
use crate::policy::{Budget, Permissions, RateLimits};
use crate::session::Principal;
use crate::state::AppState;
use crate::store::{
    Access, KeyFilter, KeyKind, KeyRecord, KeySearch, KeyState, KeyStatus, KeyUpdate, NewKey, OwnerRef, Page,
    PageQuery, Revocation, SecretVersion,
};
use crate::time::Timestamp;

/// Everything a new key needs besides its secret.
pub struct KeySpec {
    pub kind: KeyKind,
    pub name: String,
    pub project_id: Option<String>,
    pub owner: Option<OwnerRef>,
    pub prefix: KeyPrefix,
    pub permissions: Permissions,
    pub access: Access,
    pub limits: RateLimits,
    pub budget: Option<Budget>,
    pub expires_at: Option<Timestamp>,
}

/// Generates, stores and indexes a key; the secret is returned to be shown once.
pub async fn issue(state: &AppState, spec: KeySpec) -> Result<(KeyRecord, Secret), ApiError> {
    let now = state.clock.now();
    let generated = generate(&spec.prefix, &PublicId::random());
    let record = state
        .store
        .insert_key(&NewKey {
            id: generated.id,
            kind: spec.kind,
            name: spec.name,
            project_id: spec.project_id,
            owner: spec.owner,
            prefix: spec.prefix.to_string(),
            permissions: spec.permissions,
            access: spec.access,
            limits: spec.limits,
            budget: spec.budget,
            created_at: now,
            expires_at: spec.expires_at,
            secret: SecretVersion {
                digest: generated.digest,
                legacy: false,
                last4: generated.last4.clone(),
                created_at: now,
                expires_at: None,
            },
        })
        .await?;
    state.index.upsert([record.clone()]);
    Ok((record, generated.secret))
}

pub fn parse_prefix(value: Option<&str>) -> Result<KeyPrefix, ApiError> {
    match value {
        None => Ok(KeyPrefix::default()),
        Some(p) => KeyPrefix::parse(p)
            .map_err(|e| bad(format!("Invalid prefix `{p}`: {e} (for example `sk-prod-`)."), "prefix")),
    }
}

fn parse_permissions(level: Option<&str>, scopes: Option<&[String]>) -> Result<Option<Permissions>, ApiError> {
    let scopes = scopes.unwrap_or_default();
    match (level, scopes.is_empty()) {
        (None, true) => Ok(None),
        // Scopes alone mean a restricted key, as in OpenAI's service-account call.
        (None, false) => Permissions::parse("restricted", scopes).map(Some),
        (Some(level), _) => Permissions::parse(level, scopes).map(Some),
    }
    .map_err(|e| bad(format!("Invalid permissions: {e}."), "permissions"))
}

#[derive(Deserialize)]
struct KeyListParams {
    after: Option<String>,
    limit: Option<u32>,
    #[serde(default)]
    include_revoked: bool,
    /// Only keys due for rotation under the project's `max_key_age_seconds`.
    #[serde(default)]
    due: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    q: Option<String>,
    prefix: Option<String>,
    project_id: Option<String>,
    status: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/organization/api_keys` (ours): project keys across projects, for
/// the dashboard's search; a member finds only their projects' keys.
#[utoipa::path(get, path = "/v1/organization/api_keys", operation_id = "search-api-keys", summary = "Search project API keys", tag = "api keys", description = "Ours: project keys across projects, oldest first. `q` matches part of a name, or a key id whole; `status` is `active`, `suspended`, `expired` or `revoked` (default: every key but revoked ones).", params(("q" = Option<String>, Query), ("prefix" = Option<String>, Query), ("project_id" = Option<String>, Query), ("status" = Option<String>, Query), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query, description = "1 to 100, default 20")), responses((status = 200, body = List<ProjectApiKeyObject>), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn search(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Json<List<ProjectApiKeyObject>>, ApiError> {
    let params: SearchParams = query(raw.as_deref())?;
    let page = ListParams { after: params.after, limit: params.limit, include_archived: false }.page()?;
    let status = match params.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(KeyStatus::parse(text).ok_or_else(|| {
            bad(format!("Invalid 'status': `{text}`. Expected active, suspended, expired or revoked."), "status")
        })?),
    };
    let asked: Vec<String> = params.project_id.into_iter().filter(|p| !p.is_empty()).collect();
    let search = KeySearch {
        text: params.q.filter(|q| q.chars().count() <= 256),
        prefix: params.prefix.filter(|p| !p.is_empty()),
        project_ids: super::visible_projects(&actor, &asked)?,
        status,
        now: state.clock.now(),
    };
    let page = state.store.list_keys(&KeyFilter::Search(search), &page).await?;
    Ok(Json(List::new(page, |k| k.id.api_id(), objects::project_api_key)))
}

#[utoipa::path(get, path = "/v1/organization/projects/{project_id}/api_keys", operation_id = "list-project-api-keys", summary = "List a project's API keys", tag = "api keys", params(("project_id" = String, Path), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query, description = "1 to 100, default 20"), ("include_revoked" = Option<bool>, Query), ("due" = Option<bool>, Query, description = "Ours: only keys due for rotation")), responses((status = 200, body = List<ProjectApiKeyObject>), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<List<ProjectApiKeyObject>>, ApiError> {
    let params: KeyListParams = query(raw.as_deref())?;
    let page = ListParams { after: params.after.clone(), limit: params.limit, include_archived: false }.page()?;
    let project = super::projects::find(&state, &project_id).await?;
    let filter = KeyFilter::Project { project_id: project.id.clone(), include_revoked: params.include_revoked };
    if !params.due {
        let page = state.store.list_keys(&filter, &page).await?;
        return Ok(Json(List::new(page, |k| k.id.api_id(), objects::project_api_key)));
    }
    // Due keys: all of them at once (a short list by nature).
    let Some(max_age) = project.max_key_age_seconds else {
        let empty = Page { items: Vec::<KeyRecord>::new(), has_more: false };
        return Ok(Json(List::new(empty, |k| k.id.api_id(), objects::project_api_key)));
    };
    let now = state.clock.now();
    let mut due = Vec::new();
    let mut cursor = PageQuery { after: None, limit: 100 };
    loop {
        let page = state.store.list_keys(&filter, &cursor).await?;
        cursor.after = page.items.last().map(|k| k.id.api_id());
        due.extend(
            page.items.into_iter().filter(|k| k.state != KeyState::Revoked && now - k.secret_created_at() >= max_age),
        );
        if !page.has_more {
            break;
        }
    }
    Ok(Json(List::new(Page { items: due, has_more: false }, |k| k.id.api_id(), objects::project_api_key)))
}

#[derive(Deserialize)]
struct GetParams {
    #[serde(default)]
    include_revoked: bool,
}

#[utoipa::path(get, path = "/v1/organization/projects/{project_id}/api_keys/{key_id}", operation_id = "retrieve-project-api-key", summary = "Retrieve a project API key", tag = "api keys", params(("project_id" = String, Path), ("key_id" = String, Path, description = "`key_...`"), ("include_revoked" = Option<bool>, Query)), responses((status = 200, body = ProjectApiKeyObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    Path((project_id, key_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ProjectApiKeyObject>, ApiError> {
    let params: GetParams = query(raw.as_deref())?;
    let key = find_any(&state, &key_id, params.include_revoked, |k| {
        k.kind == KeyKind::Project && k.project_id.as_deref() == Some(project_id.as_str())
    })
    .await?;
    Ok(Json(objects::project_api_key(&key)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    prefix: Option<String>,
    permissions: Option<String>,
    scopes: Option<Vec<String>>,
    models: Option<Vec<String>>,
    allowed_ips: Option<Vec<String>>,
    /// Ours: unix seconds after which the key is refused.
    #[schema(value_type = Option<i64>)]
    expires_at: Option<Timestamp>,
    /// Owner: a user of the organization (default: the project's default service account).
    user_id: Option<String>,
    /// Owner: one of the project's service accounts.
    service_account_id: Option<String>,
    /// Ours: the key's own rate limits.
    rate_limits: Option<RateLimits>,
    /// Ours: monthly spend limit in US dollars; requests are refused with
    /// `insufficient_quota` once it is spent.
    monthly_budget_usd: Option<f64>,
    /// Ours: alert when this share of the budget is spent (default 80).
    budget_alert_percent: Option<u8>,
}

/// `POST /v1/organization/projects/{id}/api_keys` (extension: OpenAI creates
/// project keys only in its dashboard). Answers the key object plus `value`,
/// the only time the secret is shown.
#[utoipa::path(post, path = "/v1/organization/projects/{project_id}/api_keys", operation_id = "create-project-api-key", summary = "Create a project API key", description = "Ours: OpenAI creates project keys only in its dashboard. Answers the key object plus `value`, the only time the secret is shown.", tag = "api keys", params(("project_id" = String, Path)), request_body = CreateKey, responses((status = 200, body = WithValue<ProjectApiKeyObject>), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Result<Json<WithValue<ProjectApiKeyObject>>, ApiError> {
    let req: CreateKey = json_body(&body)?;
    let key_name = name(&req.name, "Key")?;
    let prefix = parse_prefix(req.prefix.as_deref())?;
    let permissions = parse_permissions(req.permissions.as_deref(), req.scopes.as_deref())?.unwrap_or_default();
    let access = Access {
        models: req.models.map(models).transpose()?,
        allowed_ips: cidrs(&req.allowed_ips.unwrap_or_default())?,
    };
    if let Some(at) = req.expires_at {
        if at <= state.clock.now() {
            return Err(bad("`expires_at` must be in the future (unix seconds).", "expires_at"));
        }
    }
    let project = find_active(&state, &project_id).await?;
    let owner = match (req.user_id, req.service_account_id) {
        (Some(_), Some(_)) => return Err(bad("Give `user_id` or `service_account_id`, not both.", "user_id")),
        (Some(user_id), None) => {
            // A member names only people of the project (others they cannot see);
            // owners give a key to anyone in the organization.
            let user = match actor.project_filter() {
                Some(_) => state.store.get_project_user(&project.id, &user_id).await?.map(|m| m.user),
                None => state.store.get_user(&user_id).await?,
            };
            OwnerRef::User(user.ok_or_else(|| bad(format!("No such user in this project: {user_id}."), "user_id"))?.id)
        }
        (None, Some(sa_id)) => {
            let sa = state
                .store
                .get_service_account(&sa_id)
                .await?
                .filter(|sa| sa.project_id.as_deref() == Some(&project.id));
            OwnerRef::ServiceAccount(
                sa.ok_or_else(|| {
                    bad(format!("No such service account in this project: {sa_id}."), "service_account_id")
                })?
                .id,
            )
        }
        (None, None) => {
            let sa = state.store.default_service_account(&project.id).await?.ok_or(ApiError::Internal)?;
            OwnerRef::ServiceAccount(sa.id)
        }
    };
    let limits = rate_limits(req.rate_limits.unwrap_or_default())?;
    let budget = budget(req.monthly_budget_usd, req.budget_alert_percent)?;
    let scopes = permissions.scopes();
    let (record, secret) = issue(
        &state,
        KeySpec {
            kind: KeyKind::Project,
            name: key_name,
            project_id: Some(project.id.clone()),
            owner: Some(owner),
            prefix,
            permissions,
            access,
            limits,
            budget,
            expires_at: req.expires_at,
        },
    )
    .await?;
    audit(
        &state,
        &actor,
        "api_key.created",
        Some(&project.id),
        json!({"id": record.id.api_id(), "data": {"scopes": scopes}}),
    )
    .await;
    Ok(Json(WithValue { object: objects::project_api_key(&record), value: secret.expose().to_owned() }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateKey {
    name: Option<String>,
    #[serde(default, deserialize_with = "super::nullable_i64")]
    #[schema(value_type = Option<i64>)]
    expires_at: Option<Option<Timestamp>>,
    permissions: Option<String>,
    scopes: Option<Vec<String>>,
    #[serde(default, with = "super::nullable")]
    models: Option<Option<Vec<String>>>,
    allowed_ips: Option<Vec<String>>,
    /// Only the limits named change; `null` removes one.
    rate_limits: Option<super::RateLimitsPatch>,
    /// `null` removes the budget.
    #[serde(default, deserialize_with = "super::nullable_f64")]
    #[schema(value_type = Option<f64>)]
    monthly_budget_usd: Option<Option<f64>>,
    budget_alert_percent: Option<u8>,
}

/// `POST .../api_keys/{id}` (extension): name, permissions, models, IPs,
/// limits, budget; a field left out is kept. Takes effect on the next request.
#[utoipa::path(post, path = "/v1/organization/projects/{project_id}/api_keys/{key_id}", operation_id = "modify-project-api-key", summary = "Modify a project API key", description = "Ours: name, permissions, models, IPs, limits, budget; a field left out is kept. Takes effect on the next request.", tag = "api keys", params(("project_id" = String, Path), ("key_id" = String, Path, description = "`key_...`")), request_body = UpdateKey, responses((status = 200, body = ProjectApiKeyObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path((project_id, key_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<ProjectApiKeyObject>, ApiError> {
    let req: UpdateKey = json_body(&body)?;
    let key = find(&state, &project_id, &key_id).await?;
    if let Some(Some(at)) = req.expires_at {
        if at <= state.clock.now() {
            return Err(bad("`expires_at` must be in the future (unix seconds).", "expires_at"));
        }
    }
    let update = KeyUpdate {
        name: req.name.as_deref().map(|n| name(n, "Key")).transpose()?,
        expires_at: req.expires_at,
        permissions: parse_permissions(req.permissions.as_deref(), req.scopes.as_deref())?,
        models: req.models.map(|m| m.map(models).transpose()).transpose()?,
        allowed_ips: req.allowed_ips.as_deref().map(cidrs).transpose()?,
        limits: req.rate_limits.map(|patch| patch.apply(key.limits)).transpose()?,
        budget: match req.monthly_budget_usd {
            Some(usd) => Some(budget(usd, req.budget_alert_percent.or(key.budget.map(|b| b.alert_percent)))?),
            None => None,
        },
    };
    let updated = state.store.update_key(&key.id, &update).await?.ok_or(ApiError::Internal)?;
    state.index.upsert([updated.clone()]);
    audit(
        &state,
        &actor,
        "api_key.updated",
        Some(&project_id),
        json!({"id": updated.id.api_id(), "changes_requested": {"scopes": update.permissions.map(|p| p.scopes())}}),
    )
    .await;
    Ok(Json(objects::project_api_key(&updated)))
}

#[derive(Deserialize)]
struct DeleteParams {
    reason: Option<String>,
}

/// Revokes the key at once: the index is updated before the answer is sent.
#[utoipa::path(delete, path = "/v1/organization/projects/{project_id}/api_keys/{key_id}", operation_id = "delete-project-api-key", summary = "Revoke a project API key", description = "Revokes the key at once: the index is updated before the answer is sent.", tag = "api keys", params(("project_id" = String, Path), ("key_id" = String, Path, description = "`key_...`"), ("reason" = Option<String>, Query, description = "Ours: recorded with the revocation")), responses((status = 200, body = Deleted), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path((project_id, key_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Deleted>, ApiError> {
    let params: DeleteParams = query(raw.as_deref())?;
    let key = find(&state, &project_id, &key_id).await?;
    revoke(&state, &actor, &key, params.reason).await?;
    Ok(Json(objects::deleted("organization.project.api_key", &key.id.api_id())))
}

/// Revokes one key, updates the index and records the audit event.
pub async fn revoke(
    state: &AppState,
    actor: &Principal,
    key: &KeyRecord,
    reason: Option<String>,
) -> Result<(), ApiError> {
    let revocation = Revocation { at: state.clock.now(), by: Some(actor.name()), reason };
    let revoked = state.store.revoke_key(&key.id, &revocation).await?.ok_or(ApiError::Internal)?;
    state.index.upsert([revoked]);
    audit(state, actor, "api_key.deleted", key.project_id.as_deref(), json!({"id": key.id.api_id()})).await;
    Ok(())
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateKey {
    /// How long the old secret keeps working (default 24 h; 0 = immediately).
    grace_period_seconds: Option<i64>,
}

pub const DEFAULT_GRACE_SECONDS: i64 = 24 * 3600;

/// `POST .../api_keys/{id}/rotate` (extension): a new secret under the same
/// id; the old one works until the grace period ends. Answers the key object
/// plus `value`, shown once.
#[utoipa::path(post, path = "/v1/organization/projects/{project_id}/api_keys/{key_id}/rotate", operation_id = "rotate-project-api-key", summary = "Rotate a project API key", description = "Ours: a new secret under the same id; the old one works until the grace period ends. Answers the key object plus `value`, shown once.", tag = "api keys", params(("project_id" = String, Path), ("key_id" = String, Path, description = "`key_...`")), request_body(content = Option<RotateKey>), responses((status = 200, body = WithValue<ProjectApiKeyObject>), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn rotate(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path((project_id, key_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<WithValue<ProjectApiKeyObject>>, ApiError> {
    let req: RotateKey = if body.is_empty() { RotateKey::default() } else { json_body(&body)? };
    let grace = req.grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    if !(0..=31_536_000).contains(&grace) {
        return Err(bad(
            format!("Invalid 'grace_period_seconds': {grace}. Expected a value between 0 and 31536000."),
            "grace_period_seconds",
        ));
    }
    let key = find(&state, &project_id, &key_id).await?;
    let prefix = KeyPrefix::parse(&key.prefix).unwrap_or_default();
    let now = state.clock.now();
    let generated = generate(&prefix, &key.id);
    let secret = SecretVersion {
        digest: generated.digest,
        legacy: false,
        last4: generated.last4.clone(),
        created_at: now,
        expires_at: None,
    };
    let rotated = state.store.rotate_key(&key.id, &secret, now + grace).await?.ok_or(ApiError::Internal)?;
    state.index.upsert([rotated.clone()]);
    audit(
        &state,
        &actor,
        "api_key.updated",
        Some(&project_id),
        json!({"id": key.id.api_id(), "changes_requested": {"rotated": true, "grace_period_seconds": grace}}),
    )
    .await;
    Ok(Json(WithValue { object: objects::project_api_key(&rotated), value: generated.secret.expose().to_owned() }))
}

/// `POST .../api_keys/{id}/suspend` (extension): refused like a revoked key, but reversible.
#[utoipa::path(post, path = "/v1/organization/projects/{project_id}/api_keys/{key_id}/suspend", operation_id = "suspend-project-api-key", summary = "Suspend a project API key", description = "Ours: refused like a revoked key, but reversible.", tag = "api keys", params(("project_id" = String, Path), ("key_id" = String, Path, description = "`key_...`")), responses((status = 200, body = ProjectApiKeyObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn suspend(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path((project_id, key_id)): Path<(String, String)>,
) -> Result<Json<ProjectApiKeyObject>, ApiError> {
    set_active(&state, &actor, &project_id, &key_id, false).await
}

/// `POST .../api_keys/{id}/resume` (extension).
#[utoipa::path(post, path = "/v1/organization/projects/{project_id}/api_keys/{key_id}/resume", operation_id = "resume-project-api-key", summary = "Resume a suspended project API key", description = "Ours.", tag = "api keys", params(("project_id" = String, Path), ("key_id" = String, Path, description = "`key_...`")), responses((status = 200, body = ProjectApiKeyObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn resume(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path((project_id, key_id)): Path<(String, String)>,
) -> Result<Json<ProjectApiKeyObject>, ApiError> {
    set_active(&state, &actor, &project_id, &key_id, true).await
}

async fn set_active(
    state: &AppState,
    actor: &Principal,
    project_id: &str,
    key_id: &str,
    active: bool,
) -> Result<Json<ProjectApiKeyObject>, ApiError> {
    let key = find(state, project_id, key_id).await?;
    let updated = state.store.set_key_active(&key.id, active).await?.ok_or(ApiError::Internal)?;
    state.index.upsert([updated.clone()]);
    let change = if active { "resumed" } else { "suspended" };
    audit(
        state,
        actor,
        "api_key.updated",
        Some(project_id),
        json!({"id": key.id.api_id(), "changes_requested": {"state": change}}),
    )
    .await;
    Ok(Json(objects::project_api_key(&updated)))
}

/// A live key of this project; revoked keys and keys of other projects are 404.
async fn find(state: &AppState, project_id: &str, key_id: &str) -> Result<KeyRecord, ApiError> {
    find_key(state, key_id, |k| k.kind == KeyKind::Project && k.project_id.as_deref() == Some(project_id)).await
}

/// A live key matching `belongs`, else OpenAI-style 404.
pub async fn find_key(
    state: &AppState,
    key_id: &str,
    belongs: impl Fn(&KeyRecord) -> bool,
) -> Result<KeyRecord, ApiError> {
    find_any(state, key_id, false, belongs).await
}

async fn find_any(
    state: &AppState,
    key_id: &str,
    include_revoked: bool,
    belongs: impl Fn(&KeyRecord) -> bool,
) -> Result<KeyRecord, ApiError> {
    let missing = || ApiError::NotFound { message: format!("No such API key: {key_id}.") };
    let id = PublicId::parse(key_id).ok_or_else(missing)?;
    let key = state.store.get_key(&id).await?.ok_or_else(missing)?;
    if !belongs(&key) || (key.state == KeyState::Revoked && !include_revoked) {
        return Err(missing());
    }
    Ok(key)
}
