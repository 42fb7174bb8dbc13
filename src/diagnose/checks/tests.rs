use super::*;

#[test]
fn the_python_sdk_refuses_keys_it_cannot_put_in_a_header() {
    assert_eq!(sdk_refusal(false, "sk-abc"), None);
    let newline = sdk_refusal(false, "sk-abc\n").unwrap();
    assert!(newline.contains("with a newline") && newline.contains("Illegal header value"), "{newline}");
    assert!(sdk_refusal(false, "sk-abc\r\n").unwrap().contains("a carriage return"));
    assert!(sdk_refusal(false, "sk-abc ").unwrap().contains("whitespace at its start or end"));
    // After `Bearer `, leading whitespace is inside the value and is sent; Azure's `api-key` starts with it.
    assert_eq!(sdk_refusal(false, " sk-abc"), None);
    assert!(sdk_refusal(true, " sk-abc").is_some());
    assert_eq!(sdk_refusal(false, "sk-a\tb"), None);
    assert_eq!(sdk_refusal(false, "sk-abc\x7f"), None);
    let cyrillic = sdk_refusal(false, "sk-аbc").unwrap();
    assert!(cyrillic.contains("UnicodeEncodeError") && cyrillic.contains("'\\u0430'"), "{cyrillic}");
}

#[test]
fn a_base_url_past_v1_yields_its_base_and_endpoint() {
    let split = |url: &str| endpoint_in_base(url);
    assert_eq!(
        split("http://127.0.0.1:8080/v1/chat/completions"),
        Some(("http://127.0.0.1:8080/v1".to_owned(), "/chat/completions".to_owned()))
    );
    assert_eq!(
        split("https://gw.example.com/openai/v1/models/?x=1"),
        Some(("https://gw.example.com/openai/v1".to_owned(), "/models".to_owned()))
    );
    assert_eq!(split("https://gw.example.com/v1"), None);
    assert_eq!(split("https://gw.example.com/v1/"), None);
    assert_eq!(split("https://gw.example.com"), None);
}

#[test]
fn stray_whitespace_and_quotes_are_removed_for_the_key_checks() {
    assert_eq!(without_stray("\"sk-abc\"\n"), "sk-abc");
    assert_eq!(without_stray("sk-abc'"), "sk-abc");
    assert_eq!(without_stray("  `sk-abc`"), "sk-abc");
    assert_eq!(without_stray("sk-abc"), "sk-abc");
}
