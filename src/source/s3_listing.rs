//! Listing one directory level of a bucket, and which keys can be names.
//!
//! A directory is one ListObjectsV2 with `delimiter=/` (all pages): common
//! prefixes are directories, `dir/` markers are skipped as entries of their
//! own directory, and a key `a` beside keys under `a/` shows `a` as a
//! directory.
//!
//! Every listing asks for `encoding-type=url`. S3 keys are any UTF-8, and
//! a key with a control character (`\x01`, `\x00`, ...) cannot be written
//! in XML 1.0: without the encoding S3 sends a document no parser accepts,
//! and one such key would fail its whole directory. With it, `Key` and the
//! common prefixes arrive percent-encoded (S3 writes a space as `+`) and are
//! decoded here into bytes that must be valid UTF-8. A server that ignores
//! the parameter (its answer has no `EncodingType`) is taken as it is.
//! Continuation tokens are opaque and sent back unchanged; a server that
//! says "truncated" without one is asked again with `start-after` the last
//! decoded key, which the SDK encodes like any other parameter.
//!
//! Which keys become names: a name is what one key segment decodes to, as
//! bytes, and Linux accepts every byte in a name except NUL and `/`. So
//! `\x01`, `\t`, `\r`, `\n`, escape characters and the like are shown (they
//! are legal, if awkward, names, and reading them works: GetObject is sent
//! the decoded key). Skipped, with one warning per key naming the reason:
//! a key that is not valid percent-encoded UTF-8, a NUL anywhere, an empty
//! segment (`//`), `.` or `..`, a segment over 255 bytes, a `/` inside one
//! level (a server that ignored the delimiter), a spelling of `.git` (the
//! rules git trees follow, in [`crate::source::names`]: any case, `git~1`,
//! `.git. .`, HFS+ ignorable code points), and a file whose name a
//! directory already has. Keys the server lists outside the requested
//! prefix are skipped with one warning per prefix. Keys appear in warnings
//! escaped (`{:?}`), so a name cannot forge log lines.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use aws_sdk_s3::types::EncodingType;

use super::{S3Source, describe, dir_key, file_key, lock};
use crate::source::{Entry, Node, NodeKind, SourceError};

/// One listed object: (size, mtime, etag, full decoded key).
type ListedObject = (u64, SystemTime, String, String);

impl S3Source {
    /// One directory level: ListObjectsV2 with delimiter, all pages.
    pub(super) async fn list_prefix(&self, prefix: &str) -> Result<Vec<Entry>, SourceError> {
        let mut dirs: BTreeMap<String, ()> = BTreeMap::new();
        let mut files: BTreeMap<String, ListedObject> = BTreeMap::new();
        let mut token: Option<String> = None;
        let mut start_after: Option<String> = None;
        // A key or common prefix that is not under `prefix` (a buggy or
        // hostile server): the first one seen, for the warning.
        let mut outside: Option<String> = None;
        loop {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.cfg.bucket)
                .prefix(prefix)
                .delimiter("/")
                .encoding_type(EncodingType::Url)
                .set_continuation_token(token.clone())
                .set_start_after(start_after.clone())
                .send()
                .await
                .map_err(|e| describe(&e, &self.cfg.bucket, "ListObjectsV2"))?;
            let url = out.encoding_type() == Some(&EncodingType::Url);
            // The greatest name this page listed (for `start-after`).
            let mut last: Option<String> = None;
            for cp in out.common_prefixes() {
                let Some(raw) = cp.prefix() else { continue };
                let p = match decode_key(raw, url) {
                    Ok(p) => p,
                    Err(why) => {
                        self.warn_once(raw, why);
                        continue;
                    }
                };
                match listed_dir(&p, prefix) {
                    Listed::Name(seg) => {
                        dirs.insert(seg.to_string(), ());
                    }
                    Listed::Bad(why) => self.warn_once(&p, why),
                    Listed::Outside => {
                        if outside.is_none() {
                            outside = Some(p.clone());
                        }
                    }
                    Listed::Marker => {}
                }
                // Past every key under this prefix.
                let past = format!("{p}\u{10FFFF}");
                if last.as_ref().is_none_or(|l| *l < past) {
                    last = Some(past);
                }
            }
            for obj in out.contents() {
                let Some(raw) = obj.key() else { continue };
                let key = match decode_key(raw, url) {
                    Ok(k) => k,
                    Err(why) => {
                        self.warn_once(raw, why);
                        continue;
                    }
                };
                if last.as_ref().is_none_or(|l| *l < key) {
                    last = Some(key.clone());
                }
                let rest = match listed_file(&key, prefix) {
                    Listed::Name(rest) => rest,
                    Listed::Marker => continue, // the directory's own marker
                    Listed::Bad(why) => {
                        self.warn_once(&key, why);
                        continue;
                    }
                    Listed::Outside => {
                        if outside.is_none() {
                            outside = Some(key.clone());
                        }
                        continue;
                    }
                };
                let mtime = obj
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let etag = obj.e_tag().unwrap_or("").to_string();
                let size = obj.size().unwrap_or(0).max(0) as u64;
                files.insert(rest.to_string(), (size, mtime, etag, key.clone()));
            }
            if out.is_truncated() != Some(true) {
                break;
            }
            match out.next_continuation_token() {
                Some(t) => {
                    if token.as_deref() == Some(t) {
                        // The same page again: it would never end.
                        return Err(SourceError::Corrupt(format!(
                            "S3 returned the same continuation token twice while listing {prefix:?} in bucket {}",
                            self.cfg.bucket
                        )));
                    }
                    token = Some(t.to_string());
                    start_after = None;
                }
                None => {
                    // Truncated without a token: go on after the last name,
                    // as long as that moves forward.
                    if last.is_none() || last <= start_after {
                        return Err(SourceError::Corrupt(format!(
                            "S3 said the listing of {prefix:?} in bucket {} goes on but gave no way to continue it",
                            self.cfg.bucket
                        )));
                    }
                    token = None;
                    start_after = last;
                }
            }
        }
        if let Some(example) = outside {
            // Once per listed prefix, however many keys and pages it affects.
            if lock(&self.warned).insert(format!("\0outside\0{prefix}")) {
                tracing::warn!(repo = %self.name, prefix = ?prefix, example = ?example, "S3 listed keys outside the requested prefix; skipping them");
            }
        }
        let now = SystemTime::now();
        let mut entries = Vec::with_capacity(dirs.len() + files.len());
        for name in dirs.keys() {
            entries.push(Entry {
                name: OsString::from(name),
                node: Node {
                    key: dir_key(&format!("{prefix}{name}/")),
                    kind: NodeKind::Dir,
                    mtime: now,
                },
            });
        }
        for (name, (size, mtime, etag, key)) in files {
            if dirs.contains_key(&name) {
                // `a` beside `a/...`: the directory wins, always.
                self.warn_once(&key, "a directory of the same name exists");
                continue;
            }
            entries.push(Entry {
                name: OsString::from(name),
                node: Node {
                    key: file_key(&key, &etag),
                    kind: NodeKind::File {
                        size,
                        executable: false,
                    },
                    mtime,
                },
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }
}

/// The first keys under `prefix` (no delimiter, at most `max`), decoded;
/// keys that do not decode, or hold a NUL, are left out. For `repofs check`, which must
/// not trip over a key XML cannot carry either.
pub async fn sample_keys(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    max: i32,
) -> Result<
    Vec<String>,
    aws_sdk_s3::error::SdkError<
        aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error,
        aws_sdk_s3::config::http::HttpResponse,
    >,
> {
    let out = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .encoding_type(EncodingType::Url)
        .max_keys(max)
        .send()
        .await?;
    let url = out.encoding_type() == Some(&EncodingType::Url);
    Ok(out
        .contents()
        .iter()
        .filter_map(|o| decode_key(o.key()?, url).ok())
        .filter(|k| !k.contains('\0'))
        .collect())
}

/// A key (or common prefix) as the server sent it: percent-decoded when
/// the answer is URL-encoded (`+` is a space, as S3 writes it), then
/// required to be UTF-8. Never panics, whatever the server sent.
pub(super) fn decode_key(raw: &str, url: bool) -> Result<String, &'static str> {
    if !url {
        return Ok(raw.to_string());
    }
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex);
                let lo = bytes.get(i + 2).copied().and_then(hex);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push((hi << 4) | lo),
                    _ => return Err("a malformed %-escape in the URL-encoded key"),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "the key is not valid UTF-8 once decoded")
}

/// Why a key segment cannot be a file name, if it cannot.
fn segment_problem(seg: &str) -> Option<&'static str> {
    if seg.is_empty() {
        Some("empty path segment (`//` in the key)")
    } else if seg == "." || seg == ".." {
        Some("`.` or `..` as a path segment")
    } else if seg.len() > 255 {
        Some("a path segment longer than 255 bytes")
    } else if seg.contains('\0') {
        Some("a NUL byte in the key")
    } else if seg.contains('/') {
        // Only a server that ignored `delimiter=/` lists such a key here.
        Some("a `/` inside one directory level (the server ignored the delimiter)")
    } else if crate::source::names::is_dotgit(seg.as_bytes()) {
        Some("a spelling of `.git` (any case, or its NTFS or HFS+ form), which git refuses too")
    } else {
        None
    }
}

/// What one key or common prefix of a listing of `prefix` is. The server's
/// answer is not trusted to be under `prefix` (nor to be long enough to
/// slice): only `strip_prefix` takes it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed<'a> {
    /// An entry of the listed directory, by this name.
    Name(&'a str),
    /// The directory's own marker object (the key `prefix` itself).
    Marker,
    /// Under `prefix`, but not usable as a file name (why).
    Bad(&'static str),
    /// Not under `prefix` at all.
    Outside,
}

/// A key of `contents` in a listing of `prefix`.
fn listed_file<'a>(key: &'a str, prefix: &str) -> Listed<'a> {
    match key.strip_prefix(prefix) {
        None => Listed::Outside,
        Some("") => Listed::Marker,
        Some(rest) => match segment_problem(rest) {
            Some(why) => Listed::Bad(why),
            None => Listed::Name(rest),
        },
    }
}

/// A common prefix (`prefix` + name + `/`) in a listing of `prefix`.
fn listed_dir<'a>(common: &'a str, prefix: &str) -> Listed<'a> {
    let Some(rest) = common.strip_prefix(prefix) else {
        return Listed::Outside;
    };
    let seg = rest.strip_suffix('/').unwrap_or(rest);
    match segment_problem(seg) {
        Some(why) => Listed::Bad(why),
        None => Listed::Name(seg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_keys_are_checked_against_the_prefix() {
        assert_eq!(listed_file("dir/a.txt", "dir/"), Listed::Name("a.txt"));
        assert_eq!(listed_file("a.txt", ""), Listed::Name("a.txt"));
        assert_eq!(listed_file("dir/", "dir/"), Listed::Marker);
        assert_eq!(listed_file("dir/é", "dir/"), Listed::Name("é"));
        // Not under the prefix: shorter, different, or sharing only bytes
        // (slicing `é` by the prefix length would panic on a char boundary).
        for key in ["", "d", "dir", "other/a", "dié/x", "é", "éééé", "DIR/a"] {
            assert_eq!(listed_file(key, "dir/"), Listed::Outside, "{key:?}");
        }
        assert_eq!(listed_file("ab", "é/"), Listed::Outside);
        assert_eq!(listed_file("\u{e9}", "\u{c3}"), Listed::Outside);
        for key in ["dir/.", "dir/..", "dir//", "dir/a\0b", "dir/a/b"] {
            assert!(
                matches!(listed_file(key, "dir/"), Listed::Bad(_)),
                "{key:?}"
            );
        }
        let long = format!("dir/{}", "x".repeat(256));
        assert!(matches!(listed_file(&long, "dir/"), Listed::Bad(_)));
        // Every spelling of `.git` git refuses, as a file or a directory.
        for seg in [
            ".git",
            ".GIT",
            "git~1",
            "GIT~1",
            ".git. .",
            ".g\u{200c}it",
            ".git::$DATA",
        ] {
            let key = format!("dir/{seg}");
            assert!(
                matches!(listed_file(&key, "dir/"), Listed::Bad(_)),
                "{key:?}"
            );
            let common = format!("dir/{seg}/");
            assert!(
                matches!(listed_dir(&common, "dir/"), Listed::Bad(_)),
                "{common:?}"
            );
        }
        for seg in [".gitignore", ".github", "git", ".git~1"] {
            let key = format!("dir/{seg}");
            assert_eq!(listed_file(&key, "dir/"), Listed::Name(seg));
        }
        let ok = format!("dir/{}", "x".repeat(255));
        assert!(matches!(listed_file(&ok, "dir/"), Listed::Name(_)));
        // Control characters other than NUL are legal names.
        for key in [
            "dir/a\x01b",
            "dir/a\tb",
            "dir/a\rb",
            "dir/a\nb",
            "dir/\x1b[31m",
        ] {
            assert!(
                matches!(listed_file(key, "dir/"), Listed::Name(_)),
                "{key:?}"
            );
        }
    }

    #[test]
    fn listed_common_prefixes_are_checked_against_the_prefix() {
        assert_eq!(listed_dir("dir/sub/", "dir/"), Listed::Name("sub"));
        assert_eq!(listed_dir("sub/", ""), Listed::Name("sub"));
        assert_eq!(listed_dir("dir/é/", "dir/"), Listed::Name("é"));
        assert_eq!(listed_dir("dir/a\x01/", "dir/"), Listed::Name("a\x01"));
        for p in ["", "d", "dir", "x/sub/", "é/", "dé/sub/"] {
            assert_eq!(listed_dir(p, "dir/"), Listed::Outside, "{p:?}");
        }
        // `dir//` (an empty segment), `.`/`..`, a `/` inside the name, NUL.
        for p in [
            "dir/", "dir//", "dir/./", "dir/../", "dir/a/b/", "dir/a//", "dir/a\0/",
        ] {
            assert!(matches!(listed_dir(p, "dir/"), Listed::Bad(_)), "{p:?}");
        }
    }

    #[test]
    fn url_encoded_keys_decode_to_utf8_or_are_refused() {
        for (raw, want) in [
            ("plain.txt", "plain.txt"),
            ("d/a%01b", "d/a\x01b"),
            ("d/nul%00x", "d/nul\0x"),
            ("cr%0D%0Alf%09tab", "cr\r\nlf\ttab"),
            // S3 writes a space as `+` and a `+` as `%2B`; moto uses `%20`.
            ("sp+ace%2Bplus%25", "sp ace+plus%"),
            ("sp%20ace", "sp ace"),
            ("%C3%A9t%c3%a9", "été"),
            ("déjà", "déjà"),
            ("", ""),
        ] {
            assert_eq!(decode_key(raw, true).as_deref(), Ok(want), "{raw:?}");
        }
        // Not URL-encoded (the server ignored encoding-type): as sent.
        assert_eq!(decode_key("a+b%41", false).as_deref(), Ok("a+b%41"));
        for raw in [
            "%",
            "%4",
            "a%zz",
            "%%41",
            "%FF",
            "%C3",
            "%C3%28",
            "%ED%A0%80",
            "x%E9",
        ] {
            assert!(decode_key(raw, true).is_err(), "{raw:?}");
        }
    }
}
