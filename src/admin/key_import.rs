//! `POST /v1/organization/projects/{id}/api_keys/import` (ours): brings keys
//! into a project here, from another keygate deployment (`keygate keys
//! import --from keygate`: each keeps its id and its secrets) or from
//! elsewhere (`--from plaintext|sha256`: keys without keygate's id and
//! checksum, which get an id here and are marked legacy). Only digests
//! travel: the key's users change nothing. Idempotent: a key already here
//! (by id, or for a foreign key by its digest) is reported, not duplicated;
//! `dry_run` reports what would happen and writes nothing.

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
    /// Check every key and report what would happen; write nothing.
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ImportedKey {
    /// `key_...`, kept: keygate keys carry their id. Absent for a key from
    /// elsewhere, which gets one here.
    id: Option<String>,
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
    /// `imported` (`new` in a dry run), `exists` (a key with this id, or a
    /// foreign key with this secret, is here already), `conflict` (one of its
    /// secrets belongs to another key here) or `expired`.
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
    for key in keys {
        if req.dry_run {
            data.push(plan(&state, &key.key, &key.secrets, key.foreign, now).await?.0);
            continue;
        }
        match import_one(&state, &actor, &project, &owner, key, now).await {
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
async fn import_one(
    state: &AppState,
    actor: &Principal,
    project: &Project,
    owner: &ServiceAccount,
    Validated { mut key, mut secrets, active, foreign }: Validated,
    now: Timestamp,
) -> Result<(ImportResult, Option<KeyRecord>), ApiError> {
    secrets.retain(|s| s.expires_at.is_none_or(|at| at > now));
    let (planned, go) = plan(state, &key, &secrets, foreign, now).await?;
    if !go {
        return Ok((planned, None));
    }
    let done = ImportResult { result: "imported", ..planned };
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

/// What importing `key` would do, and whether it goes in. A foreign key
/// (minted an id here) is the same key as one here with its secret.
async fn plan(
    state: &AppState,
    key: &NewKey,
    secrets: &[SecretVersion],
    foreign: bool,
    now: Timestamp,
) -> Result<(ImportResult, bool), ApiError> {
    let result = |result| ImportResult { id: key.id.api_id(), name: key.name.clone(), result };
    let live: Vec<&SecretVersion> = secrets.iter().filter(|s| s.expires_at.is_none_or(|at| at > now)).collect();
    if !foreign && state.store.get_key(&key.id).await?.is_some() {
        return Ok((result("exists"), false));
    }
    for secret in &live {
        if let Some(here) = state.store.find_key_by_digest(&secret.digest).await? {
            // Imported before: the same key, under the id it got then.
            if foreign {
                return Ok((ImportResult { id: here.id.api_id(), ..result("exists") }, false));
            }
            return Ok((result("conflict"), false));
        }
    }
    if live.is_empty() || key.expires_at.is_some_and(|at| at <= now) {
        return Ok((result("expired"), false));
    }
    Ok((result("new"), true))
}

/// A key to insert (project and owner set by the caller), its secrets,
/// whether it is active, and whether it comes from elsewhere (its id minted here).
struct Validated {
    key: NewKey,
    secrets: Vec<SecretVersion>,
    active: bool,
    foreign: bool,
}

/// Checks one key of the request.
fn validate(k: ImportedKey) -> Result<Validated, ApiError> {
    let id = match &k.id {
        Some(id) => PublicId::parse(id).ok_or_else(|| bad(format!("Invalid key id `{id}`."), "id"))?,
        // A key from elsewhere: its secrets must say so (no checksum to check).
        None if k.secrets.iter().all(|s| s.legacy) => PublicId::random(),
        None => return Err(bad("A key without `id` must have only legacy secrets.", "id")),
    };
    let shown = id.api_id();
    let permissions = match k.permissions.as_deref() {
        None => Permissions::default(),
        Some(level) => Permissions::parse(level, &k.scopes.unwrap_or_default())
            .map_err(|e| bad(format!("Invalid permissions of {shown}: {e}."), "permissions"))?,
    };
    if k.secrets.is_empty() {
        return Err(bad(format!("Key {shown} has no secrets."), "secrets"));
    }
    let secrets = k
        .secrets
        .into_iter()
        .map(|s| {
            let digest = hex::decode(&s.sha256).ok().and_then(|bytes| KeyDigest::from_slice(&bytes));
            let digest = digest.ok_or_else(|| bad(format!("A secret of {shown} is not a hex SHA-256."), "sha256"))?;
            if s.last4.chars().count() > 4 {
                return Err(bad(format!("`last4` of {shown} is longer than 4 characters."), "last4"));
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
    Ok(Validated { key, secrets, active: k.active, foreign: k.id.is_none() })
}
