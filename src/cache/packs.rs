//! Small entries packed into segment files, so that a million of them do
//! not cost a million files and a million partly used 4 KiB blocks.
//!
//! A segment (`<dir>/packs/<pid>-<nanos>-<n>.pack`, named by the process
//! that writes it, so no two processes ever append to one file) is a run of
//! records:
//!
//! ```text
//! magic "RPK1" | key length u16 LE | data length u32 LE | crc32 of key and data u32 LE | key | data
//! ```
//!
//! Records are appended under a lock held only for the write (a few KiB,
//! never any network I/O). Every read checks the magic, the key and the
//! crc: a damaged record reads as absent, and the caller fetches again.
//! At start the segments are walked record header by record header (data
//! is skipped) to rebuild the index; a torn record at the end of a segment
//! (a crash mid-append) ends that walk. A segment is evicted whole: the
//! owner walks it again to take its keys out of the index.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const MAGIC: &[u8; 4] = b"RPK1";
const HEADER: u64 = 14;
/// Entries up to this size are packed.
pub const PACK_MAX: usize = 32 * 1024;

/// Where a packed entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub seg: u32,
    pub offset: u64,
    /// The whole record (header, key and data): what it costs on disk.
    pub len: u32,
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
}

struct Active {
    seg: u32,
    file: File,
    len: u64,
}

/// The segments of one cache directory.
pub struct Packs {
    dir: PathBuf,
    segment_max: u64,
    segments: Mutex<HashMap<u32, Segment>>,
    active: Mutex<Option<Active>>,
    next_seg: AtomicU64,
}

/// A segment found at start: its last change and its records.
pub type FoundSegment = (std::time::SystemTime, Vec<Found>);

/// One record found by walking a segment.
pub struct Found {
    pub key: String,
    pub loc: Loc,
}

impl Packs {
    /// Opens the segments under `dir`, returning each with its records and
    /// its last change. `segment_max` bounds a segment's size.
    pub fn open(dir: &Path, segment_max: u64) -> io::Result<(Packs, Vec<FoundSegment>)> {
        fs::create_dir_all(dir)?;
        let packs = Packs {
            dir: dir.to_owned(),
            segment_max,
            segments: Mutex::new(HashMap::new()),
            active: Mutex::new(None),
            next_seg: AtomicU64::new(0),
        };
        let mut found = Vec::new();
        for e in fs::read_dir(dir)?.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("pack") {
                continue;
            }
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let when = file
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            let seg = packs.next_seg.fetch_add(1, Ordering::Relaxed) as u32;
            let records = walk(&file, seg);
            if records.is_empty() {
                let _ = fs::remove_file(&path);
                continue;
            }
            lock(&packs.segments).insert(
                seg,
                Segment {
                    path,
                    file: Arc::new(file),
                },
            );
            found.push((when, records));
        }
        Ok((packs, found))
    }

    /// Appends a record; returns where it is.
    pub fn append(&self, key: &str, data: &[u8]) -> io::Result<Loc> {
        let key_len = u16::try_from(key.len()).map_err(|_| io::Error::other("key too long"))?;
        let data_len =
            u32::try_from(data.len()).map_err(|_| io::Error::other("entry too large to pack"))?;
        let mut record = Vec::with_capacity(HEADER as usize + key.len() + data.len());
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(&key_len.to_le_bytes());
        record.extend_from_slice(&data_len.to_le_bytes());
        record.extend_from_slice(&crc(key.as_bytes(), data).to_le_bytes());
        record.extend_from_slice(key.as_bytes());
        record.extend_from_slice(data);
        let mut active = lock(&self.active);
        if active
            .as_ref()
            .is_none_or(|a| a.len + record.len() as u64 > self.segment_max)
        {
            *active = Some(self.new_segment()?);
        }
        let Some(a) = active.as_mut() else {
            return Err(io::Error::other("no segment"));
        };
        let offset = a.len;
        if let Err(e) = a.file.write_all(&record) {
            // Whatever part was written is a torn record: start a new
            // segment next time rather than append after it.
            *active = None;
            return Err(e);
        }
        a.len += record.len() as u64;
        Ok(Loc {
            seg: a.seg,
            offset,
            len: record.len() as u32,
        })
    }

    fn new_segment(&self) -> io::Result<Active> {
        let seg = self.next_seg.fetch_add(1, Ordering::Relaxed) as u32;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = self
            .dir
            .join(format!("{}-{nanos}-{seg}.pack", std::process::id()));
        let file = fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        let reader = File::open(&path)?;
        lock(&self.segments).insert(
            seg,
            Segment {
                path,
                file: Arc::new(reader),
            },
        );
        Ok(Active { seg, file, len: 0 })
    }

    /// The data of the record at `loc`, if it is intact and holds `key`.
    pub fn read(&self, key: &str, loc: Loc) -> Option<Vec<u8>> {
        let file = lock(&self.segments).get(&loc.seg)?.file.clone();
        let mut record = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut record, loc.offset).ok()?;
        let (k, d) = parse(&record)?;
        if k != key.as_bytes() || HEADER as usize + k.len() + d.len() != record.len() {
            return None;
        }
        Some(d.to_vec())
    }

    /// Takes a segment out of use (for evicting it whole): nothing reads
    /// from or appends to it any more. Returns it to be walked (its keys)
    /// and deleted, unless someone else retired it first.
    pub fn retire(&self, seg: u32) -> Option<Retired> {
        let mut active = lock(&self.active);
        if active.as_ref().is_some_and(|a| a.seg == seg) {
            *active = None;
        }
        let s = lock(&self.segments).remove(&seg)?;
        drop(active);
        Some(Retired { seg, segment: s })
    }

    /// Whether a segment is in use (an entry appended to a segment retired
    /// meanwhile is not to be indexed).
    pub fn is_live(&self, seg: u32) -> bool {
        lock(&self.segments).contains_key(&seg)
    }
}

/// A segment taken out of use.
pub struct Retired {
    seg: u32,
    segment: Segment,
}

impl Retired {
    /// Its records (walked without any lock held).
    pub fn records(&self) -> Vec<Found> {
        walk(&self.segment.file, self.seg)
    }

    /// Deletes its file (readers that hold it keep reading it).
    pub fn delete(self) {
        let _ = fs::remove_file(&self.segment.path);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn crc(key: &[u8], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(data);
    h.finalize()
}

/// A whole record's key and data, if its magic and crc hold.
fn parse(record: &[u8]) -> Option<(&[u8], &[u8])> {
    let (key_len, data_len, sum) = header(record.get(..HEADER as usize)?)?;
    let key_end = HEADER as usize + key_len as usize;
    let key = record.get(HEADER as usize..key_end)?;
    let data = record.get(key_end..key_end.checked_add(data_len as usize)?)?;
    (crc(key, data) == sum).then_some((key, data))
}

fn header(h: &[u8]) -> Option<(u16, u32, u32)> {
    if h.len() < HEADER as usize || &h[..4] != MAGIC {
        return None;
    }
    let key_len = u16::from_le_bytes([h[4], h[5]]);
    let data_len = u32::from_le_bytes([h[6], h[7], h[8], h[9]]);
    let sum = u32::from_le_bytes([h[10], h[11], h[12], h[13]]);
    Some((key_len, data_len, sum))
}

/// Walks a segment's record headers (data skipped, so the crc is checked
/// only when a record is read). Stops at the first record that is not
/// whole: the end of the file, or a torn append.
fn walk(file: &File, seg: u32) -> Vec<Found> {
    let Ok(size) = file.metadata().map(|m| m.len()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut offset = 0u64;
    let mut buf = [0u8; HEADER as usize + 256];
    while offset + HEADER <= size {
        let want = ((size - offset) as usize).min(buf.len());
        if file.read_exact_at(&mut buf[..want], offset).is_err() {
            break;
        }
        let Some((key_len, data_len, _)) = header(&buf[..want]) else {
            break;
        };
        let len = HEADER + u64::from(key_len) + u64::from(data_len);
        let Some(key) = buf.get(HEADER as usize..HEADER as usize + key_len as usize) else {
            break;
        };
        let Ok(key) = std::str::from_utf8(key) else {
            break;
        };
        if offset + len > size || len > u64::from(u32::MAX) {
            break;
        }
        out.push(Found {
            key: key.to_owned(),
            loc: Loc {
                seg,
                offset,
                len: len as u32,
            },
        });
        offset += len;
    }
    out
}

/// The length of the data of `key`'s record at `loc`.
pub fn data_len(key: &str, loc: Loc) -> u64 {
    u64::from(loc.len).saturating_sub(HEADER + key.len() as u64)
}

/// Bytes as a file (an anonymous one in memory), for callers that read
/// cache entries as files.
pub fn memory_file(data: &[u8]) -> io::Result<File> {
    use std::io::Seek;
    use std::os::fd::FromRawFd;
    // SAFETY: a valid C string; the descriptor returned is checked and then
    // owned by the `File`.
    let fd = unsafe { libc::memfd_create(c"repofs-packed".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(data)?;
    f.seek(io::SeekFrom::Start(0))?;
    Ok(f)
}
