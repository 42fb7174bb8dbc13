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
use crate::store::{
    Access, AuditEvent, KeyFilter, KeyKind, KeyRecord, KeySearch, KeyState, KeyUpdate, NewKey, OwnerRef, PageQuery,
    SecretVersion,
};

/// What applying one declaration did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Applied {
    pub name: String,
    pub id: String,
    /// `created`, `updated` (the database had drifted: `drift` says how),
    /// `rotated` (the declared secret changed), `unchanged`, or `refused`
    /// (`drift` says why: a revoked key, another project, an unknown project).
    pub result: &'static str,
    pub drift: Vec<String>,
}

/// Makes the database match `keys`; one result per declaration. `actor`:
/// who asked (a reload through the API), for the audit log.
pub async fn apply_declared(
    state: &AppState,
    keys: &[DeclaredKey],
    actor: Option<&Principal>,
) -> Result<Vec<Applied>, ApiError> {
    // One application at a time in this process (SIGHUP and a reload together).
    static APPLYING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = APPLYING.lock().await;
    let projects: Vec<_> = state.store.all_projects().await?.into_iter().filter(|p| p.archived_at.is_none()).collect();
    let mut results = Vec::with_capacity(keys.len());
    for declared in keys {
        let refused = |why: String| Applied {
            name: declared.name.clone(),
            id: String::new(),
            result: "refused",
            drift: vec![why],
        };
        let matching: Vec<_> = match &declared.project {
            None => projects.iter().filter(|p| p.id == state.settings.default_project_id).collect(),
            Some(wanted) => {
                let by_id: Vec<_> = projects.iter().filter(|p| &p.id == wanted).collect();
                if by_id.is_empty() {
                    projects.iter().filter(|p| &p.name == wanted).collect()
                } else {
                    by_id
                }
            }
        };
        let project = match matching.as_slice() {
            [one] => *one,
            [] => {
                results
                    .push(refused(format!("no active project `{}`", declared.project.as_deref().unwrap_or("default"))));
                continue;
            }
            _ => {
                results.push(refused(format!(
                    "{} projects are named `{}`: declare it by id",
                    matching.len(),
                    declared.project.as_deref().unwrap_or_default()
                )));
                continue;
            }
        };
        let applied = match state.store.find_key_by_digest(&declared.digest).await? {
            Some(here) => reconcile(state, declared, &project.id, here).await?,
            None => match renamed_secret(state, declared, &project.id).await? {
                Some(here) => rotate(state, declared, here).await?,
                None => create(state, declared, &project.id).await?,
            },
        };
        match applied.result {
            "unchanged" => {}
            "refused" => tracing::warn!(name = %applied.name, why = ?applied.drift, "a declared key was not applied"),
            _ => {
                tracing::warn!(key = %applied.id, name = %applied.name, result = applied.result, drift = ?applied.drift, "declared key applied");
                record(state, &applied, &project.id, actor).await;
            }
        }
        results.push(applied);
    }
    Ok(results)
}

/// Reads the config file again and applies its `[[keys]]` (nothing else of
/// the file changes while running).
pub async fn reload(state: &AppState, actor: Option<&Principal>) -> Result<Vec<Applied>, ApiError> {
    let source = &state.settings.config_source;
    let config = Config::load(source.path.as_deref(), &source.overrides, &ProcessEnv).map_err(|e| {
        tracing::warn!(error = %e, "reload: the config file cannot be read; nothing was changed");
        bad("The config file cannot be read again (the gateway's log says why); nothing was changed.", "config")
    })?;
    apply_declared(state, &config.keys, actor).await
}

/// The declared keys' results (`list`).
#[derive(Serialize, ToSchema)]
pub struct AppliedList {
    object: &'static str,
    data: Vec<Applied>,
}

/// `POST /v1/keygate/reload` (ours): the config file's declared keys, applied now.
#[utoipa::path(post, path = "/v1/keygate/reload", operation_id = "reload-declared-keys", summary = "Apply the declared keys", tag = "keygate", description = "Ours: reads the config file again and makes the database match its `[[keys]]` (as `SIGHUP` does); each declaration's result, with any drift found. Only `[[keys]]` take effect; other settings need a restart.", responses((status = 200, body = AppliedList), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn reload_route(
    State(state): State<AppState>,
    Extension(actor): Extension<Principal>,
) -> Result<Json<AppliedList>, ApiError> {
    let data = reload(&state, Some(&actor)).await?;
    Ok(Json(AppliedList { object: "list", data }))
}

/// The one live key of the project with the declaration's name: the key
/// whose declared secret changed (its hash is new).
async fn renamed_secret(
    state: &AppState,
    declared: &DeclaredKey,
    project_id: &str,
) -> Result<Option<KeyRecord>, ApiError> {
    let search = KeySearch {
        text: Some(declared.name.clone()),
        project_ids: Some(vec![project_id.to_owned()]),
        now: state.clock.now(),
        ..KeySearch::default()
    };
    let page = state.store.list_keys(&KeyFilter::Search(search), &PageQuery { after: None, limit: 3 }).await?;
    let same: Vec<KeyRecord> = page.items.into_iter().filter(|k| k.name == declared.name).collect();
    Ok(if same.len() == 1 { same.into_iter().next() } else { None })
}

/// A declared key's secret changed: the new one becomes the key's, and the
/// old keeps working for an hour while clients move over.
async fn rotate(state: &AppState, declared: &DeclaredKey, here: KeyRecord) -> Result<Applied, ApiError> {
    let now = state.clock.now();
    let secret = SecretVersion {
        digest: declared.digest,
        legacy: true,
        last4: String::new(),
        created_at: now,
        expires_at: None,
    };
    let record = state.store.rotate_key(&here.id, &secret, now + 3600).await?.ok_or(ApiError::Internal)?;
    let id = record.id.api_id();
    state.index.upsert([record]);
    let drift = vec!["the declared secret changed: the old one works for one more hour".to_owned()];
    Ok(Applied { name: declared.name.clone(), id, result: "rotated", drift })
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
    let record = match state.store.insert_key(&key).await {
        Ok(record) => record,
        // Another replica (or an import) stored this key a moment ago.
        Err(error) => match state.store.find_key_by_digest(&declared.digest).await? {
            Some(here) => return reconcile(state, declared, project_id, here).await,
            None => return Err(error.into()),
        },
    };
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
    if here.secrets.first().is_none_or(|s| s.digest != declared.digest) {
        let why =
            "the declared secret is no longer this key's current one (it was rotated): declare the new one's hash";
        return Ok(applied("refused", vec![why.into()]));
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

/// The audit log's record of a declaration applied: the config file acted,
/// at the request of `actor` when a reload was asked for.
async fn record(state: &AppState, applied: &Applied, project_id: &str, actor: Option<&Principal>) {
    let kind = if applied.result == "created" { "api_key.created" } else { "api_key.updated" };
    let event = AuditEvent {
        id: crate::ids::audit_log_id(),
        kind,
        effective_at: state.clock.now(),
        project_id: Some(project_id.to_owned()),
        actor_key_id: actor.and_then(Principal::key_id),
        actor_user_id: actor.and_then(|a| a.user_id().map(str::to_owned)),
        actor_ip: actor.and_then(|a| a.client_ip.clone()),
        details: json!({"id": applied.id, "declared": true, "result": applied.result, "drift": applied.drift}),
    };
    super::record_audit(state, event).await;
}
