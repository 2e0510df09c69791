//! End-to-end tests of retries on a bad network (issue "One fetch
//! engine"), beside tests/faults.rs: a cut LFS or S3 download resumes by
//! `Range` (tests/support/fault_proxy.py cuts it), and a 429 with
//! `Retry-After` is retried after that long, not before (measured at the
//! git server). The daemon runs with its default timeouts and attempts.

mod common;

use std::time::Duration;

use common::faults::*;
use common::*;

/// The first request after `cut` for the same path whose Range starts
/// within what had arrived:
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
        // A resume starts within what had arrived; a later range (a
        // read-ahead asked before the cut) is not one.
        .find(|(seq, line, range)| {
            *seq > cut.seq
                && path(line) == path(&cut.request)
                && range_start(range).is_some_and(|r| r <= cut_start + cut.body)
        });
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
