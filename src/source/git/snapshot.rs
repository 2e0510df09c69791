//! The commit being served: its trees (kept in the cache as `trees-<commit>`,
//! every record checked against its id when read back), its root and time,
//! and the last resolved commit remembered in `<cache_dir>/state/` so a
//! restart with the server down still serves what was read before.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gix_hash::ObjectId;

use super::lfs;
use super::protocol;
use crate::cache::Cache;

/// The resolved commit and its trees.
pub struct Snapshot {
    pub commit: ObjectId,
    pub root_tree: ObjectId,
    pub mtime: SystemTime,
    pub trees: HashMap<ObjectId, Arc<[u8]>>,
    pub lfs: Arc<lfs::Lfs>,
}

pub fn trees_key(commit: &ObjectId) -> String {
    format!("trees-{commit}")
}

/// Where the last resolved commit of a repository is remembered.
pub struct State {
    pub path: PathBuf,
    /// Identifies the URL and ref the commit belongs to.
    pub line: String,
}

impl State {
    pub fn remember(&self, repo: &str, commit: ObjectId) {
        let text = format!("{}\n{commit}\n", self.line);
        let tmp = self.path.with_extension("tmp");
        if std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .is_err()
        {
            tracing::warn!(repo = %repo, "cannot record the resolved commit in {}", self.path.display());
        }
    }

    pub fn remembered(&self) -> Option<ObjectId> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let mut lines = text.lines();
        (lines.next()? == self.line).then_some(())?;
        protocol::parse_oid(lines.next()?).ok()
    }
}

/// Reads `trees-<commit>`: records of (20-byte id, u32 length, data), each
/// verified; a damaged file is removed and `None` returned.
pub fn cached_trees(
    cache: &Cache,
    repo: &str,
    commit: &ObjectId,
) -> Option<HashMap<ObjectId, Arc<[u8]>>> {
    let key = trees_key(commit);
    let mut data = Vec::new();
    cache.get(&key)?.read_to_end(&mut data).ok()?;
    let mut map = HashMap::new();
    let mut rest = &data[..];
    while !rest.is_empty() {
        let ok = (|| {
            let oid = ObjectId::try_from(rest.get(..20)?).ok()?;
            let len = u32::from_be_bytes(rest.get(20..24)?.try_into().ok()?) as usize;
            let body = rest.get(24..24usize.checked_add(len)?)?;
            let kind = if &oid == commit {
                gix_object::Kind::Commit
            } else {
                gix_object::Kind::Tree
            };
            let h = gix_object::compute_hash(gix_hash::Kind::Sha1, kind, body).ok()?;
            (h == oid).then_some((oid, body, 24 + len))
        })();
        let Some((oid, body, used)) = ok else {
            tracing::warn!(repo = %repo, "cached trees of {commit} are damaged; fetching them again");
            cache.remove(&key);
            return None;
        };
        map.insert(oid, Arc::from(body));
        rest = &rest[used..];
    }
    map.contains_key(commit).then_some(map)
}

/// Stores a commit's trees in the cache (see [`cached_trees`]).
pub fn store_trees(
    cache: &Cache,
    repo: &str,
    commit: &ObjectId,
    trees: &HashMap<ObjectId, Arc<[u8]>>,
) {
    let mut out = Vec::new();
    for (oid, data) in trees {
        out.extend_from_slice(oid.as_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
    }
    if let Err(e) = cache.insert(&trees_key(commit), &out) {
        tracing::warn!(repo = %repo, "cannot cache the trees: {e}");
    }
}

/// The root tree and committer time of a commit object. A time that does
/// not fit is shown as the epoch rather than trusted.
pub fn parse_commit(data: &[u8]) -> Option<(ObjectId, SystemTime)> {
    let text = String::from_utf8_lossy(data);
    let mut tree = None;
    let mut time = SystemTime::UNIX_EPOCH;
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some(t) = line.strip_prefix("tree ") {
            tree = protocol::parse_oid(t.trim()).ok();
        } else if let Some(c) = line.strip_prefix("committer ") {
            let mut parts = c.rsplit(' ');
            let _tz = parts.next();
            if let Some(secs) = parts.next().and_then(|s| s.parse::<u64>().ok()) {
                time = SystemTime::UNIX_EPOCH
                    .checked_add(Duration::from_secs(secs))
                    .unwrap_or(SystemTime::UNIX_EPOCH);
            }
        }
    }
    Some((tree?, time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_parsing() {
        let c = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@b> 1600000000 +0200\ncommitter C <c@d> 1700000000 -0100\n\nmsg\ncommitter fake 1 +0000\n";
        let (t, m) = parse_commit(c).unwrap();
        assert_eq!(t.to_string(), "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
        assert_eq!(
            m,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        assert!(parse_commit(b"no tree here\n").is_none());
        // A time beyond what SystemTime holds must not panic.
        let huge = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\ncommitter C <c@d> 18446744073709551615 +0000\n\n";
        assert_eq!(parse_commit(huge).unwrap().1, SystemTime::UNIX_EPOCH);
    }
}
