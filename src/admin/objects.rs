//! API objects, field for field as OpenAI's Administration API has them, plus
//! keygate's documented extension fields (`prefix`, `expires_at`, `permissions`,
//! `scopes`, `models`, `allowed_ips`).

use serde::Serialize;
use serde_json::{json, Value};

use crate::key::redact;
use crate::store::{Access, KeyRecord, Owner, Page, Project, ServiceAccount, User};

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

fn access_fields(object: &mut Value, access: &Access) {
    object["models"] = json!(access.models);
    object["allowed_ips"] = json!(access.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>());
}

pub fn project(p: &Project) -> Value {
    let mut object = json!({
        "id": p.id,
        "object": "organization.project",
        "name": p.name,
        "created_at": p.created_at,
        "archived_at": p.archived_at,
        "status": if p.archived_at.is_some() { "archived" } else { "active" },
    });
    access_fields(&mut object, &p.access);
    object["max_key_age_seconds"] = json!(p.max_key_age_seconds);
    object
}

pub fn user(u: &User) -> Value {
    json!({"object": "organization.user", "id": u.id, "name": u.name, "email": u.email, "role": u.role, "added_at": u.added_at})
}

pub fn service_account(sa: &ServiceAccount) -> Value {
    json!({"object": "organization.project.service_account", "id": sa.id, "name": sa.name, "role": sa.role, "created_at": sa.created_at})
}

fn project_key_owner(owner: &Option<Owner>) -> Value {
    match owner {
        Some(Owner::ServiceAccount(sa)) => json!({
            "type": "service_account",
            "service_account": {"id": sa.id, "name": sa.name, "created_at": sa.created_at, "role": sa.role},
        }),
        Some(Owner::User(u)) => json!({
            "type": "user",
            "user": {"id": u.id, "name": u.name, "email": u.email, "role": u.role, "created_at": u.added_at},
        }),
        None => Value::Null,
    }
}

fn redacted(k: &KeyRecord) -> String {
    redact(&k.prefix, &k.id, k.last4())
}

/// `organization.project.api_key`.
pub fn project_api_key(k: &KeyRecord) -> Value {
    let mut object = json!({
        "object": "organization.project.api_key",
        "redacted_value": redacted(k),
        "name": k.name,
        "created_at": k.created_at,
        "last_used_at": k.last_used.as_ref().map(|t| t.at),
        "id": k.id.api_id(),
        "owner_project_access": "active",
        "owner": project_key_owner(&k.owner),
        "prefix": k.prefix,
        "expires_at": k.expires_at,
        "permissions": k.permissions.level(),
        "scopes": k.permissions.scopes(),
        "state": k.state,
        "last_used_ip": k.last_used.as_ref().and_then(|t| t.ip.clone()),
        "last_used_user_agent": k.last_used.as_ref().and_then(|t| t.user_agent.clone()),
        "rotated_at": (k.secrets.len() > 1).then(|| k.secret_created_at()),
        "previous_secret_expires_at": k.secrets.get(1).and_then(|s| s.expires_at),
        "revoked_at": k.revocation.as_ref().map(|r| r.at),
        "revoke_reason": k.revocation.as_ref().and_then(|r| r.reason.clone()),
    });
    access_fields(&mut object, &k.access);
    object
}

/// `organization.admin_api_key`.
pub fn admin_api_key(k: &KeyRecord) -> Value {
    let owner = match &k.owner {
        Some(Owner::ServiceAccount(sa)) => json!({
            "type": "service_account", "object": "organization.service_account",
            "id": sa.id, "name": sa.name, "created_at": sa.created_at, "role": sa.role,
        }),
        Some(Owner::User(u)) => json!({
            "type": "user", "object": "organization.user",
            "id": u.id, "name": u.name, "created_at": u.added_at, "role": u.role,
        }),
        None => Value::Null,
    };
    json!({
        "object": "organization.admin_api_key",
        "id": k.id.api_id(),
        "name": k.name,
        "redacted_value": redacted(k),
        "created_at": k.created_at,
        "expires_at": k.expires_at,
        "last_used_at": k.last_used.as_ref().map(|t| t.at),
        "owner": owner,
    })
}

pub fn deleted(object: &str, id: &str) -> Value {
    json!({"object": format!("{object}.deleted"), "id": id, "deleted": true})
}
