//! An S3 bucket (or a prefix in it) as a [`Source`].
//!
//! Directories come from ListObjectsV2 (see [`listing`]: URL-encoded keys,
//! which keys can be names, and which are skipped with a warning). Sizes
//! and mtimes come from the listing, which is cached for `metadata_ttl`.
//! Reads are pinned to the ETag seen in the listing (`If-Match`): a
//! sequential read consumes streamed ranges that grow from 1 MiB to 256 MiB
//! (read-ahead is the stream itself; slightly reordered kernel reads are
//! served from the bytes kept behind it, and a replaced object fails the
//! next range's If-Match), a random read fetches a 1 MiB range. An object
//! read sequentially from start to end is stored in the content cache under
//! a hash of (bucket, key, etag) and served from it afterwards.
//!
//! Errors that concern the whole bucket are never an empty directory: a
//! bucket that does not exist, or that lives in another region than the
//! one configured, fails every listing with EIO (ENOENT from a directory
//! read is taken for its end by libc, so `ls` would show an empty
//! directory); a denied listing is EACCES. Each names the bucket and what
//! to change (for a region, the bucket's region, from `x-amz-bucket-region`
//! or the error document), and the FUSE layer logs it at ERROR.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::Client;
use sha2::Digest;

use crate::cache::{Cache, CacheWriter};
use crate::config::{RepoConfig, S3Config};
use crate::source::{Entry, FileReader, LocalFile, Node, NodeKind, Source, SourceError, lock};

#[path = "s3_client.rs"]
mod client;
#[path = "s3_listing.rs"]
pub mod listing;
#[path = "s3_stream.rs"]
mod stream;

pub use client::{client_for, describe};
pub use listing::sample_keys;

/// A mounted bucket.
pub struct S3Source {
    /// A handle on itself, for readers that outlive a call.
    me: std::sync::Weak<S3Source>,
    name: String,
    cfg: S3Config,
    client: Client,
    cache: Arc<Cache>,
    rt: tokio::runtime::Handle,
    /// FUSE threads' way into the runtime, each wait bounded (`call_timeout`).
    bridge: crate::fetch::bridge::Bridge,
    /// The floor under every body's speed, and the retry policy of resumes.
    floor: crate::fetch::speed::Floor,
    policy: crate::fetch::Policy,
    listings: Mutex<HashMap<String, (Instant, Arc<Vec<Entry>>)>>,
    warned: Mutex<HashSet<String>>,
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    /// Opens served from the cache, and opens that read from the bucket.
    opens: super::CacheCounts,
    /// Readers streaming from the bucket now.
    streaming: AtomicU64,
    /// The fleet's shared cache tier, asked before the bucket.
    shared: Option<Arc<crate::shared::Shared>>,
    /// Objects being fetched from the shared tier, one download each.
    shared_flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl S3Source {
    pub fn new(
        repo: &RepoConfig,
        client: Client,
        cache: Arc<Cache>,
        rt: tokio::runtime::Handle,
        shared: Option<Arc<crate::shared::Shared>>,
        config: &crate::config::Config,
    ) -> Result<Arc<S3Source>, String> {
        let cfg = repo.s3.clone().ok_or("not an S3 repository")?;
        Ok(Arc::new_cyclic(|me| S3Source {
            me: me.clone(),
            name: repo.name.clone(),
            cfg,
            client,
            cache,
            bridge: crate::fetch::bridge::Bridge::new(rt.clone(), config.call_timeout),
            floor: config.low_speed,
            policy: crate::fetch::Policy::new(config.max_attempts),
            rt,
            listings: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            opens: super::CacheCounts::default(),
            streaming: AtomicU64::new(0),
            shared,
            shared_flights: Mutex::new(HashMap::new()),
        }))
    }

    fn warn_once(&self, key: &str, why: &str) {
        if lock(&self.warned).insert(key.to_string()) {
            // Escaped: a key may hold a newline or a terminal escape.
            tracing::warn!(repo = %self.name, key = ?key, "skipping a key that cannot be a file name: {why}");
        }
    }

    fn block_on<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, SourceError>>,
    ) -> Result<T, SourceError> {
        self.bridge
            .call(&format!("bucket '{}'", self.cfg.bucket), fut)
    }

    fn cache_key(&self, key: &str, etag: &str) -> String {
        let mut h = sha2::Sha256::new();
        for part in [self.cfg.bucket.as_bytes(), key.as_bytes(), etag.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        format!("s3-{}", hex::encode(h.finalize()))
    }

    /// An object from the fleet's shared tier (single-part ETags only:
    /// their md5 is what the bytes are checked against).
    fn from_shared(&self, cache_key: &str, etag: &str, size: u64) -> Option<std::fs::File> {
        let shared = self.shared.as_ref()?;
        let md5 = crate::shared::verify::etag_md5(etag)?;
        let object = cache_key.replacen("s3-", "s3/", 1);
        let expect = crate::shared::Expect::Md5 { md5, size };
        // One download per object: concurrent opens wait for the first and
        // then find it in the cache.
        let gate = lock(&self.shared_flights)
            .entry(cache_key.to_string())
            .or_default()
            .clone();
        let got = self.rt.block_on(async {
            let _one = gate.lock().await;
            if let Some(f) = self.cache.get(cache_key) {
                if f.metadata().map(|m| m.len()).ok() == Some(size) {
                    return Some(f);
                }
            }
            shared.fetch(&object, expect, &self.cache, cache_key).await
        });
        lock(&self.shared_flights).remove(cache_key);
        got
    }

    /// Offers an object read whole from the bucket to the shared tier.
    fn share(&self, etag: &str, cache_key: &str) {
        if let (Some(shared), Some(_)) = (&self.shared, crate::shared::verify::etag_md5(etag)) {
            shared.upload(&cache_key.replacen("s3-", "s3/", 1), &self.cache, cache_key);
        }
    }

    /// A GET of `[start, end)`, pinned to the ETag, whose body streams.
    async fn get_stream(
        &self,
        key: &str,
        etag: &str,
        start: u64,
        end: u64,
    ) -> Result<aws_sdk_s3::primitives::ByteStream, SourceError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut req = self
            .client
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .range(format!("bytes={start}-{}", end - 1));
        if !etag.is_empty() {
            req = req.if_match(etag);
        }
        let out = req
            .send()
            .await
            .map_err(|e| describe(&e, &self.cfg.bucket, "GetObject"))?;
        Ok(out.body)
    }

    /// A ranged GET pinned to the ETag.
    async fn get_range(
        &self,
        key: &str,
        etag: &str,
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>, SourceError> {
        let body = self.get_stream(key, etag, start, end).await?;
        let data = body
            .collect()
            .await
            .map_err(|e| {
                SourceError::Unavailable(format!(
                    "reading {key} from bucket {}: {e}",
                    self.cfg.bucket
                ))
            })?
            .into_bytes()
            .to_vec();
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }
}

fn dir_key(prefix: &str) -> Arc<[u8]> {
    let mut k = b"D".to_vec();
    k.extend_from_slice(prefix.as_bytes());
    k.into()
}

fn file_key(key: &str, etag: &str) -> Arc<[u8]> {
    let mut k = b"F".to_vec();
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k.extend_from_slice(etag.as_bytes());
    k.into()
}

fn parse_file_key(k: &[u8]) -> Option<(String, String)> {
    let rest = k.strip_prefix(b"F")?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let key_end = len.checked_add(4)?;
    let key = std::str::from_utf8(rest.get(4..key_end)?).ok()?.to_string();
    let etag = std::str::from_utf8(rest.get(key_end..)?).ok()?.to_string();
    Some((key, etag))
}

/// Bytes kept behind the read position, so that reads the kernel issues
/// slightly out of order are still served from memory.
const KEEP_BEHIND: usize = 8 << 20;
/// A read this far ahead of the stream still counts as sequential.
const AHEAD_SLACK: u64 = 4 << 20;
const STREAM_FIRST: u64 = 1 << 20;
const STREAM_MAX: u64 = 256 << 20;

struct ReadState {
    /// Recent bytes: `buf` holds the object's bytes from `buf_start`.
    buf_start: u64,
    buf: Vec<u8>,
    /// A ranged GET being consumed sequentially: (next byte's offset, end of
    /// its range, body).
    stream: Option<(u64, u64, aws_sdk_s3::primitives::ByteStream)>,
    /// The speed floor of the stream.
    speed: crate::fetch::LowSpeed,
    /// Length of the next streamed range: grows 1 -> 8 -> 64 -> 256 MiB, so
    /// small reads stay small, big ones take few requests, and a replaced
    /// object is noticed at the next range (its If-Match fails).
    next_len: u64,
    /// The range after the stream's, already requested: (start, end, task).
    pending: Option<Pending>,
    /// Set while the object is being read sequentially from byte 0.
    writer: Option<CacheWriter>,
    written: u64,
}

type Pending = (
    u64,
    u64,
    tokio::task::JoinHandle<Result<aws_sdk_s3::primitives::ByteStream, SourceError>>,
);

/// Reads an object: sequential reads consume one streaming GET (open-ended
/// range, pinned to the ETag); random reads fetch 1 MiB ranges.
struct S3Reader {
    src: Arc<S3Source>,
    key: String,
    etag: String,
    size: u64,
    state: Mutex<ReadState>,
}

impl S3Reader {
    /// Appends bytes that follow the buffer (and feeds the cache writer).
    fn append(&self, st: &mut ReadState, at: u64, data: &[u8]) {
        if st.buf_start + st.buf.len() as u64 != at {
            st.buf.clear();
            st.buf_start = at;
        }
        st.buf.extend_from_slice(data);
        if st.buf.len() > KEEP_BEHIND * 2 {
            let drop = st.buf.len() - KEEP_BEHIND;
            st.buf.drain(..drop);
            st.buf_start += drop as u64;
        }
        if st.writer.is_some() {
            if st.written == at {
                let wrote = match st.writer.as_mut() {
                    Some(w) => w.write_all(data),
                    None => Ok(()),
                };
                st.written += data.len() as u64;
                if let Err(e) = wrote {
                    // Reads go on from the network; only the caching stops
                    // (the writer's drop removes its temp file).
                    self.src
                        .cache
                        .warn_full(&format!("S3 object {:?}: {e}", self.key));
                    st.writer = None;
                } else if st.written == self.size {
                    if let Some(w) = st.writer.take() {
                        match w.commit() {
                            Ok(_) => self
                                .src
                                .share(&self.etag, &self.src.cache_key(&self.key, &self.etag)),
                            Err(e) => {
                                tracing::warn!(repo = %self.src.name, "cannot cache {:?}: {e}", self.key)
                            }
                        }
                    }
                }
            } else {
                st.writer = None; // not sequential from the start: not cached this time
            }
        }
    }
}

impl Drop for S3Reader {
    fn drop(&mut self) {
        // A closed file needs no more read-ahead.
        if let Some((_, _, task)) = lock(&self.state).pending.take() {
            task.abort();
        }
        self.src.streaming.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FileReader for S3Reader {
    fn progress(&self) -> Option<(u64, u64)> {
        // Never waits: a reader busy with the network holds the lock.
        let st = self.state.try_lock().ok()?;
        let done = st.buf_start + st.buf.len() as u64;
        (done < self.size).then_some((done, self.size))
    }

    fn read_at(&self, offset: u64, size: u32) -> Result<Vec<u8>, SourceError> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let want_end = (offset + u64::from(size)).min(self.size);
        let mut st = lock(&self.state);
        let in_buf = |st: &ReadState| {
            offset >= st.buf_start && want_end <= st.buf_start + st.buf.len() as u64
        };
        if !in_buf(&st) {
            let stream_pos = st.stream.as_ref().map(|(p, _, _)| *p);
            let buf_end = st.buf_start + st.buf.len() as u64;
            // The first read of an open may start past pages the kernel
            // already has: still stream from 0, so the cache gets it all.
            let from_zero = st.buf.is_empty()
                && st.writer.is_some()
                && st.written == 0
                && offset <= AHEAD_SLACK;
            let sequential = match stream_pos {
                Some(p) => offset >= st.buf_start && offset <= p + AHEAD_SLACK,
                None => offset == 0 || from_zero || (offset == buf_end && !st.buf.is_empty()),
            };
            if sequential {
                if st.stream.is_none() {
                    let start = if from_zero { 0 } else { offset };
                    st.next_len = STREAM_FIRST;
                    self.open_stream(&mut st, start)?;
                    st.buf.clear();
                    st.buf_start = start;
                }
                self.pull(&mut st, want_end)?;
            } else {
                // Random access: a small range, and no stream.
                st.stream = None;
                if let Some((_, _, task)) = st.pending.take() {
                    task.abort();
                }
                let end = (offset + (1u64 << 20).max(u64::from(size))).min(self.size);
                let data = self
                    .src
                    .block_on(self.src.get_range(&self.key, &self.etag, offset, end))?;
                if data.len() as u64 != end - offset {
                    return Err(SourceError::Unavailable(format!(
                        "S3 returned {} bytes for a {}-byte range of {}",
                        data.len(),
                        end - offset,
                        self.key
                    )));
                }
                st.buf.clear();
                self.append(&mut st, offset, &data);
            }
            if !in_buf(&st) {
                return Err(SourceError::Unavailable(format!(
                    "{} in bucket {} ended before its listed size",
                    self.key, self.src.cfg.bucket
                )));
            }
        }
        let a = (offset - st.buf_start) as usize;
        let b = (want_end - st.buf_start) as usize;
        Ok(st.buf[a..b].to_vec())
    }
}

impl Source for S3Source {
    fn name(&self) -> &str {
        &self.name
    }

    fn root(&self) -> Result<Node, SourceError> {
        Ok(Node {
            key: dir_key(&self.cfg.prefix),
            kind: NodeKind::Dir,
            mtime: SystemTime::UNIX_EPOCH,
        })
    }

    fn list(&self, dir: &Node) -> Result<Arc<Vec<Entry>>, SourceError> {
        let prefix = dir
            .key
            .strip_prefix(b"D")
            .and_then(|p| std::str::from_utf8(p).ok())
            .ok_or_else(|| SourceError::NotFound("not an S3 directory".into()))?
            .to_string();
        if let Some((when, entries)) = lock(&self.listings).get(&prefix) {
            if when.elapsed() < self.cfg.metadata_ttl {
                return Ok(entries.clone());
            }
        }
        let entries = Arc::new(self.block_on(self.list_prefix(&prefix))?);
        lock(&self.listings).insert(prefix, (Instant::now(), entries.clone()));
        Ok(entries)
    }

    fn open(&self, file: &Node) -> Result<Arc<dyn FileReader>, SourceError> {
        let (key, etag) = parse_file_key(&file.key)
            .ok_or_else(|| SourceError::NotFound("not an S3 object".into()))?;
        let NodeKind::File { size, .. } = file.kind else {
            return Err(SourceError::NotFound("not a file".into()));
        };
        let ck = self.cache_key(&key, &etag);
        if let Some(f) = self.cache.get(&ck) {
            if f.metadata().map(|m| m.len()).ok() == Some(size) {
                self.opens.record(true);
                return Ok(Arc::new(LocalFile::new(f, size)));
            }
            self.cache.remove(&ck);
        }
        if let Some(f) = self.from_shared(&ck, &etag, size) {
            self.opens.record(true);
            return Ok(Arc::new(LocalFile::new(f, size)));
        }
        self.opens.record(false);
        let writer = self.cache.writer(&ck).ok();
        let src = self
            .me
            .upgrade()
            .ok_or_else(|| SourceError::Unavailable("the repository is being unmounted".into()))?;
        self.streaming.fetch_add(1, Ordering::Relaxed);
        let speed = crate::fetch::LowSpeed::new(src.floor);
        Ok(Arc::new(S3Reader {
            src,
            key,
            etag,
            size,
            state: Mutex::new(ReadState {
                buf_start: 0,
                buf: Vec::new(),
                stream: None,
                speed,
                pending: None,
                next_len: STREAM_FIRST,
                writer,
                written: 0,
            }),
        }))
    }

    fn readlink(&self, _link: &Node) -> Result<Vec<u8>, SourceError> {
        Err(SourceError::NotFound("S3 has no symlinks".into()))
    }

    fn attr_ttl(&self) -> Duration {
        self.cfg.metadata_ttl.min(Duration::from_secs(60))
    }

    fn traffic(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    fn activity(&self) -> super::Activity {
        let (cache_hits, cache_misses) = self.opens.get();
        super::Activity {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            cache_hits,
            cache_misses,
            in_flight: self.streaming.load(Ordering::Relaxed),
        }
    }

    fn ids(&self, node: &Node, _root: bool) -> Vec<(&'static str, String)> {
        match parse_file_key(&node.key) {
            Some((_, etag)) if !etag.is_empty() => {
                vec![("etag", etag.trim_matches('"').to_string())]
            }
            _ => Vec::new(),
        }
    }

    fn immutable(&self) -> bool {
        // Nodes carry the ETag: the same node always has the same bytes.
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_round_trip_and_reject_garbage() {
        let k = file_key("dir/a.txt", "\"etag\"");
        assert_eq!(
            parse_file_key(&k),
            Some(("dir/a.txt".to_string(), "\"etag\"".to_string()))
        );
        for bad in [
            &b""[..],
            b"F",
            b"F\0\0",
            b"F\xff\xff\xff\xff",
            b"F\0\0\0\x09short",
            b"D\0\0\0\0",
            b"F\0\0\0\x01\xff",
        ] {
            assert_eq!(parse_file_key(bad), None, "{bad:?}");
        }
    }
}
