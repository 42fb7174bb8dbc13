//! Forwarding to upstream providers, in pingora's phase order: pick the pool
//! (by model) and a member of it, rewrite the request (swap the credential,
//! drop the client's identity headers), send it, fail over to another member
//! when one cannot serve, and stream the answer back untouched.
//!
//! Owns: upstream clients, routing, pools and their members' health, header
//! hygiene, streaming. Leaves authentication to `auth` and error rendering to
//! `dialect`.

mod meta;
mod pool;

use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::{MemberConfig, UpstreamConfig, UpstreamKind, UpstreamTarget};
use crate::dialect::ApiError;
use crate::key::Secret;
use crate::policy::glob_match;

pub use meta::RequestMeta;
pub use pool::{Attempt, Breaker, Forwarded, Member, MemberLimits, MemberStatus, Outcome, Pool, RetryPolicy};

/// One provider endpoint: where, and with which credential.
pub struct Upstream {
    pub name: String,
    /// Parsed once: parsing a URL (host, IDNA) per request was ~4% of the
    /// proxy's CPU; a request only sets the path and query.
    base: reqwest::Url,
    /// The header that carries the upstream credential, built once at start
    /// (marked sensitive, so it is never printed).
    credential: Option<(HeaderName, HeaderValue)>,
    client: reqwest::Client,
    pub kind: UpstreamKind,
}

impl Upstream {
    pub fn is_azure(&self) -> bool {
        matches!(self.kind, UpstreamKind::Azure { .. })
    }

    /// The upstream URL for a `/v1`-relative path and query.
    fn url(&self, relative: &str, model: Option<&str>) -> reqwest::Url {
        let (path, query) = relative.split_once('?').map_or((relative, None), |(p, q)| (p, Some(q)));
        let base_path = self.base.path().trim_end_matches('/');
        let mut url = self.base.clone();
        match &self.kind {
            UpstreamKind::OpenAi => {
                url.set_path(&format!("{base_path}{path}"));
                url.set_query(query);
            }
            UpstreamKind::Azure { api_version, deployments } => {
                let deployment_op = ["/chat/completions", "/completions", "/embeddings", "/audio/", "/images/"]
                    .iter()
                    .any(|op| path == op.trim_end_matches('/') || path.starts_with(op));
                match model.filter(|_| deployment_op) {
                    Some(model) => {
                        let deployment = deployments.get(model).map_or(model, String::as_str);
                        let deployment: String = form_urlencoded::byte_serialize(deployment.as_bytes()).collect();
                        url.set_path(&format!("{base_path}/openai/deployments/{deployment}{path}"));
                    }
                    None => url.set_path(&format!("{base_path}/openai{path}")),
                }
                let extra = query.map(|q| format!("&{q}")).unwrap_or_default();
                url.set_query(Some(&format!("api-version={api_version}{extra}")));
            }
        }
        url
    }
}

impl Upstream {
    /// The endpoint a member config describes; `mock_base` is where the
    /// built-in mock listens, when a config selects it.
    fn build(c: &MemberConfig, mock_base: Option<&str>) -> anyhow::Result<Self> {
        let base = match &c.target {
            UpstreamTarget::Url(url) => url.clone(),
            UpstreamTarget::Mock => mock_base
                .ok_or_else(|| anyhow::anyhow!("upstream `{}` is the mock, but the mock is not running", c.name))?
                .to_owned(),
        };
        let base = reqwest::Url::parse(&base)
            .map_err(|e| anyhow::anyhow!("upstream `{}` has an invalid URL `{base}`: {e}", c.name))?;
        let client = reqwest::Client::builder()
            .connect_timeout(c.connect_timeout)
            .read_timeout(c.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let credential =
            c.credential.as_ref().map(|secret| credential_header(&c.kind, secret)).transpose().map_err(|_| {
                anyhow::anyhow!("the credential of upstream `{}` is not a valid HTTP header value", c.name)
            })?;
        Ok(Upstream { name: c.name.clone(), base, credential, client, kind: c.kind.clone() })
    }
}

/// Every pool; the first is the default route.
pub struct Upstreams(Vec<Pool>);

impl Upstreams {
    /// `mock_base` is where the built-in mock listens, when a config selects it.
    pub fn build(configs: &[UpstreamConfig], mock_base: Option<&str>) -> anyhow::Result<Self> {
        let mut pools = Vec::with_capacity(configs.len());
        for c in configs {
            let mut members = Vec::with_capacity(c.members.len());
            for m in &c.members {
                let limits = MemberLimits {
                    requests_per_minute: m.max_requests_per_1_minute,
                    tokens_per_minute: m.max_tokens_per_1_minute,
                };
                members.push(Member::new(Upstream::build(m, mock_base)?, m.weight, m.models.clone(), limits));
            }
            anyhow::ensure!(!members.is_empty(), "upstream `{}` has no member", c.name);
            let breaker = Breaker { failures: c.failure_threshold, cooldown: c.cooldown, ..Breaker::default() };
            let pool = Pool::new(c.name.clone(), c.models.clone(), members, breaker, c.retries, c.retry_deadline);
            pools.push(pool.with_probes(c.probe_interval));
        }
        anyhow::ensure!(!pools.is_empty(), "no upstream configured");
        Ok(Self(pools))
    }

    /// The pool for `model`: the first routed pool whose patterns match, else the default.
    pub fn route(&self, model: Option<&str>) -> &Pool {
        let routed = model.and_then(|m| self.0[1..].iter().find(|p| p.models.iter().any(|g| glob_match(g, m))));
        routed.unwrap_or(&self.0[0])
    }

    pub fn pools(&self) -> &[Pool] {
        &self.0
    }

    /// The shortest probe interval of any pool (`None`: no pool probes).
    pub fn probe_interval(&self) -> Option<std::time::Duration> {
        self.0.iter().filter_map(Pool::probe_interval).min()
    }

    /// Active health checks: `GET /models` on every member of each pool
    /// whose probe is due, with the member's credential. An answer puts a
    /// member back in rotation; a failure counts as one.
    pub async fn probe(&self) {
        /// A member that does not list its models in this long is not well.
        const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
        let probes = self.0.iter().filter(|p| p.probe_due()).flat_map(|pool| {
            pool.members().iter().map(move |member| async move {
                let headers = HeaderMap::new();
                let request = send(&member.upstream, Method::GET, "/models", &headers, Bytes::new(), None);
                let outcome = tokio::time::timeout(PROBE_TIMEOUT, request)
                    .await
                    .unwrap_or(Outcome::Failed { timed_out: true, sent: true });
                pool.probed(member, outcome);
            })
        });
        futures_util::future::join_all(probes).await;
    }
}

/// `Authorization: Bearer <credential>` for OpenAI, `api-key: <credential>` for Azure.
fn credential_header(kind: &UpstreamKind, secret: &Secret) -> Result<(HeaderName, HeaderValue), http::Error> {
    let (name, text) = match kind {
        UpstreamKind::OpenAi => (header::AUTHORIZATION, format!("Bearer {}", secret.expose())),
        UpstreamKind::Azure { .. } => (HeaderName::from_static("api-key"), secret.expose().to_owned()),
    };
    let mut value = HeaderValue::from_str(&text)?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// Request headers never sent upstream: hop-by-hop headers, the client's
/// credential and identity (keygate's own key must never leave), and
/// `accept-encoding` so the answer arrives uncompressed for the usage tap.
const DROP_REQUEST: &[&str] = &[
    "host",
    "authorization",
    "api-key",
    "openai-organization",
    "openai-project",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "accept-encoding",
    "cookie",
];

const DROP_RESPONSE: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "set-cookie"];

/// One try of one member: the request with the member's credential in place
/// of the client's, classified by how it ended. `path_and_query` is relative
/// to the `/v1` root (`/chat/completions?x=1`); `model` picks an Azure
/// member's deployment.
pub async fn send(
    upstream: &Upstream,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
    model: Option<&str>,
) -> Outcome {
    let url = upstream.url(path_and_query, model);
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !DROP_REQUEST.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    if let Some((name, value)) = &upstream.credential {
        out.insert(name.clone(), value.clone());
    }
    let started = Instant::now();
    let result = upstream.client.request(method, url).headers(out).body(body).send().await;
    metrics::histogram!("keygate_upstream_latency_seconds", "upstream" => upstream.name.clone())
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(response) if pool::is_refusal(response.status()) => Outcome::Refused(response),
        Ok(response) => Outcome::Answer(response),
        Err(error) => {
            // `is_connect`: nothing reached the member, so any request may go elsewhere.
            let sent = !error.is_connect();
            tracing::warn!(upstream = %upstream.name, %error, sent, "upstream failed");
            Outcome::Failed { timed_out: error.is_timeout(), sent }
        }
    }
}

/// The methods keygate forwards; anything else (TRACE, CONNECT, ...) is
/// answered as an unknown route and never reaches the upstream.
pub fn is_forwarded_method(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::POST | Method::DELETE | Method::PUT | Method::PATCH | Method::HEAD)
}

/// Keeps only the allowed models in a `GET /v1/models` answer. Lists are
/// small, so this one route is buffered; an answer that is not a model list
/// (an upstream error) passes unchanged.
pub async fn filter_model_list(response: Response, allowed: impl Fn(&str) -> bool) -> Response {
    const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_LIST_BYTES).await else {
        return ApiError::UpstreamUnreachable { upstream: "models list".into() }.into_response();
    };
    let filtered = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|mut list| {
        let data = list.get_mut("data")?.as_array_mut()?;
        data.retain(|m| m.get("id").and_then(|id| id.as_str()).is_some_and(&allowed));
        serde_json::to_vec(&list).ok()
    });
    let body = match filtered {
        Some(filtered) if parts.status.is_success() => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Bytes::from(filtered)
        }
        _ => bytes,
    };
    Response::from_parts(parts, Body::from(body))
}

/// The member's answer as the client's: streamed as it arrives, its hop and
/// cookie headers dropped, its request id kept apart.
pub fn stream_back(upstream: reqwest::Response) -> Response {
    let status = upstream.status();
    let mut headers = HeaderMap::with_capacity(upstream.headers().len() + 1);
    for (name, value) in upstream.headers() {
        if DROP_RESPONSE.contains(&name.as_str()) {
            continue;
        }
        if name == "x-request-id" {
            headers.insert(HeaderName::from_static("x-upstream-request-id"), value.clone());
        } else {
            headers.append(name.clone(), value.clone());
        }
    }
    // Bytes go to the client as they arrive; dropping this body (client gone)
    // drops the upstream response and with it the upstream connection.
    let mut response = Response::new(Body::from_stream(upstream.bytes_stream()));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(base: &str, kind: UpstreamKind) -> Upstream {
        Upstream {
            name: "u".into(),
            base: reqwest::Url::parse(base).unwrap(),
            credential: None,
            client: reqwest::Client::new(),
            kind,
        }
    }

    #[test]
    fn the_credential_header_is_built_once_and_refused_when_it_cannot_be_a_header() {
        let (name, value) = credential_header(&UpstreamKind::OpenAi, &Secret::new("sk-up")).unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("authorization", "Bearer sk-up"));
        assert!(value.is_sensitive());
        let azure = UpstreamKind::Azure { api_version: "v".into(), deployments: Default::default() };
        let (name, value) = credential_header(&azure, &Secret::new("az")).unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("api-key", "az"));
        assert!(credential_header(&UpstreamKind::OpenAi, &Secret::new("sk-up\nX-Injected: 1")).is_err());
    }

    #[test]
    fn upstream_urls_keep_the_base_path_and_the_query() {
        let openai = upstream("https://api.openai.com/v1", UpstreamKind::OpenAi);
        assert_eq!(openai.url("/chat/completions", None).as_str(), "https://api.openai.com/v1/chat/completions");
        assert_eq!(
            openai.url("/models?limit=2&x=%20", None).as_str(),
            "https://api.openai.com/v1/models?limit=2&x=%20"
        );
        let slash = upstream("http://127.0.0.1:9/v1/", UpstreamKind::OpenAi);
        assert_eq!(slash.url("/embeddings", None).as_str(), "http://127.0.0.1:9/v1/embeddings");

        let deployments = [("gpt-4o".to_owned(), "prod 4o".to_owned())].into_iter().collect();
        let azure = upstream(
            "https://x.openai.azure.com",
            UpstreamKind::Azure { api_version: "2024-10-21".into(), deployments },
        );
        assert_eq!(
            azure.url("/chat/completions?a=1", Some("gpt-4o")).as_str(),
            "https://x.openai.azure.com/openai/deployments/prod+4o/chat/completions?api-version=2024-10-21&a=1"
        );
        assert_eq!(
            azure.url("/models", None).as_str(),
            "https://x.openai.azure.com/openai/models?api-version=2024-10-21"
        );
    }
}
