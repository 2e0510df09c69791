//! End-to-end tests that a mount answers system calls the way a local file
//! system does where tools depend on it: over-long names, and directory
//! link counts that never claim "no subdirectories".

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;

#[test]
fn long_names_and_directory_link_counts_answer_as_locally() {
    require_prerequisites();
    let s = Scratch::new();
    let work = new_worktree(&s.work());
    for d in ["top/a", "top/b", "top/c/deeper", "leaf"] {
        std::fs::create_dir_all(work.join(d)).unwrap();
        std::fs::write(work.join(d).join("f"), b"x\n").unwrap();
    }
    std::fs::write(work.join("top/file"), b"y\n").unwrap();
    git(&work, &["add", "-A"]);
    std::fs::create_dir_all(s.srv()).unwrap();
    publish_committed(&s.srv(), &work, "names");
    let git_server = GitServer::start(&s.srv(), &[]);
    let cfg = write_config(
        s.dir(),
        &s.dir().join("mnt"),
        &s.dir().join("cache"),
        &[RepoEntry {
            name: "names".into(),
            url: git_server.url("names"),
            extra: String::new(),
        }],
        "",
    );
    let mnt = s.dir().join("mnt/names");
    let _d = Daemon::start(&cfg, std::slice::from_ref(&mnt), &s.dir().join("log"));

    let long = "n".repeat(256);
    let err = std::fs::symlink_metadata(mnt.join(&long)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    let err = std::fs::symlink_metadata(mnt.join("top").join(&long)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    let err = std::fs::symlink_metadata(mnt.join("n".repeat(255))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");

    // ext4 says 2 + subdirectories, btrfs says 1: either is honest; 2 for a
    // directory with subdirectories is not (find would skip them).
    for (dir, subdirs) in [("top", 3), ("leaf", 0), ("", 2), ("top/c", 1)] {
        let n = std::fs::metadata(mnt.join(dir)).unwrap().nlink();
        assert!(
            n == 1 || n == 2 + subdirs,
            "{dir}: st_nlink {n} with {subdirs} subdirectories"
        );
    }
    // And find, which trusts link counts, finds every directory.
    let (code, out, err) = sh(
        &format!("find {} -type d | wc -l", mnt.display()),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "7", "{out}");
}
