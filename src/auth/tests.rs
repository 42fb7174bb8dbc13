use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::key::{generate, KeyPrefix, PublicId};
use crate::store::{KeyRecord, Revocation, SecretVersion};

const NOW: i64 = 1_800_000_000;

fn record(kind: KeyKind) -> (KeyRecord, String) {
    let generated = generate(&KeyPrefix::parse("sk-prod-").unwrap(), &PublicId::random());
    let record = KeyRecord {
        id: generated.id.clone(),
        kind,
        name: "MyApp-Prod-v2".into(),
        project_id: Some("proj_1".into()),
        owner: None,
        prefix: "sk-prod-".into(),
        state: KeyState::Active,
        created_at: NOW - 100,
        expires_at: None,
        last_used_at: None,
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

fn bearer(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {value}")).unwrap());
    h
}

fn chat_scope() -> Scope {
    data_plane_scope(&Method::POST, "/v1/chat/completions").unwrap()
}

fn auth(index: &KeyIndex, headers: &HeaderMap) -> Result<Authorized, Denial> {
    authenticate(index, headers, Plane::Data, chat_scope(), NOW)
}

#[test]
fn a_valid_key_is_authorized() {
    let (rec, key) = record(KeyKind::Project);
    let index = KeyIndex::new(vec![rec.clone()]);
    assert_eq!(auth(&index, &bearer(&key)).unwrap().key.id, rec.id);
}

#[test]
fn missing_and_malformed_headers() {
    let index = KeyIndex::default();
    assert_eq!(auth(&index, &HeaderMap::new()).unwrap_err(), Denial::MissingCredential);
    let mut h = HeaderMap::new();
    h.insert(http::header::AUTHORIZATION, HeaderValue::from_static("sk-abc"));
    assert!(matches!(auth(&index, &h), Err(Denial::MalformedAuthorization { .. })));
    h.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
    assert!(matches!(auth(&index, &h), Err(Denial::MalformedAuthorization { .. })));
}

#[test]
fn basic_auth_with_the_key_as_password_is_accepted() {
    use base64::Engine as _;
    let (rec, key) = record(KeyKind::Project);
    let index = KeyIndex::new(vec![rec]);
    let mut h = HeaderMap::new();
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!(":{key}"));
    h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {encoded}")).unwrap());
    assert!(auth(&index, &h).is_ok());
}

#[test]
fn private_reasons_tell_typo_unknown_and_wrong_secret_apart() {
    let (rec, key) = record(KeyKind::Project);
    let index = KeyIndex::new(vec![rec.clone()]);
    let mut typo = key.clone().into_bytes();
    typo[30] = if typo[30] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    assert!(matches!(
        auth(&index, &bearer(&typo)),
        Err(Denial::MalformedKey { reason: crate::key::KeyFormatError::ChecksumMismatch, .. })
    ));
    let (other, other_key) = record(KeyKind::Project);
    assert!(matches!(auth(&index, &bearer(&other_key)), Err(Denial::UnknownKey { .. })));
    // Same public id, different secret: a well-formed key the index does not hold.
    let forged = crate::key::generate(&KeyPrefix::parse("sk-prod-").unwrap(), &rec.id);
    match auth(&index, &bearer(forged.secret.expose())) {
        Err(Denial::WrongSecret { key, .. }) => assert_eq!(key.id, rec.id),
        other => panic!("expected WrongSecret, got {other:?}"),
    }
    drop(other);
}

#[test]
fn revoked_suspended_expired_and_rotated_out_are_refused() {
    let (mut rec, key) = record(KeyKind::Project);
    rec.state = KeyState::Revoked;
    rec.revocation =
        Some(Revocation { at: NOW - 5, by: Some("admin key `ops`".into()), reason: Some("leaked".into()) });
    let denial = auth(&KeyIndex::new(vec![rec.clone()]), &bearer(&key)).unwrap_err();
    assert!(matches!(&denial, Denial::Revoked { mask, .. } if mask.starts_with("sk-prod-") && mask.contains('*')));
    assert!(denial.to_string().contains("reason: leaked"));

    rec.state = KeyState::Suspended;
    assert!(matches!(auth(&KeyIndex::new(vec![rec.clone()]), &bearer(&key)), Err(Denial::Suspended { .. })));

    rec.state = KeyState::Active;
    rec.expires_at = Some(NOW);
    assert!(matches!(auth(&KeyIndex::new(vec![rec.clone()]), &bearer(&key)), Err(Denial::Expired { .. })));

    rec.expires_at = None;
    rec.secrets[0].expires_at = Some(NOW - 1);
    assert!(matches!(auth(&KeyIndex::new(vec![rec]), &bearer(&key)), Err(Denial::RotatedOut { .. })));
}

#[test]
fn planes_are_kept_apart() {
    let (admin, admin_key) = record(KeyKind::Admin);
    let (project, project_key) = record(KeyKind::Project);
    let index = KeyIndex::new(vec![admin, project]);
    assert!(matches!(auth(&index, &bearer(&admin_key)), Err(Denial::AdminKeyOnDataPlane { .. })));
    let scope = admin_scope(&Method::GET, "/v1/organization/projects");
    assert!(matches!(
        authenticate(&index, &bearer(&project_key), Plane::Admin, scope, NOW),
        Err(Denial::ProjectKeyOnAdmin { .. })
    ));
    assert!(authenticate(&index, &bearer(&admin_key), Plane::Admin, scope, NOW).is_ok());
}

#[test]
fn revocation_in_the_index_takes_effect_on_the_next_lookup() {
    let (rec, key) = record(KeyKind::Project);
    let index = KeyIndex::new(vec![rec.clone()]);
    assert!(auth(&index, &bearer(&key)).is_ok());
    let mut revoked = rec;
    revoked.state = KeyState::Revoked;
    index.upsert(revoked);
    assert!(matches!(auth(&index, &bearer(&key)), Err(Denial::Revoked { .. })));
    assert_eq!(index.len(), 1);
    let _ = Arc::new(());
}

#[test]
fn scopes_follow_openai_names() {
    assert_eq!(data_plane_scope(&Method::GET, "/v1/models").unwrap().as_str(), "api.model.read");
    assert_eq!(chat_scope().as_str(), "model.request");
    assert_eq!(data_plane_scope(&Method::POST, "/v1/responses").unwrap().as_str(), "api.responses.write");
    assert_eq!(data_plane_scope(&Method::POST, "/v1/files").unwrap().as_str(), "api.files.write");
    assert_eq!(data_plane_scope(&Method::GET, "/v1/unknown"), None);
}
