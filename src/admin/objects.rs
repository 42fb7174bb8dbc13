//! API objects, field for field as OpenAI's Administration API has them, plus
//! keygate's documented extension fields (marked "ours"). Typed, so the
//! OpenAPI document is generated from the same definitions the API serves.

use serde::Serialize;
use utoipa::ToSchema;

use crate::key::redact;
use crate::policy::{ModelLimits, RateLimits};
use crate::store::{Access, KeyRecord, KeyState, Owner, Page, Project, ServiceAccount, User};

/// OpenAI's list envelope.
#[derive(Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    /// Always `list`.
    object: &'static str,
    data: Vec<T>,
    first_id: Option<String>,
    last_id: Option<String>,
    has_more: bool,
}

impl<T: ToSchema> List<T> {
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

/// `{object}.deleted`.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    object: String,
    id: String,
    deleted: bool,
}

pub fn deleted(object: &str, id: &str) -> Deleted {
    Deleted { object: format!("{object}.deleted"), id: id.to_owned(), deleted: true }
}

/// An object created with its secret, shown only in this answer.
#[derive(Serialize, ToSchema)]
pub struct WithValue<T: ToSchema> {
    #[serde(flatten)]
    pub object: T,
    /// The secret key. Shown once.
    pub value: String,
}

/// `organization.project`.
#[derive(Serialize, ToSchema)]
pub struct ProjectObject {
    id: String,
    object: &'static str,
    name: String,
    created_at: i64,
    archived_at: Option<i64>,
    /// `active` or `archived`.
    status: &'static str,
    /// Ours: model patterns the project's keys may use (null: any).
    models: Option<Vec<String>>,
    /// Ours: client address ranges the project's keys may be used from (empty: any).
    allowed_ips: Vec<String>,
    /// Ours: keys whose newest secret is older than this are due for rotation.
    max_key_age_seconds: Option<i64>,
    /// Ours: monthly spend limit in US dollars, and its alert threshold.
    monthly_budget_usd: Option<f64>,
    budget_alert_percent: Option<u8>,
}

pub fn project(p: &Project) -> ProjectObject {
    ProjectObject {
        id: p.id.clone(),
        object: "organization.project",
        name: p.name.clone(),
        created_at: p.created_at,
        archived_at: p.archived_at,
        status: if p.archived_at.is_some() { "archived" } else { "active" },
        models: p.access.models.clone(),
        allowed_ips: ips(&p.access),
        max_key_age_seconds: p.max_key_age_seconds,
        monthly_budget_usd: p.budget.map(|b| usd(b.monthly_nanos)),
        budget_alert_percent: p.budget.map(|b| b.alert_percent),
    }
}

/// Display only: budgets are kept in integer nano-dollars.
fn usd(nanos: i64) -> f64 {
    nanos as f64 / 1e9
}

/// `project.rate_limit` (OpenAI's object; the day, token-day and concurrency
/// fields and `null` for "no limit" are ours).
#[derive(Serialize, ToSchema)]
pub struct ProjectRateLimitObject {
    object: &'static str,
    /// `rl-` + the model pattern.
    id: String,
    model: String,
    #[serde(flatten)]
    limits: RateLimits,
}

pub fn project_rate_limit(m: &ModelLimits) -> ProjectRateLimitObject {
    ProjectRateLimitObject {
        object: "project.rate_limit",
        id: format!("rl-{}", m.model),
        model: m.model.clone(),
        limits: m.limits,
    }
}

fn ips(access: &Access) -> Vec<String> {
    access.allowed_ips.iter().map(ToString::to_string).collect()
}

/// `organization.user`.
#[derive(Serialize, ToSchema)]
pub struct UserObject {
    object: &'static str,
    id: String,
    name: String,
    email: String,
    /// `owner` or `reader` (OpenAI's), or `member` (ours: sees only the
    /// projects the user is added to); in a project, `owner` or `member`.
    role: String,
    added_at: i64,
}

/// `organization.project.user`: a user's membership of one project.
pub fn project_user(m: &crate::store::ProjectUser) -> UserObject {
    UserObject {
        object: "organization.project.user",
        id: m.user.id.clone(),
        name: m.user.name.clone(),
        email: m.user.email.clone(),
        role: m.role.clone(),
        added_at: m.added_at,
    }
}

pub fn user(u: &User) -> UserObject {
    UserObject {
        object: "organization.user",
        id: u.id.clone(),
        name: u.name.clone(),
        email: u.email.clone(),
        role: u.role.clone(),
        added_at: u.added_at,
    }
}

/// `organization.project.service_account`.
#[derive(Serialize, ToSchema)]
pub struct ServiceAccountObject {
    object: &'static str,
    id: String,
    name: String,
    role: String,
    created_at: i64,
}

pub fn service_account(sa: &ServiceAccount) -> ServiceAccountObject {
    ServiceAccountObject {
        object: "organization.project.service_account",
        id: sa.id.clone(),
        name: sa.name.clone(),
        role: sa.role.clone(),
        created_at: sa.created_at,
    }
}

/// A new service account's first key (`organization.project.service_account.api_key`).
#[derive(Serialize, ToSchema)]
pub struct ServiceAccountKey {
    pub object: &'static str,
    pub value: String,
    pub name: String,
    pub created_at: i64,
    pub id: String,
}

/// `POST .../service_accounts` answer: the account and, unless
/// `create_service_account_only`, its key.
#[derive(Serialize, ToSchema)]
pub struct CreatedServiceAccount {
    #[serde(flatten)]
    pub account: ServiceAccountObject,
    pub api_key: Option<ServiceAccountKey>,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceAccountRef {
    id: String,
    name: String,
    created_at: i64,
    role: String,
}

#[derive(Serialize, ToSchema)]
pub struct UserRef {
    id: String,
    name: String,
    email: String,
    role: String,
    created_at: i64,
}

/// A project key's owner, as OpenAI shapes it.
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProjectKeyOwner {
    ServiceAccount { service_account: ServiceAccountRef },
    User { user: UserRef },
}

fn project_key_owner(owner: &Option<Owner>) -> Option<ProjectKeyOwner> {
    owner.as_ref().map(|owner| match owner {
        Owner::ServiceAccount(sa) => ProjectKeyOwner::ServiceAccount {
            service_account: ServiceAccountRef {
                id: sa.id.clone(),
                name: sa.name.clone(),
                created_at: sa.created_at,
                role: sa.role.clone(),
            },
        },
        Owner::User(u) => ProjectKeyOwner::User {
            user: UserRef {
                id: u.id.clone(),
                name: u.name.clone(),
                email: u.email.clone(),
                role: u.role.clone(),
                created_at: u.added_at,
            },
        },
    })
}

fn redacted(k: &KeyRecord) -> String {
    redact(&k.prefix, &k.id, k.last4())
}

/// `organization.project.api_key`.
#[derive(Serialize, ToSchema)]
pub struct ProjectApiKeyObject {
    object: &'static str,
    /// The key up to the end of its public id, `...`, and its last four characters.
    redacted_value: String,
    name: String,
    created_at: i64,
    last_used_at: Option<i64>,
    /// `key_` + the key's public id; stable across rotations.
    id: String,
    /// Ours: the key's project (keys listed across projects need it).
    project_id: Option<String>,
    /// Ours: its current secret has no keygate checksum (imported from
    /// elsewhere, or declared by hash); rotating it issues a checksummed one.
    legacy: bool,
    owner_project_access: &'static str,
    owner: Option<ProjectKeyOwner>,
    /// Ours: the key's prefix, e.g. `sk-prod-`.
    prefix: String,
    /// Ours: when the key stops working.
    expires_at: Option<i64>,
    /// Ours: `all`, `read_only` or `restricted`.
    permissions: &'static str,
    /// Ours: OpenAI scope strings (`api.all.read` for read-only keys).
    scopes: Vec<String>,
    /// Ours: `active`, `suspended` or `revoked`.
    #[schema(value_type = String)]
    state: KeyState,
    /// Ours: model patterns the key may use (null: any).
    models: Option<Vec<String>>,
    /// Ours: client address ranges the key may be used from (empty: any).
    allowed_ips: Vec<String>,
    /// Ours: the client address and user agent of the last use.
    last_used_ip: Option<String>,
    last_used_user_agent: Option<String>,
    /// Ours: when the newest secret was made by a rotation.
    rotated_at: Option<i64>,
    /// Ours: when the previous secret stops working (rotation grace).
    previous_secret_expires_at: Option<i64>,
    /// Ours: revocation time and reason (with `include_revoked=true`).
    revoked_at: Option<i64>,
    revoke_reason: Option<String>,
    /// Ours: the key's own rate limits.
    rate_limits: RateLimits,
    /// Ours: monthly spend limit in US dollars, and its alert threshold.
    monthly_budget_usd: Option<f64>,
    budget_alert_percent: Option<u8>,
}

pub fn project_api_key(k: &KeyRecord) -> ProjectApiKeyObject {
    ProjectApiKeyObject {
        object: "organization.project.api_key",
        redacted_value: redacted(k),
        name: k.name.clone(),
        created_at: k.created_at,
        last_used_at: k.last_used.as_ref().map(|t| t.at),
        id: k.id.api_id(),
        project_id: k.project_id.clone(),
        legacy: k.secrets.first().is_some_and(|s| s.legacy),
        owner_project_access: "active",
        owner: project_key_owner(&k.owner),
        prefix: k.prefix.clone(),
        expires_at: k.expires_at,
        permissions: k.permissions.level(),
        scopes: k.permissions.scopes(),
        state: k.state,
        models: k.access.models.clone(),
        allowed_ips: ips(&k.access),
        last_used_ip: k.last_used.as_ref().and_then(|t| t.ip.clone()),
        last_used_user_agent: k.last_used.as_ref().and_then(|t| t.user_agent.clone()),
        rotated_at: (k.secrets.len() > 1).then(|| k.secret_created_at()),
        previous_secret_expires_at: k.secrets.get(1).and_then(|s| s.expires_at),
        revoked_at: k.revocation.as_ref().map(|r| r.at),
        revoke_reason: k.revocation.as_ref().and_then(|r| r.reason.clone()),
        rate_limits: k.limits,
        monthly_budget_usd: k.budget.map(|b| usd(b.monthly_nanos)),
        budget_alert_percent: k.budget.map(|b| b.alert_percent),
    }
}

/// An admin key's owner (`organization.user` or `organization.service_account`).
#[derive(Serialize, ToSchema)]
pub struct AdminKeyOwner {
    #[serde(rename = "type")]
    kind: &'static str,
    object: &'static str,
    id: String,
    name: String,
    created_at: i64,
    role: String,
}

/// `organization.admin_api_key`.
#[derive(Serialize, ToSchema)]
pub struct AdminApiKeyObject {
    object: &'static str,
    id: String,
    name: String,
    redacted_value: String,
    created_at: i64,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
    owner: Option<AdminKeyOwner>,
}

pub fn admin_api_key(k: &KeyRecord) -> AdminApiKeyObject {
    let owner = k.owner.as_ref().map(|owner| match owner {
        Owner::ServiceAccount(sa) => AdminKeyOwner {
            kind: "service_account",
            object: "organization.service_account",
            id: sa.id.clone(),
            name: sa.name.clone(),
            created_at: sa.created_at,
            role: sa.role.clone(),
        },
        Owner::User(u) => AdminKeyOwner {
            kind: "user",
            object: "organization.user",
            id: u.id.clone(),
            name: u.name.clone(),
            created_at: u.added_at,
            role: u.role.clone(),
        },
    });
    AdminApiKeyObject {
        object: "organization.admin_api_key",
        id: k.id.api_id(),
        name: k.name.clone(),
        redacted_value: redacted(k),
        created_at: k.created_at,
        expires_at: k.expires_at,
        last_used_at: k.last_used.as_ref().map(|t| t.at),
        owner,
    }
}
