//! Project service accounts; creating one issues its first key, shown once.

use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::keys::{issue, parse_prefix, KeySpec};
use super::objects::{CreatedServiceAccount, Deleted, List, ServiceAccountKey, ServiceAccountObject};
use super::projects::{find as find_project, find_active};
use super::{audit, json_body, name, objects, query, ListParams};
use crate::dialect::{ApiError, ErrorResponse};
use crate::policy::Permissions;
use crate::session::Principal;
use crate::state::AppState;
use crate::store::{Access, KeyKind, OwnerRef, Revocation, ServiceAccount};

#[utoipa::path(get, path = "/v1/organization/projects/{project_id}/service_accounts", operation_id = "list-project-service-accounts", summary = "List a project's service accounts", tag = "service accounts", params(("project_id" = String, Path), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query, description = "1 to 100, default 20")), responses((status = 200, body = List<ServiceAccountObject>), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<List<ServiceAccountObject>>, ApiError> {
    let params: ListParams = query(raw.as_deref())?;
    find_project(&state, &project_id).await?;
    let page = state.store.list_service_accounts(&project_id, &params.page()?).await?;
    Ok(Json(List::new(page, |sa| sa.id.clone(), objects::service_account)))
}

#[utoipa::path(get, path = "/v1/organization/projects/{project_id}/service_accounts/{sa_id}", operation_id = "retrieve-project-service-account", summary = "Retrieve a project service account", tag = "service accounts", params(("project_id" = String, Path), ("sa_id" = String, Path)), responses((status = 200, body = ServiceAccountObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    Path((project_id, sa_id)): Path<(String, String)>,
) -> Result<Json<ServiceAccountObject>, ApiError> {
    Ok(Json(objects::service_account(&find(&state, &project_id, &sa_id).await?)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateServiceAccount {
    name: String,
    /// OpenAI's newer flag: no key is issued.
    #[serde(default)]
    create_service_account_only: Option<bool>,
    /// Extension: the prefix of the issued key.
    prefix: Option<String>,
}

#[utoipa::path(post, path = "/v1/organization/projects/{project_id}/service_accounts", operation_id = "create-project-service-account", summary = "Create a project service account", tag = "service accounts", params(("project_id" = String, Path)), request_body = CreateServiceAccount, responses((status = 200, body = CreatedServiceAccount), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Result<Json<CreatedServiceAccount>, ApiError> {
    let req: CreateServiceAccount = json_body(&body)?;
    let sa_name = name(&req.name, "Service account")?;
    let prefix = parse_prefix(req.prefix.as_deref())?;
    let project = find_active(&state, &project_id).await?;
    let sa = state.store.create_service_account(&project.id, &sa_name, state.clock.now()).await?;
    audit(
        &state,
        &actor,
        "service_account.created",
        Some(&project.id),
        json!({"id": sa.id, "data": {"role": sa.role}}),
    )
    .await;
    let mut created = CreatedServiceAccount { account: objects::service_account(&sa), api_key: None };
    if req.create_service_account_only != Some(true) {
        let (key, secret) = issue(
            &state,
            KeySpec {
                kind: KeyKind::Project,
                name: "Secret Key".into(),
                project_id: Some(project.id.clone()),
                owner: Some(OwnerRef::ServiceAccount(sa.id.clone())),
                prefix,
                permissions: Permissions::All,
                access: Access::default(),
                limits: Default::default(),
                budget: None,
                expires_at: None,
            },
        )
        .await?;
        audit(
            &state,
            &actor,
            "api_key.created",
            Some(&project.id),
            json!({"id": key.id.api_id(), "data": {"scopes": []}}),
        )
        .await;
        created.api_key = Some(ServiceAccountKey {
            object: "organization.project.service_account.api_key",
            value: secret.expose().to_owned(),
            name: key.name.clone(),
            created_at: key.created_at,
            id: key.id.api_id(),
        });
    }
    Ok(Json(created))
}

/// Deletes the service account and revokes every key it owns.
#[utoipa::path(delete, path = "/v1/organization/projects/{project_id}/service_accounts/{sa_id}", operation_id = "delete-project-service-account", summary = "Delete a project service account", description = "Deletes the service account and revokes every key it owns.", tag = "service accounts", params(("project_id" = String, Path), ("sa_id" = String, Path)), responses((status = 200, body = Deleted), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path((project_id, sa_id)): Path<(String, String)>,
) -> Result<Json<Deleted>, ApiError> {
    let sa = find(&state, &project_id, &sa_id).await?;
    let default = state.store.default_service_account(&project_id).await?;
    if default.is_some_and(|d| d.id == sa.id) {
        return Err(ApiError::BadRequest {
            message: "The project's default service account owns keys created without an owner and cannot be deleted."
                .into(),
            param: None,
        });
    }
    let revocation = Revocation {
        at: state.clock.now(),
        by: Some(actor.name()),
        reason: Some(format!("service account {} deleted", sa.id)),
    };
    let revoked = state.store.delete_service_account(&sa.id, &revocation).await?.ok_or(ApiError::Internal)?;
    state.index.upsert(revoked);
    audit(&state, &actor, "service_account.deleted", Some(&project_id), json!({"id": sa.id})).await;
    Ok(Json(objects::deleted("organization.project.service_account", &sa.id)))
}

async fn find(state: &AppState, project_id: &str, sa_id: &str) -> Result<ServiceAccount, ApiError> {
    let sa = state.store.get_service_account(sa_id).await?.filter(|sa| sa.project_id.as_deref() == Some(project_id));
    sa.ok_or_else(|| ApiError::NotFound { message: format!("No such service account: {sa_id}.") })
}
