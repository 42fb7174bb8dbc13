//! The first admin key: from `KEYGATE_ADMIN_KEY` (any value, stored hashed,
//! upserted by digest on every start), or generated once on an empty database.

use super::admin_keys::ADMIN_PREFIX;
use crate::ids::PublicId;
use crate::key::{self, generate, KeyDigest, KeyPrefix, Secret};
use crate::policy::Permissions;
use crate::store::{Access, KeyKind, KeyRecord, NewKey, OwnerRef, SecretVersion, Store, StoreResult};
use crate::time::Timestamp;

/// Returns the generated key when one was made (to print once), and the
/// record that was inserted, if any.
pub async fn bootstrap_admin_key(
    store: &dyn Store,
    from_env: Option<&Secret>,
    first_start: bool,
    now: Timestamp,
) -> StoreResult<(Option<Secret>, Option<KeyRecord>)> {
    let owner = store.organization_service_account().await?.map(|sa| OwnerRef::ServiceAccount(sa.id));
    if let Some(value) = from_env {
        let digest = KeyDigest::of(value.expose());
        // A key already known by digest is left alone: a revoked one stays revoked.
        if store.find_key_by_digest(&digest).await?.is_some() {
            return Ok((None, None));
        }
        let text = value.expose();
        let (id, prefix, legacy) = match key::parse(text) {
            Ok(parsed) => (PublicId::parse(parsed.id), parsed.prefix.to_owned(), false),
            Err(_) => (None, String::new(), true),
        };
        let last4: String = text.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
        let secret = SecretVersion { digest, legacy, last4, created_at: now, expires_at: None };
        let key =
            admin_key(id.unwrap_or_else(PublicId::random), "bootstrap (KEYGATE_ADMIN_KEY)", prefix, owner, secret, now);
        return match store.insert_key(&key).await {
            Ok(record) => Ok((None, Some(record))),
            // A replica starting beside this one stored the same key first.
            Err(_) if store.find_key_by_digest(&digest).await?.is_some() => Ok((None, None)),
            Err(error) => Err(error),
        };
    }
    if !first_start {
        return Ok((None, None));
    }
    let prefix = KeyPrefix::parse(ADMIN_PREFIX).unwrap_or_default();
    let generated = generate(&prefix, &PublicId::random());
    let secret = SecretVersion {
        digest: generated.digest,
        legacy: false,
        last4: generated.last4.clone(),
        created_at: now,
        expires_at: None,
    };
    let record =
        store.insert_key(&admin_key(generated.id, "bootstrap", prefix.to_string(), owner, secret, now)).await?;
    Ok((Some(generated.secret), Some(record)))
}

fn admin_key(
    id: PublicId,
    name: &str,
    prefix: String,
    owner: Option<OwnerRef>,
    secret: SecretVersion,
    now: Timestamp,
) -> NewKey {
    NewKey {
        id,
        kind: KeyKind::Admin,
        name: name.into(),
        project_id: None,
        owner,
        prefix,
        permissions: Permissions::All,
        access: Access::default(),
        limits: Default::default(),
        budget: None,
        created_at: now,
        expires_at: None,
        secret,
    }
}
