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

/// The gateway's address from `--url` / `KEYGATE_URL`: `http://` or
/// `https://`, host, port, and any path prefix a proxy puts keygate under. A
/// trailing `/v1`, the SDKs' base URL that people copy, is dropped: the
/// Administration API sits under `/v1` itself.
pub fn base_url(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    let wrong = |headline: String, help: String| anyhow::Error::new(Help(help)).context(headline);
    let example = "set KEYGATE_URL (or --url) to the gateway's address, e.g. `http://127.0.0.1:8080`";
    if !text.contains("://") {
        return Err(wrong(
            format!("the keygate URL `{text}` has no scheme"),
            format!("use `http://{text}` (or `https://` when keygate serves TLS)"),
        ));
    }
    let url = reqwest::Url::parse(text)
        .map_err(|e| wrong(format!("the keygate URL `{text}` is not a valid URL: {e}"), example.into()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(wrong(format!("the keygate URL `{text}` is not an http:// or https:// address"), example.into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(wrong(format!("the keygate URL `{text}` has a query or fragment"), example.into()));
    }
    let base = url.as_str().trim_end_matches('/');
    Ok(base.strip_suffix("/v1").unwrap_or(base).to_owned())
}

impl AdminClient {
    pub fn from_env(url: &str) -> anyhow::Result<Self> {
        let base = base_url(url)?;
        let key = std::env::var("KEYGATE_ADMIN_KEY").ok().filter(|k| !k.trim().is_empty()).ok_or_else(|| {
            anyhow!("no admin key: `KEYGATE_ADMIN_KEY` is not set")
                .context(Help("export KEYGATE_ADMIN_KEY=<the admin key keygate printed on its first start>".into()))
        })?;
        Ok(Self { http: reqwest::Client::new(), base, key: Secret::new(key.trim()) })
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
        let response = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let request_id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        let text =
            response.text().await.with_context(|| format!("the answer from `{}` could not be read", self.base))?;
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

    /// Why the gateway could not be reached, with what to do about it.
    fn unreachable(&self, error: reqwest::Error) -> anyhow::Error {
        let plain_http = self.base.starts_with("https://") && speaks_plain_http(&error);
        let help = if plain_http {
            format!(
                "`{}` answers plain HTTP, not TLS: use `{}`, or serve keygate with `--tls-cert` and `--tls-key`",
                self.base,
                self.base.replacen("https://", "http://", 1)
            )
        } else {
            "start it with `keygate serve`, or point KEYGATE_URL at a running gateway".to_owned()
        };
        // reqwest's own text repeats the request's URL, path and all.
        let error = anyhow!(error.without_url());
        let error = if plain_http { error.context("the server there does not speak TLS") } else { error };
        error.context(format!("cannot reach keygate at `{}`", self.base)).context(Help(help))
    }
}

/// True when a TLS handshake got a reply that is not TLS, as from a server
/// that speaks plain HTTP.
fn speaks_plain_http(error: &(dyn std::error::Error + 'static)) -> bool {
    use tokio_rustls::rustls::{Error as TlsError, InvalidMessage};
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(TlsError::InvalidMessage(InvalidMessage::InvalidContentType)) = e.downcast_ref::<TlsError>() {
            return true;
        }
        // An `io::Error` keeps the error it wraps out of `source()`.
        cause = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    false
}
