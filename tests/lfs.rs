//! End-to-end tests of Git LFS in mounted repositories: the real `git-lfs`
//! client pushes to a real LFS server (giftless) on loopback; the git server
//! forwards `<repo>.git/info/lfs/objects/batch` to it, so download hrefs
//! point at a second host:port, which must never see the git credentials.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "lfs-test-token-31337";

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    git: GitServer,
    lfs: LfsServer,
}

fn setup() -> Setup {
    require_prerequisites();
    require_git_lfs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let lfs = LfsServer::start(&dir.join("lfs-store"));
    let upstream = format!("http://127.0.0.1:{}", lfs.port);
    let git = GitServer::start(&dir.join("srv"), &["--lfs-upstream", &upstream]);
    Setup {
        _tmp: tmp,
        dir,
        git,
        lfs,
    }
}

/// Creates `<name>.git` on the git server with `files` (paths ending in
/// `.bin` are tracked by LFS) and pushes the LFS objects with git-lfs.
fn lfs_repo(s: &Setup, name: &str, files: &[(&str, &[u8])]) {
    let bare = s.git.root.join(format!("{name}.git"));
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let work = new_worktree(&s.dir.join(format!("work-{name}")));
    git(&work, &["lfs", "install", "--local"]);
    git(&work, &["config", "lfs.url", &s.lfs.url(name)]);
    git(&work, &["lfs", "track", "*.bin"]);
    for (path, data) in files {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "lfs files"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    git(&work, &["push", "-q", "origin", "main"]);
    s.git.set_tokens(&[(name, TOKEN)]);
}

fn config(s: &Setup, name: &str) -> (PathBuf, PathBuf) {
    let cfg = write_config(
        &s.dir,
        &s.dir.join("mnt"),
        &s.dir.join("cache"),
        &[RepoEntry {
            name: name.into(),
            url: s.git.url(name),
            extra: format!("token = \"{TOKEN}\""),
        }],
        "",
    );
    (cfg, s.dir.join("mnt").join(name))
}

/// Reads `path` and compares without printing megabytes on failure.
fn same(path: &std::path::Path, expect: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        got == expect,
        "{}: contents differ ({} bytes, expected {})",
        path.display(),
        got.len(),
        expect.len()
    );
}

/// The error reading `path` gives (panics, briefly, if it reads).
fn read_err(path: &std::path::Path) -> std::io::Error {
    match std::fs::read(path) {
        Ok(d) => panic!(
            "{}: read {} bytes, expected an error",
            path.display(),
            d.len()
        ),
        Err(e) => e,
    }
}

fn downloads(seen: &str) -> usize {
    seen.matches("\"path\":").count()
}

fn batches(seen: &str) -> u64 {
    seen.split("\"batches\": ")
        .nth(1)
        .unwrap()
        .trim_end_matches('}')
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn lfs_files_read_as_their_contents() {
    let s = setup();
    let kb = noise(1, 1024);
    let mb50 = noise(2, 50 << 20);
    let mb300 = noise(3, 300 << 20);
    lfs_repo(
        &s,
        "media",
        &[
            ("empty.bin", b""),
            ("one-kb.bin", &kb),
            ("data/fifty.bin", &mb50),
            ("data/three-hundred.bin", &mb300),
            ("plain.txt", b"not in lfs\n"),
            ("data/notes.md", b"# notes\n"),
        ],
    );
    s.lfs.control("reset=1");
    let (cfg, m) = config(&s, "media");
    let mut d = Daemon::start(&cfg, &[m.clone()], &s.dir.join("daemon.log"));

    // Sizes are real, and the LFS server has served nothing yet.
    for (path, size) in [
        ("empty.bin", 0),
        ("one-kb.bin", 1024),
        ("data/fifty.bin", 50 << 20),
        ("data/three-hundred.bin", 300 << 20),
        ("plain.txt", 11),
    ] {
        assert_eq!(
            std::fs::metadata(m.join(path)).unwrap().len(),
            size,
            "{path}"
        );
    }
    let (code, out, _) = sh(
        &format!("ls -l {}/data", m.display()),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0);
    assert!(out.contains(&(300u64 << 20).to_string()), "{out}");
    let seen = s.lfs.seen();
    assert_eq!(
        downloads(&seen),
        0,
        "stat/ls downloaded LFS objects: {seen}"
    );
    assert_eq!(batches(&seen), 0, "stat/ls asked the LFS server: {seen}");

    // A `git lfs pull` checkout of the same commit is identical.
    let checkout = s.dir.join("checkout");
    let auth_url = s
        .git
        .url("media")
        .replace("http://", &format!("http://x:{TOKEN}@"));
    let out = std::process::Command::new("git")
        .args(["clone", "-q", &auth_url, checkout.to_str().unwrap()])
        .env("GIT_LFS_SKIP_SMUDGE", "1")
        .env("HOME", &s.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    git(&checkout, &["lfs", "install", "--local"]);
    git(&checkout, &["lfs", "pull"]);
    s.lfs.control("reset=1");
    let (code, out, err) = sh(
        &format!("diff -r -x .git {} {}", m.display(), checkout.display()),
        Duration::from_secs(300),
    );
    assert_eq!(
        code,
        0,
        "mount differs from the git lfs pull checkout: {out}{err}\n{}",
        d.log_text()
    );

    // What the download host saw: the batch's header, never the git token.
    let seen = s.lfs.seen();
    assert!(downloads(&seen) >= 3, "{seen}");
    assert!(
        !seen.contains("Authorization") && !seen.contains(TOKEN),
        "credentials leaked: {seen}"
    );
    assert_eq!(
        seen.matches("from-the-batch-response").count(),
        downloads(&seen),
        "{seen}"
    );
    assert!(s.lfs.port != s.git.port);
    // The two big files of data/ were asked for in one batch.
    assert!(
        batches(&seen) <= 2,
        "one batch per object instead of per directory: {seen}"
    );
    assert!(!d.log_text().contains(TOKEN));
    d.stop();

    // Restart with both servers stopped: cached LFS files still read.
    let Setup {
        _tmp,
        dir,
        git: g,
        lfs,
    } = s;
    drop(g);
    drop(lfs);
    let mut d = Daemon::start(&cfg, &[m.clone()], &dir.join("daemon2.log"));
    same(&m.join("data/fifty.bin"), &mb50);
    same(&m.join("one-kb.bin"), &kb);
    d.stop();
}

#[test]
fn first_megabyte_does_not_wait_for_the_whole_object() {
    let s = setup();
    let data = noise(9, 24 << 20);
    lfs_repo(&s, "slow", &[("big.bin", &data)]);
    // 2 MB/s: the whole object takes about 12 s, the first megabyte 0.5 s.
    s.lfs.control("rate=2097152");
    let (cfg, m) = config(&s, "slow");
    let mut d = Daemon::start(&cfg, &[m.clone()], &s.dir.join("daemon.log"));
    let start = Instant::now();
    let mut f = std::fs::File::open(m.join("big.bin")).unwrap();
    let mut first = vec![0u8; 1 << 20];
    f.read_exact(&mut first).unwrap();
    let ttfb = start.elapsed();
    assert!(first == data[..1 << 20], "first MB differs");
    assert!(
        ttfb < Duration::from_secs(6),
        "first megabyte took {ttfb:?}"
    );
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    assert!(rest == data[1 << 20..], "rest differs");
    eprintln!(
        "first MB after {ttfb:?}, whole file after {:?}",
        start.elapsed()
    );
    d.stop();
}

/// A download cut midway restarts; a store that then ignores the range and
/// sends the whole object again must not make a reader see anything but the
/// object's bytes (what was written is checked, never rewritten).
#[test]
fn a_cut_download_restarts_without_rewriting_what_readers_saw() {
    let s = setup();
    let data = noise(11, 12 << 20);
    lfs_repo(&s, "cut", &[("big.bin", &data)]);
    s.lfs.control("cut=3000000&norange=1&rate=8388608");
    let (cfg, m) = config(&s, "cut");
    let mut d = Daemon::start(&cfg, &[m.clone()], &s.dir.join("daemon.log"));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let path = m.join("big.bin");
            std::thread::spawn(move || std::fs::read(path))
        })
        .collect();
    for r in readers {
        let got = r.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            got == data,
            "a reader got wrong bytes ({} of {})",
            got.len(),
            data.len()
        );
    }
    let log = d.log_text();
    assert!(log.contains("resuming"), "the download was not cut:\n{log}");
    s.lfs.control("cut=0&norange=0&rate=0");
    d.stop();
}

/// The cache's disk is smaller than the objects: each is still read whole
/// and right; one that cannot fit even after eviction is served from memory.
#[test]
fn lfs_objects_read_right_on_a_full_disk() {
    let s = setup();
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("d/f{i}.bin"), noise(200 + i, 6_000_000)))
        .chain([("big.bin".to_string(), noise(300, 16_000_000))])
        .collect();
    // Read only once the cache's disk has become read-only.
    let later: Vec<(String, Vec<u8>)> = (0..2)
        .map(|i| (format!("e/g{i}.bin"), noise(400 + i, 3_000_000)))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .chain(&later)
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    lfs_repo(&s, "full", &refs);
    let _disk = Tmpfs::mount(&s.dir.join("cache"), "12m");
    let (cfg, m) = config(&s, "full");
    let mut d = Daemon::start(&cfg, &[m.clone()], &s.dir.join("daemon.log"));
    for round in 0..2 {
        for (name, data) in &files {
            let got = std::fs::read(m.join(name))
                .unwrap_or_else(|e| panic!("round {round}: {name}: {e}\n{}", d.log_text()));
            assert!(
                &got == data,
                "round {round}: {name}: wrong bytes ({} read)",
                got.len()
            );
        }
    }
    // The cache directory becomes unwritable: reads still come back right.
    // (The kernel refuses while evicted files are still open: readers kept
    // for reads without open are dropped after 2 s idle.)
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let out = std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(s.dir.join("cache"))
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cannot make the cache read-only: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for (name, data) in &later {
        let got = std::fs::read(m.join(name))
            .unwrap_or_else(|e| panic!("read-only cache: {name}: {e}\n{}", d.log_text()));
        assert!(
            &got == data,
            "read-only cache: {name}: wrong bytes ({} read)",
            got.len()
        );
    }
    let log = d.log_text();
    assert!(log.contains("the cache is full"), "{log}");
    assert!(log.contains("served from memory"), "{log}");
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.join("cache/content/tmp"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    d.stop();
}

#[test]
fn lfs_failures_are_reported_and_hrefs_renewed() {
    let s = setup();
    // One directory per phase: a directory's objects are batched together.
    let dirs = ["a", "a", "b", "b", "c", "c"];
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("{}/f{i}.bin", dirs[i]),
                noise(100 + i as u64, 10_000),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    lfs_repo(&s, "errs", &refs);
    let (cfg, m) = config(&s, "errs");
    let mut d = Daemon::start(&cfg, &[m.clone()], &s.dir.join("daemon.log"));
    assert_eq!(
        std::fs::metadata(m.join("a/f0.bin"))
            .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()))
            .len(),
        10_000
    );

    // The batch API refuses: 401/403 give EACCES, 404 gives EIO; all logged with the path.
    for (mode, errno, text) in [
        ("lfs401", libc::EACCES, "HTTP 401"),
        ("lfs403", libc::EACCES, "HTTP 403"),
        ("lfs404", libc::EIO, "no LFS server"),
        // GitHub's quota refusal is told from a credential problem.
        (
            "lfsquota",
            libc::EIO,
            "refused for its quota, not the credentials",
        ),
    ] {
        s.git.set_fault(mode);
        let e = read_err(&m.join("a/f0.bin"));
        assert_eq!(e.raw_os_error(), Some(errno), "{mode}: {e}");
        let log = d.log_text();
        assert!(
            log.contains(text) && log.contains("f0.bin"),
            "{mode}: {log}"
        );
    }
    // A quota refusal: check fails and says quota, not credentials.
    let (code, out, _) = sh(
        &format!("{} --config {} check errs", repofs_bin(), cfg.display()),
        Duration::from_secs(60),
    );
    s.git.set_fault("ok");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("LFS quota, not the credentials") && out.contains("over its data quota"),
        "{out}"
    );
    assert!(!out.contains("refused the credentials"), "{out}");

    // A corrupt download: EIO, "sha256 mismatch" in the log, nothing cached.
    s.lfs.control("corrupt=1");
    let e = read_err(&m.join("a/f0.bin"));
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(d.log_text().contains("sha256 mismatch"), "{}", d.log_text());
    s.lfs.control("corrupt=0");
    same(&m.join("a/f0.bin"), &files[0].1);

    // Expiry announced by the server (expires_in): the client asks again.
    s.lfs.control("reset=1&lifetime=6");
    same(&m.join("b/f2.bin"), &files[2].1);
    let before = batches(&s.lfs.seen());
    assert_eq!(
        before,
        1,
        "b/ was not asked for in one batch: {}",
        s.lfs.seen()
    );
    std::thread::sleep(Duration::from_secs(2));
    same(&m.join("b/f3.bin"), &files[3].1);
    let seen = s.lfs.seen();
    assert!(
        batches(&seen) > before,
        "an href inside the expiry margin was used: {seen}"
    );
    assert!(!seen.contains("\"expired\": true"), "{seen}");

    // Expiry the client was not told about: the href answers 403; renewed once.
    s.lfs.control("reset=1&lifetime=1&lie=1");
    same(&m.join("c/f4.bin"), &files[4].1);
    std::thread::sleep(Duration::from_secs(2));
    same(&m.join("c/f5.bin"), &files[5].1);
    let seen = s.lfs.seen();
    assert!(
        seen.contains("\"expired\": true"),
        "the stale href was never tried: {seen}"
    );
    assert!(d.log_text().contains("renewing it"), "{}", d.log_text());
    d.stop();
}

#[test]
fn lfsconfig_url_overrides_the_endpoint_and_check_reports_lfs() {
    let s = setup();
    let bare = s.git.root.join("cfg.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let work = new_worktree(&s.dir.join("work-cfg"));
    // LFS objects live under another repository name on the LFS server,
    // reachable only through the committed .lfsconfig.
    std::fs::write(
        work.join(".lfsconfig"),
        format!("[lfs]\n\turl = {}\n", s.lfs.url("elsewhere")),
    )
    .unwrap();
    git(&work, &["lfs", "install", "--local"]);
    git(&work, &["lfs", "track", "*.bin"]);
    let data = noise(77, 5000);
    std::fs::write(work.join("x.bin"), &data).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "x"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    git(&work, &["push", "-q", "origin", "main"]);
    let (cfg, m) = {
        let cfg = write_config(
            &s.dir,
            &s.dir.join("mnt"),
            &s.dir.join("cache"),
            &[
                RepoEntry {
                    name: "cfg".into(),
                    url: s.git.url("cfg"),
                    extra: String::new(),
                },
                RepoEntry {
                    name: "wrong".into(),
                    url: s.git.url("cfg"),
                    extra: "token = \"nope\"".into(),
                },
            ],
            "",
        );
        (cfg, s.dir.join("mnt/cfg"))
    };
    let (code, out, _) = sh(
        &format!("{} --config {} check cfg", repofs_bin(), cfg.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("LFS endpoint accepts the credentials"),
        "{out}"
    );
    // LFS behind auth with a wrong token: check fails and says LFS.
    s.git.set_tokens(&[("cfg", "right")]);
    let (code, out, _) = sh(
        &format!("{} --config {} check wrong", repofs_bin(), cfg.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{out}");
    s.git.set_tokens(&[]);
    let mut d = Daemon::start(
        &cfg,
        &[m.clone(), s.dir.join("mnt/wrong")],
        &s.dir.join("daemon.log"),
    );
    same(&m.join("x.bin"), &data);
    assert!(
        s.lfs.seen().contains("/test/elsewhere/"),
        "{}",
        s.lfs.seen()
    );
    d.stop();
}
