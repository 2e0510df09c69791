//! Listing a tree: its entries with exact sizes (from [`sizes`]), LFS
//! pointers recognised, hostile names refused ([`names`]), the paths of
//! subtrees remembered for host APIs that work by path, one listing per
//! tree at a time; the prefetch of a listed directory's small files; and
//! the small blobs the daemon reads whole (symlink targets, LFS pointers,
//! `.lfsconfig`), each sized before it is read and never read past its bound.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use gix_hash::ObjectId;
use gix_object::tree::EntryKind;

use super::{
    GitSource, LFSCONFIG_MAX, PREFETCH_DIR_MAX, PREFETCH_FILE_MAX, SUBMODULE_KEY, hosts, lfs,
    names, objects,
};
use crate::source::{Entry, Node, NodeKind, SourceError, lock};

/// A tree entry: its name, kind and id.
pub(super) type Item = (Vec<u8>, EntryKind, ObjectId);

impl GitSource {
    pub(super) async fn list_tree(&self, tree: ObjectId) -> Result<Arc<Vec<Entry>>, SourceError> {
        if let Some(e) = lock(&self.dirs).get(&tree) {
            return Ok(e.clone());
        }
        let gate = lock(&self.listing).entry(tree).or_default().clone();
        let _one = gate.lock().await;
        if let Some(e) = lock(&self.dirs).get(&tree) {
            return Ok(e.clone());
        }
        let r = self.list_tree_now(tree).await;
        lock(&self.listing).remove(&tree);
        r
    }

    /// The names, kinds and ids of a tree's entries, sorted bytewise
    /// (hostile names and duplicates left out), the paths of its subtrees
    /// remembered.
    fn tree_items(
        &self,
        snap: &super::snapshot::Snapshot,
        tree: ObjectId,
    ) -> Result<(Vec<Item>, Option<String>), SourceError> {
        let data = snap.trees.get(&self.real_tree(tree)).ok_or_else(|| {
            if self.generation.load(std::sync::atomic::Ordering::SeqCst) > 1 {
                // Held from two or more commits ago (see `snapshot_of`).
                SourceError::NotFound(format!(
                    "directory {tree} is from a commit the branch has moved on from: open it again from the mount"
                ))
            } else {
                SourceError::Corrupt(format!("tree {tree} is missing from the fetched commit"))
            }
        })?;
        let path = lock(&self.paths).get(&tree).cloned();
        let mut raw: Vec<Item> = Vec::new();
        for item in gix_object::TreeRefIter::from_bytes(data, gix_hash::Kind::Sha1) {
            let item = item.map_err(|e| SourceError::Corrupt(format!("tree {tree}: {e}")))?;
            let name: &[u8] = item.filename.as_ref();
            if !names::safe_name(name) {
                tracing::warn!(repo = %self.repo.name, %tree, name = %String::from_utf8_lossy(name), "skipping a tree entry whose name cannot be shown (unsafe, or a .git spelling)");
                continue;
            }
            raw.push((name.to_vec(), item.mode.kind(), item.oid.to_owned()));
        }
        // Bytewise order, which lookups search (git's tree order puts `a/`
        // after `a.b`). The sort is stable: of entries named alike (a
        // hostile tree), the first in the tree stays and the rest go.
        raw.sort_by(|a, b| a.0.cmp(&b.0));
        raw.dedup_by(|later, first| {
            let dup = later.0 == first.0;
            if dup {
                tracing::warn!(repo = %self.repo.name, %tree, name = %String::from_utf8_lossy(&later.0), "skipping a duplicate tree entry");
            }
            dup
        });
        if let Some(p) = &path {
            let mut paths = lock(&self.paths);
            for (name, kind, oid) in raw.iter_mut() {
                if *kind == EntryKind::Tree {
                    let child = match (p.is_empty(), std::str::from_utf8(name)) {
                        (_, Err(_)) => continue,
                        (true, Ok(n)) => n.to_string(),
                        (false, Ok(n)) => format!("{p}/{n}"),
                    };
                    match paths.get(oid) {
                        None => {
                            paths.insert(*oid, child);
                        }
                        // The same tree at another path: its files may
                        // convert otherwise (`.gitattributes` above it), so
                        // it is listed as a directory of its own.
                        Some(first) if *first != child && self.checkout.enabled => {
                            let alias = alias_id(oid, &child);
                            lock(&self.aliases).insert(alias, *oid);
                            paths.insert(alias, child);
                            *oid = alias;
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        Ok((raw, path))
    }

    /// A tree's entries as `list_names` gives them: with exact sizes when
    /// they are at hand (listed lately, or stored: at most the LFS pointers
    /// among them are fetched), else names and kinds only (sizes 0, LFS
    /// pointers not recognised yet).
    pub(super) async fn list_tree_names(
        &self,
        tree: ObjectId,
    ) -> Result<(Arc<Vec<Entry>>, bool), SourceError> {
        if let Some(e) = lock(&self.dirs).get(&tree) {
            return Ok((e, true));
        }
        // Sizes stored: the sized listing (a listing too large for `dirs`
        // to keep is made again from them), unless it cannot be had now
        // (an LFS pointer to fetch, the server away); the names can.
        if self.sizes.known(&self.real_tree(tree))
            && let Ok(e) = self.list_tree(tree).await
        {
            return Ok((e, true));
        }
        if let Some(e) = lock(&self.names).get(&tree) {
            return Ok((e, false));
        }
        let snap = self.snapshot_of(tree).await?;
        let (raw, _) = self.tree_items(&snap, tree)?;
        // In the items' (bytewise) order.
        let entries: Vec<Entry> = raw
            .into_iter()
            .map(|(name, kind, oid)| {
                let (key, kind): (Arc<[u8]>, NodeKind) = match kind {
                    EntryKind::Tree => (oid.as_bytes().into(), NodeKind::Dir),
                    EntryKind::Commit => (SUBMODULE_KEY.into(), NodeKind::Dir),
                    EntryKind::Link => (oid.as_bytes().into(), NodeKind::Symlink { size: 0 }),
                    EntryKind::Blob | EntryKind::BlobExecutable => (
                        oid.as_bytes().into(),
                        NodeKind::File {
                            size: 0,
                            executable: kind == EntryKind::BlobExecutable,
                        },
                    ),
                };
                Entry {
                    name: OsString::from_vec(name),
                    node: Node {
                        key,
                        kind,
                        mtime: snap.mtime,
                    },
                }
            })
            .collect();
        let entries = Arc::new(entries);
        lock(&self.names).insert(tree, entries.clone());
        Ok((entries, false))
    }

    /// The snapshot holding `tree`: the one served, or for a directory
    /// the kernel holds from before the branch moved, the one before it.
    async fn snapshot_of(
        &self,
        tree: ObjectId,
    ) -> Result<Arc<super::snapshot::Snapshot>, SourceError> {
        let snap = self.snapshot().await?;
        let tree = self.real_tree(tree);
        if !snap.trees.contains_key(&tree)
            && let Some(old) = lock(&self.retired).clone()
            && old.trees.contains_key(&tree)
        {
            return Ok(old);
        }
        Ok(snap)
    }

    async fn list_tree_now(&self, tree: ObjectId) -> Result<Arc<Vec<Entry>>, SourceError> {
        let snap = self.snapshot_of(tree).await?;
        let (raw, path) = self.tree_items(&snap, tree)?;
        let blobs: Vec<(Vec<u8>, ObjectId)> = raw
            .iter()
            .filter(|(_, k, _)| {
                matches!(
                    k,
                    EntryKind::Blob | EntryKind::BlobExecutable | EntryKind::Link
                )
            })
            .map(|(n, _, o)| (n.clone(), *o))
            .collect();
        let dir = hosts::DirRef {
            commit: snap.commit,
            tree: self.real_tree(tree),
            path: path.unwrap_or_default(),
            blobs,
            snapshot: Some(snap.clone()),
        };
        let sizes = self.sizes.of_dir(&dir).await?;
        let pointers = self.lfs_pointers(&raw, &sizes).await?;
        snap.lfs
            .note_directory(pointers.values().cloned().collect());
        let converted = self
            .checkout_sizes(&snap, tree, &raw, &pointers, &sizes)
            .await?;
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
                        p.key(&oid.to_string()).into(),
                        NodeKind::File {
                            size: p.size,
                            executable: kind == EntryKind::BlobExecutable,
                        },
                    )
                }
                EntryKind::Blob | EntryKind::BlobExecutable if converted.contains_key(&name) => {
                    let (key, size) = &converted[&name];
                    (
                        key.clone(),
                        NodeKind::File {
                            size: *size,
                            executable: kind == EntryKind::BlobExecutable,
                        },
                    )
                }
                EntryKind::Tree => (oid.as_bytes().into(), NodeKind::Dir),
                EntryKind::Commit => (SUBMODULE_KEY.into(), NodeKind::Dir),
                EntryKind::Link => (oid.as_bytes().into(), NodeKind::Symlink { size: size()? }),
                EntryKind::Blob | EntryKind::BlobExecutable => (
                    oid.as_bytes().into(),
                    NodeKind::File {
                        size: size()?,
                        executable: kind == EntryKind::BlobExecutable,
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
        // In the items' (bytewise) order, which lookups search.
        let entries = Arc::new(entries);
        lock(&self.dirs).insert(tree, entries.clone());
        Ok(entries)
    }

    /// Which regular files of a directory are LFS pointers: blobs whose
    /// listed size is in the pointer range are fetched (one batch that
    /// stops at any blob over [`lfs::MAX_POINTER_SIZE`]: a listed size can
    /// lie) and parsed. A pointer whose size was listed out of the range is
    /// recognised when it is opened (`GitSource::open`): its own bytes
    /// decide, not a listing.
    async fn lfs_pointers(
        &self,
        raw: &[Item],
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
        // The small ones come whole (and are cached: from the fleet's tier
        // when it has them); a larger one is sized from its pack header and
        // never downloaded: it is no pointer.
        self.objects.from_shared_only(&candidates).await;
        self.objects
            .probe(&candidates, lfs::MAX_POINTER_SIZE)
            .await?;
        for oid in candidates {
            // A read that fails fails the listing (and is retried with it):
            // taking the blob for "not a pointer" would show its text.
            let data = self.small_blob(oid, lfs::MAX_POINTER_SIZE).await?;
            if let Some(p) = data.as_deref().and_then(lfs::parse_pointer) {
                out.insert(oid, p);
            }
        }
        Ok(out)
    }

    /// A small blob's bytes (symlink targets, `.lfsconfig`, pointers), at
    /// most `max` of them: a longer blob answers
    /// [`SourceError::NameTooLong`] (see [`Self::small_blob`]).
    pub(super) async fn read_small_blob(
        &self,
        oid: ObjectId,
        max: u64,
    ) -> Result<Vec<u8>, SourceError> {
        self.small_blob(oid, max).await?.ok_or_else(|| {
            SourceError::NameTooLong(format!("blob {oid} is longer than {max} bytes"))
        })
    }

    /// A blob's bytes when it is at most `max` bytes long, `None` when it
    /// is longer. Its true size is learned first (the cache's, or the pack
    /// entry's header, never a listed one) and a longer blob is never
    /// fetched nor read whole.
    pub(super) async fn small_blob(
        &self,
        oid: ObjectId,
        max: u64,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        // From the fleet's tier if it has it, else from the origin, fetched
        // on the way when it is at most `max` bytes.
        self.objects.from_shared_only(&[oid]).await;
        let size = self.objects.probe(&[oid], max).await?.get(&oid).copied();
        let size = size.ok_or_else(|| {
            SourceError::Unavailable(format!("cannot learn the size of blob {oid}"))
        })?;
        if size > max {
            return Ok(None);
        }
        let data = match self.objects.open(oid, size).await? {
            objects::Opened::File(f) => {
                let mut data = Vec::new();
                f.take(max + 1)
                    .read_to_end(&mut data)
                    .map_err(|e| SourceError::Unavailable(format!("reading the cache: {e}")))?;
                data
            }
            objects::Opened::Memory(m) if m.len() as u64 <= max => m.to_vec(),
            objects::Opened::Memory(_) | objects::Opened::Streaming(..) => return Ok(None),
        };
        Ok((data.len() as u64 <= max).then_some(data))
    }

    /// The LFS endpoint: the config's `lfs_url`, else a committed
    /// `.lfsconfig` in the root tree (within the origin rule of
    /// [`lfs::endpoint`], whose note is logged once per repository), else
    /// the clone URL's.
    pub(super) async fn find_lfs_endpoint(
        &self,
        trees: &HashMap<ObjectId, Arc<[u8]>>,
        root: &ObjectId,
    ) -> String {
        let clone_url = &self.remote.transport.clone_url;
        let lfs_url = self.repo.lfs_url.as_deref();
        let lfsconfig = trees.get(root).and_then(|data| {
            gix_object::TreeRefIter::from_bytes(data, gix_hash::Kind::Sha1)
                .filter_map(Result::ok)
                .find(|e| e.filename == ".lfsconfig" && e.mode.is_blob())
                .map(|e| e.oid.to_owned())
        });
        let data = match lfsconfig {
            Some(oid) if lfs_url.is_none() => {
                match self.read_small_blob(oid, LFSCONFIG_MAX).await {
                    Ok(data) => Some(data),
                    Err(e) => {
                        tracing::warn!(repo = %self.repo.name, "cannot read .lfsconfig ({e}); using the default LFS endpoint");
                        None
                    }
                }
            }
            _ => None,
        };
        let (endpoint, note) = lfs::endpoint(clone_url, lfs_url, data.as_deref());
        if let Some(note) = note {
            if !self.lfs_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(repo = %self.repo.name, "{note}");
            }
        }
        endpoint
    }

    /// The tree behind a directory id: itself, or for a tree listed at a
    /// second path (see `tree_items`), the tree its alias stands for.
    pub(super) fn real_tree(&self, tree: ObjectId) -> ObjectId {
        lock(&self.aliases).get(&tree).copied().unwrap_or(tree)
    }

    /// Fetches the small, not yet cached files of `tree` in one request.
    pub(super) async fn prefetch_tree(&self, tree: ObjectId) -> Result<usize, SourceError> {
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
                if !self.cache.contains(&objects::blob_key(&oid)) {
                    budget -= size;
                    wants.push(oid);
                }
            }
        }
        wants.truncate(objects::BATCH);
        self.objects.ensure(&wants).await?;
        Ok(wants.len())
    }
}

/// The directory id of tree `oid` listed at `path` when it was listed at
/// another path first: a hash of both, never a real object's id.
fn alias_id(oid: &ObjectId, path: &str) -> ObjectId {
    let text = format!("repofs tree alias\0{oid}\0{path}");
    gix_object::compute_hash(
        gix_hash::Kind::Sha1,
        gix_object::Kind::Blob,
        text.as_bytes(),
    )
    .unwrap_or(*oid)
}

/// Listings kept in memory, least recently used first out, bounded by the
/// number of entries they hold in all: a walk over a million files keeps
/// the last [`DIR_CACHE_ENTRIES`] of them, not all (the kernel caches what
/// it shows, and a listing dropped here is parsed again from the tree).
pub(super) struct DirCache {
    lru: lru::LruCache<ObjectId, Arc<Vec<Entry>>>,
    entries: usize,
}

/// Entries of listings kept in memory (about 100 bytes each).
const DIR_CACHE_ENTRIES: usize = 20_000;

impl DirCache {
    pub(super) fn new() -> DirCache {
        DirCache {
            lru: lru::LruCache::unbounded(),
            entries: 0,
        }
    }

    pub(super) fn get(&mut self, tree: &ObjectId) -> Option<Arc<Vec<Entry>>> {
        self.lru.get(tree).cloned()
    }

    pub(super) fn insert(&mut self, tree: ObjectId, listing: Arc<Vec<Entry>>) {
        self.entries += listing.len();
        if let Some(old) = self.lru.put(tree, listing) {
            self.entries -= old.len();
        }
        // The newest listing stays even when it alone is over the budget.
        while self.entries > DIR_CACHE_ENTRIES && self.lru.len() > 1 {
            match self.lru.pop_lru() {
                Some((_, l)) => self.entries -= l.len(),
                None => break,
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.lru.clear();
        self.entries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(n: usize) -> Arc<Vec<Entry>> {
        let e = Entry {
            name: "x".into(),
            node: Node {
                key: Arc::from(&b"k"[..]),
                kind: NodeKind::Dir,
                mtime: std::time::SystemTime::UNIX_EPOCH,
            },
        };
        Arc::new(vec![e; n])
    }

    #[test]
    fn listings_are_bounded_by_their_entries() {
        let id = |i: u8| ObjectId::from_bytes_or_panic(&[i; 20]);
        let mut c = DirCache::new();
        for i in 0..30 {
            c.insert(id(i), listing(10_000));
        }
        assert!(c.entries <= DIR_CACHE_ENTRIES, "{}", c.entries);
        assert!(c.get(&id(29)).is_some(), "the newest listing was dropped");
        assert!(c.get(&id(0)).is_none(), "the oldest listing was kept");
        c.insert(id(99), listing(DIR_CACHE_ENTRIES * 2));
        assert!(c.get(&id(99)).is_some());
        assert_eq!(c.lru.len(), 1);
        c.clear();
        assert_eq!((c.entries, c.lru.len()), (0, 0));
    }
}
