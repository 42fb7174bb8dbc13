//! Invariant checks for fuzzing: one `check_*` function per fuzz target. Each
//! takes the raw input and panics when keygate breaks a rule it promises,
//! not only when it panics by itself: a canonical path that is not its own
//! canonical form, a key accepted without a valid checksum, a body model that
//! an upstream would read differently, two different keys accepted at once.
//!
//! The cargo-fuzz targets in `fuzz/` call these, and the `fuzz_corpus` module
//! of the integration tests replays the checked-in corpus (`fuzz/corpus/`)
//! through the very same functions on stable, so a corpus file proves the
//! same thing under `cargo test` as under the fuzzer.
//!
//! Public only because those callers are other crates; hidden from the docs
//! and not an API. It reaches the private usage tap through `pub(crate)`
//! items instead of widening anything else's visibility.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use parking_lot::Mutex;
use serde_json::Value;

use crate::auth::{key_in_query, presented};
use crate::config::{Config, ConfigError, Env};
use crate::key::{self, KeyFormatError, KeyPrefix, BODY_LEN};
use crate::proxy::RequestMeta;
use crate::route::{canonical_path, normalize, parse_azure, PathError, Route};
use crate::usage::{tokens_from_usage, Observed, Tap};

/// One target's check: panics when an invariant breaks.
pub type Check = fn(&[u8]);

/// Every fuzz target: its name (the folder under `fuzz/corpus/` and the file
/// under `fuzz/fuzz_targets/`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("key_parse", check_key_parse),
    ("credential", check_credential),
    ("canonical_path", check_canonical_path),
    ("body_json", check_body_json),
    ("body_form", check_body_form),
    ("usage_tap", check_usage_tap),
    ("config", check_config),
];

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const CHECK_LEN: usize = 6;

// === key_parse ===

/// Input: a presented key; or `0xFF` then bytes that build a valid key and
/// one edit of it. `parse` accepts exactly the strings an independent reading
/// of the v1 layout accepts (a valid prefix, then `kg1`, 55 base62
/// characters and their CRC-32), and no single edit of a valid key passes.
pub fn check_key_parse(data: &[u8]) {
    match data.split_first() {
        Some((0xFF, rest)) => check_edited_key(rest),
        _ => check_presented_key(&String::from_utf8_lossy(data)),
    }
}

/// The v1 layout read by length from the end, not by the last `-` as `parse`
/// does: two readings of one rule that must agree.
fn is_v1_key(key: &str) -> bool {
    // Every character of a v1 key is ASCII, so byte offsets below are characters.
    let Some(prefix_len) = key.len().checked_sub(BODY_LEN).filter(|&n| n > 0 && key.is_ascii()) else {
        return false;
    };
    let (prefix, body) = key.split_at(prefix_len);
    let (signed, check) = key.split_at(key.len() - CHECK_LEN);
    KeyPrefix::parse(prefix).is_ok()
        && body.starts_with("kg1")
        && body.bytes().all(|b| b.is_ascii_alphanumeric())
        && key::checksum(signed) == check
}

fn check_presented_key(key: &str) {
    let parsed = key::parse(key);
    assert_eq!(parsed.is_ok(), is_v1_key(key), "parse and the v1 layout disagree on {key:?}: {parsed:?}");
    match parsed {
        Ok(parsed) => {
            let (signed, check) = key.split_at(key.len() - CHECK_LEN);
            assert_eq!(key::checksum(signed), check, "accepted without a valid checksum: {key:?}");
            assert_eq!(key.len(), parsed.prefix.len() + BODY_LEN);
            assert_eq!(&key[parsed.prefix.len() + 3..][..12], parsed.id);
            assert_eq!(key::claimed_id(key).map(|id| id.as_str().to_owned()).as_deref(), Some(parsed.id));
            assert!(key::locate_typo(key).is_empty(), "a valid key has no typo to locate");
            assert!(key_in_query(Some(&format!("x={key}"))), "a valid key in a query value is found");
        }
        Err(KeyFormatError::ChecksumMismatch) => {
            // Everything but the checksum is well formed; `doctor`'s typo
            // search only ever proposes edits that make a valid key.
            let (signed, check) = key.split_at(key.len() - CHECK_LEN);
            assert_ne!(key::checksum(signed), check);
            for typo in key::locate_typo(key) {
                let mut fixed = key.as_bytes().to_vec();
                assert_eq!(fixed[typo.position], typo.found as u8);
                fixed[typo.position] = typo.expected as u8;
                let fixed = String::from_utf8_lossy(&fixed);
                assert!(key::parse(&fixed).is_ok(), "typo suggestion {typo:?} does not fix {key:?}");
            }
        }
        Err(_) => {}
    }
    check_mask(key);
}

/// OpenAI's masking keeps at most the first 8 and last 4 characters.
fn check_mask(key: &str) {
    let masked = key::mask_for_error(key);
    let count = key.chars().count();
    if count <= 12 {
        assert_eq!(masked, key);
        return;
    }
    // At most 200 stars (`key::format::MASK_STARS`): a long header is not echoed.
    let stars = (count - 12).min(200);
    assert_eq!(masked.chars().count(), 12 + stars);
    assert!(masked.chars().skip(8).take(stars).all(|c| c == '*'));
}

fn check_edited_key(data: &[u8]) {
    const PREFIXES: [&str; 5] = ["sk-", "sk-prod-", "a-", "x1-y2-z3-", "abcdefghijklmnop-abcdefghijklmnop-"];
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let mut key = PREFIXES[usize::from(byte(0)) % PREFIXES.len()].to_owned();
    key.push_str("kg1");
    key.extend((1..=55).map(|i| char::from(ALPHABET[usize::from(byte(i)) % 62])));
    let check = key::checksum(&key);
    key.push_str(&check);
    assert!(key::parse(&key).is_ok(), "a generated key is valid: {key:?}");

    // One substitution, deletion, insertion or adjacent transposition.
    let mut edited = key.clone().into_bytes();
    let at = (usize::from(byte(56)) << 8 | usize::from(byte(57))) % edited.len();
    let ch = byte(59) & 0x7F;
    match byte(58) % 4 {
        0 => edited[at] = ch,
        1 => {
            edited.remove(at);
        }
        2 => edited.insert(at, ch),
        _ => {
            let next = (at + 1) % edited.len();
            edited.swap(at, next);
        }
    }
    let edited = String::from_utf8_lossy(&edited);
    if edited != key {
        assert!(key::parse(&edited).is_err(), "one edit of {key:?} still parses: {edited:?}");
    }
}

/// A valid v1 key, the same on every run (the corpus must replay the same).
fn fixed_key() -> String {
    let mut key = "sk-kg1".to_owned();
    key.extend((0..55).map(|i| char::from(ALPHABET[(i * 7 + 3) % 62])));
    let check = key::checksum(&key);
    key + &check
}

// === credential ===

/// Input: a flags byte (bit 0: an Azure route), then `name:value` lines;
/// a line starting with `?` is a query string instead.
///
/// `presented` never yields a key that one of the credential headers, read
/// alone, would not; Azure routes accept whatever OpenAI routes accept; a
/// query naming a key, or holding one in any position, is always caught.
pub fn check_credential(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let azure = flags & 1 == 1;
    let mut headers = HeaderMap::new();
    let mut queries = Vec::new();
    for line in rest.split(|b| *b == b'\n') {
        if let Some(query) = line.strip_prefix(b"?") {
            queries.push(String::from_utf8_lossy(query).into_owned());
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(&line[colon + 1..]))
        else {
            continue;
        };
        headers.append(name, value);
    }

    let result = presented(&headers, azure);
    if let Ok(key) = &result {
        assert!(!key.expose().is_empty());
        assert!(headers.get_all(AUTHORIZATION).iter().count() <= 1, "Authorization twice was accepted");
        assert!(headers.get_all("api-key").iter().count() <= 1, "api-key twice was accepted");
        assert!(azure || headers.contains_key(AUTHORIZATION), "OpenAI routes read only Authorization");
        // Each header alone names the same key: two different keys never pass.
        for name in [AUTHORIZATION, HeaderName::from_static("api-key")] {
            let Some(value) = headers.get(&name) else { continue };
            let mut alone = HeaderMap::new();
            alone.insert(name.clone(), value.clone());
            let alone = presented(&alone, true);
            assert_eq!(alone.as_ref().ok().map(|k| k.expose()), Some(key.expose()), "{name} alone reads another key");
        }
        assert_eq!(presented(&headers, true).ok().map(|k| k.expose().to_owned()).as_deref(), Some(key.expose()));
        // Longer than `Presented(Secret(***))` itself.
        if key.expose().len() > 24 {
            assert!(!format!("{key:?}").contains(key.expose()), "Debug prints the key");
        }
    }
    if azure && result.is_err() {
        assert!(presented(&headers, false).is_err(), "an OpenAI route accepts what an Azure route refuses");
    }

    let valid = fixed_key();
    let encoded: String = valid.bytes().map(|b| format!("%{b:02X}")).collect();
    for query in queries {
        let _ = key_in_query(Some(&query));
        for planted in [format!("x={valid}"), format!("x={encoded}"), valid.clone(), format!("{valid}=1")] {
            let with = format!("{query}&{planted}");
            assert!(key_in_query(Some(&with)), "a key in {with:?} is not caught");
        }
        for name in ["api-key", "API_KEY", "apikey", "Key"] {
            assert!(key_in_query(Some(&format!("{query}&{name}=x"))), "a `{name}` parameter is not caught");
        }
    }
}

// === canonical_path ===

/// Input: a request path (and, for the Azure reading, maybe a query).
///
/// A canonical path is its own canonical form and its own normal form; it
/// starts `/v1/<resource>` with a lower-case resource that is never one of
/// keygate's own; it has no dot or empty segment, no encoded separator and
/// no control character; and it means what the raw path meant (the same
/// bytes once decoded, the resource compared ignoring case).
pub fn check_canonical_path(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let canonical = canonical_path(&raw);
    match normalize(&raw) {
        Ok(normal) => {
            assert_eq!(normalize(&normal).as_deref(), Ok(normal.as_str()), "normalize is not idempotent on {raw:?}");
            assert_eq!(canonical_path(&normal), canonical, "normalizing first changes the answer for {raw:?}");
            assert_eq!(decode(&normal), decode(&raw), "normalize changed what {raw:?} means");
        }
        Err(_) => assert_eq!(canonical, Err(PathError::Malformed), "{raw:?} has no normal form"),
    }
    if let Ok(path) = &canonical {
        assert_canonical(&raw, path);
    }
    if let Ok(uri) = raw.parse::<Uri>() {
        if let Ok(route) = Route::openai(&uri) {
            assert_eq!(canonical_path(uri.path()).as_ref(), Ok(&route.path));
        }
        check_azure_route(&uri);
    }
}

fn assert_canonical(raw: &str, path: &str) {
    assert_eq!(canonical_path(path).as_deref(), Ok(path), "canonical form of {raw:?} is not a fixed point");
    assert_eq!(normalize(path).as_deref(), Ok(path));
    let rest = path.strip_prefix("/v1/").unwrap_or_else(|| panic!("{path:?} is not under /v1/"));
    let resource = rest.split('/').next().unwrap_or_default();
    assert!(!resource.is_empty());
    assert!(resource.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'));
    assert!(!["organization", "keygate"].contains(&resource), "reserved resource in {path:?}");
    let lower = path.to_ascii_lowercase();
    for bad in ["/../", "/./", "//", "%2f", "%5c", "\\"] {
        assert!(!lower.contains(bad), "{path:?} (from {raw:?}) contains {bad:?}");
    }
    assert!(!lower.ends_with("/..") && !lower.ends_with("/."), "{path:?} ends in a dot segment");
    assert!(!path.bytes().any(|b| b.is_ascii_control()));
    // Only escapes of reserved or non-ASCII bytes remain, in upper case.
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let pair = bytes.get(i + 1..i + 3).unwrap_or_else(|| panic!("cut escape in {path:?}"));
        assert!(pair.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)), "{path:?}");
        let byte = decode_hex(pair).unwrap_or_default();
        assert!(!(byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)), "{path:?} keeps an unreserved escape");
    }
    let (raw_segments, segments) = (decode(raw), decode(path));
    assert_eq!(raw_segments.len(), segments.len());
    for (i, (a, b)) in raw_segments.iter().zip(&segments).enumerate() {
        // Segment 0 is empty, 1 is `v1`, 2 the resource (lower-cased).
        assert!(if i == 2 { a.eq_ignore_ascii_case(b) } else { a == b }, "{raw:?} and {path:?} differ");
    }
}

/// The segments of a path (split on `/` as sent: an encoded one is refused
/// before this is called), each with every valid `%XX` decoded.
fn decode(path: &str) -> Vec<Vec<u8>> {
    path.split('/')
        .map(|segment| {
            let bytes = segment.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                match bytes.get(i + 1..i + 3).filter(|_| bytes[i] == b'%').and_then(decode_hex) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(bytes[i]);
                        i += 1;
                    }
                }
            }
            out
        })
        .collect()
}

fn decode_hex(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16);
    match pair {
        // Two hex digits make at most 255.
        [high, low] => Some((digit(*high)? * 16 + digit(*low)?) as u8),
        _ => None,
    }
}

/// An Azure URL maps to a canonical OpenAI path, with `api-version` taken
/// out of the forwarded query.
fn check_azure_route(uri: &Uri) {
    let versions = ["2024-10-21".to_owned(), "2024-02-15-preview".to_owned()];
    let Ok(route) = parse_azure(uri, &versions) else { return };
    assert_eq!(canonical_path(&route.path).as_ref(), Ok(&route.path), "Azure route of {uri} is not canonical");
    if let Some(query) = &route.query {
        assert!(form_urlencoded::parse(query.as_bytes()).all(|(name, _)| name != "api-version"), "{uri}");
    }
    if let Some(deployment) = &route.deployment {
        assert!(!deployment.is_empty());
    }
}

// === body_json ===

/// Input: a request body sent as `application/json`.
///
/// When keygate accepts it, every upstream reading that parses it (serde_json
/// into a `Value`, where a repeated key keeps its last value; the same after
/// a lossy UTF-8 repair) sees the same `model`, `stream` and token allowance.
/// The same bytes under a non-JSON type are refused if a parser takes them
/// for JSON.
pub fn check_body_json(data: &[u8]) {
    let meta = RequestMeta::from_body(&content_type(Some("application/json")), data);
    if data.iter().all(u8::is_ascii_whitespace) {
        assert_eq!(meta.ok(), Some(RequestMeta::default()));
        return;
    }
    let parsed = RequestMeta::parse(data);
    assert_eq!(format!("{meta:?}"), format!("{parsed:?}"), "from_body and parse disagree");
    if let Ok(meta) = meta {
        assert_json_agrees(&meta, data);
    }
    check_json_is_labelled(data);
}

/// What upstream JSON readers see agrees with `meta`.
fn assert_json_agrees(meta: &RequestMeta, body: &[u8]) {
    let readings = [serde_json::from_slice::<Value>(body), serde_json::from_str(&String::from_utf8_lossy(body))];
    for reading in readings {
        let object = match reading {
            Ok(Value::Object(object)) => object,
            Ok(other) => panic!("keygate read a JSON {other} as an object"),
            Err(_) => continue,
        };
        assert_eq!(meta.model.as_deref(), object.get("model").and_then(Value::as_str), "model");
        assert_eq!(meta.stream, object.get("stream").and_then(Value::as_bool).unwrap_or(false), "stream");
        let allowance = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
            .iter()
            .find_map(|name| object.get(*name).and_then(Value::as_u64));
        assert_eq!(meta.max_tokens, allowance, "token allowance");
    }
}

/// JSON sent under another type (or none) is refused when a parser could
/// take it for JSON, after a byte order mark or whitespace.
fn check_json_is_labelled(body: &[u8]) {
    let trimmed = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if !matches!(serde_json::from_slice::<Value>(trimmed), Ok(Value::Object(_) | Value::Array(_))) {
        return;
    }
    for label in [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("application/jsonx")] {
        let meta = RequestMeta::from_body(&content_type(label), body);
        assert!(meta.is_err(), "JSON under {label:?} was accepted: {meta:?}");
    }
}

fn content_type(value: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(CONTENT_TYPE, value);
    }
    headers
}

// === body_form ===

/// Input: a `Content-Type` line (empty: none), `\n`, then the body; meant
/// for `multipart/form-data` and `application/x-www-form-urlencoded`.
///
/// When keygate accepts a form, every lenient reading of it finds the same
/// `model` (or none): multipart split on the delimiter wherever it appears,
/// names quoted or not, in any case, percent-decoded; urlencoded split on
/// `&` alone or also on `;`, names in any case, first or last one winning.
pub fn check_body_form(data: &[u8]) {
    let (line, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let mut headers = HeaderMap::new();
    if !line.is_empty() {
        let Ok(value) = HeaderValue::from_bytes(line) else { return };
        headers.insert(CONTENT_TYPE, value);
    }
    let Ok(meta) = RequestMeta::from_body(&headers, body) else { return };
    if body.iter().all(u8::is_ascii_whitespace) {
        assert_eq!(meta, RequestMeta::default());
        return;
    }
    let media = String::from_utf8_lossy(line).to_ascii_lowercase();
    let media = media.split(';').next().unwrap_or_default().trim();
    if media == "multipart/form-data" {
        let boundary = boundary_of(line).unwrap_or_else(|| panic!("a form without a boundary was read"));
        for model in lenient_multipart_models(&boundary, body) {
            assert_eq!(meta.model.as_deref(), Some(model.as_str()), "an upstream reads model {model:?}");
        }
        if meta.model.is_some() {
            assert!(!lenient_multipart_models(&boundary, body).is_empty(), "keygate read a model no upstream sees");
        }
    } else if media == "application/x-www-form-urlencoded" {
        for model in lenient_urlencoded_models(body) {
            assert_eq!(meta.model.as_deref(), Some(model.as_str()), "an upstream reads model {model:?}");
        }
    } else if media == "application/json" || media.ends_with("+json") {
        assert_json_agrees(&meta, body);
    } else {
        assert_eq!(meta.model, None, "an opaque body has no model");
    }
}

/// The `boundary` parameter, read loosely (quotes stripped).
fn boundary_of(content_type: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(content_type);
    text.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// Every `model` value any lenient multipart reader could take.
fn lenient_multipart_models(boundary: &str, body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let mut models = Vec::new();
    for part in text.split(&format!("--{boundary}")) {
        let part = part.strip_prefix("\r\n").or_else(|| part.strip_prefix('\n')).unwrap_or(part);
        let Some((head, value)) = part.split_once("\r\n\r\n").or_else(|| part.split_once("\n\n")) else { continue };
        let named_model = head.lines().any(|line| {
            let Some((name, disposition)) = line.split_once(':') else { return false };
            name.trim().eq_ignore_ascii_case("content-disposition")
                && disposition.split(';').any(|param| {
                    param.split_once('=').is_some_and(|(name, value)| {
                        let value = value.trim().trim_matches('"');
                        let decoded = form_urlencoded::parse(format!("v={}", value.replace('+', "%2B")).as_bytes())
                            .next()
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or_default();
                        name.trim().eq_ignore_ascii_case("name")
                            && (value.eq_ignore_ascii_case("model") || decoded.eq_ignore_ascii_case("model"))
                    })
                })
        });
        if named_model {
            let value = value.strip_suffix("\r\n").or_else(|| value.strip_suffix('\n')).unwrap_or(value);
            models.push(value.to_owned());
        }
    }
    models
}

/// Every `model` value any lenient urlencoded reader could take.
fn lenient_urlencoded_models(body: &[u8]) -> Vec<String> {
    let mut models = Vec::new();
    let semicolons: Vec<u8> = body.iter().map(|b| if *b == b';' { b'&' } else { *b }).collect();
    for body in [body, &semicolons[..]] {
        for (name, value) in form_urlencoded::parse(body) {
            if name.eq_ignore_ascii_case("model") {
                models.push(value.into_owned());
            }
        }
    }
    models
}

// === usage_tap ===

/// Input: a flags byte (bit 0: SSE, bit 1: strip the usage keygate asked
/// for, bit 2: strip Azure's fields), a byte that picks chunk sizes, then
/// the upstream's answer.
///
/// What the tap passes on and what it observes do not depend on how the
/// answer was cut into chunks; an untouched answer passes byte for byte;
/// stripping never changes what is metered, and stripping twice changes
/// nothing more; a JSON answer's usage is what a JSON reader finds in it.
pub fn check_usage_tap(data: &[u8]) {
    let [flags, seed, body @ ..] = data else { return };
    let (sse, strip_usage, strip_azure) = (flags & 1 == 1, flags & 2 == 2, flags & 4 == 4);
    let whole = run_tap(&[body], sse, strip_usage, strip_azure);
    let mut chunks = Vec::new();
    let mut rest = body;
    let mut size = usize::from(*seed);
    while !rest.is_empty() {
        size = (size * 31 + 7) % 23 + 1;
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    let split = run_tap(&chunks, sse, strip_usage, strip_azure);
    assert_eq!(whole, split, "chunking changed what the tap did");
    let (out, observed) = whole;
    assert!(!observed.cut_short, "an answer that ended is not cut short");
    if !(strip_usage || strip_azure) {
        assert_eq!(out, body, "an answer keygate need not rewrite passes byte for byte");
    } else {
        let plain = run_tap(&[body], sse, false, false).1;
        assert_eq!(observed, plain, "stripping changed what is metered");
        let again = run_tap(&[&out], sse, strip_usage, strip_azure).0;
        assert_eq!(again, out, "stripping a stripped answer changed it");
    }
    if !sse {
        if let Some(expected) = json_usage(body) {
            assert_eq!(observed.tokens, expected, "a JSON answer's usage");
        }
    }
}

/// Runs `chunks` through a tap, polled by hand (it never waits on anything).
fn run_tap(chunks: &[&[u8]], sse: bool, strip_usage: bool, strip_azure: bool) -> (Vec<u8>, Observed) {
    let seen = Arc::new(Mutex::new(None));
    let sink = Arc::clone(&seen);
    let items: Vec<Result<Bytes, std::convert::Infallible>> =
        chunks.iter().map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let mut tap = Tap::new(
        futures_util::stream::iter(items),
        sse,
        strip_usage,
        strip_azure,
        Box::new(move |o| *sink.lock() = Some(o)),
    );
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match std::pin::Pin::new(&mut tap).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(bytes))) => out.extend_from_slice(&bytes),
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Ready(None) => break,
            Poll::Pending => panic!("the tap waited on a ready stream"),
        }
    }
    drop(tap);
    let observed = seen.lock().take().unwrap_or_else(|| panic!("the tap did not report"));
    (out, observed)
}

/// The usage a JSON reader finds in a whole answer: `None` (no claim) when
/// the answer is no object, or names a key twice in one object anywhere
/// (readers disagree on which counts, so the tap may count nothing).
fn json_usage(body: &[u8]) -> Option<Option<crate::store::Tokens>> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else { return None };
    let Ok(UniqueKeys(true)) = serde_json::from_slice::<UniqueKeys>(body) else { return None };
    Some(object.get("usage").and_then(tokens_from_usage))
}

/// Whether no JSON object in a document names a key twice.
struct UniqueKeys(bool);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, SeqAccess, Visitor};

        struct Walk;

        impl<'de> Visitor<'de> for Walk {
            type Value = UniqueKeys;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(true))
            }
            fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(true))
            }
            fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(true))
            }
            fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(true))
            }
            fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(true))
            }
            fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(true))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
                let mut unique = true;
                while let Some(UniqueKeys(inner)) = seq.next_element()? {
                    unique &= inner;
                }
                Ok(UniqueKeys(unique))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
                let mut keys = std::collections::HashSet::new();
                let mut unique = true;
                while let Some((key, UniqueKeys(inner))) = map.next_entry::<String, UniqueKeys>()? {
                    unique &= inner && keys.insert(key);
                }
                Ok(UniqueKeys(unique))
            }
        }

        deserializer.deserialize_any(Walk)
    }
}

// === config ===

/// Two provider credentials in the environment the fuzzed file can name.
const ENV_SECRETS: [(&str, &str); 2] =
    [("OPENAI_API_KEY", "sk-upstream-SECRET-6f1d2c"), ("VLLM_API_KEY", "vllm-SECRET-93ab7e")];

struct FuzzEnv;

impl Env for FuzzEnv {
    fn var(&self, name: &str) -> Option<String> {
        ENV_SECRETS.iter().find(|(var, _)| *var == name).map(|(_, value)| (*value).to_owned())
    }
    fn vars(&self) -> Vec<(String, String)> {
        ENV_SECRETS.iter().map(|(var, value)| ((*var).to_owned(), (*value).to_owned())).collect()
    }
}

/// Input: a TOML config file.
///
/// A config that loads holds what validation promises (an upstream, bounds
/// on sizes and timeouts) and loads the same twice; neither it (`Debug`) nor
/// any validation error prints a provider credential, and no validation
/// error prints the password of a URL in the file.
pub fn check_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::from_toml(&text, &FuzzEnv) {
        Ok(config) => {
            assert!(!config.upstreams.is_empty());
            assert!((1..=1 << 30).contains(&config.max_body_bytes));
            assert!((1..=1_000_000).contains(&config.max_connections));
            for timeout in [config.header_read_timeout, config.request_body_timeout, config.idle_timeout] {
                assert!(timeout.as_millis() >= 100);
            }
            assert!(config.upstreams[1..].iter().all(|u| !u.models.is_empty()), "a routed upstream has no models");
            let printed = format!("{config:?}");
            // (A file may hold the same text itself; that is no leak.)
            for (_, secret) in ENV_SECRETS.iter().filter(|(_, secret)| !text.contains(secret)) {
                assert!(!printed.contains(secret), "Config's Debug prints a credential");
            }
            let again = Config::from_toml(&text, &FuzzEnv).map(|c| format!("{c:?}"));
            assert_eq!(again.ok().as_deref(), Some(printed.as_str()), "loading twice differs");
        }
        Err(error) => {
            let message = error.to_string();
            assert!(!message.is_empty());
            for (_, secret) in ENV_SECRETS.iter().filter(|(_, secret)| !text.contains(secret)) {
                assert!(!message.contains(secret), "a config error prints a credential: {message}");
            }
            // A syntax error quotes the offending line of the user's own
            // file, as every TOML tool does; a URL field's error shows the URL.
            if matches!(&error, ConfigError::Invalid { field, .. } if field.ends_with("url")) {
                for userinfo in url_userinfos(&text) {
                    let shown = format!("://{userinfo}@");
                    assert!(!message.contains(&shown), "a config error prints a URL password: {message}");
                }
            }
        }
    }
}

/// The `user:password` of every `scheme://user:password@host` in a text.
fn url_userinfos(text: &str) -> Vec<&str> {
    text.match_indices("://")
        .filter_map(|(at, _)| {
            let rest = &text[at + 3..];
            let authority = &rest[..rest.find(['/', '"', '\'', ' ', '\n', '?', '#']).unwrap_or(rest.len())];
            let userinfo = &authority[..authority.rfind('@')?];
            userinfo.split_once(':').is_some_and(|(_, password)| !password.is_empty()).then_some(userinfo)
        })
        .collect()
}
