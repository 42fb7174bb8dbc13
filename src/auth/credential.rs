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

/// Azure clients send `api-key: <key>`; it wins over `Authorization` (old
/// Python SDKs send both with the same value).
pub fn extract_azure(headers: &HeaderMap) -> Result<Presented, Denial> {
    match headers.get("api-key") {
        Some(value) => {
            let value = String::from_utf8_lossy(value.as_bytes());
            let value = value.trim();
            if value.is_empty() {
                return Err(Denial::MalformedAuthorization { detail: "the api-key header is empty" });
            }
            Ok(Presented(Secret::new(value)))
        }
        None => extract(headers),
    }
}

pub fn extract(headers: &HeaderMap) -> Result<Presented, Denial> {
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
