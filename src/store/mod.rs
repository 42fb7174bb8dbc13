//! Persistence: the `Store` trait, the records it holds, and its one SQL
//! implementation over two engines (embedded SQLite; PostgreSQL for replicas).
//! `Store` is the sum of one trait per aggregate (`KeyStore`, `OwnerStore`,
//! `UsageStore`, `DenialStore`, `AuditStore`, `AlertStore`, `JobStore`), each
//! implemented next to its SQL in `sql/`; everyone holds an `Arc<dyn Store>`.
//!
//! The store is never on the authentication hot path: `auth::KeyIndex` is loaded
//! from it at start and after each change. Writes that follow requests
//! (last-used times) arrive here in batches.

pub mod dump;
mod migrate;
mod sql;

use async_trait::async_trait;
use ipnet::IpNet;
use serde::Serialize;

use crate::ids::PublicId;
use crate::key::KeyDigest;
use crate::policy::{Budget, ModelLimits, Permissions, RateLimits};
use crate::time::Timestamp;

pub use sql::{Engine, SqlStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sqlx's text already ends with its cause's, so the cause is not chained
    /// again (it would print the same line two or three times).
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// SQLite creates the file, not the directories above it.
    #[error("the directory `{}` does not exist", .0.display())]
    NoDirectory(std::path::PathBuf),
    #[error("the database did not answer within {0} s")]
    NoAnswer(u64),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the database schema is version {found}, newer than this keygate knows ({known}); upgrade keygate")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("{0} already exists")]
    Duplicate(&'static str),
    #[error("unsupported database url `{0}`: expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE")]
    UnsupportedUrl(String),
    #[error("{0}")]
    Unsupported(&'static str),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Opens the store named by a database URL and brings its schema up to date.
pub async fn open(url: &str) -> StoreResult<std::sync::Arc<dyn Store>> {
    let store = SqlStore::open(url).await?;
    store.migrate().await?;
    Ok(std::sync::Arc::new(store))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Project,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    Suspended,
    Revoked,
}

/// Who may use a key from where, for which models: set on a project and on
/// each key; a request must pass both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Access {
    /// Model glob patterns; `None` allows every model.
    pub models: Option<Vec<String>>,
    /// CIDR ranges; empty allows every address.
    pub allowed_ips: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
    pub archived_at: Option<Timestamp>,
    pub access: Access,
    /// Rotation policy: a key whose newest secret is older than this is due.
    pub max_key_age_seconds: Option<i64>,
    pub rate_limits: Vec<ModelLimits>,
    pub budget: Option<Budget>,
}

#[derive(Debug, Clone, Default)]
pub struct ProjectUpdate {
    pub name: Option<String>,
    pub models: Option<Option<Vec<String>>>,
    pub allowed_ips: Option<Vec<IpNet>>,
    pub max_key_age_seconds: Option<Option<i64>>,
    pub budget: Option<Option<Budget>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: String,
    pub added_at: Timestamp,
}

/// A user's membership of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectUser {
    pub user: User,
    pub project_id: String,
    pub role: String,
    pub added_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub id: String,
    /// `None` for the organization's own service account, which owns admin keys.
    pub project_id: Option<String>,
    pub name: String,
    pub role: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    ServiceAccount(ServiceAccount),
    User(User),
}

/// How a new key names its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerRef {
    ServiceAccount(String),
    User(String),
}

/// One secret version of a key. A rotation adds one and gives the old one an
/// `expires_at` (its grace period).
#[derive(Debug, Clone)]
pub struct SecretVersion {
    pub digest: KeyDigest,
    pub legacy: bool,
    pub last4: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

/// Why and by whom a key was revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub at: Timestamp,
    pub by: Option<String>,
    pub reason: Option<String>,
}

/// A key identity with everything authorization needs.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: PublicId,
    pub kind: KeyKind,
    pub name: String,
    pub project_id: Option<String>,
    pub owner: Option<Owner>,
    pub prefix: String,
    pub state: KeyState,
    pub permissions: Permissions,
    pub access: Access,
    pub limits: RateLimits,
    pub budget: Option<Budget>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used: Option<Touch>,
    pub revocation: Option<Revocation>,
    /// Newest first.
    pub secrets: Vec<SecretVersion>,
}

impl KeyRecord {
    /// Last four characters of the newest secret, for display.
    pub fn last4(&self) -> &str {
        self.secrets.first().map_or("", |s| s.last4.as_str())
    }

    /// When the newest secret was made: creation, or the last rotation.
    pub fn secret_created_at(&self) -> Timestamp {
        self.secrets.first().map_or(self.created_at, |s| s.created_at)
    }
}

/// A use of a key, recorded off the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch {
    pub at: Timestamp,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// What `insert_key` needs; the secret itself never comes here, only its digest.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: PublicId,
    pub kind: KeyKind,
    pub name: String,
    pub project_id: Option<String>,
    pub owner: Option<OwnerRef>,
    pub prefix: String,
    pub permissions: Permissions,
    pub access: Access,
    pub limits: RateLimits,
    pub budget: Option<Budget>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub secret: SecretVersion,
}

/// Changes to a key's settings; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyUpdate {
    pub name: Option<String>,
    pub expires_at: Option<Option<Timestamp>>,
    pub permissions: Option<Permissions>,
    pub models: Option<Option<Vec<String>>>,
    pub allowed_ips: Option<Vec<IpNet>>,
    pub limits: Option<RateLimits>,
    pub budget: Option<Option<Budget>>,
}

/// Cursor pagination as the Administration API has it (`after`, `limit`).
#[derive(Debug, Clone, Default)]
pub struct PageQuery {
    pub after: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

#[derive(Debug, Clone)]
pub enum KeyFilter {
    Project {
        project_id: String,
        include_revoked: bool,
    },
    Admin,
    /// Project keys across projects, as the dashboard searches them.
    Search(KeySearch),
}

/// A search of project keys: every field given must match.
#[derive(Debug, Clone, Default)]
pub struct KeySearch {
    /// Part of the name, or the key's id.
    pub text: Option<String>,
    pub prefix: Option<String>,
    /// `None`: every project.
    pub project_ids: Option<Vec<String>>,
    /// `None`: every key but revoked ones.
    pub status: Option<KeyStatus>,
    /// For `expired`: the time it is.
    pub now: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Suspended,
    Expired,
    Revoked,
}

impl KeyStatus {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "active" => Self::Active,
            "suspended" => Self::Suspended,
            "expired" => Self::Expired,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }
}

/// An admin action, in OpenAI's audit-log terms.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub id: String,
    pub kind: &'static str,
    pub effective_at: Timestamp,
    pub project_id: Option<String>,
    pub actor_key_id: Option<PublicId>,
    /// A person acting in the dashboard (signed in through single sign-on).
    pub actor_user_id: Option<String>,
    /// Where the person acted from.
    pub actor_ip: Option<String>,
    pub details: serde_json::Value,
}

/// An audit event as stored, with its project's name.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub id: String,
    pub kind: String,
    pub effective_at: Timestamp,
    pub project: Option<(String, Option<String>)>,
    pub actor_key: Option<KeyRecord>,
    /// The person who acted in the dashboard; `Err(id)` once they are removed.
    pub actor_user: Option<Result<User, String>>,
    pub actor_ip: Option<String>,
    pub details: serde_json::Value,
}

/// `GET /v1/organization/audit_logs` filters.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub event_types: Vec<String>,
    pub project_ids: Vec<String>,
    pub resource_ids: Vec<String>,
    pub actor_ids: Vec<String>,
    pub effective_at_gte: Option<Timestamp>,
    pub effective_at_lte: Option<Timestamp>,
    pub after: Option<String>,
    pub before: Option<String>,
    pub limit: u32,
}

/// A refused request, kept for `keygate explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenialRecord {
    pub request_id: String,
    pub at: Timestamp,
    pub reason: String,
    pub explanation: String,
    pub key_id: Option<PublicId>,
    pub project_id: Option<String>,
    pub status: u16,
    pub method: String,
    pub path: String,
    pub client_ip: Option<String>,
}

/// Which Usage API family a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsageKind {
    Completions,
    Embeddings,
    Other,
}

impl UsageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Other => "other",
        }
    }

    /// The family of a data-plane path.
    pub fn of_path(path: &str) -> Self {
        match path {
            "/v1/embeddings" => Self::Embeddings,
            "/v1/chat/completions" | "/v1/completions" | "/v1/responses" => Self::Completions,
            _ => Self::Other,
        }
    }
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: i64,
    pub output: i64,
    pub cached: i64,
    pub reasoning: i64,
}

/// One metered data-plane request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub request_id: String,
    pub at: Timestamp,
    pub key_id: PublicId,
    pub prefix: String,
    pub project_id: String,
    pub owner_id: Option<String>,
    pub model: Option<String>,
    pub route: String,
    pub kind: UsageKind,
    pub status: u16,
    pub tokens: Tokens,
    /// Tokens estimated by keygate (the upstream reported none: a stream cut short).
    pub estimated: bool,
    /// Nano-dollars.
    pub cost_nanos: i64,
    pub latency_ms: i64,
    pub upstream: String,
    pub client_ip: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Project,
    ApiKey,
    Model,
    Prefix,
}

/// A Usage API or costs query over the per-minute rollups.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    /// `None`: every kind (costs).
    pub kind: Option<UsageKind>,
    pub start: Timestamp,
    pub end: Timestamp,
    pub bucket_seconds: i64,
    pub group_by: Vec<UsageGroup>,
    pub project_ids: Vec<String>,
    pub key_ids: Vec<String>,
    pub models: Vec<String>,
    pub prefixes: Vec<String>,
}

/// One group's sums within one bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    pub bucket_start: Timestamp,
    pub project_id: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub prefix: Option<String>,
    /// Model requests: those the upstream answered with success.
    pub requests: i64,
    /// Forwarded requests the upstream failed or refused (not model requests).
    pub failed_requests: i64,
    pub tokens: Tokens,
    pub cost_nanos: i64,
}

/// A usage anomaly on one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub id: String,
    pub at: Timestamp,
    pub key_id: PublicId,
    pub project_id: Option<String>,
    pub kind: String,
    pub severity: String,
    pub message: String,
    pub details: serde_json::Value,
    /// Its webhook delivery; `None` when no webhook was configured.
    pub delivery: Option<Delivery>,
    /// Who acknowledged it, and when.
    pub acknowledged: Option<Acknowledgement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    pub at: Timestamp,
    pub by: String,
}

/// Where an alert's webhook delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The same on every attempt (`webhook-id`), so receivers drop repeats.
    pub id: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: Option<Timestamp>,
    pub last_attempt_at: Option<Timestamp>,
    /// Why the last attempt failed: `HTTP 500`, `timed out`, ...
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    /// Given up after the last retry.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// Requests a key made from one client network in one examined window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSighting {
    pub key_id: PublicId,
    pub network: String,
    /// The end of the window (`[window_end - width, window_end)`).
    pub window_end: Timestamp,
    pub requests: i64,
}

/// What is known of a (key, network) pair after a window was counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownNetwork {
    pub key_id: PublicId,
    pub network: String,
    pub first_seen: Timestamp,
    /// Every request from it, each window counted once.
    pub requests: i64,
    /// The key had been used from another network before this one.
    pub key_had_others: bool,
    pub alerted_at: Option<Timestamp>,
}

/// What `bootstrap` found or created.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub organization_id: String,
    pub default_project: Project,
    /// True only on the very first start against an empty database.
    pub first_start: bool,
}

#[async_trait]
pub trait Store:
    OwnerStore
    + KeyStore
    + AuditStore
    + DenialStore
    + UsageStore
    + AlertStore
    + JobStore
    + SessionStore
    + Send
    + Sync
    + 'static
{
    async fn ping(&self) -> StoreResult<()>;

    /// Creates the organization id, the default project (with its default
    /// service account) and the organization's service account on an empty
    /// database.
    async fn bootstrap(&self, now: Timestamp) -> StoreResult<Bootstrap>;
}

/// Projects and the owners of keys: users and service accounts.
#[async_trait]
pub trait OwnerStore: Send + Sync {
    async fn list_projects(&self, page: &PageQuery, include_archived: bool) -> StoreResult<Page<Project>>;
    async fn all_projects(&self) -> StoreResult<Vec<Project>>;
    async fn get_project(&self, id: &str) -> StoreResult<Option<Project>>;
    async fn create_project(&self, name: &str, access: &Access, now: Timestamp) -> StoreResult<Project>;
    async fn update_project(&self, id: &str, update: &ProjectUpdate) -> StoreResult<Option<Project>>;
    async fn archive_project(&self, id: &str, now: Timestamp) -> StoreResult<Option<Project>>;
    /// Sets (or, with `None`, removes) the project's limits for a model pattern.
    async fn set_project_rate_limit(
        &self,
        id: &str,
        model: &str,
        limits: Option<&RateLimits>,
    ) -> StoreResult<Option<Project>>;

    async fn create_user(&self, name: &str, email: &str, role: &str, now: Timestamp) -> StoreResult<User>;
    async fn list_users(&self, page: &PageQuery) -> StoreResult<Page<User>>;
    async fn get_user(&self, id: &str) -> StoreResult<Option<User>>;
    async fn update_user_role(&self, id: &str, role: &str) -> StoreResult<Option<User>>;
    /// Removes the user and revokes every key it owns; returns those keys.
    async fn delete_user(&self, id: &str, revocation: &Revocation) -> StoreResult<Option<Vec<KeyRecord>>>;

    /// The users with this email, compared without case (more than one only
    /// where they were added before keygate refused such twins).
    async fn users_by_email(&self, email: &str) -> StoreResult<Vec<User>>;
    /// Adds the user to the project, or changes their role in it.
    async fn put_project_user(&self, project_id: &str, user_id: &str, role: &str, now: Timestamp) -> StoreResult<()>;
    async fn list_project_users(&self, project_id: &str, page: &PageQuery) -> StoreResult<Page<ProjectUser>>;
    async fn get_project_user(&self, project_id: &str, user_id: &str) -> StoreResult<Option<ProjectUser>>;
    /// False when the user was not in the project.
    async fn remove_project_user(&self, project_id: &str, user_id: &str) -> StoreResult<bool>;
    /// The projects a user belongs to.
    async fn user_projects(&self, user_id: &str) -> StoreResult<Vec<String>>;

    async fn create_service_account(&self, project_id: &str, name: &str, now: Timestamp)
        -> StoreResult<ServiceAccount>;
    async fn list_service_accounts(&self, project_id: &str, page: &PageQuery) -> StoreResult<Page<ServiceAccount>>;
    async fn get_service_account(&self, id: &str) -> StoreResult<Option<ServiceAccount>>;
    async fn default_service_account(&self, project_id: &str) -> StoreResult<Option<ServiceAccount>>;
    async fn organization_service_account(&self) -> StoreResult<Option<ServiceAccount>>;
    /// Deletes the service account and revokes its keys; returns those keys.
    async fn delete_service_account(&self, id: &str, revocation: &Revocation) -> StoreResult<Option<Vec<KeyRecord>>>;
}

/// API keys and their secret versions (digests only), last uses, revocations.
#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn insert_key(&self, key: &NewKey) -> StoreResult<KeyRecord>;
    async fn get_key(&self, id: &PublicId) -> StoreResult<Option<KeyRecord>>;
    async fn find_key_by_digest(&self, digest: &KeyDigest) -> StoreResult<Option<KeyRecord>>;
    async fn list_keys(&self, filter: &KeyFilter, page: &PageQuery) -> StoreResult<Page<KeyRecord>>;
    /// Every key, revoked ones included (the index explains refusals with
    /// them), `limit` at a time in insertion order: the page after `after`.
    async fn keys_page(&self, after: Option<&PublicId>, limit: u32) -> StoreResult<Vec<KeyRecord>>;
    async fn update_key(&self, id: &PublicId, update: &KeyUpdate) -> StoreResult<Option<KeyRecord>>;
    async fn revoke_key(&self, id: &PublicId, revocation: &Revocation) -> StoreResult<Option<KeyRecord>>;
    /// Suspends (`false`) or resumes (`true`) a key that is not revoked.
    async fn set_key_active(&self, id: &PublicId, active: bool) -> StoreResult<Option<KeyRecord>>;
    /// Adds `secret` as the key's newest version; every older version without
    /// an earlier expiry now expires at `grace_ends`.
    async fn rotate_key(
        &self,
        id: &PublicId,
        secret: &SecretVersion,
        grace_ends: Timestamp,
    ) -> StoreResult<Option<KeyRecord>>;
    /// Records last uses; later times win.
    async fn touch_keys(&self, batch: &[(PublicId, Touch)]) -> StoreResult<()>;
}

/// The audit log: append-only for writers, bounded by the retention policy.
#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn append_audit(&self, event: &AuditEvent) -> StoreResult<()>;
    async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Page<AuditRecord>>;
    /// Deletes audit events older than `before`, then the oldest beyond
    /// `max_rows`: the log is append-only for writers, bounded by policy.
    async fn prune_audit(&self, before: Timestamp, max_rows: u64) -> StoreResult<u64>;
}

/// Refused requests, kept for `keygate explain`.
#[async_trait]
pub trait DenialStore: Send + Sync {
    async fn insert_denials(&self, batch: &[DenialRecord]) -> StoreResult<()>;
    async fn get_denial(&self, request_id: &str) -> StoreResult<Option<DenialRecord>>;
    /// Refusals from `start` to `end` by reason, most first; `project_ids`:
    /// only refusals of keys in those projects.
    async fn denial_counts(
        &self,
        start: Timestamp,
        end: Timestamp,
        project_ids: Option<&[String]>,
    ) -> StoreResult<Vec<(String, i64)>>;
    /// Refusals per bucket of `bucket_seconds` from `start` to `end`.
    async fn denial_series(
        &self,
        start: Timestamp,
        end: Timestamp,
        bucket_seconds: i64,
        project_ids: Option<&[String]>,
    ) -> StoreResult<Vec<(Timestamp, i64)>>;
    /// Deletes denial records older than `before`, then the oldest beyond
    /// `max_rows`; returns how many were deleted.
    async fn prune_denials(&self, before: Timestamp, max_rows: u64) -> StoreResult<u64>;
}

/// Usage records, their per-minute rollups, and the client networks seen per key.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Stores usage records and adds them to the per-minute rollups, in one
    /// transaction; a record already stored (same request id) is skipped.
    async fn insert_usage(&self, batch: &[UsageRecord]) -> StoreResult<()>;
    async fn query_usage(&self, query: &UsageQuery) -> StoreResult<Vec<UsageRow>>;
    /// Deletes usage records before `records_before` and rollups before
    /// `rollups_before`; returns how many rows went.
    async fn prune_usage(&self, records_before: Timestamp, rollups_before: Timestamp) -> StoreResult<u64>;

    /// Adds one window's requests per (key, network); a window already
    /// counted (a sighting whose `window_end` is not past the pair's
    /// `counted_until`) adds nothing, so a window examined twice counts once.
    /// Returns each pair as it stands after.
    async fn count_networks(&self, batch: &[NetworkSighting]) -> StoreResult<Vec<KnownNetwork>>;
    /// Notes that a new-network alert was raised for the pair.
    async fn mark_network_alerted(&self, key_id: &PublicId, network: &str, at: Timestamp) -> StoreResult<()>;

    /// Requests per (key id, client ip) in `[start, end)`.
    async fn usage_clients(&self, start: Timestamp, end: Timestamp) -> StoreResult<Vec<(String, String, i64)>>;
    /// The start of the last minute before `before` in which the key was used.
    async fn last_usage_before(&self, key_id: &PublicId, before: Timestamp) -> StoreResult<Option<Timestamp>>;
}

/// Alerts and the state of their webhook deliveries.
#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Stores the alert; false when one with its id is already stored (the
    /// same event raised twice: by two replicas, or a window examined again).
    async fn insert_alert(&self, alert: &Alert) -> StoreResult<bool>;
    /// Newest first; `project_ids`: only alerts of those projects.
    async fn list_alerts(
        &self,
        since: Timestamp,
        project_ids: Option<&[String]>,
        page: &PageQuery,
    ) -> StoreResult<Page<Alert>>;
    async fn get_alert(&self, id: &str) -> StoreResult<Option<Alert>>;
    /// Marks the alert acknowledged (the first acknowledgement stays).
    async fn acknowledge_alert(&self, id: &str, by: &Acknowledgement) -> StoreResult<Option<Alert>>;
    /// The newest alert of `kind` for a key, to avoid raising it twice.
    async fn last_alert(&self, key_id: &PublicId, kind: &str) -> StoreResult<Option<Alert>>;
    /// Alerts whose webhook delivery is pending and due at `now`, oldest first.
    async fn due_deliveries(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<Alert>>;
    /// Takes a due delivery for one attempt: counts the attempt and holds the
    /// delivery until `hold_until`, so no other replica sends it meanwhile.
    /// Returns this attempt's number; `None` when another replica took it first.
    async fn claim_delivery(&self, alert_id: &str, now: Timestamp, hold_until: Timestamp) -> StoreResult<Option<i64>>;
    /// Records the outcome of the attempt claimed at `claimed_at`: delivered,
    /// retry at `next_attempt_at`, or failed for good. An attempt whose claim
    /// lapsed and was taken over records nothing.
    async fn finish_delivery(
        &self,
        alert_id: &str,
        claimed_at: Timestamp,
        status: DeliveryStatus,
        next_attempt_at: Option<Timestamp>,
        error: Option<&str>,
    ) -> StoreResult<()>;
    async fn prune_alerts(&self, before: Timestamp) -> StoreResult<u64>;
}

/// Who holds a dashboard session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionHolder {
    /// A person, signed in through single sign-on.
    User(String),
    /// Whoever signed in with this admin key.
    AdminKey(PublicId),
}

/// A dashboard session as stored: the SHA-256 of its cookie's token, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub token_hash: String,
    pub holder: SessionHolder,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub expires_at: Timestamp,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A single sign-on in progress, between the redirect to the provider and its callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoLogin {
    pub login_hash: String,
    pub state: String,
    pub verifier: String,
    pub nonce: String,
    pub next_path: String,
    pub created_at: Timestamp,
}

/// Dashboard sessions and sign-ins in progress.
#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn insert_session(&self, session: &SessionRecord) -> StoreResult<()>;
    async fn get_session(&self, token_hash: &str) -> StoreResult<Option<SessionRecord>>;
    async fn touch_session(&self, token_hash: &str, at: Timestamp) -> StoreResult<()>;
    async fn delete_session(&self, token_hash: &str) -> StoreResult<()>;
    /// Ends every session of a person or an admin key (removed, revoked).
    async fn delete_sessions_of(&self, holder: &SessionHolder) -> StoreResult<u64>;
    async fn insert_sso_login(&self, login: &SsoLogin) -> StoreResult<()>;
    /// Takes a sign-in in progress: each is used once.
    async fn take_sso_login(&self, login_hash: &str) -> StoreResult<Option<SsoLogin>>;
    /// Deletes sessions past their absolute expiry or idle since
    /// `idle_before`, and sign-ins started before `logins_before`.
    async fn prune_sessions(
        &self,
        now: Timestamp,
        idle_before: Timestamp,
        logins_before: Timestamp,
    ) -> StoreResult<u64>;
}

/// Leases and positions of the cluster-wide periodic jobs (the usage watcher).
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Takes or renews the lease on the periodic job `job` for `holder` until
    /// `now + ttl_seconds`; true while `holder` has it. Replicas run a
    /// cluster-wide job only while they hold its lease.
    async fn hold_lease(&self, job: &str, holder: &str, now: Timestamp, ttl_seconds: i64) -> StoreResult<bool>;
    /// Gives the lease up at once (a clean shutdown), if `holder` has it.
    async fn release_lease(&self, job: &str, holder: &str) -> StoreResult<()>;
    /// How far the job has got (for the watcher: the end of the last window
    /// it examined); `None` before its first run.
    async fn job_position(&self, job: &str) -> StoreResult<Option<Timestamp>>;
    /// Moves the job's position forward, only while `holder` has its lease.
    async fn advance_job(&self, job: &str, holder: &str, position: Timestamp) -> StoreResult<bool>;
}
