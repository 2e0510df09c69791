//! The deterministic input generator and harness shared by the
//! hostile-bytes tests: an xorshift generator, byte- and line-level
//! mutations, and `guarded`, which turns a panic into a failure naming the
//! case's seed. `REPOFS_FUZZ_SCALE` (a whole number, default 1) multiplies
//! the number of cases.

#![allow(dead_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};

// ---------------------------------------------------------------------------
// The generator and the harness.

/// xorshift64: tiny and deterministic; good enough to pick mutations.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that neighbouring seeds start far
        // apart; the state of xorshift must not be 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn one_in(&mut self, n: u64) -> bool {
        self.next_u64() % n.max(1) == 0
    }

    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 24) as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// One of `items`, which must not be empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// How many cases a test runs: `base` times `REPOFS_FUZZ_SCALE`.
pub fn cases(base: usize) -> usize {
    let scale = std::env::var("REPOFS_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    base.saturating_mul(scale)
}

/// The seed of case `case` of test number `test`.
pub fn case_seed(test: u64, case: usize) -> u64 {
    (test << 32) ^ case as u64
}

/// Runs `f` on `input`; a panic fails the test, showing the input.
pub fn guarded<'a, T>(what: &str, seed: u64, input: &'a [u8], f: impl FnOnce(&'a [u8]) -> T) -> T {
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
pub fn insert_at(v: &mut Vec<u8>, at: usize, piece: &[u8]) {
    let tail = v.split_off(at.min(v.len()));
    v.extend_from_slice(piece);
    v.extend_from_slice(&tail);
}

/// Bytes that sit on the parsers' decision points.
pub const INTERESTING: &[u8] = &[
    0, b'0', b'1', b'2', b'4', b'9', b'a', b'f', b'F', b'g', b'\n', b'\r', b' ', b':', b'~', b'-',
    b'+', b'.', 0x01, 0x02, 0x03, 0x7f, 0x80, 0xbf, 0xc3, 0xe2, 0xef, 0xff,
];

/// Bytes a pkt-line stream is made of, and a few it must not contain.
pub const PKT_ALPHABET: &[u8] = b"0123456789abcdefABCDEFxyz \n\r\0\x01\x02\x03\xff:~#=";

/// One to four byte-level mutations of `v`.
pub fn mutate_bytes(rng: &mut Rng, v: &mut Vec<u8>, dict: &[Vec<u8>]) {
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

/// Line-level mutations shared by every line-based format, chosen by
/// `roll`: 0 drops a line, 1 repeats one, 2 swaps two, 3 inserts `new`.
/// Whether `roll` was one of these (and applicable).
pub fn reorder<T: Clone>(
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
