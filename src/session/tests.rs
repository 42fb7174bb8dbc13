use http::Method;

use super::*;

fn person(role: Role, projects: Option<Vec<&str>>) -> Principal {
    Principal {
        actor: Actor::User(User {
            id: "user_1".into(),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            role: role.as_str().into(),
            added_at: 0,
        }),
        role,
        projects: projects.map(|p| p.into_iter().map(str::to_owned).collect()),
        client_ip: None,
    }
}

#[test]
fn an_owner_may_do_everything_and_a_reader_only_read() {
    let owner = person(Role::Owner, None);
    let reader = person(Role::Reader, None);
    for path in ["/v1/organization/users", "/v1/organization/projects/proj_a/api_keys/key_1"] {
        assert_eq!(owner.may(&Method::POST, path), Ok(()));
        assert_eq!(reader.may(&Method::GET, path), Ok(()));
        assert_eq!(reader.may(&Method::POST, path), Err(Refusal::ReadOnly));
        assert_eq!(reader.may(&Method::DELETE, path), Err(Refusal::ReadOnly));
    }
}

#[test]
fn a_member_manages_their_projects_keys_and_nothing_of_another_project() {
    let member = person(Role::Member, Some(vec!["proj_a"]));
    assert_eq!(member.may(&Method::POST, "/v1/organization/projects/proj_a/api_keys"), Ok(()));
    assert_eq!(member.may(&Method::POST, "/v1/organization/projects/proj_a/api_keys/key_1/rotate"), Ok(()));
    assert_eq!(member.may(&Method::DELETE, "/v1/organization/projects/proj_a/api_keys/key_1"), Ok(()));
    assert_eq!(member.may(&Method::GET, "/v1/organization/projects/proj_a"), Ok(()));
    assert_eq!(
        member.may(&Method::GET, "/v1/organization/projects/proj_b/api_keys/key_2"),
        Err(Refusal::NoSuchProject("proj_b".into()))
    );
    assert_eq!(
        member.may(&Method::GET, "/v1/organization/projects/proj_b"),
        Err(Refusal::NoSuchProject("proj_b".into()))
    );
    // Their project's settings, and the organization's people and keys, are not theirs.
    assert_eq!(member.may(&Method::POST, "/v1/organization/projects/proj_a"), Err(Refusal::NotForMembers));
    assert_eq!(member.may(&Method::POST, "/v1/organization/projects/proj_a/archive"), Err(Refusal::NotForMembers));
    assert_eq!(member.may(&Method::POST, "/v1/organization/projects/proj_a/users"), Err(Refusal::NotForMembers));
    assert_eq!(
        member.may(&Method::POST, "/v1/organization/projects/proj_a/api_keys/import"),
        Err(Refusal::NotForMembers)
    );
    assert_eq!(member.may(&Method::GET, "/v1/organization/users"), Err(Refusal::NotForMembers));
    assert_eq!(member.may(&Method::GET, "/v1/organization/admin_api_keys"), Err(Refusal::NotForMembers));
    assert_eq!(member.may(&Method::GET, "/v1/organization/audit_logs"), Err(Refusal::NotForMembers));
    assert_eq!(member.may(&Method::POST, "/v1/organization/projects"), Err(Refusal::NotForMembers));
    // Lists narrowed by their handlers.
    for path in ["/v1/organization/api_keys", "/v1/organization/usage/completions", "/v1/organization/overview"] {
        assert_eq!(member.may(&Method::GET, path), Ok(()));
    }
    let nobody = person(Role::Member, Some(vec![]));
    assert!(nobody.may(&Method::GET, "/v1/organization/projects/proj_a").is_err());
}

#[test]
fn the_csrf_token_belongs_to_its_session_alone() {
    let one = SessionToken::generate();
    let two = SessionToken::generate();
    assert!(one.csrf_matches(&one.csrf()));
    assert!(!one.csrf_matches(&two.csrf()));
    assert!(!one.csrf_matches(""));
    assert_eq!(one.hash().len(), 64);
    assert!(SessionToken::from_cookie(one.expose()).is_some());
    assert!(SessionToken::from_cookie("short").is_none());
    assert!(SessionToken::from_cookie(&format!("{}=", &one.expose()[..42])).is_none());
    assert_eq!(format!("{one:?}"), "SessionToken(..)");
}

#[test]
fn cookies_are_read_among_others_and_written_strict_and_http_only() {
    let sessions = Sessions { idle_seconds: 60, max_seconds: 3600, secure: false, sso: None };
    let token = SessionToken::generate();
    let mut headers = http::HeaderMap::new();
    headers.append(http::header::COOKIE, format!("a=1; keygate_session={}", token.expose()).parse().unwrap());
    assert_eq!(sessions.cookie(&headers), Some(token.expose()));
    assert_eq!(cookie_value(&headers, "b"), None);
    let set = sessions.set_cookie(&headers, &token);
    assert!(set.starts_with("keygate_session=") && set.contains("HttpOnly") && set.contains("SameSite=Strict"));
    assert!(!set.contains("Secure"));

    // Over https the cookie is `__Host-` and Secure, and a plain one is not read.
    headers.insert("x-forwarded-proto", "https".parse().unwrap());
    assert_eq!(sessions.cookie(&headers), None);
    let set = sessions.set_cookie(&headers, &token);
    assert!(set.starts_with("__Host-keygate_session=") && set.contains("; Secure") && set.contains("Path=/;"), "{set}");
    assert!(sessions.clear_cookie(&headers).contains("Max-Age=0"));
}
