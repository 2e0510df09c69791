//! `repofs prefetch PATH...`: every regular file under the paths is read
//! into the daemon's cache, so that the subtrees read right with the server
//! gone; the summary line; a file that cannot be read fails the command
//! (exit 1, its path on stderr); a path outside any mount is refused.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// `count` small files of varied sizes in `work/<dir>`; returns `count`.
fn small_files(work: &Path, dir: &str, count: usize, seed: u64) -> usize {
    std::fs::create_dir_all(work.join(dir)).unwrap();
    for i in 0..count {
        let size = 500 + (i * 7_919) % 20_000;
        std::fs::write(
            work.join(format!("{dir}/f{i:03}.txt")),
            noise(seed + i as u64, size),
        )
        .unwrap();
    }
    count
}

#[test]
fn prefetched_subtrees_read_with_the_server_gone() {
    let scratch = Scratch::new();
    let (dir, srv, work) = (scratch.dir(), scratch.srv(), scratch.work());
    // Under the two paths prefetched: small files in nested directories,
    // files larger than a listing prefetches, and a symlink (not a file).
    let mut wanted = small_files(&work, "sub/a", 60, 1_000)
        + small_files(&work, "sub/b/deeper", 40, 2_000)
        + small_files(&work, "other", 50, 3_000)
        + small_files(&work, "other/nested", 10, 4_000);
    std::fs::write(work.join("sub/big.bin"), noise(5, 1_500_000)).unwrap();
    std::fs::write(work.join("other/nested/big.bin"), noise(6, 800_000)).unwrap();
    wanted += 2;
    std::os::unix::fs::symlink("a/f000.txt", work.join("sub/link")).unwrap();
    // Elsewhere: never prefetched.
    small_files(&work, "rest", 48, 5_000);
    std::fs::write(work.join("rest/unread.bin"), noise(7, 600_000)).unwrap();
    std::fs::write(work.join("README.md"), "# prefetch\n").unwrap();
    publish_repo(&srv, &work, "pf");
    let server = GitServer::start(&srv, &[]);
    let config = write_config(
        dir,
        &dir.join("mnt"),
        &dir.join("cache"),
        &[RepoEntry {
            name: "pf".into(),
            url: server.url("pf"),
            extra: String::new(),
        }],
        "",
    );
    let m = dir.join("mnt/pf");
    let mut d = Daemon::start(&config, &[m.clone()], &dir.join("daemon.log"));
    let repofs = |args: String| {
        sh(
            &format!("{} --config {} {args}", repofs_bin(), s(&config)),
            Duration::from_secs(300),
        )
    };

    // stdout is a pipe here: no progress redrawing, a summary at the end.
    let (code, out, err) = repofs(format!(
        "prefetch --jobs 4 {} {}",
        s(&m.join("sub")),
        s(&m.join("other"))
    ));
    assert_eq!(code, 0, "prefetch failed:\n{out}{err}\n{}", d.log_text());
    let summary = out
        .lines()
        .find(|l| l.starts_with("prefetched "))
        .unwrap_or_else(|| panic!("no summary on stdout:\n{out}\n--- stderr ---\n{err}"));
    assert!(
        summary.starts_with(&format!("prefetched {wanted} files")),
        "{wanted} files are under the paths: {summary}"
    );
    assert!(
        summary.contains("from the origin:") || summary.contains("origin traffic unknown"),
        "{summary}"
    );

    // A path outside every mount (files in it): refused, with a message
    // naming it.
    let outside = work.join("sub");
    let (code, out, err) = repofs(format!("prefetch {}", s(&outside)));
    assert_ne!(code, 0, "prefetch of a path outside any mount: {out}{err}");
    assert!(
        err.contains(s(&outside)),
        "the message does not name the path: {err}"
    );

    // rest/'s small files are read now; its large file never is.
    let (code, _, err) = sh(
        &format!("cat {}/rest/*.txt > /dev/null", s(&m)),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");

    // The server goes away and the kernel forgets what it had: the
    // prefetched subtrees still read, every byte from the disk cache.
    drop(server);
    drop_caches();
    for sub in ["sub", "other"] {
        let (code, out, err) = sh(
            &format!(
                "diff -r --no-dereference {} {}",
                s(&m.join(sub)),
                s(&work.join(sub))
            ),
            Duration::from_secs(120),
        );
        assert_eq!(
            code,
            0,
            "{sub} differs with the server gone:\n{out}{err}\n{}",
            d.log_text()
        );
    }
    // What was never read is not there: the server is really gone.
    let e = std::fs::read(m.join("rest/unread.bin")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // A prefetch that cannot read a file: exit 1, the file named on stderr.
    let (code, out, err) = repofs(format!("prefetch {}", s(&m.join("rest"))));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("unread.bin"),
        "the failure is not named: {err}"
    );
    d.stop();
}
