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
//!
//! Pointers and endpoints are in [`pointer`], expiry times in [`expiry`];
//! downloads (in [`download`]) are [`Transfer`]s that readers follow as they
//! grow.

mod download;
mod expiry;
mod pointer;

use expiry::action_expiry;
pub use expiry::parse_rfc3339;
pub use pointer::{MAX_POINTER_SIZE, MIN_POINTER_SIZE, Pointer, endpoint, parse_pointer};

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::Digest;

use super::transport::{RemoteError, Transport};
use crate::cache::Cache;
use crate::config::Provider;
use crate::source::transfer::{Transfer, TransferReader, TransferState};
use crate::source::{FileReader, LocalFile, SourceError};

const BATCH_MAX: usize = 100;
/// When the disk cache cannot take an object, objects up to this size are
/// downloaded into memory instead (up to `MEMORY_STORE` bytes in all).
const MEMORY_FALLBACK: u64 = 64 << 20;
const MEMORY_STORE: u64 = 256 << 20;
#[derive(Debug, Clone)]
struct Action {
    href: String,
    headers: Vec<(String, String)>,
    expires: Option<Instant>,
}

/// The LFS side of one repository.
pub struct Lfs {
    pub endpoint: String,
    provider: Provider,
    repo: String,
    actions: Mutex<HashMap<String, Action>>,
    downloads: Mutex<HashMap<String, Arc<Transfer>>>,
    /// Verified objects the disk cache could not take.
    memory: crate::cache::Memory,
    /// The LFS objects listed together in a directory, by object: the first
    /// download in a directory asks the batch API for all of them at once.
    groups: Mutex<HashMap<String, Arc<Vec<Pointer>>>>,
    /// Cached objects whose sha256 was checked by this process.
    verified: Mutex<std::collections::HashSet<String>>,
    /// How long a reader waits for bytes that do not arrive.
    stall_limit: Duration,
    /// The fleet's shared cache tier, asked before the LFS server.
    shared: Option<Arc<crate::shared::Shared>>,
}

impl Lfs {
    pub fn new(
        endpoint: String,
        provider: Provider,
        repo: &str,
        stall_limit: Duration,
        shared: Option<Arc<crate::shared::Shared>>,
    ) -> Lfs {
        Lfs {
            endpoint,
            provider,
            repo: repo.to_string(),
            actions: Mutex::new(HashMap::new()),
            downloads: Mutex::new(HashMap::new()),
            memory: crate::cache::Memory::new(MEMORY_STORE),
            verified: Mutex::new(std::collections::HashSet::new()),
            groups: Mutex::new(HashMap::new()),
            stall_limit,
            shared,
        }
    }

    fn denied_hint(&self) -> &'static str {
        match self.provider {
            Provider::Github | Provider::GithubEnterprise => {
                "; a public repository's LFS objects download without a token, a private one's need a token or app with read access to its Contents"
            }
            _ => "",
        }
    }

    fn batch_error(&self, e: RemoteError) -> SourceError {
        match e {
            RemoteError::Quota {
                status, message, ..
            } => SourceError::Unavailable(format!(
                "the LFS server at {} refused for its quota, not the credentials (HTTP {status}): {message}; the account that owns the repository must add LFS bandwidth or storage, or wait for the quota to reset",
                crate::redact::url(&self.endpoint)
            )),
            RemoteError::Auth {
                status, message, ..
            } => SourceError::Denied(format!(
                "the LFS server at {} refused the batch request (HTTP {status}): {message}{}",
                crate::redact::url(&self.endpoint),
                self.denied_hint()
            )),
            RemoteError::NotFound { .. } => SourceError::Unavailable(format!(
                "no LFS server at {} (HTTP 404); set lfs.url in .lfsconfig if LFS is hosted elsewhere",
                crate::redact::url(&self.endpoint)
            )),
            other => SourceError::Unavailable(format!(
                "LFS batch request to {}: {other}",
                crate::redact::url(&self.endpoint)
            )),
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
            SourceError::Corrupt(format!(
                "LFS batch response from {} is not JSON: {e}",
                crate::redact::url(&url)
            ))
        })?;
        let mut found = HashMap::new();
        let mut errors: HashMap<String, SourceError> = HashMap::new();
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
                    _ if quota_refusal(msg.as_bytes()).is_some() => {
                        SourceError::Unavailable(format!(
                            "LFS object {oid}: refused for the repository's LFS quota, not the credentials (code {code}: {msg})"
                        ))
                    }
                    401 | 403 => SourceError::Denied(format!(
                        "LFS object {oid}: access denied (code {code}: {msg}){}",
                        self.denied_hint()
                    )),
                    404 | 410 => SourceError::Unavailable(format!(
                        "LFS object {oid} is not on the LFS server (code {code}: {msg})"
                    )),
                    _ => SourceError::Unavailable(format!("LFS object {oid}: error {code}: {msg}")),
                };
                // Only the object asked for fails; the others of the
                // directory still get their actions.
                errors.insert(oid.to_string(), e);
                continue;
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
        // The first object is the one a reader waits for; the rest ride along.
        for (i, p) in objects.iter().enumerate() {
            match (found.remove(&p.oid), errors.remove(&p.oid)) {
                (Some(a), _) => {
                    actions.insert(p.oid.clone(), a);
                }
                (None, Some(e)) if i == 0 => return Err(e),
                (None, None) if i == 0 => {
                    return Err(SourceError::Corrupt(format!(
                        "the LFS server gave no download action for {}",
                        p.oid
                    )));
                }
                (None, e) => {
                    tracing::debug!(repo = %self.repo, oid = %p.oid, "no LFS action for an object batched along: {e:?}");
                }
            }
        }
        Ok(())
    }

    /// Downloads running now.
    pub fn in_flight(&self) -> u64 {
        self.downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len() as u64
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
        if let Some(m) = self.memory.get(&p.cache_key()) {
            return Ok(Arc::new(crate::source::MemoryFile(m)));
        }
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
                return Ok(Arc::new(LocalFile::new(file, p.size)));
            }
            tracing::warn!(repo = %self.repo, oid = %p.oid, "cached LFS object is corrupt; downloading it again");
            cache.remove(&p.cache_key());
        }
        let dl = {
            let mut downloads = self.downloads.lock().unwrap_or_else(|e| e.into_inner());
            match downloads.get(&p.oid) {
                Some(d) if !d.failed() => d.clone(),
                _ => {
                    let d = self.start(transport, cache, rt, p)?;
                    downloads.insert(p.oid.clone(), d.clone());
                    d
                }
            }
        };
        Ok(Arc::new(TransferReader {
            transfer: dl,
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
    ) -> Result<Arc<Transfer>, SourceError> {
        // Readers read the temp file as it grows; after the rename on
        // commit this descriptor still reads the same (now cached) file.
        let opened = cache.writer(&p.cache_key()).and_then(|w| {
            let f = std::fs::File::open(w.path()).map_err(|e| crate::cache::CacheError::Io {
                path: w.path().to_owned(),
                source: e,
            })?;
            Ok((w, f))
        });
        let (w, file) = match opened {
            Ok((w, f)) => (Some(w), Some(f)),
            // The cache cannot take a file at all (full, or unwritable):
            // a small enough object is downloaded into memory.
            Err(e) if p.size <= MEMORY_FALLBACK => {
                cache.warn_full(&format!("LFS object {}: {e}", p.oid));
                (None, None)
            }
            Err(e) => {
                return Err(SourceError::Unavailable(format!(
                    "LFS object {}: cannot cache it ({e}) and it is too large ({} bytes) to serve from memory",
                    p.oid, p.size
                )));
            }
        };
        let (tx, transfer) = Transfer::new(file);
        let t = transfer.clone();
        let me = self.clone();
        let p = p.clone();
        rt.spawn(async move {
            let shared = me.shared.as_ref();
            let state = if let Some(f) =
                super::fleet::lfs_from_shared(shared, &cache, &p, &tx).await
            {
                me.verified
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(p.oid.clone());
                let _ = t.done_file.set(f);
                TransferState::Done
            } else {
                match me.fetch_into(&transport, &cache, w, &p, &tx, &t).await {
                    Ok(()) => {
                        super::fleet::lfs_offer(shared, &cache, &p);
                        TransferState::Done
                    }
                    Err(e) => {
                        tracing::error!(repo = %me.repo, oid = %p.oid, "LFS download failed: {e}");
                        TransferState::Failed(e)
                    }
                }
            };
            let _ = tx.send(state);
            let mut downloads = me.downloads.lock().unwrap_or_else(|e| e.into_inner());
            // Only this download: a newer one may have replaced a failed one.
            if downloads.get(&p.oid).is_some_and(|d| Arc::ptr_eq(d, &t)) {
                downloads.remove(&p.oid);
            }
        });
        Ok(transfer)
    }
}

/// The host's message when an answer (an LFS batch error body, JSON with
/// a `message`, or plain text) refuses for a data quota rather than for
/// credentials: GitHub answers 403 "This repository is over its data
/// quota. Account responsible for LFS bandwidth should purchase more data
/// packs to restore access." (newer wording: "exceeded its LFS budget").
/// At most 300 printable characters, URLs without their secrets.
pub fn quota_refusal(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(String::from))
        .unwrap_or_else(|| text.to_string());
    let lower = message.to_ascii_lowercase();
    let quota = [
        "data quota",
        "over its quota",
        "lfs budget",
        "bandwidth limit",
    ]
    .iter()
    .any(|w| lower.contains(w));
    quota.then(|| {
        crate::redact::urls_in(&message)
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect::<String>()
            .trim()
            .to_string()
    })
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

#[cfg(test)]
mod tests {
    #[test]
    fn quota_refusals_are_told_from_credential_ones() {
        let github = br#"{"message":"This repository is over its data quota. Account responsible for LFS bandwidth should purchase more data packs to restore access.","documentation_url":"https://docs.github.com/lfs"}"#;
        let m = super::quota_refusal(github).unwrap();
        assert!(
            m.starts_with("This repository is over its data quota."),
            "{m}"
        );
        assert!(super::quota_refusal(b"This repository exceeded its LFS budget.").is_some());
        assert!(
            super::quota_refusal(br#"{"message":"Access forbidden. Check your access level."}"#)
                .is_none()
        );
        assert!(super::quota_refusal(b"").is_none());
    }
}
