//! Sizes of blobs without their contents: a directory's blobs asked in one
//! request read only up to the first large object's header (the small ones
//! before it come whole and are cached: the directory's prefetch), each
//! large one then sized by a request of its own that stops at its header.
//!
//! A probe waits for another request's flight of a blob (a prefetch, a
//! read) at most [`FLIGHT_WAIT`]: past it, it asks for the blob in a
//! request of its own, so a listing never waits behind a slow transfer of
//! file contents.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gix_hash::ObjectId;

use super::{BATCH, Objects};
use crate::source::transfer::{Transfer, TransferState};
use crate::source::{SourceError, lock};

/// Size probes of single blobs run at most this many at once.
const PROBE_PARALLEL: usize = 8;
/// The longest a probe waits for another request's flight of a blob.
pub(crate) const FLIGHT_WAIT: Duration = Duration::from_secs(2);

impl Objects {
    /// Exact sizes of `oids` without downloading any blob larger than
    /// `keep` (smaller ones are fetched and cached on the way: they are the
    /// directory's prefetch).
    pub async fn probe(
        &self,
        oids: &[ObjectId],
        keep: u64,
    ) -> Result<HashMap<ObjectId, u64>, SourceError> {
        let mut sizes = HashMap::new();
        let mut unknown: Vec<ObjectId> = Vec::new();
        let known = |o: &ObjectId| {
            self.cached_size(o)
                .or_else(|| lock(&self.probed).get(o).copied())
        };
        for oid in oids {
            match known(oid) {
                Some(s) => {
                    sizes.insert(*oid, s);
                }
                None if !unknown.contains(oid) => unknown.push(*oid),
                None => {}
            }
        }
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| SourceError::Unavailable("shutting down".into()))?;
        let gate = Arc::new(tokio::sync::Semaphore::new(PROBE_PARALLEL));
        let mut singles = Vec::new();
        let mut single = |oid: ObjectId, patient: bool| {
            let (me, gate) = (me.clone(), gate.clone());
            singles.push(self.rt.spawn(async move {
                let _permit = gate.acquire().await;
                (oid, me.probe_one(oid, keep, patient).await)
            }));
        };
        let mut rounds = 0;
        while !unknown.is_empty() {
            rounds += 1;
            if unknown.len() <= PROBE_PARALLEL || rounds > 64 {
                // Few left: one request each, all at once, each exact.
                unknown.drain(..).for_each(|o| single(o, true));
                break;
            }
            // One request for (up to a batch of) the rest, read up to the
            // first large blob; the small ones before it come whole.
            let chunk: Vec<ObjectId> = unknown.iter().take(BATCH).copied().collect();
            let (owned, waiting) = self.claim(&chunk);
            let asked: Vec<ObjectId> = owned.iter().map(|(o, _)| *o).collect();
            let mut stopped = None;
            if !owned.is_empty() {
                // A task: a listing that gives up must not leave flights
                // that nobody will finish.
                let me2 = me.clone();
                let (got, stop, err) = self
                    .rt
                    .spawn(async move { me2.fetch_batch(owned, Some(keep)).await })
                    .await
                    .map_err(|e| SourceError::Unavailable(format!("size probe: {e}")))?;
                if let Some(e) = err {
                    return Err(e);
                }
                sizes.extend(got);
                stopped = stop;
            }
            let mut late = Vec::new();
            for (oid, t) in waiting {
                if !self.sized_or_finished(&t).await {
                    late.push(oid);
                }
            }
            // Others' flights that are slow: each sized by a request of
            // our own (exact, whatever its size), without waiting again.
            unknown.retain(|o| !late.contains(o));
            late.into_iter().for_each(|o| single(o, false));
            unknown.retain(|o| match sizes.get(o).copied().or_else(|| known(o)) {
                Some(s) => {
                    sizes.insert(*o, s);
                    false
                }
                None => true,
            });
            if stopped.is_none() {
                if let Some(missing) = asked.iter().find(|o| unknown.contains(o)) {
                    return Err(SourceError::Corrupt(format!(
                        "the server did not send blob {missing}"
                    )));
                }
            } else if !unknown.is_empty() {
                // Servers send wants in the order asked, so the blob we
                // stopped at is most likely the first one left: size it on
                // its own (exactly, whatever it is) and go on with the rest.
                single(unknown.remove(0), true);
            }
        }
        for t in singles {
            let (oid, r) = t
                .await
                .map_err(|e| SourceError::Unavailable(format!("size probe: {e}")))?;
            sizes.insert(oid, r?);
        }
        Ok(sizes)
    }

    /// Waits until another fetch of a blob finished (or failed), or (a
    /// large blob being streamed) until its size is known: a size probe
    /// need not wait for the whole download. False when [`FLIGHT_WAIT`]
    /// passed first.
    async fn sized_or_finished(&self, t: &Arc<Transfer>) -> bool {
        let t2 = t.clone();
        let wait = t.wait(self.stall_limit, move |s| {
            matches!(s, TransferState::Done | TransferState::Released) || t2.size.get().is_some()
        });
        tokio::time::timeout(FLIGHT_WAIT, wait).await.is_ok()
    }

    /// Sizes one blob by a request that stops at its header. Unless
    /// `patient`, (another flight of it was slow already) it does not wait
    /// for another request's flight at all.
    async fn probe_one(&self, oid: ObjectId, keep: u64, patient: bool) -> Result<u64, SourceError> {
        for _ in 0..3 {
            if let Some(s) = self
                .cached_size(&oid)
                .or_else(|| lock(&self.probed).get(&oid).copied())
            {
                return Ok(s);
            }
            let (mut owned, waiting) = self.claim(&[oid]);
            if owned.is_empty() {
                let mut in_time = patient;
                for (_, t) in waiting.iter().filter(|_| patient) {
                    in_time &= self.sized_or_finished(&t).await;
                }
                if in_time {
                    continue;
                }
                // Another request's flight is slow: one of our own.
                owned = unclaimed(&[oid]);
            }
            let (got, stopped, err) = self.fetch_batch(owned, Some(keep)).await;
            if let Some(e) = err {
                return Err(e);
            }
            if let Some(s) = got.get(&oid).copied().or(stopped) {
                return Ok(s);
            }
        }
        Err(SourceError::Unavailable(format!(
            "cannot learn the size of blob {oid}"
        )))
    }
}

/// Flights for `oids` that are nobody's but the caller's: a request of its
/// own beside another one that is slow (whichever lands first is kept).
fn unclaimed(oids: &[ObjectId]) -> Vec<(ObjectId, crate::source::transfer::TransferSender)> {
    oids.iter().map(|o| (*o, Transfer::new(None).0)).collect()
}
