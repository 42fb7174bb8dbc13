//! Persistence: the `Store` trait, the records it holds, and its implementations
//! (embedded SQLite now; PostgreSQL behind the same trait and migrations later).
//!
//! The store is never on the authentication hot path: `auth::KeyIndex` is loaded
//! from it at start and after each change. Writes that follow requests
//! (last-used times) arrive here in batches.

mod migrate;
mod sqlite;

use async_trait::async_trait;
use serde::Serialize;

use crate::key::{KeyDigest, PublicId};

pub use sqlite::SqliteStore;

/// Unix seconds.
pub type Timestamp = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the database schema is version {found}, newer than this keygate knows ({known}); upgrade keygate")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("unsupported database url `{0}`: expected sqlite://PATH")]
    UnsupportedUrl(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Opens the store named by a database URL and brings its schema up to date.
pub async fn open(url: &str) -> StoreResult<std::sync::Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        let store = SqliteStore::open(url).await?;
        store.migrate().await?;
        Ok(std::sync::Arc::new(store))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
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

#[derive(Debug, Clone, Serialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
    pub archived_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceAccount {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub role: String,
    pub created_at: Timestamp,
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
    pub owner: Option<ServiceAccount>,
    pub prefix: String,
    pub state: KeyState,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub revocation: Option<Revocation>,
    /// Newest first.
    pub secrets: Vec<SecretVersion>,
}

impl KeyRecord {
    /// Last four characters of the newest secret, for display.
    pub fn last4(&self) -> &str {
        self.secrets.first().map_or("", |s| s.last4.as_str())
    }
}

/// What `insert_key` needs; the secret itself never comes here, only its digest.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: PublicId,
    pub kind: KeyKind,
    pub name: String,
    pub project_id: Option<String>,
    pub owner_id: Option<String>,
    pub prefix: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub secret: SecretVersion,
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
    Project(String),
    Admin,
}

/// An admin action, in OpenAI's audit-log terms.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub id: String,
    pub kind: &'static str,
    pub effective_at: Timestamp,
    pub project_id: Option<String>,
    pub actor_key_id: Option<PublicId>,
    pub details: serde_json::Value,
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
pub trait Store: Send + Sync + 'static {
    async fn ping(&self) -> StoreResult<()>;

    /// Creates the default project (and its default service account) on an
    /// empty database.
    async fn bootstrap(&self, now: Timestamp) -> StoreResult<Bootstrap>;

    async fn list_projects(&self, page: &PageQuery, include_archived: bool) -> StoreResult<Page<Project>>;
    async fn get_project(&self, id: &str) -> StoreResult<Option<Project>>;
    async fn create_project(&self, name: &str, now: Timestamp) -> StoreResult<Project>;
    async fn default_service_account(&self, project_id: &str) -> StoreResult<Option<ServiceAccount>>;

    async fn insert_key(&self, key: &NewKey) -> StoreResult<KeyRecord>;
    async fn get_key(&self, id: &PublicId) -> StoreResult<Option<KeyRecord>>;
    async fn find_key_by_digest(&self, digest: &KeyDigest) -> StoreResult<Option<KeyRecord>>;
    async fn list_keys(&self, filter: &KeyFilter, page: &PageQuery) -> StoreResult<Page<KeyRecord>>;
    /// Every key, revoked ones included (the index explains refusals with them).
    async fn all_keys(&self) -> StoreResult<Vec<KeyRecord>>;
    async fn revoke_key(&self, id: &PublicId, revocation: &Revocation) -> StoreResult<Option<KeyRecord>>;
    /// Records last-used times; later times win.
    async fn touch_keys(&self, batch: &[(PublicId, Timestamp)]) -> StoreResult<()>;

    async fn append_audit(&self, event: &AuditEvent) -> StoreResult<()>;
}
