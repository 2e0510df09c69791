//! End-to-end tests of the fleet's shared cache tier (`[shared_cache]`, an
//! S3 bucket every node reads before the origins and writes what it fetched
//! to). Everything is real and on loopback: moto's S3 server holds the tier
//! (bucket `fleet`, prefix `repofs/`) and a source bucket (`source`, mounted
//! as the S3 repository `data`); the git server in its default profile (no
//! object-info, as GitLab and Bitbucket) serves the repository `code`, whose
//! `*.bin` files are in Git LFS on a real LFS server. Each node is a daemon
//! with its own cache_dir and mount root, credentials from the AWS
//! environment.
//!
//! The origins count what they send (git server: `/_stats`; LFS server:
//! `/_seen`; moto: `/_stats` per bucket and S3 operation, see
//! tests/support/s3_server.py), so the tests check what a node cost them:
//!
//! - node B after node A: only the ref advertisement and ls-refs from the
//!   git server, nothing from the LFS server, no GetObject from the source
//!   bucket; B's status counts hits;
//! - three nodes cost the git server the bytes of one (one after the other,
//!   and the last two started together);
//! - an object of the tier whose bytes were replaced is rejected ("failed
//!   verification"), read from the origin and put back;
//! - a tier that hangs or answers 403 costs a warning, never a read, and
//!   little time; `repofs check` says whether the tier can be read and
//!   written.
//!
//! Missing prerequisites (FUSE, git, git-lfs, python3 with
//! tests/support/requirements.txt) fail the tests.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;

/// A node's AWS environment: moto takes any keys; no instance-metadata probes.
const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];
/// The same, for `sh`.
const AWS_SH: &str =
    "AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true";
/// Where the tier's objects live in bucket `fleet`.
const PREFIX: &str = "repofs/";
/// Keys the tier that denies access is given (it knows none).
const DENIED_KEY: &str = "AKIAFLEETDENIED00000";
const DENIED_SECRET: &str = "fleet-denied-secret-value";

/// The servers and the expected contents of one test.
struct Fleet {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    git: GitServer,
    lfs: Option<LfsServer>,
    /// Holds the buckets `fleet` (the tier) and `source`.
    s3: S3Server,
    /// The work tree of `code`: what its mount must show.
    work: PathBuf,
    /// The objects of bucket `source` as files (when there is an S3 repository).
    source: Option<PathBuf>,
}

/// Writes `files` small files over a few directories and a README; with
/// `extras`, a 3 MB file (streamed from the git server, not batched) and a
/// 4 MB LFS file.
fn write_tree(work: &Path, files: usize, extras: bool) {
    let dirs = ["src", "src/util", "docs", "data/a", "data/b"];
    for i in 0..files {
        let d = work.join(dirs[i % dirs.len()]);
        std::fs::create_dir_all(&d).unwrap();
        let len = 2000 + 211 * (i % 37);
        std::fs::write(d.join(format!("file{i:03}.txt")), noise(i as u64 + 1, len)).unwrap();
    }
    std::fs::write(
        work.join("README.md"),
        "# a repository for the fleet tests\n",
    )
    .unwrap();
    if extras {
        std::fs::create_dir_all(work.join("assets")).unwrap();
        std::fs::write(work.join("assets/big.dat"), noise(1001, 3 << 20)).unwrap();
        std::fs::create_dir_all(work.join("models")).unwrap();
        std::fs::write(work.join("models/weights.bin"), noise(1002, 4 << 20)).unwrap();
    }
}

/// Starts the servers and publishes `code` (`files` small files). With
/// `extras`: a large plain file, an LFS file (so git-lfs and the LFS server
/// are needed) and the S3 repository `data` (bucket `source`, four objects).
fn fleet(files: usize, extras: bool) -> Fleet {
    require_prerequisites();
    if extras {
        require_git_lfs();
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let work = dir.join("work");
    let s3 = S3Server::start();
    let (git, lfs) = if extras {
        let lfs = LfsServer::start(&dir.join("lfs-store"));
        let upstream = format!("http://127.0.0.1:{}", lfs.port);
        let git = GitServer::start(&dir.join("srv"), &["--lfs-upstream", &upstream]);
        push_lfs_repo(&git, &lfs, &work, "code", |w| write_tree(w, files, true));
        (git, Some(lfs))
    } else {
        let srv = dir.join("srv");
        std::fs::create_dir_all(&srv).unwrap();
        new_worktree(&work);
        write_tree(&work, files, false);
        publish_repo(&srv, &work, "code");
        (GitServer::start(&srv, &[]), None)
    };
    let source = extras.then(|| {
        let src = dir.join("source");
        std::fs::create_dir_all(src.join("dir/sub")).unwrap();
        std::fs::write(src.join("readme.txt"), "objects of the source bucket\n").unwrap();
        std::fs::write(src.join("dir/one.bin"), noise(2001, 300_000)).unwrap();
        std::fs::write(src.join("dir/sub/two.bin"), noise(2002, (1 << 20) + 7)).unwrap();
        std::fs::write(src.join("dir/sub/three.txt"), noise(2003, 5000)).unwrap();
        src
    });
    s3.py("s3.create_bucket(Bucket='fleet')");
    if let Some(src) = &source {
        s3.py(&format!(
            r#"
s3.create_bucket(Bucket='source')
root = '{}'
for d, _, names in os.walk(root):
    for n in names:
        p = os.path.join(d, n)
        with open(p, 'rb') as f:
            s3.put_object(Bucket='source', Key=os.path.relpath(p, root), Body=f.read())
"#,
            src.display()
        ));
    }
    Fleet {
        _tmp: tmp,
        dir,
        git,
        lfs,
        s3,
        work,
        source,
    }
}

/// A `[shared_cache]` table for bucket `fleet` at `endpoint`, plus `extra` lines.
fn shared_table(endpoint: &str, extra: &str) -> String {
    format!(
        "[shared_cache]\nbucket = \"fleet\"\nprefix = \"{PREFIX}\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\nforce_path_style = true\n{extra}\n"
    )
}

impl Fleet {
    fn lfs(&self) -> &LfsServer {
        self.lfs.as_ref().expect("this fleet has no LFS server")
    }

    /// The good tier: bucket `fleet` of this test's moto server.
    fn tier(&self) -> String {
        shared_table(&self.s3.endpoint(), "timeout = \"5s\"")
    }

    /// Writes node `name`'s config (its own cache_dir and mount root) with
    /// `tier` (a `[shared_cache]` table) at the top level.
    fn config(&self, name: &str, tier: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let mut text = format!(
            "mount_root = \"{}\"\ncache_dir = \"{}\"\ncache_size = \"2GiB\"\nrequest_timeout = \"5s\"\nconnect_timeout = \"2s\"\nmax_attempts = 2\n\n{tier}\n[[repository]]\nname = \"code\"\nprovider = \"git\"\nurl = \"{}\"\n",
            d.join("mnt").display(),
            d.join("cache").display(),
            self.git.url("code")
        );
        if self.source.is_some() {
            text.push_str(&format!(
                "\n[[repository]]\nname = \"data\"\nprovider = \"s3\"\nbucket = \"source\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
                self.s3.endpoint()
            ));
        }
        let path = d.join("config.toml");
        std::fs::write(&path, text).unwrap();
        // It may hold keys: repofs refuses a world-readable config with secrets.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        (path, d.join("mnt"))
    }

    /// (mount, directory holding what it must show) of every repository.
    fn trees(&self, mnt: &Path) -> Vec<(PathBuf, PathBuf)> {
        let mut v = vec![(mnt.join("code"), self.work.clone())];
        if let Some(src) = &self.source {
            v.push((mnt.join("data"), src.clone()));
        }
        v
    }

    /// Starts node `name` with `tier` and waits for its mounts.
    fn start(&self, name: &str, tier: &str) -> Node {
        let (config, mnt) = self.config(name, tier);
        let mounts: Vec<PathBuf> = self.trees(&mnt).into_iter().map(|(m, _)| m).collect();
        let log = self.dir.join(name).join("daemon.log");
        let daemon = Daemon::start_env(&config, &mounts, &log, AWS_ENV);
        Node {
            name: name.into(),
            config,
            mnt,
            daemon,
        }
    }
}

/// One node of the fleet: a running daemon.
struct Node {
    name: String,
    config: PathBuf,
    mnt: PathBuf,
    daemon: Daemon,
}

/// The counters of the `shared cache s3://...` line of `repofs status`.
#[derive(Debug, Clone, Copy)]
struct Tier {
    hits: u64,
    misses: u64,
    uploaded: u64,
    pending: u64,
    rejected: u64,
}

/// Parses "shared cache s3://B/P: H hits, M misses, D downloaded, U uploaded
/// (B), P pending, R rejected" (the number before each word).
fn parse_tier(status: &str) -> Option<Tier> {
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with("shared cache s3://"))?;
    let words: Vec<&str> = line
        .split_whitespace()
        .map(|w| w.trim_end_matches(','))
        .collect();
    let n = |what: &str| -> Option<u64> {
        words
            .windows(2)
            .find(|w| w[1] == what)
            .and_then(|w| w[0].parse().ok())
    };
    Some(Tier {
        hits: n("hits")?,
        misses: n("misses")?,
        uploaded: n("uploaded")?,
        pending: n("pending")?,
        rejected: n("rejected")?,
    })
}

impl Node {
    fn log(&self) -> String {
        self.daemon.log_text()
    }

    /// `repofs --config C status` (its error, if it failed).
    fn status(&self) -> String {
        let (code, out, err) = sh(
            &format!("{} --config {} status", repofs_bin(), self.config.display()),
            Duration::from_secs(30),
        );
        if code == 0 {
            out
        } else {
            format!("(repofs status exited with {code}) {out}{err}")
        }
    }

    /// The tier's counters from `repofs status` (panics without the line).
    fn tier(&self) -> Tier {
        let out = self.status();
        parse_tier(&out).unwrap_or_else(|| {
            panic!(
                "node {}: no \"shared cache s3://...\" line in `repofs status`:\n{out}\n{}",
                self.name,
                self.log()
            )
        })
    }

    /// Polls `repofs status` until the tier line says "0 pending" with at
    /// least `min_uploads` uploaded (within two minutes).
    fn wait_drained(&self, min_uploads: u64) -> Tier {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self.status();
            if let Some(t) = parse_tier(&out) {
                if t.pending == 0 && t.uploaded >= min_uploads {
                    return t;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {}: the uploads to the shared tier never drained (waited for \"0 pending\" and at least {min_uploads} uploaded):\n{out}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn stop(&mut self) {
        self.daemon.stop();
    }
}

/// Every regular file under `root` (relative paths, sorted), `.git` at the
/// top left out; directories are listed and every entry is stat'ed, as
/// `ls -lR` would.
fn files_under(root: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let here = root.join(&rel);
        let entries =
            std::fs::read_dir(&here).map_err(|e| format!("listing {}: {e}", here.display()))?;
        for e in entries {
            let e = e.map_err(|e| format!("listing {}: {e}", here.display()))?;
            let r = rel.join(e.file_name());
            if r == Path::new(".git") {
                continue;
            }
            let m = std::fs::symlink_metadata(root.join(&r))
                .map_err(|e| format!("stat {}: {e}", root.join(&r).display()))?;
            if m.is_dir() {
                todo.push(r);
            } else {
                out.push(r.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Lists and reads every file of every mount of `node` and compares it with
/// what it must be (the git work tree, the source bucket's files); returns
/// the bytes read.
fn read_all(f: &Fleet, node: &Node) -> u64 {
    let mut total = 0;
    for (mount, want_root) in f.trees(&node.mnt) {
        let want = files_under(&want_root).unwrap();
        let got = files_under(&mount)
            .unwrap_or_else(|e| panic!("node {}: {e}\n{}", node.name, node.log()));
        assert!(
            got == want,
            "node {}: {} shows {got:?}, expected {want:?}\n{}",
            node.name,
            mount.display(),
            node.log()
        );
        for rel in &want {
            let expect = std::fs::read(want_root.join(rel)).unwrap();
            let data = std::fs::read(mount.join(rel)).unwrap_or_else(|e| {
                panic!(
                    "node {}: reading {}: {e}\n{}",
                    node.name,
                    mount.join(rel).display(),
                    node.log()
                )
            });
            assert!(
                data == expect,
                "node {}: {}: wrong bytes ({} read, {} expected)\n{}",
                node.name,
                mount.join(rel).display(),
                data.len(),
                expect.len(),
                node.log()
            );
            total += data.len() as u64;
        }
    }
    total
}

/// (path, blob id) of every file of the commit checked out in `work`.
fn blobs(work: &Path) -> Vec<(String, String)> {
    git(work, &["ls-tree", "-r", "HEAD"])
        .lines()
        .filter_map(|l| {
            let (meta, path) = l.split_once('\t')?;
            let mut it = meta.split_whitespace();
            let (_mode, kind, oid) = (it.next()?, it.next()?, it.next()?);
            (kind == "blob").then(|| (path.to_string(), oid.to_string()))
        })
        .collect()
}

/// The sha256 in the LFS pointer committed at `path`.
fn lfs_oid(work: &Path, path: &str) -> String {
    let pointer = git(work, &["cat-file", "-p", &format!("HEAD:{path}")]);
    pointer
        .lines()
        .find_map(|l| l.strip_prefix("oid sha256:"))
        .unwrap_or_else(|| panic!("{path} is not an LFS pointer: {pointer}"))
        .to_string()
}

/// The keys of the tier (bucket `fleet`, under the prefix).
fn tier_keys(s3: &S3Server) -> Vec<String> {
    s3.py(&format!(
        "for page in s3.get_paginator('list_objects_v2').paginate(Bucket='fleet', Prefix='{PREFIX}'):\n    for o in page.get('Contents', []):\n        print(o['Key'])"
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

/// md5 of each of `keys` in bucket `fleet`.
fn md5s(s3: &S3Server, keys: &[String]) -> BTreeMap<String, String> {
    s3.py(&format!(
        "for k in {keys:?}:\n    print(k, hashlib.md5(s3.get_object(Bucket='fleet', Key=k)['Body'].read()).hexdigest())"
    ))
    .lines()
    .filter_map(|l| l.rsplit_once(' '))
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The moto server's per-bucket counters (`GET /_stats`).
fn bucket_stats(s3: &S3Server) -> serde_json::Value {
    let (status, body) = http_get(&format!("127.0.0.1:{}", s3.port), "/_stats");
    assert_eq!(status, 200, "GET /_stats of the S3 server: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("S3 /_stats: {e}: {body}"))
}

/// One counter of [`bucket_stats`] (0 when absent).
fn count(stats: &serde_json::Value, bucket: &str, what: &str) -> u64 {
    stats[bucket][what].as_u64().unwrap_or(0)
}

/// The git server's v2 fetch commands for `code.git` since its last reset.
fn git_fetches(g: &GitServer) -> u64 {
    let (_, body) = http_get(&format!("127.0.0.1:{}", g.port), "/_stats");
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["code.git"]["fetches"].as_u64())
        .unwrap_or(0)
}

/// (downloads, batch requests) the LFS server saw since its last reset.
fn lfs_counts(lfs: &LfsServer) -> (usize, u64) {
    let seen = lfs.seen();
    let v: serde_json::Value =
        serde_json::from_str(&seen).unwrap_or_else(|e| panic!("LFS /_seen: {e}: {seen}"));
    (
        v["downloads"].as_array().map_or(0, |d| d.len()),
        v["batches"].as_u64().unwrap_or(0),
    )
}

/// The log lines about the tier failing ("shared cache ...: <reason>; using the origins").
fn tier_warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("shared cache") && l.contains("using the origins"))
        .collect()
}

/// A TCP server on loopback that accepts connections and never answers: a
/// shared tier that hangs.
struct Silent {
    child: Child,
    port: u16,
}

impl Silent {
    fn start() -> Silent {
        let (child, port) = start_python("silent_server.py", &[]);
        Silent { child, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto enforcing IAM, with bucket `fleet`: the tier for keys it does not know.
fn denying_tier() -> S3Server {
    // One unauthenticated call (the bucket), then IAM is enforced.
    let s3 = S3Server::start_with_iam(1);
    s3.py("s3.create_bucket(Bucket='fleet')");
    s3
}

fn denied_table(s3: &S3Server) -> String {
    shared_table(
        &s3.endpoint(),
        &format!(
            "timeout = \"1s\"\naccess_key_id = \"{DENIED_KEY}\"\nsecret_access_key = \"{DENIED_SECRET}\""
        ),
    )
}

#[test]
fn a_second_node_reads_from_the_shared_tier_not_from_the_origins() {
    let f = fleet(50, true);
    let tier = f.tier();
    let commit = git(&f.work, &["rev-parse", "HEAD"]);
    let weights = lfs_oid(&f.work, "models/weights.bin");

    // Node A, on a cold fleet: everything comes from the origins, and goes
    // to the tier.
    let mut a = f.start("a", &tier);
    let read_a = read_all(&f, &a);
    let ta = a.wait_drained(1);
    assert!(
        ta.misses > 0 && ta.hits == 0,
        "node A on an empty tier: {ta:?}\n{}",
        a.log()
    );
    let (a_req, a_bytes) = f.git.stats("code");
    let lfs_a = lfs_counts(f.lfs());
    let s3_a = bucket_stats(&f.s3);
    assert!(
        a_bytes > 0 && lfs_a.0 >= 1 && count(&s3_a, "source", "GetObject") >= 1,
        "node A did not read from the origins? git: {a_req} requests, {a_bytes} bytes; LFS (downloads, batches): {lfs_a:?}; S3: {s3_a}\n{}",
        a.log()
    );
    let keys = tier_keys(&f.s3);
    let mut missing = Vec::new();
    for (path, oid) in blobs(&f.work) {
        let key = format!("{PREFIX}git/blob/{oid}");
        if !keys.contains(&key) {
            missing.push(format!("{key} ({path})"));
        }
    }
    for key in [
        format!("{PREFIX}git/trees/{commit}"),
        format!("{PREFIX}lfs/{weights}"),
    ] {
        if !keys.contains(&key) {
            missing.push(key);
        }
    }
    assert!(
        missing.is_empty(),
        "after node A ({ta:?}) the tier lacks {missing:#?}\nit has {keys:#?}\n{}",
        a.log()
    );
    let sizes = keys
        .iter()
        .filter(|k| k.starts_with(&format!("{PREFIX}git/sizes/")))
        .count();
    let objects = keys
        .iter()
        .filter(|k| k.starts_with(&format!("{PREFIX}s3/")))
        .count();
    assert!(
        sizes >= 1 && objects == 4,
        "after node A the tier has {sizes} git/sizes/ objects (expected some) and {objects} s3/ objects (expected the 4 of bucket source): {keys:#?}\n{}",
        a.log()
    );
    a.stop();

    // Node B, empty cache_dir, on the warm tier.
    f.git.reset_stats();
    f.lfs().control("reset=1");
    let s3_before = bucket_stats(&f.s3);
    let mut b = f.start("b", &tier);
    let read_b = read_all(&f, &b);
    assert_eq!(read_b, read_a);
    let (b_req, b_bytes) = f.git.stats("code");
    let fetches = git_fetches(&f.git);
    assert!(
        b_req <= 3 && fetches == 0 && b_bytes * 50 < a_bytes,
        "node B cost the git server {b_req} requests ({fetches} fetches), {b_bytes} bytes; node A cost {a_req} requests, {a_bytes} bytes (B may only resolve the ref: info/refs + ls-refs, under 2 %)\n{}",
        b.log()
    );
    let lfs_b = lfs_counts(f.lfs());
    assert_eq!(
        lfs_b,
        (0, 0),
        "node B asked the LFS server (downloads, batches): {}\n{}",
        f.lfs().seen(),
        b.log()
    );
    let s3_after = bucket_stats(&f.s3);
    let delta = |bucket: &str, what: &str| {
        count(&s3_after, bucket, what).saturating_sub(count(&s3_before, bucket, what))
    };
    assert_eq!(
        delta("source", "GetObject"),
        0,
        "node B read objects from the source bucket: before {s3_before}, after {s3_after}\n{}",
        b.log()
    );
    assert!(
        delta("fleet", "GetObject") > 0,
        "node B never read the tier: before {s3_before}, after {s3_after}\n{}",
        b.log()
    );
    let status = b.status();
    let tb = b.tier();
    assert!(
        tb.hits > 0 && tb.rejected == 0,
        "node B's status: {tb:?}\n{status}\n{}",
        b.log()
    );
    assert!(!b.log().contains("failed verification"), "{}", b.log());
    // The same counters in status.json (just refreshed by `repofs status`).
    let path = f.dir.join("b/cache/state/status.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let sc = &doc["shared_cache"];
    for key in [
        "url",
        "hits",
        "misses",
        "bytes_down",
        "uploads",
        "bytes_up",
        "pending",
        "rejected",
        "errors",
        "last_error",
    ] {
        assert!(
            sc.get(key).is_some(),
            "status.json: shared_cache has no {key:?}: {doc}"
        );
    }
    assert_eq!(sc["url"], format!("s3://fleet/{PREFIX}"), "{doc}");
    assert!(sc["hits"].as_u64().unwrap_or(0) > 0, "{doc}");
    assert!(sc["bytes_down"].as_u64().unwrap_or(0) > 0, "{doc}");
    b.stop();
}

#[test]
fn three_nodes_one_after_the_other_cost_the_origin_the_bytes_of_one() {
    let f = fleet(200, false);
    let tier = f.tier();
    let mut nodes = Vec::new();
    // Cumulative (requests, bytes) of the git server after each node.
    let mut after = Vec::new();
    for (i, name) in ["n1", "n2", "n3"].into_iter().enumerate() {
        let mut n = f.start(name, &tier);
        read_all(&f, &n);
        let t = n.wait_drained(if i == 0 { 1 } else { 0 });
        if i > 0 {
            assert!(
                t.hits > 0,
                "node {name} had no tier hits: {t:?}\n{}",
                n.log()
            );
        }
        after.push(f.git.stats("code"));
        n.stop();
        nodes.push(n);
    }
    let one = after[0].1;
    let all = after[2].1;
    assert!(
        all * 10 < one * 13,
        "three nodes cost the git server {all} bytes, more than 1.3 x the {one} of the first (after each node: {after:?})\n{}",
        nodes
            .iter()
            .map(|n| format!("--- node {} ---\n{}", n.name, n.log()))
            .collect::<String>()
    );
}

#[test]
fn two_nodes_started_together_on_a_warm_tier_cost_the_origin_nothing_more() {
    let f = fleet(200, false);
    let tier = f.tier();
    let mut first = f.start("n1", &tier);
    read_all(&f, &first);
    first.wait_drained(1);
    first.stop();
    let (_, one) = f.git.stats("code");

    let mut n2 = f.start("n2", &tier);
    let mut n3 = f.start("n3", &tier);
    std::thread::scope(|s| {
        let r2 = s.spawn(|| read_all(&f, &n2));
        let r3 = s.spawn(|| read_all(&f, &n3));
        for r in [r2, r3] {
            r.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
    });
    let (_, all) = f.git.stats("code");
    let logs = || format!("--- n2 ---\n{}\n--- n3 ---\n{}", n2.log(), n3.log());
    assert!(
        all * 10 < one * 13,
        "three nodes cost the git server {all} bytes, more than 1.3 x the {one} of the first\n{}",
        logs()
    );
    for n in [&n2, &n3] {
        let t = n.tier();
        assert!(t.hits > 0, "node {}: {t:?}\n{}", n.name, logs());
    }
    n2.stop();
    n3.stop();
}

#[test]
fn a_corrupt_object_in_the_tier_is_rejected_and_fetched_from_the_origin() {
    let f = fleet(20, true);
    let tier = f.tier();
    let mut a = f.start("a", &tier);
    read_all(&f, &a);
    a.wait_drained(1);
    a.stop();

    // Same length, other bytes: a git blob, the LFS object and every S3 object.
    let blob = git(&f.work, &["rev-parse", "HEAD:src/file000.txt"]);
    let mut victims = vec![
        format!("{PREFIX}git/blob/{blob}"),
        format!("{PREFIX}lfs/{}", lfs_oid(&f.work, "models/weights.bin")),
    ];
    victims.extend(
        tier_keys(&f.s3)
            .into_iter()
            .filter(|k| k.starts_with(&format!("{PREFIX}s3/"))),
    );
    assert_eq!(victims.len(), 6, "{victims:#?}\n{}", a.log());
    let good = md5s(&f.s3, &victims);
    assert_eq!(good.len(), victims.len(), "{good:?}");
    f.s3.py(&format!(
        "for k in {victims:?}:\n    body = s3.get_object(Bucket='fleet', Key=k)['Body'].read()\n    s3.put_object(Bucket='fleet', Key=k, Body=bytes(b ^ 0x5A for b in body))"
    ));
    let bad = md5s(&f.s3, &victims);
    assert!(
        good.iter().all(|(k, v)| bad.get(k) != Some(v)),
        "the objects were not replaced: {good:?} {bad:?}"
    );

    // Node C, empty cache: right bytes, and the rejections are visible.
    let mut c = f.start("c", &tier);
    read_all(&f, &c);
    let log = c.log();
    assert!(
        log.lines().any(|l| l.contains("failed verification")),
        "no \"failed verification\" in node C's log:\n{log}"
    );
    let t = c.wait_drained(victims.len() as u64);
    assert!(
        t.rejected >= victims.len() as u64,
        "node C's status counts {} rejected, {} objects were corrupt: {t:?}\n{}",
        t.rejected,
        victims.len(),
        c.log()
    );
    // The good copies went back.
    let now = md5s(&f.s3, &victims);
    assert_eq!(
        now,
        good,
        "the tier still has corrupt objects after node C's uploads\n{}",
        c.log()
    );
    c.stop();
}

#[test]
fn a_shared_tier_that_hangs_or_denies_access_does_not_fail_reads() {
    let f = fleet(20, true);
    let silent = Silent::start();
    let iam = denying_tier();
    let hangs = shared_table(&silent.endpoint(), "timeout = \"1s\"");
    let denies = denied_table(&iam);
    for (name, tier) in [("hangs", &hangs), ("denies", &denies)] {
        let s3_before = bucket_stats(&f.s3);
        let start = Instant::now();
        let mut n = f.start(name, tier);
        let files: usize = f
            .trees(&n.mnt)
            .iter()
            .map(|(_, want)| files_under(want).unwrap().len())
            .sum();
        read_all(&f, &n);
        let took = start.elapsed();
        let log = n.log();
        assert!(
            took < Duration::from_secs(30),
            "tier that {name}: reading {files} files took {took:?}\n{log}"
        );
        let warnings = tier_warnings(&log);
        assert!(
            (1..=2).contains(&warnings.len()),
            "tier that {name}: expected one or two \"shared cache ...; using the origins\" warnings, got {warnings:#?}\n{log}"
        );
        assert!(
            !log.contains(DENIED_SECRET),
            "the tier's secret is in the log:\n{log}"
        );
        let status = n.status();
        let t = n.tier();
        assert!(
            t.hits == 0 && status.contains("shared cache last error"),
            "tier that {name}: status {t:?}\n{status}\n{log}"
        );
        // The source bucket served the objects itself.
        let s3_after = bucket_stats(&f.s3);
        assert!(
            count(&s3_after, "source", "GetObject") > count(&s3_before, "source", "GetObject"),
            "tier that {name}: no GetObject on the source bucket: {s3_before} {s3_after}\n{log}"
        );
        n.stop();
    }
}

#[test]
fn check_says_whether_the_tier_can_be_read_and_written() {
    let f = fleet(3, false);
    let silent = Silent::start();
    let iam = denying_tier();
    let check = |name: &str, tier: &str| -> (i32, String, Duration) {
        let (config, _) = f.config(name, tier);
        let start = Instant::now();
        let (code, out, err) = sh(
            &format!(
                "{AWS_SH} {} --config {} check",
                repofs_bin(),
                config.display()
            ),
            Duration::from_secs(60),
        );
        (code, format!("{out}{err}"), start.elapsed())
    };
    let line = |out: &str, start: &str| {
        out.lines()
            .find(|l| l.starts_with(start))
            .map(str::to_string)
    };
    let url = format!("s3://fleet/{PREFIX}");

    let (code, out, _) = check("good", &f.tier());
    assert_eq!(code, 0, "{out}");
    let ok = line(&out, "ok   shared cache").unwrap_or_else(|| panic!("{out}"));
    assert!(
        ok.starts_with(&format!("ok   shared cache {url}")) && ok.contains("can read and write"),
        "{out}"
    );
    assert!(line(&out, "ok   code:").is_some(), "{out}");

    let (code, out, _) = check("denies", &denied_table(&iam));
    assert_eq!(code, 1, "{out}");
    let fail = line(&out, "FAIL shared cache").unwrap_or_else(|| panic!("{out}"));
    assert!(
        fail.starts_with(&format!("FAIL shared cache {url}")),
        "{out}"
    );
    assert!(
        out.contains("s3:GetObject")
            && out.contains("s3:PutObject")
            && out.contains("arn:aws:s3:::fleet"),
        "no minimal policy in: {out}"
    );
    assert!(line(&out, "ok   code:").is_some(), "{out}");
    assert!(!out.contains(DENIED_SECRET), "a secret leaked: {out}");

    let (code, out, took) = check(
        "hangs",
        &shared_table(&silent.endpoint(), "timeout = \"1s\""),
    );
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "FAIL shared cache").is_some(), "{out}");
    assert!(took < Duration::from_secs(30), "check took {took:?}: {out}");
}
