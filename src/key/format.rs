//! Key layout v1 (see `shared/spec/key-format.md` §7):
//!
//! ```text
//! key    = prefix "kg1" id secret check
//! prefix = ^[a-z][a-z0-9]{0,15}(-[a-z0-9]{1,16}){0,2}-$   e.g. "sk-", "sk-prod-"
//! id     = 12 base62, public, names the key (the API object's id is "key_" + id)
//! secret = 43 base62 from the OS RNG (256 bits)
//! check  = CRC-32 of prefix + "kg1" + id + secret, base62, 6 chars, zero-padded
//! ```

use std::fmt;

use rand::{rngs::OsRng, Rng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Secret;
use crate::ids::{PublicId, BASE62};

const MARKER: &str = "kg";
const VERSION: u8 = b'1';
const ID_LEN: usize = PublicId::LEN;
const SECRET_LEN: usize = 43;
const CHECK_LEN: usize = 6;
/// Length of everything after the prefix in a v1 key.
pub const BODY_LEN: usize = MARKER.len() + 1 + ID_LEN + SECRET_LEN + CHECK_LEN;
pub const DEFAULT_PREFIX: &str = "sk-";
const MAX_PREFIX_LEN: usize = 34;

/// Why a presented string is not a well-formed keygate key. Each variant is a
/// private reason: the public 401 never says which rule failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("the key is empty")]
    Empty,
    #[error("the key contains a non-ASCII character at position {position} (a look-alike letter or an invisible character?)")]
    NonAscii { position: usize },
    #[error("the key contains whitespace at position {position}")]
    Whitespace { position: usize },
    #[error("the key is wrapped in quotes")]
    Quoted,
    /// No `kg` marker after the last `-`: not a keygate v1 key at all (an OpenAI
    /// key, an Azure key, or an imported legacy key).
    #[error("not a keygate key (no `kg` marker after the prefix)")]
    NotKeygate,
    #[error("unknown key format version `{0}`")]
    UnknownVersion(char),
    #[error("the key has {actual} characters after its prefix; a v1 key has {expected} (truncated or pasted twice?)")]
    BadLength { expected: usize, actual: usize },
    #[error("the key contains `{found}` at position {position}, which a keygate key never contains")]
    BadCharacter { position: usize, found: char },
    #[error("the key prefix is malformed: {0}")]
    BadPrefix(PrefixError),
    #[error("checksum mismatch: the key was mistyped or altered")]
    ChecksumMismatch,
}

/// A prefix that fails the prefix rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("a prefix must end with `-`")]
    MissingDash,
    #[error("a prefix is at most {MAX_PREFIX_LEN} characters")]
    TooLong,
    #[error("a prefix must start with a lower-case letter")]
    BadStart,
    #[error("a prefix has at most three parts of lower-case letters and digits, each 1 to 16 long, separated by `-`")]
    BadShape,
}

/// Checks the prefix rule without allocating (every presented key is checked).
fn check_prefix(value: &str) -> Result<(), PrefixError> {
    let Some(stem) = value.strip_suffix('-') else {
        return Err(PrefixError::MissingDash);
    };
    if value.len() > MAX_PREFIX_LEN {
        return Err(PrefixError::TooLong);
    }
    if !stem.as_bytes().first().is_some_and(u8::is_ascii_lowercase) {
        return Err(PrefixError::BadStart);
    }
    let part_ok =
        |p: &str| (1..=16).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    for (n, part) in stem.split('-').enumerate() {
        if n >= 3 || !part_ok(part) {
            return Err(PrefixError::BadShape);
        }
    }
    Ok(())
}

/// A validated key prefix such as `sk-` or `sk-prod-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyPrefix(Box<str>);

impl KeyPrefix {
    pub fn parse(value: &str) -> Result<Self, PrefixError> {
        check_prefix(value)?;
        Ok(Self(value.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        Self(DEFAULT_PREFIX.into())
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a whole presented key: what the store and the index hold.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// Constant-time comparison, for where a digest meets one derived from input.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({}..)", hex::encode(&self.0[..4]))
    }
}

/// A well-formed v1 key, borrowed from the presented string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    pub prefix: &'a str,
    pub id: &'a str,
}

/// A freshly generated key. `secret` is shown to the user once and never stored.
#[derive(Debug)]
pub struct GeneratedKey {
    pub secret: Secret,
    pub id: PublicId,
    pub digest: KeyDigest,
    pub last4: String,
}

/// Generates a key under `prefix`, with `id` as its public id (a rotation keeps
/// the id and draws a new secret).
pub fn generate(prefix: &KeyPrefix, id: &PublicId) -> GeneratedKey {
    let mut key = String::with_capacity(prefix.as_str().len() + BODY_LEN);
    key.push_str(prefix.as_str());
    key.push_str(MARKER);
    key.push(char::from(VERSION));
    key.push_str(id.as_str());
    key.push_str(&random_base62(SECRET_LEN));
    let check = checksum(&key);
    key.push_str(&check);
    let last4 = key[key.len() - 4..].to_owned();
    GeneratedKey { digest: KeyDigest::of(&key), secret: Secret::new(key), id: *id, last4 }
}

/// Checks a presented key against the v1 rules, in the order that gives the
/// most useful private reason, without any lookup.
pub fn parse(key: &str) -> Result<ParsedKey<'_>, KeyFormatError> {
    if key.is_empty() {
        return Err(KeyFormatError::Empty);
    }
    if let Some((position, _)) = key.char_indices().find(|(_, c)| !c.is_ascii()) {
        return Err(KeyFormatError::NonAscii { position });
    }
    if let Some(position) = key.bytes().position(|b| b.is_ascii_whitespace()) {
        return Err(KeyFormatError::Whitespace { position });
    }
    if key.len() >= 2 && matches!(key.as_bytes()[0], b'"' | b'\'') && key.ends_with(char::from(key.as_bytes()[0])) {
        return Err(KeyFormatError::Quoted);
    }
    let body_start = key.rfind('-').map_or(0, |i| i + 1);
    let (prefix, body) = key.split_at(body_start);
    if !body.starts_with(MARKER) {
        return Err(KeyFormatError::NotKeygate);
    }
    match body.as_bytes().get(MARKER.len()) {
        Some(&VERSION) => {}
        Some(&other) => return Err(KeyFormatError::UnknownVersion(char::from(other))),
        None => return Err(KeyFormatError::BadLength { expected: BODY_LEN, actual: body.len() }),
    }
    if body.len() != BODY_LEN {
        return Err(KeyFormatError::BadLength { expected: BODY_LEN, actual: body.len() });
    }
    if let Some(i) = body.bytes().position(|b| !b.is_ascii_alphanumeric()) {
        return Err(KeyFormatError::BadCharacter { position: body_start + i, found: char::from(body.as_bytes()[i]) });
    }
    check_prefix(prefix).map_err(KeyFormatError::BadPrefix)?;
    let (signed, check) = key.split_at(key.len() - CHECK_LEN);
    let expected = crc32fast::hash(signed.as_bytes());
    if decode_base62(check) != Some(u64::from(expected)) {
        return Err(KeyFormatError::ChecksumMismatch);
    }
    let id_start = MARKER.len() + 1;
    Ok(ParsedKey { prefix, id: &body[id_start..id_start + ID_LEN] })
}

/// The public id a string names if it has a v1 key's shape, whatever its
/// checksum says: `explain` uses it to name the key a typo was copied from.
pub fn claimed_id(key: &str) -> Option<PublicId> {
    let body = &key[key.rfind('-').map_or(0, |i| i + 1)..];
    if body.len() != BODY_LEN || !body.starts_with(MARKER) {
        return None;
    }
    let start = MARKER.len() + 1;
    PublicId::parse(body.get(start..start + ID_LEN)?)
}

/// CRC-32 of `signed`, as 6 base62 characters, most significant first.
pub fn checksum(signed: &str) -> String {
    let mut n = u64::from(crc32fast::hash(signed.as_bytes()));
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

fn decode_base62(s: &str) -> Option<u64> {
    s.bytes().try_fold(0u64, |acc, b| {
        // BASE62 is 0-9, A-Z, a-z.
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            b'a'..=b'z' => b - b'a' + 36,
            _ => return None,
        };
        acc.checked_mul(62)?.checked_add(u64::from(digit))
    })
}

fn random_base62(len: usize) -> String {
    let mut rng = OsRng;
    (0..len).map(|_| char::from(BASE62[rng.gen_range(0..BASE62.len())])).collect()
}

/// The display form stored and shown by the API: the key up to the end of the
/// public id, `...`, then the last four characters.
pub fn redact(prefix: &str, id: &PublicId, last4: &str) -> String {
    format!("{prefix}{MARKER}{}{}...{last4}", char::from(VERSION), id.as_str())
}

/// OpenAI's masking in `Incorrect API key provided: ...`: values of up to 12
/// characters are echoed, longer ones keep their first 8 and last 4 characters
/// with one `*` per hidden character, up to [`MASK_STARS`]: a key of any real
/// length is masked as OpenAI masks it, and a 100 KB header is not echoed.
pub fn mask_for_error(presented: &str) -> String {
    let count = presented.chars().count();
    if count <= 12 {
        return presented.to_owned();
    }
    let mut out: String = presented.chars().take(8).collect();
    out.extend(std::iter::repeat_n('*', (count - 12).min(MASK_STARS)));
    out.extend(presented.chars().skip(count - 4));
    out
}

/// OpenAI's project keys are 164 characters; any longer value is no key.
pub const MASK_STARS: usize = 200;

/// Where a key that fails its checksum was probably mistyped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypoSuggestion {
    /// 0-based character position in the presented key.
    pub position: usize,
    pub found: char,
    pub expected: char,
}

/// Searches every single-character substitution of a key whose checksum fails
/// and returns the positions where exactly one substitution makes it valid.
/// Used by `keygate doctor`; the gateway itself never corrects a key.
pub fn locate_typo(key: &str) -> Vec<TypoSuggestion> {
    if !matches!(parse(key), Err(KeyFormatError::ChecksumMismatch)) {
        return Vec::new();
    }
    let body_start = key.rfind('-').map_or(0, |i| i + 1);
    let mut bytes = key.as_bytes().to_vec();
    let mut found = Vec::new();
    for position in body_start + MARKER.len() + 1..bytes.len() {
        let original = bytes[position];
        for &candidate in BASE62 {
            if candidate == original {
                continue;
            }
            bytes[position] = candidate;
            if std::str::from_utf8(&bytes).is_ok_and(|k| parse(k).is_ok()) {
                found.push(TypoSuggestion { position, found: char::from(original), expected: char::from(candidate) });
            }
        }
        bytes[position] = original;
    }
    found
}
