//! A large blob opened for reading: fetched alone and streamed into the
//! file its readers follow, so they get the first bytes before the blob is
//! complete (and the end only once its id matched). A fetch cut on the way
//! starts over (git cannot fetch part of a blob): the bytes readers may
//! have seen are compared, never rewritten, and the file grows on. Each
//! attempt that brings bytes earns a fresh set of attempts, until the blob
//! has cost 16 times its size (at least 64 MiB) in all.
//!
//! Readers follow the download only over https, where TLS guarantees the
//! bytes are the server's; over plain http a blob is served once its id
//! matched, since a byte damaged on the way can inflate to wrong bytes long
//! before the id check at the end could object.

use std::sync::Arc;

use gix_hash::ObjectId;

use super::Objects;
use crate::cache::CacheWriter;
use crate::source::SourceError;
use crate::source::git::protocol;
use crate::source::git::sinks::StreamSink;
use crate::source::transfer::{Transfer, TransferSender, TransferState};

/// A streamed blob may cost this many times its size in restarts...
const RESTART_BUDGET: u64 = 16;
/// ...and at least this many bytes.
const RESTART_MIN: u64 = 64 << 20;

impl Objects {
    /// Fetches one large blob alone, streaming it into `writer` so readers
    /// can follow. A fetch that fails on the way is asked again (git cannot
    /// fetch part of a blob, so the blob starts over): the bytes readers
    /// may have seen are compared, never rewritten, and the file grows
    /// from where it stopped. An attempt that got further than the one
    /// before earns a fresh set of attempts.
    pub(super) async fn fetch_streaming(
        &self,
        oid: ObjectId,
        tx: TransferSender,
        writer: CacheWriter,
        transfer: Arc<Transfer>,
    ) {
        use crate::fetch::Retryable;
        tracing::debug!(repo = %self.repo, %oid, "fetching a large blob, streamed");
        let mut sink = StreamSink {
            objects: self,
            want: oid,
            writer: Some(writer),
            tx: &tx,
            transfer: &transfer,
            done: false,
            local_error: None,
            flushed: 0,
            pos: 0,
            differs: false,
            published: 0,
            // Over plain http nothing protects the bytes on the way (a
            // damaged byte may inflate to wrong bytes long before the id
            // check at the end): readers get them once verified whole.
            // Over https, TLS does, and readers follow the download.
            frozen: !self.remote.transport.clone_url.starts_with("https://"),
            mem: None,
        };
        let mut failed = 0u32;
        // Bytes of this blob received in all attempts: the bound on what a
        // bad network may cost (see `RESTART_BUDGET`).
        let mut spent = 0u64;
        let r = loop {
            sink.pos = 0;
            let e = match self
                .remote
                .fetch(
                    protocol::fetch_args(&[oid], false, false),
                    self.limits(),
                    &mut sink,
                )
                .await
            {
                Ok(_) => break Ok(()),
                Err(e) => e,
            };
            if sink.local_error.is_some() || sink.differs || sink.done {
                break Err(e);
            }
            // An attempt that brought bytes earns a fresh set of attempts
            // (git restarts a blob from its start, so on a network that
            // cuts every few MB a large blob needs several), until the
            // blob has cost RESTART_BUDGET times its size.
            spent = spent.saturating_add(sink.pos);
            let size = transfer.size.get().copied().unwrap_or(0);
            if sink.pos > 0 && spent < size.saturating_mul(RESTART_BUDGET).max(RESTART_MIN) {
                failed = 0;
            }
            failed += 1;
            match (e.retryable())
                .then(|| self.remote.transport.policy.pause(failed, e.retry_after()))
                .flatten()
            {
                Some(d) => {
                    tracing::warn!(repo = %self.repo, %oid, received = sink.flushed, "fetching a blob failed: {e}; asking again in {d:?}");
                    tokio::time::sleep(d).await;
                }
                None => break Err(e),
            }
        };
        let state = match (r, sink.done) {
            (Ok(_), true) => TransferState::Done,
            (Ok(_), false) => TransferState::Failed(SourceError::Corrupt(format!(
                "the server did not send blob {oid}"
            ))),
            (Err(_), _) if sink.local_error.is_some() => {
                let local = sink.local_error.take().unwrap_or_default();
                tracing::error!(repo = %self.repo, %oid, "cannot store a blob in the cache: {local}");
                TransferState::Failed(SourceError::Unavailable(format!(
                    "cannot store blob {oid} in the cache: {local}"
                )))
            }
            (Err(e), _) => {
                tracing::error!(repo = %self.repo, %oid, "fetching a blob failed: {e}");
                TransferState::Failed(e.into_source_error())
            }
        };
        self.land(&oid, &tx, state);
    }
}
