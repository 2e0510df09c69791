//! Streaming an S3 object's bytes for sequential reads: ranged GETs pinned
//! to the ETag, the next range requested while this one is read, each body
//! held to the speed floor (`low_speed_limit`), and a body that is cut or
//! trickles resumed by `Range` where it stopped (within the retry policy's
//! attempts, which start afresh whenever bytes arrive), so a retry never
//! asks again for what already arrived.

use std::sync::atomic::Ordering;

use crate::fetch::LowSpeed;
use crate::source::SourceError;

use super::{ReadState, S3Reader, STREAM_MAX};

impl S3Reader {
    /// Opens the streamed range at `at` (the one requested ahead, when it
    /// is that one) and requests the range after it, so that the server's
    /// time to answer overlaps with reading this one.
    pub(super) fn open_stream(&self, st: &mut ReadState, at: u64) -> Result<(), SourceError> {
        let (end, body) = match st.pending.take() {
            Some((start, end, task)) if start == at => {
                let body = self.src.block_on(async {
                    task.await.unwrap_or_else(|e| {
                        Err(SourceError::Unavailable(format!("read-ahead failed: {e}")))
                    })
                })?;
                (end, body)
            }
            other => {
                if let Some((_, _, task)) = other {
                    task.abort();
                }
                let end = (at + st.next_len).min(self.size);
                st.next_len = (st.next_len * 8).min(STREAM_MAX);
                let body = self
                    .src
                    .block_on(self.src.get_stream(&self.key, &self.etag, at, end))?;
                (end, body)
            }
        };
        st.stream = Some((at, end, body));
        st.speed = LowSpeed::new(self.src.floor);
        if end < self.size {
            let next_end = (end + st.next_len).min(self.size);
            st.next_len = (st.next_len * 8).min(STREAM_MAX);
            let (src, key, etag) = (self.src.clone(), self.key.clone(), self.etag.clone());
            let task = self
                .src
                .rt
                .spawn(async move { src.get_stream(&key, &etag, end, next_end).await });
            st.pending = Some((end, next_end, task));
        }
        Ok(())
    }

    /// Consumes streamed ranges until `until` (or the object's end).
    pub(super) fn pull(&self, st: &mut ReadState, until: u64) -> Result<(), SourceError> {
        let mut failed = 0u32;
        while let Some((pos, end, _)) = st.stream.as_ref() {
            let (pos, end) = (*pos, *end);
            if pos >= until {
                break;
            }
            let next = {
                let ReadState { stream, speed, .. } = &mut *st;
                let Some((_, _, body)) = stream.as_mut() else {
                    break;
                };
                self.src
                    .block_on(async { Ok(next_within(body, speed).await) })?
            };
            let chunk = match next {
                Ok(c) => {
                    if c.is_some() {
                        failed = 0;
                    }
                    c
                }
                Err(why) => {
                    // Resumed where it stopped, by `Range`: nothing that
                    // arrived is asked for again.
                    failed += 1;
                    let Some(pause) = self.src.policy.pause(failed, None) else {
                        st.stream = None;
                        return Err(SourceError::Unavailable(format!(
                            "reading {} from bucket {}: {why}",
                            self.key, self.src.cfg.bucket
                        )));
                    };
                    tracing::warn!(repo = %self.src.name, key = ?self.key, at = pos, "reading from the bucket: {why}; resuming in {pause:?}");
                    std::thread::sleep(pause);
                    // The rest of this range only: the range after it may
                    // be on its way already (read-ahead).
                    st.stream = None;
                    let body = self
                        .src
                        .block_on(self.src.get_stream(&self.key, &self.etag, pos, end))?;
                    st.stream = Some((pos, end, body));
                    st.speed = LowSpeed::new(self.src.floor);
                    continue;
                }
            };
            match chunk {
                Some(bytes) => {
                    if bytes.len() as u64 > end.saturating_sub(pos) {
                        // Bytes past the range would be taken for the
                        // object's next bytes: refuse them.
                        st.stream = None;
                        return Err(SourceError::Corrupt(format!(
                            "S3 sent more than the requested range of {} in bucket {}",
                            self.key, self.src.cfg.bucket
                        )));
                    }
                    self.src
                        .bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    if let Some((p, _, _)) = st.stream.as_mut() {
                        *p += bytes.len() as u64;
                    }
                    self.append(st, pos, &bytes);
                }
                None if pos == end && end < self.size => self.open_stream(st, end)?,
                None => st.stream = None,
            }
        }
        Ok(())
    }
}

/// The next chunk of `body`, or why the body failed: an error of the
/// transfer, or a speed under the floor.
async fn next_within(
    body: &mut aws_sdk_s3::primitives::ByteStream,
    speed: &mut LowSpeed,
) -> Result<Option<bytes::Bytes>, String> {
    let chunk = speed
        .wait(body.try_next())
        .await
        .map_err(|s| s.to_string())?
        .map_err(|e| e.to_string())?;
    if let Some(c) = &chunk {
        speed.record(c.len() as u64).map_err(|s| s.to_string())?;
    }
    Ok(chunk)
}
