//! Hostile bytes, objects: LFS pointers, packs, commits, trees and tree
//! entry names must answer (`Ok`/`Err`, `Some`/`None`) for any input and
//! never panic; a pointer that parses re-serialises to the same oid and
//! size. Inputs are valid ones mutated, and random bytes (see `fuzz`).

mod fuzz;

use fuzz::*;
use repofs::source::git::lfs::{self, Pointer, parse_pointer};

// ---------------------------------------------------------------------------
// LFS pointers.

const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";
const SPEC: &str = "version https://git-lfs.github.com/spec/v1";

fn pointer_seeds() -> Vec<Vec<u8>> {
    [
        format!("{SPEC}\noid sha256:{OID}\nsize 12345\n"),
        format!("{SPEC}\noid sha256:{OID}\nsize 0\n"),
        format!(
            "version https://hawser.github.com/spec/v1\noid sha256:{OID}\nsize 18446744073709551615\n"
        ),
        format!("{SPEC}\next-0-foo sha256:{OID}\next-1-bar baz\noid sha256:{OID}\nsize 5\n"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// Lines and values of pointers, right and wrong.
fn pointer_dict() -> Vec<Vec<u8>> {
    let upper = OID.to_uppercase();
    [
        SPEC.to_string(),
        "version https://hawser.github.com/spec/v1".to_string(),
        "version https://git-lfs.github.com/spec/v2".to_string(),
        "version 2".to_string(),
        format!("oid sha256:{OID}"),
        format!("oid sha256:{upper}"),
        format!("oid sha256:{}", &OID[..63]),
        format!("oid sha256:{OID}0"),
        format!("oid sha1:{}", &OID[..40]),
        "oid sha256:".to_string(),
        "size 0".to_string(),
        "size 00".to_string(),
        "size 007".to_string(),
        "size -1".to_string(),
        "size +1".to_string(),
        "size 18446744073709551615".to_string(),
        "size 18446744073709551616".to_string(),
        "size 99999999999999999999999999".to_string(),
        "size \u{0663}".to_string(),
        "size 1e3".to_string(),
        "size ".to_string(),
        "ext-0-a b".to_string(),
        "ext- x".to_string(),
        "zzz 1".to_string(),
        "a  b".to_string(),
        "oid".to_string(),
        String::new(),
        " ".to_string(),
        "\r".to_string(),
        "é".to_string(),
        OID.to_string(),
        upper,
        "sha256:".to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// Values that replace the part after a pointer line's first space.
const POINTER_VALUES: &[&str] = &[
    "0",
    "1",
    "5",
    "00",
    "007",
    "-1",
    "+1",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "",
    " ",
    "1 ",
    " 1",
    "1e3",
    "\u{0663}",
    "sha256:",
    "sha1:4d7a214614ab2935c943f9e0ff69d22eadbb8f32",
    "sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393",
    "sha256:4D7A214614AB2935C943F9E0FF69D22EADBB8F32B1258DAAA5E2CA24D17E2393",
    "sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e239",
    "sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393 ",
    "https://git-lfs.github.com/spec/v1",
    "https://hawser.github.com/spec/v1",
    "https://git-lfs.github.com/spec/v1 ",
];

/// One to three mutations of a pointer's lines.
fn mutate_pointer_lines(rng: &mut Rng, lines: &mut Vec<Vec<u8>>, dict: &[Vec<u8>]) {
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let n = lines.len();
        let roll = rng.below(9);
        if reorder(rng, lines, roll, |rng| rng.pick(dict).clone()) {
            continue;
        }
        match roll {
            4 | 5 if n > 0 => {
                // Keep the key, change the value.
                let i = rng.below(n);
                let key_end = lines[i]
                    .iter()
                    .position(|&b| b == b' ')
                    .unwrap_or(lines[i].len());
                let mut line = lines[i][..key_end].to_vec();
                line.push(b' ');
                line.extend_from_slice(rng.pick(POINTER_VALUES).as_bytes());
                lines[i] = line;
            }
            6 if n > 0 => {
                let i = rng.below(n);
                mutate_bytes(rng, &mut lines[i], dict);
            }
            7 if n > 0 => {
                let i = rng.below(n);
                lines[i].push(b'\r');
            }
            _ => {
                // An extension line that takes the pointer towards (and
                // past) the size limit.
                let pad = rng.below(1100);
                let at = rng.below(n + 1);
                lines.insert(at, format!("ext-0-pad {}", "x".repeat(pad)).into_bytes());
            }
        }
    }
}

/// A pointer's lines (the last one is empty when it ends in a newline).
fn split_lines(text: &[u8]) -> Vec<Vec<u8>> {
    text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

fn hostile_pointer(rng: &mut Rng, seeds: &[Vec<u8>], dict: &[Vec<u8>]) -> Vec<u8> {
    let seed = rng.pick(seeds).clone();
    match rng.below(8) {
        0 => {
            let n = rng.below(200);
            rng.bytes(n)
        }
        1 => seed,
        2..=4 => {
            let mut lines = split_lines(&seed);
            mutate_pointer_lines(rng, &mut lines, dict);
            lines.join(&b"\n"[..])
        }
        5 => {
            let mut bytes = seed;
            mutate_bytes(rng, &mut bytes, dict);
            bytes
        }
        _ => {
            let mut lines = split_lines(&seed);
            mutate_pointer_lines(rng, &mut lines, dict);
            let mut bytes = lines.join(&b"\n"[..]);
            mutate_bytes(rng, &mut bytes, dict);
            bytes
        }
    }
}

/// What must hold for every input that parses as a pointer.
fn check_pointer(seed: u64, input: &[u8], p: &Pointer) {
    let shown = input.escape_ascii();
    assert!(
        (input.len() as u64) < lfs::MAX_POINTER_SIZE,
        "seed {seed}: a pointer of {} bytes",
        input.len()
    );
    assert!(input.ends_with(b"\n"), "seed {seed}: \"{shown}\"");
    let Ok(text) = std::str::from_utf8(input) else {
        panic!("seed {seed}: a pointer that is not UTF-8: \"{shown}\"");
    };
    assert!(
        p.oid.len() == 64
            && p.oid
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "seed {seed}: oid {:?} from \"{shown}\"",
        p.oid
    );
    assert!(
        text.contains(&format!("oid sha256:{}", p.oid)),
        "seed {seed}: oid {} is not in \"{shown}\"",
        p.oid
    );
    assert!(
        text.contains(&format!("size {}", p.size)),
        "seed {seed}: size {} is not in \"{shown}\"",
        p.size
    );
    // Written out again, it is the same pointer.
    let canonical = format!("{SPEC}\noid sha256:{}\nsize {}\n", p.oid, p.size);
    assert_eq!(
        parse_pointer(canonical.as_bytes()).as_ref(),
        Some(p),
        "seed {seed}: \"{shown}\""
    );
    let blob = "0123456789abcdef0123456789abcdef01234567";
    assert_eq!(
        Pointer::from_key(&p.key(blob)),
        Some((p.clone(), blob.to_string())),
        "seed {seed}"
    );
}

#[test]
fn lfs_pointers_never_panic_and_round_trip() {
    let seeds = pointer_seeds();
    for s in &seeds {
        let p = parse_pointer(s).unwrap_or_else(|| panic!("seed pointer \"{}\"", s.escape_ascii()));
        check_pointer(0, s, &p);
    }
    // The size limit, exactly: one byte under it parses, at it does not.
    let head = format!("{SPEC}\next-0-pad ");
    let tail = format!("\noid sha256:{OID}\nsize 5\n");
    let limit = lfs::MAX_POINTER_SIZE as usize;
    let pad = limit - 1 - head.len() - tail.len();
    let under = format!("{head}{}{tail}", "x".repeat(pad));
    assert_eq!(under.len(), limit - 1);
    assert!(parse_pointer(under.as_bytes()).is_some());
    let at = format!("{head}{}{tail}", "x".repeat(pad + 1));
    assert!(parse_pointer(at.as_bytes()).is_none());

    let dict = pointer_dict();
    for i in 0..cases(5000) {
        let seed = case_seed(40, i);
        let mut rng = Rng::new(seed);
        let input = hostile_pointer(&mut rng, &seeds, &dict);
        if let Some(p) = guarded("parse_pointer", seed, &input, parse_pointer) {
            check_pointer(seed, &input, &p);
        }
    }
}

// ---------------------------------------------------------------------------
// Pack and tree/commit parsers: added with the streaming pack decoder.
// (Mutations of real packs are in src/source/git/pack_tests.rs.)

struct NullSink;

impl repofs::source::git::pack::ObjectSink for NullSink {
    fn begin(
        &mut self,
        _kind: gix_object::Kind,
        size: u64,
    ) -> Result<repofs::source::git::pack::Take, repofs::source::git::pack::PackError> {
        use repofs::source::git::pack::Take;
        Ok(if size > 4096 {
            Take::Stream
        } else {
            Take::Memory
        })
    }
    fn chunk(&mut self, _data: &[u8]) -> Result<(), repofs::source::git::pack::PackError> {
        Ok(())
    }
    fn end(
        &mut self,
        _oid: gix_hash::ObjectId,
        _kind: gix_object::Kind,
        _data: Option<&std::sync::Arc<[u8]>>,
    ) -> Result<(), repofs::source::git::pack::PackError> {
        Ok(())
    }
}

#[test]
fn pack_decoder_commit_and_tree_parsers_never_panic() {
    use repofs::source::git::pack::{Limits, PackDecoder};
    for i in 0..cases(3000) {
        let seed = case_seed(50, i);
        let mut rng = Rng::new(seed);
        let n = rng.below(300);
        let mut input = if rng.below(2) == 0 {
            b"PACK\0\0\0\x02\0\0\0\x03".to_vec()
        } else {
            Vec::new()
        };
        input.extend(rng.bytes(n));
        let mut d = PackDecoder::new(Limits {
            max_object: 1 << 20,
            ..Limits::default()
        });
        let mut rest = &input[..];
        while !rest.is_empty() {
            let k = 1 + rng.below(rest.len());
            let (piece, tail) = rest.split_at(k);
            rest = tail;
            if d.feed(piece, &mut NullSink).is_err() {
                break;
            }
        }
        let mut commit =
            b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\ncommitter C <c@d> ".to_vec();
        commit.extend(rng.bytes(n % 40));
        let _ = guarded(
            "parse_commit",
            seed,
            &commit,
            repofs::source::git::snapshot::parse_commit,
        );
        let _ = guarded(
            "parse_commit",
            seed,
            &input,
            repofs::source::git::snapshot::parse_commit,
        );
        let _ = guarded("tree", seed, &input, |b| {
            gix_object::TreeRefIter::from_bytes(b, gix_hash::Kind::Sha1)
                .take(1000)
                .count()
        });
        let _ = guarded(
            "safe_name",
            seed,
            &input,
            repofs::source::git::names::safe_name,
        );
    }
}
