//! What keygate reads from a request body (the model the key's allow-list
//! checks, `stream`, the token allowance), parsed once and shared by routing,
//! limits and metering.
//!
//! The rule this module keeps: what keygate checks is what the upstream
//! receives. The body goes upstream byte for byte, so any body that another
//! parser could read differently from keygate (two `Content-Type` headers, JSON
//! under another media type, a policy field sent twice, an ambiguous multipart
//! form) is refused with OpenAI's 400 instead of being guessed at.
//!
//! Owns: the choice of reader by `Content-Type`, the JSON reader, the
//! `application/x-www-form-urlencoded` reader, and (in `multipart`) the
//! `multipart/form-data` reader. Leaves the allow-list check to `auth` and
//! error rendering to `dialect`.

mod multipart;
#[cfg(test)]
mod tests;

use std::fmt;

use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::HeaderMap;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer as _;

use crate::dialect::ApiError;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestMeta {
    pub model: Option<String>,
    pub stream: bool,
    /// `max_completion_tokens`, `max_tokens` or `max_output_tokens` (the first
    /// of them, in that order, that is a non-negative integer).
    pub max_tokens: Option<u64>,
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

impl RequestMeta {
    /// Reads a request body as its `Content-Type` says, or refuses it.
    ///
    /// - More than one `Content-Type` header: 400 (parsers pick different ones).
    /// - An empty body (or only whitespace) has no model, whatever its type:
    ///   the SDKs send bodiless `POST .../cancel` calls as `application/json`.
    /// - A compressed body (`Content-Encoding`): 400, keygate cannot read it.
    /// - `application/json`, `*/*+json`: strict JSON ([`RequestMeta::parse`]).
    /// - `multipart/form-data`: strict multipart, for the `model` field.
    /// - `application/x-www-form-urlencoded`: the `model` field.
    /// - Anything else, or no type: opaque (realtime sends `application/sdp`),
    ///   unless it looks like JSON: an upstream might parse it anyway, so the
    ///   client is told to label it.
    pub fn from_body(headers: &HeaderMap, body: &[u8]) -> Result<Self, ApiError> {
        let mut types = headers.get_all(CONTENT_TYPE).iter();
        let content_type = types.next();
        if types.next().is_some() {
            return Err(bad_request(
                "The request has more than one `Content-Type` header. Send exactly one, e.g. `Content-Type: application/json`.",
                None,
            ));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        if !is_identity(headers) {
            return Err(bad_request(
                "This gateway does not accept compressed request bodies. Send the body without a `Content-Encoding`.",
                None,
            ));
        }
        let Some(content_type) = content_type else {
            return opaque(body);
        };
        let media = MediaType::parse(content_type.as_bytes()).map_err(|reason| {
            bad_request(
                format!("The `Content-Type` header is not a valid media type ({reason}). Send e.g. `Content-Type: application/json`."),
                None,
            )
        })?;
        if media.is_json() {
            let charset = media.param("charset");
            if charset.is_some_and(|c| !c.eq_ignore_ascii_case("utf-8") && !c.eq_ignore_ascii_case("utf8")) {
                return Err(bad_request(
                    "JSON request bodies must be UTF-8. Send `Content-Type: application/json` without another charset.",
                    None,
                ));
            }
            return Self::parse(body);
        }
        if media.is("multipart", "form-data") {
            let boundary = multipart::boundary(&media)?;
            return Ok(Self { model: multipart::model(boundary, body)?, ..Self::default() });
        }
        if media.is("application", "x-www-form-urlencoded") {
            if looks_like_json(body) {
                return Err(json_mislabelled());
            }
            return Ok(Self { model: urlencoded_model(body)?, ..Self::default() });
        }
        opaque(body)
    }

    /// Parses a JSON body. Invalid JSON (or a body that is not an object) is
    /// OpenAI's 400 "could not parse the JSON body"; a policy field sent twice,
    /// or a `model` that is not a string, is a 400 naming the field.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        // serde_json refuses a BOM anyway; some upstreams skip it, so say what to fix.
        if body.starts_with(UTF8_BOM) {
            return Err(bad_request("The JSON body starts with a byte order mark. Send UTF-8 JSON without one.", None));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let fields = deserializer.deserialize_map(FieldsVisitor).map_err(|_| ApiError::InvalidJson)?;
        deserializer.end().map_err(|_| ApiError::InvalidJson)?;
        if let Some(field) = fields.duplicate {
            let name = field.name();
            return Err(bad_request(
                format!("The JSON body sets `{name}` more than once. Send each field once."),
                Some(name),
            ));
        }
        let model = match fields.model {
            None => None,
            Some(Scalar::Str(model)) => Some(model),
            Some(other) => {
                return Err(bad_request(
                    format!("Invalid type for 'model': expected a string, but got {} instead.", other.kind()),
                    Some("model"),
                ))
            }
        };
        let count = |v: Option<Scalar>| match v {
            Some(Scalar::U64(n)) => Some(n),
            _ => None,
        };
        Ok(Self {
            model,
            stream: matches!(fields.stream, Some(Scalar::Bool(true))),
            max_tokens: count(fields.max_completion_tokens)
                .or(count(fields.max_tokens))
                .or(count(fields.max_output_tokens)),
        })
    }
}

fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
    ApiError::BadRequest { message: message.into(), param }
}

fn json_mislabelled() -> ApiError {
    bad_request(
        "The request body looks like JSON, but its `Content-Type` is not `application/json`. Send it with `Content-Type: application/json`.",
        None,
    )
}

/// Whether every `Content-Encoding` is `identity` (or there is none).
fn is_identity(headers: &HeaderMap) -> bool {
    headers.get_all(CONTENT_ENCODING).iter().all(|value| {
        value.as_bytes().split(|b| *b == b',').all(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"identity"))
    })
}

/// A body keygate does not read: fine, unless an upstream could take it for JSON.
fn opaque(body: &[u8]) -> Result<RequestMeta, ApiError> {
    if looks_like_json(body) {
        return Err(json_mislabelled());
    }
    Ok(RequestMeta::default())
}

/// Whether a lenient parser could read `body` as JSON: after byte order marks
/// (UTF-8, and the bytes of UTF-16/32 ones), NULs (UTF-16/32 text, which some
/// parsers detect) and whitespace, it starts an object or an array.
fn looks_like_json(body: &[u8]) -> bool {
    let first = body.iter().find(|b| !(b.is_ascii_whitespace() || matches!(b, 0 | 0xEF | 0xBB | 0xBF | 0xFE | 0xFF)));
    matches!(first, Some(b'{' | b'['))
}

/// The `model` field of an `application/x-www-form-urlencoded` body. Names
/// are compared after decoding and ignoring ASCII case; two are a 400.
fn urlencoded_model(body: &[u8]) -> Result<Option<String>, ApiError> {
    let mut model = None;
    // Some parsers also split on `;` (python-multipart does): split on both.
    for pair in body.split(|b| *b == b'&') {
        for (n, field) in pair.split(|b| *b == b';').enumerate() {
            let (name, value) = match field.iter().position(|b| *b == b'=') {
                Some(at) => (&field[..at], &field[at + 1..]),
                None => (field, &b""[..]),
            };
            if !percent_decode(name).eq_ignore_ascii_case(b"model") {
                continue;
            }
            // `model=a;b`: `a` where `;` splits fields, `a;b` where only `&` does.
            if n == 0 && field.len() < pair.len() {
                return Err(bad_request(
                    "The form body has a `;` after the `model` field, which some parsers read as a field separator and others as part of the value. Percent-encode it as `%3B`.",
                    Some("model"),
                ));
            }
            if model.is_some() {
                return Err(bad_request("The form body sets `model` more than once. Send it once.", Some("model")));
            }
            let value = String::from_utf8(percent_decode(value).into_owned())
                .map_err(|_| bad_request("The form field `model` is not UTF-8 text.", Some("model")))?;
            model = Some(value);
        }
    }
    Ok(model)
}

/// Form decoding: `+` is a space, `%XX` a byte; a `%` without two hex digits stays.
fn percent_decode(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !bytes.iter().any(|b| matches!(b, b'%' | b'+')) {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (Some(high), Some(low)) => {
                    // Two hex digits make at most 255.
                    out.push((high * 16 + low) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

// === media types ===

/// A `Content-Type` value (RFC 9110 §8.3.1), parsed strictly: a value that
/// some parser might read another way is refused rather than guessed at.
struct MediaType<'a> {
    kind: &'a str,
    subtype: &'a str,
    params: Vec<Param<'a>>,
}

impl<'a> MediaType<'a> {
    fn parse(value: &'a [u8]) -> Result<Self, &'static str> {
        let value = std::str::from_utf8(value).ok().filter(|v| v.is_ascii()).ok_or("it is not ASCII")?;
        let mut cursor = Cursor::new(value.trim_matches(|c| c == ' ' || c == '\t'));
        let kind = cursor.token().ok_or("it has no type")?;
        if !cursor.eat('/') {
            return Err("it has no `/subtype`");
        }
        let subtype = cursor.token().ok_or("it has no subtype")?;
        let params = cursor.params()?;
        if params.iter().any(|p| p.escaped) {
            return Err("a parameter value has a backslash");
        }
        Ok(Self { kind, subtype, params })
    }

    fn is(&self, kind: &str, subtype: &str) -> bool {
        self.kind.eq_ignore_ascii_case(kind) && self.subtype.eq_ignore_ascii_case(subtype)
    }

    fn is_json(&self) -> bool {
        let suffix = self.subtype.len().checked_sub(5).and_then(|at| self.subtype.get(at..));
        self.is("application", "json") || suffix.is_some_and(|s| s.eq_ignore_ascii_case("+json"))
    }

    fn param(&self, name: &str) -> Option<&'a str> {
        self.params.iter().find(|p| p.name.eq_ignore_ascii_case(name)).map(|p| p.value)
    }
}

/// One `name=value` parameter; `value` is the text inside the quotes when quoted.
#[derive(Debug, Clone, Copy)]
struct Param<'a> {
    name: &'a str,
    value: &'a str,
    /// The quoted value holds a backslash. Parsers disagree on whether it
    /// escapes the next character, so callers refuse it where it matters.
    escaped: bool,
}

/// More parameters than any real client sends; also bounds the duplicate check.
const MAX_PARAMS: usize = 16;

/// Reads header values made of tokens, quoted strings and `;` parameters
/// (`Content-Type`, `Content-Disposition`).
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(c as u8);
        self.at += usize::from(hit);
        hit
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// An RFC 9110 token (`tchar`s), or `None` when there is none here.
    fn token(&mut self) -> Option<&'a str> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        (self.at > start).then(|| &self.text[start..self.at])
    }

    /// A quoted string after its opening quote: the raw text inside, and
    /// whether it holds a backslash. `\"` and `\\` are refused: whether they
    /// end the string depends on the parser (browsers never escape).
    fn quoted(&mut self) -> Result<(&'a str, bool), &'static str> {
        let start = self.at;
        let mut escaped = false;
        loop {
            match self.peek() {
                None => return Err("a quoted string is not closed"),
                Some(b'"') => break,
                Some(b'\\') => {
                    if matches!(self.text.as_bytes().get(self.at + 1), Some(b'"' | b'\\')) {
                        return Err("a quoted string has an escaped quote or backslash");
                    }
                    escaped = true;
                }
                Some(b'\t' | b' '..=b'~') => {}
                Some(_) => return Err("a quoted string has a control or non-ASCII character"),
            }
            self.at += 1;
        }
        let value = &self.text[start..self.at];
        self.at += 1;
        Ok((value, escaped))
    }

    /// `*( OWS ";" OWS [ token "=" ( token / quoted-string ) ] )` to the end.
    /// A parameter named twice (ignoring case) is refused: parsers differ on
    /// which one counts.
    fn params(&mut self) -> Result<Vec<Param<'a>>, &'static str> {
        let mut params: Vec<Param<'a>> = Vec::new();
        loop {
            self.skip_spaces();
            if self.peek().is_none() {
                return Ok(params);
            }
            if !self.eat(';') {
                return Err("something other than `;` follows a value");
            }
            self.skip_spaces();
            if matches!(self.peek(), None | Some(b';')) {
                continue;
            }
            let name = self.token().ok_or("a parameter has no name")?;
            if !self.eat('=') {
                return Err("a parameter has no `=` right after its name");
            }
            let (value, escaped) =
                if self.eat('"') { self.quoted()? } else { (self.token().ok_or("a parameter has no value")?, false) };
            if params.len() == MAX_PARAMS {
                return Err("it has too many parameters");
            }
            if params.iter().any(|p| p.name.eq_ignore_ascii_case(name)) {
                return Err("a parameter appears twice");
            }
            params.push(Param { name, value, escaped });
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

// === JSON ===

/// The policy fields of a JSON body. Reading them one by one (everything else
/// skipped with `IgnoredAny`) builds no JSON tree on the hot path, and sees a
/// field sent twice, where serde's derive stops and `Value` keeps the last.
#[derive(Default)]
struct Fields {
    model: Option<Scalar>,
    stream: Option<Scalar>,
    max_tokens: Option<Scalar>,
    max_completion_tokens: Option<Scalar>,
    max_output_tokens: Option<Scalar>,
    /// The first policy field seen twice.
    duplicate: Option<Field>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Model,
    Stream,
    MaxTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    Other,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Stream => "stream",
            Self::MaxTokens => "max_tokens",
            Self::MaxCompletionTokens => "max_completion_tokens",
            Self::MaxOutputTokens => "max_output_tokens",
            Self::Other => "",
        }
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        while let Some(field) = map.next_key_seed(FieldSeed)? {
            let slot = match field {
                Field::Model => &mut fields.model,
                Field::Stream => &mut fields.stream,
                Field::MaxTokens => &mut fields.max_tokens,
                Field::MaxCompletionTokens => &mut fields.max_completion_tokens,
                Field::MaxOutputTokens => &mut fields.max_output_tokens,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value = map.next_value_seed(ScalarSeed)?;
            if slot.is_some() {
                // Keep reading: a syntax error later still wins (it is a 400 either way).
                fields.duplicate.get_or_insert(field);
            } else {
                *slot = Some(value);
            }
        }
        Ok(fields)
    }
}

/// Names a key; serde_json hands it over unescaped, so `"mod\u0065l"` is `model`.
struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Field, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldSeed {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
        Ok(match key {
            "model" => Field::Model,
            "stream" => Field::Stream,
            "max_tokens" => Field::MaxTokens,
            "max_completion_tokens" => Field::MaxCompletionTokens,
            "max_output_tokens" => Field::MaxOutputTokens,
            _ => Field::Other,
        })
    }
}

/// A policy field's value: what keygate uses of it, or the kind it was.
#[derive(Debug)]
enum Scalar {
    Str(String),
    Bool(bool),
    U64(u64),
    Other(&'static str),
}

impl Scalar {
    /// OpenAI's words for a JSON type in "Invalid type for ..." errors.
    fn kind(&self) -> &'static str {
        match self {
            Self::Str(_) => "a string",
            Self::Bool(_) => "a boolean",
            Self::U64(_) => "an integer",
            Self::Other(kind) => kind,
        }
    }
}

struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Scalar, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::U64(v))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Scalar, E> {
        Ok(Scalar::Other("an integer"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
        Ok(Scalar::Other("a number"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an object"))
    }
}
