//! Where a repository's credentials may go, and how they are written: the
//! origin (scheme, host, port) of a URL, the host API root that belongs to
//! a clone URL, and the HTTP Basic header. The transport sends credentials
//! only to the origins of its clone URL, host API and configured `lfs_url`.

use crate::config::Provider;

/// The REST API root for a GitHub App: api.github.com for github.com,
/// `<scheme>://<host>/api/v3` for GitHub Enterprise Server.
pub fn github_api(provider: Provider, clone_url: &str) -> String {
    match provider {
        Provider::Github => "https://api.github.com".into(),
        _ => {
            let (scheme, rest) = clone_url.split_once("://").unwrap_or(("https", clone_url));
            let host = rest.split('/').next().unwrap_or(rest);
            format!("{scheme}://{host}/api/v3")
        }
    }
}

/// The origin of an absolute `http(s)` URL, `scheme://host:port` with the
/// scheme's default port made explicit; `None` for anything else.
pub fn origin(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    Some(format!(
        "{}://{}:{}",
        u.scheme(),
        u.host_str()?.to_ascii_lowercase(),
        u.port_or_known_default()?
    ))
}

/// An HTTP Basic `Authorization` value.
pub(super) fn basic(user: &str, secret: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
    format!("Basic {encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_is_rfc4648_base64() {
        assert_eq!(
            basic("x-access-token", "foobar"),
            "Basic eC1hY2Nlc3MtdG9rZW46Zm9vYmFy"
        );
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert_eq!(
            origin("https://H.example/a/b.git").as_deref(),
            Some("https://h.example:443")
        );
        assert_eq!(
            origin("https://h.example:443/x"),
            origin("https://h.example/y")
        );
        assert_ne!(origin("http://h.example/x"), origin("https://h.example/x"));
        assert_ne!(
            origin("http://127.0.0.1:8/x"),
            origin("http://127.0.0.1:9/x")
        );
        // Userinfo does not make another origin look like this one.
        assert_eq!(
            origin("http://h.example@evil.example/x").as_deref(),
            Some("http://evil.example:80")
        );
        assert_eq!(origin("ftp://h/x"), None);
        assert_eq!(origin("not a url"), None);
    }
}
