//! `repofs prefetch PATH...`: makes a build's inputs local before it
//! starts. It walks the paths (which must be inside repofs mounts), then
//! reads every regular file through the mount with a few threads, so the
//! daemon fetches each one into its cache, and checks that each read gave
//! exactly the file's size. Progress goes to stderr: a line redrawn in
//! place on a terminal, a plain line every 2 s otherwise. The summary says
//! what the origin was asked for, from the daemon's status before and after.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::status::human;

/// What happened, for the exit code.
pub struct Outcome {
    pub files: u64,
    pub failed: u64,
}

/// The repofs mount (its mount point) that holds `path`.
fn mount_of(path: &Path) -> Option<PathBuf> {
    crate::mountinfo::mounts()
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse") && m.source.starts_with("repofs:"))
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .map(|m| m.mount_point)
}

/// Requests and bytes the origin sent for the repositories mounted at
/// `mounts`, according to the first status file that knows them all.
fn origin_traffic(status_files: &[PathBuf], mounts: &[PathBuf]) -> Option<(u64, u64)> {
    for f in status_files {
        let Ok(doc) = crate::status::fresh(f) else {
            continue;
        };
        let repos = doc.get("repositories")?.as_array()?.clone();
        let mut total = (0, 0);
        let mut found = 0;
        for m in mounts {
            let r = repos
                .iter()
                .find(|r| r.get("mount_point").and_then(|p| p.as_str()) == m.to_str());
            if let Some(r) = r {
                let n = |k: &str| r.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                total.0 += n("requests");
                total.1 += n("bytes_received");
                found += 1;
            }
        }
        if found == mounts.len() {
            return Some(total);
        }
    }
    None
}

/// Collects the regular files under `root` (not following symlinks).
fn walk(root: &Path, files: &mut Vec<(PathBuf, u64)>, errors: &mut Vec<String>) {
    let meta = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) => return errors.push(format!("{}: {e}", root.display())),
    };
    if meta.is_file() {
        files.push((root.to_path_buf(), meta.len()));
        return;
    }
    if !meta.is_dir() {
        return;
    }
    let entries = match std::fs::read_dir(root) {
        Ok(d) => d,
        Err(e) => return errors.push(format!("{}: {e}", root.display())),
    };
    let mut children: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    children.sort();
    for c in children {
        walk(&c, files, errors);
    }
}

/// Reads a whole file, checking that its size is what was listed.
fn read_all(path: &Path, size: u64, done: &AtomicU64, buf: &mut [u8]) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut got = 0u64;
    loop {
        match f.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                got += n as u64;
                done.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    if got != size {
        return Err(format!(
            "{}: read {got} bytes, but the file is {size} bytes",
            path.display()
        ));
    }
    Ok(())
}

fn rate_and_eta(done: u64, total: u64, elapsed: Duration) -> (String, String) {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let eta = if rate > 0.0 && total > done {
        format!("{:.0}s", (total - done) as f64 / rate)
    } else {
        "-".to_string()
    };
    (format!("{}/s", human(rate as u64)), eta)
}

/// Prefetches every file under `paths` with `jobs` readers. `status_files`
/// are where to look for the daemon's traffic counts.
pub fn run(paths: &[PathBuf], jobs: usize, status_files: &[PathBuf]) -> Result<Outcome, String> {
    let mut mounts = Vec::new();
    let mut roots = Vec::new();
    for p in paths {
        let c = p
            .canonicalize()
            .map_err(|e| format!("{}: {e}", p.display()))?;
        let m =
            mount_of(&c).ok_or_else(|| format!("{} is not inside a repofs mount", p.display()))?;
        if !mounts.contains(&m) {
            mounts.push(m);
        }
        roots.push(c);
    }
    let start = Instant::now();
    let before = origin_traffic(status_files, &mounts);
    let (mut files, mut errors) = (Vec::new(), Vec::new());
    for r in &roots {
        walk(r, &mut files, &mut errors);
    }
    files.sort();
    files.dedup();
    let total_bytes: u64 = files.iter().map(|f| f.1).sum();
    let total_files = files.len();
    let files = Arc::new(files);
    let (next, files_done, bytes_done) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let failures = Arc::new(Mutex::new(errors));
    let finished = Arc::new(AtomicBool::new(false));
    let progress = {
        let (files_done, bytes_done, finished) =
            (files_done.clone(), bytes_done.clone(), finished.clone());
        std::thread::spawn(move || {
            let tty = std::io::stderr().is_terminal();
            let every = if tty { 200 } else { 2000 };
            let mut waited = 0;
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                waited += 50;
                if waited < every {
                    continue;
                }
                waited = 0;
                let (f, b) = (
                    files_done.load(Ordering::Relaxed),
                    bytes_done.load(Ordering::Relaxed),
                );
                let (rate, eta) = rate_and_eta(b, total_bytes, start.elapsed());
                let line = format!(
                    "files {f}/{total_files}  {} of {}  {rate}  ETA {eta}",
                    human(b),
                    human(total_bytes)
                );
                let mut err = std::io::stderr();
                let _ = if tty {
                    write!(err, "\r\x1b[2K{line}")
                } else {
                    writeln!(err, "{line}")
                };
            }
            if tty {
                let _ = write!(std::io::stderr(), "\r\x1b[2K");
            }
        })
    };
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let (files, next, files_done, bytes_done, failures) = (
                files.clone(),
                next.clone(),
                files_done.clone(),
                bytes_done.clone(),
                failures.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((path, size)) = files.get(i) else {
                        break;
                    };
                    if let Err(e) = read_all(path, *size, &bytes_done, &mut buf) {
                        crate::source::lock(&failures).push(e);
                    }
                    files_done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    finished.store(true, Ordering::Relaxed);
    let _ = progress.join();
    let failures = std::mem::take(&mut *crate::source::lock(&failures));
    for f in &failures {
        eprintln!("repofs prefetch: {f}");
    }
    let elapsed = start.elapsed();
    let after = origin_traffic(status_files, &mounts);
    let origin = match (before, after) {
        (Some(b), Some(a)) => format!(
            "from the origin: {} requests, {}",
            a.0.saturating_sub(b.0),
            human(a.1.saturating_sub(b.1))
        ),
        _ => "origin traffic unknown (no status from the daemon)".to_string(),
    };
    println!(
        "prefetched {total_files} files, {} in {:.1} s; {origin}",
        human(bytes_done.load(Ordering::Relaxed)),
        elapsed.as_secs_f64()
    );
    Ok(Outcome {
        files: total_files as u64,
        failed: failures.len() as u64,
    })
}
