//! The protocol side of one repository: capabilities, `ls-refs` and ref
//! resolution, and `fetch` with the pack streamed into a [`PackDecoder`] as
//! it arrives (no scratch file, no second copy of the pack).

use std::sync::{Arc, Mutex};

use gix_hash::ObjectId;

use super::pack::{Flow, Limits, ObjectSink, PackDecoder};
use super::protocol::{self, Capabilities, FetchResponseParser};
use super::transport::{RemoteError, Transport};
use crate::config::{Config, RepoConfig};
use crate::source::lock;

/// The protocol side of one repository: capabilities, commands, ref resolution.
pub struct Remote {
    pub transport: Arc<Transport>,
    reference: Option<String>,
    caps: Mutex<Option<Capabilities>>,
}

impl Remote {
    pub fn new(repo: &RepoConfig, config: &Config) -> Result<Remote, String> {
        Ok(Remote {
            transport: Arc::new(Transport::new(
                repo,
                config.connect_timeout,
                config.request_timeout,
                config.max_attempts,
                config.low_speed,
            )?),
            reference: repo.reference.clone(),
            caps: Mutex::new(None),
        })
    }

    pub async fn capabilities(&self) -> Result<Capabilities, RemoteError> {
        if let Some(c) = lock(&self.caps).clone() {
            return Ok(c);
        }
        let body = self.transport.get_info_refs().await?;
        let caps = protocol::parse_capabilities(&body)
            .map_err(|e| RemoteError::Protocol(format!("{}: {e}", self.transport.clone_url)))?;
        *lock(&self.caps) = Some(caps.clone());
        Ok(caps)
    }

    /// The capabilities, if they were fetched already (never waits).
    pub fn known_capabilities(&self) -> Option<Capabilities> {
        lock(&self.caps).clone()
    }

    pub async fn command(&self, command: &str, args: Vec<String>) -> Result<Vec<u8>, RemoteError> {
        let caps = self.capabilities().await?;
        let body = protocol::command_request(command, &caps, &args);
        self.transport
            .upload_pack(body, |resp, url| async move {
                self.transport.read_all(resp, &url).await
            })
            .await
    }

    /// One `fetch` with `args`; the pack streams into `sink` through a
    /// decoder bounded by `limits`. Returns `Flow::Stopped` when the sink
    /// stopped it (the rest of the response is never read) or `Flow::Done`.
    /// Not retried once bytes arrived: the caller knows what it already got.
    pub async fn fetch(
        &self,
        args: Vec<String>,
        limits: Limits,
        sink: &mut (dyn ObjectSink + Send),
    ) -> Result<Flow, RemoteError> {
        let caps = self.capabilities().await?;
        let body = protocol::command_request("fetch", &caps, &args);
        let (resp, url) = self.transport.open_upload_pack(body).await?;
        let mut resp = self.transport.body(resp);
        let mut parser = FetchResponseParser::new();
        let mut decoder = PackDecoder::new(limits);
        let mut flow = Flow::More;
        let mut pack_error = None;
        while let Some(chunk) = self.transport.next_chunk(&mut resp, &url).await? {
            // Inflating and hashing are CPU work: keep them off the async workers.
            let fed = tokio::task::block_in_place(|| {
                parser.feed(&chunk, &mut |data| {
                    match decoder.feed(data, sink) {
                        Ok(f) => flow = f,
                        Err(e) => pack_error = Some(e),
                    }
                    if flow == Flow::Stopped || pack_error.is_some() {
                        // Ends the parse; the response is dropped below.
                        Err(protocol::ProtocolError("stopped".into()))
                    } else {
                        Ok(())
                    }
                })
            });
            sink.progress();
            if let Some(e) = pack_error {
                return Err(RemoteError::Damaged {
                    url: crate::redact::url(&url),
                    cause: e.to_string(),
                });
            }
            if flow == Flow::Stopped {
                return Ok(Flow::Stopped);
            }
            fed.map_err(|e| RemoteError::Protocol(format!("{url}: {e}")))?;
        }
        parser
            .finish()
            .map_err(|e| RemoteError::Protocol(format!("{url}: {e}")))?;
        if !decoder.is_done() {
            return Err(RemoteError::Damaged {
                url: crate::redact::url(&url),
                cause: "the pack ended before its last object".into(),
            });
        }
        Ok(Flow::Done)
    }

    /// Resolves the configured ref to a commit id (the "test connection" core).
    pub async fn resolve_ref(&self) -> Result<ObjectId, RemoteError> {
        let reference = self.reference.as_deref();
        let body = self
            .command("ls-refs", protocol::ls_refs_args(reference))
            .await?;
        let refs = protocol::parse_ls_refs(&body).map_err(|e| RemoteError::Protocol(e.0))?;
        if let Some(r) = protocol::select_ref(&refs, reference) {
            return Ok(r.target());
        }
        match reference {
            Some(r) if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) => {
                protocol::parse_oid(&r.to_ascii_lowercase()).map_err(|e| RemoteError::Protocol(e.0))
            }
            Some(r) => {
                let body = self
                    .command("ls-refs", vec!["ref-prefix refs/heads/".into()])
                    .await?;
                let branches: Vec<String> = protocol::parse_ls_refs(&body)
                    .map(|v| {
                        v.into_iter()
                            .filter_map(|r| r.name.strip_prefix("refs/heads/").map(String::from))
                            .take(10)
                            .collect()
                    })
                    .unwrap_or_default();
                Err(RemoteError::Protocol(format!(
                    "ref '{r}' does not exist in {} (no such branch, tag or commit id); branches include: {}",
                    self.transport.clone_url,
                    if branches.is_empty() {
                        "(none)".to_string()
                    } else {
                        branches.join(", ")
                    }
                )))
            }
            None => Err(RemoteError::Protocol(format!(
                "{} has no HEAD (empty repository?); set `ref` to a branch",
                self.transport.clone_url
            ))),
        }
    }
}
