//! What the filesystem operations share: node attributes, failures
//! reported and answered, size corrections, forgetting inodes, the
//! prefetch hint, and the views the daemon keeps of a mount.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use fuser::{Errno, FileAttr, FileType, INodeNo};

use super::{LastError, Monitor, ROOT, RepoFs, TRIM_EVERY, observe};
use crate::source::{Node, NodeKind, SourceError, lock};

impl RepoFs {
    /// The last failure this mount answered with (shared with the daemon).
    pub fn last_error(&self) -> LastError {
        self.reporter.last.clone()
    }

    /// Reading a file is the hint that its directory's other small files
    /// will be read too (`grep -r`, builds); listing one is not.
    pub(super) fn prefetch_beside(&self, ino: u64) {
        let parent = self.read_table().inodes.get(&ino).map(|i| i.parent);
        if let Some(dir) = parent.and_then(|p| self.node(p).ok()) {
            self.source.prefetch(&dir);
        }
    }

    /// A directory's entries and its parent's inode.
    pub(super) fn listing(
        &self,
        ino: u64,
    ) -> Result<(Arc<Vec<crate::source::Entry>>, u64), SourceError> {
        let entries = self.node(ino).and_then(|n| self.source.list(&n))?;
        let parent = self
            .read_table()
            .inodes
            .get(&ino)
            .map(|i| i.parent)
            .unwrap_or(ROOT);
        Ok((entries, parent))
    }

    /// Takes back the kernel's lookups; forgotten inodes leave the table.
    pub(super) fn forget_inodes(&self, list: &[(u64, u64)]) {
        let mut gone = Vec::new();
        let mut t = self.write_table();
        for &(ino, n) in list {
            if t.forget(ino, n) {
                gone.push(ino);
            }
        }
        // What is kept per inode goes before the table lock is let go: the
        // number may be given to another file right after.
        if !gone.is_empty() {
            let mut pages = lock(&self.page_source);
            for ino in &gone {
                pages.remove(ino);
            }
            drop(pages);
            if self.no_open.enabled.load(Ordering::Relaxed) {
                self.no_open_forget(&gone);
            }
        }
        drop(t);
        // The allocator keeps freed memory in its arenas: after the kernel
        // dropped many inodes, hand it back to the system.
        let before = self
            .forgotten
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
        if before / TRIM_EVERY != (before + gone.len() as u64) / TRIM_EVERY {
            // SAFETY: malloc_trim only releases free memory; any thread may call it.
            std::thread::spawn(|| unsafe { libc::malloc_trim(0) });
        }
    }

    /// A view of the open files, for `repofs status`.
    pub fn monitor(&self) -> Monitor {
        Monitor {
            table: self.table.clone(),
            handles: self.handles.clone(),
        }
    }

    /// The ids published as extended attributes. The kernel allows
    /// `user.*` attributes only on files and directories.
    pub(super) fn ids(&self, node: &Node, ino: u64) -> Vec<(&'static str, String)> {
        match node.kind {
            NodeKind::Symlink { .. } => Vec::new(),
            _ => self.source.ids(node, ino == ROOT),
        }
    }

    /// Where the daemon puts the session's notifier after mounting.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// The source found a file's true size differs from what was listed:
    /// fix the inode and make the kernel forget the attributes it cached.
    pub(super) fn correct_size(&self, ino: u64, real: u64) {
        self.set_size(ino, real);
        self.invalidate(ino, true);
    }

    /// Makes the kernel forget the attributes it cached of `ino`, and with
    /// `pages` its pages too. Sent from another thread: the kernel may hold
    /// locks (of those very pages) for the request being answered.
    pub(super) fn invalidate(&self, ino: u64, pages: bool) {
        if let Some(n) = self.notifier.get().cloned() {
            std::thread::spawn(move || {
                let _ = n.inval_inode(INodeNo(ino), if pages { 0 } else { -1 }, 0);
            });
        }
    }

    /// Records a file's true size in its inode.
    pub(super) fn set_size(&self, ino: u64, real: u64) {
        let mut t = self.write_table();
        if let Some(Some(n)) = t.inodes.get_mut(&ino).map(|i| i.node.as_mut()) {
            if let NodeKind::File { size, .. } = &mut n.kind {
                *size = real;
            }
        }
    }

    pub(super) fn fail(
        &self,
        t: &observe::Timer,
        op: &str,
        ino: u64,
        name: Option<&OsStr>,
        e: &SourceError,
    ) -> Errno {
        let mut path = self.path_of(ino);
        if let Some(n) = name {
            path.push(n);
        }
        self.reporter.report(self.source.name(), op, &path, e);
        t.error(Errno::from_i32(e.errno()))
    }

    pub(super) fn attr(&self, ino: u64, node: Option<&Node>) -> FileAttr {
        let (kind, size, perm, mtime) = match node.map(|n| (n.kind, n.mtime)) {
            None => (FileType::Directory, 0, 0o555, SystemTime::UNIX_EPOCH),
            Some((NodeKind::Dir, m)) => (FileType::Directory, 0, 0o555, m),
            Some((NodeKind::File { size, executable }, m)) => (
                FileType::RegularFile,
                size,
                if executable { 0o555 } else { 0o444 },
                m,
            ),
            Some((NodeKind::Symlink { size }, m)) => (FileType::Symlink, size, 0o777, m),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            // Directories say 1, as btrfs does: "not counted". A count of 2
            // would tell `find` and other tools that trust it that there
            // are no subdirectories, and the true count (ext4's 2 plus the
            // subdirectories) would need every directory's listing first.
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    pub(super) fn ttl(&self) -> Duration {
        self.source.attr_ttl()
    }
}
