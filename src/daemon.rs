//! `repofs mount`: the mount lifecycle. Opens the cache, builds a source per
//! repository, cleans up stale mount points, mounts each one, and on
//! SIGTERM/SIGINT unmounts everything (lazily, so open files do not block
//! shutdown) and exits 0. A repository that fails to mount is logged and
//! skipped; the others stay up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cache::Cache;
use crate::config::Config;
use crate::fs::RepoFs;
use crate::source::Source;
use crate::source::git::GitSource;

/// One live mount.
struct Mounted {
    name: String,
    mount_point: PathBuf,
    _session: fuser::BackgroundSession,
}

/// Runs the daemon until a termination signal. Returns an error only when
/// nothing could be mounted at all.
pub fn run(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .thread_name("repofs-io")
        .build()?;
    let cache = Arc::new(
        Cache::open(&config.cache_dir.join("content"), config.cache_size).map_err(|e| {
            anyhow::anyhow!("{e}; check that cache_dir exists and the repofs user may write to it")
        })?,
    );
    let stats = cache.stats();
    tracing::info!(
        dir = %config.cache_dir.display(),
        entries = stats.entries,
        bytes = stats.bytes,
        cap = stats.cap,
        "cache opened"
    );

    let mut mounted = Vec::new();
    for repo in &config.repositories {
        let span = tracing::info_span!("repo", repo = %repo.name);
        let _enter = span.enter();
        let source = match GitSource::new(repo, &config, cache.clone(), rt.handle().clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("not mounted: {e}");
                continue;
            }
        };
        if let Err(e) = prepare_mount_point(&repo.mount_point) {
            tracing::error!(mount_point = %repo.mount_point.display(), "not mounted: {e}");
            continue;
        }
        let mut options = fuser::Config::default();
        options.mount_options = vec![
            fuser::MountOption::RO,
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::FSName(format!("repofs:{}", repo.name)),
            fuser::MountOption::Subtype("repofs".into()),
        ];
        options.acl = if config.allow_other {
            fuser::SessionACL::All
        } else {
            fuser::SessionACL::Owner
        };
        options.n_threads = Some(16);
        options.clone_fd = true;
        let fs = RepoFs::new(source.clone() as Arc<dyn Source>);
        match fuser::spawn_mount(fs, &repo.mount_point, &options) {
            Ok(session) => {
                tracing::info!(mount_point = %repo.mount_point.display(), url = %source.clone_url(), "mounted");
                let preload = source.clone();
                rt.spawn(async move {
                    // Errors are logged by the source and retried on access.
                    let _ = preload.preload().await;
                });
                mounted.push(Mounted {
                    name: repo.name.clone(),
                    mount_point: repo.mount_point.clone(),
                    _session: session,
                });
            }
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::NotFound {
                    " (is FUSE installed? the fuse3 package provides fusermount3 and /dev/fuse)"
                } else if config.allow_other {
                    " (allow_other needs `user_allow_other` in /etc/fuse.conf when not running as root)"
                } else {
                    ""
                };
                tracing::error!(mount_point = %repo.mount_point.display(), "cannot mount: {e}{hint}");
            }
        }
    }
    if mounted.is_empty() && !config.repositories.is_empty() {
        anyhow::bail!("no repository could be mounted (see the errors above)");
    }
    tracing::info!(count = mounted.len(), "repofs is running");

    let signal = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok::<_, std::io::Error>(tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        })
    })?;
    tracing::info!("{signal} received: unmounting");
    for m in &mounted {
        match unmount(&m.mount_point) {
            Ok(()) => tracing::info!(repo = %m.name, "unmounted"),
            Err(e) => {
                tracing::error!(repo = %m.name, mount_point = %m.mount_point.display(), "cannot unmount: {e}")
            }
        }
    }
    // The sessions end when the process exits and the kernel drops the
    // connections; with lazy unmounts, open files see EIO instead of a hang.
    std::mem::forget(mounted);
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// Creates the mount point, recovering one left behind by a crashed daemon
/// ("Transport endpoint is not connected").
fn prepare_mount_point(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} exists and is not a directory", path.display())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mount_point = %path.display(), "stale mount from an earlier run: unmounting it");
            unmount(path)?;
            std::fs::metadata(path)
                .map(|_| ())
                .map_err(|e| format!("{} is still unusable after unmounting: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Lazily unmounts `path`: directly when permitted, else through fusermount3.
pub fn unmount(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| "mount point contains a NUL byte".to_string())?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let direct = std::io::Error::last_os_error();
    for bin in ["fusermount3", "fusermount"] {
        if let Ok(out) = std::process::Command::new(bin)
            .args(["-u", "-z", "--"])
            .arg(path)
            .output()
        {
            if out.status.success() {
                return Ok(());
            }
            return Err(format!(
                "{bin} -u failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Err(format!(
        "umount failed: {direct}; and fusermount3 is not installed"
    ))
}
