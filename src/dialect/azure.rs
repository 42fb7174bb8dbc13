//! Azure OpenAI's error bodies, statuses and headers
//! (`shared/spec/azure-wire.md` §3-4), rendered in one place. Routing-level
//! errors have Azure's own compact shape; errors Azure passes through from the
//! model (bad JSON, upstream failures) keep OpenAI's.

use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

use super::{openai, ApiError};
use crate::auth::Denial;
use crate::policy::{Dimension, Exceeded};

/// Exactly 224 bytes, as Azure sends it.
const INVALID_KEY: &str = r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}"#;
/// Exactly 56 bytes, with Azure's space after `"message":`.
const RESOURCE_NOT_FOUND: &str = r#"{"error":{"code":"404","message": "Resource not found"}}"#;
const DEPLOYMENT_NOT_FOUND: &str = r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again."}}"#;
const PERMISSION_DENIED: &str =
    r#"{"error":{"code":"PermissionDenied","message":"Principal does not have access to API/Operation."}}"#;
const SERVICE_UNAVAILABLE: &str = r#"{"error":{"code":"ServiceUnavailable","message":"The service is temporarily unable to process your request. Please try again later."}}"#;
const VERSION_NOT_SUPPORTED: &str = r#"{"error":{"code":"BadRequest","message":"API version not supported"}}"#;

fn compact(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(axum::body::Body::from(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Azure's 429 sentence; `operation` is the spec's operationId.
fn rate_limited(exceeded: &Exceeded, operation: &str, api_version: &str) -> (String, i64) {
    match exceeded {
        Exceeded::Rate { dimension, retry_after_ms, .. } => {
            let kind = if dimension.is_tokens() { "token" } else { "call" };
            let seconds = ((retry_after_ms + 999) / 1000).max(1);
            let message = match dimension {
                Dimension::FailedAuthPerMinute => {
                    format!("Too many failed authentication attempts from your address. Please retry after {seconds} seconds.")
                }
                _ => format!(
                    "Requests to the {operation} Operation under Azure OpenAI API version {api_version} have exceeded {kind} rate limit of your current OpenAI S0 pricing tier. Please retry after {seconds} seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."
                ),
            };
            (message, (*retry_after_ms).max(1))
        }
        Exceeded::Concurrency { .. } => (
            format!("Requests to the {operation} Operation under Azure OpenAI API version {api_version} have exceeded the concurrent request limit. Please retry after 1 seconds."),
            1000,
        ),
        Exceeded::TooLarge { requested, limit, .. } => (
            format!("Requests to the {operation} Operation under Azure OpenAI API version {api_version} need {requested} tokens, more than the token rate limit of {limit}. Please reduce the prompt or max_tokens."),
            0,
        ),
        Exceeded::Budget { .. } | Exceeded::Unavailable => (String::new(), 0),
    }
}

/// The spec's operationId for a data-plane path.
pub fn operation_id(path: &str) -> &'static str {
    match path {
        p if p.ends_with("/chat/completions") => "ChatCompletions_Create",
        p if p.ends_with("/completions") => "Completions_Create",
        p if p.ends_with("/embeddings") => "Embeddings_Create",
        _ => "Request",
    }
}

/// Renders `error` as Azure would answer it. `path` and `api_version` fill
/// the 429 sentence.
pub fn render(error: &ApiError, path: &str, api_version: &str) -> Response {
    let json = |status, body: &str| compact(status, body.to_owned());
    match error {
        ApiError::ResourceNotFound | ApiError::InvalidUrl { .. } => json(StatusCode::NOT_FOUND, RESOURCE_NOT_FOUND),
        ApiError::ApiVersionNotSupported => json(StatusCode::BAD_REQUEST, VERSION_NOT_SUPPORTED),
        ApiError::Denied(denial) => match denial {
            Denial::MissingCredential
            | Denial::MalformedAuthorization { .. }
            | Denial::MalformedKey { .. }
            | Denial::UnknownKey { .. }
            | Denial::WrongSecret { .. }
            | Denial::Revoked { .. }
            | Denial::Suspended { .. }
            | Denial::Expired { .. }
            | Denial::RotatedOut { .. }
            | Denial::ProjectArchived { .. } => json(StatusCode::UNAUTHORIZED, INVALID_KEY),
            Denial::AdminKeyOnDataPlane { .. }
            | Denial::ProjectKeyOnAdmin { .. }
            | Denial::MissingScope { .. }
            | Denial::IpNotAllowed { .. }
            | Denial::OrganizationMismatch { .. }
            | Denial::ProjectMismatch { .. } => json(StatusCode::UNAUTHORIZED, PERMISSION_DENIED),
            Denial::ModelNotAllowed { .. } | Denial::UnknownDeployment { .. } => {
                json(StatusCode::NOT_FOUND, DEPLOYMENT_NOT_FOUND)
            }
            Denial::Limited { exceeded: Exceeded::Budget { .. }, .. } => {
                let body = serde_json::json!({"error": {"code": "insufficient_quota", "message": openai::QUOTA}});
                let mut response = compact(StatusCode::TOO_MANY_REQUESTS, body.to_string());
                response.headers_mut().insert("x-should-retry", HeaderValue::from_static("false"));
                response
            }
            Denial::Limited { exceeded: Exceeded::Unavailable, .. } => {
                let mut response = json(StatusCode::SERVICE_UNAVAILABLE, SERVICE_UNAVAILABLE);
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Denial::Limited { exceeded, .. } | Denial::Throttled { exceeded, .. } => {
                let (message, retry_ms) = rate_limited(exceeded, operation_id(path), api_version);
                let body = serde_json::json!({"error": {"code": "429", "message": message}});
                let mut response = compact(StatusCode::TOO_MANY_REQUESTS, body.to_string());
                if retry_ms == 0 {
                    response.headers_mut().insert("x-should-retry", HeaderValue::from_static("false"));
                    return response;
                }
                let seconds = ((retry_ms + 999) / 1000).max(1);
                let headers = response.headers_mut();
                for (name, value) in [("retry-after", seconds.to_string()), ("retry-after-ms", retry_ms.to_string())] {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        headers.insert(name, value);
                    }
                }
                response
            }
        },
        // What Azure passes through from the model keeps OpenAI's shape.
        ApiError::InvalidJson
        | ApiError::MethodNotAllowed { .. }
        | ApiError::BodyTooLarge { .. }
        | ApiError::RequestTimeout { .. }
        | ApiError::BadRequest { .. }
        | ApiError::NotFound { .. }
        | ApiError::Forbidden { .. }
        | ApiError::SessionEnded
        | ApiError::UpstreamUnreachable { .. }
        | ApiError::UpstreamTimeout { .. }
        | ApiError::UpstreamUnavailable { .. }
        | ApiError::LeakReportsLimited { .. }
        | ApiError::Internal => openai::render(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_bodies_have_azures_exact_lengths() {
        assert_eq!(INVALID_KEY.len(), 224);
        assert_eq!(RESOURCE_NOT_FOUND.len(), 56);
        assert_eq!(DEPLOYMENT_NOT_FOUND.len(), 197);
    }
}
