//! End-to-end tests of the hosts' API limits and layouts, each counted at
//! the fake (tests/support/host_api.py, `/_api_log`): GitLab's GraphQL
//! complexity limit (sizes still from GraphQL, in batches it accepts), a
//! GitLab under a relative URL root with `api_url`, GitHub's secondary
//! rate limit with `retry-after` honoured, GitHub's media type and API
//! version headers, and the GHE.com layout (the API on its own host).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    work: PathBuf,
    srv: PathBuf,
}

/// `many/` (150 small files), `models/` (two 3 MB files) and `d0/`..`d3/`,
/// published at `<srv>/<under>/acme/models.git`.
fn fixture(under: &str) -> Fixture {
    require_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let work = new_worktree(&dir.join("work"));
    std::fs::create_dir_all(work.join("many")).unwrap();
    for i in 0..150u64 {
        std::fs::write(
            work.join(format!("many/f{i:03}.txt")),
            noise(i, 1100 + i as usize * 7),
        )
        .unwrap();
    }
    std::fs::create_dir_all(work.join("models")).unwrap();
    for i in 1..=2u64 {
        std::fs::write(
            work.join(format!("models/m{i}.bin")),
            noise(1000 + i, 3_000_000 + i as usize),
        )
        .unwrap();
    }
    for d in 0..4u64 {
        std::fs::create_dir_all(work.join(format!("d{d}"))).unwrap();
        std::fs::write(
            work.join(format!("d{d}/x")),
            noise(50 + d, 1999 + d as usize),
        )
        .unwrap();
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "files"]);
    let srv = dir.join("srv");
    let parent = srv.join(under).join("acme");
    std::fs::create_dir_all(&parent).unwrap();
    git(
        &parent,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            "models.git",
        ],
    );
    Fixture {
        _tmp: tmp,
        dir,
        work,
        srv,
    }
}

fn config(f: &Fixture, tag: &str, provider: &str, url: &str, extra: &str) -> (PathBuf, PathBuf) {
    let base = f.dir.join(tag);
    let mnt = base.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let text = format!(
        "mount_root = \"{}\"\ncache_dir = \"{}\"\nrequest_timeout = \"20s\"\nconnect_timeout = \"2s\"\nmax_attempts = 2\n\n[[repository]]\nname = \"models\"\nprovider = \"{provider}\"\nurl = \"{url}\"\n{extra}\n",
        mnt.display(),
        base.join("cache").display(),
    );
    let path = base.join("config.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, mnt.join("models"))
}

/// The fake's record of API requests since the last reset.
fn api_log(server: &GitServer) -> Vec<serde_json::Value> {
    let (status, body) = http_get(&format!("127.0.0.1:{}", server.port), "/_api_log");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// `(requests, api_requests, fetches)` for models.git at the fake.
fn counts(server: &GitServer) -> (u64, u64, u64) {
    let (_, body) = http_get(&format!("127.0.0.1:{}", server.port), "/_stats");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let n = |k: &str| v["models.git"][k].as_u64().unwrap_or(0);
    (n("requests"), n("api_requests"), n("fetches"))
}

/// The sizes `ls -l` shows in `dir` of the mount equal the checkout's.
fn sizes_right(f: &Fixture, m: &Path, dir: &str, d: &Daemon) {
    for e in std::fs::read_dir(f.work.join(dir)).unwrap() {
        let e = e.unwrap();
        let want = e.metadata().unwrap().len();
        let got = std::fs::metadata(m.join(dir).join(e.file_name()))
            .unwrap_or_else(|err| panic!("{dir}/{:?}: {err}\n{}", e.file_name(), d.log_text()))
            .len();
        assert_eq!(got, want, "{dir}/{:?}", e.file_name());
    }
}

fn ls(m: &Path, dir: &str, d: &Daemon) {
    let (code, _, err) = sh(
        &format!("ls -l {}", m.join(dir).display()),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "ls {dir}: {err}\n{}", d.log_text());
}

fn paths_of(r: &serde_json::Value) -> u64 {
    r["paths"].as_u64().unwrap_or(0)
}

#[test]
fn gitlab_sizes_come_from_graphql_within_its_complexity_limit() {
    let _one = one_at_a_time();
    let f = fixture("");
    let server = GitServer::start(&f.srv, &[]);
    let url = format!("http://127.0.0.1:{}/acme/models", server.port);
    let (cfg, m) = config(&f, "gitlab", "gitlab-enterprise", &url, "");
    let mut d = Daemon::start(&cfg, &[m.clone()], &f.dir.join("gitlab.log"));
    ls(&m, "", &d);
    server.reset_stats();
    ls(&m, "many", &d);
    ls(&m, "models", &d);
    let log = api_log(&server);
    let (requests, api, fetches) = counts(&server);
    eprintln!("ls -l many models: {requests} requests ({api} API, {fetches} fetches): {log:?}");
    // Every size from GraphQL: no git request at all.
    assert_eq!(
        requests,
        api,
        "sizes were learned over git:\n{}",
        d.log_text()
    );
    assert_eq!(fetches, 0);
    assert!(log.iter().all(|r| r["refused"] == false), "{log:?}");
    // Within the anonymous limit, 150 paths of many/ in three queries
    // (64, then 82, then the last 4), models/ in one.
    assert!(
        log.iter().all(|r| r["complexity"].as_u64().unwrap() <= 200),
        "{log:?}"
    );
    let sent: Vec<u64> = log.iter().map(paths_of).collect();
    assert_eq!(sent, [64, 82, 4, 2], "{log:?}");
    sizes_right(&f, &m, "many", &d);
    sizes_right(&f, &m, "models", &d);
    same_bytes(&f, &m, "models/m2.bin");
    d.stop();
}

fn same_bytes(f: &Fixture, m: &Path, rel: &str) {
    let got = std::fs::read(m.join(rel)).unwrap();
    assert!(
        got == std::fs::read(f.work.join(rel)).unwrap(),
        "{rel}: wrong bytes"
    );
}

/// A GitLab that scores each path three times as high (as some releases
/// did): the first query is refused, the batch halves, and grows again
/// without ever sending a refused size again.
#[test]
fn gitlab_refusing_for_complexity_gets_smaller_queries_never_the_same_one() {
    let _one = one_at_a_time();
    let f = fixture("");
    let server = GitServer::start(&f.srv, &["--gitlab-path-cost", "3"]);
    let url = format!("http://127.0.0.1:{}/acme/models", server.port);
    let (cfg, m) = config(&f, "heavy", "gitlab", &url, "");
    let mut d = Daemon::start(&cfg, &[m.clone()], &f.dir.join("heavy.log"));
    ls(&m, "d0", &d);
    server.reset_stats();
    ls(&m, "many", &d);
    let log = api_log(&server);
    let (requests, api, _) = counts(&server);
    eprintln!("ls -l many: {requests} requests ({api} API): {log:?}");
    assert_eq!(
        requests,
        api,
        "sizes were learned over git:\n{}",
        d.log_text()
    );
    let refused: Vec<u64> = log
        .iter()
        .filter(|r| r["refused"] == true)
        .map(paths_of)
        .collect();
    assert!(!refused.is_empty() && refused.len() <= 4, "{log:?}");
    // After a refusal of n paths, no query of n or more.
    for (i, r) in log.iter().enumerate() {
        if r["refused"] == true {
            let n = paths_of(r);
            assert!(
                log[i + 1..].iter().all(|later| paths_of(later) < n),
                "{n} paths asked again after a refusal: {log:?}"
            );
        }
    }
    let answered: u64 = log
        .iter()
        .filter(|r| r["refused"] == false)
        .map(paths_of)
        .sum();
    assert_eq!(answered, 150, "{log:?}");
    sizes_right(&f, &m, "many", &d);
    let text = d.log_text();
    assert_eq!(
        text.matches("GitLab refused").count(),
        1,
        "the refusal is logged once:\n{text}"
    );
    assert!(text.contains("exceeds max complexity of 200"), "{text}");
    d.stop();
}

/// Sizes GraphQL gives for other blobs than the tree names (their `oid`
/// differs) are not taken: the listing shows the true sizes, from git.
#[test]
fn gitlab_sizes_of_other_blobs_are_not_taken() {
    let _one = one_at_a_time();
    let f = fixture("");
    let server = GitServer::start(&f.srv, &["--gitlab-stale-oids"]);
    let url = format!("http://127.0.0.1:{}/acme/models", server.port);
    let (cfg, m) = config(&f, "stale", "gitlab-enterprise", &url, "");
    let mut d = Daemon::start(&cfg, &[m.clone()], &f.dir.join("stale.log"));
    ls(&m, "", &d);
    server.reset_stats();
    ls(&m, "models", &d);
    let (requests, api, _) = counts(&server);
    assert_eq!(api, 1, "GraphQL was not asked");
    assert!(requests > api, "the sizes were not learned over git");
    sizes_right(&f, &m, "models", &d);
    d.stop();
}

#[test]
fn gitlab_under_a_relative_url_root_with_api_url() {
    let _one = one_at_a_time();
    let f = fixture("gitlab");
    let server = GitServer::start(&f.srv, &["--gitlab-root", "/gitlab"]);
    let root = format!("http://127.0.0.1:{}/gitlab", server.port);
    let (cfg, m) = config(
        &f,
        "root",
        "gitlab-enterprise",
        &format!("{root}/acme/models"),
        &format!("api_url = \"{root}/api/v4\""),
    );
    let mut d = Daemon::start(&cfg, &[m.clone()], &f.dir.join("root.log"));
    ls(&m, "", &d);
    server.reset_stats();
    ls(&m, "models", &d);
    let log = api_log(&server);
    let (requests, api, _) = counts(&server);
    assert_eq!(log.len(), 1, "{log:?}\n{}", d.log_text());
    assert_eq!((requests, api), (1, 1), "{log:?}");
    sizes_right(&f, &m, "models", &d);
    same_bytes(&f, &m, "models/m1.bin");
    d.stop();
}

#[test]
fn github_secondary_limit_waits_for_retry_after_and_sends_the_documented_headers() {
    let _one = one_at_a_time();
    let f = fixture("");
    let server = GitServer::start(&f.srv, &["--profile", "github"]);
    let url = format!("http://127.0.0.1:{}/acme/models", server.port);
    let (cfg, m) = config(&f, "secondary", "github-enterprise", &url, "");
    server.set_fault("secondary&seconds=2");
    let mut d = Daemon::start(&cfg, &[m.clone()], &f.dir.join("secondary.log"));
    ls(&m, "d0", &d);
    let refused_at = Instant::now();
    let log = api_log(&server);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["status"], 403);
    // Within the two seconds: sizes over git, the API not asked.
    ls(&m, "d1", &d);
    ls(&m, "d2", &d);
    assert!(refused_at.elapsed() < Duration::from_millis(1800));
    assert_eq!(api_log(&server).len(), 1, "asked again before retry-after");
    // After them: asked again (not a flat minute later), and answered.
    std::thread::sleep(Duration::from_millis(2300).saturating_sub(refused_at.elapsed()));
    ls(&m, "many", &d);
    let log = api_log(&server);
    assert_eq!(log.len(), 2, "not asked again after retry-after: {log:?}");
    assert_eq!(log[1]["status"], 200, "{log:?}");
    let waited = log[1]["t"].as_f64().unwrap() - log[0]["t"].as_f64().unwrap();
    assert!(
        waited >= 1.95,
        "asked again after {waited:.2}s, before retry-after: 2"
    );
    for r in &log {
        assert_eq!(r["accept"], "application/vnd.github+json", "{r}");
        assert_eq!(r["version"], "2022-11-28", "{r}");
    }
    sizes_right(&f, &m, "many", &d);
    sizes_right(&f, &m, "d1", &d);
    assert!(d.log_text().contains("rate limited"), "{}", d.log_text());
    d.stop();
}

/// GHE.com: the API on its own host (here a second port), given as
/// `api_url`; the token goes to it (it answers only with the token).
#[test]
fn github_api_on_its_own_host_gets_the_token() {
    let _one = one_at_a_time();
    let f = fixture("");
    let server = GitServer::start(&f.srv, &["--profile", "github", "--github-api-listener"]);
    let (_, port) = http_get(&format!("127.0.0.1:{}", server.port), "/_api_port");
    let api = format!("http://127.0.0.1:{}", port.trim());
    server.set_tokens(&[("models", "s3cret")]);
    let url = format!("http://127.0.0.1:{}/acme/models", server.port);
    let (cfg, m) = config(
        &f,
        "ghecom",
        "github-enterprise",
        &url,
        &format!("api_url = \"{api}\"\ntoken = \"s3cret\""),
    );
    let mut d = Daemon::start(&cfg, &[m.clone()], &f.dir.join("ghecom.log"));
    ls(&m, "models", &d);
    let log = api_log(&server);
    assert!(!log.is_empty(), "{}", d.log_text());
    let host = format!("127.0.0.1:{}", port.trim());
    assert!(
        log.iter()
            .all(|r| r["status"] == 200 && r["host"] == host.as_str()),
        "{log:?}"
    );
    sizes_right(&f, &m, "models", &d);
    sizes_right(&f, &m, "many", &d);
    d.stop();
}
