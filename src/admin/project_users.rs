//! OpenAI's project users (`/v1/organization/projects/{id}/users`): who
//! belongs to a project. A user whose organization role is `member` sees and
//! manages the keys and usage of these projects only.

use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::objects::{Deleted, List, UserObject};
use super::{audit, bad, json_body, objects, query, ListParams};
use crate::dialect::{ApiError, ErrorResponse};
use crate::session::Principal;
use crate::state::AppState;
use crate::store::ProjectUser;

fn role(value: &str) -> Result<&'static str, ApiError> {
    match value {
        "owner" => Ok("owner"),
        "member" => Ok("member"),
        other => Err(bad(format!("Invalid role `{other}`: expected `owner` or `member`."), "role")),
    }
}

#[utoipa::path(get, path = "/v1/organization/projects/{project_id}/users", operation_id = "list-project-users", summary = "List a project's users", tag = "projects", params(("project_id" = String, Path), ("after" = Option<String>, Query), ("limit" = Option<u32>, Query)), responses((status = 200, body = List<UserObject>), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<List<UserObject>>, ApiError> {
    let params: ListParams = query(raw.as_deref())?;
    super::projects::find(&state, &project_id).await?;
    let page = state.store.list_project_users(&project_id, &params.page()?).await?;
    Ok(Json(List::new(page, |m| m.user.id.clone(), objects::project_user)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddProjectUser {
    user_id: String,
    role: String,
}

#[utoipa::path(post, path = "/v1/organization/projects/{project_id}/users", operation_id = "create-project-user", summary = "Add a user to a project", tag = "projects", params(("project_id" = String, Path)), request_body = AddProjectUser, responses((status = 200, body = UserObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Result<Json<UserObject>, ApiError> {
    let req: AddProjectUser = json_body(&body)?;
    let role = role(&req.role)?;
    super::projects::find_active(&state, &project_id).await?;
    super::users::find(&state, &req.user_id).await?;
    if state.store.get_project_user(&project_id, &req.user_id).await?.is_some() {
        return Err(bad(format!("User {} is already in project {project_id}.", req.user_id), "user_id"));
    }
    put(&state, &actor, &project_id, &req.user_id, role).await.map(Json)
}

#[utoipa::path(get, path = "/v1/organization/projects/{project_id}/users/{user_id}", operation_id = "retrieve-project-user", summary = "Retrieve a project user", tag = "projects", params(("project_id" = String, Path), ("user_id" = String, Path)), responses((status = 200, body = UserObject), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    Path((project_id, user_id)): Path<(String, String)>,
) -> Result<Json<UserObject>, ApiError> {
    Ok(Json(objects::project_user(&find(&state, &project_id, &user_id).await?)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateProjectUser {
    role: String,
}

#[utoipa::path(post, path = "/v1/organization/projects/{project_id}/users/{user_id}", operation_id = "modify-project-user", summary = "Modify a project user's role", tag = "projects", params(("project_id" = String, Path), ("user_id" = String, Path)), request_body = UpdateProjectUser, responses((status = 200, body = UserObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path((project_id, user_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<UserObject>, ApiError> {
    let req: UpdateProjectUser = json_body(&body)?;
    let role = role(&req.role)?;
    find(&state, &project_id, &user_id).await?;
    put(&state, &actor, &project_id, &user_id, role).await.map(Json)
}

#[utoipa::path(delete, path = "/v1/organization/projects/{project_id}/users/{user_id}", operation_id = "delete-project-user", summary = "Remove a user from a project", tag = "projects", description = "The user's keys in the project stay; revoke them apart.", params(("project_id" = String, Path), ("user_id" = String, Path)), responses((status = 200, body = Deleted), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path((project_id, user_id)): Path<(String, String)>,
) -> Result<Json<Deleted>, ApiError> {
    find(&state, &project_id, &user_id).await?;
    state.store.remove_project_user(&project_id, &user_id).await?;
    let details = json!({"id": user_id, "changes_requested": {"project_id": project_id, "project_role": null}});
    audit(&state, &actor, "user.updated", Some(&project_id), details).await;
    Ok(Json(objects::deleted("organization.project.user", &user_id)))
}

async fn put(
    state: &AppState,
    actor: &Principal,
    project_id: &str,
    user_id: &str,
    role: &str,
) -> Result<UserObject, ApiError> {
    state.store.put_project_user(project_id, user_id, role, state.clock.now()).await?;
    let member = find(state, project_id, user_id).await?;
    let details = json!({"id": user_id, "changes_requested": {"project_id": project_id, "project_role": role}});
    audit(state, actor, "user.updated", Some(project_id), details).await;
    Ok(objects::project_user(&member))
}

async fn find(state: &AppState, project_id: &str, user_id: &str) -> Result<ProjectUser, ApiError> {
    super::projects::find(state, project_id).await?;
    state
        .store
        .get_project_user(project_id, user_id)
        .await?
        .ok_or_else(|| ApiError::NotFound { message: format!("No user {user_id} in project {project_id}.") })
}
