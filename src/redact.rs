//! URLs as messages show them. Every URL that reaches a log line, an error
//! (and so `repofs status` and `repofs check`) goes through [`url`] first:
//! its userinfo (`user:password@`) and query are removed, because that is
//! where secrets ride in URLs. A presigned LFS or S3 href carries its
//! signature in the query (`X-Amz-Signature=...`), and a URL a repository
//! or a server supplied may carry credentials before the host.
//!
//! Errors of `reqwest` print the URL they were for; they are only ever
//! shown through `reqwest::Error::without_url` (see `Transport::classify`).

/// `raw` without userinfo, query or fragment; a removed query is shown as
/// `?…`, so a reader can tell that there was one. Parsed as a URL (the
/// `url` crate, through `reqwest::Url`); text that does not parse is cut
/// the same way by hand, so nothing after a `?` or before an `@` in the
/// authority is ever shown. Never panics.
pub fn url(raw: &str) -> String {
    match reqwest::Url::parse(raw) {
        Ok(mut u) if u.has_host() => {
            let had_query = u.query().is_some();
            // Both fail only for URLs that cannot have userinfo (no host).
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            let mut shown = String::from(u.as_str());
            if had_query {
                shown.push_str("?…");
            }
            shown
        }
        _ => by_hand(raw),
    }
}

/// `text` with every URL in it (a scheme, `://`, up to the next space,
/// quote or angle bracket) shown as [`url`] shows it: for text a server
/// wrote, such as an error page that echoes the URL it was asked for.
pub fn urls_in(text: &str) -> String {
    let scheme_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.');
    let ends = |c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '\'' | '`');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let before = rest.get(..i).unwrap_or("");
        let start = before
            .char_indices()
            .rev()
            .find(|(_, c)| !scheme_char(*c))
            .map_or(0, |(j, c)| j + c.len_utf8());
        let after = rest.get(i..).unwrap_or("");
        let end = after.find(ends).map_or(rest.len(), |k| i + k);
        out.push_str(rest.get(..start).unwrap_or(""));
        out.push_str(&url(rest.get(start..end).unwrap_or("")));
        rest = rest.get(end..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// The same cut for text that is not a URL with a host (`https://`,
/// `host:port/path?x`, a label): up to the first `?` or `#`, and without
/// anything up to the last `@` of the authority.
fn by_hand(raw: &str) -> String {
    let (base, query) = match raw.find(['?', '#']) {
        Some(i) => (raw.get(..i).unwrap_or(""), raw.get(i..).unwrap_or("")),
        None => (raw, ""),
    };
    let (scheme, rest) = match base.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, base),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let mut shown = String::new();
    if let Some(s) = scheme {
        shown.push_str(s);
        shown.push_str("://");
    }
    shown.push_str(host);
    shown.push_str(path);
    if query.starts_with('?') {
        shown.push_str("?…");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn queries_and_userinfo_are_removed() {
        for (raw, want) in [
            (
                "https://s3.example/bucket/obj?X-Amz-Signature=SECRETSIG&X-Amz-Credential=AKIA",
                "https://s3.example/bucket/obj?…",
            ),
            (
                "https://user:SECRETPW@git.example/a/b.git/info/refs?service=git-upload-pack",
                "https://git.example/a/b.git/info/refs?…",
            ),
            (
                "http://tok@127.0.0.1:8080/x.git",
                "http://127.0.0.1:8080/x.git",
            ),
            ("https://h/p#SECRETFRAG", "https://h/p"),
            ("https://h/p?", "https://h/p?…"),
            ("http://127.0.0.1:1/x.git", "http://127.0.0.1:1/x.git"),
            // Not URLs with a host: cut by hand, the same way.
            ("https://", "https://"),
            ("https://:SECRETPW@/x?SECRETQ", "https:///x?…"),
            ("GitHub API", "GitHub API"),
            ("a@b?c#d", "b?…"),
            ("", ""),
        ] {
            assert_eq!(url(raw), want, "{raw:?}");
            assert!(!url(raw).contains("SECRET"), "{raw:?}");
        }
    }

    #[test]
    fn urls_in_text_are_redacted() {
        use super::urls_in;
        assert_eq!(
            urls_in(
                "<Error>GET https://u:SECRETPW@s3.example/b/k?X-Amz-Signature=SECRETSIG failed</Error>"
            ),
            "<Error>GET https://s3.example/b/k?… failed</Error>"
        );
        assert_eq!(
            urls_in("see \"http://h/a?SECRET\" and é:http://h/b#SECRET."),
            "see \"http://h/a?…\" and é:http://h/b"
        );
        for text in [
            "",
            "no url here",
            "://",
            "x://",
            "://?SECRET",
            "é://SECRET@h",
            "a://b://c?SECRET",
        ] {
            assert!(
                !urls_in(text).contains("SECRET"),
                "{text:?}: {}",
                urls_in(text)
            );
        }
        assert_eq!(urls_in("plain text: 404"), "plain text: 404");
    }

    #[test]
    fn odd_text_never_panics_nor_leaks() {
        for raw in [
            "?",
            "#",
            "@",
            "://",
            "://@",
            "é?é",
            "h://[::1",
            "http://[::1]:99999/?SECRET",
            "http://a@b@c/SAFE?SECRET",
            "s3://bucket/key?SECRET",
            "mailto:SECRET@x?SECRET",
            "http://%zz@h/?SECRET",
            "https://h\u{0}x/?SECRET",
        ] {
            let shown = url(raw);
            assert!(!shown.contains("SECRET"), "{raw:?}: {shown:?}");
        }
    }
}
