//! `GET /v1/organization/requests/{request_id}` (extension): the private
//! reason a request was refused, for `keygate explain`.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::dialect::{ApiError, ErrorResponse};
use crate::ids::PublicId;
use crate::ids::RequestId;
use crate::session::Principal;
use crate::state::AppState;
use crate::store::{AuditFilter, StoreResult};
use crate::time::Timestamp;

#[derive(Serialize, ToSchema)]
pub struct KeyMention {
    id: String,
    name: String,
    prefix: String,
}

/// `keygate.request`: why a request was refused.
#[derive(Serialize, ToSchema)]
pub struct RequestExplanation {
    object: &'static str,
    id: String,
    created_at: i64,
    status: u16,
    method: String,
    path: String,
    client_ip: Option<String>,
    /// A stable label, e.g. `revoked`, `rotated_out`, `missing_scope`.
    reason: String,
    /// The private reason in plain words.
    explanation: String,
    key: Option<KeyMention>,
    project_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/organization/requests/{request_id}",
    operation_id = "explain-request",
    summary = "Explain a refused request",
    description = "Ours: the private reason a request was refused, by its `x-request-id` (what `keygate explain` shows).",
    tag = "keygate",
    params(("request_id" = String, Path, description = "The `x-request-id` of a refused request")),
    responses(
        (status = 200, body = RequestExplanation),
        (status = 404, body = ErrorResponse, description = "Nothing recorded for that id"),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(request_id): Path<String>,
) -> Result<Json<RequestExplanation>, ApiError> {
    let not_found = || {
        ApiError::NotFound {
        message: format!(
            "No refusal is recorded for request {request_id}: it succeeded, it is older than the retention period, or it did not reach this gateway."
        ),
    }
    };
    let id = RequestId::parse(&request_id).ok_or_else(not_found)?;
    let record = match state.store.get_denial(id.as_str()).await? {
        Some(record) => record,
        None => {
            // A refusal answered a moment ago may still wait in the recorder's
            // queue (it writes every second): have it written, then look again.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), state.recorder.flush()).await;
            state.store.get_denial(id.as_str()).await?.ok_or_else(not_found)?
        }
    };
    // A member reads the refusals of their projects' keys only.
    if actor.project_filter().is_some() && !record.project_id.as_deref().is_some_and(|p| actor.sees_project(p)) {
        return Err(not_found());
    }
    let key = match &record.key_id {
        Some(id) => {
            state.store.get_key(id).await?.map(|k| KeyMention { id: k.id.api_id(), name: k.name, prefix: k.prefix })
        }
        None => None,
    };
    let explanation = match (record.reason.as_str(), &record.key_id) {
        ("suspended", Some(id)) => match suspension(&state, id, record.at, actor.project_filter().is_none()).await? {
            Some(why) => format!("{} {why}", record.explanation.trim_end_matches('.')),
            None => record.explanation,
        },
        _ => record.explanation,
    };
    Ok(Json(RequestExplanation {
        object: "keygate.request",
        id: record.request_id,
        created_at: record.at,
        status: record.status,
        method: record.method,
        path: record.path,
        client_ip: record.client_ip,
        reason: record.reason,
        explanation,
        key,
        project_id: record.project_id,
    }))
}

/// Who suspended the key before `at`, from the audit log: an alert (the
/// usage watcher's auto-suspend) or an admin (named only to those who see
/// the whole organization).
async fn suspension(state: &AppState, id: &PublicId, at: Timestamp, name_who: bool) -> StoreResult<Option<String>> {
    let events = state
        .store
        .list_audit(&AuditFilter {
            event_types: vec!["api_key.updated".into()],
            resource_ids: vec![id.api_id()],
            effective_at_lte: Some(at),
            limit: 50,
            ..AuditFilter::default()
        })
        .await?;
    let Some(event) = events.items.into_iter().find(|e| e.details["changes_requested"]["state"] == "suspended") else {
        return Ok(None);
    };
    let when = crate::time::rfc3339(event.effective_at);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    Ok(Some(match event.details.get("alert") {
        Some(alert) => format!(
            "(since {when}, suspended automatically by alert {}: {}, {}). Resume it with `keygate keys resume {}{}` once the key is known to be safe, or rotate it.",
            text(&alert["id"]),
            text(&alert["kind"]),
            text(&alert["message"]),
            id.api_id(),
            event.project.as_ref().map(|(project, _)| format!(" --project {project}")).unwrap_or_default()
        ),
        None => match (event.actor_key, event.actor_user) {
            _ if !name_who => format!("(since {when}, by an owner)."),
            (Some(actor), _) => format!("(since {when}, by admin key {} `{}`).", actor.id.api_id(), actor.name),
            (None, Some(Ok(user))) => format!("(since {when}, by {} <{}>).", user.name, user.email),
            _ => format!("(since {when})."),
        },
    }))
}
