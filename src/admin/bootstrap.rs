//! The first admin key: from `KEYGATE_ADMIN_KEY` (any value, stored hashed,
//! upserted by digest on every start), or generated once on an empty database.

use crate::key::{self, generate, KeyDigest, KeyPrefix, PublicId, Secret};
use crate::store::{KeyKind, KeyRecord, NewKey, SecretVersion, Store, StoreResult, Timestamp};

const ADMIN_PREFIX: &str = "sk-admin-";

/// Returns the generated key when one was made (to print once), and the
/// record that was inserted, if any.
pub async fn bootstrap_admin_key(
    store: &dyn Store,
    from_env: Option<&Secret>,
    first_start: bool,
    now: Timestamp,
) -> StoreResult<(Option<Secret>, Option<KeyRecord>)> {
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
        let record = store
            .insert_key(&admin_key(
                id.unwrap_or_else(PublicId::random),
                "bootstrap (KEYGATE_ADMIN_KEY)",
                prefix,
                SecretVersion { digest, legacy, last4, created_at: now, expires_at: None },
                now,
            ))
            .await?;
        return Ok((None, Some(record)));
    }
    if !first_start {
        return Ok((None, None));
    }
    let prefix = KeyPrefix::parse(ADMIN_PREFIX).unwrap_or_default();
    let generated = generate(&prefix, &PublicId::random());
    let record = store
        .insert_key(&admin_key(
            generated.id.clone(),
            "bootstrap",
            prefix.to_string(),
            SecretVersion {
                digest: generated.digest,
                legacy: false,
                last4: generated.last4.clone(),
                created_at: now,
                expires_at: None,
            },
            now,
        ))
        .await?;
    Ok((Some(generated.secret), Some(record)))
}

fn admin_key(id: PublicId, name: &str, prefix: String, secret: SecretVersion, now: Timestamp) -> NewKey {
    NewKey {
        id,
        kind: KeyKind::Admin,
        name: name.into(),
        project_id: None,
        owner_id: None,
        prefix,
        created_at: now,
        expires_at: None,
        secret,
    }
}
