//! Test harness: a real git smart-HTTP server on loopback, repositories
//! built with the git CLI, and the real `repofs` daemon mounting them with
//! FUSE. Missing prerequisites (FUSE, git, python3) fail the test loudly.

#![allow(dead_code)]

pub mod faults;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn require_prerequisites() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests mount for real (install fuse3, load the fuse module)"
    );
    for (bin, pkg) in [
        ("git", "git"),
        ("python3", "python3"),
        ("fusermount3", "fuse3"),
    ] {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{bin} is not installed (Debian package {pkg}); .ci/run installs it"
        );
    }
}

/// Runs git in `dir` with a fixed identity and dates; panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_AUTHOR_DATE", "1700000000 +0000")
        .env("GIT_COMMITTER_DATE", "1700000000 +0000")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository made from a work tree: returns (work tree, commit id). The
/// bare copy is published as `<server root>/<name>.git`.
pub fn publish_repo(server_root: &Path, work: &Path, name: &str) -> String {
    git(work, &["add", "-A"]);
    publish_committed(server_root, work, name)
}

/// Publishes what is committed in `work` (nothing is staged first).
pub fn publish_committed(server_root: &Path, work: &Path, name: &str) -> String {
    git(
        work,
        &["commit", "-q", "-m", "test commit", "--allow-empty"],
    );
    let commit = git(work, &["rev-parse", "HEAD"]);
    let bare = server_root.join(format!("{name}.git"));
    if bare.exists() {
        std::fs::remove_dir_all(&bare).unwrap();
    }
    git(
        server_root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    commit
}

pub fn new_worktree(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    dir.to_path_buf()
}

/// A test's scratch directory (prerequisites checked): `srv/` for the
/// served repositories and `work/`, a fresh git work tree.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    pub fn new() -> Scratch {
        require_prerequisites();
        let s = Scratch(tempfile::tempdir().unwrap());
        std::fs::create_dir_all(s.srv()).unwrap();
        new_worktree(&s.work());
        s
    }

    pub fn dir(&self) -> &Path {
        self.0.path()
    }

    pub fn srv(&self) -> PathBuf {
        self.dir().join("srv")
    }

    pub fn work(&self) -> PathBuf {
        self.dir().join("work")
    }
}

/// Starts `tests/support/<script>` and reads the `PORT <n>` line it prints.
pub fn start_python(script: &str, args: &[String]) -> (Child, u16) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(script);
    let mut child = Command::new("python3")
        .arg(path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {script} with python3: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{script} did not start (is tests/support/requirements.txt installed?): {line:?}"
            )
        });
    (child, port)
}

pub fn http_request(port: u16, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The loopback LFS server (tests/support/lfs_server.py, giftless inside).
pub struct LfsServer {
    child: Child,
    pub port: u16,
}

impl LfsServer {
    pub fn start(storage: &Path) -> LfsServer {
        std::fs::create_dir_all(storage).unwrap();
        let (child, port) = start_python(
            "lfs_server.py",
            &["--storage".into(), storage.display().to_string()],
        );
        LfsServer { child, port }
    }

    /// The LFS API URL of repository `name` (what git-lfs pushes to).
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/test/{name}", self.port)
    }

    /// JSON: {"downloads": [{"path", "headers", "expired"}...], "batches": n}
    pub fn seen(&self) -> String {
        http_request(self.port, "GET", "/_seen")
    }

    pub fn control(&self, query: &str) {
        http_request(self.port, "GET", &format!("/_control?{query}"));
    }
}

impl Drop for LfsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The loopback S3 server (moto, tests/support/s3_server.py).
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    pub fn start() -> S3Server {
        let (child, port) = start_python("s3_server.py", &[]);
        S3Server { child, port }
    }

    /// A server that enforces IAM after the first `free` requests (moto's
    /// INITIAL_NO_AUTH_ACTION_COUNT): seed with exactly that many calls.
    pub fn start_with_iam(free: u32) -> S3Server {
        let (child, port) = start_python("s3_server.py", &["--iam-after".into(), free.to_string()]);
        S3Server { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs Python with a boto3 client `s3` bound to this server.
    pub fn py(&self, code: &str) -> String {
        let script = format!(
            "import boto3, os, hashlib\ns3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n{code}\n",
            self.endpoint()
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The loopback git server (tests/support/git_http_server.py).
pub struct GitServer {
    child: Child,
    pub port: u16,
    pub root: PathBuf,
}

impl GitServer {
    pub fn start(root: &Path, extra: &[&str]) -> GitServer {
        Self::start_on(root, 0, extra)
    }

    pub fn start_on(root: &Path, port: u16, extra: &[&str]) -> GitServer {
        std::fs::create_dir_all(root).unwrap();
        let mut args = vec![
            "--root".to_string(),
            root.display().to_string(),
            "--port".into(),
            port.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let (child, port) = start_python("git_http_server.py", &args);
        GitServer {
            child,
            port,
            root: root.to_path_buf(),
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}.git", self.port)
    }

    fn http(&self, method: &str, path: &str) -> String {
        http_request(self.port, method, path)
    }

    /// (requests, response bytes) served for `<name>.git` since the last reset.
    pub fn stats(&self, name: &str) -> (u64, u64) {
        let body = self.http("GET", "/_stats");
        let key = format!("\"{name}.git\": {{\"requests\": ");
        let Some(i) = body.find(&key) else {
            return (0, 0);
        };
        let rest = &body[i + key.len()..];
        let req: u64 = rest.split(',').next().unwrap().trim().parse().unwrap();
        let bytes: u64 = rest
            .split("\"bytes\": ")
            .nth(1)
            .unwrap()
            .split([',', '}'])
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (req, bytes)
    }

    /// The most times any single object was delivered in a complete fetch
    /// response, over every repository (1 means nothing was sent twice).
    pub fn max_delivered(&self) -> u64 {
        let body = self.http("GET", "/_wants");
        body.split("\"delivered\": ")
            .skip(1)
            .filter_map(|v| v.split(['}', ',']).next()?.trim().parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// The `/_wants` records of objects delivered more than `n` times.
    pub fn wants_over(&self, n: u64) -> String {
        let body = self.http("GET", "/_wants");
        body.split("}, ")
            .filter(|r| {
                r.split("\"delivered\": ")
                    .nth(1)
                    .and_then(|v| v.trim_end_matches('}').trim().parse::<u64>().ok())
                    .is_some_and(|d| d > n)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// How many GitHub App installation tokens the server issued.
    pub fn app_issued(&self) -> u64 {
        let body = self.http("GET", "/_app");
        body.split("\"issued\": ")
            .nth(1)
            .and_then(|v| v.trim_end_matches('}').trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn reset_stats(&self) {
        self.http("POST", "/_stats");
    }

    pub fn set_fault(&self, mode: &str) {
        self.http("GET", &format!("/_fault?mode={mode}"));
    }

    pub fn set_tokens(&self, pairs: &[(&str, &str)]) {
        let body: Vec<String> = pairs
            .iter()
            .map(|(r, t)| format!("\"{r}.git\": \"{t}\""))
            .collect();
        std::fs::write(
            self.root.join("_auth.json"),
            format!("{{{}}}", body.join(", ")),
        )
        .unwrap();
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `repofs ARGS` to completion without the variables `unset` in its
/// environment; returns whether it succeeded and its stdout and stderr.
pub fn run_repofs(args: &[&str], unset: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(repofs_bin());
    cmd.args(args);
    for v in unset {
        cmd.env_remove(v);
    }
    let out = cmd.output().expect("run repofs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn repofs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_repofs")
}

/// One repository entry for a generated config.
pub struct RepoEntry {
    pub name: String,
    pub url: String,
    pub extra: String,
}

pub fn write_config(
    dir: &Path,
    mount_root: &Path,
    cache: &Path,
    repos: &[RepoEntry],
    top: &str,
) -> PathBuf {
    let mut s = format!(
        "mount_root = \"{}\"\ncache_dir = \"{}\"\ncache_size = \"2GiB\"\nrequest_timeout = \"3s\"\nconnect_timeout = \"2s\"\nmax_attempts = 2\n{top}\n",
        mount_root.display(),
        cache.display()
    );
    for r in repos {
        s.push_str(&format!(
            "[[repository]]\nname = \"{}\"\nprovider = \"git\"\nurl = \"{}\"\n{}\n",
            r.name, r.url, r.extra
        ));
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, s).unwrap();
    // It may hold tokens: repofs refuses a world-readable config with secrets.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

/// A running `repofs mount`.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Daemon {
    pub fn start(config: &Path, mounts: &[PathBuf], log: &Path) -> Daemon {
        Self::start_env(config, mounts, log, &[])
    }

    pub fn start_env(
        config: &Path,
        mounts: &[PathBuf],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Daemon {
        let config = config.to_str().expect("config path is UTF-8");
        Self::start_args(&["--config", config, "mount"], mounts, log, env)
    }

    /// Runs `repofs <args>` (no `--config` unless `args` has one) with `env`
    /// added to the environment, and waits until every one of `mounts` is
    /// mounted (panics, with the log, if the daemon exits first).
    pub fn start_args(
        args: &[&str],
        mounts: &[PathBuf],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Daemon {
        let logf = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new(repofs_bin());
        if !env.iter().any(|(k, _)| *k == "REPOFS_LOG") {
            cmd.env("REPOFS_LOG", "info,repofs=debug");
        }
        let child = cmd
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start repofs");
        let mut d = Daemon {
            child: Some(child),
            log: log.to_path_buf(),
            mounts: mounts.to_vec(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !mounts.iter().all(|m| is_mounted(m)) {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("repofs exited early ({status}):\n{}", d.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "mounts did not appear:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon stopped").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("daemon stopped").id() as i32;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, sig) };
    }

    /// SIGKILL, leaving the mounts behind as a crash would.
    pub fn crash(mut self) {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
        self.mounts.clear();
    }

    /// Waits until the log contains `text` (or panics after `secs`).
    pub fn wait_log(&self, text: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.log_text().contains(text) {
            assert!(
                Instant::now() < deadline,
                "log never said {text:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits: the daemon must exit 0 and leave nothing mounted.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("daemon already stopped");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "repofs exited with {status}:\n{}",
                    self.log_text()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "repofs did not exit on SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for m in &self.mounts {
            assert!(
                !is_mounted(m),
                "{} is still mounted after SIGTERM",
                m.display()
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in &self.mounts {
            if is_mounted(m) {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(m)
                    .status();
            }
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so contents are incompressible.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs a shell command with a time limit; returns (exit code, stdout, stderr).
pub fn sh(cmd: &str, limit: Duration) -> (i32, String, String) {
    let mut child = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(format!("{}", limit.as_secs()))
        .arg("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), out, err)
}

/// A tmpfs of a given size mounted for a test (needs root), unmounted on drop.
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "cannot mount a tmpfs at {} (the test needs root)",
            path.display()
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// `echo 3 > /proc/sys/vm/drop_caches` (after a sync): the kernel forgets
/// cached pages, so that reads of a FUSE file reach the daemon again.
pub fn drop_caches() {
    let (code, out, err) = sh(
        "sync; echo 3 > /proc/sys/vm/drop_caches",
        Duration::from_secs(120),
    );
    assert_eq!(
        code, 0,
        "cannot drop the page cache (needs root): {out}{err}"
    );
}

/// GET `path` from `addr` (`127.0.0.1:PORT`) over HTTP/1.1: (status, body).
/// Understands Content-Length, chunked bodies and bodies ended by a close.
pub fn try_http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n > 0 {
            raw.extend_from_slice(&buf[..n]);
        }
        if let Some((status, body)) = http_response(&raw, n == 0) {
            return Ok((status, String::from_utf8_lossy(&body).to_string()));
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "incomplete HTTP response: {:?}",
                    String::from_utf8_lossy(&raw)
                ),
            ));
        }
    }
}

/// Like [`try_http_get`], panicking on a connection or protocol error.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

fn find_bytes(data: &[u8], what: &[u8]) -> Option<usize> {
    data.windows(what.len()).position(|w| w == what)
}

/// (status, body) once `raw` holds a complete response (`eof`: the peer closed).
fn http_response(raw: &[u8], eof: bool) -> Option<(u16, Vec<u8>)> {
    let end = find_bytes(raw, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let body = &raw[end + 4..];
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        return (body.len() >= len).then(|| (status, body[..len].to_vec()));
    }
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let line = find_bytes(rest, b"\r\n")?;
            let size = std::str::from_utf8(&rest[..line]).ok()?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[line + 2..];
            if size == 0 {
                return Some((status, out));
            }
            if rest.len() < size + 2 {
                return None;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }
    eof.then(|| (status, body.to_vec()))
}

/// One scrape of a Prometheus text-format endpoint: `name{labels} value` lines.
pub struct Metrics {
    pub text: String,
    samples: Vec<(String, Vec<(String, String)>, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        Metrics {
            text: text.to_string(),
            samples: text.lines().filter_map(parse_sample).collect(),
        }
    }

    /// The sum over the series of `name` whose labels include every one of
    /// `labels` (other labels may be there too); `None` when there is none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for (n, have, v) in &self.samples {
            let matches = labels
                .iter()
                .all(|(k, want)| have.iter().any(|(hk, hv)| hk == k && hv == want));
            if n == name && matches {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// [`Metrics::get`], with 0 for a series not there yet (a counter that
    /// was never incremented may be absent).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// `name{k="v",...} value [timestamp]`; `None` for comments, blanks and junk.
fn parse_sample(line: &str) -> Option<(String, Vec<(String, String)>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let i = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = (&line[..i], &line[i..]);
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut it = inner.chars();
        loop {
            let mut c = it.next()?;
            while c == ',' || c == ' ' {
                c = it.next()?;
            }
            if c == '}' {
                break;
            }
            let mut key = String::new();
            while c != '=' {
                key.push(c);
                c = it.next()?;
            }
            if it.next()? != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match it.next()? {
                    '\\' => match it.next()? {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    other => value.push(other),
                }
            }
            labels.push((key.trim().to_string(), value));
        }
        rest = it.as_str();
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name.to_string(), labels, value))
}

/// Scrapes `http://<addr>/metrics` (retrying for up to 15 s while nothing
/// listens yet); panics unless the answer is 200.
pub fn scrape(addr: &str) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match try_http_get(addr, "/metrics") {
            Ok((200, body)) => return Metrics::parse(&body),
            Ok((status, body)) => panic!("GET http://{addr}/metrics: HTTP {status}: {body}"),
            Err(e) => assert!(
                Instant::now() < deadline,
                "nothing serves http://{addr}/metrics: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn c_path(path: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in a test path")
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// getxattr(2) (following symlinks): the value, or the errno.
pub fn xattr_get(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (p, n) = (c_path(path), std::ffi::CString::new(name).unwrap());
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid NUL-terminated strings and a buffer of the length given.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(last_errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// getxattr(2) of a value that must be text: panics (naming the path) otherwise.
pub fn xattr_text(path: &Path, name: &str) -> String {
    let v = xattr_get(path, name).unwrap_or_else(|errno| {
        panic!(
            "getxattr {} {name}: {}",
            path.display(),
            std::io::Error::from_raw_os_error(errno)
        )
    });
    String::from_utf8(v).unwrap_or_else(|e| panic!("{} {name}: not UTF-8: {e}", path.display()))
}

/// listxattr(2) (following symlinks): the names, sorted, or the errno.
pub fn xattr_list(path: &Path) -> Result<Vec<String>, i32> {
    let p = c_path(path);
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: a valid NUL-terminated path and a buffer of the length given.
    let r = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(last_errno());
    }
    let mut names: Vec<String> = buf[..r as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).to_string())
        .collect();
    names.sort();
    Ok(names)
}

/// setxattr(2) (following symlinks): Ok, or the errno.
pub fn xattr_set(path: &Path, name: &str, value: &[u8]) -> Result<(), i32> {
    let (p, n) = (c_path(path), std::ffi::CString::new(name).unwrap());
    // SAFETY: valid NUL-terminated strings and a value of the length given.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 { Err(last_errno()) } else { Ok(()) }
}

/// Fails the test unless git-lfs is installed.
pub fn require_git_lfs() {
    let ok = Command::new("git")
        .args(["lfs", "version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "git-lfs is not installed (Debian package git-lfs); .ci/run installs it"
    );
}

/// Publishes `<name>.git` on `git` (started with `--lfs-upstream` pointing at
/// `lfs`) from a new work tree at `work` where `*.bin` is tracked by Git
/// LFS: `prepare` writes the files (modes and symlinks included), then they
/// are committed and pushed, LFS objects to `lfs`. Returns the commit id.
pub fn push_lfs_repo(
    git_server: &GitServer,
    lfs: &LfsServer,
    work: &Path,
    name: &str,
    prepare: impl FnOnce(&Path),
) -> String {
    let bare = git_server.root.join(format!("{name}.git"));
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let work = new_worktree(work);
    git(&work, &["lfs", "install", "--local"]);
    git(&work, &["config", "lfs.url", &lfs.url(name)]);
    git(&work, &["lfs", "track", "*.bin"]);
    prepare(work.as_path());
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "lfs files"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    git(&work, &["push", "-q", "origin", "main"]);
    git(&work, &["rev-parse", "HEAD"])
}
