//! Kernel passthrough (Linux 6.9+, needs CAP_SYS_ADMIN): when a file's
//! complete, verified contents are a local file, `open` hands the kernel
//! that file and reads go straight to it, never through the daemon. The
//! open descriptor keeps the bytes readable even if the cache evicts the
//! file meanwhile.
//!
//! The kernel wants one backing id per inode, shared by all its open
//! handles, and refuses to mix passthrough and ordinary (page-cached)
//! opens of one inode: an inode with ordinary opens stays ordinary until
//! they are all released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{BackingId, ReplyOpen};

use crate::source::lock;

#[derive(Default)]
struct Inode {
    id: Option<Arc<BackingId>>,
    passthrough: u64,
    ordinary: u64,
}

/// The passthrough state of a mount's inodes.
#[derive(Default)]
pub(super) struct Backings {
    /// Negotiated with the kernel at `init`.
    pub(super) enabled: AtomicBool,
    inodes: Mutex<HashMap<u64, Inode>>,
}

impl Backings {
    /// Records an open of `ino`. With `file` (the complete contents) and
    /// passthrough possible, returns the backing id to answer with.
    pub(super) fn open(
        &self,
        ino: u64,
        file: Option<&std::fs::File>,
        reply: &ReplyOpen,
    ) -> Option<Arc<BackingId>> {
        let mut inodes = lock(&self.inodes);
        let i = inodes.entry(ino).or_default();
        // While passthrough handles are open the kernel accepts only more of
        // them: reuse the backing (the same, complete node) whatever this
        // open's reader is.
        if let Some(id) = &i.id {
            i.passthrough += 1;
            return Some(id.clone());
        }
        if let (Some(file), true, 0) = (file, self.enabled.load(Ordering::Relaxed), i.ordinary) {
            match reply.open_backing(file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    i.id = Some(id.clone());
                    i.passthrough += 1;
                    return Some(id);
                }
                Err(e) => {
                    // Refused for every file (no privilege, a stacked cache
                    // directory, no support): say so once and stop asking.
                    // Anything else (out of descriptors) is for this open only.
                    let every = matches!(
                        e.raw_os_error(),
                        Some(
                            libc::EPERM
                                | libc::EOPNOTSUPP
                                | libc::ENOTTY
                                | libc::EINVAL
                                | libc::ELOOP
                        )
                    );
                    if every && self.enabled.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            "kernel passthrough refused ({e}): cached files are read through the daemon"
                        );
                    } else if !every {
                        tracing::debug!("kernel passthrough refused for inode {ino}: {e}");
                    }
                }
            }
        }
        i.ordinary += 1;
        None
    }

    /// Records a release; the backing id goes with the last passthrough
    /// handle of its inode.
    pub(super) fn release(&self, ino: u64, passthrough: bool) {
        let mut inodes = lock(&self.inodes);
        let Some(i) = inodes.get_mut(&ino) else {
            return;
        };
        if passthrough {
            i.passthrough = i.passthrough.saturating_sub(1);
            if i.passthrough == 0 {
                i.id = None;
            }
        } else {
            i.ordinary = i.ordinary.saturating_sub(1);
        }
        if i.passthrough == 0 && i.ordinary == 0 {
            inodes.remove(&ino);
        }
    }
}
