/// Matches `*` wildcards (any run of characters); everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;
    use crate::proxy::is_clean_path;

    #[test]
    fn dot_segments_and_encoded_slashes_are_unclean() {
        for ok in [
            "/v1/chat/completions",
            "/v1/models/gpt-4o",
            "/v1/files/",
            "/v1/models/ft:gpt-4o:acme.v1",
            "/v1/models/...",
            "/v1/models/..x",
            "/v1/models/%2ex",
            "/v1/models/é..",
            "/v1/models/100%25",
            "/v1/models/x%2",
            "/v1/models/x%",
        ] {
            assert!(is_clean_path(ok), "{ok}");
        }
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
        ] {
            assert!(!is_clean_path(bad), "{bad}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("gpt-4o*", "gpt-4o"));
        assert!(glob_match("gpt-4o*", "gpt-4o-mini"));
        assert!(!glob_match("gpt-4o*", "gpt-4"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("llama-*-instruct", "llama-3-70b-instruct"));
        assert!(!glob_match("llama-*-instruct", "llama-3-70b"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }
}
