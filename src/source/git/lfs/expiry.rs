//! Times from LFS batch answers (`expires_in`, `expires_at`), read without
//! trusting the numbers: nothing here may overflow or panic.

use std::time::{Duration, Instant, SystemTime};

/// When a download action of a batch answer expires: `expires_in`
/// (seconds from now) wins over `expires_at` (RFC 3339), as in git-lfs.
/// Both are the server's numbers, so nothing here may overflow: `None`
/// (never expires) when neither is given, when `expires_at` cannot be read,
/// or when the time is too far away to represent (`expires_in` may be as
/// large as `i64::MAX`); a time already past (or a negative `expires_in`)
/// means expired now.
pub(super) fn action_expiry(
    action: &serde_json::Value,
    now: Instant,
    wall_now: SystemTime,
) -> Option<Instant> {
    if let Some(v) = action.get("expires_in") {
        let secs = v
            .as_i64()
            .map(|s| u64::try_from(s).unwrap_or(0))
            .or_else(|| v.as_u64());
        if let Some(secs) = secs {
            return now.checked_add(Duration::from_secs(secs));
        }
    }
    let at = parse_rfc3339(action.get("expires_at")?.as_str()?)?;
    let left = at.duration_since(wall_now).unwrap_or_default();
    now.checked_add(left)
}

/// Parses an RFC 3339 time such as `2024-01-02T03:04:05Z` or
/// `...+01:00` (as LFS servers send `expires_at`), with jiff. Anything
/// malformed or out of range, and any time before 1970, is `None`.
pub fn parse_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    let t: jiff::Timestamp = s.trim().parse().ok()?;
    let t = SystemTime::from(t);
    // Before 1970: as absurd as an expiry time gets; not a time here.
    t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = parse_rfc3339("2023-11-14T22:13:20Z").unwrap();
        assert_eq!(
            t,
            std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        let t = parse_rfc3339("2023-11-14T23:13:20.123+01:00").unwrap();
        assert_eq!(
            t,
            std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
        assert!(parse_rfc3339("yesterday").is_none());
        assert!(parse_rfc3339("2023-11-14T22:13:20.Z").is_none());
        // A leap second is read as the second before it (jiff's rule).
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:60Z").unwrap(),
            std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_039)
        );
    }

    #[test]
    fn rfc3339_extremes_and_garbage() {
        let far = parse_rfc3339("9000-01-01T00:00:00Z").unwrap();
        assert_eq!(
            far,
            std::time::UNIX_EPOCH + Duration::from_secs(221_845_392_000)
        );
        // Past what jiff represents: not a time (the action never expires).
        assert!(parse_rfc3339("9999-12-31T23:59:59Z").is_none());
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:00Z").unwrap(),
            std::time::UNIX_EPOCH
        );
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:00-00:01").unwrap(),
            std::time::UNIX_EPOCH + Duration::from_secs(60)
        );
        assert!(parse_rfc3339("0000-01-01T00:00:00Z").is_none());
        assert!(parse_rfc3339("1969-12-31T23:59:59Z").is_none());
        assert!(parse_rfc3339("1970-01-01T00:00:00+00:01").is_none());
        for bad in [
            "+999-01-01T00:00:00Z",
            "-999-01-01T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2024-01-00T00:00:00Z",
            "2024-01-32T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:60:00Z",
            "2024-01-01T00:00:61Z",
            "2024-01-01T00:00:00+01:60",
            "2024-01-01T00:00:00+99:99",
            "2024-01-01T00:00:00x01:00",
            "2024-01-01T00:00:00+01-00",
            "2024-01-01T00:00:00++1:00",
            "2024-01-01T00:00:00+1:000",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00ZZ",
            "2024/01/01T00:00:00Z",
            "2024-01-01X00:00:00Z",
            "2024-01-01T00-00:00Z",
            "2024-01-01T00:00:0 Z",
            "2024-01-01T00:00:00é",
            "2024-01-01T00:00:0éZ",
            "éééééééééééééééééééé",
            "9999999999999999999999999999999999",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad:?}");
        }
        // A multi-byte character at every position: never a panic.
        let good = "2023-11-14T23:13:20.123+01:00";
        for i in 0..good.len() {
            for c in ["é", "€", "𝄞", "\u{0}"] {
                let s = format!("{}{c}{}", &good[..i], &good[i + 1..]);
                let _ = parse_rfc3339(&s);
                let s = format!("{}{c}{}", &good[..i], &good[i..]);
                let _ = parse_rfc3339(&s);
                let _ = parse_rfc3339(&good[..i]);
            }
        }
    }

    #[test]
    fn action_expiry_from_server_numbers() {
        use serde_json::json;
        let now = Instant::now();
        // 2023-11-14T22:13:20Z.
        let wall = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let exp = |v: serde_json::Value| action_expiry(&v, now, wall);
        let century = Duration::from_secs(100 * 365 * 86_400);

        // Too far away to represent: never expires (or, where the clock can
        // hold it, some time centuries away), and above all no panic.
        for v in [
            json!({"expires_in": i64::MAX}),
            json!({"expires_in": u64::MAX}),
            json!({"expires_in": i64::MAX, "expires_at": "2000-01-01T00:00:00Z"}),
            json!({"expires_at": "9999-12-31T23:59:59Z"}),
            json!({"expires_at": "9999-12-31T23:59:59-23:59"}),
        ] {
            let e = exp(v.clone());
            assert!(
                e.is_none_or(|e| e.checked_duration_since(now).is_some_and(|d| d > century)),
                "{v}: {e:?}"
            );
        }
        // Negative or zero: expired already.
        assert_eq!(exp(json!({"expires_in": i64::MIN})), Some(now));
        assert_eq!(exp(json!({"expires_in": -1})), Some(now));
        assert_eq!(exp(json!({"expires_in": 0})), Some(now));
        assert_eq!(
            exp(json!({"expires_in": 60})),
            Some(now + Duration::from_secs(60))
        );
        // expires_in wins over expires_at.
        assert_eq!(
            exp(json!({"expires_in": 10, "expires_at": "2023-11-14T23:13:20Z"})),
            Some(now + Duration::from_secs(10))
        );
        assert_eq!(
            exp(json!({"expires_at": "2023-11-14T23:13:20Z"})),
            Some(now + Duration::from_secs(3600))
        );
        assert_eq!(
            exp(json!({"expires_at": "2001-01-01T00:00:00Z"})),
            Some(now)
        );
        // Not a number: expires_at decides; nothing readable: never expires.
        assert_eq!(
            exp(json!({"expires_in": "soon", "expires_at": "2023-11-14T23:13:20Z"})),
            Some(now + Duration::from_secs(3600))
        );
        assert_eq!(exp(json!({"expires_in": 1.5})), None);
        assert_eq!(exp(json!({"expires_at": "yesterday"})), None);
        assert_eq!(exp(json!({"expires_at": 12})), None);
        assert_eq!(exp(json!({})), None);
    }
}
