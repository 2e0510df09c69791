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
/// What one client may cost the daemon: connections served at once (more
/// are answered 503 and closed at once, so 10,000 idle connections hold
/// at most this many sockets and tasks), the longest request head read,
/// and the time a connection may take from accept to the last byte of the
/// answer (a client that sends nothing, or trickles, is dropped).
#[derive(Debug, Clone, Copy)]
struct Limits {
    connections: usize,
    request: usize,
    timeout: Duration,
}

const LIMITS: Limits = Limits {
    connections: 16,
    request: 8192,
    timeout: Duration::from_secs(5),
};

/// The answer to a connection over [`Limits::connections`].
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n";

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

/// Serves `/metrics` on `listener` until the runtime stops, within
/// [`LIMITS`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    registry: Arc<Registry>,
) -> std::io::Result<()> {
    serve_within(listener, handle, registry, LIMITS).await
}

async fn serve_within(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    registry: Arc<Registry>,
    limits: Limits,
) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "metrics served at http://{addr}/metrics");
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    loop {
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Never waits: whatever does not fit in the socket buffer now
            // is not sent, and the connection is closed.
            let _ = conn.try_write(BUSY);
            tracing::debug!(
                "metrics listener: {} connections open already; refused one",
                limits.connections
            );
            continue;
        };
        let (handle, registry) = (handle.clone(), registry.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(
                limits.timeout,
                answer(conn, &handle, &registry, limits.request),
            )
            .await;
        });
    }
}

/// Answers one HTTP/1 request and closes the connection. A request head
/// longer than `max_request` bytes closes it unanswered.
async fn answer(
    mut conn: tokio::net::TcpStream,
    handle: &PrometheusHandle,
    registry: &Registry,
    max_request: usize,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() + n > max_request {
            return Ok(());
        }
        // Only the new bytes (and the three before them) can complete the
        // blank line that ends the head.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if head[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A metrics listener with `limits` on a loopback port: its address.
    async fn start(limits: Limits, dir: &std::path::Path) -> SocketAddr {
        let cache = Arc::new(Cache::open(dir, 1 << 20).expect("cache"));
        let registry = Arc::new(Registry::new(cache, None));
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_within(listener, handle, registry, limits));
        addr
    }

    /// What the server sends on `conn` until it closes it (empty when it
    /// resets the connection), or `None` if it keeps it open for `wait`.
    async fn until_closed(conn: &mut TcpStream, wait: Duration) -> Option<String> {
        let mut got = Vec::new();
        match tokio::time::timeout(wait, conn.read_to_end(&mut got)).await {
            Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
            Err(_) => None,
        }
    }

    async fn scrape(addr: SocketAddr) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        until_closed(&mut c, Duration::from_secs(5))
            .await
            .unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_cap_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            connections: 16,
            request: 8192,
            timeout: Duration::from_secs(30),
        };
        let addr = start(limits, dir.path()).await;
        assert!(scrape(addr).await.starts_with("HTTP/1.1 200 OK"));
        // Sixteen clients that connect and send nothing hold every slot...
        let mut idle = Vec::new();
        for _ in 0..16 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // ...so the next hundred are answered 503 and closed at once,
        // without waiting for the idle ones' 30 s.
        for i in 0..100 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let got = until_closed(&mut c, Duration::from_secs(2)).await;
            let got = got.unwrap_or_else(|| panic!("connection {i} was kept open"));
            assert!(got.is_empty() || got.starts_with("HTTP/1.1 503"), "{got}");
        }
        // The idle ones are still being waited for.
        assert_eq!(
            until_closed(&mut idle[0], Duration::from_millis(200)).await,
            None
        );
        // Once they go, scrapes are served again.
        drop(idle);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = scrape(addr).await;
            if got.starts_with("HTTP/1.1 200 OK") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{got}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_endless_header_or_a_silent_client_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            connections: 16,
            request: 8192,
            timeout: Duration::from_millis(500),
        };
        let addr = start(limits, dir.path()).await;
        // A head that never ends: closed once past 8 KiB, long before the
        // timeout (the write may fail once the server has reset it).
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut endless = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while endless.len() < 64 * 1024 {
            endless.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let started = tokio::time::Instant::now();
        let _ = c.write_all(&endless).await;
        let got = until_closed(&mut c, Duration::from_secs(5)).await;
        assert_eq!(got.as_deref(), Some(""), "an answer to an endless head");
        assert!(
            started.elapsed() < limits.timeout,
            "{:?}",
            started.elapsed()
        );
        // Exactly at the cap is still a request.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut head = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
        head.resize(8192 - 4, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        c.write_all(&head).await.unwrap();
        let got = until_closed(&mut c, Duration::from_secs(5)).await;
        assert!(got.is_some_and(|g| g.starts_with("HTTP/1.1 200 OK")));
        // A client that sends nothing, or half a head, is dropped after
        // the timeout.
        for part in [&b""[..], b"GET /metrics HTTP/1.1\r\n"] {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(part).await.unwrap();
            let got = until_closed(&mut c, Duration::from_secs(5)).await;
            assert_eq!(got.as_deref(), Some(""), "{part:?}");
        }
        assert!(scrape(addr).await.starts_with("HTTP/1.1 200 OK"));
    }
}
