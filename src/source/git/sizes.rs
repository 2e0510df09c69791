//! Exact sizes of a directory's blobs, from the cheapest source that has
//! them, kept on disk per tree so a restart costs no request:
//!
//! 1. the stored `sizes-<tree>` entry (checksummed: a damaged one is
//!    dropped and the sizes asked for again);
//! 2. blobs already in the cache tell their own size;
//! 3. protocol-v2 `object-info`, when the server advertises it (and then,
//!    in the background, for the directories below: `ahead.rs`);
//! 4. the host's API ([`HostApi`]), unless it failed recently (a rate limit
//!    turns it off until the limit resets);
//! 5. a streamed size probe over git itself ([`Objects::probe`]), which
//!    never downloads a large blob to learn its size.
//!
//! Sizes from an API are checked when contents arrive (see `GitSource::open`).

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gix_hash::ObjectId;
use sha2::Digest;

use super::ahead;
use super::hosts::{ApiError, DirRef, HostApi};
use super::objects::Objects;
use super::remote::Remote;
use super::transport::RemoteError;
use crate::cache::Cache;
use crate::source::{SourceError, lock};

/// Blobs up to this size are fetched by the probe (the prefetch).
pub const PROBE_KEEP: u64 = 256 * 1024;
const MAGIC: &[u8; 8] = b"RFSSIZE1";

/// Stores a directory's sizes (`sizes-<tree>`).
pub(super) fn store(cache: &Cache, repo: &str, tree: &ObjectId, sizes: &HashMap<ObjectId, u64>) {
    let mut v: Vec<(ObjectId, u64)> = sizes.iter().map(|(o, s)| (*o, *s)).collect();
    v.sort();
    if let Err(e) = cache.insert(&sizes_key(tree), &encode(&v)) {
        tracing::debug!(repo, "cannot store sizes: {e}");
    }
}

pub(super) fn sizes_key(tree: &ObjectId) -> String {
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
    pub(super) repo: String,
    pub(super) cache: Arc<Cache>,
    pub(super) remote: Arc<Remote>,
    objects: Arc<Objects>,
    api: HostApi,
    /// The API is not asked again before this instant.
    api_off_until: Mutex<Option<Instant>>,
    last_warning: Mutex<Option<Instant>>,
    /// Sizes the contents proved wrong, by blob: override anything stored.
    corrections: Mutex<HashMap<ObjectId, u64>>,
    /// Directories whose sizes a background request is learning.
    pub(super) ahead: ahead::Flights,
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
            ahead: ahead::Flights::default(),
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

    /// Whether the sizes of `tree` are stored (listing it costs no request
    /// for them).
    pub fn known(&self, tree: &ObjectId) -> bool {
        self.cache.contains(&sizes_key(tree))
    }

    pub fn store(&self, tree: &ObjectId, sizes: &HashMap<ObjectId, u64>) {
        store(&self.cache, &self.repo, tree, sizes);
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
        self.wait_ahead(&dir.tree).await;
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
            if dir.snapshot.is_some() && self.answers_object_info() {
                self.start_ahead(dir);
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
            for (oid, size) in ahead::object_info(&self.remote, &unknown).await? {
                sizes.insert(oid, size);
            }
            self.start_ahead(dir);
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

    /// Whether the server answers `object-info`, as far as is known
    /// without asking (a listing never waits for an unreachable server).
    fn answers_object_info(&self) -> bool {
        self.remote
            .known_capabilities()
            .is_some_and(|c| c.object_info)
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
