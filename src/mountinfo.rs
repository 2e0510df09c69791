//! The mounts this process can see, from `/proc/self/mountinfo`: which
//! file system is mounted at a path, and its device number (by which a
//! mount's readahead is set).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One mounted filesystem, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The device number, `major:minor`.
    pub dev: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

/// Every mount this process can see.
pub fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| t.lines().filter_map(parse_mountinfo_line).collect())
        .unwrap_or_default()
}

/// The mount at exactly `path`, the last one if several are stacked.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

/// Parses one mountinfo line: `id parent dev root mount_point options
/// [optional...] - fstype source super_options`.
fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = unescape(left.split(' ').nth(4)?);
    let dev = left.split(' ').nth(2)?.to_string();
    let mut r = right.split(' ');
    Some(MountEntry {
        dev,
        mount_point: PathBuf::from(std::ffi::OsStr::from_bytes(&mount_point)),
        fstype: r.next()?.to_string(),
        source: String::from_utf8_lossy(&unescape(r.next()?)).into_owned(),
        options: String::from_utf8_lossy(&unescape(r.next().unwrap_or(""))).into_owned(),
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The kernel reads ahead of a FUSE file at most its mount's
/// `read_ahead_kb` (128 KiB by default, whatever `max_readahead` was agreed),
/// so a sequential read through the daemon would cost a round trip per
/// 128 KiB. Raises it for the mount of device `dev` (`major:minor`; root
/// only; the setting goes with the mount). Best effort: failing costs
/// speed only.
pub fn raise_readahead(dev: &str, kib: u32) {
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, kib.to_string()) {
        Ok(()) => tracing::debug!("{path} = {kib}"),
        Err(e) => tracing::info!("readahead left at the kernel's default ({path}: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse() {
        let l = "36 35 98:0 / /mnt/my\\040dir rw,noatime master:1 - overlay repofs-overlay rw,lowerdir=/a,upperdir=/c/overlays/x/upper,workdir=/w";
        let m = parse_mountinfo_line(l).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/mnt/my dir"));
        assert_eq!(m.fstype, "overlay");
        assert_eq!(m.source, "repofs-overlay");
        assert!(m.options.contains("upperdir=/c/overlays/x/upper"));
        assert_eq!(parse_mountinfo_line("garbage"), None);
        assert_eq!(unescape("a\\134b\\0"), b"a\\b\\0");
    }
}
