//! What a mount lets others see of it: per-operation counts, latencies and
//! errors (as metrics; they cost nothing when no metrics listener is
//! configured), the bytes it served, the open files whose contents are
//! still arriving (for `repofs status`), and the ids a source gives its
//! nodes, as `user.repofs.*` extended attributes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use fuser::Errno;
use metrics::{Counter, Histogram};

use super::table::{self, Table};
use crate::source::FileReader;

/// The filesystem operations that are counted and timed.
#[derive(Clone, Copy)]
pub(super) enum Op {
    Lookup,
    Getattr,
    Readlink,
    Open,
    Read,
    Release,
    Opendir,
    Readdir,
    Statfs,
    Getxattr,
    Listxattr,
    /// Anything that would change the tree (answered EROFS).
    Write,
}

const OPS: [(Op, &str); 12] = [
    (Op::Lookup, "lookup"),
    (Op::Getattr, "getattr"),
    (Op::Readlink, "readlink"),
    (Op::Open, "open"),
    (Op::Read, "read"),
    (Op::Release, "release"),
    (Op::Opendir, "opendir"),
    (Op::Readdir, "readdir"),
    (Op::Statfs, "statfs"),
    (Op::Getxattr, "getxattr"),
    (Op::Listxattr, "listxattr"),
    (Op::Write, "write"),
];

/// Metric handles of one mount, registered once.
pub(super) struct OpMetrics {
    repo: String,
    count: Vec<Counter>,
    seconds: Vec<Histogram>,
    pub(super) served: Counter,
    /// Opens answered with kernel passthrough (their reads never come here).
    pub(super) passthrough: Counter,
}

impl OpMetrics {
    pub(super) fn new(repo: &str) -> OpMetrics {
        let labels = |op: &str| {
            [
                ("repository", repo.to_string()),
                ("operation", op.to_string()),
            ]
        };
        OpMetrics {
            repo: repo.to_string(),
            count: OPS
                .iter()
                .map(|(_, n)| metrics::counter!("repofs_fuse_operations_total", &labels(n)))
                .collect(),
            seconds: OPS
                .iter()
                .map(|(_, n)| metrics::histogram!("repofs_fuse_operation_seconds", &labels(n)))
                .collect(),
            served: metrics::counter!("repofs_served_bytes_total", "repository" => repo.to_string()),
            passthrough: metrics::counter!("repofs_passthrough_opens_total", "repository" => repo.to_string()),
        }
    }

    /// Starts timing one operation; it is recorded when the guard drops.
    pub(super) fn start(&self, op: Op) -> Timer<'_> {
        Timer {
            metrics: self,
            op: op as usize,
            start: Instant::now(),
        }
    }
}

/// One operation being timed.
pub(super) struct Timer<'a> {
    metrics: &'a OpMetrics,
    op: usize,
    start: Instant,
}

impl Timer<'_> {
    /// Counts the error the operation answers with, and passes it on.
    pub(super) fn error(&self, e: Errno) -> Errno {
        metrics::counter!(
            "repofs_fuse_errors_total",
            "repository" => self.metrics.repo.clone(),
            "operation" => OPS[self.op].1,
            "errno" => errno_name(e.code()),
        )
        .increment(1);
        e
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.metrics.count[self.op].increment(1);
        self.metrics.seconds[self.op].record(self.start.elapsed().as_secs_f64());
    }
}

/// The symbolic name of an errno, for metric labels.
pub fn errno_name(code: i32) -> String {
    let name = match code {
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EACCES => "EACCES",
        libc::EROFS => "EROFS",
        libc::EISDIR => "EISDIR",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::EBADF => "EBADF",
        libc::ENODATA => "ENODATA",
        libc::ERANGE => "ERANGE",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSYS => "ENOSYS",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        _ => return format!("E{code}"),
    };
    name.to_string()
}

/// An open file.
pub(super) struct OpenFile {
    pub(super) reader: Arc<dyn FileReader>,
    pub(super) ino: u64,
    pub(super) opened: Instant,
    /// Bytes the transfer had when this file was opened (for its rate).
    pub(super) done_at_open: u64,
    /// Opened in kernel passthrough (reads never come here).
    pub(super) passthrough: bool,
    /// Read without an open, of a file the kernel was told was longer:
    /// its true size.
    pub(super) shrunk_to: Option<u64>,
    /// Read without an open: when it was last read ([`ticks`]).
    pub(super) last_read: std::sync::atomic::AtomicU64,
}

pub(super) type Handles = Arc<RwLock<HashMap<u64, OpenFile>>>;

pub(super) fn read(h: &Handles) -> std::sync::RwLockReadGuard<'_, HashMap<u64, OpenFile>> {
    h.read().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn write(h: &Handles) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, OpenFile>> {
    h.write().unwrap_or_else(|p| p.into_inner())
}

/// A file whose contents are arriving while it is read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransferInfo {
    /// The path inside the mount.
    pub path: String,
    pub done: u64,
    pub total: u64,
    /// Bytes per second since the file was opened.
    pub rate: u64,
}

/// A view of a mount's open files, kept by the daemon.
#[derive(Clone)]
pub struct Monitor {
    pub(super) table: Arc<RwLock<Table>>,
    pub(super) handles: Handles,
}

impl Monitor {
    /// Inodes the mount holds (those the kernel may still ask about).
    pub fn inodes(&self) -> usize {
        table::read(&self.table).inodes.len()
    }

    /// The open files still arriving from the origin, one entry per file.
    pub fn transfers(&self) -> Vec<TransferInfo> {
        let open: Vec<(u64, Option<(u64, u64)>, Instant, u64)> = read(&self.handles)
            .values()
            .map(|f| (f.ino, f.reader.progress(), f.opened, f.done_at_open))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let t = table::read(&self.table);
        let mut out = Vec::new();
        for (ino, progress, opened, at_open) in open {
            let Some((done, total)) = progress else {
                continue;
            };
            if !seen.insert(ino) {
                continue;
            }
            let secs = opened.elapsed().as_secs_f64().max(0.001);
            out.push(TransferInfo {
                path: t
                    .path_of(ino)
                    .to_string_lossy()
                    .trim_start_matches('/')
                    .to_string(),
                done,
                total,
                rate: (done.saturating_sub(at_open) as f64 / secs) as u64,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

/// Extended attribute names carry this prefix.
pub(super) const XATTR_PREFIX: &str = "user.repofs.";

/// The `listxattr` answer for these ids: NUL-terminated names.
pub(super) fn xattr_list(ids: &[(&'static str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, _) in ids {
        out.extend_from_slice(XATTR_PREFIX.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
    }
    out
}

/// The value of the extended attribute `name`, if the node has it.
pub(super) fn xattr_value(ids: &[(&'static str, String)], name: &[u8]) -> Option<Vec<u8>> {
    let short = name.strip_prefix(XATTR_PREFIX.as_bytes())?;
    ids.iter()
        .find(|(n, _)| n.as_bytes() == short)
        .map(|(_, v)| v.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattrs_list_and_look_up() {
        let ids = vec![("oid", "abc".to_string()), ("commit", "def".to_string())];
        assert_eq!(xattr_list(&ids), b"user.repofs.oid\0user.repofs.commit\0");
        assert_eq!(
            xattr_value(&ids, b"user.repofs.commit"),
            Some(b"def".to_vec())
        );
        assert_eq!(xattr_value(&ids, b"user.repofs.other"), None);
        assert_eq!(xattr_value(&ids, b"oid"), None);
        assert_eq!(xattr_list(&[]), b"");
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(9999), "E9999");
    }
}

thread_local! {
    /// Each worker thread's read buffer, allocated once.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's read buffer, `len` bytes long.
pub(super) fn with_read_buffer<T>(len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    READ_BUFFER.with_borrow_mut(|buf| {
        if buf.len() < len {
            buf.resize(len, 0);
        }
        f(&mut buf[..len])
    })
}

/// Milliseconds since the first call: a clock cheap enough for every read.
pub(super) fn ticks() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
