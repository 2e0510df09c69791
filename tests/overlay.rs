//! `repofs overlay`: a writable overlayfs view over a read-only mount. A
//! build that writes into its source tree (`pip install` of a setuptools
//! project: `build/`, `*.egg-info`) fails on the mount and succeeds in the
//! view, while the mount and the content cache stay as they were; `overlay
//! --remove` unmounts the view and deletes its upper directory; the
//! per-repository `overlay` key makes a view that lives and dies with the
//! daemon, which also removes views made by hand over its mounts.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn require_overlay_prerequisites() {
    require_prerequisites();
    // overlayfs is usually loaded on demand; modprobe where it is a module.
    let _ = sh("modprobe overlay 2>/dev/null", Duration::from_secs(30));
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    assert!(
        fs.lines()
            .any(|l| l.split_whitespace().last() == Some("overlay")),
        "the kernel has no overlayfs (module overlay): the overlay tests need it"
    );
    let (code, out, err) = sh(
        "python3 -c 'import setuptools' && python3 -m pip --version",
        Duration::from_secs(60),
    );
    assert_eq!(
        code, 0,
        "python3 with pip and setuptools is needed (tests/support/requirements.txt, \
         which scripts/install-deps.sh installs): {out}{err}"
    );
}

/// Unmounts (lazily) the views a failing test leaves behind.
struct Unmount(Vec<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in &self.0 {
            if is_mounted(p) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(p)
                    .status();
            }
        }
    }
}

/// (file system type, super options) of the topmost mount at `path`.
fn mount_of(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if left.split(' ').nth(4) != Some(s(path)) {
            return None;
        }
        let mut r = right.split(' ');
        let fstype = r.next()?.to_string();
        let _source = r.next()?;
        Some((fstype, r.next().unwrap_or("").to_string()))
    })
}

/// Checks that `view` is an overlayfs over `lower` whose upper directory is
/// under `<cache>/overlays/`; returns (`<cache>/overlays/<id>`, upper dir).
fn overlay_dirs(view: &Path, lower: &Path, cache: &Path) -> (PathBuf, PathBuf) {
    let (fstype, opts) =
        mount_of(view).unwrap_or_else(|| panic!("{} is not a mount point", view.display()));
    assert_eq!(fstype, "overlay", "{}: {opts}", view.display());
    assert!(
        opts.contains("lowerdir") && opts.contains(s(lower)),
        "the lower layer of {} is not {}: {opts}",
        view.display(),
        lower.display()
    );
    let upper = opts
        .split(',')
        .find_map(|o| o.strip_prefix("upperdir="))
        .unwrap_or_else(|| panic!("no upperdir: {opts}"));
    let overlays = cache.join("overlays");
    let rel = Path::new(upper)
        .strip_prefix(&overlays)
        .unwrap_or_else(|_| panic!("the upper dir {upper} is not under {}", overlays.display()));
    let id = rel.components().next().expect("an id under overlays/");
    (overlays.join(id), PathBuf::from(upper))
}

/// Everything under `root`: (relative path, size; 0 for directories), sorted.
fn listing(root: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            if meta.is_dir() {
                stack.push(p);
                out.push((rel, 0));
            } else {
                out.push((rel, meta.len()));
            }
        }
    }
    out.sort();
    out
}

/// [`listing`] once it stopped changing (background writes finished).
fn settled(root: &Path) -> Vec<(String, u64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = listing(root);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = listing(root);
        if now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{} never stopped changing",
            root.display()
        );
        last = now;
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    server: GitServer,
    work: PathBuf,
    cache: PathBuf,
}

/// A server with `<name>.git`: a minimal setuptools project.
fn setup(name: &str) -> Setup {
    require_overlay_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let work = new_worktree(&dir.join("work"));
    std::fs::create_dir_all(work.join("src/demo_pkg")).unwrap();
    std::fs::write(
        work.join("pyproject.toml"),
        "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n\n\
         [project]\nname = \"demo-pkg\"\nversion = \"1.2.3\"\n",
    )
    .unwrap();
    std::fs::write(work.join("src/demo_pkg/__init__.py"), "VALUE = 42\n").unwrap();
    std::fs::write(work.join("README.md"), "# demo\n").unwrap();
    std::fs::write(work.join("data.bin"), noise(9, 400_000)).unwrap();
    publish_repo(&srv, &work, name);
    Setup {
        server: GitServer::start(&srv, &[]),
        cache: dir.join("cache"),
        work,
        dir,
        _tmp: tmp,
    }
}

impl Setup {
    fn config(&self, name: &str, extra: &str) -> PathBuf {
        write_config(
            &self.dir,
            &self.dir.join("mnt"),
            &self.cache,
            &[RepoEntry {
                name: name.into(),
                url: self.server.url(name),
                extra: extra.into(),
            }],
            "",
        )
    }

    /// `repofs <args>`, from a HOME with no config in it.
    fn repofs(&self, args: &str) -> (i32, String, String) {
        sh(
            &format!(
                "cd {dir} && HOME={dir} {} {args}",
                repofs_bin(),
                dir = s(&self.dir)
            ),
            Duration::from_secs(120),
        )
    }

    /// `pip install` of the project at `src` into `target`, offline.
    fn pip_install(&self, src: &Path, target: &Path) -> (i32, String) {
        let (code, out, err) = sh(
            &format!(
                "cd {dir} && HOME={dir} PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install \
                 --no-build-isolation --no-index --no-deps --no-cache-dir --target {} {}",
                s(target),
                s(src),
                dir = s(&self.dir)
            ),
            Duration::from_secs(300),
        );
        (code, format!("{out}{err}"))
    }
}

#[test]
fn a_build_writes_into_a_view_and_never_into_the_mount() {
    let st = setup("demo");
    let config = st.config("demo", "");
    let m = st.dir.join("mnt/demo");
    let mut d = Daemon::start(&config, &[m.clone()], &st.dir.join("daemon.log"));
    let (view, view2) = (st.dir.join("views/demo"), st.dir.join("views/by-path"));
    let _unmount = Unmount(vec![view.clone(), view2.clone()]);

    // Every file read once: what pip reads later is in the cache already.
    let (code, _, err) = sh(
        &format!("find {} -type f -exec cat {{}} + > /dev/null", s(&m)),
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "{err}\n{}", d.log_text());
    let content = st.cache.join("content");
    let before = settled(&content);
    assert!(
        before.iter().any(|(_, size)| *size > 0),
        "nothing in {}: {before:?}",
        content.display()
    );

    // On the read-only mount the build cannot write its files.
    let (code, out) = st.pip_install(&m, &st.dir.join("t-ro"));
    assert_ne!(
        code, 0,
        "pip install from the read-only mount succeeded:\n{out}"
    );
    assert!(out.contains("Read-only file system"), "{out}");

    let (code, out, err) = st.repofs(&format!(
        "--config {} overlay demo {}",
        s(&config),
        s(&view)
    ));
    assert_eq!(code, 0, "overlay: {out}{err}\n{}", d.log_text());
    assert!(
        out.contains("writable view of demo at")
            && out.contains(s(&view))
            && out.contains("never reach the remote"),
        "{out}"
    );
    assert!(is_mounted(&view), "{} is not mounted", view.display());
    let (id_dir, upper) = overlay_dirs(&view, &m, &st.cache);
    assert!(id_dir.is_dir(), "{}", id_dir.display());

    // In the view the build succeeds, and installs the package.
    let target = st.dir.join("t");
    let (code, out) = st.pip_install(&view, &target);
    assert_eq!(
        code,
        0,
        "pip install from the view failed:\n{out}\n{}",
        d.log_text()
    );
    assert_eq!(
        std::fs::read_to_string(target.join("demo_pkg/__init__.py")).unwrap(),
        "VALUE = 42\n"
    );
    let (code, out, err) = sh(
        &format!(
            "PYTHONPATH={} python3 -c 'import demo_pkg; print(demo_pkg.VALUE)'",
            s(&target)
        ),
        Duration::from_secs(60),
    );
    assert_eq!((code, out.trim()), (0, "42"), "{err}");
    // What the build wrote is in the view and its upper dir, not in the mount.
    for written in ["build", "src/demo_pkg.egg-info"] {
        assert!(view.join(written).is_dir(), "{written} is not in the view");
        assert!(
            upper.join(written).is_dir(),
            "{written} is not in the upper dir"
        );
        let e = std::fs::metadata(m.join(written)).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOENT),
            "{written} in the mount: {e}"
        );
    }
    let (code, out, err) = sh(
        &format!("diff -r -x .git {} {}", s(&m), s(&st.work)),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "the mount changed:\n{out}{err}");
    // The content cache is as it was: nothing written, nothing evicted.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(listing(&content), before, "the content cache changed");

    // --remove: unmounted, and the upper directory is gone.
    let (code, out, err) = st.repofs(&format!("overlay --remove {}", s(&view)));
    assert_eq!(code, 0, "overlay --remove: {out}{err}");
    assert!(!is_mounted(&view), "{} is still mounted", view.display());
    assert!(!id_dir.exists(), "{} is left", id_dir.display());
    let left = listing(&st.cache.join("overlays"));
    assert!(left.is_empty(), "left under overlays/: {left:?}");

    // The repository may be named by its mount point as well.
    let (code, out, err) = st.repofs(&format!(
        "--config {} overlay {} {}",
        s(&config),
        s(&m),
        s(&view2)
    ));
    assert_eq!(code, 0, "overlay by mount point: {out}{err}");
    let (id_dir, _) = overlay_dirs(&view2, &m, &st.cache);
    std::fs::write(view2.join("scratch.txt"), "scratch\n").unwrap();
    assert!(!m.join("scratch.txt").exists());
    let (code, out, err) = st.repofs(&format!("overlay --remove {}", s(&view2)));
    assert_eq!(code, 0, "overlay --remove: {out}{err}");
    assert!(!is_mounted(&view2) && !id_dir.exists());
    d.stop();
}

#[test]
fn a_configured_view_lives_and_dies_with_the_daemon() {
    let st = setup("auto");
    let view = st.dir.join("views/auto"); // created by the daemon
    let by_hand = st.dir.join("views/by-hand");
    let config = st.config("auto", &format!("overlay = \"{}\"", s(&view)));
    let m = st.dir.join("mnt/auto");
    let mut d = Daemon::start(
        &config,
        &[m.clone(), view.clone()],
        &st.dir.join("daemon.log"),
    );
    let _unmount = Unmount(vec![view.clone(), by_hand.clone()]);
    let (id_dir, upper) = overlay_dirs(&view, &m, &st.cache);
    assert_eq!(
        std::fs::read_to_string(view.join("README.md")).unwrap(),
        "# demo\n"
    );
    std::fs::write(view.join("new.txt"), "written in the view\n")
        .unwrap_or_else(|e| panic!("write in the view: {e}\n{}", d.log_text()));
    assert_eq!(
        std::fs::read_to_string(upper.join("new.txt")).unwrap(),
        "written in the view\n"
    );
    let e = std::fs::metadata(m.join("new.txt")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");

    // A view made by hand over the same mount goes with the daemon too.
    let (code, out, err) = st.repofs(&format!(
        "--config {} overlay auto {}",
        s(&config),
        s(&by_hand)
    ));
    assert_eq!(code, 0, "overlay: {out}{err}");
    let (hand_dir, _) = overlay_dirs(&by_hand, &m, &st.cache);

    // SIGTERM: the views, then the mount, are unmounted (Daemon::stop checks
    // the mount and the configured view), and the upper dirs are removed.
    d.stop();
    assert!(
        !is_mounted(&by_hand),
        "{} is still mounted",
        by_hand.display()
    );
    for gone in [&id_dir, &hand_dir] {
        assert!(
            !gone.exists(),
            "{} is left after the daemon stopped",
            gone.display()
        );
    }
}
