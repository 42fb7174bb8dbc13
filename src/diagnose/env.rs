//! What the SDKs would use: the environment, a `.env` file, and flags.

use std::collections::BTreeMap;

use crate::key::Secret;

/// Where a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Environment,
    DotEnv,
}

/// The client setup under test, gathered by the CLI.
#[derive(Debug, Default)]
pub struct Setup {
    /// Name of the variable the key is read from (`OPENAI_API_KEY`...).
    pub key_var: String,
    pub env_key: Option<Secret>,
    pub dotenv_key: Option<Secret>,
    /// `OPENAI_BASE_URL` or `--base-url`.
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub organization: Option<String>,
    pub project: Option<String>,
    /// Azure: `AZURE_OPENAI_ENDPOINT` / `--azure-endpoint`, `OPENAI_API_VERSION`, `--deployment`.
    pub azure_endpoint: Option<String>,
    pub api_version: Option<String>,
    pub deployment: Option<String>,
    /// `HTTPS_PROXY`, `HTTP_PROXY` and friends, as set.
    pub proxies: Vec<(String, String)>,
    pub offline: bool,
}

impl Setup {
    /// The key the SDK would use: the environment's (python-dotenv does not
    /// override a variable that is already set), else `.env`'s.
    pub fn key(&self) -> Option<(&Secret, Source)> {
        match (&self.env_key, &self.dotenv_key) {
            (Some(k), _) => Some((k, Source::Environment)),
            (None, Some(k)) => Some((k, Source::DotEnv)),
            (None, None) => None,
        }
    }

    pub fn is_azure(&self) -> bool {
        self.azure_endpoint.is_some()
    }
}

/// Parses a `.env` file the way python-dotenv does for simple files:
/// `KEY=value`, optional `export `, `#` comments, matching quotes removed.
pub fn parse_dotenv(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else { continue };
        let value = value.trim();
        let unquoted = ['"', '\''].iter().find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)));
        let value = match unquoted {
            Some(inner) => inner.to_owned(),
            None => value.split(" #").next().unwrap_or(value).trim_end().to_owned(),
        };
        out.insert(name.trim().to_owned(), value);
    }
    out
}
