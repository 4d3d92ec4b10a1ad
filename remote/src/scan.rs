//! Scanning the share: which shared layers and images exist, which of the new
//! ones are valid, and what the in-memory store must add and drop.
//!
//! Only the three `RO` directories are read. Only names of exactly 64
//! lowercase hex count. A record is read only when its id is new (or was not
//! yet valid), through a directory fd opened with `O_NOFOLLOW`, so a symlink
//! on the share is never followed; its `(ino, size, mtime, ctime)` stamp is
//! cached so an entry that stays invalid is not parsed again until it changes,
//! and its warning is given once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use storectl_storage::meta::{self, Image, Layer};
use storectl_storage::{list_ids, Layout, SharedDelta, Store, IMAGES_JSON, LAYER_JSON};

use crate::error::Result;
use crate::events::StoreEvent;

/// Records larger than this are junk (a real one is a few hundred bytes).
const MAX_RECORD: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// A record read from the share, or why it is not usable.
#[derive(Debug)]
struct Cached<T> {
    stamp: Option<Stamp>,
    outcome: std::result::Result<T, String>,
    /// The last reason we warned about, so each reason is said once.
    warned: Option<String>,
}

impl<T> Cached<T> {
    fn warn_once(&mut self, what: &str, id: &str, reason: String) {
        if self.warned.as_deref() != Some(reason.as_str()) {
            tracing::warn!("share: skipping {what} {id}: {reason}");
            self.warned = Some(reason);
        }
    }
}

/// What one scan saw, for stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    pub layers_on_share: usize,
    pub images_on_share: usize,
    /// Entries present but not (yet) valid.
    pub pending: usize,
}

/// The reader's memory of the share between scans.
#[derive(Debug)]
pub struct Scanner {
    layout: Layout,
    layers: HashMap<String, Cached<Layer>>,
    images: HashMap<String, Cached<Image>>,
    pub(crate) stats: ScanStats,
}

fn open_dir_nofollow(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Is `name` under `dir` of type `want` (without following a symlink)?
fn has_entry(dir: &OwnedFd, name: &str, want: FileType) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == want)
}

/// Read `dir/<id>/<file>` without following symlinks, with its stamp.
/// `Ok(None)` = same stamp as `known` (not read again).
fn read_record(
    dir: &Path,
    id: &str,
    file: &str,
    known: Option<Stamp>,
) -> std::result::Result<Option<(Stamp, Vec<u8>)>, String> {
    let entry_dir = open_dir_nofollow(&dir.join(id)).map_err(|e| match e.raw_os_error() {
        Some(n) if n == rustix::io::Errno::LOOP.raw_os_error() => {
            "is a symlink (never followed)".to_string()
        }
        Some(n) if n == rustix::io::Errno::NOTDIR.raw_os_error() => "is not a directory".into(),
        _ => format!("cannot open: {e}"),
    })?;
    let fd = rustix::fs::openat(
        &entry_dir,
        file,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| format!("{file}: {e}"))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| format!("{file}: {e}"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(format!("{file} is not a regular file"));
    }
    let stamp = Stamp {
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime: (st.st_mtime, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime, st.st_ctime_nsec as i64),
    };
    if known == Some(stamp) {
        return Ok(None);
    }
    if stamp.size > MAX_RECORD {
        return Err(format!(
            "{file} is {} bytes, too large for a record",
            stamp.size
        ));
    }
    let mut bytes = Vec::with_capacity(stamp.size as usize);
    std::fs::File::from(fd)
        .take(MAX_RECORD + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{file}: {e}"))?;
    Ok(Some((stamp, bytes)))
}

/// Parse through the cache: re-read only when the file's stamp changed.
fn refresh_cached<T>(
    cache: &mut HashMap<String, Cached<T>>,
    dir: &Path,
    id: &str,
    file: &str,
    parse: impl Fn(&[u8]) -> std::result::Result<T, String>,
) {
    let known = cache.get(id).and_then(|c| c.stamp);
    match read_record(dir, id, file, known) {
        Ok(None) => {}
        Ok(Some((stamp, bytes))) => {
            let outcome = parse(&bytes);
            let entry = cache.entry(id.to_string()).or_insert(Cached {
                stamp: None,
                outcome: Err(String::new()),
                warned: None,
            });
            entry.stamp = Some(stamp);
            entry.outcome = outcome;
        }
        Err(reason) => {
            let entry = cache.entry(id.to_string()).or_insert(Cached {
                stamp: None,
                outcome: Err(String::new()),
                warned: None,
            });
            entry.stamp = None;
            entry.outcome = Err(reason);
        }
    }
}

impl Scanner {
    pub fn new(layout: Layout) -> Scanner {
        Scanner {
            layout,
            layers: HashMap::new(),
            images: HashMap::new(),
            stats: ScanStats::default(),
        }
    }

    /// Check a new layer's overlay dir: a real dir with `diff/` and `link`.
    fn overlay_valid(&self, id: &str) -> std::result::Result<(), String> {
        let dir = open_dir_nofollow(&self.layout.overlay_ro().join(id))
            .map_err(|e| format!("overlay directory: {e}"))?;
        if !has_entry(&dir, "diff", FileType::Directory) {
            return Err("overlay directory has no diff/".into());
        }
        if !has_entry(&dir, "link", FileType::RegularFile) {
            return Err("overlay directory has no link file".into());
        }
        Ok(())
    }

    /// One scan: read the share, compare with the store's shared entries,
    /// apply the difference to the store, and return it as events.
    pub fn scan(&mut self, store: &Store) -> Result<Vec<StoreEvent>> {
        let overlay_ro = self.layout.overlay_ro();
        let layers_ro = self.layout.layers_ro();
        let images_ro = self.layout.images_ro();
        let overlay_ids: HashSet<String> = list_ids(&overlay_ro)?.into_iter().collect();
        let fs_layers: BTreeSet<String> = list_ids(&layers_ro)?
            .into_iter()
            .filter(|id| overlay_ids.contains(id))
            .collect();
        let fs_images: BTreeSet<String> = list_ids(&images_ro)?.into_iter().collect();
        // Forget what left the share.
        self.layers.retain(|id, _| fs_layers.contains(id));
        self.images.retain(|id, _| fs_images.contains(id));

        // What is new and what is gone, against the store (a brief read lock).
        let (new_layers, new_images, gone_layers, gone_images) = store.with_state(|st| {
            let known_layers: HashSet<&str> = st
                .layers
                .values()
                .filter(|l| l.shared)
                .map(|l| l.id.as_str())
                .collect();
            let known_images: HashSet<&str> = st
                .images
                .values()
                .filter(|i| i.shared)
                .map(|i| i.id.as_str())
                .collect();
            let new_layers: Vec<String> = fs_layers
                .iter()
                .filter(|id| !known_layers.contains(id.as_str()))
                .cloned()
                .collect();
            let new_images: Vec<String> = fs_images
                .iter()
                .filter(|id| !known_images.contains(id.as_str()))
                .cloned()
                .collect();
            let gone_layers: BTreeSet<String> = known_layers
                .iter()
                .filter(|id| !fs_layers.contains(**id))
                .map(|id| id.to_string())
                .collect();
            let mut gone_images: BTreeSet<String> = known_images
                .iter()
                .filter(|id| !fs_images.contains(**id))
                .map(|id| id.to_string())
                .collect();
            // An image that loses a layer goes too.
            if !gone_layers.is_empty() {
                for image in st.images.values() {
                    let broken = st
                        .chain(image.layer.as_deref().unwrap_or(""))
                        .is_none_or(|c| c.iter().any(|l| gone_layers.contains(&l.id)));
                    if broken {
                        gone_images.insert(image.id.clone());
                    }
                }
            }
            (new_layers, new_images, gone_layers, gone_images)
        });

        // Read new records without holding any store lock.
        let mut candidates: HashMap<String, Layer> = HashMap::new();
        for id in &new_layers {
            refresh_cached(&mut self.layers, &layers_ro, id, LAYER_JSON, |b| {
                let layer = meta::parse_layer(b, id)?;
                if layer.incomplete {
                    return Err("layer is still incomplete".into());
                }
                Ok(layer)
            });
            let overlay = self.overlay_valid(id);
            let entry = self.layers.get_mut(id).expect("just cached");
            match (&entry.outcome, overlay) {
                (Ok(layer), Ok(())) => {
                    candidates.insert(id.clone(), layer.clone());
                }
                (Err(reason), _) => {
                    let reason = reason.clone();
                    entry.warn_once("layer", id, reason);
                }
                (Ok(_), Err(reason)) => entry.warn_once("layer", id, reason),
            }
        }
        for id in &new_images {
            let image_dir = images_ro.join(id);
            refresh_cached(&mut self.images, &images_ro, id, IMAGES_JSON, |b| {
                let image = meta::parse_image(b, id)?;
                let dir = open_dir_nofollow(&image_dir).map_err(|e| e.to_string())?;
                for name in &image.big_data_names {
                    if name.contains('/') || !has_entry(&dir, name, FileType::RegularFile) {
                        return Err(format!("its {name:?} file is missing"));
                    }
                }
                Ok(image)
            });
        }

        // Order new layers parent first; a layer joins once its parent is
        // known (shared, not gone) or joined earlier in this scan.
        let mut added: Vec<Layer> = Vec::new();
        let mut added_ids: HashSet<String> = HashSet::new();
        store.with_state(|st| {
            let parent_ok = |p: &str, added_ids: &HashSet<String>| {
                added_ids.contains(p)
                    || (st.layers.get(p).is_some_and(|l| l.shared) && !gone_layers.contains(p))
            };
            loop {
                let ready: Vec<String> = candidates
                    .iter()
                    .filter(|(_, l)| l.parent.as_deref().is_none_or(|p| parent_ok(p, &added_ids)))
                    .map(|(id, _)| id.clone())
                    .collect();
                if ready.is_empty() {
                    break;
                }
                let mut ready: Vec<Layer> = ready
                    .iter()
                    .filter_map(|id| candidates.remove(id))
                    .collect();
                ready.sort_by(|a, b| a.id.cmp(&b.id));
                for l in ready {
                    added_ids.insert(l.id.clone());
                    added.push(l);
                }
            }
        });
        for (id, layer) in &candidates {
            let reason = format!(
                "its parent {} is missing (or the chain loops)",
                layer.parent.as_deref().unwrap_or("?")
            );
            if let Some(entry) = self.layers.get_mut(id) {
                entry.warn_once("layer", id, reason);
            }
        }

        // Images whose whole chain is present.
        let parents: HashMap<&str, Option<&str>> = added
            .iter()
            .map(|l| (l.id.as_str(), l.parent.as_deref()))
            .collect();
        let mut added_images: Vec<Image> = Vec::new();
        let mut pending = candidates.len();
        store.with_state(|st| {
            let parent_of = |id: &str| -> Option<Option<String>> {
                if let Some(p) = parents.get(id) {
                    return Some(p.map(str::to_string));
                }
                st.layers
                    .get(id)
                    .filter(|l| l.shared && !gone_layers.contains(id))
                    .map(|l| l.parent.clone())
            };
            for id in &new_images {
                let Some(entry) = self.images.get_mut(id) else {
                    continue;
                };
                let image = match &entry.outcome {
                    Ok(image) => image.clone(),
                    Err(reason) => {
                        let reason = reason.clone();
                        entry.warn_once("image", id, reason);
                        pending += 1;
                        continue;
                    }
                };
                let mut next = image.layer.clone();
                let mut steps = 0usize;
                let mut missing = None;
                while let Some(layer) = next {
                    steps += 1;
                    if steps > st.layers.len() + parents.len() + 1 {
                        missing = Some("its layer chain loops".to_string());
                        break;
                    }
                    match parent_of(&layer) {
                        Some(p) => next = p,
                        None => {
                            missing = Some(format!("layer {layer} of its chain is not present"));
                            break;
                        }
                    }
                }
                match missing {
                    None => added_images.push(image),
                    Some(reason) => {
                        entry.warn_once("image", id, reason);
                        pending += 1;
                    }
                }
            }
        });

        self.stats = ScanStats {
            layers_on_share: fs_layers.len(),
            images_on_share: fs_images.len(),
            pending,
        };
        let mut events = Vec::new();
        for id in &gone_images {
            events.push(StoreEvent::ImageRemoved { id: id.clone() });
        }
        for id in &gone_layers {
            events.push(StoreEvent::LayerRemoved { id: id.clone() });
        }
        for l in &added {
            events.push(StoreEvent::LayerAdded { id: l.id.clone() });
        }
        for i in &added_images {
            events.push(StoreEvent::ImageAdded {
                id: i.id.clone(),
                names: i.names.clone(),
            });
        }
        // Cached records of what is now in the store are not needed any more.
        for l in &added {
            self.layers.remove(&l.id);
        }
        for i in &added_images {
            self.images.remove(&i.id);
        }
        store.apply_shared(SharedDelta {
            add_layers: added,
            add_images: added_images,
            remove_images: gone_images.into_iter().collect(),
            remove_layers: gone_layers.into_iter().collect(),
        });
        Ok(events)
    }
}
