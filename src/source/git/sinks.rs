//! The receiving ends of fetches: [`BatchSink`] stores every blob of a
//! batch as it arrives (small ones from memory, large ones streamed to a
//! cache temp file, each committed under the id its bytes hash to; the
//! blobs the disk cannot take are kept in memory) and collects trees for a
//! commit fetch; [`StreamSink`] streams one wanted blob into the file its
//! readers follow, switching to memory if the disk fills up on the way.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use gix_hash::ObjectId;
use gix_object::Kind;

use super::objects::{MAX_TREE, MEMORY_FALLBACK, MEMORY_MAX, Objects, blob_key};
use super::pack::{ObjectSink, PackError, Take};
use crate::cache::CacheWriter;
use crate::source::lock;
use crate::source::transfer::{Transfer, TransferSender, TransferState};

/// Stores what a batch fetch brings.
pub(super) struct BatchSink<'a> {
    pub(super) objects: &'a Objects,
    pub(super) wants: HashMap<ObjectId, TransferSender>,
    pub(super) got: HashMap<ObjectId, u64>,
    pub(super) stop_over: Option<u64>,
    pub(super) stopped_at: Option<u64>,
    pub(super) writer: Option<CacheWriter>,
    /// Collects commits and trees (for a commit fetch); without it, trees
    /// a server sends are read through and dropped (never held).
    pub(super) trees: Option<HashMap<ObjectId, Arc<[u8]>>>,
    /// Bytes of the trees and commits collected so far...
    pub(super) tree_bytes: u64,
    /// ...and at most (`max_tree_bytes`).
    pub(super) tree_budget: u64,
    /// A failure of the disk cache (not of the server).
    pub(super) local_error: Option<String>,
    /// When waiters were last told the fetch is alive.
    pub(super) beat: Option<std::time::Instant>,
}

fn cache_err(e: impl std::fmt::Display) -> PackError {
    PackError(format!("cannot write to the cache: {e}"))
}

impl ObjectSink for BatchSink<'_> {
    fn begin(&mut self, kind: Kind, size: u64) -> Result<Take, PackError> {
        if kind != Kind::Blob {
            if self.trees.is_none() {
                // Not asked for: read through, never held.
                return Ok(Take::Stream);
            }
            // Trees and commits are held in memory: no honest one is this
            // big, and all of a commit's together are bounded. Checked from
            // the stated size before a byte is inflated (the decoder never
            // inflates past it).
            if size > MAX_TREE {
                return Err(PackError(format!(
                    "a {kind} of {size} bytes is larger than the limit of {MAX_TREE} bytes"
                )));
            }
            self.tree_bytes = self.tree_bytes.saturating_add(size);
            if self.tree_bytes > self.tree_budget {
                return Err(PackError(format!(
                    "the commit's trees are larger than {} MiB in all (`max_tree_bytes`; raise it if the repository really has trees this large)",
                    self.tree_budget >> 20
                )));
            }
            return Ok(Take::Memory);
        }
        if self.stop_over.is_some_and(|t| size > t) {
            self.stopped_at = Some(size);
            return Ok(Take::Stop);
        }
        if size <= MEMORY_MAX {
            return Ok(Take::Memory);
        }
        match self.objects.cache.writer("pending-blob") {
            Ok(w) => {
                self.writer = Some(w);
                Ok(Take::Stream)
            }
            // No room on the disk: keep it in memory if it fits there.
            Err(_) if size <= MEMORY_FALLBACK => Ok(Take::Memory),
            Err(e) => {
                self.local_error = Some(e.to_string());
                Err(cache_err(e))
            }
        }
    }

    fn chunk(&mut self, data: &[u8]) -> Result<(), PackError> {
        match &mut self.writer {
            Some(w) => w.write_all(data).map_err(|e| {
                self.local_error = Some(e.to_string());
                cache_err(e)
            }),
            None => Ok(()),
        }
    }

    fn end(
        &mut self,
        oid: ObjectId,
        kind: Kind,
        data: Option<&Arc<[u8]>>,
    ) -> Result<(), PackError> {
        match kind {
            Kind::Blob => {
                let key = blob_key(&oid);
                let size = match (data, self.writer.take()) {
                    (Some(d), _) => {
                        if let Err(e) = self.objects.cache.insert(&key, d) {
                            self.objects.keep_in_memory(&oid, d.clone(), &e);
                        }
                        d.len() as u64
                    }
                    (None, Some(w)) => {
                        let n = w.written();
                        if let Err(e) = w.commit_as(&key) {
                            self.local_error = Some(e.to_string());
                            return Err(cache_err(e));
                        }
                        n
                    }
                    (None, None) => return Err(PackError("a streamed blob has no writer".into())),
                };
                self.objects.mark_verified(oid);
                self.got.insert(oid, size);
                if let Some(tx) = self.wants.remove(&oid) {
                    self.objects.land(&oid, &tx, TransferState::Done);
                }
            }
            Kind::Tree | Kind::Commit => {
                if let (Some(t), Some(d)) = (&mut self.trees, data) {
                    t.insert(oid, d.clone());
                }
            }
            Kind::Tag => {}
        }
        Ok(())
    }

    fn reopen(&mut self, oid: &ObjectId) -> Option<std::fs::File> {
        self.objects.cache.get(&blob_key(oid))
    }

    /// A heartbeat (at most once a second) for those waiting on blobs of
    /// this batch that have not arrived yet: the fetch is alive.
    fn progress(&mut self) {
        if self
            .beat
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.beat = Some(std::time::Instant::now());
        for tx in self.wants.values() {
            tx.send_modify(|_| {});
        }
    }
}

/// Bytes of a streamed blob held back from its readers until more (or the
/// verified end) arrived: a byte damaged on the way usually makes the
/// inflate fail within this distance, before any reader was given it, and
/// a retry then rewrites the damaged part instead of failing.
const HOLD: u64 = 64 * 1024;

/// Streams one wanted blob into its transfer's file.
pub(super) struct StreamSink<'a> {
    pub(super) objects: &'a Objects,
    pub(super) want: ObjectId,
    pub(super) writer: Option<CacheWriter>,
    pub(super) tx: &'a TransferSender,
    pub(super) transfer: &'a Transfer,
    pub(super) done: bool,
    /// A failure of the disk cache (not of the server).
    pub(super) local_error: Option<String>,
    /// Bytes of the file readers may follow (all flushed).
    pub(super) flushed: u64,
    /// Where this attempt's stream is in the blob: below `flushed` (a
    /// retry), bytes are compared with what readers may have seen.
    pub(super) pos: u64,
    /// A retry's bytes differed from the earlier attempt's where readers
    /// may have read them: not retried.
    pub(super) differs: bool,
    /// The most readers were told they may read ([`HOLD`] behind `flushed`).
    pub(super) published: u64,
    /// Two attempts disagreed: nothing more is published until the blob
    /// is verified whole (which attempt was damaged is known only then).
    pub(super) frozen: bool,
    /// The blob, once the disk could not take more of it (small ones only).
    pub(super) mem: Option<Vec<u8>>,
}

impl StreamSink<'_> {
    /// The disk is full mid-blob: a blob small enough continues in memory
    /// (what is already in the file is read back), else the fetch fails.
    fn to_memory(&mut self, data: &[u8], e: std::io::Error) -> Result<(), PackError> {
        let size = self.transfer.size.get().copied().unwrap_or(u64::MAX);
        let read_back = (size <= MEMORY_FALLBACK)
            .then(|| self.writer.as_ref().map(|w| w.path().to_owned()))
            .flatten()
            .and_then(|path| {
                let mut have = vec![0u8; self.flushed as usize];
                std::os::unix::fs::FileExt::read_exact_at(
                    &std::fs::File::open(path).ok()?,
                    &mut have,
                    0,
                )
                .ok()?;
                Some(have)
            });
        let Some(mut have) = read_back else {
            self.local_error = Some(e.to_string());
            return Err(cache_err(e));
        };
        self.objects
            .cache
            .warn_full(&format!("blob {}: {e}", self.want));
        tracing::debug!(repo = %self.objects.repo, oid = %self.want, "no room in the cache: the blob continues in memory");
        have.extend_from_slice(data);
        self.mem = Some(have);
        self.writer = None; // removes the temp file
        Ok(())
    }
}

impl StreamSink<'_> {
    /// On a retry, checks the part of `data` that readers may have seen
    /// already (below `flushed`) against what they were given, and returns
    /// the rest, which is new.
    fn replayed<'d>(&mut self, data: &'d [u8]) -> Result<&'d [u8], PackError> {
        let have = match &self.mem {
            Some(m) => m.len() as u64,
            None => self.flushed,
        };
        if self.pos >= have {
            return Ok(data);
        }
        let n = ((have - self.pos) as usize).min(data.len());
        let seen = match (&self.mem, &self.transfer.file) {
            (Some(m), _) => m[self.pos as usize..self.pos as usize + n].to_vec(),
            (None, Some(f)) => {
                let mut buf = vec![0u8; n];
                std::os::unix::fs::FileExt::read_exact_at(f, &mut buf, self.pos)
                    .map_err(cache_err)?;
                buf
            }
            (None, None) => return Err(PackError("no file to compare with".into())),
        };
        if seen != data[..n] {
            let at = self.pos
                + seen
                    .iter()
                    .zip(&data[..n])
                    .take_while(|(a, b)| a == b)
                    .count() as u64;
            match (&mut self.writer, &self.mem) {
                // The earlier attempt went wrong where no reader was
                // given its bytes: those are dropped and written again.
                (Some(w), None) if at >= self.published => {
                    tracing::warn!(repo = %self.objects.repo, oid = %self.want, at, "a blob's bytes from the attempt before were damaged past what readers were given; rewriting them");
                    w.truncate_to(at).map_err(cache_err)?;
                    self.flushed = at;
                    self.frozen = true;
                    let skip = (at - self.pos) as usize;
                    self.pos = at;
                    return Ok(&data[skip..]);
                }
                // Readers may have read the earlier bytes: this attempt is
                // given up (it may be the damaged one); another decides,
                // within the retry policy's attempts.
                _ => {
                    self.frozen = true;
                    return Err(PackError(format!(
                        "blob {}: the server sent other bytes when asked again, where readers may have read the earlier ones",
                        self.want
                    )));
                }
            }
        }
        self.pos += n as u64;
        Ok(&data[n..])
    }
}

impl ObjectSink for StreamSink<'_> {
    fn begin(&mut self, kind: Kind, size: u64) -> Result<Take, PackError> {
        if kind != Kind::Blob || self.writer.is_none() || self.done {
            return Err(PackError(format!(
                "the server sent more than the one blob {} asked for",
                self.want
            )));
        }
        if self.transfer.size.get().is_some_and(|s| *s != size) {
            self.differs = true;
            return Err(PackError(format!(
                "blob {} is {size} bytes in this answer and was not in the one before",
                self.want
            )));
        }
        let _ = self.transfer.size.set(size);
        lock(&self.objects.probed).insert(self.want, size);
        self.pos = 0;
        // Progress is never rewound (a retry starts below it).
        let _ = self.tx.send(TransferState::Progress(self.published));
        Ok(Take::Stream)
    }

    fn chunk(&mut self, data: &[u8]) -> Result<(), PackError> {
        let data = match self.replayed(data)? {
            [] => return Ok(()),
            rest => rest,
        };
        self.pos += data.len() as u64;
        if let Some(m) = &mut self.mem {
            m.extend_from_slice(data);
            // A heartbeat: readers wait for the end, not for a stall.
            let _ = self.tx.send(TransferState::Progress(self.published));
            return Ok(());
        }
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| PackError("no writer".into()))?;
        if let Err(e) = w.write_all(data).and_then(|_| w.flush()) {
            return self.to_memory(data, e);
        }
        self.flushed = w.written();
        if !self.frozen {
            self.published = self.published.max(self.flushed.saturating_sub(HOLD));
        }
        let _ = self.tx.send(TransferState::Progress(self.published));
        Ok(())
    }

    fn end(
        &mut self,
        oid: ObjectId,
        _kind: Kind,
        _data: Option<&Arc<[u8]>>,
    ) -> Result<(), PackError> {
        if oid != self.want {
            return Err(PackError(format!(
                "asked for blob {}, the server sent {oid}",
                self.want
            )));
        }
        if let Some(m) = self.mem.take() {
            // Verified (the id matched): readers switch to memory.
            let m: Arc<[u8]> = m.into();
            self.objects.memory.put(&blob_key(&oid), m.clone());
            let _ = self.transfer.memory.set(m);
            self.done = true;
            return Ok(());
        }
        let w = self
            .writer
            .take()
            .ok_or_else(|| PackError("no writer".into()))?;
        if let Err(e) = w.commit_as(&blob_key(&oid)) {
            self.local_error = Some(e.to_string());
            return Err(cache_err(e));
        }
        self.objects.mark_verified(oid);
        self.done = true;
        Ok(())
    }
}
