//! The dashboard's sign-in, sessions and roles, through the Administration
//! API as the dashboard calls it (a session cookie and its CSRF token).

use std::sync::Arc;

use keygate::clock::ManualClock;
use keygate::store::SessionHolder;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::Method;
use serde_json::{json, Value};

use crate::util::*;

fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// A signed-in browser: its cookie and the session's CSRF token.
struct Session {
    url: String,
    cookie: String,
    csrf: String,
}

impl Session {
    async fn call(&self, method: Method, path: &str, body: Option<Value>, csrf: bool) -> (u16, Value) {
        let mut req = browser().request(method, format!("{}{path}", self.url)).header(COOKIE, &self.cookie);
        if csrf {
            req = req.header("x-csrf-token", &self.csrf);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None, false).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(body), true).await
    }
}

/// Signs in with an admin key through the form, as a browser does.
async fn sign_in_with_key(gw: &TestGateway, key: &str) -> reqwest::Response {
    browser().post(format!("{}/ui/sign-in", gw.url)).form(&[("key", key), ("next", "/ui/keys")]).send().await.unwrap()
}

async fn session_from(gw: &TestGateway, cookie: String) -> Session {
    let doc: Value = browser()
        .get(format!("{}/ui/api/session", gw.url))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Session { url: gw.url.clone(), cookie, csrf: doc["csrf_token"].as_str().unwrap().to_owned() }
}

/// A session for a person, opened as single sign-on opens it.
async fn person(gw: &TestGateway, email: &str, role: &str) -> (String, Session) {
    let (status, user) = gw
        .admin(Method::POST, "/v1/organization/users", Some(json!({"name": email, "email": email, "role": role})))
        .await;
    assert_eq!(status, 200, "{user}");
    let id = user["id"].as_str().unwrap().to_owned();
    let state = &gw.gateway_state;
    let now = state.clock.now();
    let token = state.sessions.open(&*state.store, SessionHolder::User(id.clone()), now, None, None).await.unwrap();
    let session = session_from(gw, format!("keygate_session={}", token.expose())).await;
    (id, session)
}

async fn project(gw: &TestGateway, name: &str) -> String {
    let (status, p) = gw.admin(Method::POST, "/v1/organization/projects", Some(json!({"name": name}))).await;
    assert_eq!(status, 200, "{p}");
    p["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_admin_key_signs_in_and_the_session_needs_its_csrf_token_to_change_anything() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;

    // Signed out, a page sends the browser to sign in and back.
    let response = browser().get(format!("{}/ui/keys?status=active", gw.url)).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[LOCATION], "/ui/sign-in?next=%2Fui%2Fkeys%3Fstatus%3Dactive");
    let page = browser().get(format!("{}/ui/sign-in", gw.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");

    // A wrong key: the page says so, in the same words for every reason.
    let wrong = sign_in_with_key(&gw, "sk-admin-not-a-real-key").await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    assert!(wrong.text().await.unwrap().contains("not a valid admin key"));

    let response = sign_in_with_key(&gw, ADMIN_KEY).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[LOCATION], "/ui/keys");
    let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains(ADMIN_KEY));
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let session = session_from(&gw, cookie).await;
    let (_, doc) = session.get("/ui/api/session").await;
    assert_eq!(doc["role"], "owner");
    assert!(doc["admin_key"]["name"].is_string());
    assert!(!doc.to_string().contains(ADMIN_KEY));

    // The app's page now, and the Administration API with the cookie.
    let app = browser().get(format!("{}/ui/keys", gw.url)).header(COOKIE, &session.cookie).send().await.unwrap();
    assert_eq!(app.status(), 200);
    let (status, _) = session.get("/v1/organization/projects").await;
    assert_eq!(status, 200);

    // A change without the CSRF token is refused; with it, it is made.
    let project_id = gw.default_project().await;
    let keys = format!("/v1/organization/projects/{project_id}/api_keys");
    let (status, error) = session.call(Method::POST, &keys, Some(json!({"name": "no-csrf"})), false).await;
    assert_eq!(status, 403, "{error}");
    assert_eq!(error["error"]["code"], "csrf_token_invalid");
    let (status, error) = session.call(Method::POST, &keys, Some(json!({"name": "wrong-csrf"})), false).await;
    assert_eq!(status, 403, "{error}");
    let (status, key) = session.post(&keys, json!({"name": "from-the-dashboard"})).await;
    assert_eq!(status, 200, "{key}");

    // Signing out needs the token too; after it the cookie opens nothing.
    let out = browser().post(format!("{}/ui/sign-out", gw.url)).header(COOKIE, &session.cookie).send().await.unwrap();
    assert_eq!(out.status(), 403);
    let out = browser()
        .post(format!("{}/ui/sign-out", gw.url))
        .header(COOKIE, &session.cookie)
        .header("x-csrf-token", &session.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(out.headers()[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    let (status, error) = session.get("/v1/organization/projects").await;
    assert_eq!(status, 401, "{error}");
    assert_eq!(error["error"]["code"], "session_expired");

    // Every step is in the audit log, under the key that signed in.
    let (_, logs) = gw.admin(Method::GET, "/v1/organization/audit_logs?limit=100", None).await;
    let types: Vec<&str> = logs["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"login.succeeded") && types.contains(&"logout.succeeded"), "{types:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_reader_sees_everything_and_changes_nothing() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, reader) = person(&gw, "reader@example.com", "reader").await;
    let project_id = gw.default_project().await;
    for path in ["/v1/organization/projects", "/v1/organization/users", "/v1/organization/audit_logs"] {
        assert_eq!(reader.get(path).await.0, 200, "{path}");
    }
    let (status, error) =
        reader.post(&format!("/v1/organization/projects/{project_id}/api_keys"), json!({"name": "x"})).await;
    assert_eq!(status, 403, "{error}");
    assert_eq!(error["error"]["code"], "insufficient_role");
    assert!(error["error"]["message"].as_str().unwrap().contains("reader"));
    let (status, _) = reader.post("/v1/organization/users", json!({"name": "n", "email": "n@example.com"})).await;
    assert_eq!(status, 403);
    gw.stop().await;
}

#[tokio::test]
async fn a_member_reaches_their_projects_keys_and_no_other_projects() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let mine = project(&gw, "Mine").await;
    let theirs = project(&gw, "Theirs").await;
    let (user_id, member) = person(&gw, "member@example.com", "member").await;
    let (status, added) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{mine}/users"),
            Some(json!({"user_id": user_id, "role": "member"})),
        )
        .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["object"], "organization.project.user");
    // Roles are read on each request: the membership counts without signing in again.
    let (_, projects) = member.get("/v1/organization/projects").await;
    let ids: Vec<&str> = projects["data"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![mine.as_str()]);

    let (status, own_key) =
        member.post(&format!("/v1/organization/projects/{mine}/api_keys"), json!({"name": "m"})).await;
    assert_eq!(status, 200, "{own_key}");
    let (_, other_key) = gw
        .admin(Method::POST, &format!("/v1/organization/projects/{theirs}/api_keys"), Some(json!({"name": "o"})))
        .await;
    let other_id = other_key["id"].as_str().unwrap();

    // Another project's key: not found, by URL or by search.
    let (status, error) = member.get(&format!("/v1/organization/projects/{theirs}/api_keys/{other_id}")).await;
    assert_eq!(status, 404, "{error}");
    let (status, _) = member
        .call(Method::DELETE, &format!("/v1/organization/projects/{theirs}/api_keys/{other_id}"), None, true)
        .await;
    assert_eq!(status, 404);
    let (_, found) = member.get(&format!("/v1/organization/api_keys?q={other_id}")).await;
    assert_eq!(found["data"].as_array().unwrap().len(), 0, "{found}");
    let (_, found) = member.get("/v1/organization/api_keys").await;
    assert!(found["data"].as_array().unwrap().iter().all(|k| k["project_id"] == mine.as_str()), "{found}");
    let (status, _) = member.get(&format!("/v1/organization/api_keys?project_id={theirs}")).await;
    assert_eq!(status, 404);
    let (status, _) =
        member.get(&format!("/v1/organization/usage/completions?start_time=0&project_ids={theirs}")).await;
    assert_eq!(status, 404);
    let (status, _) = member.get("/v1/organization/usage/completions?start_time=0").await;
    assert_eq!(status, 200);

    // Importing (any secret, and an answer that says which keys exist) is for owners.
    let (status, _) =
        member.post(&format!("/v1/organization/projects/{mine}/api_keys/import"), json!({"keys": []})).await;
    assert_eq!(status, 403);
    // A key of theirs belongs to someone of the project, not to anyone they name.
    let (status, owner) = gw
        .admin(
            Method::POST,
            "/v1/organization/users",
            Some(json!({"name": "o", "email": "o@example.com", "role": "owner"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, error) = member
        .post(&format!("/v1/organization/projects/{mine}/api_keys"), json!({"name": "x", "user_id": owner["id"]}))
        .await;
    assert_eq!(status, 400, "{error}");
    let (status, _) = member
        .post(&format!("/v1/organization/projects/{mine}/api_keys"), json!({"name": "x", "user_id": user_id}))
        .await;
    assert_eq!(status, 200);

    // The organization's people, admin keys and audit log are not theirs.
    for path in ["/v1/organization/users", "/v1/organization/admin_api_keys", "/v1/organization/audit_logs"] {
        let (status, error) = member.get(path).await;
        assert_eq!(status, 403, "{path}: {error}");
    }
    let (status, _) = member.post(&format!("/v1/organization/projects/{mine}/archive"), json!({})).await;
    assert_eq!(status, 403);

    // Their action is theirs in the audit log.
    let (_, logs) = gw.admin(Method::GET, "/v1/organization/audit_logs?event_types[]=api_key.created", None).await;
    let by_member =
        logs["data"].as_array().unwrap().iter().find(|e| e["api_key.created"]["id"] == own_key["id"]).cloned().unwrap();
    assert_eq!(by_member["actor"]["type"], "session", "{by_member}");
    assert_eq!(by_member["actor"]["session"]["user"]["email"], "member@example.com");

    // Out of the project, out of its keys.
    let (status, _) =
        gw.admin(Method::DELETE, &format!("/v1/organization/projects/{mine}/users/{user_id}"), None).await;
    assert_eq!(status, 200);
    let (status, _) = member.get(&format!("/v1/organization/projects/{mine}/api_keys")).await;
    assert_eq!(status, 404);
    gw.stop().await;
}

#[tokio::test]
async fn a_session_ends_when_idle_too_long_and_when_its_key_is_revoked() {
    let mock = MockUpstream::start().await;
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let gw = TestGateway::start_with_clock(tempfile::tempdir().unwrap(), &mock.url, "", clock.clone()).await;
    let response = sign_in_with_key(&gw, ADMIN_KEY).await;
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let session = session_from(&gw, cookie).await;
    clock.advance(29 * 60);
    assert_eq!(session.get("/v1/organization/projects").await.0, 200);
    // Used just now, so the idle time starts again (written back at most once a minute).
    clock.advance(29 * 60);
    assert_eq!(session.get("/v1/organization/projects").await.0, 200);
    clock.advance(31 * 60);
    assert_eq!(session.get("/v1/organization/projects").await.0, 401);

    // A second admin key signs in; once it is revoked, its session opens nothing.
    let (_, created) = gw.admin(Method::POST, "/v1/organization/admin_api_keys", Some(json!({"name": "temp"}))).await;
    let response = sign_in_with_key(&gw, created["value"].as_str().unwrap()).await;
    assert_eq!(response.status(), 303);
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let session = session_from(&gw, cookie).await;
    assert_eq!(session.get("/v1/organization/projects").await.0, 200);
    let (status, _) = gw
        .admin(Method::DELETE, &format!("/v1/organization/admin_api_keys/{}", created["id"].as_str().unwrap()), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(session.get("/v1/organization/projects").await.0, 401);
    gw.stop().await;
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_address() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "[limits]\nfailed_auth_per_minute = 3\n").await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(sign_in_with_key(&gw, "sk-admin-wrong").await.status().as_u16());
    }
    assert_eq!(statuses, vec![401, 401, 401, 429, 429]);
    gw.stop().await;
}

#[tokio::test]
async fn the_overview_counts_requests_and_refusals_by_cause() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, secret) = gw.create_key("overview").await;
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let ok =
        http().post(format!("{}/v1/chat/completions", gw.url)).bearer_auth(&secret).json(&chat).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let bad =
        http().post(format!("{}/v1/chat/completions", gw.url)).bearer_auth("sk-nope").json(&chat).send().await.unwrap();
    assert_eq!(bad.status(), 401);
    gw.gateway_state.recorder.flush().await;
    let (status, overview) = gw.admin(Method::GET, "/v1/organization/overview", None).await;
    assert_eq!(status, 200, "{overview}");
    assert_eq!(overview["object"], "organization.overview");
    assert_eq!(overview["requests"], 1, "{overview}");
    assert_eq!(overview["denied_requests"], 1, "{overview}");
    assert_eq!(overview["denials_by_reason"][0]["count"], 1);
    assert_eq!(overview["top_keys"][0]["name"], "overview");
    let series = overview["series"].as_array().unwrap();
    assert_eq!(series.iter().map(|p| p["requests"].as_i64().unwrap()).sum::<i64>(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn over_https_the_cookie_is_host_only_and_a_plain_one_is_not_read() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let response = browser()
        .post(format!("{}/ui/sign-in", gw.url))
        .header("x-forwarded-proto", "https")
        .form(&[("key", ADMIN_KEY)])
        .send()
        .await
        .unwrap();
    let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("__Host-keygate_session=") && set_cookie.contains("; Secure"), "{set_cookie}");
    let token = set_cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();
    let projects = |cookie: String, https: bool| {
        let mut req = browser().get(format!("{}/v1/organization/projects", gw.url)).header(COOKIE, cookie);
        if https {
            req = req.header("x-forwarded-proto", "https");
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(projects(format!("__Host-keygate_session={token}"), true).await, 200);
    // Planted under the plain name (a sibling subdomain can), it opens nothing over https.
    assert_eq!(projects(format!("keygate_session={token}"), true).await, 401);
    gw.stop().await;
}

#[tokio::test]
async fn with_the_dashboard_off_its_sessions_open_nothing() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "[dashboard]\nenabled = false\n").await;
    let state = &gw.gateway_state;
    let token = state
        .sessions
        .open(
            &*state.store,
            SessionHolder::AdminKey(keygate::ids::PublicId::parse("AAAAAAAAAAAA").unwrap()),
            0,
            None,
            None,
        )
        .await
        .unwrap();
    let response = browser()
        .get(format!("{}/v1/organization/projects", gw.url))
        .header(COOKIE, format!("keygate_session={}", token.expose()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(browser().get(format!("{}/ui/sign-in", gw.url)).send().await.unwrap().status(), 404);
    gw.stop().await;
}

#[tokio::test]
async fn two_users_may_not_share_an_email_in_different_case() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let add = |email: &'static str| {
        gw.admin(Method::POST, "/v1/organization/users", Some(json!({"name": "n", "email": email})))
    };
    assert_eq!(add("Bob@example.com").await.0, 200);
    let (status, error) = add("bob@EXAMPLE.com").await;
    assert_eq!(status, 400, "{error}");
    gw.stop().await;
}

#[tokio::test]
async fn a_sign_in_form_too_large_from_another_site_or_without_a_key_is_refused() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let post = |body: String, origin: Option<&'static str>| {
        let mut req = browser()
            .post(format!("{}/ui/sign-in", gw.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        async move { req.send().await.unwrap() }
    };
    let huge = post(format!("key={}", "a".repeat(64 * 1024)), None).await;
    assert_eq!(huge.status(), 413);
    let elsewhere = post(format!("key={ADMIN_KEY}"), Some("https://evil.example")).await;
    assert_eq!(elsewhere.status(), 403, "login CSRF from another site");
    assert!(elsewhere.headers().get(SET_COOKIE).is_none());
    let empty = post("next=/ui".into(), None).await;
    assert_eq!(empty.status(), 400);
    // A made-up session cookie opens nothing, on the API as on the pages.
    let forged = browser()
        .get(format!("{}/v1/organization/projects", gw.url))
        .header(COOKIE, "keygate_session=not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    gw.stop().await;
}

#[tokio::test]
async fn an_import_without_ids_takes_only_legacy_secrets() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let project = gw.default_project().await;
    let secret = json!({"sha256": "c".repeat(64), "legacy": false, "last4": "cccc", "created_at": 1});
    let (status, error) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}/api_keys/import"),
            Some(json!({"keys": [{"name": "x", "created_at": 1, "secrets": [secret]}]})),
        )
        .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["param"], "id");
    gw.stop().await;
}
