//! Listing directories: readdir and readdirplus, and names first.
//!
//! A walk that wants only names (`find`, `find -type f`) should not pay
//! for sizes a source can only learn with requests (without protocol-v2
//! `object-info`, a git host tells a blob's size only by sending it). So
//! readdirplus of an immutable directory asks the source for names first
//! (`Source::list_names`); its files and symlinks then reach the kernel as
//! placeholders: an inode whose attributes and entry are valid for no time,
//! so whatever looks at one (`stat`, `open`, `ls -l`) comes back with a
//! lookup or getattr, which resolves it from the directory's sized listing
//! before answering. A placeholder is never sent for an inode the kernel
//! was given the true size of. Once something resolves placeholders, the
//! walk wants sizes: readdirplus lists with sizes for a while
//! ([`SIZES_WANTED_FOR`]), so `ls -lR` and `du` cost one sized listing per
//! directory, not a lookup per file.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuser::{FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};

use super::{ROOT, RepoFs, UNKNOWN_INO, observe::Op};
use crate::source::{Entry, Node, NodeKind, SourceError};

/// How long after a placeholder was resolved readdirplus lists with sizes.
pub(super) const SIZES_WANTED_FOR: Duration = Duration::from_secs(2);

impl RepoFs {
    /// Notes that a placeholder was looked at: the walk wants sizes.
    pub(super) fn sizes_wanted(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.sizes_asked.store(now.max(1), Ordering::Relaxed);
    }

    fn wants_sizes(&self) -> bool {
        let at = self.sizes_asked.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        at != 0 && now.saturating_sub(at) < SIZES_WANTED_FOR.as_millis() as u64
    }

    /// The full node of placeholder `ino` (`name` in `parent`), from the
    /// directory's sized listing; the inode holds it from then on.
    pub(super) fn resolve(&self, ino: u64, parent: u64, name: &OsStr) -> Result<Node, SourceError> {
        let dir = self.node(parent)?;
        let entries = self.source.list(&dir)?;
        let node = find(&entries, name).ok_or_else(|| {
            SourceError::Corrupt(format!(
                "{} was listed but its directory's full listing lacks it",
                name.to_string_lossy()
            ))
        })?;
        self.sizes_wanted();
        let mut t = self.write_table();
        match t.inodes.get_mut(&ino) {
            Some(i) if !i.sized => {
                i.node = Some(node.clone());
                i.sized = true;
                Ok(node)
            }
            // Resolved meanwhile (by a lookup): the same entry.
            Some(i) => Ok(i.node.clone().unwrap_or(node)),
            None => Err(SourceError::NotFound(format!("inode {ino}"))),
        }
    }

    /// A directory's entries for readdirplus, its parent's inode, and
    /// whether the entries carry their sizes.
    fn walk_listing(&self, ino: u64) -> Result<(Arc<Vec<Entry>>, u64, bool), SourceError> {
        // The root follows a moving branch: its names are not final.
        if ino == ROOT || !self.source.dirs_immutable() || self.wants_sizes() {
            let (entries, parent) = self.listing(ino)?;
            return Ok((entries, parent, true));
        }
        self.names(ino)
    }

    /// A directory's entries, perhaps without sizes (`Source::list_names`).
    fn names(&self, ino: u64) -> Result<(Arc<Vec<Entry>>, u64, bool), SourceError> {
        let (entries, sized) = self.node(ino).and_then(|n| self.source.list_names(&n))?;
        let parent = self.read_table().inodes.get(&ino).map(|i| i.parent);
        Ok((entries, parent.unwrap_or(ROOT), sized))
    }

    pub(super) fn list_dir(&self, ino: u64, offset: u64, mut reply: ReplyDirectory) {
        let t = self.ops.start(Op::Readdir);
        // Names and kinds are all readdir shows.
        let (entries, parent) = match self.names(ino) {
            Ok((entries, parent, _)) => (entries, parent),
            Err(e) => return reply.error(self.fail(&t, "readdir", ino, None, &e)),
        };
        // Offsets: 1 = ".", 2 = "..", 3.. = entries; the kernel passes back the last one it got.
        let mut next = offset;
        if next == 0 {
            if reply.add(INodeNo(ino), 1, FileType::Directory, ".") {
                return reply.ok();
            }
            next = 1;
        }
        if next == 1 {
            if reply.add(INodeNo(parent), 2, FileType::Directory, "..") {
                return reply.ok();
            }
            next = 2;
        }
        for (i, e) in entries.iter().enumerate().skip((next - 2) as usize) {
            // Only names the kernel looked up have inodes; readdir hands
            // out no references (readdirplus does).
            let child = self.read_table().child(ino, &e.name).unwrap_or(UNKNOWN_INO);
            let kind = match e.node.kind {
                NodeKind::Dir => FileType::Directory,
                NodeKind::File { .. } => FileType::RegularFile,
                NodeKind::Symlink { .. } => FileType::Symlink,
            };
            if reply.add(INodeNo(child), i as u64 + 3, kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    pub(super) fn list_dir_plus(&self, ino: u64, offset: u64, mut reply: ReplyDirectoryPlus) {
        let t = self.ops.start(Op::Readdir);
        let (entries, parent, sized) = match self.walk_listing(ino) {
            Ok(l) => l,
            Err(e) => return reply.error(self.fail(&t, "readdirplus", ino, None, &e)),
        };
        let ttl = self.ttl();
        // "." and ".." carry no lookups (the kernel skips them).
        let mut next = offset;
        for (n, dot, dot_ino) in [(0, ".", ino), (1, "..", parent)] {
            if next == n {
                if reply.add(
                    INodeNo(dot_ino),
                    n + 1,
                    dot,
                    &ttl,
                    &self.attr(dot_ino, None),
                    Generation(0),
                ) {
                    return reply.ok();
                }
                next = n + 1;
            }
        }
        for (i, e) in entries.iter().enumerate().skip((next - 2) as usize) {
            let (child, attr, valid) = if sized || e.node.kind == NodeKind::Dir {
                let child = self.inode_for(ino, &e.name, &e.node, true);
                (child, self.attr(child, Some(&e.node)), ttl)
            } else {
                match self.placeholder_for(ino, &e.name, &e.node) {
                    (child, Some(full)) => (child, self.attr(child, Some(&full)), ttl),
                    (child, None) => (child, self.attr(child, Some(&e.node)), Duration::ZERO),
                }
            };
            if reply.add(
                INodeNo(child),
                i as u64 + 3,
                &e.name,
                &valid,
                &attr,
                Generation(0),
            ) {
                // Not sent: the kernel holds nothing on it.
                self.forget_inodes(&[(child, 1)]);
                break;
            }
        }
        reply.ok();
    }
}

/// The node of `name` in a sorted listing.
pub(super) fn find(entries: &[Entry], name: &OsStr) -> Option<Node> {
    entries
        .binary_search_by(|e| e.name.as_encoded_bytes().cmp(name.as_encoded_bytes()))
        .ok()
        .map(|i| entries[i].node.clone())
}
