//! End-to-end tests that nothing leaves its origin and nobody else reads
//! it: a repository's credentials reach only its own origin (not a host
//! named by a committed `.lfsconfig`, nor the target of a redirect), and
//! another local user reads nothing repofs wrote nor anything through a
//! writable view made without `allow_other`.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const TOKEN: &str = "origin-test-token-8d1f";
/// The user the "other local user" checks run as (nobody).
const OTHER_UID: &str = "65534";

/// A listener on a port of its own that records every request head and
/// answers each with `answer` (given the port), closing the connection.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start(answer: impl Fn(u16) -> String + Send + 'static) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = c.write_all(answer(port).as_bytes());
            }
        });
        Recorder { port, seen }
    }

    /// Answers 404 with an empty body.
    fn not_found() -> Recorder {
        Recorder::start(|_| {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
        })
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests that carried credentials: an Authorization header, or the
    /// token (or its base64 in Basic) anywhere in the head.
    fn with_credentials(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|h| {
                h.to_ascii_lowercase().contains("\nauthorization:")
                    || h.contains(TOKEN)
                    || h.contains("b3JpZ2luLXRlc3QtdG9rZW4tOGQxZg")
            })
            .collect()
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    git: GitServer,
}

/// A directory others may pass through (so that only repofs's own modes
/// keep them out), and a git server.
fn fixture() -> Fixture {
    require_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let git = GitServer::start(&srv, &[]);
    Fixture {
        _tmp: tmp,
        dir,
        git,
    }
}

/// Publishes `files` as the private repository `name` (token `TOKEN`).
fn private_repo(f: &Fixture, name: &str, files: &[(&str, &[u8])]) {
    let work = new_worktree(&f.dir.join(format!("work-{name}")));
    for (path, data) in files {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    git(&work, &["add", "-A"]);
    publish_committed(&f.git.root, &work, name);
    f.git.set_tokens(&[(name, TOKEN)]);
}

fn config(f: &Fixture, name: &str, url: String, extra: &str, top: &str) -> PathBuf {
    write_config(
        &f.dir,
        &f.dir.join("mnt"),
        &f.dir.join("cache"),
        &[RepoEntry {
            name: name.into(),
            url,
            extra: format!("token = \"{TOKEN}\"\n{extra}"),
        }],
        top,
    )
}

fn check(config: &Path, name: &str) -> (bool, String) {
    run_repofs(&["--config", config.to_str().unwrap(), "check", name], &[])
}

/// An LFS pointer to 5 bytes that exist nowhere.
fn pointer() -> Vec<u8> {
    b"version https://git-lfs.github.com/spec/v1\noid sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\nsize 5\n".to_vec()
}

#[test]
fn an_lfsconfig_naming_another_origin_gets_no_credentials() {
    let f = fixture();
    let thief = Recorder::not_found();
    let lfsconfig = format!("[lfs]\n\turl = http://127.0.0.1:{}/steal\n", thief.port);
    private_repo(
        &f,
        "lfsrepo",
        &[
            (".lfsconfig", lfsconfig.as_bytes()),
            ("model.bin", &pointer()),
            ("README", b"hello\n"),
        ],
    );
    let cfg = config(&f, "lfsrepo", f.git.url("lfsrepo"), "", "");
    let mnt = f.dir.join("mnt/lfsrepo");
    let d = Daemon::start(&cfg, std::slice::from_ref(&mnt), &f.dir.join("log"));
    assert_eq!(std::fs::read(mnt.join("README")).unwrap(), b"hello\n");
    // The object exists nowhere: the read fails, but only after asking the
    // repository's LFS server, anonymously.
    assert!(std::fs::read(mnt.join("model.bin")).is_err());
    let asked = thief.requests();
    assert!(
        asked
            .iter()
            .any(|h| h.starts_with("POST /steal/objects/batch")),
        "the .lfsconfig endpoint was never asked: {asked:?}\n{}",
        d.log_text()
    );
    assert_eq!(thief.with_credentials(), Vec::<String>::new());
    let log = d.log_text();
    assert!(
        log.contains("on another origin than the clone URL"),
        "{log}"
    );
    assert!(!log.contains(TOKEN));
    drop(d);

    // `check` follows the same rule, and says so.
    let before = thief.requests().len();
    let (ok, out) = check(&cfg, "lfsrepo");
    assert!(ok, "{out}");
    assert!(out.contains("another origin"), "{out}");
    assert!(
        thief.requests().len() > before,
        "check did not probe the endpoint: {out}"
    );
    assert_eq!(thief.with_credentials(), Vec::<String>::new());

    // The operator, not the repository, can trust another LFS endpoint.
    let trusted = Recorder::not_found();
    let url = format!("http://127.0.0.1:{}/trusted", trusted.port);
    let cfg = config(
        &f,
        "lfsrepo",
        f.git.url("lfsrepo"),
        &format!("lfs_url = \"{url}\""),
        "",
    );
    let (_, out) = check(&cfg, "lfsrepo");
    assert!(
        trusted
            .requests()
            .iter()
            .any(|h| h.starts_with("POST /trusted/objects/batch")),
        "{out}"
    );
    assert_eq!(
        trusted.with_credentials().len(),
        trusted.requests().len(),
        "{out}"
    );
    assert!(!out.contains("another origin"), "{out}");
}

#[test]
fn a_redirect_to_another_origin_drops_credentials() {
    let f = fixture();
    let elsewhere = Recorder::not_found();
    let target = elsewhere.port;
    let redirector = Recorder::start(move |_| {
        format!(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{target}/moved/r.git/info/refs?service=git-upload-pack\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    });
    let url = format!("http://127.0.0.1:{}/r.git", redirector.port);
    let cfg = config(&f, "moved", url, "", "");
    let (ok, out) = check(&cfg, "moved");
    assert!(!ok, "{out}");
    // The clone URL's own origin gets the token; the redirect's target not.
    assert!(
        !redirector.with_credentials().is_empty(),
        "{:?}",
        redirector.requests()
    );
    assert!(
        !elsewhere.requests().is_empty(),
        "the redirect was not followed: {out}"
    );
    assert_eq!(elsewhere.with_credentials(), Vec::<String>::new());
    assert!(!out.contains(TOKEN));
}

/// Runs `cmd` under `sh -c` as the other user; returns (exit code, stdout,
/// stderr).
fn as_other_user(cmd: &str) -> (i32, String, String) {
    sh(
        &format!("setpriv --reuid={OTHER_UID} --regid={OTHER_UID} --clear-groups sh -c '{cmd}'"),
        Duration::from_secs(60),
    )
}

/// Every path under `dir` with group or other permission bits set.
fn open_to_others(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            if !m.file_type().is_symlink() && m.mode() & 0o077 != 0 {
                out.push(format!("{} {:o}", e.path().display(), m.mode() & 0o7777));
            }
        }
    }
    out
}

#[test]
fn another_user_reads_nothing_repofs_wrote() {
    let f = fixture();
    let secret = b"SECRET-CONTENTS-of-a-private-repository\n".repeat(1000);
    let small = b"SECRET-small-file\n";
    private_repo(
        &f,
        "private",
        &[
            ("big.txt", &secret[..]),
            ("small.txt", small),
            ("dir/x.txt", small),
        ],
    );
    // A cache directory left open by an older version, with a file in it.
    let cache = f.dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(cache.join("old-SECRET"), b"SECRET-left-by-an-older-version").unwrap();
    std::fs::set_permissions(
        cache.join("old-SECRET"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let cfg = config(&f, "private", f.git.url("private"), "", "");
    let mnt = f.dir.join("mnt/private");
    // Started with a permissive umask: the daemon's own wins.
    let d = Daemon::start_args(
        &["--config", cfg.to_str().unwrap(), "mount"],
        std::slice::from_ref(&mnt),
        &f.dir.join("log"),
        &[],
    );
    assert_eq!(std::fs::read(mnt.join("big.txt")).unwrap(), secret);
    assert_eq!(std::fs::read(mnt.join("dir/x.txt")).unwrap(), small);
    let (code, _, err) = sh(
        &format!("{} status --config {}", repofs_bin(), cfg.display()),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        d.log_text().contains("cache_dir was open to other users"),
        "{}",
        d.log_text()
    );
    assert_eq!(std::fs::metadata(&cache).unwrap().mode() & 0o777, 0o700);
    // Everything repofs created is its user's alone (the file planted above
    // keeps its mode, but is out of reach behind the 0700 directory).
    let open: Vec<String> = open_to_others(&cache)
        .into_iter()
        .filter(|p| !p.contains("old-SECRET"))
        .collect();
    assert_eq!(open, Vec::<String>::new());

    // The other user: no file under the cache, nothing through the mount.
    let cmd = format!(
        "(find {} -type f -exec cat {{}} + ; cat {}/big.txt) | tr -cd \"[:print:]\\n\"",
        cache.display(),
        mnt.display()
    );
    let (_, out, err) = as_other_user(&cmd);
    assert!(
        !out.contains("SECRET"),
        "the other user read: {}",
        &out[..out.len().min(200)]
    );
    assert!(err.contains("Permission denied"), "{err}");
    // The check is real: as root the same command reads the cache.
    let (_, out, _) = sh(&cmd, Duration::from_secs(60));
    assert!(
        out.contains("SECRET-CONTENTS"),
        "root read nothing: the check proves nothing"
    );

    // A writable view made without allow_other is as closed as its mount.
    let view = f.dir.join("view");
    let (code, _, err) = sh(
        &format!(
            "{} --config {} overlay private {}",
            repofs_bin(),
            cfg.display(),
            view.display()
        ),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(view.join("small.txt")).unwrap(), small);
    let (code, out, err) = as_other_user(&format!(
        "cat {}/small.txt; ls {}",
        view.display(),
        view.display()
    ));
    let removed = sh(
        &format!("{} overlay --remove {}", repofs_bin(), view.display()),
        Duration::from_secs(60),
    );
    assert_ne!(code, 0);
    assert!(
        !out.contains("SECRET"),
        "the other user read through the view: {out}"
    );
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(removed.0, 0, "{}", removed.2);
}

#[test]
fn a_cache_dir_of_another_user_is_refused() {
    let f = fixture();
    private_repo(&f, "private", &[("a.txt", b"a\n")]);
    let cache = f.dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::os::unix::fs::chown(&cache, Some(65534), Some(65534)).unwrap();
    let cfg = config(&f, "private", f.git.url("private"), "", "");
    let out = Command::new("timeout")
        .args([
            "60",
            repofs_bin(),
            "--config",
            cfg.to_str().unwrap(),
            "mount",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("belongs to uid 65534"), "{err}");
    assert!(!is_mounted(&f.dir.join("mnt/private")));
}
