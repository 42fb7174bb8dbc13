//! `GET /v1/keygate/upstreams` (ours, admin only): every upstream pool and
//! the state of each member, as this replica sees it. Never a credential.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::dialect::ErrorResponse;
use crate::proxy::MemberStatus;
use crate::state::AppState;

/// `keygate.upstream`: one pool.
#[derive(Serialize, ToSchema)]
pub struct PoolObject {
    object: &'static str,
    name: String,
    /// The model patterns routed here (empty: the default route).
    models: Vec<String>,
    members: Vec<MemberStatus>,
}

#[derive(Serialize, ToSchema)]
pub struct PoolList {
    object: &'static str,
    data: Vec<PoolObject>,
}

#[utoipa::path(
    get,
    path = "/v1/keygate/upstreams",
    operation_id = "list-upstreams",
    summary = "Upstream pools and their members' health",
    tag = "keygate",
    description = "Ours: each pool (the first is the default route) and each member: `healthy`, `open` (cooling down after failures, or its provider key was refused) or `half_open` (the next request tries it), with its weight, load, failures, latency and last error, as this replica sees them.",
    responses((status = 200, body = PoolList), (status = 401, body = ErrorResponse))
)]
pub async fn list(State(state): State<AppState>) -> Json<PoolList> {
    let data = state
        .upstreams
        .pools()
        .iter()
        .map(|pool| PoolObject {
            object: "keygate.upstream",
            name: pool.name.clone(),
            models: pool.models.clone(),
            members: pool.status(),
        })
        .collect();
    Json(PoolList { object: "list", data })
}
