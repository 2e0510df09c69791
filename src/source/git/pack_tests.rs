//! Tests of the streaming pack decoder against packs written by git itself.

use super::*;
use std::path::Path;

fn git(dir: &Path, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    if let (Some(i), Some(mut s)) = (input, stdin) {
        s.write_all(i).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "git {args:?}");
    out.stdout
}

/// Collects every object; `stream_over`: objects larger than this are streamed.
#[derive(Default)]
struct Collect {
    stream_over: u64,
    stop_over: Option<u64>,
    current: Vec<u8>,
    objects: Vec<(ObjectId, Kind, Vec<u8>)>,
    begun: Vec<u64>,
}

impl ObjectSink for Collect {
    fn begin(&mut self, _kind: Kind, size: u64) -> Result<Take, PackError> {
        self.begun.push(size);
        if self.stop_over.is_some_and(|s| size > s) {
            return Ok(Take::Stop);
        }
        self.current.clear();
        Ok(if size > self.stream_over {
            Take::Stream
        } else {
            Take::Memory
        })
    }
    fn chunk(&mut self, data: &[u8]) -> Result<(), PackError> {
        self.current.extend_from_slice(data);
        Ok(())
    }
    fn end(
        &mut self,
        oid: ObjectId,
        kind: Kind,
        data: Option<&Arc<[u8]>>,
    ) -> Result<(), PackError> {
        let bytes = match data {
            Some(d) => d.to_vec(),
            None => std::mem::take(&mut self.current),
        };
        self.objects.push((oid, kind, bytes));
        Ok(())
    }
    fn reopen(&mut self, oid: &ObjectId) -> Option<std::fs::File> {
        use std::io::Write;
        let (_, _, data) = self.objects.iter().find(|(o, _, _)| o == oid)?;
        let mut f = tempfile::tempfile().ok()?;
        f.write_all(data).ok()?;
        Some(f)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    /// (id, contents) of every blob.
    blobs: Vec<(String, Vec<u8>)>,
    ofs_pack: Vec<u8>,
    ref_pack: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "--bare", "r.git"], None);
    let repo = dir.path().join("r.git");
    // Large, nearly identical blobs (stored as deltas of each other) and small ones.
    let base: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let mut contents = vec![base.clone()];
    for k in 0..3 {
        let mut c = base.clone();
        c[1000 + k * 7] ^= 0xff;
        c.extend_from_slice(format!("tail {k}").as_bytes());
        contents.push(c);
    }
    contents.push(b"small".to_vec());
    contents.push(Vec::new());
    let mut blobs = Vec::new();
    for (i, data) in contents.iter().enumerate() {
        let f = dir.path().join(format!("b{i}"));
        std::fs::write(&f, data).unwrap();
        let id = git(&repo, &["hash-object", "-w", f.to_str().unwrap()], None);
        blobs.push((
            String::from_utf8(id).unwrap().trim().to_string(),
            data.clone(),
        ));
    }
    let list: String = blobs.iter().map(|(id, _)| format!("{id}\n")).collect();
    let ofs_pack = git(
        &repo,
        &["pack-objects", "--stdout", "--delta-base-offset"],
        Some(list.as_bytes()),
    );
    let ref_pack = git(&repo, &["pack-objects", "--stdout"], Some(list.as_bytes()));
    Fixture {
        _dir: dir,
        blobs,
        ofs_pack,
        ref_pack,
    }
}

fn decode(pack: &[u8], split: usize, sink: &mut Collect) -> Result<Flow, PackError> {
    let mut d = PackDecoder::new(Limits::default());
    let mut flow = Flow::More;
    for piece in pack.chunks(split.max(1)) {
        flow = d.feed(piece, sink)?;
        if flow == Flow::Stopped {
            break;
        }
    }
    Ok(flow)
}

fn check_all(f: &Fixture, objects: &[(ObjectId, Kind, Vec<u8>)]) {
    assert_eq!(objects.len(), f.blobs.len());
    for (id, data) in &f.blobs {
        let got = objects
            .iter()
            .find(|(o, _, _)| o.to_string() == *id)
            .unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(got.1, Kind::Blob);
        assert_eq!(&got.2, data);
    }
}

#[test]
fn real_packs_with_deltas_decode_in_any_split() {
    let f = fixture();
    for pack in [&f.ofs_pack, &f.ref_pack] {
        for split in [1, 7, 4096, 65536, usize::MAX] {
            for stream_over in [0, 1000, u64::MAX] {
                let mut sink = Collect {
                    stream_over,
                    ..Default::default()
                };
                let flow = decode(pack, split.min(pack.len()), &mut sink).unwrap();
                assert_eq!(flow, Flow::Done);
                check_all(&f, &sink.objects);
            }
        }
    }
    // The pack really held deltas (else this test proves little).
    assert!(f.ofs_pack.len() < 400_000, "{}", f.ofs_pack.len());
}

#[test]
fn stop_reads_only_up_to_a_large_entry() {
    let f = fixture();
    let mut sink = Collect {
        stream_over: u64::MAX,
        stop_over: Some(100),
        ..Default::default()
    };
    let flow = decode(&f.ofs_pack, 4096, &mut sink).unwrap();
    assert_eq!(flow, Flow::Stopped);
    assert!(sink.begun.last().is_some_and(|s| *s > 100));
    assert!(sink.objects.iter().all(|(_, _, d)| d.len() <= 100));
}

#[test]
fn truncated_corrupt_and_garbage_packs_are_errors() {
    let f = fixture();
    // Cut short: never Done.
    let mut sink = Collect::default();
    let cut = &f.ofs_pack[..f.ofs_pack.len() / 2];
    assert_ne!(decode(cut, 4096, &mut sink).ok(), Some(Flow::Done));
    // A flipped byte anywhere is an error (zlib, delta, id or pack checksum).
    for at in [
        12,
        20,
        f.ofs_pack.len() / 3,
        f.ofs_pack.len() / 2,
        f.ofs_pack.len() - 5,
    ] {
        let mut bad = f.ofs_pack.clone();
        bad[at] ^= 0x55;
        let mut sink = Collect::default();
        let r = decode(&bad, 4096, &mut sink);
        assert!(!matches!(r, Ok(Flow::Done)), "flip at {at} went unnoticed");
    }
    for garbage in [
        &b"PACK"[..],
        b"not a pack at all, just text",
        b"PACK\0\0\0\x09\0\0\0\x01",
    ] {
        let mut sink = Collect::default();
        let r = decode(garbage, 3, &mut sink);
        assert!(!matches!(r, Ok(Flow::Done)), "{garbage:?}");
    }
    // Trailing bytes after a complete pack.
    let mut extra = f.ref_pack.clone();
    extra.extend_from_slice(b"junk");
    assert!(decode(&extra, 1 << 20, &mut Collect::default()).is_err());
}

#[test]
fn size_limits_are_enforced() {
    let f = fixture();
    let mut d = PackDecoder::new(Limits {
        max_object: 1000,
        ..Limits::default()
    });
    assert!(d.feed(&f.ofs_pack, &mut Collect::default()).is_err());
    let mut d = PackDecoder::new(Limits {
        max_delta: 10,
        ..Limits::default()
    });
    assert!(d.feed(&f.ofs_pack, &mut Collect::default()).is_err());
}

/// Arbitrary mutations of a real pack never panic.
#[test]
fn mutated_packs_never_panic() {
    let f = fixture();
    let mut x = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..300 {
        let mut p = if next() % 2 == 0 {
            f.ofs_pack.clone()
        } else {
            f.ref_pack.clone()
        };
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % p.len();
            match next() % 3 {
                0 => p[at] = next() as u8,
                1 => p.truncate(at.max(1)),
                _ => p.insert(at, next() as u8),
            }
        }
        let split = (next() % 5000 + 1) as usize;
        let _ = decode(&p, split, &mut Collect::default());
    }
    for _ in 0..300 {
        let len = (next() % 200) as usize;
        let mut p: Vec<u8> = b"PACK\0\0\0\x02".to_vec();
        p.extend((0..len).map(|_| next() as u8));
        let _ = decode(&p, 5, &mut Collect::default());
    }
}
