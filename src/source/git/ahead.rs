//! Sizes ahead of a walk, over protocol-v2 `object-info`: once a directory
//! is listed, the sizes of the blobs of the directories below it (breadth
//! first, up to `AHEAD_BLOBS` blobs, looking at most at `AHEAD_TREES`
//! trees of the commit, which are all in memory) are asked for in the
//! background, `OBJECT_INFO_BATCH` ids per request, and stored per
//! directory. A walk (`find`, `ls -R`, `du`) then costs a request per
//! 50,000 files instead of one per directory, and the listing that started
//! it does not wait for it.
//!
//! A directory being learned this way is registered until the request
//! ends; its own listing waits for that (at most `WAIT`) instead of asking
//! again, and asks itself only if the request failed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gix_hash::ObjectId;
use gix_object::tree::EntryKind;
use tokio::sync::watch;

use super::hosts::DirRef;
use super::protocol;
use super::remote::Remote;
use super::sizes::{Sizes, sizes_key, store};
use super::snapshot::Snapshot;
use super::transport::RemoteError;
use crate::cache::Cache;
use crate::source::{SourceError, lock};

/// Blob ids per `object-info` request (about 45 bytes each way).
const OBJECT_INFO_BATCH: usize = 20_000;
/// Blobs of the directories below a listed one asked for at once.
const AHEAD_BLOBS: usize = 50_000;
/// Trees looked at to find them.
const AHEAD_TREES: usize = 5_000;
/// How long a listing waits for a request learning its sizes.
const WAIT: Duration = Duration::from_secs(30);

/// Directories being learned, each with the signal its request ends with.
#[derive(Default, Clone)]
pub struct Flights(Arc<Mutex<HashMap<ObjectId, watch::Receiver<bool>>>>);

/// Sizes of `ids` over `object-info` (only those asked for are kept). The
/// requests of one call (at most `AHEAD_BLOBS / OBJECT_INFO_BATCH + 1` for
/// a walk) run at once.
pub async fn object_info(
    remote: &Remote,
    ids: &[ObjectId],
) -> Result<HashMap<ObjectId, u64>, SourceError> {
    let answers =
        futures_util::future::try_join_all(ids.chunks(OBJECT_INFO_BATCH).map(|b| batch(remote, b)))
            .await?;
    Ok(answers.into_iter().flatten().collect())
}

/// One `object-info` request.
async fn batch(remote: &Remote, ids: &[ObjectId]) -> Result<Vec<(ObjectId, u64)>, SourceError> {
    let body = remote
        .command("object-info", protocol::object_info_args(ids))
        .await
        .map_err(RemoteError::into_source_error)?;
    let asked: HashSet<&ObjectId> = ids.iter().collect();
    let mut got = Vec::with_capacity(ids.len());
    for (oid, size) in protocol::parse_object_info(&body).map_err(|e| SourceError::Corrupt(e.0))? {
        if let (Some(s), true) = (size, asked.contains(&oid)) {
            got.push((oid, s));
        }
    }
    Ok(got)
}

impl Sizes {
    /// Waits for a background request learning `tree`'s sizes, if any.
    pub(super) async fn wait_ahead(&self, tree: &ObjectId) {
        let rx = lock(&self.ahead.0).get(tree).cloned();
        if let Some(mut rx) = rx {
            let _ = tokio::time::timeout(WAIT, rx.wait_for(|done| *done)).await;
        }
    }

    /// Starts learning the sizes of the directories below `dir` in the
    /// background (nothing if they are known or being learned).
    pub(super) fn start_ahead(&self, dir: &DirRef) {
        let Some(snap) = dir.snapshot.clone() else {
            return;
        };
        let (tx, rx) = watch::channel(false);
        let dirs = {
            let mut flights = lock(&self.ahead.0);
            let dirs = below(&self.cache, &snap, &dir.tree, &flights);
            for (t, _) in &dirs {
                flights.insert(*t, rx.clone());
            }
            dirs
        };
        if dirs.is_empty() {
            return;
        }
        let (remote, cache, repo) = (self.remote.clone(), self.cache.clone(), self.repo.clone());
        let flights = self.ahead.clone();
        tokio::spawn(async move {
            let ids: Vec<ObjectId> = dirs
                .iter()
                .flat_map(|(_, b)| b.iter().copied())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            match object_info(&remote, &ids).await {
                Ok(got) => {
                    for (tree, blobs) in &dirs {
                        let theirs: HashMap<ObjectId, u64> = blobs
                            .iter()
                            .filter_map(|b| got.get(b).map(|s| (*b, *s)))
                            .collect();
                        if theirs.len() == blobs.len() {
                            store(&cache, &repo, tree, &theirs);
                        }
                    }
                }
                // Each directory asks for itself when listed.
                Err(e) => tracing::debug!(repo = %repo, "sizes ahead of the walk: {e}"),
            }
            let mut f = lock(&flights.0);
            for (t, _) in &dirs {
                f.remove(t);
            }
            drop(f);
            let _ = tx.send(true);
        });
    }
}

/// Directories below `tree` (not itself) whose sizes are neither stored
/// nor being learned, breadth first, with their blobs.
fn below(
    cache: &Cache,
    snap: &Snapshot,
    tree: &ObjectId,
    flights: &HashMap<ObjectId, watch::Receiver<bool>>,
) -> Vec<(ObjectId, Vec<ObjectId>)> {
    let mut out = Vec::new();
    let mut queue = VecDeque::from([*tree]);
    let (mut blobs_total, mut looked) = (0usize, 0usize);
    while let Some(t) = queue.pop_front() {
        looked += 1;
        if looked > AHEAD_TREES || blobs_total >= AHEAD_BLOBS {
            break;
        }
        let Some(data) = snap.trees.get(&t) else {
            continue;
        };
        let mut blobs = Vec::new();
        for item in gix_object::TreeRefIter::from_bytes(data, gix_hash::Kind::Sha1).flatten() {
            match item.mode.kind() {
                EntryKind::Tree => queue.push_back(item.oid.to_owned()),
                EntryKind::Blob | EntryKind::BlobExecutable | EntryKind::Link => {
                    blobs.push(item.oid.to_owned())
                }
                EntryKind::Commit => {}
            }
        }
        if t != *tree
            && !blobs.is_empty()
            && !flights.contains_key(&t)
            && !cache.contains(&sizes_key(&t))
        {
            blobs_total += blobs.len();
            out.push((t, blobs));
        }
    }
    out
}
