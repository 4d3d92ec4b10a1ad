//! Reading images out of OCI image layouts and docker-archive tarballs.
//!
//! Both formats are reduced to a [`SourceImage`]: the manifest and config
//! bytes (digests verified), the layer blobs in order (base first) with their
//! declared digest and compression, and the names the source gives the image.
//! Blobs are located, not read: each [`BlobLocation`] is a byte range of a file
//! on disk, so layers can be opened and streamed independently in parallel.
//!
//! ```text
//! PATH (dir)  ── oci-layout/index.json ──┐
//! PATH (tar)  ── indexed tar members ────┼─ manifest.json  → docker-archive
//!                                        └─ index.json     → OCI layout (oci-archive)
//! ```

mod blobs;
mod docker;
mod oci;
pub mod platform;
pub mod spec;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use blobs::BlobLocation;
use blobs::Blobs;
use storectl_overlay::Compression;

use crate::error::{Error, Result};

/// A blob whose bytes come from elsewhere — a registry, for
/// `storectl-transfer`'s pull — opened when the import reads it. This crate
/// knows nothing of how: the source streams the bytes (resuming and verifying
/// as it can); the import checks them against the config's diffIDs as always.
pub trait RemoteBlob: Send + Sync + std::fmt::Debug {
    /// Open the blob for streaming from its first byte. An error is passed
    /// up as [`Error::Remote`] (its message unchanged).
    fn open(&self) -> std::result::Result<Box<dyn Read + Send>, BoxError>;
    /// Where the blob is, for messages (`registry/repo@sha256:…`).
    fn describe(&self) -> String;
}

/// Any error of a [`RemoteBlob`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a layer blob's bytes come from.
#[derive(Debug, Clone)]
pub enum Blob {
    /// A byte range of a local file (OCI layout, archive member).
    File(BlobLocation),
    /// A blob from elsewhere (a registry), streamed; progress says `downloading`.
    Remote {
        source: Arc<dyn RemoteBlob>,
        /// Its size as the manifest declares it.
        size: u64,
    },
}

impl Blob {
    /// The blob's size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Blob::File(loc) => loc.len,
            Blob::Remote { size, .. } => *size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Open the blob for streaming.
    pub fn open(&self) -> Result<Box<dyn std::io::Read + Send>> {
        match self {
            Blob::File(loc) => Ok(Box::new(loc.open()?)),
            Blob::Remote { source, .. } => source.open().map_err(Error::Remote),
        }
    }

    /// Where the blob is, for messages.
    pub fn describe(&self) -> PathBuf {
        match self {
            Blob::File(loc) => loc.path.clone(),
            Blob::Remote { source, .. } => PathBuf::from(source.describe()),
        }
    }

    /// Bytes come over the network (progress says `downloading`).
    pub fn is_remote(&self) -> bool {
        matches!(self, Blob::Remote { .. })
    }
}

/// One layer blob of a source image.
#[derive(Debug, Clone)]
pub struct SourceLayer {
    /// The blob's digest as the source declares it (`None` when the format
    /// does not say, as in older docker-archives).
    pub digest: Option<String>,
    /// Declared media type → compression; `None` = sniff.
    pub compression: Option<Compression>,
    pub blob: Blob,
}

impl SourceLayer {
    /// Is the blob compressed? The media type says, or else the first bytes
    /// of a local blob do; a registry blob of unknown type is not fetched
    /// for this (`None`).
    pub fn is_compressed(&self) -> Option<bool> {
        if let Some(c) = self.compression {
            return Some(c != Compression::None);
        }
        let Blob::File(loc) = &self.blob else {
            return None;
        };
        let mut magic = [0u8; 8];
        let mut file = loc.open().ok()?;
        let n = std::io::Read::read(&mut file, &mut magic).ok()?;
        Some(Compression::detect(&magic[..n]).is_some())
    }
}

/// An image found in a source, ready to import.
#[derive(Debug, Clone)]
pub struct SourceImage {
    /// The manifest as distributed; `None` for docker-archives, whose
    /// manifest the store writes after import (it needs the layer sizes).
    pub manifest: Option<Vec<u8>>,
    pub manifest_digest: Option<String>,
    pub config: Vec<u8>,
    /// `sha256:<hex>` of `config`; the hex is the image id.
    pub config_digest: String,
    pub layers: Vec<SourceLayer>,
    /// Names the source gives the image (normalized references).
    pub names: Vec<String>,
    /// The unnamed temporary file a compressed tarball was decompressed to,
    /// kept open while the blobs are read from it (`/proc/self/fd/N`).
    pub spill: Option<std::sync::Arc<std::fs::File>>,
}

/// Open `spec` — `PATH` or `PATH:TAG` — and pick one image from it.
///
/// A directory is an OCI image layout; a file is a tarball holding either a
/// docker-archive (`manifest.json`) or an OCI layout (`index.json`). `TAG`
/// selects the image of a source that holds several (a docker-archive's
/// `RepoTags` entry, an OCI index entry's `ref.name`); a source with one image
/// needs none. `-` (or `-:TAG`) is a tarball on standard input.
///
/// A gzip- or zstd-compressed tarball (`docker save … | gzip`), and a
/// tarball on standard input, are first copied (and decompressed) to an
/// unnamed temporary file in `spill_dir` (`O_TMPFILE`: nothing is left
/// behind, even by a crash), which lives as long as the returned image.
pub fn open_source(spec: &str, spill_dir: &Path) -> Result<SourceImage> {
    let mut spill = None;
    let stdin_tag = match spec {
        "-" => Some(None),
        s => s
            .strip_prefix("-:")
            .filter(|t| !t.is_empty() && !Path::new(spec).exists())
            .map(Some),
    };
    if let Some(tag) = stdin_tag {
        let stdin = Path::new("<stdin>");
        let (file, fd_path) = spill_to(Box::new(std::io::stdin()), stdin, spill_dir)?;
        spill = Some(std::sync::Arc::new(file));
        let mut src = open_blobs(Blobs::tar_at(&fd_path, stdin)?, stdin, tag)?;
        src.spill = spill;
        return Ok(src);
    }
    let (path, tag) = split_source_spec(spec);
    let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
    let blobs = if meta.is_dir() {
        Blobs::dir(&path)
    } else {
        match spill_compressed(&path, spill_dir)? {
            Some((file, fd_path)) => {
                spill = Some(std::sync::Arc::new(file));
                Blobs::tar_at(&fd_path, &path)?
            }
            None => Blobs::tar(&path)?,
        }
    };
    let mut src = open_blobs(blobs, &path, tag.as_deref())?;
    src.spill = spill;
    Ok(src)
}

/// The image in `blobs`: a docker-archive or an OCI layout.
fn open_blobs(blobs: Blobs, path: &Path, tag: Option<&str>) -> Result<SourceImage> {
    if blobs.exists("manifest.json") {
        docker::open(&blobs, tag)
    } else if blobs.exists("index.json") {
        oci::open(&blobs, tag)
    } else {
        Err(Error::archive(
            path,
            "neither an OCI image layout (index.json) nor a docker-archive (manifest.json)",
        ))
    }
}

/// When the file at `path` is gzip or zstd, decompress it into an unnamed
/// temporary file in `dir`: the file and a path that opens it again.
fn spill_compressed(path: &Path, dir: &Path) -> Result<Option<(std::fs::File, PathBuf)>> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = Vec::with_capacity(4);
    (&mut file)
        .take(4)
        .read_to_end(&mut magic)
        .map_err(|e| Error::io(path, e))?;
    if Compression::detect(&magic).is_none() {
        return Ok(None);
    }
    file.rewind().map_err(|e| Error::io(path, e))?;
    spill_to(Box::new(file), path, dir).map(Some)
}

/// Copy `reader` (decompressed when gzip or zstd) into an unnamed temporary
/// file in `dir`: the file and a path that opens it again.
fn spill_to(
    reader: Box<dyn std::io::Read + Send>,
    shown: &Path,
    dir: &Path,
) -> Result<(std::fs::File, PathBuf)> {
    use std::os::fd::AsRawFd;
    let (compression, mut stream) = storectl_overlay::compression::decompress(reader, None)?;
    let mut out = tempfile::tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    std::io::copy(&mut stream, &mut out).map_err(|e| {
        let what = match compression {
            Compression::None => "reading the archive".to_string(),
            c => format!("decompressing the {} archive", c.name()),
        };
        Error::archive(shown, format!("{what}: {e}"))
    })?;
    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", out.as_raw_fd()));
    Ok((out, fd_path))
}

/// `PATH:TAG` → (PATH, Some(TAG)) when `PATH:TAG` does not exist but PATH
/// does (the first `:` that gives an existing path; TAG may hold `:` itself,
/// as in `archive.tar:busybox:latest`).
pub fn split_source_spec(spec: &str) -> (PathBuf, Option<String>) {
    if Path::new(spec).exists() {
        return (PathBuf::from(spec), None);
    }
    for (i, _) in spec.match_indices(':') {
        let (p, tag) = (&spec[..i], &spec[i + 1..]);
        if !p.is_empty() && !tag.is_empty() && Path::new(p).exists() {
            return (PathBuf::from(p), Some(tag.to_string()));
        }
    }
    (PathBuf::from(spec), None)
}

/// Normalize the names a source gives, dropping (with a warning) any that do not parse.
fn normalize_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = Vec::new();
    for n in names {
        match crate::reference::normalize_name(n) {
            Ok(n) if !out.contains(&n) => out.push(n),
            Ok(_) => {}
            Err(e) => tracing::warn!("ignoring image name {n:?} from the archive: {e}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_spec_splits_only_when_the_path_exists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("layout");
        std::fs::create_dir(&p).unwrap();
        let s = p.to_str().unwrap();
        assert_eq!(split_source_spec(s), (p.clone(), None));
        assert_eq!(
            split_source_spec(&format!("{s}:v1")),
            (p.clone(), Some("v1".into()))
        );
        let missing = format!("{s}-nope:v1");
        assert_eq!(split_source_spec(&missing), (PathBuf::from(&missing), None));
        assert_eq!(
            split_source_spec(&format!("{s}:busybox:1.36")),
            (p.clone(), Some("busybox:1.36".into()))
        );
    }
}
