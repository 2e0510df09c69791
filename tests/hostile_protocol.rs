//! Hostile bytes, git protocol: every parser of what a git server sends must answer (`Ok` or
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

mod fuzz;

use fuzz::*;
use repofs::source::git::lfs::parse_pointer;
use repofs::source::git::protocol::{
    FetchResponseParser, ProtocolError, packet_lines, parse_capabilities, parse_ls_refs,
    parse_object_info,
};

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
