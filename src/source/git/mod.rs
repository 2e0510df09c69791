//! A git repository as a [`Source`]. The ref is resolved with `ls-refs`;
//! the commit and all its trees come in one `fetch` (`deepen 1`,
//! `filter blob:none`); a directory's exact sizes come from [`sizes`] (stored
//! per tree, from `object-info`, the host's API or a streamed probe that
//! never downloads a large blob); blobs are fetched by id, once at a time
//! each, streamed into the cache by [`objects`].
//!
//! Module map: [`remote`] (capabilities, refs, streamed fetch) over
//! [`transport`] (HTTP) and [`protocol`] (pkt-lines); [`pack`] and [`delta`]
//! decode packs as they stream; [`objects`] (single-flight fetching);
//! [`sizes`] and [`hosts`] (sizes per host kind); [`snapshot`] (the commit
//! being served); [`lfs`]; [`names`] (which tree entry names are shown).

mod ahead;
mod attributes;
mod checkout;
mod convert;
mod credentials;
pub mod delta;
mod errors;
mod fleet;
mod follow;
pub mod gitlab;
pub mod hosts;
pub mod lfs;
mod listing;
pub use crate::source::names;
pub mod objects;
mod origin;
pub mod pack;
pub mod protocol;
pub mod ratelimit;
pub mod remote;
mod sinks;
pub mod sizes;
pub mod snapshot;
pub mod transport;
pub mod url;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gix_hash::ObjectId;

use crate::cache::Cache;
use crate::config::{Config, RepoConfig};
use crate::source::transfer::TransferReader;
use crate::source::{
    Entry, FileReader, LocalFile, MemoryFile, Node, NodeKind, Source, SourceError, lock,
};
pub use remote::Remote;
use snapshot::{Snapshot, State};
use transport::RemoteError;

/// Listing a directory prefetches its files up to this size...
const PREFETCH_FILE_MAX: u64 = sizes::PROBE_KEEP;
/// ...and at most this many bytes per directory, in one request.
const PREFETCH_DIR_MAX: u64 = 16 * 1024 * 1024;
/// How long a failed ref resolution is remembered before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Longest symbolic link target served: PATH_MAX (4096) with its NUL.
const SYMLINK_MAX: u64 = 4095;
/// Largest `.lfsconfig` read.
const LFSCONFIG_MAX: u64 = 64 * 1024;
/// Marker key for submodule directories (always empty).
const SUBMODULE_KEY: &[u8] = b"submodule";

/// A mounted git repository.
pub struct GitSource {
    /// A handle on itself, for background work (prefetch).
    me: std::sync::Weak<GitSource>,
    repo: RepoConfig,
    remote: Arc<Remote>,
    objects: Arc<objects::Objects>,
    sizes: sizes::Sizes,
    cache: Arc<Cache>,
    rt: tokio::runtime::Handle,
    /// FUSE threads' way into the runtime, each wait bounded (`call_timeout`).
    bridge: crate::fetch::bridge::Bridge,
    state: State,
    /// The commit served; swapped whole when a followed branch moves. The
    /// load itself runs under `loading`, never under this lock.
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    /// The commit served before the branch last moved: directories the
    /// kernel still holds from it are listed from its trees.
    retired: Mutex<Option<Arc<Snapshot>>>,
    loading: tokio::sync::Mutex<()>,
    last_failure: Mutex<Option<(Instant, SourceError)>>,
    dirs: Mutex<listing::DirCache>,
    /// Listings without sizes (`list_names`), bounded as `dirs`.
    names: Mutex<listing::DirCache>,
    /// One listing at a time per tree (others wait for its result).
    listing: Mutex<HashMap<ObjectId, Arc<tokio::sync::Mutex<()>>>>,
    /// A path of each tree seen (for host APIs that work by path).
    paths: Mutex<HashMap<ObjectId, String>>,
    filter_warned: AtomicBool,
    /// Whether the LFS endpoint's note (`.lfsconfig` not followed as
    /// written) was logged.
    lfs_warned: AtomicBool,
    prefetched: Mutex<HashSet<ObjectId>>,
    /// How long a reader waits on a download that makes no progress.
    stall_limit: Duration,
    /// Bumped each time a followed branch moves.
    generation: AtomicU64,
    stopped: AtomicBool,
    /// Opens served from the cache, and opens that fetched.
    opens: crate::source::CacheCounts,
    /// The `.gitattributes` conversions ([`checkout`]).
    checkout: checkout::Checkout,
    /// Directory ids of trees listed at a second path, and their trees.
    aliases: Mutex<HashMap<ObjectId, ObjectId>>,
}

impl GitSource {
    pub fn new(
        repo: &RepoConfig,
        config: &Config,
        cache: Arc<Cache>,
        rt: tokio::runtime::Handle,
        shared: Option<Arc<crate::shared::Shared>>,
    ) -> Result<Arc<GitSource>, String> {
        let remote = Arc::new(Remote::new(repo, config)?);
        let state_dir = config.cache_dir.join("state");
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
        // Packs from older versions were written here; nothing is any more.
        let _ = std::fs::remove_dir_all(config.cache_dir.join("scratch"));
        let stall_limit = config
            .request_timeout
            .saturating_mul(config.max_attempts)
            .saturating_add(Duration::from_secs(5));
        let objects = objects::Objects::new(
            &repo.name,
            remote.clone(),
            cache.clone(),
            rt.clone(),
            stall_limit,
            shared,
            config.max_tree_bytes,
        );
        let api = hosts::HostApi::for_repo(
            repo.provider,
            &remote.transport.clone_url,
            repo.api_url.as_deref(),
        );
        let sizes = sizes::Sizes::new(
            &repo.name,
            cache.clone(),
            remote.clone(),
            objects.clone(),
            api,
        );
        let state = State {
            path: state_dir.join(format!("{}.ref", repo.name)),
            line: format!(
                "{} {}",
                remote.transport.clone_url,
                repo.reference.as_deref().unwrap_or("HEAD")
            ),
        };
        Ok(Arc::new_cyclic(|me| GitSource {
            me: me.clone(),
            repo: repo.clone(),
            remote,
            objects,
            sizes,
            cache,
            bridge: crate::fetch::bridge::Bridge::new(rt.clone(), config.call_timeout),
            rt,
            state,
            snapshot: Mutex::new(None),
            retired: Mutex::new(None),
            loading: tokio::sync::Mutex::new(()),
            last_failure: Mutex::new(None),
            dirs: Mutex::new(listing::DirCache::new()),
            names: Mutex::new(listing::DirCache::new()),
            listing: Mutex::new(HashMap::new()),
            paths: Mutex::new(HashMap::new()),
            filter_warned: AtomicBool::new(false),
            lfs_warned: AtomicBool::new(false),
            prefetched: Mutex::new(HashSet::new()),
            stall_limit,
            generation: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            opens: crate::source::CacheCounts::default(),
            checkout: checkout::Checkout::new(repo.checkout_filters),
            aliases: Mutex::new(HashMap::new()),
        }))
    }

    /// Requests made and bytes received so far.
    pub fn counters(&self) -> (u64, u64) {
        let c = &self.remote.transport.counters;
        (
            c.requests.load(Ordering::Relaxed),
            c.bytes_received.load(Ordering::Relaxed),
        )
    }

    pub fn clone_url(&self) -> &str {
        &self.remote.transport.clone_url
    }

    /// The snapshot, resolving and fetching it on first use. Callers that
    /// only need what is loaded never wait behind a load.
    async fn snapshot(&self) -> Result<Arc<Snapshot>, SourceError> {
        if let Some(s) = lock(&self.snapshot).clone() {
            return Ok(s);
        }
        // A task: a caller that gives up (its FUSE call's bound) does not
        // cancel the load, which the next call then finds further along.
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| SourceError::Unavailable("shutting down".into()))?;
        self.rt
            .spawn(async move { me.load_once().await })
            .await
            .map_err(|e| SourceError::Unavailable(format!("loading the repository: {e}")))?
    }

    /// Loads the snapshot unless another load did it meanwhile.
    async fn load_once(&self) -> Result<Arc<Snapshot>, SourceError> {
        let _loading = self.loading.lock().await;
        if let Some(s) = lock(&self.snapshot).clone() {
            return Ok(s);
        }
        if let Some((when, err)) = lock(&self.last_failure).clone() {
            if when.elapsed() < RETRY_AFTER {
                return Err(err);
            }
        }
        match self.load_snapshot().await {
            Ok(s) => {
                let s = Arc::new(s);
                *lock(&self.snapshot) = Some(s.clone());
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

    /// Stops background work (refresh) for a repository being unmounted.
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// The commit being served, once loaded.
    pub fn current_commit(&self) -> Option<ObjectId> {
        lock(&self.snapshot).as_ref().map(|s| s.commit)
    }

    /// The LFS endpoint of the mounted commit (loads it if needed).
    pub async fn lfs_endpoint(&self) -> Result<String, SourceError> {
        self.snapshot().await.map(|s| s.lfs.endpoint.clone())
    }

    /// Loads the repository (so the first `ls` is fast and problems are
    /// logged at start-up).
    pub async fn preload(&self) -> Result<ObjectId, SourceError> {
        self.snapshot().await.map(|s| s.commit)
    }

    async fn load_snapshot(&self) -> Result<Snapshot, SourceError> {
        let commit = match self.remote.resolve_ref().await {
            Ok(c) => {
                self.state.remember(&self.repo.name, c);
                c
            }
            Err(e) if e.retryable() => match self.state.remembered() {
                Some(c) if self.cache.contains(&snapshot::trees_key(&c)) => {
                    tracing::warn!(repo = %self.repo.name, "server unreachable ({e}); serving the last known commit {c} from the cache");
                    c
                }
                _ => return Err(e.into_source_error()),
            },
            Err(e) => return Err(e.into_source_error()),
        };
        self.snapshot_for(commit).await
    }

    /// Loads a commit's trees (cache first) and its LFS endpoint.
    async fn snapshot_for(&self, commit: ObjectId) -> Result<Snapshot, SourceError> {
        let trees = match self.shared_trees(&commit).await {
            Some(t) => t,
            None => {
                let caps = self
                    .remote
                    .capabilities()
                    .await
                    .map_err(RemoteError::into_source_error)?;
                let filter = caps.supports_filter();
                if !filter && !self.filter_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(repo = %self.repo.name, "the server does not support `filter`: falling back to a shallow fetch that downloads every file of the commit once");
                }
                let trees = self
                    .objects
                    .fetch_commit(commit, caps.supports_shallow(), filter)
                    .await?;
                snapshot::store_trees(&self.cache, &self.repo.name, &commit, &trees);
                fleet::offer(
                    &self.objects.shared,
                    &self.cache,
                    &snapshot::trees_key(&commit),
                    &fleet::trees_object(&commit),
                );
                trees
            }
        };
        let commit_data = trees.get(&commit).ok_or_else(|| {
            SourceError::Corrupt(format!("the server did not send commit {commit}"))
        })?;
        let (root_tree, mtime) = snapshot::parse_commit(commit_data)
            .ok_or_else(|| SourceError::Corrupt(format!("commit {commit} cannot be parsed")))?;
        if !trees.contains_key(&root_tree) {
            return Err(SourceError::Corrupt(format!(
                "the server did not send the root tree {root_tree} of commit {commit}"
            )));
        }
        lock(&self.paths).insert(root_tree, String::new());
        let lfs = Arc::new(lfs::Lfs::new(
            self.find_lfs_endpoint(&trees, &root_tree).await,
            self.repo.provider,
            &self.repo.name,
            self.stall_limit,
            self.objects.shared.clone(),
        ));
        tracing::info!(repo = %self.repo.name, %commit, trees = trees.len() - 1, lfs = %crate::redact::url(&lfs.endpoint), "repository ready");
        Ok(Snapshot {
            commit,
            root_tree,
            mtime,
            trees,
            lfs,
        })
    }

    /// A commit's trees from the cache, else from the fleet's shared tier
    /// (every record checked, and no directory left out).
    async fn shared_trees(&self, commit: &ObjectId) -> Option<HashMap<ObjectId, Arc<[u8]>>> {
        if let Some(t) = snapshot::cached_trees(&self.cache, &self.repo.name, commit) {
            return Some(t);
        }
        let shared = self.objects.shared.as_ref()?;
        let key = snapshot::trees_key(commit);
        if !fleet::fetch_trees(shared, &self.cache, commit, &key).await {
            return None;
        }
        let trees = snapshot::cached_trees(&self.cache, &self.repo.name, commit);
        let root = trees
            .as_ref()
            .and_then(|t| t.get(commit))
            .and_then(|c| snapshot::parse_commit(c))
            .map(|(root, _)| root);
        match (trees, root) {
            (Some(t), Some(root)) if fleet::complete(&t, &root) => Some(t),
            _ => {
                tracing::warn!(repo = %self.repo.name, %commit, "shared cache: the trees of {commit} failed verification; fetching them from the origin");
                self.cache.remove(&key);
                None
            }
        }
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

    /// A listed size turned out wrong (the contents disagree): log it and
    /// forget the listings so the next one shows the true size.
    fn size_corrected(&self, oid: &ObjectId, listed: u64, real: u64) {
        tracing::warn!(repo = %self.repo.name, %oid, listed, real, "a listed size disagrees with the contents; using the contents' size");
        self.sizes.correct(*oid, real);
        lock(&self.dirs).clear();
    }

    fn block_on<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, SourceError>>,
    ) -> Result<T, SourceError> {
        self.bridge
            .call(&format!("repository '{}'", self.repo.name), fut)
    }
}

fn node_oid(node: &Node) -> Result<ObjectId, SourceError> {
    ObjectId::try_from(&node.key[..]).map_err(|_| SourceError::NotFound("not a git object".into()))
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

    fn list_names(&self, dir: &Node) -> Result<(Arc<Vec<Entry>>, bool), SourceError> {
        if &dir.key[..] == SUBMODULE_KEY {
            return Ok((Arc::new(Vec::new()), true));
        }
        self.block_on(self.list_tree_names(node_oid(dir)?))
    }

    fn open(&self, file: &Node) -> Result<Arc<dyn FileReader>, SourceError> {
        if let Some((p, _)) = lfs::Pointer::from_key(&file.key) {
            self.opens.record(snap_has_lfs(&self.cache, &p));
            return self.open_lfs(&p);
        }
        let listed = match file.kind {
            NodeKind::File { size, .. } | NodeKind::Symlink { size } => size,
            NodeKind::Dir => 0,
        };
        let oid = match convert::parse_key(&file.key) {
            Some((oid, spec)) => match self.open_converted(oid, &spec, listed)? {
                Some(reader) => return Ok(reader),
                None => oid,
            },
            None => node_oid(file)?,
        };
        self.opens.record(self.objects.have(&oid));
        let reader: Arc<dyn FileReader> = match self.block_on(self.objects.open(oid, listed))? {
            objects::Opened::File(file) => {
                let size = file
                    .metadata()
                    .map(|m| m.len())
                    .map_err(|e| SourceError::Unavailable(format!("reading the cache: {e}")))?;
                Arc::new(LocalFile::new(file, size))
            }
            objects::Opened::Memory(m) => Arc::new(MemoryFile(m)),
            objects::Opened::Streaming(transfer, size) => Arc::new(TransferReader {
                transfer,
                size,
                rt: self.rt.clone(),
                stall_limit: self.stall_limit,
            }),
        };
        // LFS-ness is decided by the blob's own bytes: one listed with a
        // size out of the pointer range (a host or the shared tier lied, or
        // no size was listed) that is a pointer is served as its LFS file.
        if let Some(real) = reader
            .size()
            .filter(|r| *r != listed && (lfs::MIN_POINTER_SIZE..lfs::MAX_POINTER_SIZE).contains(r))
            && let Some(p) = reader
                .read_at(0, real as u32)
                .ok()
                .and_then(|head| lfs::parse_pointer(&head))
        {
            self.size_corrected(&oid, listed, real);
            return self.open_lfs(&p);
        }
        // Every reader knows the true size before its first byte.
        if let Some(real) = reader.size().filter(|r| *r != listed) {
            self.size_corrected(&oid, listed, real);
        }
        Ok(reader)
    }

    fn readlink(&self, link: &Node) -> Result<Vec<u8>, SourceError> {
        let oid = node_oid(link)?;
        self.block_on(self.read_small_blob(oid, SYMLINK_MAX))
            .map_err(|e| match e {
                SourceError::NameTooLong(_) => SourceError::NameTooLong(format!(
                    "symbolic link {oid}: its target is longer than PATH_MAX ({} bytes)",
                    SYMLINK_MAX + 1
                )),
                e => e,
            })
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

    fn activity(&self) -> crate::source::Activity {
        let (requests, bytes) = self.counters();
        let (cache_hits, cache_misses) = self.opens.get();
        let lfs = lock(&self.snapshot)
            .as_ref()
            .map(|s| s.lfs.in_flight())
            .unwrap_or(0);
        crate::source::Activity {
            requests,
            bytes,
            cache_hits,
            cache_misses,
            in_flight: self.objects.in_flight() + lfs,
        }
    }

    fn ids(&self, node: &Node, root: bool) -> Vec<(&'static str, String)> {
        let mut ids = Vec::new();
        if let Some((p, blob)) = lfs::Pointer::from_key(&node.key) {
            ids.push(("oid", blob));
            ids.push(("lfs_oid", p.oid));
        } else if let Some((oid, _)) = convert::parse_key(&node.key) {
            ids.push(("oid", oid.to_string()));
        } else if let Ok(oid) = node_oid(node) {
            ids.push(("oid", self.real_tree(oid).to_string()));
        }
        if root {
            if let Some(c) = self.current_commit() {
                ids.push(("commit", c.to_string()));
            }
        }
        ids
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

    fn dirs_immutable(&self) -> bool {
        // A directory's key is its tree id.
        true
    }
}

/// Whether an LFS object is complete in the cache.
fn snap_has_lfs(cache: &Cache, p: &lfs::Pointer) -> bool {
    cache.contains(&p.cache_key())
}

impl Drop for GitSource {
    fn drop(&mut self) {
        tracing::debug!(repo = %self.repo.name, "repository source released");
    }
}
