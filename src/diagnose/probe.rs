//! Live probes: one HTTP call and what its answer means for the developer.

use std::time::Duration;

use http::HeaderMap;
use serde_json::Value;

use super::{Finding, Status};

pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub headers: HeaderMap,
}

impl Answer {
    pub fn request_id(&self) -> Option<&str> {
        self.headers.get("x-request-id").and_then(|v| v.to_str().ok())
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().or_else(|| self.body["message"].as_str()).unwrap_or(&self.text)
    }

    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub fn client() -> reqwest::Client {
    // The SDKs honour HTTP(S)_PROXY; so does reqwest's default client.
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap_or_default()
}

/// Why a call got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    TimedOut,
    /// No connection, TLS handshake included.
    NoConnection,
    Failed,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TimedOut => "timed out",
            Self::NoConnection => "could not connect",
            Self::Failed => "failed",
        })
    }
}

pub async fn send(request: reqwest::RequestBuilder) -> Result<Answer, Failure> {
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            Failure::TimedOut
        } else if e.is_connect() {
            Failure::NoConnection
        } else {
            Failure::Failed
        }
    })?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Answer { status, body, text, headers })
}

/// Whether the server behind `url` answers plain HTTP: an `https://` URL
/// that cannot connect although the port accepts connections is most often a
/// server without TLS. Sends one `HEAD /` in clear text (no key).
pub async fn speaks_plain_http(url: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(url) = reqwest::Url::parse(url) else { return false };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let request = format!("HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut start = [0u8; 5];
        stream.read_exact(&mut start).await.ok()?;
        Some(&start == b"HTTP/")
    };
    tokio::time::timeout(Duration::from_secs(3), exchange).await.ok().flatten().unwrap_or(false)
}

/// What an answer to `what` (a call to `url`) means, as a finding.
pub fn interpret(id: &'static str, what: &str, url: &str, answer: &Answer) -> Finding {
    let rid = answer.request_id().map(|r| format!(" (request id {r})")).unwrap_or_default();
    let explain = answer
        .request_id()
        .filter(|r| r.starts_with("req_"))
        .map(|r| format!(" An admin of the gateway can run `keygate explain {r}` for the exact reason."))
        .unwrap_or_default();
    let message = answer.message();
    let title = format!("{what}: HTTP {}", answer.status);
    let finding = |status, detail: String| Finding::new(id, status, title.clone(), detail);
    match answer.status {
        200..=299 => finding(Status::Pass, format!("{what} works{rid}.")),
        401 if message.contains("Missing scopes:") => {
            let scope = message.split("Missing scopes: ").nth(1).and_then(|s| s.split(". ").next()).unwrap_or("?");
            finding(Status::Fail, format!("The key is valid but lacks the scope `{scope}`{rid}.")).fix(format!(
                "Ask an admin to grant `{scope}` to this key (permissions), or use a key that has it.{explain}"
            ))
        }
        401 if answer.code() == "mismatched_organization" => finding(Status::Fail, format!("{message}{rid}."))
            .fix("Unset OPENAI_ORG_ID (or set it to the organization of the key)."),
        401 if answer.code() == "mismatched_project" => finding(Status::Fail, format!("{message}{rid}."))
            .fix("Unset OPENAI_PROJECT_ID (or set it to the project of the key)."),
        401 if message.starts_with("You didn't provide an API key") || message.starts_with("Missing bearer") => {
            finding(Status::Fail, format!("The server received no usable Authorization header{rid}."))
                .fix("Check that the key is set, and that no proxy between you and the server strips the header.")
        }
        401 if message.starts_with("IP not authorized") => finding(Status::Fail, format!("{message}{rid}"))
            .fix("The key or its project only accepts certain client addresses; call from one of them."),
        401 => finding(
            Status::Fail,
            format!("The server does not accept this key: it is unknown there, revoked, expired or mistyped{rid}."),
        )
        .fix(format!("Check the key against the one you were given, or ask for a new one.{explain}")),
        403 => finding(Status::Fail, format!("Permission denied: {message}{rid}"))
            .fix(format!("Check the key's permissions.{explain}")),
        404 if answer.code() == "model_not_found" => finding(Status::Fail, format!("{message}{rid}"))
            .fix("Use a model this key may use (`client.models.list()` shows them), or ask for access."),
        404 if answer.code() == "DeploymentNotFound" => {
            finding(Status::Fail, format!("No such Azure deployment{rid}."))
                .fix("Azure wants your deployment's name (from the Azure portal), not the model name.")
        }
        404 if message.contains("Resource not found") => {
            finding(Status::Fail, format!("Azure answered `Resource not found`{rid}."))
                .fix("Check the endpoint (https://<resource>.openai.azure.com) and the api-version.")
        }
        404 if message.starts_with("Invalid URL") => {
            finding(Status::Fail, format!("{message}{rid}")).fix("The base URL's path is wrong: it should end in /v1.")
        }
        404 => {
            let said = if message.trim().is_empty() { String::new() } else { format!(" (`{}`)", message.trim()) };
            finding(Status::Fail, format!("nothing at `{url}`: the server answered 404{said}{rid}")).fix(
                "check the base URL: the SDK appends the endpoint (`/models`, `/chat/completions`) to it, \
                 so it must end in `/v1`",
            )
        }
        429 if answer.code() == "insufficient_quota" => {
            finding(Status::Fail, format!("The quota or budget is exhausted{rid}."))
                .fix("Raise the budget, or wait for next month; retrying will not help.")
        }
        429 => {
            finding(Status::Warn, format!("Rate limited: {message}{rid}")).fix("Slow down or ask for a higher limit.")
        }
        500..=599 => finding(Status::Fail, format!("The server or its upstream failed: {message}{rid}"))
            .fix("Retry later; if it persists, give the request id to the server's operators."),
        _ => finding(Status::Fail, format!("Unexpected answer: {message}{rid}")),
    }
}
