//! The disk under the cache: how much room it has left, the reserve kept
//! free (5 % of the file system, as mountpoint-s3 does), and a rate-limited
//! warning when the disk, not `cache_size`, is what limits the cache.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Share of the file system the cache leaves free.
const RESERVE_PERCENT: u64 = 5;
/// How often "the cache is full" may be logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Free and total bytes of the file system holding `path`.
pub fn space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct for a valid C string path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let unit = st.f_frsize as u64;
    Some((
        (st.f_bavail as u64).saturating_mul(unit),
        (st.f_blocks as u64).saturating_mul(unit),
    ))
}

/// Watches the disk of one cache directory.
pub struct Disk {
    dir: PathBuf,
    last_warning: Mutex<Option<Instant>>,
}

impl Disk {
    pub fn new(dir: &Path) -> Disk {
        Disk {
            dir: dir.to_owned(),
            last_warning: Mutex::new(None),
        }
    }

    /// Bytes that may still be written before the reserve is reached.
    pub fn room(&self) -> Option<u64> {
        let (free, total) = space(&self.dir)?;
        Some(free.saturating_sub(total / 100 * RESERVE_PERCENT))
    }

    /// Free and total bytes, for status output.
    pub fn space(&self) -> Option<(u64, u64)> {
        space(&self.dir)
    }

    /// Says (at most once a minute) that the disk limits the cache.
    pub fn warn_full(&self, cap: u64, why: &str) {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let (free, total) = self.space().unwrap_or((0, 0));
        tracing::warn!(
            dir = %self.dir.display(),
            free_mib = free >> 20,
            disk_mib = total >> 20,
            cache_size_mib = cap >> 20,
            "the cache is full: its disk has {} MiB free of {} MiB (keeping {RESERVE_PERCENT} % free); evicting older entries, and serving without caching what does not fit ({why})",
            free >> 20,
            total >> 20
        );
    }
}

/// Whether an I/O error means the disk (or quota) is full.
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}
