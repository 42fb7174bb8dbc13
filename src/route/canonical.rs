//! The one canonical form of a request path. It decides routing, the scope a
//! key needs and whether a path is keygate's own, and it is exactly what is
//! forwarded: an upstream can never read a different path from the one that
//! was authorized. A path without a canonical form is refused, not repaired.

/// Why a path has no canonical form; either way the request is refused as an
/// unknown URL and never reaches an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A malformed or ambiguous path: a bad `%` escape, an encoded `/`, `\`
    /// or control character, a `.`/`..` or empty segment, an odd resource name.
    Malformed,
    /// `/v1/organization/*`, `/v1/keygate/*` or `/v1/keys/leaked[/*]`, in
    /// any spelling: keygate's own.
    Reserved,
}

/// keygate's namespaces (the Administration API and its extensions): served
/// by keygate or refused, under either dialect, never forwarded.
const RESERVED: &[&str] = &["organization", "keygate"];

/// keygate's one route outside those namespaces: the leaked-key report
/// (`POST /v1/keys/leaked`). `/v1/keys/*` is otherwise not keygate's, but a
/// spelling the exact route misses (`/v1/keys/Leaked`, `/v1/keys/leaked/`)
/// must not reach an upstream either.
const RESERVED_ROUTES: &[(&str, &str)] = &[("keys", "leaked")];

/// Normalizes a path: escapes of unreserved characters (RFC 3986 §2.3) are
/// decoded, other escapes keep their byte with upper-case hex; a path that an
/// upstream's URL resolution could read differently is refused (dot or empty
/// segments, encoded separators, backslashes, control characters).
pub fn normalize(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::Malformed);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let decoded = bytes.get(i + 1..i + 3).and_then(hex_byte).ok_or(PathError::Malformed)?;
                if is_unreserved(decoded) {
                    out.push(decoded);
                } else if matches!(decoded, b'/' | b'\\') || decoded.is_ascii_control() {
                    return Err(PathError::Malformed);
                } else {
                    out.extend_from_slice(&[b'%', HEX[usize::from(decoded >> 4)], HEX[usize::from(decoded & 15)]]);
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Malformed),
            byte if byte.is_ascii_control() => return Err(PathError::Malformed),
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    // Only ASCII bytes were replaced, so the text is still UTF-8.
    let path = String::from_utf8(out).map_err(|_| PathError::Malformed)?;
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let trailing = segments.peek().is_none();
        if (segment.is_empty() && !trailing) || segment == "." || segment == ".." {
            return Err(PathError::Malformed);
        }
    }
    Ok(path)
}

/// The canonical data-plane path: [`normalize`]d, under `/v1/`, with the
/// resource (the segment after `/v1/`) in lower case and made only of
/// `a-z`, `0-9`, `_` and `-`, and not one of keygate's own namespaces.
pub fn canonical_path(raw: &str) -> Result<String, PathError> {
    let mut path = normalize(raw)?;
    let rest = path.strip_prefix("/v1/").ok_or(PathError::Malformed)?;
    let resource_len = rest.find('/').unwrap_or(rest.len());
    let resource = rest[..resource_len].to_ascii_lowercase();
    if resource.is_empty()
        || !resource.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(PathError::Malformed);
    }
    if RESERVED.contains(&resource.as_str()) {
        return Err(PathError::Reserved);
    }
    let next = rest[resource_len..].strip_prefix('/').and_then(|r| r.split('/').next()).unwrap_or("");
    if RESERVED_ROUTES.iter().any(|(r, n)| *r == resource && next.eq_ignore_ascii_case(n)) {
        return Err(PathError::Reserved);
    }
    path.replace_range(4..4 + resource_len, &resource);
    Ok(path)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16);
    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests;
