//! Checking what comes from the shared tier: nothing there is trusted. A
//! blob must hash to its git id, an LFS object to its sha256 and size, an
//! S3 object to its size and (single-part ETag) md5. The check runs while
//! the bytes stream into the cache, so a bad object costs no second read.

use gix_hash::ObjectId;
use md5::Digest as _;

/// What an object from the shared tier must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A git blob with this id.
    GitBlob(ObjectId),
    /// An LFS object: lower-case hex sha256 and size.
    Sha256 { oid: String, size: u64 },
    /// An S3 object: size and lower-case hex md5 (a single-part ETag).
    Md5 { md5: String, size: u64 },
    /// Checked by the caller once complete (trees, sizes), up to this size.
    Later { max: u64 },
}

impl Expect {
    /// The size the object must have, when known up front.
    pub fn size(&self) -> Option<u64> {
        match self {
            Expect::Sha256 { size, .. } | Expect::Md5 { size, .. } => Some(*size),
            Expect::GitBlob(_) | Expect::Later { .. } => None,
        }
    }

    /// The largest object accepted.
    pub fn max(&self) -> u64 {
        match self {
            Expect::Later { max } => *max,
            _ => self.size().unwrap_or(u64::MAX),
        }
    }
}

/// An S3 ETag that is the md5 of the object (single-part uploads).
pub fn etag_md5(etag: &str) -> Option<String> {
    let e = etag.trim_matches('"').to_ascii_lowercase();
    (e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())).then_some(e)
}

/// Hashes an object as it streams.
pub struct Checker {
    expect: Expect,
    len: u64,
    seen: u64,
    sha1: Option<gix_hash::Hasher>,
    sha256: Option<sha2::Sha256>,
    md5: Option<md5::Md5>,
}

impl Checker {
    /// Starts checking an object the server says is `len` bytes long.
    pub fn new(expect: Expect, len: u64) -> Result<Checker, String> {
        if let Some(size) = expect.size() {
            if size != len {
                return Err(format!("it is {len} bytes, not {size}"));
            }
        }
        if len > expect.max() {
            return Err(format!("it is {len} bytes, more than {}", expect.max()));
        }
        let mut sha1 = None;
        if matches!(expect, Expect::GitBlob(_)) {
            let mut h = gix_hash::hasher(gix_hash::Kind::Sha1);
            h.update(format!("blob {len}\0").as_bytes());
            sha1 = Some(h);
        }
        Ok(Checker {
            sha256: matches!(expect, Expect::Sha256 { .. })
                .then(<sha2::Sha256 as sha2::Digest>::new),
            md5: matches!(expect, Expect::Md5 { .. }).then(md5::Md5::new),
            sha1,
            expect,
            len,
            seen: 0,
        })
    }

    pub fn update(&mut self, data: &[u8]) -> Result<(), String> {
        self.seen += data.len() as u64;
        if self.seen > self.len {
            return Err(format!("it sent more than its {} bytes", self.len));
        }
        if let Some(h) = &mut self.sha1 {
            h.update(data);
        }
        if let Some(h) = &mut self.sha256 {
            sha2::Digest::update(h, data);
        }
        if let Some(h) = &mut self.md5 {
            h.update(data);
        }
        Ok(())
    }

    /// Whether the whole object matched.
    pub fn finish(self) -> Result<(), String> {
        if self.seen != self.len {
            return Err(format!(
                "it ended after {} of {} bytes",
                self.seen, self.len
            ));
        }
        match (&self.expect, self.sha1, self.sha256, self.md5) {
            (Expect::GitBlob(oid), Some(h), _, _) => match h.try_finalize() {
                Ok(got) if &got == oid => Ok(()),
                Ok(got) => Err(format!("its bytes hash to {got}")),
                Err(e) => Err(format!("hashing: {e}")),
            },
            (Expect::Sha256 { oid, .. }, _, Some(h), _) => {
                let got = hex::encode(sha2::Digest::finalize(h));
                if &got == oid {
                    Ok(())
                } else {
                    Err(format!("its sha256 is {got}"))
                }
            }
            (Expect::Md5 { md5, .. }, _, _, Some(h)) => {
                let got = hex::encode(h.finalize());
                if &got == md5 {
                    Ok(())
                } else {
                    Err(format!("its md5 is {got}"))
                }
            }
            (Expect::Later { .. }, ..) => Ok(()),
            _ => Err("no check for this object".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(expect: Expect, data: &[u8]) -> Result<(), String> {
        let mut c = Checker::new(expect, data.len() as u64)?;
        for chunk in data.chunks(3) {
            c.update(chunk)?;
        }
        c.finish()
    }

    #[test]
    fn objects_must_match_their_ids() {
        let blob = b"hello\n";
        let oid =
            gix_object::compute_hash(gix_hash::Kind::Sha1, gix_object::Kind::Blob, blob).unwrap();
        assert_eq!(run(Expect::GitBlob(oid), blob), Ok(()));
        assert!(run(Expect::GitBlob(oid), b"hellO\n").is_err());
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(blob));
        assert_eq!(
            run(
                Expect::Sha256 {
                    oid: sha.clone(),
                    size: 6
                },
                blob
            ),
            Ok(())
        );
        assert!(run(Expect::Sha256 { oid: sha, size: 7 }, blob).is_err());
        let md5 = hex::encode(md5::Md5::digest(blob));
        assert_eq!(
            run(
                Expect::Md5 {
                    md5: md5.clone(),
                    size: 6
                },
                blob
            ),
            Ok(())
        );
        assert!(run(Expect::Md5 { md5, size: 6 }, b"xxxxxx").is_err());
        assert!(run(Expect::Later { max: 3 }, blob).is_err());
        // Short and long bodies.
        let mut c = Checker::new(Expect::Later { max: 10 }, 5).unwrap();
        c.update(b"abc").unwrap();
        assert!(c.finish().is_err());
        let mut c = Checker::new(Expect::Later { max: 10 }, 2).unwrap();
        assert!(c.update(b"abc").is_err());
    }

    #[test]
    fn only_single_part_etags_are_md5s() {
        assert_eq!(
            etag_md5("\"9A0364B9E99BB480DD25E1F0284C8555\""),
            Some("9a0364b9e99bb480dd25e1f0284c8555".into())
        );
        assert_eq!(etag_md5("\"9a0364b9e99bb480dd25e1f0284c8555-3\""), None);
        assert_eq!(etag_md5(""), None);
    }
}
