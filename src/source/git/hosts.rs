//! Exact blob sizes from the host's own API, one strategy per host kind:
//!
//! - GitHub / GitHub Enterprise: `GET {api}/repos/{owner}/{repo}/git/trees/{commit}?recursive=1`,
//!   one call per commit; when the answer is `truncated`, one
//!   non-recursive call per directory listed;
//! - Bitbucket Server / DC: `GET {base}/rest/api/1.0/projects/{key}/repos/{slug}/browse/{path}?at={commit}`,
//!   paged, per directory;
//! - GitLab: GraphQL `project(fullPath:) { repository { blobs(ref:, paths:) { nodes { path size } } } }`,
//!   per directory, paged (`size` is the git blob's; `rawSize` is an LFS
//!   object's, which would hide the pointer).
//!
//! Any failure (rate limit, refusal, 5xx, an unexpected answer) is an
//! [`ApiError`]; the caller falls back to git itself. Answers are read up to
//! [`MAX_BODY`] bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gix_hash::ObjectId;
use reqwest::Method;
use serde_json::Value;

use super::transport::{self, Transport};
use crate::config::Provider;
use crate::source::lock;

/// Largest API answer read.
pub const MAX_BODY: usize = 64 << 20;
/// Most pages read for one directory.
const MAX_PAGES: usize = 1000;

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
    },
    Bitbucket {
        base: String,
    },
    Gitlab {
        endpoint: String,
        full_path: String,
    },
}

fn split(clone_url: &str) -> Option<(String, Vec<String>)> {
    let (scheme, rest) = clone_url.split_once("://")?;
    let (host, path) = rest.split_once('/')?;
    let segs = path
        .trim_end_matches('/')
        .split('/')
        .map(|s| s.strip_suffix(".git").unwrap_or(s).to_string())
        .collect();
    Some((format!("{scheme}://{host}"), segs))
}

impl HostApi {
    pub fn for_repo(provider: Provider, clone_url: &str) -> HostApi {
        let Some((root, segs)) = split(clone_url) else {
            return HostApi::None;
        };
        match provider {
            Provider::Github | Provider::GithubEnterprise if segs.len() == 2 => HostApi::Github {
                base: format!(
                    "{}/repos/{}/{}",
                    transport::github_api(provider, clone_url),
                    segs[0],
                    segs[1]
                ),
                recursive: Mutex::new(HashMap::new()),
            },
            Provider::BitbucketServer => match segs.iter().position(|s| s == "scm") {
                Some(i) if segs.len() == i + 3 => {
                    let context: String = segs[..i].iter().map(|s| format!("/{s}")).collect();
                    HostApi::Bitbucket {
                        base: format!(
                            "{root}{context}/rest/api/1.0/projects/{}/repos/{}",
                            segs[i + 1].to_ascii_uppercase(),
                            segs[i + 2]
                        ),
                    }
                }
                _ => HostApi::None,
            },
            Provider::Gitlab | Provider::GitlabEnterprise => HostApi::Gitlab {
                endpoint: format!("{root}/api/graphql"),
                full_path: segs.join("/"),
            },
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
            HostApi::Github { base, recursive } => github(t, base, recursive, dir).await,
            HostApi::Bitbucket { base } => bitbucket(t, base, dir).await,
            HostApi::Gitlab {
                endpoint,
                full_path,
            } => gitlab(t, endpoint, full_path, dir).await,
        }
    }
}

/// GETs or POSTs and parses JSON; rate limits and errors become `ApiError`.
async fn call(
    t: &Transport,
    method: Method,
    url: &str,
    body: Option<Value>,
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
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if status == 429 || (status == 403 && header("x-ratelimit-remaining") == Some(0)) {
        let wait = header("retry-after")
            .or_else(|| {
                let reset = header("x-ratelimit-reset")?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_secs();
                Some(reset.saturating_sub(now))
            })
            .unwrap_or(60)
            .clamp(1, 3600);
        return Err(ApiError::RateLimited(
            Instant::now() + Duration::from_secs(wait),
        ));
    }
    if !(200..300).contains(&status) {
        let excerpt: String = String::from_utf8_lossy(&bytes)
            .chars()
            .filter(|c| !c.is_control())
            .take(160)
            .collect();
        return Err(ApiError::Failed(format!(
            "{shown}: HTTP {status}: {excerpt}"
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Failed(format!("{shown}: not JSON: {e}")))
}

fn size_of(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

fn oid_of(v: &Value) -> Option<ObjectId> {
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
        let v = call(t, Method::GET, &url, None).await?;
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

const GITLAB_QUERY: &str = "query($p: ID!, $r: String!, $paths: [String!]!, $after: String) { project(fullPath: $p) { repository { blobs(ref: $r, paths: $paths, first: 100, after: $after) { nodes { path size } pageInfo { hasNextPage endCursor } } } } }";

async fn gitlab(
    t: &Transport,
    endpoint: &str,
    full_path: &str,
    dir: &DirRef,
) -> Result<HashMap<ObjectId, u64>, ApiError> {
    let prefix = if dir.path.is_empty() {
        String::new()
    } else {
        format!("{}/", dir.path)
    };
    let mut by_path: HashMap<String, ObjectId> = HashMap::new();
    for (name, oid) in &dir.blobs {
        if let Ok(n) = std::str::from_utf8(name) {
            by_path.insert(format!("{prefix}{n}"), *oid);
        }
    }
    let mut out = HashMap::new();
    let paths: Vec<&String> = by_path.keys().collect();
    for group in paths.chunks(100) {
        let mut after = Value::Null;
        for _ in 0..MAX_PAGES {
            let body = serde_json::json!({
                "query": GITLAB_QUERY,
                "variables": {"p": full_path, "r": dir.commit.to_string(), "paths": group, "after": after},
            });
            let v = call(t, Method::POST, endpoint, Some(body)).await?;
            if let Some(errors) = v.get("errors") {
                return Err(ApiError::Failed(format!(
                    "GraphQL errors: {}",
                    errors.to_string().chars().take(200).collect::<String>()
                )));
            }
            let blobs = v.pointer("/data/project/repository/blobs").ok_or_else(|| {
                ApiError::Failed(
                    "the project is not visible to the token (GraphQL answered no project)".into(),
                )
            })?;
            for n in blobs
                .get("nodes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let path = n.get("path").and_then(Value::as_str);
                // `size` is the blob's own; `rawSize` would be an LFS object's.
                let size = n.get("size").and_then(size_of);
                if let (Some(p), Some(s)) = (path, size) {
                    if let Some(o) = by_path.get(p) {
                        out.insert(*o, s);
                    }
                }
            }
            let info = blobs.get("pageInfo");
            if info
                .and_then(|i| i.get("hasNextPage"))
                .and_then(Value::as_bool)
                != Some(true)
            {
                break;
            }
            after = info
                .and_then(|i| i.get("endCursor"))
                .cloned()
                .unwrap_or(Value::Null);
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
            HostApi::for_repo(Provider::GithubEnterprise, "http://h:8/acme/m.git")
        else {
            panic!()
        };
        assert_eq!(base, "http://h:8/api/v3/repos/acme/m");
        let HostApi::Github { base, .. } =
            HostApi::for_repo(Provider::Github, "https://github.com/a/b.git")
        else {
            panic!()
        };
        assert_eq!(base, "https://api.github.com/repos/a/b");
        let HostApi::Bitbucket { base } =
            HostApi::for_repo(Provider::BitbucketServer, "https://h/bb/scm/proj/r.git")
        else {
            panic!()
        };
        assert_eq!(base, "https://h/bb/rest/api/1.0/projects/PROJ/repos/r");
        let HostApi::Gitlab {
            endpoint,
            full_path,
        } = HostApi::for_repo(Provider::GitlabEnterprise, "https://h/g/sub/p.git")
        else {
            panic!()
        };
        assert_eq!(
            (endpoint.as_str(), full_path.as_str()),
            ("https://h/api/graphql", "g/sub/p")
        );
        assert!(matches!(
            HostApi::for_repo(Provider::Git, "https://h/x.git"),
            HostApi::None
        ));
        assert_eq!(encode_segment("a b/ü"), "a%20b%2F%C3%BC");
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
