//! `POST /v1/organization/projects/{id}/api_keys/import` (ours): brings keys
//! from another keygate deployment (`keygate keys import --from keygate`)
//! into a project here. Only digests travel: every imported key keeps its id
//! and its secrets, so its users change nothing. Idempotent: a key already
//! here is reported, not duplicated.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::keys::parse_prefix;
use super::projects::find_active;
use super::{audit, bad, budget, cidrs, json_body, models, name, rate_limits};
use crate::dialect::{ApiError, ErrorResponse};
use crate::ids::PublicId;
use crate::key::KeyDigest;
use crate::policy::{Permissions, RateLimits};
use crate::session::Principal;
use crate::state::AppState;
use crate::store::{Access, KeyKind, KeyRecord, NewKey, OwnerRef, Project, SecretVersion, ServiceAccount};
use crate::time::Timestamp;

/// At most this many keys per request; the CLI sends batches.
const MAX_KEYS: usize = 500;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportKeys {
    keys: Vec<ImportedKey>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ImportedKey {
    /// `key_...`, kept: keygate keys carry their id.
    id: String,
    name: String,
    prefix: Option<String>,
    permissions: Option<String>,
    scopes: Option<Vec<String>>,
    models: Option<Vec<String>>,
    allowed_ips: Option<Vec<String>>,
    rate_limits: Option<RateLimits>,
    monthly_budget_usd: Option<f64>,
    budget_alert_percent: Option<u8>,
    #[schema(value_type = i64)]
    created_at: Timestamp,
    #[schema(value_type = Option<i64>)]
    expires_at: Option<Timestamp>,
    /// `false` imports the key suspended.
    #[serde(default = "yes")]
    active: bool,
    secrets: Vec<ImportedSecret>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ImportedSecret {
    /// SHA-256 of the whole key, hex.
    sha256: String,
    /// A key without keygate's checksum (imported from elsewhere).
    #[serde(default)]
    legacy: bool,
    last4: String,
    #[schema(value_type = i64)]
    created_at: Timestamp,
    /// When a rotated-away secret stops working.
    #[schema(value_type = Option<i64>)]
    expires_at: Option<Timestamp>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ImportResult {
    id: String,
    name: String,
    /// `imported`, `exists` (a key with this id is here already), `conflict`
    /// (one of its secrets belongs to another key here) or `expired`.
    result: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ImportResults {
    object: &'static str,
    data: Vec<ImportResult>,
}

#[utoipa::path(post, path = "/v1/organization/projects/{project_id}/api_keys/import", operation_id = "import-project-api-keys", summary = "Import project API keys", tag = "api keys", description = "Ours: keys from another keygate deployment, by digest.", params(("project_id" = String, Path)), request_body = ImportKeys, responses((status = 200, body = ImportResults), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn import(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Result<Json<ImportResults>, ApiError> {
    let req: ImportKeys = json_body(&body)?;
    if req.keys.len() > MAX_KEYS {
        return Err(bad(format!("At most {MAX_KEYS} keys per request."), "keys"));
    }
    let project = find_active(&state, &project_id).await?;
    let owner = state.store.default_service_account(&project.id).await?.ok_or(ApiError::Internal)?;
    // Everything is checked before anything is written.
    let keys = req.keys.into_iter().map(validate).collect::<Result<Vec<_>, _>>()?;
    let now = state.clock.now();
    let mut data = Vec::with_capacity(keys.len());
    let mut imported = Vec::new();
    let mut outcome = Ok(());
    for (key, secrets, active) in keys {
        match import_one(&state, &actor, &project, &owner, key, secrets, active, now).await {
            Ok((result, record)) => {
                data.push(result);
                imported.extend(record);
            }
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
    }
    // One index update for the whole batch (each costs a copy of the index),
    // made even when a write failed part-way, for the keys already stored.
    state.index.upsert(imported);
    outcome.map(|()| Json(ImportResults { object: "list", data }))
}

/// Imports one validated key: its result, and the stored record when it went in.
#[allow(clippy::too_many_arguments, reason = "the request's context, passed down from one caller")]
async fn import_one(
    state: &AppState,
    actor: &Principal,
    project: &Project,
    owner: &ServiceAccount,
    mut key: NewKey,
    mut secrets: Vec<SecretVersion>,
    active: bool,
    now: Timestamp,
) -> Result<(ImportResult, Option<KeyRecord>), ApiError> {
    let result = |result| ImportResult { id: key.id.api_id(), name: key.name.clone(), result };
    secrets.retain(|s| s.expires_at.is_none_or(|at| at > now));
    if state.store.get_key(&key.id).await?.is_some() {
        return Ok((result("exists"), None));
    }
    for secret in &secrets {
        if state.store.find_key_by_digest(&secret.digest).await?.is_some() {
            return Ok((result("conflict"), None));
        }
    }
    if secrets.is_empty() || key.expires_at.is_some_and(|at| at <= now) {
        return Ok((result("expired"), None));
    }
    let done = result("imported");
    // The oldest secret goes in with the key; each newer one as the
    // rotation that made it, so the older ones keep their grace.
    secrets.sort_by_key(|s| s.created_at);
    let mut newer = secrets.split_off(1);
    key.secret = secrets.remove(0);
    key.project_id = Some(project.id.clone());
    key.owner = Some(OwnerRef::ServiceAccount(owner.id.clone()));
    let scopes = key.permissions.scopes();
    let mut record = state.store.insert_key(&key).await?;
    let mut previous_expiry = key.secret.expires_at;
    for secret in newer.drain(..) {
        let grace_ends = previous_expiry.unwrap_or(Timestamp::MAX);
        previous_expiry = secret.expires_at;
        record = state.store.rotate_key(&key.id, &secret, grace_ends).await?.ok_or(ApiError::Internal)?;
    }
    if !active {
        record = state.store.set_key_active(&key.id, false).await?.ok_or(ApiError::Internal)?;
    }
    audit(
        state,
        actor,
        "api_key.created",
        Some(&project.id),
        json!({"id": key.id.api_id(), "data": {"scopes": scopes}}),
    )
    .await;
    Ok((done, Some(record)))
}

/// A key to insert (project and owner set by the caller), its secrets, and
/// whether it is active.
fn validate(k: ImportedKey) -> Result<(NewKey, Vec<SecretVersion>, bool), ApiError> {
    let id = PublicId::parse(&k.id).ok_or_else(|| bad(format!("Invalid key id `{}`.", k.id), "id"))?;
    let permissions = match k.permissions.as_deref() {
        None => Permissions::default(),
        Some(level) => Permissions::parse(level, &k.scopes.unwrap_or_default())
            .map_err(|e| bad(format!("Invalid permissions of {}: {e}.", k.id), "permissions"))?,
    };
    if k.secrets.is_empty() {
        return Err(bad(format!("Key {} has no secrets.", k.id), "secrets"));
    }
    let secrets = k
        .secrets
        .into_iter()
        .map(|s| {
            let digest = hex::decode(&s.sha256).ok().and_then(|bytes| KeyDigest::from_slice(&bytes));
            let digest = digest.ok_or_else(|| bad(format!("A secret of {} is not a hex SHA-256.", k.id), "sha256"))?;
            if s.last4.chars().count() > 4 {
                return Err(bad(format!("`last4` of {} is longer than 4 characters.", k.id), "last4"));
            }
            Ok(SecretVersion {
                digest,
                legacy: s.legacy,
                last4: s.last4,
                created_at: s.created_at,
                expires_at: s.expires_at,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let first = secrets[0].clone();
    let key = NewKey {
        id,
        kind: KeyKind::Project,
        name: name(&k.name, "Key")?,
        project_id: None,
        owner: None,
        // Keys imported into the source without a keygate prefix keep none.
        prefix: match k.prefix.as_deref() {
            Some("") => String::new(),
            prefix => parse_prefix(prefix)?.to_string(),
        },
        permissions,
        access: Access {
            models: k.models.map(models).transpose()?,
            allowed_ips: cidrs(&k.allowed_ips.unwrap_or_default())?,
        },
        limits: rate_limits(k.rate_limits.unwrap_or_default())?,
        budget: budget(k.monthly_budget_usd, k.budget_alert_percent)?,
        created_at: k.created_at,
        expires_at: k.expires_at,
        secret: first,
    };
    Ok((key, secrets, k.active))
}
