//! Exact sizes of a directory's blobs, from the cheapest source that has
//! them, kept on disk per tree so a restart costs no request:
//!
//! 1. the stored `sizes-<tree>` entry (checksummed: a damaged one is
//!    dropped and the sizes asked for again);
//! 2. blobs already in the cache tell their own size;
//! 3. protocol-v2 `object-info`, when the server advertises it: asked for
//!    the directories below too (up to `AHEAD_BLOBS` blobs, in requests of
//!    `OBJECT_INFO_BATCH`), whose sizes are stored for when a walk lists
//!    them;
//! 4. the host's API ([`HostApi`]), unless it failed recently (a rate limit
//!    turns it off until the limit resets);
//! 5. a streamed size probe over git itself ([`Objects::probe`]), which
//!    never downloads a large blob to learn its size.
//!
//! Sizes from an API are checked when contents arrive (see `GitSource::open`).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gix_hash::ObjectId;
use gix_object::tree::EntryKind;
use sha2::Digest;

use super::hosts::{ApiError, DirRef, HostApi};
use super::objects::Objects;
use super::protocol;
use super::remote::Remote;
use super::snapshot::Snapshot;
use super::transport::RemoteError;
use crate::cache::Cache;
use crate::source::{SourceError, lock};

/// Blobs up to this size are fetched by the probe (the prefetch).
pub const PROBE_KEEP: u64 = 256 * 1024;
const MAGIC: &[u8; 8] = b"RFSSIZE1";
/// Blob ids per `object-info` request (about 45 bytes each way).
const OBJECT_INFO_BATCH: usize = 20_000;
/// Blobs of the directories below one being listed whose sizes are asked
/// for with its own.
const AHEAD_BLOBS: usize = 50_000;
/// Trees looked at to find them.
const AHEAD_TREES: usize = 5_000;

fn sizes_key(tree: &ObjectId) -> String {
    format!("sizes-{tree}")
}

/// Encodes sizes with a trailing sha256 of everything before it.
pub fn encode(sizes: &[(ObjectId, u64)]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for (o, s) in sizes {
        out.extend_from_slice(o.as_bytes());
        out.extend_from_slice(&s.to_be_bytes());
    }
    let sum = sha2::Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Decodes what `encode` wrote; `None` for anything damaged.
pub fn decode(data: &[u8]) -> Option<HashMap<ObjectId, u64>> {
    let (body, sum) = data.split_at_checked(data.len().checked_sub(32)?)?;
    if sha2::Sha256::digest(body).as_slice() != sum {
        return None;
    }
    let records = body.strip_prefix(&MAGIC[..])?;
    if records.len() % 28 != 0 {
        return None;
    }
    let mut out = HashMap::new();
    for r in records.chunks_exact(28) {
        let oid = ObjectId::try_from(&r[..20]).ok()?;
        let size = u64::from_be_bytes(r[20..28].try_into().ok()?);
        out.insert(oid, size);
    }
    Some(out)
}

/// The size strategies of one repository.
pub struct Sizes {
    repo: String,
    cache: Arc<Cache>,
    remote: Arc<Remote>,
    objects: Arc<Objects>,
    api: HostApi,
    /// The API is not asked again before this instant.
    api_off_until: Mutex<Option<Instant>>,
    last_warning: Mutex<Option<Instant>>,
    /// Sizes the contents proved wrong, by blob: override anything stored.
    corrections: Mutex<HashMap<ObjectId, u64>>,
}

impl Sizes {
    pub fn new(
        repo: &str,
        cache: Arc<Cache>,
        remote: Arc<Remote>,
        objects: Arc<Objects>,
        api: HostApi,
    ) -> Sizes {
        Sizes {
            repo: repo.to_string(),
            cache,
            remote,
            objects,
            api,
            api_off_until: Mutex::new(None),
            last_warning: Mutex::new(None),
            corrections: Mutex::new(HashMap::new()),
        }
    }

    fn stored(&self, tree: &ObjectId) -> Option<HashMap<ObjectId, u64>> {
        let key = sizes_key(tree);
        let mut data = Vec::new();
        self.cache.get(&key)?.read_to_end(&mut data).ok()?;
        match decode(&data) {
            Some(m) => Some(m),
            None => {
                tracing::warn!(repo = %self.repo, %tree, "the stored sizes are damaged; asking again");
                self.cache.remove(&key);
                None
            }
        }
    }

    pub fn store(&self, tree: &ObjectId, sizes: &HashMap<ObjectId, u64>) {
        let mut v: Vec<(ObjectId, u64)> = sizes.iter().map(|(o, s)| (*o, *s)).collect();
        v.sort();
        if let Err(e) = self.cache.insert(&sizes_key(tree), &encode(&v)) {
            tracing::debug!(repo = %self.repo, "cannot store sizes: {e}");
        }
    }

    fn warn_limited(&self, msg: &str) {
        let mut last = lock(&self.last_warning);
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!(repo = %self.repo, "{msg}");
        }
    }

    /// Records a blob's true size, learned from its contents.
    pub fn correct(&self, oid: ObjectId, size: u64) {
        lock(&self.corrections).insert(oid, size);
    }

    /// Exact sizes of every blob of `dir`.
    pub async fn of_dir(&self, dir: &DirRef) -> Result<HashMap<ObjectId, u64>, SourceError> {
        let mut sizes = self.stored(&dir.tree).unwrap_or_default();
        let mut changed = false;
        for (_, oid) in &dir.blobs {
            let fix = lock(&self.corrections).get(oid).copied();
            if let Some(real) = fix {
                changed |= sizes.insert(*oid, real) != Some(real);
            }
        }
        if changed {
            self.store(&dir.tree, &sizes);
        }
        let mut unknown: Vec<ObjectId> = Vec::new();
        for (_, oid) in &dir.blobs {
            if sizes.contains_key(oid) || unknown.contains(oid) {
                continue;
            }
            match self.objects.cached_size(oid) {
                Some(s) => {
                    sizes.insert(*oid, s);
                }
                None => unknown.push(*oid),
            }
        }
        if unknown.is_empty() {
            // Nothing of its own to learn; with object-info, the
            // directories below may be.
            if dir.snapshot.is_some() && self.object_info().await {
                self.sizes_by_object_info(dir, &[], &mut sizes).await?;
            }
            return Ok(sizes);
        }
        if let Some(shared) = &self.objects.shared {
            // The fleet's copy; its values are checked against the contents
            // when a file is opened, as a host API's are.
            let key = sizes_key(&dir.tree);
            let object = super::fleet::sizes_object(&dir.tree);
            let limit = super::fleet::MAX_META;
            if shared
                .fetch(
                    &object,
                    crate::shared::Expect::Later { max: limit },
                    &self.cache,
                    &key,
                )
                .await
                .is_some()
            {
                let theirs = self.stored(&dir.tree).unwrap_or_default();
                unknown.retain(|o| match theirs.get(o) {
                    Some(s) => {
                        sizes.insert(*o, *s);
                        false
                    }
                    None => true,
                });
                self.store(&dir.tree, &sizes);
                if unknown.is_empty() {
                    return Ok(sizes);
                }
            }
        }
        // Sizes a host API gave are not shared: an API can be wrong (the
        // contents correct it, here only), and other nodes decide from
        // sizes which files are LFS pointers.
        let mut from_api = false;
        let caps = self
            .remote
            .capabilities()
            .await
            .map_err(RemoteError::into_source_error)?;
        if caps.object_info {
            self.sizes_by_object_info(dir, &unknown, &mut sizes).await?;
        } else if !matches!(self.api, HostApi::None) && self.api_available() {
            match self.api.sizes(&self.remote.transport, dir).await {
                Ok(m) => {
                    for (o, s) in m {
                        if unknown.contains(&o) {
                            sizes.insert(o, s);
                            from_api = true;
                        }
                    }
                }
                Err(ApiError::RateLimited(until)) => {
                    *lock(&self.api_off_until) = Some(until);
                    self.warn_limited(&format!(
                        "{} is rate limited; learning sizes over git until it resets",
                        self.api.name()
                    ));
                }
                Err(e) => {
                    *lock(&self.api_off_until) = Some(Instant::now() + Duration::from_secs(60));
                    self.warn_limited(&format!(
                        "{} failed ({e}); learning sizes over git",
                        self.api.name()
                    ));
                }
            }
        }
        let rest: Vec<ObjectId> = unknown
            .into_iter()
            .filter(|o| !sizes.contains_key(o))
            .collect();
        if !rest.is_empty() {
            sizes.extend(self.objects.probe(&rest, PROBE_KEEP).await?);
        }
        self.store(&dir.tree, &sizes);
        if !from_api {
            super::fleet::offer(
                &self.objects.shared,
                &self.cache,
                &sizes_key(&dir.tree),
                &super::fleet::sizes_object(&dir.tree),
            );
        }
        Ok(sizes)
    }

    /// Whether the server answers `object-info` (its capabilities are
    /// asked once).
    async fn object_info(&self) -> bool {
        self.remote
            .capabilities()
            .await
            .is_ok_and(|c| c.object_info)
    }

    /// Sizes of `unknown` into `sizes`, and of the blobs of the directories
    /// below `dir` (stored per directory), over `object-info`.
    async fn sizes_by_object_info(
        &self,
        dir: &DirRef,
        unknown: &[ObjectId],
        sizes: &mut HashMap<ObjectId, u64>,
    ) -> Result<(), SourceError> {
        // The directories below ride along: a walk lists them next.
        let ahead = match &dir.snapshot {
            Some(snap) => self.ahead(snap, &dir.tree),
            None => Vec::new(),
        };
        let mut wanted: HashSet<ObjectId> = unknown.iter().copied().collect();
        for (_, blobs) in &ahead {
            wanted.extend(blobs.iter().copied());
        }
        let wanted: Vec<ObjectId> = wanted.into_iter().collect();
        let mut got = HashMap::new();
        for batch in wanted.chunks(OBJECT_INFO_BATCH) {
            let asked: HashSet<&ObjectId> = batch.iter().collect();
            let body = self
                .remote
                .command("object-info", protocol::object_info_args(batch))
                .await
                .map_err(RemoteError::into_source_error)?;
            for (oid, size) in
                protocol::parse_object_info(&body).map_err(|e| SourceError::Corrupt(e.0))?
            {
                if let (Some(s), true) = (size, asked.contains(&oid)) {
                    got.insert(oid, s);
                }
            }
        }
        for o in unknown {
            if let Some(s) = got.get(o) {
                sizes.insert(*o, *s);
            }
        }
        for (tree, blobs) in ahead {
            let theirs: HashMap<ObjectId, u64> = blobs
                .iter()
                .filter_map(|b| got.get(b).map(|s| (*b, *s)))
                .collect();
            if theirs.len() == blobs.len() {
                self.store(&tree, &theirs);
            }
        }
        Ok(())
    }

    /// Directories below `tree` whose sizes are not stored yet, breadth
    /// first, with their blobs: at most `AHEAD_BLOBS` blobs, looking at
    /// most at `AHEAD_TREES` trees.
    fn ahead(&self, snap: &Snapshot, tree: &ObjectId) -> Vec<(ObjectId, Vec<ObjectId>)> {
        let mut out = Vec::new();
        let mut queue = std::collections::VecDeque::from([*tree]);
        let (mut blobs_total, mut looked) = (0usize, 0usize);
        while let Some(t) = queue.pop_front() {
            looked += 1;
            if looked > AHEAD_TREES || blobs_total >= AHEAD_BLOBS {
                break;
            }
            let Some(data) = snap.trees.get(&t) else {
                continue;
            };
            let mut blobs = Vec::new();
            for item in gix_object::TreeRefIter::from_bytes(data, gix_hash::Kind::Sha1).flatten() {
                match item.mode.kind() {
                    EntryKind::Tree => queue.push_back(item.oid.to_owned()),
                    EntryKind::Blob | EntryKind::BlobExecutable | EntryKind::Link => {
                        blobs.push(item.oid.to_owned())
                    }
                    EntryKind::Commit => {}
                }
            }
            if t != *tree && !blobs.is_empty() && !self.cache.contains(&sizes_key(&t)) {
                blobs_total += blobs.len();
                out.push((t, blobs));
            }
        }
        out
    }

    fn api_available(&self) -> bool {
        let mut off = lock(&self.api_off_until);
        match *off {
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                *off = None;
                true
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_sizes_are_refused() {
        let a = ObjectId::from_hex(b"1111111111111111111111111111111111111111").unwrap();
        let b = ObjectId::from_hex(b"2222222222222222222222222222222222222222").unwrap();
        let data = encode(&[(a, 5), (b, 1 << 40)]);
        let m = decode(&data).unwrap();
        assert_eq!((m[&a], m[&b]), (5, 1 << 40));
        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 1;
            assert!(decode(&bad).is_none(), "flip at {i}");
        }
        assert!(decode(&data[..data.len() - 1]).is_none());
        assert!(decode(b"").is_none());
        assert!(decode(&encode(&[])).unwrap().is_empty());
    }
}
