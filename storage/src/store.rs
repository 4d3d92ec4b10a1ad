//! The [`Store`] facade: one store root, its layers, images and containers,
//! in memory and on disk.
//!
//! This file holds the state ([`State`]: layers and images in memory),
//! opening and reading a root, the writer lock and the crash sweep, the
//! removal protocol (`remove_image`) and `generation`. The parts:
//!
//! * `store/images.rs` — the image store: resolving (local first), chains,
//!   documents, names, read-only mounts;
//! * `store/layers.rs` — a layer's files: removal, verification;
//! * `store/pipeline.rs` — the import pipeline: plan → extract → publish;
//! * `store/containers.rs` — the container store: writable layers, records,
//!   read-write mounts, runtime bundles;
//! * `store/removals.rs` — the writer's grace period for removed shared
//!   layers, `gc`;
//! * `store/share_writer.rs` — the writer side of sharing: containers/storage's
//!   index on the share;
//! * `store/links.rs` — a reader's legacy links of shared entries;
//! * `store/usage.rs` — disk usage (`df`), kept incrementally.

use std::collections::{BTreeMap, BTreeSet};
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
use crate::digest::{chain_ids, is_hex64, sha256_digest, HashingReader};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, sync_dir, unique_suffix, write_atomic, write_synced};
use crate::import::{self, spec, SourceImage, SourceLayer};
use crate::lock::{LockWait, WriterLock};
use crate::meta::{self, Image, Layer, CONFIG, MANIFEST};
use crate::progress::{EventKind, ProgressEvent, ProgressReader, Reporter, DEFAULT_INTERVAL};

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
}

impl StoreOptions {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StoreOptions {
            root: root.into(),
            config: None,
            lock_wait: LockWait::default(),
        }
    }
}

/// Options for [`Store::load`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// An extra name for the image (`NAME[:TAG]`), whatever names the source
    /// gives it. It never picks an image: a source with several takes
    /// `PATH:TAG`.
    pub name: Option<String>,
    /// Refuse a layer once its uncompressed tar passes this many bytes.
    pub max_layer_size: Option<u64>,
    /// Layers imported at once.
    pub jobs: usize,
    /// Minimum time between two progress events of one blob.
    pub progress_interval: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            name: None,
            max_layer_size: None,
            jobs: 3,
            progress_interval: DEFAULT_INTERVAL,
        }
    }
}

/// Shared layers and images a refresher found added or removed on the share,
/// applied to the in-memory store in one step by [`Store::apply_shared`].
#[derive(Debug, Default, Clone)]
pub struct SharedDelta {
    /// New layers, parents before children.
    pub add_layers: Vec<Layer>,
    pub add_images: Vec<Image>,
    pub remove_images: Vec<String>,
    pub remove_layers: Vec<String>,
    /// Shared images whose names changed on the writer: (id, new names).
    pub rename_images: Vec<(String, Vec<String>)>,
    /// The root's legacy links already match this delta's entries (a
    /// reader's validated view says so: the process that saved it kept them
    /// in step). No link is made or checked for them, and the first delta of
    /// the process does not trigger the full repair; later deltas keep the
    /// links as usual. See [`Store::links_in_step`].
    pub links_in_step: bool,
}

impl SharedDelta {
    pub fn is_empty(&self) -> bool {
        self.add_layers.is_empty()
            && self.add_images.is_empty()
            && self.remove_images.is_empty()
            && self.remove_layers.is_empty()
            && self.rename_images.is_empty()
    }
}

/// Insert `items` into `map`. A large batch (a reader's first scan) is merged
/// with `append`, which builds densely packed nodes — about 500 bytes less per
/// image than one insert at a time; a small one is inserted in place.
fn insert_batch<V>(map: &mut BTreeMap<String, V>, items: Vec<(String, V)>) {
    if items.len() >= 64 && items.len() * 4 >= map.len() {
        let mut batch: BTreeMap<String, V> = items.into_iter().collect();
        map.append(&mut batch);
    } else {
        map.extend(items);
    }
}

/// The names of `names` that a local image of `state` has.
fn local_claims(state: &State, names: Vec<String>) -> Vec<String> {
    if names.is_empty() || state.images.values().all(|i| i.shared) {
        return Vec::new();
    }
    let local: BTreeSet<&str> = state
        .images
        .values()
        .filter(|i| !i.shared)
        .flat_map(|i| i.names.iter().map(String::as_str))
        .collect();
    names
        .into_iter()
        .filter(|n| local.contains(n.as_str()))
        .collect()
}

/// The names of `names` that a shared image of `state` has.
fn shared_claims(state: &State, names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| {
            state
                .images
                .values()
                .any(|i| i.shared && i.names.contains(n))
        })
        .collect()
}

/// Carry a reader's shared entries from `old` into `new` (read from its own
/// disk): a shared entry whose id a local one now has is hidden by it, a
/// hidden one whose local entry went takes its place again.
fn keep_shared(new: &mut State, old: &State) {
    /// The same for layers and images: `entries` go to `visible` unless a
    /// local entry holds their id there, then to `hidden`.
    fn carry<'a, T: Clone + 'a>(
        visible: &mut BTreeMap<String, T>,
        hidden: &mut BTreeMap<String, T>,
        entries: impl Iterator<Item = (&'a String, &'a T)>,
    ) {
        for (id, entry) in entries {
            let to = if visible.contains_key(id) {
                &mut *hidden
            } else {
                &mut *visible
            };
            to.insert(id.clone(), entry.clone());
        }
    }
    let layers = old.layers.iter().filter(|(_, l)| l.shared);
    carry(
        &mut new.layers,
        &mut new.hidden_layers,
        layers.chain(old.hidden_layers.iter()),
    );
    let images = old.images.iter().filter(|(_, i)| i.shared);
    carry(
        &mut new.images,
        &mut new.hidden_images,
        images.chain(old.hidden_images.iter()),
    );
}

/// A writer's state as read from containers/storage's index
/// ([`Store::state_from_index`]).
struct FromIndex {
    state: State,
    /// Each record's line in the files, by id (for the index cache).
    layer_lines: Vec<(String, crate::share_index::Line)>,
    image_lines: Vec<(String, crate::share_index::Line)>,
    /// Of `layers.json` and `images.json`.
    sizes: (u64, u64),
    /// The `generation` text the index is for.
    generation: String,
}

/// The result of re-hashing one layer ([`Store::verify_layer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerCheck {
    pub layer: String,
    /// The recorded diffID.
    pub expected: String,
    /// The digest of the rebuilt tar, or why it could not be rebuilt.
    pub found: std::result::Result<String, String>,
}

impl LayerCheck {
    pub fn ok(&self) -> bool {
        self.found.as_ref().is_ok_and(|f| *f == self.expected)
    }
}

/// What [`Store::remove_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// The image was named by one of several names: only that name went.
    Untagged { image: String, name: String },
    /// The image went, with the layers no other image needed (top first),
    /// and (`force`) the containers that used it.
    Deleted {
        image: String,
        layers: Vec<String>,
        containers: Vec<String>,
    },
}

/// The in-memory view of a store: every valid layer and image.
#[derive(Debug, Default, Clone)]
pub struct State {
    pub layers: BTreeMap<String, Layer>,
    pub images: BTreeMap<String, Image>,
    /// On a reader: shared layers the share holds under the id of a local
    /// layer. The local one wins (it is what `layers` has); this copy takes
    /// its place if the local one goes.
    pub hidden_layers: BTreeMap<String, Layer>,
    /// On a reader: shared images with the id of a local image, hidden by it
    /// (the local record and its names win; see docs/sharing.md).
    pub hidden_images: BTreeMap<String, Image>,
}

impl State {
    /// Layer ids of the chain ending at `top`, top first; `None` when a layer
    /// is missing or the parents loop.
    pub fn chain(&self, top: &str) -> Option<Vec<&Layer>> {
        let mut out = Vec::new();
        let mut next = Some(top);
        while let Some(id) = next {
            let layer = self.layers.get(id)?;
            if out.len() > self.layers.len() {
                return None; // a cycle
            }
            out.push(layer);
            next = layer.parent.as_deref();
        }
        Some(out)
    }

    /// The first layer of the chain ending at `top` that is not present.
    pub fn missing_ancestor<'a>(&'a self, top: &'a str) -> Option<&'a str> {
        let mut next = top;
        for _ in 0..=self.layers.len() {
            match self.layers.get(next) {
                None => return Some(next),
                Some(l) => match l.parent.as_deref() {
                    Some(p) => next = p,
                    None => return None,
                },
            }
        }
        None // a cycle: nothing is missing, the chain just never ends
    }

    /// Names that both a local and a shared image have. On a reader the local
    /// image owns such a name ([`Store::resolve_image`]); the shared image's is
    /// shadowed.
    pub fn shadowed_names(&self) -> BTreeSet<String> {
        let local: BTreeSet<&str> = self
            .images
            .values()
            .filter(|i| !i.shared)
            .flat_map(|i| i.names.iter().map(String::as_str))
            .collect();
        if local.is_empty() {
            return BTreeSet::new();
        }
        self.images
            .values()
            .filter(|i| i.shared)
            .flat_map(|i| i.names.iter())
            .filter(|n| local.contains(n.as_str()))
            .cloned()
            .collect()
    }

    /// Which of the layers `among` some image's (whole) chain uses: what
    /// [`State::referenced_layers`] would say of them, without collecting
    /// every layer of every image (a walk stops where an earlier one
    /// found the rest of its chain used).
    pub fn used_among(&self, among: &[&str]) -> BTreeSet<String> {
        self.used_among_except(among, None)
    }

    /// [`State::used_among`], as if image `except` were gone.
    ///
    /// A layer is used when an image's chain holds it, that is when the
    /// image's top layer is the layer or below it: the layers below `among`
    /// are found level by level (one pass over the layers' parents each),
    /// and only the image tops among them have their chains walked — work
    /// that follows the chains `among` is on, not every image's.
    pub fn used_among_except(&self, among: &[&str], except: Option<&str>) -> BTreeSet<String> {
        use std::collections::HashSet;
        let wanted: HashSet<&str> = among
            .iter()
            .copied()
            .filter(|id| self.layers.contains_key(*id))
            .collect();
        if wanted.is_empty() {
            return BTreeSet::new();
        }
        let tops: HashSet<&str> = self
            .images
            .values()
            .filter(|i| Some(i.id.as_str()) != except)
            .filter_map(|i| i.layer.as_deref())
            .collect();
        let mut found: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|id| tops.contains(id))
            .collect();
        let mut seen = wanted.clone();
        let mut level = wanted.clone();
        while !level.is_empty() {
            let mut below = HashSet::new();
            for (id, layer) in &self.layers {
                let under = layer.parent.as_deref().is_some_and(|p| level.contains(p));
                if under && seen.insert(id.as_str()) {
                    below.insert(id.as_str());
                    if tops.contains(id.as_str()) {
                        found.push(id);
                    }
                }
            }
            level = below;
        }
        let mut used = BTreeSet::new();
        for top in found {
            // Only a whole chain counts (as in `referenced_layers`).
            for layer in self.chain(top).unwrap_or_default() {
                if wanted.contains(layer.id.as_str()) {
                    used.insert(layer.id.clone());
                }
            }
        }
        used
    }

    /// Layers some image's chain uses.
    pub fn referenced_layers(&self) -> BTreeSet<String> {
        self.images
            .values()
            .filter_map(|i| self.chain(i.layer.as_deref()?))
            .flatten()
            .map(|l| l.id.clone())
            .collect()
    }
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
    /// A reader's upkeep of the legacy names of shared entries.
    links: parking_lot::Mutex<LinkUpkeep>,
    /// Names already warned about as claimed by a local and a shared image.
    warned_names: parking_lot::Mutex<BTreeSet<String>>,
    /// The `generation` text the in-memory state matches (read before the
    /// records at open or reload, or written by this store).
    synced_generation: parking_lot::Mutex<Option<String>>,
    /// Warnings about skipped entries already given (each is given once).
    warned: parking_lot::Mutex<BTreeSet<String>>,
    /// A writer's lines of containers/storage's index on its share.
    index: parking_lot::Mutex<crate::share_index::IndexCache>,
}

/// How far a reader's legacy links ([`crate::links`]) are kept.
#[derive(Debug, Default)]
struct LinkUpkeep {
    /// A full repair ran in this process: from now on, deltas only.
    repaired: bool,
    /// The root turned out not writable for us (another user's root, a
    /// read-only mount): stop trying, quietly.
    disabled: bool,
    /// A link could not be made or removed in this process: the links may
    /// not match the store ([`Store::links_in_step`] says no).
    failed: bool,
    /// Messages already warned about.
    warned: BTreeSet<String>,
}

const MOUNTS: &str = "mounts";
/// Where entries storectl did not make go when they sit on a name it must
/// write (in the share, or the root): dot-prefixed, so no reader lists it,
/// and not debris, so nothing deletes it unasked.
const TRASH: &str = ".storectl-trash";
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

/// How to get rid of a skipped entry, for its warning.
fn removal_hint(path: &Path) -> String {
    format!(
        " (not made by storectl? it is skipped; remove it with rm -rf {})",
        path.display()
    )
}

/// The `<id> -> RO/<id>` links in `dir` (one of a reader's own directories,
/// listed as `entries`) for exactly the ids `want`: a link of an id not
/// wanted goes, a missing one (or one pointing elsewhere) is made, a real
/// entry (a local layer or image) is left alone. Returns (made, removed).
fn repair_id_links(
    dir: &Path,
    entries: Vec<(String, bool)>,
    want: &BTreeSet<String>,
) -> Result<(usize, usize)> {
    let d = crate::links::LinkDir::open(dir).at(dir)?;
    let (mut made, mut removed) = (0, 0);
    // readdir's d_type tells links (local entries are directories); one
    // readlink each checks their target (a link elsewhere would lead the
    // driver, which takes `overlay/<id>` first, astray).
    let mut have = BTreeSet::new();
    for (id, symlink) in entries {
        if !symlink {
            have.insert(id); // a local entry holds the name
        } else if want.contains(&id) {
            if d.target(&id) == Some(crate::links::id_target(&id)) {
                have.insert(id);
            }
        } else {
            tracing::debug!("removing the stale link {}", dir.join(&id).display());
            removed += usize::from(d.remove(&id).at(dir.join(&id))?);
        }
    }
    for id in want.iter().filter(|id| !have.contains(*id)) {
        let outcome = d
            .add(id, &crate::links::id_target(id), true)
            .at(dir.join(id))?;
        made += usize::from(outcome == crate::links::Outcome::Done);
    }
    Ok((made, removed))
}

fn create_dir(path: &Path) -> Result<()> {
    match fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(match e.kind() {
            std::io::ErrorKind::PermissionDenied
            | std::io::ErrorKind::ReadOnlyFilesystem
            | std::io::ErrorKind::AlreadyExists
            | std::io::ErrorKind::NotADirectory => Error::ReadOnlyStore {
                path: path.to_path_buf(),
                reason: e.to_string(),
            },
            _ => Error::io(path, e),
        }),
    }
}

/// A layer extracted into staging, verified, not yet published.
struct Prepared {
    staged: StagedLayer,
    layer: Layer,
    tar_split: Vec<u8>,
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
        let store = Store {
            root,
            layout,
            driver,
            state: RwLock::new(State::default()),
            read_only,
            lock_wait: opts.lock_wait,
            links: Default::default(),
            warned_names: Default::default(),
            synced_generation: parking_lot::Mutex::new(None),
            warned: parking_lot::Mutex::new(BTreeSet::new()),
            index: Default::default(),
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
        let mut ids: Vec<(String, bool)> = list_entries(local, false)?;
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
        let stamp = crate::share_index::read_stamp(share);
        let read = |path: &Path| fsutil::read_small_file(path, crate::csindex::MAX_INDEX).ok();
        let layers = read(&crate::share_index::layers_index(share));
        let images = read(&crate::share_index::images_index(share));
        let size = |b: &Option<Vec<u8>>| b.as_ref().map(|b| b.len() as u64);
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
        let records = match crate::index_state::parse(&layers, &images) {
            Ok(r) => r,
            Err(why) => return fallback(format!("the index is not clean: {why}")),
        };
        if self.read_generation().as_ref() != Some(&generation) {
            return fallback("the share changed while the index was read".into());
        }
        let line = |file: &std::sync::Arc<Vec<u8>>, raw: &[u8]| {
            let start = raw.as_ptr() as usize - file.as_ptr() as usize;
            crate::share_index::Line::In(std::sync::Arc::clone(file), start..start + raw.len())
        };
        let keep_lines = self.index_share().is_some();
        let mut layer_lines = Vec::new();
        let mut image_lines = Vec::new();
        let mut shared_layers: Vec<Layer> = Vec::with_capacity(records.layers.len());
        let mut shared_images = Vec::with_capacity(records.images.len());
        for (layer, raw) in records.layers {
            if keep_lines {
                layer_lines.push((layer.id.clone(), line(&layers, raw)));
            }
            shared_layers.push(layer);
        }
        for (image, raw) in records.images {
            if keep_lines {
                image_lines.push((image.id.clone(), line(&images, raw)));
            }
            shared_images.push(image);
        }
        // Layers an `rmi` left waiting out the share's grace period are on
        // the share but in no image's chain, so not in the index: read from
        // their records, as opening from the records reads them.
        let mut waiting = Vec::new();
        for id in self.removals().layers.keys() {
            let indexed = shared_layers
                .binary_search_by(|l| l.id.as_str().cmp(id))
                .is_ok();
            if indexed {
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
                shared_layers
                    .binary_search_by(|l| l.id.as_str().cmp(id))
                    .is_ok()
                    || w.iter().any(|l| l.id == id)
            };
            let orphan = waiting
                .iter()
                .find(|l| l.parent.as_deref().is_some_and(|p| !known(p, &waiting)));
            if let Some(l) = orphan {
                return fallback(format!("waiting layer {}: its parent is not there", l.id));
            }
            shared_layers.extend(waiting);
            shared_layers.sort_by(|a, b| a.id.cmp(&b.id));
        }
        let (n_layers, n_images) = (shared_layers.len(), shared_images.len());
        let state = match self.read_state_with(Some((shared_layers, shared_images))) {
            Ok(state) => state,
            Err(e) => return fallback(e.to_string()),
        };
        tracing::debug!(
            "opened from containers/storage's index: {n_layers} shared layers, \
             {n_images} shared images in {:?}",
            started.elapsed()
        );
        Some(FromIndex {
            state,
            layer_lines,
            image_lines,
            sizes: (layers.len() as u64, images.len() as u64),
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
    /// the lines it read what the writer's index cache knows.
    fn install_from_index(&self, opened: FromIndex) {
        *self.state.write() = opened.state;
        *self.synced_generation.lock() = Some(opened.generation);
        let mut cache = self.index.lock();
        cache.invalidate();
        if self.index_share().is_some() {
            cache.seed(opened.layer_lines, opened.image_lines, opened.sizes);
        }
    }

    /// [`Store::read_state`], with the shared layers and images given
    /// (from the index: [`Store::state_from_index`]) instead of read from
    /// their records; the local records are read as always.
    fn read_state_with(&self, shared: Option<(Vec<Layer>, Vec<Image>)>) -> Result<State> {
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
        if let Some(layers) = shared_layers {
            insert_batch(
                &mut state.layers,
                layers.into_iter().map(|l| (l.id.clone(), l)).collect(),
            );
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
        let broken: Vec<String> = state
            .layers
            .iter()
            .filter(|(_, l)| !(given && l.shared))
            .map(|(id, _)| id)
            .filter(|id| state.chain(id).is_none() && !waits_for_share(&state, id))
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
                    if state.chain(i.layer.as_deref().unwrap_or("")).is_none()
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
        if let Some(images) = shared_images {
            insert_batch(
                &mut state.images,
                images.into_iter().map(|i| (i.id.clone(), i)).collect(),
            );
        }
        Ok(state)
    }

    /// Apply what a refresher found on the share, under the state lock once,
    /// so nobody sees a layer without its parent or an image without its layers.
    /// Removals touch only shared entries; a local image on a shared layer that
    /// vanished is dropped from memory too (its chain is broken).
    ///
    /// Local entries win: a shared layer or image with the id of a local one
    /// is kept aside ([`State::hidden_layers`], [`State::hidden_images`]), and
    /// a name both a local and a shared image have belongs to the local one
    /// (warned about once per name). On a reader, the legacy names of shared
    /// entries in this root (`overlay/<id>`, `overlay-layers/<id>`,
    /// `overlay-images/<id>` `-> RO/<id>`, `overlay/l/<short>`) follow: made
    /// for what joined, removed for what left, all of them checked on the
    /// first call in a process ([`Store::repair_shared_links`]).
    pub fn apply_shared(&self, delta: SharedDelta) {
        let mut linked_layers = Vec::new();
        let mut linked_images = Vec::new();
        let mut unlinked_layers = Vec::new();
        let mut unlinked_images = Vec::new();
        let mut named: Vec<String> = Vec::new();
        // Ids whose links to keep (none when they are in step already).
        let track = self.layout.role() == Role::Reader && !delta.links_in_step;
        let collisions = {
            let mut state = self.state.write();
            // Names are compared only when there are local images to collide with.
            let has_local = state.images.values().any(|i| !i.shared);
            let mut layers = Vec::with_capacity(delta.add_layers.len());
            for mut l in delta.add_layers {
                l.shared = true;
                if state.layers.get(&l.id).is_some_and(|x| !x.shared) {
                    state.hidden_layers.insert(l.id.clone(), l);
                } else {
                    if track {
                        linked_layers.push(l.id.clone());
                    }
                    layers.push((l.id.clone(), l));
                }
            }
            let mut images = Vec::with_capacity(delta.add_images.len());
            for mut i in delta.add_images {
                i.shared = true;
                if state.images.get(&i.id).is_some_and(|x| !x.shared) {
                    tracing::warn!(
                        "shared image {} has the id of a local image: the local one \
                         (and its names) wins, the shared copy stays hidden",
                        i.id
                    );
                    state.hidden_images.insert(i.id.clone(), i);
                } else {
                    if track {
                        linked_images.push(i.id.clone());
                    }
                    if has_local {
                        named.extend(i.names.iter().cloned());
                    }
                    images.push((i.id.clone(), i));
                }
            }
            insert_batch(&mut state.layers, layers);
            insert_batch(&mut state.images, images);
            for (id, names) in delta.rename_images {
                if let Some(image) = state.images.get_mut(&id).filter(|i| i.shared) {
                    if has_local {
                        named.extend(names.iter().cloned());
                    }
                    image.names = names;
                } else if let Some(image) = state.hidden_images.get_mut(&id) {
                    image.names = names;
                }
            }
            for id in &delta.remove_images {
                if state.images.get(id).is_some_and(|i| i.shared) {
                    state.images.remove(id);
                    unlinked_images.push(id.clone());
                }
                state.hidden_images.remove(id);
            }
            for id in &delta.remove_layers {
                if state.layers.get(id).is_some_and(|l| l.shared) {
                    state.layers.remove(id);
                    unlinked_layers.push(id.clone());
                }
                state.hidden_layers.remove(id);
            }
            if !delta.remove_layers.is_empty() {
                let broken: Vec<String> = state
                    .images
                    .values()
                    .filter(|i| state.chain(i.layer.as_deref().unwrap_or("")).is_none())
                    .map(|i| i.id.clone())
                    .collect();
                for id in broken {
                    tracing::warn!("image {id} lost a shared layer; dropping it");
                    if state.images.remove(&id).is_some_and(|i| i.shared) {
                        unlinked_images.push(id);
                    }
                }
            }
            local_claims(&state, named)
        };
        self.warn_collisions(collisions);
        if self.layout.role() == Role::Reader && delta.links_in_step {
            // Links in step with what was applied: later deltas go by delta.
            self.links.lock().repaired = true;
        } else if self.layout.role() == Role::Reader {
            self.keep_links(
                &linked_layers,
                &linked_images,
                &unlinked_layers,
                &unlinked_images,
            );
        }
    }

    /// Warn, once per name in this process, that `names` are claimed by a
    /// local and a shared image.
    fn warn_collisions(&self, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let mut warned = self.warned_names.lock();
        for name in names {
            if warned.insert(name.clone()) {
                tracing::warn!(
                    "{name:?} names a local and a shared image: it resolves to the local \
                     one (`storectl ls` marks the shared one's name as shadowed)"
                );
            }
        }
    }

    /// Can this process write the root (a root of another user, or on a
    /// read-only mount, opens read-only)?
    pub fn writable(&self) -> bool {
        self.read_only.is_none()
    }

    /// On a reader: do the root's legacy links of shared entries match the
    /// in-memory store? True once this process repaired them (or was told
    /// they were in step, [`SharedDelta::links_in_step`]) and kept them
    /// without a failure since. A reader's saved view records this, so the
    /// next process need not list and `readlink` every link again.
    pub fn links_in_step(&self) -> bool {
        let upkeep = self.links.lock();
        self.layout.role() == Role::Reader
            && self.read_only.is_none()
            && upkeep.repaired
            && !upkeep.disabled
            && !upkeep.failed
    }

    /// The short names in `l_dir` (`overlay/l`): stale ones (their layer is
    /// neither shared nor `local`) go; a shared layer without one gets it
    /// (its `link` file on the share read beneath its dir, validated).
    fn repair_short_links(
        &self,
        l_dir: &Path,
        layers: &BTreeSet<String>,
        local: &BTreeSet<String>,
    ) -> Result<(usize, usize)> {
        let (mut made, mut removed) = (0, 0);
        let l = crate::links::LinkDir::open(l_dir).at(l_dir)?;
        let mut short_of = BTreeSet::new();
        for (short, id) in l.short_links().at(l_dir)? {
            let Some(id) = id else { continue };
            if layers.contains(&id) || local.contains(&id) {
                short_of.insert(id);
            } else {
                let path = l_dir.join(&short);
                let outcome =
                    crate::links::remove_link(&path, &crate::links::short_target(&id)).at(&path)?;
                removed += usize::from(outcome == crate::links::Outcome::Done);
            }
        }
        let overlay_ro = self.layout.overlay_ro();
        let Some(ro) = crate::links::open_overlay_ro(&overlay_ro) else {
            return Ok((made, removed)); // mounts fall back to RO/<id>/diff
        };
        for id in layers
            .iter()
            .filter(|id| !short_of.contains(*id) && !local.contains(*id))
        {
            let Some(short) = crate::links::read_short_name_at(&ro, id) else {
                continue;
            };
            let outcome = l
                .add(&short, &crate::links::short_target(id), false)
                .at(l_dir.join(&short))?;
            if outcome == crate::links::Outcome::Occupied {
                tracing::debug!(
                    "shared layer {id}: its short name {short} is another layer's; \
                     not linked (it mounts through RO/{id}/diff)"
                );
            }
            made += usize::from(outcome == crate::links::Outcome::Done);
        }
        Ok((made, removed))
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
        writer_tests::after_disk_read();
        let mut current = self.state.write();
        if self.layout.role() == Role::Reader {
            keep_shared(&mut state, &current);
        }
        *current = state;
        Ok(())
    }

    /// Take the writer lock and make the in-memory state current.
    ///
    /// A writer (or local store) trusts its in-memory state: it alone
    /// changes the store, under this lock, and every change replaces
    /// `generation`. So when `generation` is what this store last read or
    /// wrote, nothing is re-read; otherwise the records are reloaded. When the
    /// previous holder did not let go normally (a crash, `kill -9`, or the
    /// first write with this lock file) the debris of interrupted writers and
    /// unused layers are swept first. A mutation's own work therefore does
    /// not grow with the number of images in the store.
    ///
    /// A reader's local store has no `generation` of its own: it sweeps its
    /// local dirs and reloads every time (it never writes to the share).
    fn begin_write(&self) -> Result<WriterLock> {
        if let Some(reason) = &self.read_only {
            return Err(Error::ReadOnlyStore {
                path: self.root.clone(),
                reason: reason.clone(),
            });
        }
        let lock = WriterLock::acquire_waiting(&self.layout.writer_lock(), &self.lock_wait)?;
        let reader = self.layout.role() == Role::Reader;
        let generation = self.read_generation();
        let current =
            !reader && generation.is_some() && *self.synced_generation.lock() == generation;
        if lock.previous_released() && current {
            self.ensure_index()?;
            return Ok(lock);
        }
        if !lock.previous_released() || reader {
            self.sweep_debris()?;
        }
        // Another process changed the share (or this is the first
        // mutation): re-read it — from the index when that process let go
        // normally and left it current, else from the records — and what
        // this one knew of the index is void.
        let from_index = match lock.previous_released() && !reader {
            true => self.state_from_index(true),
            false => None,
        };
        match from_index {
            Some(opened) => self.install_from_index(opened),
            None => {
                self.reload()?;
                self.index.lock().invalidate();
                *self.synced_generation.lock() = self.read_generation();
            }
        }
        if !lock.previous_released() || reader {
            self.remove_orphans()?;
        }
        *self.synced_generation.lock() = self.read_generation();
        self.ensure_index()?;
        Ok(lock)
    }

    /// `generation`'s text (`None` when missing or unreadable).
    fn read_generation(&self) -> Option<String> {
        fsutil::read_small_file(&self.layout.generation(), 4096)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    }

    /// Remove the dot-prefixed debris (`.staging-*`, `.trash-*`, `.tmp-*`)
    /// interrupted writers leave. A reader sweeps only its local dirs.
    fn sweep_debris(&self) -> Result<()> {
        let mut dirs = vec![
            self.layers_dir(),
            self.images_dir(),
            self.layout.containers(),
            self.root.clone(),
        ];
        match self.layout.role() {
            Role::Reader => dirs.push(self.layout.overlay()),
            Role::Local | Role::Writer => {
                self.driver.remove_debris()?;
            }
        }
        if let (Role::Writer, Some(share)) = (self.layout.role(), &self.layout.config.shared) {
            dirs.extend([
                self.layout.layers_ro(),
                self.layout.images_ro(),
                share.clone(),
            ]);
        }
        for dir in dirs {
            fsutil::remove_debris_in(&dir)?;
        }
        Ok(())
    }

    /// Remove what a crash between publish steps can leave: overlay dirs with
    /// no layer record, records marked incomplete, image layers that no image
    /// uses any more (an interrupted import or `rmi`), dangling legacy
    /// symlinks. Only what this root may write: a reader leaves the share alone.
    fn remove_orphans(&self) -> Result<()> {
        let state = self.state();
        let referenced = state.referenced_layers();
        let writer = self.publishes_shared();
        // Removed shared layers in their grace period are not orphans.
        let removals = if writer {
            self.removals()
        } else {
            crate::grace::Removals::default()
        };
        let now = removals::now_secs();
        let records = self.entry_ids(&self.layers_dir(), &self.layout.layers_ro(), writer)?;
        let mut gone = Vec::new();
        for (id, shared) in records {
            let incomplete = fsutil::read_small_file(
                &self.layer_dir_of(&id, shared).join(LAYER_JSON),
                fsutil::MAX_RECORD,
            )
            .ok()
            .and_then(|b| meta::parse_layer(&b, &id).ok())
            .is_some_and(|l| l.incomplete);
            let waiting = shared && removals.protects(&id, now);
            if incomplete
                || (state.layers.contains_key(&id) && !referenced.contains(&id) && !waiting)
            {
                gone.push((id, shared));
            }
        }
        // Children before parents.
        gone.sort_by_key(|(id, _)| {
            std::cmp::Reverse(state.chain(id).map(|c| c.len()).unwrap_or(0))
        });
        let mut changed = false;
        // A writer's index on the share is rebuilt in every sweep, without
        // the layers about to go: containers/storage stops listing them
        // before their directories are touched.
        if self.index_share().is_some() {
            {
                let mut st = self.state.write();
                for (id, _) in &gone {
                    st.layers.remove(id);
                }
            }
            self.rebuild_index()?;
        }
        // Entries nobody made as we do can refuse to go: each is skipped
        // with a warning, never a reason to refuse the mutation.
        let skip = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            tracing::warn!(
                "skipping {what} {}: {e} (not made by storectl? remove it: rm -rf {})",
                path.display(),
                path.display()
            )
        };
        for (id, shared) in &gone {
            tracing::info!("removing unused layer {id}");
            match self.remove_layer_files(id, *shared) {
                Ok(()) => changed = true,
                Err(e) => skip("layer", &self.layer_dir_of(id, *shared), &e),
            }
        }
        let overlay_dirs =
            self.entry_ids(&self.layout.overlay(), &self.layout.overlay_ro(), writer)?;
        for (id, shared) in overlay_dirs {
            let record = self.layer_dir_of(&id, shared);
            let has_record = fs::symlink_metadata(&record).is_ok();
            // A container's writable layer has a container record instead.
            let container = !shared && self.is_container_layer(&id);
            if !has_record && !container && !gone.iter().any(|(g, _)| *g == id) {
                tracing::info!("removing orphaned overlay directory {id}");
                match self.driver.remove_layer(&id) {
                    Ok(()) => changed = true,
                    Err(e) => {
                        let dir = if shared {
                            self.layout.overlay_ro().join(&id)
                        } else {
                            self.layout.overlay().join(&id)
                        };
                        skip("overlay directory", &dir, &e)
                    }
                }
            }
        }
        if writer {
            self.repair_legacy_links()?;
        }
        // A crash while rewriting an image record leaves `.tmp-*` inside it.
        // (A reader's shared images are on the share, which it never writes.)
        for image in state.images.values().filter(|i| writer || !i.shared) {
            let dir = self.image_dir_of(&image.id, image.shared);
            if let Err(e) = fsutil::remove_debris_in(&dir) {
                skip("image", &dir, &e);
            }
        }
        if changed {
            self.reload()?;
            self.bump_generation()?;
        }
        Ok(())
    }

    /// The writer's legacy names (`<id> -> RO/<id>` in `overlay/`,
    /// `overlay-layers/`, `overlay-images/`, and `overlay/l/<short>`): drop
    /// those whose target is gone, create those a crash left missing — for
    /// the shared layers and images this store knows, never for entries on
    /// the share it did not take (junk).
    fn repair_legacy_links(&self) -> Result<()> {
        let state = self.state();
        let layers: Vec<&str> = state
            .layers
            .values()
            .filter(|l| l.shared)
            .map(|l| l.id.as_str())
            .collect();
        let images: Vec<&str> = state
            .images
            .values()
            .filter(|i| i.shared)
            .map(|i| i.id.as_str())
            .collect();
        let dirs = [
            (self.layout.overlay(), &layers),
            (self.layers_dir(), &layers),
            (self.images_dir(), &images),
        ];
        for (dir, ids) in dirs {
            for (id, symlink) in list_id_entries(&dir)? {
                let link = dir.join(&id);
                if symlink && !link.exists() {
                    fs::remove_file(&link).at(&link)?;
                }
            }
            for id in ids.iter() {
                let link = dir.join(id);
                if fs::symlink_metadata(&link).is_err() {
                    tracing::info!("restoring the link {}", link.display());
                    std::os::unix::fs::symlink(format!("{RO}/{id}"), &link).at(&link)?;
                }
            }
        }
        for id in layers {
            let Ok(short) = self.driver.short_link_path(id) else {
                continue;
            };
            if fs::symlink_metadata(&short).is_err() {
                std::os::unix::fs::symlink(format!("../{id}/diff"), &short).at(&short)?;
            }
        }
        Ok(())
    }

    /// Replace `generation` so readers notice a change. A reader's changes
    /// are local and concern nobody else.
    fn bump_generation(&self) -> Result<()> {
        if self.layout.role() == Role::Reader {
            return Ok(());
        }
        let path = self.layout.generation();
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let current: u64 = fsutil::read_small_file(&path, 4096)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let text = format!("{} {}\n", current + 1, unique_suffix());
        // containers/storage's index first (the per-id directories are
        // published already), then the stamp naming this generation.
        if let Some(share) = self.index_share() {
            let mut cache = self.index.lock();
            if cache.is_ready() {
                let started = std::time::Instant::now();
                let synced = cache.sync(share, &self.state.read()).inspect_err(|_| {
                    // Unknown now: the next mutation rebuilds it (moving
                    // junk that was in the way aside).
                    cache.invalidate();
                });
                let synced = synced?;
                tracing::debug!(
                    "containers/storage index: {} records serialized, layers.json {} \
                     ({} bytes), images.json {} ({} bytes), in {:?}",
                    synced.serialized,
                    if synced.layers_written {
                        "written"
                    } else {
                        "kept"
                    },
                    synced.layers_size,
                    if synced.images_written {
                        "written"
                    } else {
                        "kept"
                    },
                    synced.images_size,
                    started.elapsed()
                );
                crate::share_index::write_stamp(
                    share,
                    &crate::csindex::Stamp {
                        generation: text.clone(),
                        layers_size: synced.layers_size,
                        images_size: synced.images_size,
                    },
                )?;
            }
        }
        write_atomic(&dir, "generation", text.as_bytes())?;
        // The in-memory state is this generation: the next mutation of this
        // store need not re-read anything.
        *self.synced_generation.lock() = Some(text);
        Ok(())
    }

    /// Refuse to change a shared image or layer from a reader.
    fn check_mutable(&self, shared: bool, what: &str) -> Result<()> {
        if shared && self.layout.role() != Role::Writer {
            return Err(Error::ReadOnlyStore {
                path: self
                    .layout
                    .config
                    .shared
                    .clone()
                    .unwrap_or_else(|| self.root.clone()),
                reason: format!("{what} is on the read-only share; change it on the writer host"),
            });
        }
        Ok(())
    }

    /// Remove the layers `ids` (published by a failed import, base first)
    /// that no image uses, top first. False when one could not be removed.
    fn unpublish_layers(&self, ids: &[String]) -> bool {
        let used = {
            let among: Vec<&str> = ids.iter().map(String::as_str).collect();
            self.state.read().used_among(&among)
        };
        let mut all = true;
        let doomed: Vec<(&String, bool)> = {
            let state = self.state.read();
            ids.iter()
                .rev()
                .filter(|id| !used.contains(*id))
                .map(|id| (id, state.layers.get(id).is_some_and(|l| l.shared)))
                .collect()
        };
        if self.index_share().is_some() && !doomed.is_empty() {
            // Out of containers/storage's index before their directories go.
            let mut state = self.state.write();
            for (id, _) in &doomed {
                state.layers.remove(*id);
            }
            drop(state);
            if let Err(e) = self.bump_generation() {
                tracing::warn!(
                    "could not take the layers of the failed load out of the index: {e}"
                );
                return false;
            }
        }
        for (id, shared) in doomed {
            match self.remove_layer_files(id, shared) {
                Ok(()) => {
                    self.state.write().layers.remove(id);
                }
                Err(e) => {
                    tracing::warn!("could not take back layer {id} of the failed load: {e}");
                    all = false;
                }
            }
        }
        if !ids.is_empty() && self.bump_generation().is_err() {
            all = false;
        }
        all
    }

    /// Remove an image, then every layer of its chain that no other image
    /// needs. As `podman rmi`: named by one of several names, the image only
    /// loses that name; named by id (or id prefix) while it has several names,
    /// it is refused ([`Error::MustForce`]) unless `force`.
    pub fn remove_image(&self, name: &str, force: bool) -> Result<Removed> {
        let _lock = self.begin_write()?;
        let image = self.resolve_image(name)?;
        self.check_mutable(image.shared, &format!("image {}", image.id))?;
        let normalized = crate::reference::normalize_name(name).ok();
        let by_name = image
            .names
            .iter()
            .find(|n| *n == name || Some(*n) == normalized.as_ref())
            .cloned();
        if by_name.is_none() && image.names.len() > 1 && !force {
            return Err(Error::MustForce {
                id: image.id,
                names: image.names,
            });
        }
        if let (Some(by_name), true) = (by_name, image.names.len() > 1) {
            let mut image = image;
            image.names.retain(|n| *n != by_name);
            self.write_image_record(&image)?;
            self.bump_generation()?;
            return Ok(Removed::Untagged {
                image: image.id,
                name: by_name,
            });
        }
        let mount = self.mount_path(&image.id);
        if storectl_overlay::mount::is_mounted(&mount).unwrap_or(false) {
            return Err(Error::ImageMounted {
                id: image.id,
                path: mount,
            });
        }
        // Containers on it: refused, or (force) removed first, as podman.
        let users = self.containers_of_image(&image.id)?;
        if !users.is_empty() && !force {
            return Err(Error::ImageInUse {
                id: image.id,
                containers: users
                    .iter()
                    .map(|c| c.names.first().unwrap_or(&c.id).clone())
                    .collect(),
            });
        }
        for c in &users {
            self.remove_container_locked(c, true)?;
        }
        let chain: Vec<(String, bool)> = self
            .image_layers(&image)?
            .into_iter()
            .rev()
            .map(|l| (l.id, l.shared))
            .collect();
        // The layers of its chain another image uses (parents of a used
        // layer are used too): found once, they stay so while the lock is held.
        let used = {
            let ids: Vec<&str> = chain.iter().map(|(id, _)| id.as_str()).collect();
            self.with_state(|st| st.used_among_except(&ids, Some(&image.id)))
        };
        let image_dir = self.image_dir(&image.id);
        // A writer keeps the shared layers only this image used for the
        // share's grace period (a reader's container may run on them),
        // listed in the share's removals file before the image goes.
        let keep = image.shared && self.keeps_removed_layers();
        if keep {
            let waiting: Vec<String> = chain
                .iter()
                .take_while(|(id, _)| !used.contains(id.as_str()))
                .filter(|(_, shared)| *shared)
                .map(|(id, _)| id.clone())
                .collect();
            if !waiting.is_empty() {
                let mut removals = self.removals();
                let grace = self.removed_layers_grace().unwrap_or(0);
                removals.add(&image.id, &waiting, removals::now_secs(), grace);
                self.write_removals(&removals)?;
            }
        }
        if self.index_share().is_some() {
            // containers/storage's index forgets the image and the layers
            // only it used (images.json first), and `generation` moves on,
            // before their directories go.
            let mut state = self.state.write();
            state.images.remove(&image.id);
            for (id, shared) in chain.iter().take_while(|(id, _)| !used.contains(id)) {
                if !(keep && *shared) {
                    state.layers.remove(id);
                }
            }
            drop(state);
            self.bump_generation()?;
        }
        fsutil::remove_dir_atomic(&image_dir)?;
        if image.shared {
            let link = self.images_dir().join(&image.id);
            match fs::remove_file(&link) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&link, e))
                }
                _ => {}
            }
        }
        self.state.write().images.remove(&image.id);
        self.bump_generation()?;
        let mut removed = Vec::new();
        for (id, shared) in chain {
            if used.contains(&id) {
                break; // parents of a used layer are used too
            }
            if shared && !self.publishes_shared() {
                continue; // a reader's local image on shared layers: not ours to remove
            }
            if shared && keep {
                continue; // waits for the grace period (see above)
            }
            self.remove_layer_files(&id, shared)?;
            let twin = {
                let mut state = self.state.write();
                state.layers.remove(&id);
                let twin = state.hidden_layers.remove(&id);
                if let Some(twin) = &twin {
                    state.layers.insert(id.clone(), twin.clone());
                }
                twin
            };
            if twin.is_some() {
                self.keep_links(std::slice::from_ref(&id), &[], &[], &[]);
            }
            removed.push(id);
        }
        // The shared copy of a local image (same id) shows again.
        let twin = {
            let mut state = self.state.write();
            let twin = state.hidden_images.remove(&image.id);
            if let Some(twin) = &twin {
                state.images.insert(twin.id.clone(), twin.clone());
            }
            twin
        };
        if twin.is_some() {
            self.keep_links(&[], std::slice::from_ref(&image.id), &[], &[]);
        }
        if !removed.is_empty() {
            self.bump_generation()?;
        }
        if keep {
            // Layers of earlier removals whose grace period is over.
            self.collect_expired(removals::now_secs(), None)?;
        }
        Ok(Removed::Deleted {
            image: image.id,
            layers: removed,
            containers: users.into_iter().map(|c| c.id).collect(),
        })
    }
}

/// `Ok` for a file that was already gone.
fn allow_missing(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// In image directory `dir`: containers/storage's file name of each
/// big-data item of `image` that is not ours (the config as `=<base64 of
/// sha256:<id>>`, the manifest as `=<base64 of manifest-<digest>>`), a
/// hardlink of our `config` or `manifest`. `replace` = even if a file of
/// that name is there (a staging dir: never).
fn link_big_data(dir: &Path, image: &Image, replace: bool) -> Result<()> {
    for (key, ours, _, _) in crate::csindex::big_data_items(image) {
        let name = crate::csindex::big_data_file_name(&key);
        if name == ours {
            continue;
        }
        let dest = dir.join(&name);
        if fs::symlink_metadata(&dest).is_ok() {
            if !replace {
                continue;
            }
            fs::remove_file(&dest).at(&dest)?;
        }
        let src = dir.join(ours);
        match fs::hard_link(&src, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !replace => {}
            Err(e) => return Err(Error::io(&dest, e)),
        }
    }
    Ok(())
}

mod containers;
mod images;
mod layers;
mod links;
mod pipeline;
mod removals;
mod share_writer;
mod usage;
pub use containers::ContainerOptions;
pub use removals::GcReport;
pub use usage::{ContainerUsage, DiskUsage, FsUsage, ImageUsage};

#[cfg(test)]
mod writer_tests;

/// A blob stream that stops (with an error) once `cancel` is set.
struct Cancellable<'a, R> {
    inner: R,
    cancel: &'a AtomicBool,
}

impl<R: std::io::Read> std::io::Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            // Not `Interrupted`: readers retry that kind.
            return Err(std::io::Error::other("cancelled: another layer failed"));
        }
        self.inner.read(buf)
    }
}

/// `io::Write` into a sha256.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How often [`flushing_in_background`] flushes.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Run `work` (layer extraction) while a thread flushes the filesystem of
/// `dir` every [`FLUSH_INTERVAL`]: writeback then overlaps extraction instead
/// of following it, and the `syncfs` at commit finds little left to write
/// (interleaved A/B: a docker-archive load ~19% faster, OCI ~9%). Durability
/// still comes from that commit-time sync alone.
fn flushing_in_background<T>(dir: &Path, work: impl FnOnce() -> T) -> T {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let flusher = std::thread::Builder::new()
            .name("storectl-flush".into())
            .spawn_scoped(scope, move || {
                let Ok(fd) = fs::File::open(dir) else { return };
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(FLUSH_INTERVAL)
                {
                    let _ = rustix::fs::syncfs(&fd); // best effort; the commit syncs for real
                }
            });
        let out = work();
        drop(stop);
        if let Ok(handle) = flusher {
            let _ = handle.join();
        }
        out
    })
}
