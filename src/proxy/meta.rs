//! What keygate reads from a JSON request body, parsed once and shared by
//! routing (and later limits and metering). Bodies of other types are not parsed.

use serde::Deserialize;

use crate::dialect::ApiError;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestMeta {
    pub model: Option<String>,
    pub stream: bool,
    /// `max_tokens`, `max_completion_tokens` or `max_output_tokens`.
    pub max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    model: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    max_tokens: Option<serde_json::Value>,
    #[serde(default)]
    max_completion_tokens: Option<serde_json::Value>,
    #[serde(default)]
    max_output_tokens: Option<serde_json::Value>,
}

impl RequestMeta {
    /// Parses a JSON body. Invalid JSON (or a body that is not an object) is
    /// OpenAI's 400 "could not parse the JSON body".
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        // serde also reads a struct from an array; OpenAI bodies are objects.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::InvalidJson);
        }
        let raw: Raw = serde_json::from_slice(body).map_err(|_| ApiError::InvalidJson)?;
        Ok(Self {
            model: raw.model.and_then(|m| m.as_str().map(str::to_owned)),
            stream: raw.stream.and_then(|s| s.as_bool()).unwrap_or(false),
            max_tokens: [raw.max_completion_tokens, raw.max_tokens, raw.max_output_tokens]
                .into_iter()
                .flatten()
                .find_map(|v| v.as_u64()),
        })
    }
}

impl RequestMeta {
    /// Reads a body by its content type: JSON strictly (bad JSON is a 400),
    /// multipart for its `model` field, anything else leniently (a JSON
    /// object sent with another type still has its model checked, since an
    /// upstream may read it anyway).
    pub fn from_body(content_type: Option<&str>, body: &[u8]) -> Result<Self, ApiError> {
        let media = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if media == "application/json" || media.ends_with("+json") {
            return Self::parse(body);
        }
        if body.is_empty() {
            return Ok(Self::default());
        }
        if media == "multipart/form-data" {
            let boundary = content_type.and_then(multipart_boundary);
            return Ok(Self { model: boundary.and_then(|b| multipart_field(body, &b, "model")), ..Self::default() });
        }
        Ok(Self::parse(body).unwrap_or_default())
    }
}

fn multipart_boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.trim().split_once('=')?;
        name.eq_ignore_ascii_case("boundary").then(|| value.trim_matches('"').to_owned())
    })
}

/// The text value of form field `name` in a multipart body.
fn multipart_field(body: &[u8], boundary: &str, name: &str) -> Option<String> {
    let delimiter = format!("--{boundary}");
    let text = String::from_utf8_lossy(body);
    text.split(delimiter.as_str()).find_map(|part| {
        let (headers, value) = part.split_once("\r\n\r\n")?;
        let disposition = headers.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
        let wanted = format!("name=\"{name}\"");
        disposition.split(';').any(|p| p.trim() == wanted).then(|| value.trim_end_matches("\r\n").to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_and_stream() {
        let m = RequestMeta::parse(br#"{"model":"gpt-4o","stream":true,"messages":[]}"#).unwrap();
        assert_eq!(m, RequestMeta { model: Some("gpt-4o".into()), stream: true, max_tokens: None });
        let m = RequestMeta::parse(br#"{"max_completion_tokens":50,"max_tokens":9}"#).unwrap();
        assert_eq!(m.max_tokens, Some(50));
        assert_eq!(RequestMeta::parse(b"{}").unwrap(), RequestMeta::default());
    }

    #[test]
    fn reads_the_model_whatever_the_content_type_says() {
        let json = br#"{"model":"gpt-4o"}"#;
        for ct in [Some("Application/JSON"), Some("text/plain"), None, Some("application/json; charset=utf-8")] {
            assert_eq!(RequestMeta::from_body(ct, json).unwrap().model.as_deref(), Some("gpt-4o"), "{ct:?}");
        }
        assert!(RequestMeta::from_body(Some("APPLICATION/JSON"), b"{bad").is_err());
        assert_eq!(RequestMeta::from_body(Some("text/plain"), b"{bad").unwrap(), RequestMeta::default());
        let form = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ--\r\n";
        let meta = RequestMeta::from_body(Some("multipart/form-data; boundary=XyZ"), form).unwrap();
        assert_eq!(meta.model.as_deref(), Some("whisper-1"));
    }

    #[test]
    fn rejects_what_is_not_a_json_object() {
        assert!(matches!(RequestMeta::parse(b"{not json"), Err(ApiError::InvalidJson)));
        assert!(matches!(RequestMeta::parse(b"[1,2]"), Err(ApiError::InvalidJson)));
        assert!(matches!(RequestMeta::parse(b""), Err(ApiError::InvalidJson)));
    }
}
