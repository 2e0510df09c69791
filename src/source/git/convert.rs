//! The bytes `git checkout` writes on Linux: a blob converted as its
//! `.gitattributes` say ([`attributes`]), in git's order (`ident`, then
//! end-of-line conversion, then `working-tree-encoding`; LFS files are
//! served from their pointers as before, which is what the smudge filter
//! that runs last does). `ident` and `text`/`eol`/`crlf` are gitoxide's
//! own (`gix-filter`, with git's defaults: no `core.autocrlf`, native LF
//! line ends, so `text` and `text=auto` alone change nothing); encodings
//! are done here as git with glibc's iconv does them (`UTF-16LE-BOM`
//! and `UTF-16BE-BOM` by git itself, `UTF-16`/`UTF-32` with a
//! little-endian BOM, an empty file left empty, content that is not UTF-8
//! or an unknown encoding left as it is with a warning, as git warns),
//! other encodings through `encoding_rs` as gitoxide does.
//!
//! Sizes: no host reports the size of converted contents, so a file
//! whose attributes can change it is fetched and converted when its
//! directory is listed with sizes, and listed with the converted length
//! under a node key `conv:<blob id>:<spec>`; files without such
//! attributes are listed as before, with no fetch. The blob id stays
//! their `user.repofs.oid`.
//!
//! Contents are converted on the fly from the verified blob (the object
//! cache checks every cached blob against its id), never stored converted:
//! the bytes served are always a pure function of a verified blob and a
//! spec, so there is no second copy on disk to verify or to go stale. The
//! results are kept in a bounded memory store (a re-open or a re-listing
//! costs no conversion). A blob over [`CONVERT_MAX`] is not held in memory
//! to convert: it is served as its blob, with a warning.
//!
//! [`attributes`]: super::attributes

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bstr::BStr;
use gix_attributes::Search;
use gix_attributes::search::{MetadataCollection, Outcome};
use gix_hash::ObjectId;
use gix_object::tree::EntryKind;

use super::attributes::{ATTRIBUTES_MAX, Spec, Stack};
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

/// The node key of a converted file.
pub fn key(oid: &ObjectId, spec: &Spec) -> Vec<u8> {
    format!("conv:{oid}:{}", spec.0).into_bytes()
}

/// The blob id and spec of a converted file's node key.
pub fn parse_key(key: &[u8]) -> Option<(ObjectId, Spec)> {
    let s = std::str::from_utf8(key).ok()?.strip_prefix("conv:")?;
    let (oid, spec) = s.split_once(':')?;
    Some((
        ObjectId::from_hex(oid.as_bytes()).ok()?,
        Spec(spec.to_string()),
    ))
}

/// The `working-tree-encoding` a spec asks for, unless it is UTF-8.
fn encoding(spec: &Spec) -> Option<&str> {
    let e = spec.get("working-tree-encoding")?;
    let utf8 = e.eq_ignore_ascii_case("utf-8") || e.eq_ignore_ascii_case("utf8");
    (!e.is_empty() && e != "-" && !utf8).then_some(e)
}

/// Whether a spec can change a blob's bytes on checkout.
pub fn converts(spec: &Spec) -> bool {
    if spec.0.is_empty() {
        return false;
    }
    spec.get("ident") == Some("")
        || encoding(spec).is_some()
        || matches!(convert(b"a\n", spec), (Some(_), _))
}

/// A blob as checkout writes it: `(None, _)` when unchanged, and a note
/// when git would warn (the conversion it could not make is left out).
pub fn convert(blob: &[u8], spec: &Spec) -> (Option<Vec<u8>>, Option<String>) {
    let mut out = if spec.get("ident") == Some("") {
        ident(blob)
    } else {
        None
    };
    let rest = spec.without("working-tree-encoding").without("ident");
    if !rest.0.is_empty() {
        match filter(out.as_deref().unwrap_or(blob), &rest) {
            Ok(o) => out = o,
            Err(e) => return (None, Some(e)),
        }
    }
    if let Some(name) = encoding(spec) {
        match encode(out.as_deref().unwrap_or(blob), name) {
            Ok(Some(e)) => out = Some(e),
            Ok(None) => {}
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

/// `$Id$` expanded to `$Id: <blob id> $`, and an `$Id: ...$` that git
/// wrote into a blob replaced, exactly as git's `ident_to_worktree` does
/// (gitoxide's `ident::apply` leaves out the space before the closing
/// `$` and keeps old expansions).
fn ident(blob: &[u8]) -> Option<Vec<u8>> {
    use bstr::ByteSlice;
    if !blob.contains_str("$Id") {
        return None;
    }
    let id = gix_object::compute_hash(gix_hash::Kind::Sha1, gix_object::Kind::Blob, blob).ok()?;
    let mut out = Vec::with_capacity(blob.len() + 64);
    let mut src = blob;
    let mut changed = false;
    while let Some(dollar) = src.find_byte(b'$') {
        out.extend_from_slice(&src[..=dollar]);
        src = &src[dollar + 1..];
        if src.len() < 3 || !src.starts_with(b"Id") {
            continue;
        }
        if src[2] == b'$' {
            src = &src[3..];
        } else if src[2] == b':' {
            let Some(end) = src[3..].find_byte(b'$').map(|e| e + 3) else {
                break;
            };
            if src[3..end].contains(&b'\n') {
                continue;
            }
            // A space other than just before the `$`: another system's id.
            if end > 4 && src[4..end].find_byte(b' ').is_some_and(|s| s + 4 < end - 1) {
                continue;
            }
            src = &src[end + 1..];
        } else {
            continue;
        }
        out.extend_from_slice(format!("Id: {id} $").as_bytes());
        changed = true;
    }
    out.extend_from_slice(src);
    changed.then_some(out)
}

/// End-of-line conversion, by gitoxide's pipeline.
fn filter(blob: &[u8], spec: &Spec) -> Result<Option<Vec<u8>>, String> {
    let mut collection = MetadataCollection::default();
    let mut search = Search::default();
    search
        .add_patterns_buffer(
            format!("* {}\n", spec.0).as_bytes(),
            "spec".into(),
            None,
            &mut collection,
            false,
        )
        .map_err(|e| format!("attributes `{}`: {e}", spec.0))?;
    let mut pipeline = gix_filter::Pipeline::new(
        Default::default(),
        gix_hash::Kind::Sha1,
        gix_filter::pipeline::Options::default(),
    );
    let mut attributes = |path: &BStr, out: &mut Outcome| {
        out.initialize(&collection);
        search.pattern_matching_relative_path(
            path,
            gix_glob::pattern::Case::Sensitive,
            Some(false),
            out,
        );
    };
    let options = gix_filter::pipeline::convert::to_worktree::Options {
        can_delay: gix_filter::driver::apply::Delay::Forbid,
        unknown_encoding: gix_filter::pipeline::convert::to_worktree::UnknownEncoding::Ignore,
    };
    let path: &BStr = "file".into();
    match pipeline.convert_to_worktree(blob, path, &mut attributes, options) {
        Ok(gix_filter::pipeline::convert::ToWorktreeOutcome::Buffer(b)) => Ok(Some(b.to_vec())),
        Ok(_) => Ok(None),
        Err(e) => Err(format!("cannot convert ({}): {e}", spec.0)),
    }
}

/// UTF-8 re-encoded as `name` asks, as git does on Linux.
fn encode(src: &[u8], name: &str) -> Result<Option<Vec<u8>>, String> {
    // git leaves an empty file empty (no BOM).
    if src.is_empty() {
        return Ok(None);
    }
    let fail = |why: &str| format!("failed to encode from UTF-8 to {name}: {why}");
    let text = std::str::from_utf8(src).map_err(|_| fail("the blob is not UTF-8"))?;
    // (width, big endian, BOM)
    let unicode = match name.to_ascii_uppercase().as_str() {
        // Handled by git itself (utf8.c), whatever iconv does.
        "UTF-16LE-BOM" => Some((2, false, true)),
        "UTF-16BE-BOM" => Some((2, true, true)),
        // glibc's iconv: a BOM and the machine's (little-endian) order.
        "UTF-16" | "UTF16" => Some((2, false, true)),
        "UTF-32" | "UTF32" => Some((4, false, true)),
        "UTF-16LE" | "UTF16LE" => Some((2, false, false)),
        "UTF-16BE" | "UTF16BE" => Some((2, true, false)),
        "UTF-32LE" | "UTF32LE" => Some((4, false, false)),
        "UTF-32BE" | "UTF32BE" => Some((4, true, false)),
        _ => None,
    };
    let Some((width, big, bom)) = unicode else {
        let enc = gix_filter::encoding::Encoding::for_label(name.as_bytes())
            .filter(|e| e.output_encoding() == *e)
            .ok_or_else(|| fail("unknown encoding"))?;
        if enc == gix_filter::encoding::UTF_8 {
            return Ok(None);
        }
        let mut buf = Vec::new();
        gix_filter::worktree::encode_to_worktree(src, enc, &mut buf)
            .map_err(|e| fail(&e.to_string()))?;
        return Ok(Some(buf));
    };
    let mut out = Vec::with_capacity(src.len() * width + 4);
    let mut push = |unit: u32, w: usize| {
        let b = unit.to_le_bytes();
        let b = &b[..w];
        if big {
            out.extend(b.iter().rev());
        } else {
            out.extend_from_slice(b);
        }
    };
    if bom {
        push(0xFEFF, width);
    }
    for c in text.chars() {
        if width == 4 {
            push(c as u32, 4);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                push(u32::from(*u), 2);
            }
        }
    }
    Ok(Some(out))
}

impl GitSource {
    /// The `.gitattributes` in force in directory `path` of `snap`, root
    /// first, with the directory holding each. One that cannot be fetched
    /// fails the call (serving the blobs would show other bytes); one too
    /// large to use is logged and left out.
    async fn attribute_files(
        &self,
        snap: &Snapshot,
        path: &str,
    ) -> Result<Vec<(String, ObjectId, Arc<[u8]>)>, SourceError> {
        let mut files = Vec::new();
        let mut tree = Some(snap.root_tree);
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for depth in 0..=parts.len() {
            let Some(data) = tree.and_then(|t| snap.trees.get(&t)) else {
                break;
            };
            let mut next = None;
            let mut file = None;
            for e in gix_object::TreeRefIter::from_bytes(data, gix_hash::Kind::Sha1).flatten() {
                let name: &[u8] = e.filename.as_ref();
                if name == b".gitattributes"
                    && matches!(e.mode.kind(), EntryKind::Blob | EntryKind::BlobExecutable)
                {
                    file = Some(e.oid.to_owned());
                } else if depth < parts.len()
                    && name == parts[depth].as_bytes()
                    && e.mode.kind() == EntryKind::Tree
                {
                    next = Some(e.oid.to_owned());
                }
            }
            if let Some(oid) = file
                && let Some(bytes) = self.attributes_file(oid).await?
            {
                files.push((parts[..depth].join("/"), oid, bytes));
            }
            tree = next;
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
        let files = self.attribute_files(snap, &path).await?;
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
        self.opens.record(
            self.checkout
                .converted
                .contains(&format!("{oid}:{}", spec.0)),
        );
        let Some(bytes) = self.block_on(self.converted(oid, spec))? else {
            return Ok(None);
        };
        if bytes.len() as u64 != listed {
            tracing::warn!(repo = %self.repo.name, %oid, listed, real = bytes.len(), "a listed size disagrees with the converted contents; using the contents' size");
            lock(&self.dirs).clear();
        }
        Ok(Some(Arc::new(MemoryFile(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Spec {
        Spec(s.into())
    }

    fn conv(blob: &[u8], s: &str) -> Vec<u8> {
        convert(blob, &spec(s)).0.unwrap_or_else(|| blob.to_vec())
    }

    #[test]
    fn end_of_lines_as_git_checkout_writes_them() {
        assert_eq!(conv(b"a\nb\r\nc\n", "text eol=crlf"), b"a\r\nb\r\nc\r\n");
        assert_eq!(conv(b"a\nb\n", "eol=crlf"), b"a\r\nb\r\n");
        assert_eq!(conv(b"a\nb\n", "crlf"), b"a\nb\n");
        // eol=lf on CRLF content: checkout leaves it.
        assert_eq!(conv(b"a\r\nb\r\n", "text eol=lf"), b"a\r\nb\r\n");
        // text=auto: text only, and not when CRLF is already there.
        assert_eq!(conv(b"a\nb\n", "text=auto eol=crlf"), b"a\r\nb\r\n");
        assert_eq!(conv(b"a\nb\r\n", "text=auto eol=crlf"), b"a\nb\r\n");
        assert_eq!(conv(b"a\n\0b\n", "text=auto eol=crlf"), b"a\n\0b\n");
        assert_eq!(conv(b"a\nb\n", "text=auto"), b"a\nb\n");
        assert_eq!(conv(b"a\nb\n", "-text eol=crlf"), b"a\nb\n");
        assert_eq!(conv(b"a\nb\n", "text"), b"a\nb\n");
        assert!(!converts(&spec("text")));
        assert!(!converts(&spec("text=auto")));
        assert!(!converts(&spec("-text eol=crlf")));
        assert!(!converts(&spec("text eol=lf")));
        assert!(converts(&spec("text eol=crlf")));
        assert!(converts(&spec("ident")));
        assert!(!converts(&spec("-ident")));
        assert!(converts(&spec("working-tree-encoding=UTF-16LE-BOM")));
        assert!(!converts(&spec("working-tree-encoding=utf-8")));
    }

    #[test]
    fn ident_is_the_blob_id() {
        let blob = b"x $Id$ y\n";
        let id =
            gix_object::compute_hash(gix_hash::Kind::Sha1, gix_object::Kind::Blob, blob).unwrap();
        assert_eq!(
            conv(blob, "ident"),
            format!("x $Id: {id} $ y\n").into_bytes()
        );
        // Expansions in the blob are replaced, other systems' kept: as git
        // 2.47 writes it (checked with `git clone`).
        let blob = b"a $Id: old $ b $Id: cvs 1.2 x $ c $Id\n$ d $Id$";
        assert_eq!(
            conv(blob, "ident"),
            b"a $Id: 2311f7c091e6ba1850c0d53ac639bd2f9e0523ae $ b $Id: cvs 1.2 x $ c $Id\n$ d $Id: 2311f7c091e6ba1850c0d53ac639bd2f9e0523ae $"
        );
        assert_eq!(conv(b"no ids $Id", "ident"), b"no ids $Id");
    }

    #[test]
    fn encodings_as_git_on_linux_writes_them() {
        // Checked against `git clone` (git 2.47, glibc).
        let blob = "h\u{e9}\nx\n".as_bytes();
        let hex = |s: &str| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect::<Vec<u8>>()
        };
        for (enc, want) in [
            ("UTF-16LE-BOM", "fffe6800e9000a0078000a00"),
            ("UTF-16", "fffe6800e9000a0078000a00"),
            ("UTF-16LE", "6800e9000a0078000a00"),
            ("UTF-16BE", "006800e9000a0078000a"),
            ("UTF-32", "fffe000068000000e90000000a000000780000000a000000"),
            ("UTF-16BE-BOM", "feff006800e9000a0078000a"),
            ("ISO-8859-1", "68e90a780a"),
            ("UTF-32LE-BOM", "68c3a90a780a"),
        ] {
            assert_eq!(
                conv(blob, &format!("working-tree-encoding={enc}")),
                hex(want),
                "{enc}"
            );
        }
        assert_eq!(
            conv(blob, "text eol=crlf working-tree-encoding=utf-16le-bom"),
            hex("fffe6800e9000d000a0078000d000a00")
        );
        assert_eq!(conv(b"", "working-tree-encoding=UTF-16LE-BOM"), b"");
        let (out, note) = convert(b"bad\xff\n", &spec("working-tree-encoding=UTF-16LE-BOM"));
        assert!(out.is_none() && note.is_some());
    }

    #[test]
    fn keys_round_trip() {
        let oid = ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").unwrap();
        let s = spec("text eol=crlf working-tree-encoding=UTF-16LE-BOM");
        assert_eq!(parse_key(&key(&oid, &s)), Some((oid, s)));
        assert_eq!(parse_key(oid.as_bytes()), None);
    }
}
