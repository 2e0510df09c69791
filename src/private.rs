//! What repofs writes stays private to the user it runs as.
//!
//! Every process starts with the umask 077 ([`restrict_umask`]), so
//! everything it creates (cache files, packed segments, temp files, state,
//! the status file, overlay layers, scratch directories) is 0600/0700
//! whatever umask it was started with. The cache directory is checked at
//! start ([`secure_cache_dir`]): one owned by another user is refused (it
//! could hand us planted contents or read ours), and one open to others is
//! tightened to 0700, which also closes whatever older versions left
//! readable inside it. The only directories made open on purpose are those
//! a mount sits on and their parents ([`create_open_dir`]): the mount itself
//! decides who may enter it (`allow_other`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Sets this process's umask to 077 (nothing it creates is readable or
/// writable by group or others).
pub fn restrict_umask() {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `dir` (0700) if needed; refuses one owned by another user (root
/// included: its owner could read or plant what is cached) and tightens one
/// that group or others can enter.
pub fn secure_cache_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create the cache directory {}: {e}; check cache_dir",
            dir.display()
        )
    })?;
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("cannot inspect the cache directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("cache_dir {} is not a directory", dir.display()));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(format!(
            "cache_dir {} belongs to uid {}, not to the user repofs runs as (uid {me}): another user could read or plant its contents; use a directory of your own, or chown it",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            format!(
                "cache_dir {} is open to other users (mode {mode:o}) and cannot be tightened: {e}",
                dir.display()
            )
        })?;
        tracing::warn!(
            dir = %dir.display(),
            "cache_dir was open to other users (mode {mode:o}); it is now 0700, so only its owner reads what was fetched"
        );
    }
    Ok(())
}

/// Creates `dir` and any missing parents with mode 0755 (whatever the
/// umask): directories that mounts sit on, which others must be able to
/// pass through when a mount allows them in. Existing ones are left as
/// they are.
pub fn create_open_dir(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut p = dir;
    while std::fs::symlink_metadata(p).is_err() {
        missing.push(p);
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loose_cache_dir_is_tightened_and_mount_dirs_stay_open() {
        restrict_umask();
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
        secure_cache_dir(&cache).unwrap();
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let fresh = tmp.path().join("new/cache");
        secure_cache_dir(&fresh).unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let mnt = tmp.path().join("mnt/a/b");
        create_open_dir(&mnt).unwrap();
        for d in [tmp.path().join("mnt"), tmp.path().join("mnt/a"), mnt] {
            assert_eq!(
                std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o755
            );
        }
        // A file made now is private whatever the umask was.
        let f = tmp.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
