//! Hostile bytes: every parser of what a server sends must answer (`Ok` or
//! `Err`, `Some` or `None`) for any input, and never panic.
//!
//! Inputs come from a small deterministic xorshift generator (no extra
//! crates; the same inputs on every run): pure random bytes, and valid
//! answers (pkt-line bodies built the way a server sends them, LFS
//! pointers) mutated by flipping, overwriting, truncating, inserting,
//! deleting and duplicating bytes, and by dropping, repeating, swapping and
//! rewriting whole pkt-lines or pointer lines, so that mutants get past the
//! framing and reach the parsers' deeper paths. Where a property holds for
//! every input (a pointer that parses re-serialises to the same oid and
//! size; a fetch response gives the same result however it is split into
//! chunks; inputs shorter than one pkt-line header are errors) it is
//! asserted too.
//!
//! A failure names the seed of the failing case. `REPOFS_FUZZ_SCALE` (a
//! whole number, default 1) multiplies the number of cases.

use std::panic::{AssertUnwindSafe, catch_unwind};

use repofs::source::git::lfs::{self, Pointer, parse_pointer};
use repofs::source::git::protocol::{
    FetchResponseParser, ProtocolError, packet_lines, parse_capabilities, parse_ls_refs,
    parse_object_info,
};

// ---------------------------------------------------------------------------
// The generator and the harness.

/// xorshift64: tiny and deterministic; good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that neighbouring seeds start far
        // apart; the state of xorshift must not be 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next_u64() % n.max(1) == 0
    }

    fn byte(&mut self) -> u8 {
        (self.next_u64() >> 24) as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// One of `items`, which must not be empty.
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// How many cases a test runs: `base` times `REPOFS_FUZZ_SCALE`.
fn cases(base: usize) -> usize {
    let scale = std::env::var("REPOFS_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    base.saturating_mul(scale)
}

/// The seed of case `case` of test number `test`.
fn case_seed(test: u64, case: usize) -> u64 {
    (test << 32) ^ case as u64
}

/// Runs `f` on `input`; a panic fails the test, showing the input.
fn guarded<'a, T>(what: &str, seed: u64, input: &'a [u8], f: impl FnOnce(&'a [u8]) -> T) -> T {
    match catch_unwind(AssertUnwindSafe(|| f(input))) {
        Ok(v) => v,
        Err(_) => panic!(
            "{what} panicked (case seed {seed}) on {} bytes: \"{}\"",
            input.len(),
            input.escape_ascii()
        ),
    }
}

/// Inserts `piece` into `v` at `at` (`at <= v.len()`).
fn insert_at(v: &mut Vec<u8>, at: usize, piece: &[u8]) {
    let tail = v.split_off(at.min(v.len()));
    v.extend_from_slice(piece);
    v.extend_from_slice(&tail);
}

/// Bytes that sit on the parsers' decision points.
const INTERESTING: &[u8] = &[
    0, b'0', b'1', b'2', b'4', b'9', b'a', b'f', b'F', b'g', b'\n', b'\r', b' ', b':', b'~', b'-',
    b'+', b'.', 0x01, 0x02, 0x03, 0x7f, 0x80, 0xbf, 0xc3, 0xe2, 0xef, 0xff,
];

/// Bytes a pkt-line stream is made of, and a few it must not contain.
const PKT_ALPHABET: &[u8] = b"0123456789abcdefABCDEFxyz \n\r\0\x01\x02\x03\xff:~#=";

/// One to four byte-level mutations of `v`.
fn mutate_bytes(rng: &mut Rng, v: &mut Vec<u8>, dict: &[Vec<u8>]) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = v.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1u8 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.byte();
            }
            2 if len > 0 => {
                let i = rng.below(len);
                v[i] = *rng.pick(INTERESTING);
            }
            3 => v.truncate(rng.below(len + 1)),
            4 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let piece = rng.bytes(n);
                insert_at(v, at, &piece);
            }
            5 if len > 0 => {
                // Duplicate a slice somewhere.
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let piece = v[start..end].to_vec();
                let at = rng.below(len + 1);
                insert_at(v, at, &piece);
            }
            6 if len > 0 => {
                // Delete a range.
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(len);
                let tail = v.split_off(end);
                v.truncate(start);
                v.extend_from_slice(&tail);
            }
            7 => {
                let at = rng.below(len + 1);
                let token = rng.pick(dict).clone();
                insert_at(v, at, &token);
            }
            8 if len > 0 => {
                // Overwrite with a token.
                let at = rng.below(len);
                let token = rng.pick(dict).clone();
                for (i, b) in token.into_iter().enumerate() {
                    if let Some(slot) = v.get_mut(at + i) {
                        *slot = b;
                    }
                }
            }
            _ => {
                let at = rng.below(len + 1);
                let b = *rng.pick(INTERESTING);
                v.insert(at, b);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Pkt-line bodies.

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";
const C: &str = "0123456789abcdef0123456789abcdef01234567";

/// One pkt-line, before framing.
#[derive(Debug, Clone)]
enum Line {
    Data(Vec<u8>),
    Flush,
    Delim,
    End,
}

fn data(bytes: impl AsRef<[u8]>) -> Line {
    Line::Data(bytes.as_ref().to_vec())
}

/// Frames lines as a server does (`{len:04x}` + data, `0000`, `0001`, `0002`).
fn encode(lines: &[Line]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        match line {
            Line::Data(d) => {
                out.extend_from_slice(format!("{:04x}", d.len() + 4).as_bytes());
                out.extend_from_slice(d);
            }
            Line::Flush => out.extend_from_slice(b"0000"),
            Line::Delim => out.extend_from_slice(b"0001"),
            Line::End => out.extend_from_slice(b"0002"),
        }
    }
    out
}

fn capability_seeds() -> Vec<Vec<Line>> {
    let v2 = vec![
        data("version 2\n"),
        data("agent=git/2.47\n"),
        data("ls-refs=unborn\n"),
        data("fetch=shallow wait-for-done filter\n"),
        data("server-option\n"),
        data("object-info\n"),
        data("object-format=sha1\n"),
        Line::Flush,
    ];
    let mut prefixed = vec![data("# service=git-upload-pack\n"), Line::Flush];
    prefixed.extend(v2.iter().cloned());
    let v0 = vec![
        data("# service=git-upload-pack\n"),
        Line::Flush,
        data(format!("{A} HEAD\0multi_ack thin-pack side-band-64k\n")),
        data(format!("{A} refs/heads/main\n")),
        Line::Flush,
    ];
    let sha256 = vec![
        data("version 2\n"),
        data("ls-refs\n"),
        data("fetch\n"),
        data("object-format=sha256\n"),
        Line::Flush,
    ];
    vec![v2, prefixed, v0, sha256]
}

fn ls_refs_seeds() -> Vec<Vec<Line>> {
    let refs = vec![
        data(format!("{A} HEAD symref-target:refs/heads/main\n")),
        data(format!("{A} refs/heads/main\n")),
        data(format!("{B} refs/tags/v1 peeled:{A}\n")),
        data("unborn refs/heads/empty\n"),
        data(format!("{C} refs/heads/feature/é\n")),
        Line::Flush,
    ];
    let unborn = vec![
        data("unborn HEAD symref-target:refs/heads/main\n"),
        Line::Flush,
    ];
    let err = vec![data("ERR access denied\n")];
    vec![refs, unborn, err, vec![Line::Flush]]
}

fn object_info_seeds() -> Vec<Vec<Line>> {
    let info = vec![
        data("size\n"),
        data(format!("{A} 1234\n")),
        data(format!("{B} \n")),
        data(format!("{C} 18446744073709551615\n")),
        Line::Flush,
    ];
    let empty = vec![data("size\n"), Line::Flush];
    vec![info, empty]
}

/// The pack bytes in the first fetch seed.
const SEED_PACK: &[u8] = b"PACK\x00\x00\x00\x02\x00\x00\x00\x03-part-2";

fn fetch_seeds() -> Vec<Vec<Line>> {
    let full = vec![
        data("acknowledgments\n"),
        data("NAK\n"),
        Line::Delim,
        data("shallow-info\n"),
        data(format!("shallow {A}\n")),
        data(format!("unshallow {B}\n")),
        Line::Delim,
        data("wanted-refs\n"),
        data(format!("{A} refs/heads/main\n")),
        Line::Delim,
        data("packfile\n"),
        data(b"\x02Enumerating objects: 3, done.\n"),
        data(b"\x01PACK\x00\x00\x00\x02\x00\x00\x00\x03"),
        data(b"\x01-part-2"),
        data(b"\x02Total 3 (delta 0)\n"),
        Line::Flush,
    ];
    let minimal = vec![data("packfile\n"), data(b"\x01PACK"), Line::Flush];
    let response_end = vec![
        data("packfile\n"),
        data(b"\x01PACK"),
        data(b"\x01rest"),
        Line::End,
    ];
    let fatal = vec![
        data("packfile\n"),
        data(b"\x02counting\n"),
        data(b"\x03upload-pack: not our ref\n"),
        Line::Flush,
    ];
    let err = vec![data("ERR upload-pack: not our ref\n"), Line::Flush];
    vec![full, minimal, response_end, fatal, err]
}

fn all_pkt_seeds() -> Vec<Vec<Line>> {
    let mut all = capability_seeds();
    all.extend(ls_refs_seeds());
    all.extend(object_info_seeds());
    all.extend(fetch_seeds());
    all
}

/// Words of git's protocol, for insertion into pkt-lines.
fn protocol_dict() -> Vec<Vec<u8>> {
    let mut dict: Vec<Vec<u8>> = [
        "version 2\n",
        "version 1\n",
        "# service=git-upload-pack\n",
        "agent=git/2.47\n",
        "ls-refs",
        "ls-refs=unborn\n",
        "fetch",
        "fetch=shallow filter\n",
        "=",
        "object-info\n",
        "object-format=sha1\n",
        "object-format=sha256\n",
        "size\n",
        "size",
        "unborn ",
        "peeled:",
        "symref-target:",
        "shallow ",
        "unshallow ",
        "packfile\n",
        "acknowledgments\n",
        "shallow-info\n",
        "wanted-refs\n",
        "ERR ",
        "NAK\n",
        "ready\n",
        " ",
        "\n",
        "\0",
        "é",
        "HEAD",
        "refs/heads/main",
        "0000",
        "0001",
        "0002",
        "0003",
        "0004",
        "0005",
        "fff0",
        "fff4",
        "ffff",
        "FFFF",
        "000a",
        "000A",
        "00",
        "18446744073709551616",
        "-1",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    dict.extend([A, B, C].iter().map(|h| h.as_bytes().to_vec()));
    dict.push(A[..39].as_bytes().to_vec());
    dict.push(format!("{A}0").into_bytes());
    dict.push(C.to_uppercase().into_bytes());
    for band in [1u8, 2, 3, 4, 0xff] {
        dict.push(vec![band]);
    }
    dict.push(vec![0xff, 0xfe]);
    dict
}

/// A pkt-line made of random bytes or protocol words.
fn random_line(rng: &mut Rng, dict: &[Vec<u8>]) -> Line {
    match rng.below(8) {
        0 => Line::Flush,
        1 => Line::Delim,
        2 => Line::End,
        3 => {
            let n = rng.below(48);
            Line::Data(rng.bytes(n))
        }
        _ => {
            let mut d = Vec::new();
            let words = 1 + rng.below(4);
            for _ in 0..words {
                d.extend_from_slice(rng.pick(dict).as_slice());
                if rng.one_in(2) {
                    d.push(b' ');
                }
            }
            if rng.one_in(2) {
                d.push(b'\n');
            }
            Line::Data(d)
        }
    }
}

/// Line-level mutations shared by every line-based format, chosen by
/// `roll`: 0 drops a line, 1 repeats one, 2 swaps two, 3 inserts `new`.
/// Whether `roll` was one of these (and applicable).
fn reorder<T: Clone>(
    rng: &mut Rng,
    lines: &mut Vec<T>,
    roll: usize,
    new: impl FnOnce(&mut Rng) -> T,
) -> bool {
    let n = lines.len();
    match roll {
        0 if n > 0 => {
            lines.remove(rng.below(n));
        }
        1 if n > 0 => {
            let line = lines[rng.below(n)].clone();
            let at = rng.below(n + 1);
            lines.insert(at, line);
        }
        2 if n > 1 => {
            let (a, b) = (rng.below(n), rng.below(n));
            lines.swap(a, b);
        }
        3 => {
            let at = rng.below(n + 1);
            let line = new(rng);
            lines.insert(at, line);
        }
        _ => return false,
    }
    true
}

/// One to three line-level mutations: framing stays valid, contents change.
fn mutate_lines(rng: &mut Rng, lines: &mut Vec<Line>, dict: &[Vec<u8>]) {
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let n = lines.len();
        let roll = rng.below(9);
        if reorder(rng, lines, roll, |rng| random_line(rng, dict)) {
            continue;
        }
        match roll {
            4..=6 if n > 0 => {
                let i = rng.below(n);
                if let Line::Data(d) = &mut lines[i] {
                    mutate_bytes(rng, d, dict);
                }
            }
            7 if n > 0 => {
                let i = rng.below(n);
                lines[i] = random_line(rng, dict);
            }
            _ => lines.truncate(rng.below(n + 1)),
        }
    }
}

/// A hostile pkt-line body: random, or a seed mutated at the line level,
/// the byte level, or both.
fn hostile_pkt_input(rng: &mut Rng, seeds: &[Vec<Line>], dict: &[Vec<u8>]) -> Vec<u8> {
    let seed = rng.pick(seeds).clone();
    match rng.below(12) {
        0 => {
            let n = rng.below(96);
            rng.bytes(n)
        }
        1 => {
            let n = rng.below(96);
            (0..n).map(|_| *rng.pick(PKT_ALPHABET)).collect()
        }
        2 => {
            let n = rng.below(8);
            let lines: Vec<Line> = (0..n).map(|_| random_line(rng, dict)).collect();
            encode(&lines)
        }
        3 => encode(&seed),
        4..=6 => {
            let mut lines = seed;
            mutate_lines(rng, &mut lines, dict);
            encode(&lines)
        }
        7 | 8 => {
            let mut bytes = encode(&seed);
            mutate_bytes(rng, &mut bytes, dict);
            bytes
        }
        9 => {
            // The head of one answer spliced onto the tail of another.
            let mut head = encode(&seed);
            let tail = encode(rng.pick(seeds).as_slice());
            let cut_head = rng.below(head.len() + 1);
            let cut_tail = rng.below(tail.len() + 1);
            head.truncate(cut_head);
            head.extend_from_slice(&tail[cut_tail..]);
            head
        }
        _ => {
            let mut lines = seed;
            mutate_lines(rng, &mut lines, dict);
            let mut bytes = encode(&lines);
            mutate_bytes(rng, &mut bytes, dict);
            bytes
        }
    }
}

#[test]
fn packet_lines_never_panic_and_account_for_every_byte() {
    let dict = protocol_dict();
    let seeds = all_pkt_seeds();
    for i in 0..cases(4000) {
        let seed = case_seed(1, i);
        let mut rng = Rng::new(seed);
        let input = hostile_pkt_input(&mut rng, &seeds, &dict);
        let result = guarded("packet_lines", seed, &input, packet_lines);
        if !input.is_empty() && input.len() < 4 {
            assert!(
                result.is_err(),
                "seed {seed}: {} bytes cannot hold a pkt-line",
                input.len()
            );
        }
        if let Ok(lines) = &result {
            let framed: usize = lines
                .iter()
                .map(|l| 4 + l.as_slice().map_or(0, <[u8]>::len))
                .sum();
            assert_eq!(
                framed,
                input.len(),
                "seed {seed}: the lines do not add up to the input \"{}\"",
                input.escape_ascii()
            );
            for l in lines {
                if let Some(d) = l.as_slice() {
                    assert!(
                        !d.is_empty() && d.len() <= 65516,
                        "seed {seed}: data line of {} bytes",
                        d.len()
                    );
                    assert!(
                        !d.starts_with(b"ERR "),
                        "seed {seed}: an ERR line was not reported"
                    );
                }
            }
        }
    }
}

#[test]
fn every_pkt_line_length_header() {
    for v in 0..=0xffff_u32 {
        for upper in [false, true] {
            if upper && v % 7 != 0 {
                continue;
            }
            let header = if upper {
                format!("{v:04X}")
            } else {
                format!("{v:04x}")
            };
            let mut input = header.into_bytes();
            let payload = (v as usize).saturating_sub(4).min(16);
            input.extend_from_slice(&vec![b'x'; payload]);
            let result = guarded("packet_lines", u64::from(v), &input, packet_lines);
            // 0000-0002 are flush, delimiter and response end; 0003 and
            // 0004 are invalid; from 0005 the header counts itself, and
            // only lines up to 16 data bytes are complete here.
            let complete = v <= 2 || (5..=20).contains(&v);
            assert_eq!(
                result.is_ok(),
                complete,
                "header {v:04x} (uppercase: {upper}): {:?}",
                result.as_ref().err()
            );
            if let Ok(lines) = result {
                assert_eq!(lines.len(), 1, "header {v:04x}");
            }
        }
    }
}

#[test]
fn v2_answers_never_panic() {
    let dict = protocol_dict();
    let caps = capability_seeds();
    let refs = ls_refs_seeds();
    let info = object_info_seeds();
    let all = all_pkt_seeds();
    // The seeds are valid answers: unmutated, each parser takes them, so
    // mutants start deep inside it.
    assert!(parse_capabilities(&encode(&caps[0])).is_ok());
    assert!(parse_capabilities(&encode(&caps[1])).is_ok());
    assert_eq!(parse_ls_refs(&encode(&refs[0])).unwrap().len(), 4);
    assert_eq!(parse_object_info(&encode(&info[0])).unwrap().len(), 3);

    for (k, (name, seeds)) in [
        ("capabilities", &caps),
        ("ls-refs", &refs),
        ("object-info", &info),
        ("any", &all),
    ]
    .into_iter()
    .enumerate()
    {
        for i in 0..cases(1500) {
            let seed = case_seed(10 + k as u64, i);
            let mut rng = Rng::new(seed);
            let input = hostile_pkt_input(&mut rng, seeds, &dict);
            // Data lines, when the body is well framed.
            let data_lines = guarded("packet_lines", seed, &input, packet_lines)
                .ok()
                .map(|lines| lines.iter().filter(|l| l.as_slice().is_some()).count());

            if let Ok(c) = guarded("parse_capabilities", seed, &input, parse_capabilities) {
                assert!(
                    data_lines.is_some(),
                    "{name} seed {seed}: capabilities from a malformed body"
                );
                assert!(c.ls_refs && c.fetch, "{name} seed {seed}: {c:?}");
                assert!(
                    c.object_format.as_deref().is_none_or(|f| f == "sha1"),
                    "{name} seed {seed}: {c:?}"
                );
            }
            if let Ok(r) = guarded("parse_ls_refs", seed, &input, parse_ls_refs) {
                let n = data_lines
                    .unwrap_or_else(|| panic!("{name} seed {seed}: refs from a malformed body"));
                assert!(
                    r.len() <= n,
                    "{name} seed {seed}: {} refs from {n} lines",
                    r.len()
                );
            }
            if let Ok(o) = guarded("parse_object_info", seed, &input, parse_object_info) {
                let n = data_lines.unwrap_or_else(|| {
                    panic!("{name} seed {seed}: object-info from a malformed body")
                });
                assert!(
                    n >= 1 && o.len() < n,
                    "{name} seed {seed}: {} sizes from {n} lines",
                    o.len()
                );
            }
        }
    }
}

/// Everything a fetch response parser produced.
#[derive(Debug, PartialEq)]
struct FetchOutcome {
    /// The first error `feed` returned (feeding stops there).
    error: Option<ProtocolError>,
    finished: Result<(), ProtocolError>,
    pack: Vec<u8>,
    shallow: Vec<String>,
    progress: Vec<String>,
}

/// Feeds `input` to a fresh parser in chunks of the sizes in `plan` (0: an
/// empty chunk; the rest of the input in one chunk once `plan` runs out),
/// stopping at the first error. The sink refuses data past `sink_limit`
/// bytes in total.
fn run_fetch(input: &[u8], plan: &[usize], sink_limit: usize) -> FetchOutcome {
    let mut parser = FetchResponseParser::new();
    let mut pack: Vec<u8> = Vec::new();
    let mut sink = |d: &[u8]| -> Result<(), ProtocolError> {
        if pack.len().saturating_add(d.len()) > sink_limit {
            return Err(ProtocolError("the sink is full".to_string()));
        }
        pack.extend_from_slice(d);
        Ok(())
    };
    let mut error = None;
    let mut rest = input;
    let mut sizes = plan.iter().copied();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        if let Err(e) = parser.feed(chunk, &mut sink) {
            error = Some(e);
            break;
        }
    }
    let finished = parser.finish();
    FetchOutcome {
        error,
        finished,
        pack,
        shallow: parser.shallow.iter().map(|o| o.to_string()).collect(),
        progress: parser.progress.clone(),
    }
}

/// Random chunk sizes adding up to `len`, with some empty chunks: single
/// bytes, a few bytes, and big pieces.
fn chunk_plan(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut plan = Vec::new();
    let mut left = len;
    while left > 0 {
        if rng.one_in(8) {
            plan.push(0);
        }
        let n = match rng.below(4) {
            0 => 1,
            1 => 1 + rng.below(4),
            2 => 1 + rng.below(16),
            _ => 1 + rng.below(left),
        }
        .min(left);
        plan.push(n);
        left -= n;
    }
    plan
}

#[test]
fn fetch_response_parser_survives_hostile_streams_in_any_chunking() {
    let seeds = fetch_seeds();
    // The seeds are valid (or properly failing) responses.
    let full = run_fetch(&encode(&seeds[0]), &[], usize::MAX);
    assert_eq!(full.error, None);
    assert_eq!(full.finished, Ok(()));
    assert_eq!(full.pack, SEED_PACK);
    assert_eq!(full.shallow, vec![A.to_string()]);
    assert_eq!(full.progress.len(), 2);
    assert_eq!(run_fetch(&encode(&seeds[1]), &[], usize::MAX).pack, b"PACK");
    let ended = run_fetch(&encode(&seeds[2]), &[], usize::MAX);
    assert_eq!(ended.finished, Ok(()));
    assert_eq!(ended.pack, b"PACKrest");
    assert!(
        run_fetch(&encode(&seeds[3]), &[], usize::MAX)
            .error
            .is_some()
    );
    assert!(
        run_fetch(&encode(&seeds[4]), &[], usize::MAX)
            .error
            .is_some()
    );

    let dict = protocol_dict();
    // Mutants of fetch responses mostly, of any answer sometimes.
    let all = all_pkt_seeds();
    for i in 0..cases(3000) {
        let seed = case_seed(20, i);
        let mut rng = Rng::new(seed);
        let pool = if rng.one_in(4) { &all } else { &seeds };
        let input = hostile_pkt_input(&mut rng, pool, &dict);
        let limit = if rng.one_in(4) {
            rng.below(64)
        } else {
            usize::MAX
        };
        let whole = guarded("FetchResponseParser", seed, &input, |d| {
            run_fetch(d, &[], limit)
        });
        let plan = chunk_plan(&mut rng, input.len());
        let split = guarded("FetchResponseParser (chunked)", seed, &input, |d| {
            run_fetch(d, &plan, limit)
        });
        assert_eq!(
            whole,
            split,
            "seed {seed}: splitting the response into chunks {plan:?} changed the outcome for \"{}\"",
            input.escape_ascii()
        );
        if whole.error.is_none() && whole.finished.is_ok() {
            assert!(whole.pack.len() <= input.len(), "seed {seed}");
        }
    }
}

#[test]
fn random_bytes_and_short_inputs_never_panic() {
    /// Every parser on one input. Inputs shorter than a pkt-line header
    /// (1 to 3 bytes) are errors for all of them.
    fn all_parsers(seed: u64, input: &[u8]) {
        let short = !input.is_empty() && input.len() < 4;
        let lines = guarded("packet_lines", seed, input, packet_lines);
        let caps = guarded("parse_capabilities", seed, input, parse_capabilities);
        let refs = guarded("parse_ls_refs", seed, input, parse_ls_refs);
        let info = guarded("parse_object_info", seed, input, parse_object_info);
        let fetch = guarded("FetchResponseParser", seed, input, |d| {
            run_fetch(d, &[1, 1, 1], usize::MAX)
        });
        let pointer = guarded("parse_pointer", seed, input, parse_pointer);
        if short {
            let shown = input.escape_ascii();
            assert!(lines.is_err(), "packet_lines accepted \"{shown}\"");
            assert!(caps.is_err(), "parse_capabilities accepted \"{shown}\"");
            assert!(refs.is_err(), "parse_ls_refs accepted \"{shown}\"");
            assert!(info.is_err(), "parse_object_info accepted \"{shown}\"");
            assert!(
                fetch.finished.is_err(),
                "a fetch response of \"{shown}\" finished"
            );
            assert!(pointer.is_none(), "parse_pointer accepted \"{shown}\"");
        }
    }

    all_parsers(0, b"");
    // Every input of one and two bytes, and three bytes over an alphabet.
    for a in 0..=255u8 {
        all_parsers(0, &[a]);
        for b in 0..=255u8 {
            all_parsers(0, &[a, b]);
        }
    }
    for &a in PKT_ALPHABET {
        for &b in PKT_ALPHABET {
            for &c in PKT_ALPHABET {
                all_parsers(0, &[a, b, c]);
            }
        }
    }
    // Longer random inputs: raw bytes, and bytes from the pkt-line alphabet.
    for i in 0..cases(3000) {
        let seed = case_seed(30, i);
        let mut rng = Rng::new(seed);
        let n = rng.below(300);
        let input: Vec<u8> = if rng.one_in(2) {
            rng.bytes(n)
        } else {
            (0..n).map(|_| *rng.pick(PKT_ALPHABET)).collect()
        };
        all_parsers(seed, &input);
    }
}

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
    assert_eq!(Pointer::from_key(&p.key()).as_ref(), Some(p), "seed {seed}");
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
