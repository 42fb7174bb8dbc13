//! Authentication and authorization: turn a request's credential into an
//! [`Authorized`] context or a [`Denial`], without touching the database.
//!
//! Owns: credential extraction, the in-memory key index, the one decision
//! function, the route → scope map. Leaves to `dialect` how a denial looks on
//! the wire, and to `admin` how keys are created.

mod credential;
mod denial;
mod index;
mod scope;

use std::sync::Arc;

use http::HeaderMap;

use crate::key::{self, KeyDigest, KeyFormatError};
use crate::store::{KeyKind, KeyRecord, KeyState, Timestamp};

pub use credential::{extract, Presented};
pub use denial::{Denial, KeyRef};
pub use index::KeyIndex;
pub use scope::{admin_scope, data_plane_scope, Scope, UNMAPPED as UNMAPPED_SCOPE};

/// Which side of the gateway a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// Model calls and everything proxied upstream.
    Data,
    /// The Administration API under `/v1/organization`.
    Admin,
}

/// The result of a successful authentication, decided once and carried in the
/// request's extensions; nothing downstream re-derives it.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub key: Arc<KeyRecord>,
}

/// Authenticates `headers` for `plane`, needing `scope`. Unknown and revoked keys
/// differ only in the private reason the [`Denial`] carries.
pub fn authenticate(
    index: &KeyIndex,
    headers: &HeaderMap,
    plane: Plane,
    scope: Scope,
    now: Timestamp,
) -> Result<Authorized, Denial> {
    let presented = extract(headers)?;
    let text = presented.expose();
    let digest = KeyDigest::of(text);
    // Format errors are checked only after the digest is computed, so a
    // malformed key and an unknown one cost the same.
    let format = key::parse(text).map(|p| p.id.to_owned());
    let Some(record) = index.lookup(&digest) else {
        return Err(unknown(index, &presented, format));
    };
    decide(&record, &digest, plane, scope, now).map_err(|reason| reason.with_mask(presented.mask()))?;
    Ok(Authorized { key: record })
}

fn unknown(index: &KeyIndex, presented: &Presented, format: Result<String, KeyFormatError>) -> Denial {
    let mask = presented.mask();
    match format {
        Ok(id) => match key::PublicId::parse(&id).and_then(|id| index.by_id(&id)) {
            Some(record) => Denial::WrongSecret { mask, key: KeyRef::of(&record) },
            None => Denial::UnknownKey { mask },
        },
        Err(KeyFormatError::NotKeygate) => Denial::UnknownKey { mask },
        Err(reason) => Denial::MalformedKey { mask, reason },
    }
}

/// The one authorization decision, from the key record, the digest presented,
/// the plane and the scope the route needs.
pub fn decide(
    record: &KeyRecord,
    digest: &KeyDigest,
    plane: Plane,
    scope: Scope,
    now: Timestamp,
) -> Result<(), Denial> {
    let key = || KeyRef::of(record);
    let mask = String::new();
    match record.state {
        KeyState::Revoked => {
            return Err(Denial::Revoked { mask, key: key(), revocation: record.revocation.clone() });
        }
        KeyState::Suspended => return Err(Denial::Suspended { mask, key: key() }),
        KeyState::Active => {}
    }
    if let Some(at) = record.expires_at.filter(|&at| at <= now) {
        return Err(Denial::Expired { mask, key: key(), at });
    }
    let version = record.secrets.iter().find(|s| s.digest.ct_eq(digest));
    if let Some(at) = version.and_then(|v| v.expires_at).filter(|&at| at <= now) {
        return Err(Denial::RotatedOut { mask, key: key(), at });
    }
    match (record.kind, plane) {
        (KeyKind::Project, Plane::Data) | (KeyKind::Admin, Plane::Admin) => Ok(()),
        (KeyKind::Admin, Plane::Data) => Err(Denial::AdminKeyOnDataPlane { key: key(), scope }),
        (KeyKind::Project, Plane::Admin) => Err(Denial::ProjectKeyOnAdmin { key: key(), scope }),
    }
}

#[cfg(test)]
mod tests;
