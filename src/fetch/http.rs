//! One HTTP client pool per daemon: every repository, LFS endpoint, host
//! API and GitHub App token request shares the clients made here, so
//! connections (and TLS sessions) to one host are reused across
//! repositories instead of each repository holding pools of its own.
//!
//! Clients differ only by their timeouts; credentials are never part of a
//! client: they are attached per request, and only for the origins a
//! repository trusts (`source::git::origin`). Redirects are capped, and
//! reqwest drops `Authorization` on a redirect to another host.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

/// What tells one pooled client from another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// The longest silence within a response (reqwest's read timeout).
    pub read_timeout: Duration,
    /// Whether redirects are followed (at most 5). Token endpoints are
    /// asked with `false`: their forms hold secrets.
    pub redirects: bool,
    /// A PEM file of certificate authorities trusted beside the system's
    /// (`ca_bundle`; checked when the config was read).
    pub ca_bundle: Option<std::path::PathBuf>,
}

/// The shared client for `opts` (made on first use).
pub fn client(opts: ClientOptions) -> Result<reqwest::Client, String> {
    // Read before the pool's lock is taken: no lock across I/O.
    let extra = match &opts.ca_bundle {
        None => Vec::new(),
        Some(p) => std::fs::read(p)
            .map_err(|e| format!("ca_bundle {}: {e}", p.display()))
            .and_then(|pem| {
                reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("ca_bundle {}: {e}", p.display()))
            })?,
    };
    static POOL: OnceLock<Mutex<HashMap<ClientOptions, reqwest::Client>>> = OnceLock::new();
    let pool = POOL.get_or_init(|| Mutex::new(HashMap::new()));
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = pool.get(&opts) {
        return Ok(c.clone());
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::USER_AGENT,
        HeaderValue::from_static(concat!("git/2.0 (repofs/", env!("CARGO_PKG_VERSION"), ")")),
    );
    let mut builder = reqwest::Client::builder();
    if !extra.is_empty() {
        // Beside the system's store, not instead of it.
        builder = builder.tls_certs_merge(extra);
    }
    let c = builder
        .default_headers(headers)
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.read_timeout)
        // Idle connections kept per server: bounded whatever the number
        // of repositories (and reloads), dropped after 30 s unused.
        .pool_max_idle_per_host(8)
        .pool_idle_timeout(Duration::from_secs(30))
        .redirect(if opts.redirects {
            reqwest::redirect::Policy::limited(5)
        } else {
            reqwest::redirect::Policy::none()
        })
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    pool.insert(opts.clone(), c.clone());
    Ok(c)
}
