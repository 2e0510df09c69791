//! A cache directory on a disk smaller than the repository (and than
//! `cache_size`): every file still reads with its true bytes, the cache
//! evicts to make room, no temp file is left, the log says the disk is
//! full (not that the server sent bad data), and `repofs status` shows the
//! disk's free space.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_full_disk_never_costs_a_byte() {
    require_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let work = new_worktree(&dir.join("work"));
    let mut files = Vec::new();
    for i in 0..12u64 {
        let rel = format!("big/b{i:02}.bin");
        std::fs::create_dir_all(work.join("big")).unwrap();
        std::fs::write(work.join(&rel), noise(i, 4_000_000)).unwrap();
        files.push((rel, i, 4_000_000usize));
    }
    // Larger than the whole disk: it can only be served from memory.
    std::fs::write(work.join("big/huge.bin"), noise(99, 25_000_000)).unwrap();
    files.push(("big/huge.bin".to_string(), 99, 25_000_000));
    for i in 0..200u64 {
        let rel = format!("small/s{i:03}.txt");
        std::fs::create_dir_all(work.join("small")).unwrap();
        std::fs::write(work.join(&rel), noise(1000 + i, 20_000)).unwrap();
        files.push((rel, 1000 + i, 20_000));
    }
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    publish_repo(&srv, &work, "full");
    let server = GitServer::start(&srv, &[]);

    // 20 MB of disk for a 77 MB repository, with cache_size at 2 GiB.
    let disk = Tmpfs::mount(&dir.join("disk"), "20m");
    let cache = disk.0.join("cache");
    let mnt = dir.join("mnt");
    // The server needs a few seconds to start a pack of this many large
    // blobs (git searches for deltas first): a timeout that allows it.
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "mount_root = \"{}\"\ncache_dir = \"{}\"\ncache_size = \"2GiB\"\nrequest_timeout = \"30s\"\n\n[[repository]]\nname = \"full\"\nprovider = \"git\"\nurl = \"{}\"\n",
            mnt.display(),
            cache.display(),
            server.url("full")
        ),
    )
    .unwrap();
    let m = mnt.join("full");
    let mut d = Daemon::start(&config, &[m.clone()], &dir.join("daemon.log"));
    for round in 0..2 {
        for (rel, seed, size) in &files {
            let got = std::fs::read(m.join(rel))
                .unwrap_or_else(|e| panic!("round {round}: {rel}: {e}\n{}", d.log_text()));
            assert!(
                got == noise(*seed, *size),
                "round {round}: {rel}: wrong bytes ({} read)",
                got.len()
            );
        }
    }
    let log = d.log_text();
    assert!(log.contains("the cache is full"), "{log}");
    assert!(!log.contains("invalid data from the server"), "{log}");
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("content/tmp"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    std::thread::sleep(Duration::from_secs(2)); // the status file is refreshed
    let (code, out, err) = sh(
        &format!("{} --config {} status", repofs_bin(), config.display()),
        Duration::from_secs(20),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("disk:") && out.contains("free of"), "{out}");
    d.stop();
}
