//! The inode table: stable inode numbers for `(parent, name)` while the
//! node behind them is the same, and the way back from an inode to its
//! path (for log lines and `repofs status`). Each inode counts the lookups
//! the kernel holds on it; `forget` takes them back and an inode nobody
//! holds is dropped, so the table is as large as the kernel's cache of it.
//!
//! Memory per inode is what a million-file walk pays: the name is stored
//! once (in the inode), and the index from `(parent, name)` to the inode
//! holds only inode numbers, hashed and compared through the inodes.

use std::ffi::OsStr;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ROOT, RepoFs};
use crate::source::{Node, SourceError};

pub(super) struct Inode {
    pub(super) parent: u64,
    pub(super) name: Box<OsStr>,
    /// `None` only for the root before the source could be reached.
    pub(super) node: Option<Node>,
    /// Lookups the kernel holds (entries it was given, minus forgets).
    pub(super) lookups: AtomicU64,
}

/// Inodes by number, a slot each; the numbers of forgotten inodes are
/// given out again (the kernel no longer knows them), and free slots at the
/// end are handed back, so the table shrinks when the kernel drops its
/// caches.
#[derive(Default)]
pub(super) struct Slots {
    slots: Vec<Option<Inode>>,
    free: Vec<u64>,
    len: usize,
}

impl Slots {
    pub(super) fn get(&self, ino: &u64) -> Option<&Inode> {
        self.slots.get(usize::try_from(*ino).ok()?)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, ino: &u64) -> Option<&mut Inode> {
        self.slots.get_mut(usize::try_from(*ino).ok()?)?.as_mut()
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// A number for a new inode.
    fn vacant(&mut self) -> u64 {
        while let Some(ino) = self.free.pop() {
            if self.get(&ino).is_none() && (ino as usize) < self.slots.len() {
                return ino;
            }
        }
        (self.slots.len() as u64).max(ROOT + 1)
    }

    fn insert(&mut self, ino: u64, inode: Inode) {
        let at = ino as usize;
        if self.slots.len() <= at {
            self.slots.resize_with(at + 1, || None);
        }
        if self.slots[at].replace(inode).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, ino: &u64) -> Option<Inode> {
        let at = usize::try_from(*ino).ok()?;
        let gone = self.slots.get_mut(at)?.take()?;
        self.len -= 1;
        self.free.push(*ino);
        // Free slots at the end go back to the allocator, in bulk (each
        // step below costs at most what the removals since the last one did).
        if self.slots.len() > 1024
            && self.len < self.slots.len() / 4
            && self.slots.last().is_some_and(Option::is_none)
        {
            while self.slots.last().is_some_and(Option::is_none) {
                self.slots.pop();
            }
            self.slots.shrink_to(self.slots.len() * 2);
        }
        if self.free.len() > 1024 && self.free.len() > 2 * (self.slots.len() - self.len) {
            let end = self.slots.len() as u64;
            self.free.retain(|f| *f < end);
            self.free.shrink_to(self.free.len() * 2);
        }
        Some(gone)
    }
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) inodes: Slots,
    /// The current inode of each `(parent, name)` (looked up without
    /// allocating); an inode replaced by a newer one for its name is no
    /// longer here.
    children: hashbrown::HashTable<u64>,
    hasher: std::hash::RandomState,
    /// The source generation the root's node belongs to (other inodes
    /// keep theirs: see `RepoFs::node`).
    root_generation: u64,
}

fn hash_of(hasher: &std::hash::RandomState, parent: u64, name: &OsStr) -> u64 {
    hasher.hash_one((parent, name.as_encoded_bytes()))
}

/// The hash of an indexed inode number (for the index to grow or shrink).
fn rehash<'a>(inodes: &'a Slots, hasher: &'a std::hash::RandomState) -> impl Fn(&u64) -> u64 + 'a {
    move |x| {
        inodes
            .get(x)
            .map(|i| hash_of(hasher, i.parent, &i.name))
            .unwrap_or(0)
    }
}

impl Table {
    pub(super) fn new() -> Table {
        let mut table = Table::default();
        table.inodes.insert(
            ROOT,
            Inode {
                parent: ROOT,
                name: OsStr::new("").into(),
                node: None,
                lookups: AtomicU64::new(1),
            },
        );
        table
    }

    /// The inode already numbered for `name` in `parent`, if any.
    pub(super) fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        let h = hash_of(&self.hasher, parent, name);
        self.children
            .find(h, |ino| {
                self.inodes
                    .get(ino)
                    .is_some_and(|i| i.parent == parent && &*i.name == name)
            })
            .copied()
    }

    /// Adds an inode, as the current one of its `(parent, name)`.
    pub(super) fn add(&mut self, ino: u64, inode: Inode) {
        let h = hash_of(&self.hasher, inode.parent, &inode.name);
        let parent = inode.parent;
        self.inodes.insert(ino, inode);
        let inodes = &self.inodes;
        let hasher = &self.hasher;
        let Some(name) = inodes.get(&ino).map(|i| &i.name) else {
            return;
        };
        match self.children.find_entry(h, |x| {
            *x != ino
                && inodes
                    .get(x)
                    .is_some_and(|i| i.parent == parent && i.name == *name)
        }) {
            Ok(mut e) => *e.get_mut() = ino,
            Err(absent) => {
                absent
                    .into_table()
                    .insert_unique(h, ino, rehash(inodes, hasher));
            }
        }
    }

    /// Takes back `n` lookups; drops the inode when none are left.
    pub(super) fn forget(&mut self, ino: u64, n: u64) -> bool {
        if ino == ROOT {
            return false;
        }
        let Some(i) = self.inodes.get(&ino) else {
            return false;
        };
        let left = i.lookups.load(Ordering::Relaxed).saturating_sub(n);
        i.lookups.store(left, Ordering::Relaxed);
        if left > 0 {
            return false;
        }
        let h = hash_of(&self.hasher, i.parent, &i.name);
        if let Ok(e) = self.children.find_entry(h, |x| *x == ino) {
            e.remove();
        }
        self.inodes.remove(&ino);
        let (len, hasher, inodes) = (self.children.len(), &self.hasher, &self.inodes);
        if self.children.capacity() > 1024 && len < self.children.capacity() / 4 {
            self.children.shrink_to(len * 2, rehash(inodes, hasher));
        }
        true
    }

    /// The path of an inode inside the mount.
    pub(super) fn path_of(&self, ino: u64) -> PathBuf {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            match self.inodes.get(&cur) {
                Some(i) => {
                    parts.push(&i.name);
                    cur = i.parent;
                }
                None => break,
            }
        }
        let mut p = PathBuf::from("/");
        for part in parts.iter().rev() {
            p.push(&***part);
        }
        p
    }
}

pub(super) fn read(t: &RwLock<Table>) -> std::sync::RwLockReadGuard<'_, Table> {
    t.read().unwrap_or_else(|p| p.into_inner())
}

impl RepoFs {
    pub(super) fn read_table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        read(&self.table)
    }

    pub(super) fn write_table(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The path of an inode inside the mount, for log lines.
    pub(super) fn path_of(&self, ino: u64) -> PathBuf {
        self.read_table().path_of(ino)
    }

    /// The node behind an inode. An inode always stands for the same
    /// content (its node key): when a followed branch moves, changed paths
    /// get new inodes from `inode_for`, so files and directories already open
    /// keep their old contents (the kernel's pages are per inode). Only the
    /// root, which the kernel never looks up again, follows the source's
    /// generation.
    pub(super) fn node(&self, ino: u64) -> Result<Node, SourceError> {
        let generation = self.source.generation();
        let cached = {
            let t = self.read_table();
            let Some(i) = t.inodes.get(&ino) else {
                return Err(SourceError::NotFound(format!("inode {ino}")));
            };
            i.node
                .clone()
                .filter(|_| ino != ROOT || t.root_generation == generation)
        };
        if let Some(n) = cached {
            return Ok(n);
        }
        let root = self.source.root()?;
        let mut t = self.write_table();
        if let Some(i) = t.inodes.get_mut(&ROOT) {
            i.node = Some(root.clone());
        }
        t.root_generation = generation;
        Ok(root)
    }

    /// The inode for `name` in `parent` holding `node`: the same number as
    /// before while the content is the same, a new one when it changed.
    /// `counted` when the kernel is given the entry (a lookup reply, a
    /// readdirplus entry): it then holds one more lookup on it.
    pub(super) fn inode_for(&self, parent: u64, name: &OsStr, node: &Node, counted: bool) -> u64 {
        let add = u64::from(counted);
        // The existing inode for the name, if it still holds this node;
        // it gets the lookup under the same lock.
        let hit = |t: &Table| -> Option<u64> {
            let ino = t.child(parent, name)?;
            let i = t.inodes.get(&ino)?;
            let n = i.node.as_ref()?;
            if n.key != node.key || n.kind != node.kind {
                return None;
            }
            i.lookups.fetch_add(add, Ordering::Relaxed);
            Some(ino)
        };
        if let Some(ino) = hit(&self.read_table()) {
            return ino;
        }
        let mut t = self.write_table();
        if let Some(ino) = hit(&t) {
            return ino;
        }
        let ino = t.inodes.vacant();
        // A changed path gets the new inode; the old one lives on (open
        // files keep reading it) until the kernel forgets it.
        t.add(
            ino,
            Inode {
                parent,
                name: name.into(),
                node: Some(node.clone()),
                lookups: AtomicU64::new(add),
            },
        );
        ino
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an inode costs besides its name and key (a million-file walk
    /// keeps one per directory and file the kernel holds).
    #[test]
    fn an_inode_slot_stays_small() {
        assert!(std::mem::size_of::<Option<Inode>>() <= 80);
    }
}
