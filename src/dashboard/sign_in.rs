//! Signing in: the page, with an admin key, and through single sign-on.
//! Failures count against the same per-address throttle as failed keys.

use axum::extract::{RawQuery, Request, State};
use axum::response::{Html, IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::{current, escape, next_path, see_other, set_cookie};
use crate::auth::{self, Plane};
use crate::request::ClientIp;
use crate::session::oidc::{login_hash, LOGIN_TTL_SECONDS};
use crate::session::{self, Principal, Role};
use crate::state::AppState;
use crate::store::{AuditEvent, SessionHolder};

const TOO_MANY: &str = "Too many sign-in attempts from your address. Wait a minute and try again.";

/// The cookie that ties a single sign-on in progress to the browser that
/// began it. `Lax`: it must come back on the provider's redirect.
const SSO_COOKIE: &str = "keygate_sso";

#[derive(Deserialize, Default)]
struct PageQuery {
    next: Option<String>,
}

/// `GET /ui/sign-in`.
pub async fn page(State(state): State<AppState>, RawQuery(raw): RawQuery, req: Request) -> Response {
    let query: PageQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let next = next_path(query.next.as_deref());
    if let Ok(Some(_)) = current(&state, req.headers()).await {
        return see_other(&next);
    }
    render(&state, StatusCode::OK, &next, None)
}

/// The sign-in page, with an error when one is given.
fn render(state: &AppState, status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let next_html = escape(next);
    let next_url: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
    let sso = if state.sessions.sso.is_some() {
        format!(
            r#"<p class="or">or</p><a class="button primary" id="sign-in-sso" href="/ui/sso/start?next={next_url}">Sign in with single sign-on</a>"#
        )
    } else {
        String::new()
    };
    let error = error
        .map(|e| format!(r#"<p id="sign-in-error" class="alert" role="alert">{}</p>"#, escape(e)))
        .unwrap_or_default();
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · keygate</title>
<link rel="stylesheet" href="/ui/assets/app.css">
</head>
<body class="sign-in">
<main id="main" class="sign-in-card">
<h1>keygate</h1>
<p>Sign in to the dashboard.</p>
{error}
<form id="sign-in-key" method="post" action="/ui/sign-in">
<label for="key">Admin key</label>
<input id="key" name="key" type="password" autocomplete="off" spellcheck="false" required placeholder="sk-admin-...">
<input type="hidden" name="next" value="{next_html}">
<button id="sign-in-submit" class="primary" type="submit">Sign in with an admin key</button>
</form>
{sso}
</main>
</body>
</html>
"#
    );
    (status, Html(html)).into_response()
}

#[derive(Deserialize)]
struct KeyForm {
    key: String,
    next: Option<String>,
}

/// `POST /ui/sign-in`: an admin key opens a session as its owner.
pub async fn with_key(State(state): State<AppState>, req: Request) -> Response {
    let client = req.extensions().get::<ClientIp>().map(|c| c.0);
    let headers = req.headers().clone();
    if !same_origin(&headers) {
        return render(&state, StatusCode::FORBIDDEN, "/ui", Some("This form was sent from another site."));
    }
    let body = match axum::body::to_bytes(req.into_body(), 16 * 1024).await {
        Ok(body) => body,
        Err(_) => return render(&state, StatusCode::PAYLOAD_TOO_LARGE, "/ui", Some("The form is too large.")),
    };
    let Ok(form) = serde_urlencoded::from_bytes::<KeyForm>(&body) else {
        return render(&state, StatusCode::BAD_REQUEST, "/ui", Some("Enter an admin key."));
    };
    let next = next_path(form.next.as_deref());
    let now = state.clock.now();
    let mut presented = http::HeaderMap::new();
    match http::HeaderValue::from_str(&format!("Bearer {}", form.key.trim())) {
        Ok(value) => {
            presented.insert(http::header::AUTHORIZATION, value);
        }
        Err(_) => return failed(&state, client, &next, None).await,
    }
    let admission = auth::Admission {
        plane: Plane::Admin,
        scope: crate::policy::admin_scope(&http::Method::GET, "/v1/organization/projects"),
        client_ip: client,
        organization_id: &state.settings.organization_id,
        azure: false,
        key_in_query: false,
        now,
    };
    let authorized = match auth::authenticate(&state.index, &presented, &admission) {
        Ok(authorized) => authorized,
        Err(denial) => return failed(&state, client, &next, Some(denial)).await,
    };
    let user_agent = user_agent(&headers);
    let holder = SessionHolder::AdminKey(authorized.key.id);
    let token = match state.sessions.open(&*state.store, holder, now, client.map(|ip| ip.to_string()), user_agent).await
    {
        Ok(token) => token,
        Err(error) => return crate::dialect::ApiError::from(error).into_response(),
    };
    let mut principal = Principal::admin_key(authorized);
    principal.client_ip = client.map(|ip| ip.to_string());
    crate::admin::audit(&state, &principal, "login.succeeded", None, json!({"method": "admin_key"})).await;
    let mut response = see_other(&next);
    set_cookie(&mut response, &state.sessions.set_cookie(&headers, &token));
    response
}

/// A refused sign-in: one failure for the address's throttle, and the same
/// words whatever the reason, so the page tells nobody which keys exist.
async fn failed(
    state: &AppState,
    client: Option<std::net::IpAddr>,
    next: &str,
    denial: Option<auth::Denial>,
) -> Response {
    let throttled = match client {
        Some(ip) => state.limiter.failed_auth(ip).await.is_some(),
        None => false,
    };
    if let (Some(denial), false) = (&denial, throttled) {
        if let Some(key) = denial.key() {
            state.recorder.failed_login(crate::jobs::FailedLogin {
                key_id: key.id,
                at: state.clock.now(),
                client,
                reason: denial.kind(),
            });
        }
    }
    if throttled {
        return render(state, StatusCode::TOO_MANY_REQUESTS, next, Some(TOO_MANY));
    }
    render(state, StatusCode::UNAUTHORIZED, next, Some("That is not a valid admin key for this gateway."))
}

/// `GET /ui/sso/start`: to the identity provider, with PKCE, a state and a nonce.
pub async fn sso_start(State(state): State<AppState>, RawQuery(raw): RawQuery, req: Request) -> Response {
    let headers = req.headers();
    let query: PageQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let next = next_path(query.next.as_deref());
    let Some(sso) = &state.sessions.sso else {
        return render(&state, StatusCode::NOT_FOUND, &next, Some("Single sign-on is not configured on this gateway."));
    };
    // Each start stores a sign-in in progress: starts count against the
    // address's sign-in throttle, so a loop of them cannot fill the database.
    if let Some(ip) = req.extensions().get::<ClientIp>() {
        if state.limiter.failed_auth(ip.0).await.is_some() {
            return render(&state, StatusCode::TOO_MANY_REQUESTS, &next, Some(TOO_MANY));
        }
    }
    let started = match sso.start(&next, state.clock.now()).await {
        Ok(started) => started,
        Err(error) => {
            return render(&state, StatusCode::BAD_GATEWAY, &next, Some(&format!("Cannot sign in: {error}.")))
        }
    };
    if let Err(error) = state.store.insert_sso_login(&started.login).await {
        return crate::dialect::ApiError::from(error).into_response();
    }
    let mut response = see_other(&started.authorize_url);
    let cookie = session::cookie(
        SSO_COOKIE,
        &started.login_id,
        "/ui/sso",
        "Lax",
        state.sessions.is_secure(headers),
        LOGIN_TTL_SECONDS,
    );
    set_cookie(&mut response, &cookie);
    response
}

#[derive(Deserialize, Default)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /ui/sso/callback`: the provider's answer. The person is the keygate
/// user whose email the provider verified.
pub async fn sso_callback(State(state): State<AppState>, RawQuery(raw): RawQuery, req: Request) -> Response {
    let client = req.extensions().get::<ClientIp>().map(|c| c.0);
    let query: Callback = serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let now = state.clock.now();
    let Some(sso) = &state.sessions.sso else {
        return render(&state, StatusCode::NOT_FOUND, "/ui", Some("Single sign-on is not configured on this gateway."));
    };
    let login = match session::cookie_value(req.headers(), SSO_COOKIE) {
        Some(id) => state.store.take_sso_login(&login_hash(id)).await,
        None => Ok(None),
    };
    let login = match login {
        Ok(Some(login)) if login.created_at + LOGIN_TTL_SECONDS > now => login,
        Ok(_) => {
            return sso_failed(&state, client, "/ui", "This sign-in expired or was already used. Start again.").await
        }
        Err(error) => return crate::dialect::ApiError::from(error).into_response(),
    };
    let next = login.next_path.clone();
    let state_ok: bool = query.state.as_deref().unwrap_or_default().as_bytes().ct_eq(login.state.as_bytes()).into();
    if !state_ok {
        return sso_failed(
            &state,
            client,
            &next,
            "The identity provider's answer does not belong to this sign-in. Start again.",
        )
        .await;
    }
    if let Some(error) = &query.error {
        let shown: String = error.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
        return sso_failed(&state, client, &next, &format!("The identity provider refused the sign-in ({shown})."))
            .await;
    }
    let Some(code) = &query.code else {
        return sso_failed(&state, client, &next, "The identity provider sent no authorization code.").await;
    };
    let identity = match sso.finish(code, &login, now).await {
        Ok(identity) => identity,
        Err(error) => return sso_failed(&state, client, &next, &format!("Cannot sign in: {error}.")).await,
    };
    let users = match state.store.users_by_email(&identity.email).await {
        Ok(users) => users,
        Err(error) => return crate::dialect::ApiError::from(error).into_response(),
    };
    let user = match users.as_slice() {
        [user] if Role::parse(&user.role).is_some() => user.clone(),
        [_, _, ..] => {
            return sso_failed(
                &state,
                client,
                &next,
                &format!(
                    "Two users of this gateway have the email {} in different case; an owner must remove one.",
                    identity.email
                ),
            )
            .await
        }
        _ => {
            audit_failed(&state, client, json!({"method": "sso", "email": identity.email, "reason": "no_user"})).await;
            return sso_failed(
                &state,
                client,
                &next,
                &format!(
                    "{} is not a user of this gateway. Ask an owner to add you (keygate users, or the Users page).",
                    identity.email
                ),
            )
            .await;
        }
    };
    let holder = SessionHolder::User(user.id.clone());
    let token = match state
        .sessions
        .open(&*state.store, holder, now, client.map(|ip| ip.to_string()), user_agent(req.headers()))
        .await
    {
        Ok(token) => token,
        Err(error) => return crate::dialect::ApiError::from(error).into_response(),
    };
    let principal = Principal {
        role: Role::parse(&user.role).unwrap_or(Role::Member),
        actor: session::Actor::User(user),
        projects: None,
        client_ip: client.map(|ip| ip.to_string()),
    };
    crate::admin::audit(&state, &principal, "login.succeeded", None, json!({"method": "sso"})).await;
    // The provider's redirect makes this a cross-site request, and a
    // redirect from here would carry that along: the browser would not send
    // the new SameSite=Strict cookie. A page of our own that moves on
    // starts a same-site navigation.
    let target = escape(&next);
    let html = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={target}"><title>Signed in · keygate</title><link rel="stylesheet" href="/ui/assets/app.css"></head><body class="sign-in"><main id="main" class="sign-in-card"><p>Signed in. <a href="{target}">Continue</a></p></main></body></html>"#
    );
    let mut response = Html(html).into_response();
    set_cookie(&mut response, &state.sessions.set_cookie(req.headers(), &token));
    let secure = state.sessions.is_secure(req.headers());
    set_cookie(&mut response, &session::cookie(SSO_COOKIE, "", "/ui/sso", "Lax", secure, 0));
    response
}

async fn sso_failed(state: &AppState, client: Option<std::net::IpAddr>, next: &str, message: &str) -> Response {
    let throttled = match client {
        Some(ip) => state.limiter.failed_auth(ip).await.is_some(),
        None => false,
    };
    if throttled {
        return render(state, StatusCode::TOO_MANY_REQUESTS, next, Some(TOO_MANY));
    }
    render(state, StatusCode::FORBIDDEN, next, Some(message))
}

async fn audit_failed(state: &AppState, client: Option<std::net::IpAddr>, details: serde_json::Value) {
    let event = AuditEvent {
        id: crate::ids::audit_log_id(),
        kind: "login.failed",
        effective_at: state.clock.now(),
        project_id: None,
        actor_key_id: None,
        actor_user_id: None,
        actor_ip: client.map(|ip| ip.to_string()),
        details,
    };
    crate::admin::record_audit(state, event).await;
}

fn user_agent(headers: &http::HeaderMap) -> Option<String> {
    headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|ua| ua.chars().take(256).collect())
}

/// A form post from a page of this gateway (no login CSRF): a browser sends
/// `Origin` with every POST, whose host must be the one the form was sent to,
/// and `Sec-Fetch-Site`, which must not say another site. A client that is not
/// a browser sends neither, and has no victim's cookies to misuse.
fn same_origin(headers: &http::HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok());
    if let Some(site) = text(http::header::HeaderName::from_static("sec-fetch-site")) {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    let Some(origin) = text(http::header::ORIGIN) else { return true };
    let host = text(http::header::HOST).unwrap_or_default();
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}
