//! Assembling a running gateway from a [`Config`]: store, bootstrap, index,
//! upstreams (with the built-in mock when selected), background tasks. `serve`
//! and the integration tests both start keygate through [`Gateway::start`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::auth::KeyIndex;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, UpstreamTarget};
use crate::jobs::{self, BoxFuture, Retention, Tasks};
use crate::key::Secret;
use crate::limits::{month_start, Budgets, Limiter, LocalBackend, RateBackend, RedisBackend};
use crate::policy::BudgetScope;
use crate::proxy::Upstreams;
use crate::server::ConnectionLimits;
use crate::state::{AppState, Settings, Shared};
use crate::store::{Store, UsageGroup, UsageQuery};
use crate::usage::{Alerts, AnomalyWatcher, Meter};

/// The process-wide Prometheus recorder (the `metrics` facade allows one).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; the handle
            // then renders an empty page, which is harmless.
            let _ = metrics::set_global_recorder(recorder);
            describe_metrics();
            handle
        })
        .clone()
}

/// Every metric keygate exports, with its `# HELP` text. Counters without
/// labels start at 0, so a scrape shows them (and an alert on `increase()`
/// works) before the first event; labelled ones appear with their first label.
fn describe_metrics() {
    metrics::describe_gauge!(
        "keygate_upstream_member_up",
        "1 while an upstream pool member is in rotation, 0 while it cools down (failures, or its provider key was refused)."
    );
    const COUNTERS: &[(&str, bool, &str)] = &[
        ("keygate_requests_total", true, "Requests answered, by matched route template, method and status."),
        (
            "keygate_auth_failures_total",
            true,
            "Refused authentications, by private reason (served on the metrics listener only).",
        ),
        ("keygate_alerts_total", true, "Alerts raised, by kind."),
        ("keygate_alerts_dropped_total", false, "Alerts that could not be queued for storing."),
        ("keygate_alert_deliveries_total", true, "Alert webhook delivery attempts, by outcome."),
        ("keygate_anomaly_skipped_seconds_total", false, "Traffic the usage watcher skipped after a long absence."),
        ("keygate_audit_dropped_total", false, "Audit events that could not be queued or kept for a retry."),
        ("keygate_denials_dropped_total", false, "Denial records (for explain) that could not be queued or kept."),
        ("keygate_last_used_dropped_total", false, "Last-used updates that could not be queued."),
        ("keygate_usage_records_total", false, "Usage records written."),
        ("keygate_usage_dropped_total", false, "Usage records that could not be queued or kept for a retry."),
        ("keygate_index_changes_dropped_total", false, "Key index changes that could not be announced to replicas."),
        ("keygate_redis_failures_total", false, "Rate-limit operations that failed on Redis."),
        (
            "keygate_connections_refused_total",
            false,
            "Connections closed at once because server.max_connections were open.",
        ),
        ("keygate_leak_reports_total", false, "Leaked-key reports received."),
        (
            "keygate_upstream_member_failures_total",
            true,
            "Failed tries of an upstream pool member (unreachable, timed out, 429, 401, 5xx), by pool and member.",
        ),
        ("keygate_leaked_keys_revoked_total", false, "Live keys revoked because they were reported leaked."),
    ];
    for &(name, labelled, help) in COUNTERS {
        metrics::describe_counter!(name, help);
        if !labelled {
            metrics::counter!(name).increment(0);
        }
    }
    metrics::describe_histogram!(
        "keygate_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from a request's arrival to its answer's headers."
    );
    metrics::describe_histogram!(
        "keygate_upstream_latency_seconds",
        metrics::Unit::Seconds,
        "Time until an upstream's answer headers, by upstream."
    );
}

pub struct Gateway {
    pub state: AppState,
    pub tasks: Tasks,
    /// For the accept loop (`server::serve`).
    pub connection_limits: ConnectionLimits,
    /// The admin key generated on first start, to show once.
    pub generated_admin_key: Option<Secret>,
}

impl Gateway {
    pub async fn start(config: &Config, admin_key_from_env: Option<&Secret>) -> anyhow::Result<Self> {
        Self::start_with_clock(config, admin_key_from_env, Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(
        config: &Config,
        admin_key_from_env: Option<&Secret>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let store = crate::store::open(&config.database_url)
            .await
            .with_context(|| format!("cannot open the database `{}`", redact_url(&config.database_url)))?;
        let now = clock.now();
        let boot = store.bootstrap(now).await.context("cannot initialise the database")?;
        let (generated_admin_key, _) =
            crate::admin::bootstrap_admin_key(&*store, admin_key_from_env, boot.first_start, now)
                .await
                .context("cannot create the bootstrap admin key")?;
        let index = Arc::new(KeyIndex::build(
            jobs::read_keys(&*store).await.context("cannot load keys")?,
            store.all_projects().await.context("cannot load projects")?,
        ));
        tracing::info!(keys = index.len(), "key index loaded");

        let mut tasks = Tasks::default();
        let members = || config.upstreams.iter().flat_map(|u| u.members.iter().map(move |m| (u, m)));
        let mock_base = if members().any(|(_, m)| matches!(m.target, UpstreamTarget::Mock)) {
            Some(start_mock(&mut tasks).await?)
        } else {
            None
        };
        for (u, m) in members() {
            match (&m.target, u.defaulted_to_mock) {
                (UpstreamTarget::Mock, true) => tracing::warn!(
                    "NO UPSTREAM CONFIGURED: answering from the built-in MOCK upstream (synthetic answers). \
                     Set KEYGATE_UPSTREAM_URL and KEYGATE_UPSTREAM_API_KEY (or OPENAI_API_KEY) to reach a real provider."
                ),
                (UpstreamTarget::Mock, false) => {
                    tracing::warn!(upstream = %u.name, member = %m.name, "upstream `{}` is the built-in MOCK: answers are synthetic", m.name)
                }
                (UpstreamTarget::Url(url), _) => {
                    tracing::info!(upstream = %u.name, member = %m.name, %url, weight = m.weight, authenticated = m.credential.is_some(), "upstream configured")
                }
            }
        }
        let upstreams = Arc::new(Upstreams::build(&config.upstreams, mock_base.as_deref())?);
        if let Some(every) = upstreams.probe_interval() {
            let probing = Arc::clone(&upstreams);
            tasks.spawn(
                "upstream probes",
                jobs::periodic(every, move || {
                    let upstreams = Arc::clone(&probing);
                    async move { upstreams.probe().await }
                }),
            );
        }

        // The exporter keeps every histogram sample until something drains
        // it; without this, a gateway nobody scrapes grows by each request.
        let metrics = metrics_handle();
        for pool in upstreams.pools() {
            pool.announce_all();
        }
        let upkeep = metrics.clone();
        tasks.spawn(
            "metrics upkeep",
            jobs::periodic(Duration::from_secs(5), move || {
                upkeep.run_upkeep();
                std::future::ready(())
            }),
        );
        let (recorder, writer) = jobs::recorder(Arc::clone(&store), Arc::clone(&clock), Duration::from_secs(1));
        tasks.spawn("recorder", writer);
        let (reconcile_store, reconcile_index) = (Arc::clone(&store), Arc::clone(&index));
        tasks.spawn(
            "index reconcile",
            jobs::periodic(Duration::from_secs(30), move || {
                let (store, index) = (Arc::clone(&reconcile_store), Arc::clone(&reconcile_index));
                async move { jobs::reconcile_index(&*store, &index).await }
            }),
        );
        let (prune_store, prune_clock) = (Arc::clone(&store), Arc::clone(&clock));
        let retention = Retention {
            denials: config.denial_retention,
            denial_rows: config.denial_max_rows,
            usage_records: config.usage_record_retention,
            usage_rollups: config.usage_rollup_retention,
            alerts: config.alert_retention,
            audit: config.audit_retention,
            audit_rows: config.audit_max_rows,
            session_idle: config.dashboard.session_idle,
        };
        jobs::enforce_retention(&*store, &*clock, &retention).await;
        tasks.spawn(
            "retention",
            jobs::periodic(Duration::from_secs(3600), move || {
                let (store, clock) = (Arc::clone(&prune_store), Arc::clone(&prune_clock));
                async move { jobs::enforce_retention(&*store, &*clock, &retention).await }
            }),
        );

        if let Some(redis) = &config.redis {
            crate::replicas::start(&mut tasks, &redis.url, &redis.key_prefix, Arc::clone(&store), Arc::clone(&index))
                .await
                .with_context(|| format!("cannot subscribe to key changes on Redis at {}", redact_url(&redis.url)))?;
        }
        let budgets = Arc::new(Budgets::default());
        load_budgets(&*store, &budgets, clock.now()).await.context("cannot load this month's spend")?;
        let backend: Arc<dyn RateBackend> = match &config.redis {
            None => Arc::new(LocalBackend::default()),
            Some(redis) => {
                let shared = Arc::new(
                    RedisBackend::connect(&redis.url, &redis.key_prefix, redis.on_failure)
                        .await
                        .with_context(|| format!("cannot connect to Redis at {}", redact_url(&redis.url)))?,
                );
                let renewing = Arc::clone(&shared);
                let every = Duration::from_millis(crate::limits::LEASE_MS.unsigned_abs() / 3);
                tasks.spawn(
                    "in-flight lease renewal",
                    jobs::periodic(every, move || {
                        let shared = Arc::clone(&renewing);
                        async move { shared.renew_leases().await }
                    }),
                );
                shared
            }
        };
        let limiter = Arc::new(
            Limiter::new(backend, budgets, Arc::clone(&clock), config.failed_auth_per_minute)
                .with_leak_reports(config.leak_reports_per_minute),
        );
        let prune_limiter = Arc::clone(&limiter);
        tasks.spawn(
            "limiter prune",
            jobs::periodic(Duration::from_secs(60), move || {
                let limiter = Arc::clone(&prune_limiter);
                async move { limiter.prune().await }
            }),
        );
        let alerts = Arc::new(Alerts::new(
            Arc::clone(&store),
            Arc::clone(&index),
            Arc::clone(&clock),
            config.alert_webhook.clone(),
        )?);
        if config.alert_webhook.is_some() {
            tasks.spawn("alert webhook", Arc::clone(&alerts).sender());
        }
        let meter =
            Meter::new(recorder.clone(), Arc::new(config.prices.clone()), Arc::clone(&limiter), Arc::clone(&alerts));
        let anomaly = config.anomaly.clone().map(|policy| {
            Arc::new(AnomalyWatcher::new(
                Arc::clone(&store),
                Arc::clone(&index),
                Arc::clone(&clock),
                policy,
                Arc::clone(&alerts),
                recorder.clone(),
            ))
        });
        if let Some(watcher) = &anomaly {
            // Replicas read the same usage: one of them at a time raises alerts.
            tasks.spawn("usage anomalies", Arc::clone(watcher).task());
        }

        let organization_id = match &config.organization_id {
            Some(id) => id.clone(),
            None => boot.organization_id.clone(),
        };
        let sso = match &config.dashboard.sso {
            Some(sso) => Some(crate::session::oidc::Sso::new(sso.clone()).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let sessions = Arc::new(crate::session::Sessions {
            idle_seconds: config.dashboard.session_idle.as_secs() as i64,
            max_seconds: config.dashboard.session_max.as_secs() as i64,
            secure: config.tls.is_some() || sso.as_ref().is_some_and(|s| s.config().redirect_url.starts_with("https:")),
            sso,
        });
        let state = AppState::new(Shared {
            store,
            index,
            clock,
            upstreams,
            recorder,
            meter,
            alerts,
            anomaly,
            limiter,
            settings: Arc::new(Settings {
                max_body_bytes: config.max_body_bytes,
                request_body_timeout: config.request_body_timeout,
                organization_header: http::HeaderValue::from_str(&organization_id).ok(),
                organization_id,
                default_project_id: boot.default_project.id.clone(),
                trusted_proxies: config.trusted_proxies.clone(),
                error_hints: config.error_hints,
                default_max_tokens: config.default_max_tokens,
                metering: config.metering,
                azure_deployments: config.azure.deployments.clone(),
                azure_api_versions: config.azure.api_versions.clone(),
                azure_region: config.azure.region.clone(),
                config_source: config.source.clone(),
            }),
            metrics,
            sessions,
            dashboard: config.dashboard.enabled,
        });
        // Keys declared in the file ([[keys]]) are in the database before the first request.
        crate::admin::apply_declared(&state, &config.keys, None)
            .await
            .map_err(|e| anyhow::anyhow!("cannot apply the declared keys: {e:?}"))?;
        let connection_limits = ConnectionLimits {
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections,
        };
        Ok(Self { state, tasks, connection_limits, generated_admin_key })
    }
}

/// This month's spend per key and project, from the usage rollups.
async fn load_budgets(store: &dyn Store, budgets: &Budgets, now: i64) -> anyhow::Result<()> {
    for group in [UsageGroup::ApiKey, UsageGroup::Project] {
        let rows = store
            .query_usage(&UsageQuery {
                kind: None,
                start: month_start(now),
                end: now + 60,
                bucket_seconds: 100 * 86_400,
                group_by: vec![group],
                project_ids: Vec::new(),
                key_ids: Vec::new(),
                models: Vec::new(),
                prefixes: Vec::new(),
            })
            .await?;
        for row in rows {
            let scope = match group {
                UsageGroup::ApiKey => row.key_id.as_deref().and_then(crate::ids::PublicId::parse).map(BudgetScope::Key),
                _ => row.project_id.clone().map(BudgetScope::Project),
            };
            if let Some(scope) = scope {
                budgets.add(&scope, row.cost_nanos, now);
            }
        }
    }
    Ok(())
}

async fn start_mock(tasks: &mut Tasks) -> anyhow::Result<String> {
    let listener =
        TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.context("cannot start the mock upstream")?;
    let addr = listener.local_addr()?;
    tasks.spawn("mock upstream", move |mut shutdown| -> BoxFuture {
        Box::pin(async move {
            let stopped = async move {
                let _ = shutdown.changed().await;
            };
            if let Err(error) = crate::mock::serve(listener, stopped).await {
                tracing::error!(%error, "mock upstream stopped");
            }
        })
    });
    Ok(format!("http://{addr}/v1"))
}

/// A URL fit for logs and messages: its password, if any, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_in_messages_never_show_a_password() {
        assert_eq!(super::redact_url("postgres://kg:s3cret@db:5432/kg"), "postgres://kg:***@db:5432/kg");
        assert_eq!(super::redact_url("redis://:s3cret@cache:6379"), "redis://:***@cache:6379");
        assert_eq!(super::redact_url("postgres://kg@db/kg"), "postgres://kg@db/kg");
        assert_eq!(super::redact_url("not a url s3cret"), "<unparsable URL>");
    }
}
