//! Where a repository's credentials may go, and how they are written: the
//! origin (scheme, host, port) of a URL, the host API root that belongs to
//! a clone URL (or the configured `api_url`), and the HTTP Basic header.
//! The transport sends credentials only to the origins of its clone URL,
//! host API and configured `lfs_url`.

use crate::config::Provider;

/// The REST API root of a repository's host: the configured `api_url`
/// when there is one, else the host's documented default for the clone URL
/// ([`default_api_root`]). `None` for hosts without an API (`git`, S3).
pub fn api_root(provider: Provider, clone_url: &str, api_url: Option<&str>) -> Option<String> {
    match api_url {
        Some(u) if provider.has_host_api() => Some(u.trim_end_matches('/').to_string()),
        _ => default_api_root(provider, clone_url),
    }
}

/// The REST API root each host documents for a clone URL:
/// - github.com: `https://api.github.com`;
/// - GitHub Enterprise Cloud with data residency (`SUBDOMAIN.ghe.com`):
///   `https://api.SUBDOMAIN.ghe.com`;
/// - GitHub Enterprise Server: `<scheme>://HOST/api/v3`;
/// - GitLab: `<scheme>://HOST/api/v4` (an instance under a relative URL
///   root needs `api_url`: the root cannot be told from the clone URL);
/// - Bitbucket Server / Data Center: `<scheme>://HOST[/CONTEXT]/rest/api/1.0`,
///   the context path being what precedes `/scm/` in the clone URL.
pub fn default_api_root(provider: Provider, clone_url: &str) -> Option<String> {
    let (scheme, rest) = clone_url.split_once("://")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit('@').next()?.to_ascii_lowercase();
    let hostname = host.split(':').next().unwrap_or(&host);
    match provider {
        Provider::Github | Provider::GithubEnterprise => {
            if let Some(sub) = hostname.strip_suffix(".ghe.com") {
                if !sub.is_empty() && !sub.contains('.') {
                    return Some(format!("https://api.{sub}.ghe.com"));
                }
            }
            if provider == Provider::Github {
                Some("https://api.github.com".into())
            } else {
                Some(format!("{scheme}://{authority}/api/v3"))
            }
        }
        Provider::Gitlab | Provider::GitlabEnterprise => {
            Some(format!("{scheme}://{authority}/api/v4"))
        }
        Provider::BitbucketServer => {
            let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            let i = segs.iter().position(|s| *s == "scm").unwrap_or(0);
            let context: String = segs[..i].iter().map(|s| format!("/{s}")).collect();
            Some(format!("{scheme}://{authority}{context}/rest/api/1.0"))
        }
        Provider::Git | Provider::S3 => None,
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
    fn default_api_roots_per_host() {
        use Provider::*;
        let d = |p, u| default_api_root(p, u);
        assert_eq!(
            d(Github, "https://github.com/a/b.git").as_deref(),
            Some("https://api.github.com")
        );
        assert_eq!(
            d(GithubEnterprise, "https://ghe.corp.example/a/b.git").as_deref(),
            Some("https://ghe.corp.example/api/v3")
        );
        assert_eq!(
            d(GithubEnterprise, "http://127.0.0.1:8/a/b.git").as_deref(),
            Some("http://127.0.0.1:8/api/v3")
        );
        // GHE.com data residency: the API is on its own host.
        for p in [Github, GithubEnterprise] {
            assert_eq!(
                d(p, "https://Octo.ghe.com/a/b.git").as_deref(),
                Some("https://api.octo.ghe.com")
            );
        }
        assert_eq!(
            d(GithubEnterprise, "https://a.b.ghe.com/a/b.git").as_deref(),
            Some("https://a.b.ghe.com/api/v3")
        );
        assert_eq!(
            d(Gitlab, "https://gitlab.com/g/sub/p.git").as_deref(),
            Some("https://gitlab.com/api/v4")
        );
        assert_eq!(
            d(GitlabEnterprise, "https://h:8443/gitlab/g/p.git").as_deref(),
            Some("https://h:8443/api/v4")
        );
        assert_eq!(
            d(BitbucketServer, "https://h/bb/scm/proj/r.git").as_deref(),
            Some("https://h/bb/rest/api/1.0")
        );
        assert_eq!(
            d(BitbucketServer, "https://h/scm/proj/r.git").as_deref(),
            Some("https://h/rest/api/1.0")
        );
        assert_eq!(d(Git, "https://h/x.git"), None);
        // The configured api_url wins, for host kinds with an API only.
        assert_eq!(
            api_root(
                Gitlab,
                "https://h/gitlab/g/p.git",
                Some("https://h/gitlab/api/v4/")
            )
            .as_deref(),
            Some("https://h/gitlab/api/v4")
        );
        assert_eq!(
            api_root(Git, "https://h/x.git", Some("https://h/api")),
            None
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
