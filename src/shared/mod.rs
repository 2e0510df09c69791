//! The fleet's shared cache tier: a bucket (or a prefix in one) that every
//! node reads on a local cache miss before asking the origin, and writes
//! what it fetched from the origin to, in the background.
//!
//! - Keys are content addresses (see README "Shared cache for fleets"):
//!   `git/blob/<id>`, `git/trees/<commit>`, `git/sizes/<tree>`,
//!   `lfs/<sha256>`, `s3/<sha256 of bucket, key, etag>`.
//! - Nothing read from it is trusted: each object is verified while it
//!   streams into the local cache ([`verify`]) and committed only if it
//!   matched; a bad one is counted, logged and fetched from the origin.
//! - It may fail in any way: every request has its own short timeout, and
//!   after a failure the tier is left alone for a minute (one log line),
//!   so a tier that is down or hangs costs one timeout a minute, never an
//!   error to a reader.
//! - Uploads run as tasks, at most [`UPLOADS`] at once and [`QUEUE`]
//!   waiting; a read never waits for one.

pub mod verify;

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::Cache;
use crate::config::{Config, RepoConfig, SharedCacheConfig};
use crate::source::lock;
pub use verify::Expect;

/// Uploads running at once, and waiting at most.
const UPLOADS: usize = 4;
const QUEUE: u64 = 1000;
/// Largest object uploaded (one PutObject).
const MAX_UPLOAD: u64 = 5 << 30;
/// How long the tier is left alone after a failure.
const BACK_OFF: Duration = Duration::from_secs(60);

/// Counters, for `repofs status` and metrics.
#[derive(Default)]
pub struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub bytes_down: AtomicU64,
    pub uploads: AtomicU64,
    pub bytes_up: AtomicU64,
    pub pending: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
}

/// The shared tier of one daemon.
pub struct Shared {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    timeout: Duration,
    rt: tokio::runtime::Handle,
    down_until: Mutex<Option<Instant>>,
    /// Uploads back off on their own: a node that may only read (or has
    /// a slow uplink) still reads from the tier.
    uploads_down_until: Mutex<Option<Instant>>,
    last_error: Mutex<Option<(SystemTime, String)>>,
    uploading: Mutex<HashSet<String>>,
    permits: Arc<tokio::sync::Semaphore>,
    pub counters: Counters,
}

/// The S3 side of `[shared_cache]`, as the repository entry the S3 client
/// code knows how to connect with.
fn as_repo(cfg: &SharedCacheConfig) -> RepoConfig {
    RepoConfig {
        name: "shared_cache".into(),
        provider: crate::config::Provider::S3,
        url: String::new(),
        reference: None,
        token: None,
        username: None,
        description: String::new(),
        mount_point: Default::default(),
        refresh: None,
        github_app: None,
        gitlab_app: None,
        s3: Some(cfg.s3.clone()),
        overlay: None,
        lfs_url: None,
        api_url: None,
        checkout_filters: false,
        ca_bundle: None,
    }
}

impl Shared {
    /// Connects (credentials, and the bucket's region when not given);
    /// bounded by the tier's own timeout.
    pub async fn connect(
        cfg: &SharedCacheConfig,
        config: &Config,
        rt: tokio::runtime::Handle,
    ) -> Result<Arc<Shared>, String> {
        let mut c = config.clone();
        c.connect_timeout = cfg.timeout;
        c.request_timeout = cfg.timeout;
        c.max_attempts = 1;
        let (client, _) = tokio::time::timeout(
            cfg.timeout * 3,
            crate::source::s3::client_for(&as_repo(cfg), &c),
        )
        .await
        .map_err(|_| format!("no answer in {}s", cfg.timeout.as_secs() * 3))??;
        Ok(Arc::new(Shared {
            client,
            bucket: cfg.s3.bucket.clone(),
            prefix: cfg.s3.prefix.clone(),
            timeout: cfg.timeout,
            rt,
            down_until: Mutex::new(None),
            uploads_down_until: Mutex::new(None),
            last_error: Mutex::new(None),
            uploading: Mutex::new(HashSet::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(UPLOADS)),
            counters: Counters::default(),
        }))
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Whether the tier is worth asking now.
    fn available(&self) -> bool {
        lock(&self.down_until).is_none_or(|t| Instant::now() >= t)
    }

    /// A failure of the tier itself: logged once, then left alone a minute.
    fn failed(&self, what: &str, why: &str) {
        self.back_off(&self.down_until, what, why, "using the origins");
    }

    /// An upload failed: uploads (only) pause for a minute.
    fn upload_failed(&self, what: &str, why: &str) {
        self.back_off(&self.uploads_down_until, what, why, "not uploading");
    }

    fn back_off(&self, until: &Mutex<Option<Instant>>, what: &str, why: &str, then: &str) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let msg = format!("{what}: {why}");
        *lock(&self.last_error) = Some((SystemTime::now(), msg.clone()));
        let mut down = lock(until);
        if down.is_none_or(|t| Instant::now() >= t) {
            *down = Some(Instant::now() + BACK_OFF);
            tracing::warn!(
                "shared cache {}: {msg}; {then} for {}s",
                self.url(),
                BACK_OFF.as_secs()
            );
        }
    }

    /// Fetches `key` into the local cache as `cache_key` if the tier has it
    /// and it passes `expect`; `None` otherwise (fetch from the origin).
    /// Nothing is served from it before the whole object is verified.
    pub async fn fetch(
        &self,
        key: &str,
        expect: Expect,
        cache: &Cache,
        cache_key: &str,
    ) -> Option<std::fs::File> {
        self.fetch_with(key, expect, cache, cache_key, &|_| {})
            .await
    }

    /// [`Shared::fetch`], calling `beat` with the bytes received so far as
    /// they arrive (to keep waiters from giving up on a large object).
    pub async fn fetch_with(
        &self,
        key: &str,
        expect: Expect,
        cache: &Cache,
        cache_key: &str,
        beat: &(dyn Fn(u64) + Sync),
    ) -> Option<std::fs::File> {
        if !self.available() {
            return None;
        }
        let full = self.full_key(key);
        let sent = tokio::time::timeout(
            self.timeout,
            self.client
                .get_object()
                .bucket(&self.bucket)
                .key(&full)
                .send(),
        )
        .await;
        let out = match sent {
            Err(_) => {
                self.failed(
                    &format!("GET {full}"),
                    &format!("no answer in {}s", self.timeout.as_secs_f32()),
                );
                return None;
            }
            Ok(Err(e)) => {
                use aws_sdk_s3::error::ProvideErrorMetadata;
                let status = e.raw_response().map(|r| r.status().as_u16());
                if e.code() == Some("NoSuchKey") || status == Some(404) {
                    self.counters.misses.fetch_add(1, Ordering::Relaxed);
                } else {
                    let why = crate::source::s3::describe(&e, &self.bucket, "GetObject");
                    self.failed(&format!("GET {full}"), &why.to_string());
                }
                return None;
            }
            Ok(Ok(out)) => out,
        };
        let len = out.content_length().and_then(|l| u64::try_from(l).ok())?;
        // Nothing larger than one object may be, or than the cache holds.
        if len > MAX_UPLOAD || len > cache.stats().cap {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "shared cache {}: {full} failed verification (it says it is {len} bytes, more than an object here can be)",
                self.url()
            );
            return None;
        }
        match self
            .receive(out.body, len, expect, cache, cache_key, beat)
            .await
        {
            Ok(file) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_down.fetch_add(len, Ordering::Relaxed);
                Some(file)
            }
            Err(Failure::Bad(why)) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "shared cache {}: {full} failed verification ({why}); fetching it from the origin",
                    self.url()
                );
                None
            }
            Err(Failure::Tier(why)) => {
                self.failed(&format!("GET {full}"), &why);
                None
            }
            Err(Failure::Local(why)) => {
                tracing::debug!("shared cache: cannot store {key} locally: {why}");
                None
            }
        }
    }

    /// Streams a body into the cache, checking it on the way.
    async fn receive(
        &self,
        mut body: aws_sdk_s3::primitives::ByteStream,
        len: u64,
        expect: Expect,
        cache: &Cache,
        cache_key: &str,
        beat: &(dyn Fn(u64) + Sync),
    ) -> Result<std::fs::File, Failure> {
        let mut check = verify::Checker::new(expect, len).map_err(Failure::Bad)?;
        let mut writer = tokio::task::block_in_place(|| cache.writer(cache_key))
            .map_err(|e| Failure::Local(e.to_string()))?;
        // A tier that trickles is as bad as one that stalls, and the origin
        // is the fallback: the tier must bring 1 MB/s over each window.
        let mut speed = crate::fetch::LowSpeed::new(crate::fetch::speed::Floor {
            limit: 1_000_000,
            time: self.timeout,
        });
        loop {
            let slow = |s: crate::fetch::speed::TooSlow| Failure::Tier(s.to_string());
            let chunk = match speed.wait(body.next()).await.map_err(slow)? {
                None => break,
                Some(Err(e)) => return Err(Failure::Tier(e.to_string())),
                Some(Ok(c)) => c,
            };
            speed.record(chunk.len() as u64).map_err(slow)?;
            check.update(&chunk).map_err(Failure::Bad)?;
            tokio::task::block_in_place(|| writer.write_all(&chunk))
                .map_err(|e| Failure::Local(e.to_string()))?;
            beat(writer.written());
        }
        check.finish().map_err(Failure::Bad)?;
        tokio::task::block_in_place(|| writer.commit_as(cache_key))
            .map_err(|e| Failure::Local(e.to_string()))
    }

    /// Uploads the local cache entry `cache_key` as `key`, in the
    /// background. The entry is opened only when its upload starts, so a
    /// full queue holds no descriptors; one evicted meanwhile is skipped.
    pub fn upload(self: &Arc<Self>, key: &str, cache: &Arc<Cache>, cache_key: &str) {
        if !self.available()
            || lock(&self.uploads_down_until).is_some_and(|t| Instant::now() < t)
            || self.counters.pending.load(Ordering::Relaxed) >= QUEUE
            || !lock(&self.uploading).insert(key.to_string())
        {
            return;
        }
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        let (me, key, cache, cache_key) = (
            self.clone(),
            key.to_string(),
            cache.clone(),
            cache_key.to_string(),
        );
        self.rt.spawn(async move {
            if let Ok(_permit) = me.permits.clone().acquire_owned().await {
                let file = tokio::task::block_in_place(|| cache.get(&cache_key));
                let len = file
                    .as_ref()
                    .and_then(|f| f.metadata().ok())
                    .map(|m| m.len());
                if let (Some(file), Some(len)) = (file, len) {
                    if len <= MAX_UPLOAD {
                        me.put(&key, file, len).await;
                    }
                }
            }
            lock(&me.uploading).remove(&key);
            me.counters.pending.fetch_sub(1, Ordering::Relaxed);
        });
    }

    async fn put(&self, key: &str, file: std::fs::File, len: u64) {
        if !self.available() {
            return;
        }
        let full = self.full_key(key);
        let body = match aws_sdk_s3::primitives::ByteStream::read_from()
            .file(tokio::fs::File::from_std(file))
            .length(aws_sdk_s3::primitives::Length::Exact(len))
            .build()
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!("shared cache: cannot read {key} for upload: {e}");
                return;
            }
        };
        // The SDK's read timeout bounds each stall; this bounds the whole
        // upload at a slow but steady 1 MB/s.
        let limit = self.timeout * 3 + Duration::from_secs(len / 1_000_000);
        let sent = tokio::time::timeout(
            limit,
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .content_length(len as i64)
                .body(body)
                .send(),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {
                self.counters.uploads.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_up.fetch_add(len, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                let why = crate::source::s3::describe(&e, &self.bucket, "PutObject");
                self.upload_failed(&format!("PUT {full}"), &why.to_string());
            }
            Err(_) => self.upload_failed(&format!("PUT {full}"), "the upload timed out"),
        }
    }

    /// The state of the tier, for `repofs status`.
    pub fn status(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        let last = lock(&self.last_error)
            .clone()
            .map(|(when, what)| crate::status::error_json(when, what));
        serde_json::json!({
            "url": self.url(),
            "hits": n(&c.hits),
            "misses": n(&c.misses),
            "bytes_down": n(&c.bytes_down),
            "uploads": n(&c.uploads),
            "bytes_up": n(&c.bytes_up),
            "pending": n(&c.pending),
            "rejected": n(&c.rejected),
            "errors": n(&c.errors),
            "last_error": last,
        })
    }

    /// `repofs check`: can this node read and write the tier? Returns
    /// whether it can, and what to tell the user.
    pub async fn check(&self) -> (bool, String) {
        let probe = self.full_key(&format!(
            "check/{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let t = self.timeout * 2;
        let put = tokio::time::timeout(
            t,
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&probe)
                .body(b"repofs check\n".to_vec().into())
                .send(),
        )
        .await;
        let wrote = match put {
            Err(_) => return (false, format!("no answer in {}s", t.as_secs())),
            Ok(Err(e)) => {
                Err(crate::source::s3::describe(&e, &self.bucket, "PutObject").to_string())
            }
            Ok(Ok(_)) => Ok(()),
        };
        let get = tokio::time::timeout(
            t,
            self.client
                .get_object()
                .bucket(&self.bucket)
                .key(&probe)
                .send(),
        )
        .await;
        let read = match get {
            Err(_) => Err(format!("no answer in {}s", t.as_secs())),
            Ok(Err(e)) => {
                use aws_sdk_s3::error::ProvideErrorMetadata;
                if wrote.is_err() && e.code() == Some("NoSuchKey") {
                    Ok(()) // nothing to read back, but reading was allowed
                } else {
                    Err(crate::source::s3::describe(&e, &self.bucket, "GetObject").to_string())
                }
            }
            Ok(Ok(_)) => Ok(()),
        };
        if wrote.is_ok() {
            let _ = tokio::time::timeout(
                t,
                self.client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&probe)
                    .send(),
            )
            .await;
        }
        match (read, wrote) {
            (Ok(()), Ok(())) => (true, "can read and write".into()),
            (r, w) => {
                let mut why = Vec::new();
                if let Err(e) = r {
                    why.push(format!("cannot read: {e}"));
                }
                if let Err(e) = w {
                    why.push(format!("cannot write: {e}"));
                }
                (
                    false,
                    format!(
                        "{}; reads fall back to the origins. The nodes need this policy on the bucket:\n{}",
                        why.join("; "),
                        policy(&self.bucket, &self.prefix)
                    ),
                )
            }
        }
    }
}

/// Why a fetch from the tier did not give a verified object.
enum Failure {
    /// The object is not what its key says.
    Bad(String),
    /// The tier failed (timeout, connection, denied).
    Tier(String),
    /// The local cache could not take it.
    Local(String),
}

/// The least an IAM policy must allow for the shared tier (ListBucket so
/// that a missing object is a 404, not a 403).
pub fn policy(bucket: &str, prefix: &str) -> String {
    format!(
        r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": "arn:aws:s3:::{bucket}/{prefix}*"}}, {{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::{bucket}", "Condition": {{"StringLike": {{"s3:prefix": "{prefix}*"}}}}}}]}}"#
    )
}
