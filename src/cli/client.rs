//! The CLI's HTTP client for a running keygate's Administration API.

use anyhow::{anyhow, Context as _};
use keygate::key::Secret;
use serde_json::Value;

use super::output::Help;

pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    key: Secret,
}

impl AdminClient {
    pub fn from_env(url: &str) -> anyhow::Result<Self> {
        let key = std::env::var("KEYGATE_ADMIN_KEY").ok().filter(|k| !k.trim().is_empty()).ok_or_else(|| {
            anyhow!("no admin key: `KEYGATE_ADMIN_KEY` is not set")
                .context(Help("export KEYGATE_ADMIN_KEY=<the admin key keygate printed on its first start>".into()))
        })?;
        Ok(Self {
            http: reqwest::Client::new(),
            base: url.trim_end_matches('/').to_owned(),
            key: Secret::new(key.trim()),
        })
    }

    /// The project to act on: the one given, else the first (default) project.
    pub async fn project_id(&self, flag: Option<String>) -> anyhow::Result<String> {
        if let Some(id) = flag {
            return Ok(id);
        }
        let list = self.get("/v1/organization/projects?limit=1").await?;
        list["data"][0]["id"]
            .as_str()
            .map(str::to_owned)
            .context("the gateway has no project; create one with `keygate projects create --name NAME`")
    }

    /// Every item of a paginated list, following `after` cursors.
    pub async fn list_all(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let cursor = after.as_deref().map(|a| format!("&after={a}")).unwrap_or_default();
            let page = self.get(&format!("{path}{sep}limit=100{cursor}")).await?;
            all.extend(page["data"].as_array().cloned().unwrap_or_default());
            match (page["has_more"].as_bool(), page["last_id"].as_str()) {
                (Some(true), Some(last)) => after = Some(last.to_owned()),
                _ => return Ok(all),
            }
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url).bearer_auth(self.key.expose());
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.map_err(|e| {
            anyhow!(e)
                .context(format!("cannot reach keygate at `{}`", self.base))
                .context(Help("start it with `keygate serve`, or point KEYGATE_URL at a running gateway".into()))
        })?;
        let status = response.status();
        let request_id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        let text = response.text().await.context("the response body could not be read")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]["message"].as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
        let error = anyhow!("{method} {path} failed with {status}: {message} (request id `{request_id}`)");
        Err(if status == reqwest::StatusCode::UNAUTHORIZED {
            error.context(Help("check KEYGATE_ADMIN_KEY: it must be an admin key of this gateway".into()))
        } else {
            error
        })
    }
}
