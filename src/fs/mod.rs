//! The FUSE adapter: turns kernel requests into [`Source`] calls and replies.
//!
//! It owns the inode table (stable numbers for `(parent, name)` while
//! mounted) and the open-file table, and knows nothing of git or S3. Every
//! write operation answers `EROFS`. Errors from the source are logged with
//! the repository and the path, and answered with the source's errno.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request,
};

use crate::source::{FileReader, Node, NodeKind, Source, SourceError};

mod report;
pub use report::LastError;

const ROOT: u64 = 1;

struct Inode {
    parent: u64,
    name: OsString,
    /// `None` only for the root before the source could be reached.
    node: Option<Node>,
    /// The source generation `node` belongs to.
    generation: u64,
}

#[derive(Default)]
struct Table {
    inodes: HashMap<u64, Inode>,
    by_name: HashMap<(u64, OsString), u64>,
    next: u64,
}

/// A mounted source.
pub struct RepoFs {
    source: Arc<dyn Source>,
    table: RwLock<Table>,
    handles: Mutex<HashMap<u64, Arc<dyn FileReader>>>,
    /// What each inode's kernel pages were last filled from: the node key,
    /// or `None` for bytes served before they were verified. An open keeps
    /// the kernel's pages only when they came from the same, verified node.
    page_source: Mutex<HashMap<u64, Option<crate::source::NodeKey>>>,
    next_fh: AtomicU64,
    /// Set once mounted: tells the kernel to drop attributes it cached.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Logs failures and keeps the last one (for `repofs status`).
    reporter: report::Reporter,
    uid: u32,
    gid: u32,
}

impl RepoFs {
    pub fn new(source: Arc<dyn Source>) -> RepoFs {
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
        // SAFETY: getuid/getgid cannot fail and have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        RepoFs {
            source,
            table: RwLock::new(table),
            handles: Mutex::new(HashMap::new()),
            page_source: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            notifier: Arc::new(std::sync::OnceLock::new()),
            reporter: report::Reporter::default(),
            uid,
            gid,
        }
    }

    /// The last failure this mount answered with (shared with the daemon).
    pub fn last_error(&self) -> LastError {
        self.reporter.last.clone()
    }

    /// Where the daemon puts the session's notifier after mounting.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// The source found a file's true size differs from what was listed:
    /// fix the inode and make the kernel forget the attributes it cached.
    fn correct_size(&self, ino: u64, real: u64) {
        {
            let mut t = self.write_table();
            if let Some(Some(n)) = t.inodes.get_mut(&ino).map(|i| i.node.as_mut()) {
                if let NodeKind::File { size, .. } = &mut n.kind {
                    *size = real;
                }
            }
        }
        if let Some(n) = self.notifier.get().cloned() {
            // Sent from another thread: the kernel may hold locks for this
            // very request.
            std::thread::spawn(move || {
                let _ = n.inval_inode(INodeNo(ino), 0, 0);
            });
        }
    }

    fn read_table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_table(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The path of an inode inside the mount, for log lines.
    fn path_of(&self, ino: u64) -> PathBuf {
        let t = self.read_table();
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            match t.inodes.get(&cur) {
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

    fn fail(&self, op: &str, ino: u64, name: Option<&OsStr>, e: &SourceError) -> Errno {
        let mut path = self.path_of(ino);
        if let Some(n) = name {
            path.push(n);
        }
        self.reporter.report(self.source.name(), op, &path, e);
        Errno::from_i32(e.errno())
    }

    /// The node behind an inode. An inode always stands for the same
    /// content (its node key): when a followed branch moves, changed paths
    /// get new inodes from `inode_for`, so files and directories already open
    /// keep their old contents (the kernel's pages are per inode). Only the
    /// root, which the kernel never looks up again, follows the source's
    /// generation.
    fn node(&self, ino: u64) -> Result<Node, SourceError> {
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
    fn inode_for(&self, parent: u64, name: &OsStr, node: &Node) -> u64 {
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

    fn attr(&self, ino: u64, node: Option<&Node>) -> FileAttr {
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
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn ttl(&self) -> Duration {
        self.source.attr_ttl()
    }
}

impl fuser::Filesystem for RepoFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = parent.0;
        let result = self
            .node(parent)
            .and_then(|dir| self.source.list(&dir))
            .map(|entries| entries.iter().find(|e| e.name == name).cloned());
        match result {
            Ok(Some(entry)) => {
                let ino = self.inode_for(parent, name, &entry.node);
                reply.entry(
                    &self.ttl(),
                    &self.attr(ino, Some(&entry.node)),
                    Generation(0),
                );
            }
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(self.fail("lookup", parent, Some(name), &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ino = ino.0;
        match self.node(ino) {
            Ok(node) => reply.attr(&self.ttl(), &self.attr(ino, Some(&node))),
            // The mount point itself stays stat-able while the server is unreachable.
            Err(_) if ino == ROOT => reply.attr(&Duration::from_secs(1), &self.attr(ino, None)),
            Err(e) => reply.error(self.fail("getattr", ino, None, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino.0).and_then(|n| match n.kind {
            NodeKind::Symlink { .. } => self.source.readlink(&n),
            _ => Err(SourceError::NotFound("not a symlink".into())),
        }) {
            Ok(target) => reply.data(&target),
            Err(SourceError::NotFound(_)) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(self.fail("readlink", ino.0, None, &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            reply.error(Errno::EROFS);
            return;
        }
        let node = match self.node(ino.0) {
            Ok(n) => n,
            Err(e) => return reply.error(self.fail("open", ino.0, None, &e)),
        };
        if !matches!(node.kind, NodeKind::File { .. }) {
            reply.error(Errno::EISDIR);
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
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.handles
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fh, reader);
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
            Err(e) => reply.error(self.fail("open", ino.0, None, &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let reader = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned();
        let Some(reader) = reader else {
            reply.error(Errno::EBADF);
            return;
        };
        match reader.read_at(offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(self.fail("read", ino.0, None, &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        match self.node(ino.0) {
            Ok(n) if n.kind == NodeKind::Dir => {
                self.source.prefetch(&n);
                let flags = if self.source.immutable() {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(0), flags)
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(self.fail("opendir", ino.0, None, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let ino = ino.0;
        let entries = match self.node(ino).and_then(|n| self.source.list(&n)) {
            Ok(e) => e,
            Err(e) => return reply.error(self.fail("readdir", ino, None, &e)),
        };
        let parent = self
            .read_table()
            .inodes
            .get(&ino)
            .map(|i| i.parent)
            .unwrap_or(ROOT);
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
            let child = self.inode_for(ino, &e.name, &e.node);
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

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.read_table().inodes.len() as u64;
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::from_i32(libc::ENODATA));
    }

    /// No ioctl applies to these files (Python's `open()` asks TCGETS of
    /// every file): "not a terminal", quietly, as a regular file answers.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    // Everything below would change the tree: read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}
