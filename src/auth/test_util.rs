//! Keys and a project for unit tests that need an index or an `Authorized`
//! (here and in the server's phases).

use crate::ids::PublicId;
use crate::key::{generate, KeyPrefix};
use crate::policy::Permissions;
use crate::store::{Access, KeyKind, KeyRecord, KeyState, Project, SecretVersion};
use crate::time::Timestamp;

/// The time the records are made relative to.
pub const NOW: Timestamp = 1_800_000_000;

/// An active key of `kind` (a project key belongs to [`project`]), and its string.
pub fn record(kind: KeyKind) -> (KeyRecord, String) {
    let generated = generate(&KeyPrefix::parse("sk-prod-").unwrap(), &PublicId::random());
    let record = KeyRecord {
        id: generated.id,
        kind,
        name: "MyApp-Prod-v2".into(),
        project_id: (kind == KeyKind::Project).then(|| "proj_1".into()),
        owner: None,
        prefix: "sk-prod-".into(),
        state: KeyState::Active,
        permissions: Permissions::All,
        access: Access::default(),
        limits: Default::default(),
        budget: None,
        created_at: NOW - 100,
        expires_at: None,
        last_used: None,
        revocation: None,
        secrets: vec![SecretVersion {
            digest: generated.digest,
            legacy: false,
            last4: generated.last4.clone(),
            created_at: NOW - 100,
            expires_at: None,
        }],
    };
    (record, generated.secret.expose().to_owned())
}

pub fn project() -> Project {
    Project {
        id: "proj_1".into(),
        name: "p".into(),
        created_at: NOW - 1000,
        archived_at: None,
        access: Access::default(),
        max_key_age_seconds: None,
        rate_limits: Vec::new(),
        budget: None,
    }
}
