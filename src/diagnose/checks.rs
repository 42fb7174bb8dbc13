//! The checklist, in the order a developer would work through it.

use sha2::{Digest, Sha256};

use super::env::Setup;
use super::probe::{self, Failure};
use super::{describe_key, Finding, Status};
use crate::key::{self, KeyFormatError, Secret};

const OPENAI_URL: &str = "https://api.openai.com/v1";

/// Runs every check; live ones only without `offline`.
pub async fn run(setup: &Setup) -> Vec<Finding> {
    let mut out = vec![key_present(setup)];
    if let Some((key, _)) = setup.key() {
        out.extend(key_shape(key, setup.is_azure()));
        out.push(keygate_checksum(key));
        out.push(key_kind(setup, key));
    }
    if setup.is_azure() || setup.deployment.is_some() {
        out.extend(azure_settings(setup));
    }
    out.extend(base_url(setup));
    if !setup.offline {
        out.extend(reachability(setup).await);
        if let Some((key, _)) = setup.key() {
            out.extend(live(setup, key).await);
        }
    }
    out
}

// === 1. the key is there ===

fn key_present(setup: &Setup) -> Finding {
    let var = &setup.key_var;
    match (&setup.env_key, &setup.dotenv_key) {
        (None, None) => Finding::new(
            "key_present",
            Status::Fail,
            "API key",
            format!("`{var}` is not set, in the environment or in .env."),
        )
        .fix(format!("export {var}=<your key>  (or add it to .env)")),
        (Some(env), Some(file)) if env.expose() != file.expose() => Finding::new(
            "key_present",
            Status::Warn,
            "API key",
            format!(
                "`{var}` is set in the environment and, differently, in .env; the SDK uses the environment's ({}).",
                describe_key(env)
            ),
        )
        .fix("Remove one of them so there is no doubt which key is used."),
        (Some(key), _) => Finding::new(
            "key_present",
            Status::Pass,
            "API key",
            format!("`{var}` from the environment: {}", describe_key(key)),
        ),
        (None, Some(key)) => {
            Finding::new("key_present", Status::Pass, "API key", format!("`{var}` from .env: {}", describe_key(key)))
        }
    }
}

// === 2. the key's shape ===

fn look_alike(c: char) -> Option<char> {
    Some(match c {
        'а' => 'a',
        'е' => 'e',
        'о' => 'o',
        'р' => 'p',
        'с' => 'c',
        'х' => 'x',
        'у' => 'y',
        'ѕ' => 's',
        'і' => 'i',
        'ј' => 'j',
        'А' => 'A',
        'В' => 'B',
        'Е' => 'E',
        'К' => 'K',
        'М' => 'M',
        'Н' => 'H',
        'О' => 'O',
        'Р' => 'P',
        'С' => 'C',
        'Т' => 'T',
        'Х' => 'X',
        'ο' => 'o',
        'Ο' => 'O',
        'α' => 'a',
        'ν' => 'v',
        'Ι' => 'I',
        'Α' => 'A',
        'Β' => 'B',
        'Ε' => 'E',
        'Κ' => 'K',
        'Ν' => 'N',
        'Τ' => 'T',
        c if ('\u{FF01}'..='\u{FF5E}').contains(&c) => char::from_u32(c as u32 - 0xFEE0)?,
        _ => return None,
    })
}

/// Quote marks a key can pick up when copied from code or a shell line.
const QUOTES: [char; 3] = ['"', '\'', '`'];

/// The key with what `key_shape` reports around it (whitespace, stray quotes)
/// removed, for the checks that look at the key itself.
fn without_stray(text: &str) -> &str {
    text.trim().trim_matches(QUOTES).trim()
}

/// What the openai Python SDK does with a key it cannot put in a header, or
/// `None` when it can. It reads `OPENAI_API_KEY` as it is (no strip); its HTTP
/// client (httpx on h11) refuses a header value holding a control character
/// or ending in whitespace, and encodes header values as ASCII; either way
/// nothing is sent. (Checked against openai 3.57; the Node SDK 7.57 trims the
/// variable, so there the same key works.)
fn sdk_refusal(azure: bool, key: &str) -> Option<String> {
    if let Some(c) = key.chars().find(|c| !c.is_ascii()) {
        return Some(format!(
            "the openai Python SDK cannot send it: header values must be ASCII, so every call raises \
             `UnicodeEncodeError: 'ascii' codec can't encode character '\\u{:04x}'` before anything is sent",
            c as u32
        ));
    }
    // `Authorization: Bearer <key>`, or Azure's `api-key: <key>`.
    let value = if azure { key.to_owned() } else { format!("Bearer {key}") };
    let control = value.chars().find(|c| c.is_ascii_control() && !matches!(c, '\t' | '\x7f'));
    let edge = value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']);
    let what = match control {
        Some('\n') => "a newline",
        Some('\r') => "a carriage return",
        Some(_) => "a control character",
        None if edge => "whitespace at its start or end",
        None => return None,
    };
    let variable = if azure { "the key" } else { "`OPENAI_API_KEY`" };
    Some(format!(
        "the openai Python SDK sends {variable} as it is (it does not strip it), and its HTTP client refuses \
         a header value with {what} before anything is sent: every call raises \
         `openai.APIConnectionError: Connection error.`, caused by `LocalProtocolError: Illegal header value` \
         (the Node SDK trims the variable and would send the key without it)"
    ))
}

fn key_shape(key: &Secret, azure: bool) -> Vec<Finding> {
    let text = key.expose();
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if text != text.trim() {
        let what = if text.ends_with('\n') || text.ends_with('\r') {
            "a trailing newline"
        } else {
            "whitespace at its start or end"
        };
        problems.push(format!("the key has {what}"));
        fixes.push("remove it (e.g. `export KEY=\"$(printf %s \"$KEY\" | tr -d '[:space:]')\"`)");
    }
    let trimmed = text.trim();
    let first = trimmed.chars().next().filter(|c| QUOTES.contains(c));
    let last = trimmed.chars().next_back().filter(|c| QUOTES.contains(c));
    match (first, last) {
        (Some(a), Some(b)) if a == b && trimmed.len() >= 2 => {
            problems.push("the key is wrapped in quotes, which the SDK would send as part of it".to_owned());
            fixes.push("remove the quotes from the value");
        }
        (None, None) => {}
        (first, last) => {
            for (end, quote) in [("starts", first), ("ends", last)] {
                if let Some(quote) = quote {
                    problems
                        .push(format!("the key {end} with a stray `{quote}`, which the SDK would send as part of it"));
                }
            }
            fixes.push("remove the stray quote from the value");
        }
    }
    if trimmed.to_ascii_lowercase().starts_with("bearer ") {
        problems.push("the value starts with `Bearer `; the SDK adds that itself".to_owned());
        fixes.push("set only the key, without `Bearer `");
    }
    for (position, c) in text.chars().enumerate() {
        if matches!(c, '\u{200B}'..='\u{200D}' | '\u{FEFF}' | '\u{2060}' | '\u{00A0}') {
            problems.push(format!("character {} is invisible (U+{:04X})", position + 1, c as u32));
            fixes.push("retype or re-copy the key from its source");
        } else if let Some(ascii) = look_alike(c) {
            problems.push(format!(
                "character {} is `{c}` (U+{:04X}), which looks like `{ascii}` but is not ASCII",
                position + 1,
                c as u32
            ));
            fixes.push("replace the look-alike character with the ASCII one");
        } else if !c.is_ascii() && !c.is_whitespace() {
            problems.push(format!("character {} is non-ASCII (U+{:04X})", position + 1, c as u32));
            fixes.push("API keys are plain ASCII: re-copy the key");
        }
    }
    let sk_count = trimmed.matches("sk-").count();
    if sk_count > 1 {
        problems.push(format!("the value holds {sk_count} keys run together"));
        fixes.push("keep exactly one key");
    }
    if trimmed.starts_with("sk-proj-") && !trimmed.contains("-kg1") && trimmed.len() < 100 {
        problems.push(format!("an OpenAI project key is about 164 characters; this one has {}", trimmed.len()));
        fixes.push("the key looks truncated: copy it again in full");
    }
    if problems.is_empty() {
        let ambiguous = trimmed.chars().any(|c| matches!(c, '0' | 'O' | '1' | 'l' | 'I'));
        let note = if ambiguous && key::parse(trimmed).is_err() {
            " It contains characters that are easy to confuse (0/O, 1/l/I) if it was typed by hand."
        } else {
            ""
        };
        return vec![Finding::new(
            "key_shape",
            Status::Pass,
            "Key shape",
            format!("No stray whitespace, quotes or look-alike characters.{note}"),
        )];
    }
    fixes.dedup();
    let mut detail = problems.join("; ");
    if let Some(refusal) = sdk_refusal(azure, text) {
        detail = format!("{detail}; {refusal}");
    }
    vec![Finding::new("key_shape", Status::Fail, "Key shape", detail + ".").fix(fixes.join("; "))]
}

// === 3. keygate's checksum ===

fn keygate_checksum(key: &Secret) -> Finding {
    // What `key_shape` reports (whitespace, a stray quote) is its finding, not
    // a truncation or a typo: the checksum is checked on what is left.
    let text = without_stray(key.expose());
    let title = "keygate checksum";
    match key::parse(text) {
        Ok(parsed) if text != key.expose() => Finding::new(
            "keygate_checksum",
            Status::Pass,
            title,
            format!(
                "once the stray characters are removed (see `Key shape`), a well-formed keygate key (prefix `{}`, id `key_{}`)",
                parsed.prefix, parsed.id
            ),
        ),
        Ok(parsed) => Finding::new(
            "keygate_checksum",
            Status::Pass,
            title,
            format!("A well-formed keygate key (prefix {}, id key_{}).", parsed.prefix, parsed.id),
        ),
        Err(KeyFormatError::NotKeygate) => Finding::new(
            "keygate_checksum",
            Status::Skip,
            title,
            "Not a keygate key: no checksum, so a typo cannot be caught offline. A legacy key imported from \
             elsewhere works as it is, but only the live check can tell a mistyped one from an unknown one; \
             rotating it issues a checksummed key.",
        ),
        Err(KeyFormatError::ChecksumMismatch) => {
            let typos = key::locate_typo(text);
            // Positions count from the start of the value as set, stray characters included.
            let raw = key.expose();
            let offset = raw.find(text).map_or(0, |at| raw[..at].chars().count());
            let detail = match typos.as_slice() {
                [one] => format!(
                    "The checksum does not match: character {} is probably mistyped (you have `{}`, the checksum says `{}`).",
                    one.position + offset + 1,
                    one.found,
                    one.expected
                ),
                _ => "The checksum does not match: the key was mistyped or altered in more than one place.".to_owned(),
            };
            Finding::new("keygate_checksum", Status::Fail, title, detail)
                .fix("Copy the key again from where it was issued (it is shown only once; if lost, rotate it).")
        }
        Err(reason @ KeyFormatError::BadLength { .. }) => {
            Finding::new("keygate_checksum", Status::Fail, title, format!("{reason}.")).fix("Copy the whole key, once.")
        }
        Err(reason) => Finding::new("keygate_checksum", Status::Fail, title, format!("{reason}."))
            .fix("Copy the key again from where it was issued."),
    }
}

// === 4. the kind of key against the endpoint ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Keygate,
    KeygateAdmin,
    OpenAi,
    OpenAiAdmin,
    Azure,
    Unknown,
}

impl KeyKind {
    fn describe(self) -> &'static str {
        match self {
            Self::Keygate => "a keygate key",
            Self::KeygateAdmin => "a keygate admin key",
            Self::OpenAi => "an OpenAI key",
            Self::OpenAiAdmin => "an OpenAI admin key",
            Self::Azure => "an Azure OpenAI key",
            Self::Unknown => "a key of no format doctor knows",
        }
    }
}

fn key_kind_of(text: &str) -> KeyKind {
    let text = text.trim();
    if text.contains("-kg1") || key::parse(text).is_ok() {
        return if text.starts_with("sk-admin-") { KeyKind::KeygateAdmin } else { KeyKind::Keygate };
    }
    if text.starts_with("sk-admin-") {
        return KeyKind::OpenAiAdmin;
    }
    if text.contains("T3BlbkFJ") || ["sk-proj-", "sk-svcacct-", "sk-None-"].iter().any(|p| text.starts_with(p)) {
        return KeyKind::OpenAi;
    }
    if text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return KeyKind::Azure;
    }
    KeyKind::Unknown
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    OpenAi,
    Azure,
    Other,
}

fn target_of(setup: &Setup) -> Target {
    let url = setup.azure_endpoint.as_deref().or(setup.base_url.as_deref()).unwrap_or(OPENAI_URL);
    if setup.is_azure() || url.contains(".openai.azure.com") || url.contains("cognitiveservices.azure.com") {
        Target::Azure
    } else if url.contains("api.openai.com") {
        Target::OpenAi
    } else {
        Target::Other
    }
}

fn key_kind(setup: &Setup, key: &Secret) -> Finding {
    let kind = key_kind_of(key.expose());
    let target = target_of(setup);
    let title = "Kind of key for this endpoint";
    let fail = |detail: &str, fix: &str| Finding::new("key_kind", Status::Fail, title, detail).fix(fix);
    match (kind, target) {
        (KeyKind::KeygateAdmin | KeyKind::OpenAiAdmin, _) => fail(
            "This is an admin key: it can call the Administration API only, not models.",
            "Use a project key for model calls.",
        ),
        (KeyKind::OpenAi, Target::Azure) => fail(
            "An OpenAI key sent to Azure: Azure answers 401 `Access denied due to invalid subscription key`.",
            "Use the key of your Azure OpenAI resource (Azure portal → Keys and Endpoint), or your keygate key.",
        ),
        (KeyKind::Azure, Target::OpenAi) => fail(
            "An Azure OpenAI key (32 hex characters) sent to api.openai.com.",
            "Use AzureOpenAI with your Azure endpoint, or an OpenAI key for api.openai.com.",
        ),
        (KeyKind::Keygate, Target::OpenAi) => fail(
            "A keygate key sent to api.openai.com, which does not know it.",
            "Set OPENAI_BASE_URL (or base_url=) to your keygate gateway, ending in /v1.",
        ),
        (KeyKind::OpenAi, Target::Other) => Finding::new(
            "key_kind",
            Status::Warn,
            title,
            "An OpenAI key sent to a gateway: a keygate gateway only accepts keys it issued.",
        )
        .fix("Use the key your keygate administrator gave you."),
        (kind, target) => {
            let endpoint = match target {
                Target::OpenAi => "api.openai.com".to_owned(),
                Target::Azure => "an Azure OpenAI endpoint".to_owned(),
                Target::Other => {
                    let url = setup.base_url.as_deref().unwrap_or(OPENAI_URL);
                    match reqwest::Url::parse(url).ok().and_then(|u| Some((u.host_str()?.to_owned(), u.port()))) {
                        Some((host, Some(port))) => format!("the server at `{host}:{port}`"),
                        Some((host, None)) => format!("the server at `{host}`"),
                        None => format!("the server at `{url}`"),
                    }
                }
            };
            Finding::new("key_kind", Status::Pass, title, format!("{}, for {endpoint}", kind.describe()))
        }
    }
}

// === 5. Azure settings ===

fn looks_like_model(name: &str) -> bool {
    ["gpt-", "o1", "o3", "o4", "text-embedding-", "dall-e", "whisper", "tts-"].iter().any(|p| name.starts_with(p))
}

fn azure_settings(setup: &Setup) -> Vec<Finding> {
    let mut out = Vec::new();
    let title = "Azure settings";
    match setup.azure_endpoint.as_deref() {
        None => out.push(
            Finding::new("azure_endpoint", Status::Fail, title, "A deployment is given but no Azure endpoint.")
                .fix("Set AZURE_OPENAI_ENDPOINT=https://<resource>.openai.azure.com"),
        ),
        Some(endpoint) => match reqwest::Url::parse(endpoint) {
            Err(_) => out.push(
                Finding::new("azure_endpoint", Status::Fail, title, format!("`{endpoint}` is not a URL."))
                    .fix("Use https://<resource>.openai.azure.com"),
            ),
            Ok(url) if url.path().trim_end_matches('/').contains("/openai") => out.push(
                Finding::new(
                    "azure_endpoint",
                    Status::Fail,
                    title,
                    format!("The endpoint has a path (`{}`); the SDK adds /openai/... itself.", url.path()),
                )
                .fix("Give only the resource endpoint, e.g. https://<resource>.openai.azure.com"),
            ),
            Ok(url) if url.scheme() != "https" && !is_loopback(&url) => out.push(
                Finding::new(
                    "azure_endpoint",
                    Status::Warn,
                    title,
                    "The endpoint is plain http: the key travels unencrypted.",
                )
                .fix("Use https."),
            ),
            Ok(_) => out.push(Finding::new("azure_endpoint", Status::Pass, title, format!("Endpoint {endpoint}."))),
        },
    }
    match setup.api_version.as_deref() {
        None => out.push(
            Finding::new(
                "azure_api_version",
                Status::Fail,
                "Azure api-version",
                "No api-version: the SDK refuses to start, and raw calls get 404 `Resource not found`.",
            )
            .fix("Set OPENAI_API_VERSION=2024-10-21 (or pass api_version=)."),
        ),
        Some(v) if crate::config::AZURE_API_VERSIONS.contains(&v) || matches!(v, "preview" | "latest") => {
            out.push(Finding::new(
                "azure_api_version",
                Status::Pass,
                "Azure api-version",
                format!("`{v}` is a known api-version."),
            ))
        }
        Some(v) => out.push(
            Finding::new(
                "azure_api_version",
                Status::Fail,
                "Azure api-version",
                format!("`{v}` is not an api-version Azure serves (it answers 404 `Resource not found`)."),
            )
            .fix("Use a dated version such as 2024-10-21 (not a model version like 0613)."),
        ),
    }
    let deployment = setup.deployment.as_deref().or(setup.model.as_deref());
    match deployment {
        None => out.push(
            Finding::new("azure_deployment", Status::Warn, "Azure deployment", "No deployment given: the SDK uses each call's `model` as the deployment name.")
                .fix("Pass --deployment (or azure_deployment=) with your deployment's name."),
        ),
        Some(d) if looks_like_model(d) => out.push(
            Finding::new("azure_deployment", Status::Warn, "Azure deployment", format!("`{d}` looks like a model name; Azure wants the name you gave your deployment."))
                .fix("If your deployment is really called that, ignore this; otherwise use the deployment's name from the Azure portal."),
        ),
        Some(d) => out.push(Finding::new("azure_deployment", Status::Pass, "Azure deployment", format!("Deployment `{d}`."))),
    }
    out
}

// === 6. the base URL ===

fn is_loopback(url: &reqwest::Url) -> bool {
    matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]" | "::1"))
}

/// A base URL that goes on past `/v1` (`.../v1/chat/completions`): the base
/// it should be, and the endpoint path that follows it.
fn endpoint_in_base(url_text: &str) -> Option<(String, String)> {
    let url = reqwest::Url::parse(url_text).ok()?;
    let path = url.path().trim_end_matches('/');
    let at = path.find("/v1/")?;
    let endpoint = &path[at + "/v1".len()..];
    let mut api_base = url.clone();
    api_base.set_path(&path[..at + "/v1".len()]);
    api_base.set_query(None);
    Some((api_base.to_string(), endpoint.to_owned()))
}

fn base(setup: &Setup) -> String {
    setup.base_url.clone().unwrap_or_else(|| OPENAI_URL.to_owned())
}

fn base_url(setup: &Setup) -> Vec<Finding> {
    let mut out = Vec::new();
    if !setup.is_azure() {
        let url_text = base(setup);
        let title = "Base URL";
        match reqwest::Url::parse(&url_text) {
            Err(_) => out.push(
                Finding::new("base_url", Status::Fail, title, format!("`{url_text}` is not a URL."))
                    .fix("Set OPENAI_BASE_URL=https://<host>/v1"),
            ),
            Ok(url) => {
                let path = url.path();
                if url_text.ends_with("//") {
                    out.push(
                        Finding::new("base_url", Status::Warn, title, "The base URL ends in several slashes.")
                            .fix("End it in /v1 exactly."),
                    );
                } else if let Some((api_base, endpoint)) = endpoint_in_base(&url_text) {
                    out.push(
                        Finding::new(
                            "base_url",
                            Status::Fail,
                            title,
                            format!(
                                "`{url_text}` names an endpoint (`{endpoint}`), not the API's base: the SDK appends \
                                 the endpoint itself, so it would call `{}/chat/completions`",
                                url_text.trim_end_matches('/')
                            ),
                        )
                        .fix(format!("use `{api_base}` as the base URL")),
                    );
                } else if !path.trim_end_matches('/').ends_with("/v1") {
                    out.push(
                        Finding::new("base_url", Status::Fail, title, format!("`{url_text}` does not end in /v1: the SDK appends /chat/completions to it, so calls miss the API."))
                            .fix(format!("Use {}/v1", url_text.trim_end_matches('/'))),
                    );
                } else if url.scheme() == "http" && !is_loopback(&url) {
                    out.push(
                        Finding::new(
                            "base_url",
                            Status::Warn,
                            title,
                            "Plain http to another machine: the key travels unencrypted.",
                        )
                        .fix("Use https."),
                    );
                } else {
                    out.push(Finding::new("base_url", Status::Pass, title, url_text.clone()));
                }
            }
        }
    }
    if setup.proxies.is_empty() {
        out.push(Finding::new("proxy", Status::Pass, "Proxy", "No HTTP(S)_PROXY is set."));
    } else {
        let names: Vec<&str> = setup.proxies.iter().map(|(n, _)| n.as_str()).collect();
        out.push(
            Finding::new(
                "proxy",
                Status::Warn,
                "Proxy",
                format!(
                    "{} set: requests go through a proxy, and some proxies strip or rewrite Authorization.",
                    names.join(", ")
                ),
            )
            .fix("If calls fail with `You didn't provide an API key`, exempt the API host with NO_PROXY."),
        );
    }
    out
}

async fn reachability(setup: &Setup) -> Vec<Finding> {
    let url_text = setup.azure_endpoint.clone().unwrap_or_else(|| base(setup));
    let Ok(url) = reqwest::Url::parse(&url_text) else { return Vec::new() };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else { return Vec::new() };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let title = "Network";
    let addrs = match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(addrs) => addrs.collect::<Vec<_>>(),
        Err(_) => {
            return vec![Finding::new("network", Status::Fail, title, format!("`{host}` does not resolve (DNS)."))
                .fix("Check the host name, and your DNS or VPN.")]
        }
    };
    for addr in &addrs {
        if let Ok(Ok(_)) =
            tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await
        {
            return vec![Finding::new(
                "network",
                Status::Pass,
                title,
                format!("{host}:{port} resolves and accepts connections."),
            )];
        }
    }
    vec![Finding::new(
        "network",
        Status::Fail,
        title,
        format!("{host}:{port} resolves but does not accept connections."),
    )
    .fix("Is the server running, and is a firewall in the way?")]
}

// === 7-8. live calls ===

/// `GET` on the models list, as the SDK sends it (`api-key` on Azure).
fn models_request(setup: &Setup, client: &reqwest::Client, key: &str) -> (String, reqwest::RequestBuilder) {
    if let Some(endpoint) = &setup.azure_endpoint {
        let root = endpoint.trim_end_matches('/');
        let version = setup.api_version.as_deref().unwrap_or("");
        let url = format!("{root}/openai/models?api-version={version}");
        let request = client.get(&url).header("api-key", key);
        return (url, request);
    }
    let url = format!("{}/models", base(setup).trim_end_matches('/'));
    let request = with_identity(setup, client.get(&url), key);
    (url, request)
}

/// The headers the SDK adds from `OPENAI_ORG_ID`, `OPENAI_PROJECT_ID` and the key.
fn with_identity(setup: &Setup, mut request: reqwest::RequestBuilder, key: &str) -> reqwest::RequestBuilder {
    if let Some(org) = &setup.organization {
        request = request.header("OpenAI-Organization", org);
    }
    if let Some(project) = &setup.project {
        request = request.header("OpenAI-Project", project);
    }
    request.bearer_auth(key)
}

/// Every live call sends the key exactly as the SDK would: untrimmed.
async fn live(setup: &Setup, key: &Secret) -> Vec<Finding> {
    let client = probe::client();
    let key = key.expose();
    if let Some(refusal) = sdk_refusal(setup.is_azure(), key) {
        return unsendable(setup, &client, key, &refusal).await;
    }
    let mut out = Vec::new();
    let (url, models) = models_request(setup, &client, key);
    out.push(call("live_models", "Listing models", &url, models).await);
    if let Some(endpoint) = &setup.azure_endpoint {
        let root = endpoint.trim_end_matches('/');
        let version = setup.api_version.as_deref().unwrap_or("");
        if let Some(deployment) = setup.deployment.as_deref().or(setup.model.as_deref()) {
            let url = format!("{root}/openai/deployments/{deployment}/chat/completions?api-version={version}");
            let chat = client
                .post(&url)
                .header("api-key", key)
                .json(&serde_json::json!({"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}));
            out.push(call("live_call", &format!("A call to deployment `{deployment}`"), &url, chat).await);
        }
        return out;
    }
    let root = base(setup);
    let root = root.trim_end_matches('/');
    let names_endpoint = endpoint_in_base(root).is_some();
    out.push(key_access(&client, root, key, setup.model.as_deref(), names_endpoint).await);
    if let Some(model) = &setup.model {
        let (url, body) = if model.contains("embedding") {
            (format!("{root}/embeddings"), serde_json::json!({"model": model, "input": "ping"}))
        } else {
            (
                format!("{root}/chat/completions"),
                serde_json::json!({"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}),
            )
        };
        let request = with_identity(setup, client.post(&url), key).json(&body);
        out.push(call("live_call", &format!("A call to `{model}`"), &url, request).await);
    }
    out.push(header_integrity(&client, root, key, names_endpoint).await);
    out
}

/// The live findings for a key the SDK cannot send: nothing is sent as the
/// SDK would, so nothing passes; one call with the stray characters removed
/// tells whether removing them is the whole fix.
async fn unsendable(setup: &Setup, client: &reqwest::Client, key: &str, refusal: &str) -> Vec<Finding> {
    let cleaned = without_stray(key);
    let after = match sdk_refusal(setup.is_azure(), cleaned) {
        Some(_) => String::new(),
        None => {
            let (_, request) = models_request(setup, client, cleaned);
            match probe::send(request).await {
                Ok(answer) if (200..300).contains(&answer.status) => {
                    "; with the stray characters removed, listing models works".to_owned()
                }
                Ok(answer) => {
                    format!("; with the stray characters removed, listing models still fails (HTTP {})", answer.status)
                }
                Err(_) => String::new(),
            }
        }
    };
    let mut out =
        vec![Finding::new("live_models", Status::Fail, "Listing models", format!("not sent: {refusal}{after}"))
            .fix("remove the stray characters from the key (see `Key shape`)")];
    if let Some(model) = setup.deployment.as_deref().or(setup.model.as_deref()) {
        out.push(Finding::new(
            "live_call",
            Status::Fail,
            format!("A call to `{model}`"),
            "not sent: the SDK cannot send this key (see `Listing models`)",
        ));
    }
    if !setup.is_azure() {
        out.push(Finding::new(
            "header_integrity",
            Status::Skip,
            "Authorization header integrity",
            "the SDK cannot send this key, so no header would reach the server: skipped",
        ));
    }
    out
}

/// Makes one call and says what its answer (or its lack of one) means.
async fn call(id: &'static str, what: &str, url: &str, request: reqwest::RequestBuilder) -> Finding {
    match probe::send(request).await {
        Ok(answer) => probe::interpret(id, what, url, &answer),
        Err(Failure::NoConnection) if url.starts_with("https://") && probe::speaks_plain_http(url).await => {
            let authority = reqwest::Url::parse(url)
                .ok()
                .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
                .unwrap_or_default();
            Finding::new(
                id,
                Status::Fail,
                what,
                format!(
                    "the TLS handshake failed: `{authority}` answers plain HTTP, not HTTPS, and the URL starts \
                     with `https://` (the SDK raises `openai.APIConnectionError: Connection error.`)"
                ),
            )
            .fix("use `http://` instead of `https://` in the URL (on loopback or a trusted network only), or serve keygate with TLS (`tls_cert`, `tls_key`)")
        }
        Err(problem) => Finding::new(id, Status::Fail, what, format!("The call {problem}."))
            .fix("Check the URL and the network (see above)."),
    }
}

/// Why one of keygate's own routes (`/v1/keygate/...`) gave no answer: the
/// server is not keygate, or the base URL led the call elsewhere.
fn no_extension(url: &str, status: u16, base_names_endpoint: bool) -> String {
    match status {
        404 if base_names_endpoint => {
            format!("nothing at `{url}`, because the base URL names an endpoint (see `Base URL`)")
        }
        404 => format!("nothing at `{url}`: not a keygate gateway, or the base URL does not end in `/v1`"),
        status => format!("`{url}` answered HTTP {status}: not a keygate gateway"),
    }
}

/// Asks a keygate gateway what the key may do (`GET /v1/keygate/key`): a key
/// that may list models but call none passes every other check without
/// `--model`, and fails only at its first real call.
async fn key_access(
    client: &reqwest::Client,
    root: &str,
    key: &str,
    model: Option<&str>,
    names_endpoint: bool,
) -> Finding {
    let title = "What the key may do";
    let url = format!("{root}/keygate/key");
    let skip = |detail: String| Finding::new("key_access", Status::Skip, title, detail);
    let answer = match probe::send(client.get(&url).bearer_auth(key)).await {
        Ok(answer) => answer,
        Err(problem) => return skip(format!("the call to `{url}` {problem}: skipped")),
    };
    match answer.status {
        200 => {}
        401 | 403 => return skip("the key was refused (see `Listing models`): skipped".to_owned()),
        status => {
            let next = match model {
                Some(model) => format!("the call to `{model}` shows whether the key may call it"),
                None => "pass `--model <a model the key should call>` to check with one minimal call".to_owned(),
            };
            return skip(format!("{}; {next}", no_extension(&url, status, names_endpoint)));
        }
    }
    let body = &answer.body;
    let strings = |field: &str| -> Option<Vec<String>> {
        body[field].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).map(|v| format!("`{v}`")).collect())
    };
    let model_calls = strings("model_calls").unwrap_or_default();
    let permissions = body["permissions"].as_str().unwrap_or("?");
    let scopes = strings("scopes").unwrap_or_default();
    let key_models = strings("models");
    let project_models = strings("project_models");
    let id = body["id"].as_str().unwrap_or("?");
    if body["can_call_models"].as_bool() == Some(false) {
        let reason = if !model_calls.is_empty() {
            None
        } else if permissions == "restricted" {
            Some(format!("scopes {}", scopes.join(", ")))
        } else {
            Some(format!("permissions `{permissions}`"))
        };
        let reason = reason
            .or_else(|| {
                key_models.as_ref().filter(|m| m.is_empty()).map(|_| "its model allow-list is empty".to_owned())
            })
            .or_else(|| {
                project_models.as_ref().filter(|m| m.is_empty()).map(|_| "its project allows no model".to_owned())
            })
            .unwrap_or_else(|| "the gateway says so".to_owned());
        return Finding::new(
            "key_access",
            Status::Warn,
            title,
            format!("this key (`{id}`) may list models but cannot call any model ({reason})"),
        )
        .fix(
            "if the key is meant to call models, ask an admin of the gateway to give it `model.request` \
             (or a per-call scope such as `api.model.chat.request`) and at least one model",
        );
    }
    let models = match (&key_models, &project_models) {
        (None, None) => "any model".to_owned(),
        (Some(key), None) => format!("models {}", key.join(", ")),
        (None, Some(project)) => format!("models {} (its project's list)", project.join(", ")),
        (Some(key), Some(project)) => {
            format!("models {} (within its project's {})", key.join(", "), project.join(", "))
        }
    };
    let mut detail = format!("`{id}`, permissions `{permissions}`: may call {} on {models}", model_calls.join(", "));
    let limits = describe_limits(&body["rate_limits"]);
    if !limits.is_empty() {
        detail.push_str(&format!("; limits {limits}"));
    }
    if let Some(budget) = body["monthly_budget_usd"].as_f64() {
        detail.push_str(&format!("; budget ${budget} a month"));
    }
    Finding::new("key_access", Status::Pass, title, detail)
}

/// `60 requests/minute, 10000 tokens/minute` from a `rate_limits` object.
fn describe_limits(limits: &serde_json::Value) -> String {
    [
        ("max_requests_per_1_minute", "requests/minute"),
        ("max_tokens_per_1_minute", "tokens/minute"),
        ("max_requests_per_1_day", "requests/day"),
        ("max_tokens_per_1_day", "tokens/day"),
        ("max_concurrent_requests", "concurrent requests"),
    ]
    .iter()
    .filter_map(|(field, unit)| limits[*field].as_u64().map(|n| format!("{n} {unit}")))
    .collect::<Vec<_>>()
    .join(", ")
}

/// Asks a keygate gateway what Authorization header it received (its length
/// and a digest prefix, never the value) and compares with what was sent.
async fn header_integrity(client: &reqwest::Client, root: &str, key: &str, base_names_endpoint: bool) -> Finding {
    let title = "Authorization header integrity";
    let sent = format!("Bearer {key}");
    let url = format!("{root}/keygate/echo-auth");
    let answer = match probe::send(client.get(&url).header("authorization", &sent)).await {
        Ok(answer) => answer,
        Err(problem) => return Finding::new("header_integrity", Status::Skip, title, format!("The check {problem}.")),
    };
    match answer.status {
        200 => {
            let digest = hex::encode(Sha256::digest(sent.as_bytes()));
            let same = answer.body["length"].as_u64() == Some(sent.len() as u64)
                && answer.body["sha256_prefix"].as_str().is_some_and(|p| digest.starts_with(p));
            if same {
                Finding::new("header_integrity", Status::Pass, title, "keygate received the Authorization header exactly as sent.")
            } else {
                Finding::new("header_integrity", Status::Fail, title, "keygate received a different Authorization header than was sent: something on the way rewrites it.")
                    .fix("Check proxies and API gateways between you and keygate.")
            }
        }
        401 if answer.body["error"]["message"].as_str().is_some_and(|m| m.starts_with("You didn't provide an API key")) => Finding::new(
            "header_integrity",
            Status::Fail,
            title,
            "keygate received no Authorization header although one was sent: a proxy or gateway on the way strips it.",
        )
        .fix("Configure the proxy to pass Authorization through, or bypass it with NO_PROXY."),
        401 => Finding::new("header_integrity", Status::Skip, title, "The key was refused, so the header could not be compared (see the live checks)."),
        status => Finding::new(
            "header_integrity",
            Status::Skip,
            title,
            format!("{}: skipped", no_extension(&url, status, base_names_endpoint)),
        ),
    }
}

#[cfg(test)]
mod tests;
