//! On-disk content cache with an LRU size cap.
//!
//! The cache knows only keys and bytes. A key is a short string of
//! `[a-z0-9-]` chosen by the caller (for example `git-<object id>`); the
//! content lives in `<dir>/objects/<first two chars>/<key>`. Entries are
//! written to a temp file and renamed into place, so a reader never sees half
//! a file. An in-memory LRU index (rebuilt from the directory at start, oldest
//! access first) keeps the total under the cap. Evicting a file only unlinks
//! it: a reader that already has it open keeps reading it.
//!
//! Verifying that the bytes match the key is the caller's job: only it knows
//! what the key means (an object id, a sha256, an ETag).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

mod disk;
mod memory;
use disk::Disk;
pub use disk::space as disk_space;
pub use memory::Memory;

/// The file system block entries are counted in.
pub const BLOCK: u64 = 4096;

/// What an entry of `len` bytes costs against the cap: the disk blocks it
/// takes (4 KiB each, at least one), so that a million small entries count
/// for the space they really use.
pub fn charge(len: u64) -> u64 {
    len.div_ceil(BLOCK).max(1) * BLOCK
}

/// The content store. Cloning it is cheap and shares the index.
#[derive(Clone)]
pub struct Cache {
    root: PathBuf,
    cap: u64,
    index: Arc<Mutex<Index>>,
    tmp_counter: Arc<AtomicU64>,
    disk: Arc<Disk>,
}

struct Index {
    lru: LruCache<String, u64>,
    total: u64,
}

/// Figures for status output and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: u64,
    pub cap: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache key {0:?} is not valid (only a-z, 0-9 and '-' are allowed)")]
    BadKey(String),
    #[error("cache directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Cache {
    /// Opens (creating if needed) the cache at `root` and rebuilds the index
    /// from what is on disk, evicting down to `cap` if it is over.
    pub fn open(root: &Path, cap: u64) -> Result<Cache, CacheError> {
        let objects = root.join("objects");
        let tmp = root.join("tmp");
        fs::create_dir_all(&objects).map_err(io_err(&objects))?;
        // Leftover temp files are from a crash mid-write: drop them.
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;

        let mut found: Vec<(std::time::SystemTime, String, u64)> = Vec::new();
        for shard in fs::read_dir(&objects).map_err(io_err(&objects))? {
            let shard = shard.map_err(io_err(&objects))?;
            let Ok(entries) = fs::read_dir(shard.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Ok(meta) = e.metadata() else { continue };
                if !meta.is_file() || valid_key(&name).is_err() {
                    continue;
                }
                let when = meta
                    .accessed()
                    .or_else(|_| meta.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                found.push((when, name, charge(meta.len())));
            }
        }
        found.sort();
        let mut index = Index {
            lru: LruCache::unbounded(),
            total: 0,
        };
        for (_, key, len) in found {
            index.total += len;
            index.lru.put(key, len);
        }
        let cache = Cache {
            root: root.to_owned(),
            cap,
            index: Arc::new(Mutex::new(index)),
            tmp_counter: Arc::new(AtomicU64::new(0)),
            disk: Arc::new(Disk::new(root)),
        };
        cache.evict(0);
        Ok(cache)
    }

    fn path_of(&self, key: &str) -> PathBuf {
        let shard = key.get(key.len().saturating_sub(2)..).unwrap_or("00");
        self.root.join("objects").join(shard).join(key)
    }

    /// Opens the entry for reading, marking it recently used.
    pub fn get(&self, key: &str) -> Option<File> {
        valid_key(key).ok()?;
        let path = self.path_of(key);
        match File::open(&path) {
            Ok(f) => {
                let mut idx = self.lock();
                if idx.lru.get(key).is_none() {
                    // Written by another process sharing the directory: adopt it.
                    if let Ok(m) = f.metadata() {
                        idx.total += charge(m.len());
                        idx.lru.put(key.to_owned(), charge(m.len()));
                    }
                }
                Some(f)
            }
            Err(_) => {
                let mut idx = self.lock();
                if let Some(len) = idx.lru.pop(key) {
                    idx.total -= len;
                }
                None
            }
        }
    }

    /// Whether an entry exists (does not touch its recency).
    pub fn contains(&self, key: &str) -> bool {
        valid_key(key).is_ok() && self.path_of(key).is_file()
    }

    /// Stores `data` under `key` (atomically) and returns it opened for reading.
    pub fn insert(&self, key: &str, data: &[u8]) -> Result<File, CacheError> {
        let mut w = self.writer(key)?;
        w.write_all(data).map_err(io_err(&w.tmp_path))?;
        w.commit()
    }

    /// Starts a streamed insert; nothing is visible until [`CacheWriter::commit`].
    pub fn writer(&self, key: &str) -> Result<CacheWriter, CacheError> {
        valid_key(key)?;
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp_path = self
            .root
            .join("tmp")
            .join(format!("{}-{}-{key}", std::process::id(), n));
        let file = self
            .retry_full(0, || File::create(&tmp_path))
            .map_err(io_err(&tmp_path))?;
        Ok(CacheWriter {
            cache: self.clone(),
            key: key.to_owned(),
            tmp_path,
            file: Some(io::BufWriter::with_capacity(256 * 1024, file)),
            len: 0,
            committed: false,
        })
    }

    /// Removes an entry (for example one found corrupt by its reader).
    pub fn remove(&self, key: &str) {
        if valid_key(key).is_err() {
            return;
        }
        let _ = fs::remove_file(self.path_of(key));
        let mut idx = self.lock();
        if let Some(len) = idx.lru.pop(key) {
            idx.total -= len;
        }
    }

    pub fn stats(&self) -> CacheStats {
        let idx = self.lock();
        CacheStats {
            entries: idx.lru.len(),
            bytes: idx.total,
            cap: self.cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding the lock leaves the index usable: recover it.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Free and total bytes of the cache's disk (for status output).
    pub fn disk(&self) -> Option<(u64, u64)> {
        self.disk.space()
    }

    /// Evicts least recently used entries until `incoming` more bytes fit
    /// under the cap, and the disk keeps its reserve free.
    fn evict(&self, incoming: u64) {
        let mut victims = Vec::new();
        {
            let mut idx = self.lock();
            while idx.total + incoming > self.cap {
                match idx.lru.pop_lru() {
                    Some((k, len)) => {
                        idx.total -= len;
                        victims.push(k);
                    }
                    None => break,
                }
            }
        }
        for k in victims {
            tracing::debug!(key = %k, "cache: evicting");
            let _ = fs::remove_file(self.path_of(&k));
        }
        // The incoming bytes are already on the disk (in their temp file):
        // only the reserve is to be kept.
        self.make_room(0);
    }

    /// Evicts least recently used entries until the disk has `need` bytes
    /// of room above its reserve (or nothing is left to evict). Whether
    /// there is room now.
    pub fn make_room(&self, need: u64) -> bool {
        let mut warned = false;
        loop {
            match self.disk.room() {
                // Zero room means at (or below) the reserve: make some.
                Some(room) if room >= need.max(1) => return true,
                None => return true, // cannot tell: let the write say
                Some(_) => {}
            }
            if !warned {
                self.disk
                    .warn_full(self.cap, "the disk, not cache_size, limits the cache");
                warned = true;
            }
            let victim = {
                let mut idx = self.lock();
                let v = idx.lru.pop_lru();
                if let Some((_, len)) = &v {
                    idx.total -= len;
                }
                v
            };
            match victim {
                Some((k, _)) => {
                    tracing::debug!(key = %k, "cache: evicting to make room on the disk");
                    let _ = fs::remove_file(self.path_of(&k));
                }
                None => return false,
            }
        }
    }

    /// Runs a write; when the disk is full, makes room and tries once more.
    fn retry_full<T>(&self, need: u64, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match op() {
            Err(e) if disk::is_full(&e) => {
                if !self.make_room(need.saturating_add(1 << 20)) {
                    self.disk.warn_full(self.cap, "nothing left to evict");
                    return Err(e);
                }
                op()
            }
            other => other,
        }
    }

    /// Logs (at most once a minute) that something could not be cached.
    pub fn warn_full(&self, why: &str) {
        self.disk.warn_full(self.cap, why);
    }
}

/// A streamed insert in progress. Dropping it without `commit` discards it.
pub struct CacheWriter {
    cache: Cache,
    key: String,
    tmp_path: PathBuf,
    file: Option<io::BufWriter<File>>,
    len: u64,
    committed: bool,
}

impl Write for CacheWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("cache writer already committed"))?;
        let cache = &self.cache;
        let n = cache.retry_full(buf.len() as u64, || f.write(buf))?;
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => self.cache.retry_full(256 * 1024, || f.flush()),
            None => Ok(()),
        }
    }
}

impl CacheWriter {
    /// The temp file being written: it may be opened for reading while it
    /// grows (for streaming readers); it is renamed into place on commit.
    pub fn path(&self) -> &Path {
        &self.tmp_path
    }

    /// Commits under another key (for content whose id is known only once
    /// it is all written, such as a blob streamed out of a pack).
    pub fn commit_as(mut self, key: &str) -> Result<File, CacheError> {
        valid_key(key)?;
        self.key = key.to_owned();
        self.commit()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.len
    }

    /// Makes the entry visible (rename into place) and returns it opened.
    pub fn commit(mut self) -> Result<File, CacheError> {
        self.flush().map_err(io_err(&self.tmp_path))?;
        let Some(buf) = self.file.take() else {
            return Err(CacheError::Io {
                path: self.tmp_path.clone(),
                source: io::Error::other("already committed"),
            });
        };
        buf.into_inner()
            .map_err(|e| e.into_error())
            .map_err(io_err(&self.tmp_path))?;
        self.cache.evict(charge(self.len));
        let dest = self.cache.path_of(&self.key);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::rename(&self.tmp_path, &dest).map_err(io_err(&dest))?;
        self.committed = true;
        let file = File::open(&dest).map_err(io_err(&dest))?;
        let mut idx = self.cache.lock();
        if let Some(old) = idx.lru.put(self.key.clone(), charge(self.len)) {
            idx.total -= old;
        }
        idx.total += charge(self.len);
        Ok(file)
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        // Whatever failed (a full disk, a rename), no temp file outlives it.
        if !self.committed {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

fn valid_key(key: &str) -> Result<(), CacheError> {
    if key.len() >= 3
        && key.len() <= 200
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(())
    } else {
        Err(CacheError::BadKey(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_all(mut f: File) -> Vec<u8> {
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn insert_get_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path(), 1 << 20).unwrap();
        c.insert("git-abc123", b"hello").unwrap();
        assert_eq!(read_all(c.get("git-abc123").unwrap()), b"hello");
        assert!(c.get("git-nothere").is_none());
        drop(c);
        let c = Cache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(c.stats().entries, 1);
        assert_eq!(c.stats().bytes, BLOCK, "a 5-byte entry takes a block");
        assert_eq!(read_all(c.get("git-abc123").unwrap()), b"hello");
    }

    #[test]
    fn evicts_least_recently_used_and_keeps_open_readers() {
        let dir = tempfile::tempdir().unwrap();
        // Room for two and a half blocks; entries of up to one block each.
        let c = Cache::open(dir.path(), BLOCK * 5 / 2).unwrap();
        c.insert("k-aaa", &[1u8; 100]).unwrap();
        c.insert("k-bbb", &[2u8; 4096]).unwrap();
        let open_a = c.get("k-aaa").unwrap(); // a is now most recent
        c.insert("k-ccc", &[3u8; 100]).unwrap(); // evicts b
        assert!(c.get("k-bbb").is_none());
        assert!(c.get("k-aaa").is_some());
        c.insert("k-ddd", &[4u8; 100]).unwrap(); // evicts c (a was touched)
        assert!(c.get("k-ccc").is_none());
        c.insert("k-eee", &[5u8; 4097]).unwrap(); // two blocks: evicts a and d
        assert!(c.get("k-aaa").is_none());
        // The reader that opened `a` before eviction still reads it whole.
        assert_eq!(read_all(open_a), vec![1u8; 100]);
        assert!(c.stats().bytes <= BLOCK * 5 / 2);
    }

    #[test]
    fn rejects_bad_keys_and_discards_uncommitted() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path(), 1000).unwrap();
        assert!(c.insert("../etc/passwd", b"x").is_err());
        assert!(c.insert("UPPER", b"x").is_err());
        {
            let mut w = c.writer("k-partial").unwrap();
            w.write_all(b"half").unwrap();
        }
        assert!(c.get("k-partial").is_none());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn cap_is_enforced_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Cache::open(dir.path(), 10 * BLOCK).unwrap();
            for k in ["k-one", "k-two", "k-three"] {
                c.insert(k, &[0u8; 300]).unwrap();
            }
        }
        let c = Cache::open(dir.path(), 2 * BLOCK).unwrap();
        assert_eq!(c.stats().entries, 2);
        assert!(c.stats().bytes <= 2 * BLOCK);
    }
}
