//! Layer blob compression: detection by magic bytes and media type, and
//! streaming decompressors.

use std::io::Read;

use crate::{Error, Result};

/// How a layer blob is compressed. The numeric values match containers/storage's
/// `compression` field in `layer.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// containers/storage's numeric code (0 none, 2 gzip, 4 zstd).
    pub fn code(self) -> u8 {
        todo!()
    }

    /// Detect from the first bytes of a blob (pure). `None` = not a known
    /// compressed format (plain tar or junk).
    pub fn detect(magic: &[u8]) -> Option<Compression> {
        let _ = magic;
        todo!()
    }

    /// Compression named by an OCI / Docker layer media type, e.g.
    /// `application/vnd.oci.image.layer.v1.tar+gzip`,
    /// `application/vnd.docker.image.rootfs.diff.tar.gzip`. Foreign/non-distributable
    /// variants count too. Unknown → `Err(UnsupportedMediaType)`.
    pub fn from_media_type(media_type: &str) -> Result<Compression> {
        let _ = media_type;
        todo!()
    }
}

/// Wrap `reader` (the raw blob) in a decompressor. `declared` is what the
/// media type says (`None` = unknown, detect). The first bytes are sniffed and
/// must agree with `declared` (a plain tar declared as gzip is
/// `CompressionMismatch`). Gzip is multi-member safe. Returns the detected
/// compression and the decompressed stream.
pub fn decompress<'a>(
    reader: Box<dyn Read + Send + 'a>,
    declared: Option<Compression>,
) -> Result<(Compression, Box<dyn Read + Send + 'a>)> {
    let _ = (reader, declared, Error::LayerUnknown(String::new()));
    todo!()
}
