use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::util::*;

#[tokio::test]
async fn created_key_object_has_openais_shape_and_shows_the_secret_once() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let project = gw.default_project().await;
    let (status, key) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}/api_keys"),
            Some(json!({"name": "MyApp-Prod-v2", "prefix": "sk-prod-"})),
        )
        .await;
    assert_eq!(status, 200);
    let secret = key["value"].as_str().unwrap();
    assert!(secret.starts_with("sk-prod-kg1"));
    assert_eq!(key["object"], "organization.project.api_key");
    assert_eq!(key["name"], "MyApp-Prod-v2");
    let id = key["id"].as_str().unwrap();
    assert!(id.starts_with("key_"));
    let redacted = key["redacted_value"].as_str().unwrap();
    assert_eq!(redacted, format!("sk-prod-kg1{}...{}", &id[4..], &secret[secret.len() - 4..]));
    assert_eq!(key["owner"]["type"], "service_account");
    assert_eq!(key["owner_project_access"], "active");
    assert!(key["last_used_at"].is_null());
    let (status, fetched) =
        gw.admin(Method::GET, &format!("/v1/organization/projects/{project}/api_keys/{id}"), None).await;
    assert_eq!(status, 200);
    assert!(fetched.get("value").is_none());
    assert!(!fetched.to_string().contains(secret));
}

#[tokio::test]
async fn list_paginates_with_after_and_limit() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let project = gw.default_project().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(gw.create_key(&format!("k{i}")).await.0["id"].as_str().unwrap().to_owned());
    }
    let base = format!("/v1/organization/projects/{project}/api_keys");
    let (_, page1) = gw.admin(Method::GET, &format!("{base}?limit=2"), None).await;
    assert_eq!(page1["object"], "list");
    assert_eq!(page1["data"].as_array().unwrap().len(), 2);
    assert_eq!(page1["has_more"], true);
    assert_eq!(page1["first_id"], ids[0].as_str());
    let after = page1["last_id"].as_str().unwrap();
    let (_, page2) = gw.admin(Method::GET, &format!("{base}?limit=2&after={after}"), None).await;
    assert_eq!(page2["data"].as_array().unwrap().len(), 1);
    assert_eq!(page2["data"][0]["id"], ids[2].as_str());
    assert_eq!(page2["has_more"], false);
}

#[tokio::test]
async fn bad_admin_input_gets_clear_400s_and_404s() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let project = gw.default_project().await;
    let base = format!("/v1/organization/projects/{project}/api_keys");
    let (status, body) = gw.admin(Method::POST, &base, Some(json!({"name": "x", "prefix": "SK_"}))).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "prefix");
    let (status, _) = gw.admin(Method::POST, &base, Some(json!({"name": "  "}))).await;
    assert_eq!(status, 400);
    let (status, _) = gw.admin(Method::POST, &base, Some(json!({"nom": "x"}))).await;
    assert_eq!(status, 400);
    let (status, body) = gw.admin(Method::GET, &format!("{base}?limit=1000"), None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "limit");
    let (status, _) = gw.admin(Method::GET, &format!("{base}?limit=abc"), None).await;
    assert_eq!(status, 400);
    let (status, body) = gw.admin(Method::GET, "/v1/organization/projects/proj_nope/api_keys", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["message"], "No such project: proj_nope.");
    let (status, _) = gw.admin(Method::GET, &format!("{base}/key_doesnotexist"), None).await;
    assert_eq!(status, 404);
    let (status, _) = gw.admin(Method::GET, &format!("{base}/not-an-id"), None).await;
    assert_eq!(status, 404);
    let response = http()
        .post(format!("{}{base}", gw.url))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_request_id(&response);
}

#[tokio::test]
async fn revoked_key_is_refused_at_once_and_disappears_from_lists() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let project = gw.default_project().await;
    let (key, secret) = gw.create_key("doomed").await;
    let id = key["id"].as_str().unwrap();
    let ok = http().get(format!("{}/v1/models", gw.url)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let started = Instant::now();
    let (status, deleted) = gw
        .admin(Method::DELETE, &format!("/v1/organization/projects/{project}/api_keys/{id}?reason=leaked"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(deleted, json!({"object": "organization.project.api_key.deleted", "id": id, "deleted": true}));
    let refused = http().get(format!("{}/v1/models", gw.url)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(started.elapsed() < Duration::from_secs(1));
    let (status, _) = gw.admin(Method::GET, &format!("/v1/organization/projects/{project}/api_keys/{id}"), None).await;
    assert_eq!(status, 404);
    let (_, list) = gw.admin(Method::GET, &format!("/v1/organization/projects/{project}/api_keys"), None).await;
    assert!(list["data"].as_array().unwrap().iter().all(|k| k["id"] != id));
    let record = gw.gateway_state.store.get_key(&keygate::ids::PublicId::parse(id).unwrap()).await.unwrap().unwrap();
    let revocation = record.revocation.unwrap();
    assert_eq!(revocation.reason.as_deref(), Some("leaked"));
    assert!(revocation.by.unwrap().contains("admin key"));
}

#[tokio::test]
async fn projects_are_created_listed_and_fetched() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (status, created) = gw.admin(Method::POST, "/v1/organization/projects", Some(json!({"name": "Team A"}))).await;
    assert_eq!(status, 200);
    assert_eq!(created["object"], "organization.project");
    assert_eq!(created["status"], "active");
    assert!(created["archived_at"].is_null());
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("proj_"));
    let (_, list) = gw.admin(Method::GET, "/v1/organization/projects", None).await;
    let names: Vec<_> =
        list["data"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["Default project", "Team A"]);
    let (status, fetched) = gw.admin(Method::GET, &format!("/v1/organization/projects/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn last_used_is_recorded_off_the_request_path_and_flushed_on_stop() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (key, secret) = gw.create_key("used").await;
    let id = keygate::ids::PublicId::parse(key["id"].as_str().unwrap()).unwrap();
    let ok = http()
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(&secret)
        .header("user-agent", "OpenAI/Python 3.3.1")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let store = gw.gateway_state.store.clone();
    gw.stop().await;
    let used = store.get_key(&id).await.unwrap().unwrap().last_used.expect("last use recorded on stop");
    assert_eq!(used.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(used.user_agent.as_deref(), Some("OpenAI/Python 3.3.1"));
}

#[tokio::test]
async fn key_import_refuses_bad_input_before_writing_anything() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let project = gw.default_project().await;
    let path = format!("/v1/organization/projects/{project}/api_keys/import");
    let secret = |sha256: &str| json!({"sha256": sha256, "last4": "abcd", "created_at": 1});
    let key =
        |id: &str, secrets: serde_json::Value| json!({"id": id, "name": "k", "created_at": 1, "secrets": secrets});
    let good = key("key_AAAAAAAAAAAA", json!([secret(&"ab".repeat(32))]));
    for (body, param) in [
        (json!({"keys": [good.clone(), key("key_BBBBBBBBBBBB", json!([secret("zz")]))]}), "sha256"),
        (json!({"keys": [key("key_short", json!([secret(&"ab".repeat(32))]))]}), "id"),
        (json!({"keys": [key("key_CCCCCCCCCCCC", json!([]))]}), "secrets"),
        (json!({"keys": vec![good.clone(); 501]}), "keys"),
    ] {
        let (status, error) = gw.admin(Method::POST, &path, Some(body)).await;
        assert_eq!((status, error["error"]["param"].as_str()), (400, Some(param)), "{error}");
    }
    let (status, _) = gw.admin(Method::POST, &path, Some(json!({"keys": [], "extra": 1}))).await;
    assert_eq!(status, 400, "unknown fields are refused");
    let (_, list) = gw.admin(Method::GET, &format!("/v1/organization/projects/{project}/api_keys"), None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "nothing of a refused batch was written");

    // A secret that belongs to a key here already is a conflict, not a takeover.
    let (mine, value) = gw.create_key("mine").await;
    let digest = keygate::key::KeyDigest::of(&value);
    let stolen = key("key_DDDDDDDDDDDD", json!([secret(&hex::encode(digest.0))]));
    let (status, results) = gw.admin(Method::POST, &path, Some(json!({"keys": [stolen, good]}))).await;
    assert_eq!(status, 200, "{results}");
    assert_eq!(results["data"][0]["result"], "conflict");
    assert_eq!(results["data"][1]["result"], "imported");
    assert_eq!(http().get(format!("{}/v1/models", gw.url)).bearer_auth(&value).send().await.unwrap().status(), 200);
    let (_, still) = gw
        .admin(
            Method::GET,
            &format!("/v1/organization/projects/{project}/api_keys/{}", mine["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(still["name"], "mine");
}
