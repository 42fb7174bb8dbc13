//! API objects, field for field as OpenAI's Administration API has them.

use serde::Serialize;
use serde_json::{json, Value};

use crate::key::redact;
use crate::store::{KeyRecord, Page, Project};

#[derive(Serialize)]
pub struct List<T: Serialize> {
    object: &'static str,
    data: Vec<T>,
    first_id: Option<String>,
    last_id: Option<String>,
    has_more: bool,
}

impl<T: Serialize> List<T> {
    pub fn new<S>(page: Page<S>, id: impl Fn(&S) -> String, to: impl Fn(&S) -> T) -> Self {
        Self {
            object: "list",
            first_id: page.items.first().map(&id),
            last_id: page.items.last().map(&id),
            data: page.items.iter().map(to).collect(),
            has_more: page.has_more,
        }
    }
}

pub fn project(p: &Project) -> Value {
    json!({
        "id": p.id,
        "object": "organization.project",
        "name": p.name,
        "created_at": p.created_at,
        "archived_at": p.archived_at,
        "status": if p.archived_at.is_some() { "archived" } else { "active" },
    })
}

/// `organization.project.api_key`, plus keygate's extensions `prefix` and
/// `expires_at`.
pub fn project_api_key(k: &KeyRecord) -> Value {
    let owner = match &k.owner {
        Some(sa) => json!({
            "type": "service_account",
            "service_account": {"id": sa.id, "name": sa.name, "created_at": sa.created_at, "role": sa.role},
        }),
        None => Value::Null,
    };
    json!({
        "object": "organization.project.api_key",
        "redacted_value": redact(&k.prefix, &k.id, k.last4()),
        "name": k.name,
        "created_at": k.created_at,
        "last_used_at": k.last_used_at,
        "id": k.id.api_id(),
        "owner_project_access": "active",
        "owner": owner,
        "prefix": k.prefix,
        "expires_at": k.expires_at,
    })
}

pub fn deleted(object: &str, id: &str) -> Value {
    json!({"object": format!("{object}.deleted"), "id": id, "deleted": true})
}
