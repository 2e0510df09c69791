//! What a mount tells about itself: extended attributes naming the git
//! objects (and LFS objects) behind each path, the Prometheus metrics at
//! `metrics_listen` (counted against what was read and what the servers
//! sent), and the transfers in flight that `repofs status` lists.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A git server forwarding LFS batches to a real LFS server.
struct LfsSetup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    git: GitServer,
    lfs: LfsServer,
}

fn lfs_setup() -> LfsSetup {
    require_prerequisites();
    require_git_lfs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let lfs = LfsServer::start(&dir.join("lfs-store"));
    let upstream = format!("http://127.0.0.1:{}", lfs.port);
    let git = GitServer::start(&dir.join("srv"), &["--lfs-upstream", &upstream]);
    LfsSetup {
        _tmp: tmp,
        dir,
        git,
        lfs,
    }
}

fn config_for(dir: &Path, name: &str, url: String, extra: &str, top: &str) -> (PathBuf, PathBuf) {
    let config = write_config(
        dir,
        &dir.join("mnt"),
        &dir.join("cache"),
        &[RepoEntry {
            name: name.into(),
            url,
            extra: extra.into(),
        }],
        top,
    );
    (config, dir.join("mnt").join(name))
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn names(list: &[&str]) -> Result<Vec<String>, i32> {
    let mut v: Vec<String> = list.iter().map(|n| n.to_string()).collect();
    v.sort();
    Ok(v)
}

#[test]
fn extended_attributes_name_the_objects() {
    let l = lfs_setup();
    let model = noise(21, 200_000);
    let work = l.dir.join("work");
    let commit = push_lfs_repo(&l.git, &l.lfs, &work, "attrs", |w| {
        std::fs::create_dir_all(w.join("sub/inner")).unwrap();
        std::fs::write(w.join("README.md"), "# attributes\n").unwrap();
        std::fs::write(w.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
        std::fs::set_permissions(w.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("README.md", w.join("link")).unwrap();
        std::fs::write(w.join("sub/inner/deep.txt"), "deep\n").unwrap();
        std::fs::write(w.join("sub/model.bin"), &model).unwrap();
    });
    let (config, m) = config_for(&l.dir, "attrs", l.git.url("attrs"), "", "");
    let mut d = Daemon::start(&config, &[m.clone()], &l.dir.join("daemon.log"));
    let rev = |spec: &str| git(&work, &["rev-parse", spec]);
    let oid = "user.repofs.oid";

    // The root: the commit and its tree.
    assert_eq!(xattr_text(&m, "user.repofs.commit"), commit);
    assert_eq!(xattr_text(&m, oid), rev("HEAD^{tree}"));
    assert_eq!(
        xattr_list(&m),
        names(&["user.repofs.commit", "user.repofs.oid"])
    );
    // Files (a plain one, an executable, a nested one): their blob ids.
    for path in ["README.md", "run.sh", "sub/inner/deep.txt"] {
        let p = m.join(path);
        assert_eq!(
            xattr_text(&p, oid),
            rev(&format!("HEAD:{path}")),
            "{path}\n{}",
            d.log_text()
        );
        assert_eq!(xattr_list(&p), names(&[oid]), "{path}");
    }
    // Directories: their tree ids.
    for path in ["sub", "sub/inner"] {
        let p = m.join(path);
        assert_eq!(xattr_text(&p, oid), rev(&format!("HEAD:{path}")), "{path}");
        assert_eq!(xattr_list(&p), names(&[oid]), "{path}");
    }
    // getxattr follows a symlink to its target. (The kernel allows user.*
    // attributes on regular files and directories only: lgetxattr of the
    // link itself never reaches the daemon.)
    assert_eq!(xattr_text(&m.join("link"), oid), rev("HEAD:README.md"));

    // An LFS file: the pointer's blob id, and the LFS object's sha256.
    let lfs_file = m.join("sub/model.bin");
    let pointer = git(&work, &["cat-file", "-p", "HEAD:sub/model.bin"]);
    let pointer_oid = pointer
        .lines()
        .find_map(|l| l.strip_prefix("oid sha256:"))
        .unwrap_or_else(|| panic!("not an LFS pointer: {pointer}"))
        .to_string();
    assert_eq!(pointer_oid, sha256_hex(&model));
    assert_eq!(xattr_text(&lfs_file, oid), rev("HEAD:sub/model.bin"));
    assert_eq!(xattr_text(&lfs_file, "user.repofs.lfs_oid"), pointer_oid);
    assert_eq!(
        xattr_list(&lfs_file),
        names(&["user.repofs.lfs_oid", "user.repofs.oid"])
    );
    let got = std::fs::read(&lfs_file).unwrap();
    assert_eq!(sha256_hex(&got), pointer_oid, "the LFS file's contents");

    // Any other name: ENODATA. Writes: EROFS.
    let readme = m.join("README.md");
    for (path, name) in [
        (&readme, "user.repofs.lfs_oid"),
        (&readme, "user.repofs.commit"),
        (&readme, "user.repofs.etag"),
        (&readme, "user.other"),
        (&m, "user.repofs.nope"),
        (&lfs_file, "user.repofs.commit"),
    ] {
        assert_eq!(
            xattr_get(path, name),
            Err(libc::ENODATA),
            "{} {name}",
            path.display()
        );
    }
    for path in [&readme, &m.join("sub"), &m] {
        for name in ["user.repofs.oid", "user.new"] {
            assert_eq!(
                xattr_set(path, name, b"x"),
                Err(libc::EROFS),
                "setxattr {} {name}",
                path.display()
            );
        }
    }
    assert_eq!(xattr_text(&readme, oid), rev("HEAD:README.md"));
    d.stop();
}

/// `after - before` of one series (0 for a series not there yet).
fn grew(before: &Metrics, after: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

#[test]
fn metrics_count_reads_hits_misses_and_errors() {
    let scratch = Scratch::new();
    let (dir, srv, work) = (scratch.dir(), scratch.srv(), scratch.work());
    std::fs::create_dir_all(work.join("big")).unwrap();
    // Larger than a listing prefetches and than a blob fetched whole
    // (1 MiB): each first open fetches, streamed through the daemon.
    const K: usize = 5;
    let sizes: Vec<usize> = (0..K).map(|i| 1_100_000 + i * 10_001).collect();
    for (i, size) in sizes.iter().enumerate() {
        std::fs::write(
            work.join(format!("big/f{i}.bin")),
            noise(100 + i as u64, *size),
        )
        .unwrap();
    }
    std::fs::write(work.join("README.md"), "# metrics\n").unwrap();
    publish_repo(&srv, &work, "obs");
    let server = GitServer::start(&srv, &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let (config, m) = config_for(
        dir,
        "obs",
        server.url("obs"),
        "refresh = \"never\"",
        // Passthrough, so that its count is checked too (git mounts read
        // without open by default: tests/warm.rs).
        &format!("metrics_listen = \"{addr}\"\nfile_reads = \"passthrough\""),
    );
    let mut d = Daemon::start(&config, &[m.clone()], &dir.join("daemon.log"));
    let repo = [("repository", "obs")];
    let total: usize = sizes.iter().sum();

    // Listing first (lookups, sizes): the reads below are only reads.
    let (code, out, err) = sh(&format!("ls -l {}/big", s(&m)), Duration::from_secs(60));
    assert_eq!(code, 0, "{out}{err}\n{}", d.log_text());
    std::thread::sleep(Duration::from_secs(1));
    server.reset_stats();
    let s0 = scrape(&addr);

    // K files, each opened once: K misses, exactly their bytes served.
    for (i, size) in sizes.iter().enumerate() {
        let got = std::fs::read(m.join(format!("big/f{i}.bin"))).unwrap();
        assert!(
            got == noise(100 + i as u64, *size),
            "big/f{i}.bin: wrong contents"
        );
    }
    let s1 = scrape(&addr);
    let (sent_requests, sent_bytes) = server.stats("obs");
    let ctx = |m: &Metrics| format!("{}\n--- daemon log ---\n{}", m.text, d.log_text());
    assert_eq!(
        grew(&s0, &s1, "repofs_served_bytes_total", &repo),
        total as f64,
        "served bytes after reading {total} bytes:\n{}",
        ctx(&s1)
    );
    assert_eq!(
        grew(&s0, &s1, "repofs_cache_misses_total", &repo),
        K as f64,
        "cache misses after {K} first opens:\n{}",
        ctx(&s1)
    );
    let opens = [("repository", "obs"), ("operation", "open")];
    assert!(
        grew(&s0, &s1, "repofs_fuse_operations_total", &opens) >= K as f64,
        "open operations:\n{}",
        ctx(&s1)
    );
    let origin = grew(&s0, &s1, "repofs_origin_bytes_total", &repo);
    assert!(
        origin >= 0.9 * total as f64,
        "{origin} bytes from the origin for {total} bytes of new files:\n{}",
        ctx(&s1)
    );
    assert!(sent_requests > 0 && sent_bytes > 0);
    assert!(
        (origin - sent_bytes as f64).abs() <= 0.05 * sent_bytes as f64 + 65_536.0,
        "the daemon counted {origin} bytes from the origin, the server sent {sent_bytes}"
    );
    assert!(grew(&s0, &s1, "repofs_origin_requests_total", &repo) > 0.0);

    // Again, with the kernel's copy dropped: K hits, nothing from the origin.
    drop_caches();
    for (i, size) in sizes.iter().enumerate() {
        let got = std::fs::read(m.join(format!("big/f{i}.bin"))).unwrap();
        assert!(
            got == noise(100 + i as u64, *size),
            "big/f{i}.bin: wrong contents"
        );
    }
    let s2 = scrape(&addr);
    assert_eq!(
        grew(&s1, &s2, "repofs_cache_hits_total", &repo),
        K as f64,
        "cache hits after {K} cached opens:\n{}",
        ctx(&s2)
    );
    assert_eq!(grew(&s1, &s2, "repofs_cache_misses_total", &repo), 0.0);
    // Complete cached files are opened in kernel passthrough (this kernel
    // has it, and the daemon says so): their bytes never pass the daemon.
    assert!(
        d.log_text().contains("kernel passthrough for cached files"),
        "{}",
        d.log_text()
    );
    assert_eq!(
        grew(&s1, &s2, "repofs_passthrough_opens_total", &repo),
        K as f64,
        "passthrough opens of the second read:\n{}",
        ctx(&s2)
    );
    assert_eq!(
        grew(&s1, &s2, "repofs_served_bytes_total", &repo),
        0.0,
        "the daemon served bytes of files opened in passthrough:\n{}",
        ctx(&s2)
    );
    for counter in ["repofs_origin_bytes_total", "repofs_origin_requests_total"] {
        assert_eq!(
            grew(&s1, &s2, counter, &repo),
            0.0,
            "{counter} grew on cached reads:\n{}",
            ctx(&s2)
        );
    }

    // A failed lookup is an error of that operation, with its errno.
    let e = std::fs::metadata(m.join("big/no-such-file")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    let s3 = scrape(&addr);
    let enoent = [
        ("repository", "obs"),
        ("operation", "lookup"),
        ("errno", "ENOENT"),
    ];
    assert!(
        grew(&s2, &s3, "repofs_fuse_errors_total", &enoent) >= 1.0,
        "no lookup ENOENT counted:\n{}",
        ctx(&s3)
    );
    let reads = [("repository", "obs"), ("operation", "read")];
    assert!(
        s3.get("repofs_fuse_operation_seconds_bucket", &reads)
            .is_some(),
        "no read latency histogram:\n{}",
        s3.text
    );
    assert!(s3.value("repofs_fuse_operation_seconds_count", &reads) >= 2.0 * K as f64);
    assert_eq!(
        s3.value("repofs_cache_capacity_bytes", &[]),
        (2u64 << 30) as f64,
        "cache_size is 2GiB:\n{}",
        s3.text
    );
    let origin_total = s3.value("repofs_origin_bytes_total", &repo);
    assert!(origin_total > 0.0);
    // The cache gauges may be refreshed periodically: give them time.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = scrape(&addr);
        let (bytes, entries) = (
            now.value("repofs_cache_bytes", &[]),
            now.value("repofs_cache_entries", &[]),
        );
        if bytes >= total as f64 && entries >= K as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cache gauges: {bytes} bytes, {entries} entries:\n{}",
            now.text
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, body) = http_get(&addr, "/nonexistent");
    assert_eq!(status, 404, "{body}");
    d.stop();
}

/// Reads `rel` under the mount `m` on a thread (its origin must be slow)
/// while `repofs status` is polled until it lists the transfer; checks the
/// status file (`<cache>/state/status.json`) and the `fetches_in_flight`
/// gauge of repository `repo` then, and that both clear once the read ends.
fn watch_transfer(
    d: &Daemon,
    config: &Path,
    cache: &Path,
    metrics: &str,
    (m, repo, rel): (&Path, &str, &str),
    expect: &[u8],
) {
    let status = || {
        let (code, out, err) = sh(
            &format!("{} --config {} status", repofs_bin(), s(config)),
            Duration::from_secs(30),
        );
        assert_eq!(code, 0, "status: {out}{err}");
        out
    };
    let total = expect.len() as u64;
    let path = m.join(rel);
    let reader = std::thread::spawn(move || std::fs::read(path));
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let out = status();
        if let Some(found) = out
            .lines()
            .find(|x| x.contains("transferring") && x.contains(rel))
        {
            break found.to_string();
        }
        assert!(
            !reader.is_finished(),
            "the read ended before status showed a transfer:\n{out}\n{}",
            d.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "status never showed the transfer:\n{out}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // "transferring data/big.bin: 3.0 MiB of 12.0 MiB (1.2 MiB/s)"
    let total_text = format!("{:.1} MiB", total as f64 / (1u64 << 20) as f64);
    assert!(
        line.contains(&format!("transferring {rel}: "))
            && line.contains(&format!(" of {total_text} ("))
            && line.contains("/s)"),
        "not `transferring {rel}: DONE of {total_text} (RATE/s)`: {line}"
    );
    // The status file `repofs status` just had rewritten holds the same.
    let text = std::fs::read_to_string(cache.join("state/status.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let transfer = doc["repositories"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"] == repo)
        .flat_map(|r| r["transfers"].as_array().cloned().unwrap_or_default())
        .find(|t| t["path"] == rel)
        .unwrap_or_else(|| panic!("no transfer of {rel} in the status file: {text}"));
    assert_eq!(transfer["total"].as_u64(), Some(total), "{text}");
    let done = transfer["done"].as_u64().expect("done");
    assert!(done <= total, "{text}");
    assert!(transfer["rate"].as_f64().is_some(), "{text}");
    let in_flight = [("repository", repo)];
    let scraped = scrape(metrics);
    assert!(
        scraped.value("repofs_fetches_in_flight", &in_flight) >= 1.0,
        "no fetch in flight during a transfer:\n{}",
        scraped.text
    );

    let got = reader
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    assert!(got == expect, "wrong contents ({} bytes read)", got.len());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = status();
        let now = scrape(metrics).value("repofs_fetches_in_flight", &in_flight);
        if !out.contains("transferring") && now == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a finished transfer is still listed ({now} fetches in flight):\n{out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn status_lists_a_git_transfer_while_it_runs() {
    let scratch = Scratch::new();
    let (dir, srv, work) = (scratch.dir(), scratch.srv(), scratch.work());
    std::fs::create_dir_all(work.join("data")).unwrap();
    let big = noise(31, 12 << 20);
    std::fs::write(work.join("data/big.bin"), &big).unwrap();
    std::fs::write(work.join("README.md"), "# models\n").unwrap();
    publish_repo(&srv, &work, "models");
    let server = GitServer::start(&srv, &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let (config, m) = config_for(
        dir,
        "models",
        server.url("models"),
        "",
        &format!("metrics_listen = \"{addr}\""),
    );
    let mut d = Daemon::start(&config, &[m.clone()], &dir.join("daemon.log"));
    assert_eq!(
        std::fs::metadata(m.join("data/big.bin")).unwrap().len(),
        big.len() as u64
    );
    server.set_fault("slow"); // about 1.3 MB/s: some 10 s for the file
    watch_transfer(
        &d,
        &config,
        &dir.join("cache"),
        &addr,
        (m.as_path(), "models", "data/big.bin"),
        &big,
    );
    server.set_fault("ok");
    d.stop();
}

#[test]
fn status_lists_an_lfs_transfer_while_it_runs() {
    let l = lfs_setup();
    let big = noise(32, 24 << 20);
    push_lfs_repo(&l.git, &l.lfs, &l.dir.join("work"), "media", |w| {
        std::fs::create_dir_all(w.join("data")).unwrap();
        std::fs::write(w.join("data/big.bin"), &big).unwrap();
        std::fs::write(w.join("README.md"), "# media\n").unwrap();
    });
    let addr = format!("127.0.0.1:{}", free_port());
    let (config, m) = config_for(
        &l.dir,
        "media",
        l.git.url("media"),
        "",
        &format!("metrics_listen = \"{addr}\""),
    );
    let mut d = Daemon::start(&config, &[m.clone()], &l.dir.join("daemon.log"));
    assert_eq!(
        std::fs::metadata(m.join("data/big.bin")).unwrap().len(),
        big.len() as u64
    );
    l.lfs.control("rate=3145728"); // 3 MiB/s: some 8 s for the file
    watch_transfer(
        &d,
        &config,
        &l.dir.join("cache"),
        &addr,
        (m.as_path(), "media", "data/big.bin"),
        &big,
    );
    l.lfs.control("rate=0");
    d.stop();
}
