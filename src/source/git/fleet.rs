//! The git side of the fleet's shared cache tier: blobs, trees and sizes
//! are looked up there (verified against their ids) before the origin is
//! asked, and what the origin sent is offered to it. Ref resolution never
//! goes there: a node only serves commits its own credentials reached.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use gix_hash::ObjectId;

use super::objects::{Objects, blob_key};
use crate::cache::Cache;
use crate::shared::{Expect, Shared};
use crate::source::transfer::{Transfer, TransferSender, TransferState};

/// Blobs asked of the shared tier at once.
const PARALLEL: usize = 16;
/// Largest trees or sizes object accepted from the shared tier.
pub const MAX_META: u64 = 256 << 20;

pub fn blob_object(oid: &ObjectId) -> String {
    format!("git/blob/{oid}")
}

pub fn trees_object(commit: &ObjectId) -> String {
    format!("git/trees/{commit}")
}

pub fn sizes_object(tree: &ObjectId) -> String {
    format!("git/sizes/{tree}")
}

impl Objects {
    /// Lands the blobs of `wants` the shared tier has; returns the others,
    /// for the origin.
    pub(super) async fn from_shared(
        &self,
        wants: Vec<(ObjectId, TransferSender)>,
    ) -> Vec<(ObjectId, TransferSender)> {
        let Some(shared) = self.shared.clone() else {
            return wants;
        };
        let cache = self.cache.clone();
        let mut results = futures_util::stream::iter(wants)
            .map(|(oid, tx)| {
                let (shared, cache) = (shared.clone(), cache.clone());
                async move {
                    let hit = shared
                        .fetch(
                            &blob_object(&oid),
                            Expect::GitBlob(oid),
                            &cache,
                            &blob_key(&oid),
                        )
                        .await;
                    (oid, tx, hit.is_some())
                }
            })
            .buffer_unordered(PARALLEL);
        // Each hit is landed as it arrives: its waiters need not wait for
        // the rest of the batch.
        let mut rest = Vec::new();
        while let Some((oid, tx, hit)) = results.next().await {
            if hit {
                self.mark_verified(oid);
                self.finish_flight(&oid, &tx, TransferState::Done);
            } else {
                rest.push((oid, tx));
            }
        }
        rest
    }

    /// A large blob opened for reading, from the shared tier: downloaded
    /// whole and verified, then handed to the transfer's readers. False
    /// when the tier does not have it (the origin streams it instead).
    pub(super) async fn streamed_from_shared(
        &self,
        oid: ObjectId,
        tx: &TransferSender,
        transfer: &Arc<Transfer>,
    ) -> bool {
        let Some(shared) = self.shared.clone() else {
            return false;
        };
        // Waiters see a change with every chunk, so none gives up.
        let beat = |_: u64| {
            let _ = tx.send(TransferState::Progress(0));
        };
        let file = shared
            .fetch_with(
                &blob_object(&oid),
                Expect::GitBlob(oid),
                &self.cache,
                &blob_key(&oid),
                &beat,
            )
            .await;
        let Some(file) = file else {
            return false;
        };
        let Ok(len) = file.metadata().map(|m| m.len()) else {
            return false;
        };
        self.mark_verified(oid);
        let _ = transfer.size.set(len);
        let _ = transfer.done_file.set(file);
        self.finish_flight(&oid, tx, TransferState::Done);
        true
    }

    /// Offers a blob the origin sent to the shared tier.
    pub(super) fn share(&self, oid: &ObjectId) {
        if let Some(shared) = &self.shared {
            if self.cache.contains(&blob_key(oid)) {
                shared.upload(&blob_object(oid), &self.cache, &blob_key(oid));
            }
        }
    }
}

/// A commit's trees from the shared tier, into the cache as `cache_key`:
/// the caller reads them back with the usual per-record check.
pub async fn fetch_trees(
    shared: &Shared,
    cache: &Cache,
    commit: &ObjectId,
    cache_key: &str,
) -> bool {
    shared
        .fetch(
            &trees_object(commit),
            Expect::Later { max: MAX_META },
            cache,
            cache_key,
        )
        .await
        .is_some()
}

/// Whether every tree reachable from `root` is in `trees` (a shared-tier
/// copy must not leave directories out).
pub fn complete(trees: &HashMap<ObjectId, Arc<[u8]>>, root: &ObjectId) -> bool {
    let mut todo = vec![*root];
    let mut seen = std::collections::HashSet::new();
    while let Some(t) = todo.pop() {
        if !seen.insert(t) {
            continue;
        }
        let Some(data) = trees.get(&t) else {
            return false;
        };
        for e in gix_object::TreeRefIter::from_bytes(data, gix_hash::Kind::Sha1) {
            let Ok(e) = e else { return false };
            if e.mode.is_tree() {
                todo.push(e.oid.to_owned());
            }
        }
    }
    true
}

/// Offers a local cache entry to the shared tier under `object`.
pub fn offer(shared: &Option<Arc<Shared>>, cache: &Arc<Cache>, cache_key: &str, object: &str) {
    if let Some(s) = shared {
        s.upload(object, cache, cache_key);
    }
}

/// An LFS object from the shared tier (sha256 and size checked), for a
/// download whose waiters are kept alive while it arrives.
pub async fn lfs_from_shared(
    shared: Option<&Arc<Shared>>,
    cache: &Cache,
    p: &super::lfs::Pointer,
    tx: &TransferSender,
) -> Option<std::fs::File> {
    let beat = |_: u64| {
        let _ = tx.send(TransferState::Progress(0));
    };
    let expect = Expect::Sha256 {
        oid: p.oid.clone(),
        size: p.size,
    };
    shared?
        .fetch_with(
            &format!("lfs/{}", p.oid),
            expect,
            cache,
            &p.cache_key(),
            &beat,
        )
        .await
}

/// Offers an LFS object the LFS server sent to the shared tier.
pub fn lfs_offer(shared: Option<&Arc<Shared>>, cache: &Arc<Cache>, p: &super::lfs::Pointer) {
    if let Some(s) = shared {
        s.upload(&format!("lfs/{}", p.oid), cache, &p.cache_key());
    }
}
