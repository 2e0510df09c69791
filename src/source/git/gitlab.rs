//! GitLab blob sizes over GraphQL, within GitLab's query limits:
//! `project(fullPath:) { repository { blobs(ref:, paths:, first:) { nodes { path size oid } } } }`.
//!
//! GitLab scores every query before running it and refuses one above its
//! maximum complexity: 200 anonymous, 250 authenticated
//! (`app/graphql/gitlab_schema.rb`). `blobs` costs one more per path
//! (`Resolvers::BlobsResolver.resolver_complexity`), twice over for a full
//! page (`Types::BaseField#connection_complexity_multiplier`), and some
//! releases scored paths far higher (gitlab-org/gitlab#576497); newer ones
//! cap the data served instead ("Max blobs size limit exceeded"). So the
//! number of paths per query adapts ([`Batch`]): it starts within the
//! anonymous limit, halves on a complexity or size refusal (the refused
//! paths are asked again in smaller queries, never the same oversized one),
//! and grows while answers succeed, never back to a size that was refused.
//!
//! Each answered size is taken only when its `oid` is the blob the tree
//! names at that path (`size` is the git blob's; `rawSize` would be an LFS
//! object's).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use gix_hash::ObjectId;
use reqwest::Method;
use serde_json::Value;

use super::hosts::{ApiError, DirRef, Limits, MAX_PAGES, call, oid_of, size_of};
use super::transport::Transport;

/// Most paths in one query: GitLab's largest page (`default_max_page_size`).
pub const MAX_BATCH: usize = 100;
/// The first batch: 64 paths score 121 with GitLab's own formula, well
/// within the anonymous 200.
pub const START_BATCH: usize = 64;

const QUERY: &str = "query($p: ID!, $r: String!, $paths: [String!]!, $first: Int!, $after: String) { project(fullPath: $p) { repository { blobs(ref: $r, paths: $paths, first: $first, after: $after) { nodes { path size oid } pageInfo { hasNextPage endCursor } } } } }";

/// The GraphQL endpoint and the project's full path for a clone URL under
/// the GitLab whose REST root is `api_root` (`https://host[/ROOT]/api/v4`):
/// the project path is the clone URL's path below the relative URL root.
pub fn gitlab_project(clone_url: &str, api_root: &str) -> Result<(String, String), String> {
    let root = api_root
        .trim_end_matches('/')
        .strip_suffix("/api/v4")
        .ok_or_else(|| {
            format!("{api_root:?} is not GitLab's REST root; it ends in /api/v4, such as https://HOST/gitlab/api/v4")
        })?;
    let path_of = |u: &str| -> Option<String> {
        let rest = u.split_once("://")?.1;
        Some(
            rest.split_once('/')
                .map(|(_, p)| p)
                .unwrap_or("")
                .to_string(),
        )
    };
    let root_path = path_of(root).unwrap_or_default();
    let root_segs: Vec<&str> = root_path.split('/').filter(|s| !s.is_empty()).collect();
    let clone_path = path_of(clone_url).unwrap_or_default();
    let segs: Vec<&str> = clone_path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() < root_segs.len() + 2 || segs[..root_segs.len()] != root_segs[..] {
        return Err(format!(
            "the clone URL {} is not a project under the GitLab at {root}; give api_url as https://HOST/ROOT/api/v4 for a GitLab installed under /ROOT",
            crate::redact::url(clone_url)
        ));
    }
    let mut project: Vec<String> = segs[root_segs.len()..]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(last) = project.last_mut() {
        if let Some(s) = last.strip_suffix(".git") {
            *last = s.to_string();
        }
    }
    Ok((format!("{root}/api/graphql"), project.join("/")))
}

/// How many paths one query asks: adapts to what the server accepts.
#[derive(Debug)]
pub struct Batch {
    state: Mutex<BatchState>,
    /// Whether a refusal was logged (once; later ones go to debug).
    logged: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchState {
    /// Paths per query now.
    size: usize,
    /// The largest batch answered.
    good: usize,
    /// The smallest batch refused (`MAX_BATCH + 1` while none was).
    ceiling: usize,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch {
            state: Mutex::new(BatchState {
                size: START_BATCH,
                good: 0,
                ceiling: MAX_BATCH + 1,
            }),
            logged: AtomicBool::new(false),
        }
    }
}

impl Batch {
    pub fn size(&self) -> usize {
        crate::source::lock(&self.state).size
    }

    /// A query of `n` paths was answered: a full batch grows it, halfway
    /// to the smallest refused one.
    pub fn answered(&self, n: usize) {
        let mut s = crate::source::lock(&self.state);
        s.good = s.good.max(n);
        if n >= s.size {
            s.size = s.size.max((s.size + s.ceiling) / 2).min(s.ceiling - 1);
        }
    }

    /// A query of `n` paths was refused as too complex or too large:
    /// halves it (not below the largest answered). `None` when even one
    /// path is refused.
    pub fn refused(&self, n: usize) -> Option<usize> {
        let mut s = crate::source::lock(&self.state);
        if n <= 1 {
            return None;
        }
        s.ceiling = s.ceiling.min(n);
        s.size = (n / 2).max(s.good.min(s.ceiling - 1)).max(1);
        Some(s.size)
    }

    fn log_refusal(&self, full_path: &str, n: usize, next: usize, message: &str) {
        if !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                project = full_path,
                "GitLab refused {n} paths in one GraphQL query ({message}); asking {next} at a time from now on"
            );
        } else {
            tracing::debug!(
                project = full_path,
                "{n} paths were too many again ({message}); asking {next}"
            );
        }
    }
}

/// Whether a GraphQL error is GitLab refusing the query's size: its
/// complexity ("Query has complexity of N, which exceeds max complexity of
/// M") or the data it would serve ("Max blobs size limit exceeded").
pub fn is_size_refusal(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("exceeds max complexity") || m.contains("max blobs size limit exceeded")
}

/// Sizes of the directory's blobs from `endpoint`.
pub async fn sizes(
    t: &Transport,
    endpoint: &str,
    full_path: &str,
    batch: &Batch,
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
    let mut paths: Vec<&String> = by_path.keys().collect();
    paths.sort();
    let mut out = HashMap::new();
    let mut at = 0;
    while at < paths.len() {
        let n = batch.size().min(paths.len() - at);
        let group = &paths[at..at + n];
        match query(t, endpoint, full_path, dir, group, &by_path, &mut out).await {
            Ok(()) => {
                batch.answered(n);
                at += n;
            }
            Err(Refusal::Size(message)) => match batch.refused(n) {
                Some(next) => batch.log_refusal(full_path, n, next, &message),
                None => {
                    return Err(ApiError::Failed(format!(
                        "GitLab refuses even one path per query: {message}"
                    )));
                }
            },
            Err(Refusal::Other(e)) => return Err(e),
        }
    }
    Ok(out)
}

enum Refusal {
    /// Too complex or too large: ask fewer paths.
    Size(String),
    Other(ApiError),
}

/// One group of paths, every page of it.
async fn query(
    t: &Transport,
    endpoint: &str,
    full_path: &str,
    dir: &DirRef,
    group: &[&String],
    by_path: &HashMap<String, ObjectId>,
    out: &mut HashMap<ObjectId, u64>,
) -> Result<(), Refusal> {
    let mut after = Value::Null;
    for _ in 0..MAX_PAGES {
        let body = serde_json::json!({
            "query": QUERY,
            "variables": {"p": full_path, "r": dir.commit.to_string(), "paths": group,
                          "first": group.len().clamp(1, MAX_BATCH), "after": after},
        });
        let v = call(t, Method::POST, endpoint, Some(body), Limits::Other)
            .await
            .map_err(Refusal::Other)?;
        if let Some(errors) = v.get("errors").and_then(Value::as_array) {
            let messages: Vec<&str> = errors
                .iter()
                .filter_map(|e| e.get("message").and_then(Value::as_str))
                .collect();
            let text: String = messages.join("; ").chars().take(200).collect();
            if messages.iter().any(|m| is_size_refusal(m)) {
                return Err(Refusal::Size(text));
            }
            return Err(Refusal::Other(ApiError::Failed(format!(
                "GraphQL errors: {}",
                if text.is_empty() {
                    errors.len().to_string()
                } else {
                    text
                }
            ))));
        }
        let blobs = v.pointer("/data/project/repository/blobs").ok_or_else(|| {
            Refusal::Other(ApiError::Failed(
                "the project is not visible to the token (GraphQL answered no project)".into(),
            ))
        })?;
        for n in blobs
            .get("nodes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let path = n.get("path").and_then(Value::as_str);
            let size = n.get("size").and_then(size_of);
            let oid = n.get("oid").and_then(oid_of);
            if let (Some(p), Some(s), Some(o)) = (path, size, oid) {
                // Only the blob the tree names at that path.
                if by_path.get(p) == Some(&o) {
                    out.insert(o, s);
                }
            }
        }
        let info = blobs.get("pageInfo");
        if info
            .and_then(|i| i.get("hasNextPage"))
            .and_then(Value::as_bool)
            != Some(true)
        {
            return Ok(());
        }
        after = info
            .and_then(|i| i.get("endCursor"))
            .cloned()
            .unwrap_or(Value::Null);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_paths_below_the_relative_root() {
        assert_eq!(
            gitlab_project("https://h/g/sub/p.git", "https://h/api/v4").unwrap(),
            ("https://h/api/graphql".to_string(), "g/sub/p".to_string())
        );
        assert_eq!(
            gitlab_project("https://h/gitlab/g/p.git", "https://h/gitlab/api/v4/").unwrap(),
            (
                "https://h/gitlab/api/graphql".to_string(),
                "g/p".to_string()
            )
        );
        // Without api_url, the default root takes the whole path.
        assert_eq!(
            gitlab_project("https://h/gitlab/g/p.git", "https://h/api/v4")
                .unwrap()
                .1,
            "gitlab/g/p"
        );
        assert!(gitlab_project("https://h/other/g/p.git", "https://h/gitlab/api/v4").is_err());
        assert!(gitlab_project("https://h/gitlab/p.git", "https://h/gitlab/api/v4").is_err());
        assert!(gitlab_project("https://h/g/p.git", "https://h/api/v3").is_err());
    }

    #[test]
    fn refusals_are_told_apart() {
        assert!(is_size_refusal(
            "Query has complexity of 220, which exceeds max complexity of 200"
        ));
        assert!(is_size_refusal(
            "Max blobs size limit exceeded (25 MB / 20 MB)."
        ));
        assert!(!is_size_refusal("Ref is not valid"));
    }

    #[test]
    fn the_batch_halves_on_refusal_and_grows_short_of_it() {
        let b = Batch::default();
        assert_eq!(b.size(), START_BATCH);
        // A smaller directory does not grow it.
        b.answered(10);
        assert_eq!(b.size(), START_BATCH);
        b.answered(64);
        assert_eq!(b.size(), 82);
        b.answered(82);
        assert_eq!(b.size(), 91);
        // 91 refused: back to the largest answered, never 91 again.
        assert_eq!(b.refused(91), Some(82));
        for _ in 0..10 {
            let n = b.size();
            b.answered(n);
            assert!(b.size() < 91, "{}", b.size());
        }
        assert_eq!(b.size(), 90);
        // Refused from the start: halving down to one, then giving up.
        let b = Batch::default();
        let mut sizes = vec![];
        let mut n = b.size();
        while let Some(next) = b.refused(n) {
            sizes.push(next);
            n = next;
        }
        assert_eq!(sizes, [32, 16, 8, 4, 2, 1]);
        assert_eq!(b.refused(1), None);
        // Growth after halving stops short of every refused size.
        let b = Batch::default();
        assert_eq!(b.refused(64), Some(32));
        b.answered(32);
        assert_eq!(b.size(), 48);
        b.answered(48);
        assert_eq!(b.size(), 56);
        assert_eq!(b.refused(56), Some(48));
        b.answered(48);
        assert_eq!(b.size(), 52);
    }
}
