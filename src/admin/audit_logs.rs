//! `GET /v1/organization/audit_logs` in OpenAI's shape: newest first, with
//! `event_types[]`, `project_ids[]`, `actor_ids[]`, `resource_ids[]`,
//! `effective_at[gt|gte|lt|lte]`, `after`, `before`, `limit`.

use axum::extract::{RawQuery, State};
use axum::Json;
use serde_json::{json, Value};

use super::bad;
use super::objects::List;
use crate::dialect::{ApiError, ErrorResponse};
use crate::state::AppState;
use crate::store::{AuditFilter, AuditRecord, KeyKind, Owner};

fn parse_filter(raw: Option<&str>) -> Result<AuditFilter, ApiError> {
    let mut filter = AuditFilter { limit: 20, ..AuditFilter::default() };
    let int = |name: &str, value: &str| super::usage::timestamp(name, value);
    for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let value = value.into_owned();
        match name.as_ref() {
            "event_types[]" | "event_types" => filter.event_types.push(value),
            "project_ids[]" | "project_ids" => filter.project_ids.push(value),
            "resource_ids[]" | "resource_ids" => filter.resource_ids.push(value),
            "actor_ids[]" | "actor_ids" => filter.actor_ids.push(value),
            "effective_at[gte]" => filter.effective_at_gte = Some(int(&name, &value)?),
            "effective_at[gt]" => filter.effective_at_gte = Some(int(&name, &value)? + 1),
            "effective_at[lte]" => filter.effective_at_lte = Some(int(&name, &value)?),
            "effective_at[lt]" => filter.effective_at_lte = Some(int(&name, &value)? - 1),
            "after" => filter.after = Some(value),
            "before" => filter.before = Some(value),
            "limit" => {
                filter.limit = value.parse().ok().filter(|l| (1..=100).contains(l)).ok_or_else(|| {
                    bad(format!("Invalid 'limit': {value}. Expected a value between 1 and 100."), "limit")
                })?;
            }
            other => return Err(bad(format!("Unknown query parameter '{other}'."), "query")),
        }
    }
    Ok(filter)
}

fn actor(record: &AuditRecord) -> Value {
    if let Some(user) = &record.actor_user {
        // A person in the dashboard: OpenAI's session actor.
        let user = match user {
            Ok(u) => json!({"id": u.id, "email": u.email}),
            Err(id) => json!({"id": id, "email": null}),
        };
        return json!({"type": "session", "session": {"user": user, "ip_address": record.actor_ip}});
    }
    let Some(key) = &record.actor_key else { return Value::Null };
    let (kind, who) = match &key.owner {
        Some(Owner::User(u)) => ("user", json!({"user": {"id": u.id, "email": u.email}})),
        Some(Owner::ServiceAccount(sa)) => ("service_account", json!({"service_account": {"id": sa.id}})),
        None => ("service_account", json!({"service_account": {"id": null}})),
    };
    let mut api_key = json!({"id": key.id.api_id(), "type": kind});
    if let (Some(a), Some(b)) = (api_key.as_object_mut(), who.as_object()) {
        a.extend(b.clone());
    }
    // Ours: which keygate key acted, by name (no secret).
    api_key["name"] = json!(key.name);
    api_key["admin"] = json!(key.kind == KeyKind::Admin);
    json!({"type": "api_key", "api_key": api_key})
}

fn entry(record: &AuditRecord) -> Value {
    let mut object = json!({
        "id": record.id,
        "type": record.kind,
        "effective_at": record.effective_at,
        "actor": actor(record),
    });
    if let Some((id, name)) = &record.project {
        object["project"] = json!({"id": id, "name": name});
    }
    object[record.kind.as_str()] = record.details.clone();
    object
}

/// One audit log entry; its details sit in a property named after its type.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct AuditLogEntry(Value);

#[utoipa::path(get, path = "/v1/organization/audit_logs", operation_id = "list-audit-logs", summary = "List audit logs", tag = "audit logs", params(("after" = Option<String>, Query), ("limit" = Option<u32>, Query, description = "1 to 100, default 20"), ("before" = Option<String>, Query), ("event_types[]" = Option<Vec<String>>, Query), ("project_ids[]" = Option<Vec<String>>, Query), ("resource_ids[]" = Option<Vec<String>>, Query), ("actor_ids[]" = Option<Vec<String>>, Query), ("effective_at[gte]" = Option<i64>, Query), ("effective_at[lte]" = Option<i64>, Query)), responses((status = 200, body = List<AuditLogEntry>), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<List<AuditLogEntry>>, ApiError> {
    let filter = parse_filter(raw.as_deref())?;
    let page = state.store.list_audit(&filter).await?;
    Ok(Json(List::new(page, |r| r.id.clone(), |r| AuditLogEntry(entry(r)))))
}
