//! Organization users (created through the Admin API; keygate has no sign-in),
//! so a key can belong to a person.

use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::objects::{Deleted, List, UserObject};
use super::{audit, bad, json_body, name, objects, query, ListParams};
use crate::dialect::{ApiError, ErrorResponse};
use crate::session::{Principal, Role};
use crate::state::AppState;
use crate::store::{Revocation, StoreError, User};

/// OpenAI's `owner` and `reader`, and keygate's `member` (who sees only the
/// projects they are added to).
fn role(value: Option<&str>) -> Result<String, ApiError> {
    let role = value.unwrap_or("reader");
    match Role::parse(role) {
        Some(role) => Ok(role.as_str().to_owned()),
        None => Err(bad(format!("Invalid role `{role}`: expected `owner`, `reader` or `member`."), "role")),
    }
}

#[utoipa::path(get, path = "/v1/organization/users", operation_id = "list-users", summary = "List users", tag = "users", params(("after" = Option<String>, Query), ("limit" = Option<u32>, Query, description = "1 to 100, default 20")), responses((status = 200, body = List<UserObject>), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn list(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Result<Json<List<UserObject>>, ApiError> {
    let params: ListParams = query(raw.as_deref())?;
    let page = state.store.list_users(&params.page()?).await?;
    Ok(Json(List::new(page, |u| u.id.clone(), objects::user)))
}

#[utoipa::path(get, path = "/v1/organization/users/{user_id}", operation_id = "retrieve-user", summary = "Retrieve a user", tag = "users", params(("user_id" = String, Path)), responses((status = 200, body = UserObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn get(State(state): State<AppState>, Path(user_id): Path<String>) -> Result<Json<UserObject>, ApiError> {
    Ok(Json(objects::user(&find(&state, &user_id).await?)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    name: String,
    email: String,
    role: Option<String>,
}

/// `POST /v1/organization/users` (extension: OpenAI adds users by invitation).
#[utoipa::path(post, path = "/v1/organization/users", operation_id = "create-user", summary = "Create a user", tag = "users", description = "Ours: OpenAI adds users by invitation.", request_body = CreateUser, responses((status = 200, body = UserObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    body: Bytes,
) -> Result<Json<UserObject>, ApiError> {
    let req: CreateUser = json_body(&body)?;
    let user_name = name(&req.name, "User")?;
    let email = req.email.trim();
    if email.len() > 320 || !email.contains('@') || email.chars().any(char::is_whitespace) {
        return Err(bad(format!("Invalid email `{email}`."), "email"));
    }
    let role = role(req.role.as_deref())?;
    // Single sign-on matches people by email without case: no two may differ only in case.
    if !state.store.users_by_email(email).await?.is_empty() {
        return Err(bad(format!("A user with email `{email}` already exists."), "email"));
    }
    let user = match state.store.create_user(&user_name, email, &role, state.clock.now()).await {
        Err(StoreError::Duplicate(_)) => {
            return Err(bad(format!("A user with email `{email}` already exists."), "email"))
        }
        other => other?,
    };
    audit(&state, &actor, "user.added", None, json!({"id": user.id, "data": {"role": user.role}})).await;
    Ok(Json(objects::user(&user)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    role: String,
}

#[utoipa::path(post, path = "/v1/organization/users/{user_id}", operation_id = "modify-user", summary = "Modify a user", tag = "users", params(("user_id" = String, Path)), request_body = UpdateUser, responses((status = 200, body = UserObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Result<Json<UserObject>, ApiError> {
    let req: UpdateUser = json_body(&body)?;
    let role = role(Some(&req.role))?;
    find(&state, &user_id).await?;
    if actor.user_id() == Some(user_id.as_str()) {
        return Err(bad("You cannot change your own role; ask another owner.", "role"));
    }
    let user = state.store.update_user_role(&user_id, &role).await?.ok_or(ApiError::Internal)?;
    audit(&state, &actor, "user.updated", None, json!({"id": user.id, "changes_requested": {"role": role}})).await;
    Ok(Json(objects::user(&user)))
}

/// Removes the user and revokes every key the user owns.
#[utoipa::path(delete, path = "/v1/organization/users/{user_id}", operation_id = "delete-user", summary = "Delete a user", description = "Removes the user and revokes every key the user owns.", tag = "users", params(("user_id" = String, Path)), responses((status = 200, body = Deleted), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(user_id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let user = find(&state, &user_id).await?;
    if actor.user_id() == Some(user.id.as_str()) {
        return Err(bad("You cannot remove yourself; ask another owner.", "user_id"));
    }
    let revocation =
        Revocation { at: state.clock.now(), by: Some(actor.name()), reason: Some(format!("user {} deleted", user.id)) };
    let revoked = state.store.delete_user(&user.id, &revocation).await?.ok_or(ApiError::Internal)?;
    state.index.upsert(revoked);
    audit(&state, &actor, "user.deleted", None, json!({"id": user.id})).await;
    Ok(Json(objects::deleted("organization.user", &user.id)))
}

pub(super) async fn find(state: &AppState, user_id: &str) -> Result<User, ApiError> {
    state
        .store
        .get_user(user_id)
        .await?
        .ok_or_else(|| ApiError::NotFound { message: format!("No such user: {user_id}.") })
}
