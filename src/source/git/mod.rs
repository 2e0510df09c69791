//! A git repository as a [`Source`]: the ref is resolved with `ls-refs`, the
//! commit and all its trees come in one `fetch` (`deepen 1`,
//! `filter blob:none`), and blobs are fetched by id, in batches, only when a
//! file is opened (or, on servers without `object-info`, when its directory
//! is first listed, to learn exact sizes).
//!
//! Everything fetched goes to the content cache: blobs as `git-<oid>`, the
//! commit's trees as `trees-<commit>`, a directory's blob sizes as
//! `sizes-<tree>`. The last resolved commit is remembered in
//! `<cache_dir>/state/`, so a restart with the server down still serves what
//! was read before.

pub mod lfs;
pub mod pack;
pub mod protocol;
pub mod transport;
pub mod url;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gix_hash::ObjectId;
use gix_object::tree::EntryKind;

use crate::cache::Cache;
use crate::config::{Config, RepoConfig};
use crate::source::{Entry, FileReader, Node, NodeKind, Source, SourceError};
use protocol::{Capabilities, FetchResponseParser};
use transport::{RemoteError, Transport};

/// How many object ids go into one `fetch` or `object-info` request.
const BATCH: usize = 1000;
/// Listing a directory prefetches its files up to this size...
const PREFETCH_FILE_MAX: u64 = 256 * 1024;
/// ...and at most this many bytes per directory, in one request.
const PREFETCH_DIR_MAX: u64 = 16 * 1024 * 1024;
/// How long a failed ref resolution is remembered before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Upper bound for one blocking filesystem call, whatever the server does.
const CALL_LIMIT: Duration = Duration::from_secs(600);

/// The resolved commit and its trees.
struct Snapshot {
    commit: ObjectId,
    root_tree: ObjectId,
    mtime: SystemTime,
    trees: HashMap<ObjectId, Vec<u8>>,
    lfs: Arc<lfs::Lfs>,
}

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

    pub async fn command(&self, command: &str, args: Vec<String>) -> Result<Vec<u8>, RemoteError> {
        let caps = self.capabilities().await?;
        let body = protocol::command_request(command, &caps, &args);
        self.transport
            .upload_pack(body, |resp, url| async move {
                self.transport.read_all(resp, &url).await
            })
            .await
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

/// A mounted git repository.
pub struct GitSource {
    /// A handle on itself, for background work (prefetch).
    me: std::sync::Weak<GitSource>,
    repo: RepoConfig,
    remote: Remote,
    cache: Arc<Cache>,
    rt: tokio::runtime::Handle,
    state_dir: PathBuf,
    scratch_dir: PathBuf,
    snapshot: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
    last_failure: Mutex<Option<(Instant, SourceError)>>,
    dirs: Mutex<HashMap<ObjectId, Arc<Vec<Entry>>>>,
    inflight: Mutex<HashMap<ObjectId, Arc<tokio::sync::Mutex<()>>>>,
    verified: Mutex<HashSet<ObjectId>>,
    filter_warned: AtomicBool,
    scratch_counter: AtomicU64,
    prefetched: Mutex<HashSet<ObjectId>>,
    /// How long a reader waits on a download that makes no progress.
    stall_limit: Duration,
    /// Bumped each time a followed branch moves.
    generation: AtomicU64,
    stopped: AtomicBool,
}

/// Marker key for submodule directories (always empty).
const SUBMODULE_KEY: &[u8] = b"submodule";

impl GitSource {
    pub fn new(
        repo: &RepoConfig,
        config: &Config,
        cache: Arc<Cache>,
        rt: tokio::runtime::Handle,
    ) -> Result<Arc<GitSource>, String> {
        let remote = Remote::new(repo, config)?;
        let state_dir = config.cache_dir.join("state");
        let scratch_dir = config.cache_dir.join("scratch");
        for d in [&state_dir, &scratch_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        Ok(Arc::new_cyclic(|me| GitSource {
            me: me.clone(),
            repo: repo.clone(),
            remote,
            cache,
            rt,
            state_dir,
            scratch_dir,
            snapshot: tokio::sync::Mutex::new(None),
            last_failure: Mutex::new(None),
            dirs: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashSet::new()),
            filter_warned: AtomicBool::new(false),
            scratch_counter: AtomicU64::new(0),
            prefetched: Mutex::new(HashSet::new()),
            stall_limit: config.request_timeout * config.max_attempts + Duration::from_secs(5),
            generation: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }))
    }

    /// Requests made and bytes received so far.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.remote
                .transport
                .counters
                .requests
                .load(Ordering::Relaxed),
            self.remote
                .transport
                .counters
                .bytes_received
                .load(Ordering::Relaxed),
        )
    }

    pub fn clone_url(&self) -> &str {
        &self.remote.transport.clone_url
    }

    fn state_path(&self) -> PathBuf {
        self.state_dir.join(format!("{}.ref", self.repo.name))
    }

    fn state_line(&self) -> String {
        format!(
            "{} {}",
            self.remote.transport.clone_url,
            self.repo.reference.as_deref().unwrap_or("HEAD")
        )
    }

    fn remember_commit(&self, commit: ObjectId) {
        let text = format!("{}\n{commit}\n", self.state_line());
        let tmp = self.state_path().with_extension("tmp");
        if std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, self.state_path()))
            .is_err()
        {
            tracing::warn!(repo = %self.repo.name, "cannot record the resolved commit in {}", self.state_dir.display());
        }
    }

    fn remembered_commit(&self) -> Option<ObjectId> {
        let text = std::fs::read_to_string(self.state_path()).ok()?;
        let mut lines = text.lines();
        (lines.next()? == self.state_line()).then_some(())?;
        protocol::parse_oid(lines.next()?).ok()
    }

    /// The snapshot, resolving and fetching it on first use.
    async fn snapshot(&self) -> Result<Arc<Snapshot>, SourceError> {
        let mut guard = self.snapshot.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        if let Some((when, err)) = lock(&self.last_failure).clone() {
            if when.elapsed() < RETRY_AFTER {
                return Err(err);
            }
        }
        match self.load_snapshot().await {
            Ok(s) => {
                let s = Arc::new(s);
                *guard = Some(s.clone());
                *lock(&self.last_failure) = None;
                Ok(s)
            }
            Err(e) => {
                tracing::error!(repo = %self.repo.name, "cannot load the repository: {e}");
                *lock(&self.last_failure) = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Follows the branch: every `refresh`, resolves the ref and, when it
    /// moved, loads the new commit and swaps it in atomically. Files already
    /// open keep reading the old contents. Ends when the source is shut down.
    pub async fn follow(self: Arc<Self>) {
        let Some(every) = self.repo.refresh else {
            return;
        };
        loop {
            tokio::time::sleep(every).await;
            if self.stopped.load(Ordering::Relaxed) {
                return;
            }
            let Some(current) = self.current_commit() else {
                continue; // not loaded yet: the first access loads it
            };
            let commit = match self.remote.resolve_ref().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(repo = %self.repo.name, "refresh: cannot resolve the ref: {e}");
                    continue;
                }
            };
            if commit == current {
                continue;
            }
            match self.snapshot_for(commit).await {
                Ok(s) => {
                    self.remember_commit(commit);
                    *self.snapshot.lock().await = Some(Arc::new(s));
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(repo = %self.repo.name, from = %current, to = %commit, "the ref moved: now serving the new commit");
                }
                Err(e) => {
                    tracing::warn!(repo = %self.repo.name, %commit, "refresh: cannot load the new commit: {e}")
                }
            }
        }
    }

    /// Stops background work (refresh) for a repository being unmounted.
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// The commit being served, once loaded.
    pub fn current_commit(&self) -> Option<ObjectId> {
        self.snapshot
            .try_lock()
            .ok()
            .and_then(|g| g.as_ref().map(|s| s.commit))
    }

    /// The LFS endpoint of the mounted commit (loads it if needed).
    pub async fn lfs_endpoint(&self) -> Result<String, SourceError> {
        self.snapshot().await.map(|s| s.lfs.endpoint.clone())
    }

    /// Starts loading in the background (so the first `ls` is fast and
    /// problems are logged at start-up).
    pub async fn preload(&self) -> Result<ObjectId, SourceError> {
        self.snapshot().await.map(|s| s.commit)
    }

    async fn load_snapshot(&self) -> Result<Snapshot, SourceError> {
        let commit = self.resolve_or_remembered().await?;
        self.snapshot_for(commit).await
    }

    async fn resolve_or_remembered(&self) -> Result<ObjectId, SourceError> {
        Ok(match self.remote.resolve_ref().await {
            Ok(c) => {
                self.remember_commit(c);
                c
            }
            Err(e) if e.retryable() => match self.remembered_commit() {
                Some(c) if self.cache.contains(&trees_key(&c)) => {
                    tracing::warn!(repo = %self.repo.name, "server unreachable ({e}); serving the last known commit {c} from the cache");
                    c
                }
                _ => return Err(e.into_source_error()),
            },
            Err(e) => return Err(e.into_source_error()),
        })
    }

    /// Loads a commit's trees (cache first) and its LFS endpoint.
    async fn snapshot_for(&self, commit: ObjectId) -> Result<Snapshot, SourceError> {
        let trees = match self.cached_trees(&commit) {
            Some(t) => t,
            None => self.fetch_trees(commit).await?,
        };
        let commit_data = trees.get(&commit).ok_or_else(|| {
            SourceError::Corrupt(format!("the server did not send commit {commit}"))
        })?;
        let (root_tree, mtime) = parse_commit(commit_data)
            .ok_or_else(|| SourceError::Corrupt(format!("commit {commit} cannot be parsed")))?;
        if !trees.contains_key(&root_tree) {
            return Err(SourceError::Corrupt(format!(
                "the server did not send the root tree {root_tree} of commit {commit}"
            )));
        }
        let lfs = Arc::new(lfs::Lfs::new(
            self.find_lfs_endpoint(&trees, &root_tree).await,
            self.repo.provider,
            &self.repo.name,
            self.stall_limit,
        ));
        tracing::info!(repo = %self.repo.name, %commit, trees = trees.len() - 1, lfs = %lfs.endpoint, "repository ready");
        Ok(Snapshot {
            commit,
            root_tree,
            mtime,
            trees,
            lfs,
        })
    }

    /// The LFS endpoint, honouring a committed `.lfsconfig` in the root tree.
    async fn find_lfs_endpoint(
        &self,
        trees: &HashMap<ObjectId, Vec<u8>>,
        root: &ObjectId,
    ) -> String {
        let clone_url = &self.remote.transport.clone_url;
        let lfsconfig = trees.get(root).and_then(|data| {
            gix_object::TreeRefIter::from_bytes(data, gix_hash::Kind::Sha1)
                .filter_map(Result::ok)
                .find(|e| e.filename == ".lfsconfig" && e.mode.is_blob())
                .map(|e| e.oid.to_owned())
        });
        let Some(oid) = lfsconfig else {
            return lfs::endpoint(clone_url, None);
        };
        match self.blob_file(oid).await {
            Ok(mut f) => {
                let mut data = Vec::new();
                let _ = f.read_to_end(&mut data);
                lfs::endpoint(clone_url, Some(&data))
            }
            Err(e) => {
                tracing::warn!(repo = %self.repo.name, "cannot read .lfsconfig ({e}); using the default LFS endpoint");
                lfs::endpoint(clone_url, None)
            }
        }
    }

    /// Reads `trees-<commit>`: records of (20-byte id, u32 length, data).
    fn cached_trees(&self, commit: &ObjectId) -> Option<HashMap<ObjectId, Vec<u8>>> {
        let key = trees_key(commit);
        let mut data = Vec::new();
        self.cache.get(&key)?.read_to_end(&mut data).ok()?;
        let mut map = HashMap::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            if rest.len() < 24 {
                break;
            }
            let oid = ObjectId::try_from(&rest[..20]).ok()?;
            let len = u32::from_be_bytes(rest[20..24].try_into().ok()?) as usize;
            let body = rest.get(24..24 + len)?;
            let kind = if &oid == commit {
                gix_object::Kind::Commit
            } else {
                gix_object::Kind::Tree
            };
            // Verify: a corrupt cache file is dropped and fetched again.
            match gix_object::compute_hash(gix_hash::Kind::Sha1, kind, body) {
                Ok(h) if h == oid => {}
                _ => {
                    tracing::warn!(repo = %self.repo.name, "cached trees of {commit} are corrupt; fetching them again");
                    self.cache.remove(&key);
                    return None;
                }
            }
            map.insert(oid, body.to_vec());
            rest = &rest[24 + len..];
        }
        map.contains_key(commit).then_some(map)
    }

    async fn fetch_trees(
        &self,
        commit: ObjectId,
    ) -> Result<HashMap<ObjectId, Vec<u8>>, SourceError> {
        let caps = self
            .remote
            .capabilities()
            .await
            .map_err(RemoteError::into_source_error)?;
        let filter = caps.supports_filter();
        if !filter && !self.filter_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(repo = %self.repo.name, "the server does not support `filter`: falling back to a shallow fetch that downloads every file of the commit once");
        }
        let mut trees = HashMap::new();
        let cache = &self.cache;
        let mut verified = Vec::new();
        self.fetch_pack(
            &[commit],
            caps.supports_shallow(),
            filter,
            &mut |oid, kind, data| {
                match kind {
                    gix_object::Kind::Tree | gix_object::Kind::Commit => {
                        trees.insert(oid, data.to_vec());
                    }
                    gix_object::Kind::Blob => {
                        cache
                            .insert(&blob_key(&oid), data)
                            .map_err(|e| pack::PackError(e.to_string()))?;
                        verified.push(oid);
                    }
                    gix_object::Kind::Tag => {}
                }
                Ok(())
            },
        )
        .await?;
        lock(&self.verified).extend(verified);
        let mut out = Vec::new();
        for (oid, data) in &trees {
            out.extend_from_slice(oid.as_bytes());
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
        }
        if let Err(e) = self.cache.insert(&trees_key(&commit), &out) {
            tracing::warn!(repo = %self.repo.name, "cannot cache the trees: {e}");
        }
        Ok(trees)
    }

    /// One `fetch` of `wants`, the pack streamed to a scratch file, then decoded.
    async fn fetch_pack(
        &self,
        wants: &[ObjectId],
        deepen: bool,
        filter: bool,
        each: &mut (
                 dyn FnMut(ObjectId, gix_object::Kind, &[u8]) -> Result<(), pack::PackError> + Send
             ),
    ) -> Result<usize, SourceError> {
        let caps = self
            .remote
            .capabilities()
            .await
            .map_err(RemoteError::into_source_error)?;
        let body =
            protocol::command_request("fetch", &caps, &protocol::fetch_args(wants, deepen, filter));
        let n = self.scratch_counter.fetch_add(1, Ordering::Relaxed);
        let pack_path = self.scratch_dir.join(format!(
            "{}-{}-{n}.pack",
            std::process::id(),
            self.repo.name
        ));
        let result = async {
            self.remote
                .transport
                .upload_pack(body, |mut resp, url| {
                    let pack_path = pack_path.clone();
                    async move {
                        let mut file =
                            std::io::BufWriter::new(std::fs::File::create(&pack_path).map_err(
                                |e| RemoteError::Local(format!("{}: {e}", pack_path.display())),
                            )?);
                        let mut parser = FetchResponseParser::new();
                        let mut write_err = None;
                        while let Some(chunk) =
                            self.remote.transport.next_chunk(&mut resp, &url).await?
                        {
                            parser
                                .feed(&chunk, &mut |d| {
                                    if let Err(e) = file.write_all(d) {
                                        write_err = Some(e.to_string());
                                    }
                                    Ok(())
                                })
                                .map_err(|e| RemoteError::Protocol(format!("{url}: {e}")))?;
                        }
                        if let Some(e) = write_err {
                            return Err(RemoteError::Local(e));
                        }
                        parser
                            .finish()
                            .map_err(|e| RemoteError::Protocol(format!("{url}: {e}")))?;
                        file.flush()
                            .map_err(|e| RemoteError::Local(e.to_string()))?;
                        Ok(())
                    }
                })
                .await
                .map_err(RemoteError::into_source_error)?;
            pack::for_each_object(&pack_path, &self.scratch_dir, each)
                .map_err(|e| SourceError::Corrupt(e.to_string()))
        }
        .await;
        let _ = std::fs::remove_file(&pack_path);
        result
    }

    /// Makes sure the blobs are in the cache, fetching the missing ones in batches.
    async fn ensure_blobs(&self, oids: &[ObjectId]) -> Result<(), SourceError> {
        let missing: Vec<ObjectId> = oids
            .iter()
            .filter(|o| !self.cache.contains(&blob_key(o)))
            .copied()
            .collect();
        for batch in missing.chunks(BATCH) {
            let mut got = Vec::new();
            let cache = &self.cache;
            self.fetch_pack(batch, false, false, &mut |oid, kind, data| {
                if kind == gix_object::Kind::Blob {
                    cache
                        .insert(&blob_key(&oid), data)
                        .map_err(|e| pack::PackError(e.to_string()))?;
                    got.push(oid);
                }
                Ok(())
            })
            .await?;
            let got_set: HashSet<ObjectId> = got.iter().copied().collect();
            lock(&self.verified).extend(got);
            if let Some(absent) = batch.iter().find(|o| !got_set.contains(*o)) {
                return Err(SourceError::Corrupt(format!(
                    "the server did not send blob {absent}"
                )));
            }
        }
        Ok(())
    }

    /// Opens a blob from the cache, fetching it first if needed. The file's
    /// content is checked against its id once per process.
    async fn blob_file(&self, oid: ObjectId) -> Result<std::fs::File, SourceError> {
        let gate = {
            let mut m = lock(&self.inflight);
            m.entry(oid).or_default().clone()
        };
        let _held = gate.lock().await;
        let result = async {
            for _ in 0..2 {
                if let Some(file) = self.cache.get(&blob_key(&oid)) {
                    if lock(&self.verified).contains(&oid) || self.verify_file(&oid, &file) {
                        lock(&self.verified).insert(oid);
                        return Ok(file);
                    }
                    tracing::warn!(repo = %self.repo.name, %oid, "cached blob is corrupt; fetching it again");
                    self.cache.remove(&blob_key(&oid));
                }
                self.ensure_blobs(&[oid]).await?;
            }
            Err(SourceError::Corrupt(format!("blob {oid} could not be stored in the cache")))
        }
        .await;
        lock(&self.inflight).remove(&oid);
        result
    }

    fn verify_file(&self, oid: &ObjectId, file: &std::fs::File) -> bool {
        let Ok(len) = file.metadata().map(|m| m.len()) else {
            return false;
        };
        let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
        let interrupt = AtomicBool::new(false);
        matches!(
            gix_object::compute_stream_hash(
                gix_hash::Kind::Sha1,
                gix_object::Kind::Blob,
                &mut reader,
                len,
                &mut gix_utils::progress::Discard,
                &interrupt,
            ),
            Ok(h) if &h == oid
        )
    }

    /// Sizes of the blobs in `tree`, in as few requests as possible.
    async fn blob_sizes(
        &self,
        tree: &ObjectId,
        blobs: &[ObjectId],
    ) -> Result<HashMap<ObjectId, u64>, SourceError> {
        let key = sizes_key(tree);
        let mut sizes: HashMap<ObjectId, u64> = HashMap::new();
        if let Some(mut f) = self.cache.get(&key) {
            let mut text = String::new();
            if f.read_to_string(&mut text).is_ok() {
                for line in text.lines() {
                    if let Some((o, s)) = line.split_once(' ') {
                        if let (Ok(o), Ok(s)) = (protocol::parse_oid(o), s.parse()) {
                            sizes.insert(o, s);
                        }
                    }
                }
            }
        }
        let mut unknown = Vec::new();
        for oid in blobs {
            if sizes.contains_key(oid) {
                continue;
            }
            // Blobs already cached tell their own size.
            match self
                .cache
                .get(&blob_key(oid))
                .and_then(|f| f.metadata().ok())
            {
                Some(m) => {
                    sizes.insert(*oid, m.len());
                }
                None => unknown.push(*oid),
            }
        }
        if unknown.is_empty() {
            if !blobs.is_empty() && !self.cache.contains(&key) {
                self.store_sizes(&key, blobs, &sizes);
            }
            return Ok(sizes);
        }
        let caps = self
            .remote
            .capabilities()
            .await
            .map_err(RemoteError::into_source_error)?;
        if caps.object_info {
            for batch in unknown.chunks(BATCH) {
                let body = self
                    .remote
                    .command("object-info", protocol::object_info_args(batch))
                    .await
                    .map_err(RemoteError::into_source_error)?;
                for (oid, size) in
                    protocol::parse_object_info(&body).map_err(|e| SourceError::Corrupt(e.0))?
                {
                    if let Some(s) = size {
                        sizes.insert(oid, s);
                    }
                }
            }
        }
        let still: Vec<ObjectId> = unknown
            .into_iter()
            .filter(|o| !sizes.contains_key(o))
            .collect();
        if !still.is_empty() {
            // No object-info: the only exact way is the blobs themselves, in one batch.
            self.ensure_blobs(&still).await?;
            for oid in still {
                let len = self
                    .cache
                    .get(&blob_key(&oid))
                    .and_then(|f| f.metadata().ok())
                    .map(|m| m.len())
                    .ok_or_else(|| {
                        SourceError::Unavailable(format!("blob {oid} vanished from the cache"))
                    })?;
                sizes.insert(oid, len);
            }
        }
        self.store_sizes(&key, blobs, &sizes);
        Ok(sizes)
    }

    fn store_sizes(&self, key: &str, blobs: &[ObjectId], sizes: &HashMap<ObjectId, u64>) {
        let mut text = String::new();
        for o in blobs {
            if let Some(s) = sizes.get(o) {
                text.push_str(&format!("{o} {s}\n"));
            }
        }
        if let Err(e) = self.cache.insert(key, text.as_bytes()) {
            tracing::debug!(repo = %self.repo.name, "cannot cache sizes: {e}");
        }
    }

    async fn list_tree(&self, tree: ObjectId) -> Result<Arc<Vec<Entry>>, SourceError> {
        if let Some(e) = lock(&self.dirs).get(&tree) {
            return Ok(e.clone());
        }
        let snap = self.snapshot().await?;
        let data = snap.trees.get(&tree).ok_or_else(|| {
            SourceError::Corrupt(format!("tree {tree} is missing from the fetched commit"))
        })?;
        let mut raw = Vec::new();
        let mut seen = HashSet::new();
        for item in gix_object::TreeRefIter::from_bytes(data, gix_hash::Kind::Sha1) {
            let item = item.map_err(|e| SourceError::Corrupt(format!("tree {tree}: {e}")))?;
            let name: &[u8] = item.filename.as_ref();
            if !safe_name(name) {
                tracing::warn!(repo = %self.repo.name, %tree, name = %String::from_utf8_lossy(name), "skipping a tree entry whose name cannot be a file name");
                continue;
            }
            if !seen.insert(name.to_vec()) {
                tracing::warn!(repo = %self.repo.name, %tree, name = %String::from_utf8_lossy(name), "skipping a duplicate tree entry");
                continue;
            }
            raw.push((name.to_vec(), item.mode.kind(), item.oid.to_owned()));
        }
        let blobs: Vec<ObjectId> = raw
            .iter()
            .filter(|(_, k, _)| {
                matches!(
                    k,
                    EntryKind::Blob | EntryKind::BlobExecutable | EntryKind::Link
                )
            })
            .map(|(_, _, o)| *o)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let sizes = self.blob_sizes(&tree, &blobs).await?;
        let pointers = self.lfs_pointers(&raw, &sizes).await?;
        snap.lfs
            .note_directory(pointers.values().cloned().collect());
        let mut entries = Vec::with_capacity(raw.len());
        for (name, kind, oid) in raw {
            let size = || {
                sizes.get(&oid).copied().ok_or_else(|| {
                    SourceError::Unavailable(format!("the size of {oid} is unknown"))
                })
            };
            let (key, kind): (Arc<[u8]>, NodeKind) = match kind {
                EntryKind::Blob | EntryKind::BlobExecutable if pointers.contains_key(&oid) => {
                    let p = &pointers[&oid];
                    (
                        p.key().into(),
                        NodeKind::File {
                            size: p.size,
                            executable: kind == EntryKind::BlobExecutable,
                        },
                    )
                }
                EntryKind::Tree => (oid.as_bytes().into(), NodeKind::Dir),
                EntryKind::Commit => (SUBMODULE_KEY.into(), NodeKind::Dir),
                EntryKind::Link => (oid.as_bytes().into(), NodeKind::Symlink { size: size()? }),
                EntryKind::Blob => (
                    oid.as_bytes().into(),
                    NodeKind::File {
                        size: size()?,
                        executable: false,
                    },
                ),
                EntryKind::BlobExecutable => (
                    oid.as_bytes().into(),
                    NodeKind::File {
                        size: size()?,
                        executable: true,
                    },
                ),
            };
            entries.push(Entry {
                name: OsString::from_vec(name),
                node: Node {
                    key,
                    kind,
                    mtime: snap.mtime,
                },
            });
        }
        let entries = Arc::new(entries);
        lock(&self.dirs).insert(tree, entries.clone());
        Ok(entries)
    }

    /// Which regular files of a directory are LFS pointers: blobs whose size
    /// is in the pointer range are fetched (one batch) and parsed.
    async fn lfs_pointers(
        &self,
        raw: &[(Vec<u8>, EntryKind, ObjectId)],
        sizes: &HashMap<ObjectId, u64>,
    ) -> Result<HashMap<ObjectId, lfs::Pointer>, SourceError> {
        let candidates: Vec<ObjectId> = raw
            .iter()
            .filter(|(_, k, _)| matches!(k, EntryKind::Blob | EntryKind::BlobExecutable))
            .map(|(_, _, o)| *o)
            .filter(|o| {
                sizes
                    .get(o)
                    .is_some_and(|s| (lfs::MIN_POINTER_SIZE..lfs::MAX_POINTER_SIZE).contains(s))
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut out = HashMap::new();
        if candidates.is_empty() {
            return Ok(out);
        }
        self.ensure_blobs(&candidates).await?;
        for oid in candidates {
            let Some(mut f) = self.cache.get(&blob_key(&oid)) else {
                continue;
            };
            let mut data = Vec::new();
            if f.read_to_end(&mut data).is_ok() {
                if let Some(p) = lfs::parse_pointer(&data) {
                    out.insert(oid, p);
                }
            }
        }
        Ok(out)
    }

    fn open_lfs(&self, p: &lfs::Pointer) -> Result<Arc<dyn FileReader>, SourceError> {
        let snap = self.block_on(self.snapshot())?;
        snap.lfs.open(
            self.remote.transport.clone(),
            self.cache.clone(),
            &self.rt,
            p,
        )
    }

    /// Fetches the small, not yet cached files of `tree` in one request.
    async fn prefetch_tree(&self, tree: ObjectId) -> Result<usize, SourceError> {
        let entries = self.list_tree(tree).await?;
        let mut budget = PREFETCH_DIR_MAX;
        let mut wants = Vec::new();
        for e in entries.iter() {
            if let NodeKind::File { size, .. } = e.node.kind {
                if size == 0 || size > PREFETCH_FILE_MAX || size > budget {
                    continue;
                }
                let Ok(oid) = ObjectId::try_from(&e.node.key[..]) else {
                    continue;
                };
                if !self.cache.contains(&blob_key(&oid)) {
                    budget -= size;
                    wants.push(oid);
                }
            }
        }
        wants.sort();
        wants.dedup();
        wants.truncate(BATCH);
        self.ensure_blobs(&wants).await?;
        Ok(wants.len())
    }

    fn block_on<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, SourceError>>,
    ) -> Result<T, SourceError> {
        self.rt.block_on(async {
            match tokio::time::timeout(CALL_LIMIT, fut).await {
                Ok(r) => r,
                Err(_) => Err(SourceError::Unavailable(format!(
                    "gave up after {}s waiting for the server",
                    CALL_LIMIT.as_secs()
                ))),
            }
        })
    }
}

fn node_oid(node: &Node) -> Result<ObjectId, SourceError> {
    ObjectId::try_from(&node.key[..]).map_err(|_| SourceError::NotFound("not a git object".into()))
}

fn blob_key(oid: &ObjectId) -> String {
    format!("git-{oid}")
}
fn trees_key(commit: &ObjectId) -> String {
    format!("trees-{commit}")
}
fn sizes_key(tree: &ObjectId) -> String {
    format!("sizes-{tree}")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A name from a tree that is safe to show: not empty, not `.`/`..`, no `/` or NUL.
pub fn safe_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
        && name.len() <= 255
}

/// The root tree and committer time of a commit object.
fn parse_commit(data: &[u8]) -> Option<(ObjectId, SystemTime)> {
    let text = String::from_utf8_lossy(data);
    let mut tree = None;
    let mut time = SystemTime::UNIX_EPOCH;
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some(t) = line.strip_prefix("tree ") {
            tree = protocol::parse_oid(t.trim()).ok();
        } else if let Some(c) = line.strip_prefix("committer ") {
            let mut parts = c.rsplit(' ');
            let _tz = parts.next();
            if let Some(secs) = parts.next().and_then(|s| s.parse::<u64>().ok()) {
                time = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            }
        }
    }
    Some((tree?, time))
}

struct BlobReader {
    file: std::fs::File,
}

impl FileReader for BlobReader {
    fn read_at(&self, offset: u64, size: u32) -> Result<Vec<u8>, SourceError> {
        crate::source::read_file_range(&self.file, offset, size)
    }
}

impl Source for GitSource {
    fn name(&self) -> &str {
        &self.repo.name
    }

    fn root(&self) -> Result<Node, SourceError> {
        let snap = self.block_on(self.snapshot())?;
        Ok(Node {
            key: snap.root_tree.as_bytes().into(),
            kind: NodeKind::Dir,
            mtime: snap.mtime,
        })
    }

    fn list(&self, dir: &Node) -> Result<Arc<Vec<Entry>>, SourceError> {
        if &dir.key[..] == SUBMODULE_KEY {
            return Ok(Arc::new(Vec::new()));
        }
        let oid = node_oid(dir)?;
        self.block_on(self.list_tree(oid))
    }

    fn open(&self, file: &Node) -> Result<Arc<dyn FileReader>, SourceError> {
        if let Some(p) = lfs::Pointer::from_key(&file.key) {
            return self.open_lfs(&p);
        }
        let oid = node_oid(file)?;
        let f = self.block_on(self.blob_file(oid))?;
        Ok(Arc::new(BlobReader { file: f }))
    }

    fn readlink(&self, link: &Node) -> Result<Vec<u8>, SourceError> {
        let oid = node_oid(link)?;
        let mut f = self.block_on(self.blob_file(oid))?;
        let mut target = Vec::new();
        f.read_to_end(&mut target)
            .map_err(|e| SourceError::Unavailable(format!("reading the cache: {e}")))?;
        Ok(target)
    }

    fn prefetch(&self, dir: &Node) {
        let Ok(tree) = node_oid(dir) else { return };
        if !lock(&self.prefetched).insert(tree) {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        self.rt.spawn(async move {
            match me.prefetch_tree(tree).await {
                Ok(n) if n > 0 => tracing::debug!(repo = %me.repo.name, %tree, files = n, "prefetched small files"),
                Ok(_) => {}
                Err(e) => {
                    // Reads will fetch (and report) on their own.
                    tracing::debug!(repo = %me.repo.name, %tree, "prefetch failed: {e}");
                    lock(&me.prefetched).remove(&tree);
                }
            }
        });
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn traffic(&self) -> (u64, u64) {
        self.counters()
    }

    fn version(&self) -> Option<String> {
        self.current_commit().map(|c| c.to_string())
    }

    fn attr_ttl(&self) -> Duration {
        match self.repo.refresh {
            // A pinned commit never changes: let the kernel cache names and attributes.
            None => Duration::from_secs(3600),
            // A followed branch: short enough that a move shows up soon after the refresh.
            Some(every) => every.min(Duration::from_secs(5)),
        }
    }

    fn immutable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256][..]] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        for good in [
            &b"a"[..],
            b"...",
            b".git",
            b"with space",
            "ünïcødé".as_bytes(),
        ] {
            assert!(safe_name(good), "{good:?}");
        }
    }

    #[test]
    fn commit_parsing() {
        let c = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@b> 1600000000 +0200\ncommitter C <c@d> 1700000000 -0100\n\nmsg\ncommitter fake 1 +0000\n";
        let (t, m) = parse_commit(c).unwrap();
        assert_eq!(t.to_string(), "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
        assert_eq!(
            m,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        assert!(parse_commit(b"no tree here\n").is_none());
    }
}
