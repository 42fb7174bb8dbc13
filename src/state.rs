//! What every handler shares: the gateway's services (store, key index,
//! clock, upstreams, recorder, meter, limiter, anomaly watcher, metrics) and
//! the settings the request path reads, fixed at start.
//!
//! `app::Gateway` builds it once; the server's layers and handlers, the Azure
//! front door (`route`) and the Administration API (`admin`) read it. It sits
//! below all of them, so the server composes their routers without being
//! imported back.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use ipnet::IpNet;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::KeyIndex;
use crate::clock::Clock;
use crate::jobs::Recorder;
use crate::limits::Limiter;
use crate::proxy::Upstreams;
use crate::store::Store;
use crate::usage::{Alerts, AnomalyWatcher, Meter};

/// Settings the request path reads, fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_body_bytes: usize,
    /// A request body must arrive whole within this of reaching the router.
    pub request_body_timeout: Duration,
    pub organization_id: String,
    /// `organization_id` as the `openai-organization` answer header, built once.
    pub organization_header: Option<HeaderValue>,
    pub default_project_id: String,
    pub trusted_proxies: Vec<IpNet>,
    /// `errors.hints`: append safe, format-only hints to 401 messages.
    pub error_hints: bool,
    /// Completion tokens assumed for token limits when a request names none.
    pub default_max_tokens: u64,
    /// Off only for benchmarks (`usage.enabled = false`).
    pub metering: bool,
    /// The Azure front door: deployment name → model, accepted api-versions, region.
    pub azure_deployments: std::collections::BTreeMap<String, String>,
    pub azure_api_versions: Vec<String>,
    pub azure_region: String,
    /// The config file and flags, read again to apply declared keys on reload.
    pub config_source: crate::config::ConfigSource,
}

/// What every handler shares; cloned per request and per middleware layer,
/// so it is one `Arc` (one atomic increment) around [`Shared`].
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub store: Arc<dyn Store>,
    pub index: Arc<KeyIndex>,
    pub clock: Arc<dyn Clock>,
    pub upstreams: Arc<Upstreams>,
    pub recorder: Recorder,
    pub meter: Meter,
    /// Stores, counts and delivers alerts.
    pub alerts: Arc<Alerts>,
    /// `None` when `anomaly.enabled = false`.
    pub anomaly: Option<Arc<AnomalyWatcher>>,
    pub limiter: Arc<Limiter>,
    pub settings: Arc<Settings>,
    pub metrics: PrometheusHandle,
    /// Dashboard sessions and single sign-on.
    pub sessions: Arc<crate::session::Sessions>,
    /// `dashboard.enabled`: whether `/ui` is served.
    pub dashboard: bool,
}
