//! OpenAI's error envelope, statuses, `type`s, `code`s and texts
//! (`shared/spec/openai-wire.md` §1), rendered in one place.

use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

use super::{ApiError, RenderOptions};
use crate::auth::{dimension_name, Denial, ForeignKey};
use crate::key::KeyFormatError;
use crate::policy::{Dimension, Exceeded};
use crate::time::go_duration;

const NO_KEY: &str = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.";
const BAD_SCHEME: &str = "Missing bearer or basic authentication in header";
const BAD_JSON: &str = "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)";

/// OpenAI's error envelope; all four fields are always present.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    error: ErrorBody,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    message: String,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

/// At most this many characters of a string the client sent come back in a
/// message; the rest is cut at a character boundary and marked with `...`.
const ECHO_CHARS: usize = 256;

/// A client's string as echoed in an error: bounded, so a request cannot make
/// keygate send (or store, for `explain`) more than it was sent for nothing.
fn echo(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(ECHO_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]).into(),
        None => text.into(),
    }
}

fn invalid_api_key(mask: &str) -> String {
    format!("Incorrect API key provided: {mask}. You can find your API key at https://platform.openai.com/account/api-keys.")
}

fn missing_scope(scope: &str) -> String {
    format!(
        "You have insufficient permissions for this operation. Missing scopes: {scope}. Check that you have the correct role in your organization (Reader, Writer, Owner) and project (Member, Owner), and if you're using a restricted API key, that it has the necessary scopes."
    )
}

/// Status, `message`, `type`, `param` and `code` for each error. Exhaustive on
/// purpose: a new variant must choose all of them.
pub(super) fn parts(
    error: &ApiError,
) -> (StatusCode, String, &'static str, Option<&'static str>, Option<&'static str>) {
    const IRE: &str = "invalid_request_error";
    match error {
        ApiError::Denied(denial) => match denial {
            Denial::MissingCredential => (StatusCode::UNAUTHORIZED, NO_KEY.into(), IRE, None, None),
            Denial::MalformedAuthorization { .. } => (StatusCode::UNAUTHORIZED, BAD_SCHEME.into(), IRE, None, None),
            Denial::MalformedKey { mask, .. }
            | Denial::UnknownKey { mask, .. }
            | Denial::WrongSecret { mask, .. }
            | Denial::Revoked { mask, .. }
            | Denial::Suspended { mask, .. }
            | Denial::Expired { mask, .. }
            | Denial::RotatedOut { mask, .. }
            | Denial::ProjectArchived { mask, .. } => {
                (StatusCode::UNAUTHORIZED, invalid_api_key(mask), IRE, None, Some("invalid_api_key"))
            }
            Denial::AdminKeyOnDataPlane { scope, .. }
            | Denial::ProjectKeyOnAdmin { scope, .. }
            | Denial::MissingScope { scope, .. } => {
                (StatusCode::UNAUTHORIZED, missing_scope(scope.as_str()), IRE, None, None)
            }
            Denial::OrganizationMismatch { .. } => (
                StatusCode::UNAUTHORIZED,
                "OpenAI-Organization header should match organization for API key".into(),
                IRE,
                None,
                Some("mismatched_organization"),
            ),
            Denial::ProjectMismatch { .. } => (
                StatusCode::UNAUTHORIZED,
                "OpenAI-Project header should match project for API key".into(),
                IRE,
                None,
                Some("mismatched_project"),
            ),
            Denial::IpNotAllowed { .. } => {
                (StatusCode::UNAUTHORIZED, "IP not authorized for this project.".into(), IRE, None, None)
            }
            Denial::Limited { model, organization, exceeded, .. } => limited(exceeded, model.as_deref(), organization),
            Denial::Throttled { exceeded, .. } => limited(exceeded, None, ""),
            Denial::UnknownDeployment { deployment, .. } => (
                StatusCode::NOT_FOUND,
                format!("The model `{}` does not exist or you do not have access to it.", echo(deployment)),
                IRE,
                None,
                Some("model_not_found"),
            ),
            Denial::ModelNotAllowed { model, .. } => (
                StatusCode::NOT_FOUND,
                format!("The model `{}` does not exist or you do not have access to it.", echo(model)),
                IRE,
                None,
                Some("model_not_found"),
            ),
        },
        ApiError::InvalidUrl { method, path } => {
            (StatusCode::NOT_FOUND, format!("Invalid URL ({} {})", echo(method.as_str()), echo(path)), IRE, None, None)
        }
        ApiError::InvalidJson => (StatusCode::BAD_REQUEST, BAD_JSON.into(), IRE, None, None),
        ApiError::MethodNotAllowed { method } => (
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "Method {} is not allowed for this URL; the Allow header lists the methods it accepts.",
                echo(method.as_str())
            ),
            IRE,
            None,
            Some("method_not_supported"),
        ),
        // Only the Azure front door raises these; OpenAI's equivalents:
        ApiError::ResourceNotFound => (StatusCode::NOT_FOUND, "Resource not found".into(), IRE, None, None),
        ApiError::ApiVersionNotSupported => {
            (StatusCode::BAD_REQUEST, "API version not supported".into(), IRE, None, None)
        }
        ApiError::BodyTooLarge { limit } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large: this gateway accepts at most {limit} bytes."),
            IRE,
            None,
            Some("request_too_large"),
        ),
        ApiError::RequestTimeout { timeout } => (
            StatusCode::REQUEST_TIMEOUT,
            format!("The request body was not received within {} ms. Please retry your request.", timeout.as_millis()),
            IRE,
            None,
            None,
        ),
        ApiError::BadRequest { message, param } => (StatusCode::BAD_REQUEST, message.clone(), IRE, *param, None),
        ApiError::NotFound { message } => (StatusCode::NOT_FOUND, message.clone(), IRE, None, None),
        ApiError::SessionEnded => (
            StatusCode::UNAUTHORIZED,
            "Your dashboard session has ended (signed out, expired or idle too long). Sign in again at /ui/sign-in."
                .into(),
            IRE,
            None,
            Some("session_expired"),
        ),
        ApiError::Forbidden { message, code } => (StatusCode::FORBIDDEN, message.clone(), IRE, None, Some(*code)),
        ApiError::UpstreamUnreachable { upstream } => (
            StatusCode::BAD_GATEWAY,
            format!("The gateway could not reach the upstream `{upstream}`. Please retry your request."),
            "server_error",
            None,
            Some("upstream_unreachable"),
        ),
        ApiError::UpstreamUnavailable { upstream } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "The gateway's upstream `{upstream}` could not serve this request: its members failed or are out of rotation. Please retry your request."
            ),
            "server_error",
            None,
            Some("upstream_unavailable"),
        ),
        ApiError::UpstreamTimeout { upstream } => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("The upstream `{upstream}` did not answer in time. Please retry your request."),
            "server_error",
            None,
            Some("upstream_timeout"),
        ),
        ApiError::LeakReportsLimited { exceeded } => {
            let (limit, used, retry_after_ms) = match exceeded {
                Exceeded::Rate { limit, used, retry_after_ms, .. } => (*limit, *used, *retry_after_ms),
                _ => (0, 0, 1000),
            };
            (
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Rate limit reached for leaked-key reports from your address: Limit {limit} per min, Used {used}, Requested 1. Please try again in {}.",
                    go_duration(retry_after_ms * 1000)
                ),
                "requests",
                None,
                Some("rate_limit_exceeded"),
            )
        }
        ApiError::Internal => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!".into(),
            "server_error",
            None,
            None,
        ),
    }
}

/// A hint for `errors.hints`, from facts of the presented string alone: it
/// never tells whether a key exists.
fn hint(denial: &Denial) -> Option<&'static str> {
    match denial {
        Denial::MalformedKey { reason, .. } => Some(match reason {
            KeyFormatError::ChecksumMismatch => "the key's checksum does not match: it was mistyped or altered",
            KeyFormatError::BadLength { .. } => "the key has the wrong length: it was truncated or pasted twice",
            KeyFormatError::Whitespace { .. } => "the key contains whitespace",
            KeyFormatError::Quoted => "the key is wrapped in quotes",
            KeyFormatError::NonAscii { .. } => "the key contains a non-ASCII character (a look-alike letter?)",
            KeyFormatError::BadCharacter { .. } => "the key contains a character keygate keys never contain",
            KeyFormatError::BadPrefix(_) => "the key's prefix is malformed",
            KeyFormatError::UnknownVersion(_) => "the key's format version is unknown to this gateway",
            KeyFormatError::Empty | KeyFormatError::NotKeygate => return None,
        }),
        Denial::UnknownKey { foreign: Some(ForeignKey::OpenAi), .. } => {
            Some("this is an OpenAI key; use a key issued by this gateway")
        }
        Denial::UnknownKey { foreign: Some(ForeignKey::Azure), .. } => {
            Some("this looks like an Azure OpenAI key; use a key issued by this gateway")
        }
        _ => None,
    }
}

pub fn render(error: &ApiError) -> Response {
    render_with(error, &RenderOptions::default())
}

pub const QUOTA: &str = "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.";

/// OpenAI's 429s: `rate_limit_exceeded` (type `requests` or `tokens`) with its
/// sentence, or `insufficient_quota` for a spent budget.
fn limited(
    exceeded: &Exceeded,
    model: Option<&str>,
    organization: &str,
) -> (StatusCode, String, &'static str, Option<&'static str>, Option<&'static str>) {
    const TOO_MANY: StatusCode = StatusCode::TOO_MANY_REQUESTS;
    let subject = match model {
        Some(model) => format!("Rate limit reached for {model} in organization {organization}"),
        None => format!("Rate limit reached for organization {organization}"),
    };
    const VISIT: &str = "Visit https://platform.openai.com/account/rate-limits to learn more.";
    match exceeded {
        Exceeded::Rate { dimension: Dimension::FailedAuthPerMinute, limit, used, retry_after_ms, .. } => (
            TOO_MANY,
            format!(
                "Rate limit reached for failed authentication attempts from your address: Limit {limit} per min, Used {used}, Requested 1. Please try again in {}.",
                go_duration(retry_after_ms * 1000)
            ),
            "requests",
            None,
            Some("rate_limit_exceeded"),
        ),
        Exceeded::Rate { dimension, limit, used, requested, retry_after_ms, .. } => (
            TOO_MANY,
            format!(
                "{subject} on {}: Limit {limit}, Used {used}, Requested {requested}. Please try again in {}. {VISIT}",
                dimension_name(*dimension),
                go_duration(retry_after_ms * 1000)
            ),
            if dimension.is_tokens() { "tokens" } else { "requests" },
            None,
            Some("rate_limit_exceeded"),
        ),
        Exceeded::TooLarge { dimension, limit, requested, .. } => (
            TOO_MANY,
            format!(
                "Request too large for {} on {}: Limit {limit}, Requested {requested}. The input or output tokens must be reduced in order to run successfully. {VISIT}",
                match model {
                    Some(model) => format!("{model} in organization {organization}"),
                    None => format!("organization {organization}"),
                },
                dimension_name(*dimension)
            ),
            if dimension.is_tokens() { "tokens" } else { "requests" },
            None,
            Some("rate_limit_exceeded"),
        ),
        Exceeded::Concurrency { limit, .. } => (
            TOO_MANY,
            format!("{subject} on concurrent requests: Limit {limit}, Used {limit}, Requested 1. Please try again in 1s. {VISIT}"),
            "requests",
            None,
            Some("rate_limit_exceeded"),
        ),
        Exceeded::Budget { .. } => (TOO_MANY, QUOTA.into(), "insufficient_quota", None, Some("insufficient_quota")),
        Exceeded::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The rate limiter is unavailable; please retry your request shortly.".into(),
            "server_error",
            None,
            None,
        ),
    }
}

/// The retry headers of a 429: `retry-after` (whole seconds, at least 1) and
/// `retry-after-ms`, which the SDKs read first; a spent budget instead says
/// `x-should-retry: false` so the SDKs stop retrying.
fn retry_headers(error: &ApiError, headers: &mut http::HeaderMap) {
    let exceeded = match error {
        ApiError::Denied(Denial::Limited { exceeded, .. } | Denial::Throttled { exceeded, .. })
        | ApiError::LeakReportsLimited { exceeded } => exceeded,
        _ => return,
    };
    let retry_ms = match exceeded {
        Exceeded::Rate { retry_after_ms, .. } => (*retry_after_ms).max(1),
        Exceeded::Concurrency { .. } | Exceeded::Unavailable => 1000,
        Exceeded::Budget { .. } | Exceeded::TooLarge { .. } => {
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
            return;
        }
    };
    let seconds = ((retry_ms + 999) / 1000).max(1);
    if let (Ok(s), Ok(ms)) = (HeaderValue::from_str(&seconds.to_string()), HeaderValue::from_str(&retry_ms.to_string()))
    {
        headers.insert(header::RETRY_AFTER, s);
        headers.insert("retry-after-ms", ms);
    }
}

pub fn render_with(error: &ApiError, options: &RenderOptions) -> Response {
    let (status, mut message, kind, param, code) = parts(error);
    if let (true, ApiError::Denied(denial)) = (options.hints, error) {
        if let Some(hint) = hint(denial) {
            message.push_str(&format!(" (keygate hint: {hint}.)"));
        }
    }
    let envelope = ErrorResponse { error: ErrorBody { message, kind, param, code } };
    // OpenAI pretty-prints error bodies with a two-space indent.
    let mut body = serde_json::to_vec_pretty(&envelope).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(axum::body::Body::from(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("openai-version", HeaderValue::from_static("2020-10-01"));
    retry_headers(error, headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyRef;
    use crate::ids::PublicId;
    use crate::policy::data_plane_scope;

    async fn body_of(error: ApiError) -> (StatusCode, String) {
        let response = render(&error);
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn key_ref() -> KeyRef {
        KeyRef { id: PublicId::random(), name: "n".into(), prefix: "sk-".into(), project_id: None }
    }

    #[tokio::test]
    async fn invalid_key_is_byte_exact() {
        let mask = crate::key::mask_for_error(&format!("sk-4sJHr{}w8ZP", "x".repeat(39)));
        let (status, body) = body_of(ApiError::Denied(Denial::UnknownKey { mask, foreign: None, legacy: false })).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            body,
            "{\n  \"error\": {\n    \"message\": \"Incorrect API key provided: sk-4sJHr***************************************w8ZP. You can find your API key at https://platform.openai.com/account/api-keys.\",\n    \"type\": \"invalid_request_error\",\n    \"param\": null,\n    \"code\": \"invalid_api_key\"\n  }\n}\n"
        );
    }

    #[tokio::test]
    async fn unknown_revoked_and_mistyped_keys_look_the_same() {
        let mask = "sk-prod-****abcd".to_owned();
        let variants = [
            Denial::UnknownKey { mask: mask.clone(), foreign: None, legacy: false },
            Denial::UnknownKey { mask: mask.clone(), foreign: None, legacy: true },
            Denial::UnknownKey { mask: mask.clone(), foreign: Some(ForeignKey::OpenAi), legacy: false },
            Denial::MalformedKey { mask: mask.clone(), reason: KeyFormatError::ChecksumMismatch, near: None },
            Denial::WrongSecret { mask: mask.clone(), key: key_ref() },
            Denial::Revoked { mask: mask.clone(), key: key_ref(), revocation: None },
            Denial::Suspended { mask: mask.clone(), key: key_ref() },
            Denial::Expired { mask: mask.clone(), key: key_ref(), at: 1 },
            Denial::RotatedOut { mask: mask.clone(), key: key_ref(), at: 1, rotated_at: Some(0) },
            Denial::ProjectArchived { mask, key: key_ref(), project: "proj_1".into(), at: 1 },
        ];
        let mut bodies = Vec::new();
        for denial in variants {
            let response = render(&ApiError::Denied(denial));
            let headers: Vec<_> = response.headers().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            bodies.push((
                response.status(),
                headers,
                axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap(),
            ));
        }
        assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    }

    #[tokio::test]
    async fn hints_are_appended_only_when_enabled_and_only_from_the_string() {
        let denial = Denial::MalformedKey { mask: "m".into(), reason: KeyFormatError::ChecksumMismatch, near: None };
        let with = render_with(&ApiError::Denied(denial.clone()), &RenderOptions { hints: true });
        let body = axum::body::to_bytes(with.into_body(), usize::MAX).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("api-keys. (keygate hint: the key's checksum does not match: it was mistyped or altered.)"));
        let (_, plain) = body_of(ApiError::Denied(denial)).await;
        assert!(!plain.contains("hint"));
        let revoked = Denial::Revoked { mask: "m".into(), key: key_ref(), revocation: None };
        let with = render_with(&ApiError::Denied(revoked), &RenderOptions { hints: true });
        let body = axum::body::to_bytes(with.into_body(), usize::MAX).await.unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("hint"), "a hint must never reveal that a key exists");
    }

    #[tokio::test]
    async fn missing_key_and_bad_scheme_have_null_code() {
        let (status, body) = body_of(ApiError::Denied(Denial::MissingCredential)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().starts_with("You didn't provide an API key."));
        assert!(v["error"]["code"].is_null());
        let (_, body) = body_of(ApiError::Denied(Denial::MalformedAuthorization { detail: "x" })).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["message"], "Missing bearer or basic authentication in header");
        assert!(v["error"]["code"].is_null());
    }

    #[tokio::test]
    async fn admin_key_on_models_names_the_scope() {
        let scope = data_plane_scope(&http::Method::POST, "/v1/chat/completions");
        let (status, body) = body_of(ApiError::Denied(Denial::AdminKeyOnDataPlane { key: key_ref(), scope })).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("Missing scopes: model.request."));
    }

    #[tokio::test]
    async fn invalid_url_names_method_and_path() {
        let (status, body) =
            body_of(ApiError::InvalidUrl { method: http::Method::POST, path: "/v1/nope".into() }).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["message"], "Invalid URL (POST /v1/nope)");
    }

    #[tokio::test]
    async fn upstream_failures_are_502_and_504() {
        assert_eq!(body_of(ApiError::UpstreamUnreachable { upstream: "u".into() }).await.0, StatusCode::BAD_GATEWAY);
        assert_eq!(body_of(ApiError::UpstreamTimeout { upstream: "u".into() }).await.0, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(body_of(ApiError::BodyTooLarge { limit: 1 }).await.0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body_of(ApiError::InvalidJson).await.0, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn a_body_that_arrives_too_slowly_is_408() {
        let (status, body) = body_of(ApiError::RequestTimeout { timeout: std::time::Duration::from_secs(60) }).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"message": "The request body was not received within 60000 ms. Please retry your request.", "type": "invalid_request_error", "param": null, "code": null}})
        );
    }
}
