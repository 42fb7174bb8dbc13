//! Configuration: a TOML file, overlaid by `KEYGATE_<SECTION>__<FIELD>` env vars,
//! overlaid by command-line flags (and their named env vars such as
//! `KEYGATE_LISTEN`), validated once into a typed [`Config`]. Every error names
//! the field in backticks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::key::Secret;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Prometheus exporters' customary port, on loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://keygate.db";
pub const DEFAULT_UPSTREAM_URL: &str = "https://api.openai.com/v1";
/// Selects the built-in synthetic upstream.
pub const MOCK_UPSTREAM: &str = "mock";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The OS error is the cause, printed under this line (not in it).
    #[error("cannot read config file `{path}`")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file `{path}` is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable `{var}` does not fit the configuration: {message}")]
    Env { var: String, message: String },
    /// `field` names the setting as it was given: `server.listen` in the
    /// file, `--listen` as a flag (or its env var).
    #[error("`{field}` {message}")]
    Invalid { field: String, message: String, help: Option<String> },
}

impl ConfigError {
    /// The likely fix, for a `help:` line.
    pub fn help(&self) -> Option<String> {
        match self {
            Self::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Some(
                "check the path given to `--config` (or KEYGATE_CONFIG); keygate.example.toml is a place to start"
                    .into(),
            ),
            Self::Read { .. } | Self::Parse { .. } | Self::Env { .. } => None,
            Self::Invalid { help, .. } => help.clone(),
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into(), help: None }
}

fn invalid_with_help(field: impl Into<String>, message: impl Into<String>, help: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into(), help: Some(help.into()) }
}

/// A listen address; `what` is the example and `field` the setting's name.
fn listen_address(text: &str, field: &str, example: &str) -> Result<SocketAddr, ConfigError> {
    text.trim().parse().map_err(|_| {
        let message = format!("must be an address like {example}, got `{text}`");
        match text.trim().parse::<u16>() {
            // A port alone: the address it most likely means.
            Ok(port) => invalid_with_help(
                field,
                message,
                format!("use `127.0.0.1:{port}` (this machine only) or `0.0.0.0:{port}` (every interface)"),
            ),
            Err(_) => invalid(field, message),
        }
    })
}

// === raw, as written ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    organization: RawOrganization,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    errors: RawErrors,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    prices: std::collections::BTreeMap<String, RawPrice>,
    #[serde(default)]
    anomaly: RawAnomaly,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    azure: RawAzure,
    #[serde(default)]
    usage: RawUsage,
    #[serde(default)]
    redis: RawRedis,
    #[serde(default)]
    dashboard: RawDashboard,
    #[serde(default)]
    keys: Vec<RawDeclaredKey>,
}

/// `[[keys]]`: a key declared as code, by its hash (never its secret).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeclaredKey {
    name: Option<String>,
    project: Option<String>,
    sha256: Option<String>,
    permissions: Option<String>,
    scopes: Option<Vec<String>>,
    models: Option<Vec<String>>,
    max_requests_per_1_minute: Option<u64>,
    max_tokens_per_1_minute: Option<u64>,
    monthly_budget_usd: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDashboard {
    enabled: Option<bool>,
    session_idle_minutes: Option<u64>,
    session_max_hours: Option<u64>,
    oidc: Option<RawOidc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_env: Option<String>,
    redirect_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: Option<String>,
    on_failure: Option<String>,
    key_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsage {
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    failed_auth_per_minute: Option<u64>,
    leak_reports_per_minute: Option<u64>,
    default_max_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawErrors {
    hints: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    denials_days: Option<u64>,
    denials_max_rows: Option<u64>,
    usage_records_days: Option<u64>,
    usage_rollups_days: Option<u64>,
    alerts_days: Option<u64>,
    audit_days: Option<u64>,
    audit_max_rows: Option<u64>,
}

/// USD per million tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: f64,
    cached_input: Option<f64>,
    output: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnomaly {
    enabled: Option<bool>,
    window_seconds: Option<u64>,
    spike_factor: Option<f64>,
    spike_min_requests: Option<i64>,
    new_network_min_requests: Option<i64>,
    dormant_days: Option<u64>,
    cooldown_seconds: Option<u64>,
    auto_suspend: Option<bool>,
    baseline_days: Option<u64>,
    new_key_max_rpm: Option<i64>,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    metrics_listen: Option<String>,
    max_body_bytes: Option<u64>,
    trusted_proxies: Option<Vec<String>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    shutdown_grace_seconds: Option<u64>,
    header_read_timeout_ms: Option<u64>,
    request_body_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrganization {
    id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: Option<String>,
    url: Option<String>,
    /// Name of the environment variable holding this upstream's credential.
    api_key_env: Option<String>,
    models: Option<Vec<String>>,
    connect_timeout_ms: Option<u64>,
    read_timeout_ms: Option<u64>,
    /// `openai` (default) or `azure`.
    kind: Option<String>,
    /// Azure: the api-version to call with.
    api_version: Option<String>,
    /// Azure: model → deployment name (a model not listed is its own deployment name).
    deployments: Option<std::collections::BTreeMap<String, String>>,
    /// A file holding the credential (a mounted secret), instead of `api_key_env`.
    api_key_file: Option<PathBuf>,
    /// A member's share of the pool's load (default 1).
    weight: Option<u32>,
    /// A member's own limits, below its provider's.
    max_requests_per_1_minute: Option<u64>,
    max_tokens_per_1_minute: Option<u64>,
    /// A pool: its members, each an endpoint with these same fields.
    members: Option<Vec<RawUpstream>>,
    /// A pool: extra members tried when one cannot serve (default: up to 2).
    retries: Option<u64>,
    /// A pool: no new try starts this long after the first (default 60000).
    retry_deadline_ms: Option<u64>,
    /// A pool: consecutive failures that take a member out (default 3) ...
    failure_threshold: Option<u32>,
    /// ... for this long, before one request tries it again (default 30).
    cooldown_seconds: Option<u64>,
    /// A pool: ask each member `GET /models` this often (default 0: never).
    probe_interval_seconds: Option<u64>,
}

/// The Azure front door: deployments clients may name, accepted api-versions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAzure {
    /// Deployment name → model.
    deployments: Option<std::collections::BTreeMap<String, String>>,
    api_versions: Option<Vec<String>>,
    region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

// === validated ===

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: MetricsListen,
    pub database_url: String,
    pub max_body_bytes: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub tls: Option<TlsFiles>,
    pub shutdown_grace: Duration,
    /// A request head must arrive whole within this.
    pub header_read_timeout: Duration,
    /// A request body must arrive whole within this.
    pub request_body_timeout: Duration,
    /// A connection with no request in flight closes after this.
    pub idle_timeout: Duration,
    /// Open connections past this many are closed on accept.
    pub max_connections: usize,
    pub organization_id: Option<String>,
    /// The first is the default route; the others match by model.
    pub upstreams: Vec<UpstreamConfig>,
    pub log: LogConfig,
    /// `errors.hints`: append safe, format-only hints to 401 messages.
    pub error_hints: bool,
    /// How long denial records (for `keygate explain`) are kept.
    pub denial_retention: Duration,
    /// At most this many denial records are kept (oldest go first).
    pub denial_max_rows: u64,
    pub usage_record_retention: Duration,
    pub usage_rollup_retention: Duration,
    pub alert_retention: Duration,
    /// Audit events are kept this long, and at most `audit_max_rows` of them.
    pub audit_retention: Duration,
    pub audit_max_rows: u64,
    pub prices: crate::usage::PriceTable,
    /// `None` when the anomaly watcher is off.
    pub anomaly: Option<crate::usage::AnomalyPolicy>,
    /// Where every alert is POSTed (`anomaly.webhook_url`), watcher on or off.
    pub alert_webhook: Option<crate::usage::WebhookTarget>,
    /// Failed authentications a client may make per minute before its
    /// failures get 429 (`None`: no throttle).
    pub failed_auth_per_minute: Option<u64>,
    /// Leaked-key reports (`POST /v1/keys/leaked`) one client address may
    /// send per minute (`None`: unlimited).
    pub leak_reports_per_minute: Option<u64>,
    /// Completion tokens a request is assumed to use for token limits when it
    /// names no `max_tokens`.
    pub default_max_tokens: u64,
    pub azure: AzureFrontDoor,
    /// `usage.enabled = false` turns metering off (for benchmarks): no usage
    /// rows, and token limits and budgets are not settled.
    pub metering: bool,
    /// Shared rate-limit state for many replicas; `None` limits per process.
    pub redis: Option<RedisConfig>,
    pub dashboard: DashboardConfig,
    /// `[[keys]]`: keys declared as code, applied at start and on reload.
    pub keys: Vec<DeclaredKey>,
    /// Where this config came from, to read it again on reload.
    pub source: ConfigSource,
}

/// The file and flags a config was loaded from.
#[derive(Clone, Default)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

/// The path only: the flags may hold database and Redis URLs with passwords.
impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource").field("path", &self.path).finish_non_exhaustive()
    }
}

/// A key declared in the config file: the database is made to match it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredKey {
    pub name: String,
    /// A project's id or name (`None`: the default project).
    pub project: Option<String>,
    /// SHA-256 of the whole key.
    pub digest: crate::key::KeyDigest,
    pub permissions: crate::policy::Permissions,
    /// `None`: every model.
    pub models: Option<Vec<String>>,
    pub limits: crate::policy::RateLimits,
    pub monthly_budget_usd: Option<f64>,
}

/// `[dashboard]`: the web dashboard at `/ui`.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub enabled: bool,
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub session_max: Duration,
    /// `None`: sign-in with an admin key only.
    pub sso: Option<crate::session::oidc::SsoConfig>,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(12 * 3600),
            sso: None,
        }
    }
}

/// Where `GET /metrics` is served: never on the public listener, since
/// failure counts by reason would tell a guesser which keys exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// `server.metrics_listen = "off"`.
    Off,
    /// Not configured: loopback; when that address is taken keygate starts
    /// without metrics and says so (two gateways on one laptop).
    Default(SocketAddr),
    /// Configured: failing to listen there stops the start.
    Configured(SocketAddr),
}

#[derive(Clone)]
pub struct RedisConfig {
    pub url: String,
    pub on_failure: crate::limits::FailurePolicy,
    /// Prepended to every key, so deployments can share one Redis.
    pub key_prefix: String,
}

/// The URL's password never reaches a `{:?}` of the configuration.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &shown_url(&self.url))
            .field("on_failure", &self.on_failure)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub enum UpstreamTarget {
    Mock,
    /// Base URL including its version path, e.g. `https://api.openai.com/v1`.
    Url(String),
}

/// A route: the members behind a model pattern (a plain upstream is a pool
/// of one).
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// Glob patterns (`*` wildcard) of the models routed here.
    pub models: Vec<String>,
    pub members: Vec<MemberConfig>,
    /// Extra members tried when one cannot serve a request.
    pub retries: usize,
    /// No new try starts this long after the first.
    pub retry_deadline: Duration,
    /// Consecutive failures that take a member out, and for how long.
    pub failure_threshold: u32,
    pub cooldown: Duration,
    /// Active health checks (`GET /models` on each member); `None`: passive only.
    pub probe_interval: Option<Duration>,
    /// True when no upstream was configured at all and keygate fell back to the mock.
    pub defaulted_to_mock: bool,
}

/// One provider endpoint of a pool.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub name: String,
    pub target: UpstreamTarget,
    pub credential: Option<Secret>,
    pub kind: UpstreamKind,
    /// The models this member serves (empty: every model of its pool).
    pub models: Vec<String>,
    pub weight: u32,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_requests_per_1_minute: Option<u64>,
    pub max_tokens_per_1_minute: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamKind {
    OpenAi,
    /// Azure OpenAI: calls go to `/openai/deployments/{deployment}/...?api-version=`
    /// with an `api-key` header.
    Azure {
        api_version: String,
        deployments: std::collections::BTreeMap<String, String>,
    },
}

/// The Azure front door keygate offers to Azure clients.
#[derive(Debug, Clone)]
pub struct AzureFrontDoor {
    /// Deployment name → model.
    pub deployments: std::collections::BTreeMap<String, String>,
    pub api_versions: Vec<String>,
    /// Sent as `x-ms-region`.
    pub region: String,
}

/// The dated api-versions Azure serves (GA and preview), from Azure's specs.
pub const AZURE_API_VERSIONS: &[&str] = &[
    "2022-12-01",
    "2023-05-15",
    "2024-02-01",
    "2024-06-01",
    "2024-10-21",
    "2023-03-15-preview",
    "2023-06-01-preview",
    "2023-07-01-preview",
    "2023-08-01-preview",
    "2023-09-01-preview",
    "2023-10-01-preview",
    "2023-12-01-preview",
    "2024-02-15-preview",
    "2024-03-01-preview",
    "2024-04-01-preview",
    "2024-05-01-preview",
    "2024-07-01-preview",
    "2024-08-01-preview",
    "2024-09-01-preview",
    "2024-10-01-preview",
    "2024-12-01-preview",
    "2025-01-01-preview",
    "2025-02-01-preview",
    "2025-03-01-preview",
    "2025-04-01-preview",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// Values from flags (or their dedicated env vars), which win over everything.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub database_url: Option<String>,
    pub upstream_url: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub redis_url: Option<String>,
}

/// Where settings come from besides flags: the process environment, injectable
/// for tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
    fn vars(&self) -> Vec<(String, String)>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl Config {
    pub fn load(file: Option<&Path>, overrides: &Overrides, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?
            }
            None => toml::Table::new(),
        };
        overlay_env(&mut table, env)?;
        let raw: RawConfig = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| ConfigError::Parse {
            path: file.map(Path::to_owned).unwrap_or_else(|| "<env>".into()),
            message: e.to_string(),
        })?;
        let mut config = Self::validate(raw, overrides, env)?;
        config.source = ConfigSource { path: file.map(Path::to_owned), overrides: overrides.clone() };
        Ok(config)
    }

    /// Parses a TOML snippet without env or flags (for tests and `keygate.example.toml`).
    pub fn from_toml(text: &str, env: &dyn Env) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: "<inline>".into(), message: e.to_string() })?;
        Self::validate(raw, &Overrides::default(), env)
    }

    fn validate(raw: RawConfig, o: &Overrides, env: &dyn Env) -> Result<Self, ConfigError> {
        let listen_field = if o.listen.is_some() { "--listen" } else { "server.listen" };
        let listen_text = o.listen.clone().or(raw.server.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_address(&listen_text, listen_field, "127.0.0.1:8080")?;

        let metrics_field = if o.metrics_listen.is_some() { "--metrics-listen" } else { "server.metrics_listen" };
        let metrics_listen = match o.metrics_listen.clone().or(raw.server.metrics_listen) {
            None => MetricsListen::Default(listen_address(DEFAULT_METRICS_LISTEN, metrics_field, "127.0.0.1:9464")?),
            Some(off) if off.eq_ignore_ascii_case("off") => MetricsListen::Off,
            Some(text) => MetricsListen::Configured(listen_address(&text, metrics_field, "127.0.0.1:9464, or `off`")?),
        };

        let database_field = if o.database_url.is_some() { "--database" } else { "database.url" };
        let database_url = o.database_url.clone().or(raw.database.url).unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        if crate::store::Engine::of_url(&database_url).is_none() {
            return Err(unsupported_database(&database_url, database_field));
        }

        let max_body_bytes = raw.server.max_body_bytes.unwrap_or(32 * 1024 * 1024);
        if max_body_bytes == 0 || max_body_bytes > 1 << 30 {
            return Err(invalid(
                "server.max_body_bytes",
                format!("must be between 1 and 1073741824, got {max_body_bytes}"),
            ));
        }

        let header_read_timeout = server_millis(raw.server.header_read_timeout_ms, 10_000, "header_read_timeout_ms")?;
        let request_body_timeout =
            server_millis(raw.server.request_body_timeout_ms, 60_000, "request_body_timeout_ms")?;
        let idle_timeout = server_millis(raw.server.idle_timeout_ms, 60_000, "idle_timeout_ms")?;
        let max_connections = raw.server.max_connections.unwrap_or(10_000);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(invalid(
                "server.max_connections",
                format!("must be between 1 and 1000000, got {max_connections}"),
            ));
        }

        let trusted_proxies = raw
            .server
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .map(|p| {
                parse_cidr(p).ok_or_else(|| {
                    invalid("server.trusted_proxies", format!("`{p}` is not an IP address or CIDR range"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let tls = match (o.tls_cert.clone().or(raw.server.tls_cert), o.tls_key.clone().or(raw.server.tls_key)) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err(invalid("server.tls_key", "is required when `server.tls_cert` is set")),
            (None, Some(_)) => return Err(invalid("server.tls_cert", "is required when `server.tls_key` is set")),
        };

        let organization_id = raw.organization.id;
        if let Some(id) = &organization_id {
            if !id.starts_with("org-")
                || id.len() < 5
                || !id[4..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    "organization.id",
                    format!("must look like `org-<letters and digits>`, got `{id}`"),
                ));
            }
        }

        let mut upstreams = vec![default_upstream(raw.upstream, o, env)?];
        for (i, u) in raw.upstreams.into_iter().enumerate() {
            let routed = routed_upstream(u, i, env)?;
            // Usage rows, explain and metrics name the member: one name, one endpoint.
            let taken = |name: &str| upstreams.iter().flat_map(|u: &UpstreamConfig| &u.members).any(|m| m.name == name);
            if let Some(twin) = routed.members.iter().find(|m| taken(&m.name)) {
                return Err(invalid(
                    format!("upstreams[{i}].name"),
                    format!(
                        "`{}` already names another upstream or member: names must be unique across every pool",
                        twin.name
                    ),
                ));
            }
            upstreams.push(routed);
        }

        let log = LogConfig {
            format: match raw.log.format.as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => return Err(invalid("log.format", format!("must be `text` or `json`, got `{other}`"))),
            },
            level: raw.log.level.unwrap_or_else(|| "info".into()),
        };

        let denials_days = raw.retention.denials_days.unwrap_or(30);
        if denials_days == 0 || denials_days > 3650 {
            return Err(invalid("retention.denials_days", format!("must be between 1 and 3650, got {denials_days}")));
        }
        let denial_max_rows = raw.retention.denials_max_rows.unwrap_or(1_000_000);
        if denial_max_rows == 0 {
            return Err(invalid("retention.denials_max_rows", "must be greater than 0"));
        }

        let days = |value: Option<u64>, default: u64, field: &str| -> Result<Duration, ConfigError> {
            let days = value.unwrap_or(default);
            if days == 0 || days > 3650 {
                return Err(invalid(format!("retention.{field}"), format!("must be between 1 and 3650, got {days}")));
            }
            Ok(Duration::from_secs(days * 86_400))
        };
        let usage_record_retention = days(raw.retention.usage_records_days, 90, "usage_records_days")?;
        let usage_rollup_retention = days(raw.retention.usage_rollups_days, 400, "usage_rollups_days")?;
        let alert_retention = days(raw.retention.alerts_days, 90, "alerts_days")?;
        let audit_retention = days(raw.retention.audit_days, 400, "audit_days")?;
        let audit_max_rows = raw.retention.audit_max_rows.unwrap_or(10_000_000);
        if audit_max_rows == 0 {
            return Err(invalid("retention.audit_max_rows", "must be greater than 0"));
        }
        let redis = redis(raw.redis, o)?;
        let prices = prices(raw.prices)?;
        let alert_webhook = alert_webhook(&raw.anomaly)?;
        let anomaly = anomaly(raw.anomaly, usage_rollup_retention)?;
        let dashboard = dashboard(raw.dashboard, env)?;
        let keys = declared_keys(raw.keys)?;

        Ok(Self {
            listen,
            metrics_listen,
            database_url,
            max_body_bytes: max_body_bytes as usize,
            trusted_proxies,
            tls,
            shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_seconds.unwrap_or(30)),
            header_read_timeout,
            request_body_timeout,
            idle_timeout,
            max_connections: max_connections as usize,
            organization_id,
            upstreams,
            log,
            error_hints: raw.errors.hints.unwrap_or(false),
            denial_retention: Duration::from_secs(denials_days * 86_400),
            denial_max_rows,
            usage_record_retention,
            usage_rollup_retention,
            alert_retention,
            audit_retention,
            audit_max_rows,
            prices,
            anomaly,
            alert_webhook,
            failed_auth_per_minute: match raw.limits.failed_auth_per_minute.unwrap_or(30) {
                0 => None,
                n => Some(n),
            },
            leak_reports_per_minute: match raw.limits.leak_reports_per_minute.unwrap_or(10) {
                0 => None,
                n => Some(n),
            },
            default_max_tokens: raw.limits.default_max_tokens.unwrap_or(1024),
            metering: raw.usage.enabled.unwrap_or(true),
            redis,
            dashboard,
            keys,
            source: ConfigSource::default(),
            azure: AzureFrontDoor {
                deployments: raw.azure.deployments.unwrap_or_default(),
                api_versions: raw
                    .azure
                    .api_versions
                    .unwrap_or_else(|| AZURE_API_VERSIONS.iter().map(|v| (*v).to_owned()).collect()),
                region: raw.azure.region.unwrap_or_else(|| "keygate".into()),
            },
        })
    }
}

/// A database URL keygate cannot open, with the URL it most likely meant.
pub fn unsupported_database(url: &str, field: &str) -> ConfigError {
    let message = "must be a sqlite://PATH or postgres://USER@HOST/DATABASE URL";
    match url.split_once(':') {
        // No scheme at all: a file name (nothing secret in it).
        None => invalid_with_help(
            field,
            format!("{message}, got `{url}`"),
            format!("for a SQLite file, use `sqlite://{url}`"),
        ),
        // Only the scheme: the rest of a URL may hold a password.
        Some((scheme, _)) => invalid_with_help(
            field,
            format!("{message}, got a `{scheme}:` URL"),
            "use sqlite://PATH (embedded, one file) or postgres://USER:PASSWORD@HOST:PORT/DATABASE",
        ),
    }
}

fn redis(raw: RawRedis, o: &Overrides) -> Result<Option<RedisConfig>, ConfigError> {
    let Some(url) = o.redis_url.clone().or(raw.url) else { return Ok(None) };
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://")) {
        return Err(invalid("redis.url", format!("must be a redis:// or rediss:// URL, got `{}`", shown_url(&url))));
    }
    let on_failure = match raw.on_failure.as_deref() {
        None | Some("open") => crate::limits::FailurePolicy::Open,
        Some("closed") => crate::limits::FailurePolicy::Closed,
        Some(other) => return Err(invalid("redis.on_failure", format!("must be `open` or `closed`, got `{other}`"))),
    };
    Ok(Some(RedisConfig { url, on_failure, key_prefix: raw.key_prefix.unwrap_or_else(|| "keygate:".into()) }))
}

fn prices(raw: std::collections::BTreeMap<String, RawPrice>) -> Result<crate::usage::PriceTable, ConfigError> {
    let mut overrides = Vec::new();
    for (model, p) in raw {
        let field = format!("prices.\"{model}\"");
        let values = [p.input, p.cached_input.unwrap_or(p.input), p.output.unwrap_or(0.0)];
        if values.iter().any(|v| !v.is_finite() || *v < 0.0 || *v > 1_000_000.0) {
            return Err(invalid(field, "prices must be finite, non-negative USD per million tokens"));
        }
        overrides.push((model, crate::usage::Price::usd_per_million(values[0], values[1], values[2])));
    }
    Ok(crate::usage::PriceTable::with(overrides))
}

/// At most this many windows in a baseline period (a week of 1-minute
/// windows, five weeks of the default 5-minute ones).
const MAX_BASELINE_WINDOWS: u64 = 10_080;

fn anomaly(raw: RawAnomaly, rollups_kept: Duration) -> Result<Option<crate::usage::AnomalyPolicy>, ConfigError> {
    if raw.enabled == Some(false) {
        return Ok(None);
    }
    let d = crate::usage::AnomalyPolicy::default();
    let window = raw.window_seconds.unwrap_or(d.window.as_secs());
    if window < 60 || window % 60 != 0 || window > 86_400 {
        return Err(invalid(
            "anomaly.window_seconds",
            format!("must be a multiple of 60 between 60 and 86400, got {window}"),
        ));
    }
    let spike_factor = raw.spike_factor.unwrap_or(d.spike_factor);
    if !spike_factor.is_finite() || !(1.5..=1000.0).contains(&spike_factor) {
        return Err(invalid("anomaly.spike_factor", format!("must be between 1.5 and 1000, got {spike_factor}")));
    }
    let count = |value: Option<i64>, default: i64, field: &str| match value.unwrap_or(default) {
        n @ 1..=1_000_000_000 => Ok(n),
        n => Err(invalid(format!("anomaly.{field}"), format!("must be between 1 and 1000000000, got {n}"))),
    };
    let dormant_days = raw.dormant_days.unwrap_or(d.dormant_after.as_secs() / 86_400);
    if !(1..=3650).contains(&dormant_days) {
        return Err(invalid("anomaly.dormant_days", format!("must be between 1 and 3650, got {dormant_days}")));
    }
    let cooldown = raw.cooldown_seconds.unwrap_or(d.cooldown.as_secs());
    if cooldown > 30 * 86_400 {
        return Err(invalid("anomaly.cooldown_seconds", format!("must be at most 2592000 (30 days), got {cooldown}")));
    }
    let baseline_days = raw.baseline_days.unwrap_or(d.baseline_period.as_secs() / 86_400);
    let kept_days = rollups_kept.as_secs() / 86_400;
    if !(1..=90).contains(&baseline_days) || baseline_days > kept_days {
        return Err(invalid(
            "anomaly.baseline_days",
            format!(
                "must be between 1 and 90, and within retention.usage_rollups_days ({kept_days}), got {baseline_days}"
            ),
        ));
    }
    // The watcher holds each key's busy windows of the period in memory.
    if baseline_days * 86_400 / window > MAX_BASELINE_WINDOWS {
        return Err(invalid(
            "anomaly.baseline_days",
            format!(
                "{baseline_days} days of {window}-second windows is more than {MAX_BASELINE_WINDOWS} windows: \
                 shorten baseline_days or lengthen window_seconds"
            ),
        ));
    }
    Ok(Some(crate::usage::AnomalyPolicy {
        window: Duration::from_secs(window),
        spike_factor,
        spike_min_requests: count(raw.spike_min_requests, d.spike_min_requests, "spike_min_requests")?,
        new_network_min_requests: count(
            raw.new_network_min_requests,
            d.new_network_min_requests,
            "new_network_min_requests",
        )?,
        dormant_after: Duration::from_secs(dormant_days * 86_400),
        cooldown: Duration::from_secs(cooldown),
        auto_suspend: raw.auto_suspend.unwrap_or(false),
        baseline_period: Duration::from_secs(baseline_days * 86_400),
        new_key_max_rpm: count(raw.new_key_max_rpm, d.new_key_max_rpm, "new_key_max_rpm")?,
    }))
}

/// `[[keys]]`, each checked: a name, a SHA-256 in hex (64 characters), valid
/// permissions, positive limits; no hash declared twice.
fn declared_keys(raw: Vec<RawDeclaredKey>) -> Result<Vec<DeclaredKey>, ConfigError> {
    let mut keys: Vec<DeclaredKey> = Vec::with_capacity(raw.len());
    for (i, k) in raw.into_iter().enumerate() {
        let field = |f: &str| format!("keys[{i}].{f}");
        let name = k
            .name
            .filter(|n| !n.trim().is_empty() && n.chars().count() <= 256)
            .ok_or_else(|| invalid(field("name"), "is required: 1 to 256 characters"))?;
        let hex = k.sha256.ok_or_else(|| {
            invalid(
                field("sha256"),
                "is required: the key's SHA-256 in hex, from `printenv MY_KEY | keygate keys hash`",
            )
        })?;
        let digest = (hex.len() == 64)
            .then(|| hex::decode(hex.to_ascii_lowercase()).ok())
            .flatten()
            .and_then(|b| crate::key::KeyDigest::from_slice(&b))
            .ok_or_else(|| {
                invalid(field("sha256"), "must be a SHA-256 in hex (64 characters), never the key itself")
            })?;
        if keys.iter().any(|other| other.digest == digest) {
            return Err(invalid(field("sha256"), "declares the same key as an earlier [[keys]] entry"));
        }
        let permissions =
            crate::policy::Permissions::parse(k.permissions.as_deref().unwrap_or("all"), &k.scopes.unwrap_or_default())
                .map_err(|e| invalid(field("permissions"), e.to_string()))?;
        for (value, what) in [
            (k.max_requests_per_1_minute, "max_requests_per_1_minute"),
            (k.max_tokens_per_1_minute, "max_tokens_per_1_minute"),
        ] {
            if value == Some(0) {
                return Err(invalid(field(what), "must be greater than 0 (leave it out for no limit)"));
            }
        }
        for (value, what) in [
            (k.max_requests_per_1_minute, "max_requests_per_1_minute"),
            (k.max_tokens_per_1_minute, "max_tokens_per_1_minute"),
        ] {
            if value.is_some_and(|v| v > 1_000_000_000_000) {
                return Err(invalid(field(what), "must be at most 1000000000000"));
            }
        }
        if let Some(usd) = k.monthly_budget_usd.filter(|u| !u.is_finite() || !(0.0..=1e9).contains(u)) {
            return Err(invalid(field("monthly_budget_usd"), format!("must be between 0 and 1000000000, got {usd}")));
        }
        if let Some(models) = &k.models {
            if models.is_empty() {
                return Err(invalid(
                    field("models"),
                    "is empty, which would allow no model: leave it out for every model",
                ));
            }
            if models.len() > 256
                || models.iter().any(|m| m.trim().is_empty() || m.len() > 256 || m.chars().any(char::is_control))
            {
                return Err(invalid(field("models"), "must be at most 256 model names or `*` patterns"));
            }
        }
        keys.push(DeclaredKey {
            name: name.trim().to_owned(),
            project: k.project.filter(|p| !p.is_empty()),
            digest,
            permissions,
            models: k.models,
            limits: crate::policy::RateLimits {
                max_requests_per_1_minute: k.max_requests_per_1_minute,
                max_tokens_per_1_minute: k.max_tokens_per_1_minute,
                ..Default::default()
            },
            monthly_budget_usd: k.monthly_budget_usd,
        });
    }
    Ok(keys)
}

fn dashboard(raw: RawDashboard, env: &dyn Env) -> Result<DashboardConfig, ConfigError> {
    let idle = raw.session_idle_minutes.unwrap_or(30);
    if !(1..=24 * 60).contains(&idle) {
        return Err(invalid("dashboard.session_idle_minutes", format!("must be between 1 and 1440, got {idle}")));
    }
    let max = raw.session_max_hours.unwrap_or(12);
    if !(1..=24 * 30).contains(&max) {
        return Err(invalid("dashboard.session_max_hours", format!("must be between 1 and 720, got {max}")));
    }
    let sso = match raw.oidc {
        None => None,
        Some(oidc) => Some(sso(oidc, env)?),
    };
    Ok(DashboardConfig {
        enabled: raw.enabled.unwrap_or(true),
        session_idle: Duration::from_secs(idle * 60),
        session_max: Duration::from_secs(max * 3600),
        sso,
    })
}

/// `[dashboard.oidc]`: every field is needed; the secret from the file or,
/// better, from the variable `client_secret_env` names (default
/// `KEYGATE_OIDC_CLIENT_SECRET`).
fn sso(raw: RawOidc, env: &dyn Env) -> Result<crate::session::oidc::SsoConfig, ConfigError> {
    let required = |value: Option<String>, field: &str, what: &str| {
        value
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| invalid(format!("dashboard.oidc.{field}"), format!("is needed: {what}")))
    };
    let url = |value: String, field: &str| -> Result<String, ConfigError> {
        match reqwest::Url::parse(&value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() => Ok(value),
            _ => Err(invalid(
                format!("dashboard.oidc.{field}"),
                format!("must be an http(s) URL without a query, got `{}`", shown_url(&value)),
            )),
        }
    };
    let issuer = url(required(raw.issuer, "issuer", "the provider's issuer URL, as its ID tokens name it")?, "issuer")?;
    // The client secret and the ID token cross this connection: in clear only on loopback.
    let loopback = reqwest::Url::parse(&issuer)
        .ok()
        .and_then(|u| u.host_str().map(|h| matches!(h, "localhost" | "127.0.0.1" | "[::1]")))
        .unwrap_or(false);
    if issuer.starts_with("http:") && !loopback {
        return Err(invalid("dashboard.oidc.issuer", "must be an https URL (plain http only on loopback)"));
    }
    let client_id = required(raw.client_id, "client_id", "the client id this gateway is registered with")?;
    let redirect_url = url(
        required(
            raw.redirect_url,
            "redirect_url",
            "this gateway's https://HOST/ui/sso/callback, as registered with the provider",
        )?,
        "redirect_url",
    )?;
    if !redirect_url.ends_with("/ui/sso/callback") {
        return Err(invalid(
            "dashboard.oidc.redirect_url",
            "must end with /ui/sso/callback, where keygate takes the provider's answer",
        ));
    }
    let variable = raw.client_secret_env.as_deref().unwrap_or("KEYGATE_OIDC_CLIENT_SECRET");
    let client_secret = match (raw.client_secret, env.var(variable)) {
        (Some(secret), _) if !secret.is_empty() => secret,
        (_, Some(secret)) if !secret.is_empty() => secret,
        _ => {
            return Err(invalid(
                "dashboard.oidc.client_secret",
                format!("is needed: put the client secret in {variable} (or in client_secret)"),
            ))
        }
    };
    Ok(crate::session::oidc::SsoConfig { issuer, client_id, client_secret, redirect_url })
}

/// The alert webhook: an http(s) URL and the `whsec_` secret that signs
/// every delivery; one without the other is refused.
fn alert_webhook(raw: &RawAnomaly) -> Result<Option<crate::usage::WebhookTarget>, ConfigError> {
    if let Some(url) = &raw.webhook_url {
        if reqwest::Url::parse(url).map(|u| !matches!(u.scheme(), "http" | "https")).unwrap_or(true) {
            return Err(invalid("anomaly.webhook_url", format!("must be an http(s) URL, got `{}`", shown_url(url))));
        }
    }
    let (url, secret) = match (&raw.webhook_url, &raw.webhook_secret) {
        (None, None) => return Ok(None),
        (Some(url), Some(secret)) => (url, secret),
        (Some(_), None) => {
            return Err(invalid(
                "anomaly.webhook_secret",
                "is needed with anomaly.webhook_url: every delivery is signed with it \
                 (make one with: echo \"whsec_$(openssl rand -base64 32)\")",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid("anomaly.webhook_url", "is needed with anomaly.webhook_secret: where to send alerts"))
        }
    };
    let secret = crate::usage::WebhookSecret::parse(secret).map_err(|why| invalid("anomaly.webhook_secret", why))?;
    Ok(Some(crate::usage::WebhookTarget { url: url.clone(), secret }))
}

/// A `[server]` timeout in milliseconds: at least 100 (less would cut off
/// ordinary clients on an ordinary network), at most an hour.
fn server_millis(value: Option<u64>, default: u64, field: &str) -> Result<Duration, ConfigError> {
    let ms = value.unwrap_or(default);
    if !(100..=3_600_000).contains(&ms) {
        return Err(invalid(
            format!("server.{field}"),
            format!("must be between 100 and 3600000 (milliseconds), got {ms}"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>().ok().or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn timeouts(raw: &RawUpstream, field: &str) -> Result<(Duration, Duration), ConfigError> {
    let connect = raw.connect_timeout_ms.unwrap_or(5_000);
    let read = raw.read_timeout_ms.unwrap_or(600_000);
    if connect == 0 {
        return Err(invalid(format!("{field}.connect_timeout_ms"), "must be greater than 0"));
    }
    if read == 0 {
        return Err(invalid(format!("{field}.read_timeout_ms"), "must be greater than 0"));
    }
    Ok((Duration::from_millis(connect), Duration::from_millis(read)))
}

fn target(url: &str, field: &str) -> Result<UpstreamTarget, ConfigError> {
    if url == MOCK_UPSTREAM {
        return Ok(UpstreamTarget::Mock);
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| invalid(format!("{field}.url"), format!("is not a valid URL (`{}`): {e}", shown_url(url))))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!("{field}.url"), format!("must be http or https, got `{}`", shown_url(url))));
    }
    Ok(UpstreamTarget::Url(url.trim_end_matches('/').to_owned()))
}

/// A URL as an error message shows it: the password of every
/// `scheme://user:password@host` in it becomes `***`, since startup errors
/// end up in logs (a database URL shows only its scheme, see `validate`).
fn shown_url(url: &str) -> String {
    let mut shown = url.to_owned();
    let mut from = 0;
    while let Some(found) = shown[from..].find("://") {
        let start = from + found + 3;
        let end = shown[start..].find(['/', '?', '#']).map_or(shown.len(), |i| start + i);
        if let Some(at) = shown[start..end].rfind('@').map(|i| start + i) {
            if let Some(colon) = shown[start..at].find(':').map(|i| start + i) {
                shown.replace_range(colon + 1..at, "***");
            }
        }
        from = start;
    }
    shown
}

/// An endpoint's credential: from the variable `api_key_env` names, or the
/// file `api_key_file` names (a mounted secret; surrounding whitespace dropped).
fn credential_from(raw: &RawUpstream, env: &dyn Env, field: &str) -> Result<Option<Secret>, ConfigError> {
    match (&raw.api_key_env, &raw.api_key_file) {
        (Some(_), Some(_)) => {
            Err(invalid(format!("{field}.api_key_file"), "give api_key_env or api_key_file, not both"))
        }
        (Some(name), None) => {
            let value = env
                .var(name)
                .ok_or_else(|| invalid(format!("{field}.api_key_env"), format!("names `{name}`, which is not set")))?;
            provider_credential(value, name, &format!("{field}.api_key_env")).map(Some)
        }
        (None, Some(path)) => {
            let value = std::fs::read_to_string(path).map_err(|e| {
                invalid(format!("{field}.api_key_file"), format!("cannot read `{}`: {}", path.display(), e.kind()))
            })?;
            let shown = path.display().to_string();
            provider_credential(value.trim().to_owned(), &shown, &format!("{field}.api_key_file")).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// A provider credential read from `var`. keygate recognises its own keys by
/// their checksum: one of them is never sent to a provider (it would be
/// refused there, and would leave the gateway), which happens when the key an
/// app should use is left in the gateway's `OPENAI_API_KEY`.
fn provider_credential(value: String, var: &str, field: &str) -> Result<Secret, ConfigError> {
    if value.trim().is_empty() {
        return Err(invalid(field, format!("reads `{var}`, which is empty: it must hold the provider's key")));
    }
    if crate::key::parse(value.trim()).is_ok() {
        return Err(invalid_with_help(
            field,
            format!("reads `{var}`, which holds a key issued by keygate, not a provider credential"),
            "put the OpenAI or Azure key in KEYGATE_UPSTREAM_API_KEY (or the variable `api_key_env` names), \
             and give the keygate key to your apps, not to the gateway",
        ));
    }
    Ok(Secret::new(value))
}

fn default_upstream(raw: RawUpstream, o: &Overrides, env: &dyn Env) -> Result<UpstreamConfig, ConfigError> {
    let name = raw.name.clone().unwrap_or_else(|| "default".into());
    if raw.members.is_some() {
        // The shortcuts name one endpoint: with members, say so rather than
        // let them be ignored.
        let shortcut = o.upstream_url.as_ref().map(|_| "--upstream").or_else(|| {
            ["KEYGATE_UPSTREAM_URL", "KEYGATE_UPSTREAM_API_KEY"].into_iter().find(|var| env.var(var).is_some())
        });
        if let Some(shortcut) = shortcut {
            return Err(invalid(
                "upstream.members",
                format!("{shortcut} names one upstream endpoint, but [upstream] is a pool: set each member's url and credential in the file"),
            ));
        }
        return pool(raw, name, "upstream", env);
    }
    let mut member = member(&raw, name.clone(), "upstream", false, env)?;
    if member.credential.is_none() {
        member.credential = ["KEYGATE_UPSTREAM_API_KEY", "OPENAI_API_KEY"]
            .into_iter()
            .find_map(|var| env.var(var).map(|value| (var, value)))
            .map(|(var, value)| provider_credential(value, var, "upstream"))
            .transpose()?;
    }
    let url = o.upstream_url.clone().or(raw.url.clone()).or_else(|| env.var("KEYGATE_UPSTREAM_URL"));
    let defaulted_to_mock = url.is_none() && member.credential.is_none();
    member.target = match url {
        Some(url) => target(&url, "upstream")?,
        None if defaulted_to_mock => UpstreamTarget::Mock,
        None => UpstreamTarget::Url(DEFAULT_UPSTREAM_URL.into()),
    };
    let mut pool = single(raw, name, member, "upstream")?;
    pool.defaulted_to_mock = defaulted_to_mock;
    Ok(pool)
}

fn upstream_kind(raw: &RawUpstream, field: &str) -> Result<UpstreamKind, ConfigError> {
    match raw.kind.as_deref() {
        None | Some("openai") => Ok(UpstreamKind::OpenAi),
        Some("azure") => Ok(UpstreamKind::Azure {
            api_version: raw.api_version.clone().ok_or_else(|| {
                invalid(format!("{field}.api_version"), "is required for an azure upstream, e.g. \"2024-10-21\"")
            })?,
            deployments: raw.deployments.clone().unwrap_or_default(),
        }),
        Some(other) => Err(invalid(format!("{field}.kind"), format!("must be `openai` or `azure`, got `{other}`"))),
    }
}

fn routed_upstream(raw: RawUpstream, i: usize, env: &dyn Env) -> Result<UpstreamConfig, ConfigError> {
    let field = format!("upstreams[{i}]");
    let name = raw.name.clone().ok_or_else(|| invalid(format!("{field}.name"), "is required"))?;
    if raw.models.as_ref().is_none_or(Vec::is_empty) {
        return Err(invalid(format!("{field}.models"), "must list at least one model pattern, e.g. [\"gpt-4o*\"]"));
    }
    if raw.members.is_some() {
        return pool(raw, name, &field, env);
    }
    let member = member(&raw, name.clone(), &field, true, env)?;
    single(raw, name, member, &field)
}

/// The settings of a pool that `raw` has, if any: the first one's name.
fn pool_only(raw: &RawUpstream) -> Option<&'static str> {
    [
        (raw.members.is_some(), "members"),
        (raw.retries.is_some(), "retries"),
        (raw.retry_deadline_ms.is_some(), "retry_deadline_ms"),
        (raw.failure_threshold.is_some(), "failure_threshold"),
        (raw.cooldown_seconds.is_some(), "cooldown_seconds"),
        (raw.probe_interval_seconds.is_some(), "probe_interval_seconds"),
    ]
    .into_iter()
    .find_map(|(set, what)| set.then_some(what))
}

/// A plain upstream: a pool whose one member is the upstream itself (and
/// serves every model routed to it). Failover settings mean nothing for it.
fn single(
    raw: RawUpstream,
    name: String,
    mut member: MemberConfig,
    field: &str,
) -> Result<UpstreamConfig, ConfigError> {
    let weight = raw.weight.is_some().then_some("weight");
    if let Some(what) = pool_only(&raw).filter(|w| *w != "members").or(weight) {
        return Err(invalid(
            format!("{field}.{what}"),
            "is a pool's setting: give this upstream members = [...] (each with its url and credential) to make it a pool",
        ));
    }
    member.models.clear();
    Ok(UpstreamConfig {
        name,
        models: raw.models.unwrap_or_default(),
        members: vec![member],
        retries: 0,
        retry_deadline: Duration::from_secs(60),
        failure_threshold: raw.failure_threshold.unwrap_or(3).max(1),
        cooldown: Duration::from_secs(raw.cooldown_seconds.unwrap_or(30)),
        probe_interval: probe_interval(raw.probe_interval_seconds),
        defaulted_to_mock: false,
    })
}

/// Probes at most once a second; 0 (the default) turns them off.
fn probe_interval(seconds: Option<u64>) -> Option<Duration> {
    seconds.filter(|s| *s > 0).map(|s| Duration::from_secs(s.max(1)))
}

/// `members = [...]`: a pool. The pool's own entry names the route (name,
/// models) and the failover policy; each member is an endpoint.
fn pool(raw: RawUpstream, name: String, field: &str, env: &dyn Env) -> Result<UpstreamConfig, ConfigError> {
    for (set, what) in [
        (raw.url.is_some(), "url"),
        (raw.api_key_env.is_some(), "api_key_env"),
        (raw.api_key_file.is_some(), "api_key_file"),
        (raw.kind.is_some(), "kind"),
        (raw.api_version.is_some(), "api_version"),
        (raw.deployments.is_some(), "deployments"),
        (raw.weight.is_some(), "weight"),
        (raw.connect_timeout_ms.is_some(), "connect_timeout_ms"),
        (raw.read_timeout_ms.is_some(), "read_timeout_ms"),
        (raw.max_requests_per_1_minute.is_some(), "max_requests_per_1_minute"),
        (raw.max_tokens_per_1_minute.is_some(), "max_tokens_per_1_minute"),
    ] {
        if set {
            return Err(invalid(format!("{field}.{what}"), "belongs to each of the pool's members, not to the pool"));
        }
    }
    let raw_members = raw.members.unwrap_or_default();
    if raw_members.is_empty() {
        return Err(invalid(format!("{field}.members"), "must list at least one member"));
    }
    let mut members: Vec<MemberConfig> = Vec::with_capacity(raw_members.len());
    for (i, m) in raw_members.iter().enumerate() {
        let mfield = format!("{field}.members[{i}]");
        if let Some(what) = pool_only(m) {
            return Err(invalid(format!("{mfield}.{what}"), "belongs to the pool, not to one of its members"));
        }
        let mname = m.name.clone().ok_or_else(|| invalid(format!("{mfield}.name"), "is required"))?;
        if members.iter().any(|other| other.name == mname) {
            return Err(invalid(format!("{mfield}.name"), format!("`{mname}` names two members of the pool")));
        }
        if m.url.is_none() {
            return Err(invalid(format!("{mfield}.url"), "is required"));
        }
        members.push(member(m, mname, &mfield, true, env)?);
    }
    let retries = match raw.retries {
        Some(r) if r > 16 => return Err(invalid(format!("{field}.retries"), format!("must be at most 16, got {r}"))),
        Some(r) => r as usize,
        None => (members.len() - 1).min(2),
    };
    let deadline = raw.retry_deadline_ms.unwrap_or(60_000);
    if deadline == 0 {
        return Err(invalid(format!("{field}.retry_deadline_ms"), "must be greater than 0"));
    }
    Ok(UpstreamConfig {
        name,
        models: raw.models.unwrap_or_default(),
        members,
        retries,
        retry_deadline: Duration::from_millis(deadline),
        failure_threshold: raw.failure_threshold.unwrap_or(3).max(1),
        cooldown: Duration::from_secs(raw.cooldown_seconds.unwrap_or(30).max(1)),
        probe_interval: probe_interval(raw.probe_interval_seconds),
        defaulted_to_mock: false,
    })
}

/// One endpoint: where, with what credential, for which models, with what
/// share. Without a URL it is the built-in mock (the default upstream's
/// caller works out its own).
fn member(
    raw: &RawUpstream,
    name: String,
    field: &str,
    url_required: bool,
    env: &dyn Env,
) -> Result<MemberConfig, ConfigError> {
    let (connect_timeout, read_timeout) = timeouts(raw, field)?;
    let target = match raw.url.as_deref() {
        Some(url) => target(url, field)?,
        None if url_required => return Err(invalid(format!("{field}.url"), "is required")),
        None => UpstreamTarget::Mock,
    };
    let weight = raw.weight.unwrap_or(1);
    if !(1..=1000).contains(&weight) {
        return Err(invalid(format!("{field}.weight"), format!("must be between 1 and 1000, got {weight}")));
    }
    for (value, what) in [
        (raw.max_requests_per_1_minute, "max_requests_per_1_minute"),
        (raw.max_tokens_per_1_minute, "max_tokens_per_1_minute"),
    ] {
        if value == Some(0) {
            return Err(invalid(format!("{field}.{what}"), "must be greater than 0 (leave it out for no limit)"));
        }
    }
    Ok(MemberConfig {
        name,
        target,
        credential: credential_from(raw, env, field)?,
        kind: upstream_kind(raw, field)?,
        models: raw.models.clone().unwrap_or_default(),
        weight,
        connect_timeout,
        read_timeout,
        max_requests_per_1_minute: raw.max_requests_per_1_minute,
        max_tokens_per_1_minute: raw.max_tokens_per_1_minute,
    })
}

/// Applies `KEYGATE_<SECTION>__<FIELD>=value` onto the file's table. Values are
/// read as TOML when they parse as such (numbers, booleans, arrays), else as strings.
fn overlay_env(table: &mut toml::Table, env: &dyn Env) -> Result<(), ConfigError> {
    for (var, value) in env.vars() {
        let Some(rest) = var.strip_prefix("KEYGATE_") else { continue };
        let Some((section, field)) = rest.split_once("__") else { continue };
        let (section, field) = (section.to_ascii_lowercase(), field.to_ascii_lowercase());
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value.clone()));
        let entry = table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = entry.as_table_mut() else {
            return Err(ConfigError::Env { var, message: format!("`{section}` is not a section") });
        };
        section_table.insert(field, parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
