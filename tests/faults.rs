//! End-to-end tests on a bad network (issue "One fetch engine"): real FUSE
//! mounts whose traffic goes through tests/support/fault_proxy.py, which
//! cuts, stalls, flips and trickles the answers of the git server, the LFS
//! server or moto's S3, seeded (the seed is printed; `FAULT_SEED=N` replays).
//! The daemon runs with its default timeouts, attempts and speed floor: what
//! is tested is what a user gets. The tests run one at a time (their bounds
//! are times, and the machine may have two cores).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::faults::*;
use common::*;

/// The fault profile of the issue, per 16 KiB of answer, with short stalls.
const PROFILE: &[&str] = &[
    "--cut",
    "0.02",
    "--stall",
    "0.01",
    "--stall-secs",
    "3",
    "--flip",
    "0.01",
];
/// The longest a single read may take under the profile.
const READ_BOUND: Duration = Duration::from_secs(150);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A config with the daemon's defaults for timeouts and attempts.
fn git_config(dir: &Path, name: &str, url: &str) -> (PathBuf, PathBuf) {
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
fn publish(s: &Scratch, name: &str, files: &[(String, Vec<u8>)]) {
    for (path, data) in files {
        let p = s.work().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    publish_repo(&s.srv(), &s.work(), name);
}

/// About 5,000 files in 100 directories, 100 B to 64 KiB, some of 64 KiB
/// to 600 KiB, and four over 1 MiB (read by streaming): about 40 MB.
fn walk_tree() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for i in 0..5000u64 {
        let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        let len = match i % 50 {
            0 => 64 * 1024 + (x % (536 * 1024)) as usize,
            _ => 100 + (x % 8000) as usize * (1 + (i % 7) as usize),
        };
        files.push((format!("d{:03}/f{i:05}.dat", i % 100), noise(i + 1, len)));
    }
    for (i, mb) in [(0u64, 1.5f64), (1, 2.0), (2, 3.0), (3, 4.0)] {
        let len = (mb * 1048576.0) as usize + i as usize;
        files.push((format!("large/l{i}.bin"), noise(100_000 + i, len)));
    }
    files
}

/// What a 16-reader walk saw.
#[derive(Default)]
struct Walk {
    wall: Duration,
    slowest: (Duration, String),
    errors: BTreeMap<String, String>,
    wrong: Vec<String>,
    eio: usize,
}

/// 16 threads read every file of `expect` under `root` (each file once),
/// comparing the bytes. Panics if the walk is not over within `limit`.
fn walk(root: &Path, expect: &[(String, Vec<u8>)], limit: Duration) -> Walk {
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

fn report(label: &str, w: &Walk) {
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
fn log_trouble(d: &Daemon) -> String {
    let log = d.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let n = lines.len();
    let tail = lines[n.saturating_sub(30)..].join("\n");
    format!("{n} warnings/errors in the daemon's log, the last ones:\n{tail}")
}

/// (a) A 16-reader walk of 5,000 files through the fault profile: every
/// byte right, no EIO, no read over 150 s; then, the faults off, the same
/// mount reads everything.
#[test]
fn a_walk_through_cuts_stalls_and_flips_reads_every_byte_right() {
    let _g = serial();
    let s = Scratch::new();
    let files = walk_tree();
    publish(&s, "walk", &files);
    let git = GitServer::start(&s.srv(), &[]);
    let proxy = FaultProxy::start(git.port, 2025, PROFILE);
    let url = format!("{}/walk.git", proxy.base());
    let (cfg, m) = git_config(s.dir(), "walk", &url);
    let d = Daemon::start(&cfg, &[m.clone()], &s.dir().join("daemon.log"));
    let _abort = AbortOnPanic(m.clone());
    let mut listed: Vec<String> = Vec::new();
    for e in walkdir(&m) {
        listed.push(e.strip_prefix(&m).unwrap().display().to_string());
    }
    listed.sort();
    let mut names: Vec<String> = files.iter().map(|(p, _)| p.clone()).collect();
    names.sort();
    assert_eq!(listed.len(), names.len(), "the mount lists other files");
    assert!(listed == names, "the mount lists other names");

    let faulty = walk(&m, &files, Duration::from_secs(200));
    report("walk with faults", &faulty);
    let st = proxy.stats();
    eprintln!(
        "proxy: {} connections, {} requests, {} bytes sent, faults {}",
        st["connections"], st["requests"], st["bytes_down"], st["faults"]
    );
    assert!(proxy.faults("cut") + proxy.faults("stall") + proxy.faults("flip") > 10);

    proxy.off();
    let clean = walk(&m, &files, Duration::from_secs(120));
    report("walk after the faults stopped", &clean);
    let trouble = log_trouble(&d);
    assert!(faulty.wrong.is_empty(), "wrong bytes: {:?}", faulty.wrong);
    assert!(
        clean.errors.is_empty() && clean.wrong.is_empty(),
        "after the faults stopped: {:?} {:?}\n{trouble}",
        clean.errors,
        clean.wrong
    );
    assert!(
        faulty.errors.is_empty(),
        "{} files failed under faults ({} EIO), e.g. {:?}\n{trouble}",
        faulty.errors.len(),
        faulty.eio,
        faulty.errors.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        faulty.slowest.0 < READ_BOUND,
        "a read took {:?} ({})",
        faulty.slowest.0,
        faulty.slowest.1
    );
}

/// Every regular file under `root` (through the mount: readdir and lstat).
fn walkdir(root: &Path) -> Vec<PathBuf> {
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
fn timed<T: Send + 'static>(
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

/// (b) While one connection trickles at 1 KB/s (a large file's transfer),
/// `ls` of the root and `stat` of a file in another directory answer in
/// under 2 s, and the large file still reads right (the slow transfer is
/// dropped and retried on a fresh connection).
#[test]
fn one_trickling_connection_does_not_freeze_the_mount() {
    let _g = serial();
    let s = Scratch::new();
    let big = noise(7, 8 << 20);
    let mut files = vec![("big/large.bin".to_string(), big.clone())];
    for dir in ["a", "b", "c"] {
        for i in 0..20u64 {
            files.push((format!("{dir}/f{i}.txt"), noise(i + 50, 900 + i as usize)));
        }
    }
    publish(&s, "trickle", &files);
    let git = GitServer::start(&s.srv(), &[]);
    // Only a connection that passes 1 MiB trickles: the large blob's.
    let proxy = FaultProxy::start(
        git.port,
        1,
        &[
            "--trickle-after",
            "1048576",
            "--trickle-rate",
            "1024",
            "--trickle-connections",
            "1",
        ],
    );
    let (cfg, m) = git_config(s.dir(), "trickle", &format!("{}/trickle.git", proxy.base()));
    let d = Daemon::start(&cfg, &[m.clone()], &s.dir().join("daemon.log"));
    let _abort = AbortOnPanic(m.clone());
    let root_names = std::fs::read_dir(&m).unwrap().count();
    assert_eq!(root_names, 4);

    let path = m.join("big/large.bin");
    let reader = std::thread::spawn(move || {
        let t = Instant::now();
        (std::fs::read(path), t.elapsed())
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.faults("trickle") == 0 {
        assert!(
            Instant::now() < deadline,
            "no connection trickled:\n{}",
            log_trouble(&d)
        );
    }
    std::thread::sleep(Duration::from_secs(1));

    let root = m.clone();
    let ls = timed(Duration::from_secs(2), move || {
        std::fs::read_dir(&root).map(|r| r.count())
    });
    let (n, took) = ls.unwrap_or_else(|| {
        panic!(
            "`ls` of the root took over 2 s while one connection trickles\n{}",
            log_trouble(&d)
        )
    });
    assert_eq!(n.expect("ls of the root"), 4);
    eprintln!(
        "ls of the root during the trickle: {:.3} s",
        took.as_secs_f64()
    );
    let other = m.join("c/f7.txt");
    let st = timed(Duration::from_secs(2), move || {
        std::fs::metadata(other).map(|m| m.len())
    });
    let (len, took) = st.unwrap_or_else(|| {
        panic!(
            "`stat c/f7.txt` took over 2 s while one connection trickles\n{}",
            log_trouble(&d)
        )
    });
    assert_eq!(len.expect("stat c/f7.txt"), 907);
    eprintln!(
        "stat in another directory during the trickle: {:.3} s",
        took.as_secs_f64()
    );

    // 8 MiB at 1 KB/s would take over two hours: the speed floor must drop it.
    let limit = Instant::now() + Duration::from_secs(90);
    while !reader.is_finished() {
        assert!(
            Instant::now() < limit,
            "the large file's read is still trickling after 90 s\n{}",
            log_trouble(&d)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (got, took) = reader.join().unwrap();
    let got = got.unwrap_or_else(|e| panic!("big/large.bin: {e}\n{}", log_trouble(&d)));
    assert!(
        got == big,
        "big/large.bin: wrong bytes ({} of {})",
        got.len(),
        big.len()
    );
    eprintln!(
        "the large file under the trickle read right in {:.1} s",
        took.as_secs_f64()
    );
}

/// (c) A fetch cut in the middle of its pack: the objects that had arrived
/// complete before the cut are not in any later fetch's wants, and no
/// object is delivered twice.
#[test]
fn a_cut_packs_received_objects_are_not_asked_for_again() {
    let _g = serial();
    let s = Scratch::new();
    // 150 incompressible blobs of 64 KiB (no deltas): one directory prefetch
    // of about 9.6 MB, cut after 2 MB.
    let mut files: Vec<(String, Vec<u8>)> = (0..150u64)
        .map(|i| {
            (
                format!("d/f{i:03}.bin"),
                noise(900 + i, 64 * 1024 + i as usize),
            )
        })
        .collect();
    files.push(("README".into(), b"cut\n".to_vec()));
    publish(&s, "cut", &files);
    let git = GitServer::start(&s.srv(), &[]);
    let proxy = FaultProxy::start_capturing(
        git.port,
        3,
        &[
            "--cut-after",
            "2000000",
            "--cut-count",
            "1",
            "--match",
            "git-upload-pack",
        ],
    );
    let (cfg, m) = git_config(s.dir(), "cut", &format!("{}/cut.git", proxy.base()));
    let d = Daemon::start(&cfg, &[m.clone()], &s.dir().join("daemon.log"));
    let _abort = AbortOnPanic(m.clone());
    let first = std::fs::read(m.join("d/f000.bin"));
    let w = walk(&m, &files, Duration::from_secs(120));
    report("reading the cut directory", &w);
    let cuts = proxy.cuts();
    assert_eq!(
        cuts.len(),
        1,
        "no fetch answer passed 2 MB (the test needs one cut): {cuts:?}"
    );
    let cut = &cuts[0];
    let got: HashSet<String> = received_objects(&proxy.capture_of(cut.connection), true)
        .into_iter()
        .collect();
    let log = fetches(git.port);
    let cut_fetch = log
        .iter()
        .rposition(|f| f.port == cut.upstream && f.t <= cut.t)
        .expect("the cut fetch is in the server's log");
    eprintln!(
        "cut after {} bytes: {} objects had arrived complete, of {} wanted; {} fetches in all",
        cut.body,
        got.len(),
        log[cut_fetch].wants.len(),
        log.len()
    );
    assert!(
        got.len() >= 10,
        "too few objects before the cut to test anything: {}",
        got.len()
    );
    let mut again = Vec::new();
    for f in log.iter().filter(|f| f.t > cut.t) {
        let asked: Vec<&String> = f.wants.iter().filter(|o| got.contains(*o)).collect();
        if !asked.is_empty() {
            again.push(format!(
                "received objects asked for again: a fetch {:.2} s after the cut wants {} of the {} objects received ({} wants in all)",
                f.t - cut.t,
                asked.len(),
                got.len(),
                f.wants.len()
            ));
        }
    }
    // Every finding at once: a failed read (a retry that gave up) does not
    // hide what the retries asked for.
    let mut failures = again;
    if let Err(e) = first {
        failures.push(format!("the first read of d/f000.bin failed: {e}"));
    }
    if !w.errors.is_empty() || !w.wrong.is_empty() {
        failures.push(format!("reads failed: {:?} wrong: {:?}", w.errors, w.wrong));
    }
    if git.max_delivered() > 1 {
        failures.push(format!(
            "objects delivered more than once: {}",
            git.wants_over(1)
        ));
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        log_trouble(&d)
    );
}

/// The first request after `cut` for the same path that has a Range:
/// (its start, the cut request's start); panics naming what was asked.
fn resumed_after(proxy: &FaultProxy, cut: &Cut) -> (u64, u64) {
    let path = |line: &str| {
        line.split_whitespace()
            .nth(1)
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("")
            .to_string()
    };
    let cut_start = cut.range.as_deref().and_then(range_start).unwrap_or(0);
    let ranges = proxy.ranges();
    let next = ranges
        .iter()
        .find(|(seq, line, _)| *seq > cut.seq && path(line) == path(&cut.request));
    let Some((_, _, range)) = next else {
        let st = proxy.stats();
        panic!(
            "the download cut after {} bytes was not resumed by Range ({} requests seen; ranges: {ranges:?})",
            cut.body, st["requests"]
        );
    };
    (range_start(range).expect("a bytes=N- range"), cut_start)
}

/// (d) An LFS download cut after 3 MB resumes with `Range` from where it
/// was cut (the LFS server, giftless, honours ranges), and reads right.
#[test]
fn a_cut_lfs_download_resumes_by_range() {
    let _g = serial();
    require_git_lfs();
    let s = Scratch::new();
    let lfs = LfsServer::start(&s.dir().join("lfs-store"));
    let proxy = FaultProxy::start(
        lfs.port,
        4,
        &[
            "--cut-after",
            "3000000",
            "--cut-count",
            "1",
            "--match",
            "GET ",
        ],
    );
    // The batch goes through the proxy too, so giftless's hrefs name it.
    let git = GitServer::start(&s.srv(), &["--lfs-upstream", &proxy.base()]);
    let data = noise(44, 12 << 20);
    push_lfs_repo(&git, &lfs, &s.dir().join("lfswork"), "lfsr", |w| {
        std::fs::write(w.join("big.bin"), &data).unwrap();
    });
    let (cfg, m) = git_config(s.dir(), "lfsr", &git.url("lfsr"));
    let d = Daemon::start(&cfg, &[m.clone()], &s.dir().join("daemon.log"));
    let _abort = AbortOnPanic(m.clone());
    let got = std::fs::read(m.join("big.bin"))
        .unwrap_or_else(|e| panic!("big.bin: {e}\n{}", log_trouble(&d)));
    assert!(
        got == data,
        "big.bin: wrong bytes ({} of {})",
        got.len(),
        data.len()
    );
    let cuts = proxy.cuts();
    assert_eq!(cuts.len(), 1, "the LFS download was not cut: {cuts:?}");
    let (start, from) = resumed_after(&proxy, &cuts[0]);
    eprintln!(
        "LFS: cut after {} bytes from {from}, resumed at {start}",
        cuts[0].body
    );
    assert!(
        start >= from + cuts[0].body / 2 && start <= from + cuts[0].body,
        "resumed at {start}, but {} bytes from {from} had arrived",
        cuts[0].body
    );
}

/// (d) An S3 object download (moto) cut after 3 MB resumes with `Range`.
#[test]
fn a_cut_s3_download_resumes_by_range() {
    let _g = serial();
    let s = Scratch::new();
    let s3 = S3Server::start();
    s3.py("s3.create_bucket(Bucket='data')");
    let data = noise(45, 12 << 20);
    let file = s.dir().join("big.bin");
    std::fs::write(&file, &data).unwrap();
    s3.py(&format!(
        "s3.upload_file('{}', 'data', 'big.bin')",
        file.display()
    ));
    let proxy = FaultProxy::start(
        s3.port,
        5,
        &[
            "--cut-after",
            "3000000",
            "--cut-count",
            "1",
            "--match",
            "GET /data/big.bin",
        ],
    );
    let text = format!(
        "mount_root = \"{}\"\ncache_dir = \"{}\"\n[[repository]]\nname = \"s3\"\nprovider = \"s3\"\nendpoint_url = \"{}\"\nbucket = \"data\"\ncredentials = \"anonymous\"\n",
        s.dir().join("mnt").display(),
        s.dir().join("cache").display(),
        proxy.base()
    );
    let cfg = s.dir().join("config.toml");
    std::fs::write(&cfg, text).unwrap();
    let m = s.dir().join("mnt/s3");
    let d = Daemon::start(&cfg, &[m.clone()], &s.dir().join("daemon.log"));
    let _abort = AbortOnPanic(m.clone());
    let got = std::fs::read(m.join("big.bin"))
        .unwrap_or_else(|e| panic!("big.bin: {e}\n{}", log_trouble(&d)));
    assert!(
        got == data,
        "big.bin: wrong bytes ({} of {})",
        got.len(),
        data.len()
    );
    let cuts = proxy.cuts();
    assert_eq!(cuts.len(), 1, "the S3 download was not cut: {cuts:?}");
    let (start, from) = resumed_after(&proxy, &cuts[0]);
    eprintln!(
        "S3: cut after {} bytes from {from}, resumed at {start}",
        cuts[0].body
    );
    assert!(
        start >= from + cuts[0].body / 2 && start <= from + cuts[0].body,
        "resumed at {start}, but {} bytes from {from} had arrived",
        cuts[0].body
    );
}

/// (e) A fetch answered 429 with `Retry-After: 2` is tried again after
/// 2 s, not before (the gap is measured at the server).
#[test]
fn a_429_with_retry_after_is_retried_after_that_long() {
    let _g = serial();
    let s = Scratch::new();
    let data = noise(46, 5000);
    // In a subdirectory, untouched until the 429 is armed: its size and
    // contents need a fetch (the default profile has no object-info).
    publish(&s, "busy", &[("sub/only.txt".to_string(), data.clone())]);
    let git = GitServer::start(&s.srv(), &["--hostile"]);
    let (cfg, m) = git_config(s.dir(), "busy", &git.url("busy"));
    let d = Daemon::start(&cfg, &[m.clone()], &s.dir().join("daemon.log"));
    let _abort = AbortOnPanic(m.clone());
    std::thread::sleep(Duration::from_secs(1));
    git.reset_stats();
    let (code, _) = http_get(
        &format!("127.0.0.1:{}", git.port),
        "/_hostile?repo=busy.git&mode=429:2:1",
    );
    assert_eq!(code, 200);
    let path = m.join("sub/only.txt");
    let r = timed(Duration::from_secs(30), move || std::fs::read(path));
    let (got, took) =
        r.unwrap_or_else(|| panic!("the read did not end in 30 s\n{}", log_trouble(&d)));
    let got = got.unwrap_or_else(|e| panic!("only.txt: {e}\n{}", log_trouble(&d)));
    assert!(got == data, "only.txt: wrong bytes");
    let log = fetches(git.port);
    let i = log
        .iter()
        .position(|f| f.throttled)
        .expect("no fetch was answered 429");
    let next = log.get(i + 1).unwrap_or_else(|| {
        panic!(
            "the refused fetch was not tried again ({} fetches)",
            log.len()
        )
    });
    let gap = next.t - log[i].t;
    eprintln!(
        "429 with Retry-After: 2: tried again after {gap:.3} s (the read took {:.3} s)",
        took.as_secs_f64()
    );
    assert!(
        gap >= 1.95,
        "tried again after {gap:.3} s, before the 2 s of Retry-After\n{}",
        log_trouble(&d)
    );
    assert!(
        gap < 6.0,
        "tried again only after {gap:.3} s (Retry-After: 2)"
    );
}
