//! `repofs check`: the "Test connection" step. For each repository it
//! reaches the server, authenticates, resolves the ref, and prints one line:
//! `ok` with the commit, or `FAIL` with the exact problem and what to do.

use crate::config::{Config, RepoConfig};
use crate::source::git::Remote;

/// The outcome for one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub name: String,
    pub ok: bool,
    pub message: String,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{tag} {}: {}", self.name, self.message)
    }
}

/// Checks one repository.
pub async fn check_repo(repo: &RepoConfig, config: &Config) -> CheckLine {
    let line = |ok, message| CheckLine {
        name: repo.name.clone(),
        ok,
        message,
    };
    if repo.s3.is_some() {
        return check_s3(repo, config).await;
    }
    let remote = match Remote::new(repo, config) {
        Ok(r) => r,
        Err(e) => return line(false, e),
    };
    let caps = match remote.capabilities().await {
        Ok(c) => c,
        Err(e) => return line(false, e.to_string()),
    };
    match remote.resolve_ref().await {
        Ok(commit) => {
            let mut notes = Vec::new();
            if !caps.supports_filter() {
                notes.push(
                    "server lacks `filter`: the first mount downloads every file once".to_string(),
                );
            }
            if !caps.object_info {
                notes.push("server lacks `object-info`: listing a directory downloads its files to learn sizes".to_string());
            }
            let auth = match (&repo.token, remote.transport.gitlab_grant()) {
                (_, Some(g)) => match g.describe().await {
                    Ok(grant) => format!(
                        "authenticated with the GitLab grant {} (valid; the access token expires in {}, renewed automatically)",
                        repo.gitlab_app
                            .as_ref()
                            .map(|a| a.grant_file.display().to_string())
                            .unwrap_or_default(),
                        crate::auth::gitlab_oauth::human(grant.remaining())
                    ),
                    Err(e) => return line(false, e.to_string()),
                },
                (Some(t), None) => format!("authenticated with {}", t.origin),
                (None, None) => "anonymous".to_string(),
            };
            // Fetch the trees too (into a scratch cache): proves fetch works
            // and finds a committed .lfsconfig.
            let lfs_endpoint = match fetch_lfs_endpoint(repo, config).await {
                Ok(e) => e,
                Err(e) => {
                    return line(
                        false,
                        format!("the ref resolves to {commit}, but fetching it failed: {e}"),
                    );
                }
            };
            let lfs_trusted = remote.transport.trusts(&lfs_endpoint);
            if !lfs_trusted {
                notes.push(format!(
                    "the LFS endpoint {} (from .lfsconfig) is on another origin than the clone URL: it is asked without the repository's credentials; set lfs_url in the config if it should get them",
                    crate::redact::url(&lfs_endpoint)
                ));
            }
            let has_credentials =
                (repo.token.is_some() || repo.github_app.is_some() || repo.gitlab_app.is_some())
                    && lfs_trusted;
            match probe_lfs(&remote, &lfs_endpoint, has_credentials).await {
                LfsProbe::Ok => notes.push("LFS endpoint accepts the credentials".to_string()),
                LfsProbe::Absent(why) => notes.push(format!(
                    "no LFS at {lfs_endpoint} ({why}); fine unless the repository uses LFS"
                )),
                LfsProbe::Denied(why) => {
                    return line(
                        false,
                        format!("the LFS endpoint {lfs_endpoint} refused the credentials: {why}"),
                    );
                }
                LfsProbe::Quota(why) => {
                    return line(
                        false,
                        format!(
                            "the LFS endpoint {lfs_endpoint} refuses for the repository's LFS quota, not the credentials: {why}; the account that owns the repository must add LFS bandwidth or storage, or wait for the quota to reset"
                        ),
                    );
                }
            }
            let mut msg = format!(
                "{} -> {commit} ({}, {auth})",
                repo.reference.as_deref().unwrap_or("HEAD"),
                remote.transport.clone_url
            );
            for n in notes {
                msg.push_str("; note: ");
                msg.push_str(&n);
            }
            line(true, msg)
        }
        Err(e) => line(false, e.to_string()),
    }
}

/// The minimal IAM policy for reading `bucket`.
fn s3_policy(bucket: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"s3:ListBucket","Resource":"arn:aws:s3:::{bucket}"}},{{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::{bucket}/*"}}]}}"#
    )
}

/// S3: ListBucket and GetObject are checked separately.
async fn check_s3(repo: &RepoConfig, config: &Config) -> CheckLine {
    use crate::source::SourceError;
    use crate::source::s3::describe;
    let line = |ok, message| CheckLine {
        name: repo.name.clone(),
        ok,
        message,
    };
    let Some(cfg) = repo.s3.as_ref() else {
        return line(false, "not an S3 repository".into());
    };
    let (client, how) = match crate::source::s3::client_for(repo, config).await {
        Ok(c) => c,
        Err(e) => return line(false, e),
    };
    // The same URL-encoded listing as the mount (keys with control
    // characters come back decoded).
    let listed = crate::source::s3::sample_keys(&client, &cfg.bucket, &cfg.prefix, 20).await;
    let keys = match listed {
        Ok(o) => o,
        Err(e) => {
            let err = describe(&e, &cfg.bucket, "ListObjectsV2");
            let mut msg = err.to_string();
            if matches!(err, SourceError::Denied(_)) && msg.contains("AccessDenied") {
                msg.push_str(&format!("; minimal policy: {}", s3_policy(&cfg.bucket)));
            }
            return line(false, msg);
        }
    };
    let first = keys.into_iter().find(|k| !k.ends_with('/'));
    if let Some(key) = first {
        if let Err(e) = client
            .get_object()
            .bucket(&cfg.bucket)
            .key(&key)
            .range("bytes=0-0")
            .send()
            .await
        {
            let err = describe(&e, &cfg.bucket, "GetObject");
            let mut msg = format!("ListBucket works but reading objects fails: {err}");
            if matches!(err, SourceError::Denied(_)) {
                msg.push_str(&format!("; minimal policy: {}", s3_policy(&cfg.bucket)));
            }
            return line(false, msg);
        }
    }
    line(
        true,
        format!(
            "s3://{}/{} lists and reads ({how} requests)",
            cfg.bucket, cfg.prefix
        ),
    )
}

/// Loads the commit's trees into a throw-away cache and returns the LFS
/// endpoint (honouring `.lfsconfig`).
async fn fetch_lfs_endpoint(repo: &RepoConfig, config: &Config) -> Result<String, String> {
    // An exclusive directory of its own (0700, a name no one can predict),
    // removed when `scratch` is dropped.
    let scratch = tempfile::Builder::new()
        .prefix("repofs-check-")
        .tempdir()
        .map_err(|e| format!("cannot create a scratch directory for the check: {e}"))?;
    let mut cfg = config.clone();
    cfg.cache_dir = scratch.path().to_path_buf();
    let cache = std::sync::Arc::new(
        crate::cache::Cache::open(&scratch.path().join("content"), u64::MAX)
            .map_err(|e| e.to_string())?,
    );
    let source = crate::source::git::GitSource::new(
        repo,
        &cfg,
        cache,
        tokio::runtime::Handle::current(),
        None,
    )?;
    source.lfs_endpoint().await.map_err(|e| e.to_string())
}

enum LfsProbe {
    Ok,
    Absent(String),
    Denied(String),
    /// Refused for a data quota (the host's message).
    Quota(String),
}

/// Asks the LFS batch API about an object that does not exist: any answer
/// but 401/403 shows the endpoint works with these credentials.
async fn probe_lfs(remote: &Remote, endpoint: &str, repo_has_token: bool) -> LfsProbe {
    let body = serde_json::json!({
        "operation": "download",
        "transfers": ["basic"],
        "objects": [{"oid": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "size": 0}],
    });
    let url = format!("{endpoint}/objects/batch");
    match remote
        .transport
        .lfs_probe(&url, body.to_string().into_bytes())
        .await
    {
        Ok((200..=299, _, _)) => LfsProbe::Ok,
        // An LFS server that does not know the (made-up) object may answer 404 in JSON.
        Ok((404, ctype, _)) if ctype.contains("git-lfs") || ctype.contains("json") => LfsProbe::Ok,
        Ok((status @ (403 | 429), _, body))
            if crate::source::git::lfs::quota_refusal(&body).is_some() =>
        {
            let message = crate::source::git::lfs::quota_refusal(&body).unwrap_or_default();
            LfsProbe::Quota(format!("HTTP {status}: {message}"))
        }
        Ok((status @ (401 | 403), _, _)) => LfsProbe::Denied(format!(
            "HTTP {status}: {}",
            if repo_has_token {
                "the token is rejected or lacks LFS access"
            } else {
                "credentials are needed"
            }
        )),
        Ok((status, _, _)) => LfsProbe::Absent(format!("HTTP {status}")),
        Err(e) => LfsProbe::Absent(e.to_string()),
    }
}

/// Checks the named repositories (all when `names` is empty), concurrently.
pub async fn check_all(config: &Config, names: &[String]) -> Result<Vec<CheckLine>, String> {
    for n in names {
        if !config.repositories.iter().any(|r| &r.name == n) {
            return Err(format!(
                "no repository named '{n}' in {}; known: {}",
                config.path.display(),
                config
                    .repositories
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let selected: Vec<&RepoConfig> = config
        .repositories
        .iter()
        .filter(|r| names.is_empty() || names.contains(&r.name))
        .collect();
    let futures = selected.iter().map(|r| check_repo(r, config));
    let mut lines = futures_util::future::join_all(futures).await;
    if let Some(sc) = &config.shared_cache {
        lines.push(check_shared(sc, config).await);
    }
    Ok(lines)
}

/// Checks the fleet's shared cache tier: reachable, readable, writable.
async fn check_shared(sc: &crate::config::SharedCacheConfig, config: &Config) -> CheckLine {
    let name = format!("shared cache s3://{}/{}", sc.s3.bucket, sc.s3.prefix);
    let rt = tokio::runtime::Handle::current();
    let (ok, message) = match crate::shared::Shared::connect(sc, config, rt).await {
        Ok(s) => s.check().await,
        Err(e) => (false, format!("{e}; reads fall back to the origins")),
    };
    CheckLine { name, ok, message }
}
