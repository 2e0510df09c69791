//! A streaming pack decoder. Bytes are pushed in as they arrive from the
//! network; each object is inflated, delta-resolved and hashed on the fly and
//! handed to an [`ObjectSink`], which decides per object whether it wants the
//! bytes in memory, streamed in pieces (to a cache file), or whether to stop
//! reading the pack there (a size probe only needs the entry's header).
//!
//! Nothing touches the disk here and memory is bounded by [`Limits`]: small
//! blobs are kept as possible delta bases up to `max_retained` bytes in
//! all, a delta's instructions up to `max_delta`, and no allocation follows
//! a size from the network beyond `max_object`. Trees and commits a sink
//! takes in memory are kept as bases too: the sink bounds them (it holds
//! them anyway, so keeping them costs nothing more). The pack's trailing SHA-1
//! is checked, and every object's id is computed from its contents.

use std::collections::HashMap;
use std::sync::Arc;

use gix_hash::ObjectId;
use gix_object::Kind;

use super::delta::{self, BaseData, BaseRef};

#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot decode the pack from the server: {0}")]
pub struct PackError(pub String);

fn perr(msg: impl Into<String>) -> PackError {
    PackError(msg.into())
}

/// Memory bounds of one decoder.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest object (declared size) the decoder accepts.
    pub max_object: u64,
    /// Largest delta it buffers.
    pub max_delta: u64,
    /// Objects up to this size held in memory are kept as delta bases...
    pub retain_max: u64,
    /// ...up to this many bytes in all.
    pub max_retained: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_object: 1 << 40,
            max_delta: 64 << 20,
            retain_max: 1 << 20,
            max_retained: 64 << 20,
        }
    }
}

/// What a sink wants done with an object that starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Collect it in memory; `end` gets the bytes.
    Memory,
    /// Hand it to `chunk` piece by piece; `end` gets no bytes.
    Stream,
    /// Stop reading the pack here.
    Stop,
}

/// Receives a pack's objects.
pub trait ObjectSink {
    /// An object starts: its kind and exact size (for a delta, the size of
    /// the object it produces).
    fn begin(&mut self, kind: Kind, size: u64) -> Result<Take, PackError>;
    /// A piece of a streamed object.
    fn chunk(&mut self, data: &[u8]) -> Result<(), PackError>;
    /// The object is complete and `oid` is the id computed from its bytes.
    fn end(&mut self, oid: ObjectId, kind: Kind, data: Option<&Arc<[u8]>>)
    -> Result<(), PackError>;
    /// Opens a streamed object again, to serve as a delta base.
    fn reopen(&mut self, _oid: &ObjectId) -> Option<std::fs::File> {
        None
    }
    /// Called as bytes arrive (whatever they hold): a sink can tell those
    /// waiting on it that the fetch is alive.
    fn progress(&mut self) {}
}

/// Where decoding stands after a `feed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    More,
    /// The sink asked to stop.
    Stopped,
    /// The pack and its checksum are complete.
    Done,
}

enum Phase {
    Header,
    EntryHeader,
    Data(Box<Entry>),
    Trailer,
    Done,
    Stopped,
}

struct Entry {
    offset: u64,
    declared: u64,
    inflated: u64,
    body: Body,
}

enum Body {
    Object {
        kind: Kind,
        take: Take,
        hasher: gix_hash::Hasher,
        mem: Vec<u8>,
    },
    Delta {
        base: (Kind, ObjectId),
        base_offset: u64,
        buf: Vec<u8>,
        take: Option<Take>,
    },
}

/// A base kept for later deltas.
enum Kept {
    Memory(Kind, ObjectId, Arc<[u8]>),
    Stored(Kind, ObjectId),
}

/// The decoder; see the module documentation.
pub struct PackDecoder {
    limits: Limits,
    phase: Phase,
    pending: Vec<u8>,
    offset: u64,
    remaining: u32,
    pack_hash: gix_hash::Hasher,
    inflate: gix_zlib::Inflate,
    out: Vec<u8>,
    kept: HashMap<u64, Kept>,
    by_id: HashMap<ObjectId, u64>,
    retained: u64,
    objects: u32,
}

fn kind_of(type_id: u8) -> Kind {
    match type_id {
        1 => Kind::Commit,
        2 => Kind::Tree,
        3 => Kind::Blob,
        _ => Kind::Tag,
    }
}

fn sha1() -> gix_hash::Hasher {
    gix_hash::hasher(gix_hash::Kind::Sha1)
}

fn finalize(h: gix_hash::Hasher) -> Result<ObjectId, PackError> {
    h.try_finalize().map_err(|e| perr(format!("{e}")))
}

impl PackDecoder {
    pub fn new(limits: Limits) -> PackDecoder {
        PackDecoder {
            limits,
            phase: Phase::Header,
            pending: Vec::new(),
            offset: 0,
            remaining: 0,
            pack_hash: sha1(),
            inflate: gix_zlib::Inflate::default(),
            out: vec![0; 64 * 1024],
            kept: HashMap::new(),
            by_id: HashMap::new(),
            retained: 0,
            objects: 0,
        }
    }

    /// How many objects were completed.
    pub fn objects(&self) -> u32 {
        self.objects
    }

    /// Whether the pack ended properly (after `feed` returned `Done`).
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Consumes pack bytes.
    pub fn feed(&mut self, mut input: &[u8], sink: &mut dyn ObjectSink) -> Result<Flow, PackError> {
        loop {
            match &mut self.phase {
                Phase::Stopped => return Ok(Flow::Stopped),
                Phase::Done => {
                    if input.is_empty() {
                        return Ok(Flow::Done);
                    }
                    return Err(perr("bytes after the end of the pack"));
                }
                _ if input.is_empty() => return Ok(Flow::More),
                Phase::Header | Phase::Trailer => {
                    let want = if matches!(self.phase, Phase::Header) {
                        12
                    } else {
                        20
                    };
                    let n = (want - self.pending.len()).min(input.len());
                    self.pending.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.pending.len() < want {
                        continue;
                    }
                    if matches!(self.phase, Phase::Header) {
                        self.header()?;
                    } else {
                        let h = std::mem::replace(&mut self.pack_hash, sha1());
                        let sum = finalize(h)?;
                        if sum.as_bytes() != &self.pending[..] {
                            return Err(perr("the pack's checksum does not match its contents"));
                        }
                        self.pending.clear();
                        self.phase = Phase::Done;
                    }
                }
                Phase::EntryHeader => {
                    let before = self.pending.len();
                    let n = (32 - before).min(input.len());
                    self.pending.extend_from_slice(&input[..n]);
                    let Some(h) = delta::parse_entry_header(&self.pending, self.offset)? else {
                        if self.pending.len() >= 32 {
                            return Err(perr("malformed entry header"));
                        }
                        input = &input[n..];
                        continue;
                    };
                    let used = h.len - before;
                    self.pack_hash.update(&self.pending[..h.len]);
                    input = &input[used..];
                    self.pending.clear();
                    let offset = self.offset;
                    self.offset += h.len as u64;
                    if self.start_entry(h, offset, sink)? == Flow::Stopped {
                        self.phase = Phase::Stopped;
                        return Ok(Flow::Stopped);
                    }
                }
                Phase::Data(_) => {
                    let used = self.inflate_some(input, sink)?;
                    input = &input[used..];
                    if matches!(self.phase, Phase::Stopped) {
                        return Ok(Flow::Stopped);
                    }
                }
            }
        }
    }

    fn header(&mut self) -> Result<(), PackError> {
        let p = &self.pending;
        if &p[..4] != b"PACK" {
            return Err(perr("the data is not a pack (no PACK signature)"));
        }
        let version = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        if version != 2 && version != 3 {
            return Err(perr(format!("unsupported pack version {version}")));
        }
        self.remaining = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
        self.pack_hash.update(p);
        self.offset = 12;
        self.pending.clear();
        self.phase = if self.remaining == 0 {
            Phase::Trailer
        } else {
            Phase::EntryHeader
        };
        Ok(())
    }

    fn start_entry(
        &mut self,
        h: delta::EntryHeader,
        offset: u64,
        sink: &mut dyn ObjectSink,
    ) -> Result<Flow, PackError> {
        self.inflate.reset();
        let body = match h.base {
            None => {
                if h.size > self.limits.max_object {
                    return Err(perr(format!(
                        "an object of {} bytes is larger than the limit of {} bytes",
                        h.size, self.limits.max_object
                    )));
                }
                let kind = kind_of(h.type_id);
                let take = sink.begin(kind, h.size)?;
                if take == Take::Stop {
                    return Ok(Flow::Stopped);
                }
                let mut hasher = sha1();
                hasher.update(&gix_object::encode::loose_header(kind, h.size));
                let mem = if take == Take::Memory {
                    Vec::with_capacity(h.size.min(1 << 20) as usize)
                } else {
                    Vec::new()
                };
                Body::Object {
                    kind,
                    take,
                    hasher,
                    mem,
                }
            }
            Some(b) => {
                if h.size > self.limits.max_delta {
                    return Err(perr(format!(
                        "a delta of {} bytes is larger than the limit of {} bytes",
                        h.size, self.limits.max_delta
                    )));
                }
                let base_offset = match b {
                    BaseRef::Offset(o) => o,
                    BaseRef::Id(id) => *self.by_id.get(&id).ok_or_else(|| {
                        perr(format!("a delta's base {id} is not in the pack before it"))
                    })?,
                };
                let base = match self.kept.get(&base_offset) {
                    Some(Kept::Memory(k, id, _)) | Some(Kept::Stored(k, id)) => (*k, *id),
                    None => {
                        return Err(perr(format!(
                            "a delta's base at offset {base_offset} is not available"
                        )));
                    }
                };
                Body::Delta {
                    base,
                    base_offset,
                    buf: Vec::with_capacity(h.size.min(1 << 20) as usize),
                    take: None,
                }
            }
        };
        self.phase = Phase::Data(Box::new(Entry {
            offset,
            declared: h.size,
            inflated: 0,
            body,
        }));
        Ok(Flow::More)
    }

    /// Inflates from `input`; returns how many bytes it consumed.
    fn inflate_some(
        &mut self,
        input: &[u8],
        sink: &mut dyn ObjectSink,
    ) -> Result<usize, PackError> {
        let Phase::Data(entry) = &mut self.phase else {
            return Ok(0);
        };
        let (status, used, written) = self
            .inflate
            .prefix(input, &mut self.out)
            .map_err(|e| perr(format!("entry at offset {}: {e}", entry.offset)))?;
        self.pack_hash.update(&input[..used]);
        self.offset += used as u64;
        let out = &self.out[..written];
        entry.inflated += written as u64;
        if entry.inflated > entry.declared {
            return Err(perr(format!(
                "entry at offset {} inflates to more than its stated {} bytes",
                entry.offset, entry.declared
            )));
        }
        match &mut entry.body {
            Body::Object {
                take, hasher, mem, ..
            } => {
                hasher.update(out);
                match take {
                    Take::Memory => mem.extend_from_slice(out),
                    _ => sink.chunk(out)?,
                }
            }
            Body::Delta {
                base, buf, take, ..
            } => {
                buf.extend_from_slice(out);
                if take.is_none() {
                    if let Some((_, size, _)) = delta::delta_sizes(buf) {
                        if size > self.limits.max_object {
                            return Err(perr(format!(
                                "an object of {size} bytes is larger than the limit"
                            )));
                        }
                        let t = sink.begin(base.0, size)?;
                        if t == Take::Stop {
                            self.phase = Phase::Stopped;
                            return Ok(used);
                        }
                        *take = Some(t);
                    }
                }
            }
        }
        if status == gix_zlib::Status::StreamEnd {
            if entry.inflated != entry.declared {
                return Err(perr(format!(
                    "entry at offset {} inflates to {} bytes, its header says {}",
                    entry.offset, entry.inflated, entry.declared
                )));
            }
            let Phase::Data(entry) = std::mem::replace(&mut self.phase, Phase::EntryHeader) else {
                return Ok(used);
            };
            self.finish_entry(*entry, sink)?;
            self.objects += 1;
            self.remaining -= 1;
            if self.remaining == 0 {
                self.phase = Phase::Trailer;
            }
        } else if used == 0 && written == 0 && !input.is_empty() {
            return Err(perr("the compressed data of an entry is malformed"));
        }
        Ok(used)
    }

    fn finish_entry(&mut self, entry: Entry, sink: &mut dyn ObjectSink) -> Result<(), PackError> {
        match entry.body {
            Body::Object {
                kind,
                take,
                hasher,
                mem,
            } => {
                let oid = finalize(hasher)?;
                let data = (take == Take::Memory).then(|| Arc::<[u8]>::from(mem));
                self.keep(entry.offset, kind, oid, entry.declared, data.as_ref());
                sink.end(oid, kind, data.as_ref())
            }
            Body::Delta {
                base,
                base_offset,
                buf,
                take,
            } => {
                let (_, size, _) = delta::delta_sizes(&buf)
                    .ok_or_else(|| perr("a delta's header is truncated"))?;
                let take = match take {
                    Some(t) => t,
                    None => sink.begin(base.0, size)?,
                };
                if take == Take::Stop {
                    self.phase = Phase::Stopped;
                    return Ok(());
                }
                let base_data = match self.kept.get(&base_offset) {
                    Some(Kept::Memory(_, _, m)) => BaseData::Memory(m.clone()),
                    Some(Kept::Stored(_, id)) => {
                        let f = sink.reopen(id).ok_or_else(|| {
                            perr(format!("a delta's base {id} cannot be read back"))
                        })?;
                        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                        BaseData::File(f, len)
                    }
                    None => return Err(perr("a delta's base is not available")),
                };
                let mut hasher = sha1();
                hasher.update(&gix_object::encode::loose_header(base.0, size));
                let mut mem = Vec::new();
                if take == Take::Memory {
                    // Grown as the result is produced: a stated size is no
                    // reason to allocate.
                    mem.reserve(size.min(1 << 20) as usize);
                }
                delta::apply(&buf, &base_data, &mut |piece| {
                    hasher.update(piece);
                    match take {
                        Take::Memory => {
                            mem.extend_from_slice(piece);
                            Ok(())
                        }
                        _ => sink.chunk(piece),
                    }
                })?;
                let oid = finalize(hasher)?;
                let data = (take == Take::Memory).then(|| Arc::<[u8]>::from(mem));
                self.keep(entry.offset, base.0, oid, size, data.as_ref());
                sink.end(oid, base.0, data.as_ref())
            }
        }
    }

    fn keep(
        &mut self,
        offset: u64,
        kind: Kind,
        oid: ObjectId,
        size: u64,
        data: Option<&Arc<[u8]>>,
    ) {
        let kept = match data {
            // Trees and commits: the sink that took them bounds them.
            Some(d) if kind != Kind::Blob => Kept::Memory(kind, oid, d.clone()),
            Some(d)
                if size <= self.limits.retain_max
                    && self.retained + size <= self.limits.max_retained =>
            {
                self.retained += size;
                Kept::Memory(kind, oid, d.clone())
            }
            // Too large to keep here: the sink may be able to read it back.
            Some(_) | None => Kept::Stored(kind, oid),
        };
        self.kept.insert(offset, kept);
        self.by_id.insert(oid, offset);
    }
}

#[cfg(test)]
#[path = "pack_tests.rs"]
mod tests;
