//! What a mounted tree is made of: the `Source` trait the FUSE adapter reads
//! through, and the entry types it returns. A source knows nothing of FUSE:
//! it names entries, lists directories and reads byte ranges, and reports
//! failures as [`SourceError`], which carries the errno to give the caller.

pub mod git;
mod local;
pub mod names;
pub mod s3;
pub mod transfer;

pub use local::{LocalFile, read_file_into, read_file_range};

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// An opaque, source-defined identity for a node (for git: the object id).
pub type NodeKey = Arc<[u8]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File { size: u64, executable: bool },
    Symlink { size: u64 },
}

/// A node: its identity, kind and modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub key: NodeKey,
    pub kind: NodeKind,
    pub mtime: SystemTime,
}

/// One named child of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: OsString,
    pub node: Node,
}

/// Why an operation failed. Every variant says what failed in words a user
/// can act on; `errno` is what the filesystem call returns.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("access denied: {0}")]
    Denied(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("invalid data from the server: {0}")]
    Corrupt(String),
    /// A symbolic link whose target is longer than PATH_MAX.
    #[error("{0}")]
    NameTooLong(String),
}

impl SourceError {
    pub fn errno(&self) -> i32 {
        match self {
            SourceError::NotFound(_) => libc::ENOENT,
            SourceError::Denied(_) => libc::EACCES,
            SourceError::Unavailable(_) | SourceError::Corrupt(_) => libc::EIO,
            SourceError::NameTooLong(_) => libc::ENAMETOOLONG,
        }
    }
}

/// An opened file: reads byte ranges. Cheap to call repeatedly.
pub trait FileReader: Send + Sync {
    /// Reads up to `size` bytes at `offset`; fewer only at end of file.
    fn read_at(&self, offset: u64, size: u32) -> Result<Vec<u8>, SourceError>;
    /// Reads into `buf` at `offset`: fills it except at end of file, and
    /// returns the count. Readers of local files read straight into it.
    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        let data = self.read_at(offset, u32::try_from(buf.len()).unwrap_or(u32::MAX))?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }
    /// Whether what this reader returns is final (verified): only then may
    /// the kernel keep the pages across opens. A reader that serves bytes
    /// while they arrive (before a checksum) says false.
    fn cacheable(&self) -> bool {
        true
    }
    /// Whether every byte has arrived and been verified (a reader of a
    /// transfer says so once it is done: opened again, the file would come
    /// from the cache).
    fn complete(&self) -> bool {
        self.cacheable()
    }
    /// The file's true size, when the reader knows it (a listing may have
    /// been told a different one by a host API).
    fn size(&self) -> Option<u64> {
        None
    }
    /// Bytes fetched so far and the total, while the contents are still
    /// arriving from the origin; `None` once complete (or when local).
    fn progress(&self) -> Option<(u64, u64)> {
        None
    }
    /// The complete, verified contents as a local file, when they are one
    /// (the kernel may then read it directly).
    fn local_file(&self) -> Option<&std::fs::File> {
        None
    }
}

/// What a source has done so far, for metrics: every field only grows,
/// except `in_flight`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Requests sent to the origin.
    pub requests: u64,
    /// Bytes received from the origin.
    pub bytes: u64,
    /// Opens served from the local cache.
    pub cache_hits: u64,
    /// Opens that had to fetch from the origin.
    pub cache_misses: u64,
    /// Fetches from the origin running now.
    pub in_flight: u64,
}

/// Counts opens served from the cache and opens that fetched.
#[derive(Debug, Default)]
pub struct CacheCounts {
    pub hits: std::sync::atomic::AtomicU64,
    pub misses: std::sync::atomic::AtomicU64,
}

impl CacheCounts {
    pub fn record(&self, hit: bool) {
        let c = if hit { &self.hits } else { &self.misses };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }
}

/// Locks a mutex; a panic elsewhere while it was held leaves the data
/// usable (every value behind these locks stays consistent between calls).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Complete, verified contents held in memory.
pub struct MemoryFile(pub Arc<[u8]>);

impl FileReader for MemoryFile {
    fn read_at(&self, offset: u64, size: u32) -> Result<Vec<u8>, SourceError> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let end = start.saturating_add(size as usize).min(self.0.len());
        Ok(self.0[start..end].to_vec())
    }
    fn size(&self) -> Option<u64> {
        Some(self.0.len() as u64)
    }
}

/// A read-only tree. Calls block; the FUSE adapter calls them from its
/// worker threads. Implementations must bound every call in time.
pub trait Source: Send + Sync {
    /// The repository name (for logs).
    fn name(&self) -> &str;
    /// The root directory.
    fn root(&self) -> Result<Node, SourceError>;
    /// The children of a directory, with exact sizes, sorted by name
    /// (bytewise: lookups search them).
    fn list(&self, dir: &Node) -> Result<Arc<Vec<Entry>>, SourceError>;
    /// The children of a directory for a walk that may want only their
    /// names (`find`): `(entries, true)` is what `list` returns; a source
    /// whose sizes cost requests may answer `(entries, false)` instead,
    /// names and kinds with files and symlinks of size 0 and keys that may
    /// differ from `list`'s, the sized listing asked for when one of them
    /// is looked at.
    fn list_names(&self, dir: &Node) -> Result<(Arc<Vec<Entry>>, bool), SourceError> {
        self.list(dir).map(|e| (e, true))
    }
    /// Opens a file for reading.
    fn open(&self, file: &Node) -> Result<Arc<dyn FileReader>, SourceError>;
    /// The target of a symlink.
    fn readlink(&self, link: &Node) -> Result<Vec<u8>, SourceError>;
    /// A hint that the directory is being listed (`ls`, `find`, `grep -r`):
    /// a source may start fetching its small files in the background.
    fn prefetch(&self, _dir: &Node) {}
    /// Bumped whenever the tree changes (a followed branch moved): nodes
    /// from an older generation must be looked up again by path.
    fn generation(&self) -> u64 {
        0
    }
    /// Requests made and bytes received so far (for `repofs status`).
    fn traffic(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Traffic, cache use and fetches in flight (for metrics).
    fn activity(&self) -> Activity {
        let (requests, bytes) = self.traffic();
        Activity {
            requests,
            bytes,
            ..Activity::default()
        }
    }
    /// Identifiers of a node a build tool can key on without reading it,
    /// as (short name, value): for git `oid` (blob or tree id), `lfs_oid`,
    /// and on the root `commit`; for S3 `etag`. The adapter publishes them
    /// as `user.repofs.<name>` extended attributes.
    fn ids(&self, _node: &Node, _root: bool) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// What is being served, when it has a version (a git commit).
    fn version(&self) -> Option<String> {
        None
    }
    /// How long the kernel may cache names and attributes.
    fn attr_ttl(&self) -> Duration;
    /// Whether a node's contents never change (then the kernel may keep a
    /// file's pages across opens as long as the node behind the inode is the same).
    fn immutable(&self) -> bool;
    /// Whether a directory node always lists the same entries (its key
    /// names its contents), so the kernel may cache its listing.
    fn dirs_immutable(&self) -> bool {
        false
    }
}
