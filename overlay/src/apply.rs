//! Applying an (uncompressed) OCI layer tar stream into a layer's `diff/`.
//!
//! All file work happens relative to directory fds opened beneath the diff
//! directory with symlink resolution refused, so a hostile archive cannot
//! reach outside it.

use std::io::{Read, Write};
use std::path::Path;

use crate::Result;

/// Options for [`apply_tar`].
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Refuse the layer once more than this many uncompressed tar bytes were
    /// read (gzip bomb guard). `None` = no limit.
    pub max_size: Option<u64>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions { max_size: None }
    }
}

/// What [`apply_tar`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Tar entries processed.
    pub entries: u64,
    /// Bytes of the uncompressed tar stream, including trailing padding (read to EOF).
    pub tar_size: u64,
}

/// Apply the uncompressed tar stream `reader` into the existing, empty
/// directory `diff`.
///
/// * regular files, dirs, symlinks (target stored as-is), hardlinks (target
///   must be an earlier entry of this layer), char/block devices, fifos;
/// * uid/gid (lchown), modes incl. setuid/setgid/sticky (set after chown),
///   mtimes (dirs fixed up at the end), xattrs from PAX `SCHILY.xattr.*`;
/// * `.wh.NAME` → char device 0:0 `NAME`; `.wh..wh..opq` → opaque xattr on its dir;
///   other `.wh..wh.*` entries (aufs metadata) are skipped;
/// * leading `./` and `/`-free relative names only: `..` components, absolute
///   paths, paths through a symlink, hardlinks out of the layer, whiteouts
///   naming `.`/`..`, and duplicate non-directory entries are
///   [`crate::Error::HostileEntry`] naming the entry;
/// * the stream is read to EOF (so the caller's digest covers every byte);
/// * if `tar_split` is given, tar-split JSON lines are written to it
///   (see [`crate::tarsplit`]) so [`crate::tarsplit::reassemble`] can rebuild the
///   identical stream from `diff` later.
///
/// On error the diff directory is left in an undefined state; the caller
/// discards the staged layer.
pub fn apply_tar(
    diff: &Path,
    reader: &mut dyn Read,
    tar_split: Option<&mut dyn Write>,
    opts: &ApplyOptions,
) -> Result<ApplyStats> {
    let _ = (diff, reader, tar_split, opts);
    todo!()
}
