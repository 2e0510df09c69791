//! End-to-end tests on a bad network (issue "One fetch engine"): real FUSE
//! mounts of the test git server through tests/support/fault_proxy.py, which
//! cuts, stalls, flips and trickles its answers, seeded (the seed is printed;
//! `FAULT_SEED=N` replays). The daemon runs with its default timeouts,
//! attempts and speed floor: what is tested is what a user gets. The tests
//! run one at a time (their bounds are times, and the machine may have two
//! cores). Resumed LFS and S3 downloads and Retry-After: tests/faults_retry.rs.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::faults::*;
use common::*;

/// The fault profile of the issue (a 25 % chance of a fault per MB of
/// answer: 0.45 % per 16 KiB), with short stalls.
const PROFILE: &[&str] = &[
    "--cut",
    "0.0025",
    "--stall",
    "0.001",
    "--stall-secs",
    "3",
    "--flip",
    "0.001",
];
/// The longest a single read may take under the profile.
const READ_BOUND: Duration = Duration::from_secs(150);

/// 5,000 files in 100 directories: most of 100 B to 56 KB, one in 50 of
/// 64 to 600 KiB, and four of 1.5 to 4 MiB (read by streaming): 116 MB.
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

/// (b) The freeze of the issue: the trickling transfer is a directory's
/// prefetch, which lookups and readers of that directory share. While it
/// trickles, `ls` of the root and `stat` in another directory answer in
/// under 2 s, and 16 readers of the trickling directory all get their
/// files right within 60 s (a wait for another request's flight is bounded).
#[test]
fn a_trickling_prefetch_does_not_hold_the_other_readers() {
    let _g = serial();
    let s = Scratch::new();
    // p/: 40 files of 100 KiB, one prefetch of 4 MB; q/: small files.
    let mut files: Vec<(String, Vec<u8>)> = (0..40u64)
        .map(|i| {
            (
                format!("p/f{i:02}.bin"),
                noise(300 + i, 100 * 1024 + i as usize),
            )
        })
        .collect();
    for i in 0..10u64 {
        files.push((format!("q/g{i}.txt"), noise(400 + i, 700 + i as usize)));
    }
    publish(&s, "pre", &files);
    let git = GitServer::start(&s.srv(), &[]);
    let proxy = FaultProxy::start(
        git.port,
        6,
        &[
            "--trickle-after",
            "1048576",
            "--trickle-rate",
            "1024",
            "--trickle-connections",
            "1",
        ],
    );
    let (cfg, m) = git_config(s.dir(), "pre", &format!("{}/pre.git", proxy.base()));
    let d = Daemon::start(&cfg, &[m.clone()], &s.dir().join("daemon.log"));
    let _abort = AbortOnPanic(m.clone());
    assert_eq!(std::fs::read_dir(&m).unwrap().count(), 2);
    let first = m.join("p/f00.bin");
    let _reader = std::thread::spawn(move || std::fs::read(first));
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.faults("trickle") == 0 {
        assert!(
            Instant::now() < deadline,
            "no connection trickled:\n{}",
            log_trouble(&d)
        );
    }
    let root = m.clone();
    let ls = timed(Duration::from_secs(2), move || {
        std::fs::read_dir(&root).map(|r| r.count())
    });
    assert!(
        ls.is_some(),
        "`ls` of the root took over 2 s while the prefetch trickles\n{}",
        log_trouble(&d)
    );
    let other = m.join("q/g3.txt");
    let st = timed(Duration::from_secs(2), move || {
        std::fs::metadata(other).map(|m| m.len())
    });
    let (len, took) = st.unwrap_or_else(|| {
        panic!(
            "`stat q/g3.txt` took over 2 s while the prefetch trickles\n{}",
            log_trouble(&d)
        )
    });
    assert_eq!(len.expect("stat q/g3.txt"), 703);
    eprintln!(
        "stat in another directory during the trickle: {:.3} s",
        took.as_secs_f64()
    );
    let p: Vec<(String, Vec<u8>)> = files
        .iter()
        .filter(|(n, _)| n.starts_with("p/"))
        .cloned()
        .collect();
    let root = m.clone();
    let w = timed(Duration::from_secs(65), move || {
        walk(&root, &p, Duration::from_secs(60))
    });
    let (w, _) = w.unwrap_or_else(|| {
        panic!(
            "16 readers of the trickling directory were not done in 60 s\n{}",
            log_trouble(&d)
        )
    });
    report("16 readers of the trickling directory", &w);
    assert!(
        w.errors.is_empty() && w.wrong.is_empty(),
        "{:?} {:?}\n{}",
        w.errors,
        w.wrong,
        log_trouble(&d)
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
