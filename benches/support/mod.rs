//! Keys and a project for the benchmarks (each bench is its own crate; this
//! module is included by `mod support;`).

use keygate::ids::PublicId;
use keygate::key::{generate, KeyPrefix};
use keygate::policy::{Permissions, RateLimits};
use keygate::store::{Access, KeyKind, KeyRecord, KeyState, Project, SecretVersion};

/// An active project key of the benchmarks' project, and its string.
pub fn record(limits: RateLimits) -> (KeyRecord, String) {
    let generated = generate(&KeyPrefix::parse("sk-prod-").unwrap(), &PublicId::random());
    let record = KeyRecord {
        id: generated.id,
        kind: KeyKind::Project,
        name: "bench".into(),
        project_id: Some("proj_bench".into()),
        owner: None,
        prefix: "sk-prod-".into(),
        state: KeyState::Active,
        permissions: Permissions::All,
        access: Access::default(),
        limits,
        budget: None,
        created_at: 0,
        expires_at: None,
        last_used: None,
        revocation: None,
        secrets: vec![SecretVersion {
            digest: generated.digest,
            legacy: false,
            last4: generated.last4,
            created_at: 0,
            expires_at: None,
        }],
    };
    (record, generated.secret.expose().to_owned())
}

/// The project every benchmark key belongs to.
pub fn project() -> Project {
    Project {
        id: "proj_bench".into(),
        name: "bench".into(),
        created_at: 0,
        archived_at: None,
        access: Access::default(),
        max_key_age_seconds: None,
        rate_limits: Vec::new(),
        budget: None,
    }
}
