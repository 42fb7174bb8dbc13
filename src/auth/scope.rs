//! Which OpenAI scope each route needs. Names come from `shared/spec/openai-wire.md`
//! §5; the ones marked "ours" are not observed from OpenAI and follow its pattern.

use http::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope(&'static str);

impl Scope {
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

/// The scope a data-plane route needs; `None` for routes no permission maps
/// (a restricted key is refused there).
pub fn data_plane_scope(method: &Method, path: &str) -> Option<Scope> {
    let rest = path.strip_prefix("/v1/")?;
    let resource = rest.split('/').next().unwrap_or("");
    let write = !matches!(*method, Method::GET | Method::HEAD);
    let scope = match (resource, write) {
        ("models", false) => "api.model.read",
        ("models", true) => "api.model.write", // ours: deleting a fine-tuned model
        ("chat" | "completions" | "embeddings" | "moderations", _) => "model.request",
        ("audio", _) => "api.model.audio.request",
        ("images", _) => "api.model.images.request",
        ("responses", false) => "api.responses.read", // ours
        ("responses", true) => "api.responses.write",
        ("files" | "uploads", false) => "api.files.read",
        ("files" | "uploads", true) => "api.files.write",
        ("fine_tuning", false) => "api.fine_tuning.jobs.read",
        ("fine_tuning", true) => "api.fine_tuning.jobs.write",
        ("assistants", false) => "api.assistants.read",
        ("assistants", true) => "api.assistants.write",
        ("threads", false) => "api.threads.read",
        ("threads", true) => "api.threads.write",
        ("batches", false) => "api.batch.read",               // ours
        ("batches", true) => "api.batch.write",               // ours
        ("vector_stores", false) => "api.vector_stores.read", // ours
        ("vector_stores", true) => "api.vector_stores.write", // ours
        _ => return None,
    };
    Some(Scope(scope))
}

/// The scope an Administration API route needs (the RBAC names OpenAI uses for
/// project API keys; the others follow the same pattern and are ours).
pub fn admin_scope(method: &Method, path: &str) -> Scope {
    let write = !matches!(*method, Method::GET | Method::HEAD);
    let scope = match (path.contains("/api_keys"), write) {
        (true, false) => "api.organization.projects.api_keys.read",
        (true, true) => "api.organization.projects.api_keys.write",
        (false, false) => "api.organization.read", // ours
        (false, true) => "api.organization.write", // ours
    };
    Scope(scope)
}

/// The scope reported for a data-plane route nothing maps.
pub const UNMAPPED: Scope = Scope("api.all.read");
