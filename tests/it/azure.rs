//! The Azure front door and Azure upstreams.

use reqwest::Method;
use serde_json::{json, Value};

use crate::util::*;

const V: &str = "2024-10-21";
const FRONT_DOOR: &str = "[azure]\nregion = \"Test Region\"\n[azure.deployments]\n\"prod-gpt4o\" = \"gpt-4o\"\n\"embed\" = \"text-embedding-3-small\"\n";

async fn azure_post(gw: &TestGateway, path: &str, key: &str, body: Value) -> reqwest::Response {
    http().post(format!("{}{path}", gw.url)).header("api-key", key).json(&body).send().await.unwrap()
}

fn hello() -> Value {
    json!({"messages": [{"role": "user", "content": "one two three"}]})
}

#[tokio::test]
async fn an_azure_client_reaches_an_openai_upstream_through_a_deployment() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, FRONT_DOOR).await;
    let (key, secret) = gw.create_key("azure-client").await;
    let mut body = hello();
    body["model"] = json!("prod-gpt4o"); // the SDK puts the deployment in the body too
    let r = azure_post(&gw, &format!("/openai/deployments/prod-gpt4o/chat/completions?api-version={V}"), &secret, body)
        .await;
    assert_eq!(r.status(), 200);
    let apim = r.headers()["apim-request-id"].to_str().unwrap().to_owned();
    assert_eq!(apim.len(), 36);
    assert_eq!(r.headers()["x-ms-client-request-id"], apim.as_str());
    assert_eq!(r.headers()["x-ms-region"], "Test Region");
    assert_request_id(&r);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
    let sent = &mock.requests()[0];
    assert_eq!(sent.path_and_query, "/v1/chat/completions", "api-version is Azure's, not the upstream's");
    let sent_body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(sent_body["model"], "gpt-4o", "the deployment is resolved to its model");
    assert_eq!(sent.header("authorization"), Some(format!("Bearer {UPSTREAM_KEY}").as_str()));
    assert_eq!(sent.header("api-key"), None, "the client's key never goes upstream");
    // Metered like any request (the record is queued when the body is dropped).
    let id = key["id"].as_str().unwrap().to_owned();
    let since = keygate::clock::unix_now() - 3600;
    let mut requests = 0;
    for _ in 0..40 {
        gw.gateway_state.recorder.flush().await;
        let (_, usage) = gw
            .admin(
                Method::GET,
                &format!(
                    "/v1/organization/usage/completions?start_time={since}&bucket_width=1d&limit=1&api_key_ids={id}"
                ),
                None,
            )
            .await;
        requests = usage["data"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["results"].as_array().unwrap().iter())
            .map(|r| r["num_model_requests"].as_i64().unwrap())
            .sum();
        if requests > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(requests, 1);
}

#[tokio::test]
async fn azures_own_errors_are_byte_exact() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, FRONT_DOOR).await;
    let (_, secret) = gw.create_key("k").await;
    let wrong = azure_post(
        &gw,
        &format!("/openai/deployments/prod-gpt4o/chat/completions?api-version={V}"),
        "0123456789abcdef0123456789abcdef",
        hello(),
    )
    .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.headers()["content-length"], "224");
    assert!(wrong.headers().get("apim-request-id").is_some());
    assert_request_id(&wrong);
    assert_eq!(
        wrong.text().await.unwrap(),
        r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}"#
    );
    for path in [
        "/openai/deployments/prod-gpt4o/chat/completions",
        "/openai/deployments/prod-gpt4o/chat/completions?api-version=0613",
    ] {
        let r = azure_post(&gw, path, &secret, hello()).await;
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.text().await.unwrap(), r#"{"error":{"code":"404","message": "Resource not found"}}"#);
    }
    let r =
        azure_post(&gw, &format!("/openai/deployments/nope/chat/completions?api-version={V}"), &secret, hello()).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "DeploymentNotFound");
    let r = azure_post(&gw, "/openai/v1/chat/completions?api-version=2024-10-21", &secret, hello()).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.text().await.unwrap(), r#"{"error":{"code":"BadRequest","message":"API version not supported"}}"#);
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn a_model_name_used_as_a_deployment_is_explained() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, FRONT_DOOR).await;
    let (_, secret) = gw.create_key("k").await;
    let r = azure_post(&gw, &format!("/openai/deployments/gpt-4o/chat/completions?api-version={V}"), &secret, hello())
        .await;
    assert_eq!(r.status(), 404);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let openai_key = format!("sk-proj-{}T3BlbkFJ{}", "a".repeat(20), "b".repeat(20));
    let foreign = azure_post(
        &gw,
        &format!("/openai/deployments/prod-gpt4o/chat/completions?api-version={V}"),
        &openai_key,
        hello(),
    )
    .await;
    assert_eq!(foreign.status(), 401);
    let foreign_id = foreign.headers()["x-request-id"].to_str().unwrap().to_owned();
    gw.gateway_state.recorder.flush().await;
    let (_, explained) = gw.admin(Method::GET, &format!("/v1/organization/requests/{id}"), None).await;
    assert_eq!(explained["reason"], "unknown_deployment");
    let text = explained["explanation"].as_str().unwrap();
    assert!(text.contains("`gpt-4o` is a model name") && text.contains("prod-gpt4o"), "{text}");
    let (_, explained) = gw.admin(Method::GET, &format!("/v1/organization/requests/{foreign_id}"), None).await;
    assert!(explained["explanation"].as_str().unwrap().contains("an OpenAI API key"));
}

#[tokio::test]
async fn the_v1_surface_takes_a_bearer_key_and_a_deployment_as_model() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, FRONT_DOOR).await;
    let (_, secret) = gw.create_key("k").await;
    let r = http()
        .post(format!("{}/openai/v1/embeddings", gw.url))
        .bearer_auth(&secret)
        .json(&json!({"model": "embed", "input": "a b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent: Value = serde_json::from_slice(&mock.requests()[0].body).unwrap();
    assert_eq!(sent["model"], "text-embedding-3-small");
    let models = http()
        .get(format!("{}/openai/models?api-version={V}", gw.url))
        .header("api-key", &secret)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    assert_eq!(mock.requests()[1].path_and_query, "/v1/models");
}

#[tokio::test]
async fn azure_rate_limits_answer_in_azures_words() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, FRONT_DOOR).await;
    let project = gw.default_project().await;
    let (_, key) = gw
        .admin(
            Method::POST,
            &format!("/v1/organization/projects/{project}/api_keys"),
            Some(json!({"name": "k", "rate_limits": {"max_requests_per_1_minute": 1}})),
        )
        .await;
    let secret = key["value"].as_str().unwrap();
    let path = format!("/openai/deployments/prod-gpt4o/chat/completions?api-version={V}");
    assert_eq!(azure_post(&gw, &path, secret, hello()).await.status(), 200);
    let r = azure_post(&gw, &path, secret, hello()).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "60");
    let ms: i64 = r.headers()["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!((59_000..=60_000).contains(&ms), "{ms}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "429");
    assert!(body["error"]["message"].as_str().unwrap().starts_with(&format!(
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {V} have exceeded call rate limit"
    )));
}

#[tokio::test]
async fn an_openai_client_gets_clean_answers_from_an_azure_upstream() {
    let mock = MockUpstream::start().await;
    let upstream = format!(
        "[[upstreams]]\nname = \"azure\"\nkind = \"azure\"\nurl = \"{}\"\napi_version = \"{V}\"\napi_key_env = \"KEYGATE_UPSTREAM_API_KEY\"\nmodels = [\"gpt-4o*\"]\n[upstreams.deployments]\n\"gpt-4o\" = \"prod-4o\"\n",
        mock.url.trim_end_matches("/v1")
    );
    let gw = TestGateway::start(&mock.url, &upstream).await;
    let (_, secret) = gw.create_key("k").await;
    let answer: Value = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&secret)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer.get("prompt_filter_results").is_none(), "{answer}");
    assert!(answer["choices"][0].get("content_filter_results").is_none(), "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "hi from prod-4o");
    let sent = &mock.requests()[0];
    assert_eq!(sent.path_and_query, format!("/openai/deployments/prod-4o/chat/completions?api-version={V}"));
    assert_eq!(sent.header("api-key"), Some(UPSTREAM_KEY));
    assert_eq!(sent.header("authorization"), None);

    let stream = http()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&secret)
        .json(&json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!stream.contains("prompt_filter_results") && !stream.contains("content_filter_results"), "{stream}");
    assert!(!stream.contains(r#""choices":[]"#), "the filter-only and injected usage chunks are gone: {stream}");
    let first = stream.lines().next().unwrap();
    assert!(first.contains(r#""role":"assistant""#), "{first}");
    assert!(stream.ends_with("data: [DONE]\n\n"));
}

/// An Azure client names the deployment in the URL only: the OpenAI upstream
/// still gets the model behind it in the body.
#[tokio::test]
async fn a_deployment_url_without_a_model_in_the_body_sends_the_deployments_model() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock.url, FRONT_DOOR).await;
    let (_, secret) = gw.create_key("azure-client").await;
    let r =
        azure_post(&gw, &format!("/openai/deployments/prod-gpt4o/chat/completions?api-version={V}"), &secret, hello())
            .await;
    assert_eq!(r.status(), 200);
    let sent: Value = serde_json::from_slice(&mock.requests()[0].body).unwrap();
    assert_eq!(sent["model"], "gpt-4o");
}
