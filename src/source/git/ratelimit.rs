//! When a host may be asked again after it refused for a rate limit, as
//! the hosts document it. Pure functions of the answer and the time (no
//! clock is read, nothing is sent), for the host API calls (`hosts.rs`) and
//! for the transport's retry policy.
//!
//! GitHub's documented order
//! (<https://docs.github.com/en/rest/using-the-rest-api/best-practices-for-using-the-rest-api#handle-rate-limit-errors-appropriately>):
//! 1. a `retry-after` header: wait that many seconds;
//! 2. else, when `x-ratelimit-remaining` is `0`: wait until
//!    `x-ratelimit-reset` (UTC epoch seconds);
//! 3. else (a secondary rate limit without either): wait at least one
//!    minute, and exponentially longer while it keeps failing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

/// The least wait after a secondary rate limit that gives no time.
pub const SECONDARY_MIN: Duration = Duration::from_secs(60);
/// The longest wait any answer can impose (a reset an hour away is GitHub's
/// longest window; anything beyond is a wrong clock or a hostile server).
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// `Retry-After` (RFC 9110, section 10.2.3): delay-seconds or an
/// HTTP-date, as a wait from `now` (a date in the past is no wait), at
/// most [`MAX_WAIT`]. `None` without a readable header.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    crate::fetch::retry::retry_after(headers, now).map(|w| w.min(MAX_WAIT))
}

/// GitHub: how long to wait before asking its API again after this
/// answer, or `None` when the answer is no rate limit (a 403 for want of
/// access is not). `message` is the answer's `message` (or body);
/// `strikes` is how many rate-limit answers without a time came before
/// this one in a row (0 for the first), for the exponential backoff.
pub fn github_retry_after(
    status: u16,
    headers: &HeaderMap,
    message: &str,
    now: SystemTime,
    strikes: u32,
) -> Option<Duration> {
    if status != 403 && status != 429 {
        return None;
    }
    if let Some(wait) = retry_after(headers, now) {
        return Some(wait);
    }
    let remaining = header(headers, "x-ratelimit-remaining").and_then(|v| v.parse::<u64>().ok());
    if remaining == Some(0) {
        if let Some(reset) =
            header(headers, "x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok())
        {
            let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            // At least a second: the reset is whole seconds.
            return Some(Duration::from_secs(reset.saturating_sub(now_s).max(1)).min(MAX_WAIT));
        }
    }
    // GitHub words every rate-limit refusal with "rate limit" ("API rate
    // limit exceeded", "You have exceeded a secondary rate limit").
    let limited = status == 429
        || remaining == Some(0)
        || message.to_ascii_lowercase().contains("rate limit");
    limited.then(|| backoff(strikes))
}

/// At least [`SECONDARY_MIN`], doubling with each strike, at most [`MAX_WAIT`].
fn backoff(strikes: u32) -> Duration {
    SECONDARY_MIN
        .saturating_mul(1u32 << strikes.min(16))
        .min(MAX_WAIT)
}

/// Any other host (GitLab, Bitbucket): a 429 waits for `Retry-After`, else
/// for GitLab's `RateLimit-Reset` (epoch seconds), else a minute; `None`
/// for any other status.
pub fn other_retry_after(status: u16, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if status != 429 {
        return None;
    }
    if let Some(wait) = retry_after(headers, now) {
        return Some(wait);
    }
    let reset = header(headers, "ratelimit-reset").and_then(|v| v.parse::<u64>().ok());
    let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    Some(match reset {
        Some(r) if r > now_s => Duration::from_secs(r - now_s).min(MAX_WAIT),
        _ => SECONDARY_MIN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    const NOW: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    #[test]
    fn retry_after_comes_first() {
        // A secondary limit: 403, remaining above 0, retry-after.
        let headers = h(&[
            ("retry-after", "2"),
            ("x-ratelimit-remaining", "4999"),
            ("x-ratelimit-reset", &(NOW + 900).to_string()),
        ]);
        let msg = "You have exceeded a secondary rate limit.";
        assert_eq!(
            github_retry_after(403, &headers, msg, now(), 0),
            Some(Duration::from_secs(2))
        );
        // retry-after wins over a reset even when remaining is 0.
        let headers = h(&[
            ("retry-after", "7"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &(NOW + 900).to_string()),
        ]);
        assert_eq!(
            github_retry_after(429, &headers, "", now(), 3),
            Some(Duration::from_secs(7))
        );
        // An HTTP-date.
        let headers = h(&[("retry-after", "Tue, 14 Nov 2023 22:13:50 GMT")]);
        assert_eq!(retry_after(&headers, now()), Some(Duration::from_secs(30)));
        let headers = h(&[("retry-after", "Tue, 14 Nov 2023 22:00:00 GMT")]);
        assert_eq!(retry_after(&headers, now()), Some(Duration::ZERO));
        assert_eq!(retry_after(&h(&[("retry-after", "soon")]), now()), None);
        assert_eq!(
            retry_after(&h(&[("retry-after", "999999999")]), now()),
            Some(MAX_WAIT)
        );
    }

    #[test]
    fn reset_when_nothing_remains() {
        let headers = h(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &(NOW + 125).to_string()),
        ]);
        let msg = "API rate limit exceeded for user ID 1.";
        assert_eq!(
            github_retry_after(403, &headers, msg, now(), 0),
            Some(Duration::from_secs(125))
        );
        // A reset already past: a second.
        let headers = h(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &(NOW - 5).to_string()),
        ]);
        assert_eq!(
            github_retry_after(403, &headers, msg, now(), 0),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn secondary_limits_without_a_time_back_off_exponentially() {
        let headers = h(&[("x-ratelimit-remaining", "4000")]);
        let msg = "You have exceeded a secondary rate limit and have been temporarily blocked";
        let waits: Vec<u64> = (0..4)
            .map(|s| {
                github_retry_after(403, &headers, msg, now(), s)
                    .unwrap()
                    .as_secs()
            })
            .collect();
        assert_eq!(waits, [60, 120, 240, 480]);
        assert_eq!(
            github_retry_after(403, &headers, msg, now(), 40),
            Some(MAX_WAIT)
        );
        // A 429 is a limit whatever its message.
        assert_eq!(
            github_retry_after(429, &HeaderMap::new(), "", now(), 0),
            Some(SECONDARY_MIN)
        );
    }

    #[test]
    fn other_answers_are_no_rate_limit() {
        let headers = h(&[("x-ratelimit-remaining", "4000")]);
        // A 403 for want of access.
        assert_eq!(
            github_retry_after(
                403,
                &headers,
                "Resource not accessible by integration",
                now(),
                0
            ),
            None
        );
        assert_eq!(
            github_retry_after(404, &headers, "rate limit", now(), 0),
            None
        );
        assert_eq!(
            github_retry_after(500, &h(&[("retry-after", "5")]), "", now(), 0),
            None
        );
    }

    #[test]
    fn other_hosts() {
        assert_eq!(
            other_retry_after(429, &h(&[("retry-after", "3")]), now()),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            other_retry_after(
                429,
                &h(&[("ratelimit-reset", &(NOW + 40).to_string())]),
                now()
            ),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            other_retry_after(429, &HeaderMap::new(), now()),
            Some(SECONDARY_MIN)
        );
        assert_eq!(
            other_retry_after(403, &h(&[("retry-after", "3")]), now()),
            None
        );
    }
}
