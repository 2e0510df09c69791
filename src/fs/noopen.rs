//! No-open reads: `open` answers ENOSYS once, and from then on the kernel
//! sends no open, flush or release for the mount and keeps every file's
//! pages across opens (`FOPEN_KEEP_CACHE`). A warm `cat` then costs the
//! daemon nothing at all. It fits mounts whose inodes never change
//! contents (an inode always stands for one node key, see `table.rs`).
//!
//! Reads of pages the kernel lacks still come here, naming only the inode
//! (file handle 0). Their readers are kept per inode in the open-file
//! table, under a key no real handle uses, so `repofs status` still sees
//! transfers in flight; at most `KEPT` of them at once (each may hold a
//! descriptor), the oldest dropped first.
//!
//! A file listed longer than it is: the kernel learns its true size from
//! the short answer for the pages holding its end (it then shrinks the
//! file itself). Telling it earlier would be worse: readahead requests
//! already sent would no longer shrink it, and the reader would see zeros
//! up to the listed size. So nothing is invalidated, and a readahead
//! request lying wholly past the true end is answered EIO (the kernel
//! drops it), never empty: an empty answer processed before the one for
//! the end would set the size to that request's start. A file listed
//! shorter has its attributes invalidated before the first read is
//! answered, so the reader's next `read` past the old end asks for the
//! new size.
//!
//! Nothing says when a file is closed, so a reader unused for `IDLE` is
//! dropped: its descriptor would keep a file the cache evicted on the disk.
//!
//! Bytes served while a file is still arriving are not verified yet. The
//! kernel would keep them, so such a reader is replaced by the cache's
//! verified file once its transfer is complete, and if it fails or is
//! dropped first the kernel is told to forget the file's pages.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::INodeNo;

use super::{RepoFs, observe};
use crate::source::{FileReader, NodeKind, SourceError, lock};

/// Open-file table keys of no-open readers: the inode with the top bit set
/// (real handles count up from 1).
const NO_OPEN: u64 = 1 << 63;
/// Readers kept at once.
const KEPT: usize = 512;
/// Readers unused this long are dropped.
const IDLE: Duration = Duration::from_secs(2);

type Reader = Arc<dyn FileReader>;

#[derive(Default)]
pub(super) struct NoOpen {
    /// Chosen at `init`.
    pub(super) enabled: AtomicBool,
    /// Inodes with a kept reader, oldest first.
    order: Mutex<VecDeque<u64>>,
    /// True sizes of files the kernel was told were longer.
    shrunk: Mutex<HashMap<u64, u64>>,
}

impl RepoFs {
    /// The reader for a read that came without an open, and the file's
    /// true size if the kernel was told it was longer.
    pub(super) fn no_open_reader(&self, ino: u64) -> Result<(Reader, Option<u64>), SourceError> {
        let kept = observe::read(&self.handles).get(&(NO_OPEN | ino)).map(|f| {
            f.last_read.store(observe::ticks(), Ordering::Relaxed);
            (f.reader.clone(), f.shrunk_to)
        });
        match kept {
            // Arrived and verified: read the cache's copy from now on.
            Some((r, _)) if !r.cacheable() && r.complete() => {
                observe::write(&self.handles).remove(&(NO_OPEN | ino));
            }
            Some(kept) => return Ok(kept),
            None => {}
        }
        let node = self.node(ino)?;
        let NodeKind::File { size, .. } = node.kind else {
            return Err(SourceError::NotFound("not a file".into()));
        };
        let reader = self.source.open(&node)?;
        match reader.size() {
            Some(real) if real > size => self.correct_size_in_read(ino, real),
            Some(real) if real < size => {
                // Recorded before the inode's size changes: a reader made
                // meanwhile must see it.
                lock(&self.no_open.shrunk).insert(ino, real);
                self.set_size(ino, real);
            }
            _ => {}
        }
        let shrunk_to = lock(&self.no_open.shrunk).get(&ino).copied();
        let file = observe::OpenFile {
            done_at_open: reader.progress().map(|p| p.0).unwrap_or(0),
            reader: reader.clone(),
            ino,
            opened: std::time::Instant::now(),
            passthrough: false,
            shrunk_to,
            last_read: observe::ticks().into(),
        };
        let dropped = {
            let mut order = lock(&self.no_open.order);
            order.push_back(ino);
            let excess = order.len().saturating_sub(KEPT);
            order.drain(..excess).collect::<Vec<_>>()
        };
        let mut unverified = Vec::new();
        {
            let mut handles = observe::write(&self.handles);
            handles.insert(NO_OPEN | ino, file);
            for old in dropped.into_iter().filter(|o| *o != ino) {
                if let Some(f) = handles.remove(&(NO_OPEN | old)) {
                    if !f.reader.cacheable() {
                        unverified.push(old);
                    }
                }
            }
        }
        for old in unverified {
            self.invalidate(old, true);
        }
        self.prefetch_beside(ino);
        Ok((reader, shrunk_to))
    }

    /// A read without an open failed: the next one starts afresh, and what
    /// the kernel kept of a transfer that failed is not to be trusted.
    pub(super) fn no_open_failed(&self, ino: u64) {
        let gone = observe::write(&self.handles).remove(&(NO_OPEN | ino));
        if gone.is_some_and(|f| !f.reader.cacheable()) {
            self.invalidate(ino, true);
        }
    }

    /// Starts the thread that drops readers unused for `IDLE`; it ends
    /// with the mount.
    pub(super) fn sweep_idle_readers(&self) {
        let handles = Arc::downgrade(&self.handles);
        let notifier = self.notifier.clone();
        let spawned = std::thread::Builder::new()
            .name("repofs-idle".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(IDLE / 2);
                    let Some(handles) = handles.upgrade() else {
                        return;
                    };
                    let now = observe::ticks();
                    let idle = IDLE.as_millis() as u64;
                    let mut unverified = Vec::new();
                    observe::write(&handles).retain(|key, f| {
                        let keep = key & NO_OPEN == 0
                            || now.saturating_sub(f.last_read.load(Ordering::Relaxed)) < idle;
                        if !keep && !f.reader.cacheable() {
                            unverified.push(f.ino);
                        }
                        keep
                    });
                    if let Some(n) = notifier.get() {
                        for ino in unverified {
                            let _ = n.inval_inode(INodeNo(ino), 0, 0);
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no thread to drop idle readers ({e}): at most {KEPT} stay open");
        }
    }

    /// Inodes the kernel forgot need no reader.
    pub(super) fn no_open_forget(&self, gone: &[u64]) {
        {
            let mut handles = observe::write(&self.handles);
            for ino in gone {
                handles.remove(&(NO_OPEN | ino));
            }
        }
        let mut shrunk = lock(&self.no_open.shrunk);
        if !shrunk.is_empty() {
            for ino in gone {
                shrunk.remove(ino);
            }
        }
    }

    /// A file is longer than listed, found by a read: its attributes are
    /// invalidated before the read is answered (an attributes-only
    /// invalidation takes no page lock), so the reader's next `read` past
    /// the old size asks for the new one instead of ending the file early.
    /// The pages read so far hold true bytes.
    fn correct_size_in_read(&self, ino: u64, real: u64) {
        self.set_size(ino, real);
        if let Some(n) = self.notifier.get() {
            let _ = n.inval_inode(INodeNo(ino), -1, 0);
        }
    }
}
