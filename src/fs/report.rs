//! Reporting the failures a mount answers with: logged with the
//! repository and the path, rate limited when they repeat (when a server is
//! down, a tree walk fails the same way for every path: the first failure
//! of each kind is logged, the same failure again within `WINDOW` is only
//! counted, and the next line that gets through says how many were held
//! back), and the last one kept for `repofs status`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::source::SourceError;

/// The last failure of a mount and when it happened.
#[derive(Clone, Default)]
pub struct LastError(pub Arc<Mutex<Option<(SystemTime, String)>>>);

/// Logs a mount's failures and remembers the last one.
#[derive(Default)]
pub struct Reporter {
    quiet: Quiet,
    pub last: LastError,
}

impl Reporter {
    pub fn report(&self, repo: &str, op: &str, path: &Path, e: &SourceError) {
        if let SourceError::NotFound(_) = e {
            tracing::debug!(repo = %repo, path = %path.display(), "{op}: {e}");
            return;
        }
        match self.quiet.admit(&format!("{op}: {e}")) {
            Some(0) => tracing::error!(repo = %repo, path = %path.display(), "{op}: {e}"),
            Some(held) => {
                tracing::error!(repo = %repo, path = %path.display(), "{op}: {e} ({held} more like this held back)")
            }
            None => {}
        }
        *crate::source::lock(&self.last.0) =
            Some((SystemTime::now(), format!("{op} {}: {e}", path.display())));
    }
}

const WINDOW: Duration = Duration::from_secs(10);
/// Kinds remembered at most (older ones are forgotten).
const KINDS: usize = 256;

#[derive(Default)]
struct Quiet {
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Quiet {
    /// Whether to log a failure of this `kind` now, and how many of the
    /// same were held back since it was last logged.
    fn admit(&self, kind: &str) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if seen.len() > KINDS {
            seen.retain(|_, (t, _)| now.duration_since(*t) < WINDOW);
        }
        match seen.get_mut(kind) {
            Some((last, held)) if now.duration_since(*last) < WINDOW => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                Some(n)
            }
            None => {
                seen.insert(kind.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
#[test]
fn repeats_are_held_back() {
    let q = Quiet::default();
    assert_eq!(q.admit("a"), Some(0));
    assert_eq!(q.admit("a"), None);
    assert_eq!(q.admit("a"), None);
    assert_eq!(q.admit("b"), Some(0));
}
