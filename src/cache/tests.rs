//! The cache's own tests: files and packed entries, eviction, damage.

use super::*;
use std::io::Read;

fn read_all(mut f: File) -> Vec<u8> {
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

/// Stores an entry as its own file (what large entries and streamed
/// writes get).
fn put_file(c: &Cache, key: &str, data: &[u8]) {
    let mut w = c.writer(key).unwrap();
    w.write_all(data).unwrap();
    w.commit().unwrap();
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn insert_get_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::open(dir.path(), 1 << 20).unwrap();
    c.insert("git-abc123", b"hello").unwrap();
    put_file(&c, "git-def456", b"world");
    assert_eq!(read_all(c.get("git-abc123").unwrap()), b"hello");
    assert_eq!(read_all(c.get("git-def456").unwrap()), b"world");
    assert!(c.get("git-nothere").is_none());
    assert!(c.contains("git-abc123") && c.contains("git-def456"));
    drop(c);
    let c = Cache::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(c.stats().entries, 2);
    assert_eq!(
        c.stats().bytes,
        BLOCK + 14 + 10 + 5,
        "a file takes a block; a packed entry its record (header, key, data)"
    );
    assert_eq!(read_all(c.get("git-abc123").unwrap()), b"hello");
    assert_eq!(read_all(c.get("git-def456").unwrap()), b"world");
    // What the index counts is what the disk holds.
    let packed: u64 = segments(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(packed, 14 + 10 + 5);
}

#[test]
fn evicts_least_recently_used_and_keeps_open_readers() {
    let dir = tempfile::tempdir().unwrap();
    // Room for two and a half blocks; entries of up to one block each.
    let c = Cache::open(dir.path(), BLOCK * 5 / 2).unwrap();
    put_file(&c, "k-aaa", &[1u8; 100]);
    put_file(&c, "k-bbb", &[2u8; 4096]);
    let open_a = c.get("k-aaa").unwrap(); // a is now most recent
    put_file(&c, "k-ccc", &[3u8; 100]); // evicts b
    assert!(c.get("k-bbb").is_none());
    assert!(c.get("k-aaa").is_some());
    put_file(&c, "k-ddd", &[4u8; 100]); // evicts c (a was touched)
    assert!(c.get("k-ccc").is_none());
    put_file(&c, "k-eee", &[5u8; 4097]); // two blocks: evicts a and d
    assert!(c.get("k-aaa").is_none());
    // The reader that opened `a` before eviction still reads it whole.
    assert_eq!(read_all(open_a), vec![1u8; 100]);
    assert!(c.stats().bytes <= BLOCK * 5 / 2);
}

/// Ten thousand small entries take their bytes, in a few files, not
/// ten thousand files of a block each; damage and a torn append read
/// as absent, never as other bytes.
#[test]
fn small_entries_are_packed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::open(dir.path(), 1 << 30).unwrap();
    let data = |i: usize| format!("entry {i} ").repeat(i % 50 + 1).into_bytes();
    for i in 0..10_000 {
        c.insert(&format!("k-{i}"), &data(i)).unwrap();
    }
    let bytes: u64 = (0..10_000)
        .map(|i| (14 + format!("k-{i}").len() + data(i).len()) as u64)
        .sum();
    assert_eq!(c.stats().bytes, bytes);
    assert_eq!(segments(dir.path()).len(), 1);
    drop(c);
    let c = Cache::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(c.stats().entries, 10_000);
    for i in (0..10_000).step_by(97) {
        assert_eq!(read_all(c.get(&format!("k-{i}")).unwrap()), data(i));
    }
    drop(c);

    // One byte flipped in the data of k-5000; the file cut inside the
    // last record.
    let seg = &segments(dir.path())[0];
    let raw = fs::read(seg).unwrap();
    let at = raw
        .windows(b"entry 5000 ".len())
        .position(|w| w == b"entry 5000 ")
        .unwrap();
    let mut damaged = raw.clone();
    damaged[at] ^= 1;
    damaged.truncate(raw.len() - 3);
    fs::write(seg, &damaged).unwrap();
    let c = Cache::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(c.stats().entries, 9_999, "the torn record is not indexed");
    assert!(c.get("k-9999").is_none());
    assert!(c.get("k-5000").is_none(), "a damaged record was read");
    assert!(!c.contains("k-5000"), "a damaged record stays indexed");
    assert_eq!(read_all(c.get("k-4999").unwrap()), data(4999));
    assert_eq!(read_all(c.get("k-9998").unwrap()), data(9998));
}

/// Past the cap, packed entries go a segment at a time, oldest first,
/// and the disk holds what the index counts.
#[test]
fn packed_entries_are_evicted_by_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 4 << 20;
    let c = Cache::open(dir.path(), cap).unwrap();
    for i in 0..8_000 {
        c.insert(&format!("k-{i}"), &[i as u8; 1000]).unwrap();
        assert!(c.stats().bytes <= cap);
    }
    assert!(c.contains("k-7999"));
    assert!(!c.contains("k-0"));
    let on_disk: u64 = segments(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(on_disk, c.stats().bytes);
    assert!(segments(dir.path()).len() <= 5);
    assert_eq!(
        read_all(c.get("k-7000").unwrap()),
        vec![7000u32 as u8; 1000]
    );
}

#[test]
fn rejects_bad_keys_and_discards_uncommitted() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::open(dir.path(), 1000).unwrap();
    assert!(c.insert("../etc/passwd", b"x").is_err());
    assert!(c.insert("UPPER", b"x").is_err());
    {
        let mut w = c.writer("k-partial").unwrap();
        w.write_all(b"half").unwrap();
    }
    assert!(c.get("k-partial").is_none());
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn cap_is_enforced_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = Cache::open(dir.path(), 10 * BLOCK).unwrap();
        for k in ["k-one", "k-two", "k-three"] {
            put_file(&c, k, &[0u8; 300]);
        }
    }
    let c = Cache::open(dir.path(), 2 * BLOCK).unwrap();
    assert_eq!(c.stats().entries, 2);
    assert!(c.stats().bytes <= 2 * BLOCK);
}

/// A segment no entry points into any more is deleted; a re-inserted key
/// counts once.
#[test]
fn a_segment_whose_entries_are_all_gone_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::open(dir.path(), 1 << 30).unwrap();
    for k in ["k-one", "k-two", "k-three"] {
        c.insert(k, b"small").unwrap();
    }
    c.insert("k-one", b"again").unwrap();
    assert_eq!(c.stats().entries, 3);
    assert_eq!(
        c.stats().bytes,
        3 * (14 + 5 + 5) + 2,
        "k-three has a longer key"
    );
    for k in ["k-one", "k-two", "k-three"] {
        c.remove(k);
    }
    assert_eq!(c.stats().bytes, 0);
    assert!(
        segments(dir.path()).is_empty(),
        "{:?}",
        segments(dir.path())
    );
    // And the cache goes on packing into a new segment.
    c.insert("k-four", b"four").unwrap();
    assert_eq!(read_all(c.get("k-four").unwrap()), b"four");
}
