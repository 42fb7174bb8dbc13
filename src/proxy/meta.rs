//! What keygate reads from a JSON request body, parsed once and shared by
//! routing (and later limits and metering). Bodies of other types are not parsed.

use serde::Deserialize;

use crate::dialect::ApiError;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestMeta {
    pub model: Option<String>,
    pub stream: bool,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    model: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_and_stream() {
        let m = RequestMeta::parse(br#"{"model":"gpt-4o","stream":true,"messages":[]}"#).unwrap();
        assert_eq!(m, RequestMeta { model: Some("gpt-4o".into()), stream: true });
        assert_eq!(RequestMeta::parse(b"{}").unwrap(), RequestMeta::default());
    }

    #[test]
    fn rejects_what_is_not_a_json_object() {
        assert!(matches!(RequestMeta::parse(b"{not json"), Err(ApiError::InvalidJson)));
        assert!(matches!(RequestMeta::parse(b"[1,2]"), Err(ApiError::InvalidJson)));
        assert!(matches!(RequestMeta::parse(b""), Err(ApiError::InvalidJson)));
    }
}
