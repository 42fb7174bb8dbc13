//! Metering: what each data-plane request cost, measured as the answer streams
//! through, recorded off the response path, priced in integer nano-dollars.
//!
//! Owns: the usage tap on response bodies (JSON and SSE), the injected
//! `stream_options.include_usage` and its removal from what the client sees,
//! token estimates for streams cut short, the price table, and the anomaly
//! watcher. Leaves storage to `store`, batching to `jobs::Recorder`, and the
//! Usage API's HTTP shape to `admin`.

mod alerts;
mod anomaly;
mod baseline;
mod estimate;
mod price;
mod tap;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;

use crate::auth::Authorized;
use crate::jobs::Recorder;
use crate::limits::{Limiter, Ticket};
use crate::policy::{Budget, BudgetScope};
use crate::store::{Alert, Tokens, UsageKind, UsageRecord};
use crate::time::Timestamp;

pub use alerts::{alert_id, alert_json, delivery_json, Alerts, WebhookSecret, WebhookTarget};
pub use anomaly::{network_of, AnomalyPolicy, AnomalyWatcher, JOB, LEASE_SECONDS, SETTLE_SECONDS};
pub use price::{Price, PriceTable};
pub use tap::Observed;
/// For `crate::fuzzing`, which drives the tap without a server.
pub(crate) use tap::{tokens_from_usage, Tap};

/// Everything known about a request before its answer, to make its record.
pub struct Metered {
    pub request_id: String,
    pub at: Timestamp,
    pub authorized: Authorized,
    pub model: Option<String>,
    pub route: String,
    pub upstream: String,
    pub client_ip: Option<IpAddr>,
    pub started: Instant,
    /// The request body, for a token estimate if the answer is cut short.
    pub request_body: Bytes,
    /// keygate added `stream_options.include_usage`: drop the usage chunk and
    /// the `"usage": null` fields from what the client receives.
    pub strip_injected_usage: bool,
    /// The upstream is Azure and the client speaks OpenAI: take Azure's
    /// content-filter fields out of the answer.
    pub strip_azure_fields: bool,
    /// The admission to settle with the real usage (and the in-flight slots it
    /// holds until the answer ends).
    pub ticket: Option<Ticket>,
}

/// Records usage for every data-plane request that reached the forwarding step.
#[derive(Clone)]
pub struct Meter {
    recorder: Recorder,
    prices: Arc<PriceTable>,
    limiter: Arc<Limiter>,
    alerts: Arc<Alerts>,
}

impl Meter {
    pub fn new(recorder: Recorder, prices: Arc<PriceTable>, limiter: Arc<Limiter>, alerts: Arc<Alerts>) -> Self {
        Self { recorder, prices, limiter, alerts }
    }

    /// Wraps the answer's body in the usage tap; the record is written when
    /// the body ends or the client goes away.
    pub fn tap(&self, response: Response, metered: Metered) -> Response {
        let (mut parts, body) = response.into_parts();
        let status = parts.status.as_u16();
        let sse = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let strip = metered.strip_injected_usage && sse && parts.status.is_success();
        let strip_azure = metered.strip_azure_fields && parts.status.is_success();
        if strip || strip_azure {
            // The body changes length when chunks are removed.
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        let meter = self.clone();
        let on_done = move |observed: Observed| meter.record(metered, status, observed);
        let tapped = tap::Tap::new(body.into_data_stream(), sse, strip, strip_azure, Box::new(on_done));
        Response::from_parts(parts, Body::from_stream(tapped))
    }

    /// Records a request that got no upstream answer (502/504).
    pub fn failed(&self, metered: Metered, status: u16) {
        self.record(metered, status, Observed::default());
    }

    fn record(&self, m: Metered, status: u16, observed: Observed) {
        let success = (200..300).contains(&status);
        let (tokens, estimated) = match observed.tokens {
            Some(tokens) => (tokens, false),
            None if success && (observed.cut_short || !observed.text.is_empty()) => {
                let model = m.model.as_deref().unwrap_or("");
                let tokens = Tokens {
                    input: estimate::prompt_tokens(model, &m.request_body),
                    output: estimate::text_tokens(model, &observed.text),
                    ..Tokens::default()
                };
                (tokens, true)
            }
            None => (Tokens::default(), false),
        };
        let cost_nanos = m.model.as_deref().map_or(0, |model| self.prices.cost_nanos(model, &tokens));
        let key = &m.authorized.key;
        if let Some(ticket) = &m.ticket {
            let actual = u64::try_from(tokens.input + tokens.output).unwrap_or(0);
            for (scope, budget, spent) in self.limiter.settle(ticket, actual, cost_nanos) {
                self.recorder.alert(self.alerts.queued(budget_alert(&m, &scope, budget, spent)));
            }
        }
        self.recorder.usage(UsageRecord {
            request_id: m.request_id,
            at: m.at,
            key_id: key.id,
            prefix: key.prefix().to_owned(),
            project_id: key.project_id().unwrap_or_default().to_owned(),
            owner_id: key.owner_id().map(str::to_owned),
            model: m.model,
            kind: UsageKind::of_path(&m.route),
            route: m.route,
            status,
            tokens,
            estimated,
            cost_nanos,
            latency_ms: i64::try_from(m.started.elapsed().as_millis()).unwrap_or(i64::MAX),
            upstream: m.upstream,
            client_ip: m.client_ip.map(|ip| ip.to_string()),
        });
    }
}

fn budget_alert(m: &Metered, scope: &BudgetScope, budget: Budget, spent: i64) -> Alert {
    let whose = match scope {
        BudgetScope::Key(id) => format!("key {id}"),
        BudgetScope::Project(id) => format!("project {id}"),
    };
    Alert {
        // A key's and its project's budget can both be crossed by one request.
        id: alert_id(&format!("budget/{}/{whose}", m.request_id)),
        at: m.at,
        key_id: m.authorized.key.id,
        project_id: m.authorized.key.project_id().map(str::to_owned),
        kind: "budget".into(),
        severity: "warning".into(),
        message: format!(
            "{whose} has spent ${:.2} of its ${:.2} monthly budget ({}% alert threshold)",
            spent as f64 / 1e9,
            budget.monthly_nanos as f64 / 1e9,
            budget.alert_percent
        ),
        details: serde_json::json!({"spent_nanos": spent, "budget_nanos": budget.monthly_nanos, "scope": whose}),
        delivery: None,
        acknowledged: None,
    }
}

/// A pool member's provider key was refused (401): the member is out of
/// rotation and its key must be replaced. Raised once per take-out by the
/// request that found it, which names `key` (whose own key is fine: its
/// client got a 503, not a 401); the alert is the organization's, in no
/// project, so no project member can acknowledge it away.
pub fn upstream_credential_alert(
    pool: &str,
    member: &str,
    outcome: &str,
    key: &crate::auth::IndexedKey,
    at: crate::time::Timestamp,
) -> Alert {
    Alert {
        id: alert_id(&format!("upstream_credential/{pool}/{member}/{at}")),
        at,
        key_id: key.id,
        project_id: None,
        kind: "upstream_credential_rejected".into(),
        severity: "critical".into(),
        message: format!(
            "upstream `{pool}` member `{member}`: the provider refused keygate's key for it ({outcome}); \
             replace that member's provider key (clients' keygate keys are fine)"
        ),
        details: serde_json::json!({"pool": pool, "member": member, "outcome": outcome}),
        delivery: None,
        acknowledged: None,
    }
}

/// Tokens a request is expected to use, for token limits: its prompt (by the
/// model's tokenizer) plus its completion allowance.
pub fn estimate_request_tokens(model: Option<&str>, body: &[u8], max_tokens: u64) -> u64 {
    let prompt = estimate::prompt_tokens(model.unwrap_or(""), body);
    u64::try_from(prompt).unwrap_or(0).saturating_add(max_tokens)
}

/// The body with its `model` set to `model` (an Azure deployment resolved to
/// the model an OpenAI upstream knows); `None` if the body is not a JSON object.
pub fn replace_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.as_object_mut()?.insert("model".into(), serde_json::Value::String(model.to_owned()));
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

/// Adds `stream_options.include_usage = true` to a streaming chat or
/// completions body that did not ask for usage; returns the new body, or
/// `None` when nothing needs to change.
pub fn inject_include_usage(path: &str, body: &[u8]) -> Option<Bytes> {
    if !matches!(path, "/v1/chat/completions" | "/v1/completions") {
        return None;
    }
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object_mut()?;
    if object.get("stream").and_then(serde_json::Value::as_bool) != Some(true) {
        return None;
    }
    let options = object.entry("stream_options").or_insert_with(|| serde_json::json!({}));
    let options = options.as_object_mut()?;
    if options.get("include_usage").and_then(serde_json::Value::as_bool) == Some(true) {
        return None;
    }
    options.insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests;
