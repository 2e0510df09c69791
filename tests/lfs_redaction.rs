//! Presigned LFS download hrefs never reach the daemon's log, the status
//! file or `repofs status`. The git server forwards the LFS batch API to a
//! small listener started here, which answers with hrefs that carry a
//! signature in the query (`X-Amz-Signature=...`, as S3 presigns them) and
//! credentials before the host, and then fails those downloads: one with
//! HTTP 500 (with an error page that echoes the URL), one by cutting the
//! connection halfway. Every message about them must show the URL without
//! its query and userinfo.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// The LFS listener: `POST .../objects/batch` answers every object with a
/// presigned-looking href back to this listener; `GET /dl/500/...`
/// answers 500, `GET /dl/cut/...` sends half the object and drops the
/// connection; `GET /_seen` is the number of downloads asked for.
const LISTENER: &str = r#"
import http.server, json, socketserver, sys, threading
SEEN = [0]
LOCK = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def reply(self, code, body, ctype="application/vnd.git-lfs+json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(n) or b"{}")
        port = self.server.server_address[1]
        objs = []
        for o in req.get("objects", []):
            kind = "500" if o["size"] == 1000 else "cut"
            href = ("http://SECRETUSER:SECRETPW@127.0.0.1:%d/dl/%s/%s"
                    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=SECRETCRED"
                    "&X-Amz-Signature=SECRETSIG%s" % (port, kind, o["oid"], o["oid"][:8]))
            objs.append({"oid": o["oid"], "size": o["size"],
                         "actions": {"download": {"href": href, "expires_in": 3600}}})
        self.reply(200, json.dumps({"transfer": "basic", "objects": objs}).encode())
    def do_GET(self):
        if self.path == "/_seen":
            with LOCK:
                return self.reply(200, str(SEEN[0]).encode(), "text/plain")
        with LOCK:
            SEEN[0] += 1
        if self.path.startswith("/dl/500/"):
            # An error page that echoes the URL asked for, as some stores do.
            echo = "internal error fetching http://SECRETUSER:SECRETPW@127.0.0.1:%d%s" % (
                self.server.server_address[1], self.path)
            return self.reply(500, echo.encode(), "text/plain")
        size = 4000
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.write(b"x" * (size // 2))
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
s = S(("127.0.0.1", 0), H)
print("PORT", s.server_address[1], flush=True)
s.serve_forever()
"#;

struct Listener(Child, u16);

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_listener() -> Listener {
    use std::io::BufRead;
    let mut child = Command::new("python3")
        .args(["-c", LISTENER])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the listener's port");
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the LFS listener did not start: {line:?}"));
    Listener(child, port)
}

/// A pointer file's text for an object of `size` bytes.
fn pointer(oid_byte: char, size: u64) -> String {
    let oid: String = std::iter::repeat_n(oid_byte, 64).collect();
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n")
}

#[test]
fn presigned_hrefs_never_reach_the_log_or_status() {
    require_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let listener = start_listener();
    let upstream = format!("http://127.0.0.1:{}", listener.1);
    let git = GitServer::start(&dir.join("srv"), &["--lfs-upstream", &upstream]);
    let work = new_worktree(&dir.join("work"));
    std::fs::write(
        work.join(".gitattributes"),
        "*.bin filter=lfs diff=lfs merge=lfs -text\n",
    )
    .unwrap();
    std::fs::write(work.join("fails.bin"), pointer('a', 1000)).unwrap();
    std::fs::write(work.join("cut.bin"), pointer('b', 4000)).unwrap();
    std::fs::write(work.join("plain.txt"), "plain\n").unwrap();
    publish_repo(&git.root, &work, "signed");
    let cache = dir.join("cache");
    let cfg = write_config(
        dir,
        &dir.join("mnt"),
        &cache,
        &[RepoEntry {
            name: "signed".into(),
            url: git.url("signed"),
            extra: String::new(),
        }],
        "",
    );
    let m = dir.join("mnt/signed");
    let mut d = Daemon::start(&cfg, &[m.clone()], &dir.join("daemon.log"));
    assert_eq!(std::fs::read(m.join("plain.txt")).unwrap(), b"plain\n");
    // The sizes are the pointers': the files are LFS files.
    assert_eq!(std::fs::metadata(m.join("fails.bin")).unwrap().len(), 1000);
    assert_eq!(std::fs::metadata(m.join("cut.bin")).unwrap().len(), 4000);
    for name in ["fails.bin", "cut.bin"] {
        let e = std::fs::read(m.join(name)).expect_err(name);
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}: {e}");
    }
    // The hrefs were really used (so their failures were reported).
    let (_, seen) = http_get(&format!("127.0.0.1:{}", listener.1), "/_seen");
    let seen: u32 = seen.trim().parse().unwrap_or(0);
    assert!(seen >= 2, "the LFS hrefs were fetched {seen} times");

    let (code, status_out, status_err) = sh(
        &format!("{} --config {} status", repofs_bin(), cfg.display()),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{status_out}{status_err}");
    let status_file = std::fs::read_to_string(cache.join("state/status.json")).unwrap();
    let log = d.log_text();
    // The failures are there, each naming the href without what it carried.
    let shown = format!("127.0.0.1:{}/dl/", listener.1);
    assert!(log.contains(&shown) && log.contains("?…"), "{log}");
    assert!(status_file.contains("LFS object"), "{status_file}");
    for (what, text) in [
        ("the log", &log),
        ("the status file", &status_file),
        ("repofs status", &status_out),
        ("repofs status (stderr)", &status_err),
    ] {
        for secret in [
            "SECRETSIG",
            "SECRETCRED",
            "SECRETPW",
            "SECRETUSER",
            "X-Amz-",
        ] {
            assert!(!text.contains(secret), "{what} holds {secret}:\n{text}");
        }
    }
    d.stop();
}
