//! A floor under transfer speed, as git's `http.lowSpeedLimit` and
//! `http.lowSpeedTime`: a response body that brings fewer than `limit`
//! bytes per second on average over a window of `time` is dropped (its
//! connection with it) and the request is retried on a fresh connection.
//!
//! A request timeout alone re-arms with every byte, so a server or proxy
//! that trickles one byte a second would hold a fetch (and everyone
//! waiting on it) for ever. Windows are consecutive: each one must bring
//! `limit × time` bytes, so a trickle fails within `time` of starting, and
//! a stall within `time` even when no byte comes at all.

use std::time::{Duration, Instant};

/// Defaults of `low_speed_limit` and `low_speed_time`.
pub const DEFAULT_LIMIT: u64 = 16 * 1024;
pub const DEFAULT_TIME: Duration = Duration::from_secs(15);

/// The floor's settings (a limit of 0 turns it off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    /// Bytes per second, on average over `time`.
    pub limit: u64,
    pub time: Duration,
}

impl Default for Floor {
    fn default() -> Floor {
        Floor {
            limit: DEFAULT_LIMIT,
            time: DEFAULT_TIME,
        }
    }
}

/// The transfer fell under the floor: `rate` bytes per second over the
/// last window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TooSlow {
    pub rate: u64,
    pub floor: Floor,
}

/// The speed check of one response body.
#[derive(Debug)]
pub struct LowSpeed {
    floor: Floor,
    start: Instant,
    bytes: u64,
}

impl LowSpeed {
    pub fn new(floor: Floor) -> LowSpeed {
        LowSpeed {
            floor,
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// How long the next chunk may take before the window must be judged
    /// (`None`: no floor, wait as long as the request timeout allows).
    pub fn budget(&self) -> Option<Duration> {
        if self.floor.limit == 0 {
            return None;
        }
        Some(
            (self.start + self.floor.time)
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        )
    }

    /// Waits for `fut` (the next chunk of a body) while the window allows:
    /// each time the window ends with nothing new, it is judged (a stall
    /// fails within one window). The caller records the bytes it got.
    pub async fn wait<F: std::future::Future>(&mut self, fut: F) -> Result<F::Output, TooSlow> {
        let mut fut = std::pin::pin!(fut);
        loop {
            match self.budget() {
                None => return Ok(fut.await),
                Some(b) => match tokio::time::timeout(b, &mut fut).await {
                    Ok(v) => return Ok(v),
                    Err(_) => self.record(0)?,
                },
            }
        }
    }

    /// Counts `n` bytes that arrived (0 when the budget ran out with none)
    /// and judges every window that has ended.
    pub fn record(&mut self, n: u64) -> Result<(), TooSlow> {
        self.record_at(n, Instant::now())
    }

    fn record_at(&mut self, n: u64, now: Instant) -> Result<(), TooSlow> {
        if self.floor.limit == 0 {
            return Ok(());
        }
        self.bytes = self.bytes.saturating_add(n);
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < self.floor.time {
            return Ok(());
        }
        // Judged over the time that really passed (a window ends late when
        // the last chunk came after its end).
        let rate = self.bytes as f64 / elapsed.as_secs_f64().max(0.001);
        if rate < self.floor.limit as f64 {
            return Err(TooSlow {
                rate: rate as u64,
                floor: self.floor,
            });
        }
        self.start = now;
        self.bytes = 0;
        Ok(())
    }
}

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the transfer slowed to {} B/s, under the floor of {} B/s for {}s (`low_speed_limit`, `low_speed_time`)",
            self.rate,
            self.floor.limit,
            self.floor.time.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floor() -> Floor {
        Floor {
            limit: 1000,
            time: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_trickle_fails_at_the_end_of_its_window() {
        let t0 = Instant::now();
        let mut s = LowSpeed {
            floor: floor(),
            start: t0,
            bytes: 0,
        };
        for i in 1..10 {
            // 100 B/s: under the floor, but the window is not over yet.
            assert!(s.record_at(100, t0 + Duration::from_secs(i)).is_ok());
        }
        let e = s.record_at(100, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.rate, 100);
    }

    #[test]
    fn a_fast_transfer_passes_window_after_window() {
        let t0 = Instant::now();
        let mut s = LowSpeed {
            floor: floor(),
            start: t0,
            bytes: 0,
        };
        for i in 1..100 {
            assert!(s.record_at(2000, t0 + Duration::from_secs(i)).is_ok());
        }
    }

    #[test]
    fn a_stall_fails_without_any_byte() {
        let t0 = Instant::now();
        let mut s = LowSpeed {
            floor: floor(),
            start: t0,
            bytes: 0,
        };
        assert!(s.record_at(0, t0 + Duration::from_secs(11)).is_err());
    }

    #[test]
    fn a_burst_late_in_the_window_counts() {
        let t0 = Instant::now();
        let mut s = LowSpeed {
            floor: floor(),
            start: t0,
            bytes: 0,
        };
        assert!(s.record_at(20_000, t0 + Duration::from_secs(9)).is_ok());
        assert!(s.record_at(0, t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn no_floor_never_fails() {
        let mut s = LowSpeed::new(Floor {
            limit: 0,
            time: Duration::from_secs(1),
        });
        assert!(s.budget().is_none());
        assert!(
            s.record_at(0, Instant::now() + Duration::from_secs(100))
                .is_ok()
        );
    }
}
