//! Following a branch: every `refresh`, the ref is resolved again and,
//! when it moved, the new commit is loaded and swapped in whole. The commit
//! served before is kept as `retired`, so directories the kernel still
//! holds from it (a shell inside one) keep listing and reading.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::GitSource;
use crate::source::lock;

impl GitSource {
    /// Follows the branch: every `refresh`, resolves the ref and, when it
    /// moved, loads the new commit and swaps it in atomically. Files already
    /// open keep reading the old contents. Ends when the source is shut down.
    pub async fn follow(self: Arc<Self>) {
        let Some(every) = self.repo.refresh else {
            return;
        };
        // Hold the source only while working, so that an unmounted one is
        // released without waiting for the next refresh.
        let weak = Arc::downgrade(&self);
        drop(self);
        loop {
            tokio::time::sleep(every).await;
            let Some(this) = weak.upgrade() else {
                return;
            };
            if !this.refresh_once().await {
                return;
            }
        }
    }

    /// One refresh: resolves the ref and swaps in a new commit. False once
    /// the source is shut down.
    async fn refresh_once(self: &Arc<Self>) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return false;
        }
        let Some(current) = self.current_commit() else {
            return true; // not loaded yet: the first access loads it
        };
        let commit = match self.remote.resolve_ref().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(repo = %self.repo.name, "refresh: cannot resolve the ref: {e}");
                return true;
            }
        };
        if commit == current {
            return true;
        }
        match self.snapshot_for(commit).await {
            Ok(s) => {
                self.state.remember(&self.repo.name, commit);
                // The commit served so far is retired before the new
                // one is served: a tree from it is always in one of them.
                let served = lock(&self.snapshot).clone();
                *lock(&self.retired) = served;
                *lock(&self.snapshot) = Some(Arc::new(s));
                self.generation.fetch_add(1, Ordering::SeqCst);
                tracing::info!(repo = %self.repo.name, from = %current, to = %commit, "the ref moved: now serving the new commit");
            }
            Err(e) => {
                tracing::warn!(repo = %self.repo.name, %commit, "refresh: cannot load the new commit: {e}")
            }
        }
        true
    }
}
