//! The FUSE adapter: turns kernel requests into [`Source`] calls and replies.
//!
//! It owns the inode table (stable numbers for `(parent, name)` while
//! mounted) and the open-file table, and knows nothing of git or S3. Every
//! write operation answers `EROFS`. Errors from the source are logged with
//! the repository and the path, and answered with the source's errno.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request,
};

use crate::config::FileReads;
use crate::source::{NodeKind, Source, SourceError};
use observe::Op;

mod dirs;
mod files;
mod noopen;
mod observe;
mod ops_shared;
mod passthrough;
mod report;
mod table;
pub use observe::{Monitor, TransferInfo};
pub use report::LastError;
use table::Table;

const ROOT: u64 = 1;
/// The longest name a directory entry can have (bytes), as on ext4.
const NAME_MAX: usize = 255;
/// Forgotten inodes between two returns of freed memory to the system.
const TRIM_EVERY: u64 = 20_000;
/// The inode number readdir gives a name not looked up yet (as libfuse).
const UNKNOWN_INO: u64 = 0xffff_ffff;

/// A mounted source.
pub struct RepoFs {
    source: Arc<dyn Source>,
    table: Arc<RwLock<Table>>,
    handles: observe::Handles,
    /// Operation counts, latencies and errors, bytes served.
    ops: observe::OpMetrics,
    /// What each inode's kernel pages were last filled from: the node key,
    /// or `None` for bytes served before they were verified. An open keeps
    /// the kernel's pages only when they came from the same, verified node.
    page_source: Mutex<HashMap<u64, Option<crate::source::NodeKey>>>,
    next_fh: AtomicU64,
    /// Set once mounted: tells the kernel to drop attributes it cached.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Logs failures and keeps the last one (for `repofs status`).
    reporter: report::Reporter,
    /// Kernel passthrough of complete cached files.
    backings: passthrough::Backings,
    /// Reads without opens (the kernel keeps every page).
    no_open: noopen::NoOpen,
    /// How reads should reach the bytes (the configured choice).
    file_reads: FileReads,
    /// Inodes forgotten so far (memory is trimmed every `TRIM_EVERY`).
    forgotten: AtomicU64,
    /// Whether extended attributes are answered; without them the kernel
    /// is told once (ENOSYS) and stops asking (`ls -l` asks every file).
    xattrs: bool,
    /// When (ms after `started`) a file lookup last needed sizes.
    sizes_asked: AtomicU64,
    started: std::time::Instant,
    uid: u32,
    gid: u32,
}

impl RepoFs {
    pub fn new(source: Arc<dyn Source>, xattrs: bool, file_reads: FileReads) -> RepoFs {
        // SAFETY: getuid/getgid cannot fail and have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        RepoFs {
            ops: observe::OpMetrics::new(source.name()),
            source,
            table: Arc::new(RwLock::new(Table::new())),
            handles: Arc::new(RwLock::new(HashMap::new())),
            page_source: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            notifier: Arc::new(std::sync::OnceLock::new()),
            reporter: report::Reporter::default(),
            backings: passthrough::Backings::default(),
            no_open: noopen::NoOpen::default(),
            file_reads,
            forgotten: AtomicU64::new(0),
            xattrs,
            sizes_asked: AtomicU64::new(0),
            started: std::time::Instant::now(),
            uid,
            gid,
        }
    }
}

impl fuser::Filesystem for RepoFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        use fuser::InitFlags as F;
        // Each alone: an older kernel lacks some, and that is no error.
        for flag in [
            F::FUSE_DO_READDIRPLUS,
            F::FUSE_READDIRPLUS_AUTO,
            F::FUSE_CACHE_SYMLINKS,
            F::FUSE_PARALLEL_DIROPS,
            // The kernel caches each inode's (absent) ACLs instead of asking
            // for `system.posix_acl_*` on every `ls -l` of every file.
            F::FUSE_POSIX_ACL,
        ] {
            let _ = config.add_capabilities(flag);
        }
        // 1 MiB reads (max_pages follows the readahead).
        let _ = config.set_max_readahead(1 << 20);
        // Without open, and with passthrough, the kernel keeps a file's
        // pages (or its backing file) for as long as the inode lives: only
        // for sources whose inodes never change contents.
        let wanted = match (self.file_reads, self.source.immutable()) {
            (_, false) => FileReads::Daemon,
            (FileReads::Auto, true) if self.source.dirs_immutable() => FileReads::NoOpen,
            (FileReads::Auto, true) => FileReads::Passthrough,
            (chosen, true) => chosen,
        };
        let passthrough = wanted == FileReads::Passthrough
            && config.add_capabilities(F::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.backings.enabled.store(passthrough, Ordering::Relaxed);
        let no_open = wanted == FileReads::NoOpen;
        self.no_open.enabled.store(no_open, Ordering::Relaxed);
        if no_open {
            self.sweep_idle_readers();
        }
        let name = self.source.name();
        match wanted {
            FileReads::NoOpen => {
                tracing::info!(repo = %name, "file reads: no open (the kernel keeps every page; reads it cannot answer come to the daemon)")
            }
            _ if passthrough => {
                tracing::info!(repo = %name, "file reads: kernel passthrough for cached files, the daemon for the rest")
            }
            FileReads::Passthrough => {
                tracing::info!(repo = %name, "file reads: through the daemon (the kernel offers no passthrough)")
            }
            _ => tracing::info!(repo = %name, "file reads: through the daemon"),
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let t = self.ops.start(Op::Lookup);
        let parent = parent.0;
        // As every local file system answers a name no directory can hold.
        if name.len() > NAME_MAX {
            reply.error(t.error(Errno::from_i32(libc::ENAMETOOLONG)));
            return;
        }
        let result = self.child_node(parent, name);
        match result {
            Ok(Some(node)) => {
                let ino = self.inode_for(parent, name, &node, true);
                reply.entry(&self.ttl(), &self.attr(ino, Some(&node)), Generation(0));
            }
            // A negative entry: the kernel remembers the name is missing
            // for as long as it would remember it present.
            Ok(None) => {
                t.error(Errno::ENOENT);
                reply.entry(&self.ttl(), &self.attr(0, None), Generation(0));
            }
            Err(e) => reply.error(self.fail(&t, "lookup", parent, Some(name), &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.forget_inodes(&[(ino.0, nlookup)]);
    }

    // batch_forget: fuser's default calls `forget` for each (its
    // `ForgetOne` type is not exported, so it cannot be overridden).

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let t = self.ops.start(Op::Getattr);
        let ino = ino.0;
        match self.node(ino) {
            Ok(node) => reply.attr(&self.ttl(), &self.attr(ino, Some(&node))),
            // The mount point itself stays stat-able while the server is unreachable.
            Err(_) if ino == ROOT => reply.attr(&Duration::from_secs(1), &self.attr(ino, None)),
            Err(e) => reply.error(self.fail(&t, "getattr", ino, None, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let t = self.ops.start(Op::Readlink);
        match self.node(ino.0).and_then(|n| match n.kind {
            NodeKind::Symlink { .. } => self.source.readlink(&n),
            _ => Err(SourceError::NotFound("not a symlink".into())),
        }) {
            Ok(target) => reply.data(&target),
            Err(SourceError::NotFound(_)) => reply.error(t.error(Errno::EINVAL)),
            Err(e) => reply.error(self.fail(&t, "readlink", ino.0, None, &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.open_file(ino, flags, reply);
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
        self.read_file(ino, fh, offset, size, reply);
    }

    /// Nothing is ever written, so there is nothing to flush: ENOSYS makes
    /// the kernel stop sending flush on every close (one round trip less
    /// per file).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
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
        let _t = self.ops.start(Op::Release);
        if let Some(f) = observe::write(&self.handles).remove(&fh.0) {
            self.backings.release(f.ino, f.passthrough);
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let t = self.ops.start(Op::Opendir);
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            reply.error(t.error(Errno::EROFS));
            return;
        }
        match self.node(ino.0) {
            Ok(n) if n.kind == NodeKind::Dir => {
                // A directory inode that always lists the same entries
                // (the root follows a moving branch, so it does not): the
                // kernel keeps its pages and answers readdir itself.
                let flags = if self.source.dirs_immutable() && ino.0 != ROOT {
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(0), flags)
            }
            Ok(_) => reply.error(t.error(Errno::ENOTDIR)),
            Err(e) => reply.error(self.fail(&t, "opendir", ino.0, None, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.list_dir(ino.0, offset, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: fuser::ReplyDirectoryPlus,
    ) {
        self.list_dir_plus(ino.0, offset, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _t = self.ops.start(Op::Statfs);
        let files = self.read_table().inodes.len() as u64;
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let t = self.ops.start(Op::Getxattr);
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        if !name
            .as_encoded_bytes()
            .starts_with(observe::XATTR_PREFIX.as_bytes())
        {
            // security.*, system.posix_acl_*: asked of every file by ls and cp.
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let ids = match self.node(ino.0) {
            Ok(n) => self.ids(&n, ino.0),
            Err(e) => return reply.error(self.fail(&t, "getxattr", ino.0, None, &e)),
        };
        match observe::xattr_value(&ids, name.as_encoded_bytes()) {
            None => reply.error(t.error(Errno::from_i32(libc::ENODATA))),
            Some(v) if size == 0 => reply.size(v.len() as u32),
            Some(v) if v.len() > size as usize => {
                reply.error(t.error(Errno::from_i32(libc::ERANGE)))
            }
            Some(v) => reply.data(&v),
        }
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

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let t = self.ops.start(Op::Listxattr);
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        let list = match self.node(ino.0) {
            Ok(n) => observe::xattr_list(&self.ids(&n, ino.0)),
            Err(e) => return reply.error(self.fail(&t, "listxattr", ino.0, None, &e)),
        };
        if size == 0 {
            reply.size(list.len() as u32);
        } else if list.len() > size as usize {
            reply.error(t.error(Errno::from_i32(libc::ERANGE)));
        } else {
            reply.data(&list);
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
        reply.error(self.ops.start(Op::Write).error(Errno::EROFS));
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
        reply.error(self.ops.start(Op::Write).error(Errno::EROFS));
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
        reply.error(self.ops.start(Op::Write).error(Errno::EROFS));
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.ops.start(Op::Write).error(Errno::EROFS));
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.ops.start(Op::Write).error(Errno::EROFS));
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(self.ops.start(Op::Write).error(Errno::EROFS));
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
        reply.error(self.ops.start(Op::Write).error(Errno::EROFS));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(self.ops.start(Op::Write).error(Errno::EROFS));
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
        reply.error(self.ops.start(Op::Write).error(Errno::EROFS));
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
        reply.error(self.ops.start(Op::Write).error(Errno::EROFS));
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
        reply.error(self.ops.start(Op::Write).error(Errno::EROFS));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.ops.start(Op::Write).error(Errno::EROFS));
    }
}
