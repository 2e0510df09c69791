//! End-to-end tests of git mounts: a real `git http-backend` on loopback
//! (protocol v2), the real daemon, real FUSE mounts, compared against real
//! `git clone` checkouts.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    mnt: PathBuf,
    cache: PathBuf,
}

fn fixture() -> Fixture {
    require_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    Fixture {
        mnt: dir.join("mnt"),
        cache: dir.join("cache"),
        dir,
        _tmp: tmp,
    }
}

fn entry(name: &str, url: String, extra: &str) -> RepoEntry {
    RepoEntry {
        name: name.into(),
        url,
        extra: extra.into(),
    }
}

/// Walks `root` (not following symlinks) and returns (relative path, kind,
/// size, executable) for everything in it, sorted.
fn inventory(root: &Path) -> Vec<(String, char, u64, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            if rel == ".git" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(p.clone());
                'd'
            } else if ft.is_symlink() {
                'l'
            } else {
                'f'
            };
            let size = if kind == 'd' { 0 } else { m.len() };
            let exec = kind == 'f' && m.permissions().mode() & 0o100 != 0;
            out.push((rel, kind, size, exec));
        }
    }
    out.sort();
    out
}

#[test]
fn mount_matches_a_checkout() {
    let f = fixture();
    let server_root = f.dir.join("srv");
    std::fs::create_dir_all(&server_root).unwrap();
    let work = new_worktree(&f.dir.join("work"));
    std::fs::create_dir_all(work.join("src/deep/er/still")).unwrap();
    std::fs::write(work.join("README.md"), "# test repo\n").unwrap();
    std::fs::write(work.join("src/main.py"), "print('hi')\n").unwrap();
    std::fs::write(work.join("src/deep/er/still/leaf.txt"), "leaf\n").unwrap();
    std::fs::write(work.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(work.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/main.py", work.join("link-to-main")).unwrap();
    std::os::unix::fs::symlink("src/deep", work.join("link-to-dir")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", work.join("dangling")).unwrap();
    std::fs::write(work.join("empty"), "").unwrap();
    std::fs::write(work.join("with space.txt"), "spaces\n").unwrap();
    std::fs::write(work.join("ünïcødé-名前.txt"), "unicode\n").unwrap();
    std::fs::create_dir_all(work.join("dir with space/ß")).unwrap();
    std::fs::write(work.join("dir with space/ß/x"), "x\n").unwrap();
    std::fs::write(work.join("big.bin"), noise(7, 20 * 1024 * 1024)).unwrap();
    // A submodule: a gitlink entry plus .gitmodules.
    std::fs::write(
        work.join(".gitmodules"),
        "[submodule \"sub\"]\n\tpath = sub\n\turl = https://example.invalid/sub.git\n",
    )
    .unwrap();
    git(&work, &["add", "-A"]);
    git(
        &work,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            "160000,1111111111111111111111111111111111111111,sub",
        ],
    );
    let commit = publish_committed(&server_root, &work, "full");
    let server = GitServer::start(&server_root, &[]);
    let checkout = f.dir.join("checkout");
    git(
        &f.dir,
        &[
            "clone",
            "-q",
            &server.url("full"),
            checkout.to_str().unwrap(),
        ],
    );

    let config = write_config(
        &f.dir,
        &f.mnt,
        &f.cache,
        &[entry("full", server.url("full"), "")],
        "",
    );
    let (code, out, err) = sh(
        &format!("{} --config {} check", repofs_bin(), config.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "check failed: {out}{err}");
    assert!(out.contains(&commit), "{out}");

    let m = f.mnt.join("full");
    let mut d = Daemon::start(&config, &[m.clone()], &f.dir.join("daemon.log"));

    let (code, out, err) = sh(
        &format!(
            "diff -r --no-dereference -x .git {} {}",
            m.display(),
            checkout.display()
        ),
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "diff -r differs:\n{out}{err}\n{}", d.log_text());
    assert_eq!(inventory(&m), inventory(&checkout));

    // Modes, times, symlinks, submodule.
    let meta = std::fs::metadata(m.join("README.md")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o444);
    assert_eq!(meta.mtime(), 1_700_000_000);
    assert_eq!(
        std::fs::metadata(m.join("run.sh")).unwrap().mode() & 0o7777,
        0o555
    );
    assert_eq!(
        std::fs::metadata(m.join("src")).unwrap().mode() & 0o7777,
        0o555
    );
    assert_eq!(
        std::fs::read_link(m.join("link-to-main")).unwrap(),
        Path::new("src/main.py")
    );
    assert_eq!(
        std::fs::read_to_string(m.join("link-to-main")).unwrap(),
        "print('hi')\n"
    );
    assert!(std::fs::metadata(m.join("sub")).unwrap().is_dir());
    assert_eq!(std::fs::read_dir(m.join("sub")).unwrap().count(), 0);
    // Stable inode numbers.
    let ino = std::fs::metadata(m.join("src/main.py")).unwrap().ino();
    assert_eq!(std::fs::metadata(m.join("src/main.py")).unwrap().ino(), ino);

    // Writes are refused with EROFS.
    for cmd in [
        format!("touch {}/new", m.display()),
        format!("mkdir {}/newdir", m.display()),
        format!("rm {}/README.md", m.display()),
        format!("echo x >> {}/README.md", m.display()),
        format!("mv {}/README.md {}/R2", m.display(), m.display()),
        format!("chmod 777 {}/run.sh", m.display()),
    ] {
        let (code, _, err) = sh(&cmd, Duration::from_secs(20));
        assert_ne!(code, 0, "{cmd} succeeded");
        assert!(err.contains("Read-only file system"), "{cmd}: {err}");
    }

    // The tools builds and people use.
    let script = format!(
        "cd {m} && find . | sort > /dev/null && grep -rl leaf . && tar cf - . | wc -c && \
         python3 -c \"import mmap;f=open('big.bin','rb');mm=mmap.mmap(f.fileno(),0,access=mmap.ACCESS_READ);print(len(mm), mm[123:127].hex())\" && \
         cp -r . {dir}/copy",
        m = m.display(),
        dir = f.dir.display()
    );
    let (code, out, err) = sh(&script, Duration::from_secs(120));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("src/deep/er/still/leaf.txt"), "{out}");
    let big = noise(7, 20 * 1024 * 1024);
    assert!(
        out.contains(&format!("20971520 {}", hex(&big[123..127]))),
        "{out}"
    );
    let (code, out, err) = sh(
        &format!(
            "diff -r --no-dereference -x .git {}/copy {}",
            f.dir.display(),
            checkout.display()
        ),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "cp -r copy differs: {out}{err}");
    d.stop();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A repository of `dirs` x `per_dir` small random files; returns total blob bytes.
fn many_files(work: &Path, dirs: usize, per_dir: usize, size: usize) -> u64 {
    let mut total = 0;
    for d in 0..dirs {
        let dir = work.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_dir {
            let data = noise((d * 100_000 + i) as u64, size);
            total += data.len() as u64;
            std::fs::write(dir.join(format!("f{i:04}.dat")), data).unwrap();
        }
    }
    total
}

#[test]
fn reading_one_file_fetches_little() {
    let f = fixture();
    let server_root = f.dir.join("srv");
    std::fs::create_dir_all(&server_root).unwrap();
    let work = new_worktree(&f.dir.join("work"));
    let total = many_files(&work, 200, 50, 16_384); // 10,000 files, 164 MB of blobs
    publish_repo(&server_root, &work, "many");
    let server = GitServer::start(&server_root, &[]);
    let config = write_config(
        &f.dir,
        &f.mnt,
        &f.cache,
        &[entry("many", server.url("many"), "")],
        "",
    );
    let m = f.mnt.join("many");
    let mut d = Daemon::start(&config, &[m.clone()], &f.dir.join("daemon.log"));

    let got = std::fs::read(m.join("d17/f0042.dat")).unwrap();
    assert_eq!(got, noise(17 * 100_000 + 42, 16_384));
    let (requests, bytes) = server.stats("many");
    eprintln!("read one file: {requests} requests, {bytes} bytes of {total} blob bytes");
    assert!(
        bytes < total / 100,
        "read one file but the server sent {bytes} of {total} bytes"
    );

    // ls -l of a 50-file directory costs a constant number of round trips:
    // one size probe that brings the small files (without object-info or a
    // host API, git itself is asked), so that reading them all is local.
    server.reset_stats();
    let (code, out, err) = sh(
        &format!("ls -l {}/d05", m.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains(" 16384 ")).count(),
        50,
        "{out}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let (requests, bytes) = server.stats("many");
    eprintln!("ls -l of 50 files: {requests} requests, {bytes} bytes");
    assert!(requests <= 3, "ls -l took {requests} requests");
    let (code, _, err) = sh(
        &format!("cat {}/d05/* | wc -c", m.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        server.stats("many").0,
        requests,
        "reading a listed directory made more requests"
    );
    d.stop();
}

#[test]
fn servers_without_filter_or_object_info_still_work() {
    let f = fixture();
    let server_root = f.dir.join("srv");
    std::fs::create_dir_all(&server_root).unwrap();
    let work = new_worktree(&f.dir.join("work"));
    many_files(&work, 3, 50, 1000);
    std::fs::write(work.join("top.txt"), "top\n").unwrap();
    publish_repo(&server_root, &work, "plain");
    let server = GitServer::start(&server_root, &["--no-filter", "--no-object-info"]);
    let checkout = f.dir.join("checkout");
    git(
        &f.dir,
        &[
            "clone",
            "-q",
            &server.url("plain"),
            checkout.to_str().unwrap(),
        ],
    );
    let config = write_config(
        &f.dir,
        &f.mnt,
        &f.cache,
        &[entry("plain", server.url("plain"), "")],
        "",
    );
    let m = f.mnt.join("plain");
    let mut d = Daemon::start(&config, &[m.clone()], &f.dir.join("daemon.log"));
    let (code, out, err) = sh(
        &format!("diff -r -x .git {} {}", m.display(), checkout.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(inventory(&m), inventory(&checkout));
    let log = d.log_text();
    assert_eq!(
        log.matches("does not support `filter`").count(),
        1,
        "the fallback is logged exactly once:\n{log}"
    );
    d.stop();
}

#[test]
fn restart_with_the_server_stopped_serves_what_was_read() {
    let f = fixture();
    let server_root = f.dir.join("srv");
    std::fs::create_dir_all(&server_root).unwrap();
    let work = new_worktree(&f.dir.join("work"));
    many_files(&work, 2, 10, 10_000);
    // Listing d01 prefetches its small files: the file never read is large.
    std::fs::write(work.join("d01/large.bin"), noise(7, 400_000)).unwrap();
    publish_repo(&server_root, &work, "offline");
    let mut server = GitServer::start(&server_root, &[]);
    let config = write_config(
        &f.dir,
        &f.mnt,
        &f.cache,
        &[entry("offline", server.url("offline"), "")],
        "",
    );
    let m = f.mnt.join("offline");
    let mut d = Daemon::start(&config, &[m.clone()], &f.dir.join("daemon1.log"));
    assert_eq!(
        std::fs::read(m.join("d01/f0003.dat")).unwrap(),
        noise(100_003, 10_000)
    );
    d.stop();
    drop(server);

    let mut d = Daemon::start(&config, &[m.clone()], &f.dir.join("daemon2.log"));
    assert_eq!(
        std::fs::read(m.join("d01/f0003.dat")).unwrap(),
        noise(100_003, 10_000)
    );
    // A file never read: the listing is known, the contents are not: EIO, quickly.
    let start = Instant::now();
    let err = std::fs::read(m.join("d01/large.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        d.log_text().contains("serving the last known commit"),
        "{}",
        d.log_text()
    );
    assert!(
        d.log_text().contains("large.bin"),
        "the log names the path:\n{}",
        d.log_text()
    );

    // The server comes back: the unread file reads without a restart.
    server = GitServer::start_on(&server_root, server_port(&config), &[]);
    assert_eq!(
        std::fs::read(m.join("d01/large.bin")).unwrap(),
        noise(7, 400_000)
    );
    drop(server);
    d.stop();
}

fn server_port(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    let i = text.find("127.0.0.1:").unwrap() + "127.0.0.1:".len();
    text[i..].split('/').next().unwrap().parse().unwrap()
}

#[test]
fn tokens_are_enforced_and_never_shown() {
    let f = fixture();
    let server_root = f.dir.join("srv");
    std::fs::create_dir_all(&server_root).unwrap();
    let work = new_worktree(&f.dir.join("work"));
    std::fs::write(work.join("secret.txt"), "classified\n").unwrap();
    publish_repo(&server_root, &work, "private");
    let server = GitServer::start(&server_root, &[]);
    server.set_tokens(&[("private", "right-token-4711")]);
    let token_file = f.dir.join("token");
    std::fs::write(&token_file, "right-token-4711\n").unwrap();
    let config = write_config(
        &f.dir,
        &f.mnt,
        &f.cache,
        &[
            entry(
                "good",
                server.url("private"),
                &format!("token_file = \"{}\"", token_file.display()),
            ),
            entry("bad", server.url("private"), "token = \"wrong-token-0815\""),
            entry("none", server.url("private"), ""),
        ],
        "",
    );
    let (code, out, err) = sh(
        &format!("{} --config {} check", repofs_bin(), config.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{out}{err}");
    let good = out.lines().find(|l| l.contains(" good:")).unwrap();
    assert!(good.starts_with("ok"), "{out}");
    let bad = out.lines().find(|l| l.contains(" bad:")).unwrap();
    assert!(
        bad.starts_with("FAIL") && bad.contains("rejected the token"),
        "{out}"
    );
    let none = out.lines().find(|l| l.contains(" none:")).unwrap();
    assert!(
        none.starts_with("FAIL") && none.contains("needs authentication"),
        "{out}"
    );

    let mounts = ["good", "bad", "none"].map(|n| f.mnt.join(n));
    let d = Daemon::start(&config, &mounts, &f.dir.join("daemon.log"));
    assert_eq!(
        std::fs::read_to_string(mounts[0].join("secret.txt")).unwrap(),
        "classified\n"
    );
    for m in &mounts[1..] {
        let e = std::fs::read_dir(m).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{}: {e}", m.display());
        let e = std::fs::read(m.join("secret.txt")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    }
    let log = d.log_text();
    assert!(log.contains("rejected the token"), "{log}");
    for text in [&log, &out, &err] {
        assert!(
            !text.contains("right-token-4711") && !text.contains("wrong-token-0815"),
            "a token leaked:\n{text}"
        );
    }
}

#[test]
fn sixteen_concurrent_readers() {
    let f = fixture();
    let server_root = f.dir.join("srv");
    std::fs::create_dir_all(&server_root).unwrap();
    let work = new_worktree(&f.dir.join("work"));
    for i in 0..16u64 {
        std::fs::write(
            work.join(format!("file{i:02}")),
            noise(1000 + i, 1024 * 1024 + i as usize),
        )
        .unwrap();
    }
    publish_repo(&server_root, &work, "conc");
    let server = GitServer::start(&server_root, &[]);
    let config = write_config(
        &f.dir,
        &f.mnt,
        &f.cache,
        &[entry("conc", server.url("conc"), "")],
        "",
    );
    let m = f.mnt.join("conc");
    let mut d = Daemon::start(&config, &[m.clone()], &f.dir.join("daemon.log"));
    let threads: Vec<_> = (0..16u64)
        .map(|i| {
            let p = m.join(format!("file{i:02}"));
            std::thread::spawn(move || {
                std::fs::read(p).map(|got| got == noise(1000 + i, 1024 * 1024 + i as usize))
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert!(t.join().unwrap().unwrap(), "reader {i} got wrong contents");
    }
    d.stop();
}

#[test]
fn server_failures_give_eio_and_recover() {
    let f = fixture();
    let server_root = f.dir.join("srv");
    std::fs::create_dir_all(&server_root).unwrap();
    let work = new_worktree(&f.dir.join("work"));
    // Large files: a listing (which a lookup makes) prefetches only small ones.
    for i in 0..3 {
        std::fs::write(work.join(format!("f{i}")), noise(i, 300_000)).unwrap();
    }
    publish_repo(&server_root, &work, "flaky");
    let server = GitServer::start(&server_root, &[]);
    let config = write_config(
        &f.dir,
        &f.mnt,
        &f.cache,
        &[entry("flaky", server.url("flaky"), "")],
        "",
    );
    let m = f.mnt.join("flaky");
    let mut d = Daemon::start(&config, &[m.clone()], &f.dir.join("daemon.log"));
    assert_eq!(std::fs::metadata(m.join("f2")).unwrap().len(), 300_000);

    for (mode, file, cause) in [("500", "f0", "HTTP 500"), ("hang", "f1", "timed out")] {
        server.set_fault(mode);
        let start = Instant::now();
        let e = std::fs::read(m.join(file)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{mode}: {e}");
        // request_timeout 3s x 2 attempts plus backoff: well under a minute.
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "{mode}: took {:?}",
            start.elapsed()
        );
        let log = d.log_text();
        assert!(
            log.contains(cause) && log.contains(file),
            "{mode}: log lacks cause/path:\n{log}"
        );
    }
    server.set_fault("ok");
    assert_eq!(std::fs::read(m.join("f0")).unwrap(), noise(0, 300_000));
    d.stop();
}

#[test]
fn missing_ref_and_bad_config_are_reported() {
    let f = fixture();
    let server_root = f.dir.join("srv");
    std::fs::create_dir_all(&server_root).unwrap();
    let work = new_worktree(&f.dir.join("work"));
    std::fs::write(work.join("a"), "a\n").unwrap();
    publish_repo(&server_root, &work, "refs");
    git(&work, &["tag", "-a", "v1.0", "-m", "release"]);
    git(&work, &["branch", "dev"]);
    publish_repo(&server_root, &work, "refs");
    let server = GitServer::start(&server_root, &[]);
    let config = write_config(
        &f.dir,
        &f.mnt,
        &f.cache,
        &[
            entry("nope", server.url("refs"), "ref = \"no-such-branch\""),
            entry("tag", server.url("refs"), "ref = \"v1.0\""),
            entry("branch", server.url("refs"), "ref = \"dev\""),
            entry("gone", server.url("does-not-exist"), ""),
        ],
        "",
    );
    let (code, out, _) = sh(
        &format!("{} --config {} check", repofs_bin(), config.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL nope: ref 'no-such-branch' does not exist"),
        "{out}"
    );
    assert!(
        out.contains("branches include: dev, main") || out.contains("branches include: main, dev"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("tag:")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("branch:")),
        "{out}"
    );
    assert!(out.contains("FAIL gone: repository not found"), "{out}");

    std::fs::write(
        &config,
        format!(
            "mount_root = \"{}\"\n[[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://127.0.0.1:1/x.git\"\nbranch = \"main\"\n",
            f.mnt.display()
        ),
    )
    .unwrap();
    let (code, _, err) = sh(
        &format!("{} --config {} mount", repofs_bin(), config.display()),
        Duration::from_secs(30),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("repository 'x'") && err.contains("`branch`"),
        "{err}"
    );
    assert!(!is_mounted(&f.mnt.join("x")));
}

#[test]
fn hostile_tree_entries_are_skipped_with_a_warning() {
    let f = fixture();
    let server_root = f.dir.join("srv");
    let bare = server_root.join("hostile.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let blob_path = f.dir.join("blob");
    std::fs::write(&blob_path, "payload\n").unwrap();
    let raw_id = |path: &Path| -> Vec<u8> {
        let id = git(&bare, &["hash-object", "-w", path.to_str().unwrap()]);
        (0..20)
            .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    };
    let raw_blob = raw_id(&blob_path);
    let other_path = f.dir.join("other");
    std::fs::write(&other_path, "the second dup\n").unwrap();
    let raw_other = raw_id(&other_path);
    // A tree no honest git would write: ".", "..", a name with a slash,
    // duplicates (one of them apart from the first, with other contents).
    let mut tree = Vec::new();
    for (name, id) in [
        (&b"."[..], &raw_blob),
        (b"..", &raw_blob),
        (b".GIT", &raw_blob),
        (b".git", &raw_blob),
        (b".git. .", &raw_blob),
        (b"GIT~1", &raw_blob),
        (b"a/b", &raw_blob),
        (b"dup", &raw_blob),
        (b"dup", &raw_blob),
        (b"ok.txt", &raw_blob),
        (b"dup", &raw_other),
    ] {
        tree.extend_from_slice(b"100644 ");
        tree.extend_from_slice(name);
        tree.push(0);
        tree.extend_from_slice(id);
    }
    let tree_path = f.dir.join("tree");
    std::fs::write(&tree_path, tree).unwrap();
    let tree_id = git(
        &bare,
        &[
            "hash-object",
            "-w",
            "-t",
            "tree",
            "--literally",
            tree_path.to_str().unwrap(),
        ],
    );
    let commit = git(&bare, &["commit-tree", &tree_id, "-m", "hostile"]);
    git(&bare, &["update-ref", "refs/heads/main", &commit]);

    let server = GitServer::start(&server_root, &[]);
    let config = write_config(
        &f.dir,
        &f.mnt,
        &f.cache,
        &[entry("hostile", server.url("hostile"), "")],
        "",
    );
    let m = f.mnt.join("hostile");
    let mut d = Daemon::start(&config, &[m.clone()], &f.dir.join("daemon.log"));
    let mut names: Vec<String> = std::fs::read_dir(&m)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["dup", "ok.txt"]);
    assert_eq!(
        std::fs::read_to_string(m.join("ok.txt")).unwrap(),
        "payload\n"
    );
    // Of the entries named alike, the first in the tree.
    assert_eq!(std::fs::read_to_string(m.join("dup")).unwrap(), "payload\n");
    // ".." still means the parent directory, never a tree entry.
    assert_eq!(
        std::fs::canonicalize(m.join("..")).unwrap(),
        std::fs::canonicalize(&f.mnt).unwrap()
    );
    let log = d.log_text();
    assert!(log.contains("cannot be shown"), "{log}");
    assert!(log.contains("name=.git\n"), "{log}");
    assert!(log.contains("duplicate tree entry"), "{log}");
    d.stop();
}

/// Python's `open()` asks every file for TCGETS: the answer is "not a
/// terminal", and the log stays quiet.
#[test]
fn python_open_loop_logs_no_warnings() {
    let f = fixture();
    let server_root = f.dir.join("srv");
    std::fs::create_dir_all(&server_root).unwrap();
    let work = new_worktree(&f.dir.join("work"));
    many_files(&work, 3, 20, 1000);
    publish_repo(&server_root, &work, "py");
    let server = GitServer::start(&server_root, &[]);
    let config = write_config(
        &f.dir,
        &f.mnt,
        &f.cache,
        &[entry("py", server.url("py"), "")],
        "",
    );
    let m = f.mnt.join("py");
    let mut d = Daemon::start(&config, &[m.clone()], &f.dir.join("daemon.log"));
    let script = format!(
        "import os\nn = 0\nfor root, _, files in os.walk({:?}):\n    for name in files:\n        with open(os.path.join(root, name), 'rb') as fh:\n            n += len(fh.read())\n        with open(os.path.join(root, name)) as fh:\n            fh.isatty()\nprint(n)\n",
        m.display().to_string()
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "60000");
    let log = d.log_text();
    assert!(!log.contains("ioctl"), "{log}");
    assert!(!log.contains(" WARN "), "{log}");
    d.stop();
}
