use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::objects::{List, ProjectObject, ProjectRateLimitObject};
use super::{audit, cidrs, json_body, models, name, objects, query, ListParams};
use crate::dialect::{ApiError, ErrorResponse};
use crate::session::Principal;
use crate::state::AppState;
use crate::store::{Access, Project, ProjectUpdate};

#[utoipa::path(get, path = "/v1/organization/projects", operation_id = "list-projects", summary = "List projects", tag = "projects", params(("after" = Option<String>, Query), ("limit" = Option<u32>, Query, description = "1 to 100, default 20"), ("include_archived" = Option<bool>, Query)), responses((status = 200, body = List<ProjectObject>), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Json<List<ProjectObject>>, ApiError> {
    let params: ListParams = query(raw.as_deref())?;
    let page = params.page()?;
    let page = match actor.project_filter() {
        None => state.store.list_projects(&page, params.include_archived).await?,
        // A member's projects are few: listed whole, in one page.
        Some(mine) => {
            let mut items = Vec::with_capacity(mine.len());
            for id in mine {
                if let Some(project) = state.store.get_project(id).await? {
                    if params.include_archived || project.archived_at.is_none() {
                        items.push(project);
                    }
                }
            }
            crate::store::Page { items, has_more: false }
        }
    };
    Ok(Json(List::new(page, |p| p.id.clone(), objects::project)))
}

#[utoipa::path(get, path = "/v1/organization/projects/{project_id}", operation_id = "retrieve-project", summary = "Retrieve a project", tag = "projects", params(("project_id" = String, Path)), responses((status = 200, body = ProjectObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    Path(project_id): Path<String>,
) -> Result<Json<ProjectObject>, ApiError> {
    Ok(Json(objects::project(&find(&state, &project_id).await?)))
}

/// Create and update share these fields; `models` and `allowed_ips` are ours.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ProjectBody {
    name: Option<String>,
    #[serde(default, with = "super::nullable")]
    models: Option<Option<Vec<String>>>,
    allowed_ips: Option<Vec<String>>,
    /// Rotation policy (ours): keys whose newest secret is older are due.
    #[serde(default, deserialize_with = "super::nullable_i64")]
    max_key_age_seconds: Option<Option<i64>>,
    /// Ours: monthly spend limit of the whole project in US dollars (`null` removes it).
    #[serde(default, deserialize_with = "super::nullable_f64")]
    #[schema(value_type = Option<f64>)]
    monthly_budget_usd: Option<Option<f64>>,
    /// Ours: alert when this share of the budget is spent (default 80).
    budget_alert_percent: Option<u8>,
}

#[utoipa::path(post, path = "/v1/organization/projects", operation_id = "create-project", summary = "Create a project", tag = "projects", request_body = ProjectBody, responses((status = 200, body = ProjectObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    body: Bytes,
) -> Result<Json<ProjectObject>, ApiError> {
    let req: ProjectBody = json_body(&body)?;
    let project_name = name(req.name.as_deref().unwrap_or(""), "Project")?;
    let access = Access {
        models: req.models.flatten().map(models).transpose()?,
        allowed_ips: cidrs(&req.allowed_ips.unwrap_or_default())?,
    };
    let max_age = match req.max_key_age_seconds {
        Some(Some(age)) if age <= 0 => {
            return Err(super::bad("`max_key_age_seconds` must be positive.", "max_key_age_seconds"));
        }
        Some(age) => age,
        None => None,
    };
    let budget = super::budget(req.monthly_budget_usd.flatten(), req.budget_alert_percent)?;
    let mut project = state.store.create_project(&project_name, &access, state.clock.now()).await?;
    if max_age.is_some() || budget.is_some() {
        let update =
            ProjectUpdate { max_key_age_seconds: Some(max_age), budget: Some(budget), ..ProjectUpdate::default() };
        project = state.store.update_project(&project.id, &update).await?.ok_or(ApiError::Internal)?;
    }
    state.index.upsert_project(project.clone());
    audit(
        &state,
        &actor,
        "project.created",
        Some(&project.id),
        json!({"id": project.id, "data": {"name": project.name}}),
    )
    .await;
    Ok(Json(objects::project(&project)))
}

#[utoipa::path(post, path = "/v1/organization/projects/{project_id}", operation_id = "modify-project", summary = "Modify a project", tag = "projects", params(("project_id" = String, Path)), request_body = ProjectBody, responses((status = 200, body = ProjectObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Result<Json<ProjectObject>, ApiError> {
    let req: ProjectBody = json_body(&body)?;
    find(&state, &project_id).await?;
    let update = ProjectUpdate {
        name: req.name.as_deref().map(|n| name(n, "Project")).transpose()?,
        models: req.models.map(|m| m.map(models).transpose()).transpose()?,
        allowed_ips: req.allowed_ips.as_deref().map(cidrs).transpose()?,
        budget: match req.monthly_budget_usd {
            Some(usd) => Some(super::budget(usd, req.budget_alert_percent)?),
            None => None,
        },
        max_key_age_seconds: match req.max_key_age_seconds {
            Some(Some(age)) if age <= 0 => {
                return Err(super::bad("`max_key_age_seconds` must be positive.", "max_key_age_seconds"))
            }
            other => other,
        },
    };
    let project = state.store.update_project(&project_id, &update).await?.ok_or_else(|| not_found(&project_id))?;
    state.index.upsert_project(project.clone());
    audit(
        &state,
        &actor,
        "project.updated",
        Some(&project.id),
        json!({"id": project.id, "changes_requested": {"name": update.name}}),
    )
    .await;
    Ok(Json(objects::project(&project)))
}

/// Archives a project; its keys are refused from the next request on.
#[utoipa::path(post, path = "/v1/organization/projects/{project_id}/archive", operation_id = "archive-project", summary = "Archive a project", description = "Its keys are refused from the next request on.", tag = "projects", params(("project_id" = String, Path)), responses((status = 200, body = ProjectObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn archive(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(project_id): Path<String>,
) -> Result<Json<ProjectObject>, ApiError> {
    find(&state, &project_id).await?;
    if project_id == state.settings.default_project_id {
        return Err(ApiError::BadRequest { message: "The default project cannot be archived.".into(), param: None });
    }
    let project =
        state.store.archive_project(&project_id, state.clock.now()).await?.ok_or_else(|| not_found(&project_id))?;
    state.index.upsert_project(project.clone());
    audit(&state, &actor, "project.archived", Some(&project.id), json!({"id": project.id})).await;
    Ok(Json(objects::project(&project)))
}

pub async fn find(state: &AppState, project_id: &str) -> Result<Project, ApiError> {
    state.store.get_project(project_id).await?.ok_or_else(|| not_found(project_id))
}

/// A project that exists and is not archived.
pub async fn find_active(state: &AppState, project_id: &str) -> Result<Project, ApiError> {
    let project = find(state, project_id).await?;
    if project.archived_at.is_some() {
        return Err(ApiError::BadRequest { message: format!("Project {project_id} is archived."), param: None });
    }
    Ok(project)
}

pub fn not_found(project_id: &str) -> ApiError {
    ApiError::NotFound { message: format!("No such project: {project_id}.") }
}

#[utoipa::path(get, path = "/v1/organization/projects/{project_id}/rate_limits", operation_id = "list-project-rate-limits", summary = "List a project's rate limits per model", tag = "projects", params(("project_id" = String, Path)), responses((status = 200, body = List<ProjectRateLimitObject>), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn rate_limits(
    State(state): State<AppState>,
    Path(project_id): Path<String>,
) -> Result<Json<List<ProjectRateLimitObject>>, ApiError> {
    let project = find(&state, &project_id).await?;
    let page = crate::store::Page { items: project.rate_limits, has_more: false };
    Ok(Json(List::new(page, |m| format!("rl-{}", m.model), objects::project_rate_limit)))
}

/// Sets a project's limits for `rl-<model pattern>` (`rl-*`: all models
/// together): only the fields given change, `null` removes one (as OpenAI's
/// update does). Ours: an entry that does not exist yet is created; one left
/// with no limit at all is removed.
#[utoipa::path(post, path = "/v1/organization/projects/{project_id}/rate_limits/{rate_limit_id}", operation_id = "update-project-rate-limits", summary = "Update a project rate limit", description = "Sets a project's limits for `rl-<model pattern>` (`rl-*`: all models together): only the fields given change, `null` removes one (as OpenAI's update does). Ours: an entry that does not exist yet is created; one left with no limit at all is removed.", tag = "projects", params(("project_id" = String, Path), ("rate_limit_id" = String, Path, description = "`rl-` + model pattern")), request_body = super::RateLimitsPatch, responses((status = 200, body = ProjectRateLimitObject), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn update_rate_limit(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path((project_id, rate_limit_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<ProjectRateLimitObject>, ApiError> {
    let patch: super::RateLimitsPatch = json_body(&body)?;
    let model = rate_limit_id
        .strip_prefix("rl-")
        .filter(|m| !m.is_empty() && m.len() <= 256 && !m.chars().any(char::is_control))
        .ok_or_else(|| ApiError::NotFound { message: format!("No such rate limit: {rate_limit_id}.") })?;
    let current = find(&state, &project_id).await?;
    let before = current.rate_limits.iter().find(|m| m.model == model).map(|m| m.limits).unwrap_or_default();
    let limits = patch.apply(before)?;
    let project = state
        .store
        .set_project_rate_limit(&project_id, model, (!limits.is_empty()).then_some(&limits))
        .await?
        .ok_or_else(|| not_found(&project_id))?;
    state.index.upsert_project(project);
    audit(
        &state,
        &actor,
        "rate_limit.updated",
        Some(&project_id),
        json!({"id": rate_limit_id, "changes_requested": limits}),
    )
    .await;
    Ok(Json(objects::project_rate_limit(&crate::policy::ModelLimits { model: model.to_owned(), limits })))
}
