//! The router: which handler and which layers serve each path. Public routes
//! (health, readiness, the OpenAPI document, the leaked-key report), the
//! Administration API, keygate's own `/v1/keygate/*` routes and the data plane
//! under both dialects; and apart, the metrics listener's router.

use axum::extract::{Request, State};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use http::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;

use super::{authenticate, context, data_plane, introspect};
use crate::dialect::ApiError;
use crate::request;
use crate::route;
use crate::state::AppState;

/// Every route keygate serves, with the layers around them: outermost the
/// request context, then the panic guard and the body deadline; the data
/// plane, keygate's own routes and the Administration API each behind their
/// authentication.
pub fn router(state: AppState) -> Router {
    let openai = Router::new()
        .route("/v1/{*rest}", any(data_plane::data_plane))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate::require_project_key));
    let admin =
        crate::admin::routes().route_layer(middleware::from_fn_with_state(state.clone(), authenticate::require_admin));
    let azure = Router::new()
        .route("/openai/{*rest}", any(data_plane::data_plane))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate::require_project_key))
        .route_layer(middleware::from_fn_with_state(state.clone(), crate::route::azure_front_door));
    let dashboard = if state.dashboard { crate::dashboard::routes() } else { Router::new() };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        // Reserved: keygate's own namespaces are never proxied.
        .route("/v1/organization/{*rest}", any(unknown_url))
        .route("/v1/keygate/{*rest}", any(unknown_url))
        .route(
            "/v1/keygate/echo-auth",
            get(introspect::echo_auth)
                .route_layer(middleware::from_fn_with_state(state.clone(), authenticate::require_extension_key)),
        )
        .route(
            "/v1/keygate/key",
            get(introspect::key_info)
                .route_layer(middleware::from_fn_with_state(state.clone(), authenticate::require_extension_key)),
        )
        // Public and keygate's own, though `/v1/keys/*` is otherwise forwarded.
        .merge(crate::admin::leak_report_routes())
        .merge(admin)
        .merge(dashboard)
        .merge(openai)
        .merge(azure)
        .fallback(unknown_url)
        .layer(middleware::from_fn_with_state(state.settings.request_body_timeout, request::request_body_deadline))
        .layer(middleware::from_fn(context::catch_panic))
        .layer(middleware::from_fn_with_state(state.clone(), context::request_context))
        .with_state(state)
}

/// `ready`; `degraded: ...` (200) while serving with reduced guarantees: the
/// database away (keys are checked from memory, so requests still pass; what
/// they write waits in bounded buffers) or Redis away under the fail-open
/// policy (per-replica limits); 503 when requests cannot be served.
async fn readyz(State(state): State<AppState>) -> Response {
    let mut degraded = Vec::new();
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await;
    if let Some(error) = match ping {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some("no answer within 2 s".to_owned()),
    } {
        tracing::warn!(%error, "readiness: the database is unreachable");
        degraded.push("database unreachable; keys are checked from memory and writes are buffered until it returns");
    }
    let limiter = match state.limiter.health().await {
        Ok(()) => None,
        Err(limiter) if limiter.serving => {
            Some(format!("{}; rate limits are per replica until it returns", limiter.reason))
        }
        Err(limiter) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}; requests are refused until it returns", limiter.reason),
            )
                .into_response()
        }
    };
    let reasons: Vec<&str> = limiter.as_deref().into_iter().chain(degraded).collect();
    if reasons.is_empty() {
        "ready".into_response()
    } else {
        format!("degraded: {}", reasons.join("; ")).into_response()
    }
}

/// The metrics listener's router: `GET /metrics` and nothing else. It is
/// served apart from the public listener (`server.metrics_listen`, loopback
/// by default): failure counts by reason would tell a guesser which keys exist.
pub fn metrics_router(metrics: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let text = metrics.render();
            async move { ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
        }),
    )
}

async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DOCUMENT.get_or_init(|| serde_json::to_string(&crate::openapi::document()).unwrap_or_default());
    ([(http::header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}

/// The router's fallback and keygate's reserved namespaces.
async fn unknown_url(req: Request) -> ApiError {
    route::invalid_url(&req)
}
