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

    fn git(dir: &Path, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
        use std::io::Write;
        let mut child = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(i) = input {
            child.stdin.take().unwrap().write_all(i).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {args:?}");
        out.stdout
    }

    #[test]
    fn real_pack_with_deltas_decodes_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "--bare", "r.git"], None);
        let repo = dir.path().join("r.git");
        // Two large, nearly identical blobs: pack-objects stores one as a delta.
        let base: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut changed = base.clone();
        changed[1000] ^= 0xff;
        let mut ids = Vec::new();
        for (i, data) in [&base, &changed].iter().enumerate() {
            let f = dir.path().join(format!("b{i}"));
            std::fs::write(&f, data).unwrap();
            let id = git(&repo, &["hash-object", "-w", f.to_str().unwrap()], None);
            ids.push(String::from_utf8(id).unwrap().trim().to_string());
        }
        let list = format!("{}\n{}\n", ids[0], ids[1]);
        let pack = git(
            &repo,
            &["pack-objects", "--stdout", "--delta-base-offset"],
            Some(list.as_bytes()),
        );
        let p = dir.path().join("x.pack");
        std::fs::write(&p, &pack).unwrap();
        let mut seen = Vec::new();
        let n = for_each_object(&p, dir.path(), &mut |oid, kind, data| {
            assert_eq!(kind, Kind::Blob);
            let expect = if oid.to_string() == ids[0] {
                &base
            } else {
                &changed
            };
            assert_eq!(data, &expect[..]);
            seen.push(oid.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2);
        seen.sort();
        ids.sort();
        assert_eq!(seen, ids);
        // Scratch files are cleaned up.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "idx"))
            .collect();
        assert!(left.is_empty());
        // The same pack cut short, or with a flipped byte, is an error.
        std::fs::write(&p, &pack[..pack.len() / 2]).unwrap();
        assert!(for_each_object(&p, dir.path(), &mut |_, _, _| Ok(())).is_err());
        let mut bad = pack.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        std::fs::write(&p, &bad).unwrap();
        assert!(for_each_object(&p, dir.path(), &mut |_, _, _| Ok(())).is_err());
    }

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
