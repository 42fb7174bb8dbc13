use super::{canonical_path, normalize, PathError};

#[test]
fn clean_paths_keep_their_form() {
    for ok in [
        "/v1/chat/completions",
        "/v1/models/gpt-4o",
        "/v1/files/",
        "/v1/models/ft:gpt-4o:acme.v1",
        "/v1/models/...",
        "/v1/models/..x",
        "/v1/models/é..",
        "/v1/models/100%25",
        "/v1/files/file-AbC123/content",
    ] {
        assert_eq!(canonical_path(ok).as_deref(), Ok(ok), "{ok}");
    }
}

#[test]
fn escapes_of_unreserved_characters_are_decoded_and_others_kept_in_upper_case() {
    assert_eq!(canonical_path("/v1/%63hat/completions").as_deref(), Ok("/v1/chat/completions"));
    assert_eq!(canonical_path("/v1/models/%2ex").as_deref(), Ok("/v1/models/.x"));
    assert_eq!(canonical_path("/v1/models/a%7eb%2D").as_deref(), Ok("/v1/models/a~b-"));
    assert_eq!(canonical_path("/v1/models/a%20b%3a").as_deref(), Ok("/v1/models/a%20b%3A"));
}

#[test]
fn the_resource_is_lower_case() {
    assert_eq!(canonical_path("/v1/CHAT/completions").as_deref(), Ok("/v1/chat/completions"));
    assert_eq!(canonical_path("/v1/Files/file-AbC").as_deref(), Ok("/v1/files/file-AbC"));
}

#[test]
fn keygates_own_namespaces_are_reserved_in_every_spelling() {
    for reserved in [
        "/v1/organization",
        "/v1/organization/",
        "/v1/organization/projects",
        "/v1/Organization/projects",
        "/v1/ORGANIZATION/projects",
        "/v1/%6Frganization/admin_api_keys",
        "/v1/%6frganization/admin_api_keys",
        "/v1/%4F%52%47anization",
        "/v1/keygate",
        "/v1/keygate/",
        "/v1/keygate/echo-auth",
        "/v1/KeyGate/echo-auth",
        "/v1/%6Beygate/echo-auth",
        "/v1/keys/leaked",
        "/v1/keys/leaked/",
        "/v1/Keys/LEAKED",
        "/v1/keys/%6Ceaked",
        "/v1/keys/leaked/more",
    ] {
        assert_eq!(canonical_path(reserved), Err(PathError::Reserved), "{reserved}");
    }
    // Only the report route is keygate's under `/v1/keys/`.
    for forwarded in ["/v1/keys", "/v1/keys/", "/v1/keys/key_1", "/v1/keys/leakedx", "/v1/files/leaked"] {
        assert_eq!(canonical_path(forwarded).as_deref(), Ok(forwarded), "{forwarded}");
    }
}

#[test]
fn paths_an_upstream_could_read_differently_are_refused() {
    for bad in [
        "/v1/embeddings/../chat/completions",
        "/v1/models/%2e%2e/files",
        "/v1/models/%2E%2E/files",
        "/v1/models/./x",
        "/v1/models/.%2E/x",
        "/v1/embeddings%2f..%2fchat/completions",
        "/v1//chat/completions",
        "/v1/files/%2e",
        "/v1/files/%2E.",
        "/v1/models%5Cx",
        "/v1/models%5cx",
        "/v1/models%2Fx",
        "/v1/models\\..\\files",
        "/v1/models/x%2",
        "/v1/models/x%",
        "/v1/models/x%zz",
        "/v1/models/x%00",
        "/v1/models/x%0A",
        "/v1/organization;x/projects",
        "/v1/organization%3B/projects",
        "/v1/org anization",
        "/v1/",
        "/v1",
        "/v2/chat/completions",
        "v1/chat/completions",
        "",
    ] {
        assert_eq!(canonical_path(bad), Err(PathError::Malformed), "{bad}");
    }
}

#[test]
fn normalize_checks_any_path_without_choosing_a_resource() {
    assert_eq!(
        normalize("/openai/deployments/d/chat/completions").as_deref(),
        Ok("/openai/deployments/d/chat/completions")
    );
    assert_eq!(normalize("/openai/deployments/../x"), Err(PathError::Malformed));
}

#[test]
fn canonical_paths_are_fixed_points() {
    for raw in ["/v1/%63hat/completions", "/v1/CHAT/x%3a", "/v1/models/%7E"] {
        let once = canonical_path(raw).unwrap();
        assert_eq!(canonical_path(&once).as_deref(), Ok(once.as_str()), "{raw}");
    }
}

// === properties ===

use proptest::prelude::*;

/// A path segment built from the pieces normalization treats specially:
/// escapes in either case, stray `%`, dots, separators' look-alikes.
fn segment() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => "[a-zA-Z0-9_~:@-]",
            2 => "%[0-9a-fA-F]{2}",
            1 => Just("%".to_owned()),
            1 => Just(".".to_owned()),
            1 => Just("é".to_owned()),
            1 => prop::sample::select(vec![";", "\\", "%2F", "%2f", "%5C", "%2E", "%00", " "]).prop_map(str::to_owned),
        ],
        0..6,
    )
    .prop_map(|pieces| pieces.concat())
}

fn any_path() -> impl Strategy<Value = String> {
    (prop::sample::select(vec!["/v1/", "/V1/", "/v1", "/", "/openai/"]), prop::collection::vec(segment(), 0..5))
        .prop_map(|(root, segments)| format!("{root}{}", segments.join("/")))
}

/// `name` with each letter in a random case and maybe percent-encoded
/// (hex digits in a random case too).
fn disguised(name: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), name.len()).prop_map(move |choices| {
        name.bytes()
            .zip(choices)
            .map(|(b, (upper, encode, upper_hex))| {
                let b = if upper { b.to_ascii_uppercase() } else { b };
                match (encode, upper_hex) {
                    (false, _) => char::from(b).to_string(),
                    (true, true) => format!("%{b:02X}"),
                    (true, false) => format!("%{b:02x}"),
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_canonical_path_is_its_own_canonical_and_normal_form(raw in any_path()) {
        if let Ok(path) = canonical_path(&raw) {
            prop_assert_eq!(canonical_path(&path), Ok(path.clone()), "from {}", raw);
            prop_assert_eq!(normalize(&path), Ok(path.clone()));
            for bad in ["//", "/../", "/./", "%2F", "%2f", "\\"] {
                prop_assert!(!path.contains(bad), "{} from {}", path, raw);
            }
        }
        if let Ok(normal) = normalize(&raw) {
            prop_assert_eq!(normalize(&normal), Ok(normal.clone()));
            prop_assert_eq!(canonical_path(&normal), canonical_path(&raw));
        }
    }

    #[test]
    fn reserved_names_in_any_case_or_encoding_are_reserved(
        name in prop_oneof![disguised("organization"), disguised("keygate")],
        rest in prop::sample::select(vec!["", "/", "/projects", "/admin_api_keys/key_1", "/echo-auth/"]),
    ) {
        let path = format!("/v1/{name}{rest}");
        prop_assert_eq!(canonical_path(&path), Err(PathError::Reserved), "{}", path);
    }
}
