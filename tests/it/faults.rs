//! Store write failures, injected with SQLite triggers: records the background
//! writer could not store wait and are written once the store accepts them.

use reqwest::Method;
use serde_json::json;

use crate::util::*;

async fn sql(gw: &TestGateway, statement: &str) {
    let url = format!("sqlite://{}", gw.db.path().join("keygate.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(statement).execute(&pool).await.unwrap();
    pool.close().await;
}

async fn audit_count(gw: &TestGateway) -> usize {
    let (_, logs) = gw.admin(Method::GET, "/v1/organization/audit_logs?limit=100", None).await;
    logs["data"].as_array().unwrap().iter().filter(|e| e["type"] == "project.created").count()
}

#[tokio::test]
async fn audit_events_and_usage_rows_survive_a_failing_store() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, "").await;
    let (_, secret) = gw.create_key("metered").await;
    gw.gateway_state.recorder.flush().await;
    sql(&gw, "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'injected'); END").await;
    sql(&gw, "CREATE TRIGGER fail_usage BEFORE INSERT ON usage_records BEGIN SELECT RAISE(ABORT, 'injected'); END")
        .await;

    let (status, _) = gw.admin(Method::POST, "/v1/organization/projects", Some(json!({"name": "during-outage"}))).await;
    assert_eq!(status, 200);
    let chat = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&secret)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200, "a failing usage write never fails the request");
    chat.text().await.unwrap();
    gw.gateway_state.recorder.flush().await;
    assert_eq!(audit_count(&gw).await, 0, "the write failed");

    sql(&gw, "DROP TRIGGER fail_audit").await;
    sql(&gw, "DROP TRIGGER fail_usage").await;
    gw.gateway_state.recorder.flush().await;
    assert_eq!(audit_count(&gw).await, 1, "the audit event was kept and written on the next round");
    let url = format!("sqlite://{}", gw.db.path().join("keygate.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records").fetch_one(&pool).await.unwrap();
    pool.close().await;
    assert_eq!(rows, 1, "the usage row was kept and written on the next round");
    gw.stop().await;
}
