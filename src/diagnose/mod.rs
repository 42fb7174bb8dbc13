//! Diagnosis: `doctor` checks a client's setup and key (offline and live), as
//! a developer hit by a 401 would, and says what to fix. (`explain`, the
//! server side, is the Administration API's `requests` route.)
//!
//! Owns: reading the SDKs' environment and `.env`, every check, the live
//! probes. Never prints or sends a key anywhere but the endpoint under test.

mod checks;
mod env;
mod probe;

use serde::Serialize;

use crate::key::Secret;

pub use checks::run;
pub use env::{parse_dotenv, Setup, Source};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    Skip,
}

/// One finding: what was checked, how it went, and what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub status: Status,
    pub title: String,
    pub detail: String,
    pub fix: Option<String>,
}

impl Finding {
    fn new(id: &'static str, status: Status, title: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { id, status, title: title.into(), detail: detail.into(), fix: None }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// A key shown safely: its start and length, never the secret part.
pub fn describe_key(key: &Secret) -> String {
    let text = key.expose();
    if let Ok(parsed) = crate::key::parse(text) {
        return format!("{}kg1{}… ({} characters)", parsed.prefix, parsed.id, text.chars().count());
    }
    let start: String = text.chars().take(7).filter(|c| !c.is_whitespace()).collect();
    format!("{start}… ({} characters)", text.chars().count())
}
