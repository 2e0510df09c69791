//! A failed exchange with a git server (or its LFS server or host API),
//! classified for users, for errno and for the retry policy
//! ([`crate::fetch::retry`]). Messages never hold a token: URLs in them are
//! redacted, and credentials only ever travel in headers.

use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot connect to {url}: {cause}; check the url and that the server is reachable")]
    Connect { url: String, cause: String },
    #[error("no answer from {url} within {secs}s (timed out); the server is slow or hanging")]
    Timeout { url: String, secs: u64 },
    /// The answer came slower than the speed floor: dropped, to be asked
    /// again on a fresh connection.
    #[error("{url}: {cause}")]
    TooSlow { url: String, cause: String },
    #[error("{url}: {message}")]
    Auth {
        url: String,
        status: u16,
        message: String,
    },
    /// Refused for the host's data quota (GitHub LFS: "over its data
    /// quota"), not for the credentials.
    #[error(
        "{url}: refused for the repository's quota, not the credentials (HTTP {status}): {message}"
    )]
    Quota {
        url: String,
        status: u16,
        message: String,
    },
    #[error("repository not found at {url} (HTTP 404): check the url{hint}")]
    NotFound { url: String, hint: &'static str },
    #[error("{url}: the server answered HTTP {status}{detail}")]
    Http {
        url: String,
        status: u16,
        detail: String,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// A pack that does not decode or whose objects do not hash to their
    /// ids: damaged on the way (or by the server). Asked again, within the
    /// policy's attempts; what arrived intact before it is kept.
    #[error("{url}: {cause}")]
    Damaged { url: String, cause: String },
    #[error("{0}")]
    Protocol(String),
    #[error("local I/O error: {0}")]
    Local(String),
}

impl RemoteError {
    /// Whether trying again may help (network trouble, a trickle, a damaged
    /// pack, 5xx, 429).
    pub fn retryable(&self) -> bool {
        match self {
            RemoteError::Connect { .. }
            | RemoteError::Timeout { .. }
            | RemoteError::TooSlow { .. }
            | RemoteError::Damaged { .. } => true,
            RemoteError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    pub fn into_source_error(self) -> crate::source::SourceError {
        use crate::source::SourceError;
        match self {
            RemoteError::Auth { .. } | RemoteError::NotFound { .. } => {
                SourceError::Denied(self.to_string())
            }
            RemoteError::Protocol(_) | RemoteError::Damaged { .. } => {
                SourceError::Corrupt(self.to_string())
            }
            _ => SourceError::Unavailable(self.to_string()),
        }
    }
}

impl crate::fetch::Retryable for RemoteError {
    fn retryable(&self) -> bool {
        RemoteError::retryable(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            RemoteError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
