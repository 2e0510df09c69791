//! Exact blob sizes from the host's own API, one strategy per host kind:
//!
//! - GitHub / GitHub Enterprise: `GET {api}/repos/{owner}/{repo}/git/trees/{commit}?recursive=1`,
//!   one call per commit; when the answer is `truncated`, one
//!   non-recursive call per directory listed;
//! - Bitbucket Server / DC: `GET {base}/rest/api/1.0/projects/{key}/repos/{slug}/browse/{path}?at={commit}`,
//!   paged, per directory;
//! - GitLab: GraphQL `repository.blobs(paths:)`, per directory, in batches
//!   that fit GitLab's complexity limits (`gitlab.rs`).
//!
//! The API root is the entry's `api_url`, else the host's default for the
//! clone URL (`origin::default_api_root`). GitHub is asked with its
//! documented media type and API version ([`api_headers`]); a rate limit
//! waits as each host documents it (`ratelimit.rs`). Any failure (rate
//! limit, refusal, 5xx, an unexpected answer) is an [`ApiError`]; the
//! caller falls back to git itself. Answers are read up to [`MAX_BODY`]
//! bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use gix_hash::ObjectId;
use reqwest::Method;
use serde_json::Value;

use super::gitlab::{self, Batch};
use super::ratelimit;
use super::transport::Transport;
use crate::config::Provider;
use crate::source::lock;

/// Largest API answer read.
pub const MAX_BODY: usize = 64 << 20;
/// Most pages read for one directory.
pub(super) const MAX_PAGES: usize = 1000;

/// The headers every host API request carries: GitHub's documented media
/// type and REST API version
/// (<https://docs.github.com/en/rest/about-the-rest-api/api-versions>),
/// plain JSON for the others.
pub fn api_headers(provider: Provider) -> &'static [(&'static str, &'static str)] {
    match provider {
        Provider::Github | Provider::GithubEnterprise => &[
            ("accept", "application/vnd.github+json"),
            ("x-github-api-version", "2022-11-28"),
        ],
        _ => &[("accept", "application/json")],
    }
}

/// One directory of a commit, as the size strategies need it.
pub struct DirRef {
    pub commit: ObjectId,
    pub tree: ObjectId,
    /// Path from the repository root, `""` for the root, no leading slash.
    pub path: String,
    /// Blob entries: name and id.
    pub blobs: Vec<(Vec<u8>, ObjectId)>,
    /// The commit's trees, for sources of sizes that can answer for the
    /// directories below in the same request.
    pub snapshot: Option<std::sync::Arc<super::snapshot::Snapshot>>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("rate limited for {}s", .0.saturating_duration_since(Instant::now()).as_secs())]
    RateLimited(Instant),
    #[error("{0}")]
    Failed(String),
}

/// The host API of one repository.
pub enum HostApi {
    None,
    Github {
        base: String,
        /// Per commit: blob sizes by id, and whether the answer was truncated.
        recursive: Mutex<HashMap<ObjectId, Arc<(HashMap<ObjectId, u64>, bool)>>>,
        /// Rate-limit answers without a time in a row (GitHub's exponential
        /// backoff for secondary limits).
        strikes: AtomicU32,
    },
    Bitbucket {
        base: String,
    },
    Gitlab {
        endpoint: String,
        full_path: String,
        batch: Batch,
    },
}

/// How a host API's rate-limit answers are read.
pub(super) enum Limits<'a> {
    /// GitHub's documented order, with the strikes so far.
    Github(&'a AtomicU32),
    Other,
}

fn split(clone_url: &str) -> Option<Vec<String>> {
    let (_, rest) = clone_url.split_once("://")?;
    let (_, path) = rest.split_once('/')?;
    let segs = path
        .trim_end_matches('/')
        .split('/')
        .map(|s| s.strip_suffix(".git").unwrap_or(s).to_string())
        .collect();
    Some(segs)
}

impl HostApi {
    /// The API of the repository at `clone_url`, at `api_url` when the
    /// config gives one (else the host's default root).
    pub fn for_repo(provider: Provider, clone_url: &str, api_url: Option<&str>) -> HostApi {
        let (Some(segs), Some(root)) = (
            split(clone_url),
            super::origin::api_root(provider, clone_url, api_url),
        ) else {
            return HostApi::None;
        };
        match provider {
            Provider::Github | Provider::GithubEnterprise if segs.len() == 2 => HostApi::Github {
                base: format!("{root}/repos/{}/{}", segs[0], segs[1]),
                recursive: Mutex::new(HashMap::new()),
                strikes: AtomicU32::new(0),
            },
            Provider::BitbucketServer => match segs.iter().position(|s| s == "scm") {
                Some(i) if segs.len() == i + 3 => HostApi::Bitbucket {
                    base: format!(
                        "{root}/projects/{}/repos/{}",
                        segs[i + 1].to_ascii_uppercase(),
                        segs[i + 2]
                    ),
                },
                _ => HostApi::None,
            },
            Provider::Gitlab | Provider::GitlabEnterprise => {
                match gitlab::gitlab_project(clone_url, &root) {
                    Ok((endpoint, full_path)) => HostApi::Gitlab {
                        endpoint,
                        full_path,
                        batch: Batch::default(),
                    },
                    Err(e) => {
                        tracing::warn!("{e}; sizes are learned over git");
                        HostApi::None
                    }
                }
            }
            _ => HostApi::None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            HostApi::None => "none",
            HostApi::Github { .. } => "the GitHub trees API",
            HostApi::Bitbucket { .. } => "the Bitbucket browse API",
            HostApi::Gitlab { .. } => "the GitLab GraphQL API",
        }
    }

    /// Sizes of (some of) the directory's blobs.
    pub async fn sizes(
        &self,
        t: &Transport,
        dir: &DirRef,
    ) -> Result<HashMap<ObjectId, u64>, ApiError> {
        match self {
            HostApi::None => Ok(HashMap::new()),
            HostApi::Github {
                base,
                recursive,
                strikes,
            } => github(t, base, recursive, strikes, dir).await,
            HostApi::Bitbucket { base } => bitbucket(t, base, dir).await,
            HostApi::Gitlab {
                endpoint,
                full_path,
                batch,
            } => gitlab::sizes(t, endpoint, full_path, batch, dir).await,
        }
    }
}

/// GETs or POSTs and parses JSON; rate limits (as `limits` reads them)
/// and errors become `ApiError`.
pub(super) async fn call(
    t: &Transport,
    method: Method,
    url: &str,
    body: Option<Value>,
    limits: Limits<'_>,
) -> Result<Value, ApiError> {
    let shown = crate::redact::url(url);
    let (status, headers, bytes) = t
        .api_call(
            method,
            url,
            body.map(|b| b.to_string().into_bytes()),
            MAX_BODY,
        )
        .await
        .map_err(|e| ApiError::Failed(e.to_string()))?;
    let excerpt: String = String::from_utf8_lossy(&bytes)
        .chars()
        .filter(|c| !c.is_control())
        .take(160)
        .collect();
    let now = SystemTime::now();
    let wait = match &limits {
        Limits::Github(strikes) => {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("message")?.as_str().map(String::from))
                .unwrap_or_else(|| excerpt.clone());
            let wait = ratelimit::github_retry_after(
                status,
                &headers,
                &message,
                now,
                strikes.load(Ordering::Relaxed),
            );
            let timed = headers.contains_key("retry-after")
                || headers
                    .get("x-ratelimit-remaining")
                    .is_some_and(|v| v.as_bytes() == b"0");
            if wait.is_some() && !timed {
                strikes.fetch_add(1, Ordering::Relaxed);
            } else if wait.is_none() {
                strikes.store(0, Ordering::Relaxed);
            }
            wait
        }
        Limits::Other => ratelimit::other_retry_after(status, &headers, now),
    };
    if let Some(wait) = wait {
        tracing::debug!(url = %shown, status, "rate limited for {wait:?}");
        return Err(ApiError::RateLimited(Instant::now() + wait));
    }
    if !(200..300).contains(&status) {
        return Err(ApiError::Failed(format!(
            "{shown}: HTTP {status}: {excerpt}"
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Failed(format!("{shown}: not JSON: {e}")))
}

pub(super) fn size_of(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

pub(super) fn oid_of(v: &Value) -> Option<ObjectId> {
    let s = v.as_str()?;
    (s.len() == 40).then_some(())?;
    ObjectId::from_hex(s.as_bytes()).ok()
}

/// Blob sizes by id from a GitHub trees answer, and its `truncated` flag.
fn github_tree(v: &Value) -> Result<(HashMap<ObjectId, u64>, bool), ApiError> {
    let entries = v
        .get("tree")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::Failed("the trees answer has no `tree`".into()))?;
    let mut out = HashMap::new();
    for e in entries {
        if e.get("type").and_then(Value::as_str) == Some("blob") {
            if let (Some(o), Some(s)) = (
                e.get("sha").and_then(oid_of),
                e.get("size").and_then(size_of),
            ) {
                out.insert(o, s);
            }
        }
    }
    let truncated = v.get("truncated").and_then(Value::as_bool).unwrap_or(false);
    Ok((out, truncated))
}

async fn github(
    t: &Transport,
    base: &str,
    recursive: &Mutex<HashMap<ObjectId, Arc<(HashMap<ObjectId, u64>, bool)>>>,
    strikes: &AtomicU32,
    dir: &DirRef,
) -> Result<HashMap<ObjectId, u64>, ApiError> {
    let known = lock(&recursive).get(&dir.commit).cloned();
    let all = match known {
        Some(a) => a,
        None => {
            let v = call(
                t,
                Method::GET,
                &format!("{base}/git/trees/{}?recursive=1", dir.commit),
                None,
                Limits::Github(strikes),
            )
            .await?;
            let a = Arc::new(github_tree(&v)?);
            lock(&recursive).insert(dir.commit, a.clone());
            a
        }
    };
    let mut out: HashMap<ObjectId, u64> = dir
        .blobs
        .iter()
        .filter_map(|(_, o)| all.0.get(o).map(|s| (*o, *s)))
        .collect();
    if out.len() < dir.blobs.len() && all.1 {
        // Truncated: this directory on its own.
        let v = call(
            t,
            Method::GET,
            &format!("{base}/git/trees/{}", dir.tree),
            None,
            Limits::Github(strikes),
        )
        .await?;
        out.extend(github_tree(&v)?.0);
    }
    Ok(out)
}

/// Percent-encodes one path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn bitbucket(
    t: &Transport,
    base: &str,
    dir: &DirRef,
) -> Result<HashMap<ObjectId, u64>, ApiError> {
    let path: String = dir
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| format!("/{}", encode_segment(s)))
        .collect();
    let by_name: HashMap<&[u8], ObjectId> =
        dir.blobs.iter().map(|(n, o)| (n.as_slice(), *o)).collect();
    let mut out = HashMap::new();
    let mut start = 0u64;
    for _ in 0..MAX_PAGES {
        let url = format!(
            "{base}/browse{path}?at={}&start={start}&limit=1000",
            dir.commit
        );
        let v = call(t, Method::GET, &url, None, Limits::Other).await?;
        let children = v
            .get("children")
            .ok_or_else(|| ApiError::Failed("the browse answer has no `children`".into()))?;
        for c in children
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if c.get("type").and_then(Value::as_str) != Some("FILE") {
                continue;
            }
            let name = c
                .get("path")
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str);
            let (Some(name), Some(size)) = (name, c.get("size").and_then(size_of)) else {
                continue;
            };
            if let Some(oid) = by_name.get(name.as_bytes()) {
                // contentId, when given, must be the blob we mean.
                if c.get("contentId")
                    .and_then(oid_of)
                    .is_none_or(|id| id == *oid)
                {
                    out.insert(*oid, size);
                }
            }
        }
        if children
            .get("isLastPage")
            .and_then(Value::as_bool)
            .unwrap_or(true)
        {
            return Ok(out);
        }
        match children.get("nextPageStart").and_then(Value::as_u64) {
            Some(n) if n > start => start = n,
            _ => return Ok(out),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_roots_from_clone_urls() {
        let HostApi::Github { base, .. } =
            HostApi::for_repo(Provider::GithubEnterprise, "http://h:8/acme/m.git", None)
        else {
            panic!()
        };
        assert_eq!(base, "http://h:8/api/v3/repos/acme/m");
        let HostApi::Github { base, .. } =
            HostApi::for_repo(Provider::Github, "https://github.com/a/b.git", None)
        else {
            panic!()
        };
        assert_eq!(base, "https://api.github.com/repos/a/b");
        let HostApi::Github { base, .. } = HostApi::for_repo(
            Provider::GithubEnterprise,
            "https://octo.ghe.com/a/b.git",
            None,
        ) else {
            panic!()
        };
        assert_eq!(base, "https://api.octo.ghe.com/repos/a/b");
        let HostApi::Github { base, .. } = HostApi::for_repo(
            Provider::GithubEnterprise,
            "http://127.0.0.1:8/a/b.git",
            Some("http://127.0.0.1:9/"),
        ) else {
            panic!()
        };
        assert_eq!(base, "http://127.0.0.1:9/repos/a/b");
        let HostApi::Bitbucket { base } = HostApi::for_repo(
            Provider::BitbucketServer,
            "https://h/bb/scm/proj/r.git",
            None,
        ) else {
            panic!()
        };
        assert_eq!(base, "https://h/bb/rest/api/1.0/projects/PROJ/repos/r");
        let HostApi::Bitbucket { base } = HostApi::for_repo(
            Provider::BitbucketServer,
            "https://h/scm/proj/r.git",
            Some("https://h/bitbucket/rest/api/latest"),
        ) else {
            panic!()
        };
        assert_eq!(
            base,
            "https://h/bitbucket/rest/api/latest/projects/PROJ/repos/r"
        );
        let HostApi::Gitlab {
            endpoint,
            full_path,
            ..
        } = HostApi::for_repo(Provider::GitlabEnterprise, "https://h/g/sub/p.git", None)
        else {
            panic!()
        };
        assert_eq!(
            (endpoint.as_str(), full_path.as_str()),
            ("https://h/api/graphql", "g/sub/p")
        );
        let HostApi::Gitlab {
            endpoint,
            full_path,
            ..
        } = HostApi::for_repo(
            Provider::Gitlab,
            "https://h/gitlab/g/p.git",
            Some("https://h/gitlab/api/v4"),
        )
        else {
            panic!()
        };
        assert_eq!(
            (endpoint.as_str(), full_path.as_str()),
            ("https://h/gitlab/api/graphql", "g/p")
        );
        assert!(matches!(
            HostApi::for_repo(Provider::Git, "https://h/x.git", None),
            HostApi::None
        ));
        assert_eq!(encode_segment("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(
            api_headers(Provider::Github)[0].1,
            "application/vnd.github+json"
        );
        assert_eq!(
            api_headers(Provider::GithubEnterprise)[1],
            ("x-github-api-version", "2022-11-28")
        );
    }

    #[test]
    fn github_answers() {
        let v: Value = serde_json::from_str(r#"{"tree":[{"path":"a","type":"blob","sha":"1111111111111111111111111111111111111111","size":5},{"path":"d","type":"tree","sha":"2222222222222222222222222222222222222222"},{"type":"blob","sha":"zz","size":1}],"truncated":true}"#).unwrap();
        let (m, t) = github_tree(&v).unwrap();
        assert!(t);
        assert_eq!(m.len(), 1);
        assert!(github_tree(&serde_json::json!({"message": "Not Found"})).is_err());
    }
}
