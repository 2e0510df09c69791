//! HTTP transport to one git server: the auth header per host kind, timeouts,
//! bounded retries, request/byte counters, and errors that say what went
//! wrong (never with the token in them).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

use crate::fetch::{LowSpeed, Policy, speed::Floor};

use crate::config::{Provider, RepoConfig};

use super::credentials::{Auth, grant_error};
pub use super::errors::RemoteError;
pub use super::origin::{api_root, origin};

/// The largest answer to a command other than `fetch` (`ls-refs`,
/// `object-info`) that is read into memory.
pub const MAX_COMMAND_RESPONSE: usize = 64 << 20;
/// The most of an HTTP error's body read (for its excerpt in the error).
const ERROR_BODY_MAX: usize = 4 * 1024;

/// Counters of what this transport did (for status output and tests).
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub bytes_received: AtomicU64,
}

/// The HTTP side of one repository.
pub struct Transport {
    pub clone_url: String,
    /// The daemon's pooled client ([`crate::fetch::http`]): credentials are
    /// added per request, on trusted origins only.
    client: reqwest::Client,
    auth: Auth,
    /// The origins (`scheme://host:port`) the credentials may go to: the
    /// clone URL's, the host API's (`api_url` or the default root) and a
    /// configured `lfs_url`'s. A URL
    /// anywhere else (from repository content or a server's answer) is
    /// asked anonymously.
    trusted: Vec<String>,
    /// The raw token, for host APIs (sent as `Bearer`).
    api_token: Option<crate::config::Secret>,
    has_token: bool,
    provider: Provider,
    /// The one retry policy ([`crate::fetch::retry`]).
    pub policy: Policy,
    /// The floor under the speed of every response body.
    pub floor: Floor,
    timeout: Duration,
    pub counters: Arc<Counters>,
}

/// A response body being read, with its speed floor.
pub struct Body {
    pub resp: reqwest::Response,
    speed: LowSpeed,
}

impl Transport {
    pub fn new(
        repo: &RepoConfig,
        connect_timeout: Duration,
        timeout: Duration,
        max_attempts: u32,
        floor: Floor,
    ) -> Result<Transport, String> {
        let clone_url = super::url::clone_url(repo.provider, &repo.url)?;
        let auth = Auth::new(repo, &clone_url, timeout)?;
        let client = crate::fetch::http::client(crate::fetch::http::ClientOptions {
            connect_timeout,
            read_timeout: timeout,
            redirects: true,
            ca_bundle: repo.ca_bundle.clone(),
        })?;
        let mut trusted: Vec<String> = [Some(clone_url.as_str()), repo.lfs_url.as_deref()]
            .into_iter()
            .flatten()
            .map(String::from)
            .chain(api_root(repo.provider, &clone_url, repo.api_url.as_deref()))
            .filter_map(|u| origin(&u))
            .collect();
        trusted.dedup();
        Ok(Transport {
            clone_url,
            client,
            auth,
            trusted,
            api_token: repo.token.as_ref().map(|t| t.secret.clone()),
            has_token: repo.token.is_some()
                || repo.github_app.is_some()
                || repo.gitlab_app.is_some(),
            provider: repo.provider,
            policy: Policy::new(max_attempts),
            floor,
            timeout,
            counters: Arc::new(Counters::default()),
        })
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .header("Git-Protocol", "version=2")
    }

    /// Whether `url` is on an origin the repository's credentials may go to.
    pub fn trusts(&self, url: &str) -> bool {
        origin(url).is_some_and(|o| self.trusted.contains(&o))
    }

    /// Adds the repository's credentials to a request for `url` (a GitHub
    /// App token is fetched or renewed here when needed), but only when
    /// `url` is on a trusted origin: anything else goes anonymously.
    async fn authorize(
        &self,
        rb: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, RemoteError> {
        if !self.trusts(url) {
            tracing::debug!(url = %crate::redact::url(url), "another origin than the repository's: sent without credentials");
            return Ok(rb);
        }
        Ok(match self.auth.git_header().await? {
            Some(v) => rb.header(reqwest::header::AUTHORIZATION, v),
            None => rb,
        })
    }

    /// The GitLab OAuth grant behind this transport, if any.
    pub fn gitlab_grant(&self) -> Option<&Arc<crate::auth::GitlabGrant>> {
        match &self.auth {
            Auth::Gitlab(g) => Some(g),
            _ => None,
        }
    }

    /// The GitHub App behind this transport, if any.
    pub fn github_app(&self) -> Option<&Arc<crate::auth::GithubApp>> {
        match &self.auth {
            Auth::App(a) => Some(a),
            _ => None,
        }
    }

    /// GET `info/refs?service=git-upload-pack`: the v2 capability advertisement.
    pub async fn get_info_refs(&self) -> Result<Vec<u8>, RemoteError> {
        let url = format!("{}/info/refs?service=git-upload-pack", self.clone_url);
        self.retry(|| async {
            let rb = self
                .authorize(self.request(reqwest::Method::GET, &url), &url)
                .await?;
            let resp = self.send(rb, &url).await?;
            self.read_all(resp, &url).await
        })
        .await
    }

    /// The body of `resp`, to be read with [`Self::next_chunk`].
    pub fn body(&self, resp: reqwest::Response) -> Body {
        Body {
            resp,
            speed: LowSpeed::new(self.floor),
        }
    }

    /// POST to `git-upload-pack`; `consume` reads the successful response
    /// (it runs again on a retry, so it must start from scratch each time).
    pub async fn upload_pack<T, F, Fut>(&self, body: Vec<u8>, consume: F) -> Result<T, RemoteError>
    where
        F: Fn(reqwest::Response, String) -> Fut,
        Fut: Future<Output = Result<T, RemoteError>>,
    {
        self.retry(|| async {
            let (resp, url) = self.post_upload_pack(&body).await?;
            consume(resp, url).await
        })
        .await
    }

    /// POST to `git-upload-pack` and return the response to be streamed by
    /// the caller. Only sending is retried: a body that fails midway is the
    /// caller's to retry (it knows what it already consumed).
    pub async fn open_upload_pack(
        &self,
        body: Vec<u8>,
    ) -> Result<(reqwest::Response, String), RemoteError> {
        self.retry(|| self.post_upload_pack(&body)).await
    }

    /// One authenticated POST to `git-upload-pack` (no retry).
    async fn post_upload_pack(
        &self,
        body: &[u8],
    ) -> Result<(reqwest::Response, String), RemoteError> {
        let url = format!("{}/git-upload-pack", self.clone_url);
        let rb = self
            .request(reqwest::Method::POST, &url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-git-upload-pack-request",
            )
            .header(
                reqwest::header::ACCEPT,
                "application/x-git-upload-pack-result",
            )
            .body(body.to_vec());
        let rb = self.authorize(rb, &url).await?;
        Ok((self.send(rb, &url).await?, url))
    }

    /// A host REST/GraphQL API call with the token as `Bearer` (how GitHub,
    /// GitLab and Bitbucket Server accept personal and app tokens on their
    /// APIs). Not retried: callers fall back to git itself on any failure.
    /// Returns the status, the headers and at most `max_body` bytes of body.
    pub async fn api_call(
        &self,
        method: reqwest::Method,
        url: &str,
        json_body: Option<Vec<u8>>,
        max_body: usize,
    ) -> Result<(u16, HeaderMap, Vec<u8>), RemoteError> {
        let sent = std::time::Instant::now();
        let answer = self
            .api_call_once(method.clone(), url, json_body.clone(), max_body)
            .await?;
        // A GitLab access token refused: refreshed at once, asked again once.
        match self.gitlab_grant() {
            Some(g) if answer.0 == 401 && self.trusts(url) => {
                g.after_401(sent).await.map_err(grant_error)?;
                self.api_call_once(method, url, json_body, max_body).await
            }
            _ => Ok(answer),
        }
    }

    async fn api_call_once(
        &self,
        method: reqwest::Method,
        url: &str,
        json_body: Option<Vec<u8>>,
        max_body: usize,
    ) -> Result<(u16, HeaderMap, Vec<u8>), RemoteError> {
        let mut rb = self.client.request(method, url).timeout(self.timeout);
        for (k, v) in super::hosts::api_headers(self.provider) {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = json_body {
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        if self.trusts(url)
            && let Some(v) = self.auth.api_header(self.api_token.as_ref()).await?
        {
            rb = rb.header(reqwest::header::AUTHORIZATION, v);
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let resp = rb.send().await.map_err(|e| self.classify(e, url))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut resp = self.body(resp);
        let mut body = Vec::new();
        while let Some(c) = self.next_chunk(&mut resp, url).await? {
            if body.len() + c.len() > max_body {
                return Err(RemoteError::Protocol(format!(
                    "{url}: the answer is larger than {max_body} bytes"
                )));
            }
            body.extend_from_slice(&c);
        }
        Ok((status, headers, body))
    }

    /// An authenticated LFS batch POST.
    async fn lfs_post(
        &self,
        url: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::RequestBuilder, RemoteError> {
        let rb = self
            .client
            .post(url)
            .header(reqwest::header::ACCEPT, "application/vnd.git-lfs+json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/vnd.git-lfs+json",
            )
            .body(body);
        self.authorize(rb, url).await
    }

    /// POSTs a Git LFS batch request (with the repository's credentials).
    pub async fn lfs_batch(&self, url: &str, body: Vec<u8>) -> Result<Vec<u8>, RemoteError> {
        self.retry(|| async {
            let rb = self.lfs_post(url, body.clone()).await?;
            let resp = self.send(rb, url).await?;
            self.read_all(resp, url).await
        })
        .await
    }

    /// POSTs an LFS batch request and returns the status, content type and
    /// the first bytes of the body whatever they are (for `repofs check`'s
    /// probe).
    pub async fn lfs_probe(
        &self,
        url: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String, Vec<u8>), RemoteError> {
        let rb = self.lfs_post(url, body).await?;
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let mut resp = rb.send().await.map_err(|e| self.classify(e, url))?;
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let status = resp.status().as_u16();
        Ok((status, ctype, read_capped(&mut resp, ERROR_BODY_MAX).await))
    }

    /// GETs an LFS download href with exactly `headers` (from the batch
    /// response) and never the repository's credentials. `range_start`
    /// resumes a partial download. Not retried here: the caller knows
    /// whether the href is still valid.
    pub async fn lfs_download(
        &self,
        href: &str,
        headers: &[(String, String)],
        range_start: u64,
    ) -> Result<reqwest::Response, RemoteError> {
        let shown = crate::redact::url(href);
        // Never the repository's credentials: only what the batch answer gave.
        let mut rb = self.client.get(href);
        for (k, v) in headers {
            let mut value = HeaderValue::from_str(v).map_err(|_| {
                RemoteError::Protocol(format!("the LFS server sent an invalid header {k:?}"))
            })?;
            value.set_sensitive(true);
            rb = rb.header(k.as_str(), value);
        }
        if range_start > 0 {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={range_start}-"));
        }
        self.send(rb, &shown).await
    }

    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, RemoteError> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let resp = rb.send().await.map_err(|e| self.classify(e, url))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        Err(self.status_error(status.as_u16(), url, resp).await)
    }

    async fn status_error(
        &self,
        status: u16,
        url: &str,
        mut resp: reqwest::Response,
    ) -> RemoteError {
        let url = crate::redact::url(url);
        if status == 403 {
            // A quota refusal (GitHub LFS) is no credential problem.
            let body = read_capped(&mut resp, ERROR_BODY_MAX).await;
            if let Some(message) = super::lfs::quota_refusal(&body) {
                return RemoteError::Quota {
                    url,
                    status,
                    message,
                };
            }
        }
        match status {
            401 | 403 | 404 if matches!(self.auth, Auth::App(_)) => {
                if let Auth::App(app) = &self.auth {
                    app.invalidate().await;
                }
                RemoteError::Auth {
                    url,
                    status,
                    message: format!(
                        "the GitHub App installation has no access to this repository (HTTP {status}): add the repository to the app's installation, and give the app read access to Contents"
                    ),
                }
            }
            401 if matches!(self.auth, Auth::Gitlab(_)) => RemoteError::Auth {
                url,
                status,
                message: "GitLab refused the OAuth access token (HTTP 401) even after a refresh: run `repofs check` for the state of the grant".into(),
            },
            401 => RemoteError::Auth {
                url,
                status,
                message: if self.has_token {
                    "the server rejected the token (HTTP 401): it is wrong, expired or revoked; replace it".into()
                } else {
                    "the repository needs authentication (HTTP 401): add token, token_env or token_file to its entry".into()
                },
            },
            403 => RemoteError::Auth {
                url,
                status,
                message: if self.has_token {
                    format!(
                        "the token lacks access to this repository (HTTP 403){}",
                        self.scope_hint()
                    )
                } else {
                    "access denied (HTTP 403): the repository is private; add a token".into()
                },
            },
            404 => RemoteError::NotFound {
                url,
                hint: if self.has_token {
                    ", and that the token can see the repository (private repositories answer 404 to tokens without access)"
                } else {
                    "; a private repository answers 404 without a token: add one"
                },
            },
            _ => {
                let retry_after =
                    crate::fetch::retry::retry_after(resp.headers(), std::time::SystemTime::now());
                // A short, printable excerpt of the body helps with proxies' error pages.
                // At most ERROR_BODY_MAX bytes are read, however long the body.
                let body = read_capped(&mut resp, ERROR_BODY_MAX).await;
                drop(resp);
                let text = crate::redact::urls_in(&String::from_utf8_lossy(&body));
                let excerpt: String = text.chars().filter(|c| !c.is_control()).take(160).collect();
                let detail = if excerpt.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", excerpt.trim())
                };
                RemoteError::Http {
                    url,
                    status,
                    detail,
                    retry_after,
                }
            }
        }
    }

    fn scope_hint(&self) -> &'static str {
        match self.provider {
            Provider::Github | Provider::GithubEnterprise => {
                "; give it read access to Contents (fine-grained) or the `repo` scope (classic)"
            }
            Provider::Gitlab | Provider::GitlabEnterprise => {
                "; it needs the `read_repository` scope and at least Reporter role"
            }
            Provider::BitbucketServer => "; it needs the project/repository read permission",
            Provider::Git | Provider::S3 => "",
        }
    }

    fn classify(&self, e: reqwest::Error, url: &str) -> RemoteError {
        let url = crate::redact::url(url);
        let e = e.without_url();
        if e.is_timeout() {
            return RemoteError::Timeout {
                url,
                secs: self.timeout.as_secs(),
            };
        }
        // Walk the source chain for the root cause, without the URL (no secrets
        // are in URLs: credentials are only ever sent as headers).
        let mut cause = e.to_string();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = src {
            cause = s.to_string();
            src = s.source();
        }
        if let Some(hint) = super::errors::certificate_hint(&cause) {
            return RemoteError::Certificate {
                url,
                cause: format!("{cause}: {hint}"),
            };
        }
        if e.is_connect() || e.is_request() {
            RemoteError::Connect { url, cause }
        } else {
            RemoteError::Connect {
                url,
                cause: format!("transfer failed: {cause}"),
            }
        }
    }

    pub async fn read_all(
        &self,
        resp: reqwest::Response,
        url: &str,
    ) -> Result<Vec<u8>, RemoteError> {
        let mut resp = self.body(resp);
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk(&mut resp, url).await? {
            if out.len() + chunk.len() > MAX_COMMAND_RESPONSE {
                return Err(RemoteError::Protocol(format!(
                    "{}: an answer larger than {} MiB",
                    crate::redact::url(url),
                    MAX_COMMAND_RESPONSE >> 20
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Reads the next chunk of a streamed body (counted), `None` at the
    /// end. A body under the speed floor is an error (retryable: the
    /// connection is dropped with the response).
    pub async fn next_chunk(
        &self,
        body: &mut Body,
        url: &str,
    ) -> Result<Option<bytes::Bytes>, RemoteError> {
        let slow = |s: crate::fetch::speed::TooSlow| RemoteError::TooSlow {
            url: crate::redact::url(url),
            cause: s.to_string(),
        };
        let chunk = body
            .speed
            .wait(body.resp.chunk())
            .await
            .map_err(slow)?
            .map_err(|e| self.classify(e, url))?;
        if let Some(c) = &chunk {
            self.counters
                .bytes_received
                .fetch_add(c.len() as u64, Ordering::Relaxed);
            body.speed.record(c.len() as u64).map_err(slow)?;
        }
        Ok(chunk)
    }

    async fn retry<T, F, Fut>(&self, op: F) -> Result<T, RemoteError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, RemoteError>>,
    {
        // A GitLab access token refused: refreshed at once and asked again
        // (once; a second refusal is the answer).
        let refreshed = std::sync::atomic::AtomicBool::new(false);
        self.policy
            .run("request", None, |_| async {
                let sent = std::time::Instant::now();
                match op().await {
                    Err(RemoteError::Auth { status: 401, .. })
                        if self.gitlab_grant().is_some()
                            && !refreshed.swap(true, Ordering::Relaxed) =>
                    {
                        if let Some(g) = self.gitlab_grant() {
                            g.after_401(sent).await.map_err(grant_error)?;
                        }
                        op().await
                    }
                    r => r,
                }
            })
            .await
    }
}

/// At most `max` bytes of a body (an error's, for its excerpt); a body
/// that fails midway gives what arrived.
async fn read_capped(resp: &mut reqwest::Response, max: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < max {
        match resp.chunk().await {
            Ok(Some(c)) => {
                let n = c.len().min(max - body.len());
                body.extend_from_slice(&c[..n]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}
