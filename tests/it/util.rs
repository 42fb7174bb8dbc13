//! Test helpers: a recording mock upstream, a gateway on a loopback port with
//! its own database (a SQLite file, or with `KEYGATE_TEST_DATABASE=postgres`
//! a PostgreSQL schema of its own), and small HTTP helpers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use keygate::app::Gateway;
use keygate::config::{Config, Env};
use keygate::key::Secret;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const ADMIN_KEY: &str = "sk-admin-test-bootstrap-key";
pub const UPSTREAM_KEY: &str = "sk-upstream-credential";

pub struct NoEnv;

impl Env for NoEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "KEYGATE_UPSTREAM_API_KEY").then(|| UPSTREAM_KEY.to_owned())
    }
    fn vars(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// What the mock upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
pub struct MockState {
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Set when an endless stream's body is dropped (the client went away).
    pub stream_dropped: Arc<AtomicBool>,
    /// How the mock answers every request (recorded first).
    pub behaviour: Arc<Mutex<Behaviour>>,
}

/// What a mock upstream does with each request, for pool and failover tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Behaviour {
    #[default]
    Serve,
    /// Answers this status with an OpenAI error body (401: a bad provider key).
    Status(u16),
    /// Serves, this many milliseconds late.
    Slow(u64),
    /// Starts a 200 event stream, sends one event, then breaks the connection.
    CutStream,
}

pub struct MockUpstream {
    pub url: String,
    pub state: MockState,
}

impl MockUpstream {
    pub async fn start() -> Self {
        let state = MockState::default();
        let extra = Router::new()
            .route("/v1/slow", get(slow))
            .route("/v1/endless", post(endless))
            .route("/v1/echo-error", post(echo_error))
            .route("/openai/deployments/{deployment}/chat/completions", post(azure_chat))
            .route("/openai/deployments/{deployment}/embeddings", post(azure_embeddings))
            .with_state(state.clone());
        // `llama-3-8b`: a model only a routed upstream knows (proxy tests).
        let app = keygate::mock::router_with_models(&["llama-3-8b"])
            .merge(extra)
            .layer(middleware::from_fn_with_state(state.clone(), record));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url: format!("http://{addr}/v1"), state }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().clone()
    }

    pub fn behave(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock() = behaviour;
    }
}

async fn record(State(state): State<MockState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    state.requests.lock().push(Recorded {
        method: parts.method.to_string(),
        path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned())).collect(),
        body: body.clone(),
    });
    let behaviour = *state.behaviour.lock();
    let mut response = match behaviour {
        Behaviour::Serve => next.run(Request::from_parts(parts, Body::from(body))).await,
        Behaviour::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
        Behaviour::Status(status) => {
            let (code, message) = match status {
                401 => ("invalid_api_key", "Incorrect API key provided: sk-upstr**********here."),
                429 => ("rate_limit_exceeded", "Rate limit reached for gpt-4o-mini."),
                _ => ("server_error", "The server had an error while processing your request."),
            };
            let body =
                json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}});
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap()
        }
        Behaviour::CutStream => {
            // The break comes after the first event has surely left.
            let events = futures_util::stream::unfold(0u8, |n| async move {
                match n {
                    0 => Some((Ok(Bytes::from_static(b"data: {\"n\":0}\n\n")), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Err(std::io::Error::other("the member went away mid-stream")), 2))
                    }
                    _ => None,
                }
            });
            Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(events)).unwrap()
        }
    };
    let headers = response.headers_mut();
    headers.insert("x-request-id", "upstream-req-1".parse().unwrap());
    // OpenAI's limits for the upstream account's key, as it sends them on
    // every answer: a client of keygate must never see them.
    for (name, value) in UPSTREAM_RATE_LIMITS {
        headers.insert(name, value.parse().unwrap());
    }
    response
}

pub const UPSTREAM_RATE_LIMITS: [(&str, &str); 6] = [
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-remaining-requests", "9999"),
    ("x-ratelimit-reset-requests", "6ms"),
    ("x-ratelimit-limit-tokens", "30000000"),
    ("x-ratelimit-remaining-tokens", "29999990"),
    ("x-ratelimit-reset-tokens", "0s"),
];

const FILTERS: &str = r#"{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}"#;

/// Azure's answer shape: content-filter fields, and a filter-only first chunk when streaming.
async fn azure_chat(
    axum::extract::Path(deployment): axum::extract::Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let filters: Value = serde_json::from_str(FILTERS).unwrap();
    if body["stream"].as_bool() == Some(true) {
        let first = json!({"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filters}]});
        let role = json!({"choices": [{"content_filter_results": {}, "delta": {"role": "assistant"}, "finish_reason": null, "index": 0}], "created": 1, "id": "chatcmpl-az", "model": "gpt-4o", "object": "chat.completion.chunk"});
        let text = json!({"choices": [{"content_filter_results": filters, "delta": {"content": format!("hi from {deployment}")}, "finish_reason": null, "index": 0}], "created": 1, "id": "chatcmpl-az", "model": "gpt-4o", "object": "chat.completion.chunk"});
        let usage = json!({"choices": [], "created": 1, "id": "chatcmpl-az", "model": "gpt-4o", "object": "chat.completion.chunk", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}});
        let events = format!("data: {first}\n\ndata: {role}\n\ndata: {text}\n\ndata: {usage}\n\ndata: [DONE]\n\n");
        return Response::builder()
            .header("content-type", "text/event-stream; charset=utf-8")
            .body(Body::from(events))
            .unwrap();
    }
    let answer = json!({
        "id": "chatcmpl-az", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filters}],
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": format!("hi from {deployment}")}, "content_filter_results": filters}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    });
    axum::Json(answer).into_response()
}

async fn azure_embeddings(axum::Json(_): axum::Json<Value>) -> axum::Json<Value> {
    axum::Json(
        json!({"object": "list", "model": "text-embedding-3-small", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}], "usage": {"prompt_tokens": 2, "total_tokens": 2}}),
    )
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "late"
}

async fn echo_error() -> Response {
    let body = json!({"error": {"message": "upstream says no", "type": "invalid_request_error", "param": "messages", "code": "upstream_code"}});
    Response::builder()
        .status(418)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// An SSE stream that sends one event at once and then one every 50 ms (for
/// at most 10 s), flagging when it is dropped.
async fn endless(State(state): State<MockState>) -> Response {
    let flag = DropFlag(Arc::clone(&state.stream_dropped));
    let stream = futures_util::stream::unfold((0u32, flag), |(n, flag)| async move {
        if n > 200 {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(format!("data: {{\"n\":{n}}}\n\n"))), (n + 1, flag)))
    });
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The PostgreSQL server tests use (the machine's, trust auth).
pub fn postgres_url() -> String {
    std::env::var("KEYGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Whether this run puts gateways on PostgreSQL instead of SQLite files.
pub fn on_postgres() -> bool {
    std::env::var("KEYGATE_TEST_DATABASE").as_deref() == Ok("postgres")
}

/// A new, empty PostgreSQL schema of this test's own; returns the database URL
/// that works in it. Schemas older than an hour (left by killed runs) go.
pub async fn postgres_schema() -> String {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&postgres_url())
        .await
        .expect("PostgreSQL must answer at KEYGATE_TEST_POSTGRES_URL (default 127.0.0.1:5432); .ci/run starts it");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let schemas: Vec<String> = sqlx::query_scalar("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'kg_t%'")
        .fetch_all(&mut admin)
        .await
        .unwrap();
    for schema in schemas {
        let born = schema.strip_prefix("kg_t").and_then(|s| s.split('_').next()).and_then(|s| s.parse::<u64>().ok());
        if born.is_some_and(|born| born + 3600 < now.as_secs()) {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut admin).await;
        }
    }
    let name = format!("kg_t{}_{}_{}", now.as_secs(), std::process::id(), now.subsec_nanos());
    sqlx::query(&format!("CREATE SCHEMA {name}")).execute(&mut admin).await.unwrap();
    format!("{}?options[search_path]={name}", postgres_url())
}

/// The database of the test that owns `dir`: a SQLite file in it, or a
/// PostgreSQL schema made on first use and found again on a restart.
pub async fn database_url(dir: &std::path::Path) -> String {
    if !on_postgres() {
        return format!("sqlite://{}", dir.join("keygate.db").display());
    }
    let marker = dir.join("postgres-url");
    if let Ok(url) = std::fs::read_to_string(&marker) {
        return url;
    }
    let url = postgres_schema().await;
    std::fs::write(&marker, &url).unwrap();
    url
}

pub struct TestGateway {
    pub url: String,
    /// The metrics listener (apart from the public one, as `serve` runs it).
    pub metrics_url: String,
    pub database_url: String,
    pub gateway_state: keygate::state::AppState,
    pub db: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// Starts keygate on a loopback port with `extra_toml` appended to a config
    /// that points the default upstream at `upstream_url`.
    pub async fn start(upstream_url: &str, extra_toml: &str) -> Self {
        let db = tempfile::tempdir().unwrap();
        Self::start_in(db, upstream_url, extra_toml).await
    }

    pub async fn start_in(db: tempfile::TempDir, upstream_url: &str, extra_toml: &str) -> Self {
        Self::start_with_clock(db, upstream_url, extra_toml, Arc::new(keygate::clock::SystemClock)).await
    }

    /// Starts keygate reading time from `clock`, so tests move time instead of sleeping.
    pub async fn start_with_clock(
        db: tempfile::TempDir,
        upstream_url: &str,
        extra_toml: &str,
        clock: Arc<dyn keygate::clock::Clock>,
    ) -> Self {
        let database = database_url(db.path()).await;
        Self::boot(db, database, upstream_url, extra_toml, clock).await
    }

    /// Starts keygate on the database at `database_url`.
    pub async fn start_on(database_url: String, upstream_url: &str, extra_toml: &str) -> Self {
        let own = tempfile::tempdir().unwrap();
        Self::boot(own, database_url, upstream_url, extra_toml, Arc::new(keygate::clock::SystemClock)).await
    }

    /// A second gateway process on `primary`'s database, as replicas run.
    pub async fn replica_of(primary: &TestGateway, upstream_url: &str, extra_toml: &str) -> Self {
        Self::start_on(primary.database_url.clone(), upstream_url, extra_toml).await
    }

    /// [`Self::replica_of`], reading time from `clock`.
    pub async fn replica_with_clock(
        primary: &TestGateway,
        upstream_url: &str,
        extra_toml: &str,
        clock: Arc<dyn keygate::clock::Clock>,
    ) -> Self {
        let own = tempfile::tempdir().unwrap();
        Self::boot(own, primary.database_url.clone(), upstream_url, extra_toml, clock).await
    }

    async fn boot(
        db: tempfile::TempDir,
        database_url: String,
        upstream_url: &str,
        extra_toml: &str,
        clock: Arc<dyn keygate::clock::Clock>,
    ) -> Self {
        let toml = format!(
            "[database]\nurl = \"{database_url}\"\n[upstream]\nurl = \"{upstream_url}\"\nread_timeout_ms = 1000\nconnect_timeout_ms = 500\n{extra_toml}"
        );
        let config = Config::from_toml(&toml, &NoEnv).unwrap();
        let gateway = Gateway::start_with_clock(&config, Some(&Secret::new(ADMIN_KEY)), clock).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let Gateway { state, tasks, connection_limits, .. } = gateway;
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_url = format!("http://{}", metrics_listener.local_addr().unwrap());
        let metrics_app = keygate::server::metrics_router(state.metrics.clone());
        tokio::spawn(async move { axum::serve(metrics_listener, metrics_app).await.unwrap() });
        let app = keygate::server::router(state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            keygate::server::serve(
                listener,
                app,
                None,
                Arc::new(Vec::new()),
                connection_limits,
                async {
                    let _ = rx.await;
                },
                Duration::from_secs(5),
            )
            .await;
            tasks.shutdown().await;
        });
        Self {
            url: format!("http://{addr}"),
            metrics_url,
            database_url,
            gateway_state: state,
            db,
            shutdown: Some(tx),
            done: Some(done),
        }
    }

    /// Stops accepting, drains, flushes background writers.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap();
        }
        std::mem::replace(&mut self.db, tempfile::tempdir().unwrap())
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = http().request(method, format!("{}{path}", self.url)).bearer_auth(ADMIN_KEY);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn default_project(&self) -> String {
        let (_, list) = self.admin(reqwest::Method::GET, "/v1/organization/projects", None).await;
        list["data"][0]["id"].as_str().unwrap().to_owned()
    }

    /// Creates a project key and returns (key object, secret).
    pub async fn create_key(&self, name: &str) -> (Value, String) {
        let project = self.default_project().await;
        let (status, key) = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/organization/projects/{project}/api_keys"),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(status, 200, "{key}");
        let secret = key["value"].as_str().unwrap().to_owned();
        (key, secret)
    }
}

/// Opens the mock's never-ending stream through `gw` with `key` and waits for
/// its first chunk, so the request is surely in flight; dropping the stream
/// hangs up.
pub async fn open_endless_stream(
    gw: &TestGateway,
    key: &str,
) -> impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin {
    use futures_util::StreamExt;
    let stream = http()
        .post(format!("{}/v1/endless", gw.url))
        .bearer_auth(key)
        .json(&json!({"stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();
    body.next().await.unwrap().unwrap();
    body
}

/// Sends a leaked-key report to the gateway at `url`: its status, its headers
/// but `x-request-id` and `date` (which differ on every answer), and its body.
pub async fn report_leaked(url: &str, body: &Value) -> (u16, Vec<(String, String)>, String) {
    let response = http().post(format!("{url}/v1/keys/leaked")).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "x-request-id" | "date"))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("").to_owned()))
        .collect();
    (status, headers, response.text().await.unwrap())
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

pub fn assert_request_id(response: &reqwest::Response) {
    let id = response.headers().get("x-request-id").expect("x-request-id").to_str().unwrap();
    assert!(keygate::ids::RequestId::parse(id).is_some(), "bad request id {id}");
}

/// A TCP forwarder on a loopback port that the test can cut: while cut, open
/// connections are dropped and new ones are closed at once, as when a
/// database host goes away; restored, it forwards again.
pub struct CutProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (target, flag, open) = (target.to_owned(), up.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                open.lock().push(task.abort_handle());
            }
        });
        Self { port, up, connections, accept }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.connections.lock().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Polls `check` every 20 ms until it holds or `limit` passes; true if it held.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
