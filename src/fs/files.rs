//! Opening and reading files, in each read mode (`file_reads`): an open
//! answered with a handle (kernel passthrough when the contents are a
//! complete cache file), or ENOSYS once for reads without open; a read
//! served from the handle's reader or, without open, from the reader kept
//! for the inode (`noopen.rs`), into a per-thread buffer.

use std::sync::atomic::Ordering;

use fuser::{Errno, FileHandle, FopenFlags, INodeNo, OpenFlags, ReplyData, ReplyOpen};

use super::RepoFs;
use super::observe::{self, Op};
use crate::source::NodeKind;

impl RepoFs {
    pub(super) fn open_file(&self, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let t = self.ops.start(Op::Open);
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            reply.error(t.error(Errno::EROFS));
            return;
        }
        let node = match self.node(ino.0) {
            Ok(n) => n,
            Err(e) => return reply.error(self.fail(&t, "open", ino.0, None, &e)),
        };
        if !matches!(node.kind, NodeKind::File { .. }) {
            reply.error(t.error(Errno::EISDIR));
            return;
        }
        if self.no_open.enabled.load(Ordering::Relaxed) {
            // Once: the kernel sends no more opens (not an error to the caller).
            reply.error(Errno::ENOSYS);
            return;
        }
        match self.source.open(&node) {
            Ok(reader) => {
                let mut corrected = false;
                if let (Some(real), NodeKind::File { size, .. }) = (reader.size(), node.kind) {
                    if real != size {
                        self.correct_size(ino.0, real);
                        corrected = true;
                    }
                }
                let keep = {
                    let mut pages = self.page_source.lock().unwrap_or_else(|p| p.into_inner());
                    let now = reader.cacheable().then(|| node.key.clone());
                    let keep = match pages.get(&ino.0) {
                        None => true, // nothing cached yet
                        Some(before) => now.is_some() && *before == now,
                    };
                    pages.insert(ino.0, now);
                    keep
                };
                // Complete local contents go to the kernel directly.
                let local = if corrected { None } else { reader.local_file() };
                let backing = self.backings.open(ino.0, local, &reply);
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                let file = observe::OpenFile {
                    done_at_open: reader.progress().map(|p| p.0).unwrap_or(0),
                    reader,
                    ino: ino.0,
                    opened: std::time::Instant::now(),
                    passthrough: backing.is_some(),
                    shrunk_to: None,
                    last_read: Default::default(),
                };
                observe::write(&self.handles).insert(fh, file);
                self.prefetch_beside(ino.0);
                if let Some(id) = backing {
                    self.ops.passthrough.increment(1);
                    return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                }
                let flags = if corrected {
                    // The kernel may still hold the listed size: direct I/O
                    // reads past it, so this open sees every true byte.
                    FopenFlags::FOPEN_DIRECT_IO
                } else if self.source.immutable() && keep {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), flags);
            }
            Err(e) => reply.error(self.fail(&t, "open", ino.0, None, &e)),
        }
    }

    pub(super) fn read_file(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) {
        let t = self.ops.start(Op::Read);
        // No open (file handle 0): the reader kept for the inode.
        let no_open = fh.0 == 0 && self.no_open.enabled.load(Ordering::Relaxed);
        let mut covers_shrunk_end = false;
        let reader = if no_open {
            match self.no_open_reader(ino.0) {
                Ok((_, Some(end))) if offset >= end => {
                    // See `noopen.rs`: never an empty answer here.
                    return reply.error(t.error(Errno::EIO));
                }
                Ok((r, end)) => {
                    covers_shrunk_end =
                        end.is_some_and(|e| offset.saturating_add(u64::from(size)) >= e);
                    r
                }
                Err(e) => return reply.error(self.fail(&t, "read", ino.0, None, &e)),
            }
        } else {
            // Readers share the table; only open and release write it.
            let reader = observe::read(&self.handles)
                .get(&fh.0)
                .map(|f| f.reader.clone());
            let Some(reader) = reader else {
                reply.error(t.error(Errno::EBADF));
                return;
            };
            reader
        };
        let failed =
            observe::with_read_buffer(size as usize, |buf| match reader.read_into(offset, buf) {
                Ok(n) => {
                    self.ops.served.increment(n as u64);
                    reply.data(&buf[..n]);
                    None
                }
                Err(e) => Some((e, reply)),
            });
        match failed {
            // The kernel shrank the file with that answer: now `stat` may
            // learn the true size too.
            None if covers_shrunk_end => self.invalidate(ino.0, false),
            None => {}
            Some((e, reply)) => {
                if no_open {
                    self.no_open_failed(ino.0);
                }
                reply.error(self.fail(&t, "read", ino.0, None, &e))
            }
        }
    }
}
