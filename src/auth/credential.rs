//! Reading the credential a client sent: `Authorization: Bearer <key>`, or Basic
//! auth with the key as the password (OpenAI accepts both).

use base64::Engine as _;
use http::{header::AUTHORIZATION, HeaderMap};

use super::Denial;
use crate::key::{mask_for_error, Secret};

/// The key string as presented, before any format check.
#[derive(Debug)]
pub struct Presented(Secret);

impl Presented {
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The masked form OpenAI echoes in its 401 message.
    pub fn mask(&self) -> String {
        mask_for_error(self.0.expose())
    }
}

/// The key a request presents, by one rule on both dialects: `Authorization`
/// (Bearer, or Basic with the key as password), and on Azure routes also
/// `api-key`. Older Azure SDKs send both with the same key, which is accepted
/// on either dialect; two different keys, or either header twice, are refused
/// (keygate and whatever is behind it could otherwise read different keys).
pub fn presented(headers: &HeaderMap, azure: bool) -> Result<Presented, Denial> {
    let once = |name: &str| headers.get_all(name).iter().nth(1).is_none();
    if !once(AUTHORIZATION.as_str()) {
        return Err(Denial::MalformedAuthorization { detail: "the Authorization header was sent more than once" });
    }
    if !once("api-key") {
        return Err(Denial::MalformedAuthorization { detail: "the api-key header was sent more than once" });
    }
    let api_key = headers.get("api-key").map(|_| from_api_key(headers)).transpose()?;
    let authorization = headers.get(AUTHORIZATION).map(|_| extract(headers)).transpose()?;
    match (authorization, api_key) {
        (Some(a), Some(b)) if a.expose() == b.expose() => Ok(a),
        (Some(_), Some(_)) => {
            Err(Denial::MalformedAuthorization { detail: "the Authorization and api-key headers carry different keys" })
        }
        (Some(key), None) => Ok(key),
        (None, Some(key)) if azure => Ok(key),
        // OpenAI reads only Authorization: an api-key header alone is no key there.
        (None, _) => Err(Denial::MissingCredential),
    }
}

fn from_api_key(headers: &HeaderMap) -> Result<Presented, Denial> {
    let value = headers.get("api-key").map(|v| String::from_utf8_lossy(v.as_bytes())).unwrap_or_default();
    let value = value.trim();
    if value.is_empty() {
        return Err(Denial::MalformedAuthorization { detail: "the api-key header is empty" });
    }
    Ok(Presented(Secret::new(value)))
}

/// Whether a query string carries a key: a parameter named like one, or any
/// parameter name or value with a keygate key's format (`?sk-...` alone is a
/// name). Such requests are refused: query strings end up in logs, histories
/// and upstream URLs.
pub fn key_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        form_urlencoded::parse(query.as_bytes()).any(|(name, value)| {
            matches!(name.to_ascii_lowercase().as_str(), "api-key" | "api_key" | "apikey" | "key")
                || crate::key::parse(name.trim()).is_ok()
                || crate::key::parse(value.trim()).is_ok()
        })
    })
}

fn extract(headers: &HeaderMap) -> Result<Presented, Denial> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(Denial::MissingCredential);
    };
    // Non-UTF-8 bytes are kept lossily so the key check (and `explain`) can
    // still say "non-ASCII character"; the request is refused either way.
    let value = String::from_utf8_lossy(value.as_bytes());
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let token = rest.trim_start();
    if scheme.eq_ignore_ascii_case("bearer") {
        if token.is_empty() {
            return Err(Denial::MalformedAuthorization { detail: "the Bearer token is empty" });
        }
        return Ok(Presented(Secret::new(token)));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded =
            base64::engine::general_purpose::STANDARD.decode(token).ok().and_then(|b| String::from_utf8(b).ok());
        return match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((_, password)) if !password.is_empty() => Ok(Presented(Secret::new(password))),
            _ => Err(Denial::MalformedAuthorization {
                detail: "Basic credentials without a password (the key goes in the password)",
            }),
        };
    }
    if scheme.is_empty() {
        return Err(Denial::MalformedAuthorization { detail: "the Authorization header is empty" });
    }
    Err(Denial::MalformedAuthorization { detail: "the Authorization header does not start with `Bearer ` (a proxy may have rewritten it, or the key was sent without the scheme)" })
}
