//! Listing directories: readdir, readdirplus and lookup, names first.
//!
//! A walk that wants only names (`find`, `find -type f`) should not pay
//! for sizes a source can only learn with requests (without protocol-v2
//! `object-info`, a git host tells a blob's size only by sending it). So an
//! immutable directory whose sizes are not at hand (`Source::list_names`)
//! answers the kernel's first readdirplus with "." and ".." alone: the
//! kernel (with `FUSE_READDIRPLUS_AUTO`) asks for the rest with plain
//! readdir, names and kinds with no inode and no attributes, and looks up
//! only what the walker opens or stats. A lookup of a subdirectory is
//! answered from the names; one of a file or symlink needs the sized
//! listing (one request for the directory's sizes, then memory). Once a
//! lookup needed sizes, the walk wants them: readdirplus lists with sizes
//! for a while ([`SIZES_WANTED_FOR`]), so `ls -lR` and `du` cost one sized
//! listing per directory and not a lookup per file. Nothing but the sized
//! listing ever gives the kernel a file's attributes.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuser::{FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};

use super::{ROOT, RepoFs, UNKNOWN_INO, observe::Op};
use crate::source::{Entry, Node, NodeKind, SourceError};

/// How long after a file lookup needed sizes readdirplus lists with them
/// (`ls -l`, `du`: what looks at one file looks at the others).
pub(super) const SIZES_WANTED_FOR: Duration = Duration::from_secs(2);

impl RepoFs {
    /// Notes that a lookup needed sizes: the walk wants them.
    fn sizes_wanted(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.sizes_asked.store(now.max(1), Ordering::Relaxed);
    }

    fn wants_sizes(&self) -> bool {
        let at = self.sizes_asked.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        at != 0 && now.saturating_sub(at) < SIZES_WANTED_FOR.as_millis() as u64
    }

    /// Whether listings of `ino` may come without sizes.
    fn names_first(&self, ino: u64) -> bool {
        // The root follows a moving branch: its names are not final.
        ino != ROOT && self.source.dirs_immutable()
    }

    /// The node of `name` in directory `parent`, with its size: a
    /// subdirectory from the names alone, a file from the sized listing.
    pub(super) fn child_node(
        &self,
        parent: u64,
        name: &OsStr,
    ) -> Result<Option<Node>, SourceError> {
        let dir = self.node(parent)?;
        if self.names_first(parent) {
            let (names, sized) = self.source.list_names(&dir)?;
            match find(&names, name) {
                // Listings name the same directories with or without sizes.
                Some(n) if sized || n.kind == NodeKind::Dir => return Ok(Some(n)),
                None => return Ok(None),
                Some(_) => self.sizes_wanted(),
            }
        }
        Ok(find(&self.source.list(&dir)?, name))
    }

    /// A directory's entries, perhaps without sizes (`Source::list_names`),
    /// its parent's inode, and whether the entries carry their sizes.
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
        // The first request of a walk that may want names only: without
        // sizes at hand, "." and ".." alone, the rest by plain readdir. A
        // later request (the kernel saw lookups here) or a walk that wants
        // sizes gets the sized listing.
        let names_only = offset == 0 && self.names_first(ino) && !self.wants_sizes();
        let listed = match names_only {
            true => self.names(ino),
            false => self.listing(ino).map(|(e, p)| (e, p, true)),
        };
        let (entries, parent, sized) = match listed {
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
        if !sized {
            return reply.ok();
        }
        for (i, e) in entries.iter().enumerate().skip((next - 2) as usize) {
            let child = self.inode_for(ino, &e.name, &e.node, true);
            let attr = self.attr(child, Some(&e.node));
            if reply.add(
                INodeNo(child),
                i as u64 + 3,
                &e.name,
                &ttl,
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
