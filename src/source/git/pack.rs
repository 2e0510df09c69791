//! Decoding a received pack with `gix-pack`: the pack is indexed (which
//! resolves deltas and computes every object's id from its contents, so each
//! object is verified), then each object is handed to a callback.

use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use gix_hash::ObjectId;
use gix_object::Kind;

#[derive(Debug, thiserror::Error)]
#[error("cannot decode the pack from the server: {0}")]
pub struct PackError(pub String);

/// Indexes the pack at `pack_path` (scratch files go to `scratch_dir`) and
/// calls `each` with every object it holds.
pub fn for_each_object(
    pack_path: &Path,
    scratch_dir: &Path,
    each: &mut dyn FnMut(ObjectId, Kind, &[u8]) -> Result<(), PackError>,
) -> Result<usize, PackError> {
    let file = std::fs::File::open(pack_path)
        .map_err(|e| PackError(format!("cannot open {}: {e}", pack_path.display())))?;
    if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        return Ok(0);
    }
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let interrupt = AtomicBool::new(false);
    let outcome = gix_pack::Bundle::write_to_directory(
        &mut reader,
        Some(scratch_dir),
        &mut gix_utils::progress::Discard,
        &interrupt,
        None::<gix_object::find::Never>,
        gix_hash::Kind::Sha1,
        gix_pack::bundle::write::Options {
            thread_limit: Some(2),
            ..Default::default()
        },
    )
    .map_err(|e| PackError(format!("{e:?}")))?;
    let index_path = outcome
        .index_path
        .ok_or_else(|| PackError("no index was written".into()))?;
    let result = (|| {
        let bundle = gix_pack::Bundle::at(&index_path, gix_hash::Kind::Sha1)
            .map_err(|e| PackError(format!("{e:?}")))?;
        let mut buf = Vec::new();
        let mut inflate = gix_zlib::Inflate::default();
        let mut cache = gix_pack::cache::Never;
        let ids: Vec<ObjectId> = bundle.index.iter().map(|e| e.oid).collect();
        for oid in &ids {
            let (data, _) = bundle
                .find(oid, &mut buf, &mut inflate, &mut cache)
                .map_err(|e| PackError(format!("object {oid}: {e:?}")))?
                .ok_or_else(|| {
                    PackError(format!("object {oid} is in the index but not the pack"))
                })?;
            each(*oid, data.kind, data.data)?;
        }
        Ok(ids.len())
    })();
    for p in [Some(index_path), outcome.data_path, outcome.keep_path]
        .into_iter()
        .flatten()
    {
        let _ = std::fs::remove_file(p);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_truncated_packs_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pack");
        for bytes in [
            &b"PACK"[..],
            &b"not a pack at all, just some text"[..],
            &b"PACK\x00\x00\x00\x02\x00\x00\x00\x05truncated"[..],
        ] {
            std::fs::write(&p, bytes).unwrap();
            let r = for_each_object(&p, dir.path(), &mut |_, _, _| Ok(()));
            assert!(r.is_err(), "{bytes:?}");
        }
        std::fs::write(&p, b"").unwrap();
        assert_eq!(
            for_each_object(&p, dir.path(), &mut |_, _, _| Ok(())).unwrap(),
            0
        );
    }
}
