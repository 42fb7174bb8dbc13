//! What every request gets around its handler: an `x-request-id`, a 500 in
//! OpenAI's shape if the handler panics, and afterwards the request metrics and
//! the record of a denial's private reason (for `keygate explain`), taken from
//! the `Denial` the one renderer attached to the answer.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;

use crate::auth::Denial;
use crate::dialect::ApiError;
use crate::ids::RequestId;
use crate::request::ClientIp;
use crate::state::AppState;
use crate::store::DenialRecord;

/// A handler that panics gets OpenAI's 500 (with its request id) instead of
/// a dropped connection. Nothing of the panic is logged here: its message may
/// hold request data; the process's panic hook logs only where it happened.
pub async fn catch_panic(req: Request, next: Next) -> Response {
    use futures_util::FutureExt as _;
    match std::panic::AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("a request handler panicked; answered 500");
            ApiError::Internal.into_response()
        }
    }
}

/// Gives every request its `x-request-id`, and after the handler records the
/// private reason of a denial (for `keygate explain`) and the request metrics.
pub(super) async fn request_context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = RequestId::new();
    req.extensions_mut().insert(id.clone());
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let client = req.extensions().get::<ClientIp>().map(|c| c.0);
    let started = Instant::now();
    let mut response = next.run(req).await;
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert("x-request-id", value);
    }
    if let Some(denial) = response.extensions().get::<Arc<Denial>>() {
        metrics::counter!("keygate_auth_failures_total", "reason" => denial.kind()).increment(1);
        let key = denial.key();
        tracing::info!(request_id = %id, client = ?client, key = ?key.map(|k| k.id.to_string()), reason = %denial, "request refused");
        state.recorder.denial(DenialRecord {
            request_id: id.as_str().to_owned(),
            at: state.clock.now(),
            reason: denial.kind().to_owned(),
            explanation: denial.to_string(),
            key_id: key.map(|k| k.id),
            project_id: key.and_then(|k| k.project_id.clone()),
            status: response.status().as_u16(),
            method: method.to_string(),
            path,
            client_ip: client.map(|ip| ip.to_string()),
        });
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("keygate_requests_total", "route" => route, "method" => method_label(&method), "status" => status)
        .increment(1);
    metrics::histogram!("keygate_request_duration_seconds").record(started.elapsed().as_secs_f64());
    response
}

/// A metric label from a closed set: a client may send any method string, and
/// each distinct label value is a series kept for the life of the process.
fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
