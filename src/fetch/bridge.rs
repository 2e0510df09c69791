//! The one bridge from a FUSE worker thread into the async runtime, with a
//! bound on the wait. fuser answers no FUSE_INTERRUPT, so a reader blocked
//! in a call is killable only once the daemon answers: every call must end
//! within a stated time, whatever the network does.
//!
//! The bound is on the caller's wait only: work others share (a fetch in
//! flight, a snapshot being loaded) runs in tasks of its own and goes on
//! after an impatient caller got its error, so the next call finds it
//! further along or done.

use std::future::Future;
use std::time::Duration;

use crate::source::SourceError;

/// The default bound of a metadata call (lookup, listing, open, readlink).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(45);

/// Runs futures for FUSE threads, each within `limit`.
#[derive(Clone)]
pub struct Bridge {
    pub rt: tokio::runtime::Handle,
    pub limit: Duration,
}

impl Bridge {
    pub fn new(rt: tokio::runtime::Handle, limit: Duration) -> Bridge {
        Bridge { rt, limit }
    }

    /// Blocks the calling (non-runtime) thread on `fut` for at most the
    /// bound; past it the caller gets an error naming `what` and the bound.
    pub fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, SourceError>>,
    ) -> Result<T, SourceError> {
        let limit = self.limit;
        self.rt.block_on(async {
            match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(SourceError::Unavailable(format!(
                    "{what}: no answer within {}s (`call_timeout`); the server is slow or unreachable, try again",
                    limit.as_secs()
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_past_its_bound_errors_and_the_work_goes_on() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let b = Bridge::new(rt.handle().clone(), Duration::from_millis(100));
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::time::Instant::now();
        let r: Result<(), _> = b.call("listing x", async {
            // Shared work runs as a task: it outlives the caller's wait.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = tx.send(());
            });
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(())
        });
        let e = r.unwrap_err().to_string();
        assert!(e.contains("listing x") && e.contains("call_timeout"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        rx.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(b.call("y", async { Ok(7) }).unwrap(), 7);
    }
}
