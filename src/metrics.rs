//! Prometheus metrics on `metrics_listen`: `GET /metrics` answers in the
//! text exposition format, rendered by `metrics-exporter-prometheus`.
//!
//! The FUSE adapter records its operations (counts, latency histograms,
//! errors by errno, bytes served) as they happen. What the sources and the
//! cache count themselves (origin requests and bytes, cache hits and
//! misses, fetches in flight, cache use) is sampled at each scrape, so the
//! fetch path pays nothing for it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cache::Cache;
use crate::source::{Activity, Source, lock};

/// Latency buckets, in seconds: from a page-cache hit to a slow fetch.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
/// Longest request head accepted, and how long a client may take to send it.
const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The sources being served, for sampling at scrape time.
pub struct Registry {
    cache: Arc<Cache>,
    sources: Mutex<BTreeMap<String, Arc<dyn Source>>>,
    /// What each repository's counters were last set from, and from which
    /// source: a remounted repository's new source starts again from zero,
    /// and Prometheus counters only grow, so only the growth is added.
    last: Mutex<BTreeMap<String, (usize, Activity)>>,
    /// The fleet's shared tier (created once, so its counters never reset).
    shared: Option<Arc<crate::shared::Shared>>,
}

impl Registry {
    pub fn new(cache: Arc<Cache>, shared: Option<Arc<crate::shared::Shared>>) -> Registry {
        Registry {
            cache,
            shared,
            sources: Mutex::new(BTreeMap::new()),
            last: Mutex::new(BTreeMap::new()),
        }
    }

    /// Replaces the set of mounted sources (at start and after a reload).
    pub fn set_sources(&self, sources: BTreeMap<String, Arc<dyn Source>>) {
        *lock(&self.sources) = sources;
    }

    /// Brings the sampled metrics up to date.
    fn sample(&self) {
        let sources = lock(&self.sources).clone();
        let mut last = lock(&self.last);
        for (name, source) in &sources {
            let now = source.activity();
            let id = Arc::as_ptr(source) as *const () as usize;
            let before = match last.get(name) {
                Some((was, a)) if *was == id => *a,
                _ => Activity::default(),
            };
            let grown = |now: u64, before: u64| now.saturating_sub(before);
            let label = ("repository", name.clone());
            let add = |metric: &'static str, n: u64| {
                metrics::counter!(metric, &[label.clone()]).increment(n);
            };
            add(
                "repofs_origin_requests_total",
                grown(now.requests, before.requests),
            );
            add("repofs_origin_bytes_total", grown(now.bytes, before.bytes));
            add(
                "repofs_cache_hits_total",
                grown(now.cache_hits, before.cache_hits),
            );
            add(
                "repofs_cache_misses_total",
                grown(now.cache_misses, before.cache_misses),
            );
            metrics::gauge!("repofs_fetches_in_flight", &[label.clone()]).set(now.in_flight as f64);
            last.insert(name.clone(), (id, now));
        }
        if let Some(s) = &self.shared {
            let c = &s.counters;
            for (name, v) in [
                ("repofs_shared_cache_hits_total", &c.hits),
                ("repofs_shared_cache_misses_total", &c.misses),
                ("repofs_shared_cache_downloaded_bytes_total", &c.bytes_down),
                ("repofs_shared_cache_uploads_total", &c.uploads),
                ("repofs_shared_cache_uploaded_bytes_total", &c.bytes_up),
                ("repofs_shared_cache_rejected_total", &c.rejected),
                ("repofs_shared_cache_errors_total", &c.errors),
            ] {
                metrics::counter!(name).absolute(v.load(std::sync::atomic::Ordering::Relaxed));
            }
            metrics::gauge!("repofs_shared_cache_pending_uploads")
                .set(c.pending.load(std::sync::atomic::Ordering::Relaxed) as f64);
        }
        let stats = self.cache.stats();
        metrics::gauge!("repofs_cache_bytes").set(stats.bytes as f64);
        metrics::gauge!("repofs_cache_capacity_bytes").set(stats.cap as f64);
        metrics::gauge!("repofs_cache_entries").set(stats.entries as f64);
    }
}

/// Installs the process-wide recorder. Must run before any mount is
/// created, so the mounts' metric handles are live.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .map_err(|e| anyhow::anyhow!("metrics: {e}"))?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "repofs_origin_requests_total",
        "Requests sent to the origin (git host, LFS server, bucket)."
    );
    describe_counter!(
        "repofs_origin_bytes_total",
        Unit::Bytes,
        "Bytes received from the origin."
    );
    describe_counter!(
        "repofs_cache_hits_total",
        "File opens served from the local cache."
    );
    describe_counter!(
        "repofs_cache_misses_total",
        "File opens that fetched from the origin."
    );
    describe_counter!(
        "repofs_served_bytes_total",
        Unit::Bytes,
        "Bytes returned to read calls on the mount."
    );
    describe_counter!(
        "repofs_passthrough_opens_total",
        "File opens answered with kernel passthrough: their reads go to the cache file without the daemon."
    );
    describe_gauge!(
        "repofs_fetches_in_flight",
        "Fetches from the origin running now."
    );
    describe_counter!(
        "repofs_fuse_operations_total",
        "Filesystem operations answered, by operation."
    );
    describe_histogram!(
        "repofs_fuse_operation_seconds",
        Unit::Seconds,
        "Time to answer a filesystem operation."
    );
    describe_counter!(
        "repofs_fuse_errors_total",
        "Filesystem operations answered with an error, by errno."
    );
    describe_gauge!(
        "repofs_cache_bytes",
        Unit::Bytes,
        "Bytes in the local cache."
    );
    describe_gauge!(
        "repofs_cache_capacity_bytes",
        Unit::Bytes,
        "The local cache's cap (cache_size)."
    );
    describe_gauge!("repofs_cache_entries", "Entries in the local cache.");
}

/// Serves `/metrics` on `listener` until the runtime stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    registry: Arc<Registry>,
) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "metrics served at http://{addr}/metrics");
    loop {
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (handle, registry) = (handle.clone(), registry.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(conn, &handle, &registry)).await;
        });
    }
}

/// Answers one HTTP/1 request and closes the connection.
async fn answer(
    mut conn: tokio::net::TcpStream,
    handle: &PrometheusHandle,
    registry: &Registry,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (status, ctype, body) = match (method, target) {
        (b"GET", b"/metrics") => {
            registry.sample();
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                handle.render(),
            )
        }
        (b"GET", _) => ("404 Not Found", "text/plain", "see /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await
}
