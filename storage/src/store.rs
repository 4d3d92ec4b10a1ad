//! The [`Store`] facade: one store root, its layers and images, in memory and
//! on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flate2::read::GzDecoder;
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
        *store.synced_generation.lock() = store.read_generation();
        let state = store.read_state()?;
        *store.state.write() = state;
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
        let mut state = State::default();
        let writer = self.layout.role() == Role::Writer;
        let layer_ids = self.entry_ids(&self.layers_dir(), &self.layout.layers_ro(), writer)?;
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
        // A layer whose chain is broken is not usable — except, on a reader, a
        // local layer on top of a shared one, which the refresher adds.
        let reader = self.layout.role() == Role::Reader;
        let waits_for_share = |state: &State, id: &str| {
            reader
                && state
                    .missing_ancestor(id)
                    .is_some_and(|m| self.layout.overlay_ro().join(m).is_dir())
        };
        let broken: Vec<String> = state
            .layers
            .keys()
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
        let image_ids = self.entry_ids(&self.images_dir(), &self.layout.images_ro(), writer)?;
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

    /// A reader's legacy links after a delta: a full repair the first time in
    /// this process (directory listings and a `readlink` per link, not a
    /// link attempt per entry), then only what changed. Failures are warned
    /// about (each entry on its own), never fatal: the links serve other
    /// programs, storectl itself reads through `RO/`.
    fn keep_links(
        &self,
        add_layers: &[String],
        add_images: &[String],
        removed_layers: &[String],
        removed_images: &[String],
    ) {
        let first = {
            let mut upkeep = self.links.lock();
            if upkeep.disabled || self.read_only.is_some() {
                return;
            }
            !std::mem::replace(&mut upkeep.repaired, true)
        };
        if first {
            self.report_links(self.repair_shared_links());
            return;
        }
        for id in removed_images {
            self.report_links(self.unlink_entry(&self.images_dir(), id));
        }
        for id in removed_layers {
            self.report_links(self.unlink_entry(&self.layers_dir(), id));
            self.report_links(self.unlink_entry(&self.layout.overlay(), id));
        }
        if !removed_layers.is_empty() {
            let gone: BTreeSet<&str> = removed_layers.iter().map(String::as_str).collect();
            self.report_links(self.remove_short_links(|id| gone.contains(id)));
        }
        for id in add_layers {
            self.report_links(self.link_layer(id));
        }
        for id in add_images {
            self.report_links(self.link_entry(&self.images_dir(), id));
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

    /// Warn about a link failure once per message; stop trying when the root
    /// cannot be written by this process.
    fn report_links<T>(&self, result: Result<T>) {
        let Err(e) = result else { return };
        let mut upkeep = self.links.lock();
        if let Error::Io { source, .. } = &e {
            if matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) {
                tracing::debug!("not keeping legacy links: {e}");
                upkeep.disabled = true;
                return;
            }
        }
        upkeep.failed = true;
        let msg = e.to_string();
        if upkeep.warned.insert(msg.clone()) {
            tracing::warn!("legacy links of shared entries: {msg}");
        }
    }

    /// `dir/<id> -> RO/<id>`, unless a local entry holds the name.
    fn link_entry(&self, dir: &Path, id: &str) -> Result<()> {
        let path = dir.join(id);
        crate::links::add_link(&path, &crate::links::id_target(id), true).at(&path)?;
        Ok(())
    }

    /// Remove `dir/<id>` if it is the link `-> RO/<id>` (never a local entry).
    fn unlink_entry(&self, dir: &Path, id: &str) -> Result<()> {
        let path = dir.join(id);
        crate::links::remove_link(&path, &crate::links::id_target(id)).at(&path)?;
        Ok(())
    }

    /// A shared layer's legacy names: `overlay/<id>`, `overlay-layers/<id>`,
    /// and `overlay/l/<short>` with the short name of its `link` file (read
    /// without following symlinks on the share). A short name another layer
    /// holds is left to it.
    fn link_layer(&self, id: &str) -> Result<()> {
        let overlay = self.layout.overlay();
        let path = overlay.join(id);
        let made = crate::links::add_link(&path, &crate::links::id_target(id), true).at(&path)?;
        self.link_entry(&self.layers_dir(), id)?;
        if made == crate::links::Outcome::Occupied {
            return Ok(()); // a local layer of that id: its own short name serves
        }
        self.link_short_name(id).map(|_| ())
    }

    /// `overlay/l/<short> -> ../<id>/diff` for shared layer `id`; true if made.
    fn link_short_name(&self, id: &str) -> Result<bool> {
        let Some(short) = crate::links::read_short_name(&self.layout.overlay_ro(), id) else {
            return Ok(false); // mounts fall back to RO/<id>/diff
        };
        let l_dir = self.layout.overlay().join("l");
        create_dir(&l_dir)?;
        let path = l_dir.join(&short);
        let outcome =
            crate::links::add_link(&path, &crate::links::short_target(id), false).at(&path)?;
        if outcome == crate::links::Outcome::Occupied {
            // Only other programs miss it; a scan warns about the layer's own faults.
            tracing::debug!(
                "shared layer {id}: its short name {short} is another layer's; \
                 not linked (it mounts through RO/{id}/diff)"
            );
        }
        Ok(outcome == crate::links::Outcome::Done)
    }

    /// Remove the `overlay/l/` links to `../<id>/diff` for the ids `gone`
    /// says, unless a local layer of that id is there.
    fn remove_short_links(&self, gone: impl Fn(&str) -> bool) -> Result<()> {
        let overlay = self.layout.overlay();
        let l_dir = overlay.join("l");
        for (short, id) in crate::links::short_links(&l_dir).at(&l_dir)? {
            let Some(id) = id else { continue };
            if gone(&id) && !crate::links::is_real_dir(&overlay.join(&id)) {
                let path = l_dir.join(&short);
                crate::links::remove_link(&path, &crate::links::short_target(&id)).at(&path)?;
            }
        }
        Ok(())
    }

    /// On a reader: make the legacy names of shared entries in this root
    /// match the in-memory store — links of shared layers and images that
    /// vanished are removed, missing ones made (after a crash, a reader that
    /// was not running, or a root made before readers kept them). Local
    /// entries are never touched. Returns (links made, links removed).
    pub fn repair_shared_links(&self) -> Result<(usize, usize)> {
        if self.layout.role() != Role::Reader || self.read_only.is_some() {
            return Ok((0, 0));
        }
        let (layers, images): (BTreeSet<String>, BTreeSet<String>) = self.with_state(|st| {
            (
                st.layers
                    .values()
                    .filter(|l| l.shared)
                    .map(|l| l.id.clone())
                    .collect(),
                st.images
                    .values()
                    .filter(|i| i.shared)
                    .map(|i| i.id.clone())
                    .collect(),
            )
        });
        let overlay = self.layout.overlay();
        let overlay_entries = list_id_entries(&overlay)?;
        // Local layers are real directories in `overlay/`: their names and
        // short names are theirs.
        let local: BTreeSet<String> = overlay_entries
            .iter()
            .filter(|(_, symlink)| !symlink)
            .map(|(id, _)| id.clone())
            .collect();
        let l_dir = overlay.join("l");
        create_dir(&l_dir)?;
        let (layers_dir, images_dir) = (self.layers_dir(), self.images_dir());
        // The four directories are independent, and a fresh reader makes
        // ~3 links per layer (each an inode the kernel allocates under the
        // directory's lock): one thread per directory.
        let jobs: [&(dyn Fn() -> Result<(usize, usize)> + Sync); 4] = [
            &|| repair_id_links(&overlay, overlay_entries.clone(), &layers),
            &|| repair_id_links(&layers_dir, list_id_entries(&layers_dir)?, &layers),
            &|| repair_id_links(&images_dir, list_id_entries(&images_dir)?, &images),
            &|| self.repair_short_links(&l_dir, &layers, &local),
        ];
        let results: Vec<Result<(usize, usize)>> = std::thread::scope(|scope| {
            let running: Vec<_> = jobs.iter().map(|job| scope.spawn(job)).collect();
            running
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let (mut made, mut removed) = (0, 0);
        for result in results {
            let (m, r) = result?;
            made += m;
            removed += r;
        }
        if made + removed > 0 {
            tracing::info!("legacy links of shared entries: {made} made, {removed} removed");
        }
        Ok((made, removed))
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
        self.reload()?;
        // Another process changed the share (or this is the first
        // mutation): what this one knew of the index is void.
        self.index.lock().invalidate();
        *self.synced_generation.lock() = self.read_generation();
        if !lock.previous_released() || reader {
            self.remove_orphans()?;
        }
        *self.synced_generation.lock() = self.read_generation();
        self.ensure_index()?;
        Ok(lock)
    }

    /// The share whose containers/storage index this store keeps: a
    /// writer's.
    fn index_share(&self) -> Option<&Path> {
        match (self.layout.role(), &self.layout.config.shared) {
            (Role::Writer, Some(share)) if self.read_only.is_none() => Some(share),
            _ => None,
        }
    }

    /// On a writer: know the index on the share before changing anything —
    /// the lines of every shared record, and whether the files on the share
    /// are their render at the current `generation` (the stamp says so and
    /// the sizes agree). When they are not (a share without an index, one
    /// an older storectl changed, a crash), it is rebuilt.
    fn ensure_index(&self) -> Result<()> {
        let Some(share) = self.index_share() else {
            return Ok(());
        };
        let current = {
            let mut cache = self.index.lock();
            if cache.is_ready() {
                return Ok(());
            }
            let generation = self.synced_generation.lock().clone();
            let started = std::time::Instant::now();
            let current = cache.init(share, &self.state.read(), generation.as_deref());
            tracing::debug!(
                "containers/storage index: every record serialized in {:?}; the files on \
                 the share are {}",
                started.elapsed(),
                if current {
                    "current"
                } else {
                    "not current: rebuilding"
                }
            );
            current
        };
        if !current {
            self.rebuild_index()?;
        }
        Ok(())
    }

    /// On a writer: (re)build containers/storage's index on the share from
    /// the in-memory state — the lock files, each shared layer's `l/<short>`
    /// link and tar-split link, each shared image's big-data links (those
    /// missing), then both index files and the stamp for the current
    /// `generation`. Runs when a mutation finds the index missing or not
    /// current, and in every sweep after a crash. Writer lock held.
    fn rebuild_index(&self) -> Result<()> {
        let Some(share) = self.index_share() else {
            return Ok(());
        };
        tracing::info!(
            "rebuilding containers/storage's index on {}",
            share.display()
        );
        // Whatever sits on a name of the index that is not what we write
        // there (a directory, a symlink, a FIFO) goes out of the way.
        let what = "containers/storage's index";
        for rel in crate::share_index::FILES {
            let path = share.join(rel);
            if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
                self.move_aside(&path, true, what)?;
            }
        }
        let l_dir = self.layout.overlay_ro().join("l");
        if fs::symlink_metadata(&l_dir).is_ok_and(|m| !m.is_dir()) {
            self.move_aside(&l_dir, true, what)?;
        }
        crate::share_index::ensure_lock_files(share)?;
        self.repair_index_entries()?;
        let synced = {
            let mut cache = self.index.lock();
            cache.invalidate();
            let state = self.state.read();
            cache.init(share, &state, None);
            cache.sync(share, &state)?
        };
        // Not matched on the guard: `bump_generation` takes the lock again.
        let synced_generation = self.synced_generation.lock().clone();
        match synced_generation {
            Some(generation) => crate::share_index::write_stamp(
                share,
                &crate::csindex::Stamp {
                    generation,
                    layers_size: synced.layers_size,
                    images_size: synced.images_size,
                },
            ),
            None => self.bump_generation(),
        }
    }

    /// The per-entry files containers/storage needs beside the index, for
    /// every shared layer and image this store knows, made where missing.
    fn repair_index_entries(&self) -> Result<()> {
        let (layers, images): (Vec<String>, Vec<Image>) = self.with_state(|st| {
            (
                st.layers
                    .values()
                    .filter(|l| l.shared)
                    .map(|l| l.id.clone())
                    .collect(),
                st.images.values().filter(|i| i.shared).cloned().collect(),
            )
        });
        // What a crash left of layers that are gone: short names and
        // tar-splits of ids no shared layer has.
        let known: BTreeSet<&str> = layers.iter().map(String::as_str).collect();
        let l_dir = self.layout.overlay_ro().join("l");
        for (short, id) in crate::links::short_links(&l_dir).at(&l_dir)? {
            if id.as_deref().is_none_or(|id| !known.contains(id)) {
                let path = l_dir.join(&short);
                tracing::info!("removing the stale link {}", path.display());
                allow_missing(fs::remove_file(&path)).at(&path)?;
            }
        }
        let layers_ro = self.layout.layers_ro();
        for entry in fs::read_dir(&layers_ro).at(&layers_ro)? {
            let name = entry.at(&layers_ro)?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".tar-split.gz")) else {
                continue;
            };
            if is_hex64(id) && !known.contains(id) {
                let path = layers_ro.join(&name);
                if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                    tracing::info!("removing the stale {}", path.display());
                    allow_missing(fs::remove_file(&path)).at(&path)?;
                } else {
                    self.move_aside(&path, true, "containers/storage's index")?;
                }
            }
        }
        for id in &layers {
            self.link_share_short_name(id)?;
            self.link_share_tar_split(id, false)?;
        }
        for image in &images {
            let dir = self.layout.images_ro().join(&image.id);
            link_big_data(&dir, image, false)?;
        }
        Ok(())
    }

    /// `<share>/overlay/l/<short> -> ../<id>/diff` for shared layer `id`
    /// (its short name read from its `link` file, without following
    /// symlinks). A name held by something else is left, with a warning.
    fn link_share_short_name(&self, id: &str) -> Result<()> {
        let overlay_ro = self.layout.overlay_ro();
        let Some(short) = crate::links::read_short_name(&overlay_ro, id) else {
            self.warn_once(format!(
                "shared layer {id} has no valid link file: containers/storage cannot \
                 mount images on it"
            ));
            return Ok(());
        };
        let l_dir = overlay_ro.join("l");
        create_dir(&l_dir)?;
        let path = l_dir.join(&short);
        let outcome =
            crate::links::add_link(&path, &crate::links::short_target(id), false).at(&path)?;
        if outcome == crate::links::Outcome::Occupied {
            self.warn_once(format!(
                "{} is not a link to layer {id}'s diff: left alone (containers/storage \
                 cannot mount images on that layer)",
                path.display()
            ));
        }
        Ok(())
    }

    /// `<share>/overlay-layers/<id>.tar-split.gz`, a hardlink of the
    /// layer's own tar-split; `replace` = even if something is there.
    fn link_share_tar_split(&self, id: &str, replace: bool) -> Result<()> {
        let dir = self.layout.layers_ro();
        let name = format!("{id}.tar-split.gz");
        let dest = dir.join(&name);
        if !replace && fs::symlink_metadata(&dest).is_ok() {
            return Ok(());
        }
        if fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_file()) {
            self.move_aside(&dest, true, &format!("layer {id}"))?;
        }
        let src = dir.join(id).join(&name);
        let tmp = dir.join(format!(".tmp-{}", unique_suffix()));
        match fs::hard_link(&src, &tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&tmp, e)),
        }
        fs::rename(&tmp, &dest).at(&dest).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
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

    /// Find an image by full id, `sha256:` id, name (as given or normalized),
    /// or unique id prefix.
    pub fn resolve_image(&self, name: &str) -> Result<Image> {
        let state = self.state.read();
        let bare = name.strip_prefix("sha256:").unwrap_or(name);
        if let Some(i) = state.images.get(bare) {
            return Ok(i.clone());
        }
        // A name a local and a shared image both have is the local one's.
        let normalized = crate::reference::normalize_name(name).ok();
        let named = |i: &&Image| {
            i.names
                .iter()
                .any(|n| n == name || Some(n) == normalized.as_ref())
        };
        let local = state.images.values().filter(|i| !i.shared).find(named);
        let shared = state.images.values().filter(|i| i.shared).find(named);
        if let Some(i) = local.or(shared) {
            let image = i.clone();
            if local.is_some() && shared.is_some() {
                drop(state);
                self.warn_collisions(vec![normalized.unwrap_or_else(|| name.to_string())]);
            }
            return Ok(image);
        }
        // A shared image hidden by a local one of the same id is the same
        // image (same config): its names lead to the local one.
        if let Some(i) = state
            .hidden_images
            .values()
            .find(named)
            .and_then(|hidden| state.images.get(&hidden.id))
        {
            return Ok(i.clone());
        }
        let is_prefix = !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_hexdigit());
        let matches: Vec<&Image> = if is_prefix {
            state
                .images
                .range(bare.to_string()..)
                .take_while(|(id, _)| id.starts_with(bare))
                .map(|(_, i)| i)
                .collect()
        } else {
            Vec::new()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::ImageUnknown { name: name.into() }),
            many => Err(Error::AmbiguousImage {
                name: name.into(),
                count: many.len(),
            }),
        }
    }

    /// The image's layers, base first.
    pub fn image_layers(&self, image: &Image) -> Result<Vec<Layer>> {
        let state = self.state.read();
        let top = image.layer.as_deref().unwrap_or("");
        let mut chain: Vec<Layer> = state
            .chain(top)
            .ok_or_else(|| Error::LayerUnknown { id: top.into() })?
            .into_iter()
            .cloned()
            .collect();
        chain.reverse();
        Ok(chain)
    }

    /// Bytes of the image's uncompressed layers.
    pub fn image_size(&self, image: &Image) -> u64 {
        let state = self.state.read();
        state
            .chain(image.layer.as_deref().unwrap_or(""))
            .map_or(0, |ls| ls.iter().filter_map(|l| l.diff_size).sum())
    }

    /// A stored document of the image (`manifest`, `config`).
    pub fn image_big_data(&self, image: &Image, key: &str) -> Result<Vec<u8>> {
        if !image.big_data_names.iter().any(|k| k == key) {
            return Err(Error::io(
                self.image_dir(&image.id).join(key),
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        let path = self.image_dir(&image.id).join(key);
        fsutil::read_small_file(&path, fsutil::MAX_DOCUMENT).at(path)
    }

    /// Import the image at `source` (`PATH` or `PATH:TAG`; an OCI layout
    /// directory, or a docker-archive / OCI-archive tarball; `-` for a
    /// tarball on standard input), adding `opts.name` to its names. Layers already in
    /// the store are not imported again; the others are extracted in parallel
    /// and published base first, the image last.
    pub fn load(&self, source: &str, opts: &LoadOptions, reporter: &dyn Reporter) -> Result<Image> {
        let op = |event, name: &str| ProgressEvent {
            event,
            name: name.to_string(),
            parents: vec![],
            progress: 0,
            total: 0,
            layer: None,
            compressed: None,
        };
        reporter.report(&op(EventKind::Resolving, source));
        let src = import::open_source(source, &self.root)?;
        let image = self.import(src, opts, reporter)?;
        reporter.report(&op(EventKind::Done, &image.id));
        Ok(image)
    }

    /// Import `src` — its config, manifest and layer blobs, local or
    /// [`Remote`](crate::import::Blob::Remote) — as [`load`](Self::load) does
    /// after opening an archive (and `storectl-transfer`'s pull after reading
    /// a registry's manifest and config): layers extracted `opts.jobs` at a
    /// time, checked, and published in order only when all succeeded.
    pub fn import(
        &self,
        src: SourceImage,
        opts: &LoadOptions,
        reporter: &dyn Reporter,
    ) -> Result<Image> {
        let config = spec::parse_config(&src.config).map_err(|reason| Error::InvalidArchive {
            path: PathBuf::from(&src.config_digest),
            reason,
        })?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != src.layers.len() {
            return Err(Error::InvalidArchive {
                path: PathBuf::from(&src.config_digest),
                reason: format!(
                    "the config lists {} layers, the manifest {}",
                    diff_ids.len(),
                    src.layers.len()
                ),
            });
        }
        if diff_ids.len() > MAX_LAYERS {
            return Err(Error::TooManyLayers {
                image: src
                    .names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| src.config_digest.clone()),
                layers: diff_ids.len(),
                max: MAX_LAYERS,
            });
        }
        let image_id = crate::digest::sha256_hex(&src.config_digest)
            .ok_or_else(|| Error::InvalidArchive {
                path: PathBuf::from(&src.config_digest),
                reason: "config digest is not sha256".into(),
            })?
            .to_string();
        let mut names = src.names.clone();
        if let Some(n) = &opts.name {
            let n = crate::reference::normalize_name(n).map_err(|e| Error::InvalidName {
                name: n.clone(),
                reason: e.to_string(),
            })?;
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let chain = chain_ids(diff_ids);
        let parent_name = names.first().cloned().unwrap_or_else(|| image_id.clone());
        let blob_event = |event, i: usize, progress: u64| {
            let total = src.layers[i].blob.len();
            ProgressEvent {
                event,
                name: src.layers[i]
                    .digest
                    .clone()
                    .unwrap_or_else(|| diff_ids[i].clone()),
                parents: vec![parent_name.clone()],
                progress: if event == EventKind::Waiting {
                    0
                } else {
                    progress.min(total)
                },
                total,
                layer: Some(chain[i].clone()),
                compressed: src.layers[i].is_compressed(),
            }
        };

        let mut lock = self.begin_write()?;
        // On a reader, a shared image cannot take names: a local record of
        // it is made instead (on the shared layers), and hides the shared one.
        let reader = self.layout.role() == Role::Reader;
        let loaded = || {
            self.state
                .read()
                .images
                .get(&image_id)
                .filter(|i| !(reader && i.shared))
                .cloned()
        };
        if let Some(image) = loaded() {
            for i in 0..chain.len() {
                reporter.report(&blob_event(
                    EventKind::AlreadyExists,
                    i,
                    src.layers[i].blob.len(),
                ));
            }
            return self.add_names(&image.id, &names);
        }
        // A local layer can be on disk but not loaded: its chain broke when
        // the writer removed a shared ancestor. It is whole (incomplete ones
        // went in `begin_write`) and named by its content, so it is kept and
        // rejoins once this import brings the ancestor back.
        let mut stranded = false;
        let todo: Vec<usize> = {
            let state = self.state.read();
            (0..chain.len())
                .filter(|&i| {
                    let loaded = state.layers.contains_key(&chain[i]);
                    let have = loaded || self.is_stranded_layer(&chain[i]);
                    stranded |= !loaded && have;
                    let ev = if have {
                        EventKind::AlreadyExists
                    } else {
                        EventKind::Waiting
                    };
                    reporter.report(&blob_event(ev, i, src.layers[i].blob.len()));
                    !have
                })
                .collect()
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.jobs.clamp(1, 16))
            .build()
            .map_err(|e| Error::io(&self.root, std::io::Error::other(e)))?;
        // The first failure stops the other layers' streams: their work is lost anyway.
        let cancel = AtomicBool::new(false);
        let staging_fs = if self.publishes_shared() {
            self.layout.overlay_ro()
        } else {
            self.layout.overlay()
        };
        // Layers are extracted `jobs` at a time and each batch is published
        // before the next starts: staging dirs (and tar-split buffers) exist
        // for at most `jobs` layers, however many the image has.
        let mut published: Vec<String> = Vec::new();
        let mut extract = || -> Result<()> {
            for batch in todo.chunks(opts.jobs.clamp(1, 16)) {
                let prepared = self.prepare_batch(
                    batch,
                    &src,
                    diff_ids,
                    &chain,
                    opts,
                    &cancel,
                    reporter,
                    &pool,
                    &staging_fs,
                    &blob_event,
                )?;
                for p in prepared {
                    let parents: Vec<String> = match &p.layer.parent {
                        Some(parent) => {
                            if stranded && !self.state.read().layers.contains_key(parent) {
                                self.reload()?; // a stranded parent rejoins now
                            }
                            self.state
                                .read()
                                .chain(parent)
                                .map(|c| c.iter().map(|l| l.id.clone()).collect())
                                .ok_or_else(|| Error::LayerUnknown { id: parent.clone() })?
                        }
                        None => Vec::new(),
                    };
                    let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
                    let id = p.layer.id.clone();
                    self.publish_layer(p, &parents)?;
                    published.push(id);
                }
            }
            Ok(())
        };
        if let Err(e) = extract() {
            // Take back the layers this import published: a failed load
            // leaves nothing behind. What cannot be taken back is left to
            // the next writer's sweep.
            if !self.unpublish_layers(&published) {
                lock.leave_unreleased();
            }
            return Err(e);
        }

        if stranded {
            self.reload()?;
            if let Some(image) = loaded() {
                return self.add_names(&image.id, &names);
            }
        }
        let manifest = match (&src.manifest, &src.manifest_digest) {
            (Some(m), Some(d)) => (m.clone(), d.clone()),
            _ => {
                let m = self.docker_manifest(&src, &chain)?;
                let d = sha256_digest(&m);
                (m, d)
            }
        };
        // The names go into the staged record: the image never appears nameless.
        self.take_names_from_others(&image_id, &names)?;
        let image = Image {
            id: image_id.clone(),
            digest: Some(manifest.1.clone()),
            names: names.clone(),
            layer: chain.last().cloned(),
            created: config
                .created
                .clone()
                .or_else(|| Some(fsutil::now_rfc3339())),
            big_data_names: vec![MANIFEST.into(), CONFIG.into()],
            big_data_sizes: [
                (MANIFEST.to_string(), manifest.0.len() as u64),
                (CONFIG.to_string(), src.config.len() as u64),
            ]
            .into(),
            big_data_digests: [
                (MANIFEST.to_string(), manifest.1.clone()),
                (CONFIG.to_string(), src.config_digest.clone()),
            ]
            .into(),
            shared: false,
        };
        self.publish_image(&image, &manifest.0, &src.config)?;
        Ok(self
            .state
            .read()
            .images
            .get(&image_id)
            .cloned()
            .unwrap_or(image))
    }

    /// Extract the layers `batch` (indexes into the source) in parallel.
    /// The first failure cancels the others; every staging dir of a failed
    /// batch is removed.
    #[allow(clippy::too_many_arguments)]
    fn prepare_batch(
        &self,
        batch: &[usize],
        src: &SourceImage,
        diff_ids: &[String],
        chain: &[String],
        opts: &LoadOptions,
        cancel: &AtomicBool,
        reporter: &dyn Reporter,
        pool: &rayon::ThreadPool,
        staging_fs: &Path,
        blob_event: &(dyn Fn(EventKind, usize, u64) -> ProgressEvent + Sync),
    ) -> Result<Vec<Prepared>> {
        let results: Vec<Result<Prepared>> = flushing_in_background(staging_fs, || {
            pool.install(|| {
                batch
                    .par_iter()
                    .map(|&i| {
                        let parent = i.checked_sub(1).map(|p| chain[p].clone());
                        let prepared = self.prepare_layer(
                            &src.layers[i],
                            &diff_ids[i],
                            &chain[i],
                            parent,
                            opts,
                            cancel,
                            reporter,
                            blob_event(
                                if src.layers[i].blob.is_remote() {
                                    EventKind::Downloading
                                } else {
                                    EventKind::Extracting
                                },
                                i,
                                0,
                            ),
                        );
                        match prepared {
                            Ok(p) => {
                                let mut done = blob_event(EventKind::Complete, i, u64::MAX);
                                // The blob was its own tar, or compressed.
                                done.compressed =
                                    Some(p.layer.compressed_diff_digest != p.layer.diff_digest);
                                reporter.report(&done);
                                Ok(p)
                            }
                            // The first failure cancels the rest; theirs follow from it.
                            Err(e) if !cancel.swap(true, Ordering::Relaxed) => Err(e),
                            Err(_) => Err(Error::Cancelled),
                        }
                    })
                    .collect()
            })
        });
        let mut prepared = Vec::with_capacity(results.len());
        let mut first_err = None;
        for r in results {
            match r {
                Ok(p) => prepared.push(p),
                // A real failure wins over the "cancelled" it caused elsewhere.
                Err(Error::Cancelled) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e), // `prepared` drops, removing its staging dirs
            None => Ok(prepared),
        }
    }

    /// Remove the layers `ids` (published by a failed import, base first)
    /// that no image uses, top first. False when one could not be removed.
    fn unpublish_layers(&self, ids: &[String]) -> bool {
        let used = self.state.read().referenced_layers();
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

    /// A Docker schema 2 manifest for an image that came without one
    /// (docker-archive): its layers as the uncompressed tars we hold.
    fn docker_manifest(&self, src: &SourceImage, chain: &[String]) -> Result<Vec<u8>> {
        let state = self.state.read();
        let mut layers = Vec::new();
        for id in chain {
            let l = state
                .layers
                .get(id)
                .ok_or_else(|| Error::LayerUnknown { id: id.clone() })?;
            layers.push(spec::Descriptor {
                media_type: spec::DOCKER_LAYER_TAR.into(),
                digest: l.diff_digest.clone().unwrap_or_default(),
                size: l.diff_size.unwrap_or(0),
                annotations: None,
                platform: None,
            });
        }
        let manifest = spec::Manifest {
            schema_version: 2,
            media_type: Some(spec::DOCKER_MANIFEST.into()),
            config: spec::Descriptor {
                media_type: spec::DOCKER_CONFIG.into(),
                digest: src.config_digest.clone(),
                size: src.config.len() as u64,
                annotations: None,
                platform: None,
            },
            layers,
            annotations: None,
        };
        Ok(serde_json::to_vec(&manifest).expect("a manifest serializes"))
    }

    /// Extract one layer blob into a staging dir and check its digests.
    #[allow(clippy::too_many_arguments)]
    fn prepare_layer(
        &self,
        src: &SourceLayer,
        diff_id: &str,
        id: &str,
        parent: Option<String>,
        opts: &LoadOptions,
        cancel: &AtomicBool,
        reporter: &dyn Reporter,
        event: ProgressEvent,
    ) -> Result<Prepared> {
        let layer_err = |source| Error::Layer {
            layer: src.digest.clone().unwrap_or_else(|| diff_id.to_string()),
            source,
        };
        let staged = self
            .driver
            .stage_layer(self.publishes_shared())
            .map_err(layer_err)?;
        let blob_path = src.blob.describe();
        let stream = Cancellable {
            inner: src.blob.open()?,
            cancel,
        };
        let mut blob = std::io::BufReader::with_capacity(256 << 10, stream);
        // An uncompressed blob is its own tar: hash it once, not twice.
        let magic = blob.fill_buf().at(&blob_path)?;
        let plain = storectl_overlay::Compression::detect(magic).is_none()
            && matches!(
                src.compression,
                None | Some(storectl_overlay::Compression::None)
            );
        let mut event = event;
        event.compressed = Some(!plain);
        let progress = ProgressReader::new(blob, reporter, event, opts.progress_interval);
        let mut compressed = if plain {
            HashingReader::counting(progress)
        } else {
            HashingReader::new(progress)
        };
        let (compression, stream) =
            storectl_overlay::compression::decompress(Box::new(&mut compressed), src.compression)
                .map_err(layer_err)?;
        let mut uncompressed = HashingReader::new(stream);
        let mut tar_split = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let stats = apply_tar(
            &staged.diff_path(),
            &mut uncompressed,
            Some(&mut tar_split),
            &ApplyOptions {
                max_size: opts.max_layer_size,
                xattrs: self.driver.xattr_mode(),
            },
        )
        .map_err(layer_err)?;
        let (found_diff, diff_size) = uncompressed.finish().at(&blob_path)?;
        let (found_blob, blob_size) = compressed.finish().at(&blob_path)?;
        let found_blob = if plain {
            found_diff.clone()
        } else {
            found_blob
        };
        if found_diff != diff_id {
            return Err(Error::DigestMismatch {
                what: format!(
                    "uncompressed layer {}",
                    src.digest.as_deref().unwrap_or(diff_id)
                ),
                expected: diff_id.to_string(),
                found: found_diff,
            });
        }
        if let Some(want) = &src.digest {
            if *want != found_blob {
                return Err(Error::DigestMismatch {
                    what: format!("layer blob {want}"),
                    expected: want.clone(),
                    found: found_blob,
                });
            }
        }
        let tar_split = tar_split.finish().at(staged.diff_path())?;
        let layer = Layer {
            id: id.to_string(),
            names: Vec::new(),
            parent,
            created: Some(fsutil::now_rfc3339()),
            compressed_diff_digest: Some(found_blob),
            compressed_size: Some(blob_size),
            diff_digest: Some(found_diff),
            diff_size: Some(diff_size),
            compression: compression.code(),
            incomplete: false,
            disk_size: Some(stats.file_bytes),
            shared: false,
        };
        Ok(Prepared {
            staged,
            layer,
            tar_split,
        })
    }

    /// Publish a prepared layer: overlay dir first, then its record (both by
    /// rename), then the `RO` symlink.
    fn publish_layer(&self, p: Prepared, parents: &[&str]) -> Result<()> {
        let id = p.layer.id.clone();
        if self.layout.role() == Role::Reader {
            // A legacy link of a shared layer of this id: the local layer takes the name.
            self.unlink_entry(&self.layout.overlay(), &id)?;
            self.unlink_entry(&self.layers_dir(), &id)?;
        }
        let shared = self.publishes_shared();
        // The layer is not in the store, so whatever sits on its names was
        // not made by us: out of the way (to the trash, with a warning).
        let what = format!("layer {id}");
        if shared {
            self.move_aside(&self.layout.overlay_ro().join(&id), true, &what)?;
            self.move_aside(&self.layout.layers_ro().join(&id), true, &what)?;
            self.move_aside(&self.layers_dir().join(&id), false, &what)?;
        }
        self.move_aside(&self.layout.overlay().join(&id), false, &what)?;
        if !shared {
            self.move_aside(&self.layers_dir().join(&id), false, &what)?;
        }
        p.staged.commit(&id, parents)?;
        let mut layer = p.layer;
        let json = serde_json::to_vec_pretty(&layer).expect("a layer record serializes");
        layer.shared = shared;
        let parent_dir = if shared {
            self.layout.layers_ro()
        } else {
            self.layers_dir()
        };
        create_dir(&parent_dir)?;
        let staging = parent_dir.join(format!(".staging-{}", unique_suffix()));
        fs::create_dir(&staging).at(&staging)?;
        write_synced(&staging.join(LAYER_JSON), &json)?;
        write_synced(&staging.join(format!("{id}.tar-split.gz")), &p.tar_split)?;
        sync_dir(&staging)?;
        let dest = parent_dir.join(&id);
        fs::rename(&staging, &dest).at(&dest)?;
        if self.index_share().is_some() {
            // What containers/storage reads beside the index: the
            // tar-split under its name, the short name on the share.
            self.link_share_tar_split(&id, true)?;
            self.link_share_short_name(&id)?;
            sync_dir(&self.layout.overlay_ro().join("l"))?;
        }
        sync_dir(&parent_dir)?;
        if shared {
            let link = self.layers_dir().join(&id);
            std::os::unix::fs::symlink(format!("{RO}/{id}"), &link).at(&link)?;
            sync_dir(&self.layers_dir())?;
        }
        {
            let mut state = self.state.write();
            if let Some(old) = state.layers.insert(id.clone(), layer) {
                if old.shared && !shared {
                    state.hidden_layers.insert(id, old);
                }
            }
        }
        self.bump_generation()
    }

    /// Move whatever is at `path` (an entry storectl did not make, on a name
    /// it must write) into a dot-prefixed trash dir — the share's when
    /// `on_share`, else the root's — with a warning saying where it went.
    fn move_aside(&self, path: &Path, on_share: bool, what: &str) -> Result<()> {
        if fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        let base = match (&self.layout.config.shared, on_share) {
            (Some(share), true) => share.clone(),
            _ => self.root.clone(),
        };
        let trash = base.join(TRASH);
        fs::create_dir_all(&trash).at(&trash)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dest = trash.join(format!("{name}.{}", unique_suffix()));
        fs::rename(path, &dest).at(path)?;
        tracing::warn!(
            "{} was in the way of {what} (not made by storectl): moved to {}; \
             delete it when done looking (rm -rf {})",
            path.display(),
            dest.display(),
            dest.display()
        );
        Ok(())
    }

    /// Publish an image dir whole: stage `images.json`, `manifest`, `config`,
    /// fsync, rename into place.
    fn publish_image(&self, image: &Image, manifest: &[u8], config: &[u8]) -> Result<()> {
        let shared = self.publishes_shared();
        let dir = if shared {
            self.layout.images_ro()
        } else {
            self.images_dir()
        };
        create_dir(&dir)?;
        if self.layout.role() == Role::Reader {
            // A shared image's legacy link: the local record takes the name.
            self.unlink_entry(&dir, &image.id)?;
        }
        // The image is not in the store: whatever sits on its names was not
        // made by us (out of the way, to the trash, with a warning).
        let what = format!("image {}", image.id);
        if shared {
            self.move_aside(&self.layout.images_ro().join(&image.id), true, &what)?;
        }
        self.move_aside(&self.images_dir().join(&image.id), false, &what)?;
        let staging = dir.join(format!(".staging-{}", unique_suffix()));
        fs::create_dir(&staging).at(&staging)?;
        let json = serde_json::to_vec_pretty(image).expect("an image record serializes");
        write_synced(&staging.join(IMAGES_JSON), &json)?;
        write_synced(&staging.join(MANIFEST), manifest)?;
        write_synced(&staging.join(CONFIG), config)?;
        if self.index_share().is_some() {
            link_big_data(&staging, image, true)?;
        }
        sync_dir(&staging)?;
        let dest = dir.join(&image.id);
        fs::rename(&staging, &dest).at(&dest)?;
        sync_dir(&dir)?;
        if shared {
            let link = self.images_dir().join(&image.id);
            std::os::unix::fs::symlink(format!("{RO}/{}", image.id), &link).at(&link)?;
        }
        let mut image = image.clone();
        image.shared = shared;
        let collisions = {
            let mut state = self.state.write();
            let names = image.names.clone();
            if let Some(old) = state.images.insert(image.id.clone(), image) {
                if old.shared && !shared {
                    state.hidden_images.insert(old.id.clone(), old);
                }
            }
            if shared {
                Vec::new()
            } else {
                shared_claims(&state, names)
            }
        };
        self.warn_collisions(collisions);
        self.bump_generation()
    }

    /// Rewrite an image's `images.json` in place (atomic replace).
    fn write_image_record(&self, image: &Image) -> Result<()> {
        let json = serde_json::to_vec_pretty(image).expect("an image record serializes");
        write_atomic(&self.image_dir(&image.id), IMAGES_JSON, &json)?;
        self.index.lock().mark_image(&image.id);
        self.state
            .write()
            .images
            .insert(image.id.clone(), image.clone());
        Ok(())
    }

    /// Take `names` away from every image but `id` that has them (a name
    /// names one image). A reader leaves shared images alone. Writer lock held.
    fn take_names_from_others(&self, id: &str, names: &[String]) -> Result<()> {
        let reader = self.layout.role() == Role::Reader;
        let others: Vec<Image> = self
            .state
            .read()
            .images
            .values()
            .filter(|i| i.id != id && !(reader && i.shared))
            .filter(|i| i.names.iter().any(|n| names.contains(n)))
            .cloned()
            .collect();
        for mut other in others {
            other.names.retain(|n| !names.contains(n));
            self.write_image_record(&other)?;
        }
        Ok(())
    }

    /// Give image `id` the (normalized) `names`, taking them from any other
    /// image that has them. Writer lock held.
    fn add_names(&self, id: &str, names: &[String]) -> Result<Image> {
        self.take_names_from_others(id, names)?;
        let mut image = self
            .state
            .read()
            .images
            .get(id)
            .cloned()
            .ok_or_else(|| Error::ImageUnknown { name: id.into() })?;
        let before = image.names.len();
        for n in names {
            if !image.names.contains(n) {
                image.names.push(n.clone());
            }
        }
        if image.names.len() != before {
            self.write_image_record(&image)?;
            self.bump_generation()?;
            if !image.shared {
                let collisions = shared_claims(&self.state.read(), names.to_vec());
                self.warn_collisions(collisions);
            }
        }
        Ok(image)
    }

    /// Add the name `name` (normalized, e.g. `docker.io/library/x:latest`) to an image.
    pub fn tag(&self, image: &str, name: &str) -> Result<Image> {
        let normalized =
            crate::reference::normalize_name(name).map_err(|e| Error::InvalidName {
                name: name.into(),
                reason: e.to_string(),
            })?;
        let _lock = self.begin_write()?;
        let image = self.resolve_image(image)?;
        self.check_mutable(image.shared, &format!("image {}", image.id))?;
        self.add_names(&image.id, &[normalized])
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
        let image_dir = self.image_dir(&image.id);
        // A writer keeps the shared layers only this image used for the
        // share's grace period (a reader's container may run on them),
        // listed in the share's removals file before the image goes.
        let keep = image.shared && self.keeps_removed_layers();
        if keep {
            let waiting: Vec<String> = self.with_state(|st| {
                let used: BTreeSet<&str> = st
                    .images
                    .values()
                    .filter(|i| i.id != image.id)
                    .filter_map(|i| st.chain(i.layer.as_deref()?))
                    .flatten()
                    .map(|l| l.id.as_str())
                    .collect();
                chain
                    .iter()
                    .take_while(|(id, _)| !used.contains(id.as_str()))
                    .filter(|(_, shared)| *shared)
                    .map(|(id, _)| id.clone())
                    .collect()
            });
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
            let used = state.referenced_layers();
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
        let still_used = self.state.read().referenced_layers();
        let mut removed = Vec::new();
        for (id, shared) in chain {
            if still_used.contains(&id) {
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

    /// Remove a layer's record (and its legacy `RO` link), then its overlay dir.
    fn remove_layer_files(&self, id: &str, shared: bool) -> Result<()> {
        if !self.publishes_shared() {
            // Only local entries, never through a legacy link to the share:
            // a reader's `overlay/<id> -> RO/<id>` is not its to delete through.
            let overlay = self.layout.overlay().join(id);
            let record = self.layers_dir().join(id);
            if shared || fs::symlink_metadata(&overlay).is_ok_and(|m| m.is_symlink()) {
                if crate::links::is_real_dir(&record) {
                    fsutil::remove_dir_atomic(&record)?;
                }
                return Ok(());
            }
        }
        if shared && self.index_share().is_some() {
            // containers/storage's names of it on the share (the index no
            // longer lists it).
            let split = self.layout.layers_ro().join(format!("{id}.tar-split.gz"));
            match fs::remove_file(&split) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&split, e))
                }
                _ => {}
            }
            let overlay_ro = self.layout.overlay_ro();
            if let Some(short) = crate::links::read_short_name(&overlay_ro, id) {
                let path = overlay_ro.join("l").join(short);
                crate::links::remove_link(&path, &crate::links::short_target(id)).at(&path)?;
            }
        }
        let record = self.layer_dir_of(id, shared);
        if record.exists() {
            fsutil::remove_dir_atomic(&record)?;
        }
        let link = self.layers_dir().join(id);
        if shared && fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).at(&link)?;
        }
        match self.driver.remove_layer(id) {
            Ok(()) | Err(storectl_overlay::Error::LayerUnknown(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Rebuild layer `id`'s tar from its diff and tar-split and hash it.
    pub fn verify_layer(&self, id: &str) -> Result<LayerCheck> {
        let layer = self.layer(id)?;
        let expected = layer.diff_digest.clone().unwrap_or_default();
        let split_path = self
            .layer_record_dir(&layer)
            .join(format!("{id}.tar-split.gz"));
        let found = (|| -> std::result::Result<String, String> {
            let file = fs::File::open(&split_path)
                .map_err(|e| format!("{}: {e}", split_path.display()))?;
            let mut split = GzDecoder::new(std::io::BufReader::new(file));
            let mut hasher = HashWriter(Sha256::new());
            storectl_overlay::tarsplit::reassemble(
                &self.overlay_dir(&layer).join("diff"),
                &mut split,
                &mut hasher,
            )
            .map_err(|e| e.to_string())?;
            Ok(format!("sha256:{}", hex::encode(hasher.0.finalize())))
        })();
        Ok(LayerCheck {
            layer: id.to_string(),
            expected,
            found,
        })
    }

    /// Mount an image read-only, `nodev`, `nosuid` (overlayfs over its
    /// layers, up to 500) at [`Store::mount_path`]; mounting a mounted image
    /// returns the same path.
    pub fn mount_image(&self, image: &Image) -> Result<PathBuf> {
        let target = self.mount_path(&image.id);
        if storectl_overlay::mount::is_mounted(&target)? {
            return Ok(target);
        }
        let ids: Vec<String> = self
            .image_layers(image)?
            .into_iter()
            .rev()
            .map(|l| l.id)
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.driver.mount_read_only(&ids, &target)?;
        Ok(target)
    }

    /// Unmount an image mounted by [`Store::mount_image`]. Returns false when
    /// it was not mounted.
    pub fn unmount_image(&self, image: &Image) -> Result<bool> {
        self.unmount_id(&image.id)
    }

    /// Unmount the mount of image id `id` (which may be gone from the store
    /// since — on a reader, the writer may have removed it).
    pub fn unmount_id(&self, id: &str) -> Result<bool> {
        if !is_hex64(id) {
            return Err(Error::ImageUnknown { name: id.into() });
        }
        let target = self.mount_path(id);
        if !storectl_overlay::mount::is_mounted(&target)? {
            return Ok(false);
        }
        storectl_overlay::mount::unmount(&target)?;
        let _ = fs::remove_dir(&target);
        Ok(true)
    }

    /// Ids of images mounted under `mounts/` whose id starts with `prefix`.
    pub fn mounted_ids(&self, prefix: &str) -> Result<Vec<String>> {
        let mut ids = list_ids(&self.root.join(MOUNTS))?;
        ids.retain(|id| {
            id.starts_with(prefix)
                && storectl_overlay::mount::is_mounted(&self.mount_path(id)).unwrap_or(false)
        });
        Ok(ids)
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
mod removals;
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
