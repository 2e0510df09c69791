//! Turns the URL a user pasted (browser address bar or Clone button) into the
//! HTTPS clone URL for each host kind, and picks the auth header style.

use crate::config::Provider;

/// Derives the clone URL (`https://host/path.git`, no trailing slash) from
/// what the user wrote. Errors are phrased for the config file.
pub fn clone_url(provider: Provider, input: &str) -> Result<String, String> {
    let input = input.trim();
    if has_password(input) {
        return Err(
            "the URL contains credentials; remove them and use token, token_env or token_file instead"
                .into(),
        );
    }
    let https = to_http_url(provider, input)?;
    let (scheme_host, path) = split_url(&https)?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let path = match provider {
        Provider::Github | Provider::GithubEnterprise => {
            if segments.len() < 2 {
                return Err(format!(
                    "{input:?} does not name a repository; expected https://HOST/OWNER/REPO"
                ));
            }
            format!("{}/{}", segments[0], strip_git(segments[1]))
        }
        Provider::Gitlab | Provider::GitlabEnterprise => {
            // Everything after "/-/" is a page inside the project (tree, blob, ...).
            let cut = segments
                .iter()
                .position(|s| *s == "-")
                .unwrap_or(segments.len());
            let project = &segments[..cut];
            if project.len() < 2 {
                return Err(format!(
                    "{input:?} does not name a project; expected https://HOST/GROUP/PROJECT"
                ));
            }
            let mut p: Vec<String> = project.iter().map(|s| s.to_string()).collect();
            if let Some(last) = p.last_mut() {
                *last = strip_git(last).to_string();
            }
            p.join("/")
        }
        Provider::BitbucketServer => bitbucket_path(input, &segments)?,
        Provider::S3 => return Err("S3 repositories have no git URL".into()),
        Provider::Git => {
            if segments.is_empty() {
                return Err(format!("{input:?} has no repository path"));
            }
            let p = segments.join("/");
            return Ok(format!("{scheme_host}/{p}"));
        }
    };
    Ok(format!("{scheme_host}/{path}.git"))
}

/// True when the URL carries `user:password@` (never echoed back in errors).
fn has_password(input: &str) -> bool {
    let rest = input.split_once("://").map(|(_, r)| r).unwrap_or(input);
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .split_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

fn strip_git(s: &str) -> &str {
    s.strip_suffix(".git").unwrap_or(s)
}

/// Bitbucket Server / Data Center: `/projects/KEY/repos/slug/browse...`,
/// `/users/NAME/repos/slug/...` or the clone form `/scm/key/slug.git`,
/// possibly under a context path (`https://host/bitbucket/projects/...`).
fn bitbucket_path(input: &str, segments: &[&str]) -> Result<String, String> {
    let find = |word: &str| segments.iter().position(|s| *s == word);
    if let Some(i) = find("scm") {
        if segments.len() >= i + 3 {
            let context = segments[..i].join("/");
            let p = format!("scm/{}/{}", segments[i + 1], strip_git(segments[i + 2]));
            return Ok(join_context(&context, &p));
        }
    }
    for (word, prefix) in [("projects", ""), ("users", "~")] {
        if let Some(i) = find(word) {
            if segments.len() >= i + 4 && segments[i + 2] == "repos" {
                let context = segments[..i].join("/");
                let p = format!(
                    "scm/{prefix}{}/{}",
                    segments[i + 1].to_ascii_lowercase(),
                    strip_git(segments[i + 3])
                );
                return Ok(join_context(&context, &p));
            }
        }
    }
    Err(format!(
        "{input:?} is not a Bitbucket Server repository URL; expected https://HOST/projects/KEY/repos/SLUG or https://HOST/scm/KEY/SLUG.git"
    ))
}

fn join_context(context: &str, p: &str) -> String {
    if context.is_empty() {
        p.to_string()
    } else {
        format!("{context}/{p}")
    }
}

/// Accepts https/http URLs and the scp-like SSH form (`git@host:owner/repo.git`),
/// which is rewritten to HTTPS. Credentials embedded in the URL are refused.
fn to_http_url(provider: Provider, input: &str) -> Result<String, String> {
    if input.starts_with("https://") || input.starts_with("http://") {
        return Ok(input.to_string());
    }
    if let Some(rest) = input.strip_prefix("ssh://") {
        // ssh://git@host[:port]/path
        let rest = rest.split_once('@').map(|(_, r)| r).unwrap_or(rest);
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("{input:?} has no repository path"))?;
        let host = host.split(':').next().unwrap_or(host);
        return ssh_to_https(provider, input, host, path);
    }
    if let Some((user_host, path)) = input.split_once(':') {
        if !user_host.contains('/') && user_host.contains('@') {
            let host = user_host
                .split_once('@')
                .map(|(_, h)| h)
                .unwrap_or(user_host);
            return ssh_to_https(provider, input, host, path);
        }
    }
    Err(format!(
        "{input:?} is not an http(s) URL; use the repository's https:// address"
    ))
}

fn ssh_to_https(provider: Provider, input: &str, host: &str, path: &str) -> Result<String, String> {
    match provider {
        Provider::BitbucketServer | Provider::Git | Provider::S3 => Err(format!(
            "{input:?} is an SSH URL; repofs fetches over HTTPS: use the repository's https:// clone URL"
        )),
        _ => Ok(format!("https://{host}/{}", path.trim_start_matches('/'))),
    }
}

/// Splits `scheme://host[:port]/path?query#frag` into (`scheme://host[:port]`, `path`).
fn split_url(url: &str) -> Result<(String, String), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL"))?;
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(
            "the URL contains credentials; remove them and use token, token_env or token_file instead"
                .into(),
        );
    }
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok((format!("{scheme}://{authority}"), path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Provider::*;

    #[test]
    fn github_forms() {
        for input in [
            "https://github.com/acme/churn-model",
            "https://github.com/acme/churn-model/",
            "https://github.com/acme/churn-model.git",
            "https://github.com/acme/churn-model/tree/main/src",
            "https://github.com/acme/churn-model/blob/main/README.md?plain=1#L3",
            "git@github.com:acme/churn-model.git",
            "ssh://git@github.com/acme/churn-model.git",
        ] {
            assert_eq!(
                clone_url(Github, input).unwrap(),
                "https://github.com/acme/churn-model.git",
                "{input}"
            );
        }
        assert_eq!(
            clone_url(GithubEnterprise, "https://ghe.corp.example/team/repo/pulls").unwrap(),
            "https://ghe.corp.example/team/repo.git"
        );
        assert!(clone_url(Github, "https://github.com/acme").is_err());
    }

    #[test]
    fn gitlab_forms() {
        assert_eq!(
            clone_url(
                Gitlab,
                "https://gitlab.com/group/sub/project/-/tree/main/src"
            )
            .unwrap(),
            "https://gitlab.com/group/sub/project.git"
        );
        assert_eq!(
            clone_url(Gitlab, "https://gitlab.com/group/project.git").unwrap(),
            "https://gitlab.com/group/project.git"
        );
        assert_eq!(
            clone_url(GitlabEnterprise, "git@gitlab.corp:a/b/c.git").unwrap(),
            "https://gitlab.corp/a/b/c.git"
        );
        assert!(clone_url(Gitlab, "https://gitlab.com/onlygroup").is_err());
    }

    #[test]
    fn bitbucket_forms() {
        assert_eq!(
            clone_url(BitbucketServer, "https://host/projects/P/repos/r/browse").unwrap(),
            "https://host/scm/p/r.git"
        );
        assert_eq!(
            clone_url(
                BitbucketServer,
                "https://host/bitbucket/projects/PROJ/repos/my-repo/browse/src?at=refs%2Fheads%2Fdev"
            )
            .unwrap(),
            "https://host/bitbucket/scm/proj/my-repo.git"
        );
        assert_eq!(
            clone_url(BitbucketServer, "https://host/scm/proj/my-repo.git").unwrap(),
            "https://host/scm/proj/my-repo.git"
        );
        assert_eq!(
            clone_url(BitbucketServer, "https://host/users/bob/repos/dots/browse").unwrap(),
            "https://host/scm/~bob/dots.git"
        );
        assert!(clone_url(BitbucketServer, "https://host/dashboard").is_err());
        assert!(clone_url(BitbucketServer, "ssh://git@host:7999/p/r.git").is_err());
    }

    #[test]
    fn plain_git_and_rejections() {
        assert_eq!(
            clone_url(Git, "http://127.0.0.1:8080/repos/a.git/").unwrap(),
            "http://127.0.0.1:8080/repos/a.git"
        );
        let e = clone_url(Git, "https://user:pw@host/a.git").unwrap_err();
        assert!(e.contains("credentials") && !e.contains("pw"), "{e}");
        assert!(clone_url(Git, "ftp://host/a").is_err());
        assert!(clone_url(Git, "https://host").is_err());
        assert!(clone_url(Git, "not a url").is_err());
    }
}
