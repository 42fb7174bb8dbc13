//! Which OpenAI scope each route needs, and what a key's permissions allow.
//!
//! Scope names come from `shared/spec/openai-wire.md` §5. Names marked "ours"
//! were not observed from OpenAI and follow its pattern; the per-capability
//! `api.model.<capability>.request` scopes let a restricted key call, say,
//! embeddings but not chat, while OpenAI's umbrella `model.request` (and its
//! alias `api.model.request`) still grants every capability.

use std::collections::BTreeSet;

use http::Method;

/// What a route needs: the scope named in a refusal, whether it writes, and
/// every scope that satisfies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope {
    name: &'static str,
    write: bool,
    accepted: &'static [&'static str],
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        self.name
    }

    pub const fn is_write(self) -> bool {
        self.write
    }
}

const fn read(name: &'static str, accepted: &'static [&'static str]) -> Scope {
    Scope { name, write: false, accepted }
}

const fn write(name: &'static str, accepted: &'static [&'static str]) -> Scope {
    Scope { name, write: true, accepted }
}

/// Every scope a key may be given (`--allow`, the `scopes` field).
pub const KNOWN_SCOPES: &[&str] = &[
    "api.all.read",
    "model.read",
    "api.model.read",
    "model.request",
    "api.model.request",
    "api.model.chat.request",        // ours
    "api.model.completions.request", // ours
    "api.model.embeddings.request",  // ours
    "api.model.moderations.request", // ours
    "api.model.audio.request",
    "api.model.images.request",
    "api.responses.read", // ours
    "api.responses.write",
    "api.files.read",
    "api.files.write",
    "api.fine_tuning.jobs.read",
    "api.fine_tuning.jobs.write",
    "api.batch.read",  // ours
    "api.batch.write", // ours
    "api.assistants.read",
    "api.assistants.write",
    "api.threads.read",
    "api.threads.write",
    "api.vector_stores.read",  // ours
    "api.vector_stores.write", // ours
];

const MODELS_READ: Scope = read("api.model.read", &["api.model.read", "model.read"]);
const MODELS_WRITE: Scope = write("api.model.write", &["model.request", "api.model.request"]); // ours: deleting a fine-tuned model
const CHAT: Scope = write("model.request", &["model.request", "api.model.request", "api.model.chat.request"]);
const COMPLETIONS: Scope =
    write("model.request", &["model.request", "api.model.request", "api.model.completions.request"]);
const EMBEDDINGS: Scope =
    write("model.request", &["model.request", "api.model.request", "api.model.embeddings.request"]);
const MODERATIONS: Scope =
    write("model.request", &["model.request", "api.model.request", "api.model.moderations.request"]);
const AUDIO: Scope =
    write("api.model.audio.request", &["model.request", "api.model.request", "api.model.audio.request"]);
const IMAGES: Scope =
    write("api.model.images.request", &["model.request", "api.model.request", "api.model.images.request"]);
/// keygate's own `/v1/keygate/*` reads: any valid project key may make them.
const ANY_KEY: Scope = read("api.model.read", &["*"]);
const UNMAPPED_READ: Scope = read("api.all.read", &[]);
const UNMAPPED_WRITE: Scope = write("api.all.write", &[]); // ours: nothing grants it but `all`

macro_rules! resource {
    ($read:literal, $write:literal) => {
        (read($read, &[$read, $write]), write($write, &[$write]))
    };
}

/// The scope a data-plane route needs. Routes no permission maps need
/// `api.all.read`/`api.all.write`, which only unrestricted keys (and, for
/// reads, nothing else) satisfy.
pub fn data_plane_scope(method: &Method, path: &str) -> Scope {
    let rest = path.strip_prefix("/v1/").unwrap_or("");
    let resource = rest.split('/').next().unwrap_or("");
    let is_write = !matches!(*method, Method::GET | Method::HEAD);
    let pair = match resource {
        "models" => (MODELS_READ, MODELS_WRITE),
        "chat" => (CHAT, CHAT),
        "completions" => (COMPLETIONS, COMPLETIONS),
        "embeddings" => (EMBEDDINGS, EMBEDDINGS),
        "moderations" => (MODERATIONS, MODERATIONS),
        "audio" => (AUDIO, AUDIO),
        "images" => (IMAGES, IMAGES),
        "responses" => resource!("api.responses.read", "api.responses.write"),
        "files" | "uploads" => resource!("api.files.read", "api.files.write"),
        "fine_tuning" => resource!("api.fine_tuning.jobs.read", "api.fine_tuning.jobs.write"),
        "batches" => resource!("api.batch.read", "api.batch.write"),
        "assistants" => resource!("api.assistants.read", "api.assistants.write"),
        "threads" => resource!("api.threads.read", "api.threads.write"),
        "vector_stores" => resource!("api.vector_stores.read", "api.vector_stores.write"),
        "keygate" => (ANY_KEY, UNMAPPED_WRITE),
        _ => (UNMAPPED_READ, UNMAPPED_WRITE),
    };
    if is_write {
        pair.1
    } else {
        pair.0
    }
}

/// The scope an Administration API route needs (the RBAC names OpenAI uses for
/// project API keys; the others follow the same pattern and are ours). Only
/// admin keys reach these routes; the scope names the refusal of other keys.
pub fn admin_scope(method: &Method, path: &str) -> Scope {
    let is_write = !matches!(*method, Method::GET | Method::HEAD);
    if path.starts_with("/v1/organization/usage/") || path == "/v1/organization/costs" {
        return read("api.usage.read", &[]);
    }
    match (path.contains("/api_keys"), is_write) {
        (true, false) => read("api.organization.projects.api_keys.read", &[]),
        (true, true) => write("api.organization.projects.api_keys.write", &[]),
        (false, false) => read("api.organization.read", &[]),
        (false, true) => write("api.organization.write", &[]),
    }
}

/// A key's permission level, as OpenAI's dashboard has them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Permissions {
    /// Everything (the default).
    #[default]
    All,
    /// Reads on every mapped resource.
    ReadOnly,
    /// Exactly these scopes (a write scope includes its read).
    Restricted(BTreeSet<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionsError {
    #[error("unknown permissions `{0}`: expected `all`, `read_only` or `restricted`")]
    UnknownLevel(String),
    #[error("unknown scope `{0}`")]
    UnknownScope(String),
    #[error("`restricted` needs at least one scope")]
    NoScopes,
    #[error("scopes are only given with `restricted` permissions")]
    ScopesWithoutRestricted,
}

impl Permissions {
    pub fn parse(level: &str, scopes: &[String]) -> Result<Self, PermissionsError> {
        if let Some(unknown) = scopes.iter().find(|s| !KNOWN_SCOPES.contains(&s.as_str())) {
            return Err(PermissionsError::UnknownScope(unknown.clone()));
        }
        match level {
            "all" | "read_only" if !scopes.is_empty() => Err(PermissionsError::ScopesWithoutRestricted),
            "all" => Ok(Self::All),
            "read_only" => Ok(Self::ReadOnly),
            "restricted" if scopes.is_empty() => Err(PermissionsError::NoScopes),
            "restricted" => Ok(Self::Restricted(scopes.iter().cloned().collect())),
            other => Err(PermissionsError::UnknownLevel(other.to_owned())),
        }
    }

    pub fn level(&self) -> &'static str {
        match self {
            Self::All => "all",
            Self::ReadOnly => "read_only",
            Self::Restricted(_) => "restricted",
        }
    }

    /// The key object's `scopes`: none for `all`, `api.all.read` for
    /// `read_only` (as OpenAI stores them), the list for `restricted`.
    pub fn scopes(&self) -> Vec<String> {
        match self {
            Self::All => Vec::new(),
            Self::ReadOnly => vec!["api.all.read".to_owned()],
            Self::Restricted(set) => set.iter().cloned().collect(),
        }
    }

    /// The kinds of model call these permissions allow, in a fixed order:
    /// `chat`, `completions`, `embeddings`, `moderations`, `audio`, `images`,
    /// `responses`. Empty for a key that may only read (list models, files...).
    pub fn model_calls(&self) -> Vec<&'static str> {
        let responses = data_plane_scope(&Method::POST, "/v1/responses");
        [
            ("chat", CHAT),
            ("completions", COMPLETIONS),
            ("embeddings", EMBEDDINGS),
            ("moderations", MODERATIONS),
            ("audio", AUDIO),
            ("images", IMAGES),
            ("responses", responses),
        ]
        .into_iter()
        .filter(|(_, scope)| self.allows(*scope))
        .map(|(name, _)| name)
        .collect()
    }

    pub fn allows(&self, scope: Scope) -> bool {
        if scope.accepted == ["*"] {
            return true;
        }
        match self {
            Self::All => true,
            Self::ReadOnly => !scope.write && !scope.accepted.is_empty(),
            Self::Restricted(set) => {
                scope.accepted.iter().any(|s| set.contains(*s))
                    || (!scope.write && !scope.accepted.is_empty() && set.contains("api.all.read"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    #[test]
    fn permission_parsing_rejects_nonsense() {
        assert_eq!(Permissions::parse("everything", &[]), Err(PermissionsError::UnknownLevel("everything".into())));
        assert_eq!(Permissions::parse("restricted", &[]), Err(PermissionsError::NoScopes));
        assert_eq!(
            Permissions::parse("restricted", &["api.nope".into()]),
            Err(PermissionsError::UnknownScope("api.nope".into()))
        );
        assert_eq!(
            Permissions::parse("all", &["model.request".into()]),
            Err(PermissionsError::ScopesWithoutRestricted)
        );
        assert_eq!(Permissions::ReadOnly.scopes(), vec!["api.all.read".to_owned()]);
    }

    #[test]
    fn scopes_follow_openai_names() {
        assert_eq!(data_plane_scope(&Method::GET, "/v1/models").as_str(), "api.model.read");
        assert_eq!(data_plane_scope(&Method::POST, "/v1/chat/completions").as_str(), "model.request");
        assert_eq!(data_plane_scope(&Method::POST, "/v1/responses").as_str(), "api.responses.write");
        assert_eq!(data_plane_scope(&Method::POST, "/v1/files").as_str(), "api.files.write");
        assert_eq!(data_plane_scope(&Method::GET, "/v1/unknown").as_str(), "api.all.read");
    }

    #[test]
    fn model_calls_name_what_permissions_let_a_key_call() {
        let scopes = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            Permissions::All.model_calls(),
            ["chat", "completions", "embeddings", "moderations", "audio", "images", "responses"]
        );
        assert!(Permissions::ReadOnly.model_calls().is_empty());
        let reader = Permissions::parse("restricted", &scopes(&["api.model.read", "api.files.write"])).unwrap();
        assert!(reader.model_calls().is_empty());
        let embedder = Permissions::parse("restricted", &scopes(&["api.model.embeddings.request"])).unwrap();
        assert_eq!(embedder.model_calls(), ["embeddings"]);
        let umbrella = Permissions::parse("restricted", &scopes(&["model.request"])).unwrap();
        assert_eq!(umbrella.model_calls(), ["chat", "completions", "embeddings", "moderations", "audio", "images"]);
    }
}
