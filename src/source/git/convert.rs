//! The bytes `git checkout` writes on Linux for one blob and the spec its
//! `.gitattributes` give it ([`attributes`]), in git's order (`ident`,
//! then end-of-line conversion, then `working-tree-encoding`; LFS files
//! are served from their objects as before, which is what the smudge
//! filter that runs last does). End-of-line conversion is gitoxide's own
//! (`gix-filter`, with git's defaults: no `core.autocrlf`, native LF line
//! ends, so `text` and `text=auto` alone change nothing). `ident` is done
//! here as git's `ident_to_worktree` does it (gitoxide's differs: no space
//! before the closing `$`, old expansions kept), and so are encodings as
//! git with glibc's iconv writes them (`UTF-16LE-BOM` and `UTF-16BE-BOM`
//! by git itself, `UTF-16`/`UTF-32` with a little-endian BOM, an empty
//! file left empty, content that is not UTF-8 or an unknown encoding left
//! as it is with a warning, as git warns; other encodings through
//! `encoding_rs` as gitoxide does, since encoding_rs cannot write UTF-16).
//!
//! [`attributes`]: super::attributes

use bstr::BStr;
use gix_attributes::Search;
use gix_attributes::search::{MetadataCollection, Outcome};
use gix_hash::ObjectId;

use super::attributes::Spec;

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
