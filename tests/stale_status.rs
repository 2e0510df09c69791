//! A status file left behind by a daemon that exited names a pid that may
//! belong to any process by now: `repofs status` (SIGUSR1) and
//! `repofs repo add --reload` (SIGHUP) must say that the file is stale and
//! signal nothing. The pid here is a `sleep`'s, which either signal would
//! kill (neither is handled by it).

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::*;

/// A `sleep` that is killed when the test ends.
struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Sleeper {
    fn start() -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("300")
                .spawn()
                .expect("start sleep"),
        )
    }

    /// Whether it is still running (a signal would have ended it).
    fn alive(&mut self) -> bool {
        // Give a signal, had one been sent, the time to land.
        std::thread::sleep(Duration::from_millis(200));
        matches!(self.0.try_wait(), Ok(None))
    }
}

fn write_status(cache: &Path, pid: u32) {
    let state = cache.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(
        state.join("status.json"),
        format!("{{\"pid\": {pid}, \"sequence\": 7, \"updated\": {now}, \"repositories\": {{}}}}"),
    )
    .unwrap();
}

#[test]
fn a_stale_status_file_signals_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = dir.join("cache");
    let mut sleeper = Sleeper::start();
    write_status(&cache, sleeper.0.id());

    // `repofs status --cache-dir`: would send SIGUSR1.
    let (code, out, err) = sh(
        &format!("{} status --cache-dir {}", repofs_bin(), cache.display()),
        Duration::from_secs(30),
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("stale") && err.contains("`sleep`") && err.contains("not a repofs daemon"),
        "{err}"
    );
    assert!(sleeper.alive(), "repofs status signalled the sleep");

    // `repofs repo add --reload`: would send SIGHUP. The entry is added;
    // only the reload is refused.
    let cfg = write_config(dir, &dir.join("mnt"), &cache, &[], "");
    let (code, out, err) = sh(
        &format!(
            "{} --config {} repo add b --provider git --url http://127.0.0.1:1/b.git --reload",
            repofs_bin(),
            cfg.display()
        ),
        Duration::from_secs(30),
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("stale") && err.contains("`sleep`") && !out.contains("asked repofs"),
        "{out}{err}"
    );
    assert!(sleeper.alive(), "repo add --reload signalled the sleep");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("name = \"b\""), "{text}");
}
