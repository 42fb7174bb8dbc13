//! Keys as a product: the v1 text format (prefix, marker, public id, secret,
//! checksum), generation from the OS RNG, offline validation, the digest that is
//! stored, and the two public renderings (`redacted_value` and the masked form
//! OpenAI puts in its 401 message).
//!
//! This module never touches storage or the index; it only knows what a key
//! string looks like. `auth` decides what a parsed key is allowed to do.

mod format;
mod secret;

pub use format::{
    checksum, claimed_id, generate, locate_typo, mask_for_error, parse, redact, GeneratedKey, KeyDigest,
    KeyFormatError, KeyPrefix, ParsedKey, PrefixError, TypoSuggestion, BODY_LEN, DEFAULT_PREFIX,
};
pub use secret::Secret;

#[cfg(test)]
mod tests;
