//! GitLab OAuth application grants end to end: `repofs login gitlab`
//! (device flow) against the Authlib provider of tests/support/oauth_server.py
//! on the git server's own origin, and the daemon reading a private
//! repository with the grant across expiries, a crash in the middle of a
//! refresh, and a revocation.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CLIENT: &str = "repofs-test";

/// The git server with the OAuth provider; `extra` adds server options.
fn gitlab(root: &Path, ttl: u32, extra: &[&str]) -> GitServer {
    let ttl = ttl.to_string();
    let mut args = vec![
        "--oauth",
        "--oauth-client-id",
        CLIENT,
        "--oauth-interval",
        "1",
        "--oauth-access-ttl",
        &ttl,
    ];
    args.extend_from_slice(extra);
    GitServer::start(root, &args)
}

fn stats(s: &GitServer) -> serde_json::Value {
    serde_json::from_str(&http_request(s.port, "GET", "/_oauth/stats")).unwrap()
}

fn stat(s: &GitServer, key: &str) -> u64 {
    stats(s)[key].as_u64().unwrap()
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `repofs login gitlab`: its output lines arrive on `lines`.
struct Login {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Login {
    fn start(server: &GitServer, grant: &Path) -> Login {
        let mut child = Command::new(repofs_bin())
            .args([
                "login",
                "gitlab",
                "--url",
                &format!("http://127.0.0.1:{}", server.port),
                "--client-id",
                CLIENT,
                "--grant-file",
                grant.to_str().unwrap(),
            ])
            .env("REPOFS_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        Login {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The user code printed with the verification URL.
    fn user_code(&mut self, port: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let l = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no user code printed: {:?}", self.seen));
            self.seen.push(l.clone());
            if let Some(rest) = l.strip_prefix(&format!(
                "To authorize repofs, open http://127.0.0.1:{port}/oauth/device and enter the code "
            )) {
                return rest.trim().to_string();
            }
        }
    }

    /// Waits for the exit: (success, everything printed).
    fn finish(mut self, secs: u64) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("login did not finish: {:?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(200));
        self.seen.extend(self.lines.try_iter());
        (status.success(), self.seen.join("\n"))
    }
}

/// Logs in with the approval given at once; returns the grant file.
fn login(server: &GitServer, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let grant = dir.join("grant.json");
    let mut l = Login::start(server, &grant);
    let code = l.user_code(server.port);
    http_request(
        server.port,
        "POST",
        &format!("/_oauth/approve?user_code={code}"),
    );
    let (ok, out) = l.finish(30);
    assert!(ok, "{out}");
    grant
}

fn grant_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn second() -> String {
    "second file\n".repeat(200)
}

/// Another blob than any at the root (a listing may fetch those for sizes).
fn third() -> String {
    "third file\n".repeat(200)
}

/// A private repository `acme/models` with `a.txt`, served with the OAuth
/// provider; the static token in _auth.json is given to nobody.
struct Fixture {
    scratch: Scratch,
    server: GitServer,
    work: PathBuf,
}

fn fixture(ttl: u32, extra: &[&str]) -> Fixture {
    require_prerequisites();
    let scratch = Scratch::new();
    let srv = scratch.srv();
    std::fs::create_dir_all(srv.join("acme")).unwrap();
    let work = new_worktree(&scratch.work());
    std::fs::write(work.join("a.txt"), "first file\n").unwrap();
    // Over the LFS pointer size: read only when opened.
    std::fs::write(work.join("b.txt"), second()).unwrap();
    // Never listed before the test needs it: its sizes and contents need
    // the server (a listing may fetch the files of a directory for sizes).
    std::fs::create_dir_all(work.join("deep")).unwrap();
    std::fs::write(work.join("deep/c.txt"), third()).unwrap();
    publish_repo(&srv, &work, "acme/models");
    std::fs::write(
        srv.join("_auth.json"),
        r#"{"models.git": "static-token-nobody-has"}"#,
    )
    .unwrap();
    let server = gitlab(&srv, ttl, extra);
    Fixture {
        scratch,
        server,
        work,
    }
}

impl Fixture {
    fn dir(&self) -> &Path {
        self.scratch.dir()
    }

    /// A config with `names` (each a mount of acme/models with the grant).
    fn config(&self, grant: &Path, names: &[&str]) -> (PathBuf, Vec<PathBuf>) {
        let mnt = self.dir().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut text = format!(
            "mount_root = \"{}\"\ncache_dir = \"{}\"\nrequest_timeout = \"5s\"\nconnect_timeout = \"2s\"\nmax_attempts = 2\n",
            mnt.display(),
            self.dir().join("cache").display()
        );
        for n in names {
            text.push_str(&format!(
                "\n[[repository]]\nname = \"{n}\"\nprovider = \"gitlab-enterprise\"\nurl = \"http://127.0.0.1:{}/acme/models\"\nrefresh = \"1s\"\ngitlab_app = {{ client_id = \"{CLIENT}\", grant_file = \"{}\" }}\n",
                self.server.port,
                grant.display()
            ));
        }
        let path = self.dir().join("config.toml");
        std::fs::write(&path, text).unwrap();
        (path, names.iter().map(|n| mnt.join(n)).collect())
    }

    fn commit_file(&self, name: &str, text: &str) {
        std::fs::write(self.work.join(name), text).unwrap();
        publish_repo(&self.scratch.srv(), &self.work, "acme/models");
    }
}

/// Reads `path` until it has `want` (the mount follows the branch).
fn read_eventually(path: &Path, want: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match std::fs::read_to_string(path) {
            Ok(t) if t == want => return,
            other => assert!(Instant::now() < deadline, "{}: {other:?}", path.display()),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn login_polls_as_told_through_pending_and_slow_down() {
    let f = fixture(7200, &[]);
    let grant = f.dir().join("grant.json");
    let mut l = Login::start(&f.server, &grant);
    let code = l.user_code(f.server.port);
    assert_eq!(code.len(), 9, "{code}");
    // The next poll is told to slow down; then the user takes a while.
    http_request(f.server.port, "POST", "/_oauth/slow_down_next");
    wait_for("a slow_down and a pending answer", 30, || {
        stat(&f.server, "slow_downs") >= 1 && stat(&f.server, "pending") >= 1
    });
    http_request(
        f.server.port,
        "POST",
        &format!("/_oauth/approve?user_code={code}"),
    );
    let (ok, out) = l.finish(30);
    assert!(ok, "{out}");
    assert!(out.contains("Authorized. The grant is in"), "{out}");
    let s = stats(&f.server);
    // Exactly the one forced slow_down: the client never polled too fast,
    // and after it waited interval + 5 s (RFC 8628 §3.5).
    assert_eq!(s["slow_downs"], 1, "{s}");
    assert_eq!(s["issued"], 1, "{s}");
    let gaps: Vec<f64> = s["poll_gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_f64().unwrap())
        .collect();
    assert!(gaps.iter().all(|g| *g >= 0.95), "{gaps:?}");
    assert!(gaps.iter().any(|g| *g >= 5.9), "{gaps:?}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&grant).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let g = grant_json(&grant);
    assert_eq!(g["client_id"], CLIENT);
    assert_eq!(
        g["gitlab_url"],
        format!("http://127.0.0.1:{}", f.server.port)
    );
    assert_eq!(g["scope"], "read_repository");
    let left = g["expires_at"].as_u64().unwrap() as i64
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
    assert!((7000..=7200).contains(&left), "{left}");
    for k in ["access_token", "refresh_token"] {
        let secret = g[k].as_str().unwrap();
        assert!(secret.len() >= 40);
        assert!(!out.contains(secret), "{k} printed: {out}");
    }
}

#[test]
fn denied_login_fails_and_writes_nothing() {
    let f = fixture(7200, &[]);
    let grant = f.dir().join("grant.json");
    let mut l = Login::start(&f.server, &grant);
    let code = l.user_code(f.server.port);
    http_request(
        f.server.port,
        "POST",
        &format!("/_oauth/deny?user_code={code}"),
    );
    let (ok, out) = l.finish(30);
    assert!(!ok, "{out}");
    assert!(
        out.contains("the authorization was denied in GitLab (access_denied)"),
        "{out}"
    );
    assert!(!grant.exists());
    assert_eq!(stat(&f.server, "denied"), 1);
}

#[test]
fn expired_device_code_fails_clearly() {
    let f = fixture(7200, &["--oauth-device-ttl", "2"]);
    let grant = f.dir().join("grant.json");
    let mut l = Login::start(&f.server, &grant);
    l.user_code(f.server.port);
    let (ok, out) = l.finish(30);
    assert!(!ok, "{out}");
    assert!(out.contains("expired before it was approved"), "{out}");
    assert!(!grant.exists());
}

#[test]
fn mounts_keep_reading_across_three_expiries_with_one_shared_grant() {
    // Immediate revocation: two refreshes racing with one refresh token
    // would show as invalid_grant.
    let f = fixture(5, &["--oauth-revoke", "immediate"]);
    let grant = login(&f.server, f.dir());
    let (config, mounts) = f.config(&grant, &["one", "two"]);
    let log = f.dir().join("daemon.log");
    let mut d = Daemon::start_env(
        &config,
        &mounts,
        &log,
        &[("REPOFS_LOG", "debug"), ("RUST_LOG", "debug")],
    );
    let mut secrets = Vec::new();
    let remember = |secrets: &mut Vec<String>| {
        let g = grant_json(&grant);
        for k in ["access_token", "refresh_token"] {
            let s = g[k].as_str().unwrap().to_string();
            if !secrets.contains(&s) {
                secrets.push(s);
            }
        }
    };
    let started = Instant::now();
    remember(&mut secrets);
    for m in &mounts {
        read_eventually(&m.join("a.txt"), "first file\n", 20);
    }
    for i in 1..=3 {
        // Let the access token expire, then publish and read a new file.
        std::thread::sleep(Duration::from_secs(6));
        let name = format!("new{i}.txt");
        let text = format!("new file {i}\n");
        f.commit_file(&name, &text);
        for m in &mounts {
            read_eventually(&m.join(&name), &text, 30);
        }
        remember(&mut secrets);
    }
    let s = stats(&f.server);
    assert!(s["refreshes"].as_u64().unwrap() >= 3, "{s}");
    assert_eq!(s["invalid_grant"], 0, "{s}");
    // One refresh served both mounts: about one per lifetime, not two.
    let lifetimes = started.elapsed().as_secs() / 5 + 1;
    assert!(
        s["refreshes"].as_u64().unwrap() <= lifetimes,
        "{s} in {lifetimes} lifetimes"
    );
    // The grant file was rewritten with each refresh.
    assert!(secrets.len() >= 8, "{s}");
    let (ok, status) = run_repofs(&["--config", config.to_str().unwrap(), "status"], &[]);
    assert!(ok, "{status}");
    let (ok, check) = run_repofs(&["--config", config.to_str().unwrap(), "check", "one"], &[]);
    assert!(ok, "{check}");
    assert!(
        check.contains("authenticated with the GitLab grant")
            && check.contains("renewed automatically"),
        "{check}"
    );
    d.stop();
    let text = d.log_text();
    assert!(text.contains("GitLab access token refreshed"), "{text}");
    assert!(text.contains("DEBUG"), "not a debug log: {text}");
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "a token is in the debug log");
        assert!(!status.contains(s.as_str()), "a token is in status");
        assert!(!check.contains(s.as_str()), "a token is in check");
    }
}

/// Kills the daemon (it SIGKILLs itself, debug builds) between the refresh
/// answer and the grant file write; returns the grant file's text before.
fn crash_during_refresh(f: &Fixture, grant: &Path) -> String {
    let (config, mounts) = f.config(grant, &["models"]);
    let before = std::fs::read_to_string(grant).unwrap();
    let log = f.dir().join("crash.log");
    let d = Daemon::start_env(
        &config,
        &mounts,
        &log,
        &[("REPOFS_TEST_CRASH_AFTER_REFRESH", "1")],
    );
    read_eventually(&mounts[0].join("a.txt"), "first file\n", 20);
    std::thread::sleep(Duration::from_secs(6));
    f.commit_file("later.txt", "later\n");
    // The mount follows the branch: the next fetch needs a refresh.
    d.wait_log("test hook: killed after the refresh answer", 30);
    let pid = d.pid();
    wait_for("the daemon to die", 10, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    });
    d.crash();
    let _ = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(&mounts[0])
        .status();
    assert_eq!(stat(&f.server, "refreshes"), 1);
    // Killed before the write: the file is as it was.
    assert_eq!(std::fs::read_to_string(grant).unwrap(), before);
    before
}

#[test]
fn killed_between_refresh_answer_and_write_is_still_authorized_after_restart() {
    // GitLab (Doorkeeper with previous_refresh_token) revokes the old
    // refresh token when the new access token is first used: repofs never
    // used the token it did not write, so the old one still works.
    let f = fixture(5, &[]);
    let grant = login(&f.server, f.dir());
    crash_during_refresh(&f, &grant);
    let (config, mounts) = f.config(&grant, &["models"]);
    let mut d = Daemon::start(&config, &mounts, &f.dir().join("after.log"));
    read_eventually(&mounts[0].join("later.txt"), "later\n", 30);
    assert_eq!(stat(&f.server, "invalid_grant"), 0);
    assert!(stat(&f.server, "refreshes") >= 2);
    d.stop();
}

#[test]
fn killed_between_refresh_answer_and_write_with_immediate_revocation_check_says_so() {
    // A server that revokes at the refresh itself: the answer died with the
    // process, so the grant is lost; `check` says exactly that.
    let f = fixture(5, &["--oauth-revoke", "immediate"]);
    let grant = login(&f.server, f.dir());
    crash_during_refresh(&f, &grant);
    let (config, _) = f.config(&grant, &["models"]);
    let (ok, out) = run_repofs(
        &["--config", config.to_str().unwrap(), "check", "models"],
        &[],
    );
    assert!(!ok, "{out}");
    let want = format!(
        "the grant in {} was revoked or has expired (invalid_grant); run `repofs login gitlab --url http://127.0.0.1:{} --client-id {CLIENT} --grant-file {}` again",
        grant.display(),
        f.server.port,
        grant.display()
    );
    assert!(out.contains(&want), "{out}");
}

#[test]
fn a_refused_access_token_is_refreshed_at_once() {
    let f = fixture(7200, &[]);
    let grant = login(&f.server, f.dir());
    let (config, mounts) = f.config(&grant, &["models"]);
    let mut d = Daemon::start(&config, &mounts, &f.dir().join("daemon.log"));
    read_eventually(&mounts[0].join("a.txt"), "first file\n", 20);
    let before = grant_json(&grant);
    // The token expires early (repofs believes it has two hours left).
    http_request(f.server.port, "POST", "/_oauth/expire");
    // The branch moves: following it asks the server with the old token.
    f.commit_file("after.txt", "after\n");
    read_eventually(&mounts[0].join("after.txt"), "after\n", 30);
    let got = std::fs::read_to_string(mounts[0].join("deep/c.txt"));
    assert_eq!(got.ok(), Some(third()), "{}", d.log_text());
    let s = stats(&f.server);
    assert!(s["rejected"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["refreshes"], 1, "{s}");
    assert_eq!(s["invalid_grant"], 0, "{s}");
    assert_ne!(grant_json(&grant)["refresh_token"], before["refresh_token"]);
    assert!(
        d.log_text()
            .contains("GitLab refused the access token (HTTP 401): refreshing it")
    );
    d.stop();
}

#[test]
fn a_revoked_grant_gives_eacces_and_says_to_log_in_again() {
    let f = fixture(7200, &[]);
    let grant = login(&f.server, f.dir());
    let (config, mounts) = f.config(&grant, &["models"]);
    let log = f.dir().join("daemon.log");
    let mut d = Daemon::start(&config, &mounts, &log);
    read_eventually(&mounts[0].join("a.txt"), "first file\n", 20);
    http_request(f.server.port, "POST", "/_oauth/revoke");
    // deep/ was never listed: its contents need the server.
    let e = match std::fs::read(mounts[0].join("deep/c.txt")) {
        Ok(_) => panic!("read after the revocation:\n{}", d.log_text()),
        Err(e) => e,
    };
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    assert!(stat(&f.server, "invalid_grant") >= 1);
    let text = d.log_text();
    assert!(
        text.contains("was revoked or has expired (invalid_grant); run `repofs login gitlab --url"),
        "{text}"
    );
    let (ok, out) = run_repofs(
        &["--config", config.to_str().unwrap(), "check", "models"],
        &[],
    );
    assert!(!ok && out.contains("run `repofs login gitlab"), "{out}");
    // A new login is picked up without a restart.
    let grant2 = login(&f.server, &f.dir().join("again"));
    std::fs::rename(&grant2, &grant).unwrap();
    read_eventually(&mounts[0].join("deep/c.txt"), &third(), 20);
    d.stop();
}

#[test]
fn config_accepts_gitlab_app_only_where_it_belongs() {
    let dir = tempfile::tempdir().unwrap();
    let check = |extra: &str, provider: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "mount_root = \"/tmp/x\"\n[[repository]]\nname = \"r\"\nprovider = \"{provider}\"\nurl = \"https://gitlab.example.com/a/b\"\n{extra}\n"
            ),
        )
        .unwrap();
        run_repofs(&["--config", path.to_str().unwrap(), "repo", "list"], &[])
    };
    let app = "gitlab_app = { client_id = \"abc\", grant_file = \"/var/lib/repofs/g.json\" }";
    let (ok, out) = check(app, "gitlab");
    assert!(
        ok && out.contains("gitlab app grant /var/lib/repofs/g.json"),
        "{out}"
    );
    let (ok, out) = check(&format!("token = \"t\"\n{app}"), "gitlab");
    assert!(
        !ok && out.contains("give either a token or gitlab_app, not both"),
        "{out}"
    );
    let (ok, out) = check(app, "github");
    assert!(
        !ok && out.contains("work only with provider gitlab or gitlab-enterprise"),
        "{out}"
    );
    let (ok, out) = check(
        "gitlab_app = { client_id = \"abc\", grant_file = \"g.json\" }",
        "gitlab",
    );
    assert!(
        !ok && out.contains("grant_file must be an absolute path"),
        "{out}"
    );
    let (ok, out) = check("gitlab_app = { client_id = \"abc\" }", "gitlab");
    assert!(!ok && out.contains("grant_file"), "{out}");
    // clear-credentials removes the key.
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("mount_root = \"/tmp/x\"\n[[repository]]\nname = \"r\"\nprovider = \"gitlab\"\nurl = \"https://gitlab.example.com/a/b\"\n{app}\n"),
    )
    .unwrap();
    let (ok, out) = run_repofs(
        &[
            "--config",
            path.to_str().unwrap(),
            "repo",
            "clear-credentials",
            "r",
        ],
        &[],
    );
    assert!(ok && out.contains("cleared gitlab_app"), "{out}");
    assert!(
        !std::fs::read_to_string(&path)
            .unwrap()
            .contains("gitlab_app")
    );
}
