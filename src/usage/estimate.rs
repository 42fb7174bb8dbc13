//! Token estimates with OpenAI's tokenizers (tiktoken), for streams cut short
//! before the upstream reported usage. Records carrying them are marked
//! `estimated`.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

fn encoder(model: &str) -> Option<&'static CoreBPE> {
    static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    let modern = ["gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4"].iter().any(|p| model.starts_with(p));
    if modern {
        O200K.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
    } else {
        CL100K.get_or_init(|| tiktoken_rs::cl100k_base().ok()).as_ref()
    }
}

/// Tokens in `text` for `model` (falls back to four characters a token).
pub fn text_tokens(model: &str, text: &str) -> i64 {
    if text.is_empty() {
        return 0;
    }
    match encoder(model) {
        Some(bpe) => bpe.encode_ordinary(text).len() as i64,
        None => (text.chars().count() as i64 + 3) / 4,
    }
}

/// Tokens of the text in a request body: message contents, `input`, `prompt`.
pub fn prompt_tokens(model: &str, body: &[u8]) -> i64 {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return 0 };
    let mut text = String::new();
    for field in ["messages", "input", "prompt", "instructions"] {
        collect_text(&value[field], &mut text);
    }
    text_tokens(model, &text)
}

fn collect_text(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_text(v, out)),
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                if matches!(key.as_str(), "content" | "text" | "input") {
                    collect_text(v, out);
                }
            }
        }
        _ => {}
    }
}
