//! `repofs status`: where a running daemon publishes its state
//! (`<cache_dir>/state/status.json`, registered in a runtime directory so
//! that it can be found without the config), how to read a fresh one, and
//! printing it: one line per repository (mounted or failed with the
//! reason, the commit, traffic, transfers in flight) and the cache's use
//! against its cap. It never prints secrets (the file holds none).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The status file of a daemon using `cache_dir`.
pub fn status_file(cache_dir: &Path) -> PathBuf {
    cache_dir.join("state").join("status.json")
}

/// Where running daemons say where their status files are, so that
/// `repofs status` and `repofs prefetch` find a daemon mounted from the
/// command line with any cache directory.
pub fn runtime_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail and has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/repofs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d.join("repofs"),
        _ => std::env::temp_dir().join(format!("repofs-{uid}")),
    }
}

/// Records this daemon's status file in the runtime directory.
pub fn register(status: &Path) -> Option<PathBuf> {
    let dir = runtime_dir();
    if !private_dir(&dir) {
        tracing::debug!(
            "not registering in {}: not a private directory of this user",
            dir.display()
        );
        return None;
    }
    let link = dir.join(format!("{}.status", std::process::id()));
    let _ = std::fs::remove_file(&link);
    match std::fs::create_dir_all(&dir).and_then(|_| std::os::unix::fs::symlink(status, &link)) {
        Ok(()) => Some(link),
        Err(e) => {
            tracing::debug!("cannot register in {}: {e}", dir.display());
            None
        }
    }
}

/// Creates `dir` (mode 0700) if needed; whether it belongs to this user and
/// nobody else may write to it (a shared /tmp could hold one planted by
/// another user).
fn private_dir(dir: &Path) -> bool {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    // SAFETY: geteuid cannot fail and has no preconditions.
    let uid = unsafe { libc::geteuid() };
    std::fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0)
}

/// The status files of the daemons running now (stale records removed).
pub fn registered() -> Vec<PathBuf> {
    if !private_dir(&runtime_dir()) {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir(runtime_dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_suffix(".status")
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        if let Ok(target) = std::fs::read_link(e.path()) {
            out.push(target);
        }
    }
    out.sort();
    out
}

/// A failure and its age, as the status file records it.
pub fn error_json(when: std::time::SystemTime, what: String) -> serde_json::Value {
    let secs = std::time::SystemTime::now()
        .duration_since(when)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    serde_json::json!({"seconds_ago": secs, "what": what})
}

/// The status a running daemon published at `path`, freshly written: the
/// daemon is asked (SIGUSR1) to write it now, and the answer is awaited for
/// up to 2 s (an older one is returned if none comes).
pub fn fresh(path: &Path) -> Result<serde_json::Value, String> {
    let read = || -> Result<serde_json::Value, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|_| format!("repofs is not running (no status at {})", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{} is unreadable: {e}", path.display()))
    };
    let doc = read()?;
    let pid = match daemon_pid(&doc, path) {
        Ok(pid) => pid,
        // Another user's daemon (say root's): it cannot be signalled
        // anyway, so its last status is shown as it is.
        Err(Unverified::NotPermitted(_)) => return Ok(doc),
        Err(Unverified::Stale(why)) => return Err(why),
    };
    let seq = |d: &serde_json::Value| d.get("sequence").and_then(|s| s.as_u64());
    let before = seq(&doc);
    // SAFETY: sends a signal the daemon handles, to a process verified to
    // be a repofs daemon just now.
    if before.is_none() || unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
        return Ok(doc);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        // A half-replaced file cannot be seen (it is renamed into place).
        if let Ok(d) = read() {
            if seq(&d) != before {
                return Ok(d);
            }
        }
    }
    Ok(doc)
}

/// Why the process a status file names may not be signalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unverified {
    /// It is gone, or it is not a repofs daemon: the file is stale.
    Stale(String),
    /// It belongs to another user (its executable cannot be inspected, and
    /// it could not be signalled either).
    NotPermitted(String),
}

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unverified::Stale(s) | Unverified::NotPermitted(s) => f.write_str(s),
        }
    }
}

/// The pid of the daemon that wrote the status `doc` (read from `path`),
/// once verified to be a repofs daemon, so that a signal never goes to
/// whatever process has the pid of a daemon that exited since.
///
/// The check: `/proc/PID/exe` is the same file (device and inode) as this
/// process's own executable, or, for a daemon started before the binary
/// was replaced by an upgrade, the kernel's name for it is this
/// executable's path with ` (deleted)`; and its command line has `mount`
/// (a `repofs status` or `repofs prefetch` that got the pid is no
/// daemon). The executable is the kernel's record of what the process
/// runs: unlike `comm` (which any process sets with `prctl`) or argv
/// (which it may rewrite), it cannot be forged by the process.
pub fn daemon_pid(doc: &serde_json::Value, path: &Path) -> Result<i32, Unverified> {
    let shown = path.display();
    let pid = doc
        .get("pid")
        .and_then(|p| p.as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| Unverified::Stale(format!("{shown} names no daemon pid")))?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return Err(Unverified::Stale(format!(
            "repofs is not running (the status at {shown} is from process {pid}, which has exited)"
        )));
    }
    let stale = |what: String| {
        Unverified::Stale(format!(
            "repofs is not running: the status at {shown} is stale (process {pid} is {what}, not a repofs daemon)"
        ))
    };
    let proc_exe = format!("/proc/{pid}/exe");
    let theirs = match std::fs::metadata(&proc_exe) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Unverified::NotPermitted(format!(
                "cannot verify that process {pid} (named by {shown}) is repofs: it belongs to another user; run this as the daemon's user"
            )));
        }
        // An executable that is gone (replaced by an upgrade): judged by
        // its name below.
        Err(_) => None,
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let comm = format!("`{}`", comm.trim_end().escape_debug());
    let same_file = |a: &std::fs::Metadata, b: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        a.dev() == b.dev() && a.ino() == b.ino()
    };
    let ours = std::fs::metadata("/proc/self/exe").ok();
    // The kernel's name of an executable, without the ` (deleted)` it
    // gets once its file was replaced.
    let name = |link: &str| {
        let link = std::fs::read_link(link).ok()?;
        let link = link.to_str()?;
        Some(link.strip_suffix(" (deleted)").unwrap_or(link).to_string())
    };
    let replaced = || Some(name(&proc_exe)? == name("/proc/self/exe")?);
    let is_repofs = match (&theirs, &ours) {
        (Some(t), Some(o)) if same_file(t, o) => true,
        _ => replaced() == Some(true),
    };
    if !is_repofs {
        return Err(stale(format!("running {comm}")));
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !cmdline.split(|b| *b == 0).skip(1).any(|a| a == b"mount") {
        return Err(stale(format!(
            "a repofs command other than `mount` ({comm})"
        )));
    }
    Ok(pid)
}

/// Renders the status published at `path`, or says why there is none.
pub fn show(path: &Path) -> Result<String, String> {
    let doc = fresh(path)?;
    let pid = doc.get("pid").and_then(|p| p.as_i64()).unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let updated = doc.get("updated").and_then(|u| u.as_u64()).unwrap_or(0);
    let mut out = format!(
        "repofs (pid {pid}), status from {}s ago\n",
        now.saturating_sub(updated)
    );
    for r in doc
        .get("repositories")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
    {
        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let n = |k: &str| r.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        if s("state") == "mounted" {
            // Buckets have no commit; a git repository has one once its
            // first load finished (reads wait for it, never for a refresh).
            let versioned = r.get("versioned").and_then(|v| v.as_bool()).unwrap_or(true);
            let commit = match r.get("commit").and_then(|c| c.as_str()) {
                Some(c) => c.to_string(),
                None if versioned => "(loading)".to_string(),
                None => "live listing".to_string(),
            };
            out.push_str(&format!(
                "  {:<20} mounted at {}  {} -> {}  ({} requests, {})\n",
                s("name"),
                s("mount_point"),
                s("ref"),
                commit,
                n("requests"),
                human(n("bytes_received"))
            ));
            for t in r
                .get("transfers")
                .and_then(|t| t.as_array())
                .into_iter()
                .flatten()
            {
                let n = |k: &str| t.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                out.push_str(&format!(
                    "  {:<20} transferring {}: {} of {} ({}/s)\n",
                    "",
                    t.get("path").and_then(|p| p.as_str()).unwrap_or("?"),
                    human(n("done")),
                    human(n("total")),
                    human(n("rate"))
                ));
            }
            if let Some(e) = r.get("last_error").filter(|e| !e.is_null()) {
                out.push_str(&format!(
                    "  {:<20} last error {}s ago: {}\n",
                    "",
                    e.get("seconds_ago").and_then(|v| v.as_u64()).unwrap_or(0),
                    e.get("what").and_then(|v| v.as_str()).unwrap_or("")
                ));
            }
        } else {
            out.push_str(&format!("  {:<20} FAILED: {}\n", s("name"), s("reason")));
        }
    }
    if let Some(sc) = doc.get("shared_cache").filter(|s| !s.is_null()) {
        let n = |k: &str| sc.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        out.push_str(&format!(
            "shared cache {}: {} hits, {} misses, {} downloaded, {} uploaded ({}), {} pending, {} rejected\n",
            sc.get("url").and_then(|u| u.as_str()).unwrap_or("?"),
            n("hits"),
            n("misses"),
            human(n("bytes_down")),
            n("uploads"),
            human(n("bytes_up")),
            n("pending"),
            n("rejected")
        ));
        if let Some(e) = sc.get("last_error").filter(|e| !e.is_null()) {
            out.push_str(&format!(
                "shared cache last error {}s ago: {}\n",
                e.get("seconds_ago").and_then(|v| v.as_u64()).unwrap_or(0),
                e.get("what").and_then(|v| v.as_str()).unwrap_or("")
            ));
        }
    }
    let c = doc.get("cache").cloned().unwrap_or_default();
    let (bytes, cap) = (
        c.get("bytes").and_then(|b| b.as_u64()).unwrap_or(0),
        c.get("cap").and_then(|b| b.as_u64()).unwrap_or(0),
    );
    out.push_str(&format!(
        "cache: {} of {} ({:.1}%), {} entries\n",
        human(bytes),
        human(cap),
        if cap > 0 {
            bytes as f64 * 100.0 / cap as f64
        } else {
            0.0
        },
        c.get("entries").and_then(|e| e.as_u64()).unwrap_or(0)
    ));
    if let (Some(free), Some(total)) = (
        c.get("disk_free").and_then(|b| b.as_u64()),
        c.get("disk_total").and_then(|b| b.as_u64()),
    ) {
        out.push_str(&format!(
            "disk: {} free of {}{}\n",
            human(free),
            human(total),
            if free < cap.saturating_sub(bytes) {
                " (less than the cap allows: the disk limits the cache)"
            } else {
                ""
            }
        ));
    }
    Ok(out)
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
#[test]
fn only_a_repofs_daemon_is_verified() {
    let at = Path::new("/tmp/x/status.json");
    let doc = |pid: i64| serde_json::json!({"pid": pid, "sequence": 1});
    let stale = |pid: i64| match daemon_pid(&doc(pid), at) {
        Err(Unverified::Stale(why)) => why,
        other => panic!("pid {pid}: {other:?}"),
    };
    for pid in [0, -1, i64::from(i32::MAX) + 1, i64::MAX] {
        assert!(stale(pid).contains("no daemon pid"), "{pid}");
    }
    let mut sleep = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let why = stale(i64::from(sleep.id()));
    assert!(
        why.contains("stale") && why.contains("`sleep`") && why.contains("not a repofs daemon"),
        "{why}"
    );
    let _ = sleep.kill();
    let _ = sleep.wait();
    // Gone now (and reaped).
    assert!(stale(i64::from(sleep.id())).contains("has exited"));
    // This very process runs the same executable, but is no `mount`.
    let why = stale(i64::from(std::process::id()));
    assert!(why.contains("other than `mount`"), "{why}");
}

#[test]
fn human_sizes() {
    assert_eq!(human(0), "0 B");
    assert_eq!(human(1536), "1.5 KiB");
    assert_eq!(human(20 << 30), "20.0 GiB");
}
