//! Project API keys: issue (extension), list, get, update (extension), revoke.
//! [`issue`] is the one place a key is generated, for project keys, service
//! account keys and admin keys alike.

use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::projects::find_active;
use super::{actor_name, audit, bad, cidrs, json_body, models, name, objects, query, to_json, ListParams};
use crate::auth::{Authorized, Permissions};
use crate::dialect::ApiError;
use crate::key::{generate, KeyPrefix, PublicId, Secret};
use crate::server::AppState;
use crate::store::{
    Access, KeyFilter, KeyKind, KeyRecord, KeyState, KeyUpdate, NewKey, OwnerRef, Revocation, SecretVersion, Timestamp,
};

/// Everything a new key needs besides its secret.
pub struct KeySpec {
    pub kind: KeyKind,
    pub name: String,
    pub project_id: Option<String>,
    pub owner: Option<OwnerRef>,
    pub prefix: KeyPrefix,
    pub permissions: Permissions,
    pub access: Access,
    pub expires_at: Option<Timestamp>,
}

/// Generates, stores and indexes a key; the secret is returned to be shown once.
pub async fn issue(state: &AppState, spec: KeySpec) -> Result<(KeyRecord, Secret), ApiError> {
    let now = state.clock.now();
    let generated = generate(&spec.prefix, &PublicId::random());
    let record = state
        .store
        .insert_key(&NewKey {
            id: generated.id.clone(),
            kind: spec.kind,
            name: spec.name,
            project_id: spec.project_id,
            owner: spec.owner,
            prefix: spec.prefix.to_string(),
            permissions: spec.permissions,
            access: spec.access,
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

pub async fn list(
    State(state): State<AppState>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params: ListParams = query(raw.as_deref())?;
    super::projects::find(&state, &project_id).await?;
    let page = state.store.list_keys(&KeyFilter::Project(project_id), &params.page()?).await?;
    to_json(objects::List::new(page, |k| k.id.api_id(), objects::project_api_key))
}

pub async fn get(
    State(state): State<AppState>,
    Path((project_id, key_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(objects::project_api_key(&find(&state, &project_id, &key_id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    prefix: Option<String>,
    permissions: Option<String>,
    scopes: Option<Vec<String>>,
    models: Option<Vec<String>>,
    allowed_ips: Option<Vec<String>>,
    expires_at: Option<Timestamp>,
    /// Owner: a user of the organization (default: the project's default service account).
    user_id: Option<String>,
    /// Owner: one of the project's service accounts.
    service_account_id: Option<String>,
}

/// `POST /v1/organization/projects/{id}/api_keys` (extension: OpenAI creates
/// project keys only in its dashboard). Answers the key object plus `value`,
/// the only time the secret is shown.
pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Authorized>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
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
            let user = state.store.get_user(&user_id).await?;
            OwnerRef::User(user.ok_or_else(|| bad(format!("No such user: {user_id}."), "user_id"))?.id)
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
    let mut object = objects::project_api_key(&record);
    object["value"] = Value::String(secret.expose().to_owned());
    Ok(Json(object))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateKey {
    name: Option<String>,
    permissions: Option<String>,
    scopes: Option<Vec<String>>,
    #[serde(default, with = "super::nullable")]
    models: Option<Option<Vec<String>>>,
    allowed_ips: Option<Vec<String>>,
}

/// `POST .../api_keys/{id}` (extension): name, permissions, models, IPs; takes
/// effect on the next request.
pub async fn update(
    State(state): State<AppState>,
    Extension(actor): Extension<Authorized>,
    Path((project_id, key_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: UpdateKey = json_body(&body)?;
    let key = find(&state, &project_id, &key_id).await?;
    let update = KeyUpdate {
        name: req.name.as_deref().map(|n| name(n, "Key")).transpose()?,
        permissions: parse_permissions(req.permissions.as_deref(), req.scopes.as_deref())?,
        models: req.models.map(|m| m.map(models).transpose()).transpose()?,
        allowed_ips: req.allowed_ips.as_deref().map(cidrs).transpose()?,
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
pub async fn delete(
    State(state): State<AppState>,
    Extension(actor): Extension<Authorized>,
    Path((project_id, key_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params: DeleteParams = query(raw.as_deref())?;
    let key = find(&state, &project_id, &key_id).await?;
    revoke(&state, &actor, &key, params.reason).await?;
    Ok(Json(objects::deleted("organization.project.api_key", &key.id.api_id())))
}

/// Revokes one key, updates the index and records the audit event.
pub async fn revoke(
    state: &AppState,
    actor: &Authorized,
    key: &KeyRecord,
    reason: Option<String>,
) -> Result<(), ApiError> {
    let revocation = Revocation { at: state.clock.now(), by: Some(actor_name(actor)), reason };
    let revoked = state.store.revoke_key(&key.id, &revocation).await?.ok_or(ApiError::Internal)?;
    state.index.upsert([revoked]);
    audit(state, actor, "api_key.deleted", key.project_id.as_deref(), json!({"id": key.id.api_id()})).await;
    Ok(())
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
    let missing = || ApiError::NotFound { message: format!("No such API key: {key_id}.") };
    let id = PublicId::parse(key_id).ok_or_else(missing)?;
    let key = state.store.get_key(&id).await?.ok_or_else(missing)?;
    if !belongs(&key) || key.state == KeyState::Revoked {
        return Err(missing());
    }
    Ok(key)
}
