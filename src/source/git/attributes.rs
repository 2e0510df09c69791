//! Which checkout conversions `.gitattributes` ask of a file, resolved as
//! git resolves them (gitattributes(5)): the `.gitattributes` of the root
//! and of every directory down to the file's, a deeper file's patterns
//! before a shallower one's, and within a file the last matching line
//! first; patterns relative to the directory of the file that holds them;
//! macros (`[attr]name ...`, and the built-in `binary`) only from the root
//! file. Parsing and matching are gitoxide's (`gix-attributes`,
//! `gix-glob`), case-sensitive as on Linux; no `core.attributesFile` nor
//! `$GIT_DIR/info/attributes` exists for a mount, as for a fresh clone.
//!
//! What git itself refuses is refused here too, with a note to log:
//! a line over [`LINE_MAX`] bytes, a line with an invalid attribute name
//! (the whole line, as git does), negative patterns, macros outside the
//! root. A file over [`ATTRIBUTES_MAX`] is not read at all.
//!
//! The answer for one path is a [`Spec`]: the assignments of the
//! attributes checkout conversion reads (`text`, `crlf`, `eol`, `ident`,
//! `working-tree-encoding`), written back in gitattributes syntax, so it
//! names a conversion exactly and can be part of a node key.

use bstr::ByteSlice;
use gix_attributes::search::{MetadataCollection, Outcome};
use gix_attributes::{Search, StateRef};

/// Largest `.gitattributes` read (git's own limit is 100 MB; a larger one
/// here is ignored with a warning, its directory served unconverted).
pub const ATTRIBUTES_MAX: u64 = 1 << 20;
/// Longest line git reads in a `.gitattributes` (`ATTR_MAX_LINE_LENGTH`).
pub const LINE_MAX: usize = 2048;
/// The attributes checkout conversion reads, in the order a [`Spec`]
/// lists them.
const SELECTION: [&str; 5] = ["text", "crlf", "eol", "ident", "working-tree-encoding"];

/// The attribute assignments that decide a file's checkout conversion,
/// as one gitattributes line without its pattern (`text eol=crlf`); empty
/// when none is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Spec(pub String);

impl Spec {
    /// The value of `name` as the spec says it: `Some("")` for set,
    /// `Some("-")` for unset, `Some(value)`, or `None` (unspecified).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.split(' ').find_map(|a| {
            if a == name {
                Some("")
            } else if a.strip_prefix('-') == Some(name) {
                Some("-")
            } else {
                a.strip_prefix(name)?.strip_prefix('=')
            }
        })
    }

    /// The spec without `name` (the conversion done by other means).
    pub fn without(&self, name: &str) -> Spec {
        let keep = |a: &&str| {
            *a != name && a.strip_prefix('-') != Some(name) && a.split('=').next() != Some(name)
        };
        Spec(self.0.split(' ').filter(keep).collect::<Vec<_>>().join(" "))
    }
}

/// The `.gitattributes` files in force for one directory, root first.
pub struct Stack {
    search: Search,
    collection: MetadataCollection,
}

impl Default for Stack {
    fn default() -> Stack {
        Stack::new()
    }
}

impl Stack {
    /// A stack holding git's built-in macro (`binary`) only.
    pub fn new() -> Stack {
        let mut collection = MetadataCollection::default();
        let search =
            Search::new_globals(None::<std::path::PathBuf>, &mut Vec::new(), &mut collection)
                .unwrap_or_default();
        Stack { search, collection }
    }

    /// Adds the `.gitattributes` of directory `dir` (`""` for the root,
    /// else `a/b`), after those of the directories above it. Returns what
    /// git would warn about in it (lines ignored), empty when nothing.
    pub fn push(&mut self, dir: &str, bytes: &[u8]) -> Vec<String> {
        let root = dir.is_empty();
        let (kept, mut notes) = usable_lines(bytes, root);
        let source = if root {
            std::path::PathBuf::from(".gitattributes")
        } else {
            std::path::Path::new(dir).join(".gitattributes")
        };
        let added = self.search.add_patterns_buffer(
            &kept,
            source,
            Some(std::path::Path::new("")),
            &mut self.collection,
            root,
        );
        if let Err(e) = added {
            notes.push(format!("cannot be used: {e}"));
        }
        notes
    }

    /// The spec of the file at `path` (relative to the root, `/`-separated).
    pub fn spec(&self, path: &str) -> Spec {
        let mut out = Outcome::default();
        out.initialize_with_selection(&self.collection, SELECTION);
        self.search.pattern_matching_relative_path(
            path.as_bytes().as_bstr(),
            gix_glob::pattern::Case::Sensitive,
            Some(false),
            &mut out,
        );
        let parts: Vec<String> = out
            .iter_selected()
            .filter_map(|m| {
                let name = m.assignment.name.as_str();
                match m.assignment.state {
                    StateRef::Unspecified => None,
                    StateRef::Set => Some(name.to_string()),
                    StateRef::Unset => Some(format!("-{name}")),
                    StateRef::Value(v) => Some(format!("{name}={}", v.as_bstr())),
                }
            })
            .collect();
        Spec(parts.join(" "))
    }
}

/// The lines of a `.gitattributes` git would use, and a note for each kind
/// of line it would warn about and skip.
fn usable_lines(bytes: &[u8], root: bool) -> (Vec<u8>, Vec<String>) {
    let mut kept = Vec::with_capacity(bytes.len());
    let (mut long, mut bad, mut negative, mut macros) = (0, 0, 0, 0);
    for line in bytes.lines_with_terminator() {
        if line.len() > LINE_MAX {
            long += 1;
            continue;
        }
        match gix_attributes::parse(line).next() {
            Some(Err(_)) => bad += 1,
            Some(Ok((kind, mut assignments, _))) => {
                if assignments.any(|a| a.is_err()) {
                    bad += 1;
                    continue;
                }
                match kind {
                    gix_attributes::parse::Kind::Pattern(p) if p.is_negative() => negative += 1,
                    gix_attributes::parse::Kind::Macro(_) if !root => macros += 1,
                    _ => kept.extend_from_slice(line),
                }
            }
            None => {}
        }
    }
    let mut notes = Vec::new();
    for (n, what) in [
        (long, format!("longer than {LINE_MAX} bytes")),
        (bad, "with an invalid attribute name or pattern".to_string()),
        (
            negative,
            "with a negative pattern (not allowed in gitattributes)".to_string(),
        ),
        (
            macros,
            "defining a macro outside the root .gitattributes".to_string(),
        ),
    ] {
        if n > 0 {
            notes.push(format!("{n} line(s) {what} ignored"));
        }
    }
    (kept, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(files: &[(&str, &str)]) -> Stack {
        let mut s = Stack::new();
        for (dir, text) in files {
            assert!(s.push(dir, text.as_bytes()).is_empty(), "{dir}: {text}");
        }
        s
    }

    #[test]
    fn last_matching_line_wins_and_values_are_kept() {
        let s = stack(&[("", "*.bat text eol=crlf\n*.txt text\nbuild.bat -text\n")]);
        assert_eq!(s.spec("a/x.bat").0, "text eol=crlf");
        assert_eq!(s.spec("build.bat").0, "-text eol=crlf");
        assert_eq!(s.spec("sub/build.bat").0, "-text eol=crlf");
        assert_eq!(s.spec("x.txt").0, "text");
        assert_eq!(s.spec("x.c").0, "");
    }

    #[test]
    fn deeper_files_override_and_their_patterns_are_relative_to_them() {
        let s = stack(&[
            ("", "*.txt text eol=crlf\n/top.md ident\n"),
            ("sub", "*.txt eol=lf\nonly/here.md ident\n"),
        ]);
        assert_eq!(s.spec("a.txt").0, "text eol=crlf");
        assert_eq!(s.spec("sub/a.txt").0, "text eol=lf");
        assert_eq!(s.spec("sub/deep/a.txt").0, "text eol=lf");
        assert_eq!(s.spec("top.md").0, "ident");
        // Anchored to the root: not in a subdirectory.
        assert_eq!(s.spec("sub/top.md").0, "");
        assert_eq!(s.spec("sub/only/here.md").0, "ident");
        assert_eq!(s.spec("only/here.md").0, "");
    }

    #[test]
    fn macros_come_from_the_root_only_and_binary_is_built_in() {
        let mut s = stack(&[("", "[attr]crlfy text eol=crlf\n*.a crlfy\n*.png binary\n")]);
        assert_eq!(s.spec("x.a").0, "text eol=crlf");
        assert_eq!(s.spec("x.png").0, "-text");
        let notes = s.push("sub", b"[attr]mine ident\n*.b mine\n");
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(s.spec("sub/x.b").0, "");
    }

    #[test]
    fn what_git_warns_about_is_skipped_and_the_rest_applies() {
        let mut s = Stack::new();
        let long = format!("{} ident\n", "x".repeat(LINE_MAX));
        let text = format!(
            "*.a text eol=crlf\n{long}!*.b ident\n*.c bad@name\n*.d working-tree-encoding=UTF-16LE-BOM\n"
        );
        let notes = s.push("", text.as_bytes());
        // (gitoxide's parser refuses negative patterns as invalid.)
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!(s.spec("x.a").0, "text eol=crlf");
        assert_eq!(s.spec("x.b").0, "");
        assert_eq!(s.spec("x.c").0, "");
        assert_eq!(s.spec("x.d").0, "working-tree-encoding=UTF-16LE-BOM");
        // Not text at all: nothing breaks.
        let _ = s.push("bin", b"\xff\xfe\x00garbage\n\x00\x00 ident");
        assert_eq!(s.spec("bin/x.a").0, "text eol=crlf");
    }

    #[test]
    fn spec_fields() {
        let spec = Spec("-text eol=crlf ident working-tree-encoding=UTF-16".into());
        assert_eq!(spec.get("text"), Some("-"));
        assert_eq!(spec.get("eol"), Some("crlf"));
        assert_eq!(spec.get("ident"), Some(""));
        assert_eq!(spec.get("crlf"), None);
        assert_eq!(spec.get("working-tree-encoding"), Some("UTF-16"));
        assert_eq!(
            spec.without("working-tree-encoding").0,
            "-text eol=crlf ident"
        );
        assert_eq!(
            spec.without("text").0,
            "eol=crlf ident working-tree-encoding=UTF-16"
        );
    }
}
