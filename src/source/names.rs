//! Which names from a source may be shown as file names, for every source
//! (git trees, S3 keys): one set of rules, so no source serves a name
//! another refuses.
//!
//! A listing is the server's data, and a hostile one can hold any bytes as
//! an entry name. A name is refused when it cannot be a Linux file name
//! (empty, `.`, `..`, a `/` or NUL byte, more than 255 bytes), and when it
//! is a spelling of `.git` that git itself refuses to check out
//! (`verify_path` in git's `read-cache.c`, with `is_hfs_dotgit` and
//! `is_ntfs_dotgit` from `utf8.c` and `path.c`):
//!
//! - `.git` in any case;
//! - on HFS+ (macOS), which ignores some invisible code points and folds
//!   case: `.git` with U+200C..U+200F, U+202A..U+202E, U+206A..U+206F or
//!   U+FEFF anywhere in it (`.g\u{200c}it`, `\u{feff}.GIT`);
//! - on NTFS (Windows), which drops trailing spaces and dots, reads `:` as
//!   the start of an alternate data stream and `\` as a separator, and
//!   gives `.git` the short name `GIT~1`: `.git` or `git~1` (any case)
//!   followed by nothing but spaces and dots, or by that and then `:` or `\`
//!   and anything (`.git. .`, `.git::$INDEX_ALLOCATION`, `GIT~1:x`).
//!
//! Files copied out of the mount onto such a filesystem would otherwise
//! land in, or become, a repository's own `.git` directory (the attacks
//! behind CVE-2014-9390 and CVE-2019-1352). Names that merely start with
//! `.git` (`.gitignore`, `.gitmodules`, `.github`) are ordinary content and
//! are allowed.

/// Longest file name Linux filesystems accept, in bytes.
const NAME_MAX: usize = 255;

/// Whether a tree entry name is safe to show as a file name: not empty,
/// not `.` or `..`, no `/` or NUL byte, at most 255 bytes, and not a
/// spelling of `.git` on any filesystem git protects (see the module
/// documentation).
pub fn safe_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
        && name.len() <= NAME_MAX
        && !is_dotgit(name)
}

/// Whether `name` is a spelling of `.git` that git refuses to check out:
/// any case, or what NTFS or HFS+ would take for `.git` (see the module
/// documentation).
pub fn is_dotgit(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b".git") || is_ntfs_dotgit(name) || is_hfs_dotgit(name)
}

/// `name` without a leading `prefix` compared ASCII case-insensitively.
fn strip_prefix_ignore_case<'a>(name: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = name.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        name.get(prefix.len()..)
    } else {
        None
    }
}

/// Whether NTFS would take `name` for `.git`: `.git` or its short name
/// `git~1` (any case), then only spaces and dots (NTFS drops them at the
/// end of a name), optionally followed by `:` (an alternate data stream of
/// `.git`, such as `::$INDEX_ALLOCATION`) or `\` (a path separator there)
/// and anything at all.
fn is_ntfs_dotgit(name: &[u8]) -> bool {
    let Some(rest) = strip_prefix_ignore_case(name, b".git")
        .or_else(|| strip_prefix_ignore_case(name, b"git~1"))
    else {
        return false;
    };
    let first_other = rest.iter().copied().find(|&b| b != b' ' && b != b'.');
    matches!(first_other, None | Some(b':') | Some(b'\\'))
}

/// Code points HFS+ leaves out when it compares names (zero-width joiners,
/// direction marks and overrides, the deprecated shaping controls, and the
/// byte order mark), so that `.g\u{200c}it` there is `.git`.
fn hfs_ignored(c: char) -> bool {
    matches!(
        c,
        '\u{200c}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{206a}'..='\u{206f}' | '\u{feff}'
    )
}

/// Whether HFS+ would take `name` for `.git`: with the ignored code points
/// removed, `.git` in any ASCII case and nothing after it.
///
/// Like git, the name is read up to its first byte that is not UTF-8 (or a
/// noncharacter U+FFFE/U+FFFF, which git's decoder also rejects) and is
/// judged by what comes before: `.git\xff` is refused, as git refuses it.
fn is_hfs_dotgit(name: &[u8]) -> bool {
    if name.is_ascii() {
        // No code point to ignore: the common case, without decoding.
        return name.eq_ignore_ascii_case(b".git");
    }
    let valid = match name.utf8_chunks().next() {
        Some(chunk) => chunk.valid(),
        None => return false,
    };
    let mut chars = valid
        .chars()
        .take_while(|&c| c != '\u{fffe}' && c != '\u{ffff}')
        .filter(|&c| !hfs_ignored(c));
    for want in ['.', 'g', 'i', 't'] {
        match chars.next() {
            // Only ASCII folds here: `to_ascii_lowercase` leaves any other
            // character as it is, and no other character equals `want`.
            Some(c) if c.to_ascii_lowercase() == want => {}
            _ => return false,
        }
    }
    chars.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_file_names_are_refused() {
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"a/b",
            b"/",
            b"a\0b",
            b"\0",
            &[b'x'; 256][..],
        ] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        assert!(safe_name(&[b'x'; 255]));
        // 255 bytes of multi-byte characters are fine, 256 are not.
        assert!(safe_name("é".repeat(127).as_bytes()));
        assert!(!safe_name("é".repeat(128).as_bytes()));
    }

    #[test]
    fn every_spelling_of_dot_git_is_refused() {
        for bad in [
            // Any case.
            ".git",
            ".GIT",
            ".Git",
            ".gIt",
            ".giT",
            // HFS+: ignored code points anywhere, with case folding.
            ".g\u{200c}it",
            "\u{feff}.git",
            ".git\u{200d}",
            "\u{200e}.\u{200f}G\u{202a}i\u{202b}T\u{202c}\u{202d}\u{202e}",
            ".\u{206a}\u{206b}\u{206c}\u{206d}\u{206e}\u{206f}git",
            "\u{feff}\u{feff}.GIT\u{feff}",
            // HFS+: read up to a noncharacter, as git's decoder does.
            ".git\u{ffff}",
            ".git\u{fffe}x",
            // NTFS short name.
            "git~1",
            "GIT~1",
            "Git~1",
            "git~1 ",
            "GIT~1. .",
            "git~1:stream",
            "git~1\\config",
            // NTFS: trailing spaces and dots are dropped.
            ".git.",
            ".git ",
            ".git  ",
            ".git..",
            ".git . .",
            ".GIT. ",
            // NTFS: alternate data streams and backslash separators.
            ".git::$INDEX_ALLOCATION",
            ".git:stream",
            ".git:",
            ".GIT . ::$INDEX_ALLOCATION",
            ".git\\config",
            ".git .\\hooks\\post-checkout",
        ] {
            assert!(!safe_name(bad.as_bytes()), "{bad:?}");
        }
        // Not UTF-8 right after `.git`: git treats the name as ending there.
        assert!(!safe_name(b".git\xff"));
        assert!(!safe_name(b".GIT\xc3"));
        assert!(!safe_name(b"\xe2\x80\x8c.git\xfe\xfe"));
    }

    #[test]
    fn names_that_only_look_like_dot_git_are_allowed() {
        for good in [
            ".gitignore",
            ".gitmodules",
            ".gitattributes",
            ".github",
            ".gitkeep",
            ".git-blame-ignore-revs",
            "git",
            "GIT",
            ".gitx",
            ".git~1",
            ".git x",
            ".git.x",
            "x.git",
            "x .git",
            "..git",
            " .git",
            "git~2",
            "git~1x",
            "git~10",
            "git~",
            ".gi",
            ".g",
            "...",
            "a",
            "with space",
            ".hidden",
            "café",
            "日本語のファイル",
            "😀",
            "\u{200c}",
            "\u{200c}git",
            ".g\u{0301}it",
            ".gıt",
            ".ｇｉｔ",
            "\u{feff}.gitignore",
            "\u{200c}.git ",
        ] {
            assert!(safe_name(good.as_bytes()), "{good:?}");
        }
        // Not UTF-8 before `.git` ends: HFS+ escapes such bytes (`%FF`),
        // so the name cannot fold to `.git` there.
        assert!(safe_name(b"\xff.git"));
        assert!(safe_name(b".g\xffit"));
        assert!(safe_name(b"\xff"));
    }
}
