//! Checkout conversions in a mount: which files of a listed directory
//! convert, their sizes, and their contents ([`convert`] does the bytes).
//!
//! Sizes: no host reports the size of converted contents, so a file
//! whose attributes can change it is fetched and converted when its
//! directory is listed with sizes, and listed with the converted length
//! under a node key `conv:<blob id>:<spec>`; files without such
//! attributes are listed as before, with no fetch. The blob id stays
//! their `user.repofs.oid`. The `.gitattributes` themselves are read with
//! a bound ([`ATTRIBUTES_MAX`]), like `.lfsconfig`; one that cannot be
//! used is logged once and its directory served unconverted, as git warns
//! and goes on.
//!
//! Contents are converted on the fly from the verified blob (the object
//! cache checks every cached blob against its id), never stored converted:
//! the bytes served are always a pure function of a verified blob and a
//! spec, so there is no second copy on disk to verify or to go stale, and
//! the disk cache holds blobs only. The results are kept in a bounded
//! memory store (a re-open or a re-listing costs no conversion; after a
//! restart, conversion again from the cached blob, no fetch). A blob over
//! [`CONVERT_MAX`] is not held in memory to convert: it is served as its
//! blob, with a warning.
//!
//! [`convert`]: super::convert

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use gix_hash::ObjectId;
use gix_object::tree::EntryKind;

use super::attributes::{ATTRIBUTES_MAX, Spec, Stack};
use super::convert::{convert, converts, key};
use super::listing::Item;
use super::snapshot::Snapshot;
use super::{GitSource, lfs};
use crate::source::{FileReader, MemoryFile, SourceError, lock};

/// Largest blob converted (it is held in memory, with its conversion).
pub const CONVERT_MAX: u64 = 64 << 20;
/// Converted contents kept in memory.
const CONVERTED_MEMORY: u64 = 128 << 20;
/// `.gitattributes` files kept in memory.
const ATTRIBUTES_MEMORY: u64 = 8 << 20;
/// Notes remembered as logged (then forgotten all at once).
const NOTES_MAX: usize = 10_000;

/// The `.gitattributes` (directory, blob id) in force per (commit, directory).
type InForce = HashMap<(ObjectId, String), Arc<Vec<(String, ObjectId)>>>;

/// The checkout conversions of one repository.
pub(super) struct Checkout {
    /// `checkout_filters` of the repository.
    pub(super) enabled: bool,
    /// `.gitattributes` blobs, by id.
    files: crate::cache::Memory,
    /// Converted contents, by `<blob id>:<spec>`.
    converted: crate::cache::Memory,
    /// `<blob id>:<spec>` the conversion leaves unchanged.
    unchanged: Mutex<HashSet<String>>,
    /// The `.gitattributes` in force per directory (by commit and path):
    /// a directory's are its parent's and its own, so a walk down the tree
    /// reads each tree once.
    in_force: Mutex<InForce>,
    /// What was logged already (one warning per file and problem).
    noted: Mutex<HashSet<String>>,
}

impl Checkout {
    pub(super) fn new(enabled: bool) -> Checkout {
        Checkout {
            enabled,
            files: crate::cache::Memory::new(ATTRIBUTES_MEMORY),
            converted: crate::cache::Memory::new(CONVERTED_MEMORY),
            unchanged: Mutex::new(HashSet::new()),
            noted: Mutex::new(HashSet::new()),
            in_force: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `what` is new (to be logged).
    fn first(&self, what: String) -> bool {
        let mut n = lock(&self.noted);
        if n.len() >= NOTES_MAX {
            n.clear();
        }
        n.insert(what)
    }
}

impl GitSource {
    /// The `.gitattributes` in force in directory `path` of `snap` (whose
    /// entries are `raw`), root first, with the directory holding each and
    /// its bytes. One that cannot be fetched fails the call (serving the
    /// blobs would show other bytes); one too large to use is logged and
    /// left out.
    async fn attribute_files(
        &self,
        snap: &Snapshot,
        path: &str,
        raw: &[Item],
    ) -> Result<Vec<(String, ObjectId, Arc<[u8]>)>, SourceError> {
        let own = raw
            .iter()
            .find(|(n, k, _)| {
                n == b".gitattributes" && matches!(k, EntryKind::Blob | EntryKind::BlobExecutable)
            })
            .map(|(_, _, o)| (path.to_string(), *o));
        let mut in_force = if path.is_empty() {
            Vec::new()
        } else {
            let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
            let known = lock(&self.checkout.in_force)
                .get(&(snap.commit, parent.to_string()))
                .cloned();
            match known {
                Some(k) => k.to_vec(),
                None => in_force_walk(snap, parent),
            }
        };
        in_force.extend(own);
        {
            let mut memo = lock(&self.checkout.in_force);
            if memo.len() >= NOTES_MAX {
                memo.clear();
            }
            memo.insert((snap.commit, path.to_string()), Arc::new(in_force.clone()));
        }
        let mut files = Vec::new();
        for (dir, oid) in in_force {
            if let Some(bytes) = self.attributes_file(oid).await? {
                files.push((dir, oid, bytes));
            }
        }
        Ok(files)
    }

    /// The stack of `files`, what git would warn about in them logged once.
    fn attribute_stack(&self, files: &[(String, ObjectId, Arc<[u8]>)]) -> Stack {
        let mut stack = Stack::new();
        for (dir, oid, bytes) in files {
            for note in stack.push(dir, bytes) {
                if self.checkout.first(format!("{oid}:{note}")) {
                    let slash = if dir.is_empty() { "" } else { "/" };
                    tracing::warn!(repo = %self.repo.name, file = %format!("{dir}{slash}.gitattributes"), "{note}");
                }
            }
        }
        stack
    }

    /// A `.gitattributes` blob; `None` when it is too large to use.
    async fn attributes_file(&self, oid: ObjectId) -> Result<Option<Arc<[u8]>>, SourceError> {
        let key = oid.to_string();
        if let Some(b) = self.checkout.files.get(&key) {
            return Ok(Some(b));
        }
        match self.small_blob(oid, ATTRIBUTES_MAX).await? {
            Some(b) => {
                let b: Arc<[u8]> = b.into();
                self.checkout.files.put(&key, b.clone());
                Ok(Some(b))
            }
            None => {
                if self.checkout.first(format!("{oid}:large")) {
                    tracing::warn!(repo = %self.repo.name, %oid, "a .gitattributes is larger than {ATTRIBUTES_MAX} bytes: ignored, its directory is served unconverted");
                }
                Ok(None)
            }
        }
    }

    /// The converted node key and size of each file of a directory being
    /// listed whose attributes change its bytes, by name. Only those
    /// files are fetched (in one request); nothing is when the repository
    /// has no `.gitattributes` asking for a conversion.
    pub(super) async fn checkout_sizes(
        &self,
        snap: &Snapshot,
        tree: ObjectId,
        raw: &[Item],
        pointers: &HashMap<ObjectId, lfs::Pointer>,
        sizes: &HashMap<ObjectId, u64>,
    ) -> Result<HashMap<Vec<u8>, (Arc<[u8]>, u64)>, SourceError> {
        let mut out = HashMap::new();
        if !self.checkout.enabled {
            return Ok(out);
        }
        // A directory whose path is not known (not UTF-8) is served as its blobs.
        let Some(path) = lock(&self.paths).get(&tree).cloned() else {
            return Ok(out);
        };
        let files = self.attribute_files(snap, &path, raw).await?;
        if files.is_empty() {
            return Ok(out);
        }
        // (The stack is not `Send`: it is built and dropped between awaits.)
        let wants = self.checkout_wants(&path, &files, raw, pointers, sizes);
        if wants.is_empty() {
            return Ok(out);
        }
        let oids: Vec<ObjectId> = wants
            .iter()
            .map(|w| w.1)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        self.objects.ensure(&oids).await?;
        for (name, oid, spec) in wants {
            if let Some(bytes) = self.converted(oid, &spec).await? {
                out.insert(name, (key(&oid, &spec).into(), bytes.len() as u64));
            }
        }
        Ok(out)
    }

    /// The files of a directory listing (at `path`) whose attributes ask
    /// for a conversion, with their specs.
    fn checkout_wants(
        &self,
        path: &str,
        files: &[(String, ObjectId, Arc<[u8]>)],
        raw: &[Item],
        pointers: &HashMap<ObjectId, lfs::Pointer>,
        sizes: &HashMap<ObjectId, u64>,
    ) -> Vec<(Vec<u8>, ObjectId, Spec)> {
        let stack = self.attribute_stack(files);
        let mut wants = Vec::new();
        for (name, kind, oid) in raw {
            if !matches!(kind, EntryKind::Blob | EntryKind::BlobExecutable)
                || pointers.contains_key(oid)
            {
                continue;
            }
            let Ok(n) = std::str::from_utf8(name) else {
                continue;
            };
            let full = if path.is_empty() {
                n.to_string()
            } else {
                format!("{path}/{n}")
            };
            let spec = stack.spec(&full);
            if !converts(&spec) {
                continue;
            }
            if sizes.get(oid).is_some_and(|s| *s > CONVERT_MAX) {
                if self.checkout.first(format!("{oid}:too-large")) {
                    tracing::warn!(repo = %self.repo.name, path = %full, "larger than {CONVERT_MAX} bytes: served as its blob, without the conversion its attributes ask for ({})", spec.0);
                }
                continue;
            }
            wants.push((name.clone(), *oid, spec));
        }
        wants
    }

    /// A blob converted as `spec` says: `None` when the conversion leaves
    /// it unchanged (or it is too large to convert).
    async fn converted(
        &self,
        oid: ObjectId,
        spec: &Spec,
    ) -> Result<Option<Arc<[u8]>>, SourceError> {
        let id = format!("{oid}:{}", spec.0);
        if let Some(b) = self.checkout.converted.get(&id) {
            return Ok(Some(b));
        }
        if lock(&self.checkout.unchanged).contains(&id) {
            return Ok(None);
        }
        let Some(blob) = self.small_blob(oid, CONVERT_MAX).await? else {
            return Ok(None);
        };
        let (bytes, note) = convert(&blob, spec);
        if let Some(note) = note
            && self.checkout.first(format!("{id}:note"))
        {
            tracing::warn!(repo = %self.repo.name, %oid, "{note}");
        }
        match bytes {
            Some(b) => {
                let b: Arc<[u8]> = b.into();
                self.checkout.converted.put(&id, b.clone());
                Ok(Some(b))
            }
            None => {
                let mut u = lock(&self.checkout.unchanged);
                if u.len() >= NOTES_MAX {
                    u.clear();
                }
                u.insert(id);
                Ok(None)
            }
        }
    }

    /// Opens a converted file; `None` when it turns out not to convert
    /// (the blob is then served).
    pub(super) fn open_converted(
        &self,
        oid: ObjectId,
        spec: &Spec,
        listed: u64,
    ) -> Result<Option<Arc<dyn FileReader>>, SourceError> {
        // A hit: converted already, or the blob at hand to convert.
        let hit = self
            .checkout
            .converted
            .contains(&format!("{oid}:{}", spec.0))
            || self.objects.have(&oid);
        let Some(bytes) = self.block_on(self.converted(oid, spec))? else {
            return Ok(None);
        };
        self.opens.record(hit);
        if bytes.len() as u64 != listed {
            tracing::warn!(repo = %self.repo.name, %oid, listed, real = bytes.len(), "a listed size disagrees with the converted contents; using the contents' size");
            lock(&self.dirs).clear();
        }
        Ok(Some(Arc::new(MemoryFile(bytes))))
    }
}

/// The `.gitattributes` in force in directory `dir` of `snap`, found by
/// walking down from the root (when its parent's are not at hand).
fn in_force_walk(snap: &Snapshot, dir: &str) -> Vec<(String, ObjectId)> {
    let mut files = Vec::new();
    let mut tree = Some(snap.root_tree);
    let parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for depth in 0..=parts.len() {
        let Some(data) = tree.and_then(|t| snap.trees.get(&t)) else {
            break;
        };
        tree = None;
        for e in gix_object::TreeRefIter::from_bytes(data, gix_hash::Kind::Sha1).flatten() {
            let name: &[u8] = e.filename.as_ref();
            if name == b".gitattributes"
                && matches!(e.mode.kind(), EntryKind::Blob | EntryKind::BlobExecutable)
            {
                files.push((parts[..depth].join("/"), e.oid.to_owned()));
            } else if depth < parts.len()
                && name == parts[depth].as_bytes()
                && e.mode.kind() == EntryKind::Tree
            {
                tree = Some(e.oid.to_owned());
            }
        }
    }
    files
}
