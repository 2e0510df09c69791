//! A download in flight that readers can follow: one writer fills a file
//! and publishes its progress; any number of readers wait for the bytes they
//! need. The end of the content is served only once the writer declared it
//! verified (`Done`), so a corrupt or cut download ends in an error, never
//! in a clean end of file. A reader that waits longer than its stall limit
//! without progress gets an error, so a read never hangs for ever.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{FileReader, SourceError, read_file_into};

/// What a transfer has done so far.
#[derive(Debug, Clone)]
pub enum TransferState {
    /// This many bytes at the start of the file are written (never rewound).
    Progress(u64),
    /// Complete and verified.
    Done,
    Failed(SourceError),
    /// The transfer ended without fetching the content (a size probe):
    /// waiters must look again and start a fetch of their own.
    Released,
}

/// The sending side, kept by the task that downloads.
pub type TransferSender = watch::Sender<TransferState>;

/// One transfer, shared by its readers.
pub struct Transfer {
    pub state: watch::Receiver<TransferState>,
    /// The file being written, when readers may follow it as it grows.
    pub file: Option<std::fs::File>,
    /// The content's exact size, once the writer knows it (before its
    /// first byte, for a blob: the pack entry's header says it).
    pub size: std::sync::OnceLock<u64>,
    /// Set (before `Done`) when the content ended up in memory instead of
    /// the file (the disk was full): readers then read it from here.
    pub memory: std::sync::OnceLock<Arc<[u8]>>,
    /// Set (before `Done`) when the verified content came whole from
    /// elsewhere (the shared cache tier) instead of into `file`.
    pub done_file: std::sync::OnceLock<std::fs::File>,
}

impl Transfer {
    pub fn new(file: Option<std::fs::File>) -> (TransferSender, Arc<Transfer>) {
        let (tx, rx) = watch::channel(TransferState::Progress(0));
        (
            tx,
            Arc::new(Transfer {
                state: rx,
                file,
                size: std::sync::OnceLock::new(),
                memory: std::sync::OnceLock::new(),
                done_file: std::sync::OnceLock::new(),
            }),
        )
    }

    /// Another view of the transfer `tx` sends on (no file to follow).
    pub fn follow(tx: &TransferSender) -> Arc<Transfer> {
        Arc::new(Transfer {
            state: tx.subscribe(),
            file: None,
            size: std::sync::OnceLock::new(),
            memory: std::sync::OnceLock::new(),
            done_file: std::sync::OnceLock::new(),
        })
    }

    pub fn failed(&self) -> bool {
        matches!(&*self.state.borrow(), TransferState::Failed(_))
    }

    /// Whether joining this transfer can still lead anywhere: not failed,
    /// and its writer still there (a writer that vanished without a last
    /// word, say a cancelled task, leaves a transfer nobody will finish).
    pub fn alive(&self) -> bool {
        !self.failed() && self.state.has_changed().is_ok()
    }

    /// Waits until `ready` says the state is good enough, an error, or the
    /// stall limit passes without any change.
    pub async fn wait(
        &self,
        stall_limit: Duration,
        mut ready: impl FnMut(&TransferState) -> bool,
    ) -> Result<TransferState, SourceError> {
        let mut rx = self.state.clone();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                TransferState::Failed(e) => return Err(e),
                s if ready(&s) => return Ok(s),
                _ => {}
            }
            match tokio::time::timeout(stall_limit, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    // The sender is gone: its last word stands.
                    let last = rx.borrow().clone();
                    return match last {
                        TransferState::Failed(e) => Err(e),
                        s if ready(&s) => Ok(s),
                        _ => Err(SourceError::Unavailable("the download stopped".into())),
                    };
                }
                Err(_) => {
                    return Err(SourceError::Unavailable(format!(
                        "the download made no progress for {}s",
                        stall_limit.as_secs()
                    )));
                }
            }
        }
    }

    /// Waits for the whole content to be complete and verified.
    pub async fn finished(&self, stall_limit: Duration) -> Result<TransferState, SourceError> {
        self.wait(stall_limit, |s| {
            matches!(s, TransferState::Done | TransferState::Released)
        })
        .await
    }
}

/// Reads a file of known `size` while its transfer progresses.
pub struct TransferReader {
    pub transfer: Arc<Transfer>,
    pub size: u64,
    pub rt: tokio::runtime::Handle,
    pub stall_limit: Duration,
}

impl FileReader for TransferReader {
    fn cacheable(&self) -> bool {
        false
    }

    fn complete(&self) -> bool {
        matches!(&*self.transfer.state.borrow(), TransferState::Done)
    }

    fn size(&self) -> Option<u64> {
        Some(self.size)
    }

    fn progress(&self) -> Option<(u64, u64)> {
        match &*self.transfer.state.borrow() {
            TransferState::Progress(n) => Some(((*n).min(self.size), self.size)),
            _ => None,
        }
    }

    fn read_at(&self, offset: u64, size: u32) -> Result<Vec<u8>, SourceError> {
        let mut buf = vec![0u8; (u64::from(size).min(self.size.saturating_sub(offset))) as usize];
        let n = self.read_into(offset, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        let need = offset.saturating_add(buf.len() as u64).min(self.size);
        let total = self.size;
        self.rt
            .block_on(self.transfer.wait(self.stall_limit, |s| match s {
                TransferState::Done => true,
                // The end is served only once everything is verified.
                TransferState::Progress(n) => *n >= need && need < total,
                _ => false,
            }))
            .and_then(|s| match s {
                TransferState::Released => Err(SourceError::Unavailable(
                    "the download was abandoned".into(),
                )),
                _ => Ok(()),
            })?;
        if let Some(m) = self.transfer.memory.get() {
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(m.len());
            let n = (m.len() - start).min(buf.len());
            buf[..n].copy_from_slice(&m[start..start + n]);
            return Ok(n);
        }
        if let Some(f) = self.transfer.done_file.get() {
            return read_file_into(f, offset, buf);
        }
        let file = self
            .transfer
            .file
            .as_ref()
            .ok_or_else(|| SourceError::Unavailable("no file to read".into()))?;
        read_file_into(file, offset, buf)
    }
}
