//! The always-on service: the systemd unit, sd_notify readiness, SIGHUP
//! reloads, recovery of a crashed daemon's mount point, `repofs status`, and
//! refusing a world-readable config that holds a secret.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    server: GitServer,
}

/// A server with repositories `a`, `b`, `c` (branch `main` and `dev`).
fn env() -> Env {
    require_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    for name in ["a", "b", "c", "d"] {
        let work = new_worktree(&dir.join(format!("work-{name}")));
        std::fs::write(work.join("file.txt"), format!("{name} on main\n")).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "main"]);
        git(&work, &["checkout", "-q", "-b", "dev"]);
        std::fs::write(work.join("file.txt"), format!("{name} on dev\n")).unwrap();
        publish_repo(&srv, &work, name);
    }
    let server = GitServer::start(&srv, &[]);
    Env {
        _tmp: tmp,
        dir,
        server,
    }
}

fn entry(e: &Env, name: &str, extra: &str) -> RepoEntry {
    RepoEntry {
        name: name.into(),
        url: e.server.url(name),
        extra: extra.into(),
    }
}

fn mnt(e: &Env, name: &str) -> PathBuf {
    e.dir.join("mnt").join(name)
}

fn cfg(e: &Env, repos: &[RepoEntry]) -> PathBuf {
    write_config(&e.dir, &e.dir.join("mnt"), &e.dir.join("cache"), repos, "")
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/repofs.service"),
    )
    .unwrap();
    for needle in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CacheDirectory=repofs",
        "RuntimeDirectory=repofs",
        "ConfigurationDirectory=repofs",
        "LoadCredential=",
        "Restart=on-failure",
        "DeviceAllow=/dev/fuse",
    ] {
        assert!(unit.contains(needle), "the unit lacks {needle}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("repofs.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/repofs", repofs_bin())).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd) is needed; .ci/run installs it");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {text}"
    );
    assert!(
        !text.contains("repofs.service:"),
        "warnings about the unit: {text}"
    );
}

#[test]
fn ready_is_sent_after_the_mounts_are_up() {
    let e = env();
    let config = cfg(&e, &[entry(&e, "a", ""), entry(&e, "b", "")]);
    let sock_path = e.dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mounts = vec![mnt(&e, "a"), mnt(&e, "b")];
    let watched = mounts.clone();
    let listener = std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        let n = sock.recv(&mut buf).expect("no READY=1 within 30 s");
        let all_mounted = watched.iter().all(|m| is_mounted(m));
        (String::from_utf8_lossy(&buf[..n]).to_string(), all_mounted)
    });
    let mut d = Daemon::start_env(
        &config,
        &mounts,
        &e.dir.join("daemon.log"),
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let (msg, all_mounted) = listener.join().unwrap();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(msg.contains("STATUS=2 repositories mounted"), "{msg}");
    assert!(all_mounted, "READY=1 came before the mounts were up");
    d.stop();
}

/// Each reload that remounts a repository closes the old session: open
/// descriptors and memory stay flat over 100 reloads.
#[test]
fn a_hundred_reloads_leak_no_descriptors() {
    let e = env();
    let m = mnt(&e, "a");
    let config = cfg(&e, &[entry(&e, "a", "ref = \"main\"")]);
    let mut d = Daemon::start(&config, &[m.clone()], &e.dir.join("daemon.log"));
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let rss = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    let mut before = (0, 0);
    for i in 1..=100 {
        let branch = if i % 2 == 0 { "main" } else { "dev" };
        cfg(&e, &[entry(&e, "a", &format!("ref = \"{branch}\""))]);
        d.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.log_text().matches("config reloaded").count() < i {
            assert!(
                Instant::now() < deadline,
                "reload {i} did not finish:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if i % 10 == 0 {
            assert_eq!(
                std::fs::read_to_string(m.join("file.txt")).unwrap(),
                format!("a on {branch}\n")
            );
        }
        if i == 10 {
            std::thread::sleep(Duration::from_millis(500));
            before = (fds(d.pid()), rss(d.pid()));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = (fds(d.pid()), rss(d.pid()));
    eprintln!(
        "descriptors {} -> {}, RSS {} kB -> {} kB",
        before.0, after.0, before.1, after.1
    );
    // Every old source was released, not only its session.
    d.wait_log("repository source released", 10);
    assert!(
        d.log_text().matches("repository source released").count() >= 90,
        "{}",
        d.log_text()
    );
    // The daemon's one HTTP client pool keeps up to 8 idle connections per
    // server (src/fetch/http.rs) whatever the number of repositories and
    // reloads: a leak would grow with the 90 reloads, the pool cannot.
    assert!(
        after.0 <= before.0 + 4 + 8,
        "descriptors grew from {} to {} over 90 reloads",
        before.0,
        after.0
    );
    assert!(
        after.1 <= before.1 + 16_000,
        "RSS grew from {} kB to {} kB over 90 reloads",
        before.1,
        after.1
    );
    d.stop();
}

#[test]
fn sighup_reloads_only_what_changed() {
    let e = env();
    let config = cfg(
        &e,
        &[entry(&e, "a", ""), entry(&e, "b", ""), entry(&e, "c", "")],
    );
    let mut d = Daemon::start(
        &config,
        &[mnt(&e, "a"), mnt(&e, "b"), mnt(&e, "c")],
        &e.dir.join("daemon.log"),
    );
    assert_eq!(
        std::fs::read_to_string(mnt(&e, "c").join("file.txt")).unwrap(),
        "c on dev\n"
    );
    // A reader keeps a file open in `a`, which does not change.
    let mut open_in_a = std::fs::File::open(mnt(&e, "a").join("file.txt")).unwrap();
    let dev_a = std::fs::metadata(mnt(&e, "a")).unwrap().ino_dev();

    // An invalid config is rejected as a whole: nothing changes.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap() + "\nbogus_key = 1\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log("reload rejected", 20);
    for n in ["a", "b", "c"] {
        assert!(
            is_mounted(&mnt(&e, n)),
            "{n} was unmounted by a rejected reload"
        );
    }

    // Remove b, change c's ref, add d.
    let config = cfg(
        &e,
        &[
            entry(&e, "a", ""),
            entry(&e, "c", "ref = \"main\""),
            entry(&e, "d", ""),
        ],
    );
    d.signal(libc::SIGHUP);
    d.wait_log("config reloaded", 30);
    assert!(!is_mounted(&mnt(&e, "b")), "b is still mounted");
    assert!(is_mounted(&mnt(&e, "d")));
    assert_eq!(
        std::fs::read_to_string(mnt(&e, "d").join("file.txt")).unwrap(),
        "d on dev\n"
    );
    assert_eq!(
        std::fs::read_to_string(mnt(&e, "c").join("file.txt")).unwrap(),
        "c on main\n"
    );
    // `a` was not disturbed: same mount, and the open file still reads.
    assert_eq!(std::fs::metadata(mnt(&e, "a")).unwrap().ino_dev(), dev_a);
    let mut text = String::new();
    open_in_a.read_to_string(&mut text).unwrap();
    assert_eq!(text, "a on dev\n");
    assert!(
        d.log_text().contains("added=1 removed=1 changed=1"),
        "{}",
        d.log_text()
    );
    let _ = config;

    // repofs status shows every repository and the cache.
    let (code, out, err) = sh(
        &format!(
            "{} --config {} status",
            repofs_bin(),
            e.dir.join("config.toml").display()
        ),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{err}");
    for n in ["a", "c", "d"] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(n) && l.contains("mounted")),
            "{out}"
        );
    }
    assert!(
        !out.lines().any(|l| l.trim_start().starts_with("b ")),
        "{out}"
    );
    assert!(out.contains("cache:"), "{out}");

    // SIGTERM with a file still open: unmounted lazily, exit 0.
    let _still_open = std::fs::File::open(mnt(&e, "d").join("file.txt")).unwrap();
    d.stop();
    let (code, _, err) = sh(
        &format!(
            "{} --config {} status",
            repofs_bin(),
            e.dir.join("config.toml").display()
        ),
        Duration::from_secs(30),
    );
    assert_eq!(code, 3);
    assert!(err.contains("not running"), "{err}");
}

trait InoDev {
    fn ino_dev(&self) -> (u64, u64);
}

impl InoDev for std::fs::Metadata {
    fn ino_dev(&self) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        (self.ino(), self.dev())
    }
}

#[test]
fn a_crashed_daemons_mount_point_is_recovered() {
    let e = env();
    let config = cfg(&e, &[entry(&e, "a", "")]);
    let m = mnt(&e, "a");
    let d = Daemon::start(&config, &[m.clone()], &e.dir.join("daemon1.log"));
    assert!(std::fs::read(m.join("file.txt")).is_ok());
    d.crash();
    let err = std::fs::read_dir(&m).map(|_| ()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let mut d = Daemon::start(&config, &[m.clone()], &e.dir.join("daemon2.log"));
    // The stale mount is in the mount table already: wait for the new one.
    d.wait_log("repofs is running", 30);
    assert_eq!(
        std::fs::read_to_string(m.join("file.txt")).unwrap(),
        "a on dev\n"
    );
    assert!(d.log_text().contains("stale mount"), "{}", d.log_text());
    d.stop();
}

#[test]
fn a_world_readable_config_with_a_token_is_refused() {
    let e = env();
    let config = cfg(&e, &[entry(&e, "a", "token = \"hunter2-secret\"")]);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = sh(
        &format!("{} --config {} mount", repofs_bin(), config.display()),
        Duration::from_secs(30),
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("readable by every user") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains("hunter2-secret"), "{err}");
    assert!(!is_mounted(&mnt(&e, "a")));
}

#[test]
fn a_followed_branch_moves_and_open_files_keep_their_contents() {
    let e = env();
    let work = e.dir.join("work-a");
    let pinned = git(&e.dir.join("work-b"), &["rev-parse", "HEAD"]);
    let config = cfg(
        &e,
        &[
            entry(&e, "a", "ref = \"dev\"\nrefresh = \"1s\""),
            entry(&e, "b", &format!("ref = \"{pinned}\"")),
        ],
    );
    let (ma, mb) = (mnt(&e, "a"), mnt(&e, "b"));
    let mut d = Daemon::start(
        &config,
        &[ma.clone(), mb.clone()],
        &e.dir.join("daemon.log"),
    );
    assert_eq!(
        std::fs::read_to_string(ma.join("file.txt")).unwrap(),
        "a on dev\n"
    );
    assert_eq!(
        std::fs::read_to_string(mb.join("file.txt")).unwrap(),
        "b on dev\n"
    );
    let mut old = std::fs::File::open(ma.join("file.txt")).unwrap();

    // Push a new commit to `dev`.
    std::fs::write(work.join("file.txt"), "a on dev, second commit, longer\n").unwrap();
    std::fs::write(work.join("new.txt"), "new\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "second"]);
    let bare = e.server.root.join("a.git");
    git(&work, &["push", "-q", bare.to_str().unwrap(), "dev"]);
    e.server.reset_stats();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Names cached by the kernel expire within min(refresh, 5 s).
    let moved = || {
        ma.join("new.txt").exists()
            && std::fs::read_to_string(ma.join("file.txt")).unwrap()
                == "a on dev, second commit, longer\n"
    };
    while !moved() {
        assert!(
            std::time::Instant::now() < deadline,
            "the mount never showed the new commit:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(std::fs::metadata(ma.join("file.txt")).unwrap().len(), 32);
    // The file opened before the move reads its old contents to the end.
    let mut text = String::new();
    old.read_to_string(&mut text).unwrap();
    assert_eq!(text, "a on dev\n");
    assert!(d.log_text().contains("the ref moved"), "{}", d.log_text());
    // The pinned commit never polls.
    assert_eq!(e.server.stats("b"), (0, 0), "a pinned commit was polled");
    d.stop();
}

#[test]
fn github_app_tokens_are_obtained_checked_and_renewed() {
    require_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let srv = dir.join("srv");
    for name in ["a", "b"] {
        let work = new_worktree(&dir.join(format!("work-{name}")));
        std::fs::write(work.join("one.txt"), "one\n").unwrap();
        std::fs::write(work.join("two.txt"), "two\n").unwrap();
        std::fs::create_dir_all(srv.join("acme")).unwrap();
        publish_repo(&srv.join("acme"), &work, name);
    }
    let openssl = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "openssl {args:?}");
    };
    let (key, other_key, public) = (
        dir.join("app.pem"),
        dir.join("other.pem"),
        dir.join("app.pub"),
    );
    openssl(&[
        "genrsa",
        "-traditional",
        "-out",
        key.to_str().unwrap(),
        "2048",
    ]);
    openssl(&["genrsa", "-out", other_key.to_str().unwrap(), "2048"]);
    openssl(&[
        "rsa",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let server = GitServer::start(
        &srv,
        &[
            "--app-public-key",
            public.to_str().unwrap(),
            "--app-id",
            "42",
            "--app-installation",
            "7",
            "--app-token-ttl",
            "4",
            "--app-repos",
            "a",
        ],
    );
    server.set_tokens(&[
        ("a", "no-static-token-works"),
        ("b", "no-static-token-works"),
    ]);
    let url = |name: &str| format!("http://127.0.0.1:{}/acme/{name}", server.port);
    let app = |id: u64, inst: u64, k: &Path| {
        format!(
            "provider = \"github-enterprise\"\ngithub_app = {{ app_id = {id}, installation_id = {inst}, private_key_file = \"{}\" }}",
            k.display()
        )
    };
    // write_config only writes `git` entries: build this file by hand.
    let mut text = format!(
        "mount_root = \"{}\"\ncache_dir = \"{}\"\nrequest_timeout = \"3s\"\nmax_attempts = 2\n",
        dir.join("mnt").display(),
        dir.join("cache").display()
    );
    for (name, repo, body) in [
        ("app", "a", app(42, 7, &key)),
        ("wrongid", "a", app(43, 7, &key)),
        ("wrongkey", "a", app(42, 7, &other_key)),
        ("noinst", "a", app(42, 8, &key)),
        ("noaccess", "b", app(42, 7, &key)),
    ] {
        text.push_str(&format!(
            "[[repository]]\nname = \"{name}\"\nurl = \"{}\"\n{body}\n",
            url(repo)
        ));
    }
    let config = dir.join("config.toml");
    std::fs::write(&config, text).unwrap();
    let (code, out, err) = sh(
        &format!("{} --config {} check", repofs_bin(), config.display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{out}{err}");
    let line = |n: &str| {
        out.lines()
            .find(|l| l.contains(&format!(" {n}:")))
            .unwrap_or_else(|| panic!("{out}"))
            .to_string()
    };
    assert!(line("app").starts_with("ok"), "{out}");
    assert!(
        line("wrongid").starts_with("FAIL") && line("wrongid").contains("app_id 43 is wrong"),
        "{out}"
    );
    assert!(
        line("wrongkey").starts_with("FAIL")
            && line("wrongkey").contains("private_key_file does not belong"),
        "{out}"
    );
    assert!(
        line("noinst").starts_with("FAIL")
            && line("noinst").contains("installation 8 was not found"),
        "{out}"
    );
    assert!(
        line("noaccess").starts_with("FAIL")
            && line("noaccess").contains("has no access to this repository"),
        "{out}"
    );
    assert!(
        !out.contains("ghs_") && !err.contains("ghs_"),
        "a token leaked: {out}{err}"
    );

    // Mounted: tokens live 4 s and are renewed before they expire.
    let m = dir.join("mnt/app");
    let mut d = Daemon::start(&config, &[m.clone()], &dir.join("daemon.log"));
    assert_eq!(std::fs::read_to_string(m.join("one.txt")).unwrap(), "one\n");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(std::fs::read_to_string(m.join("two.txt")).unwrap(), "two\n");
    let issued = server.app_issued();
    assert!(
        issued >= 2,
        "the installation token was not renewed ({issued} issued)"
    );
    assert!(
        !d.log_text().contains("ghs_"),
        "a token leaked into the log"
    );
    d.stop();
}

#[test]
fn repo_commands_edit_the_config_and_reload_the_daemon() {
    let e = env();
    let config = cfg(&e, &[entry(&e, "a", "token = \"inline-secret-123\"")]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = format!("# managed by hand and by `repofs repo`\n{text}");
    std::fs::write(&config, &text).unwrap();
    let original = text.clone();
    let mut d = Daemon::start(&config, &[mnt(&e, "a")], &e.dir.join("daemon.log"));
    let run = |args: &str| {
        sh(
            &format!("{} --config {} {args}", repofs_bin(), config.display()),
            Duration::from_secs(30),
        )
    };

    let (code, out, err) = run(&format!(
        "repo add b --provider git --url {} --description 'second one' --reload",
        e.server.url("b")
    ));
    assert_eq!(code, 0, "{out}{err}");
    d.wait_log("config reloaded", 30);
    assert!(is_mounted(&mnt(&e, "b")));
    assert_eq!(
        std::fs::read_to_string(mnt(&e, "b").join("file.txt")).unwrap(),
        "b on dev\n"
    );

    let (code, out, _) = run("repo list");
    assert_eq!(code, 0);
    assert!(
        out.contains("a\tgit") && out.contains("b\tgit") && out.contains("second one"),
        "{out}"
    );
    assert!(
        out.contains("token (inline)") && !out.contains("inline-secret-123"),
        "{out}"
    );

    // An invalid edit is refused and the file is untouched.
    let before = std::fs::read_to_string(&config).unwrap();
    let (code, _, err) = run("repo add 'bad name' --provider git --url http://h/x.git");
    assert_eq!(code, 2);
    assert!(err.contains("invalid"), "{err}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);

    let (code, out, err) = run("repo remove b --reload");
    assert_eq!(code, 0, "{out}{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while is_mounted(&mnt(&e, "b")) {
        assert!(
            std::time::Instant::now() < deadline,
            "b is still mounted:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back to the file we started with, byte for byte, comments and all.
    assert_eq!(std::fs::read_to_string(&config).unwrap(), original);
    let (code, _, _) = run("repo clear-credentials a");
    assert_eq!(code, 0);
    assert!(
        !std::fs::read_to_string(&config)
            .unwrap()
            .contains("inline-secret-123")
    );
    d.stop();
}
