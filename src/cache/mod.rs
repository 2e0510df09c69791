//! On-disk content cache with an LRU size cap.
//!
//! The cache knows only keys and bytes. A key is a short string of
//! `[a-z0-9-]` chosen by the caller (for example `git-<object id>`); the
//! content lives in `<dir>/objects/<first two chars>/<key>`. Entries are
//! written to a temp file and renamed into place, so a reader never sees half
//! a file. Entries up to 32 KiB given whole ([`Cache::insert`]) are packed
//! into segment files instead (`packs.rs`), and read back as in-memory
//! files. An in-memory LRU index (rebuilt from the directory at start, oldest
//! access first) keeps the total under the cap: a file counts its 4 KiB
//! blocks, a packed entry its bytes, and a packed entry evicted takes its
//! whole segment with it. Evicting a file only unlinks it: a reader that
//! already has it open keeps reading it.
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
mod packs;
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
    packs: Arc<packs::Packs>,
}

struct Index {
    lru: LruCache<String, Slot>,
    total: u64,
    /// Bytes of each segment's records that entries point to.
    seg_live: std::collections::HashMap<u32, u64>,
}

impl Index {
    fn add(&mut self, slot: Slot) {
        self.total += slot.charge;
        if let Some(loc) = slot.packed {
            *self.seg_live.entry(loc.seg).or_default() += u64::from(loc.len);
        }
    }

    /// Accounts for an entry gone from the LRU; returns its segment if no
    /// entry points into it any more.
    fn take(&mut self, slot: Slot) -> Option<u32> {
        self.total -= slot.charge;
        let loc = slot.packed?;
        let live = self.seg_live.get_mut(&loc.seg)?;
        *live = live.saturating_sub(u64::from(loc.len));
        if *live == 0 {
            self.seg_live.remove(&loc.seg);
            return Some(loc.seg);
        }
        None
    }
}

/// An entry of the index: what it costs against the cap, and where it is
/// packed (`None`: its own file).
#[derive(Clone, Copy)]
struct Slot {
    charge: u64,
    packed: Option<packs::Loc>,
}

impl Slot {
    fn file(charge: u64) -> Slot {
        Slot {
            charge,
            packed: None,
        }
    }
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

        let mut found: Vec<(std::time::SystemTime, String, Slot)> = Vec::new();
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
                found.push((when, name, Slot::file(charge(meta.len()))));
            }
        }
        let packs_dir = root.join("packs");
        let (packs, segments) = packs::Packs::open(&packs_dir, (cap / 16).clamp(1 << 20, 64 << 20))
            .map_err(io_err(&packs_dir))?;
        for (when, records) in segments {
            for r in records {
                let slot = Slot {
                    charge: u64::from(r.loc.len),
                    packed: Some(r.loc),
                };
                found.push((when, r.key, slot));
            }
        }
        found.sort_by_key(|f| f.0);
        let mut index = Index {
            lru: LruCache::unbounded(),
            total: 0,
            seg_live: Default::default(),
        };
        for (_, key, slot) in found {
            index.add(slot);
            if let Some(old) = index.lru.put(key, slot) {
                index.take(old);
            }
        }
        let cache = Cache {
            root: root.to_owned(),
            cap,
            index: Arc::new(Mutex::new(index)),
            tmp_counter: Arc::new(AtomicU64::new(0)),
            disk: Arc::new(Disk::new(root)),
            packs: Arc::new(packs),
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
        let packed = self.lock().lru.get(key).and_then(|s| s.packed);
        if let Some(loc) = packed {
            return match self.packs.read(key, loc) {
                Some(data) => packs::memory_file(&data).ok(),
                None => {
                    tracing::warn!(key, "cache: a packed entry is damaged; dropping it");
                    self.remove(key);
                    None
                }
            };
        }
        let path = self.path_of(key);
        match File::open(&path) {
            Ok(f) => {
                // Entries are mostly read start to end, by several threads at
                // once: a wider readahead keeps the disk ahead of them.
                // SAFETY: a valid descriptor; the call only sets a hint.
                unsafe {
                    libc::posix_fadvise(
                        std::os::fd::AsRawFd::as_raw_fd(&f),
                        0,
                        0,
                        libc::POSIX_FADV_SEQUENTIAL,
                    );
                }
                let mut idx = self.lock();
                if idx.lru.get(key).is_none() {
                    // Written by another process sharing the directory: adopt it.
                    if let Ok(m) = f.metadata() {
                        let slot = Slot::file(charge(m.len()));
                        idx.add(slot);
                        idx.lru.put(key.to_owned(), slot);
                    }
                }
                Some(f)
            }
            Err(_) => {
                let mut idx = self.lock();
                if let Some(s) = idx.lru.pop(key) {
                    idx.take(s);
                }
                None
            }
        }
    }

    /// The size of an entry's contents (does not touch its recency, and
    /// trusts the disk: a damaged entry is caught when it is read).
    pub fn size_of(&self, key: &str) -> Option<u64> {
        valid_key(key).ok()?;
        let packed = self.lock().lru.peek(key).and_then(|s| s.packed);
        match packed {
            Some(loc) => Some(packs::data_len(key, loc)),
            None => fs::metadata(self.path_of(key)).ok().map(|m| m.len()),
        }
    }

    /// Whether an entry exists (does not touch its recency).
    pub fn contains(&self, key: &str) -> bool {
        if valid_key(key).is_err() {
            return false;
        }
        if self
            .lock()
            .lru
            .peek(key)
            .is_some_and(|s| s.packed.is_some())
        {
            return true;
        }
        self.path_of(key).is_file()
    }

    /// Stores `data` under `key` (atomically: a reader finds all of it or
    /// nothing). Small entries are packed.
    pub fn insert(&self, key: &str, data: &[u8]) -> Result<(), CacheError> {
        valid_key(key)?;
        if data.len() > packs::PACK_MAX {
            let mut w = self.writer(key)?;
            w.write_all(data).map_err(io_err(&w.tmp_path))?;
            return w.commit().map(drop);
        }
        let need = (data.len() + key.len()) as u64 + 14;
        self.evict(need);
        let loc = self
            .retry_full(need, || self.packs.append(key, data))
            .map_err(io_err(&self.root.join("packs")))?;
        let slot = Slot {
            charge: u64::from(loc.len),
            packed: Some(loc),
        };
        let emptied = {
            let mut idx = self.lock();
            // Evicted while this was appended: the entry went with it.
            if !self.packs.is_live(loc.seg) {
                return Ok(());
            }
            idx.add(slot);
            idx.lru
                .put(key.to_owned(), slot)
                .and_then(|old| idx.take(old))
        };
        if let Some(seg) = emptied {
            self.drop_segment(seg);
        }
        Ok(())
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
        let (popped, emptied) = {
            let mut idx = self.lock();
            let popped = idx.lru.pop(key);
            let emptied = popped.and_then(|s| idx.take(s));
            (popped, emptied)
        };
        // A packed record stays in its segment until no entry points into
        // the segment any more.
        if popped.is_none_or(|s| s.packed.is_none()) {
            let _ = fs::remove_file(self.path_of(key));
        }
        if let Some(seg) = emptied {
            self.drop_segment(seg);
        }
    }

    /// Deletes a segment no entry points into.
    fn drop_segment(&self, seg: u32) {
        if let Some(r) = self.packs.retire(seg) {
            r.delete();
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
        loop {
            let victim = {
                let mut idx = self.lock();
                if idx.total + incoming <= self.cap {
                    break;
                }
                let v = idx.lru.pop_lru();
                if let Some((_, s)) = &v {
                    idx.take(*s);
                }
                v
            };
            match victim {
                Some((k, s)) => self.drop_victim(&k, s),
                None => break,
            }
        }
        // The incoming bytes are already on the disk (in their temp file):
        // only the reserve is to be kept.
        self.make_room(0);
    }

    /// Takes an evicted entry off the disk: its file, or its whole segment.
    fn drop_victim(&self, key: &str, slot: Slot) {
        tracing::debug!(key, "cache: evicting");
        let Some(loc) = slot.packed else {
            let _ = fs::remove_file(self.path_of(key));
            return;
        };
        // Out of use first, so that nothing is appended to it after its
        // keys were read; the keys are read without a lock (disk I/O).
        let Some(retired) = self.packs.retire(loc.seg) else {
            return; // another thread is evicting it
        };
        let records = retired.records();
        {
            let mut idx = self.lock();
            for r in records {
                let here = idx
                    .lru
                    .peek(&r.key)
                    .is_some_and(|s| s.packed == Some(r.loc));
                if here {
                    if let Some(s) = idx.lru.pop(&r.key) {
                        idx.take(s);
                    }
                }
            }
            idx.seg_live.remove(&loc.seg);
        }
        retired.delete();
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
                if let Some((_, s)) = &v {
                    idx.take(*s);
                }
                v
            };
            match victim {
                Some((k, s)) => self.drop_victim(&k, s),
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

    /// Drops everything from `offset` on (a download that turned out wrong
    /// past a point no reader was given): the next write lands there.
    pub fn truncate_to(&mut self, offset: u64) -> io::Result<()> {
        use std::io::Seek;
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("cache writer already committed"))?;
        f.flush()?;
        let inner = f.get_mut();
        inner.set_len(offset.min(self.len))?;
        inner.seek(io::SeekFrom::Start(offset.min(self.len)))?;
        self.len = offset.min(self.len);
        Ok(())
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
        let emptied = {
            let mut idx = self.cache.lock();
            let slot = Slot::file(charge(self.len));
            idx.add(slot);
            idx.lru
                .put(self.key.clone(), slot)
                .and_then(|old| idx.take(old))
        };
        if let Some(seg) = emptied {
            self.cache.drop_segment(seg);
        }
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
mod tests;
