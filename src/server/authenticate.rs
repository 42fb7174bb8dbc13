//! Authentication as route layers: the data plane's, keygate's own routes' and
//! the Administration API's. Each picks the scope its route needs and runs the
//! one decision (`auth::authenticate`) against the in-memory key index; a
//! success carries an `Authorized` to the handler and notes the key's use, a
//! failure counts against the client's failed-authentication throttle and is
//! rendered by the one renderer.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;

use crate::auth::{self, Denial, Plane};
use crate::dialect::{ApiError, Dialect};
use crate::policy::{admin_scope, data_plane_scope, Scope};
use crate::request::ClientIp;
use crate::route::{self, Route};
use crate::session::{self, Principal, Refusal, SessionToken};
use crate::state::AppState;
use crate::store::Touch;

/// The data plane: its route first (phase 1, which chooses the scope), then
/// the key (phase 2).
pub(super) async fn require_project_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if let Err(error) = route::canonicalise(&mut req) {
        return error.into_response();
    }
    let scope = match req.extensions().get::<Route>() {
        Some(route) => data_plane_scope(req.method(), &route.path),
        None => return ApiError::Internal.into_response(),
    };
    require(state, Plane::Data, scope, req, next).await
}

/// keygate's own routes under `/v1/keygate/` (matched exactly by the router,
/// never forwarded): any valid project key.
pub(super) async fn require_extension_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let scope = data_plane_scope(req.method(), req.uri().path());
    require(state, Plane::Data, scope, req, next).await
}

/// The Administration API: an admin key, or else a dashboard session (its
/// cookie, and on every change the session's CSRF token). Either way the
/// handler gets a `Principal` and the access rule of its role has passed.
pub(super) async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presents_key = req.headers().contains_key(http::header::AUTHORIZATION) || req.headers().contains_key("api-key");
    // With the dashboard off, its sessions open nothing (no page could sign them out).
    if !presents_key && state.dashboard {
        if let Some(token) = state.sessions.cookie(req.headers()) {
            return with_session(state, SessionToken::from_cookie(token), req, next).await;
        }
    }
    let scope = admin_scope(req.method(), req.uri().path());
    require(state, Plane::Admin, scope, req, next).await
}

async fn with_session(state: AppState, token: Option<SessionToken>, mut req: Request, next: Next) -> Response {
    let now = state.clock.now();
    let resolved = match token {
        None => None,
        Some(token) => match state.sessions.resolve(&*state.store, &state.index, &token, now).await {
            Ok(resolved) => resolved.map(|r| (token, r)),
            Err(error) => {
                tracing::warn!(%error, "cannot read a dashboard session");
                return ApiError::Internal.into_response();
            }
        },
    };
    let Some((token, resolved)) = resolved else { return ApiError::SessionEnded.into_response() };
    let changes = !matches!(*req.method(), http::Method::GET | http::Method::HEAD);
    if changes {
        let presented = req.headers().get(session::CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !token.csrf_matches(presented) {
            return ApiError::Forbidden {
                message: "This request changes something and carries no valid CSRF token: send the session's \
                          token in the x-csrf-token header (the dashboard does), or use an admin key."
                    .into(),
                code: "csrf_token_invalid",
            }
            .into_response();
        }
    }
    let mut principal = resolved.principal;
    if let Err(refusal) = principal.may(req.method(), req.uri().path()) {
        return refused(&principal, refusal).into_response();
    }
    principal.client_ip = req.extensions().get::<ClientIp>().map(|c| c.0.to_string());
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// A role's refusal, in words that say what to do.
fn refused(principal: &Principal, refusal: Refusal) -> ApiError {
    let role = principal.role.as_str();
    match refusal {
        Refusal::ReadOnly => ApiError::Forbidden {
            message: format!(
                "Your role in this organization is `{role}`: it can see everything and change nothing. Ask an owner to make this change."
            ),
            code: "insufficient_role",
        },
        Refusal::NotForMembers => ApiError::Forbidden {
            message: format!(
                "Your role in this organization is `{role}`: it reaches the keys and usage of your own projects only. Ask an owner for this."
            ),
            code: "insufficient_role",
        },
        Refusal::NoSuchProject(project) => crate::admin::project_not_found(&project),
    }
}

/// Phase 2: authenticates the request's key for `plane` and `scope` from the
/// key index (never the database), and on success hands the handler an
/// `Authorized` in the extensions.
async fn require(state: AppState, plane: Plane, scope: Scope, mut req: Request, next: Next) -> Response {
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
            // The Administration API's handlers take who acts; the data plane's, the key.
            match plane {
                Plane::Admin => {
                    req.extensions_mut().insert(Principal::admin_key(authorized));
                }
                Plane::Data => {
                    req.extensions_mut().insert(authorized);
                }
            }
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
