//! End-to-end: a mounted git repository holds the bytes `git clone` writes
//! on Linux, `.gitattributes` conversions included (`eol=crlf`, `text
//! eol=lf` on CRLF content, `text=auto`, `working-tree-encoding`,
//! `ident`, nested files overriding the root's); with
//! `checkout_filters = false` it holds the raw blobs; `user.repofs.oid` is
//! the blob id either way. The repository is served by git http-backend.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

/// Blobs committed exactly as given (no filter on the way in), so that
/// CRLF and UTF-8 contents reach the repository whatever the attributes.
const FILES: &[(&str, &[u8])] = &[
    (
        ".gitattributes",
        b"*.bat text eol=crlf\n\
          *.crlf text eol=lf\n\
          *.u16 working-tree-encoding=UTF-16LE-BOM\n\
          *.u16crlf working-tree-encoding=UTF-16LE-BOM text eol=crlf\n\
          *.id ident\n\
          *.auto text=auto eol=crlf\n\
          *.txt text\n\
          [attr]winscript text eol=crlf\n\
          *.cmd winscript\n\
          /top-only.md ident\n\
          dup1/*.txt eol=crlf\n",
    ),
    ("run.bat", b"@echo off\necho one\necho two\n"),
    ("same-as-run.txt", b"@echo off\necho one\necho two\n"),
    ("mixed.bat", b"a\r\nb\nc\r\n"),
    ("doc.crlf", b"line one\r\nline two\r\n"),
    ("hello.u16", "h\u{e9}llo w\u{f6}rld\n".as_bytes()),
    ("empty.u16", b""),
    ("not-utf8.u16", b"caf\xe9\n"),
    ("both.u16crlf", "\u{e9}a\n\u{e9}b\n".as_bytes()),
    ("version.id", b"// $Id$\nint x;\n"),
    ("text.auto", b"auto one\nauto two\n"),
    ("binary.auto", b"bin\n\0\x01\x02\n"),
    ("build.cmd", b"call x\ncall y\n"),
    ("top-only.md", b"$Id$\n"),
    ("plain.c", b"int main() { return 0; }\n"),
    // Nested attributes override the root's for their directory.
    ("sub/.gitattributes", b"*.bat -text\n*.md ident\n"),
    ("sub/raw.bat", b"kept\nas is\n"),
    ("sub/top-only.md", b"$Id$\n"),
    ("sub/deeper/.gitattributes", b"*.bat text eol=crlf\n"),
    ("sub/deeper/again.bat", b"crlf\nagain\n"),
    ("sub/deeper/note.md", b"$Id$ inherited\n"),
    ("other/x.bat", b"other\ndir\n"),
    // One tree at two paths, converted at one of them only.
    ("dup1/same.txt", b"same\ntree\n"),
    ("dup2/same.txt", b"same\ntree\n"),
];

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Makes `<srv>/attrs.git` from [`FILES`] (plus an executable and a
/// symbolic link) and returns its commit.
fn make_repo(scratch: &Scratch) -> String {
    let work = scratch.work();
    for (path, data) in FILES {
        let oid = git_stdin(
            &work,
            &["hash-object", "-w", "--stdin", "--no-filters"],
            data,
        );
        git(
            &work,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("100644,{oid},{path}"),
            ],
        );
    }
    let oid = git_stdin(
        &work,
        &["hash-object", "-w", "--stdin", "--no-filters"],
        b"run\nme\n",
    );
    git(
        &work,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("100755,{oid},tools/go.bat"),
        ],
    );
    let oid = git_stdin(
        &work,
        &["hash-object", "-w", "--stdin", "--no-filters"],
        b"run.bat",
    );
    git(
        &work,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("120000,{oid},link.bat"),
        ],
    );
    publish_committed(&scratch.srv(), &work, "attrs")
}

/// Runs git with `input` on its standard input.
fn git_stdin(dir: &Path, args: &[&str], input: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "git {args:?} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// (path, kind, size, executable) of everything under `root` but `.git`,
/// sorted by path.
fn inventory(root: &Path) -> Vec<(String, &'static str, u64, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if rel == ".git" {
                continue;
            }
            let m = std::fs::symlink_metadata(&path).unwrap();
            let kind = if m.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if m.file_type().is_symlink() {
                "symlink"
            } else {
                "file"
            };
            let size = if m.is_dir() { 0 } else { m.len() };
            out.push((rel, kind, size, m.permissions().mode() & 0o100 != 0));
        }
    }
    out.sort();
    out
}

fn mount(scratch: &Scratch, server: &GitServer, extra: &str) -> (Daemon, PathBuf) {
    mount_in(scratch.dir(), server, extra)
}

/// A daemon with its own config, cache and mount root under `dir`.
fn mount_in(dir: &Path, server: &GitServer, extra: &str) -> (Daemon, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = write_config(
        dir,
        &dir.join("mnt"),
        &dir.join("cache"),
        &[RepoEntry {
            name: "attrs".into(),
            url: server.url("attrs"),
            extra: extra.into(),
        }],
        "",
    );
    let m = dir.join("mnt").join("attrs");
    let d = Daemon::start(&cfg, std::slice::from_ref(&m), &dir.join("daemon.log"));
    (d, m)
}

#[test]
fn a_mount_holds_the_bytes_git_clone_writes() {
    let scratch = Scratch::new();
    let commit = make_repo(&scratch);
    let server = GitServer::start(&scratch.srv(), &[]);
    // The clone git writes, with no user or system configuration.
    let clone = scratch.dir().join("clone");
    let home = scratch.dir().join("home");
    std::fs::create_dir_all(&home).unwrap();
    git(&home, &["clone", "-q", &server.url("attrs"), s(&clone)]);
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), commit);
    // The conversions the test is about did happen in the clone.
    assert_eq!(
        std::fs::read(clone.join("run.bat")).unwrap(),
        b"@echo off\r\necho one\r\necho two\r\n"
    );
    assert_eq!(
        std::fs::read(clone.join("doc.crlf")).unwrap(),
        b"line one\r\nline two\r\n"
    );
    assert_eq!(
        &std::fs::read(clone.join("hello.u16")).unwrap()[..2],
        b"\xff\xfe"
    );
    assert_eq!(
        std::fs::read(clone.join("sub/raw.bat")).unwrap(),
        b"kept\nas is\n"
    );

    let (mut d, m) = mount(&scratch, &server, "");
    let (code, out, err) = sh(
        &format!(
            "diff -r --no-dereference --exclude=.git {} {}",
            s(&clone),
            s(&m)
        ),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(code, 0, "the mount differs from the clone:\n{out}{err}");
    assert_eq!(
        inventory(&m),
        inventory(&clone),
        "stat inventory (path, kind, size, executable)"
    );
    // Reading does not change what a listing said (sizes are the converted ones).
    for (path, kind, size, _) in inventory(&m) {
        if kind == "file" {
            assert_eq!(
                std::fs::read(m.join(&path)).unwrap().len() as u64,
                size,
                "{path}"
            );
        }
    }
    assert_eq!(
        std::fs::read(m.join("dup1/same.txt")).unwrap(),
        b"same\r\ntree\r\n"
    );
    assert_eq!(
        std::fs::read(m.join("dup2/same.txt")).unwrap(),
        b"same\ntree\n"
    );
    let tree = git(&clone, &["rev-parse", "HEAD:dup2"]);
    assert_eq!(tree, git(&clone, &["rev-parse", "HEAD:dup1"]));
    for dir in ["dup1", "dup2"] {
        assert_eq!(xattr_text(&m.join(dir), "user.repofs.oid"), tree, "{dir}");
    }
    // The id is the blob's, not the converted bytes'.
    for path in [
        "run.bat",
        "hello.u16",
        "version.id",
        "plain.c",
        "sub/raw.bat",
    ] {
        let blob = git(&clone, &["rev-parse", &format!("HEAD:{path}")]);
        assert_eq!(xattr_text(&m.join(path), "user.repofs.oid"), blob, "{path}");
    }
    d.stop();

    // A fresh daemon on the warm cache answers the same.
    let (mut d, m) = mount(&scratch, &server, "");
    assert_eq!(inventory(&m), inventory(&clone));
    d.stop();
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
}

#[test]
fn checkout_filters_off_serves_the_raw_blobs() {
    let scratch = Scratch::new();
    make_repo(&scratch);
    let server = GitServer::start(&scratch.srv(), &[]);
    let bare = scratch.srv().join("attrs.git");
    let (mut d, m) = mount(&scratch, &server, "checkout_filters = false");
    let mut compared = 0;
    for (path, kind, size, _) in inventory(&m) {
        if kind != "file" {
            continue;
        }
        let out = std::process::Command::new("git")
            .args(["cat-file", "blob", &format!("HEAD:{path}")])
            .current_dir(&bare)
            .output()
            .unwrap();
        assert!(out.status.success(), "{path}");
        assert_eq!(std::fs::read(m.join(&path)).unwrap(), out.stdout, "{path}");
        assert_eq!(size, out.stdout.len() as u64, "{path}");
        compared += 1;
    }
    assert_eq!(compared, FILES.len() + 1);
    let blob = git(&bare, &["rev-parse", "HEAD:run.bat"]);
    assert_eq!(xattr_text(&m.join("run.bat"), "user.repofs.oid"), blob);
    d.stop();
}

#[test]
fn a_malformed_gitattributes_does_not_break_the_mount() {
    let scratch = Scratch::new();
    let work = scratch.work();
    std::fs::write(
        work.join(".gitattributes"),
        format!(
            "*.bat bad@name\n{} ident\n*.txt text eol=crlf\n\0\u{fffd}garbage\n",
            "x".repeat(3000)
        ),
    )
    .unwrap();
    std::fs::write(work.join("a.bat"), b"one\ntwo\n").unwrap();
    std::fs::write(work.join("b.txt"), b"one\ntwo\n").unwrap();
    publish_repo(&scratch.srv(), &work, "attrs");
    let server = GitServer::start(&scratch.srv(), &[]);
    let clone = scratch.dir().join("clone");
    let home = scratch.dir().join("home");
    std::fs::create_dir_all(&home).unwrap();
    git(&home, &["clone", "-q", &server.url("attrs"), s(&clone)]);
    let (mut d, m) = mount(&scratch, &server, "");
    assert_eq!(
        std::fs::read(m.join("a.bat")).unwrap(),
        std::fs::read(clone.join("a.bat")).unwrap()
    );
    assert_eq!(std::fs::read(m.join("b.txt")).unwrap(), b"one\r\ntwo\r\n");
    assert_eq!(
        std::fs::read(clone.join("b.txt")).unwrap(),
        b"one\r\ntwo\r\n"
    );
    d.stop();
    let log = d.log_text();
    assert!(log.contains("ignored"), "{log}");
}

/// `ls -lR` of a fresh mount: the server's (requests, bytes) for it.
fn listing_cost(dir: &Path, server: &GitServer, extra: &str) -> (u64, u64) {
    server.reset_stats();
    let (mut d, m) = mount_in(dir, server, extra);
    let (code, _, err) = sh(
        &format!("ls -lR {} >/dev/null", s(&m)),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");
    d.stop();
    server.stats("attrs")
}

#[test]
fn files_without_conversions_are_listed_as_lazily_as_before() {
    let scratch = Scratch::new();
    let work = scratch.work();
    // Attributes, none of which changes bytes on checkout.
    std::fs::write(
        work.join(".gitattributes"),
        "*.png binary
*.txt text
*.md text=auto
",
    )
    .unwrap();
    std::fs::create_dir_all(work.join("docs")).unwrap();
    for i in 0..20 {
        std::fs::write(work.join(format!("docs/f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    std::fs::write(work.join("docs/big.txt"), noise(7, 2 << 20)).unwrap();
    std::fs::write(work.join("README.md"), "# readme\n").unwrap();
    publish_repo(&scratch.srv(), &work, "attrs");
    let server = GitServer::start(&scratch.srv(), &[]);
    let off = listing_cost(
        &scratch.dir().join("off"),
        &server,
        "checkout_filters = false",
    );
    let on = listing_cost(&scratch.dir().join("on"), &server, "");
    // Bytes vary run to run (a size probe stops reading mid-stream); the
    // requests do not.
    assert_eq!(
        on.0, off.0,
        "requests of ls -lR with checkout filters on and off: {on:?} {off:?}"
    );
    assert!(
        on.1 < 1 << 20,
        "the large file was downloaded to list it: {on:?}"
    );

    // With a conversion, only the converted files are fetched: still not the large one.
    std::fs::write(
        work.join(".gitattributes"),
        "*.txt text eol=crlf
*.dat -text
",
    )
    .unwrap();
    std::fs::write(work.join("docs/big.dat"), noise(8, 2 << 20)).unwrap();
    std::fs::remove_file(work.join("docs/big.txt")).unwrap();
    publish_repo(&scratch.srv(), &work, "attrs");
    let on = listing_cost(&scratch.dir().join("on2"), &server, "");
    assert!(
        on.1 < 1 << 20,
        "a file without conversion was downloaded to list it: {on:?}"
    );
    let (mut d, m) = mount_in(&scratch.dir().join("on3"), &server, "");
    let md = std::fs::metadata(m.join("docs/f3.txt")).unwrap();
    assert_eq!(md.len(), "file 3\r\n".len() as u64);
    assert_eq!(std::fs::read(m.join("docs/f3.txt")).unwrap(), b"file 3\r\n");
    d.stop();
}
