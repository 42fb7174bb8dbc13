use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use super::*;

fn headers(content_types: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in content_types {
        headers.append(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
    }
    headers
}

fn read(content_type: Option<&str>, body: impl AsRef<[u8]>) -> Result<RequestMeta, ApiError> {
    RequestMeta::from_body(&headers(content_type.as_slice()), body.as_ref())
}

fn model_of(content_type: Option<&str>, body: impl AsRef<[u8]>) -> Option<String> {
    match read(content_type, body) {
        Ok(meta) => meta.model,
        Err(error) => panic!("refused: {error:?}"),
    }
}

/// The 400's message and `param`; panics on anything else.
fn refusal(result: Result<RequestMeta, ApiError>) -> (String, Option<&'static str>) {
    match result {
        Err(ApiError::BadRequest { message, param }) => (message, param),
        other => panic!("expected a 400, got {other:?}"),
    }
}

const MISLABELLED: &str = "The request body looks like JSON, but its `Content-Type` is not `application/json`. Send it with `Content-Type: application/json`.";
const FORM: &str = "multipart/form-data; boundary=XyZ";

/// A multipart body with one part per `(disposition parameters, value)`.
fn form(parts: &[(&str, &str)]) -> String {
    let mut body = String::new();
    for (params, value) in parts {
        body.push_str(&format!("--XyZ\r\nContent-Disposition: form-data; {params}\r\n\r\n{value}\r\n"));
    }
    body + "--XyZ--\r\n"
}

// === content types ===

#[test]
fn reads_model_stream_and_token_allowance() {
    let m = RequestMeta::parse(br#"{"model":"gpt-4o","stream":true,"messages":[]}"#).unwrap();
    assert_eq!(m, RequestMeta { model: Some("gpt-4o".into()), stream: true, max_tokens: None });
    let m = RequestMeta::parse(br#"{"max_completion_tokens":50,"max_tokens":9}"#).unwrap();
    assert_eq!(m.max_tokens, Some(50));
    // The first of them that is a non-negative integer, as before.
    let m = RequestMeta::parse(br#"{"max_completion_tokens":"50","max_tokens":-1,"max_output_tokens":7}"#).unwrap();
    assert_eq!(m.max_tokens, Some(7));
    assert!(!RequestMeta::parse(br#"{"stream":"true"}"#).unwrap().stream);
    assert_eq!(RequestMeta::parse(b"{}").unwrap(), RequestMeta::default());
}

#[test]
fn json_types_are_read_strictly() {
    let json = br#"{"model":"gpt-4o"}"#;
    for ct in ["application/json", "Application/JSON", "application/json; charset=utf-8", "application/vnd.x+json"] {
        assert_eq!(model_of(Some(ct), json).as_deref(), Some("gpt-4o"), "{ct}");
    }
    for bad in [&b"{bad"[..], b"{} x", b"[1,2]", b"\"gpt-4o\"", b"1"] {
        assert!(matches!(read(Some("application/json"), bad), Err(ApiError::InvalidJson)), "{bad:?}");
    }
}

#[test]
fn a_second_content_type_header_is_refused() {
    let result = RequestMeta::from_body(&headers(&["text/plain", "application/json"]), br#"{"model":"gpt-4o"}"#);
    assert_eq!(
        refusal(result),
        (
            "The request has more than one `Content-Type` header. Send exactly one, e.g. `Content-Type: application/json`."
                .into(),
            None
        )
    );
    // Even two equal ones: nobody needs them.
    let result = RequestMeta::from_body(&headers(&["application/json", "application/json"]), b"");
    assert!(result.is_err());
}

#[test]
fn an_empty_body_has_no_model_whatever_its_type() {
    for ct in [None, Some("application/json"), Some("multipart/form-data"), Some("text/plain"), Some("nonsense")] {
        for body in ["", " ", "\r\n\t "] {
            assert_eq!(read(ct, body).unwrap(), RequestMeta::default(), "{ct:?} {body:?}");
        }
    }
}

#[test]
fn json_under_another_type_is_refused() {
    let json = r#"{"model":"gpt-4o-mini","model":"gpt-4o"}"#;
    for ct in [None, Some("text/plain"), Some("application/jsonx"), Some("application/x-www-form-urlencoded")] {
        assert_eq!(refusal(read(ct, json)), (MISLABELLED.into(), None), "{ct:?}");
    }
    let hidden: [&[u8]; 5] = [
        b"\xEF\xBB\xBF{\"model\":\"gpt-4o\"}",
        b"  \n[{\"model\":\"gpt-4o\"}]",
        b"\xFF\xFE{\x00\"\x00",
        b"\x00\x00\x00{",
        b"\xEF\xBB\xBF \t{",
    ];
    for body in hidden {
        assert_eq!(refusal(read(Some("text/plain"), body)), (MISLABELLED.into(), None), "{body:?}");
    }
}

#[test]
fn other_bodies_are_opaque() {
    let cases: [(Option<&str>, &[u8]); 4] = [
        (Some("application/sdp"), b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"),
        (Some("text/plain"), b"model: gpt-4o"),
        (Some("audio/wav"), b"RIFF\x00\x01{"),
        (None, b"hello"),
    ];
    for (ct, body) in cases {
        assert_eq!(read(ct, body).unwrap(), RequestMeta::default(), "{ct:?}");
    }
}

#[test]
fn a_byte_order_mark_never_hides_the_model() {
    let body = b"\xEF\xBB\xBF{\"model\":\"gpt-4o\"}";
    assert_eq!(
        refusal(read(Some("application/json"), body)),
        ("The JSON body starts with a byte order mark. Send UTF-8 JSON without one.".into(), None)
    );
}

#[test]
fn json_in_another_charset_is_refused() {
    assert_eq!(model_of(Some("application/json; charset=UTF8"), r#"{"model":"a"}"#).as_deref(), Some("a"));
    assert_eq!(
        refusal(read(Some("application/json; charset=utf-16"), r#"{"model":"a"}"#)),
        (
            "JSON request bodies must be UTF-8. Send `Content-Type: application/json` without another charset.".into(),
            None
        )
    );
}

#[test]
fn an_invalid_content_type_is_refused() {
    let cases = [
        ("application/json, text/plain", "something other than `;` follows a value"),
        ("application/json; charset", "a parameter has no `=` right after its name"),
        ("application/json; charset = utf-8", "a parameter has no `=` right after its name"),
        ("application", "it has no `/subtype`"),
        ("/json", "it has no type"),
        ("text/plain; a=\"x\\\"y\"", "a quoted string has an escaped quote or backslash"),
        ("text/plain; a=\"x\\y\"", "a parameter value has a backslash"),
        ("text/plain; a=\"x", "a quoted string is not closed"),
        ("multipart/form-data; boundary=a; BOUNDARY=b", "a parameter appears twice"),
    ];
    for (ct, reason) in cases {
        let message = format!(
            "The `Content-Type` header is not a valid media type ({reason}). Send e.g. `Content-Type: application/json`."
        );
        assert_eq!(refusal(read(Some(ct), "x")), (message, None), "{ct}");
    }
    let many: String = (0..17).fold("text/plain".into(), |ct, i| format!("{ct}; a{i}=b"));
    assert!(refusal(read(Some(&many), "x")).0.contains("it has too many parameters"));
}

#[test]
fn a_compressed_body_is_refused() {
    let mut compressed = headers(&["application/json"]);
    compressed.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    assert_eq!(
        refusal(RequestMeta::from_body(&compressed, b"\x1f\x8b")),
        (
            "This gateway does not accept compressed request bodies. Send the body without a `Content-Encoding`."
                .into(),
            None
        )
    );
    compressed.insert(CONTENT_ENCODING, HeaderValue::from_static("identity"));
    assert_eq!(RequestMeta::from_body(&compressed, br#"{"model":"a"}"#).unwrap().model.as_deref(), Some("a"));
}

// === JSON ===

#[test]
fn a_policy_field_sent_twice_is_refused() {
    let cases = [
        (r#"{"model":"gpt-4o-mini","model":"gpt-4o"}"#, "model"),
        (r#"{"model":"gpt-4o-mini","mod\u0065l":"gpt-4o"}"#, "model"),
        (r#"{"\u006dodel":"gpt-4o","messages":[],"model":"gpt-4o-mini"}"#, "model"),
        (r#"{"stream":false,"stream":true}"#, "stream"),
        (r#"{"max_tokens":1,"max_tokens":2}"#, "max_tokens"),
        (r#"{"max_completion_tokens":1,"max_completion_tokens":null}"#, "max_completion_tokens"),
        (r#"{"max_output_tokens":1,"max_output_tokens":2}"#, "max_output_tokens"),
    ];
    for (body, field) in cases {
        let message = format!("The JSON body sets `{field}` more than once. Send each field once.");
        assert_eq!(refusal(read(Some("application/json"), body)), (message, Some(field)), "{body}");
    }
    // Other fields are the upstream's business.
    assert_eq!(model_of(Some("application/json"), r#"{"n":1,"n":2,"model":"a"}"#).as_deref(), Some("a"));
    // Escapes in a model's value are read too.
    assert_eq!(model_of(Some("application/json"), r#"{"model":"gpt\u002d4o"}"#).as_deref(), Some("gpt-4o"));
}

#[test]
fn a_model_that_is_not_a_string_is_refused() {
    let cases = [
        ("null", "null"),
        ("1", "an integer"),
        ("-1", "an integer"),
        ("1.5", "a number"),
        ("true", "a boolean"),
        (r#"["gpt-4o"]"#, "an array"),
        (r#"{"id":"gpt-4o"}"#, "an object"),
    ];
    for (value, kind) in cases {
        let body = format!(r#"{{"model":{value},"messages":[]}}"#);
        let message = format!("Invalid type for 'model': expected a string, but got {kind} instead.");
        assert_eq!(refusal(read(Some("application/json"), body)), (message, Some("model")), "{value}");
    }
}

// === application/x-www-form-urlencoded ===

#[test]
fn a_urlencoded_form_has_its_model_read() {
    let ct = Some("application/x-www-form-urlencoded");
    assert_eq!(model_of(ct, "a=1&model=gpt-4o").as_deref(), Some("gpt-4o"));
    assert_eq!(model_of(ct, "a=1;mod%65l=gpt%2D4o+x").as_deref(), Some("gpt-4o x"));
    assert_eq!(model_of(ct, "a=1&b").as_deref(), None);
    assert_eq!(
        refusal(read(ct, "model=gpt-4o-mini&MODEL=gpt-4o")),
        ("The form body sets `model` more than once. Send it once.".into(), Some("model"))
    );
    assert_eq!(refusal(read(ct, "model=%FF")), ("The form field `model` is not UTF-8 text.".into(), Some("model")));
}

#[test]
fn a_urlencoded_model_value_with_a_semicolon_is_refused() {
    // Found by fuzzing: `model=a;b` is `a` to a parser that splits on `;`
    // (what keygate checked) and `a;b` to one that splits on `&` only.
    let ct = Some("application/x-www-form-urlencoded");
    let message = "The form body has a `;` after the `model` field, which some parsers read as a field separator and others as part of the value. Percent-encode it as `%3B`.";
    for body in ["model=gpt-4o-mini;gpt-4o", "a=1&model=x;", "MODEL=x;y=z&b=2", "model;x"] {
        assert_eq!(refusal(read(ct, body)), (message.to_owned(), Some("model")), "{body}");
    }
    // Where only a `;`-splitting parser sees a model, keygate checks that one.
    assert_eq!(model_of(ct, "x;model=gpt-4o").as_deref(), Some("gpt-4o"));
    assert_eq!(model_of(ct, "model=gpt-4o%3Bx").as_deref(), Some("gpt-4o;x"));
}

// === multipart/form-data ===

#[test]
fn multipart_reads_the_model_field() {
    let file = ("name=\"file\"; filename=\"C:\\x\\a.wav\"", "RIFF\r\n--XyY--Xy");
    for name in ["name=\"model\"", "name=model", "NAME=\"model\"", "filename=\"m.txt\";name=model"] {
        assert_eq!(model_of(Some(FORM), form(&[file, (name, "whisper-1")])).as_deref(), Some("whisper-1"), "{name}");
    }
    assert_eq!(model_of(Some(FORM), form(&[file])), None);
    assert_eq!(model_of(Some(FORM), form(&[("name=model", "")])).as_deref(), Some(""));
    let quoted = "multipart/form-data; boundary=\"a'()+_,-./:=? b\"";
    let body = "--a'()+_,-./:=? b\r\nContent-Disposition: form-data; name=\"model\"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nm\r\n--a'()+_,-./:=? b--";
    assert_eq!(model_of(Some(quoted), body).as_deref(), Some("m"));
}

#[test]
fn multipart_refuses_what_parsers_read_differently() {
    let part = |headers: &str, value: &str| format!("--XyZ\r\n{headers}\r\n\r\n{value}\r\n--XyZ--\r\n");
    let model = "Content-Disposition: form-data; name=\"model\"";
    let cases: Vec<(&str, String)> = vec![
        ("it must start with the boundary delimiter (no preamble)", format!("preamble\r\n{}", form(&[]))),
        ("it has no closing delimiter", format!("--XyZ\r\n{model}\r\n\r\ngpt-4o")),
        ("nothing may follow the closing delimiter", format!("{}--XyZ\r\n{model}\r\n\r\ngpt-4o\r\n", form(&[]))),
        (
            "a boundary delimiter must be followed by CRLF or `--`",
            format!("--XyZ \r\n{model}\r\n\r\ngpt-4o\r\n--XyZ--"),
        ),
        ("a boundary delimiter must be followed by CRLF or `--`", format!("--XyZ\n{model}\n\ngpt-4o\n--XyZ--")),
        ("the boundary appears inside a part", part(model, "gpt-4o-mini--XyZ\r\n")),
        ("a boundary delimiter must be followed by CRLF or `--`", part(model, "a\r\n--XyZZ")),
        ("a part has no headers", "--XyZ\r\n\r\ngpt-4o\r\n--XyZ--".into()),
        (
            "a part's headers do not end with an empty line",
            "--XyZ\r\nContent-Disposition: form-data; name=model\r\n--XyZ--".into(),
        ),
        ("a part has no Content-Disposition header", part("Content-Type: text/plain", "gpt-4o")),
        ("a part's Content-Disposition is not `form-data`", part("Content-Disposition: attachment; name=model", "x")),
        ("a part's Content-Disposition has no `name`", part("Content-Disposition: form-data; filename=x", "x")),
        (
            "a part is named with `name*=` (RFC 5987), which form-data does not allow",
            part("Content-Disposition: form-data; name*=utf-8''model", "x"),
        ),
        (
            "a part is named with `name*=` (RFC 5987), which form-data does not allow",
            part("Content-Disposition: form-data; name=a; NAME*0=model", "x"),
        ),
        (
            "a part's Content-Disposition is invalid (a parameter appears twice)",
            part("Content-Disposition: form-data; name=a; Name=model", "x"),
        ),
        (
            "a part's Content-Disposition is invalid (a quoted string has an escaped quote or backslash)",
            part("Content-Disposition: form-data; filename=\"a\\\"; name=model\"; name=a", "x"),
        ),
        (
            "a part's Content-Disposition is invalid (something other than `;` follows a value)",
            part("Content-Disposition: form-data; name=\"model\"x", "x"),
        ),
        ("a part's name has a backslash", part("Content-Disposition: form-data; name=\"mo\\del\"", "x")),
        ("a part's header is folded over lines", part(&format!("{model}\r\n foo"), "x")),
        (
            "a part's header lines must end with CRLF",
            part("Content-Disposition: form-data; name=a\nContent-Disposition: form-data; name=model", "x"),
        ),
        ("a part's header has no `:`", part(&format!("{model}\r\nnonsense"), "x")),
        ("a part's header has an invalid name", part(&format!("{model}\r\nBad Name: x"), "x")),
        ("a part repeats a header", part(&format!("Content-Disposition: form-data; name=a\r\n{model}"), "x")),
        (
            "the `model` part has a Content-Transfer-Encoding",
            part(&format!("{model}\r\nContent-Transfer-Encoding: base64"), "Z3B0LTRv"),
        ),
        (
            "the `model` part has a charset other than UTF-8",
            part(&format!("{model}\r\nContent-Type: text/plain; charset=utf-16"), "x"),
        ),
    ];
    let mut cases: Vec<(&str, Vec<u8>)> = cases.into_iter().map(|(reason, body)| (reason, body.into_bytes())).collect();
    let mut latin1 = part(model, "gpt-4o").into_bytes();
    let at = latin1.iter().position(|b| *b == b'4').unwrap();
    latin1[at] = 0xFF;
    cases.push(("the `model` part is not UTF-8 text", latin1));
    for (reason, body) in cases {
        let message = format!(
            "The multipart body could not be parsed: {reason}. Send `multipart/form-data` as RFC 7578 describes."
        );
        assert_eq!(refusal(read(Some(FORM), &body)), (message, None), "{reason}: {}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn multipart_refuses_a_quoted_semicolon_that_would_name_the_model() {
    // Found by the body_form fuzz invariant: a parser that splits the
    // disposition on every `;` reads `name=model"` out of the quoted value.
    let reason = "a part's Content-Disposition has a quoted `;`, which some parsers split on";
    let message =
        format!("The multipart body could not be parsed: {reason}. Send `multipart/form-data` as RFC 7578 describes.");
    for params in ["name=\"x;name=model\"", "name=\"file\"; filename=\"a;name=model\"", "name=\"model;a\""] {
        assert_eq!(refusal(read(Some(FORM), form(&[(params, "gpt-4o")]))).0, message, "{params}");
    }
    // A `;` in a file name is fine when no reading names the model with it.
    let file = ("name=\"file\"; filename=\"a;b.wav\"", "RIFF");
    assert_eq!(
        model_of(Some(FORM), form(&[file, ("name=\"model\"; filename=\"m;x\"", "whisper-1")])).as_deref(),
        Some("whisper-1")
    );
}

#[test]
fn multipart_with_more_than_one_model_field_is_refused() {
    let twice = "The multipart body has more than one `model` field. Send it once.".to_owned();
    for second in ["name=\"model\"", "name=MODEL", "name=\"mod%65l\"", "name=\"Mod%45L\""] {
        let body =
            form(&[("name=\"model\"", "gpt-4o-mini"), ("name=\"file\"; filename=\"a\"", "x"), (second, "gpt-4o")]);
        assert_eq!(refusal(read(Some(FORM), body)), (twice.clone(), Some("model")), "{second}");
    }
}

#[test]
fn multipart_needs_one_valid_boundary() {
    let body = form(&[("name=model", "gpt-4o")]);
    assert_eq!(
        refusal(read(Some("multipart/form-data"), &body)).0,
        "The multipart `Content-Type` has no `boundary` parameter. Send e.g. `Content-Type: multipart/form-data; boundary=...`."
    );
    let invalid = "The multipart `boundary` must be 1 to 70 letters, digits or `'()+_,-./:=?` (RFC 2046).";
    let long = format!("multipart/form-data; boundary={}", "a".repeat(71));
    for ct in [
        "multipart/form-data; boundary=\"\"",
        "multipart/form-data; boundary=\"a{b\"",
        "multipart/form-data; boundary=\"ab \"",
        &long,
    ] {
        assert_eq!(refusal(read(Some(ct), &body)).0, invalid, "{ct}");
    }
    assert!(refusal(read(Some("multipart/form-data; boundary=XyZ; boundary=Other"), &body))
        .0
        .contains("appears twice"));
}

#[test]
fn a_32_mib_multipart_body_is_read_in_linear_time() {
    // Near misses of the delimiter and the header end, repeated: a scan that
    // restarts at each would take minutes.
    let filler = "\r\n--XyZ-\r\n--XyY\r\n\r".repeat(32 << 20 >> 4);
    let boundary = "a".repeat(69) + "b";
    let near_miss = format!("--{}", "a".repeat(69)).repeat(1 << 14);
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n{filler}{near_miss}\r\n--{boundary}\r\nContent-Disposition: form-data; name=model\r\n\r\nwhisper-1\r\n--{boundary}--\r\n"
    );
    assert!(body.len() > 32 << 20);
    let started = std::time::Instant::now();
    let ct = format!("multipart/form-data; boundary={boundary}");
    assert_eq!(model_of(Some(&ct), &body).as_deref(), Some("whisper-1"));
    // Generous: a debug build takes well under a second.
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
}

// === what keygate accepts, an upstream reads the same ===

/// JSON text for an object key or string value, some escaped.
fn json_key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        r#""model""#,
        r#""mod\u0065l""#,
        r#""\u006Dodel""#,
        r#""Model""#,
        r#""model ""#,
        r#""stream""#,
        r#""str\u0065am""#,
        r#""max_tokens""#,
        r#""max_completion_tokens""#,
        r#""max_output_tokens""#,
        r#""messages""#,
    ])
}

fn json_value() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        4 => Just(r#""gpt-4o-mini""#),
        4 => Just(r#""gpt-4o""#),
        2 => Just(r#""gpt\u002d4o""#),
        1 => Just(r#""""#),
        1 => Just("null"),
        2 => Just("true"),
        1 => Just("false"),
        1 => Just("7"),
        1 => Just("-7"),
        1 => Just("2.5"),
        1 => Just(r#"["gpt-4o"]"#),
        1 => Just(r#"{"model":"gpt-4o"}"#),
    ]
}

/// A JSON object (or near one) with random keys, repeats, escapes and framing.
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    let entries = prop::collection::vec((json_key(), json_value()), 0..5);
    let framing = prop_oneof![8 => Just(""), 1 => Just(" \n"), 1 => Just("\u{FEFF}"), 1 => Just("["), 1 => Just("x")];
    let space = prop::sample::select(vec!["", " ", "\r\n\t"]);
    (framing, entries, space)
        .prop_map(|(prefix, entries, space)| {
            let fields: Vec<String> = entries.iter().map(|(k, v)| format!("{k}{space}:{space}{v}")).collect();
            let close = if prefix == "[" { "}]" } else { "}" };
            format!("{prefix}{{{space}{}{space}{close}", fields.join(","))
        })
        .prop_map(String::into_bytes)
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        1 => Just(None),
        3 => Just(Some("application/json")),
        2 => Just(Some("Application/JSON; charset=utf-8")),
        2 => Just(Some("application/merge-patch+json")),
        1 => Just(Some("text/plain")),
        1 => Just(Some("application/jsonx")),
        1 => Just(Some("application/x-www-form-urlencoded")),
        1 => Just(Some("multipart/form-data; boundary=XyZ")),
    ]
}

/// An upstream's JSON reader: `serde_json::Value` keeps the last of a repeated key.
fn upstream_json(body: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    // A lenient upstream also skips a byte order mark.
    let body = body.strip_prefix(UTF8_BOM).unwrap_or(body);
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(object)) => Some(object),
        _ => None,
    }
}

/// Disposition parameters for a generated part.
fn part_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        4 => Just("name=\"model\""),
        3 => Just("name=model"),
        2 => Just("NAME=\"model\""),
        2 => Just("name=\"Model\""),
        2 => Just("filename=\"x\"; name=\"model\""),
        1 => Just("name=\"mod%65l\""),
        6 => Just("name=\"file\"; filename=\"a.wav\""),
        6 => Just("name=\"prompt\""),
        1 => Just("name*=utf-8''model"),
        1 => Just("name=\"model\"; name=\"x\""),
        1 => Just("name=\"mo\\del\""),
        1 => Just("name=\"model\"x"),
    ]
}

fn part_value() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        4 => Just("gpt-4o-mini"),
        4 => Just("gpt-4o"),
        1 => Just(""),
        1 => Just("a\r\nb"),
        1 => Just("--XyZ"),
        1 => Just("x\r\n--XyZ\r\n"),
        1 => Just("\r\n--XyZ--"),
    ]
}

/// A multipart body: generated parts, then maybe a corruption.
fn multipart_body() -> impl Strategy<Value = Vec<u8>> {
    let parts = prop::collection::vec((part_name(), part_value()), 0..4);
    let ending = prop_oneof![
        4 => Just("--XyZ--\r\n"),
        1 => Just("--XyZ--"),
        1 => Just("--XyZ"),
        1 => Just("--XyZ--\r\n--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\ngpt-4o\r\n--XyZ--"),
        1 => Just(""),
    ];
    let newline = prop_oneof![6 => Just("\r\n"), 1 => Just("\n")];
    let preamble = prop_oneof![6 => Just(""), 1 => Just("pre\r\n")];
    (preamble, parts, ending, newline).prop_map(|(preamble, parts, ending, nl)| {
        let mut body = preamble.to_owned();
        for (params, value) in parts {
            body.push_str(&format!("--XyZ{nl}Content-Disposition: form-data; {params}{nl}{nl}{value}\r\n"));
        }
        (body + ending).into_bytes()
    })
}

/// A lenient upstream's multipart reader: splits on the delimiter wherever it
/// is, takes a `name` quoted or not and in any case, and the last model wins.
fn upstream_multipart(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let mut model = None;
    for part in text.split("--XyZ") {
        let part = part.strip_prefix("\r\n").or_else(|| part.strip_prefix('\n')).unwrap_or(part);
        let Some((headers, value)) = part.split_once("\r\n\r\n").or_else(|| part.split_once("\n\n")) else {
            continue;
        };
        let named_model = headers.lines().any(|line| {
            let lower = line.to_ascii_lowercase();
            lower.starts_with("content-disposition:")
                && lower.split(';').any(|p| {
                    let p = p.trim();
                    let name = p.strip_prefix("name=").or_else(|| p.strip_prefix("name*=utf-8''"));
                    name.is_some_and(|n| matches!(n.trim_matches('"').replace("%65", "e").as_str(), "model"))
                })
        });
        if named_model {
            model = Some(value.strip_suffix("\r\n").unwrap_or(value).to_owned());
        }
    }
    model
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn an_accepted_json_body_reads_the_same_upstream(ct in content_type(), body in json_body()) {
        if let Ok(meta) = read(ct, &body) {
            if let Some(object) = upstream_json(&body) {
                let model = object.get("model").and_then(|m| m.as_str());
                prop_assert_eq!(meta.model.as_deref(), model);
                let stream = object.get("stream").and_then(|s| s.as_bool()).unwrap_or(false);
                prop_assert_eq!(meta.stream, stream);
            }
        }
    }

    #[test]
    fn an_accepted_multipart_body_reads_the_same_upstream(
        ct in prop::sample::select(vec![FORM, "multipart/form-data; boundary=\"XyZ\""]),
        body in multipart_body(),
    ) {
        if let Ok(meta) = read(Some(ct), &body) {
            prop_assert_eq!(meta.model, upstream_multipart(&body));
        }
    }
}
