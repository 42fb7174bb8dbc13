use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::{audit, json_body, objects, query, ListParams};
use crate::auth::Authorized;
use crate::dialect::ApiError;
use crate::server::AppState;

pub async fn list(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Result<Json<Value>, ApiError> {
    let params: ListParams = query(raw.as_deref())?;
    let page = state.store.list_projects(&params.page()?, params.include_archived).await?;
    Ok(Json(
        serde_json::to_value(objects::List::new(page, |p| p.id.clone(), objects::project))
            .map_err(|_| ApiError::Internal)?,
    ))
}

pub async fn get(State(state): State<AppState>, Path(project_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let project = state.store.get_project(&project_id).await?.ok_or_else(|| not_found(&project_id))?;
    Ok(Json(objects::project(&project)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProject {
    name: String,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Authorized>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: CreateProject = json_body(&body)?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 256 {
        return Err(ApiError::BadRequest {
            message: "Project name must be between 1 and 256 characters.".into(),
            param: Some("name"),
        });
    }
    let project = state.store.create_project(name, state.clock.now()).await?;
    audit(
        &state,
        &actor,
        "project.created",
        Some(&project.id),
        serde_json::json!({"id": project.id, "data": {"name": project.name}}),
    )
    .await;
    Ok(Json(objects::project(&project)))
}

pub fn not_found(project_id: &str) -> ApiError {
    ApiError::NotFound { message: format!("No such project: {project_id}.") }
}
