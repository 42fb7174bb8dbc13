//! keygate's Administration API objects against OpenAI's own examples
//! (tests/fixtures/openai-admin-shapes.json): every field OpenAI has is
//! present with the same JSON type (null where OpenAI allows null).

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::*;

fn fixtures() -> Value {
    serde_json::from_str(include_str!("../fixtures/openai-admin-shapes.json")).unwrap()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every key of `spec` is in `ours` with the same type (recursively); nulls
/// match anything, since OpenAI's fields are nullable where examples show null.
fn assert_shape(name: &str, spec: &Value, ours: &Value, path: &str) {
    match (spec, ours) {
        (Value::Object(spec), Value::Object(ours)) => {
            for (key, spec_value) in spec {
                let field = format!("{path}.{key}");
                let ours_value = ours.get(key).unwrap_or_else(|| panic!("{name}: `{field}` is missing"));
                assert_shape(name, spec_value, ours_value, &field);
            }
        }
        (Value::Null, _) | (_, Value::Null) => {}
        (spec, ours) => assert_eq!(kind(spec), kind(ours), "{name}: `{path}` has the wrong type ({ours})"),
    }
    if let (Some(object), Some(ours)) = (spec.get("object").and_then(Value::as_str), ours.get("object")) {
        assert_eq!(ours, object, "{name}: `{path}.object`");
    }
}

#[tokio::test]
async fn admin_objects_match_openais_shapes_field_for_field() {
    let f = fixtures();
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let project = gw.default_project().await;
    let base = format!("/v1/organization/projects/{project}");

    let (_, p) = gw.admin(Method::POST, "/v1/organization/projects", Some(json!({"name": "Shapes"}))).await;
    assert_shape("project", &f["project"], &p, "");
    let (_, list) = gw.admin(Method::GET, "/v1/organization/projects", None).await;
    assert_shape("list", &f["list"], &list, "");

    let (_, user) = gw
        .admin(
            Method::POST,
            "/v1/organization/users",
            Some(json!({"name": "Ada", "email": "ada@example.com", "role": "owner"})),
        )
        .await;
    assert_shape("user", &f["user"], &user, "");
    let (_, user_key) =
        gw.admin(Method::POST, &format!("{base}/api_keys"), Some(json!({"name": "mine", "user_id": user["id"]}))).await;
    assert_shape("project_api_key_user_owner", &f["project_api_key_user_owner"], &user_key, "");
    let (_, key) = gw.admin(Method::POST, &format!("{base}/api_keys"), Some(json!({"name": "svc"}))).await;
    assert_shape("project_api_key_service_account_owner", &f["project_api_key_service_account_owner"], &key, "");

    let (_, sa) = gw.admin(Method::POST, &format!("{base}/service_accounts"), Some(json!({"name": "bot"}))).await;
    assert_shape("service_account_created", &f["service_account_created"], &sa, "");
    let (_, sa_get) =
        gw.admin(Method::GET, &format!("{base}/service_accounts/{}", sa["id"].as_str().unwrap()), None).await;
    assert_shape("service_account", &f["service_account"], &sa_get, "");

    let (_, admin) = gw
        .admin(
            Method::POST,
            "/v1/organization/admin_api_keys",
            Some(json!({"name": "ops", "expires_in_seconds": 3600})),
        )
        .await;
    assert_shape("admin_api_key_created", &f["admin_api_key_created"], &admin, "");

    let (_, archived) =
        gw.admin(Method::POST, &format!("/v1/organization/projects/{}/archive", p["id"].as_str().unwrap()), None).await;
    assert_eq!(archived["status"], "archived");

    let (_, deleted) =
        gw.admin(Method::DELETE, &format!("{base}/api_keys/{}", key["id"].as_str().unwrap()), None).await;
    assert_shape("project_api_key_deleted", &f["project_api_key_deleted"], &deleted, "");
    let (_, deleted) = gw
        .admin(Method::DELETE, &format!("/v1/organization/admin_api_keys/{}", admin["id"].as_str().unwrap()), None)
        .await;
    assert_shape("admin_api_key_deleted", &f["admin_api_key_deleted"], &deleted, "");
    let (_, deleted) =
        gw.admin(Method::DELETE, &format!("{base}/service_accounts/{}", sa["id"].as_str().unwrap()), None).await;
    assert_shape("service_account_deleted", &f["service_account_deleted"], &deleted, "");
    let (_, deleted) =
        gw.admin(Method::DELETE, &format!("/v1/organization/users/{}", user["id"].as_str().unwrap()), None).await;
    assert_shape("user_deleted", &f["user_deleted"], &deleted, "");

    let (_, logs) = gw.admin(Method::GET, "/v1/organization/audit_logs?event_types[]=project.archived", None).await;
    assert_shape("audit_log_project_archived", &f["audit_log_project_archived"], &logs["data"][0], "");
}
