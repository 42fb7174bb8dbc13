//! Keys declared as code (`[[keys]]` in the config file, by hash): applied at
//! start, on `SIGHUP` and on `POST /v1/keygate/reload` (`keygate reload`).
//! The declaration wins: a declared key missing here is created (legacy: no
//! checksum, an id minted here), one that differs is made to match and the
//! difference is reported as drift (in the log and the audit log). A key no
//! longer declared is left as it is: revoke it on purpose.

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::bad;
use crate::config::{Config, DeclaredKey, ProcessEnv};
use crate::dialect::{ApiError, ErrorResponse};
use crate::ids::PublicId;
use crate::policy::Budget;
use crate::session::Principal;
use crate::state::AppState;
use crate::store::{Access, AuditEvent, KeyKind, KeyRecord, KeyState, KeyUpdate, NewKey, OwnerRef, SecretVersion};

/// What applying one declaration did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Applied {
    pub name: String,
    pub id: String,
    /// `created`, `updated` (the database had drifted: `drift` says how),
    /// `unchanged`, or `refused` (`drift` says why: a revoked key, another project).
    pub result: &'static str,
    pub drift: Vec<String>,
}

/// Makes the database match `keys`; one result per declaration.
pub async fn apply_declared(state: &AppState, keys: &[DeclaredKey]) -> Result<Vec<Applied>, ApiError> {
    let projects = state.store.all_projects().await?;
    let mut results = Vec::with_capacity(keys.len());
    for declared in keys {
        let project = match &declared.project {
            None => projects.iter().find(|p| p.id == state.settings.default_project_id),
            Some(wanted) => projects.iter().find(|p| &p.id == wanted || &p.name == wanted),
        };
        let Some(project) = project.filter(|p| p.archived_at.is_none()) else {
            let why = format!("no active project `{}`", declared.project.as_deref().unwrap_or("default"));
            results.push(Applied {
                name: declared.name.clone(),
                id: String::new(),
                result: "refused",
                drift: vec![why],
            });
            continue;
        };
        let applied = match state.store.find_key_by_digest(&declared.digest).await? {
            None => create(state, declared, &project.id).await?,
            Some(here) => reconcile(state, declared, &project.id, here).await?,
        };
        if applied.result != "unchanged" {
            tracing::warn!(key = %applied.id, name = %applied.name, result = applied.result, drift = ?applied.drift, "declared key applied");
            record(state, &applied, Some(&project.id)).await;
        }
        results.push(applied);
    }
    Ok(results)
}

/// Reads the config file again and applies its `[[keys]]`.
pub async fn reload(state: &AppState) -> Result<Vec<Applied>, ApiError> {
    let source = &state.settings.config_source;
    let config = Config::load(source.path.as_deref(), &source.overrides, &ProcessEnv)
        .map_err(|e| bad(format!("The config file cannot be read again: {e}. Nothing was changed."), "config"))?;
    apply_declared(state, &config.keys).await
}

/// `POST /v1/keygate/reload` (ours): the config file's declared keys, applied now.
#[utoipa::path(post, path = "/v1/keygate/reload", operation_id = "reload-declared-keys", summary = "Apply the declared keys", tag = "keygate", description = "Ours: reads the config file again and makes the database match its `[[keys]]` (as `SIGHUP` does); each declaration's result, with any drift found.", responses((status = 200, body = Vec<Applied>), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn reload_route(
    State(state): State<AppState>,
    Extension(_actor): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let results = reload(&state).await?;
    Ok(Json(json!({"object": "list", "data": results})))
}

async fn create(state: &AppState, declared: &DeclaredKey, project_id: &str) -> Result<Applied, ApiError> {
    let owner = state.store.default_service_account(project_id).await?.ok_or(ApiError::Internal)?;
    let now = state.clock.now();
    let key = NewKey {
        id: PublicId::random(),
        kind: KeyKind::Project,
        name: declared.name.clone(),
        project_id: Some(project_id.to_owned()),
        owner: Some(OwnerRef::ServiceAccount(owner.id)),
        prefix: String::new(),
        permissions: declared.permissions.clone(),
        access: Access { models: declared.models.clone(), allowed_ips: Vec::new() },
        limits: declared.limits,
        budget: budget(declared),
        created_at: now,
        expires_at: None,
        // Declared by hash: keygate never saw the key, so it has no checksum.
        secret: SecretVersion {
            digest: declared.digest,
            legacy: true,
            last4: String::new(),
            created_at: now,
            expires_at: None,
        },
    };
    let record = state.store.insert_key(&key).await?;
    let id = record.id.api_id();
    state.index.upsert([record]);
    Ok(Applied { name: declared.name.clone(), id, result: "created", drift: Vec::new() })
}

async fn reconcile(
    state: &AppState,
    declared: &DeclaredKey,
    project_id: &str,
    here: KeyRecord,
) -> Result<Applied, ApiError> {
    let applied = |result, drift| Applied { name: declared.name.clone(), id: here.id.api_id(), result, drift };
    if here.state == KeyState::Revoked || here.kind != KeyKind::Project {
        return Ok(applied("refused", vec!["this key is revoked, or an admin key: declare another".into()]));
    }
    if here.project_id.as_deref() != Some(project_id) {
        let why =
            format!("the key is in project {}: keys do not move between projects", here.project_id.unwrap_or_default());
        return Ok(applied("refused", vec![why]));
    }
    let mut drift = Vec::new();
    let mut update = KeyUpdate::default();
    if here.name != declared.name {
        drift.push(format!("name `{}` (declared `{}`)", here.name, declared.name));
        update.name = Some(declared.name.clone());
    }
    if here.permissions != declared.permissions {
        drift.push(format!("permissions {} (declared {})", here.permissions.level(), declared.permissions.level()));
        update.permissions = Some(declared.permissions.clone());
    }
    if here.access.models != declared.models {
        drift.push(format!("models {:?} (declared {:?})", here.access.models, declared.models));
        update.models = Some(declared.models.clone());
    }
    if here.limits != declared.limits {
        drift.push("rate limits".into());
        update.limits = Some(declared.limits);
    }
    if here.budget != budget(declared) {
        drift.push("monthly budget".into());
        update.budget = Some(budget(declared));
    }
    if drift.is_empty() {
        return Ok(applied("unchanged", drift));
    }
    let record = state.store.update_key(&here.id, &update).await?.ok_or(ApiError::Internal)?;
    state.index.upsert([record]);
    Ok(applied("updated", drift))
}

fn budget(declared: &DeclaredKey) -> Option<Budget> {
    declared.monthly_budget_usd.map(|usd| Budget { monthly_nanos: (usd * 1e9).round() as i64, alert_percent: 80 })
}

/// The audit log's record of a declaration applied: the config file acted.
async fn record(state: &AppState, applied: &Applied, project_id: Option<&str>) {
    let kind = if applied.result == "created" { "api_key.created" } else { "api_key.updated" };
    let event = AuditEvent {
        id: crate::ids::audit_log_id(),
        kind,
        effective_at: state.clock.now(),
        project_id: project_id.map(str::to_owned),
        actor_key_id: None,
        actor_user_id: None,
        actor_ip: None,
        details: json!({"id": applied.id, "declared": true, "result": applied.result, "drift": applied.drift}),
    };
    super::record_audit(state, event).await;
}
