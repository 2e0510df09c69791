//! Rate limiting for repeated errors: when a server is down, a tree walk
//! fails the same way for every path. The first failure of each kind is
//! logged with its path; the same failure again within `WINDOW` is only
//! counted, and the next line that gets through says how many were held back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(10);
/// Kinds remembered at most (older ones are forgotten).
const KINDS: usize = 256;

#[derive(Default)]
pub struct Quiet {
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Quiet {
    /// Whether to log a failure of this `kind` now, and how many of the
    /// same were held back since it was last logged.
    pub fn admit(&self, kind: &str) -> Option<u64> {
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
