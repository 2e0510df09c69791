//! An LFS object's download: bytes written to a cache temp file as they
//! arrive (readers follow the file as it grows), the size and sha256
//! checked before the object enters the cache, an expired or rejected
//! `href` renewed once, and memory used instead of the disk for small
//! objects once the disk cannot take more.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use sha2::Digest;

use super::{Lfs, MEMORY_FALLBACK, Pointer};
use crate::cache::Cache;
use crate::source::SourceError;
use crate::source::git::transport::{RemoteError, Transport};
use crate::source::transfer::{Transfer, TransferSender, TransferState};

impl Lfs {
    /// Downloads into the cache writer, verifying size and sha256 before
    /// committing. An expired or rejected href is renewed once.
    pub(super) async fn fetch_into(
        &self,
        transport: &Transport,
        cache: &Cache,
        mut w: Option<crate::cache::CacheWriter>,
        p: &Pointer,
        tx: &TransferSender,
        transfer: &Transfer,
    ) -> Result<(), SourceError> {
        // The disk cache, until it cannot take more; then memory (small
        // objects only), with readers switched over once it is verified.
        let mut mem: Option<Vec<u8>> = match w {
            Some(_) => None,
            None => Some(Vec::with_capacity(p.size.min(MEMORY_FALLBACK) as usize)),
        };
        let mut on_disk = 0u64;
        let mut hasher = sha2::Sha256::new();
        let mut written: u64 = 0;
        let mut renewed = false;
        let mut attempts = 0;
        'outer: loop {
            attempts += 1;
            let action = self.action(transport, cache, p).await?;
            let resp = match transport
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
                Err(e) if e.retryable() && self.pause(transport, attempts, &e).await => {
                    continue;
                }
                Err(e) => {
                    return Err(SourceError::Unavailable(format!(
                        "LFS object {}: {e}",
                        p.oid
                    )));
                }
            };
            // Bytes of this response that are already in the file: readers
            // may have seen them, so they are never rewritten, only checked.
            let mut again = 0u64;
            if written > 0 && resp.status() == reqwest::StatusCode::PARTIAL_CONTENT {
                // The range must start where we stopped, or its bytes would
                // land at the wrong offset (readers would see them before
                // the sha256 could object).
                let start = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if start != Some(written) {
                    return Err(SourceError::Corrupt(format!(
                        "LFS object {}: asked to resume at byte {written}, the server answered range {start:?}",
                        p.oid
                    )));
                }
            }
            if written > 0 && resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
                // The server ignored the range and starts over: hash from the
                // start, and compare what we already have instead of writing it.
                hasher = sha2::Sha256::new();
                again = written;
            }
            let mut seen = 0u64;
            let at_start = written;
            let mut resp = transport.body(resp);
            loop {
                let chunk = match transport.next_chunk(&mut resp, &action.href).await {
                    Ok(Some(c)) => c,
                    Ok(None) => break 'outer,
                    Err(e) if e.retryable() => {
                        // Progress made is progress kept: a response that
                        // brought bytes earns a fresh set of attempts.
                        if written > at_start {
                            attempts = 1;
                        }
                        if self.pause(transport, attempts, &e).await {
                            tracing::warn!(repo = %self.repo, oid = %p.oid, written, "LFS download interrupted: {e}; resuming at byte {written}");
                            continue 'outer;
                        }
                        return Err(SourceError::Unavailable(format!(
                            "LFS object {}: {e}",
                            p.oid
                        )));
                    }
                    Err(e) => {
                        return Err(SourceError::Unavailable(format!(
                            "LFS object {}: {e}",
                            p.oid
                        )));
                    }
                };
                let mut chunk = &chunk[..];
                if seen < again {
                    let n = (again - seen).min(chunk.len() as u64) as usize;
                    let have = match (&mut w, &mem) {
                        (_, Some(m)) => m[seen as usize..seen as usize + n].to_vec(),
                        (Some(w), None) => read_back(w, seen, n, true)?,
                        (None, None) => Vec::new(),
                    };
                    if have != chunk[..n] {
                        return Err(SourceError::Corrupt(format!(
                            "LFS object {}: the server sent different bytes when the download restarted",
                            p.oid
                        )));
                    }
                    hasher.update(&chunk[..n]);
                    seen += n as u64;
                    chunk = &chunk[n..];
                    if chunk.is_empty() {
                        continue;
                    }
                }
                if chunk.len() as u64 > p.size.saturating_sub(written) {
                    return Err(SourceError::Corrupt(format!(
                        "LFS object {}: the server sent more than the pointer's {} bytes",
                        p.oid, p.size
                    )));
                }
                hasher.update(chunk);
                let to_file = self.store(cache, &mut w, &mut mem, chunk, written, p)?;
                written += chunk.len() as u64;
                if to_file {
                    on_disk = written;
                }
                // Also a heartbeat while the bytes go to memory: readers
                // wait for the end then, and must not take it for a stall.
                let _ = tx.send(TransferState::Progress(on_disk));
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
        match (w, mem) {
            (_, Some(m)) => {
                let m: Arc<[u8]> = m.into();
                self.memory.put(&p.cache_key(), m.clone());
                let _ = transfer.memory.set(m);
            }
            (Some(w), None) => {
                w.commit()
                    .map_err(|e| SourceError::Unavailable(format!("cache: {e}")))?;
            }
            (None, None) => {
                return Err(SourceError::Unavailable(
                    "the download lost its storage".into(),
                ));
            }
        }
        Ok(())
    }

    /// Waits the retry policy's pause after `attempts` failed ones; false
    /// when none is left.
    async fn pause(&self, transport: &Transport, attempts: u32, e: &RemoteError) -> bool {
        use crate::fetch::Retryable;
        match transport.policy.pause(attempts, e.retry_after()) {
            Some(d) => {
                tracing::debug!(repo = %self.repo, "LFS download: {e}; retrying in {d:?}");
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }

    /// Stores a verified-so-far piece: in the cache file, or, once the disk
    /// cannot take more and the object is small enough, in memory. Whether
    /// it went to the file (readers can follow it there).
    fn store(
        &self,
        cache: &Cache,
        w: &mut Option<crate::cache::CacheWriter>,
        mem: &mut Option<Vec<u8>>,
        chunk: &[u8],
        written: u64,
        p: &Pointer,
    ) -> Result<bool, SourceError> {
        if let Some(m) = mem {
            m.extend_from_slice(chunk);
            return Ok(false);
        }
        let Some(file) = w.as_mut() else {
            return Err(SourceError::Unavailable(
                "the download lost its storage".into(),
            ));
        };
        let Err(e) = file.write_all(chunk).and_then(|_| file.flush()) else {
            return Ok(true);
        };
        if p.size > MEMORY_FALLBACK {
            cache.warn_full(&format!(
                "LFS object {} ({} bytes) cannot be served from memory",
                p.oid, p.size
            ));
            return Err(SourceError::Unavailable(format!(
                "LFS object {}: the cache is full and the object ({} bytes) is too large to serve from memory: {e}",
                p.oid, p.size
            )));
        }
        cache.warn_full(&format!("LFS object {}", p.oid));
        tracing::warn!(repo = %self.repo, oid = %p.oid, size = p.size, "no room in the cache even after evicting: the LFS object is served from memory ({e})");
        let mut m = read_back(file, 0, written as usize, false)?;
        m.reserve(p.size.saturating_sub(written) as usize);
        m.extend_from_slice(chunk);
        *mem = Some(m);
        *w = None; // drops the temp file
        Ok(false)
    }
}

/// Reads `n` bytes at `offset` back from a cache writer's temp file.
/// Without `flush`, only what earlier flushes wrote is there (after a
/// failed write, flushing would only fail again).
fn read_back(
    w: &mut crate::cache::CacheWriter,
    offset: u64,
    n: usize,
    flush: bool,
) -> Result<Vec<u8>, SourceError> {
    let mut have = vec![0u8; n];
    (if flush { w.flush() } else { Ok(()) })
        .and_then(|_| std::fs::File::open(w.path()))
        .and_then(|f| f.read_exact_at(&mut have, offset))
        .map_err(|e| SourceError::Unavailable(format!("cache: {e}")))?;
    Ok(have)
}
