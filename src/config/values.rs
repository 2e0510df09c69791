//! Sizes (`20GiB`, `500MB`) and durations (`500ms`, `5m`) as the
//! configuration file writes them.

use std::time::Duration;

/// Parses sizes such as `20GiB`, `512 MB`, `1.5G`, `4096`.
/// Binary units (KiB, MiB, GiB, TiB, and the bare K/M/G/T) are powers of 1024;
/// KB, MB, GB, TB are powers of 1000.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("expected a size such as \"20GiB\" or \"500MB\", got {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)"
            ));
        }
    };
    let bytes = num * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// The longest duration any key accepts: a year. Longer ones are typing
/// mistakes, and timeouts are multiplied (by `max_attempts`, for a stall
/// limit) and added to clocks, which must not overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses durations such as `30s`, `500ms`, `5m`, `1h`, from zero
/// (refused) to [`MAX_DURATION`] (larger ones are refused, never wrapped).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let too_long = || {
        format!(
            "duration {s:?} is too long; at most {}h (a year)",
            MAX_DURATION.as_secs() / 3600
        )
    };
    let n: u64 = match num.parse() {
        Ok(n) => n,
        // All digits, but more than u64 holds.
        Err(_) if !num.is_empty() => return Err(too_long()),
        Err(_) => {
            return Err(format!(
                "expected a duration such as \"30s\" or \"5m\", got {s:?}"
            ));
        }
    };
    let secs = |per: u64| n.checked_mul(per).map(Duration::from_secs);
    let d = match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use ms, s, m or h"
            ));
        }
    };
    let d = d.filter(|d| *d <= MAX_DURATION).ok_or_else(too_long)?;
    if d.is_zero() {
        return Err(format!("duration {s:?} must be greater than zero"));
    }
    Ok(d)
}

pub(super) fn parse_duration_key(s: Option<&str>, default_secs: u64) -> Result<Duration, String> {
    match s {
        None => Ok(Duration::from_secs(default_secs)),
        Some(s) => parse_duration(s),
    }
}

/// The default `max_tree_bytes`: an eighth of the machine's memory
/// (`MemTotal` in /proc/meminfo), at least 64 MiB and at most 4 GiB; 1 GiB
/// when the memory cannot be read.
pub fn default_max_tree_bytes() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    });
    match total {
        Some(bytes) => (bytes / 8).clamp(64 << 20, 4 << 30),
        None => 1 << 30,
    }
}
