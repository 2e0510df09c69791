//! One `[[repository]]` entry checked and turned into a [`RepoConfig`]:
//! its provider, URL or bucket, credentials (read from wherever the entry
//! says they live) and mount point; `[shared_cache]` with the rules of an
//! S3 repository.

use super::values::parse_duration_key;
use super::*;

/// Validates `[shared_cache]` with the rules of an S3 repository.
pub(super) fn validate_shared(
    r: RawShared,
    mount_root: &Path,
    resolve: bool,
) -> Result<SharedCacheConfig, String> {
    let timeout = parse_duration_key(r.timeout.as_deref(), 5)
        .map_err(|m| format!("[shared_cache]: key `timeout`: {m}"))?;
    let repo = RawRepo {
        name: Some("shared_cache".into()),
        provider: Some("s3".into()),
        bucket: r.bucket,
        prefix: r.prefix,
        region: r.region,
        endpoint_url: r.endpoint_url,
        force_path_style: r.force_path_style,
        profile: r.profile,
        credentials: r.credentials,
        access_key_id: r.access_key_id,
        secret_access_key: r.secret_access_key,
        secret_access_key_file: r.secret_access_key_file,
        session_token: r.session_token,
        ..RawRepo::default()
    };
    let s3 = validate_s3("shared_cache".into(), repo, mount_root, resolve)
        .map_err(|e| e.replace("repository 'shared_cache':", "[shared_cache]:"))?
        .s3
        .ok_or("[shared_cache]: not an S3 location")?;
    Ok(SharedCacheConfig { s3, timeout })
}

pub(super) fn validate_repo(
    index: usize,
    r: RawRepo,
    mount_root: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    // Whether to read the secrets (see `Secrets`); else placeholders.
    resolve: bool,
) -> Result<RepoConfig, String> {
    let name = r.name.clone().ok_or_else(|| {
        format!(
            "repository #{}: missing key `name` (letters, digits, '.', '_' and '-')",
            index + 1
        )
    })?;
    let ctx = |key: &str, msg: String| format!("repository '{name}': key `{key}`: {msg}");
    if name.is_empty()
        || name == "."
        || name == ".."
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(ctx(
            "name",
            "must be non-empty and use only letters, digits, '.', '_' and '-' (it becomes a directory name)".into(),
        ));
    }
    let provider_s = r
        .provider
        .clone()
        .ok_or_else(|| ctx("provider", format!("missing; one of: {}", provider_names())))?;
    let provider = Provider::parse(&provider_s).ok_or_else(|| {
        ctx(
            "provider",
            format!(
                "unknown provider '{provider_s}'; one of: {}",
                provider_names()
            ),
        )
    })?;
    if provider == Provider::S3 {
        return validate_s3(name, r, mount_root, resolve);
    }
    for (key, set) in [
        ("bucket", r.bucket.is_some()),
        ("prefix", r.prefix.is_some()),
        ("region", r.region.is_some()),
        ("endpoint_url", r.endpoint_url.is_some()),
        ("force_path_style", r.force_path_style.is_some()),
        ("profile", r.profile.is_some()),
        ("credentials", r.credentials.is_some()),
        ("access_key_id", r.access_key_id.is_some()),
        ("secret_access_key", r.secret_access_key.is_some()),
        ("secret_access_key_file", r.secret_access_key_file.is_some()),
        ("session_token", r.session_token.is_some()),
        ("metadata_ttl", r.metadata_ttl.is_some()),
    ] {
        if set {
            return Err(ctx(key, "only applies to provider = \"s3\"".into()));
        }
    }
    let url = r.url.ok_or_else(|| {
        ctx(
            "url",
            "missing; give the repository's address as shown in the browser or its HTTPS clone URL"
                .into(),
        )
    })?;
    let clone_url =
        crate::source::git::url::clone_url(provider, &url).map_err(|m| ctx("url", m))?;
    if let Some(reference) = &r.reference {
        if reference.trim().is_empty() || reference.contains(char::is_whitespace) {
            return Err(ctx(
                "ref",
                "must be a branch, tag or commit id without spaces".into(),
            ));
        }
    }

    let sources = [
        r.token.is_some(),
        r.token_env.is_some(),
        r.token_file.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources > 1 {
        return Err(ctx(
            "token",
            "give only one of `token`, `token_env` and `token_file`".into(),
        ));
    }
    let token = if let Some(t) = r.token {
        Some(Token {
            secret: Secret::new(t.trim()),
            origin: "token".into(),
        })
    } else if let Some(var) = r.token_env.as_ref().filter(|_| !resolve) {
        Some(Token {
            secret: Secret::new(""),
            origin: format!("token_env {var}"),
        })
    } else if let Some(file) = r.token_file.as_ref().filter(|_| !resolve) {
        Some(Token {
            secret: Secret::new(""),
            origin: format!("token_file {}", file.display()),
        })
    } else if let Some(var) = r.token_env {
        let value = env(&var).ok_or_else(|| {
            ctx(
                "token_env",
                format!("environment variable {var} is not set; export it before starting repofs or use token_file"),
            )
        })?;
        Some(Token {
            secret: Secret::new(value.trim()),
            origin: format!("token_env {var}"),
        })
    } else if let Some(file) = r.token_file {
        let value = std::fs::read_to_string(&file).map_err(|e| {
            ctx(
                "token_file",
                format!(
                    "cannot read {}: {e}; check the path and that the repofs user may read it",
                    file.display()
                ),
            )
        })?;
        Some(Token {
            secret: Secret::new(value.trim()),
            origin: format!("token_file {}", file.display()),
        })
    } else {
        None
    };
    if let Some(t) = token.as_ref().filter(|_| resolve) {
        if t.secret.expose().is_empty() {
            return Err(ctx(
                "token",
                format!("the token from {} is empty", t.origin),
            ));
        }
        if t.secret.expose().contains(['\n', '\r']) {
            return Err(ctx(
                "token",
                format!(
                    "the token from {} spans several lines; it must be a single line",
                    t.origin
                ),
            ));
        }
    }
    let mount_point = mount_point_of(r.mount_point.clone(), mount_root, &name)
        .map_err(|m| ctx("mount_point", m))?;
    let pinned = r
        .reference
        .as_deref()
        .is_some_and(|r| r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()));
    let refresh = match r.refresh.as_deref() {
        Some("never") => None,
        Some(_) if pinned => {
            return Err(ctx(
                "refresh",
                "the ref is a commit id, which never moves; remove `refresh` or use a branch"
                    .into(),
            ));
        }
        Some(d) => {
            Some(parse_duration(d).map_err(|m| ctx("refresh", format!("{m}, or \"never\"")))?)
        }
        None if pinned => None,
        None => Some(Duration::from_secs(300)),
    };
    let github_app = match r.github_app {
        None => None,
        Some(_) if !matches!(provider, Provider::Github | Provider::GithubEnterprise) => {
            return Err(ctx(
                "github_app",
                "GitHub App credentials work only with provider github or github-enterprise".into(),
            ));
        }
        Some(_) if token.is_some() => {
            return Err(ctx(
                "github_app",
                "give either a token or github_app, not both".into(),
            ));
        }
        Some(app) => {
            let opened = if resolve {
                std::fs::File::open(&app.private_key_file).map(drop)
            } else {
                Ok(())
            };
            opened.map_err(|e| {
                ctx(
                    "github_app",
                    format!(
                        "cannot read private_key_file {}: {e}",
                        app.private_key_file.display()
                    ),
                )
            })?;
            Some(crate::auth::GithubAppConfig {
                app_id: app.app_id,
                installation_id: app.installation_id,
                private_key_file: app.private_key_file,
            })
        }
    };
    let gitlab_app = match r.gitlab_app {
        None => None,
        Some(_) if !matches!(provider, Provider::Gitlab | Provider::GitlabEnterprise) => {
            return Err(ctx(
                "gitlab_app",
                "GitLab OAuth application grants work only with provider gitlab or gitlab-enterprise".into(),
            ));
        }
        Some(_) if token.is_some() || github_app.is_some() => {
            return Err(ctx(
                "gitlab_app",
                "give either a token or gitlab_app, not both".into(),
            ));
        }
        Some(app) => {
            let id = app.client_id.trim();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ctx(
                    "gitlab_app",
                    "client_id must be the application's ID as GitLab shows it (no spaces)".into(),
                ));
            }
            if !app.grant_file.is_absolute() {
                return Err(ctx(
                    "gitlab_app",
                    format!(
                        "grant_file must be an absolute path, got {}",
                        app.grant_file.display()
                    ),
                ));
            }
            Some(crate::auth::GitlabAppConfig {
                client_id: id.to_string(),
                grant_file: app.grant_file,
            })
        }
    };
    let lfs_url = match r.lfs_url {
        None => None,
        Some(u) => Some(
            http_url_of(
                &u,
                "the LFS server's address, such as https://lfs.example.com/org/repo",
            )
            .map_err(|m| ctx("lfs_url", m))?,
        ),
    };
    let api_url = match r.api_url {
        None => None,
        Some(u) => Some(api_url_of(provider, &u, &clone_url).map_err(|m| ctx("api_url", m))?),
    };
    Ok(RepoConfig {
        s3: None,
        lfs_url,
        api_url,
        checkout_filters: r.checkout_filters.unwrap_or(true),
        ca_bundle: match r.ca_bundle {
            None => None,
            Some(p) => Some(super::tls::ca_bundle_of(&p).map_err(|m| ctx("ca_bundle", m))?),
        },
        github_app,
        gitlab_app,
        overlay: overlay_of(r.overlay, &mount_point).map_err(|m| ctx("overlay", m))?,
        refresh,
        name,
        provider,
        url,
        reference: r.reference,
        token,
        username: r.username,
        description: r.description.unwrap_or_default(),
        mount_point,
    })
}

fn validate_s3(
    name: String,
    r: RawRepo,
    mount_root: &Path,
    resolve: bool,
) -> Result<RepoConfig, String> {
    let ctx = |key: &str, msg: String| format!("repository '{name}': key `{key}`: {msg}");
    for (key, set) in [
        ("url", r.url.is_some()),
        ("ref", r.reference.is_some()),
        ("token", r.token.is_some()),
        ("token_env", r.token_env.is_some()),
        ("token_file", r.token_file.is_some()),
        ("username", r.username.is_some()),
        ("refresh", r.refresh.is_some()),
        ("github_app", r.github_app.is_some()),
        ("gitlab_app", r.gitlab_app.is_some()),
        ("lfs_url", r.lfs_url.is_some()),
        ("api_url", r.api_url.is_some()),
        ("checkout_filters", r.checkout_filters.is_some()),
        ("ca_bundle", r.ca_bundle.is_some()),
    ] {
        if set {
            return Err(ctx(
                key,
                "does not apply to provider = \"s3\" (use bucket, prefix, access_key_id, ...)"
                    .into(),
            ));
        }
    }
    let bucket = r
        .bucket
        .ok_or_else(|| ctx("bucket", "missing: the bucket's name".into()))?;
    if bucket.is_empty() || bucket.len() > 63 || bucket.contains('/') {
        return Err(ctx(
            "bucket",
            format!("{bucket:?} is not a bucket name (no slashes; put a path in `prefix`)"),
        ));
    }
    let mut prefix = r
        .prefix
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    if let Some(e) = &r.endpoint_url {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(ctx(
                "endpoint_url",
                format!("{e:?} must start with http:// or https://"),
            ));
        }
    }
    let inline_secret = r.secret_access_key.is_some() || r.session_token.is_some();
    let secret = match (r.secret_access_key, r.secret_access_key_file) {
        (Some(_), Some(_)) => {
            return Err(ctx(
                "secret_access_key",
                "give secret_access_key or secret_access_key_file, not both".into(),
            ));
        }
        (Some(s), None) => Some(Secret::new(s.trim())),
        (None, Some(_)) if !resolve => Some(Secret::new("")),
        (None, Some(f)) => Some(Secret::new(
            std::fs::read_to_string(&f)
                .map_err(|e| {
                    ctx(
                        "secret_access_key_file",
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?
                .trim(),
        )),
        (None, None) => None,
    };
    let mode = r.credentials.as_deref().unwrap_or("auto");
    let credentials = match (mode, r.access_key_id, secret) {
        ("anonymous", None, None) => S3Credentials::Anonymous,
        ("anonymous", _, _) => {
            return Err(ctx(
                "credentials",
                "\"anonymous\" cannot be combined with keys".into(),
            ));
        }
        ("auto", Some(id), Some(secret)) => S3Credentials::Static {
            access_key_id: id,
            secret_access_key: secret,
            session_token: r.session_token.as_ref().map(|t| Secret::new(t.trim())),
        },
        ("auto", Some(_), None) => {
            return Err(ctx("secret_access_key", "access_key_id is set but the secret is missing (secret_access_key or secret_access_key_file)".into()));
        }
        ("auto", None, Some(_)) => {
            return Err(ctx(
                "access_key_id",
                "a secret is set but access_key_id is missing".into(),
            ));
        }
        ("auto", None, None) => S3Credentials::Auto {
            profile: r.profile.clone(),
        },
        (other, _, _) => {
            return Err(ctx(
                "credentials",
                format!("{other:?}: use \"auto\" or \"anonymous\""),
            ));
        }
    };
    if r.session_token.is_some() && !matches!(credentials, S3Credentials::Static { .. }) {
        return Err(ctx(
            "session_token",
            "needs access_key_id and a secret".into(),
        ));
    }
    let force_path_style = r.force_path_style.unwrap_or(r.endpoint_url.is_some());
    let metadata_ttl = match r.metadata_ttl.as_deref() {
        None => Duration::from_secs(60),
        Some(t) => parse_duration(t).map_err(|m| ctx("metadata_ttl", m))?,
    };
    let mount_point = mount_point_of(r.mount_point.clone(), mount_root, &name)
        .map_err(|m| ctx("mount_point", m))?;
    let overlay = overlay_of(r.overlay, &mount_point).map_err(|m| ctx("overlay", m))?;
    Ok(RepoConfig {
        overlay,
        url: format!("s3://{bucket}/{prefix}"),
        name,
        provider: Provider::S3,
        reference: None,
        token: None,
        username: None,
        description: r.description.unwrap_or_default(),
        mount_point,
        refresh: None,
        github_app: None,
        gitlab_app: None,
        lfs_url: None,
        api_url: None,
        checkout_filters: false,
        ca_bundle: None,
        s3: Some(S3Config {
            bucket,
            prefix,
            region: r.region,
            endpoint_url: r.endpoint_url,
            force_path_style,
            credentials,
            metadata_ttl,
            inline_secret,
        }),
    })
}

/// Checks an `lfs_url` or `api_url`: an absolute `http(s)` URL without
/// credentials, query or fragment in it, returned without a trailing `/`.
fn http_url_of(url: &str, what: &str) -> Result<String, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL ({e}); give {what}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "{url:?} must be an http:// or https:// URL with a host"
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not contain credentials; the repository's token is sent to it".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "{url:?} must not have a query or fragment; give {what}"
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Checks an `api_url`: [`http_url_of`], for a host kind with an API; for
/// GitLab the REST root (`.../api/v4`) of the instance serving the clone URL.
fn api_url_of(provider: Provider, url: &str, clone_url: &str) -> Result<String, String> {
    let example = match provider {
        Provider::Github | Provider::GithubEnterprise => {
            "the REST API root, such as https://api.SUBDOMAIN.ghe.com or https://HOST/api/v3"
        }
        Provider::Gitlab | Provider::GitlabEnterprise => {
            "the REST API root, such as https://HOST/gitlab/api/v4"
        }
        Provider::BitbucketServer => {
            "the REST API root, such as https://HOST/bitbucket/rest/api/1.0"
        }
        Provider::Git | Provider::S3 => {
            return Err(format!(
                "provider \"{}\" has no host API; remove api_url",
                provider.as_str()
            ));
        }
    };
    let url = http_url_of(url, example)?;
    if matches!(provider, Provider::Gitlab | Provider::GitlabEnterprise) {
        crate::source::git::gitlab::gitlab_project(clone_url, &url)?;
    }
    Ok(url)
}

/// Checks an `overlay` directory: absolute, and neither inside the mount
/// nor holding it.
fn overlay_of(dir: Option<PathBuf>, mount_point: &Path) -> Result<Option<PathBuf>, String> {
    let Some(dir) = dir else { return Ok(None) };
    if !dir.is_absolute() {
        return Err(format!("must be an absolute path, got {}", dir.display()));
    }
    if dir.starts_with(mount_point) || mount_point.starts_with(&dir) {
        return Err(format!(
            "{} and the mount point {} must not contain each other",
            dir.display(),
            mount_point.display()
        ));
    }
    Ok(Some(dir))
}

/// Where a repository is mounted: `mount_point`, else `<mount_root>/<name>`.
fn mount_point_of(
    given: Option<PathBuf>,
    mount_root: &Path,
    name: &str,
) -> Result<PathBuf, String> {
    match given {
        Some(p) if p.is_absolute() => Ok(p),
        Some(p) => Err(format!("must be an absolute path, got {}", p.display())),
        None => Ok(mount_root.join(name)),
    }
}

pub(super) fn provider_names() -> String {
    Provider::ALL
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}
