//! Object fetching: every blob is fetched at most once at a time, however
//! many readers, listings and prefetches want it, and goes straight from the
//! pack stream into the cache.
//!
//! - A blob in flight is a [`Transfer`] in `flights`; whoever wants it while
//!   it is there waits on it instead of asking the server again.
//! - Batches (prefetch, pointer checks) are one `fetch` for many ids; small
//!   blobs are collected in memory, larger ones streamed to a cache temp
//!   file, each committed under its id once the id computed from its bytes
//!   matched.
//! - A large blob opened for reading is fetched alone and streamed, so its
//!   reader gets the first bytes before the blob is complete (and the end
//!   only after the id matched).
//! - A size probe asks for a directory's blobs and reads the pack only up to
//!   the first large object's header; each remaining large blob is then
//!   sized by a request of its own that also stops at its header. The
//!   contents of a large blob are never downloaded to learn its size.
//!
//! Fetches run as tasks, so a caller that gives up never cancels a fetch
//! others wait on; no lock is held across network I/O.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use gix_hash::ObjectId;

use super::pack::Limits;
use super::protocol;
use super::remote::Remote;
use super::sinks::BatchSink;
use crate::cache::Cache;
use crate::source::transfer::{Transfer, TransferSender, TransferState};
use crate::source::{SourceError, lock};

mod commit;
mod probe;
mod stream;

/// Most ids in one `fetch`.
pub const BATCH: usize = 1000;
/// Blobs up to this size are collected in memory; larger ones are streamed.
pub(super) const MEMORY_MAX: u64 = 1 << 20;
/// When the disk cache cannot take a blob, blobs up to this size are kept
/// in memory instead (up to `MEMORY_STORE` bytes in all).
pub(super) const MEMORY_FALLBACK: u64 = 64 << 20;
const MEMORY_STORE: u64 = 256 << 20;
/// Blob ids remembered as verified, at most.
const VERIFIED_MAX: usize = 20_000;
/// Largest tree or commit accepted (they are held in memory; all of a
/// commit's together are bounded by `max_tree_bytes`).
pub(super) const MAX_TREE: u64 = 64 << 20;

pub fn blob_key(oid: &ObjectId) -> String {
    format!("git-{oid}")
}

/// How an opened blob is read.
pub enum Opened {
    /// Complete and verified in the cache.
    File(std::fs::File),
    /// Arriving: follow the transfer (its file grows); `u64` is the size.
    Streaming(Arc<Transfer>, u64),
    /// Verified, held in memory (the disk cache could not take it).
    Memory(Arc<[u8]>),
}

/// The object fetcher of one repository.
pub struct Objects {
    me: Weak<Objects>,
    pub(super) repo: String,
    remote: Arc<Remote>,
    pub(super) cache: Arc<Cache>,
    rt: tokio::runtime::Handle,
    flights: Mutex<HashMap<ObjectId, Arc<Transfer>>>,
    pub(super) verified: Mutex<HashSet<ObjectId>>,
    /// Sizes of large blobs learned by probes (their contents were not fetched).
    pub(super) probed: Mutex<HashMap<ObjectId, u64>>,
    /// Blobs the disk cache could not take.
    pub(super) memory: crate::cache::Memory,
    pub(super) stall_limit: Duration,
    /// The fleet's shared cache tier, asked before the origin.
    pub(super) shared: Option<Arc<crate::shared::Shared>>,
    /// The most bytes of trees one commit fetch may hold (`max_tree_bytes`).
    tree_budget: u64,
}

impl Objects {
    pub fn new(
        repo: &str,
        remote: Arc<Remote>,
        cache: Arc<Cache>,
        rt: tokio::runtime::Handle,
        stall_limit: Duration,
        shared: Option<Arc<crate::shared::Shared>>,
        tree_budget: u64,
    ) -> Arc<Objects> {
        Arc::new_cyclic(|me| Objects {
            me: me.clone(),
            repo: repo.to_string(),
            remote,
            cache,
            rt,
            flights: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashSet::new()),
            probed: Mutex::new(HashMap::new()),
            memory: crate::cache::Memory::new(MEMORY_STORE),
            stall_limit,
            shared,
            tree_budget,
        })
    }

    pub fn limits(&self) -> Limits {
        Limits {
            // Nothing larger than the cache could be kept anyway.
            max_object: self.cache.stats().cap.max(1 << 20),
            ..Limits::default()
        }
    }

    /// The cached blob, checked against its id once per process (a damaged
    /// file is removed and `None` returned).
    pub fn cached(&self, oid: &ObjectId) -> Option<std::fs::File> {
        let mut file = self.cache.get(&blob_key(oid))?;
        if lock(&self.verified).contains(oid) || verify_file(oid, &file) {
            self.mark_verified(*oid);
            // Verifying read the file through its cursor: start over.
            use std::io::Seek;
            file.seek(std::io::SeekFrom::Start(0)).ok()?;
            return Some(file);
        }
        tracing::warn!(repo = %self.repo, %oid, "cached blob is damaged; fetching it again");
        self.cache.remove(&blob_key(oid));
        None
    }

    /// Remembers that a cached blob matched its id. The set is bounded: past
    /// [`VERIFIED_MAX`] it starts over (a blob forgotten is hashed again
    /// when next opened), so a million blobs do not stay in memory.
    pub(super) fn mark_verified(&self, oid: ObjectId) {
        let mut v = lock(&self.verified);
        if v.len() >= VERIFIED_MAX {
            v.clear();
        }
        v.insert(oid);
    }

    /// The size of a cached blob (trusted as far as the file system; a
    /// damaged file is caught when it is opened).
    pub fn cached_size(&self, oid: &ObjectId) -> Option<u64> {
        if let Some(m) = self.memory.get(&blob_key(oid)) {
            return Some(m.len() as u64);
        }
        self.cache.size_of(&blob_key(oid))
    }

    /// Registers flights for the ids nobody is fetching yet; returns those
    /// (ours to fetch) and the transfers already under way for the others.
    #[allow(clippy::type_complexity)]
    fn claim(
        &self,
        oids: &[ObjectId],
    ) -> (
        Vec<(ObjectId, TransferSender)>,
        Vec<(ObjectId, Arc<Transfer>)>,
    ) {
        let mut owned = Vec::new();
        let mut waiting = Vec::new();
        let mut flights = lock(&self.flights);
        let mut seen = HashSet::new();
        for oid in oids {
            if !seen.insert(*oid) || self.have(oid) {
                continue;
            }
            match flights.get(oid) {
                Some(t) if t.alive() => waiting.push((*oid, t.clone())),
                _ => {
                    let (tx, t) = Transfer::new(None);
                    flights.insert(*oid, t);
                    owned.push((*oid, tx));
                }
            }
        }
        (owned, waiting)
    }

    /// Whether the blob is at hand (disk cache or memory).
    pub fn have(&self, oid: &ObjectId) -> bool {
        self.memory.contains(&blob_key(oid)) || self.cache.contains(&blob_key(oid))
    }

    /// Blobs being fetched (or sized) now.
    pub fn in_flight(&self) -> u64 {
        lock(&self.flights).len() as u64
    }

    /// Keeps a verified blob the disk cache refused, in memory.
    pub(super) fn keep_in_memory(
        &self,
        oid: &ObjectId,
        data: Arc<[u8]>,
        why: &dyn std::fmt::Display,
    ) {
        self.cache.warn_full(&format!("blob {oid}: {why}"));
        tracing::debug!(repo = %self.repo, %oid, "no room in the cache: the blob is served from memory ({why})");
        self.memory.put(&blob_key(oid), data);
    }

    /// Ends a fetch from the origin: a blob it brought is also offered to
    /// the shared tier.
    pub(super) fn land(&self, oid: &ObjectId, tx: &TransferSender, state: TransferState) {
        if matches!(state, TransferState::Done) {
            self.share(oid);
        }
        self.finish_flight(oid, tx, state);
    }

    /// Tells the flight's waiters how it ended and retires it.
    pub(super) fn finish_flight(&self, oid: &ObjectId, tx: &TransferSender, state: TransferState) {
        let _ = tx.send(state);
        let mut flights = lock(&self.flights);
        // Only remove the flight if it is still this sender's.
        if flights
            .get(oid)
            .is_some_and(|t| t.state.same_channel(&tx.subscribe()))
        {
            flights.remove(oid);
        }
    }

    /// Makes sure the blobs are in the cache: fetches the missing ones (in
    /// batches, as tasks) and waits for those others are fetching.
    pub async fn ensure(&self, oids: &[ObjectId]) -> Result<(), SourceError> {
        let (owned, mut waiting) = self.claim(oids);
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| SourceError::Unavailable("shutting down".into()))?;
        let mut owned = owned.into_iter();
        loop {
            let batch: Vec<_> = owned.by_ref().take(BATCH).collect();
            if batch.is_empty() {
                break;
            }
            // Waiters follow the flights; the task outlives an impatient caller.
            waiting.extend(batch.iter().map(|(o, tx)| (*o, Transfer::follow(tx))));
            let me = me.clone();
            self.rt.spawn(async move {
                let rest = me.from_shared(batch).await;
                if !rest.is_empty() {
                    me.fetch_batch(rest, None).await;
                }
            });
        }
        for (_, t) in waiting {
            t.finished(self.stall_limit).await?;
        }
        Ok(())
    }

    /// Lands what the fleet's shared tier has of `oids` (nothing without a
    /// tier); the origin is not asked. The tier's copies go to the cache
    /// (never whole into memory), so their true sizes are then at hand.
    pub async fn from_shared_only(&self, oids: &[ObjectId]) {
        if self.shared.is_none() {
            return;
        }
        let (owned, _others) = self.claim(oids);
        let Some(me) = self.me.upgrade() else {
            return;
        };
        // A task: a caller that gives up must not leave flights unfinished.
        let _ = self
            .rt
            .spawn(async move {
                for (oid, tx) in me.from_shared(owned).await {
                    // Not in the tier: whoever waits looks again.
                    me.finish_flight(&oid, &tx, TransferState::Released);
                }
            })
            .await;
    }

    /// One fetch for `wants`, each landed as it arrives. With `stop_over`,
    /// reading stops at the first blob larger than that (a size probe): the
    /// stopping entry's size and the blobs received are returned.
    ///
    /// A fetch that fails on the way (cut, trickle, damaged pack, 5xx) is
    /// asked again for the blobs that had not arrived only: those received
    /// and verified are kept. An attempt that brought any blob earns a
    /// fresh set of attempts (each such retry asks for fewer blobs, so this
    /// ends); the pause between attempts is the retry policy's.
    async fn fetch_batch(
        &self,
        wants: Vec<(ObjectId, TransferSender)>,
        stop_over: Option<u64>,
    ) -> (HashMap<ObjectId, u64>, Option<u64>, Option<SourceError>) {
        use crate::fetch::Retryable;
        let order: Vec<ObjectId> = wants.iter().map(|(o, _)| *o).collect();
        let asked = order.len();
        let mut wants: HashMap<ObjectId, TransferSender> = wants.into_iter().collect();
        let mut got = HashMap::new();
        let mut stopped_at: Option<u64>;
        let mut failed = 0u32;
        let error = loop {
            // In the order asked: servers send wants in that order, which
            // a size probe relies on.
            let ids: Vec<ObjectId> = order
                .iter()
                .filter(|o| wants.contains_key(*o))
                .copied()
                .collect();
            tracing::debug!(repo = %self.repo, wants = ids.len(), first = ?ids.first(), probe = stop_over.is_some(), "fetching blobs");
            let mut sink = BatchSink {
                objects: self,
                wants: std::mem::take(&mut wants),
                got: HashMap::new(),
                stop_over,
                stopped_at: None,
                writer: None,
                trees: None,
                tree_bytes: 0,
                tree_budget: 0,
                local_error: None,
                beat: None,
            };
            let result = self
                .remote
                .fetch(
                    protocol::fetch_args(&ids, false, false),
                    self.limits(),
                    &mut sink,
                )
                .await;
            let progressed = !sink.got.is_empty();
            got.extend(sink.got.drain());
            wants = std::mem::take(&mut sink.wants);
            stopped_at = sink.stopped_at;
            let e = match result {
                Ok(_) => break None,
                // The disk, not the server: say so.
                Err(_) if sink.local_error.is_some() => {
                    break Some(SourceError::Unavailable(format!(
                        "cannot store fetched blobs: {}",
                        sink.local_error.unwrap_or_default()
                    )));
                }
                Err(e) => e,
            };
            if progressed {
                failed = 0;
            }
            failed += 1;
            let pause = (e.retryable() && !wants.is_empty())
                .then(|| self.remote.transport.policy.pause(failed, e.retry_after()))
                .flatten();
            match pause {
                Some(d) => {
                    tracing::warn!(repo = %self.repo, asked, received = got.len(), left = wants.len(), "fetch failed: {e}; asking again for the {} blobs that did not arrive in {d:?}", wants.len());
                    tokio::time::sleep(d).await;
                }
                None => {
                    tracing::warn!(repo = %self.repo, asked, left = wants.len(), "fetch failed: {e}");
                    break Some(e.into_source_error());
                }
            }
        };
        let stopped = stopped_at.is_some();
        if let (Some(size), [only]) = (stopped_at, &order[..]) {
            // Alone in its request: the entry we stopped at is this blob.
            lock(&self.probed).insert(*only, size);
        }
        for (oid, tx) in wants {
            let state = match &error {
                Some(e) => TransferState::Failed(e.clone()),
                None if stopped => TransferState::Released,
                None => TransferState::Failed(SourceError::Corrupt(format!(
                    "the server did not send blob {oid}"
                ))),
            };
            self.land(&oid, &tx, state);
        }
        (got, stopped_at, error)
    }

    /// Opens a blob: from the cache, by joining a fetch in flight, or by
    /// starting one (streamed when `size` says it is large).
    pub async fn open(&self, oid: ObjectId, size: u64) -> Result<Opened, SourceError> {
        // Joining a probe's flight ends in `Released` quickly; a few rounds
        // are plenty, and every round either starts a fetch or joins one.
        for _ in 0..8 {
            if let Some(m) = self.memory.get(&blob_key(&oid)) {
                return Ok(Opened::Memory(m));
            }
            if let Some(f) = self.cached(&oid) {
                return Ok(Opened::File(f));
            }
            let (transfer, start) = {
                let mut flights = lock(&self.flights);
                if self.have(&oid) {
                    // Landed between the checks above and this lock.
                    continue;
                }
                match flights.get(&oid) {
                    Some(t) if t.alive() => (t.clone(), None),
                    _ => {
                        let streamed = if size > MEMORY_MAX {
                            match self.cache.writer("pending-blob").and_then(|w| {
                                let f = std::fs::File::open(w.path()).map_err(|e| {
                                    crate::cache::CacheError::Io {
                                        path: w.path().to_owned(),
                                        source: e,
                                    }
                                })?;
                                Ok((f, w))
                            }) {
                                Ok(fw) => Some(fw),
                                // No room on the disk: fetch it into memory if it fits there.
                                Err(e) if size <= MEMORY_FALLBACK => {
                                    self.cache.warn_full(&format!("blob {oid}: {e}"));
                                    None
                                }
                                Err(e) => {
                                    return Err(SourceError::Unavailable(format!(
                                        "cannot cache blob {oid} ({size} bytes, too large to serve from memory): {e}"
                                    )));
                                }
                            }
                        } else {
                            None
                        };
                        let (file, writer) = match streamed {
                            Some((f, w)) => (Some(f), Some(w)),
                            None => (None, None),
                        };
                        let (tx, t) = Transfer::new(file);
                        flights.insert(oid, t.clone());
                        (t, Some((tx, writer)))
                    }
                }
            };
            if let Some((tx, writer)) = start {
                let me = self
                    .me
                    .upgrade()
                    .ok_or_else(|| SourceError::Unavailable("shutting down".into()))?;
                let t = transfer.clone();
                self.rt.spawn(async move {
                    match writer {
                        Some(w) => {
                            if !me.streamed_from_shared(oid, &tx, &t).await {
                                me.fetch_streaming(oid, tx, w, t).await
                            }
                        }
                        None => {
                            let rest = me.from_shared(vec![(oid, tx)]).await;
                            if !rest.is_empty() {
                                me.fetch_batch(rest, None).await;
                            }
                        }
                    }
                });
            }
            if transfer.file.is_some() {
                // The pack entry's header gives the exact size before any byte.
                let t = transfer.clone();
                transfer
                    .wait(self.stall_limit, move |_| t.size.get().is_some())
                    .await?;
                let real = transfer.size.get().copied().unwrap_or(size);
                return Ok(Opened::Streaming(transfer, real));
            }
            transfer.finished(self.stall_limit).await?;
        }
        Err(SourceError::Unavailable(format!(
            "blob {oid} could not be stored in the cache"
        )))
    }
}

/// Whether a cache file's contents hash to `oid`.
pub fn verify_file(oid: &ObjectId, file: &std::fs::File) -> bool {
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return false;
    };
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
    let interrupt = std::sync::atomic::AtomicBool::new(false);
    matches!(
        gix_object::compute_stream_hash(
            gix_hash::Kind::Sha1,
            gix_object::Kind::Blob,
            &mut reader,
            len,
            &mut gix_utils::progress::Discard,
            &interrupt,
        ),
        Ok(h) if &h == oid
    )
}
