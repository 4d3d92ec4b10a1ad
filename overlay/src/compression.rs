//! Layer blob compression: detection by magic bytes and media type, and
//! streaming decompressors.

use std::io::{self, BufReader, Read};

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
        match self {
            Compression::None => 0,
            Compression::Gzip => 2,
            Compression::Zstd => 4,
        }
    }

    /// Detect from the first bytes of a blob (pure). `None` = not a known
    /// compressed format (plain tar or junk).
    pub fn detect(magic: &[u8]) -> Option<Compression> {
        if magic.starts_with(&GZIP_MAGIC) {
            Some(Compression::Gzip)
        } else if magic.starts_with(&ZSTD_MAGIC) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }

    /// Compression named by an OCI / Docker layer media type, e.g.
    /// `application/vnd.oci.image.layer.v1.tar+gzip`,
    /// `application/vnd.docker.image.rootfs.diff.tar.gzip`. Foreign/non-distributable
    /// variants count too. Unknown → `Err(UnsupportedMediaType)`.
    ///
    /// Parameters (`; …`) and letter case are ignored; `application/x-tar`
    /// and Docker's `…rootfs.diff.tar` mean an uncompressed tar.
    pub fn from_media_type(media_type: &str) -> Result<Compression> {
        let base = media_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let c = match base.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar"
            | "application/x-tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
            _ => return Err(Error::UnsupportedMediaType(media_type.to_owned())),
        };
        Ok(c)
    }

    /// A short name for messages: `none`, `gzip`, `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Buffer size for reading blobs: big, for throughput.
const BUF_SIZE: usize = 256 * 1024;

/// Check the sniffed compression against the declared one (pure).
fn check_declared(
    declared: Option<Compression>,
    detected: Option<Compression>,
) -> Result<Compression> {
    let found = detected.unwrap_or(Compression::None);
    match declared {
        Some(d) if d != found => Err(Error::CompressionMismatch {
            declared: d.name().to_owned(),
            detected: found.name().to_owned(),
        }),
        _ => Ok(found),
    }
}

/// Wrap `reader` (the raw blob) in a decompressor. `declared` is what the
/// media type says (`None` = unknown, detect). The first bytes are sniffed and
/// must agree with `declared` (a plain tar declared as gzip is
/// `CompressionMismatch`). Gzip is multi-member safe. Returns the detected
/// compression and the decompressed stream.
///
/// The sniffed bytes are not lost: the returned stream starts at the blob's
/// first byte. A read error while sniffing is an `Io` error on the path
/// `<layer blob>`.
pub fn decompress<'a>(
    mut reader: Box<dyn Read + Send + 'a>,
    declared: Option<Compression>,
) -> Result<(Compression, Box<dyn Read + Send + 'a>)> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match reader.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("<layer blob>", e)),
        }
    }
    let compression = check_declared(declared, Compression::detect(&magic[..got]))?;
    let head = io::Cursor::new(magic[..got].to_vec());
    let raw = BufReader::with_capacity(BUF_SIZE, head.chain(reader));
    let out: Box<dyn Read + Send + 'a> = match compression {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(raw)
                .map_err(|e| Error::io("<zstd decoder>", e))?,
        ),
    };
    Ok((compression, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn codes_and_detection() {
        assert_eq!(Compression::None.code(), 0);
        assert_eq!(Compression::Gzip.code(), 2);
        assert_eq!(Compression::Zstd.code(), 4);
        assert_eq!(
            Compression::detect(&[0x1f, 0x8b, 8, 0]),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::detect(&ZSTD_MAGIC), Some(Compression::Zstd));
        assert_eq!(Compression::detect(b"etc/"), None);
        assert_eq!(Compression::detect(&[0x1f]), None);
        assert_eq!(Compression::detect(&[]), None);
    }

    #[test]
    fn media_types() {
        use Compression::*;
        for (mt, c) in [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar",
                None,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Gzip,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                Zstd,
            ),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Gzip,
            ),
            ("application/x-tar", None),
            ("Application/VND.OCI.image.layer.v1.tar+gzip; foo=bar", Gzip),
        ] {
            assert_eq!(Compression::from_media_type(mt).unwrap(), c, "{mt}");
        }
        for mt in [
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "application/vnd.oci.image.config.v1+json",
            "",
        ] {
            assert!(matches!(
                Compression::from_media_type(mt),
                Err(Error::UnsupportedMediaType(m)) if m == mt
            ));
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn read_all(r: &mut dyn Read) -> Vec<u8> {
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn decompress_each_kind() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (c, mut r) = decompress(Box::new(io::Cursor::new(data.clone())), None).unwrap();
        assert_eq!(c, Compression::None);
        assert_eq!(read_all(&mut r), data);

        let gz = gzip(&data);
        let (c, mut r) = decompress(
            Box::new(io::Cursor::new(gz.clone())),
            Some(Compression::Gzip),
        )
        .unwrap();
        assert_eq!(c, Compression::Gzip);
        assert_eq!(read_all(&mut r), data);

        let zs = zstd::encode_all(&data[..], 3).unwrap();
        let (c, mut r) = decompress(Box::new(io::Cursor::new(zs)), None).unwrap();
        assert_eq!(c, Compression::Zstd);
        assert_eq!(read_all(&mut r), data);

        // Tiny inputs (shorter than the sniffed prefix) are kept whole.
        let (c, mut r) = decompress(Box::new(io::Cursor::new(b"ab".to_vec())), None).unwrap();
        assert_eq!(c, Compression::None);
        assert_eq!(read_all(&mut r), b"ab");
    }

    /// A reader that hands out one byte per read, to check sniffing loops.
    struct Trickle(io::Cursor<Vec<u8>>);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn multi_member_gzip_and_trickle() {
        let mut gz = gzip(b"hello ");
        gz.extend(gzip(b"world"));
        let (c, mut r) = decompress(Box::new(Trickle(io::Cursor::new(gz))), None).unwrap();
        assert_eq!(c, Compression::Gzip);
        assert_eq!(read_all(&mut r), b"hello world");
    }

    #[test]
    fn mismatch_is_an_error() {
        let plain = b"plain tar bytes".to_vec();
        let err = decompress(Box::new(io::Cursor::new(plain)), Some(Compression::Gzip))
            .err()
            .unwrap();
        assert!(
            matches!(&err, Error::CompressionMismatch { declared, detected } if declared == "gzip" && detected == "none"),
            "{err}"
        );
        let gz = gzip(b"x");
        let err = decompress(
            Box::new(io::Cursor::new(gz.clone())),
            Some(Compression::None),
        )
        .err()
        .unwrap();
        assert!(matches!(err, Error::CompressionMismatch { .. }));
        let err = decompress(Box::new(io::Cursor::new(gz)), Some(Compression::Zstd))
            .err()
            .unwrap();
        assert!(matches!(err, Error::CompressionMismatch { .. }));
    }

    #[test]
    fn corrupt_gzip_fails_on_read() {
        let mut gz = gzip(&[7u8; 10_000]);
        let mid = gz.len() / 2;
        gz[mid] ^= 0xff;
        gz.truncate(gz.len() - 4);
        let (_, mut r) = decompress(Box::new(io::Cursor::new(gz)), None).unwrap();
        let mut v = Vec::new();
        assert!(r.read_to_end(&mut v).is_err());
    }
}
