//! A strict reader of `multipart/form-data` bodies (RFC 7578 on RFC 2046),
//! for one purpose: find the `model` field exactly as an upstream would, or
//! refuse the body. Anything parsers are known to read differently is a 400:
//! a preamble, text after the closing delimiter, the boundary inside a part,
//! folded or LF-only headers, `name*=`, escapes in a quoted name, a quoted
//! `;` that would name `model` to a parser splitting on it, and more than one
//! part that could be named `model`.
//!
//! Work is linear in the body: the delimiter is found with `memmem` and every
//! byte is looked at a bounded number of times (bodies run to tens of MiB).

use std::borrow::Cow;

use memchr::memmem;

use super::{bad_request, percent_decode, Cursor, MediaType, Param};
use crate::dialect::ApiError;

/// RFC 2046's longest boundary.
const MAX_BOUNDARY: usize = 70;

/// The `boundary` parameter of a `multipart/form-data` type, checked against
/// RFC 2046's alphabet (a boundary with other characters, such as quotes or
/// backslashes, is where parsers start to disagree).
pub(super) fn boundary<'a>(media: &MediaType<'a>) -> Result<&'a str, ApiError> {
    let boundary = media.param("boundary").ok_or_else(|| {
        bad_request(
            "The multipart `Content-Type` has no `boundary` parameter. Send e.g. `Content-Type: multipart/form-data; boundary=...`.",
            None,
        )
    })?;
    let valid = (1..=MAX_BOUNDARY).contains(&boundary.len())
        && !boundary.ends_with(' ')
        && boundary.bytes().all(|b| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b));
    if !valid {
        return Err(bad_request(
            "The multipart `boundary` must be 1 to 70 letters, digits or `'()+_,-./:=?` (RFC 2046).",
            None,
        ));
    }
    Ok(boundary)
}

/// The value of the body's `model` field, if it has one.
pub(super) fn model(boundary: &str, body: &[u8]) -> Result<Option<String>, ApiError> {
    let mut delimiter = Vec::with_capacity(boundary.len() + 2);
    delimiter.extend_from_slice(b"--");
    delimiter.extend_from_slice(boundary.as_bytes());
    let finder = memmem::Finder::new(&delimiter);
    if !body.starts_with(&delimiter) {
        return Err(malformed("it must start with the boundary delimiter (no preamble)"));
    }
    let mut at = delimiter.len();
    let mut model = None;
    loop {
        let rest = &body[at..];
        if let Some(epilogue) = rest.strip_prefix(b"--") {
            // Text after the close could hold parts for a parser that keeps going.
            if !(epilogue.is_empty() || epilogue == b"\r\n") {
                return Err(malformed("nothing may follow the closing delimiter"));
            }
            return Ok(model);
        }
        if !rest.starts_with(b"\r\n") {
            return Err(malformed("a boundary delimiter must be followed by CRLF or `--`"));
        }
        let start = at + 2;
        // The next occurrence of `--boundary` anywhere must be the next
        // delimiter: some parsers split on it wherever it appears.
        let Some(next) = finder.find(&body[start..]).map(|i| start + i) else {
            return Err(malformed("it has no closing delimiter"));
        };
        let Some(end) = next.checked_sub(2).filter(|&end| end >= start && &body[end..next] == b"\r\n") else {
            return Err(malformed("the boundary appears inside a part"));
        };
        if let Some(value) = read_part(&body[start..end])? {
            if model.is_some() {
                return Err(bad_request(
                    "The multipart body has more than one `model` field. Send it once.",
                    Some("model"),
                ));
            }
            model = Some(value);
        }
        at = next + delimiter.len();
    }
}

fn malformed(reason: &str) -> ApiError {
    bad_request(
        format!("The multipart body could not be parsed: {reason}. Send `multipart/form-data` as RFC 7578 describes."),
        None,
    )
}

/// Reads one part (between delimiters): `Some(value)` for a `model` field.
fn read_part(part: &[u8]) -> Result<Option<String>, ApiError> {
    if part.starts_with(b"\r\n") {
        return Err(malformed("a part has no headers"));
    }
    let Some(split) = memmem::find(part, b"\r\n\r\n") else {
        return Err(malformed("a part's headers do not end with an empty line"));
    };
    let (headers, content) = (&part[..split], &part[split + 4..]);
    let mut disposition = None;
    let mut transfer_encoding = None;
    let mut content_type = None;
    for line in split_crlf(headers) {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(malformed("a part's header is folded over lines"));
        }
        if line.iter().any(|b| matches!(b, b'\r' | b'\n')) {
            return Err(malformed("a part's header lines must end with CRLF"));
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(malformed("a part's header has no `:`"));
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.is_empty() || !name.iter().copied().all(super::is_tchar) {
            return Err(malformed("a part's header has an invalid name"));
        }
        let slot = if name.eq_ignore_ascii_case(b"content-disposition") {
            &mut disposition
        } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
            &mut transfer_encoding
        } else if name.eq_ignore_ascii_case(b"content-type") {
            &mut content_type
        } else {
            continue;
        };
        if slot.replace(value).is_some() {
            return Err(malformed("a part repeats a header"));
        }
    }
    let disposition = disposition.ok_or_else(|| malformed("a part has no Content-Disposition header"))?;
    if !is_model(disposition)? {
        return Ok(None);
    }
    // Some parsers decode these; keygate would check the encoded text.
    if transfer_encoding
        .is_some_and(|e| !["7bit", "8bit", "binary"].iter().any(|ok| e.eq_ignore_ascii_case(ok.as_bytes())))
    {
        return Err(malformed("the `model` part has a Content-Transfer-Encoding"));
    }
    if let Some(content_type) = content_type {
        let media =
            MediaType::parse(content_type).map_err(|_| malformed("the `model` part's Content-Type is invalid"))?;
        let charset = media.param("charset");
        if charset.is_some_and(|c| !c.eq_ignore_ascii_case("utf-8") && !c.eq_ignore_ascii_case("us-ascii")) {
            return Err(malformed("the `model` part has a charset other than UTF-8"));
        }
    }
    let value = std::str::from_utf8(content).map_err(|_| malformed("the `model` part is not UTF-8 text"))?;
    Ok(Some(value.to_owned()))
}

/// Lines of a header block (which has no final CRLF).
fn split_crlf(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(block);
    std::iter::from_fn(move || {
        let text = rest?;
        match memmem::find(text, b"\r\n") {
            Some(i) => {
                rest = Some(&text[i + 2..]);
                Some(&text[..i])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// Whether a `Content-Disposition: form-data; name=...` names the `model`
/// field. Names compare ignoring ASCII case, and also after percent-decoding
/// (some parsers decode them), so no spelling slips past as another field.
fn is_model(disposition: &[u8]) -> Result<bool, ApiError> {
    let text = std::str::from_utf8(disposition)
        .map_err(|_| malformed("a part's Content-Disposition is not ASCII"))?
        .trim_matches(|c| c == ' ' || c == '\t');
    let mut cursor = Cursor::new(text);
    let kind = cursor.token().ok_or_else(|| malformed("a part's Content-Disposition has no type"))?;
    if !kind.eq_ignore_ascii_case("form-data") {
        return Err(malformed("a part's Content-Disposition is not `form-data`"));
    }
    let params =
        cursor.params().map_err(|reason| malformed(&format!("a part's Content-Disposition is invalid ({reason})")))?;
    if params.iter().any(|p| p.name.get(..5).is_some_and(|n| n.eq_ignore_ascii_case("name*"))) {
        return Err(malformed("a part is named with `name*=` (RFC 5987), which form-data does not allow"));
    }
    let Some(Param { value: name, escaped, .. }) = params.iter().copied().find(|p| p.name.eq_ignore_ascii_case("name"))
    else {
        return Err(malformed("a part's Content-Disposition has no `name`"));
    };
    if escaped {
        return Err(malformed("a part's name has a backslash"));
    }
    let named_model = is_model_name(name);
    // A parser that splits on every `;`, quoted or not, reads
    // `filename="a;name=model"` as naming `model`: refuse what readings disagree on.
    let naive = text.split(';').skip(1).any(|param| {
        param
            .split_once('=')
            .is_some_and(|(n, v)| n.trim().eq_ignore_ascii_case("name") && is_model_name(v.trim().trim_matches('"')))
    });
    if naive != named_model {
        return Err(malformed("a part's Content-Disposition has a quoted `;`, which some parsers split on"));
    }
    Ok(named_model)
}

fn is_model_name(name: &str) -> bool {
    let decoded: Cow<'_, [u8]> = percent_decode(name.as_bytes());
    name.eq_ignore_ascii_case("model") || decoded.eq_ignore_ascii_case(b"model")
}
