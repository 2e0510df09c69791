//! Git protocol v2 over smart HTTP: building `ls-refs`, `fetch` and
//! `object-info` requests, and parsing their answers. Pkt-lines are decoded
//! with `gix-packetline`; the `packfile` section is demultiplexed from the
//! sideband (band 1 = pack data, 2 = progress, 3 = fatal error) as it streams.

use gix_hash::ObjectId;
use gix_packetline::PacketLineRef;
use gix_packetline::decode::{self, Stream};

/// What the server said it can do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub ls_refs: bool,
    pub fetch: bool,
    /// Features listed on the `fetch=` line (`shallow`, `filter`, ...).
    pub fetch_features: Vec<String>,
    pub object_info: bool,
    pub object_format: Option<String>,
}

impl Capabilities {
    pub fn supports_filter(&self) -> bool {
        self.fetch_features.iter().any(|f| f == "filter")
    }
    pub fn supports_shallow(&self) -> bool {
        self.fetch_features.iter().any(|f| f == "shallow")
    }
}

/// One ref from `ls-refs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    pub name: String,
    pub oid: ObjectId,
    /// For annotated tags: the object the tag points to.
    pub peeled: Option<ObjectId>,
    pub symref_target: Option<String>,
}

impl RemoteRef {
    /// The commit this ref means (peeled through annotated tags).
    pub fn target(&self) -> ObjectId {
        self.peeled.unwrap_or(self.oid)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

fn perr(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// Splits a whole (buffered) response into pkt-lines.
pub fn packet_lines(mut data: &[u8]) -> Result<Vec<PacketLineRef<'_>>, ProtocolError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        match decode::streaming(data).map_err(|e| perr(format!("malformed pkt-line: {e}")))? {
            Stream::Complete {
                line,
                bytes_consumed,
            } => {
                if let PacketLineRef::Data(d) = line {
                    if let Some(msg) = d.strip_prefix(b"ERR ") {
                        return Err(perr(format!(
                            "the server reported an error: {}",
                            String::from_utf8_lossy(msg).trim_end()
                        )));
                    }
                }
                out.push(line);
                data = &data[bytes_consumed..];
            }
            Stream::Incomplete { .. } => {
                return Err(perr("the response ended in the middle of a pkt-line"));
            }
        }
    }
    Ok(out)
}

fn text(line: &PacketLineRef<'_>) -> Option<String> {
    match line {
        PacketLineRef::Data(d) => Some(
            String::from_utf8_lossy(d)
                .trim_end_matches('\n')
                .to_string(),
        ),
        _ => None,
    }
}

/// Parses the body of `GET info/refs?service=git-upload-pack` sent with
/// `Git-Protocol: version=2`.
pub fn parse_capabilities(body: &[u8]) -> Result<Capabilities, ProtocolError> {
    let lines = packet_lines(body)?;
    let mut it = lines.iter().peekable();
    // Some servers prefix the v0-style service announcement and a flush.
    if let Some(first) = it.peek() {
        if text(first).is_some_and(|t| t.starts_with("# service=")) {
            it.next();
            if matches!(it.peek(), Some(PacketLineRef::Flush)) {
                it.next();
            }
        }
    }
    match it.next().and_then(text) {
        Some(v) if v == "version 2" => {}
        Some(v)
            if v.len() > 41
                && v.as_bytes()[40] == b' '
                && v[..40].bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            return Err(perr(
                "the server speaks only git protocol v0/v1; repofs needs protocol v2 (git 2.18 or newer on the server, protocol.version not disabled)",
            ));
        }
        other => {
            return Err(perr(format!(
                "unexpected capability advertisement (first line {:?}); is this a git smart-HTTP URL?",
                other.unwrap_or_default()
            )));
        }
    }
    let mut caps = Capabilities::default();
    for line in it {
        let Some(t) = text(line) else { break };
        let (key, value) = t.split_once('=').unwrap_or((t.as_str(), ""));
        match key {
            "ls-refs" => caps.ls_refs = true,
            "fetch" => {
                caps.fetch = true;
                caps.fetch_features = value
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
            }
            "object-info" => caps.object_info = true,
            "object-format" => caps.object_format = Some(value.to_string()),
            _ => {}
        }
    }
    if !caps.ls_refs || !caps.fetch {
        return Err(perr(
            "the server does not offer the ls-refs and fetch commands",
        ));
    }
    if let Some(f) = &caps.object_format {
        if f != "sha1" {
            return Err(perr(format!(
                "the repository uses the {f} object format; repofs supports sha1 repositories"
            )));
        }
    }
    Ok(caps)
}

/// Appends one pkt-line holding `s`.
fn push_line(out: &mut Vec<u8>, s: &str) {
    let len = s.len() + 4;
    out.extend_from_slice(format!("{len:04x}").as_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Builds a v2 command request: capability lines, delimiter, arguments, flush.
pub fn command_request(command: &str, caps: &Capabilities, args: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    push_line(&mut out, &format!("command={command}\n"));
    push_line(
        &mut out,
        concat!("agent=repofs/", env!("CARGO_PKG_VERSION"), "\n"),
    );
    if caps.object_format.is_some() {
        push_line(&mut out, "object-format=sha1\n");
    }
    out.extend_from_slice(b"0001");
    for a in args {
        push_line(&mut out, &format!("{a}\n"));
    }
    out.extend_from_slice(b"0000");
    out
}

/// `ls-refs` arguments that find `reference` (or HEAD when `None`).
pub fn ls_refs_args(reference: Option<&str>) -> Vec<String> {
    let mut args = vec!["peel".to_string(), "symrefs".to_string()];
    match reference {
        None => args.push("ref-prefix HEAD".into()),
        Some(r) => {
            args.push(format!("ref-prefix refs/heads/{r}"));
            args.push(format!("ref-prefix refs/tags/{r}"));
            if r.starts_with("refs/") || r == "HEAD" {
                args.push(format!("ref-prefix {r}"));
            }
        }
    }
    args
}

/// Parses an `ls-refs` answer.
pub fn parse_ls_refs(body: &[u8]) -> Result<Vec<RemoteRef>, ProtocolError> {
    let mut refs = Vec::new();
    for line in packet_lines(body)? {
        let Some(t) = text(&line) else { break };
        let mut parts = t.split(' ');
        let (Some(oid), Some(name)) = (parts.next(), parts.next()) else {
            return Err(perr(format!("malformed ls-refs line {t:?}")));
        };
        if oid == "unborn" {
            continue;
        }
        let oid = parse_oid(oid)?;
        let mut r = RemoteRef {
            name: name.to_string(),
            oid,
            peeled: None,
            symref_target: None,
        };
        for attr in parts {
            if let Some(p) = attr.strip_prefix("peeled:") {
                r.peeled = Some(parse_oid(p)?);
            } else if let Some(s) = attr.strip_prefix("symref-target:") {
                r.symref_target = Some(s.to_string());
            }
        }
        refs.push(r);
    }
    Ok(refs)
}

pub fn parse_oid(hex: &str) -> Result<ObjectId, ProtocolError> {
    if hex.len() != 40 {
        return Err(perr(format!("bad object id {hex:?}")));
    }
    ObjectId::from_hex(hex.as_bytes()).map_err(|_| perr(format!("bad object id {hex:?}")))
}

/// Picks the ref the user asked for, in git's order of precedence.
pub fn select_ref<'a>(refs: &'a [RemoteRef], reference: Option<&str>) -> Option<&'a RemoteRef> {
    match reference {
        None => refs.iter().find(|r| r.name == "HEAD"),
        Some(r) => {
            let candidates = [
                r.to_string(),
                format!("refs/heads/{r}"),
                format!("refs/tags/{r}"),
            ];
            candidates
                .iter()
                .find_map(|c| refs.iter().find(|x| &x.name == c))
        }
    }
}

/// Arguments of a `fetch` for `wants`. `tree_only`: commit and trees
/// (`deepen 1`, `filter blob:none` when `filter` is available).
pub fn fetch_args(wants: &[ObjectId], deepen: bool, filter: bool) -> Vec<String> {
    let mut args = vec!["no-progress".to_string(), "ofs-delta".to_string()];
    if deepen {
        args.push("deepen 1".into());
    }
    if filter {
        args.push("filter blob:none".into());
    }
    for w in wants {
        args.push(format!("want {w}"));
    }
    args.push("done".into());
    args
}

/// `object-info` arguments asking for the sizes of `oids`.
pub fn object_info_args(oids: &[ObjectId]) -> Vec<String> {
    let mut args = vec!["size".to_string()];
    args.extend(oids.iter().map(|o| format!("oid {o}")));
    args
}

/// Parses an `object-info` answer: `size` header, then `<oid> <size>` lines.
pub fn parse_object_info(body: &[u8]) -> Result<Vec<(ObjectId, Option<u64>)>, ProtocolError> {
    let lines = packet_lines(body)?;
    let mut it = lines.iter();
    match it.next().and_then(text) {
        Some(h) if h == "size" => {}
        other => return Err(perr(format!("unexpected object-info header {other:?}"))),
    }
    let mut out = Vec::new();
    for line in it {
        let Some(t) = text(line) else { break };
        let (oid, size) = t
            .split_once(' ')
            .ok_or_else(|| perr(format!("malformed object-info line {t:?}")))?;
        // Servers answer an unknown object with an empty size.
        out.push((parse_oid(oid)?, size.trim().parse().ok()));
    }
    Ok(out)
}

/// Progress messages (band 2) kept: the last ones, up to this many bytes.
pub const PROGRESS_KEEP: usize = 4 * 1024;
/// Progress a fetch may carry in all (it asks for none: `no-progress`).
pub const MAX_PROGRESS: u64 = 1 << 20;
/// Bytes of the sections before `packfile` (acknowledgments, shallow-info,
/// wanted-refs) a fetch may carry in all.
pub const MAX_SECTIONS: u64 = 4 << 20;
/// Longest server message (`ERR`, band 3) shown, in characters.
const MESSAGE_MAX: usize = 1024;

/// Incremental parser for a `fetch` response: skips the sections before
/// `packfile`, then hands pack bytes (band 1) to the sink as they arrive.
/// Memory is bounded whatever the server sends: at most one pkt-line (64
/// KiB) is buffered, progress text is kept to its last [`PROGRESS_KEEP`]
/// bytes (and [`MAX_PROGRESS`] in all is an error), the sections before the
/// pack to [`MAX_SECTIONS`], and any byte after the final flush is an error.
pub struct FetchResponseParser {
    buf: Vec<u8>,
    state: State,
    pub shallow: Vec<ObjectId>,
    /// The last progress messages (at most [`PROGRESS_KEEP`] bytes).
    pub progress: Vec<String>,
    progress_kept: usize,
    progress_total: u64,
    sections_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Sections,
    Pack,
    Done,
    /// Bytes came after the final flush (an error, reported once more by `finish`).
    Trailing,
}

/// A server message as shown in an error: lossy UTF-8, trimmed, at most
/// [`MESSAGE_MAX`] characters.
fn message(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg);
    let text = text.trim();
    match text.char_indices().nth(MESSAGE_MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

const TRAILING: &str = "the server sent bytes after the end of the fetch response";

impl Default for FetchResponseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl FetchResponseParser {
    pub fn new() -> Self {
        FetchResponseParser {
            buf: Vec::new(),
            state: State::Sections,
            shallow: Vec::new(),
            progress: Vec::new(),
            progress_kept: 0,
            progress_total: 0,
            sections_total: 0,
        }
    }

    /// Keeps a progress message, dropping the oldest past [`PROGRESS_KEEP`].
    fn note_progress(&mut self, msg: &[u8]) -> Result<(), ProtocolError> {
        self.progress_total += msg.len() as u64;
        if self.progress_total > MAX_PROGRESS {
            return Err(perr(format!(
                "the server sent more than {} KiB of progress messages (none were asked for); the last began {:?}",
                MAX_PROGRESS >> 10,
                self.progress
                    .last()
                    .map(|m| m.chars().take(80).collect::<String>())
                    .unwrap_or_default()
            )));
        }
        let mut text = message(msg);
        if text.len() > PROGRESS_KEEP {
            let mut cut = PROGRESS_KEEP;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        self.progress_kept += text.len();
        self.progress.push(text);
        let mut drop = 0;
        while self.progress_kept > PROGRESS_KEEP && drop < self.progress.len() {
            self.progress_kept -= self.progress[drop].len();
            drop += 1;
        }
        self.progress.drain(..drop);
        Ok(())
    }

    /// Feeds response bytes; pack data goes to `sink`.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), ProtocolError>,
    ) -> Result<(), ProtocolError> {
        match self.state {
            State::Trailing => return Err(perr(TRAILING)),
            // Nothing may follow the final flush: never buffered.
            State::Done if !chunk.is_empty() => return self.trailing(),
            _ => {}
        }
        self.buf.extend_from_slice(chunk);
        let mut pos = 0;
        while pos < self.buf.len() {
            if self.state == State::Done {
                return self.trailing();
            }
            let (line, used) = match decode::streaming(&self.buf[pos..])
                .map_err(|e| perr(format!("malformed pkt-line in fetch response: {e}")))?
            {
                Stream::Complete {
                    line,
                    bytes_consumed,
                } => (line, bytes_consumed),
                Stream::Incomplete { .. } => break,
            };
            if self.state == State::Sections {
                self.sections_total += used as u64;
                if self.sections_total > MAX_SECTIONS {
                    return Err(perr(format!(
                        "the fetch response has more than {} MiB before its packfile section",
                        MAX_SECTIONS >> 20
                    )));
                }
            }
            match (self.state, line) {
                (State::Sections, PacketLineRef::Data(d)) => {
                    let t = String::from_utf8_lossy(d);
                    let t = t.trim_end_matches('\n');
                    if let Some(msg) = t.strip_prefix("ERR ") {
                        return Err(perr(format!(
                            "the server reported an error: {}",
                            message(msg.as_bytes())
                        )));
                    } else if t == "packfile" {
                        self.state = State::Pack;
                    } else if let Some(oid) = t.strip_prefix("shallow ") {
                        self.shallow.push(parse_oid(oid)?);
                    }
                    // Other section headers and lines (acknowledgments,
                    // wanted-refs, unshallow) are not needed here.
                }
                (State::Sections, PacketLineRef::Flush) => {
                    return Err(perr("the fetch response has no packfile section"));
                }
                (State::Sections, _) => {}
                (State::Pack, PacketLineRef::Data(d)) => match d.split_first() {
                    Some((1, data)) => sink(data)?,
                    Some((2, msg)) => {
                        // At most one pkt-line; copied so `self` can keep it.
                        let msg = msg.to_vec();
                        self.note_progress(&msg)?
                    }
                    Some((3, msg)) => {
                        return Err(perr(format!(
                            "the server aborted the fetch: {}",
                            message(msg)
                        )));
                    }
                    _ => return Err(perr("unknown sideband channel in the pack stream")),
                },
                (State::Pack, PacketLineRef::Flush | PacketLineRef::ResponseEnd) => {
                    self.state = State::Done;
                }
                (State::Pack, PacketLineRef::Delimiter) => {}
                (State::Done | State::Trailing, _) => {}
            }
            pos += used;
        }
        self.buf.drain(..pos);
        Ok(())
    }

    /// Bytes after the final flush: an error, and nothing of them kept.
    fn trailing(&mut self) -> Result<(), ProtocolError> {
        self.state = State::Trailing;
        self.buf = Vec::new();
        Err(perr(TRAILING))
    }

    /// Checks that the response ended properly.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        match self.state {
            State::Done => Ok(()),
            State::Trailing => Err(perr(TRAILING)),
            _ => Err(perr(
                "the fetch response ended early (connection closed before the pack was complete)",
            )),
        }
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
