//! tar-split metadata: enough of a layer tar to rebuild it byte for byte from
//! the extracted `diff/`.
//!
//! The format is containers/storage's (vbatts/tar-split) JSON lines, one
//! object per line:
//!
//! ```text
//! {"type":2,"payload":"<base64 raw bytes>","position":0}          segment: headers, padding
//! {"type":1,"name":"etc/passwd","size":1234,"payload":"<base64 crc64>","position":1}   file content
//! ```
//!
//! Segments hold every byte that is not file content (headers, PAX records,
//! padding, the end-of-archive blocks); file entries name the file whose
//! contents follow, and its size. The file's CRC-64 (ISO) is the payload.

use std::io::{Read, Write};
use std::path::Path;

use crate::Result;

/// Rebuild the layer tar from `diff` and the tar-split JSON lines in
/// `tar_split`, writing it to `out`. Returns bytes written. A file whose size
/// or CRC differs from the record is [`crate::Error::TarSplit`].
pub fn reassemble(diff: &Path, tar_split: &mut dyn Read, out: &mut dyn Write) -> Result<u64> {
    let _ = (diff, tar_split, out);
    todo!()
}
