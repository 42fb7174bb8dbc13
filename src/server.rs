//! The HTTP server: the router (public routes, the Administration API, the
//! data plane), the request-id middleware that also records denials and
//! metrics, and the accept loop with TLS, the connection cap and timeouts
//! (`connection`) and graceful shutdown. The state it serves with is
//! `state`'s; the client address and body reading are `request`'s.

mod connection;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use http::{HeaderValue, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::auth::{self, Authorized, Denial, Plane};
use crate::dialect::{ApiError, Dialect};
use crate::ids::RequestId;
use crate::proxy::{self, RequestMeta};
use crate::request::{self, client_ip, read_body, ClientIp};
use crate::route::Route;
use crate::state::AppState;
use crate::store::{DenialRecord, Touch};
use crate::usage::Metered;

pub use connection::ConnectionLimits;

pub fn router(state: AppState) -> Router {
    let openai = Router::new()
        .route("/v1/{*rest}", any(data_plane))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_project_key));
    let admin = crate::admin::routes().route_layer(middleware::from_fn_with_state(state.clone(), require_admin_key));
    let azure = Router::new()
        .route("/openai/{*rest}", any(data_plane))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_project_key))
        .route_layer(middleware::from_fn_with_state(state.clone(), crate::route::azure_front_door));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        // Reserved: keygate's own namespaces are never proxied.
        .route("/v1/organization/{*rest}", any(invalid_url))
        .route("/v1/keygate/{*rest}", any(invalid_url))
        .route(
            "/v1/keygate/echo-auth",
            get(echo_auth).route_layer(middleware::from_fn_with_state(state.clone(), require_extension_key)),
        )
        .route(
            "/v1/keygate/key",
            get(key_info).route_layer(middleware::from_fn_with_state(state.clone(), require_extension_key)),
        )
        // Public and keygate's own, though `/v1/keys/*` is otherwise forwarded.
        .merge(crate::admin::leak_report_routes())
        .merge(admin)
        .merge(openai)
        .merge(azure)
        .fallback(invalid_url)
        .layer(middleware::from_fn_with_state(state.settings.request_body_timeout, request::request_body_deadline))
        .layer(middleware::from_fn(catch_panic))
        .layer(middleware::from_fn_with_state(state.clone(), request_context))
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

/// `GET /v1/keygate/echo-auth` (ours, any valid key): the length and a
/// SHA-256 prefix of the Authorization header that arrived, so `keygate doctor`
/// can tell whether something on the way stripped or rewrote it.
async fn echo_auth(req: Request) -> Response {
    use sha2::Digest as _;
    let value = req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    let digest = hex::encode(sha2::Sha256::digest(value));
    axum::Json(
        serde_json::json!({"object": "keygate.echo_auth", "length": value.len(), "sha256_prefix": &digest[..16]}),
    )
    .into_response()
}

/// `GET /v1/keygate/key` (ours, any valid project key): what the presenting
/// key may do, from the decision already made for this request: its id, name,
/// permissions, the model calls they allow, the key's and its project's model
/// allow-lists, limits and budgets. Never the secret. `keygate doctor` reads it
/// to warn about a key that cannot call any model before a call fails.
async fn key_info(req: Request) -> Response {
    let Some(authorized) = req.extensions().get::<Authorized>() else { return ApiError::Internal.into_response() };
    let key = &authorized.key;
    let policy = &key.policy;
    let project = authorized.project.as_deref();
    let model_calls = policy.permissions.model_calls();
    let no_models = |models: Option<&Vec<String>>| models.is_some_and(|m| m.is_empty());
    let project_models = project.and_then(|p| p.access.models.as_ref());
    let can_call_models =
        !model_calls.is_empty() && !no_models(policy.access.models.as_ref()) && !no_models(project_models);
    let usd = |nanos: i64| nanos as f64 / 1e9;
    let project_limits: Vec<_> = project
        .map(|p| &p.rate_limits[..])
        .unwrap_or_default()
        .iter()
        .map(|l| serde_json::json!({"model": l.model, "rate_limits": l.limits}))
        .collect();
    axum::Json(serde_json::json!({
        "object": "keygate.key",
        "id": key.id.api_id(),
        "name": &*key.name,
        "prefix": key.prefix(),
        "project_id": project.map(|p| p.id.as_str()).or(key.placement.project_id.as_deref()),
        "permissions": policy.permissions.level(),
        "scopes": policy.permissions.scopes(),
        "model_calls": model_calls,
        "can_call_models": can_call_models,
        "models": policy.access.models,
        "project_models": project_models,
        "rate_limits": policy.limits,
        "project_rate_limits": project_limits,
        "monthly_budget_usd": policy.budget.map(|b| usd(b.monthly_nanos)),
        "project_monthly_budget_usd": project.and_then(|p| p.budget).map(|b| usd(b.monthly_nanos)),
        "expires_at": authorized.expires_at,
    }))
    .into_response()
}

async fn invalid_url(req: Request) -> ApiError {
    ApiError::InvalidUrl { method: req.method().clone(), path: req.uri().path().to_owned() }
}

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

// === request context ===

/// Gives every request its `x-request-id`, and after the handler records the
/// private reason of a denial (for `keygate explain`) and the request metrics.
async fn request_context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
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

// === authentication ===

async fn require_project_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    // Decided before any key is looked at: the canonical path chooses the
    // scope and is what is forwarded; keygate's own namespaces, paths without
    // a canonical form and methods such as TRACE and CONNECT never leave.
    if crate::route::normalize(req.uri().path()).is_err() || !proxy::is_forwarded_method(req.method()) {
        return invalid_url(req).await.into_response();
    }
    if req.extensions().get::<Route>().is_none() {
        match Route::openai(req.uri()) {
            Ok(route) => {
                req.extensions_mut().insert(route);
            }
            Err(_) => return invalid_url(req).await.into_response(),
        }
    }
    let scope = match req.extensions().get::<Route>() {
        Some(route) => crate::policy::data_plane_scope(req.method(), &route.path),
        None => return ApiError::Internal.into_response(),
    };
    require(state, Plane::Data, scope, req, next).await
}

/// keygate's own routes under `/v1/keygate/` (matched exactly by the router,
/// never forwarded): any valid project key.
async fn require_extension_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let scope = crate::policy::data_plane_scope(req.method(), req.uri().path());
    require(state, Plane::Data, scope, req, next).await
}

async fn require_admin_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let scope = crate::policy::admin_scope(req.method(), req.uri().path());
    require(state, Plane::Admin, scope, req, next).await
}

async fn require(state: AppState, plane: Plane, scope: crate::policy::Scope, mut req: Request, next: Next) -> Response {
    let now = state.clock.now();
    let admission = auth::Admission {
        plane,
        scope,
        client_ip: req.extensions().get::<ClientIp>().map(|c| c.0),
        organization_id: &state.settings.organization_id,
        azure: req.extensions().get::<Route>().is_some_and(|r| r.dialect == Dialect::Azure),
        key_in_query: auth::key_in_query(req.uri().query()),
        now,
    };
    match auth::authenticate(&state.index, req.headers(), &admission) {
        Ok(authorized) => {
            let user_agent = req.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok());
            let touch = Touch {
                at: now,
                ip: admission.client_ip.map(|ip| ip.to_string()),
                user_agent: user_agent.map(|ua| ua.chars().take(256).collect()),
            };
            state.recorder.touch(&authorized.key.id, touch);
            let expires_at = authorized.expires_at;
            req.extensions_mut().insert(authorized);
            let mut response = next.run(req).await;
            // A key in its rotation grace period (or close to expiry) says so on every answer.
            if let Some(at) = expires_at {
                if let Ok(value) = HeaderValue::from_str(&crate::time::rfc3339(at)) {
                    response.headers_mut().insert("x-keygate-key-expires-at", value);
                }
            }
            response
        }
        Err(denial) => {
            // Past the throttle, a client's failures get 429: it learns nothing
            // new, and a valid key from the same address still passes above.
            let denial = match (denial.is_failed_authentication(), admission.client_ip) {
                (true, Some(ip)) => match state.limiter.failed_auth(ip).await {
                    Some(exceeded) => Denial::Throttled { client: Some(ip), exceeded, failure: Box::new(denial) },
                    None => denial,
                },
                _ => denial,
            };
            // A failed login with something that names an admin key is
            // audited (summed per key and minute); a throttled sender adds nothing.
            if let (Plane::Admin, Some(key), false) = (plane, denial.key(), matches!(denial, Denial::Throttled { .. }))
            {
                state.recorder.failed_login(crate::jobs::FailedLogin {
                    key_id: key.id,
                    at: now,
                    client: admission.client_ip,
                    reason: denial.kind(),
                });
            }
            let options = crate::dialect::RenderOptions { hints: state.settings.error_hints };
            crate::dialect::render_denial(denial, &options)
        }
    }
}

// === data plane ===

async fn data_plane(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let authorized = parts.extensions.get::<Authorized>().cloned().ok_or(ApiError::Internal)?;
    let body = read_body(body, state.settings.max_body_bytes).await?;
    // Any method's body may name a model (an empty one names none).
    let meta = RequestMeta::from_body(&parts.headers, &body)?;
    let route = parts.extensions.get::<Route>().cloned().ok_or(ApiError::Internal)?;
    let path = route.path.as_str();
    let azure = route.dialect == Dialect::Azure;
    // An Azure URL names a deployment; on the Azure v1 surface the body's model
    // is a deployment name. Either way keygate works with the model behind it.
    let deployment_model = match &route.deployment {
        Some(deployment) => Some(state.settings.azure_deployments.get(deployment).cloned().ok_or_else(|| {
            let serving = state
                .settings
                .azure_deployments
                .iter()
                .filter(|(_, m)| *m == deployment)
                .map(|(d, _)| d.clone())
                .collect();
            Denial::UnknownDeployment {
                key: auth::KeyRef::of(&authorized.key),
                deployment: deployment.clone(),
                serving,
            }
        })?),
        None if azure => meta.model.as_deref().and_then(|m| state.settings.azure_deployments.get(m).cloned()),
        None => None,
    };
    let model = deployment_model.as_deref().or(meta.model.as_deref()).or_else(|| path.strip_prefix("/v1/models/"));
    if let Some(model) = model {
        authorized.check_model(model)?;
    }
    // A body's model must not hide the path's (`DELETE /v1/models/{id}` with a body): both pass.
    if let Some(named) = path.strip_prefix("/v1/models/").filter(|named| Some(*named) != model) {
        authorized.check_model(named)?;
    }
    // Only model calls use tokens: completions get the completion allowance,
    // embeddings their prompt, everything else (lists, files) none.
    let tokens = match (state.limiter.wants_tokens(&authorized, model), crate::store::UsageKind::of_path(path)) {
        (false, _) | (true, crate::store::UsageKind::Other) => 0,
        (true, crate::store::UsageKind::Embeddings) => crate::usage::estimate_request_tokens(model, &body, 0),
        (true, crate::store::UsageKind::Completions) => crate::usage::estimate_request_tokens(
            model,
            &body,
            meta.max_tokens.unwrap_or(state.settings.default_max_tokens),
        ),
    };
    let ticket = state.limiter.admit(&authorized, model, tokens).await.map_err(|exceeded| Denial::Limited {
        key: auth::KeyRef::of(&authorized.key),
        model: model.map(str::to_owned),
        organization: state.settings.organization_id.clone(),
        exceeded,
    })?;
    let rate_headers = ticket.headers.clone();
    let upstream = state.upstreams.route(model);
    // To meter a stream, ask for its usage chunk; the tap removes it again.
    let (body, strip_injected_usage) = match (meta.stream && state.settings.metering)
        .then(|| crate::usage::inject_include_usage(path, &body))
        .flatten()
    {
        Some(injected) => (injected, true),
        None => (body, false),
    };
    // The upstream gets the model behind the deployment, also when the body
    // named none (Azure SDKs put the deployment in the URL only).
    let body = match (&deployment_model, meta.model.as_deref()) {
        (Some(real), sent) if sent != Some(real.as_str()) => crate::usage::replace_model(&body, real).unwrap_or(body),
        _ => body,
    };
    let metered = Metered {
        request_id: parts.extensions.get::<RequestId>().map(|id| id.as_str().to_owned()).unwrap_or_default(),
        at: state.clock.now(),
        model: model.map(str::to_owned),
        route: path.to_owned(),
        upstream: upstream.name.clone(),
        client_ip: parts.extensions.get::<ClientIp>().map(|c| c.0),
        started: Instant::now(),
        request_body: body.clone(),
        strip_injected_usage,
        strip_azure_fields: upstream.is_azure() && !azure,
        authorized: authorized.clone(),
        ticket: Some(ticket),
    };
    let relative = route.relative();
    let mut response =
        match proxy::forward(upstream, parts.method.clone(), &relative, &parts.headers, body, model).await {
            Ok(response) => response,
            Err(error) => {
                let status = if matches!(error, ApiError::UpstreamTimeout { .. }) { 504 } else { 502 };
                state.meter.failed(metered, status);
                return Err(error);
            }
        };
    if path == "/v1/models" && parts.method == http::Method::GET && authorized.restricts_models() {
        response = proxy::filter_model_list(response, |id| authorized.allows_model(id)).await;
    }
    // The client's organization is keygate's, never the upstream account's.
    if let (Some(org), false) = (&state.settings.organization_header, azure) {
        response.headers_mut().insert("openai-organization", org.clone());
    }
    rate_limit_headers(&rate_headers, response.headers_mut());
    if !state.settings.metering {
        return Ok(response);
    }
    Ok(state.meter.tap(response, metered))
}

/// keygate's own `x-ratelimit-*` values replace the upstream's (which describe
/// keygate's upstream account, not this key).
fn rate_limit_headers(values: &crate::limits::RateHeaders, headers: &mut http::HeaderMap) {
    use http::HeaderName;
    const NAMES: [[HeaderName; 3]; 2] = [
        [
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
        ],
        [
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ],
    ];
    for ([limit_name, remaining_name, reset_name], value) in NAMES.into_iter().zip([values.requests, values.tokens]) {
        // Ours replace the upstream's (insert drops every earlier value);
        // without a limit of ours, the upstream's would describe its key.
        let Some((limit, taken)) = value else {
            for name in [limit_name, remaining_name, reset_name] {
                headers.remove(name);
            }
            continue;
        };
        headers.insert(limit_name, HeaderValue::from(limit));
        headers.insert(remaining_name, HeaderValue::from(taken.remaining));
        match HeaderValue::try_from(crate::time::go_duration(taken.reset_us)) {
            Ok(reset) => headers.insert(reset_name, reset),
            Err(_) => headers.remove(reset_name),
        };
    }
}

// === accept loop ===

/// Serves `app` on `listener` (TLS when `tls` is set) until `shutdown`
/// resolves, then stops accepting and waits up to `grace` for open requests.
/// `limits` caps open connections and closes slow and idle ones.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    trusted_proxies: Arc<Vec<IpNet>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    // Every connection holds a receiver; shutdown sends, then waits until
    // all are gone (each connection finishes its requests first).
    let (drain, drained) = tokio::sync::watch::channel(());
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper's timer runs while a request head is read, and also while a
    // kept-alive HTTP/1 connection waits for its next request: an idle
    // HTTP/1 connection closes after the smaller of the two timeouts.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let permits =
        Arc::new(tokio::sync::Semaphore::new(limits.max_connections.min(tokio::sync::Semaphore::MAX_PERMITS)));
    let mut refusals = connection::Refusals::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // At the cap a new connection is closed at once: waiting for a slot
        // would keep it open, which is what the cap exists to prevent.
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refusals.refused(limits.max_connections);
            drop(stream);
            continue;
        };
        // Answers and stream events leave as they are written: Nagle's
        // algorithm would hold a small event back until the client's delayed
        // ACK (up to 40 ms), on every stream.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
        }
        let trusted = Arc::clone(&trusted_proxies);
        let activity = connection::Activity::new();
        let tracked = Arc::clone(&activity);
        let service =
            app.clone()
                .map_request(move |mut req: Request<hyper::body::Incoming>| {
                    collapse_leading_slashes(req.uri_mut());
                    let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
                    let ip = client_ip(peer.ip(), forwarded, &trusted);
                    req.extensions_mut().insert(ClientIp(ip));
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    req
                })
                .map_future(move |answer| {
                    let in_flight = tracked.begin();
                    async move {
                        answer.await.map(|response| response.map(|body| connection::Tracked::new(body, in_flight)))
                    }
                });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let builder = builder.clone();
        let drained = drained.clone();
        let tls = tls.clone();
        #[allow(clippy::disallowed_methods)] // connections are tracked by `drain`
        tokio::spawn(async move {
            let _permit = permit;
            let result = match tls {
                // The handshake comes before any request head: without its
                // own limit a silent client would hold the connection.
                Some(acceptor) => match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(stream)) => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        connection::drive(conn, &activity, &limits, drained).await
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, %peer, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    connection::drive(conn, &activity, &limits, drained).await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(drained);
    let _ = drain.send(());
    tokio::select! {
        () = drain.closed() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown grace elapsed with requests still open"),
    }
}

/// `//openai/...` (older Azure SDKs with a trailing slash on the endpoint)
/// becomes `/openai/...`.
pub fn collapse_leading_slashes(uri: &mut http::Uri) {
    let Some(pq) = uri.path_and_query() else { return };
    if !pq.as_str().starts_with("//") {
        return;
    }
    let fixed = format!("/{}", pq.as_str().trim_start_matches('/'));
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = fixed.parse().ok();
    if let Ok(rebuilt) = http::Uri::from_parts(parts) {
        *uri = rebuilt;
    }
}

/// Loads a PEM certificate chain and private key for the listener.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert)
            .with_context(|| format!("cannot open `server.tls_cert` file `{}`", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("`server.tls_cert` file `{}` is not a PEM certificate chain", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("cannot open `server.tls_key` file `{}`", key.display()))?,
    ))
    .with_context(|| format!("`server.tls_key` file `{}` is not a PEM private key", key.display()))?
    .ok_or_else(|| anyhow::anyhow!("`server.tls_key` file `{}` holds no private key", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn double_leading_slashes_collapse() {
        let mut uri: http::Uri = "//openai/deployments/d/chat/completions?api-version=1".parse().unwrap();
        super::collapse_leading_slashes(&mut uri);
        assert_eq!(uri.to_string(), "/openai/deployments/d/chat/completions?api-version=1");
        let mut plain: http::Uri = "/v1/models".parse().unwrap();
        super::collapse_leading_slashes(&mut plain);
        assert_eq!(plain.to_string(), "/v1/models");
    }
}
