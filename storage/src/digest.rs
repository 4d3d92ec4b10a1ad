//! sha256 digests and OCI chain ids (pure functions).

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:<64 hex>` digest, or `None` when it is not one.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    is_hex64(hex).then_some(hex)
}

/// Exactly 64 lowercase hex characters.
pub fn is_hex64(s: &str) -> bool {
    storectl_overlay::is_layer_id(s)
}

/// OCI chain ids (64 hex, no algorithm prefix) for a list of diff ids, base first:
/// `ChainID(L0) = DiffID(L0)`, `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(prev) => sha256_digest(format!("sha256:{prev} {diff_id}").as_bytes()),
        };
        out.push(next.trim_start_matches("sha256:").to_string());
    }
    out
}

/// A writer that passes everything through to `inner`, hashing and counting it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    pub inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// `sha256:<hex>` of what was written so far.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Option<Sha256>,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Some(Sha256::new()),
            count: 0,
        }
    }

    /// Count without hashing (when another reader hashes the same bytes);
    /// [`HashingReader::finish`] then returns an empty digest.
    pub fn counting(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: None,
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Read the rest of the stream, then return `(sha256:<hex>, bytes)`
    /// (an empty digest for a [`HashingReader::counting`] reader).
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let digest = match self.hasher {
            Some(h) => format!("sha256:{}", hex::encode(h.finalize())),
            None => String::new(),
        };
        Ok((digest, self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = sha256_digest(b"a");
        let b = sha256_digest(b"b");
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a.trim_start_matches("sha256:"));
        let expect = sha256_digest(format!("{a} {b}").as_bytes());
        assert_eq!(ids[1], expect.trim_start_matches("sha256:"));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn sha256_hex_accepts_only_full_digests() {
        let d = sha256_digest(b"x");
        assert!(sha256_hex(&d).is_some());
        assert!(sha256_hex("sha256:abc").is_none());
        assert!(sha256_hex(&d.replace("sha256", "sha512")).is_none());
        assert!(sha256_hex(&d.to_uppercase()).is_none());
    }

    #[test]
    fn hashing_reader_counts_the_whole_stream() {
        let data = vec![7u8; 100_000];
        let mut r = HashingReader::new(&data[..]);
        let mut first = [0u8; 10];
        r.read_exact(&mut first).unwrap();
        let (digest, n) = r.finish().unwrap();
        assert_eq!(n, 100_000);
        assert_eq!(digest, sha256_digest(&data));
    }
}
