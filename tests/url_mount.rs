//! Mounts given on the command line, with no config file anywhere: `repofs
//! mount URL DIR` of a git repository over HTTP (public, and behind a token
//! read from the environment) and of an S3 prefix on moto, each compared
//! with the same files on disk (`diff -r`) and stopped with SIGTERM; `repofs
//! check URL`; the error for a URL whose provider cannot be told; and
//! `repofs --version`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const TOKEN: &str = "url-mount-token-4242";
const TOKEN_VAR: &str = "REPOFS_TEST_URL_TOKEN";

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// HOME (and working directory) of every command: no config in it.
    home: PathBuf,
}

fn fixture() -> Fixture {
    require_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    Fixture {
        _tmp: tmp,
        dir,
        home,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

impl Fixture {
    /// What every command gets: a HOME and XDG directories with no config.
    fn env(&self) -> Vec<(&'static str, String)> {
        let home = s(&self.home);
        vec![
            ("HOME", home.to_string()),
            ("XDG_CONFIG_HOME", format!("{home}/.config")),
            ("XDG_CACHE_HOME", format!("{home}/.cache")),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    }

    /// Runs `repofs <args>` from HOME with [`Fixture::env`] plus `vars`
    /// (`NAME=value` words, may be empty): (exit code, stdout, stderr).
    fn repofs(&self, vars: &str, args: &str) -> (i32, String, String) {
        let env: Vec<String> = self.env().iter().map(|(k, v)| format!("{k}={v}")).collect();
        sh(
            &format!(
                "cd {} && env {} {vars} {} {args}",
                s(&self.home),
                env.join(" "),
                repofs_bin()
            ),
            Duration::from_secs(60),
        )
    }

    /// `repofs <args>` as a daemon with [`Fixture::env`] plus `extra`,
    /// once `mount` is mounted.
    fn start(&self, args: &[&str], mount: &Path, log: &str, extra: &[(&str, &str)]) -> Daemon {
        let env = self.env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        Daemon::start_args(args, &[mount.to_path_buf()], &self.dir.join(log), &all)
    }
}

/// Publishes `<name>.git` under `srv`: a file, an executable, a symlink,
/// nested directories and a file larger than a listing prefetches.
fn publish_sample(dir: &Path, srv: &Path, name: &str) -> String {
    std::fs::create_dir_all(srv).unwrap();
    let work = new_worktree(&dir.join(format!("work-{name}")));
    std::fs::create_dir_all(work.join("src/deep")).unwrap();
    std::fs::write(work.join("README.md"), "# from the command line\n").unwrap();
    std::fs::write(work.join("src/lib.rs"), "pub fn f() {}\n").unwrap();
    std::fs::write(work.join("src/deep/leaf.txt"), "leaf\n").unwrap();
    std::fs::write(work.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(work.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/lib.rs", work.join("link")).unwrap();
    std::fs::write(work.join("big.bin"), noise(5, 700_000)).unwrap();
    publish_repo(srv, &work, name)
}

#[test]
fn version_names_the_package_version_and_the_commit() {
    let (code, out, err) = sh(
        &format!("{} --version", repofs_bin()),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{out}{err}");
    let line = out.trim();
    let (version, commit) = line
        .strip_prefix("repofs ")
        .and_then(|rest| rest.split_once(' '))
        .unwrap_or_else(|| panic!("not `repofs <version> (<commit>)`: {line:?}"));
    assert_eq!(version, env!("CARGO_PKG_VERSION"), "{line:?}");
    let commit = commit
        .strip_prefix('(')
        .and_then(|c| c.strip_suffix(')'))
        .unwrap_or_else(|| panic!("the commit is not in parentheses: {line:?}"));
    let manifest = env!("CARGO_MANIFEST_DIR");
    let (in_git, _, _) = sh(
        &format!("git -C '{manifest}' rev-parse HEAD"),
        Duration::from_secs(30),
    );
    if commit == "unknown" {
        assert_ne!(
            in_git, 0,
            "built from a git work tree, yet the commit is unknown: {line:?}"
        );
        return;
    }
    let hash = commit.strip_suffix("+dirty").unwrap_or(commit);
    assert!(
        (7..=40).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a short commit id: {line:?}"
    );
    if in_git == 0 {
        let (code, _, err) = sh(
            &format!("git -C '{manifest}' cat-file -e '{hash}^{{commit}}'"),
            Duration::from_secs(30),
        );
        assert_eq!(code, 0, "{hash} is no commit of this repository: {err}");
    }
}

#[test]
fn a_git_url_mounts_without_a_config_file() {
    let f = fixture();
    let srv = f.dir.join("srv");
    let commit = publish_sample(&f.dir, &srv, "x");
    let server = GitServer::start(&srv, &[]);
    let checkout = f.dir.join("checkout");
    git(&f.dir, &["clone", "-q", &server.url("x"), s(&checkout)]);
    assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), commit);

    let (m, cache) = (f.dir.join("m"), f.dir.join("cache"));
    std::fs::create_dir_all(&m).unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let url = server.url("x");
    let mut d = f.start(
        &[
            "mount",
            &url,
            s(&m),
            "--provider",
            "git",
            "--cache-dir",
            s(&cache),
            "--metrics-listen",
            &metrics,
        ],
        &m,
        "daemon.log",
        &[],
    );
    let (code, out, err) = sh(
        &format!(
            "diff -r --no-dereference -x .git {} {}",
            s(&m),
            s(&checkout)
        ),
        Duration::from_secs(120),
    );
    assert_eq!(
        code,
        0,
        "the mount differs from a checkout:\n{out}{err}\n{}",
        d.log_text()
    );
    assert_eq!(std::fs::read(m.join("big.bin")).unwrap(), noise(5, 700_000));

    // The name defaults to the URL's last segment without `.git`.
    let scraped = scrape(&metrics);
    let reads = scraped.value(
        "repofs_fuse_operations_total",
        &[("repository", "x"), ("operation", "read")],
    );
    assert!(
        reads >= 6.0,
        "repository=\"x\" answered {reads} reads of the 6 files diff and read read:\n{}",
        scraped.text
    );
    let (code, out, err) = f.repofs("", &format!("status --cache-dir {}", s(&cache)));
    assert_eq!(code, 0, "status --cache-dir: {out}{err}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("x ") && l.contains("mounted")),
        "status does not show x mounted:\n{out}"
    );
    assert!(
        cache.join("content").is_dir(),
        "nothing in the --cache-dir {}",
        cache.display()
    );

    d.stop();
    assert!(!is_mounted(&m), "{} is still mounted", m.display());
}

#[test]
fn a_token_from_the_environment_for_a_url() {
    let f = fixture();
    let srv = f.dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let work = new_worktree(&f.dir.join("work"));
    std::fs::write(work.join("secret.txt"), "classified\n").unwrap();
    publish_repo(&srv, &work, "private");
    let server = GitServer::start(&srv, &[]);
    server.set_tokens(&[("private", TOKEN)]);
    let url = server.url("private");

    // `repofs check URL`: FAIL without the token, ok with it.
    let (code, out, err) = f.repofs("", &format!("check {url} --provider git"));
    assert_eq!(code, 1, "check without a token: {out}{err}");
    assert!(
        out.lines().any(|l| l.starts_with("FAIL")),
        "no FAIL line: {out}{err}"
    );
    let (code, out2, err2) = f.repofs(
        &format!("{TOKEN_VAR}={TOKEN}"),
        &format!("check {url} --provider git --token-env {TOKEN_VAR}"),
    );
    assert_eq!(code, 0, "check with the token: {out2}{err2}");
    assert!(
        out2.lines().any(|l| l.starts_with("ok")),
        "no ok line: {out2}{err2}"
    );

    // Mounted without the token: the mount is there, its reads are refused.
    let m1 = f.dir.join("m1");
    std::fs::create_dir_all(&m1).unwrap();
    let cache = f.dir.join("cache");
    let mut d = f.start(
        &[
            "mount",
            &url,
            s(&m1),
            "--provider",
            "git",
            "--cache-dir",
            s(&cache),
        ],
        &m1,
        "daemon1.log",
        &[],
    );
    let e = std::fs::read(m1.join("secret.txt")).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EACCES),
        "read without a token: {e}\n{}",
        d.log_text()
    );
    d.stop();
    let log1 = d.log_text();

    // With --token-env and the variable in the daemon's environment.
    let m2 = f.dir.join("m2");
    std::fs::create_dir_all(&m2).unwrap();
    let mut d = f.start(
        &[
            "mount",
            &url,
            s(&m2),
            "--provider",
            "git",
            "--cache-dir",
            s(&cache),
            "--token-env",
            TOKEN_VAR,
        ],
        &m2,
        "daemon2.log",
        &[(TOKEN_VAR, TOKEN)],
    );
    let got = std::fs::read_to_string(m2.join("secret.txt"))
        .unwrap_or_else(|e| panic!("read with the token: {e}\n{}", d.log_text()));
    assert_eq!(got, "classified\n");
    d.stop();
    for text in [&log1, &d.log_text(), &out, &err, &out2, &err2] {
        assert!(!text.contains(TOKEN), "the token leaked:\n{text}");
    }
}

#[test]
fn a_url_of_an_unknown_host_needs_provider() {
    let f = fixture();
    let m = f.dir.join("m");
    std::fs::create_dir_all(&m).unwrap();
    let url = "http://127.0.0.1:9/somewhere/x.git";
    let (code, out, err) = f.repofs(
        "",
        &format!(
            "mount {url} {} --cache-dir {}",
            s(&m),
            s(&f.dir.join("cache"))
        ),
    );
    let mounted = is_mounted(&m);
    if mounted {
        let _ = sh(
            &format!("fusermount3 -u -z {}", s(&m)),
            Duration::from_secs(30),
        );
    }
    assert!(!mounted, "a URL with no provider was mounted");
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("repofs:") && l.contains("--provider")),
        "the error does not point at --provider: {err}"
    );
    // `repofs check` turns the URL into the same entry: the same error.
    let (code, out, err) = f.repofs("", &format!("check {url}"));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--provider"), "{err}");
}

#[test]
fn an_s3_url_mounts_its_prefix_only() {
    let f = fixture();
    let s3 = S3Server::start();
    // The files under the prefix, also on disk, to compare with.
    let local = f.dir.join("local");
    std::fs::create_dir_all(local.join("nested/deeper")).unwrap();
    std::fs::write(local.join("a.txt"), "a at the top\n").unwrap();
    std::fs::write(local.join("nested/b.txt"), "b, one level down\n").unwrap();
    std::fs::write(local.join("nested/deeper/c.bin"), noise(3, 300_000)).unwrap();
    std::fs::write(local.join("nested/deeper/empty"), "").unwrap();
    let etag = s3.py(&format!(
        r#"
s3.create_bucket(Bucket='bkt')
root = {local:?}
for d, _, files in os.walk(root):
    for name in files:
        path = os.path.join(d, name)
        key = 'pre/' + os.path.relpath(path, root)
        with open(path, 'rb') as fh:
            s3.put_object(Bucket='bkt', Key=key, Body=fh.read())
for key in ['outside.txt', 'pre-sibling/x.txt', 'prefix.txt', 'other/pre/a.txt']:
    s3.put_object(Bucket='bkt', Key=key, Body=b'not under the prefix')
print(s3.head_object(Bucket='bkt', Key='pre/a.txt')['ETag'])
"#,
        local = s(&local)
    ));
    let etag = etag.trim().trim_matches('"').to_string();
    assert!(!etag.is_empty());

    let (m, cache) = (f.dir.join("m"), f.dir.join("cache"));
    std::fs::create_dir_all(&m).unwrap();
    let endpoint = s3.endpoint();
    let mut d = f.start(
        &[
            "mount",
            "s3://bkt/pre/",
            s(&m),
            "--endpoint-url",
            &endpoint,
            "--region",
            "us-east-1",
            "--force-path-style",
            "--cache-dir",
            s(&cache),
        ],
        &m,
        "daemon.log",
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
    let (code, out, err) = sh(
        &format!("diff -r {} {}", s(&m), s(&local)),
        Duration::from_secs(120),
    );
    assert_eq!(
        code,
        0,
        "the mount differs from the files under the prefix:\n{out}{err}\n{}",
        d.log_text()
    );
    let mut top: Vec<String> = std::fs::read_dir(&m)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    top.sort();
    assert_eq!(top, ["a.txt", "nested"], "keys outside the prefix show");
    for outside in ["outside.txt", "pre-sibling", "prefix.txt", "other", "pre"] {
        let e = std::fs::metadata(m.join(outside)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{outside}: {e}");
    }
    // An object's ETag, unquoted, as an extended attribute.
    assert_eq!(xattr_text(&m.join("a.txt"), "user.repofs.etag"), etag);
    assert_eq!(
        xattr_list(&m.join("a.txt")),
        Ok(vec!["user.repofs.etag".to_string()])
    );
    d.stop();
    assert!(!is_mounted(&m), "{} is still mounted", m.display());
}

/// The README's quick start, followed literally except for the address:
/// its `repofs mount URL DIR` command (a public GitHub repository, which
/// this machine cannot reach) is run against the local server with
/// `--provider git`, from a HOME with no config and no cache directory,
/// and then `ls DIR` lists the repository.
#[test]
fn the_readme_quick_start_mounts_and_lists() {
    let f = fixture();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let setup = readme
        .split("## Set up on a fresh machine")
        .nth(1)
        .expect("README has a set-up section");
    let line = setup
        .lines()
        .find(|l| l.contains("repofs mount https://"))
        .expect("the set-up section mounts a URL");
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| w.ends_with("repofs") && w.contains("target/release"))
        .expect("the command runs the release binary");
    assert_eq!(words.get(at + 1), Some(&"mount"), "{line}");
    let (url, dir) = (words[at + 2], words[at + 3]);
    assert!(url.starts_with("https://github.com/"), "{line}");
    assert!(dir.starts_with('/'), "{line}");
    let listed = f.dir.join("ls-from-readme");
    let list = setup
        .lines()
        .find(|l| l.contains(&format!("ls {dir}")))
        .unwrap_or_else(|| panic!("the README says to `ls {dir}`"));
    assert!(!list.is_empty());

    let srv = f.dir.join("srv");
    publish_sample(&f.dir, &srv, "quick");
    let server = GitServer::start(&srv, &[]);
    // The README's mount point, moved under the test's directory.
    let m = f.dir.join(dir.trim_start_matches('/'));
    let url = server.url("quick");
    let mut d = f.start(
        &["mount", &url, s(&m), "--provider", "git"],
        &m,
        "quick.log",
        &[],
    );
    let (code, out, err) = sh(
        &format!("ls {} > {}", s(&m), s(&listed)),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "ls failed: {out}{err}\n{}", d.log_text());
    let names = std::fs::read_to_string(&listed).unwrap();
    for n in ["README.md", "big.bin", "run.sh", "src"] {
        assert!(names.lines().any(|l| l == n), "ls lacks {n}: {names}");
    }
    // With no --cache-dir, the cache went to $XDG_CACHE_HOME/repofs.
    assert!(
        f.home.join(".cache/repofs/content").is_dir(),
        "no cache under XDG_CACHE_HOME:\n{}",
        d.log_text()
    );
    d.stop();
    assert!(!is_mounted(&m));
}
