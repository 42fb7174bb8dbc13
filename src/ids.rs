//! Identifiers keygate mints, in OpenAI's shapes: `req_<32 hex>`, `proj_<24>`,
//! `svc_acct_<24>`, `audit_log-<..>`, `org-<24>`, and a key's public id
//! (`key_<12 base62>`), which the key format (`crate::key`) embeds in every key.

use std::fmt;

use rand::{distributions::Alphanumeric, rngs::OsRng, Rng, RngCore};

/// The alphabet of public ids, and of the key text around them.
pub const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn alnum(len: usize) -> String {
    OsRng.sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// The id every response carries as `x-request-id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Box<str>);

impl RequestId {
    pub fn new() -> Self {
        // The first 6 bytes are the time in milliseconds, so ids arrive in
        // order and the tables keyed by them (usage, denials) grow at their
        // right edge instead of touching a random index page per row. The
        // other 10 are random: a request id is not a secret, so the thread's
        // CSPRNG (no syscall per request) will do.
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        rand::thread_rng().fill_bytes(&mut bytes[6..]);
        Self(format!("req_{}", hex::encode(bytes)).into())
    }

    /// Accepts only the canonical form, so a request id from a user can be
    /// used as a lookup key safely.
    pub fn parse(value: &str) -> Option<Self> {
        let hex = value.strip_prefix("req_")?;
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| Self(value.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The public part of a key: 12 base62 characters. Names a key in logs, usage,
/// audit and `explain`; never authorizes anything alone. Held inline and
/// `Copy`: the index, limiter buckets and usage rows name keys by it on every
/// request, and a heap string there would be an allocation per use.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicId([u8; PublicId::LEN]);

impl PublicId {
    pub const LEN: usize = 12;

    /// Accepts the bare id or the API form `key_<id>`.
    pub fn parse(value: &str) -> Option<Self> {
        let bare = value.strip_prefix("key_").unwrap_or(value);
        if !bare.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        bare.as_bytes().try_into().ok().map(Self)
    }

    pub fn random() -> Self {
        let mut rng = OsRng;
        Self(std::array::from_fn(|_| BASE62[rng.gen_range(0..BASE62.len())]))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII alphanumerics get in (`parse`, `random`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The id as the Administration API shows it.
    pub fn api_id(&self) -> String {
        format!("key_{}", self.as_str())
    }
}

impl fmt::Display for PublicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key_{}", self.as_str())
    }
}

impl fmt::Debug for PublicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicId({})", self.as_str())
    }
}

pub fn project_id() -> String {
    format!("proj_{}", alnum(24))
}

pub fn service_account_id() -> String {
    format!("svc_acct_{}", alnum(24))
}

pub fn organization_id() -> String {
    format!("org-{}", alnum(24))
}

pub fn user_id() -> String {
    format!("user-{}", alnum(24))
}

pub fn audit_log_id() -> String {
    format!("audit_log-{}", alnum(24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_is_req_and_32_lowercase_hex() {
        let id = RequestId::new();
        assert_eq!(id.as_str().len(), 36);
        assert_eq!(RequestId::parse(id.as_str()), Some(id));
        assert_eq!(RequestId::parse("req_ABC"), None);
        assert_eq!(RequestId::parse(&format!("req_{}", "G".repeat(32))), None);
    }

    #[test]
    fn request_ids_sort_by_time_and_differ_within_a_millisecond() {
        let earlier = RequestId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = RequestId::new();
        assert!(earlier.as_str() < later.as_str(), "{earlier} < {later}");
        let burst: std::collections::HashSet<String> = (0..1000).map(|_| RequestId::new().to_string()).collect();
        assert_eq!(burst.len(), 1000);
    }

    #[test]
    fn public_id_accepts_api_form() {
        let id = PublicId::random();
        assert_eq!(PublicId::parse(&id.api_id()), Some(id));
        assert_eq!(PublicId::parse(id.as_str()), Some(id));
        assert_eq!(PublicId::parse("key_short"), None);
    }
}
