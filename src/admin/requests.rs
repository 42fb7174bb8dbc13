//! `GET /v1/organization/requests/{request_id}` (extension): the private
//! reason a request was refused, for `keygate explain`.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::dialect::ApiError;
use crate::ids::RequestId;
use crate::server::AppState;

pub async fn get(State(state): State<AppState>, Path(request_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let not_found = || {
        ApiError::NotFound {
        message: format!(
            "No refusal is recorded for request {request_id}: it succeeded, it is older than the retention period, or it did not reach this gateway."
        ),
    }
    };
    let id = RequestId::parse(&request_id).ok_or_else(not_found)?;
    let record = state.store.get_denial(id.as_str()).await?.ok_or_else(not_found)?;
    let key = match &record.key_id {
        Some(id) => {
            state.store.get_key(id).await?.map(|k| json!({"id": k.id.api_id(), "name": k.name, "prefix": k.prefix}))
        }
        None => None,
    };
    Ok(Json(json!({
        "object": "keygate.request",
        "id": record.request_id,
        "created_at": record.at,
        "status": record.status,
        "method": record.method,
        "path": record.path,
        "client_ip": record.client_ip,
        "reason": record.reason,
        "explanation": record.explanation,
        "key": key,
        "project_id": record.project_id,
    })))
}
