//! Git's pack entry headers and delta instructions, parsed from untrusted
//! bytes without a panic or an unbounded allocation: every offset and length
//! is checked, and a delta's output is produced piecewise so that a large
//! result never has to exist in memory at once.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::pack::PackError;

fn perr(msg: impl Into<String>) -> PackError {
    PackError(msg.into())
}

/// Where a delta's base is in the pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseRef {
    /// `OFS_DELTA`: the base starts at this pack offset.
    Offset(u64),
    /// `REF_DELTA`: the base has this id.
    Id(gix_hash::ObjectId),
}

/// A parsed pack entry header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    /// 1 commit, 2 tree, 3 blob, 4 tag, 6 ofs-delta, 7 ref-delta.
    pub type_id: u8,
    /// The inflated size of the entry's data (for a delta: of the delta).
    pub size: u64,
    pub base: Option<BaseRef>,
    /// Bytes the header takes in the pack.
    pub len: usize,
}

/// Parses the entry header at the start of `b` (the entry is at pack offset
/// `offset`). `Ok(None)`: more bytes are needed.
pub fn parse_entry_header(b: &[u8], offset: u64) -> Result<Option<EntryHeader>, PackError> {
    let Some(&first) = b.first() else {
        return Ok(None);
    };
    let type_id = (first >> 4) & 7;
    let mut size = u64::from(first & 15);
    let mut shift = 4u32;
    let mut pos = 1;
    let mut c = first;
    while c & 0x80 != 0 {
        let Some(&next) = b.get(pos) else {
            return Ok(None);
        };
        pos += 1;
        if shift > 57 {
            return Err(perr(format!(
                "entry at offset {offset}: size field too long"
            )));
        }
        size |= u64::from(next & 0x7f) << shift;
        shift += 7;
        c = next;
    }
    let base = match type_id {
        1..=4 => None,
        6 => {
            let Some(&c0) = b.get(pos) else {
                return Ok(None);
            };
            pos += 1;
            let mut c = c0;
            let mut dist = u64::from(c & 0x7f);
            while c & 0x80 != 0 {
                let Some(&next) = b.get(pos) else {
                    return Ok(None);
                };
                pos += 1;
                dist = dist
                    .checked_add(1)
                    .and_then(|d| d.checked_mul(128))
                    .map(|d| d | u64::from(next & 0x7f))
                    .ok_or_else(|| {
                        perr(format!("entry at offset {offset}: base offset overflows"))
                    })?;
                c = next;
            }
            if dist == 0 || dist > offset {
                return Err(perr(format!(
                    "entry at offset {offset}: delta base {dist} bytes back is outside the pack"
                )));
            }
            Some(BaseRef::Offset(offset - dist))
        }
        7 => {
            let Some(raw) = b.get(pos..pos + 20) else {
                return Ok(None);
            };
            pos += 20;
            let id = gix_hash::ObjectId::try_from(raw)
                .map_err(|_| perr(format!("entry at offset {offset}: bad base id")))?;
            Some(BaseRef::Id(id))
        }
        t => {
            return Err(perr(format!(
                "entry at offset {offset}: unknown object type {t}"
            )));
        }
    };
    Ok(Some(EntryHeader {
        type_id,
        size,
        base,
        len: pos,
    }))
}

/// Reads one size varint of a delta's header.
fn varint(d: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0u32;
    loop {
        let c = *d.get(*pos)?;
        *pos += 1;
        if shift > 63 {
            return None;
        }
        v |= u64::from(c & 0x7f).checked_shl(shift)?;
        shift += 7;
        if c & 0x80 == 0 {
            return Some(v);
        }
    }
}

/// The base and result sizes at the start of a delta, and where its
/// instructions start. `None` while too few bytes are known.
pub fn delta_sizes(d: &[u8]) -> Option<(u64, u64, usize)> {
    let mut pos = 0;
    let base = varint(d, &mut pos)?;
    let result = varint(d, &mut pos)?;
    Some((base, result, pos))
}

/// The bytes a delta copies from.
pub enum BaseData {
    Memory(Arc<[u8]>),
    /// A stored object (a verified cache file) of this length.
    File(std::fs::File, u64),
}

impl BaseData {
    pub fn len(&self) -> u64 {
        match self {
            BaseData::Memory(m) => m.len() as u64,
            BaseData::File(_, n) => *n,
        }
    }
}

/// Applies `delta` to `base`, handing the result to `emit` in pieces.
/// Returns the result's size (checked against the delta's header).
pub fn apply(
    delta: &[u8],
    base: &BaseData,
    emit: &mut dyn FnMut(&[u8]) -> Result<(), PackError>,
) -> Result<u64, PackError> {
    let (base_size, result_size, mut pos) =
        delta_sizes(delta).ok_or_else(|| perr("delta header is truncated"))?;
    if base_size != base.len() {
        return Err(perr(format!(
            "delta expects a base of {base_size} bytes, the base has {}",
            base.len()
        )));
    }
    let mut written = 0u64;
    let mut buf = Vec::new();
    while pos < delta.len() {
        let cmd = delta[pos];
        pos += 1;
        if cmd & 0x80 != 0 {
            let mut off = 0u64;
            let mut size = 0u64;
            for i in 0..4 {
                if cmd & (1 << i) != 0 {
                    let b = *delta
                        .get(pos)
                        .ok_or_else(|| perr("delta copy is truncated"))?;
                    pos += 1;
                    off |= u64::from(b) << (8 * i);
                }
            }
            for i in 0..3 {
                if cmd & (0x10 << i) != 0 {
                    let b = *delta
                        .get(pos)
                        .ok_or_else(|| perr("delta copy is truncated"))?;
                    pos += 1;
                    size |= u64::from(b) << (8 * i);
                }
            }
            if size == 0 {
                size = 0x10000;
            }
            let end = off
                .checked_add(size)
                .filter(|e| *e <= base.len())
                .ok_or_else(|| perr("delta copies from beyond its base"))?;
            match base {
                BaseData::Memory(m) => emit(&m[off as usize..end as usize])?,
                BaseData::File(f, _) => {
                    buf.resize(size as usize, 0);
                    f.read_exact_at(&mut buf, off)
                        .map_err(|e| perr(format!("reading a delta base from the cache: {e}")))?;
                    emit(&buf)?;
                }
            }
            written += size;
        } else if cmd != 0 {
            let n = usize::from(cmd);
            let data = delta
                .get(pos..pos + n)
                .ok_or_else(|| perr("delta insert is truncated"))?;
            pos += n;
            emit(data)?;
            written += n as u64;
        } else {
            return Err(perr("delta uses the reserved instruction 0"));
        }
        if written > result_size {
            return Err(perr("delta produces more than its stated size"));
        }
    }
    if written != result_size {
        return Err(perr(format!(
            "delta produced {written} bytes, its header says {result_size}"
        )));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(delta: &[u8], base: &[u8]) -> Result<Vec<u8>, PackError> {
        let mut out = Vec::new();
        apply(delta, &BaseData::Memory(base.into()), &mut |d| {
            out.extend_from_slice(d);
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn copy_and_insert() {
        // base 10 bytes, result 7: copy 3 at offset 2, insert "xyzw".
        let delta = [10, 7, 0x80 | 0x01 | 0x10, 2, 3, 4, b'x', b'y', b'z', b'w'];
        assert_eq!(run(&delta, b"0123456789").unwrap(), b"234xyzw");
        // Wrong base size, copy beyond base, reserved op, short result.
        assert!(run(&delta, b"012345678").is_err());
        assert!(run(&[10, 3, 0x80 | 0x01 | 0x10, 9, 3], b"0123456789").is_err());
        assert!(run(&[10, 1, 0], b"0123456789").is_err());
        assert!(run(&[10, 5, 1, b'a'], b"0123456789").is_err());
        assert!(run(&[10, 1, 5, b'a'], b"0123456789").is_err());
    }

    #[test]
    fn headers() {
        // blob of 100 bytes: type 3, size 100 = 0b110_0100 -> 0x80|0x30|4, 6
        let h = parse_entry_header(&[0xb4, 0x06], 12).unwrap().unwrap();
        assert_eq!((h.type_id, h.size, h.len), (3, 100, 2));
        assert_eq!(parse_entry_header(&[0xb4], 12).unwrap(), None);
        // ofs-delta 1 byte back from offset 12 is in the pack; 13 back is not.
        let h = parse_entry_header(&[0x65, 0x01], 12).unwrap().unwrap();
        assert_eq!(h.base, Some(BaseRef::Offset(11)));
        assert!(parse_entry_header(&[0x65, 0x0d], 12).is_err());
        assert!(parse_entry_header(&[0x55], 12).is_err());
        assert!(parse_entry_header(&[0xff; 16], 12).is_err());
        assert_eq!(parse_entry_header(&[0x75, 1, 2], 12).unwrap(), None);
    }
}
