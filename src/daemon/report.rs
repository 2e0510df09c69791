//! What the daemon tells the world about itself: the status file that
//! `repofs status` reads, the one-line summary, and systemd's notification
//! socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Repo, RepoState, Stores};
use crate::config::Config;

/// One line for systemd's `STATUS=` and the log: how many are mounted, which failed.
pub(super) fn summary(repos: &BTreeMap<String, Repo>) -> String {
    let mounted = repos
        .values()
        .filter(|r| matches!(r.state, RepoState::Mounted { .. }))
        .count();
    let failed: Vec<&str> = repos
        .iter()
        .filter(|(_, r)| matches!(r.state, RepoState::Failed(_)))
        .map(|(n, _)| n.as_str())
        .collect();
    if failed.is_empty() {
        format!("{mounted} repositories mounted")
    } else {
        format!(
            "{mounted} repositories mounted, {} failed: {}",
            failed.len(),
            failed.join(", ")
        )
    }
}

/// Sends a message to systemd's notification socket, when there is one.
pub fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(message.as_bytes(), &addr))
    } else {
        sock.send_to(message.as_bytes(), Path::new(&path))
    };
    if let Err(e) = result {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Where the daemon publishes its state for `repofs status`.
pub fn status_path(config: &Config) -> PathBuf {
    crate::status::status_file(&config.cache_dir)
}

pub(super) fn write_status(config: &Config, stores: &Stores, repos: &BTreeMap<String, Repo>) {
    let cache = &stores.cache;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let list: Vec<serde_json::Value> = repos
        .iter()
        .map(|(name, r)| match &r.state {
            RepoState::Mounted {
                source,
                last_error,
                monitor,
                ..
            } => {
                let (requests, bytes) = source.traffic();
                let last = last_error
                    .0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let last = last.map(|(when, what)| crate::status::error_json(when, what));
                serde_json::json!({
                    "name": name,
                    "state": "mounted",
                    "mount_point": r.config.mount_point,
                    "ref": match &r.config.s3 {
                        Some(_) => "bucket",
                        None => r.config.reference.as_deref().unwrap_or("HEAD"),
                    },
                    "commit": source.version(),
                    "versioned": r.config.s3.is_none(),
                    "last_error": last,
                    "requests": requests,
                    "bytes_received": bytes,
                    "transfers": monitor.transfers(),
                    "inodes": monitor.inodes(),
                })
            }
            RepoState::Failed(why) => serde_json::json!({
                "name": name,
                "state": "failed",
                "mount_point": r.config.mount_point,
                "reason": why,
            }),
        })
        .collect();
    let stats = cache.stats();
    let disk = cache.disk();
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let doc = serde_json::json!({
        "pid": std::process::id(),
        "updated": now,
        // Bumped on every write: a reader that asked for a fresh status
        // (SIGUSR1) knows when it came.
        "sequence": WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
        "cache": {
            "bytes": stats.bytes,
            "entries": stats.entries,
            "cap": stats.cap,
            "disk_free": disk.map(|d| d.0),
            "disk_total": disk.map(|d| d.1),
        },
        "repositories": list,
        "shared_cache": stores.shared.as_ref().map(|s| s.status()),
    });
    let path = status_path(config);
    let tmp = path.with_extension("tmp");
    let written = std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))
        .and_then(|_| std::fs::write(&tmp, doc.to_string()))
        .and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}
