//! The web dashboard at `/ui`: a small single-page app (embedded in the
//! binary: `ui/`), its sign-in (an admin key, or single sign-on), sign-out and
//! session document. Every figure the pages show comes from the
//! Administration API, called with the session cookie; the server enforces
//! roles there (`session::Principal::may` and the handlers' project
//! filters), so the dashboard can show nothing the API would refuse.
//!
//! Owns: the `/ui` routes, the sign-in page, session cookies, the embedded
//! assets and the headers every page carries (a strict Content-Security-Policy).

mod assets;
mod sign_in;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use serde_json::json;

use crate::dialect::ApiError;
use crate::request::ClientIp;
use crate::session::{self, Resolved, SessionToken};
use crate::state::AppState;

/// What every `/ui` answer carries: no framing, no inline script, no
/// third-party anything; pages and session documents are never cached.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(shell))
        .route("/ui/", get(shell))
        .route("/ui/{*page}", get(shell))
        .route("/ui/assets/{file}", get(assets::serve))
        .route("/ui/sign-in", get(sign_in::page).post(sign_in::with_key))
        .route("/ui/sso/start", get(sign_in::sso_start))
        .route("/ui/sso/callback", get(sign_in::sso_callback))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/api/session", get(session_document))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .layer(axum::middleware::from_fn(page_headers))
}

async fn page_headers(req: Request, next: axum::middleware::Next) -> Response {
    let is_asset = req.uri().path().starts_with("/ui/assets/");
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: under it a browser sends `Origin: null` with the
    // sign-in form, which the origin check then refuses.
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The session a request's cookie names, if it is still open.
async fn current(state: &AppState, headers: &http::HeaderMap) -> Result<Option<(SessionToken, Resolved)>, ApiError> {
    let Some(token) = state.sessions.cookie(headers).and_then(SessionToken::from_cookie) else {
        return Ok(None);
    };
    let resolved = state.sessions.resolve(&*state.store, &state.index, &token, state.clock.now()).await?;
    Ok(resolved.map(|r| (token, r)))
}

/// The app's page for every `/ui` path; signed out, a redirect to sign-in
/// that comes back here.
async fn shell(State(state): State<AppState>, req: Request) -> Response {
    match current(&state, req.headers()).await {
        Ok(Some(_)) => assets::index(),
        Ok(None) => {
            let next = req.uri().path_and_query().map_or("/ui", |p| p.as_str());
            let target =
                format!("/ui/sign-in?next={}", form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>());
            see_other(&target)
        }
        Err(error) => error.into_response(),
    }
}

/// `GET /ui/api/session`: who is signed in, their role, and the CSRF token
/// the page sends with every change.
async fn session_document(State(state): State<AppState>, req: Request) -> Response {
    let (token, resolved) = match current(&state, req.headers()).await {
        Ok(Some(found)) => found,
        Ok(None) => return ApiError::SessionEnded.into_response(),
        Err(error) => return error.into_response(),
    };
    let principal = &resolved.principal;
    let (user, admin_key) = match &principal.actor {
        session::Actor::User(u) => (json!({"id": u.id, "name": u.name, "email": u.email}), json!(null)),
        session::Actor::Key(a) => (json!(null), json!({"id": a.key.id.api_id(), "name": a.key.name.as_ref()})),
    };
    let mut projects = Vec::new();
    for id in principal.projects.iter().flatten() {
        match state.store.get_project(id).await {
            Ok(Some(p)) => projects.push(json!({"id": p.id, "name": p.name})),
            Ok(None) => {}
            Err(error) => return ApiError::from(error).into_response(),
        }
    }
    let now = state.clock.now();
    axum::Json(json!({
        "object": "dashboard.session",
        "role": principal.role.as_str(),
        "user": user,
        "admin_key": admin_key,
        "projects": projects,
        "csrf_token": token.csrf(),
        "expires_at": resolved.record.expires_at,
        "idle_expires_at": state.sessions.idle_expiry(&resolved.record, now),
        "sso": state.sessions.sso.is_some(),
    }))
    .into_response()
}

/// `POST /ui/sign-out`: ends the session (with its CSRF token, so no other
/// site can sign a person out) and clears the cookie.
async fn sign_out(State(state): State<AppState>, req: Request) -> Response {
    let (token, resolved) = match current(&state, req.headers()).await {
        Ok(Some(found)) => found,
        Ok(None) => return signed_out(&state, req.headers()),
        Err(error) => return error.into_response(),
    };
    let presented = req.headers().get(session::CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !token.csrf_matches(presented) {
        return ApiError::Forbidden {
            message: "Signing out needs the session's CSRF token in the x-csrf-token header.".into(),
            code: "csrf_token_invalid",
        }
        .into_response();
    }
    if let Err(error) = state.store.delete_session(&token.hash()).await {
        return ApiError::from(error).into_response();
    }
    let mut principal = resolved.principal;
    principal.client_ip = req.extensions().get::<ClientIp>().map(|c| c.0.to_string());
    crate::admin::audit(&state, &principal, "logout.succeeded", None, json!({})).await;
    signed_out(&state, req.headers())
}

fn signed_out(state: &AppState, headers: &http::HeaderMap) -> Response {
    let mut response = see_other("/ui/sign-in");
    set_cookie(&mut response, &state.sessions.clear_cookie(headers));
    response
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// A path inside the dashboard to return to after sign-in; anything else
/// (another site, `//host`, a backslash trick) returns to `/ui`.
fn next_path(next: Option<&str>) -> String {
    let inside = |p: &str| {
        let path = p.split('?').next().unwrap_or_default();
        (path == "/ui" || path.starts_with("/ui/"))
            && !path.starts_with("/ui/sign-")
            // No way back out of /ui: dot segments, escapes of them, backslashes.
            && !path.contains('%')
            && !path.split('/').any(|segment| segment == "." || segment == "..")
            && !p.contains('\\')
            && !p.contains("//")
            && !p.chars().any(char::is_control)
    };
    match next {
        Some(p) if inside(p) => p.to_owned(),
        _ => "/ui".to_owned(),
    }
}

/// Text for HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_returns_only_to_the_dashboard() {
        assert_eq!(next_path(Some("/ui/keys?q=a")), "/ui/keys?q=a");
        assert_eq!(next_path(Some("/ui/keys?q=a%20b")), "/ui/keys?q=a%20b");
        assert_eq!(next_path(Some("/ui")), "/ui");
        for evil in [
            "https://evil.example/ui",
            "//evil.example",
            "/ui//evil",
            "/ui/\\evil",
            "/v1/models",
            "/ui/sign-in",
            "/uix",
        ] {
            assert_eq!(next_path(Some(evil)), "/ui", "{evil}");
        }
        assert_eq!(next_path(None), "/ui");
    }

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
