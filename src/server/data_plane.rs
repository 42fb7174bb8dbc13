//! The data plane: every request forwarded upstream (`/v1/*`, and Azure's
//! `/openai/*`), as its phases in the order they run:
//!
//! 1. route and canonicalise: `route::canonicalise` (Azure URLs: the front door)
//! 2. authenticate: `authenticate::require_project_key`, from the key index
//! 3. authorise the model: [`authorise_model`]
//! 4. admit: [`admit`], against the limits and budgets
//! 5. rewrite: [`rewrite`], the body the upstream gets
//! 6. forward: [`forward`], to a member of the pool the model routes to,
//!    failing over to another when one cannot serve
//! 7. tap and meter: [`make_ours`], then the usage tap as the answer streams
//!
//! The first two are route layers, shared with keygate's own routes and the
//! Administration API; [`data_plane`] runs the rest. Each phase is a function
//! from a typed input to a typed output; a refusal is an `ApiError` (a
//! `Denial` inside when it refuses the key), rendered once by `dialect`. No
//! phase waits on the database: keys come from the index, limits from memory
//! (or Redis when replicated), and usage leaves through the recorder.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::auth::{Authorized, Denial, KeyRef};
use crate::dialect::{ApiError, Dialect};
use crate::ids::RequestId;
use crate::limits::{Limiter, RateHeaders, Ticket};
use crate::proxy::{self, Attempt, Forwarded, Member, Pool, RequestMeta};
use crate::request::{read_body, ClientIp};
use crate::route::Route;
use crate::state::{AppState, Settings};
use crate::store::{DenialRecord, UsageKind};
use crate::time::{go_duration, Timestamp};
use crate::usage::{self, Metered};

/// Phases 3 to 7, for a request the route and authentication layers let
/// through. A forward that gets no answer is metered too, as its 502 or 504.
pub(super) async fn data_plane(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let settings = &*state.settings;
    let request = PlaneRequest::read(req, settings.max_body_bytes).await?;
    let model = authorise_model(&request, &settings.azure_deployments)?;
    let ticket = admit(&state.limiter, &request, &model, settings).await?;
    let rate_headers = ticket.headers.clone();
    let pool = state.upstreams.route(model.name());
    let outgoing = rewrite(&request, &model, settings.metering);
    let at = state.clock.now();
    let tokens =
        if pool.counts_tokens() { token_estimate(&request, model.name(), settings.default_max_tokens) } else { 0 };
    let started = Instant::now();
    let forwarded = forward(pool, &request, &outgoing, model.name(), tokens).await;
    let (member, response, attempts) = match forwarded {
        Forwarded::Served { member, response, attempts } => (member, response, attempts),
        Forwarded::Exhausted { last: Some((member, response)), attempts, .. } => {
            // The last member's own refusal (its 429 or 5xx) is the answer.
            (member, response, attempts)
        }
        Forwarded::Exhausted { last: None, attempts, timed_out } => {
            let error = unserved(pool, &attempts, timed_out);
            let failed_member = attempts.last().map_or(pool.name.as_str(), |a| a.member.as_str());
            let metered = usage_record(&request, &model, (failed_member, false), &outgoing, (ticket, at, started));
            report_failures(&state, &request, pool, &attempts, &error);
            state.meter.failed(metered, error.status_and_code().0);
            return Err(error);
        }
    };
    if response.status().is_client_error() || response.status().is_server_error() || !attempts.is_empty() {
        report_failures_of(&state, &request, pool, &attempts, member, response.status());
    }
    let azure_member = member.upstream.is_azure();
    let metered = usage_record(&request, &model, (member.name(), azure_member), &outgoing, (ticket, at, started));
    let answer = make_ours(settings, &request, &rate_headers, proxy::stream_back(response)).await;
    Ok(if settings.metering { state.meter.tap(answer, metered) } else { answer })
}

/// A data-plane request as the route layers hand it over (phases 1 and 2
/// done): its route, the authentication decision, its body read whole, and
/// what the body says. Every later phase reads it.
struct PlaneRequest {
    parts: Parts,
    route: Route,
    authorized: Authorized,
    body: Bytes,
    meta: RequestMeta,
}

impl PlaneRequest {
    async fn read(req: Request, max_body_bytes: usize) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let authorized = parts.extensions.remove::<Authorized>().ok_or(ApiError::Internal)?;
        let body = read_body(body, max_body_bytes).await?;
        // Any method's body may name a model (an empty one names none).
        let meta = RequestMeta::from_body(&parts.headers, &body)?;
        let route = parts.extensions.remove::<Route>().ok_or(ApiError::Internal)?;
        Ok(Self { parts, route, authorized, body, meta })
    }

    /// The canonical OpenAI path, `/v1/...`.
    fn path(&self) -> &str {
        &self.route.path
    }

    fn is_azure(&self) -> bool {
        self.route.dialect == Dialect::Azure
    }
}

/// The model a request is for, as limits, routing and metering see it.
struct Model<'r> {
    /// The model behind an Azure deployment, else the body's, else the one
    /// `/v1/models/{id}` names.
    name: Option<Cow<'r, str>>,
    /// `name` is a deployment's model, which the upstream must get in the body.
    deployed: bool,
}

impl Model<'_> {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

/// Phase 3: the model the request is for, which the key and its project must
/// both allow. An Azure URL names a deployment; on the Azure v1 surface the
/// body's model is a deployment name. Either way keygate works with the model
/// behind it.
fn authorise_model<'r>(request: &'r PlaneRequest, deployments: &BTreeMap<String, String>) -> Result<Model<'r>, Denial> {
    let authorized = &request.authorized;
    let deployed = match &request.route.deployment {
        Some(deployment) => Some(deployments.get(deployment).cloned().ok_or_else(|| {
            let serving = deployments.iter().filter(|(_, m)| *m == deployment).map(|(d, _)| d.clone()).collect();
            Denial::UnknownDeployment { key: KeyRef::of(&authorized.key), deployment: deployment.clone(), serving }
        })?),
        None if request.is_azure() => request.meta.model.as_deref().and_then(|m| deployments.get(m).cloned()),
        None => None,
    };
    let named_by_path = request.path().strip_prefix("/v1/models/");
    let model = Model {
        deployed: deployed.is_some(),
        name: deployed
            .map(Cow::Owned)
            .or_else(|| request.meta.model.as_deref().map(Cow::Borrowed))
            .or_else(|| named_by_path.map(Cow::Borrowed)),
    };
    if let Some(name) = model.name() {
        authorized.check_model(name)?;
    }
    // A body's model must not hide the path's (`DELETE /v1/models/{id}` with a body): both pass.
    if let Some(named) = named_by_path.filter(|named| Some(*named) != model.name()) {
        authorized.check_model(named)?;
    }
    Ok(model)
}

/// Phase 4: the key's and its project's limits and budgets, charged with the
/// request's token estimate. The ticket holds what was taken (and the
/// in-flight slots) until the answer ends.
async fn admit(
    limiter: &Limiter,
    request: &PlaneRequest,
    model: &Model<'_>,
    settings: &Settings,
) -> Result<Ticket, Denial> {
    let model = model.name();
    let tokens = if limiter.wants_tokens(&request.authorized, model) {
        token_estimate(request, model, settings.default_max_tokens)
    } else {
        0
    };
    limiter.admit(&request.authorized, model, tokens).await.map_err(|exceeded| Denial::Limited {
        key: KeyRef::of(&request.authorized.key),
        model: model.map(str::to_owned),
        organization: settings.organization_id.clone(),
        exceeded,
    })
}

/// The tokens a request is expected to use, for token limits (a key's, a
/// project's, a pool member's): completions get the completion allowance,
/// embeddings their prompt, everything else (lists, files) none.
fn token_estimate(request: &PlaneRequest, model: Option<&str>, default_max_tokens: u64) -> u64 {
    match UsageKind::of_path(request.path()) {
        UsageKind::Other => 0,
        UsageKind::Embeddings => usage::estimate_request_tokens(model, &request.body, 0),
        UsageKind::Completions => {
            usage::estimate_request_tokens(model, &request.body, request.meta.max_tokens.unwrap_or(default_max_tokens))
        }
    }
}

/// The body the upstream gets.
struct Outgoing {
    body: Bytes,
    /// keygate asked for the stream's usage chunk, which the tap must remove.
    strip_injected_usage: bool,
}

/// Phase 5: the body the upstream gets. To meter a stream, keygate asks for
/// its usage chunk (the tap removes it again); the model behind a deployment
/// replaces the name the client sent, also when the body named none (Azure
/// SDKs put the deployment in the URL only).
fn rewrite(request: &PlaneRequest, model: &Model<'_>, metering: bool) -> Outgoing {
    let (body, strip_injected_usage) = match (request.meta.stream && metering)
        .then(|| usage::inject_include_usage(request.path(), &request.body))
        .flatten()
    {
        Some(injected) => (injected, true),
        None => (request.body.clone(), false),
    };
    let body = match model.name() {
        Some(real) if model.deployed && request.meta.model.as_deref() != Some(real) => {
            usage::replace_model(&body, real).unwrap_or(body)
        }
        _ => body,
    };
    Outgoing { body, strip_injected_usage }
}

/// What metering knows before the answer: the request, the member that
/// served it (or failed last), and the admission to settle once the real
/// usage is known.
fn usage_record(
    request: &PlaneRequest,
    model: &Model<'_>,
    (member, azure_member): (&str, bool),
    outgoing: &Outgoing,
    (ticket, at, started): (Ticket, Timestamp, Instant),
) -> Metered {
    let extensions = &request.parts.extensions;
    Metered {
        request_id: extensions.get::<RequestId>().map(|id| id.as_str().to_owned()).unwrap_or_default(),
        at,
        model: model.name().map(str::to_owned),
        route: request.path().to_owned(),
        upstream: member.to_owned(),
        client_ip: extensions.get::<ClientIp>().map(|c| c.0),
        started,
        request_body: outgoing.body.clone(),
        strip_injected_usage: outgoing.strip_injected_usage,
        strip_azure_fields: azure_member && !request.is_azure(),
        authorized: request.authorized.clone(),
        ticket: Some(ticket),
    }
}

/// Phase 6: the request, with a member's credential in place of the client's
/// key, to the members of `pool` in turn until one serves it; the answer is
/// not read here, so a stream is never tried twice once it has begun.
async fn forward<'p>(
    pool: &'p Pool,
    request: &PlaneRequest,
    outgoing: &Outgoing,
    model: Option<&str>,
    tokens: u64,
) -> Forwarded<'p> {
    let relative = request.route.relative();
    let method = &request.parts.method;
    let policy = pool.retry_policy(method, &relative);
    pool.forward(model, tokens, policy, |member| {
        proxy::send(&member.upstream, method.clone(), &relative, &request.parts.headers, outgoing.body.clone(), model)
    })
    .await
}

/// The error for a request no member served: the member's own words when
/// the pool has one (it is unreachable, or did not answer in time), else
/// that the pool could not serve.
fn unserved(pool: &Pool, attempts: &[Attempt], timed_out: bool) -> ApiError {
    let last = attempts.last().map_or_else(|| pool.name.clone(), |a| a.member.clone());
    let rejected = attempts.iter().any(|a| a.key_refused);
    match (pool.members().len(), timed_out, rejected) {
        (1, true, false) => ApiError::UpstreamTimeout { upstream: last },
        (1, false, false) if !attempts.is_empty() => ApiError::UpstreamUnreachable { upstream: last },
        _ => ApiError::UpstreamUnavailable { upstream: pool.name.clone() },
    }
}

/// A member whose provider key was refused raises an alert (once per
/// take-out), and a request that met failures leaves their record for
/// `keygate explain`: which members it went to and what each answered.
fn report_failures(state: &AppState, request: &PlaneRequest, pool: &Pool, attempts: &[Attempt], error: &ApiError) {
    let (status, code) = error.status_and_code();
    let answer = format!("keygate answered {status} ({}).", code.unwrap_or("error"));
    record_attempts(state, request, pool, attempts, status, "upstream_unavailable", &answer);
}

fn report_failures_of(
    state: &AppState,
    request: &PlaneRequest,
    pool: &Pool,
    attempts: &[Attempt],
    member: &Member,
    status: http::StatusCode,
) {
    let answer = format!("`{}` answered HTTP {}, which was passed on.", member.name(), status.as_u16());
    let reason = if status.is_success() || status.is_redirection() { "upstream_failover" } else { "upstream_error" };
    record_attempts(state, request, pool, attempts, status.as_u16(), reason, &answer);
}

fn record_attempts(
    state: &AppState,
    request: &PlaneRequest,
    pool: &Pool,
    attempts: &[Attempt],
    status: u16,
    reason: &str,
    answer: &str,
) {
    let key = &request.authorized.key;
    for attempt in attempts.iter().filter(|a| a.credential_rejected) {
        state.recorder.alert(state.alerts.queued(usage::upstream_credential_alert(
            &pool.name,
            &attempt.member,
            &attempt.outcome,
            key,
            state.clock.now(),
        )));
    }
    // A client's own refusal (400, 404...) at the first member is its own
    // business; what the members did is recorded when any of them failed.
    if attempts.is_empty() && status < 500 && status != 429 {
        return;
    }
    let tried: Vec<String> = attempts.iter().map(|a| format!("`{}`: {}", a.member, a.outcome)).collect();
    let tried = if tried.is_empty() {
        // Nobody was tried: say why each member was passed over.
        let states: Vec<String> = pool
            .status()
            .iter()
            .map(|m| match &m.last_error {
                Some(error) => format!("`{}`: {} (last: {error})", m.name, m.state),
                None => format!("`{}`: {}", m.name, m.state),
            })
            .collect();
        format!(
            "No member was tried: every one was out of rotation, over its own limits, or serves other models ({}). ",
            states.join("; ")
        )
    } else {
        format!("Members tried: {}. ", tried.join("; "))
    };
    let explanation = format!("The request went to upstream pool `{}`. {tried}{answer}", pool.name);
    let extensions = &request.parts.extensions;
    state.recorder.denial(DenialRecord {
        request_id: extensions.get::<RequestId>().map(|id| id.as_str().to_owned()).unwrap_or_default(),
        at: state.clock.now(),
        reason: reason.to_owned(),
        explanation,
        key_id: Some(key.id),
        project_id: key.project_id().map(str::to_owned),
        status,
        method: request.parts.method.to_string(),
        path: request.path().to_owned(),
        client_ip: extensions.get::<ClientIp>().map(|c| c.0.to_string()),
    });
}

/// Phase 7, before the usage tap: the upstream's answer made the client's. A
/// key restricted to some models sees only those in the model list; the
/// organization is keygate's, never the upstream account's; and keygate's
/// own `x-ratelimit-*` values replace the upstream's.
async fn make_ours(
    settings: &Settings,
    request: &PlaneRequest,
    rate_headers: &RateHeaders,
    mut response: Response,
) -> Response {
    let authorized = &request.authorized;
    if request.path() == "/v1/models" && request.parts.method == Method::GET && authorized.restricts_models() {
        response = proxy::filter_model_list(response, |id| authorized.allows_model(id)).await;
    }
    if let (Some(org), false) = (&settings.organization_header, request.is_azure()) {
        response.headers_mut().insert("openai-organization", org.clone());
    }
    rate_limit_headers(rate_headers, response.headers_mut());
    response
}

/// keygate's own `x-ratelimit-*` values replace the upstream's (which describe
/// keygate's upstream account, not this key).
fn rate_limit_headers(values: &RateHeaders, headers: &mut HeaderMap) {
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
        match HeaderValue::try_from(go_duration(taken.reset_us)) {
            Ok(reset) => headers.insert(reset_name, reset),
            Err(_) => headers.remove(reset_name),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Body;
    use http::header::CONTENT_TYPE;
    use serde_json::Value;

    use super::*;
    use crate::auth::test_util::{project, record, NOW};
    use crate::auth::KeyIndex;
    use crate::clock::ManualClock;
    use crate::config::{MemberConfig, UpstreamConfig, UpstreamKind, UpstreamTarget};
    use crate::limits::{Budgets, LocalBackend, Taken};
    use crate::policy::RateLimits;
    use crate::proxy::Upstreams;
    use crate::store::KeyKind;

    const AZURE_CHAT: &str = "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21";

    /// A project key allowed `models` (all when `None`), under `limits`.
    fn authorized(models: Option<&[&str]>, limits: RateLimits) -> Authorized {
        let (mut key, _) = record(KeyKind::Project);
        key.access.models = models.map(|m| m.iter().map(|s| (*s).to_owned()).collect());
        key.limits = limits;
        let index = KeyIndex::new(vec![key.clone()], vec![project()]);
        Authorized { key: index.by_id(&key.id).unwrap(), project: index.project("proj_1"), expires_at: None }
    }

    fn any_model() -> Authorized {
        authorized(None, RateLimits::default())
    }

    /// A request as the route layers and `PlaneRequest::read` leave it.
    fn request(method: Method, uri: &str, body: &str, authorized: Authorized) -> PlaneRequest {
        let route = match uri.strip_prefix("/openai/") {
            Some(_) => crate::route::parse_azure(&uri.parse().unwrap(), &["2024-10-21".to_owned()]).unwrap(),
            None => Route::openai(&uri.parse().unwrap()).unwrap(),
        };
        let req = http::Request::builder().method(method).uri(uri).header(CONTENT_TYPE, "application/json");
        let (parts, ()) = req.body(()).unwrap().into_parts();
        let body = Bytes::from(body.to_owned());
        let meta = RequestMeta::from_body(&parts.headers, &body).unwrap();
        PlaneRequest { parts, route, authorized, body, meta }
    }

    fn deployments() -> BTreeMap<String, String> {
        [("prod-4o".to_owned(), "gpt-4o".to_owned())].into()
    }

    fn settings() -> Settings {
        Settings {
            max_body_bytes: 1 << 20,
            request_body_timeout: Duration::from_secs(5),
            organization_id: "org-test".into(),
            organization_header: Some(HeaderValue::from_static("org-test")),
            default_project_id: "proj_1".into(),
            trusted_proxies: Vec::new(),
            error_hints: false,
            default_max_tokens: 16,
            metering: true,
            azure_deployments: deployments(),
            azure_api_versions: vec!["2024-10-21".into()],
            azure_region: "swedencentral".into(),
            config_source: Default::default(),
        }
    }

    fn limiter() -> Limiter {
        let clock = Arc::new(ManualClock::new(NOW));
        Limiter::new(Arc::new(LocalBackend::default()), Arc::new(Budgets::default()), clock, None)
    }

    #[tokio::test]
    async fn reading_takes_the_layers_decisions_and_what_the_body_says() {
        let body = r#"{"model":"gpt-4o","stream":true,"max_tokens":7}"#;
        let mut req = http::Request::builder()
            .method(Method::POST)
            .uri("/v1/chat/completions")
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let route = Route::openai(req.uri()).unwrap();
        req.extensions_mut().insert(route.clone());
        req.extensions_mut().insert(any_model());
        let read = PlaneRequest::read(req, 1024).await.unwrap();
        assert_eq!(read.route, route);
        assert_eq!(
            (read.meta.model.as_deref(), read.meta.stream, read.meta.max_tokens),
            (Some("gpt-4o"), true, Some(7))
        );
        assert_eq!(read.body, body.as_bytes());

        // Without the authentication layer's decision nothing is served.
        let bare = http::Request::builder().uri("/v1/models").body(Body::empty()).unwrap();
        assert!(matches!(PlaneRequest::read(bare, 1024).await, Err(ApiError::Internal)));
        let mut large = http::Request::builder().uri("/v1/files").body(Body::from("x".repeat(2048))).unwrap();
        large.extensions_mut().insert(any_model());
        assert!(matches!(PlaneRequest::read(large, 1024).await, Err(ApiError::BodyTooLarge { limit: 1024 })));
    }

    #[test]
    fn the_model_is_the_deployments_else_the_bodys_else_the_paths_and_must_be_allowed() {
        let allowed = || authorized(Some(&["gpt-4o*"]), RateLimits::default());
        let body = request(Method::POST, "/v1/chat/completions", r#"{"model":"gpt-4o-mini"}"#, allowed());
        let model = authorise_model(&body, &deployments()).unwrap();
        assert_eq!((model.name(), model.deployed), (Some("gpt-4o-mini"), false));
        let azure = request(Method::POST, AZURE_CHAT, r#"{"messages":[]}"#, allowed());
        let model = authorise_model(&azure, &deployments()).unwrap();
        assert_eq!((model.name(), model.deployed), (Some("gpt-4o"), true));
        let path = request(Method::GET, "/v1/models/gpt-4o", "", allowed());
        assert_eq!(authorise_model(&path, &deployments()).unwrap().name(), Some("gpt-4o"));

        let other = request(Method::POST, "/v1/chat/completions", r#"{"model":"o1"}"#, allowed());
        assert!(matches!(authorise_model(&other, &deployments()), Err(Denial::ModelNotAllowed { .. })));
        // A body's allowed model does not let the path's through.
        let hidden = request(Method::DELETE, "/v1/models/o1", r#"{"model":"gpt-4o"}"#, allowed());
        match authorise_model(&hidden, &deployments()) {
            Err(Denial::ModelNotAllowed { model, .. }) => assert_eq!(model, "o1"),
            other => panic!("{:?}", other.map(|m| m.name().map(str::to_owned))),
        }
        let unknown = request(Method::POST, &AZURE_CHAT.replace("prod-4o", "nope"), "{}", allowed());
        match authorise_model(&unknown, &deployments()) {
            Err(Denial::UnknownDeployment { deployment, .. }) => assert_eq!(deployment, "nope"),
            other => panic!("{:?}", other.map(|m| m.name().map(str::to_owned))),
        }
    }

    #[tokio::test]
    async fn admission_takes_from_the_keys_limits_and_refuses_past_them() {
        let limiter = limiter();
        let one_a_minute = RateLimits { max_requests_per_1_minute: Some(1), ..RateLimits::default() };
        let chat =
            request(Method::POST, "/v1/chat/completions", r#"{"model":"gpt-4o"}"#, authorized(None, one_a_minute));
        let model = authorise_model(&chat, &deployments()).unwrap();
        let ticket = admit(&limiter, &chat, &model, &settings()).await.unwrap();
        assert_eq!(ticket.headers.requests.map(|(limit, taken)| (limit, taken.remaining)), Some((1, 0)));
        match admit(&limiter, &chat, &model, &settings()).await {
            Err(Denial::Limited { model, organization, .. }) => {
                assert_eq!((model.as_deref(), organization.as_str()), (Some("gpt-4o"), "org-test"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_model_calls_are_estimated_and_only_under_a_token_limit() {
        let limiter = limiter();
        let tpm = || authorized(None, RateLimits { max_tokens_per_1_minute: Some(10_000), ..RateLimits::default() });
        let messages = r#""messages":[{"role":"user","content":"hi"}]"#;
        let asked =
            request(Method::POST, "/v1/chat/completions", &format!(r#"{{{messages},"max_tokens":100}}"#), tpm());
        let defaulted = request(Method::POST, "/v1/chat/completions", &format!("{{{messages}}}"), tpm());
        let asked = token_estimate(&asked, Some("gpt-4o"), 16);
        let defaulted = token_estimate(&defaulted, Some("gpt-4o"), 16);
        assert!(defaulted > 16 && asked == defaulted - 16 + 100, "{defaulted} {asked}");
        let files = request(Method::GET, "/v1/files", "", tpm());
        assert_eq!(token_estimate(&files, None, 16), 0);
        // Admission estimates only for a key or project with a token limit.
        assert!(limiter.wants_tokens(&tpm(), Some("gpt-4o")));
        assert!(!limiter.wants_tokens(&any_model(), Some("gpt-4o")));
    }

    #[test]
    fn the_upstream_gets_the_usage_chunk_asked_for_and_the_deployments_model() {
        let stream = request(Method::POST, "/v1/chat/completions", r#"{"model":"gpt-4o","stream":true}"#, any_model());
        let model = authorise_model(&stream, &deployments()).unwrap();
        let metered = rewrite(&stream, &model, true);
        assert!(metered.strip_injected_usage);
        let sent: Value = serde_json::from_slice(&metered.body).unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], true);
        let unmetered = rewrite(&stream, &model, false);
        assert!(!unmetered.strip_injected_usage);
        assert_eq!(unmetered.body, stream.body);

        let azure = request(Method::POST, AZURE_CHAT, r#"{"messages":[]}"#, any_model());
        let model = authorise_model(&azure, &deployments()).unwrap();
        let sent: Value = serde_json::from_slice(&rewrite(&azure, &model, true).body).unwrap();
        assert_eq!(sent["model"], "gpt-4o");
    }

    #[tokio::test]
    async fn an_upstream_that_cannot_be_reached_is_named_in_the_error() {
        let member = MemberConfig {
            name: "down".into(),
            // Port 1 on loopback: refused at once, nothing leaves the machine.
            target: UpstreamTarget::Url("http://127.0.0.1:1/v1".into()),
            credential: None,
            kind: UpstreamKind::OpenAi,
            models: Vec::new(),
            weight: 1,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(2),
            max_requests_per_1_minute: None,
            max_tokens_per_1_minute: None,
        };
        let single = UpstreamConfig {
            name: "down".into(),
            models: Vec::new(),
            members: vec![member.clone()],
            retries: 0,
            retry_deadline: Duration::from_secs(5),
            failure_threshold: 3,
            cooldown: Duration::from_secs(30),
            probe_interval: None,
            defaulted_to_mock: false,
        };
        let models = request(Method::GET, "/v1/models", "", any_model());
        let outgoing = Outgoing { body: Bytes::new(), strip_injected_usage: false };
        let upstreams = Upstreams::build(std::slice::from_ref(&single), None).unwrap();
        let pool = upstreams.route(None);
        match forward(pool, &models, &outgoing, None, 0).await {
            Forwarded::Exhausted { last: None, attempts, timed_out: false } => {
                assert_eq!(attempts.len(), 1);
                assert!(
                    matches!(unserved(pool, &attempts, false), ApiError::UpstreamUnreachable { upstream } if upstream == "down")
                );
            }
            _ => panic!("served by a closed port"),
        }
        // A pool of two: both tried (nothing was sent, so any request may go on), then 503.
        let second = MemberConfig { name: "down-too".into(), ..member };
        let pool_of_two = UpstreamConfig { members: vec![single.members[0].clone(), second], retries: 1, ..single };
        let upstreams = Upstreams::build(&[pool_of_two], None).unwrap();
        let pool = upstreams.route(None);
        let chat = request(Method::POST, "/v1/files", "{}", any_model());
        match forward(pool, &chat, &outgoing, None, 0).await {
            Forwarded::Exhausted { last: None, attempts, .. } => {
                let members: Vec<&str> = attempts.iter().map(|a| a.member.as_str()).collect();
                assert_eq!(members.len(), 2, "{attempts:?}");
                assert!(members.contains(&"down") && members.contains(&"down-too"));
                assert!(matches!(unserved(pool, &attempts, false), ApiError::UpstreamUnavailable { .. }));
            }
            _ => panic!("served by a closed port"),
        }
    }

    #[tokio::test]
    async fn the_answer_carries_keygates_organization_and_limits_and_only_allowed_models() {
        let models = request(Method::GET, "/v1/models", "", authorized(Some(&["gpt-4o*"]), RateLimits::default()));
        let upstream = http::Response::builder()
            .header("openai-organization", "org-upstream")
            .header("x-ratelimit-limit-requests", "10000")
            .header("x-ratelimit-limit-tokens", "30000000")
            .body(Body::from(r#"{"object":"list","data":[{"id":"gpt-4o"},{"id":"o1"}]}"#))
            .unwrap();
        let ours = RateHeaders { requests: Some((60, Taken { remaining: 59, reset_us: 1_000_000 })), tokens: None };
        let answer = make_ours(&settings(), &models, &ours, upstream).await;
        let header = |name: &str| answer.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(header("openai-organization").as_deref(), Some("org-test"));
        assert_eq!(header("x-ratelimit-limit-requests").as_deref(), Some("60"));
        assert_eq!(header("x-ratelimit-remaining-requests").as_deref(), Some("59"));
        assert_eq!(header("x-ratelimit-reset-requests").as_deref(), Some("1s"));
        assert_eq!(header("x-ratelimit-limit-tokens"), None);
        let listed: Value =
            serde_json::from_slice(&axum::body::to_bytes(answer.into_body(), 1 << 20).await.unwrap()).unwrap();
        assert_eq!(listed["data"], serde_json::json!([{"id": "gpt-4o"}]));
    }
}
