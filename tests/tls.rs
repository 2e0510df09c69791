//! A git server behind a private certificate authority (made by the test,
//! tests/support/make_certs.py): refused with a message that names the
//! certificate problem and the key that fixes it, trusted with `ca_bundle`
//! (top level or per repository), and a `ca_bundle` that is no PEM bundle
//! refused when the config is read.

mod common;

use common::*;

struct Tls {
    s: Scratch,
    server: GitServer,
}

fn https_server() -> Tls {
    let s = Scratch::new();
    let certs = s.dir().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (code, out, err) = sh(
        &format!(
            "python3 {}/tests/support/make_certs.py {}",
            env!("CARGO_MANIFEST_DIR"),
            certs.display()
        ),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(code, 0, "make_certs.py: {out}{err}");
    std::fs::write(s.work().join("hello.txt"), "over https\n").unwrap();
    publish_repo(&s.srv(), &s.work(), "secure");
    let cert = certs.join("server.pem").display().to_string();
    let key = certs.join("server.key").display().to_string();
    let server = GitServer::start(&s.srv(), &["--tls-cert", &cert, "--tls-key", &key]);
    Tls { s, server }
}

impl Tls {
    fn config(&self, top: &str, extra: &str) -> std::path::PathBuf {
        write_config(
            self.s.dir(),
            &self.s.dir().join("mnt"),
            &self.s.dir().join("cache"),
            &[RepoEntry {
                name: "secure".into(),
                url: format!("https://127.0.0.1:{}/secure.git", self.server.port),
                extra: extra.into(),
            }],
            top,
        )
    }

    fn ca(&self) -> String {
        self.s.dir().join("certs/ca.pem").display().to_string()
    }
}

#[test]
fn a_private_ca_is_refused_by_name_then_trusted_with_ca_bundle() {
    let t = https_server();
    // Without the CA: check fails, naming the certificate and the key.
    let cfg = t.config("", "");
    let (ok, out) = run_repofs(&["--config", cfg.to_str().unwrap(), "check", "secure"], &[]);
    assert!(!ok, "check passed against an untrusted certificate:\n{out}");
    eprintln!("check without the CA:\n{out}");
    assert!(
        out.contains("certificate") && out.contains("ca_bundle"),
        "the failure does not name the certificate and `ca_bundle`:\n{out}"
    );

    // With the CA on the repository: check passes, and the mount reads.
    let cfg = t.config("", &format!("ca_bundle = \"{}\"", t.ca()));
    let (ok, out) = run_repofs(&["--config", cfg.to_str().unwrap(), "check", "secure"], &[]);
    assert!(ok, "check failed with ca_bundle:\n{out}");
    let m = t.s.dir().join("mnt/secure");
    let mut d = Daemon::start(&cfg, &[m.clone()], &t.s.dir().join("daemon.log"));
    assert_eq!(
        std::fs::read_to_string(m.join("hello.txt"))
            .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text())),
        "over https\n"
    );
    d.stop();

    // At the top level it applies to every git repository.
    let cfg = t.config(&format!("ca_bundle = \"{}\"", t.ca()), "");
    let (ok, out) = run_repofs(&["--config", cfg.to_str().unwrap(), "check", "secure"], &[]);
    assert!(ok, "check failed with a top-level ca_bundle:\n{out}");
}

#[test]
fn a_ca_bundle_that_is_not_pem_is_refused_when_the_config_is_read() {
    let t = https_server();
    let bogus = t.s.dir().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let cfg = t.config("", &format!("ca_bundle = \"{}\"", bogus.display()));
    let (ok, out) = run_repofs(&["--config", cfg.to_str().unwrap(), "check", "secure"], &[]);
    assert!(!ok);
    assert!(
        out.contains("`ca_bundle`") && out.contains("no certificate"),
        "the error does not name the key and the problem:\n{out}"
    );
    let cfg = t.config("ca_bundle = \"relative.pem\"", "");
    let (ok, out) = run_repofs(&["--config", cfg.to_str().unwrap(), "check", "secure"], &[]);
    assert!(
        !ok && out.contains("`ca_bundle`") && out.contains("absolute"),
        "{out}"
    );
}

/// A real CONNECT proxy (tinyproxy, from the distribution) on a free port,
/// logging every connection it makes; stopped on drop.
struct Proxy {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Proxy {
    fn start(dir: &std::path::Path) -> Proxy {
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 20\nAllow 127.0.0.1\n",
                log.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("tinyproxy")
            .args(["-d", "-c", conf.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tinyproxy is not installed (scripts/install-deps.sh installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tinyproxy did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Proxy { child, port, log }
    }

    /// How many CONNECT tunnels it opened to `port`.
    fn tunnels_to(&self, port: u16) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("CONNECT") && l.contains(&format!("127.0.0.1:{port}")))
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `repofs ARGS` with `vars` set (and the proxy variables otherwise unset).
fn run_with(args: &[&str], vars: &[(&str, String)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(repofs_bin());
    cmd.args(args);
    for v in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run repofs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn https_proxy_tunnels_and_no_proxy_bypasses() {
    let t = https_server();
    let proxy = Proxy::start(t.s.dir());
    let cfg = t.config("", &format!("ca_bundle = \"{}\"", t.ca()));
    let c = cfg.to_str().unwrap();
    let via = format!("http://127.0.0.1:{}", proxy.port);
    // Through the proxy: a CONNECT tunnel to the git server, and TLS (with
    // the private CA) inside it.
    let (ok, out) = run_with(
        &["--config", c, "check", "secure"],
        &[("HTTPS_PROXY", via.clone())],
    );
    assert!(ok, "check through the proxy failed:\n{out}");
    let tunnels = proxy.tunnels_to(t.server.port);
    assert!(
        tunnels >= 1,
        "the proxy opened no tunnel to the server:\n{}",
        std::fs::read_to_string(&proxy.log).unwrap_or_default()
    );
    // NO_PROXY names the host: straight to the server, the proxy unused.
    let (ok, out) = run_with(
        &["--config", c, "check", "secure"],
        &[("HTTPS_PROXY", via), ("NO_PROXY", "127.0.0.1".into())],
    );
    assert!(ok, "check with NO_PROXY failed:\n{out}");
    assert_eq!(
        proxy.tunnels_to(t.server.port),
        tunnels,
        "NO_PROXY was not honoured"
    );
}
