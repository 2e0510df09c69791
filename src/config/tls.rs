//! `ca_bundle`: a PEM file of certificate authorities trusted beside the
//! system's store, for servers behind a private CA (GitHub Enterprise,
//! GitLab self-managed, Bitbucket Data Center). Checked when the config is
//! read, so a wrong path or a file that holds no certificate is an error
//! naming the key, not a failed handshake later.

use std::path::{Path, PathBuf};

/// The largest bundle read (the system's whole store is about 200 KiB).
const MAX_BUNDLE: u64 = 4 << 20;

/// Checks a `ca_bundle` path: absolute, readable, at most 4 MiB, and
/// holding at least one PEM certificate that parses.
pub(super) fn ca_bundle_of(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err(format!(
            "must be an absolute path to a PEM file, got {}",
            path.display()
        ));
    }
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    if size > MAX_BUNDLE {
        return Err(format!(
            "{} is {size} bytes; a CA bundle is at most {MAX_BUNDLE} bytes",
            path.display()
        ));
    }
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(path.to_path_buf()),
        Ok(_) => Err(format!(
            "{} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
            path.display()
        )),
        Err(e) => Err(format!(
            "{} is not a PEM certificate bundle: {e}",
            path.display()
        )),
    }
}
