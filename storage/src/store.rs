//! The [`Store`] facade: one store root, its layers, images and containers,
//! in memory and on disk.
//!
//! This file holds the [`Store`] type, its options, where its parts are on
//! disk, and opening and (re-)reading a root. The parts:
//!
//! * `store/state.rs` — [`State`], the layers and images in memory, and its
//!   pure queries (chains, which layers images use, shadowed names);
//! * `store/shared.rs` — a reader's shared entries, applied from a
//!   refresher's delta ([`Store::apply_shared`]);
//! * `store/images.rs` — the image store: resolving (local first), chains,
//!   documents, names, read-only mounts;
//! * `store/layers.rs` — a layer's files: removal, verification;
//! * `store/pipeline.rs` — the import pipeline: plan → extract → publish;
//! * `store/containers.rs` — the container store: writable layers, records,
//!   read-write mounts, runtime bundles;
//! * `store/writing.rs` — a mutation's start (the writer lock, the state made
//!   current) and end (`generation` replaced);
//! * `store/sweep.rs` — the sweep after a crashed writer: debris, unused
//!   layers, orphaned overlay dirs, the writer's legacy links;
//! * `store/removals.rs` — removing an image (`rmi`), taking back a failed
//!   import's layers, and the writer's grace period for removed shared
//!   layers, `gc`;
//! * the writer side of sharing (containers/storage's index on the share)
//!   is not here: the store calls a [`ShareHook`] (`share_hook.rs`) that
//!   storectl-remote implements;
//! * `store/links.rs` — a reader's legacy links of shared entries;
//! * `store/usage.rs` — disk usage (`df`), kept incrementally.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flate2::write::GzEncoder;
use parking_lot::RwLock;
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};
use storectl_overlay::{apply_tar, ApplyOptions, Driver, StagedLayer};

use crate::config::{Layout, Role, RootConfig};
use crate::csindex;
use crate::digest::{chain_ids, is_hex64, sha256_digest, HashingReader};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, create_dir, sync_dir, unique_suffix, write_atomic, write_synced};
use crate::import::{self, spec, SourceImage, SourceLayer};
use crate::lock::{LockWait, WriterLock};
use crate::meta::{self, Image, Layer, CONFIG, MANIFEST};
use crate::progress::{EventKind, ProgressEvent, ProgressReader, Reporter, DEFAULT_INTERVAL};
use crate::share_hook::{Change, IndexLines, MakeShareHook, ShareHook};

mod containers;
mod images;
mod layers;
mod links;
mod pipeline;
pub mod records;
mod removals;
mod shared;
mod state;
mod sweep;
mod usage;
mod writing;
pub use containers::ContainerOptions;
pub use layers::LayerCheck;
pub use pipeline::LoadOptions;
pub use records::{Record, Records};
pub use removals::{GcReport, Removed};
pub use shared::SharedDelta;
pub use state::State;
pub use usage::{ContainerUsage, DiskUsage, FsUsage, ImageUsage};

use links::LinkUpkeep;
use state::{insert_batch, keep_shared, local_claims, shared_claims};

#[cfg(test)]
mod reload_tests;
#[cfg(test)]
mod test_support;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The store root (`/var/lib/storectl`, …).
    pub root: PathBuf,
    /// The root's sharing role; `None` = read `<root>/storectl.json`.
    pub config: Option<RootConfig>,
    /// How a mutation waits for another writer's lock (default: forever,
    /// as podman does; see [`LockWait`]).
    pub lock_wait: LockWait,
    /// On a writer root: makes the writer side of sharing
    /// ([`crate::share_hook`]; storectl-remote's `open_store` sets it).
    /// Without it a writer store refuses changes.
    pub share_hook: Option<MakeShareHook>,
    /// A writer opening from containers/storage's index on a local share
    /// maps its files rather than reading them
    /// ([`fsutil::read_or_map`](crate::fsutil::read_or_map)): a third less
    /// time to open at 10,000 images. For short-lived processes (the CLI's
    /// one-shot commands); off by default.
    pub map_index: bool,
}

impl StoreOptions {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StoreOptions {
            root: root.into(),
            config: None,
            lock_wait: LockWait::default(),
            share_hook: None,
            map_index: false,
        }
    }
}

/// A writer's state as read from containers/storage's index
/// ([`Store::state_from_index`]).
struct FromIndex {
    state: State,
    /// The files' lines (for the share hook).
    lines: IndexLines,
    /// The `generation` text the index is for.
    generation: String,
}

/// A layer store, an image store and the layer driver under one root.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    layout: Layout,
    driver: Driver,
    state: RwLock<State>,
    /// Why the root cannot be written, when it cannot.
    read_only: Option<String>,
    lock_wait: LockWait,
    /// [`StoreOptions::map_index`].
    map_index: bool,
    /// A reader's upkeep of the legacy names of shared entries.
    links: parking_lot::Mutex<LinkUpkeep>,
    /// Names already warned about as claimed by a local and a shared image.
    warned_names: parking_lot::Mutex<BTreeSet<String>>,
    /// The `generation` text the in-memory state matches (read before the
    /// records at open or reload, or written by this store).
    synced_generation: parking_lot::Mutex<Option<String>>,
    /// Warnings about skipped entries already given (each is given once).
    warned: parking_lot::Mutex<BTreeSet<String>>,
    /// On a writer: the writer side of sharing ([`crate::share_hook`]).
    share_hook: Option<Box<dyn ShareHook>>,
}

const MOUNTS: &str = "mounts";
/// The most layers an image may have: what overlayfs can stack (its
/// `OVL_MAX_STACK`). A deeper image could never be mounted; it is refused
/// at load, before anything is written.
pub const MAX_LAYERS: usize = 500;
const RO: &str = "RO";
/// A layer record's file in its directory.
pub const LAYER_JSON: &str = "layer.json";
/// An image record's file in its directory.
pub const IMAGES_JSON: &str = "images.json";

/// Names in `dir` that are layer/image ids (64 lowercase hex); everything else
/// (dot files, `RO`, `.nfsXXXX`, junk) is skipped. A missing dir is empty.
pub fn list_ids(dir: &Path) -> Result<Vec<String>> {
    Ok(list_id_entries(dir)?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}

/// Like [`list_ids`], with whether each entry is a symlink (from `readdir`'s
/// d_type, no extra `stat`).
pub fn list_id_entries(dir: &Path) -> Result<Vec<(String, bool)>> {
    list_entries(dir, true)
}

/// The ids in `dir` as [`list_id_entries`] gives them, without the symlinks
/// unless `symlinks`. Names are looked at in `readdir`'s buffer: only ids
/// are copied (a reader's `overlay-layers/` holds a legacy link per shared
/// layer, which opening its store skips).
fn list_entries(dir: &Path, symlinks: bool) -> Result<Vec<(String, bool)>> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e.into())),
    };
    let entries = rustix::fs::Dir::new(fd).map_err(|e| Error::io(dir, e.into()))?;
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e.into()))?;
        let Ok(name) = std::str::from_utf8(entry.file_name().to_bytes()) else {
            continue;
        };
        if !is_hex64(name) {
            continue;
        }
        let symlink = match entry.file_type() {
            FileType::Unknown => fs::symlink_metadata(dir.join(name))
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false),
            t => t == FileType::Symlink,
        };
        if symlinks || !symlink {
            ids.push((name.to_string(), symlink));
        }
    }
    ids.sort();
    Ok(ids)
}

/// Does `dir` hold no directory but `RO`? Its link count says so — two
/// plus one per subdirectory — on the filesystems known to keep that count
/// (ext4, xfs, tmpfs); elsewhere (btrfs says 1, NFS says what its server
/// says), and when it cannot tell, `false`: list it. Local records are
/// directories, so a `dir` without any holds none. Its other entries —
/// legacy symlinks, and stray files — are not listed then: a stray
/// hex-named file goes unwarned until a store opens without the index.
fn holds_no_subdirs(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;

    use fsutil::fs_magic::{EXT4, TMPFS, XFS};
    let counts =
        rustix::fs::statfs(dir).is_ok_and(|fs| matches!(fs.f_type as u64, EXT4 | XFS | TMPFS));
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return false;
    };
    let ro = fs::symlink_metadata(dir.join("RO")).is_ok_and(|m| m.is_dir());
    counts && meta.is_dir() && meta.nlink() == 2 + u64::from(ro)
}

/// How to get rid of a skipped entry, for its warning.
fn removal_hint(path: &Path) -> String {
    format!(
        " (not made by storectl? it is skipped; remove it with rm -rf {})",
        path.display()
    )
}

impl Store {
    /// Open the store at `opts.root`, creating its directories when it can.
    /// A root that cannot be written opens read-only (mutations then fail
    /// with [`Error::ReadOnlyStore`]).
    pub fn open(opts: StoreOptions) -> Result<Store> {
        let root = opts.root.clone();
        if root.exists() && !root.is_dir() {
            return Err(Error::ReadOnlyStore {
                path: root,
                reason: "not a directory".into(),
            });
        }
        let config = match opts.config {
            Some(c) => c,
            None => RootConfig::load(&root)?,
        };
        let layout = Layout {
            root: root.clone(),
            config,
        };
        let read_only = [layout.overlay(), layout.layers(), layout.images()]
            .iter()
            .find_map(|d| match create_dir(d) {
                Ok(()) => None,
                Err(Error::ReadOnlyStore { reason, .. }) => Some(reason),
                Err(e) => Some(e.to_string()),
            });
        let driver = Driver::open(&layout.overlay(), read_only.is_none())?
            .with_xattr_mode(layout.config.overlay_xattrs);
        let share_hook = match (layout.role(), &layout.config.shared, &read_only) {
            (Role::Writer, Some(_), None) => opts.share_hook.map(|make| make(&layout)),
            _ => None,
        };
        let store = Store {
            root,
            layout,
            driver,
            state: RwLock::new(State::default()),
            read_only,
            lock_wait: opts.lock_wait,
            map_index: opts.map_index,
            links: Default::default(),
            warned_names: Default::default(),
            synced_generation: parking_lot::Mutex::new(None),
            warned: parking_lot::Mutex::new(BTreeSet::new()),
            share_hook,
        };
        let released = crate::lock::last_released(&store.layout.writer_lock());
        match store.state_from_index(released) {
            Some(opened) => store.install_from_index(opened),
            None => {
                *store.synced_generation.lock() = store.read_generation();
                let state = store.read_state()?;
                *store.state.write() = state;
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn driver(&self) -> &Driver {
        &self.driver
    }

    /// Where the root's parts and its share are.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn layers_dir(&self) -> PathBuf {
        self.layout.layers()
    }

    fn images_dir(&self) -> PathBuf {
        self.layout.images()
    }

    /// Where a layer's record dir is: `overlay-layers/RO/<id>` when shared.
    fn layer_dir_of(&self, id: &str, shared: bool) -> PathBuf {
        if shared {
            self.layout.layers_ro().join(id)
        } else {
            self.layers_dir().join(id)
        }
    }

    /// For a layer `id` that is not loaded: are its local record and diff on
    /// disk all the same (an ancestor is missing)?
    fn is_stranded_layer(&self, id: &str) -> bool {
        let (record_dir, overlay_dir) =
            (self.layers_dir().join(id), self.layout.overlay().join(id));
        let local = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| !m.is_symlink());
        local(&record_dir)
            && local(&overlay_dir)
            && record_dir.join(LAYER_JSON).is_file()
            && overlay_dir.join("diff").is_dir()
    }

    /// Where a layer's record dir is (`overlay-layers/RO/<id>` when shared).
    pub fn layer_record_dir(&self, layer: &Layer) -> PathBuf {
        self.layer_dir_of(&layer.id, layer.shared)
    }

    /// Where a layer's overlay dir is: `overlay/RO/<id>` when shared.
    pub fn overlay_dir(&self, layer: &Layer) -> PathBuf {
        if layer.shared {
            self.layout.overlay_ro().join(&layer.id)
        } else {
            self.layout.overlay().join(&layer.id)
        }
    }

    fn image_dir_of(&self, id: &str, shared: bool) -> PathBuf {
        if shared {
            self.layout.images_ro().join(id)
        } else {
            self.images_dir().join(id)
        }
    }

    fn image_dir(&self, id: &str) -> PathBuf {
        let shared = self.state.read().images.get(id).is_some_and(|i| i.shared);
        self.image_dir_of(id, shared)
    }

    /// Does this root publish image layers and images to a share?
    fn publishes_shared(&self) -> bool {
        self.layout.role() == Role::Writer
    }

    /// The share this store writes: a writer's, when it can write.
    fn writes_share(&self) -> Option<&Path> {
        match (self.layout.role(), &self.layout.config.shared) {
            (Role::Writer, Some(share)) if self.read_only.is_none() => Some(share),
            _ => None,
        }
    }

    /// The writer side of sharing this store calls ([`crate::share_hook`]),
    /// if it has one.
    pub fn share_hook(&self) -> Option<&dyn ShareHook> {
        self.share_hook.as_deref()
    }

    /// Where `mount` puts image `id`.
    pub fn mount_path(&self, id: &str) -> PathBuf {
        self.root.join(MOUNTS).join(id)
    }

    /// Look at the in-memory state under its read lock (keep `f` short).
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read())
    }

    /// A snapshot of the in-memory state.
    pub fn state(&self) -> State {
        self.state.read().clone()
    }

    /// Every valid image, by id.
    pub fn images(&self) -> Vec<Image> {
        self.state.read().images.values().cloned().collect()
    }

    /// Every valid layer, by id.
    pub fn layers(&self) -> Vec<Layer> {
        self.state.read().layers.values().cloned().collect()
    }

    pub fn layer(&self, id: &str) -> Result<Layer> {
        self.state
            .read()
            .layers
            .get(id)
            .cloned()
            .ok_or_else(|| Error::LayerUnknown { id: id.into() })
    }

    /// The ids under `local` that are real entries (a symlink `<id> -> RO/<id>`
    /// is the writer's legacy name of a shared one), as `(id, false)`, then —
    /// when `with_ro` — the ids under `ro` as `(id, true)`.
    fn entry_ids(&self, local: &Path, ro: &Path, with_ro: bool) -> Result<Vec<(String, bool)>> {
        // A writer opening from the index (`with_ro` false) lists its local
        // records only where there may be some: the legacy links of every
        // shared entry sit beside them (40,000 at 10,000 images).
        let mut ids: Vec<(String, bool)> = match !with_ro && holds_no_subdirs(local) {
            true => Vec::new(),
            false => list_entries(local, false)?,
        };
        if with_ro {
            // The writer never makes a symlink on the share: one there leads
            // anywhere (out of the share), so it is skipped, not followed.
            for (id, symlink) in list_id_entries(ro)? {
                if symlink {
                    let path = ro.join(&id);
                    self.warn_once(format!(
                        "skipping {}: a symlink{}",
                        path.display(),
                        removal_hint(&path)
                    ));
                } else {
                    ids.push((id, true));
                }
            }
        }
        Ok(ids)
    }

    /// Warn about a skipped entry, once per store (a reload skips it again).
    fn warn_once(&self, message: String) {
        let mut warned = self.warned.lock();
        if !warned.contains(&message) {
            tracing::warn!("{message}");
            warned.insert(message);
        }
    }

    /// Read every valid layer and image record from disk. Invalid entries are
    /// skipped with a warning; they never stop the store from opening.
    /// A reader reads only its local records here: shared ones enter through
    /// the refresher's validated scan ([`Store::apply_shared`]).
    fn read_state(&self) -> Result<State> {
        self.read_state_with(None)
    }

    /// On a writer: the store's state with its shared layers and images
    /// taken from containers/storage's index on the share, when the index
    /// can stand for their records ([`crate::index_state`]: the stamp names
    /// the current `generation`, the sizes agree, `released` — the writer
    /// lock's last holder let go normally — and every record is clean);
    /// `None` otherwise, and the caller reads the records. Local records
    /// are read as always.
    fn state_from_index(&self, released: bool) -> Option<FromIndex> {
        let (Role::Writer, Some(share)) = (self.layout.role(), &self.layout.config.shared) else {
            return None;
        };
        let started = std::time::Instant::now();
        let fallback = |why: String| {
            tracing::debug!("opening from the per-id records, not the index: {why}");
            None
        };
        let generation = self.read_generation();
        let stamp = fsutil::read_small_file(&share.join(csindex::STAMP), csindex::MAX_STAMP)
            .ok()
            .and_then(|b| csindex::parse_stamp(&b).ok());
        let map = self.map_index;
        let read = |path: &Path| fsutil::read_or_map(path, csindex::MAX_INDEX, map).ok();
        let (layers, images) = rayon::join(
            || read(&csindex::layers_index(share)),
            || read(&csindex::images_index(share)),
        );
        let size = |b: &Option<fsutil::FileBytes>| b.as_ref().map(|b| b.len() as u64);
        let sizes = (size(&layers), size(&images));
        if let Err(why) =
            crate::index_state::trusted(generation.as_deref(), released, stamp.as_ref(), sizes)
        {
            return fallback(why);
        }
        let (Some(layers), Some(images), Some(generation)) = (layers, images, generation) else {
            return None; // `trusted` saw them all
        };
        // The lines stay in the files' buffers (ranges), not copied out.
        let (layers, images) = (std::sync::Arc::new(layers), std::sync::Arc::new(images));
        let read_in = started.elapsed();
        // Each record's line by its id, parsed when first used (`Records`).
        let (layer_entries, image_entries) = rayon::join(
            || crate::index_state::lazy_entries::<Layer>(&layers, "layer"),
            || crate::index_state::lazy_entries::<Image>(&images, "image"),
        );
        let entries = layer_entries.and_then(|l| Ok((l, image_entries?)));
        let (layer_entries, image_entries) = match entries {
            Ok(e) => e,
            Err(why) => return fallback(format!("the index cannot be read: {why}")),
        };
        let parsed_in = started.elapsed();
        if self.read_generation().as_ref() != Some(&generation) {
            return fallback("the share changed while the index was read".into());
        }
        // The hook keeps each line by id too (its cache of the files). The
        // two maps are built at the same time.
        let keep_lines = self.share_hook.is_some();
        fn build<T: Record>(
            entries: Vec<crate::index_state::LazyEntry<'_, T>>,
            file: &std::sync::Arc<fsutil::FileBytes>,
            keep_lines: bool,
        ) -> (Records<T>, Vec<(Option<String>, csindex::Line)>) {
            let mut lines = Vec::with_capacity(if keep_lines { entries.len() } else { 0 });
            let records = Records::from_index(entries.into_iter().map(|(id, raw, whole)| {
                let start = raw.as_ptr() as usize - file.as_ptr() as usize;
                let raw = csindex::Line::In(std::sync::Arc::clone(file), start..start + raw.len());
                if keep_lines {
                    // Parsed whole for its id: the id is not where
                    // `csindex::line_id` reads it.
                    lines.push((whole.is_some().then(|| id.clone()), raw.clone()));
                }
                (id, raw, whole)
            }));
            (records, lines)
        }
        let ((mut shared_layers, layer_lines), (shared_images, image_lines)) = rayon::join(
            || build(layer_entries, &layers, keep_lines),
            || build(image_entries, &images, keep_lines),
        );
        // Layers an `rmi` left waiting out the share's grace period are on
        // the share but in no image's chain, so not in the index: read from
        // their records, as opening from the records reads them.
        let mut waiting = Vec::new();
        for id in self.removals().layers.keys() {
            if shared_layers.contains_key(id) {
                continue;
            }
            match self.read_waiting_layer(id) {
                Ok(Some(layer)) => waiting.push(layer),
                Ok(None) => {} // gone already: the next gc forgets it
                Err(why) => return fallback(format!("waiting layer {id}: {why}")),
            }
        }
        if !waiting.is_empty() {
            let known = |id: &str, w: &[Layer]| {
                shared_layers.contains_key(id) || w.iter().any(|l| l.id == id)
            };
            let orphan = waiting
                .iter()
                .find(|l| l.parent.as_deref().is_some_and(|p| !known(p, &waiting)));
            if let Some(l) = orphan {
                return fallback(format!("waiting layer {}: its parent is not there", l.id));
            }
            shared_layers.extend(waiting.into_iter().map(|l| (l.id.clone(), l)));
        }
        let (n_layers, n_images) = (shared_layers.len(), shared_images.len());
        let built_in = started.elapsed();
        let state = match self.read_state_with(Some((shared_layers, shared_images))) {
            Ok(state) => state,
            Err(e) => return fallback(e.to_string()),
        };
        tracing::debug!(
            "opened from containers/storage's index: {n_layers} shared layers, \
             {n_images} shared images in {:?} (read {read_in:?}, lines {:?}, \
             records {:?}, local records {:?})",
            started.elapsed(),
            parsed_in - read_in,
            built_in - parsed_in,
            started.elapsed() - built_in,
        );
        Some(FromIndex {
            state,
            lines: IndexLines {
                layers: layer_lines,
                images: image_lines,
                sizes: (layers.len() as u64, images.len() as u64),
            },
            generation,
        })
    }

    /// A shared layer the index does not list (one waiting out the grace
    /// period), read and checked as [`Store::read_state`] reads it:
    /// `Ok(None)` when its record is gone, `Err` for anything that would
    /// make opening from the records skip it (with a warning).
    fn read_waiting_layer(&self, id: &str) -> std::result::Result<Option<Layer>, String> {
        let path = self.layer_dir_of(id, true).join(LAYER_JSON);
        let bytes = match fsutil::read_small_file(&path, fsutil::MAX_RECORD) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let layer = meta::parse_layer(&bytes, id)?;
        let (mut layer, notes) = meta::check_shared_layer(layer);
        if let Some(note) = notes.first() {
            return Err(note.clone());
        }
        if layer.incomplete {
            return Err("incomplete".into());
        }
        layer.shared = true;
        let dir = self.overlay_dir(&layer);
        let real = fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
        if !(real && dir.join("diff").is_dir()) {
            return Err("its overlay directory is missing".into());
        }
        Ok(Some(layer))
    }

    /// Make what [`Store::state_from_index`] read the store's state, and
    /// the lines it read what the share hook knows.
    fn install_from_index(&self, opened: FromIndex) {
        *self.state.write() = opened.state;
        *self.synced_generation.lock() = Some(opened.generation);
        if let Some(hook) = &self.share_hook {
            hook.read_from_index(opened.lines);
        }
    }

    /// [`Store::read_state`], with the shared layers and images given
    /// (from the index: [`Store::state_from_index`]) instead of read from
    /// their records; the local records are read as always.
    fn read_state_with(&self, shared: Option<(Records<Layer>, Records<Image>)>) -> Result<State> {
        let mut state = State::default();
        let writer = self.layout.role() == Role::Writer;
        let (shared_layers, shared_images) = match shared {
            Some((l, i)) => (Some(l), Some(i)),
            None => (None, None),
        };
        let given = shared_layers.is_some();
        let with_ro = writer && !given;
        let layer_ids = self.entry_ids(&self.layers_dir(), &self.layout.layers_ro(), with_ro)?;
        for (id, shared) in layer_ids {
            let path = self.layer_dir_of(&id, shared).join(LAYER_JSON);
            let layer = match fsutil::read_small_file(&path, fsutil::MAX_RECORD) {
                Ok(bytes) => meta::parse_layer(&bytes, &id).map(|layer| {
                    let (layer, notes) = match shared {
                        true => meta::check_shared_layer(layer),
                        false => (layer, Vec::new()),
                    };
                    for note in notes {
                        self.warn_once(format!("layer {id}: {note}"));
                    }
                    layer
                }),
                Err(e) => Err(e.to_string()),
            };
            match layer {
                Ok(l) if l.incomplete => tracing::debug!("layer {id} is incomplete"),
                Ok(mut l) => {
                    l.shared = shared;
                    // Not through a symlink (one on the share leads anywhere).
                    let dir = self.overlay_dir(&l);
                    let real = fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
                    if real && dir.join("diff").is_dir() {
                        state.layers.insert(id, l);
                    } else {
                        let dir = self.overlay_dir(&l);
                        self.warn_once(format!(
                            "skipping layer {id}: its overlay directory {} is missing{}",
                            dir.display(),
                            removal_hint(&self.layer_dir_of(&id, shared))
                        ));
                    }
                }
                Err(e) => self.warn_once(format!(
                    "skipping layer {}: {e}{}",
                    path.display(),
                    removal_hint(&self.layer_dir_of(&id, shared))
                )),
            }
        }
        if let Some(mut layers) = shared_layers {
            state.layers.append(&mut layers);
        }
        // A layer whose chain is broken is not usable — except, on a reader, a
        // local layer on top of a shared one, which the refresher adds.
        let reader = self.layout.role() == Role::Reader;
        let waits_for_share = |state: &State, id: &str| {
            reader
                && state
                    .missing_ancestor(id)
                    .is_some_and(|m| self.layout.overlay_ro().join(m).is_dir())
        };
        // Given shared layers have whole chains among themselves (checked).
        // (Those from the index are given: the records read here are the rest.)
        let broken: Vec<String> = state
            .layers
            .iter_unindexed()
            .filter(|(_, l)| !(given && l.shared))
            .map(|(id, _)| id)
            .filter(|id| state.chain_skeleton(id).is_none() && !waits_for_share(&state, id))
            .cloned()
            .collect();
        for id in &broken {
            match state.missing_ancestor(id) {
                Some(missing) => self.warn_once(format!(
                    "skipping layer {id}: its ancestor {missing} is missing \
                     (load or pull an image with it again to restore it)"
                )),
                None => self.warn_once(format!(
                    "skipping layer {id}: its parent chain loops{}",
                    removal_hint(&self.layer_dir_of(id, state.layers[id].shared))
                )),
            }
        }
        for id in &broken {
            state.layers.remove(id);
        }
        let image_ids = self.entry_ids(&self.images_dir(), &self.layout.images_ro(), with_ro)?;
        for (id, shared) in image_ids {
            let path = self.image_dir_of(&id, shared).join(IMAGES_JSON);
            // A shared record is checked as a reader checks it (names are
            // references, fields well-formed): a writer's share can hold
            // records the writer did not write.
            let image = match fsutil::read_small_file(&path, fsutil::MAX_RECORD) {
                Ok(bytes) => meta::parse_image(&bytes, &id)
                    .and_then(|image| match shared {
                        true => meta::check_shared_image(image),
                        false => Ok((image, Vec::new())),
                    })
                    .map(|(image, notes)| {
                        for note in notes {
                            self.warn_once(format!("image {id}: {note}"));
                        }
                        image
                    }),
                Err(e) => Err(e.to_string()),
            };
            match image {
                Ok(i)
                    if state
                        .chain_skeleton(i.layer.as_deref().unwrap_or(""))
                        .is_none()
                        && !waits_for_share(&state, i.layer.as_deref().unwrap_or("")) =>
                {
                    self.warn_once(format!(
                        "skipping image {id}: a layer of its chain is missing \
                         (load or pull it again to restore it){}",
                        removal_hint(&self.image_dir_of(&id, shared))
                    ))
                }
                Ok(mut i) => {
                    i.shared = shared;
                    state.images.insert(id, i);
                }
                Err(e) => self.warn_once(format!(
                    "skipping image {}: {e}{}",
                    path.display(),
                    removal_hint(&self.image_dir_of(&id, shared))
                )),
            }
        }
        // Given shared images have whole chains of given layers (checked).
        if let Some(mut images) = shared_images {
            state.images.append(&mut images);
        }
        Ok(state)
    }

    /// Can this process write the root (a root of another user, or on a
    /// read-only mount, opens read-only)?
    pub fn writable(&self) -> bool {
        self.read_only.is_none()
    }

    /// Re-read the store from disk (after another process changed it).
    /// A reader keeps the shared entries its refresher added: they are not on
    /// its own disk.
    ///
    /// The shared entries are taken under the same write guard that installs
    /// the new state: a refresher delta applied while the disk was being read
    /// is kept (a guard released in between would lose it, or bring back an
    /// image it removed, until the next full rescan).
    pub fn reload(&self) -> Result<()> {
        let mut state = self.read_state()?;
        #[cfg(test)]
        reload_tests::after_disk_read();
        let mut current = self.state.write();
        if self.layout.role() == Role::Reader {
            keep_shared(&mut state, &current);
        }
        *current = state;
        Ok(())
    }
}
