//! End-to-end tests that commands ask only for what they use: with the
//! token in the service's environment but not in the operator's shell,
//! `status`, `overlay`, `repo list` and `check` of another repository work.

mod common;

use std::path::Path;

use common::*;

const VAR: &str = "REPOFS_TEST_ONLY_THE_SERVICE_HAS_IT";
const TOKEN: &str = "service-token-5f2a";

/// Runs `repofs ARGS` without `VAR` in its environment.
fn operator(args: &[&str]) -> (bool, String) {
    run_repofs(args, &[VAR])
}

fn publish(srv: &Path, work: &Path, name: &str) {
    let w = new_worktree(work);
    std::fs::write(w.join("a.txt"), b"a\n").unwrap();
    git(&w, &["add", "-A"]);
    publish_committed(srv, &w, name);
}

#[test]
fn commands_that_send_nothing_need_no_secret() {
    require_prerequisites();
    let s = Scratch::new();
    std::fs::create_dir_all(s.srv()).unwrap();
    publish(&s.srv(), &s.dir().join("w1"), "private");
    publish(&s.srv(), &s.dir().join("w2"), "public");
    let git_server = GitServer::start(&s.srv(), &[]);
    git_server.set_tokens(&[("private", TOKEN)]);
    let cfg = write_config(
        s.dir(),
        &s.dir().join("mnt"),
        &s.dir().join("cache"),
        &[
            RepoEntry {
                name: "private".into(),
                url: git_server.url("private"),
                extra: format!("token_env = \"{VAR}\""),
            },
            RepoEntry {
                name: "public".into(),
                url: git_server.url("public"),
                extra: String::new(),
            },
        ],
        "",
    );
    let c = cfg.to_str().unwrap();
    let mnt = s.dir().join("mnt");
    let d = Daemon::start_env(
        &cfg,
        &[mnt.join("private"), mnt.join("public")],
        &s.dir().join("log"),
        &[(VAR, TOKEN)],
    );
    assert_eq!(std::fs::read(mnt.join("private/a.txt")).unwrap(), b"a\n");

    let (ok, out) = operator(&["--config", c, "status"]);
    assert!(ok, "{out}");
    assert!(out.contains("private") && out.contains("public"), "{out}");
    let (ok, out) = operator(&["--config", c, "repo", "list"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("token_env {VAR}")), "{out}");
    let view = s.dir().join("view");
    let (ok, out) = operator(&["--config", c, "overlay", "private", view.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(view.join("a.txt")).unwrap(), b"a\n");
    let (ok, out) = operator(&["overlay", "--remove", view.to_str().unwrap()]);
    assert!(ok, "{out}");
    // `check NAME` resolves NAME's secret only.
    let (ok, out) = operator(&["--config", c, "check", "public"]);
    assert!(ok, "{out}");
    let (ok, out) = operator(&["--config", c, "check", "private"]);
    assert!(!ok && out.contains(&format!("{VAR} is not set")), "{out}");
    // `check` of every repository (like `mount`) needs every secret.
    let (ok, out) = operator(&["--config", c, "check"]);
    assert!(!ok && out.contains(&format!("{VAR} is not set")), "{out}");
    drop(d);
}
