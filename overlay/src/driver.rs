//! Layer directories under `overlay/`.

use std::path::{Path, PathBuf};

use crate::Result;

/// True for a valid layer id: exactly 64 lowercase hex characters (so `RO`,
/// `l`, dot names and junk never are).
pub fn is_layer_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The layer driver for one store root's `overlay/` directory.
#[derive(Debug)]
pub struct Driver {
    root: PathBuf,
}

/// A layer being built in a `.staging-*` directory. Dropping it without
/// [`StagedLayer::commit`] removes the staging directory.
#[derive(Debug)]
pub struct StagedLayer {
    path: PathBuf,
    committed: bool,
}

impl Driver {
    /// Open (creating if needed) the driver directory `overlay_dir`
    /// (`<root>/overlay`), with its `l/` subdirectory. Read-only stores may
    /// open a directory they cannot write (`create = false`).
    pub fn open(overlay_dir: &Path, create: bool) -> Result<Driver> {
        let _ = create;
        Ok(Driver {
            root: overlay_dir.to_path_buf(),
        })
    }

    /// `<root>/overlay`.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Start building a layer. `read_only` layers go under `RO/` (shared
    /// placement) and get no `work/`; others get `diff/ work/ merged/`. Writes
    /// `link` (a fresh short name) into the staging dir. Parents are only named
    /// at [`StagedLayer::commit`], so a chain's layers can be staged and
    /// extracted in parallel before any of them is committed.
    pub fn stage_layer(&self, read_only: bool) -> Result<StagedLayer> {
        let _ = read_only;
        todo!()
    }

    /// Does layer `id` exist (as a directory or `RO/` symlink)?
    pub fn exists(&self, id: &str) -> bool {
        let _ = id;
        todo!()
    }

    /// Path of layer `id`'s `diff/` (through the `RO` symlink when shared).
    pub fn diff_path(&self, id: &str) -> PathBuf {
        self.root.join(id).join("diff")
    }

    /// `<root>/overlay/l/<short>` for layer `id` (reads its `link` file).
    pub fn short_link_path(&self, id: &str) -> Result<PathBuf> {
        let _ = id;
        todo!()
    }

    /// Remove layer `id`: rename it to `.trash-*`, remove its `l/` link and
    /// `RO` symlink, then delete the tree. Missing layer = `LayerUnknown`.
    pub fn remove_layer(&self, id: &str) -> Result<()> {
        let _ = id;
        todo!()
    }

    /// Remove `.staging-*` / `.trash-*` debris under `overlay/` and `overlay/RO/`,
    /// and dangling `l/` links. Only call while holding the store's writer lock.
    /// Returns the number of entries removed.
    pub fn remove_debris(&self) -> Result<usize> {
        todo!()
    }

    /// Bytes used by the files in layer `id`'s diff (apparent sizes, hardlinks once).
    pub fn diff_usage(&self, id: &str) -> Result<u64> {
        let _ = id;
        todo!()
    }
}

impl StagedLayer {
    /// The staging directory's `diff/`, to apply a tar into.
    pub fn diff_path(&self) -> PathBuf {
        self.path.join("diff")
    }

    /// Write `lower` (the short names of `parents`, nearest parent first,
    /// `l/<short>:l/<short>…`; parents must be committed already), sync the
    /// staged tree (syncfs of its filesystem), rename it to its final name `id`
    /// (`RO/<id>` plus the `<id> -> RO/<id>` symlink when read-only), and create
    /// `l/<short>`. Fails if `id` already exists.
    pub fn commit(mut self, id: &str, parents: &[&str]) -> Result<()> {
        let _ = (id, parents);
        self.committed = true;
        todo!()
    }
}
