//! A streaming blob download that resumes with `Range` after a transient error.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::error::{RegistryError, Result};
use super::{header_str, RegistryClient, Repository};

/// A blob being downloaded: `impl Read`.
///
/// When the connection breaks (or ends early), it is reopened at the current
/// offset with `Range: bytes=N-` — at most [`ClientOptions::retries`] times,
/// with backoff. A server that ignores `Range` (answers `200`) is handled by
/// skipping what was already read. Read from offset 0, the bytes are hashed
/// and checked against the digest at EOF: a mismatch is an
/// [`io::ErrorKind::InvalidData`] error wrapping [`RegistryError::DigestMismatch`].
///
/// [`ClientOptions::retries`]: super::ClientOptions::retries
pub struct BlobReader {
    client: RegistryClient,
    repo: Repository,
    digest: String,
    body: Option<ureq::BodyReader<'static>>,
    offset: u64,
    total: Option<u64>,
    hasher: Option<Sha256>,
    resumes: u32,
    retry: super::retry::Retry,
    done: bool,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("repo", &self.repo)
            .field("digest", &self.digest)
            .field("offset", &self.offset)
            .field("total", &self.total)
            .field("resumes", &self.resumes)
            .finish()
    }
}

impl BlobReader {
    pub(super) fn open(
        client: RegistryClient,
        repo: Repository,
        digest: String,
        offset: u64,
    ) -> Result<Self> {
        let hasher = (offset == 0 && digest.starts_with("sha256:")).then(Sha256::new);
        let retry =
            super::retry::Retry::new(client.options().retries, client.options().retry_backoff);
        let mut r = BlobReader {
            client,
            repo,
            digest,
            body: None,
            offset,
            total: None,
            hasher,
            resumes: 0,
            retry,
            done: false,
        };
        r.connect()?;
        Ok(r)
    }

    /// The blob's full size, when the registry said.
    pub fn size(&self) -> Option<u64> {
        self.total
    }

    /// The offset of the next byte to be read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// How many times the download was resumed.
    pub fn resumes(&self) -> u32 {
        self.resumes
    }

    /// Whether the content will be checked against the digest at EOF (the
    /// download started at offset 0 and the digest is sha256).
    pub fn verifies(&self) -> bool {
        self.hasher.is_some()
    }

    /// (Re)open the body at `self.offset`.
    fn connect(&mut self) -> Result<()> {
        let (resp, url) = self
            .client
            .open_blob(&self.repo, &self.digest, self.offset)?;
        let status = resp.status().as_u16();
        let len = header_str(&resp, "content-length").and_then(|l| l.parse::<u64>().ok());
        let bad = |reason: String| RegistryError::InvalidResponse {
            url: url.clone(),
            reason,
        };
        match status {
            206 => {
                // Content-Range: bytes start-end/total
                let cr = header_str(&resp, "content-range").unwrap_or_default();
                let (start, total) = parse_content_range(&cr)
                    .ok_or_else(|| bad(format!("bad Content-Range {cr:?}")))?;
                if start != self.offset {
                    return Err(bad(format!(
                        "asked for bytes from {}, got a range from {start}",
                        self.offset
                    )));
                }
                if total.is_some() {
                    self.total = total;
                }
            }
            416 => {
                // Nothing left past `offset`: fine when it is the end.
                let cr = header_str(&resp, "content-range").unwrap_or_default();
                let total = cr
                    .strip_prefix("bytes */")
                    .and_then(|t| t.parse::<u64>().ok())
                    .or(self.total);
                if total == Some(self.offset) {
                    self.total = total;
                    self.body = None;
                    self.finish().map_err(|e| bad(e.to_string()))?;
                    return Ok(());
                }
                return Err(bad(format!("range from {} not satisfiable", self.offset)));
            }
            _ => {
                // 200: the whole blob, whatever we asked.
                self.total = len.or(self.total);
                let mut body = resp.into_body().into_reader();
                if self.offset > 0 {
                    let skipped = io::copy(&mut (&mut body).take(self.offset), &mut io::sink())
                        .map_err(|e| super::transport(&url, e))?;
                    if skipped != self.offset {
                        return Err(bad(format!(
                            "blob ended after {skipped} bytes, before offset {}",
                            self.offset
                        )));
                    }
                }
                self.body = Some(body);
                return Ok(());
            }
        }
        self.body = Some(resp.into_body().into_reader());
        Ok(())
    }

    /// At EOF: check the length and the digest.
    fn finish(&mut self) -> io::Result<()> {
        self.done = true;
        if let Some(h) = self.hasher.take() {
            let found = format!("sha256:{}", hex::encode(h.finalize()));
            if found != self.digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("blob {} in {}", self.digest, self.repo),
                    expected: self.digest.clone(),
                    found,
                }
                .into());
            }
        }
        Ok(())
    }

    /// After a failed read: reopen at the current offset, if resumes are left.
    fn resume(&mut self, err: io::Error) -> io::Result<()> {
        self.body = None;
        if !self.retry.again(true, None) {
            return Err(err);
        }
        self.resumes += 1;
        tracing::debug!(
            repo = %self.repo, digest = self.digest, offset = self.offset,
            error = %err, attempt = self.resumes, "resuming blob download"
        );
        self.connect().map_err(io::Error::from)
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.done {
                return Ok(0);
            }
            let Some(body) = self.body.as_mut() else {
                // Reopen failed earlier or was never done: try again (counts as a resume).
                self.resume(io::Error::other("blob download interrupted"))?;
                continue;
            };
            // Never read past the announced end.
            let want = match self.total {
                Some(t) if t <= self.offset => 0,
                Some(t) => buf
                    .len()
                    .min((t - self.offset).min(usize::MAX as u64) as usize),
                None => buf.len(),
            };
            if want == 0 {
                self.finish()?;
                return Ok(0);
            }
            match body.read(&mut buf[..want]) {
                Ok(0) => match self.total {
                    Some(t) if self.offset < t => {
                        let e = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("blob {} ended at byte {} of {t}", self.digest, self.offset),
                        );
                        self.resume(e)?;
                    }
                    _ => {
                        self.finish()?;
                        return Ok(0);
                    }
                },
                Ok(n) => {
                    if let Some(h) = &mut self.hasher {
                        h.update(&buf[..n]);
                    }
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.resume(e)?,
            }
        }
    }
}

/// `bytes start-end/total` (total may be `*`) → (start, total).
fn parse_content_range(s: &str) -> Option<(u64, Option<u64>)> {
    let rest = s.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        let cases = [
            ("bytes 0-9/10", Some((0, Some(10)))),
            ("bytes 5-9/*", Some((5, None))),
            ("bytes  5-9/10", Some((5, Some(10)))),
            ("bytes 9-5/10", None),
            ("bytes */10", None),
            ("5-9/10", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_content_range(s), want, "{s}");
        }
    }
}
