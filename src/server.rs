//! The HTTP server: shared state, the router (public routes, the Administration
//! API, the data plane), the request-id middleware that also records denials
//! and metrics, background tasks, and the accept loop with TLS and graceful
//! shutdown.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use http::{HeaderValue, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ipnet::IpNet;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

use crate::auth::{self, Authorized, Denial, KeyIndex, Plane};
use crate::clock::Clock;
use crate::dialect::ApiError;
use crate::ids::RequestId;
use crate::key::PublicId;
use crate::proxy::{self, RequestMeta, Upstreams};
use crate::store::{Store, Timestamp};

/// Settings the request path reads, fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_body_bytes: usize,
    pub organization_id: String,
    pub default_project_id: String,
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub index: Arc<KeyIndex>,
    pub clock: Arc<dyn Clock>,
    pub upstreams: Arc<Upstreams>,
    pub last_used: LastUsed,
    pub settings: Arc<Settings>,
    pub metrics: PrometheusHandle,
}

pub fn router(state: AppState) -> Router {
    let data_plane = Router::new()
        .route("/v1/{*rest}", any(data_plane))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_project_key));
    let admin = crate::admin::routes().route_layer(middleware::from_fn_with_state(state.clone(), require_admin_key));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        // Reserved: keygate's own namespaces are never proxied.
        .route("/v1/organization/{*rest}", any(invalid_url))
        .route("/v1/keygate/{*rest}", any(invalid_url))
        .merge(admin)
        .merge(data_plane)
        .fallback(invalid_url)
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => "ready".into_response(),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable").into_response()
        }
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn invalid_url(req: Request) -> ApiError {
    ApiError::InvalidUrl { method: req.method().clone(), path: req.uri().path().to_owned() }
}

// === request context ===

/// Gives every request its `x-request-id`, and after the handler records the
/// private reason of a denial and the request metrics.
async fn request_context(mut req: Request, next: Next) -> Response {
    let id = RequestId::new();
    req.extensions_mut().insert(id.clone());
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = req.method().clone();
    let client = req.extensions().get::<ClientIp>().map(|c| c.0);
    let started = Instant::now();
    let mut response = next.run(req).await;
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert("x-request-id", value);
    }
    if let Some(denial) = response.extensions().get::<Arc<Denial>>() {
        metrics::counter!("keygate_auth_failures_total", "reason" => denial.kind()).increment(1);
        tracing::info!(request_id = %id, client = ?client, key = ?denial.key().map(|k| k.id.to_string()), reason = %denial, "request refused");
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("keygate_requests_total", "route" => route, "method" => method.to_string(), "status" => status)
        .increment(1);
    metrics::histogram!("keygate_request_duration_seconds").record(started.elapsed().as_secs_f64());
    response
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the
/// nearest untrusted address in `X-Forwarded-For`.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = forwarded_for.unwrap_or("").split(',').rev().filter_map(|h| h.trim().parse::<IpAddr>().ok());
    let mut last = peer;
    for hop in hops {
        last = hop;
        if !is_trusted(&hop) {
            return hop;
        }
    }
    last
}

// === authentication ===

async fn require_project_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let scope = auth::data_plane_scope(req.method(), req.uri().path());
    require(state, Plane::Data, scope, req, next).await
}

async fn require_admin_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let scope = auth::admin_scope(req.method(), req.uri().path());
    require(state, Plane::Admin, scope, req, next).await
}

async fn require(state: AppState, plane: Plane, scope: auth::Scope, mut req: Request, next: Next) -> Response {
    let now = state.clock.now();
    let admission = auth::Admission {
        plane,
        scope,
        client_ip: req.extensions().get::<ClientIp>().map(|c| c.0),
        organization_id: &state.settings.organization_id,
        now,
    };
    match auth::authenticate(&state.index, req.headers(), &admission) {
        Ok(authorized) => {
            state.last_used.touch(&authorized.key.id, now);
            req.extensions_mut().insert(authorized);
            next.run(req).await
        }
        Err(denial) => ApiError::Denied(denial).into_response(),
    }
}

// === data plane ===

async fn data_plane(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let authorized = parts.extensions.get::<Authorized>().cloned().ok_or(ApiError::Internal)?;
    let body = read_body(body, state.settings.max_body_bytes).await?;
    let is_json = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let meta =
        if is_json && parts.method == http::Method::POST { RequestMeta::parse(&body)? } else { RequestMeta::default() };
    let path = parts.uri.path();
    let model = meta.model.as_deref().or_else(|| path.strip_prefix("/v1/models/"));
    if let Some(model) = model {
        authorized.check_model(model)?;
    }
    let upstream = state.upstreams.route(model);
    let relative = parts.uri.path_and_query().map_or(path, |pq| pq.as_str());
    let relative = relative.strip_prefix("/v1").unwrap_or(relative);
    let mut response = proxy::forward(upstream, parts.method.clone(), relative, &parts.headers, body).await?;
    if path == "/v1/models" && parts.method == http::Method::GET && authorized.restricts_models() {
        response = proxy::filter_model_list(response, |id| authorized.allows_model(id)).await;
    }
    // The client's organization is keygate's, never the upstream account's.
    if let Ok(org) = HeaderValue::from_str(&state.settings.organization_id) {
        response.headers_mut().insert("openai-organization", org);
    }
    Ok(response)
}

/// Reads a request body up to `limit` bytes; more is OpenAI-shaped 413.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(error) => {
            let too_large =
                std::error::Error::source(&error).is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(ApiError::BodyTooLarge { limit })
            } else {
                tracing::debug!(%error, "client body read failed");
                Err(ApiError::BadRequest { message: "The request body could not be read.".into(), param: None })
            }
        }
    }
}

// === last-used times, off the request path ===

/// Sends last-used times to a background writer; never blocks a request.
#[derive(Clone)]
pub struct LastUsed(mpsc::Sender<(PublicId, Timestamp)>);

impl LastUsed {
    pub fn touch(&self, id: &PublicId, at: Timestamp) {
        if self.0.try_send((id.clone(), at)).is_err() {
            metrics::counter!("keygate_last_used_dropped_total").increment(1);
        }
    }
}

/// The writer task: coalesces touches per key and writes them every `every`,
/// and once more on shutdown.
pub fn last_used_writer(
    store: Arc<dyn Store>,
    every: Duration,
) -> (LastUsed, impl FnOnce(watch::Receiver<bool>) -> BoxFuture) {
    let (tx, mut rx) = mpsc::channel::<(PublicId, Timestamp)>(65_536);
    let task = move |mut shutdown: watch::Receiver<bool>| -> BoxFuture {
        Box::pin(async move {
            let mut pending = std::collections::HashMap::<PublicId, Timestamp>::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    Some((id, at)) = rx.recv() => {
                        let slot = pending.entry(id).or_insert(at);
                        *slot = (*slot).max(at);
                    }
                    _ = tick.tick() => flush_last_used(&*store, &mut pending).await,
                    _ = shutdown.changed() => {
                        while let Ok((id, at)) = rx.try_recv() {
                            let slot = pending.entry(id).or_insert(at);
                            *slot = (*slot).max(at);
                        }
                        flush_last_used(&*store, &mut pending).await;
                        return;
                    }
                }
            }
        })
    };
    (LastUsed(tx), task)
}

async fn flush_last_used(store: &dyn Store, pending: &mut std::collections::HashMap<PublicId, Timestamp>) {
    if pending.is_empty() {
        return;
    }
    let batch: Vec<_> = pending.drain().collect();
    if let Err(error) = store.touch_keys(&batch).await {
        tracing::warn!(%error, keys = batch.len(), "could not record last-used times; will retry");
        pending.extend(batch);
    }
}

// === background tasks ===

pub type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Background tasks that all stop, and are awaited, on shutdown.
pub struct Tasks {
    shutdown: watch::Sender<bool>,
    handles: Vec<(&'static str, JoinHandle<()>)>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self { shutdown: watch::channel(false).0, handles: Vec::new() }
    }
}

impl Tasks {
    pub fn spawn(&mut self, name: &'static str, task: impl FnOnce(watch::Receiver<bool>) -> BoxFuture) {
        #[allow(clippy::disallowed_methods)] // tracked here and awaited in `shutdown`
        let handle = tokio::spawn(task(self.shutdown.subscribe()));
        self.handles.push((name, handle));
    }

    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for (name, handle) in self.handles {
            if let Err(error) = handle.await {
                tracing::error!(task = name, %error, "background task failed");
            }
        }
    }
}

/// Reloads the whole index from the store every `every`, so a change made by
/// another process (or a missed update) heals.
pub fn index_reconciler(
    store: Arc<dyn Store>,
    index: Arc<KeyIndex>,
    every: Duration,
) -> impl FnOnce(watch::Receiver<bool>) -> BoxFuture {
    move |mut shutdown| {
        Box::pin(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => match tokio::try_join!(store.all_keys(), store.all_projects()) {
                        Ok((keys, projects)) => index.replace_all(keys, projects),
                        Err(error) => tracing::warn!(%error, "key index reconcile failed; serving the last good index"),
                    },
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
}

// === accept loop ===

/// Serves `app` on `listener` (TLS when `tls` is set) until `shutdown`
/// resolves, then stops accepting and waits up to `grace` for open requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    trusted_proxies: Arc<Vec<IpNet>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
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
        let trusted = Arc::clone(&trusted_proxies);
        let service = app.clone().map_request(move |mut req: Request<hyper::body::Incoming>| {
            let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
            let ip = client_ip(peer.ip(), forwarded, &trusted);
            req.extensions_mut().insert(ClientIp(ip));
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            req
        });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        #[allow(clippy::disallowed_methods)] // connections are tracked by `graceful`
        tokio::spawn(async move {
            let result = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Err(error) => {
                        tracing::debug!(%error, %peer, "TLS handshake failed");
                        return;
                    }
                },
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown grace elapsed with requests still open"),
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
    use super::client_ip;

    #[test]
    fn forwarded_for_is_trusted_only_from_configured_proxies() {
        let proxy: ipnet::IpNet = "10.0.0.0/8".parse().unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(client_ip(ip("1.2.3.4"), Some("9.9.9.9"), &[proxy]), ip("1.2.3.4"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some("9.9.9.9, 10.0.0.2"), &[proxy]), ip("9.9.9.9"));
        assert_eq!(client_ip(ip("10.0.0.1"), None, &[proxy]), ip("10.0.0.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some("garbage"), &[proxy]), ip("10.0.0.1"));
    }
}
