//! `repofs mount`: the mount lifecycle. Opens the cache, builds a source per
//! repository, cleans up stale mount points, mounts each one, tells systemd
//! (`READY=1`, `STATUS=`), and then serves signals: SIGHUP reloads the
//! config (mounting new repositories, unmounting removed ones, remounting
//! changed ones, leaving the rest alone), SIGTERM/SIGINT unmount everything
//! lazily (open files do not block shutdown) and exit 0. A repository that
//! fails to mount is logged and skipped; the others stay up. The state of
//! every repository is written to `<cache_dir>/state/status.json` for
//! `repofs status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cache::Cache;
use crate::config::{Config, RepoConfig};
use crate::fs::RepoFs;
use crate::source::Source;
use crate::source::git::GitSource;

mod report;

pub use report::{notify, status_path};
use report::{summary, write_status};

/// Where contents are kept: the local cache and the fleet's shared tier.
struct Stores {
    cache: Arc<Cache>,
    shared: Option<Arc<crate::shared::Shared>>,
}

/// One configured repository: mounted, or failed with a reason.
struct Repo {
    config: RepoConfig,
    state: RepoState,
}

enum RepoState {
    Mounted {
        source: Arc<dyn Source>,
        /// The git side, for refresh and shutdown.
        git: Option<Arc<GitSource>>,
        session: fuser::BackgroundSession,
        /// The last failure the mount answered with.
        last_error: crate::fs::LastError,
        /// Its open files (transfers in flight).
        monitor: crate::fs::Monitor,
    },
    Failed(String),
}

/// Each FUSE worker thread holds a 16 MiB request buffer. glibc raises
/// its mmap threshold to the size of any mmapped block that is freed, so
/// after the first remount those buffers would come from the heap:
/// zero-filled page by page (16 MiB resident each, though requests use a
/// few KiB) and kept by the allocator after the session ends. A fixed
/// threshold keeps every large buffer its own mapping, untouched pages
/// not resident and returned to the system on free.
fn fixed_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; it is called
    // before any worker thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Descriptors: each mount keeps up to 512 readers open, and each cache
/// segment one; the usual soft limit of 1,024 is raised to the hard one.
fn raise_open_files() {
    // SAFETY: getrlimit/setrlimit fill and read a plain struct.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// How far the kernel reads ahead of a sequential reader of a mount.
const READAHEAD_KIB: u32 = 4096;

/// Runs the daemon until a termination signal. Returns an error only when
/// nothing could be mounted at all at start.
pub fn run(config: Config) -> anyhow::Result<()> {
    fixed_mmap_threshold();
    raise_open_files();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .thread_name("repofs-io")
        .build()?;
    // Every signal served is taken over before the first mount: their
    // default action ends the process, so a SIGHUP (reload) or SIGUSR1
    // (status) sent as soon as a mount appears would kill the daemon, and a
    // SIGTERM would leave its mounts behind. Signals that arrive before the
    // loop below are kept for it.
    let (mut term, mut int, mut hup, mut usr1) = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
            // `repofs status` and `repofs prefetch` ask for a fresh status.
            signal(SignalKind::user_defined1())?,
        ))
    })?;
    // A status left by a daemon that crashed names a process that is gone
    // (or another one that got its pid).
    let _ = std::fs::remove_file(status_path(&config));
    crate::private::secure_cache_dir(&config.cache_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cache = Arc::new(
        Cache::open(&config.cache_dir.join("content"), config.cache_size).map_err(|e| {
            anyhow::anyhow!("{e}; check that cache_dir exists and the repofs user may write to it")
        })?,
    );
    let shared = match &config.shared_cache {
        None => None,
        Some(c) => match rt.block_on(crate::shared::Shared::connect(
            c,
            &config,
            rt.handle().clone(),
        )) {
            Ok(s) => {
                tracing::info!(url = %s.url(), "shared cache tier in use");
                Some(s)
            }
            Err(e) => {
                tracing::error!("shared cache: {e}; using the origins only");
                None
            }
        },
    };
    let cache = Stores { cache, shared };
    let stats = cache.cache.stats();
    tracing::info!(
        dir = %config.cache_dir.display(),
        entries = stats.entries,
        bytes = stats.bytes,
        cap = stats.cap,
        "cache opened"
    );

    // The recorder goes in before the first mount registers its metrics.
    let registry = Arc::new(crate::metrics::Registry::new(
        cache.cache.clone(),
        cache.shared.clone(),
    ));
    if let Some(addr) = config.metrics_listen {
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .map_err(|e| anyhow::anyhow!("cannot listen on metrics_listen {addr}: {e}"))?;
        let handle = crate::metrics::install()?;
        let registry = registry.clone();
        rt.spawn(async move {
            let served = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => crate::metrics::serve(l, handle, registry).await,
                Err(e) => Err(e),
            };
            if let Err(e) = served {
                tracing::error!("metrics listener stopped: {e}");
            }
        });
    }

    let mut repos: BTreeMap<String, Repo> = BTreeMap::new();
    for repo in &config.repositories {
        let state = mount_repo(repo, &config, &cache, rt.handle());
        repos.insert(
            repo.name.clone(),
            Repo {
                config: repo.clone(),
                state,
            },
        );
    }
    if !config.repositories.is_empty()
        && repos
            .values()
            .all(|r| matches!(r.state, RepoState::Failed(_)))
    {
        anyhow::bail!("no repository could be mounted (see the errors above)");
    }
    let mut config = config;
    registry.set_sources(sources(&repos));
    notify(&format!("READY=1\nSTATUS={}", summary(&repos)));
    tracing::info!("repofs is running: {}", summary(&repos));
    write_status(&config, &cache, &repos);
    let registration = crate::status::register(&status_path(&config));

    let signal = rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<_, std::io::Error>("SIGTERM"),
                _ = int.recv() => return Ok("SIGINT"),
                _ = hup.recv() => {
                    notify("RELOADING=1");
                    // Mounting may block on the runtime (S3 clients): not
                    // from inside this task, so outside the runtime's context.
                    tokio::task::block_in_place(|| {
                        reload(&mut config, &mut repos, &cache, rt.handle())
                    });
                    registry.set_sources(sources(&repos));
                    notify(&format!("READY=1\nSTATUS={}", summary(&repos)));
                    write_status(&config, &cache, &repos);
                }
                _ = usr1.recv() => write_status(&config, &cache, &repos),
                _ = tick.tick() => write_status(&config, &cache, &repos),
            }
        }
    })?;
    tracing::info!("{signal} received: unmounting");
    notify("STOPPING=1");
    let lowers: Vec<PathBuf> = repos
        .values()
        .map(|r| r.config.mount_point.clone())
        .collect();
    crate::overlay::remove_over(&config.cache_dir, &lowers);
    for (name, r) in &repos {
        if matches!(r.state, RepoState::Mounted { .. }) {
            match unmount(&r.config.mount_point) {
                Ok(()) => tracing::info!(repo = %name, "unmounted"),
                Err(e) => {
                    tracing::error!(repo = %name, mount_point = %r.config.mount_point.display(), "cannot unmount: {e}")
                }
            }
        }
    }
    let _ = std::fs::remove_file(status_path(&config));
    if let Some(r) = registration {
        let _ = std::fs::remove_file(r);
    }
    // The sessions end when the process exits and the kernel drops the
    // connections; with lazy unmounts, open files see EIO instead of a hang.
    std::mem::forget(repos);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Builds the source and mounts one repository; failures are logged and
/// returned as the state.
fn mount_repo(
    repo: &RepoConfig,
    config: &Config,
    cache: &Stores,
    rt: &tokio::runtime::Handle,
) -> RepoState {
    let span = tracing::info_span!("repo", repo = %repo.name);
    let _enter = span.enter();
    let fail = |msg: String| {
        tracing::error!("not mounted: {msg}");
        RepoState::Failed(msg)
    };
    let (source, git): (Arc<dyn Source>, Option<Arc<GitSource>>) = if repo.s3.is_some() {
        let client = match rt.block_on(crate::source::s3::client_for(repo, config)) {
            Ok((c, _)) => c,
            Err(e) => return fail(e),
        };
        let (c, s) = (cache.cache.clone(), cache.shared.clone());
        match crate::source::s3::S3Source::new(repo, client, c, rt.clone(), s, config) {
            Ok(s) => (s, None),
            Err(e) => return fail(e),
        }
    } else {
        match GitSource::new(
            repo,
            config,
            cache.cache.clone(),
            rt.clone(),
            cache.shared.clone(),
        ) {
            Ok(s) => (s.clone(), Some(s)),
            Err(e) => return fail(e),
        }
    };
    if let Err(e) = prepare_mount_point(&repo.mount_point) {
        return fail(e);
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
    let fs = RepoFs::new(source.clone(), config.xattrs, config.file_reads);
    let notifier = fs.notifier_slot();
    let last_error = fs.last_error();
    let monitor = fs.monitor();
    match fuser::spawn_mount(fs, &repo.mount_point, &options) {
        Ok(session) => {
            let _ = notifier.set(session.notifier());
            // Found in mountinfo: a stat of the mount point would wait for
            // the repository.
            if let Some(m) = crate::mountinfo::mount_at(&repo.mount_point) {
                crate::mountinfo::raise_readahead(&m.dev, READAHEAD_KIB);
            }
            tracing::info!(mount_point = %repo.mount_point.display(), url = %crate::redact::url(&repo.url), "mounted");
            if let Some(g) = &git {
                let preload = g.clone();
                rt.spawn(async move {
                    // Errors are logged by the source and retried on access.
                    let _ = preload.preload().await;
                });
                // Branch following (a no-op for pinned commits).
                rt.spawn(g.clone().follow());
            }
            if let Some(view) = &repo.overlay {
                match crate::overlay::create(&repo.mount_point, view, &config.cache_dir) {
                    Ok(upper) => {
                        tracing::info!(view = %view.display(), upper = %upper.display(), "writable view mounted")
                    }
                    Err(e) => tracing::error!("no writable view: {e}"),
                }
            }
            RepoState::Mounted {
                source,
                git,
                session,
                last_error,
                monitor,
            }
        }
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (is FUSE installed? the fuse3 package provides fusermount3 and /dev/fuse)"
            } else if config.allow_other {
                " (allow_other needs `user_allow_other` in /etc/fuse.conf when not running as root)"
            } else {
                ""
            };
            fail(format!(
                "cannot mount at {}: {e}{hint}",
                repo.mount_point.display()
            ))
        }
    }
}

/// SIGHUP: validates the new config as a whole, then applies the difference.
fn reload(
    config: &mut Config,
    repos: &mut BTreeMap<String, Repo>,
    cache: &Stores,
    rt: &tokio::runtime::Handle,
) {
    if config.path == Path::new(crate::url_mount::COMMAND_LINE) {
        tracing::warn!("mounted from the command line: there is no config file to reload");
        return;
    }
    let new = match Config::load(&config.path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload rejected, nothing changed: {e}");
            return;
        }
    };
    for (key, old, now) in [
        (
            "cache_dir",
            config.cache_dir.display().to_string(),
            new.cache_dir.display().to_string(),
        ),
        (
            "cache_size",
            config.cache_size.to_string(),
            new.cache_size.to_string(),
        ),
        (
            "shared_cache",
            format!("{:?}", config.shared_cache),
            format!("{:?}", new.shared_cache),
        ),
        (
            "metrics_listen",
            format!("{:?}", config.metrics_listen),
            format!("{:?}", new.metrics_listen),
        ),
    ] {
        if old != now {
            tracing::warn!("`{key}` changed: it takes effect at the next restart");
        }
    }
    let wanted: BTreeMap<&str, &RepoConfig> = new
        .repositories
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect();
    // Settings every mount was made with: a change remounts them all.
    let timing_changed = config.request_timeout != new.request_timeout
        || config.connect_timeout != new.connect_timeout
        || config.max_attempts != new.max_attempts
        || config.low_speed != new.low_speed
        || config.call_timeout != new.call_timeout
        || config.max_tree_bytes != new.max_tree_bytes
        || config.allow_other != new.allow_other;
    let (mut added, mut removed, mut changed) = (0, 0, 0);
    let mut releasing = std::collections::HashMap::new();
    let names: Vec<String> = repos.keys().cloned().collect();
    for name in names {
        let keep = match wanted.get(name.as_str()) {
            Some(r) => **r == repos[&name].config && !timing_changed,
            None => false,
        };
        if keep {
            continue;
        }
        if let Some(old) = repos.remove(&name) {
            if let RepoState::Mounted { git, .. } = &old.state {
                if let Some(g) = git {
                    g.shutdown();
                }
                crate::overlay::remove_over(
                    &config.cache_dir,
                    std::slice::from_ref(&old.config.mount_point),
                );
                if let Err(e) = unmount(&old.config.mount_point) {
                    tracing::error!(repo = %name, "cannot unmount: {e}");
                }
            }
            // The lazily unmounted session serves the files still open; it
            // ends when the kernel drops the connection (the last of them is
            // closed), and then its threads and descriptors are released.
            if let Some(ended) = release_when_unused(old) {
                releasing.insert(name.clone(), ended);
            }
            if wanted.contains_key(name.as_str()) {
                changed += 1;
            } else {
                removed += 1;
                tracing::info!(repo = %name, "removed from the config: unmounted");
            }
        }
    }
    for r in &new.repositories {
        if !repos.contains_key(&r.name) {
            if let Some(ended) = releasing.remove(&r.name) {
                // fuser unmounts the mount point by path when an old session
                // ends: let it end before a new mount takes the same path
                // (it ends at once unless files in it are still open).
                if ended.recv_timeout(RELEASE_WAIT).is_err() {
                    tracing::warn!(repo = %r.name, "files of the old mount are still open; mounting the new one beside them");
                }
            }
            let state = mount_repo(r, &new, cache, rt);
            repos.insert(
                r.name.clone(),
                Repo {
                    config: r.clone(),
                    state,
                },
            );
            added += 1;
        }
    }
    added -= changed.min(added);
    *config = new;
    tracing::info!(
        added,
        removed,
        changed,
        "config reloaded: {}",
        summary(repos)
    );
}

/// The mounted sources by name, for metrics.
fn sources(repos: &BTreeMap<String, Repo>) -> BTreeMap<String, Arc<dyn Source>> {
    repos
        .iter()
        .filter_map(|(n, r)| match &r.state {
            RepoState::Mounted { source, .. } => Some((n.clone(), source.clone())),
            RepoState::Failed(_) => None,
        })
        .collect()
}

/// How long a reload waits for an old session to end before mounting the
/// new one at the same path.
const RELEASE_WAIT: Duration = Duration::from_secs(3);

/// Waits, on a thread of its own, for an unmounted repository's session to
/// end, then drops it (its /dev/fuse descriptor, threads and source). The
/// receiver hears when it is done.
fn release_when_unused(old: Repo) -> Option<std::sync::mpsc::Receiver<()>> {
    let name = old.config.name.clone();
    let RepoState::Mounted {
        session,
        source,
        git,
        ..
    } = old.state
    else {
        return None;
    };
    let (done, ended) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("release-{name}"))
        .spawn(move || {
            if let Err(e) = session.join() {
                tracing::warn!(repo = %name, "the old session ended with an error: {e}");
            }
            drop((source, git));
            tracing::debug!(repo = %name, "the old session is released");
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start a thread to release an old session: {e}");
        return None;
    }
    Some(ended)
}

/// Creates the mount point, recovering one left behind by a crashed daemon
/// ("Transport endpoint is not connected").
fn prepare_mount_point(path: &Path) -> Result<(), String> {
    // A dead FUSE mount can still answer `stat` from the kernel's attribute
    // cache; listing it is what reveals ENOTCONN.
    let probe = std::fs::metadata(path).and_then(|m| {
        if m.is_dir() {
            std::fs::read_dir(path).map(|_| m)
        } else {
            Ok(m)
        }
    });
    match probe {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} exists and is not a directory", path.display())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mount_point = %path.display(), "stale mount from an earlier run: unmounting it");
            unmount(path)?;
            std::fs::read_dir(path)
                .map(|_| ())
                .map_err(|e| format!("{} is still unusable after unmounting: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => crate::private::create_open_dir(path)
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
