//! HTTP transport to one git server: the auth header per host kind, timeouts,
//! bounded retries, request/byte counters, and errors that say what went
//! wrong (never with the token in them).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

use crate::config::{Provider, RepoConfig};

use super::credentials::{Auth, grant_error};
pub use super::origin::{github_api, origin};

/// A failed exchange with the server, classified for users and for errno.
/// The largest answer to a command other than `fetch` (`ls-refs`,
/// `object-info`) that is read into memory.
pub const MAX_COMMAND_RESPONSE: usize = 64 << 20;
/// The most of an HTTP error's body read (for its excerpt in the error).
const ERROR_BODY_MAX: usize = 4 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot connect to {url}: {cause}; check the url and that the server is reachable")]
    Connect { url: String, cause: String },
    #[error("no answer from {url} within {secs}s (timed out); the server is slow or hanging")]
    Timeout { url: String, secs: u64 },
    #[error("{url}: {message}")]
    Auth {
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
    },
    #[error("{0}")]
    Protocol(String),
    #[error("local I/O error: {0}")]
    Local(String),
}

impl RemoteError {
    /// Whether trying again may help (network trouble, 5xx, 429).
    pub fn retryable(&self) -> bool {
        match self {
            RemoteError::Connect { .. } | RemoteError::Timeout { .. } => true,
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
            RemoteError::Protocol(_) => SourceError::Corrupt(self.to_string()),
            _ => SourceError::Unavailable(self.to_string()),
        }
    }
}

/// Counters of what this transport did (for status output and tests).
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub bytes_received: AtomicU64,
}

/// The HTTP side of one repository.
pub struct Transport {
    pub clone_url: String,
    client: reqwest::Client,
    /// For LFS download hrefs, which may be on another host: this client
    /// never carries the repository's credentials.
    bare_client: reqwest::Client,
    auth: Auth,
    /// The origins (`scheme://host:port`) the credentials may go to: the
    /// clone URL's, the host API's and a configured `lfs_url`'s. A URL
    /// anywhere else (from repository content or a server's answer) is
    /// asked anonymously.
    trusted: Vec<String>,
    /// The raw token, for host APIs (sent as `Bearer`).
    api_token: Option<crate::config::Secret>,
    has_token: bool,
    provider: Provider,
    max_attempts: u32,
    timeout: Duration,
    pub counters: Arc<Counters>,
}

impl Transport {
    pub fn new(
        repo: &RepoConfig,
        connect_timeout: Duration,
        timeout: Duration,
        max_attempts: u32,
    ) -> Result<Transport, String> {
        let clone_url = super::url::clone_url(repo.provider, &repo.url)?;
        let auth = Auth::new(repo, &clone_url, timeout)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::USER_AGENT,
            HeaderValue::from_static(concat!("git/2.0 (repofs/", env!("CARGO_PKG_VERSION"), ")")),
        );
        let bare_client = reqwest::Client::builder()
            .default_headers(headers.clone())
            .connect_timeout(connect_timeout)
            .read_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(connect_timeout)
            .read_timeout(timeout)
            // Credentials are attached per request and reqwest drops them on
            // redirects to another host; cap redirects all the same.
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut trusted: Vec<String> = [Some(clone_url.as_str()), repo.lfs_url.as_deref()]
            .into_iter()
            .flatten()
            .map(String::from)
            .chain([github_api(repo.provider, &clone_url)])
            .filter_map(|u| origin(&u))
            .collect();
        trusted.dedup();
        Ok(Transport {
            clone_url,
            client,
            bare_client,
            auth,
            trusted,
            api_token: repo.token.as_ref().map(|t| t.secret.clone()),
            has_token: repo.token.is_some()
                || repo.github_app.is_some()
                || repo.gitlab_app.is_some(),
            provider: repo.provider,
            max_attempts,
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
        let mut rb = self
            .client
            .request(method, url)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout);
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
        let mut resp = rb.send().await.map_err(|e| self.classify(e, url))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
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

    /// POSTs an LFS batch request and returns the status and content type
    /// whatever they are (for `repofs check`'s probe).
    pub async fn lfs_probe(&self, url: &str, body: Vec<u8>) -> Result<(u16, String), RemoteError> {
        let rb = self.lfs_post(url, body).await?;
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let resp = rb.send().await.map_err(|e| self.classify(e, url))?;
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok((resp.status().as_u16(), ctype))
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
        let mut rb = self.bare_client.get(href);
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
                // A short, printable excerpt of the body helps with proxies' error pages.
                // At most ERROR_BODY_MAX bytes are read, however long the body.
                let mut body = Vec::new();
                while body.len() < ERROR_BODY_MAX {
                    match resp.chunk().await {
                        Ok(Some(c)) => {
                            let n = c.len().min(ERROR_BODY_MAX - body.len());
                            body.extend_from_slice(&c[..n]);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
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
        mut resp: reqwest::Response,
        url: &str,
    ) -> Result<Vec<u8>, RemoteError> {
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

    /// Reads the next chunk of a streamed body (counted), `None` at the end.
    pub async fn next_chunk(
        &self,
        resp: &mut reqwest::Response,
        url: &str,
    ) -> Result<Option<bytes::Bytes>, RemoteError> {
        let chunk = resp.chunk().await.map_err(|e| self.classify(e, url))?;
        if let Some(c) = &chunk {
            self.counters
                .bytes_received
                .fetch_add(c.len() as u64, Ordering::Relaxed);
        }
        Ok(chunk)
    }

    async fn retry<T, F, Fut>(&self, op: F) -> Result<T, RemoteError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, RemoteError>>,
    {
        let mut attempt = 1;
        let mut refreshed = false;
        loop {
            let sent = std::time::Instant::now();
            match op().await {
                Ok(v) => return Ok(v),
                // A GitLab access token refused: refresh it at once and try
                // again (once; a second refusal is the answer).
                Err(RemoteError::Auth { status: 401, .. })
                    if !refreshed && self.gitlab_grant().is_some() =>
                {
                    refreshed = true;
                    if let Some(g) = self.gitlab_grant() {
                        g.after_401(sent).await.map_err(grant_error)?;
                    }
                }
                Err(e) if e.retryable() && attempt < self.max_attempts => {
                    let delay = Duration::from_millis(200 * 4u64.pow(attempt - 1));
                    tracing::warn!(attempt, error = %e, "request failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
