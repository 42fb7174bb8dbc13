use super::*;
use crate::ids::PublicId;

fn prod_key() -> GeneratedKey {
    generate(&KeyPrefix::parse("sk-prod-").unwrap(), &PublicId::random())
}

#[test]
fn generated_key_round_trips_through_parse() {
    for _ in 0..200 {
        let key = prod_key();
        let text = key.secret.expose();
        assert_eq!(text.len(), "sk-prod-".len() + BODY_LEN);
        let parsed = parse(text).unwrap();
        assert_eq!(parsed.prefix, "sk-prod-");
        assert_eq!(parsed.id, key.id.as_str());
        assert_eq!(KeyDigest::of(text), key.digest);
        assert!(text.ends_with(&key.last4));
    }
}

#[test]
fn every_single_character_substitution_is_caught() {
    let key = prod_key();
    let text = key.secret.expose();
    let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";
    let mut bytes = text.as_bytes().to_vec();
    for i in 0..bytes.len() {
        let original = bytes[i];
        for &c in alphabet {
            if c == original {
                continue;
            }
            bytes[i] = c;
            let mutated = std::str::from_utf8(&bytes).unwrap();
            assert!(parse(mutated).is_err(), "substitution at {i} with {} accepted", c as char);
        }
        bytes[i] = original;
    }
}

#[test]
fn every_adjacent_transposition_insertion_and_deletion_is_caught() {
    let key = prod_key();
    let text = key.secret.expose();
    let bytes = text.as_bytes();
    for i in 0..bytes.len() - 1 {
        if bytes[i] == bytes[i + 1] {
            continue;
        }
        let mut swapped = bytes.to_vec();
        swapped.swap(i, i + 1);
        assert!(parse(std::str::from_utf8(&swapped).unwrap()).is_err(), "swap at {i}");
    }
    for i in 0..bytes.len() {
        let mut deleted = bytes.to_vec();
        deleted.remove(i);
        assert!(parse(std::str::from_utf8(&deleted).unwrap()).is_err(), "deletion at {i}");
        let mut inserted = bytes.to_vec();
        inserted.insert(i, b'x');
        assert!(parse(std::str::from_utf8(&inserted).unwrap()).is_err(), "insertion at {i}");
    }
}

#[test]
fn checksum_with_leading_zero_round_trips() {
    // Search until the checksum starts with '0' (about one key in 13).
    let key = (0..10_000)
        .map(|_| prod_key())
        .find(|k| k.secret.expose().as_bytes()[k.secret.expose().len() - 6] == b'0')
        .expect("a checksum with a leading zero within 10k keys");
    assert!(parse(key.secret.expose()).is_ok());
}

#[test]
fn each_rule_names_its_failure() {
    let key = prod_key();
    let text = key.secret.expose().to_owned();
    assert_eq!(parse(""), Err(KeyFormatError::Empty));
    assert_eq!(parse(&format!("{text}\n")), Err(KeyFormatError::Whitespace { position: text.len() }));
    assert_eq!(parse(&format!("\"{text}\"")), Err(KeyFormatError::Quoted));
    let cyrillic = text.replacen("kg1", "kг1", 1);
    assert!(matches!(parse(&cyrillic), Err(KeyFormatError::NonAscii { position: 9 })));
    assert_eq!(parse("sk-proj-abcdefT3BlbkFJxyz"), Err(KeyFormatError::NotKeygate));
    assert_eq!(parse(&text.replacen("kg1", "kg2", 1)), Err(KeyFormatError::UnknownVersion('2')));
    assert_eq!(
        parse(&text[..text.len() - 1]),
        Err(KeyFormatError::BadLength { expected: BODY_LEN, actual: BODY_LEN - 1 })
    );
    let mut bad_char = text.clone().into_bytes();
    bad_char[20] = b'_';
    assert_eq!(
        parse(std::str::from_utf8(&bad_char).unwrap()),
        Err(KeyFormatError::BadCharacter { position: 20, found: '_' })
    );
    assert!(matches!(
        parse(&text.replacen("sk-prod-", "SK-prod-", 1)),
        Err(KeyFormatError::BadPrefix(PrefixError::BadStart))
    ));
    let mut typo = text.clone().into_bytes();
    typo[30] = if typo[30] == b'a' { b'b' } else { b'a' };
    assert_eq!(parse(std::str::from_utf8(&typo).unwrap()), Err(KeyFormatError::ChecksumMismatch));
}

#[test]
fn error_messages_are_exact() {
    assert_eq!(
        KeyFormatError::BadLength { expected: 64, actual: 63 }.to_string(),
        "the key has 63 characters after its prefix; a v1 key has 64 (truncated or pasted twice?)"
    );
    assert_eq!(KeyFormatError::ChecksumMismatch.to_string(), "checksum mismatch: the key was mistyped or altered");
    assert_eq!(
        KeyFormatError::BadPrefix(PrefixError::MissingDash).to_string(),
        "the key prefix is malformed: a prefix must end with `-`"
    );
}

#[test]
fn prefix_rules() {
    for ok in ["sk-", "sk-prod-", "sk-dev-", "a-", "team1-app-prod-"] {
        assert!(KeyPrefix::parse(ok).is_ok(), "{ok}");
    }
    assert_eq!(KeyPrefix::parse("sk"), Err(PrefixError::MissingDash));
    assert_eq!(KeyPrefix::parse("1sk-"), Err(PrefixError::BadStart));
    assert_eq!(KeyPrefix::parse("sk--"), Err(PrefixError::BadShape));
    assert_eq!(KeyPrefix::parse("sk_prod-"), Err(PrefixError::BadShape));
    assert_eq!(KeyPrefix::parse("a-b-c-d-"), Err(PrefixError::BadShape));
    assert_eq!(KeyPrefix::parse(&format!("{}-", "a".repeat(40))), Err(PrefixError::TooLong));
}

#[test]
fn redaction_shows_prefix_id_and_last_four_only() {
    let key = prod_key();
    let redacted = redact("sk-prod-", &key.id, &key.last4);
    assert_eq!(redacted, format!("sk-prod-kg1{}...{}", key.id.as_str(), key.last4));
    let secret_part = &key.secret.expose()["sk-prod-kg1".len() + 12..key.secret.expose().len() - 4];
    assert!(!redacted.contains(secret_part));
}

#[test]
fn error_mask_matches_openai() {
    // 51-char legacy key: first 8, 39 stars, last 4 (spec/openai-wire.md §1.1).
    let key = format!("sk-4sJHr{}w8ZP", "x".repeat(39));
    assert_eq!(mask_for_error(&key), format!("sk-4sJHr{}w8ZP", "*".repeat(39)));
    assert_eq!(mask_for_error("undefined"), "undefined");
    assert_eq!(mask_for_error("abcdefghijkl"), "abcdefghijkl");
    assert_eq!(mask_for_error("абвгдежзийклм"), "абвгдежз*йклм");
    let huge = format!("sk-{}tail", "x".repeat(100_000));
    assert_eq!(mask_for_error(&huge), format!("sk-xxxxx{}tail", "*".repeat(super::format::MASK_STARS)));
}

#[test]
fn secret_debug_never_prints_the_value() {
    let key = prod_key();
    let debug = format!("{:?}", key);
    assert!(!debug.contains(key.secret.expose()));
}

#[test]
fn typo_search_finds_the_position() {
    let key = prod_key();
    let mut bytes = key.secret.expose().as_bytes().to_vec();
    let original = bytes[25];
    bytes[25] = if original == b'0' { b'O' } else { b'0' };
    let typo = String::from_utf8(bytes).unwrap();
    let found = locate_typo(&typo);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].position, 25);
    assert_eq!(found[0].expected, original as char);
}

// === properties ===

use proptest::prelude::*;

/// A prefix drawn from the documented grammar (module docs of `format`).
fn valid_prefix() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,15}(-[a-z0-9]{1,16}){0,2}-".prop_filter("at most 34 characters", |p| p.len() <= 34)
}

fn any_id() -> impl Strategy<Value = PublicId> {
    "[0-9A-Za-z]{12}".prop_filter_map("12 base62", |id| PublicId::parse(&id))
}

/// The prefix rule in other words: at most 34 characters ending in `-`;
/// before it one to three `-`-separated parts of 1 to 16 lower-case letters
/// and digits, the first starting with a letter.
fn prefix_rule(text: &str) -> bool {
    let Some(stem) = text.strip_suffix('-') else { return false };
    let parts: Vec<&str> = stem.split('-').collect();
    text.len() <= 34
        && parts.len() <= 3
        && stem.starts_with(|c: char| c.is_ascii_lowercase())
        && parts
            .iter()
            .all(|p| (1..=16).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

proptest! {
    #[test]
    fn any_generated_key_parses_back_to_its_prefix_and_id(prefix in valid_prefix(), id in any_id()) {
        let key = generate(&KeyPrefix::parse(&prefix).unwrap(), &id);
        let text = key.secret.expose();
        let parsed = parse(text).unwrap();
        prop_assert_eq!(parsed.prefix, prefix.as_str());
        prop_assert_eq!(parsed.id, id.as_str());
        prop_assert_eq!(claimed_id(text), Some(id));
        prop_assert_eq!(text.len(), prefix.len() + BODY_LEN);
    }

    #[test]
    fn any_single_character_substitution_anywhere_is_caught(
        prefix in valid_prefix(),
        id in any_id(),
        at in any::<prop::sample::Index>(),
        replacement in 0x20u8..0x7F,
    ) {
        let key = generate(&KeyPrefix::parse(&prefix).unwrap(), &id);
        let mut bytes = key.secret.expose().as_bytes().to_vec();
        let at = at.index(bytes.len());
        prop_assume!(bytes[at] != replacement);
        bytes[at] = replacement;
        let mutated = String::from_utf8(bytes).unwrap();
        prop_assert!(parse(&mutated).is_err(), "{} accepted", mutated);
    }

    #[test]
    fn prefixes_follow_the_documented_rule(
        text in prop_oneof![valid_prefix(), "[a-z0-9-]{0,40}", "[a-zA-Z0-9_-]{0,12}-", "[a-z]{16,18}-[a-z]{16,18}-"],
    ) {
        prop_assert_eq!(KeyPrefix::parse(&text).is_ok(), prefix_rule(&text), "{}", text);
    }

    #[test]
    fn a_key_in_quotes_or_whitespace_is_refused_not_repaired(
        id in any_id(),
        wrap in prop::sample::select(vec!["\"{}\"", "'{}'", " {}", "{}\n", "{}\t", "{}\u{200B}"]),
    ) {
        let key = generate(&KeyPrefix::default(), &id);
        let wrapped = wrap.replace("{}", key.secret.expose());
        prop_assert!(parse(&wrapped).is_err());
    }
}

proptest! {
    // Each case parses 61 × 62 candidates.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn a_substituted_body_character_is_located_by_the_typo_search(
        id in any_id(),
        at in any::<prop::sample::Index>(),
        replacement in prop::sample::select(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".to_vec()),
    ) {
        let key = generate(&KeyPrefix::default(), &id);
        let text = key.secret.expose();
        // After the `kg1` marker: the id, secret and checksum.
        let body_start = text.len() - BODY_LEN + 3;
        let at = body_start + at.index(text.len() - body_start);
        let original = text.as_bytes()[at];
        prop_assume!(original != replacement);
        let mut bytes = text.as_bytes().to_vec();
        bytes[at] = replacement;
        let typo = String::from_utf8(bytes).unwrap();
        prop_assert_eq!(parse(&typo), Err(KeyFormatError::ChecksumMismatch));
        let expected = TypoSuggestion { position: at, found: char::from(replacement), expected: char::from(original) };
        prop_assert!(locate_typo(&typo).contains(&expected));
    }
}
