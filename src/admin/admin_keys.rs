//! Admin keys (`sk-admin-`): they reach the Administration API only.

use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::keys::{find_key, issue, revoke, KeySpec};
use super::objects::{AdminApiKeyObject, Deleted, List, WithValue};
use super::{bad, json_body, name, objects, query, ListParams};
use crate::dialect::{ApiError, ErrorResponse};
use crate::key::KeyPrefix;
use crate::policy::Permissions;
use crate::session::Principal;
use crate::state::AppState;
use crate::store::{Access, KeyFilter, KeyKind, OwnerRef};

pub const ADMIN_PREFIX: &str = "sk-admin-";

#[utoipa::path(get, path = "/v1/organization/admin_api_keys", operation_id = "admin-api-keys-list", summary = "List admin API keys", tag = "admin keys", params(("after" = Option<String>, Query), ("limit" = Option<u32>, Query, description = "1 to 100, default 20")), responses((status = 200, body = List<AdminApiKeyObject>), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<List<AdminApiKeyObject>>, ApiError> {
    let params: ListParams = query(raw.as_deref())?;
    let page = state.store.list_keys(&KeyFilter::Admin, &params.page()?).await?;
    Ok(Json(List::new(page, |k| k.id.api_id(), objects::admin_api_key)))
}

#[utoipa::path(get, path = "/v1/organization/admin_api_keys/{key_id}", operation_id = "admin-api-keys-get", summary = "Retrieve an admin API key", tag = "admin keys", params(("key_id" = String, Path, description = "`key_...`")), responses((status = 200, body = AdminApiKeyObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<AdminApiKeyObject>, ApiError> {
    Ok(Json(objects::admin_api_key(&find_key(&state, &key_id, |k| k.kind == KeyKind::Admin).await?)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateAdminKey {
    name: String,
    expires_in_seconds: Option<i64>,
}

#[utoipa::path(post, path = "/v1/organization/admin_api_keys", operation_id = "admin-api-keys-create", summary = "Create an admin API key", tag = "admin keys", request_body = CreateAdminKey, responses((status = 200, body = WithValue<AdminApiKeyObject>), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    body: Bytes,
) -> Result<Json<WithValue<AdminApiKeyObject>>, ApiError> {
    let req: CreateAdminKey = json_body(&body)?;
    let key_name = name(&req.name, "Key")?;
    let expires_at = match req.expires_in_seconds {
        None => None,
        Some(s) if (1..=31_536_000).contains(&s) => Some(state.clock.now() + s),
        Some(s) => {
            return Err(bad(
                format!("Invalid 'expires_in_seconds': {s}. Expected a value between 1 and 31536000."),
                "expires_in_seconds",
            ))
        }
    };
    let owner = state.store.organization_service_account().await?.map(|sa| OwnerRef::ServiceAccount(sa.id));
    let (record, secret) = issue(
        &state,
        KeySpec {
            kind: KeyKind::Admin,
            name: key_name,
            project_id: None,
            owner,
            prefix: KeyPrefix::parse(ADMIN_PREFIX).map_err(|_| ApiError::Internal)?,
            permissions: Permissions::All,
            access: Access::default(),
            limits: Default::default(),
            budget: None,
            expires_at,
        },
    )
    .await?;
    super::audit(
        &state,
        &actor,
        "api_key.created",
        None,
        json!({"id": record.id.api_id(), "data": {"scopes": ["api.organization"]}}),
    )
    .await;
    Ok(Json(WithValue { object: objects::admin_api_key(&record), value: secret.expose().to_owned() }))
}

#[utoipa::path(delete, path = "/v1/organization/admin_api_keys/{key_id}", operation_id = "admin-api-keys-delete", summary = "Delete an admin API key", tag = "admin keys", params(("key_id" = String, Path, description = "`key_...`")), responses((status = 200, body = Deleted), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(key_id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let key = find_key(&state, &key_id, |k| k.kind == KeyKind::Admin).await?;
    if actor.key_id() == Some(key.id) {
        return Err(ApiError::BadRequest {
            message: "An admin key cannot delete itself; use another admin key.".into(),
            param: None,
        });
    }
    revoke(&state, &actor, &key, None).await?;
    Ok(Json(objects::deleted("organization.admin_api_key", &key.id.api_id())))
}
