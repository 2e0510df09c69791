//! Native speed once cached: no-open reads, the default for git mounts (a
//! warm re-read makes no daemon call at all, a re-read after the kernel
//! dropped its pages reads the cache file through the daemon, a file held
//! open survives its eviction from the cache); kernel passthrough for
//! complete cached files (a warm re-read makes no daemon reads, a file
//! still arriving is read through the daemon, an open file survives its
//! eviction from the cache),
//! a 50,000-entry directory listed within 3 times native, and an inode
//! table that shrinks when the kernel drops its caches, also after a
//! followed branch moved. Real FUSE mounts against the local git server in
//! its default profile; the daemon's operations are counted on /metrics.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// The timed listing runs alone: the other tests of this file hold this
/// shared while they run, and it holds it alone while it times.
static QUIET: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn quiet() -> std::sync::RwLockReadGuard<'static, ()> {
    QUIET.read().unwrap_or_else(|e| e.into_inner())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A daemon over one repository of the test server, with metrics.
struct Mount {
    daemon: Daemon,
    mount: PathBuf,
    config: PathBuf,
    cache: PathBuf,
    metrics: String,
}

fn mount(dir: &Path, url: &str, repo: &str, top: &str) -> Mount {
    let metrics = format!("127.0.0.1:{}", free_port());
    let cache = dir.join("cache");
    let config = write_config(
        dir,
        &dir.join("mnt"),
        &cache,
        &[RepoEntry {
            name: "r".into(),
            url: url.into(),
            extra: repo.into(),
        }],
        &format!("metrics_listen = \"{metrics}\"\n{top}"),
    );
    if top.contains("cache_size") {
        // The harness writes a default cap: this one replaces it.
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replacen("cache_size = \"2GiB\"\n", "", 1)).unwrap();
    }
    let m = dir.join("mnt/r");
    let daemon = Daemon::start(&config, std::slice::from_ref(&m), &dir.join("daemon.log"));
    Mount {
        daemon,
        mount: m,
        config,
        cache,
        metrics,
    }
}

impl Mount {
    fn ops(&self, op: &str) -> f64 {
        scrape(&self.metrics).value(
            "repofs_fuse_operations_total",
            &[("repository", "r"), ("operation", op)],
        )
    }

    fn passthrough_opens(&self) -> f64 {
        scrape(&self.metrics).value("repofs_passthrough_opens_total", &[("repository", "r")])
    }

    /// The inodes the mount holds, from a fresh status.
    fn inodes(&self) -> u64 {
        let (code, out, err) = sh(
            &format!("{} --config {} status", repofs_bin(), s(&self.config)),
            Duration::from_secs(30),
        );
        assert_eq!(code, 0, "status: {out}{err}");
        let doc: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.cache.join("state/status.json")).unwrap(),
        )
        .unwrap();
        doc["repositories"][0]["inodes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no inode count in the status: {doc}"))
    }
}

#[test]
fn cached_files_are_read_by_the_kernel_directly() {
    let _quiet = quiet();
    let scratch = Scratch::new();
    let (dir, srv, work) = (scratch.dir(), scratch.srv(), scratch.work());
    let sizes = [3_000_000usize, 3_100_000, 3_200_000];
    for (i, n) in sizes.iter().enumerate() {
        std::fs::write(work.join(format!("f{i}.bin")), noise(i as u64 + 1, *n)).unwrap();
    }
    publish_repo(&srv, &work, "pt");
    let server = GitServer::start(&srv, &[]);
    // A cache that holds about two of the three files.
    let m = mount(
        dir,
        &server.url("pt"),
        "refresh = \"never\"",
        "cache_size = \"7MiB\"\nfile_reads = \"passthrough\"",
    );
    assert!(
        m.daemon
            .log_text()
            .contains("kernel passthrough for cached files"),
        "passthrough not negotiated on this kernel:\n{}",
        m.daemon.log_text()
    );
    let f0 = m.mount.join("f0.bin");

    // First read: the blob arrives while it is read, through the daemon.
    let (reads0, pt0) = (m.ops("read"), m.passthrough_opens());
    assert_eq!(std::fs::read(&f0).unwrap(), noise(1, sizes[0]));
    assert!(
        m.ops("read") > reads0,
        "a file still arriving was not read through the daemon"
    );
    assert_eq!(
        m.passthrough_opens(),
        pt0,
        "a file still arriving was opened in passthrough"
    );

    // Warm re-read with the page cache dropped: passthrough, no daemon reads.
    drop_caches();
    let (reads1, pt1) = (m.ops("read"), m.passthrough_opens());
    assert_eq!(std::fs::read(&f0).unwrap(), noise(1, sizes[0]));
    assert_eq!(
        m.ops("read"),
        reads1,
        "a cached file was read through the daemon"
    );
    assert_eq!(m.passthrough_opens(), pt1 + 1.0);

    // An open passthrough file survives its eviction from the cache.
    let mut held = std::fs::File::open(&f0).unwrap();
    for i in 1..sizes.len() {
        let p = m.mount.join(format!("f{i}.bin"));
        assert_eq!(std::fs::read(&p).unwrap(), noise(i as u64 + 1, sizes[i]));
    }
    let blob = git(&work, &["rev-parse", "HEAD:f0.bin"]);
    let cached = |b: &str| {
        let (_, out, _) = sh(
            &format!("find {} -name 'git-{b}*'", s(&m.cache.join("content"))),
            Duration::from_secs(30),
        );
        !out.trim().is_empty()
    };
    assert!(!cached(&blob), "f0.bin was not evicted by a 7 MiB cache");
    drop_caches();
    let mut got = Vec::new();
    held.read_to_end(&mut got).unwrap();
    assert!(
        got == noise(1, sizes[0]),
        "an evicted, open file read wrong bytes"
    );
    drop(held);
    // And opened again, it is fetched again, whole.
    assert_eq!(std::fs::read(&f0).unwrap(), noise(1, sizes[0]));
    let mut m = m;
    m.daemon.stop();
}

/// The default for git mounts: `open` answers ENOSYS once, then the kernel
/// sends no opens and keeps every page.
#[test]
fn warm_reads_without_open_never_reach_the_daemon() {
    let _quiet = quiet();
    let scratch = Scratch::new();
    let (dir, srv, work) = (scratch.dir(), scratch.srv(), scratch.work());
    let sizes = [3_000_000usize, 3_100_000, 3_200_000];
    for (i, n) in sizes.iter().enumerate() {
        std::fs::write(work.join(format!("f{i}.bin")), noise(i as u64 + 11, *n)).unwrap();
    }
    std::fs::create_dir_all(work.join("small")).unwrap();
    for i in 0..50 {
        std::fs::write(work.join(format!("small/s{i}.txt")), format!("small {i}\n")).unwrap();
    }
    publish_repo(&srv, &work, "no");
    let server = GitServer::start(&srv, &[]);
    // A cache that holds about two of the three large files.
    let m = mount(
        dir,
        &server.url("no"),
        "refresh = \"never\"",
        "cache_size = \"7MiB\"",
    );
    assert!(
        m.daemon.log_text().contains("file reads: no open"),
        "{}",
        m.daemon.log_text()
    );
    let f0 = m.mount.join("f0.bin");
    let want0 = noise(11, sizes[0]);

    // Cold: the blob arrives while it is read, through the daemon.
    let reads0 = m.ops("read");
    assert_eq!(std::fs::read(&f0).unwrap(), want0);
    assert!(
        m.ops("read") > reads0,
        "a cold file was not read through the daemon"
    );
    for i in 0..50 {
        let p = m.mount.join(format!("small/s{i}.txt"));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("small {i}\n"));
    }

    // Warm: no open, no read, no release reaches the daemon.
    let before = [m.ops("open"), m.ops("read"), m.ops("release")];
    assert!(before[0] <= 1.0, "more than one open was sent: {before:?}");
    for _ in 0..3 {
        assert_eq!(std::fs::read(&f0).unwrap(), want0);
        for i in 0..50 {
            let p = m.mount.join(format!("small/s{i}.txt"));
            assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("small {i}\n"));
        }
    }
    assert_eq!(
        [m.ops("open"), m.ops("read"), m.ops("release")],
        before,
        "warm reads reached the daemon"
    );

    // Pages dropped: read again from the cache file, through the daemon,
    // still without opens.
    drop_caches();
    let reads1 = m.ops("read");
    assert_eq!(std::fs::read(&f0).unwrap(), want0);
    assert!(m.ops("read") > reads1);
    assert_eq!(m.ops("open"), before[0]);

    // A file held open survives its eviction from the cache, and the kernel
    // dropping its pages meanwhile.
    let mut held = std::fs::File::open(&f0).unwrap();
    for i in 1..sizes.len() {
        let p = m.mount.join(format!("f{i}.bin"));
        assert_eq!(std::fs::read(&p).unwrap(), noise(i as u64 + 11, sizes[i]));
    }
    let blob = git(&work, &["rev-parse", "HEAD:f0.bin"]);
    let (_, out, _) = sh(
        &format!("find {} -name 'git-{blob}*'", s(&m.cache.join("content"))),
        Duration::from_secs(30),
    );
    assert!(
        out.trim().is_empty(),
        "f0.bin was not evicted by a 7 MiB cache"
    );
    drop_caches();
    let mut got = Vec::new();
    held.read_to_end(&mut got).unwrap();
    assert!(got == want0, "an evicted, open file read wrong bytes");
    drop(held);
    let log = m.daemon.log_text();
    assert!(!log.contains(" ERROR "), "{log}");
    let mut m = m;
    m.daemon.stop();
}

/// With `object-info`, listing a directory asks for the sizes of the
/// directories below in the same request: a cold walk costs a few requests,
/// not one per directory, and downloads no file contents.
#[test]
fn a_cold_walk_asks_for_the_sizes_below_in_bulk() {
    let _quiet = quiet();
    let scratch = Scratch::new();
    let (dir, srv, work) = (scratch.dir(), scratch.srv(), scratch.work());
    let mut want = Vec::new();
    for d in 0..40 {
        for e in 0..3 {
            let sub = work.join(format!("d{d:02}/e{e}"));
            std::fs::create_dir_all(&sub).unwrap();
            for f in 0..25 {
                // Past the LFS pointer range (those are fetched to be parsed).
                let len = 1100 + d * 31 + e * 7 + f * 3;
                std::fs::write(sub.join(format!("f{f:02}")), noise(len as u64, len)).unwrap();
                want.push((format!("d{d:02}/e{e}/f{f:02}"), len as u64));
            }
        }
    }
    publish_repo(&srv, &work, "bulk");
    let server = GitServer::start(&srv, &["--object-info"]);
    let m = mount(dir, &server.url("bulk"), "refresh = \"never\"", "");
    assert_eq!(std::fs::read_dir(&m.mount).unwrap().count(), 40);
    server.reset_stats();
    for (path, len) in &want {
        let meta = std::fs::metadata(m.mount.join(path)).unwrap();
        assert_eq!(meta.len(), *len, "{path}");
    }
    let (requests, bytes) = server.stats("bulk");
    // 160 directories below the root, 3,000 files: the root's listing asked
    // for all of their sizes at once.
    assert!(
        requests <= 5,
        "{requests} requests for a walk of 160 directories:\n{}",
        m.daemon.log_text()
    );
    let contents: u64 = want.iter().map(|(_, l)| l).sum();
    assert!(
        bytes < contents / 2,
        "the walk downloaded {bytes} bytes (the files hold {contents})"
    );
    let mut m = m;
    m.daemon.stop();
}

/// Without `object-info` a host tells a blob's size only by sending it: a
/// walk that wants names (`find`) downloads no file contents, and what
/// then looks at the files (`du`, `stat`, `cat`, `readlink`) gets their
/// true sizes and bytes.
#[test]
fn a_walk_for_names_downloads_no_contents() {
    let _quiet = quiet();
    let scratch = Scratch::new();
    let (dir, srv, work) = (scratch.dir(), scratch.srv(), scratch.work());
    let mut want = Vec::new();
    for d in 0..12 {
        for e in 0..2 {
            let sub = work.join(format!("d{d:02}/e{e}"));
            std::fs::create_dir_all(&sub).unwrap();
            for f in 0..20 {
                let len = 1100 + d * 37 + e * 11 + f * 5;
                let path = format!("d{d:02}/e{e}/f{f:02}");
                std::fs::write(work.join(&path), noise(len as u64, len)).unwrap();
                want.push((path, noise(len as u64, len)));
            }
        }
    }
    std::fs::write(work.join("d00/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        work.join("d00/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("e0/f00", work.join("d00/link")).unwrap();
    publish_repo(&srv, &work, "names");
    let server = GitServer::start(&srv, &[]);
    let m = mount(dir, &server.url("names"), "refresh = \"never\"", "");
    assert_eq!(std::fs::read_dir(&m.mount).unwrap().count(), 12);
    server.reset_stats();
    let find = |what: &str| {
        let (code, out, err) = sh(
            &format!("find {} {what} | wc -l", s(&m.mount)),
            Duration::from_secs(120),
        );
        assert_eq!(code, 0, "find: {err}");
        out.trim().parse::<usize>().unwrap()
    };
    // Root, 12 + 24 directories, 480 files, the script and the link.
    assert_eq!(find(""), 1 + 36 + want.len() + 2);
    assert_eq!(find("-type f"), want.len() + 1);
    assert_eq!(find("-type l"), 1);
    let (requests, bytes) = server.stats("names");
    let contents: usize = want.iter().map(|(_, c)| c.len()).sum();
    assert!(
        requests == 0 && bytes == 0,
        "a walk for names made {requests} requests for {bytes} bytes (the files hold {contents})"
    );
    // A file read before anything looked at it: its true bytes.
    let (last, data) = &want[want.len() - 1];
    assert!(
        std::fs::read(m.mount.join(last)).unwrap() == *data,
        "{last}: wrong bytes"
    );
    // `du` looks at every file: the true sizes, from the sized listings
    // its lookups ask for (the script, the link's target text).
    let (code, out, err) = sh(&format!("du -sb {}", s(&m.mount)), Duration::from_secs(120));
    assert_eq!(code, 0, "du: {err}");
    let du: usize = out.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(du, contents + "#!/bin/sh\necho hi\n".len() + "e0/f00".len());
    for (path, data) in &want {
        let p = m.mount.join(path);
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            data.len() as u64,
            "{path}"
        );
        assert!(std::fs::read(&p).unwrap() == *data, "{path}: wrong bytes");
    }
    let script = std::fs::metadata(m.mount.join("d00/run.sh")).unwrap();
    assert_eq!(script.permissions().mode() & 0o111, 0o111);
    assert_eq!(
        std::fs::read_link(m.mount.join("d00/link")).unwrap(),
        Path::new("e0/f00")
    );
    let mut m = m;
    m.daemon.stop();
}

#[test]
fn a_directory_of_50000_entries_lists_within_three_times_native() {
    require_prerequisites();
    const N: usize = 50_000;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    // git fast-import: one blob, N names.
    let bare = srv.join("big.git");
    git(dir, &["init", "-q", "--bare", s(&bare)]);
    let mut stream = String::from("blob\nmark :1\ndata 2\nx\n");
    stream.push_str("commit refs/heads/main\ncommitter T <t@e> 1700000000 +0000\ndata 1\nm\n");
    for i in 0..N {
        stream.push_str(&format!("M 100644 :1 d/f{i:06}\n"));
    }
    stream.push('\n');
    std::fs::write(dir.join("stream"), &stream).unwrap();
    let (code, out, err) = sh(
        &format!(
            "cd {} && git fast-import --quiet < {}",
            s(&bare),
            s(&dir.join("stream"))
        ),
        Duration::from_secs(300),
    );
    assert_eq!(code, 0, "fast-import: {out}{err}");
    git(&bare, &["symbolic-ref", "HEAD", "refs/heads/main"]);
    let native = dir.join("native/d");
    std::fs::create_dir_all(&native).unwrap();
    for i in 0..N {
        std::fs::write(native.join(format!("f{i:06}")), "x\n").unwrap();
    }
    let server = GitServer::start(&srv, &[]);
    let ls = |p: &Path| {
        let t = Instant::now();
        let (code, out, err) = sh(&format!("ls -l {} | wc -l", s(p)), Duration::from_secs(600));
        assert_eq!(code, 0, "ls -l {}: {err}", p.display());
        assert_eq!(
            out.trim(),
            format!("{}", N + 1),
            "ls -l {} listed {out}",
            p.display()
        );
        t.elapsed().as_secs_f64()
    };
    let median = |p: &Path| {
        let mut t: Vec<f64> = (0..3).map(|_| ls(p)).collect();
        t.sort_by(|a, b| a.total_cmp(b));
        t[1]
    };
    // Without extended attributes, then with them: `ls -l` then asks every
    // file for two `security.*`-style names, which FUSE cannot cache, so
    // each file costs two daemon round trips (of this debug build) even warm.
    for (name, top, limit) in [("plain", "xattrs = false", 3.0), ("xattrs", "", 12.0)] {
        let sub = dir.join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let mut m = mount(&sub, &server.url("big"), "refresh = \"never\"", top);
        // Loaded once (trees, sizes); then warm, each against native. The
        // cold listing gives names first (sizes cost a request): `ls -l`
        // then looks up each file once, and the daemon lists with sizes.
        let cold_s = ls(&m.mount.join("d"));
        let cold = m.ops("lookup");
        eprintln!("cold ls -l of {N} entries ({name}): {cold_s:.3} s, {cold} lookups");
        assert!(
            cold <= (N + 100) as f64,
            "a cold ls -l of {N} entries made {cold} lookups"
        );
        let (native_s, mount_s) = {
            let _alone = QUIET.write().unwrap_or_else(|e| e.into_inner());
            (median(&native), median(&m.mount.join("d")))
        };
        eprintln!(
            "ls -l of {N} entries ({name}): native {native_s:.3} s, repofs {mount_s:.3} s ({:.2}x)",
            mount_s / native_s
        );
        let xattr_calls = m.ops("getxattr");
        assert!(
            xattr_calls <= (9 * N) as f64,
            "{xattr_calls} getxattr calls for four ls -l of {N} files"
        );
        let lookups = m.ops("lookup") - cold;
        assert!(
            lookups < (N / 100) as f64,
            "readdirplus should answer ls -l without a lookup per entry: {lookups} lookups"
        );
        assert!(
            mount_s < limit * native_s,
            "ls -l of {N} entries ({name}): {mount_s:.3} s through the mount, {native_s:.3} s native"
        );
        m.daemon.stop();
    }
}

#[test]
fn the_inode_table_shrinks_when_the_kernel_forgets() {
    let _quiet = quiet();
    let scratch = Scratch::new();
    let (dir, srv, work) = (scratch.dir(), scratch.srv(), scratch.work());
    for i in 0..200 {
        let d = work.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}.txt")), format!("one {i}\n")).unwrap();
    }
    publish_repo(&srv, &work, "inodes");
    let server = GitServer::start(&srv, &[]);
    let mut m = mount(dir, &server.url("inodes"), "refresh = \"1s\"", "");
    let walk = |m: &Mount| {
        let (code, out, err) = sh(
            &format!("find {} -type f | xargs cat | wc -l", s(&m.mount)),
            Duration::from_secs(120),
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), "200");
    };
    walk(&m);
    let full = m.inodes();
    assert!(
        full >= 210,
        "after a walk of 210 paths the table has {full} inodes"
    );
    drop_caches();
    let after = m.inodes();
    assert!(
        after <= 2,
        "after drop_caches the table still has {after} of {full} inodes"
    );

    // The branch moves: every file changes. Walk, drop, and nothing stale.
    for i in 0..200 {
        let p = work.join(format!("d{}/f{i}.txt", i % 10));
        std::fs::write(p, format!("two {i}\n")).unwrap();
    }
    publish_repo(&srv, &work, "inodes");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(m.mount.join("d0/f0.txt")).unwrap_or_default() != "two 0\n" {
        assert!(
            Instant::now() < deadline,
            "the branch move was not seen:\n{}",
            m.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    walk(&m);
    let (_, out, _) = sh(
        &format!("cat {}/d3/f3.txt", s(&m.mount)),
        Duration::from_secs(30),
    );
    assert_eq!(out, "two 3\n");
    drop_caches();
    let after = m.inodes();
    assert!(
        after <= 2,
        "after a branch move and drop_caches the table has {after} inodes"
    );
    m.daemon.stop();
}

/// A directory the kernel still holds from before a followed branch moved
/// (a process inside it) lists and reads its old files, even when nothing
/// listed it with sizes before the move.
#[test]
fn a_directory_held_across_a_branch_move_reads_its_old_files() {
    let _quiet = quiet();
    let scratch = Scratch::new();
    let (dir, srv, work) = (scratch.dir(), scratch.srv(), scratch.work());
    std::fs::create_dir_all(work.join("a")).unwrap();
    std::fs::write(work.join("a/x.txt"), "old\n").unwrap();
    std::fs::write(work.join("top.txt"), "1\n").unwrap();
    publish_repo(&srv, &work, "held");
    let server = GitServer::start(&srv, &[]);
    let mut m = mount(dir, &server.url("held"), "refresh = \"1s\"", "");
    let held = std::fs::File::open(m.mount.join("a")).unwrap();
    std::fs::write(work.join("a/x.txt"), "new, longer\n").unwrap();
    std::fs::write(work.join("top.txt"), "2\n").unwrap();
    publish_repo(&srv, &work, "held");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(m.mount.join("top.txt")).unwrap_or_default() != "2\n" {
        assert!(Instant::now() < deadline, "the branch move was not seen");
        std::thread::sleep(Duration::from_millis(200));
    }
    use std::os::fd::AsRawFd;
    let old = PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
    let names: Vec<_> = std::fs::read_dir(&old)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["x.txt"]);
    assert_eq!(std::fs::metadata(old.join("x.txt")).unwrap().len(), 4);
    assert_eq!(std::fs::read_to_string(old.join("x.txt")).unwrap(), "old\n");
    assert_eq!(
        std::fs::read_to_string(m.mount.join("a/x.txt")).unwrap(),
        "new, longer\n"
    );
    drop(held);
    m.daemon.stop();
}
