//! Project API keys: create (extension), list, get, revoke.

use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::projects::not_found as project_not_found;
use super::{audit, json_body, objects, query, ListParams};
use crate::auth::Authorized;
use crate::dialect::ApiError;
use crate::key::{generate, KeyPrefix, PublicId};
use crate::server::AppState;
use crate::store::{KeyFilter, KeyKind, KeyRecord, KeyState, NewKey, Revocation, SecretVersion};

pub async fn list(
    State(state): State<AppState>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params: ListParams = query(raw.as_deref())?;
    state.store.get_project(&project_id).await?.ok_or_else(|| project_not_found(&project_id))?;
    let page = state.store.list_keys(&KeyFilter::Project(project_id), &params.page()?).await?;
    let list = objects::List::new(page, |k| k.id.api_id(), objects::project_api_key);
    Ok(Json(serde_json::to_value(list).map_err(|_| ApiError::Internal)?))
}

pub async fn get(
    State(state): State<AppState>,
    Path((project_id, key_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let key = find(&state, &project_id, &key_id).await?;
    Ok(Json(objects::project_api_key(&key)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    prefix: Option<String>,
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
    let name = req.name.trim();
    if name.is_empty() || name.len() > 256 {
        return Err(ApiError::BadRequest {
            message: "Key name must be between 1 and 256 characters.".into(),
            param: Some("name"),
        });
    }
    let prefix = match req.prefix.as_deref() {
        None => KeyPrefix::default(),
        Some(p) => KeyPrefix::parse(p).map_err(|e| ApiError::BadRequest {
            message: format!("Invalid prefix `{p}`: {e} (for example `sk-prod-`)."),
            param: Some("prefix"),
        })?,
    };
    let project = state.store.get_project(&project_id).await?.ok_or_else(|| project_not_found(&project_id))?;
    if project.archived_at.is_some() {
        return Err(ApiError::BadRequest { message: format!("Project {project_id} is archived."), param: None });
    }
    let owner = state.store.default_service_account(&project.id).await?;
    let now = state.clock.now();
    let generated = generate(&prefix, &PublicId::random());
    let record = state
        .store
        .insert_key(&NewKey {
            id: generated.id.clone(),
            kind: KeyKind::Project,
            name: name.to_owned(),
            project_id: Some(project.id.clone()),
            owner_id: owner.map(|o| o.id),
            prefix: prefix.to_string(),
            created_at: now,
            expires_at: None,
            secret: SecretVersion {
                digest: generated.digest,
                legacy: false,
                last4: generated.last4.clone(),
                created_at: now,
                expires_at: None,
            },
        })
        .await?;
    state.index.upsert(record.clone());
    audit(
        &state,
        &actor,
        "api_key.created",
        Some(&project.id),
        serde_json::json!({"id": record.id.api_id(), "data": {"scopes": []}}),
    )
    .await;
    let mut object = objects::project_api_key(&record);
    object["value"] = Value::String(generated.secret.expose().to_owned());
    Ok(Json(object))
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
    let revocation = Revocation {
        at: state.clock.now(),
        by: Some(format!("admin key `{}` ({})", actor.key.name, actor.key.id)),
        reason: params.reason,
    };
    let revoked = state.store.revoke_key(&key.id, &revocation).await?.ok_or(ApiError::Internal)?;
    state.index.upsert(revoked);
    audit(&state, &actor, "api_key.deleted", Some(&project_id), serde_json::json!({"id": key.id.api_id()})).await;
    Ok(Json(objects::deleted("organization.project.api_key", &key.id.api_id())))
}

/// A live key of this project; revoked keys and keys of other projects are 404.
async fn find(state: &AppState, project_id: &str, key_id: &str) -> Result<KeyRecord, ApiError> {
    let missing = || ApiError::NotFound { message: format!("No such API key: {key_id}.") };
    let id = PublicId::parse(key_id).ok_or_else(missing)?;
    let key = state.store.get_key(&id).await?.ok_or_else(missing)?;
    if key.kind != KeyKind::Project || key.project_id.as_deref() != Some(project_id) || key.state == KeyState::Revoked {
        return Err(missing());
    }
    Ok(key)
}
