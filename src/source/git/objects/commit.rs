//! A commit and its trees in one fetch (`filter blob:none` where the
//! server has it), held in memory within `max_tree_bytes`, tried again
//! whole within the retry policy when the pack is cut or damaged.

use std::collections::HashMap;
use std::sync::Arc;

use gix_hash::ObjectId;

use super::Objects;
use crate::source::SourceError;
use crate::source::git::protocol;
use crate::source::git::sinks::BatchSink;

impl Objects {
    /// Fetches a commit and its trees (and, without `filter`, its blobs,
    /// which go to the cache). Returns the commit and trees by id.
    pub async fn fetch_commit(
        &self,
        commit: ObjectId,
        shallow: bool,
        filter: bool,
    ) -> Result<HashMap<ObjectId, Arc<[u8]>>, SourceError> {
        use crate::fetch::Retryable;
        // A failed attempt (cut, trickle, damaged pack) is tried again
        // whole, within the retry policy: trees come in one pack.
        let mut failed = 0u32;
        loop {
            let mut sink = BatchSink {
                objects: self,
                wants: HashMap::new(),
                got: HashMap::new(),
                stop_over: None,
                stopped_at: None,
                writer: None,
                trees: Some(HashMap::new()),
                tree_bytes: 0,
                tree_budget: self.tree_budget,
                local_error: None,
                beat: None,
            };
            // Trees are kept as delta bases whatever their size: the sink
            // bounds them in all.
            let e = match self
                .remote
                .fetch(
                    protocol::fetch_args(&[commit], shallow, filter),
                    self.limits(),
                    &mut sink,
                )
                .await
            {
                Ok(_) => return Ok(sink.trees.unwrap_or_default()),
                Err(e) => e,
            };
            failed += 1;
            let over_budget = sink.tree_bytes > sink.tree_budget;
            match (e.retryable() && !over_budget && sink.local_error.is_none())
                .then(|| self.remote.transport.policy.pause(failed, e.retry_after()))
                .flatten()
            {
                Some(d) => {
                    tracing::warn!(repo = %self.repo, %commit, "fetching the commit's trees failed: {e}; asking again in {d:?}");
                    tokio::time::sleep(d).await;
                }
                None => return Err(e.into_source_error()),
            }
        }
    }
}
