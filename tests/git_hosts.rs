//! End-to-end tests of laziness and exactness on every host profile: the
//! test server behaves like GitHub, GitLab, Bitbucket Server and plain git
//! (with and without object-info), and repofs must list large files without
//! downloading them, read every byte right, and never fetch a blob twice.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const MB: usize = 1_000_000;

/// These tests move hundreds of megabytes and count requests: run them one
/// at a time so that one's load does not push another into timeouts (and
/// their retries into the request counts).
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    work: PathBuf,
    srv: PathBuf,
}

/// A repository with `models/` (three large blobs and a small file), nested
/// sources, a symlink and an executable, published at `acme/models.git` and
/// (for Bitbucket) `scm/acme/models.git`.
fn fixture(large: usize) -> Fixture {
    require_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let work = new_worktree(&dir.join("work"));
    std::fs::create_dir_all(work.join("models")).unwrap();
    std::fs::write(work.join("models/a-config.json"), b"{\"layers\": 12}\n").unwrap();
    for i in 1..=3u64 {
        let data = noise(1000 + i, large + i as usize);
        std::fs::write(work.join(format!("models/model-{i}.bin")), data).unwrap();
    }
    for d in 0..3 {
        let sub = work.join(format!("src/pkg{d}/inner"));
        std::fs::create_dir_all(&sub).unwrap();
        for i in 0..20 {
            std::fs::write(
                sub.join(format!("m{i}.py")),
                noise((d * 100 + i) as u64, 300 + i * 37),
            )
            .unwrap();
        }
    }
    std::fs::write(work.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(work.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("models/a-config.json", work.join("config-link")).unwrap();
    let srv = dir.join("srv");
    std::fs::create_dir_all(srv.join("acme")).unwrap();
    std::fs::create_dir_all(srv.join("scm/acme")).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "models"]);
    for dest in ["acme/models.git", "scm/acme/models.git"] {
        git(
            &srv,
            &["clone", "-q", "--bare", work.to_str().unwrap(), dest],
        );
    }
    Fixture {
        _tmp: tmp,
        dir,
        work,
        srv,
    }
}

struct Profile {
    name: &'static str,
    server_args: &'static [&'static str],
    provider: &'static str,
    path: &'static str,
}

const PROFILES: &[Profile] = &[
    Profile {
        name: "github",
        server_args: &["--profile", "github"],
        provider: "github-enterprise",
        path: "acme/models",
    },
    Profile {
        name: "gitlab",
        server_args: &[],
        provider: "gitlab-enterprise",
        path: "acme/models",
    },
    Profile {
        name: "bitbucket",
        server_args: &[],
        provider: "bitbucket-server",
        path: "projects/ACME/repos/models",
    },
    Profile {
        name: "git",
        server_args: &[],
        provider: "git",
        path: "acme/models.git",
    },
    Profile {
        name: "git-object-info",
        server_args: &["--object-info"],
        provider: "git",
        path: "acme/models.git",
    },
];

fn config(f: &Fixture, tag: &str, port: u16, p: &Profile) -> (PathBuf, PathBuf) {
    let base = f.dir.join(tag);
    let mnt = base.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let text = format!(
        "mount_root = \"{}\"\ncache_dir = \"{}\"\ncache_size = \"4GiB\"\nrequest_timeout = \"20s\"\nconnect_timeout = \"2s\"\nmax_attempts = 2\n\n[[repository]]\nname = \"models\"\nprovider = \"{}\"\nurl = \"http://127.0.0.1:{port}/{}\"\n",
        mnt.display(),
        base.join("cache").display(),
        p.provider,
        p.path
    );
    let path = base.join("config.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, mnt.join("models"))
}

/// Every entry of `want` (a checkout) is in `got` with the same kind, size,
/// executable bit, symlink target and contents, and nothing else is.
fn same_tree(want: &Path, got: &Path) {
    let (code, out, err) = sh(
        &format!(
            "diff -r --no-dereference {} {} -x .git",
            want.display(),
            got.display()
        ),
        Duration::from_secs(600),
    );
    if code != 0 {
        let (_, links, _) = sh(
            &format!(
                "readlink {}/config-link {}/config-link; ls -la {}",
                want.display(),
                got.display(),
                got.display()
            ),
            Duration::from_secs(10),
        );
        panic!("diff -r differs:\n{out}{err}\n{links}");
    }
    let list = |root: &Path| {
        let (code, out, _) = sh(
            &format!(
                "cd {} && find . -path ./.git -prune -o -printf '%y %s %m %p %l\\n' | sort",
                root.display()
            ),
            Duration::from_secs(60),
        );
        assert_eq!(code, 0);
        // Modes differ by design (read-only mount): compare the executable bit.
        out.lines()
            .filter(|l| !l.ends_with(" ./.git ") && !l.contains(" . "))
            .map(|l| {
                let mut parts: Vec<String> = l.split(' ').map(String::from).collect();
                if parts[0] == "d" {
                    parts[1] = String::new(); // directory sizes are not content
                }
                parts[2] = if parts[0] == "f" {
                    ((u32::from_str_radix(&parts[2], 8).unwrap() & 0o100) != 0).to_string()
                } else {
                    String::new()
                };
                parts.join(" ")
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(list(want), list(got));
}

#[test]
fn every_host_profile_lists_large_files_without_downloading_them() {
    let _heavy = one_at_a_time();
    let f = fixture(80 * MB);
    for p in PROFILES {
        let server = GitServer::start(&f.srv, p.server_args);
        let (cfg, m) = config(&f, p.name, server.port, p);
        let mut d = Daemon::start(&cfg, &[m.clone()], &f.dir.join(format!("{}.log", p.name)));
        let (code, _, err) = sh(&format!("ls {}", m.display()), Duration::from_secs(60));
        assert_eq!(code, 0, "{}: {err}", p.name);
        server.reset_stats();
        let (code, out, err) = sh(
            &format!("ls -l {}/models", m.display()),
            Duration::from_secs(60),
        );
        assert_eq!(code, 0, "{}: {err}\n{}", p.name, d.log_text());
        for i in 1..=3 {
            let size = 80 * MB + i;
            assert!(
                out.lines()
                    .any(|l| l.contains(&format!(" {size} "))
                        && l.ends_with(&format!("model-{i}.bin"))),
                "{}: model-{i}.bin is not {size} bytes:\n{out}",
                p.name
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        let (requests, bytes) = server.stats("models");
        eprintln!(
            "{}: ls -l models/: {requests} requests, {bytes} bytes",
            p.name
        );
        assert!(bytes < 1_000_000, "{}: ls -l moved {bytes} bytes", p.name);
        assert!(requests <= 4, "{}: ls -l made {requests} requests", p.name);
        // Every byte, mode and link right; nothing delivered twice.
        if std::panic::catch_unwind(|| same_tree(&f.work, &m)).is_err() {
            panic!(
                "{}: the mount differs from the checkout:\n{}",
                p.name,
                d.log_text()
            );
        }
        assert!(
            server.max_delivered() <= 1,
            "{}: a blob was fetched twice",
            p.name
        );
        d.stop();
    }
}

#[test]
fn rate_limited_github_api_falls_back_to_git() {
    let _heavy = one_at_a_time();
    let f = fixture(3 * MB);
    let server = GitServer::start(&f.srv, &["--profile", "github", "--github-rate-limit", "0"]);
    let p = &PROFILES[0];
    let (cfg, m) = config(&f, "limited", server.port, p);
    let mut d = Daemon::start(&cfg, &[m.clone()], &f.dir.join("limited.log"));
    same_tree(&f.work, &m);
    assert!(d.log_text().contains("rate limited"), "{}", d.log_text());
    assert!(server.max_delivered() <= 1);
    d.stop();
}

/// A host API that reports wrong sizes: the contents win. A file listed
/// too short still reads whole, and its size is corrected.
#[test]
fn sizes_from_a_lying_api_are_corrected_by_the_contents() {
    let _heavy = one_at_a_time();
    let f = fixture(2 * MB);
    for skew in ["-3", "5", "-5000", "70000"] {
        let server = GitServer::start(&f.srv, &["--profile", "github", "--github-size-skew", skew]);
        let p = &PROFILES[0];
        let (cfg, m) = config(&f, &format!("skew{skew}"), server.port, p);
        let mut d = Daemon::start(&cfg, &[m.clone()], &f.dir.join(format!("skew{skew}.log")));
        let listed = std::fs::metadata(m.join("models/model-1.bin"))
            .unwrap()
            .len();
        let real = (2 * MB + 1) as u64;
        assert_eq!(
            listed as i64,
            real as i64 + skew.parse::<i64>().unwrap(),
            "the API's size is shown until the contents arrive"
        );
        let got = std::fs::read(m.join("models/model-1.bin")).unwrap();
        assert!(
            got == std::fs::read(f.work.join("models/model-1.bin")).unwrap(),
            "skew {skew}: wrong bytes ({} read)",
            got.len()
        );
        assert!(
            d.log_text().contains("disagrees with the contents"),
            "{}",
            d.log_text()
        );
        // The kernel was told to forget the old size.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(m.join("models/model-1.bin"))
            .unwrap()
            .len()
            != real
        {
            assert!(
                std::time::Instant::now() < deadline,
                "skew {skew}: the size was never corrected"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d.stop();
    }
}

#[test]
fn kill_during_a_large_fetch_leaves_nothing_behind_and_damaged_sizes_never_shorten() {
    let _heavy = one_at_a_time();
    let f = fixture(60 * MB);
    let server = GitServer::start(&f.srv, &[]);
    let p = &PROFILES[3];
    let (cfg, m) = config(&f, "kill", server.port, p);
    let cache = f.dir.join("kill/cache/content");
    let d = Daemon::start(&cfg, &[m.clone()], &f.dir.join("kill1.log"));
    // Start reading a large blob, then kill -9 in the middle.
    let mut child = std::process::Command::new("cat")
        .arg(m.join("models/model-2.bin"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    d.crash();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(&m)
        .status();

    // Damage every stored sizes entry.
    let mut damaged = 0;
    for shard in std::fs::read_dir(cache.join("objects")).unwrap() {
        for e in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let path = e.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("sizes-")
            {
                let mut data = std::fs::read(&path).unwrap();
                let n = data.len();
                data[n - 40] ^= 0x40; // inside the last record's size
                std::fs::write(&path, data).unwrap();
                damaged += 1;
            }
        }
    }
    // Small entries are packed into segments: damage those records too
    // (a byte of the data right after the key).
    for e in std::fs::read_dir(cache.join("packs")).unwrap() {
        let path = e.unwrap().path();
        let mut data = std::fs::read(&path).unwrap();
        let starts: Vec<usize> = data
            .windows(b"sizes-".len())
            .enumerate()
            .filter(|(_, w)| *w == b"sizes-")
            .map(|(i, _)| i)
            .collect();
        for at in &starts {
            let byte = at + "sizes-".len() + 40 + 3;
            if byte < data.len() {
                data[byte] ^= 0x40;
                damaged += 1;
            }
        }
        if !starts.is_empty() {
            std::fs::write(&path, data).unwrap();
        }
    }
    assert!(damaged > 0, "no sizes were stored");

    let mut d = Daemon::start(&cfg, &[m.clone()], &f.dir.join("kill2.log"));
    // Nothing the killed fetch wrote is left outside the cache's entries.
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    assert!(!cache.join("scratch").exists());
    if std::panic::catch_unwind(|| same_tree(&f.work, &m)).is_err() {
        panic!("after the restart:\n{}", d.log_text());
    }
    assert!(d.log_text().contains("damaged"), "{}", d.log_text());
    d.stop();
}

#[test]
fn concurrent_readers_and_walkers_on_fresh_mounts_get_every_byte_once() {
    let _heavy = one_at_a_time();
    require_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let work = new_worktree(&tmp.path().join("work"));
    let mut files = Vec::new();
    for d in 0..50 {
        let dir = work.join(format!("d{d:02}/sub"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..100 {
            // Every fifth directory starts with a large file: larger than the
            // socket buffers, so a size probe that stops at its header
            // really leaves it behind.
            let size = if i == 0 && d % 5 == 0 {
                12_000_000
            } else {
                500 + (i * 53) % 3000
            };
            let rel = format!("d{d:02}/sub/f{i:03}");
            std::fs::write(work.join(&rel), noise((d * 1000 + i) as u64, size)).unwrap();
            files.push((rel, (d * 1000 + i) as u64, size));
        }
    }
    let srv = tmp.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    publish_repo(&srv, &work, "walk");
    let server = GitServer::start(&srv, &[]);
    let files = std::sync::Arc::new(files);
    for run in 0..3 {
        server.reset_stats();
        let f = Fixture {
            _tmp: tempfile::tempdir().unwrap(),
            dir: tmp.path().to_path_buf(),
            work: work.clone(),
            srv: srv.clone(),
        };
        let p = Profile {
            name: "git",
            server_args: &[],
            provider: "git",
            path: "walk.git",
        };
        let (cfg, m) = config(&f, &format!("run{run}"), server.port, &p);
        let mut d = Daemon::start(
            &cfg,
            &[m.clone()],
            &tmp.path().join(format!("run{run}.log")),
        );
        let mut threads = Vec::new();
        for w in 0..16 {
            let m = m.clone();
            threads.push(std::thread::spawn(move || {
                let (code, out, err) = sh(
                    &format!("find {} -type f | wc -l", m.display()),
                    Duration::from_secs(300),
                );
                assert_eq!((code, out.trim()), (0, "5000"), "walker {w}: {err}");
            }));
        }
        for r in 0..64usize {
            let m = m.clone();
            let files = files.clone();
            threads.push(std::thread::spawn(move || {
                for k in 0..files.len() / 16 {
                    let (rel, seed, size) = &files[(r * 7919 + k * 16 + r) % files.len()];
                    let got = std::fs::read(m.join(rel))
                        .unwrap_or_else(|e| panic!("reader {r}: {rel}: {e}"));
                    assert!(got == noise(*seed, *size), "reader {r}: {rel}: wrong bytes");
                }
            }));
        }
        for t in threads {
            t.join()
                .unwrap_or_else(|_| panic!("run {run} failed:\n{}", d.log_text()));
        }
        assert!(
            server.max_delivered() <= 1,
            "run {run}: a blob was fetched twice: {}\n{}",
            server.wants_over(1).chars().take(300).collect::<String>(),
            d.log_text()
                .lines()
                .filter(|l| l.contains("fetching blobs")
                    || l.contains("WARN")
                    || l.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        d.stop();
    }
}
