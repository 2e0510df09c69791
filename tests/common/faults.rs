//! Harness for tests that need a bad network: tests/support/fault_proxy.py
//! started in front of a loopback server on a port chosen at run time, its
//! stats file read as JSON, its faults switched off with SIGUSR1 (on again
//! with SIGUSR2), and the proxy stopped when the handle is dropped; and what
//! the fault tests share: a config with the daemon's defaults, a 16-reader
//! walk that times every read, the daemon log's warnings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Daemon, Scratch, publish_repo};

use serde_json::Value;

/// A running fault proxy.
pub struct FaultProxy {
    child: Child,
    pub port: u16,
    pub seed: u64,
    stats: PathBuf,
    capture: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl FaultProxy {
    /// Starts the proxy in front of `127.0.0.1:target` with the fault
    /// options `args` (see fault_proxy.py). `FAULT_SEED` in the environment
    /// replays a failed run; otherwise `seed` is used. The seed is printed.
    pub fn start(target: u16, seed: u64, args: &[&str]) -> FaultProxy {
        Self::start_inner(target, seed, args, false)
    }

    /// Like [`FaultProxy::start`], keeping a copy of every connection's
    /// server->client bytes as they reached the client ([`FaultProxy::captures`]).
    pub fn start_capturing(target: u16, seed: u64, args: &[&str]) -> FaultProxy {
        Self::start_inner(target, seed, args, true)
    }

    fn start_inner(target: u16, seed: u64, args: &[&str], capture: bool) -> FaultProxy {
        let dir = tempfile::tempdir().unwrap();
        let seed = std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(seed);
        let stats = dir.path().join("stats.json");
        let mut all: Vec<String> = vec![
            "--target".into(),
            target.to_string(),
            "--seed".into(),
            seed.to_string(),
            "--stats".into(),
            stats.display().to_string(),
        ];
        let capture = capture.then(|| {
            let c = dir.path().join("capture");
            std::fs::create_dir_all(&c).unwrap();
            all.extend(["--capture".to_string(), c.display().to_string()]);
            c
        });
        all.extend(args.iter().map(|s| s.to_string()));
        let (child, port) = super::start_python("fault_proxy.py", &all);
        eprintln!(
            "fault proxy on port {port} in front of {target}: seed {seed} (FAULT_SEED={seed} replays), {args:?}"
        );
        FaultProxy {
            child,
            port,
            seed,
            stats,
            capture,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The stats file, after the proxy's next flush (it writes every 0.1 s).
    pub fn stats(&self) -> Value {
        std::thread::sleep(Duration::from_millis(300));
        let text = std::fs::read_to_string(&self.stats).expect("read the fault proxy's stats");
        serde_json::from_str(&text).expect("the fault proxy's stats are JSON")
    }

    /// How many faults of `kind` (cut, stall, flip, cut_after, trickle) it injected.
    pub fn faults(&self, kind: &str) -> u64 {
        self.stats()["faults"][kind].as_u64().unwrap_or(0)
    }

    /// The Range headers it saw, in order: (request number, request line, range).
    pub fn ranges(&self) -> Vec<(u64, String, String)> {
        let s = self.stats();
        s["ranges"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            r["seq"].as_u64().unwrap_or(0),
                            r["request"].as_str().unwrap_or("").to_string(),
                            r["range"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The deterministic cuts (--cut-after), in order.
    pub fn cuts(&self) -> Vec<Cut> {
        let s = self.stats();
        s["cuts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| Cut {
                        seq: c["seq"].as_u64().unwrap_or(0),
                        connection: c["connection"].as_u64().unwrap_or(0),
                        request: c["request"].as_str().unwrap_or("").to_string(),
                        range: c["range"].as_str().map(str::to_string),
                        body: c["body"].as_u64().unwrap_or(0),
                        t: c["t"].as_f64().unwrap_or(0.0),
                        upstream: c["upstream"].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The capture file of connection `n` (numbered from 1).
    pub fn capture_of(&self, n: u64) -> PathBuf {
        let dir = self.capture.as_ref().expect("started with start_capturing");
        dir.join(format!("{n}.down"))
    }

    fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        let r = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(r, 0, "signal the fault proxy");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            self.stats()["enabled"].as_bool(),
            Some(sig == libc::SIGUSR2),
            "the fault proxy did not switch"
        );
    }

    /// Every fault off from now on (a trickling connection speeds up).
    pub fn off(&self) {
        self.signal(libc::SIGUSR1);
    }

    /// Faults on again.
    pub fn on(&self) {
        self.signal(libc::SIGUSR2);
    }

    /// The capture files, one per connection, in connection order.
    pub fn captures(&self) -> Vec<PathBuf> {
        let dir = self.capture.as_ref().expect("started with start_capturing");
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.ok()?.path();
                let n = p.file_stem()?.to_str()?.parse().ok()?;
                Some((n, p))
            })
            .collect();
        files.sort();
        files.into_iter().map(|(_, p)| p).collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The oids of the objects that arrived complete in the fetch responses
/// captured in `file` (tests/support/wants.py), or in its last one only.
pub fn received_objects(file: &Path, last_only: bool) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/wants.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(if last_only { "last" } else { "received" })
        .arg(file)
        .output()
        .expect("run wants.py");
    assert!(
        out.status.success(),
        "wants.py received: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A response the proxy cut after `body` bytes of its body.
#[derive(Debug)]
pub struct Cut {
    pub seq: u64,
    pub connection: u64,
    pub request: String,
    pub range: Option<String>,
    pub body: u64,
    /// When (seconds since the epoch), and the proxy's local port upstream.
    pub t: f64,
    pub upstream: u64,
}

/// The first byte of a `bytes=N-[M]` range.
pub fn range_start(range: &str) -> Option<u64> {
    range
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// One v2 fetch the git server saw (GET /_fetches).
pub struct Fetch {
    pub repo: String,
    pub t: f64,
    pub port: u64,
    pub wants: Vec<String>,
    pub throttled: bool,
}

/// Every v2 fetch of the git server on `port` since its last reset, in order.
pub fn fetches(port: u16) -> Vec<Fetch> {
    let (status, body) = super::http_get(&format!("127.0.0.1:{port}"), "/_fetches");
    assert_eq!(status, 200, "GET /_fetches: {body}");
    let v: Value = serde_json::from_str(&body).expect("/_fetches is JSON");
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| Fetch {
            repo: f["repo"].as_str().unwrap_or("").to_string(),
            t: f["t"].as_f64().unwrap_or(0.0),
            port: f["port"].as_u64().unwrap_or(0),
            wants: f["wants"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|o| o.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            throttled: f["throttled"].as_bool().unwrap_or(false),
        })
        .collect()
}

/// Aborts the FUSE connection of `mount` (through fusectl, mounted at
/// /sys/fs/fuse/connections if it is not yet; needs root). A read stuck in
/// the kernel then fails with ENOTCONN instead of keeping the test process
/// (and a daemon killed meanwhile) in the kernel for ever.
pub fn abort_fuse(mount: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(dev) = info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&mount.to_str().unwrap_or("")))
            .then(|| f[2].split(':').nth(1).map(str::to_string))?
    }) else {
        return;
    };
    let ctl = Path::new("/sys/fs/fuse/connections");
    if !ctl.join(&dev).exists() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(ctl)
            .status();
    }
    let _ = std::fs::write(ctl.join(&dev).join("abort"), "1");
}

/// Declared after the [`super::Daemon`]: when the test panics, aborts the
/// mount's FUSE connection before the daemon is killed (see [`abort_fuse`]).
pub struct AbortOnPanic(pub PathBuf);

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            abort_fuse(&self.0);
        }
    }
}

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A config with the daemon's defaults for timeouts and attempts.
pub fn git_config(dir: &Path, name: &str, url: &str) -> (PathBuf, PathBuf) {
    let text = format!(
        "mount_root = \"{}\"\ncache_dir = \"{}\"\ncache_size = \"2GiB\"\n[[repository]]\nname = \"{name}\"\nprovider = \"git\"\nurl = \"{url}\"\n",
        dir.join("mnt").display(),
        dir.join("cache").display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    (path, dir.join("mnt").join(name))
}

/// Writes `files` (path, contents) into the work tree and publishes `name`.
pub fn publish(s: &Scratch, name: &str, files: &[(String, Vec<u8>)]) {
    for (path, data) in files {
        let p = s.work().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    publish_repo(&s.srv(), &s.work(), name);
}

/// What a 16-reader walk saw.
#[derive(Default)]
pub struct Walk {
    pub wall: Duration,
    pub slowest: (Duration, String),
    pub errors: BTreeMap<String, String>,
    pub wrong: Vec<String>,
    pub eio: usize,
}

/// 16 threads read every file of `expect` under `root` (each file once),
/// comparing the bytes. Panics if the walk is not over within `limit`.
pub fn walk(root: &Path, expect: &[(String, Vec<u8>)], limit: Duration) -> Walk {
    let expect = Arc::new(expect.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let out = Arc::new(Mutex::new(Walk::default()));
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..16 {
        let (expect, next, out, root, tx) = (
            expect.clone(),
            next.clone(),
            out.clone(),
            root.to_path_buf(),
            tx.clone(),
        );
        std::thread::spawn(move || {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((path, data)) = expect.get(i) else {
                    break;
                };
                let t = Instant::now();
                let got = std::fs::read(root.join(path));
                let took = t.elapsed();
                let mut w = out.lock().unwrap();
                if took > w.slowest.0 {
                    w.slowest = (took, path.clone());
                }
                match got {
                    Ok(g) if g == *data => {}
                    Ok(g) => w.wrong.push(format!(
                        "{path}: {} bytes, expected {}",
                        g.len(),
                        data.len()
                    )),
                    Err(e) => {
                        if e.raw_os_error() == Some(libc::EIO) {
                            w.eio += 1;
                        }
                        w.errors.insert(path.clone(), e.to_string());
                    }
                }
            }
            let _ = tx.send(());
        });
    }
    drop(tx);
    for _ in 0..16 {
        if rx
            .recv_timeout(limit.saturating_sub(start.elapsed()))
            .is_err()
        {
            let done = next.load(Ordering::SeqCst).min(expect.len());
            panic!(
                "the 16-reader walk did not end within {limit:?} (about {done} of {} files started)",
                expect.len()
            );
        }
    }
    let mut w = std::mem::take(&mut *out.lock().unwrap());
    w.wall = start.elapsed();
    w
}

pub fn report(label: &str, w: &Walk) {
    eprintln!(
        "{label}: wall {:.1} s, slowest read {:.1} s ({}), {} errors ({} EIO), {} wrong",
        w.wall.as_secs_f64(),
        w.slowest.0.as_secs_f64(),
        w.slowest.1,
        w.errors.len(),
        w.eio,
        w.wrong.len()
    );
}

/// Lines of the daemon's log that say something went wrong (for reports).
pub fn log_trouble(d: &Daemon) -> String {
    let log = d.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let n = lines.len();
    let tail = lines[n.saturating_sub(30)..].join("\n");
    format!("{n} warnings/errors in the daemon's log, the last ones:\n{tail}")
}

/// Every regular file under `root` (through the mount: readdir and lstat).
pub fn walkdir(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                dirs.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Runs `f` on a thread: its result and time, or None if it took over `limit`
/// (the thread is left behind: a FUSE call cannot be interrupted).
pub fn timed<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<(T, Duration)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = f();
        let _ = tx.send((r, t.elapsed()));
    });
    rx.recv_timeout(limit).ok()
}
