//! The one retry policy: a bounded number of attempts, exponential backoff
//! with full jitter (so a fleet of build nodes that failed together does
//! not come back together), a server's `Retry-After` honoured whenever it
//! sends one (git host, LFS batch and downloads, host APIs), and a
//! deadline for the whole call.
//!
//! A `Retry-After` longer than [`MAX_RETRY_AFTER`] is not waited out: the
//! error is returned at once (a FUSE call must not hang for it), and the
//! caller's own remembered failure makes the next call wait.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::HeaderMap;

/// The longest `Retry-After` waited for within one call.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// What the policy needs to know of an error.
pub trait Retryable {
    /// Whether trying again may help (network trouble, 5xx, 429, a trickle).
    fn retryable(&self) -> bool;
    /// How long the server asked us to wait, if it did.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// How often and how patiently a failed request is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Attempts in all (the first included), at least 1.
    pub attempts: u32,
    /// The backoff ceiling of the first retry; it doubles each time.
    pub base: Duration,
    /// The largest backoff ceiling.
    pub cap: Duration,
}

impl Policy {
    pub fn new(attempts: u32) -> Policy {
        Policy {
            attempts: attempts.max(1),
            base: Duration::from_millis(400),
            cap: Duration::from_secs(20),
        }
    }

    /// The pause after `failed` attempts (1 after the first failure), or
    /// `None` when no attempt is left or the server asks for a longer wait
    /// than [`MAX_RETRY_AFTER`]. A server's `retry_after` is waited
    /// exactly (never less); otherwise a uniformly random pause up to
    /// `base * 2^(failed-1)`, capped at `cap`, and never under 50 ms.
    pub fn pause(&self, failed: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if failed >= self.attempts {
            return None;
        }
        if let Some(r) = retry_after {
            return (r <= MAX_RETRY_AFTER).then_some(r);
        }
        let ceiling = self
            .base
            .saturating_mul(1u32 << (failed - 1).min(16))
            .min(self.cap);
        let ms = ceiling.as_millis().max(1) as u64;
        Some(Duration::from_millis(jitter(ms).max(50)))
    }

    /// Runs `op` (given the attempt number, from 1) until it succeeds, fails
    /// for good, runs out of attempts, or the next pause would end past
    /// `deadline`. Each retry is logged with `what` and the error.
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        deadline: Option<Instant>,
        mut op: F,
    ) -> Result<T, E>
    where
        E: Retryable + std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            let e = match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) if !e.retryable() => return Err(e),
                Err(e) => e,
            };
            let Some(pause) = self.pause(attempt, e.retry_after()) else {
                return Err(e);
            };
            if deadline.is_some_and(|d| Instant::now() + pause >= d) {
                return Err(e);
            }
            tracing::warn!(attempt, "{what} failed: {e}; retrying in {pause:?}");
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }
}

/// A random number in `0..=max` (from the standard library's per-process
/// random hash keys: no crate, no shared state between threads).
fn jitter(max: u64) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() % (max + 1)
}

/// The wait a `Retry-After` header asks for (RFC 9110 §10.2.3: seconds, or
/// an HTTP date), from `now`. A date in the past means no wait; anything
/// unreadable is ignored.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let at = SystemTime::from(at);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(bool, Option<Duration>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "e")
        }
    }
    impl Retryable for E {
        fn retryable(&self) -> bool {
            self.0
        }
        fn retry_after(&self) -> Option<Duration> {
            self.1
        }
    }

    #[test]
    fn pauses_grow_stay_jittered_and_bounded() {
        let p = Policy::new(10);
        for failed in 1..10 {
            let ceiling = p.base.saturating_mul(1 << (failed - 1)).min(p.cap);
            for _ in 0..50 {
                let d = p.pause(failed, None).unwrap();
                assert!(
                    d <= ceiling.max(Duration::from_millis(50)),
                    "{d:?} > {ceiling:?}"
                );
            }
        }
        // Jitter: not all the same.
        let set: std::collections::HashSet<_> = (0..50).map(|_| p.pause(5, None)).collect();
        assert!(set.len() > 5);
        assert_eq!(p.pause(10, None), None);
    }

    #[test]
    fn retry_after_is_waited_exactly_unless_too_long() {
        let p = Policy::new(3);
        assert_eq!(
            p.pause(1, Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(p.pause(1, Some(Duration::from_secs(3600))), None);
        assert_eq!(p.pause(3, Some(Duration::from_secs(1))), None);
    }

    #[test]
    fn retry_after_header_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:47 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:40:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[tokio::test]
    async fn run_stops_on_permanent_errors_and_after_the_attempts() {
        let p = Policy::new(3);
        let mut calls = 0;
        let r: Result<(), E> = p
            .run("x", None, |_| {
                calls += 1;
                async { Err(E(true, None)) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 3);
        let mut calls = 0;
        let r: Result<(), E> = p
            .run("x", None, |_| {
                calls += 1;
                async { Err(E(false, None)) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
        // A retry-after is slept, never less.
        let start = tokio::time::Instant::now();
        let mut calls = 0;
        let r: Result<u8, E> = p
            .run("x", None, |n| {
                calls += 1;
                async move {
                    if n == 1 {
                        Err(E(true, Some(Duration::from_secs(1))))
                    } else {
                        Ok(1)
                    }
                }
            })
            .await;
        assert_eq!(r.unwrap(), 1);
        assert!(start.elapsed() >= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn run_respects_the_deadline() {
        let p = Policy::new(5);
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut calls = 0;
        let r: Result<(), E> = p
            .run("x", Some(deadline), |_| {
                calls += 1;
                async { Err(E(true, Some(Duration::from_secs(5)))) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
