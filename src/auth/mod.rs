//! Authentication and authorization: turn a request's credential into an
//! [`Authorized`] context or a [`Denial`], without touching the database.
//!
//! Owns: credential extraction, the in-memory key index, the one decision
//! function and the [`Denial`] it gives. Leaves the scope each route needs and
//! what permissions allow to `policy`, how a denial looks on the wire to
//! `dialect`, and how keys are created to `admin`.

mod credential;
mod denial;
mod index;

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

use crate::ids::PublicId;
use crate::key::{self, KeyDigest, KeyFormatError};
use crate::policy::{glob_match, Scope};
use crate::store::{Access, KeyKind, KeyState, Project};
use crate::time::Timestamp;

pub use credential::{key_in_query, presented, Presented};
pub use denial::{dimension_name, Denial, ForeignKey, KeyRef};
pub use index::{Change, Found, IndexBuilder, IndexedKey, KeyIndex, KeyPolicy};

/// Which side of the gateway a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// Model calls and everything proxied upstream.
    Data,
    /// The Administration API under `/v1/organization`.
    Admin,
}

/// What the decision needs to know about the request besides its credential.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    pub plane: Plane,
    pub scope: Scope,
    pub client_ip: Option<IpAddr>,
    /// This gateway's organization id, which `OpenAI-Organization` must match.
    pub organization_id: &'a str,
    /// Which front door: Azure clients send `api-key`.
    pub azure: bool,
    /// The query string carries a key ([`key_in_query`]): refused.
    pub key_in_query: bool,
    pub now: Timestamp,
}

/// The result of a successful authentication, decided once and carried in the
/// request's extensions; nothing downstream re-derives it.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub key: Arc<IndexedKey>,
    pub project: Option<Arc<Project>>,
    /// When the presented secret stops working: the key's expiry or the end
    /// of its rotation grace, whichever is first.
    pub expires_at: Option<Timestamp>,
}

impl Authorized {
    /// Whether both the key and its project allow `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        let allowed =
            |access: &Access| access.models.as_ref().is_none_or(|globs| globs.iter().any(|g| glob_match(g, model)));
        allowed(&self.key.policy.access) && self.project.as_deref().is_none_or(|p| allowed(&p.access))
    }

    /// Whether any model restriction applies (so model lists must be filtered).
    pub fn restricts_models(&self) -> bool {
        self.key.policy.access.models.is_some() || self.project.as_deref().is_some_and(|p| p.access.models.is_some())
    }

    pub fn check_model(&self, model: &str) -> Result<(), Denial> {
        if self.allows_model(model) {
            Ok(())
        } else {
            Err(Denial::ModelNotAllowed { key: KeyRef::of(&self.key), model: model.to_owned() })
        }
    }
}

/// Authenticates and authorizes a request from its headers. Unknown and
/// revoked keys differ only in the private reason the [`Denial`] carries.
pub fn authenticate(index: &KeyIndex, headers: &HeaderMap, admission: &Admission<'_>) -> Result<Authorized, Denial> {
    if admission.key_in_query {
        return Err(Denial::MalformedAuthorization {
            detail: "a key was sent in the query string; send it in the Authorization header",
        });
    }
    let presented = presented(headers, admission.azure)?;
    let text = presented.expose();
    let digest = KeyDigest::of(text);
    let Some(found) = index.lookup(&digest) else {
        // The format is checked only here, after the digest and its lookup,
        // so a malformed key and an unknown one cost the same.
        let format = key::parse(text).map(|p| p.id.to_owned());
        return Err(unknown(index, &presented, format));
    };
    let project = found.key.project_id().and_then(|id| index.project(id));
    if let Err(reason) = decide(&found, project.as_deref(), headers, admission) {
        // A refused key in the index (revoked, suspended, expired...) does
        // the work of one that is not: the format check and the id lookup,
        // so the time to answer does not tell them apart (bench/oracle.sh).
        std::hint::black_box(key::parse(text).ok().and_then(|p| PublicId::parse(p.id)).map(|id| index.by_id(&id)));
        return Err(reason.with_mask(presented.mask()));
    }
    let expires_at = match (found.key.expires_at, found.secret_expires_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(Authorized { key: found.key, project, expires_at })
}

fn unknown(index: &KeyIndex, presented: &Presented, format: Result<String, KeyFormatError>) -> Denial {
    let mask = presented.mask();
    match format {
        Ok(id) => match PublicId::parse(&id).and_then(|id| index.by_id(&id)) {
            Some(record) => Denial::WrongSecret { mask, key: KeyRef::of(&record) },
            None => Denial::UnknownKey { mask, foreign: None, legacy: false },
        },
        Err(KeyFormatError::NotKeygate) => {
            let foreign = ForeignKey::classify(presented.expose());
            // Only where legacy keys are held can this be a mistyped one.
            Denial::UnknownKey { mask, legacy: foreign.is_none() && index.holds_legacy(), foreign }
        }
        Err(reason) => {
            // A mistyped key usually still names the key it was copied from.
            let near = key::claimed_id(presented.expose()).and_then(|id| index.by_id(&id)).map(|r| KeyRef::of(&r));
            Denial::MalformedKey { mask, reason, near }
        }
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

fn ip_allowed(access: &Access, ip: Option<IpAddr>) -> bool {
    access.allowed_ips.is_empty() || ip.is_some_and(|ip| access.allowed_ips.iter().any(|net| net.contains(&ip)))
}

/// The one authorization decision: key state, expiry, secret version, plane,
/// project state, organization/project headers, IP allow-lists, scope.
fn decide(
    found: &Found,
    project: Option<&Project>,
    headers: &HeaderMap,
    admission: &Admission<'_>,
) -> Result<(), Denial> {
    let record = &*found.key;
    let key = || KeyRef::of(record);
    let mask = String::new();
    let now = admission.now;
    match record.state {
        KeyState::Revoked => {
            return Err(Denial::Revoked { mask, key: key(), revocation: record.revocation.as_deref().cloned() });
        }
        KeyState::Suspended => return Err(Denial::Suspended { mask, key: key() }),
        KeyState::Active => {}
    }
    if let Some(at) = record.expires_at.filter(|&at| at <= now) {
        return Err(Denial::Expired { mask, key: key(), at });
    }
    if let Some(at) = found.secret_expires_at.filter(|&at| at <= now) {
        return Err(Denial::RotatedOut { mask, key: key(), at, rotated_at: Some(record.secret_created_at) });
    }
    let scope = admission.scope;
    match (record.kind, admission.plane) {
        (KeyKind::Admin, Plane::Admin) => return Ok(()),
        (KeyKind::Project, Plane::Data) => {}
        (KeyKind::Admin, Plane::Data) => return Err(Denial::AdminKeyOnDataPlane { key: key(), scope }),
        (KeyKind::Project, Plane::Admin) => return Err(Denial::ProjectKeyOnAdmin { key: key(), scope }),
    }
    if let Some(p) = project {
        if let Some(at) = p.archived_at {
            return Err(Denial::ProjectArchived { mask, key: key(), project: p.id.clone(), at });
        }
    }
    if let Some(org) = header(headers, "openai-organization") {
        if org != admission.organization_id {
            return Err(Denial::OrganizationMismatch { key: key(), header: org.to_owned() });
        }
    }
    if let Some(sent) = header(headers, "openai-project") {
        if Some(sent) != record.project_id() {
            return Err(Denial::ProjectMismatch { key: key(), header: sent.to_owned() });
        }
    }
    let ip_ok = project.is_none_or(|p| ip_allowed(&p.access, admission.client_ip))
        && ip_allowed(&record.policy.access, admission.client_ip);
    if !ip_ok {
        return Err(Denial::IpNotAllowed { key: key(), ip: admission.client_ip });
    }
    if !record.policy.permissions.allows(scope) {
        return Err(Denial::MissingScope { key: key(), scope });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_util;
#[cfg(test)]
mod tests;
