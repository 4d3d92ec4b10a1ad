//! tar-split metadata: enough of a layer tar to rebuild it byte for byte from
//! the extracted `diff/`.
//!
//! The format is containers/storage's (vbatts/tar-split) JSON lines, one
//! object per line (`tests/tarsplit_interop.rs` checks both directions
//! against the reference `tar-split` tool):
//!
//! ```text
//! {"type":2,"payload":"<base64 raw bytes>","position":0}          segment: headers, padding
//! {"type":1,"name":"etc/passwd","size":1234,"payload":"<base64 crc64>","position":1}   file content
//! ```
//!
//! Segments hold every byte that is not file content (headers, PAX records,
//! padding, the end-of-archive blocks); file entries name the file whose
//! contents follow, and its size. The file's CRC-64 (ISO) is the payload.
//!
//! Details that match tar-split: a file entry is written for every tar entry
//! (directories, links… with no `size` and a `null` payload), `name` is the
//! entry's name as it appears in the tar (leading `./` kept), a name that is
//! not UTF-8 goes in `name_raw` (base64) instead, `position` counts the
//! lines from 0, and the checksum is the 8 big-endian bytes of Go's
//! `crc64.ISO`. Only regular files have content in file entries; any bytes
//! that follow a non-regular header (legal but unused) are kept as segments.

use std::cell::RefCell;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use crc_fast::{CrcAlgorithm, Digest as CrcDigest};
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::{Error, Result};

/// A fresh CRC-64 as tar-split computes it (Go's `crc64.MakeTable(crc64.ISO)`),
/// with the SIMD (carry-less multiply) implementation where the CPU has one:
/// it runs over every byte of every layer, so speed matters.
pub(crate) fn crc64() -> CrcDigest {
    CrcDigest::new(CrcAlgorithm::Crc64GoIso)
}

/// CRC-64/GO-ISO of `bytes`.
#[cfg(test)]
pub(crate) fn crc64_of(bytes: &[u8]) -> u64 {
    crc_fast::checksum(CrcAlgorithm::Crc64GoIso, bytes)
}

/// Entry type of a file entry.
const FILE_TYPE: u8 = 1;
/// Entry type of a segment entry.
const SEGMENT_TYPE: u8 = 2;

/// Segments are flushed at least this often, so trailing padding or huge
/// header blocks never pile up in memory.
const MAX_SEGMENT: usize = 1 << 20;

/// One JSON line (tar-split's `storage.Entry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SplitEntry {
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_raw: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default)]
    pub payload: Option<String>,
    #[serde(default)]
    pub position: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SplitEntry {
    /// The entry's name as bytes (from `name` or base64 `name_raw`). Pure.
    fn name_bytes(&self) -> Result<Vec<u8>> {
        match (&self.name, &self.name_raw) {
            (_, Some(raw)) => B64
                .decode(raw)
                .map_err(|e| Error::TarSplit(format!("bad name_raw at {}: {e}", self.position))),
            (Some(name), None) => Ok(name.as_bytes().to_vec()),
            (None, None) => Err(Error::TarSplit(format!(
                "file entry {} has no name",
                self.position
            ))),
        }
    }

    fn payload_bytes(&self) -> Result<Option<Vec<u8>>> {
        self.payload
            .as_deref()
            .map(|p| {
                B64.decode(p)
                    .map_err(|e| Error::TarSplit(format!("bad payload at {}: {e}", self.position)))
            })
            .transpose()
    }
}

/// Parse one JSON line (pure).
pub(crate) fn parse_line(line: &str) -> Result<SplitEntry> {
    serde_json::from_str(line).map_err(|e| Error::TarSplit(format!("bad line {line:.80?}: {e}")))
}

/// State shared between the [`Recorder`] (inside the tar reader) and
/// [`crate::apply_tar`], which tells it where file contents start and end.
pub(crate) struct RecState<'w> {
    out: Option<io::BufWriter<&'w mut dyn Write>>,
    /// Reading file content (not recorded as segment).
    content: bool,
    crc: CrcDigest,
    pending: Vec<u8>,
    position: u64,
    /// Bytes read from the tar stream so far.
    pub total: u64,
    limit: Option<u64>,
    /// The size limit was exceeded.
    pub limit_hit: bool,
    /// The underlying stream failed with this error.
    pub stream_err: Option<io::Error>,
    /// Writing tar-split output failed with this error.
    pub split_err: Option<io::Error>,
}

impl<'w> RecState<'w> {
    pub(crate) fn new(out: Option<&'w mut dyn Write>, limit: Option<u64>) -> Self {
        RecState {
            out: out.map(|o| io::BufWriter::with_capacity(64 * 1024, o)),
            content: false,
            crc: crc64(),
            pending: Vec::new(),
            position: 0,
            total: 0,
            limit,
            limit_hit: false,
            stream_err: None,
            split_err: None,
        }
    }

    fn recording(&self) -> bool {
        self.out.is_some()
    }

    fn write_entry(&mut self, entry: &SplitEntry) -> io::Result<()> {
        if let Some(out) = self.out.as_mut() {
            let r = serde_json::to_writer(&mut *out, entry)
                .map_err(io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            if let Err(e) = r {
                let kind = e.kind();
                self.split_err = Some(e);
                return Err(io::Error::new(kind, "writing tar-split failed"));
            }
        }
        self.position += 1;
        Ok(())
    }

    /// Write the pending non-content bytes as one segment entry.
    pub(crate) fn flush_segment(&mut self) -> io::Result<()> {
        if self.pending.is_empty() || !self.recording() {
            return Ok(());
        }
        let entry = SplitEntry {
            kind: SEGMENT_TYPE,
            name: None,
            name_raw: None,
            size: 0,
            payload: Some(B64.encode(&self.pending)),
            position: self.position,
        };
        self.pending.clear();
        self.write_entry(&entry)
    }

    /// The bytes read from now on are file content.
    pub(crate) fn start_content(&mut self) -> io::Result<()> {
        self.flush_segment()?;
        self.content = true;
        self.crc = crc64();
        Ok(())
    }

    /// Record a file entry for `name` whose content (`size` bytes, possibly
    /// none) was read since [`RecState::start_content`], or, when
    /// `with_content` is false, a size-less entry.
    pub(crate) fn file_entry(
        &mut self,
        name: &[u8],
        size: u64,
        with_content: bool,
    ) -> io::Result<()> {
        let crc = std::mem::replace(&mut self.crc, crc64()).finalize();
        self.content = false;
        if !self.recording() {
            return Ok(());
        }
        self.flush_segment()?;
        let (name, name_raw) = match std::str::from_utf8(name) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (None, Some(B64.encode(name))),
        };
        let payload = (with_content && size > 0).then(|| B64.encode(crc.to_be_bytes()));
        let entry = SplitEntry {
            kind: FILE_TYPE,
            name,
            name_raw,
            size: if with_content { size } else { 0 },
            payload,
            position: self.position,
        };
        self.write_entry(&entry)
    }

    /// Flush everything (call once, at the end of the stream).
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        self.flush_segment()?;
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.flush() {
                let kind = e.kind();
                self.split_err = Some(e);
                return Err(io::Error::new(kind, "writing tar-split failed"));
            }
        }
        Ok(())
    }
}

/// A reader that counts every byte read from the layer stream, enforces the
/// size limit, and (when recording) keeps every byte that is not file content
/// for the next segment entry. It relies on the `tar` crate reading headers
/// with exact-size reads and file content through a `take(size)`, so no byte
/// is read ahead of the flag switches (tested below).
pub(crate) struct Recorder<'r, 'w> {
    inner: &'r mut dyn Read,
    state: Rc<RefCell<RecState<'w>>>,
}

impl<'r, 'w> Recorder<'r, 'w> {
    pub(crate) fn new(inner: &'r mut dyn Read, state: Rc<RefCell<RecState<'w>>>) -> Self {
        Recorder { inner, state }
    }
}

impl Read for Recorder<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut st = self.state.borrow_mut();
        if st.limit_hit {
            return Err(io::Error::other("layer size limit exceeded"));
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let kind = e.kind();
                st.stream_err = Some(e);
                return Err(io::Error::new(kind, "reading the layer stream failed"));
            }
        };
        st.total += n as u64;
        if let Some(limit) = st.limit {
            if st.total > limit {
                st.limit_hit = true;
                return Err(io::Error::other("layer size limit exceeded"));
            }
        }
        if st.recording() {
            if st.content {
                st.crc.update(&buf[..n]);
            } else {
                st.pending.extend_from_slice(&buf[..n]);
                if st.pending.len() >= MAX_SEGMENT {
                    st.flush_segment()?;
                }
            }
        }
        Ok(n)
    }
}

/// Rebuild the layer tar from `diff` and the tar-split JSON lines in
/// `tar_split`, writing it to `out`. Returns bytes written. A file whose size
/// or CRC differs from the record is [`crate::Error::TarSplit`].
///
/// File names are resolved beneath `diff` exactly as [`crate::apply_tar`]
/// stored them (leading `./` dropped); a name with a `..` component or an
/// absolute name is `TarSplit`, and no symlink is followed on the way (an
/// `Io` error, `ELOOP`). A file entry without a checksum is copied unchecked.
pub fn reassemble(diff: &Path, tar_split: &mut dyn Read, out: &mut dyn Write) -> Result<u64> {
    let diff_fd = rustix::fs::open(
        diff,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(diff, e.into()))?;
    let out_path = PathBuf::from("<reassembled tar>");
    let mut lines = BufReader::with_capacity(256 * 1024, tar_split);
    let mut line = String::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut written = 0u64;
    loop {
        line.clear();
        let n = lines
            .read_line(&mut line)
            .map_err(|e| Error::TarSplit(format!("reading tar-split: {e}")))?;
        if n == 0 {
            break;
        }
        let text = line.trim_end();
        if text.is_empty() {
            continue;
        }
        let entry = parse_line(text)?;
        match entry.kind {
            SEGMENT_TYPE => {
                let bytes = entry.payload_bytes()?.unwrap_or_default();
                out.write_all(&bytes).map_err(|e| Error::io(&out_path, e))?;
                written += bytes.len() as u64;
            }
            FILE_TYPE => {
                if entry.size == 0 {
                    continue;
                }
                let name = entry.name_bytes()?;
                let shown = String::from_utf8_lossy(&name).into_owned();
                let comps = fsutil::normalize(&name)
                    .map_err(|r| Error::TarSplit(format!("file {shown:?}: {}", r.reason())))?;
                if comps.is_empty() {
                    return Err(Error::TarSplit(format!("file {shown:?} names the root")));
                }
                let rel = fsutil::join(&comps);
                let path = diff.join(std::ffi::OsStr::from_bytes(&rel));
                let fd = fsutil::open_beneath(&diff_fd, &rel, OFlags::RDONLY, Mode::empty())
                    .map_err(|e| Error::io(&path, e))?;
                let mut file = std::fs::File::from(fd);
                let mut digest = crc64();
                let mut left = entry.size;
                while left > 0 {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let k = file
                        .read(&mut buf[..want])
                        .map_err(|e| Error::io(&path, e))?;
                    if k == 0 {
                        return Err(Error::TarSplit(format!(
                            "{shown}: file is shorter than the recorded {} bytes",
                            entry.size
                        )));
                    }
                    digest.update(&buf[..k]);
                    out.write_all(&buf[..k])
                        .map_err(|e| Error::io(&out_path, e))?;
                    left -= k as u64;
                }
                if file.read(&mut buf[..1]).map_err(|e| Error::io(&path, e))? != 0 {
                    return Err(Error::TarSplit(format!(
                        "{shown}: file is longer than the recorded {} bytes",
                        entry.size
                    )));
                }
                if let Some(expected) = entry.payload_bytes()? {
                    let found = digest.finalize().to_be_bytes();
                    if expected != found {
                        return Err(Error::TarSplit(format!("{shown}: CRC-64 mismatch")));
                    }
                }
                written += entry.size;
            }
            other => {
                return Err(Error::TarSplit(format!(
                    "unknown entry type {other} at {}",
                    entry.position
                )))
            }
        }
    }
    out.flush().map_err(|e| Error::io(&out_path, e))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_go_crc64_iso() {
        // Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ISO))
        assert_eq!(crc64_of(b"123456789"), 0xb909_56c7_75a4_1001);
        assert_eq!(crc64_of(b""), 0);
    }

    #[test]
    fn entry_json_shape_matches_tar_split() {
        let seg = SplitEntry {
            kind: 2,
            name: None,
            name_raw: None,
            size: 0,
            payload: Some("AAAA".into()),
            position: 0,
        };
        assert_eq!(
            serde_json::to_string(&seg).unwrap(),
            r#"{"type":2,"payload":"AAAA","position":0}"#
        );
        let dir = SplitEntry {
            kind: 1,
            name: Some("./etc/".into()),
            name_raw: None,
            size: 0,
            payload: None,
            position: 3,
        };
        assert_eq!(
            serde_json::to_string(&dir).unwrap(),
            r#"{"type":1,"name":"./etc/","payload":null,"position":3}"#
        );
        // A line as tar-split writes it parses.
        let e =
            parse_line(r#"{"type":1,"name":"a","size":5,"payload":"AAAAAAAAAAA=","position":1}"#)
                .unwrap();
        assert_eq!(e.size, 5);
        assert_eq!(e.payload_bytes().unwrap().unwrap(), vec![0u8; 8]);
        let raw = SplitEntry {
            name: None,
            name_raw: Some(B64.encode(b"\xff\xfe")),
            ..e
        };
        assert_eq!(raw.name_bytes().unwrap(), b"\xff\xfe");
        assert!(matches!(parse_line("{nope"), Err(Error::TarSplit(_))));
    }
}
