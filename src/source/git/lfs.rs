//! Git LFS: pointer parsing, the batch API, and streamed downloads.
//!
//! A blob under 1024 bytes that parses as a pointer (exactly as git-lfs
//! reads them) is shown with the real size and contents. Contents come from
//! `<endpoint>/objects/batch` (operation `download`, transfer `basic`); the
//! `href` it returns may be on another host, so it is fetched with exactly
//! the batch response's headers and never the git credentials. Actions are
//! reused until they expire, then asked for again. Bytes are written to a
//! cache temp file as they arrive, so readers of the first megabyte need not
//! wait for the whole object; the object enters the cache (as
//! `lfs-<sha256>`) only after its size and sha256 check out.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::Digest;
use tokio::sync::watch;

use super::transport::{RemoteError, Transport};
use crate::cache::Cache;
use crate::config::Provider;
use crate::source::{FileReader, SourceError, read_file_range as pread};

/// Largest blob that can be a pointer (git-lfs's own limit).
pub const MAX_POINTER_SIZE: u64 = 1024;
/// Most objects asked for in one batch request.
const BATCH_MAX: usize = 100;
/// Smallest possible pointer: version line, oid line, `size 0`.
pub const MIN_POINTER_SIZE: u64 = 120;

/// A parsed LFS pointer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pointer {
    /// Lower-case hex sha256.
    pub oid: String,
    pub size: u64,
}

impl Pointer {
    /// Node key for an LFS file: `lfs:<sha256>:<size>`.
    pub fn key(&self) -> Vec<u8> {
        format!("lfs:{}:{}", self.oid, self.size).into_bytes()
    }

    pub fn from_key(key: &[u8]) -> Option<Pointer> {
        let s = std::str::from_utf8(key).ok()?.strip_prefix("lfs:")?;
        let (oid, size) = s.split_once(':')?;
        Some(Pointer {
            oid: oid.to_string(),
            size: size.parse().ok()?,
        })
    }

    pub fn cache_key(&self) -> String {
        format!("lfs-{}", self.oid)
    }
}

/// Parses a pointer file the way git-lfs does: `version` first, then keys
/// in order, `oid sha256:<64 hex>` and `size <n>` required, every line
/// `key value\n`. Anything else is not a pointer (it is shown as it is).
pub fn parse_pointer(data: &[u8]) -> Option<Pointer> {
    if data.len() as u64 >= MAX_POINTER_SIZE || !data.ends_with(b"\n") {
        return None;
    }
    let text = std::str::from_utf8(data).ok()?;
    let mut lines = text.lines();
    let version = lines.next()?.strip_prefix("version ")?;
    if version != "https://git-lfs.github.com/spec/v1"
        && version != "https://hawser.github.com/spec/v1"
    {
        return None;
    }
    let (mut oid, mut size) = (None, None);
    let mut last_key = String::new();
    for line in lines {
        let (k, v) = line.split_once(' ')?;
        if k.is_empty() || v.is_empty() || k <= last_key.as_str() {
            return None; // keys must be sorted and unique
        }
        match k {
            "oid" => {
                let hex = v.strip_prefix("sha256:")?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return None;
                }
                oid = Some(hex.to_string());
            }
            "size" => {
                if !v.bytes().all(|b| b.is_ascii_digit()) || (v.len() > 1 && v.starts_with('0')) {
                    return None;
                }
                size = Some(v.parse::<u64>().ok()?);
            }
            k if k.starts_with("ext-") => {}
            _ => return None,
        }
        last_key = k.to_string();
    }
    Some(Pointer {
        oid: oid?,
        size: size?,
    })
}

/// The LFS endpoint for a repository: `lfs.url` from a committed
/// `.lfsconfig`, else `<clone url>/info/lfs` (adding `.git` when the clone
/// URL lacks it, as git-lfs does).
pub fn endpoint(clone_url: &str, lfsconfig: Option<&[u8]>) -> String {
    if let Some(url) = lfsconfig.and_then(lfsconfig_url) {
        return url.trim_end_matches('/').to_string();
    }
    if clone_url.ends_with(".git") {
        format!("{clone_url}/info/lfs")
    } else {
        format!("{clone_url}.git/info/lfs")
    }
}

/// `url` in the `[lfs]` section of a git-config style file.
fn lfsconfig_url(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let mut in_lfs = false;
    for raw in text.lines() {
        let line = raw.split(['#', ';']).next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_lfs = line
                .trim_matches(['[', ']'])
                .trim()
                .eq_ignore_ascii_case("lfs");
            continue;
        }
        if in_lfs {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim().eq_ignore_ascii_case("url") {
                    let v = v.trim().trim_matches('"');
                    if v.starts_with("http://") || v.starts_with("https://") {
                        return Some(v.to_string());
                    }
                }
            }
        }
    }
    None
}

#[derive(Debug, Clone)]
struct Action {
    href: String,
    headers: Vec<(String, String)>,
    expires: Option<Instant>,
}

#[derive(Debug, Clone)]
enum State {
    /// Bytes written so far.
    Progress(u64),
    /// Complete, verified and in the cache.
    Done,
    Failed(SourceError),
}

/// One download in flight, shared by every reader of the object.
struct Download {
    /// The temp file being written (readable while it grows).
    file: std::fs::File,
    state: watch::Receiver<State>,
}

/// The LFS side of one repository.
pub struct Lfs {
    pub endpoint: String,
    provider: Provider,
    repo: String,
    actions: Mutex<HashMap<String, Action>>,
    downloads: Mutex<HashMap<String, Arc<Download>>>,
    /// The LFS objects listed together in a directory, by object: the first
    /// download in a directory asks the batch API for all of them at once.
    groups: Mutex<HashMap<String, Arc<Vec<Pointer>>>>,
    /// Cached objects whose sha256 was checked by this process.
    verified: Mutex<std::collections::HashSet<String>>,
    /// How long a reader waits for bytes that do not arrive.
    stall_limit: Duration,
}

impl Lfs {
    pub fn new(endpoint: String, provider: Provider, repo: &str, stall_limit: Duration) -> Lfs {
        Lfs {
            endpoint,
            provider,
            repo: repo.to_string(),
            actions: Mutex::new(HashMap::new()),
            downloads: Mutex::new(HashMap::new()),
            verified: Mutex::new(std::collections::HashSet::new()),
            groups: Mutex::new(HashMap::new()),
            stall_limit,
        }
    }

    fn denied_hint(&self) -> &'static str {
        match self.provider {
            Provider::Github | Provider::GithubEnterprise => {
                "; on GitHub, LFS downloads need the token or app to have access to this repository, even for public repositories"
            }
            _ => "",
        }
    }

    fn batch_error(&self, e: RemoteError) -> SourceError {
        match e {
            RemoteError::Auth {
                status, message, ..
            } => SourceError::Denied(format!(
                "the LFS server at {} refused the batch request (HTTP {status}): {message}{}",
                self.endpoint,
                self.denied_hint()
            )),
            RemoteError::NotFound { .. } => SourceError::Unavailable(format!(
                "no LFS server at {} (HTTP 404); set lfs.url in .lfsconfig if LFS is hosted elsewhere",
                self.endpoint
            )),
            other => {
                SourceError::Unavailable(format!("LFS batch request to {}: {other}", self.endpoint))
            }
        }
    }

    /// Asks the batch API for download actions for `objects`.
    pub async fn batch(
        &self,
        transport: &Transport,
        objects: &[Pointer],
    ) -> Result<(), SourceError> {
        let body = serde_json::json!({
            "operation": "download",
            "transfers": ["basic"],
            "objects": objects.iter().map(|p| serde_json::json!({"oid": p.oid, "size": p.size})).collect::<Vec<_>>(),
        });
        let url = format!("{}/objects/batch", self.endpoint);
        let answer = transport
            .lfs_batch(&url, body.to_string().into_bytes())
            .await
            .map_err(|e| self.batch_error(e))?;
        let v: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| {
            SourceError::Corrupt(format!("LFS batch response from {url} is not JSON: {e}"))
        })?;
        let mut found = HashMap::new();
        for o in v
            .get("objects")
            .and_then(|o| o.as_array())
            .into_iter()
            .flatten()
        {
            let Some(oid) = o.get("oid").and_then(|x| x.as_str()) else {
                continue;
            };
            if let Some(err) = o.get("error") {
                let code = err.get("code").and_then(|c| c.as_u64()).unwrap_or(0);
                let msg = err.get("message").and_then(|m| m.as_str()).unwrap_or("");
                let e = match code {
                    401 | 403 => SourceError::Denied(format!(
                        "LFS object {oid}: access denied (code {code}: {msg}){}",
                        self.denied_hint()
                    )),
                    404 | 410 => SourceError::Unavailable(format!(
                        "LFS object {oid} is not on the LFS server (code {code}: {msg})"
                    )),
                    _ => SourceError::Unavailable(format!("LFS object {oid}: error {code}: {msg}")),
                };
                return Err(e);
            }
            let Some(dl) = o.get("actions").and_then(|a| a.get("download")) else {
                continue;
            };
            let Some(href) = dl.get("href").and_then(|h| h.as_str()) else {
                continue;
            };
            let headers = dl
                .get("header")
                .and_then(|h| h.as_object())
                .map(|h| {
                    h.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            let expires = action_expiry(dl, Instant::now(), SystemTime::now());
            found.insert(
                oid.to_string(),
                Action {
                    href: href.to_string(),
                    headers,
                    expires,
                },
            );
        }
        let mut actions = self.actions.lock().unwrap_or_else(|p| p.into_inner());
        for p in objects {
            match found.remove(&p.oid) {
                Some(a) => {
                    actions.insert(p.oid.clone(), a);
                }
                None => {
                    return Err(SourceError::Corrupt(format!(
                        "the LFS server gave no download action for {}",
                        p.oid
                    )));
                }
            }
        }
        Ok(())
    }

    /// Records that `pointers` were listed together (one directory).
    pub fn note_directory(&self, pointers: Vec<Pointer>) {
        if pointers.len() < 2 {
            return;
        }
        let group = Arc::new(pointers);
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        for p in group.iter() {
            groups.insert(p.oid.clone(), group.clone());
        }
    }

    fn has_valid_action(&self, oid: &str) -> bool {
        self.actions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(oid)
            .is_some_and(|a| {
                a.expires
                    .is_none_or(|e| e > Instant::now() + Duration::from_secs(5))
            })
    }

    /// A valid (unexpired) action for `p`, asking the batch API if needed
    /// (together with the other uncached objects of its directory).
    async fn action(
        &self,
        transport: &Transport,
        cache: &Cache,
        p: &Pointer,
    ) -> Result<Action, SourceError> {
        {
            let cached = self
                .actions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&p.oid)
                .cloned();
            if let Some(a) = cached {
                // Leave a margin so a download does not start on an href about to expire.
                if a.expires
                    .is_none_or(|e| e > Instant::now() + Duration::from_secs(5))
                {
                    return Ok(a);
                }
                tracing::debug!(repo = %self.repo, oid = %p.oid, "LFS href expired; asking for a new one");
            }
        }
        let mut objects = vec![p.clone()];
        let group = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&p.oid)
            .cloned();
        for q in group.iter().flat_map(|g| g.iter()) {
            if objects.len() >= BATCH_MAX {
                break;
            }
            if q.oid != p.oid && !self.has_valid_action(&q.oid) && !cache.contains(&q.cache_key()) {
                objects.push(q.clone());
            }
        }
        self.batch(transport, &objects).await?;
        self.actions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&p.oid)
            .cloned()
            .ok_or_else(|| SourceError::Corrupt(format!("no download action for {}", p.oid)))
    }

    /// Opens an LFS object for reading: from the cache, or by joining or
    /// starting its download.
    pub fn open(
        self: &Arc<Self>,
        transport: Arc<Transport>,
        cache: Arc<Cache>,
        rt: &tokio::runtime::Handle,
        p: &Pointer,
    ) -> Result<Arc<dyn FileReader>, SourceError> {
        if let Some(file) = cache.get(&p.cache_key()) {
            let known = self
                .verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&p.oid);
            if known || file_sha256(&file, p.size).as_deref() == Some(p.oid.as_str()) {
                self.verified
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(p.oid.clone());
                return Ok(Arc::new(LfsReader::Cached(file)));
            }
            tracing::warn!(repo = %self.repo, oid = %p.oid, "cached LFS object is corrupt; downloading it again");
            cache.remove(&p.cache_key());
        }
        let dl = {
            let mut downloads = self.downloads.lock().unwrap_or_else(|e| e.into_inner());
            match downloads.get(&p.oid) {
                Some(d) if !matches!(&*d.state.borrow(), State::Failed(_)) => d.clone(),
                _ => {
                    let d = self.start(transport, cache, rt, p)?;
                    downloads.insert(p.oid.clone(), d.clone());
                    d
                }
            }
        };
        Ok(Arc::new(LfsReader::Streaming {
            dl,
            size: p.size,
            rt: rt.clone(),
            stall_limit: self.stall_limit,
        }))
    }

    fn start(
        self: &Arc<Self>,
        transport: Arc<Transport>,
        cache: Arc<Cache>,
        rt: &tokio::runtime::Handle,
        p: &Pointer,
    ) -> Result<Arc<Download>, SourceError> {
        let (tx, rx) = watch::channel(State::Progress(0));
        let w = cache
            .writer(&p.cache_key())
            .map_err(|e| SourceError::Unavailable(format!("cache: {e}")))?;
        // Readers read the temp file as it grows; after the rename on
        // commit this descriptor still reads the same (now cached) file.
        let file = std::fs::File::open(w.path())
            .map_err(|e| SourceError::Unavailable(format!("cache: {e}")))?;
        let me = self.clone();
        let p = p.clone();
        rt.spawn(async move {
            let state = match me.fetch_into(&transport, &cache, w, &p, &tx).await {
                Ok(()) => State::Done,
                Err(e) => {
                    tracing::error!(repo = %me.repo, oid = %p.oid, "LFS download failed: {e}");
                    State::Failed(e)
                }
            };
            let _ = tx.send(state);
            me.downloads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&p.oid);
        });
        Ok(Arc::new(Download { file, state: rx }))
    }

    /// Downloads into the cache writer, verifying size and sha256 before
    /// committing. An expired or rejected href is renewed once.
    async fn fetch_into(
        &self,
        transport: &Transport,
        cache: &Cache,
        mut w: crate::cache::CacheWriter,
        p: &Pointer,
        tx: &watch::Sender<State>,
    ) -> Result<(), SourceError> {
        let mut hasher = sha2::Sha256::new();
        let mut written: u64 = 0;
        let mut renewed = false;
        let mut attempts = 0;
        'outer: loop {
            attempts += 1;
            let action = self.action(transport, cache, p).await?;
            let mut resp = match transport
                .lfs_download(&action.href, &action.headers, written)
                .await
            {
                Ok(r) => r,
                Err(RemoteError::Auth { status, .. })
                | Err(RemoteError::Http {
                    status: status @ 410,
                    ..
                }) if !renewed => {
                    tracing::info!(repo = %self.repo, oid = %p.oid, "LFS href refused (HTTP {status}); renewing it");
                    self.actions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&p.oid);
                    renewed = true;
                    continue;
                }
                Err(RemoteError::Auth { status, .. }) => {
                    return Err(SourceError::Denied(format!(
                        "LFS object {}: the download URL was refused (HTTP {status}) even after renewing it{}",
                        p.oid,
                        self.denied_hint()
                    )));
                }
                Err(e) if e.retryable() && attempts < 3 => {
                    tracing::warn!(repo = %self.repo, oid = %p.oid, "LFS download: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(300 * attempts)).await;
                    continue;
                }
                Err(e) => {
                    return Err(SourceError::Unavailable(format!(
                        "LFS object {}: {e}",
                        p.oid
                    )));
                }
            };
            if written > 0 && resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
                // The server ignored the range: start over.
                hasher = sha2::Sha256::new();
                written = 0;
                w.rewind()
                    .map_err(|e| SourceError::Unavailable(format!("cache: {e}")))?;
            }
            loop {
                let chunk = match transport.next_chunk(&mut resp, &action.href).await {
                    Ok(Some(c)) => c,
                    Ok(None) => break 'outer,
                    Err(e) if e.retryable() && attempts < 3 => {
                        tracing::warn!(repo = %self.repo, oid = %p.oid, written, "LFS download interrupted: {e}; resuming");
                        continue 'outer;
                    }
                    Err(e) => {
                        return Err(SourceError::Unavailable(format!(
                            "LFS object {}: {e}",
                            p.oid
                        )));
                    }
                };
                if chunk.len() as u64 > p.size.saturating_sub(written) {
                    return Err(SourceError::Corrupt(format!(
                        "LFS object {}: the server sent more than the pointer's {} bytes",
                        p.oid, p.size
                    )));
                }
                hasher.update(&chunk);
                w.write_all(&chunk)
                    .and_then(|_| w.flush())
                    .map_err(|e| SourceError::Unavailable(format!("cache: {e}")))?;
                written += chunk.len() as u64;
                let _ = tx.send(State::Progress(written));
            }
        }
        if written != p.size {
            return Err(SourceError::Corrupt(format!(
                "LFS object {}: got {written} bytes, the pointer says {}",
                p.oid, p.size
            )));
        }
        let got = hex::encode(hasher.finalize());
        if got != p.oid {
            return Err(SourceError::Corrupt(format!(
                "LFS object {}: sha256 mismatch (the download hashes to {got}); not cached",
                p.oid
            )));
        }
        w.commit()
            .map_err(|e| SourceError::Unavailable(format!("cache: {e}")))?;
        Ok(())
    }
}

/// The sha256 of a file that must be `size` bytes long.
fn file_sha256(file: &std::fs::File, size: u64) -> Option<String> {
    if file.metadata().ok()?.len() != size {
        return None;
    }
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = file.read_at(&mut buf, off).ok()?;
        if n == 0 {
            return None;
        }
        hasher.update(&buf[..n]);
        off += n as u64;
    }
    Some(hex::encode(hasher.finalize()))
}

/// Reads an LFS object: from the cache, or as its download progresses.
enum LfsReader {
    Cached(std::fs::File),
    Streaming {
        dl: Arc<Download>,
        size: u64,
        rt: tokio::runtime::Handle,
        stall_limit: Duration,
    },
}

impl FileReader for LfsReader {
    fn cacheable(&self) -> bool {
        matches!(self, LfsReader::Cached(_))
    }

    fn read_at(&self, offset: u64, size: u32) -> Result<Vec<u8>, SourceError> {
        match self {
            LfsReader::Cached(f) => pread(f, offset, size),
            LfsReader::Streaming {
                dl,
                size: total,
                rt,
                stall_limit,
            } => {
                let need = offset.saturating_add(u64::from(size)).min(*total);
                let mut rx = dl.state.clone();
                let outcome = rt.block_on(async {
                    loop {
                        let ready = match &*rx.borrow_and_update() {
                            State::Done => Ok(true),
                            State::Failed(e) => Err(e.clone()),
                            // The end of the object is only served once the
                            // whole object is verified: a corrupt download
                            // ends in EIO, never in a clean EOF.
                            State::Progress(n) => Ok(*n >= need && need < *total),
                        };
                        if ready? {
                            return Ok(());
                        }
                        // No progress for `stall_limit`: give up on this read.
                        match tokio::time::timeout(*stall_limit, rx.changed()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => {
                                return Err(SourceError::Unavailable(
                                    "the LFS download stopped".into(),
                                ));
                            }
                            Err(_) => {
                                return Err(SourceError::Unavailable(format!(
                                    "the LFS download made no progress for {}s",
                                    stall_limit.as_secs()
                                )));
                            }
                        }
                    }
                });
                outcome?;
                pread(&dl.file, offset, size)
            }
        }
    }
}

/// When a download action of a batch answer expires: `expires_in`
/// (seconds from now) wins over `expires_at` (RFC 3339), as in git-lfs.
/// Both are the server's numbers, so nothing here may overflow: `None`
/// (never expires) when neither is given, when `expires_at` cannot be read,
/// or when the time is too far away to represent (`expires_in` may be as
/// large as `i64::MAX`); a time already past (or a negative `expires_in`)
/// means expired now.
fn action_expiry(
    action: &serde_json::Value,
    now: Instant,
    wall_now: SystemTime,
) -> Option<Instant> {
    if let Some(v) = action.get("expires_in") {
        let secs = v
            .as_i64()
            .map(|s| u64::try_from(s).unwrap_or(0))
            .or_else(|| v.as_u64());
        if let Some(secs) = secs {
            return now.checked_add(Duration::from_secs(secs));
        }
    }
    let at = parse_rfc3339(action.get("expires_at")?.as_str()?)?;
    let left = at.duration_since(wall_now).unwrap_or_default();
    now.checked_add(left)
}

/// A fixed-width field of ASCII digits (no sign, no spaces) as a number.
fn digits(field: &[u8]) -> Option<i64> {
    if field.is_empty() || field.len() > 18 {
        return None;
    }
    field.iter().try_fold(0i64, |n, &c| {
        if !c.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(i64::from(c - b'0'))
    })
}

/// Parses `2024-01-02T03:04:05Z` / `...+01:00` (as LFS servers send
/// `expires_at`). Anything malformed or out of range, and any time before
/// 1970, is `None`; no input can make it panic or overflow.
pub fn parse_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits(b.get(r)?);
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // 60: a leap second.
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = if rest == "Z" || rest == "z" {
        0
    } else if let [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] = rest.as_bytes() {
        let (oh, om) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
        if oh > 23 || om > 59 {
            return None;
        }
        let off = oh * 3600 + om * 60;
        if *sign == b'-' { -off } else { off }
    } else {
        return None;
    };
    // Days from civil (Howard Hinnant's algorithm). The fields are bounded
    // above, so this cannot overflow, but it is checked all the same.
    let y2 = if mo <= 2 { y.checked_sub(1)? } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2.checked_sub(era.checked_mul(400)?)?;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe
        .checked_mul(365)?
        .checked_add(yoe / 4 - yoe / 100 + doy)?;
    let days = era
        .checked_mul(146_097)?
        .checked_add(doe)?
        .checked_sub(719_468)?;
    let secs = days
        .checked_mul(86_400)?
        .checked_add(h * 3600 + mi * 60 + se)?
        .checked_sub(offset)?;
    // Before 1970: as absurd as an expiry time gets; not a time here.
    let secs = u64::try_from(secs).ok()?;
    std::time::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    fn pointer(size: &str) -> String {
        format!("version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\nsize {size}\n")
    }

    #[test]
    fn pointers_parse_like_git_lfs() {
        let p = parse_pointer(pointer("12345").as_bytes()).unwrap();
        assert_eq!(p.oid, OID);
        assert_eq!(p.size, 12345);
        assert_eq!(Pointer::from_key(&p.key()), Some(p.clone()));
        assert_eq!(parse_pointer(pointer("0").as_bytes()).unwrap().size, 0);
        let ext = format!(
            "version https://git-lfs.github.com/spec/v1\next-0-foo sha256:{OID}\noid sha256:{OID}\nsize 5\n"
        );
        assert!(parse_pointer(ext.as_bytes()).is_some());
        assert!((pointer("1").len() as u64) >= MIN_POINTER_SIZE);
    }

    #[test]
    fn malformed_pointers_are_plain_files() {
        for bad in [
            pointer("12a"),
            pointer("-1"),
            pointer("012"),
            pointer("5").trim_end().to_string(), // no final newline
            pointer("5").replace("sha256:", "sha1:"),
            pointer("5").replace(OID, &OID[..60]),
            pointer("5").replace(OID, &OID.to_uppercase()),
            pointer("5").replace("version https://git-lfs.github.com/spec/v1", "version 2"),
            format!("size 5\noid sha256:{OID}\nversion https://git-lfs.github.com/spec/v1\n"),
            format!("version https://git-lfs.github.com/spec/v1\nsize 5\noid sha256:{OID}\n"),
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\n"),
            format!("{}{}", pointer("5"), "x".repeat(1024)),
            "hello\n".to_string(),
        ] {
            assert!(parse_pointer(bad.as_bytes()).is_none(), "{bad:?}");
        }
        assert!(parse_pointer(&[0xff, 0xfe, b'\n']).is_none());
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint("https://h/o/r.git", None),
            "https://h/o/r.git/info/lfs"
        );
        assert_eq!(endpoint("http://h/r", None), "http://h/r.git/info/lfs");
        let cfg = b"# comment\n[core]\n\turl = https://wrong\n[lfs]\n\turl = \"https://lfs.example/org/repo/\"\n";
        assert_eq!(
            endpoint("https://h/o/r.git", Some(cfg)),
            "https://lfs.example/org/repo"
        );
        assert_eq!(
            endpoint("https://h/o/r.git", Some(b"[lfs]\nurl = ftp://x\n")),
            "https://h/o/r.git/info/lfs"
        );
    }

    #[test]
    fn rfc3339() {
        let t = parse_rfc3339("2023-11-14T22:13:20Z").unwrap();
        assert_eq!(
            t,
            std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        let t = parse_rfc3339("2023-11-14T23:13:20.123+01:00").unwrap();
        assert_eq!(
            t,
            std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        assert!(parse_rfc3339("yesterday").is_none());
        assert!(parse_rfc3339("2023-11-14T22:13:20.Z").is_some());
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:60Z").unwrap(),
            std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_040)
        );
    }

    #[test]
    fn rfc3339_extremes_and_garbage() {
        let far = parse_rfc3339("9999-12-31T23:59:59Z").unwrap();
        assert_eq!(
            far,
            std::time::UNIX_EPOCH + Duration::from_secs(253_402_300_799)
        );
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:00Z").unwrap(),
            std::time::UNIX_EPOCH
        );
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:00-00:01").unwrap(),
            std::time::UNIX_EPOCH + Duration::from_secs(60)
        );
        assert!(parse_rfc3339("0000-01-01T00:00:00Z").is_none());
        assert!(parse_rfc3339("1969-12-31T23:59:59Z").is_none());
        assert!(parse_rfc3339("1970-01-01T00:00:00+00:01").is_none());
        for bad in [
            "+999-01-01T00:00:00Z",
            "-999-01-01T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2024-01-00T00:00:00Z",
            "2024-01-32T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:60:00Z",
            "2024-01-01T00:00:61Z",
            "2024-01-01T00:00:00+24:00",
            "2024-01-01T00:00:00+01:60",
            "2024-01-01T00:00:00+99:99",
            "2024-01-01T00:00:00x01:00",
            "2024-01-01T00:00:00+01-00",
            "2024-01-01T00:00:00++1:00",
            "2024-01-01T00:00:00+1:000",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00ZZ",
            "2024/01/01T00:00:00Z",
            "2024-01-01X00:00:00Z",
            "2024-01-01T00-00:00Z",
            "2024-01-01T00:00:0 Z",
            "2024-01-01T00:00:00é",
            "2024-01-01T00:00:0éZ",
            "éééééééééééééééééééé",
            "9999999999999999999999999999999999",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad:?}");
        }
        // A multi-byte character at every position: never a panic.
        let good = "2023-11-14T23:13:20.123+01:00";
        for i in 0..good.len() {
            for c in ["é", "€", "𝄞", "\u{0}"] {
                let s = format!("{}{c}{}", &good[..i], &good[i + 1..]);
                let _ = parse_rfc3339(&s);
                let s = format!("{}{c}{}", &good[..i], &good[i..]);
                let _ = parse_rfc3339(&s);
                let _ = parse_rfc3339(&good[..i]);
            }
        }
    }

    #[test]
    fn action_expiry_from_server_numbers() {
        use serde_json::json;
        let now = Instant::now();
        // 2023-11-14T22:13:20Z.
        let wall = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let exp = |v: serde_json::Value| action_expiry(&v, now, wall);
        let century = Duration::from_secs(100 * 365 * 86_400);

        // Too far away to represent: never expires (or, where the clock can
        // hold it, some time centuries away), and above all no panic.
        for v in [
            json!({"expires_in": i64::MAX}),
            json!({"expires_in": u64::MAX}),
            json!({"expires_in": i64::MAX, "expires_at": "2000-01-01T00:00:00Z"}),
            json!({"expires_at": "9999-12-31T23:59:59Z"}),
            json!({"expires_at": "9999-12-31T23:59:59-23:59"}),
        ] {
            let e = exp(v.clone());
            assert!(
                e.is_none_or(|e| e.checked_duration_since(now).is_some_and(|d| d > century)),
                "{v}: {e:?}"
            );
        }
        // Negative or zero: expired already.
        assert_eq!(exp(json!({"expires_in": i64::MIN})), Some(now));
        assert_eq!(exp(json!({"expires_in": -1})), Some(now));
        assert_eq!(exp(json!({"expires_in": 0})), Some(now));
        assert_eq!(
            exp(json!({"expires_in": 60})),
            Some(now + Duration::from_secs(60))
        );
        // expires_in wins over expires_at.
        assert_eq!(
            exp(json!({"expires_in": 10, "expires_at": "2023-11-14T23:13:20Z"})),
            Some(now + Duration::from_secs(10))
        );
        assert_eq!(
            exp(json!({"expires_at": "2023-11-14T23:13:20Z"})),
            Some(now + Duration::from_secs(3600))
        );
        assert_eq!(
            exp(json!({"expires_at": "2001-01-01T00:00:00Z"})),
            Some(now)
        );
        // Not a number: expires_at decides; nothing readable: never expires.
        assert_eq!(
            exp(json!({"expires_in": "soon", "expires_at": "2023-11-14T23:13:20Z"})),
            Some(now + Duration::from_secs(3600))
        );
        assert_eq!(exp(json!({"expires_in": 1.5})), None);
        assert_eq!(exp(json!({"expires_at": "yesterday"})), None);
        assert_eq!(exp(json!({"expires_at": 12})), None);
        assert_eq!(exp(json!({})), None);
    }
}
