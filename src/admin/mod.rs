//! The Administration API under `/v1/organization`, in OpenAI's shapes
//! (`shared/spec/openai-wire.md` §4) plus documented extensions, and the
//! library functions the CLI and bootstrap share.
//!
//! Owns: admin handlers, API objects, key creation and revocation, audit
//! events for each action. Authentication (admin keys only) is applied by the
//! server around these routes.

mod bootstrap;
mod keys;
mod objects;
mod projects;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::auth::Authorized;
use crate::dialect::ApiError;
use crate::server::AppState;
use crate::store::{AuditEvent, PageQuery};

pub use bootstrap::bootstrap_admin_key;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/organization/projects", get(projects::list).post(projects::create))
        .route("/v1/organization/projects/{project_id}", get(projects::get))
        .route("/v1/organization/projects/{project_id}/api_keys", get(keys::list).post(keys::create))
        .route("/v1/organization/projects/{project_id}/api_keys/{key_id}", get(keys::get).delete(keys::delete))
}

/// Parses a JSON body into `T`, with OpenAI-shaped errors.
fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| ApiError::InvalidJson)?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::BadRequest { message: format!("Invalid request body: {e}."), param: None })
}

/// Parses the query string into `T`, with OpenAI-shaped errors.
fn query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::BadRequest { message: format!("Invalid query parameters: {e}."), param: None })
}

#[derive(Debug, Deserialize)]
struct ListParams {
    after: Option<String>,
    limit: Option<u32>,
    #[serde(default)]
    include_archived: bool,
}

impl ListParams {
    fn page(&self) -> Result<PageQuery, ApiError> {
        let limit = self.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::BadRequest {
                message: format!("Invalid 'limit': {limit}. Expected a value between 1 and 100."),
                param: Some("limit"),
            });
        }
        Ok(PageQuery { after: self.after.clone(), limit })
    }
}

/// Records an admin action; the action already happened, so a failure to
/// record is logged loudly rather than undoing it.
async fn audit(
    state: &AppState,
    actor: &Authorized,
    kind: &'static str,
    project_id: Option<&str>,
    details: serde_json::Value,
) {
    let event = AuditEvent {
        id: crate::ids::audit_log_id(),
        kind,
        effective_at: state.clock.now(),
        project_id: project_id.map(str::to_owned),
        actor_key_id: Some(actor.key.id.clone()),
        details,
    };
    if let Err(error) = state.store.append_audit(&event).await {
        tracing::error!(%error, kind, "could not write an audit event");
    }
}
