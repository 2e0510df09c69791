//! The inode table: stable inode numbers for `(parent, name)` while the
//! node behind them is the same, and the way back from an inode to its
//! path (for log lines and `repofs status`).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::RwLock;

use super::{ROOT, RepoFs};
use crate::source::{Node, SourceError};

pub(super) struct Inode {
    pub(super) parent: u64,
    pub(super) name: OsString,
    /// `None` only for the root before the source could be reached.
    pub(super) node: Option<Node>,
    /// The source generation `node` belongs to.
    pub(super) generation: u64,
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) inodes: HashMap<u64, Inode>,
    pub(super) by_name: HashMap<(u64, OsString), u64>,
    pub(super) next: u64,
}

impl Table {
    pub(super) fn new() -> Table {
        let mut table = Table {
            next: ROOT + 1,
            ..Default::default()
        };
        table.inodes.insert(
            ROOT,
            Inode {
                parent: ROOT,
                name: OsString::new(),
                node: None,
                generation: 0,
            },
        );
        table
    }

    /// The path of an inode inside the mount.
    pub(super) fn path_of(&self, ino: u64) -> PathBuf {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            match self.inodes.get(&cur) {
                Some(i) => {
                    parts.push(i.name.clone());
                    cur = i.parent;
                }
                None => break,
            }
        }
        let mut p = PathBuf::from("/");
        for part in parts.iter().rev() {
            p.push(part);
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
                .filter(|_| ino != ROOT || i.generation == generation)
        };
        if let Some(n) = cached {
            return Ok(n);
        }
        let root = self.source.root()?;
        if let Some(i) = self.write_table().inodes.get_mut(&ROOT) {
            i.node = Some(root.clone());
            i.generation = generation;
        }
        Ok(root)
    }

    /// The inode for `name` in `parent` holding `node`: the same number as
    /// before while the content is the same, a new one when it changed.
    pub(super) fn inode_for(&self, parent: u64, name: &OsStr, node: &Node) -> u64 {
        let key = (parent, name.to_owned());
        let same = |t: &Table, ino: u64| {
            t.inodes
                .get(&ino)
                .and_then(|i| i.node.as_ref())
                .is_some_and(|n| n.key == node.key && n.kind == node.kind)
        };
        {
            let t = self.read_table();
            if let Some(&ino) = t.by_name.get(&key) {
                if same(&t, ino) {
                    return ino;
                }
            }
        }
        let mut t = self.write_table();
        if let Some(&ino) = t.by_name.get(&key) {
            if same(&t, ino) {
                return ino;
            }
        }
        let ino = t.next;
        t.next += 1;
        t.inodes.insert(
            ino,
            Inode {
                parent,
                name: name.to_owned(),
                node: Some(node.clone()),
                generation: self.source.generation(),
            },
        );
        t.by_name.insert(key, ino);
        ino
    }
}
