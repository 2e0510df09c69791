//! Writable views (`repofs overlay`): an overlayfs mount whose lower layer
//! is a repofs mount and whose upper layer is a directory under
//! `<cache_dir>/overlays/<id>/`. Builds that write into their source tree
//! (`pip install .`, in-source CMake, `node_modules`) write there; nothing
//! written reaches the remote or the content cache. Each view's record
//! (`target`, `lower`) sits next to its layers, so the daemon can remove the
//! views over its mounts when it stops. Needs CAP_SYS_ADMIN.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::mountinfo::mount_at;

use sha2::Digest;

/// Where the layers of the view at `target` live.
fn base_for(cache_dir: &Path, target: &Path) -> PathBuf {
    let id = sha2::Sha256::digest(target.as_os_str().as_bytes());
    cache_dir.join("overlays").join(&hex::encode(id)[..16])
}

/// Overlayfs separates options with `,` and layers with `:`.
fn option_path(p: &Path) -> Result<String, String> {
    let s = p
        .to_str()
        .ok_or_else(|| format!("{} is not valid UTF-8", p.display()))?;
    if s.contains([',', ':', '\\']) {
        return Err(format!(
            "{s} contains ',', ':' or '\\', which overlayfs cannot take in a layer path"
        ));
    }
    Ok(s.to_string())
}

/// Mounts a writable view of `lower` (a repofs mount) at `target`, with its
/// layers under `cache_dir`. Returns the upper directory.
pub fn create(lower: &Path, target: &Path, cache_dir: &Path) -> Result<PathBuf, String> {
    let lower_mount = match mount_at(lower) {
        Some(m) if m.fstype.starts_with("fuse") && m.source.starts_with("repofs:") => m,
        _ => {
            return Err(format!(
                "{} is not a repofs mount (is the daemon running?)",
                lower.display()
            ));
        }
    };
    crate::private::create_open_dir(target)
        .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    let target = target
        .canonicalize()
        .map_err(|e| format!("{}: {e}", target.display()))?;
    if let Some(m) = mount_at(&target) {
        return Err(format!(
            "{} is already a mount point ({}); remove it first with `repofs overlay --remove {}`",
            target.display(),
            m.fstype,
            target.display()
        ));
    }
    let base = base_for(cache_dir, &target);
    // A record left by a view that is no longer mounted is stale.
    let _ = std::fs::remove_dir_all(&base);
    let (upper, work) = (base.join("upper"), base.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    open_as_lower(&upper, &lower_mount.options)?;
    let record = |name: &str, p: &Path| {
        std::fs::write(base.join(name), p.as_os_str().as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", base.join(name).display()))
    };
    record("target", &target)?;
    record("lower", lower)?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        option_path(lower)?,
        option_path(&upper)?,
        option_path(&work)?
    );
    let c = |s: &[u8]| CString::new(s).map_err(|_| "a path contains a NUL byte".to_string());
    let (src, dst, fstype, data) = (
        c(b"repofs-overlay")?,
        c(target.as_os_str().as_bytes())?,
        c(b"overlay")?,
        c(options.as_bytes())?,
    );
    // SAFETY: every pointer is a valid NUL-terminated string for the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir_all(&base);
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) => " (mounting overlayfs needs root or CAP_SYS_ADMIN)",
            Some(libc::ENODEV) => " (the kernel has no overlayfs: modprobe overlay)",
            _ => "",
        };
        return Err(format!(
            "cannot mount the overlay at {}: {e}{hint}",
            target.display()
        ));
    }
    Ok(upper)
}

/// Gives the view's root (the upper layer's root, whose owner and mode
/// overlayfs shows for the merged root) the access of its lower mount.
/// Overlayfs reads the lower layer with the credentials of whoever mounted
/// it (root), so without this any user could read through the view what the
/// FUSE mount refuses them: without `allow_other` the root is 0700 and owned
/// by the FUSE mount's user (the only one it lets in); with `allow_other`,
/// 0755.
fn open_as_lower(upper: &Path, fuse_options: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let option = |key: &str| {
        fuse_options
            .split(',')
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('=')?.parse::<u32>().ok())
    };
    let allow_other = fuse_options.split(',').any(|o| o == "allow_other");
    let (uid, gid) = (option("user_id"), option("group_id"));
    if let (Some(uid), Some(gid)) = (uid, gid) {
        std::os::unix::fs::chown(upper, Some(uid), Some(gid))
            .map_err(|e| format!("cannot give {} to uid {uid}: {e}", upper.display()))?;
    }
    let mode = if allow_other { 0o755 } else { 0o700 };
    std::fs::set_permissions(upper, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", upper.display()))
}

/// Unmounts the view at `target` and deletes its upper layer. Returns the
/// directory that held the layers.
pub fn remove(target: &Path) -> Result<PathBuf, String> {
    let target = target
        .canonicalize()
        .map_err(|e| format!("{}: {e}", target.display()))?;
    let m = mount_at(&target)
        .filter(|m| m.fstype == "overlay")
        .ok_or_else(|| format!("{} is not an overlay mount", target.display()))?;
    let upper = m
        .options
        .split(',')
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from)
        .ok_or_else(|| format!("{}: the overlay has no upper directory", target.display()))?;
    let base = upper
        .parent()
        .filter(|b| {
            upper.file_name() == Some("upper".as_ref())
                && b.parent().and_then(|o| o.file_name()) == Some("overlays".as_ref())
        })
        .ok_or_else(|| {
            format!(
                "{} was not made by `repofs overlay` (upper directory {})",
                target.display(),
                upper.display()
            )
        })?
        .to_path_buf();
    unmount(&target)?;
    std::fs::remove_dir_all(&base).map_err(|e| format!("cannot remove {}: {e}", base.display()))?;
    Ok(base)
}

fn unmount(target: &Path) -> Result<(), String> {
    let dst = CString::new(target.as_os_str().as_bytes()).map_err(|_| "NUL in path".to_string())?;
    // SAFETY: a valid NUL-terminated path. Detached, so a shell still in
    // the view does not keep it mounted.
    if unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(format!(
            "cannot unmount {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Removes every view under `cache_dir` whose lower layer is one of
/// `lowers` (the daemon's mounts, when it stops or unmounts one).
pub fn remove_over(cache_dir: &Path, lowers: &[PathBuf]) {
    let Ok(dir) = std::fs::read_dir(cache_dir.join("overlays")) else {
        return;
    };
    for e in dir.flatten() {
        let base = e.path();
        let read = |n: &str| {
            std::fs::read(base.join(n))
                .ok()
                .map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(&b)))
        };
        let (Some(target), Some(lower)) = (read("target"), read("lower")) else {
            continue;
        };
        if !lowers.contains(&lower) {
            continue;
        }
        if mount_at(&target).is_some_and(|m| m.fstype == "overlay") {
            if let Err(e) = unmount(&target) {
                tracing::warn!("{e}");
                continue;
            }
        }
        match std::fs::remove_dir_all(&base) {
            Ok(()) => tracing::info!(view = %target.display(), "writable view removed"),
            Err(e) => tracing::warn!("cannot remove {}: {e}", base.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_paths_with_separators_are_refused() {
        assert!(option_path(Path::new("/a,b")).is_err());
        assert!(option_path(Path::new("/a:b")).is_err());
        assert_eq!(option_path(Path::new("/a/b")).unwrap(), "/a/b");
    }
}
