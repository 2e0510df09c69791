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
    /// The server's TLS certificate was refused: asking again cannot help.
    #[error("{url}: {cause}")]
    Certificate { url: String, cause: String },
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

/// What to do about a TLS certificate the client refused, from the root
/// cause's text (rustls and the platform verifier name the problem).
pub fn certificate_hint(cause: &str) -> Option<&'static str> {
    let c = cause.to_ascii_lowercase();
    if !(c.contains("certificate") || c.contains("unknownissuer") || c.contains("notvalidforname"))
    {
        return None;
    }
    Some(if c.contains("expired") {
        "the server's TLS certificate has expired (or this machine's clock is wrong)"
    } else if c.contains("notvalidforname")
        || c.contains("not valid for name")
        || c.contains("hostname")
    {
        "the server's TLS certificate is not valid for this host name: check the url's host against the certificate"
    } else if c.contains("unknownissuer")
        || c.contains("unknown issuer")
        || c.contains("not trusted")
        || c.contains("self-signed")
        || c.contains("self signed")
    {
        "the server's TLS certificate is signed by an authority this machine does not trust: if it is a private CA, set `ca_bundle` (at the top level or on this repository) to that CA's PEM file"
    } else {
        "the server's TLS certificate was refused: if it comes from a private CA, set `ca_bundle` to that CA's PEM file"
    })
}

#[cfg(test)]
mod tests {
    use super::certificate_hint;

    #[test]
    fn certificate_problems_are_named_with_the_key_that_fixes_them() {
        let h = certificate_hint("invalid peer certificate: UnknownIssuer").unwrap();
        assert!(h.contains("ca_bundle"), "{h}");
        assert!(
            certificate_hint("invalid peer certificate: Expired")
                .unwrap()
                .contains("expired")
        );
        assert!(
            certificate_hint("invalid peer certificate: NotValidForName")
                .unwrap()
                .contains("host name")
        );
        assert!(certificate_hint("connection refused").is_none());
    }
}
