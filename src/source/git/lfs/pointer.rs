//! LFS pointer files and the LFS endpoint: a blob under 1024 bytes that
//! parses as a pointer exactly as git-lfs reads it stands for the object it
//! names; the endpoint is `lfs.url` from a committed `.lfsconfig`, else the
//! clone URL's `info/lfs`.

use crate::source::git::transport::origin;

/// Largest blob that can be a pointer (git-lfs's own limit).
pub const MAX_POINTER_SIZE: u64 = 1024;
/// Most objects asked for in one batch request.
/// Smallest possible pointer: version line, oid line, `size 0`.
pub const MIN_POINTER_SIZE: u64 = 120;

/// A parsed LFS pointer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pointer {
    /// Lower-case hex sha256.
    pub oid: String,
    pub size: u64,
}

impl Pointer {
    /// Node key for an LFS file: `lfs:<sha256>:<size>:<pointer blob id>`.
    pub fn key(&self, blob: &str) -> Vec<u8> {
        format!("lfs:{}:{}:{blob}", self.oid, self.size).into_bytes()
    }

    /// The pointer, and the id of the pointer blob, of an LFS node key.
    pub fn from_key(key: &[u8]) -> Option<(Pointer, String)> {
        let s = std::str::from_utf8(key).ok()?.strip_prefix("lfs:")?;
        let mut parts = s.splitn(3, ':');
        let (oid, size, blob) = (parts.next()?, parts.next()?, parts.next()?);
        let p = Pointer {
            oid: oid.to_string(),
            size: size.parse().ok()?,
        };
        Some((p, blob.to_string()))
    }

    pub fn cache_key(&self) -> String {
        format!("lfs-{}", self.oid)
    }
}

/// Parses a pointer file the way git-lfs does: `version` first, then keys
/// in order, `oid sha256:<64 hex>` and `size <n>` required, every line
/// `key value\n`. Anything else is not a pointer (it is shown as it is).
pub fn parse_pointer(data: &[u8]) -> Option<Pointer> {
    if data.len() as u64 >= MAX_POINTER_SIZE || !data.ends_with(b"\n") {
        return None;
    }
    let text = std::str::from_utf8(data).ok()?;
    let mut lines = text.lines();
    let version = lines.next()?.strip_prefix("version ")?;
    if version != "https://git-lfs.github.com/spec/v1"
        && version != "https://hawser.github.com/spec/v1"
    {
        return None;
    }
    let (mut oid, mut size) = (None, None);
    let mut last_key = String::new();
    for line in lines {
        let (k, v) = line.split_once(' ')?;
        if k.is_empty() || v.is_empty() || k <= last_key.as_str() {
            return None; // keys must be sorted and unique
        }
        match k {
            "oid" => {
                let hex = v.strip_prefix("sha256:")?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return None;
                }
                oid = Some(hex.to_string());
            }
            "size" => {
                if !v.bytes().all(|b| b.is_ascii_digit()) || (v.len() > 1 && v.starts_with('0')) {
                    return None;
                }
                size = Some(v.parse::<u64>().ok()?);
            }
            k if k.starts_with("ext-") => {}
            _ => return None,
        }
        last_key = k.to_string();
    }
    Some(Pointer {
        oid: oid?,
        size: size?,
    })
}

/// The LFS endpoint for a repository, and a warning for the log when the
/// repository's own `.lfsconfig` was not followed as written.
///
/// `lfs_url` (the operator's, from the config) wins. Else `lfs.url` from a
/// committed `.lfsconfig` is used, but the repository cannot widen where
/// its credentials go: an endpoint on another origin than the clone URL is
/// asked anonymously (the transport sends credentials only to trusted
/// origins), and a plain `http://` endpoint for an `https://` clone URL is
/// not used at all. Else `<clone url>/info/lfs` (adding `.git` when the
/// clone URL lacks it, as git-lfs does).
pub fn endpoint(
    clone_url: &str,
    lfs_url: Option<&str>,
    lfsconfig: Option<&[u8]>,
) -> (String, Option<String>) {
    let default = || {
        if clone_url.ends_with(".git") {
            format!("{clone_url}/info/lfs")
        } else {
            format!("{clone_url}.git/info/lfs")
        }
    };
    if let Some(url) = lfs_url {
        return (url.trim_end_matches('/').to_string(), None);
    }
    let Some(url) = lfsconfig.and_then(lfsconfig_url) else {
        return (default(), None);
    };
    let url = url.trim_end_matches('/').to_string();
    let (theirs, ours) = (origin(&url), origin(clone_url));
    if theirs.is_some() && theirs == ours {
        return (url, None);
    }
    let shown = crate::redact::url(&url);
    if clone_url.starts_with("https://") && url.starts_with("http://") {
        let note = format!(
            ".lfsconfig names the LFS server {shown}, plain http for an https repository: it is not used (the default endpoint is); set lfs_url in the config to use it"
        );
        return (default(), Some(note));
    }
    let note = format!(
        ".lfsconfig names the LFS server {shown}, on another origin than the clone URL: it is asked without the repository's credentials; set lfs_url in the config if it should get them"
    );
    (url, Some(note))
}

/// `url` in the `[lfs]` section of a git-config style file.
fn lfsconfig_url(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let mut in_lfs = false;
    for raw in text.lines() {
        let line = raw.split(['#', ';']).next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_lfs = line
                .trim_matches(['[', ']'])
                .trim()
                .eq_ignore_ascii_case("lfs");
            continue;
        }
        if in_lfs {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim().eq_ignore_ascii_case("url") {
                    let v = v.trim().trim_matches('"');
                    if v.starts_with("http://") || v.starts_with("https://") {
                        return Some(v.to_string());
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    fn pointer(size: &str) -> String {
        format!("version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\nsize {size}\n")
    }

    #[test]
    fn pointers_parse_like_git_lfs() {
        let p = parse_pointer(pointer("12345").as_bytes()).unwrap();
        assert_eq!(p.oid, OID);
        assert_eq!(p.size, 12345);
        assert_eq!(
            Pointer::from_key(&p.key("abc")),
            Some((p.clone(), "abc".to_string()))
        );
        assert_eq!(Pointer::from_key(b"lfs:x:12"), None);
        assert_eq!(parse_pointer(pointer("0").as_bytes()).unwrap().size, 0);
        let ext = format!(
            "version https://git-lfs.github.com/spec/v1\next-0-foo sha256:{OID}\noid sha256:{OID}\nsize 5\n"
        );
        assert!(parse_pointer(ext.as_bytes()).is_some());
        assert!((pointer("1").len() as u64) >= MIN_POINTER_SIZE);
    }

    #[test]
    fn malformed_pointers_are_plain_files() {
        for bad in [
            pointer("12a"),
            pointer("-1"),
            pointer("012"),
            pointer("5").trim_end().to_string(), // no final newline
            pointer("5").replace("sha256:", "sha1:"),
            pointer("5").replace(OID, &OID[..60]),
            pointer("5").replace(OID, &OID.to_uppercase()),
            pointer("5").replace("version https://git-lfs.github.com/spec/v1", "version 2"),
            format!("size 5\noid sha256:{OID}\nversion https://git-lfs.github.com/spec/v1\n"),
            format!("version https://git-lfs.github.com/spec/v1\nsize 5\noid sha256:{OID}\n"),
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\n"),
            format!("{}{}", pointer("5"), "x".repeat(1024)),
            "hello\n".to_string(),
        ] {
            assert!(parse_pointer(bad.as_bytes()).is_none(), "{bad:?}");
        }
        assert!(parse_pointer(&[0xff, 0xfe, b'\n']).is_none());
    }

    #[test]
    fn endpoints() {
        let ep = |clone, cfg| endpoint(clone, None, cfg).0;
        assert_eq!(ep("https://h/o/r.git", None), "https://h/o/r.git/info/lfs");
        assert_eq!(ep("http://h/r", None), "http://h/r.git/info/lfs");
        let cfg = b"# comment\n[core]\n\turl = https://wrong\n[lfs]\n\turl = \"https://lfs.example/org/repo/\"\n";
        assert_eq!(
            ep("https://h/o/r.git", Some(cfg)),
            "https://lfs.example/org/repo"
        );
        assert_eq!(
            ep("https://h/o/r.git", Some(b"[lfs]\nurl = ftp://x\n")),
            "https://h/o/r.git/info/lfs"
        );
    }

    #[test]
    fn the_repository_cannot_widen_where_credentials_go() {
        // Same origin: followed, nothing to say.
        let same = b"[lfs]\nurl = https://h:443/lfs/r\n";
        assert_eq!(
            endpoint("https://h/o/r.git", None, Some(same)),
            ("https://h:443/lfs/r".into(), None)
        );
        // Another origin: followed (anonymously, by the transport), said once.
        let other = b"[lfs]\nurl = http://127.0.0.1:9/steal?sig=SECRET\n";
        let (url, note) = endpoint("http://127.0.0.1:8/r.git", None, Some(other));
        assert_eq!(url, "http://127.0.0.1:9/steal?sig=SECRET");
        let note = note.expect("a note for another origin");
        assert!(
            note.contains("without the repository's credentials"),
            "{note}"
        );
        assert!(!note.contains("SECRET"), "{note}");
        // A downgrade to plain http is not used at all.
        let plain = b"[lfs]\nurl = http://h/o/r.git/info/lfs\n";
        let (url, note) = endpoint("https://h/o/r.git", None, Some(plain));
        assert_eq!(url, "https://h/o/r.git/info/lfs");
        assert!(note.is_some_and(|n| n.contains("not used")));
        // The operator's lfs_url wins over the repository's.
        let (url, note) = endpoint(
            "https://h/o/r.git",
            Some("https://lfs.corp/x/"),
            Some(other),
        );
        assert_eq!((url.as_str(), note), ("https://lfs.corp/x", None));
    }
}
