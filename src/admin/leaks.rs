//! `POST /v1/keys/leaked` (ours): key strings found in the wild, from a
//! secret scanner or a person, revoked if they are live keys of this gateway.
//!
//! Unauthenticated by design, like GitHub's secret-scanning partner endpoint:
//! whoever found a key may not hold any other. What keeps it safe to expose:
//! - the answer is one shape and status for every accepted batch
//!   (`202 {"object": "keygate.leak_report", "received": N}`), so it never
//!   says which strings were keys;
//! - every string costs the same work, one SHA-256 and one index lookup,
//!   whatever it turns out to be (nothing is parsed first); only a live key
//!   adds the writes of its revocation, after which it no longer works;
//! - reports are limited per client address (`limits.leak_reports_per_minute`),
//!   checked before the body is read, and a batch is at most
//!   [`MAX_KEYS`] strings in at most [`MAX_BODY_BYTES`].
//!
//! A live key (project, service account or admin; its current secret or one
//! still in its rotation grace; suspended or expired keys too, as they could
//! be resumed or extended) is revoked with the reason `leaked`, the index
//! updated and announced to the other replicas before the answer, an
//! `api_key.leaked` audit event written, and a critical `leaked_key` alert
//! stored and sent to the alert webhook, if one is configured.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::IndexedKey;
use crate::dialect::{ApiError, ErrorResponse};
use crate::key::KeyDigest;
use crate::request::{read_body, ClientIp};
use crate::state::AppState;
use crate::store::{Alert, AuditEvent, KeyKind, KeyState, Revocation};
use crate::time::Timestamp;

/// The most strings one report may carry.
pub const MAX_KEYS: usize = 100;

/// The largest report body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// At most this many characters of a reporter's `url`, `source` or `type` are
/// kept: they end up in the audit log, the alert and the revocation reason.
const MAX_NOTE_CHARS: usize = 512;

/// A leaked-key report: the strings, and where they were found.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LeakReport {
    /// Up to 100 strings, each the whole key as found (surrounding
    /// whitespace is ignored).
    keys: Vec<String>,
    /// Where they were found, recorded with the revocation.
    url: Option<String>,
    /// What found them (a scanner's name), recorded with the revocation.
    source: Option<String>,
}

/// One match in GitHub's secret-scanning partner shape.
#[derive(Deserialize)]
struct GitHubMatch {
    token: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    url: Option<String>,
    source: Option<String>,
}

/// Either body shape the endpoint takes.
#[derive(Deserialize)]
#[serde(untagged)]
enum Body {
    Keygate(LeakReport),
    GitHub(Vec<GitHubMatch>),
}

/// One reported string with what was said about it.
struct Reported {
    token: String,
    kind: Option<String>,
    url: Option<String>,
    source: Option<String>,
}

impl Body {
    fn into_reported(self) -> Vec<Reported> {
        match self {
            Body::Keygate(report) => report
                .keys
                .into_iter()
                .map(|token| Reported { token, kind: None, url: report.url.clone(), source: report.source.clone() })
                .collect(),
            Body::GitHub(matches) => matches
                .into_iter()
                .map(|m| Reported { token: m.token, kind: m.kind, url: m.url, source: m.source })
                .collect(),
        }
    }
}

/// The answer to every accepted report, whatever it held.
#[derive(Serialize, utoipa::ToSchema)]
struct LeakReportReceived {
    /// Always `keygate.leak_report`.
    object: &'static str,
    /// How many strings the report carried.
    received: usize,
}

/// The leaked-key report endpoint and its schemas, for the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(report))]
pub struct LeakApi;

/// `POST /v1/keys/leaked`.
#[utoipa::path(
    post,
    path = "/v1/keys/leaked",
    operation_id = "report-leaked-keys",
    summary = "Report leaked keys",
    tag = "public",
    security(()),
    description = "Ours, unauthenticated: report key strings found in the wild. A live key of this gateway is revoked at once on every replica, audited (`api_key.leaked`) and raised as a `leaked_key` alert. The answer is the same for any accepted batch and never says which strings were keys. Also takes GitHub's secret-scanning partner shape, `[{\"token\": ..., \"type\": ..., \"url\": ..., \"source\": ...}]`. At most 100 strings and 1 MiB; limited per client address (`limits.leak_reports_per_minute`).",
    request_body = LeakReport,
    responses(
        (status = 202, body = LeakReportReceived),
        (status = 400, body = ErrorResponse),
        (status = 413, body = ErrorResponse),
        (status = 429, body = ErrorResponse)
    )
)]
pub async fn report(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let client = req.extensions().get::<ClientIp>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0);
    // Before the body is read: a client past its limit costs no more than this.
    if let Some(exceeded) = state.limiter.leak_report(client).await {
        return Err(ApiError::LeakReportsLimited { exceeded });
    }
    let body = read_body(req.into_body(), MAX_BODY_BYTES).await?;
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|_| ApiError::InvalidJson)?;
    let reported = serde_json::from_value::<Body>(value).map_err(|_| ApiError::BadRequest {
        message: "Invalid leak report: expected {\"keys\": [\"...\"]} (optionally with `url` and `source`), or GitHub's [{\"token\": \"...\"}].".into(),
        param: None,
    })?;
    let reported = reported.into_reported();
    if reported.len() > MAX_KEYS {
        return Err(ApiError::BadRequest {
            message: format!("Too many keys in one report: {}. At most {MAX_KEYS} are accepted.", reported.len()),
            param: Some("keys"),
        });
    }
    let now = state.clock.now();
    // The same work for every string: hash it, look the digest up. Whether it
    // is a key, a revoked key or noise is only known after.
    let mut live: Vec<(Arc<IndexedKey>, &Reported)> = Vec::new();
    for one in &reported {
        let found = state.index.lookup(&KeyDigest::of(one.token.trim()));
        if let Some(found) = found.filter(|f| f.secret_expires_at.is_none_or(|at| at > now)) {
            if found.key.state != KeyState::Revoked {
                live.push((found.key, one));
            }
        }
    }
    let mut seen = HashSet::new();
    for (key, one) in live {
        if seen.insert(key.id) {
            revoke_leaked(&state, &key, one, client, now).await?;
        }
    }
    metrics::counter!("keygate_leak_reports_total").increment(1);
    let answer = LeakReportReceived { object: "keygate.leak_report", received: reported.len() };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// Any other method on `/v1/keys/leaked`: refused here, never forwarded.
pub async fn other_method(req: Request) -> Response {
    let mut response = ApiError::MethodNotAllowed { method: req.method().clone() }.into_response();
    response.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
    response
}

/// Revokes a reported live key and records it: index (and so every replica),
/// audit log, alert, webhook. A store failure is a 500, so the reporter
/// retries: it already holds the key, so that tells it nothing new.
async fn revoke_leaked(
    state: &AppState,
    key: &IndexedKey,
    reported: &Reported,
    client: IpAddr,
    now: Timestamp,
) -> Result<(), ApiError> {
    let url = note(reported.url.as_deref());
    let source = note(reported.source.as_deref());
    let kind = note(reported.kind.as_deref());
    let mut reason = format!("leaked: reported from client {client}");
    if let Some(url) = &url {
        reason.push_str(&format!(", found at {url}"));
    }
    if let Some(source) = &source {
        reason.push_str(&format!(" (source: {source})"));
    }
    let revocation =
        Revocation { at: now, by: Some(format!("leak report from client {client}")), reason: Some(reason) };
    let Some(revoked) = state.store.revoke_key(&key.id, &revocation).await? else {
        return Ok(()); // gone from the store since the index was loaded
    };
    // Revoked just now by someone else (a report racing this one): theirs is recorded.
    let ours = revoked.revocation.as_ref() == Some(&revocation);
    state.index.upsert([revoked]);
    if !ours {
        return Ok(());
    }
    metrics::counter!("keygate_leaked_keys_revoked_total").increment(1);
    tracing::warn!(key = %key.id, %client, url = ?url, source = ?source, "a key reported leaked was revoked");
    let data = json!({
        "key_type": key_type(key.kind),
        "name": &*key.name,
        "reported_by": client.to_string(),
        "url": url,
        "source": source,
        "type": kind,
    });
    let event = AuditEvent {
        id: crate::ids::audit_log_id(),
        kind: "api_key.leaked",
        effective_at: now,
        project_id: key.project_id().map(str::to_owned),
        actor_key_id: None,
        actor_user_id: None,
        actor_ip: None,
        details: json!({"id": key.id.api_id(), "data": data}),
    };
    if let Err(error) = state.store.append_audit(&event).await {
        tracing::warn!(%error, "could not write the api_key.leaked audit event; queued for retry");
        state.recorder.audit(event);
    }
    let alert = Alert {
        id: crate::usage::alert_id(&format!("leaked_key/{}/{}", key.id, crate::ids::RequestId::new())),
        at: now,
        key_id: key.id,
        project_id: key.project_id().map(str::to_owned),
        kind: "leaked_key".into(),
        severity: "critical".into(),
        message: match &url {
            Some(url) => {
                format!("key {} was reported leaked (found at {url}) from client {client} and revoked", key.id)
            }
            None => format!("key {} was reported leaked from client {client} and revoked", key.id),
        },
        details: data,
        delivery: None,
        acknowledged: None,
    };
    // Stored, counted and handed to the webhook sender, which delivers off
    // this request: a slow receiver must not hold the reporter's answer.
    if let Err(error) = state.alerts.raise(alert).await {
        tracing::error!(%error, key = %key.id, "could not store the leaked_key alert");
    }
    Ok(())
}

fn key_type(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Admin => "admin",
        KeyKind::Project => "project",
    }
}

/// A reporter's note as kept: bounded, one line.
fn note(value: Option<&str>) -> Option<String> {
    let value = value?.trim();
    if value.is_empty() {
        return None;
    }
    Some(value.chars().take(MAX_NOTE_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_body_shapes_give_the_strings_and_their_notes() {
        let ours: Body =
            serde_json::from_str(r#"{"keys": [" sk-a ", "b"], "url": "https://x/y", "source": "scan"}"#).unwrap();
        let ours = ours.into_reported();
        assert_eq!(ours.len(), 2);
        assert_eq!(ours[0].token, " sk-a ");
        assert_eq!(ours[1].url.as_deref(), Some("https://x/y"));
        assert_eq!(ours[1].source.as_deref(), Some("scan"));
        let github: Body = serde_json::from_str(
            r#"[{"token": "t", "type": "keygate_api_key", "url": "https://github.com/o/r/blob/x", "source": "content", "extra": 1}]"#,
        )
        .unwrap();
        let github = github.into_reported();
        assert_eq!(github[0].token, "t");
        assert_eq!(github[0].kind.as_deref(), Some("keygate_api_key"));
        assert!(serde_json::from_str::<Body>(r#"{"keys": ["a"], "bogus": 1}"#).is_err());
        assert!(serde_json::from_str::<Body>(r#"{"keys": [1]}"#).is_err());
    }

    #[test]
    fn notes_are_bounded_and_on_one_line() {
        assert_eq!(note(Some("  ")), None);
        assert_eq!(note(Some("a\nb")).as_deref(), Some("a b"));
        assert_eq!(note(Some(&"x".repeat(2000))).map(|n| n.len()), Some(MAX_NOTE_CHARS));
    }
}
