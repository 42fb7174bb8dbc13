//! `GET /v1/organization/requests/{request_id}` (extension): the private
//! reason a request was refused, for `keygate explain`.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::dialect::{ApiError, ErrorResponse};
use crate::ids::RequestId;
use crate::state::AppState;

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
    let key = match &record.key_id {
        Some(id) => {
            state.store.get_key(id).await?.map(|k| KeyMention { id: k.id.api_id(), name: k.name, prefix: k.prefix })
        }
        None => None,
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
        explanation: record.explanation,
        key,
        project_id: record.project_id,
    }))
}
