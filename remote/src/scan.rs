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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// A fingerprint of the `images.json` of each shared image in the store,
    /// so a record rewritten by the writer (`tag`, untag) is read again.
    known_images: HashMap<String, u64>,
    pub(crate) stats: ScanStats,
}

fn fingerprint(stamp: &Stamp) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    stamp.hash(&mut h);
    h.finish()
}

/// The stamp of `path` without following a symlink (None if it is not a file).
fn stamp_of(path: &Path) -> Option<Stamp> {
    let st = rustix::fs::statat(rustix::fs::CWD, path, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then_some(Stamp {
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime: (st.st_mtime, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime, st.st_ctime_nsec as i64),
    })
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
    let path = dir.join(id);
    let entry_dir = open_dir_nofollow(&path).map_err(|e| {
        // O_DIRECTORY|O_NOFOLLOW answers ENOTDIR (not ELOOP) for a symlink.
        let is_symlink = rustix::fs::statat(rustix::fs::CWD, &path, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
        match e.raw_os_error() {
            _ if is_symlink => "is a symlink (never followed)".to_string(),
            Some(n) if n == rustix::io::Errno::NOTDIR.raw_os_error() => "is not a directory".into(),
            _ => format!("cannot open: {e}"),
        }
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

/// [`list_ids`], in ascending order (which it gives; checked, not assumed).
fn sorted_ids(dir: &Path) -> Result<Vec<String>> {
    let mut ids = list_ids(dir)?;
    if !ids.windows(2).all(|w| w[0] < w[1]) {
        ids.sort_unstable();
        ids.dedup();
    }
    Ok(ids)
}

/// The ids of ascending `a` that are also in ascending `b`.
fn intersect_sorted(a: Vec<String>, b: &[String]) -> Vec<String> {
    let mut rest = b.iter().peekable();
    a.into_iter()
        .filter(|id| {
            while rest.next_if(|x| *x < id).is_some() {}
            rest.next_if(|x| *x == id).is_some()
        })
        .collect()
}

/// The ids of the store's shared entries, ascending: `visible` (ascending)
/// merged with those `hidden` by a local entry of the same id (usually none).
fn known_ids<'a, V>(
    visible: impl Iterator<Item = &'a String> + 'a,
    hidden: &'a std::collections::BTreeMap<String, V>,
) -> Box<dyn Iterator<Item = &'a str> + 'a> {
    if hidden.is_empty() {
        return Box::new(visible.map(String::as_str));
    }
    let mut ids: Vec<&'a str> = visible
        .map(String::as_str)
        .chain(hidden.keys().map(String::as_str))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Box::new(ids.into_iter())
}

/// Merge ascending `fs` (on the share) with ascending `known` (in the store):
/// the ids only on the share (new) and only in the store (gone).
fn diff_sorted<'a>(
    fs: &[String],
    known: impl Iterator<Item = &'a str>,
) -> (Vec<String>, BTreeSet<String>) {
    let mut new = Vec::new();
    let mut gone = BTreeSet::new();
    let mut rest = fs.iter().peekable();
    for id in known {
        while let Some(f) = rest.next_if(|f| f.as_str() < id) {
            new.push(f.clone());
        }
        if rest.next_if(|f| f.as_str() == id).is_none() {
            gone.insert(id.to_string());
        }
    }
    new.extend(rest.cloned());
    (new, gone)
}

impl Scanner {
    pub fn new(layout: Layout) -> Scanner {
        Scanner {
            layout,
            layers: HashMap::new(),
            images: HashMap::new(),
            known_images: HashMap::new(),
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
        // Sorted id lists: every set operation below is one merge pass (a
        // rescan of 30,000 layers is then mostly readdir, not hashing).
        let overlay_ids = sorted_ids(&overlay_ro)?;
        let fs_layers = intersect_sorted(sorted_ids(&layers_ro)?, &overlay_ids);
        drop(overlay_ids);
        let fs_images = sorted_ids(&images_ro)?;
        // Forget what left the share.
        self.layers
            .retain(|id, _| fs_layers.binary_search(id).is_ok());
        self.images
            .retain(|id, _| fs_images.binary_search(id).is_ok());

        // What is new and what is gone, against the store (a brief read lock;
        // its maps iterate in id order too).
        // Shared entries hidden by a local one of the same id count as known.
        let (new_layers, new_images, gone_layers, gone_images, hidden_gone) =
            store.with_state(|st| {
                let (new_layers, gone_layers) = diff_sorted(
                    &fs_layers,
                    known_ids(
                        st.layers.iter().filter(|(_, l)| l.shared).map(|(id, _)| id),
                        &st.hidden_layers,
                    ),
                );
                let (new_images, mut gone_images) = diff_sorted(
                    &fs_images,
                    known_ids(
                        st.images.iter().filter(|(_, i)| i.shared).map(|(id, _)| id),
                        &st.hidden_images,
                    ),
                );
                // Gone while hidden: nobody saw them, nobody hears they went.
                let hidden_gone: HashSet<String> = gone_layers
                    .iter()
                    .filter(|id| st.hidden_layers.contains_key(*id))
                    .chain(
                        gone_images
                            .iter()
                            .filter(|id| st.hidden_images.contains_key(*id)),
                    )
                    .cloned()
                    .collect();
                // An image that loses a (visible) shared layer goes too.
                if !gone_layers.is_empty() {
                    for image in st.images.values() {
                        let broken =
                            st.chain(image.layer.as_deref().unwrap_or(""))
                                .is_none_or(|c| {
                                    c.iter().any(|l| l.shared && gone_layers.contains(&l.id))
                                });
                        if broken {
                            gone_images.insert(image.id.clone());
                        }
                    }
                }
                (
                    new_layers,
                    new_images,
                    gone_layers,
                    gone_images,
                    hidden_gone,
                )
            });

        // Read new records without holding any store lock. A valid record
        // leaves the cache for `candidates` (moved, not copied), and goes back
        // to it only if it cannot join the store yet.
        let mut candidates: HashMap<String, Cached<Layer>> =
            HashMap::with_capacity(new_layers.len());
        for id in &new_layers {
            refresh_cached(&mut self.layers, &layers_ro, id, LAYER_JSON, |b| {
                let layer = meta::parse_layer(b, id)?;
                if layer.incomplete {
                    return Err("layer is still incomplete".into());
                }
                // Text from the share is untrusted (parsed once per change).
                let (layer, notes) = meta::check_shared_layer(layer);
                for note in notes {
                    tracing::warn!("share: layer {id}: {note}");
                }
                Ok(layer)
            });
            let overlay = self.overlay_valid(id);
            let entry = self.layers.get_mut(id).expect("just cached");
            match (&entry.outcome, overlay) {
                (Ok(_), Ok(())) => {
                    let entry = self.layers.remove(id).expect("just cached");
                    candidates.insert(id.clone(), entry);
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
                // Names must be references; other text is dropped if bogus.
                let (image, notes) = meta::check_shared_image(image)?;
                for note in notes {
                    tracing::warn!("share: image {id}: {note}");
                }
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
                    || ((st.layers.get(p).is_some_and(|l| l.shared)
                        || st.hidden_layers.contains_key(p))
                        && !gone_layers.contains(p))
            };
            loop {
                let ready: Vec<String> = candidates
                    .iter()
                    .filter(|(_, c)| {
                        let parent = c.outcome.as_ref().ok().and_then(|l| l.parent.as_deref());
                        parent.is_none_or(|p| parent_ok(p, &added_ids))
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                if ready.is_empty() {
                    break;
                }
                let mut ready: Vec<Layer> = ready
                    .iter()
                    .filter_map(|id| candidates.remove(id)?.outcome.ok())
                    .collect();
                ready.sort_by(|a, b| a.id.cmp(&b.id));
                for l in ready {
                    added_ids.insert(l.id.clone());
                    added.push(l);
                }
            }
        });
        let mut pending = candidates.len();
        for (id, mut entry) in candidates {
            let parent = entry.outcome.as_ref().ok().and_then(|l| l.parent.clone());
            let reason = format!(
                "its parent {} is missing (or the chain loops)",
                parent.as_deref().unwrap_or("?")
            );
            entry.warn_once("layer", &id, reason);
            self.layers.insert(id, entry);
        }
        drop(added_ids);

        // Images whose whole chain is present.
        let parents: HashMap<&str, Option<&str>> = added
            .iter()
            .map(|l| (l.id.as_str(), l.parent.as_deref()))
            .collect();
        let mut added_images: Vec<Image> = Vec::new();
        store.with_state(|st| {
            let parent_of = |id: &str| -> Option<Option<String>> {
                if let Some(p) = parents.get(id) {
                    return Some(p.map(str::to_string));
                }
                if gone_layers.contains(id) {
                    return None;
                }
                st.layers
                    .get(id)
                    .filter(|l| l.shared)
                    .or_else(|| st.hidden_layers.get(id))
                    .map(|l| l.parent.clone())
            };
            for id in &new_images {
                let Some(entry) = self.images.get_mut(id) else {
                    continue;
                };
                let top = match &entry.outcome {
                    Ok(image) => image.layer.clone(),
                    Err(reason) => {
                        let reason = reason.clone();
                        entry.warn_once("image", id, reason);
                        pending += 1;
                        continue;
                    }
                };
                let mut next = top;
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
                    None => {
                        // Out of the cache, into the store, for as long as the
                        // image lives: without the spare capacity parsing left.
                        if let Some(cached) = self.images.remove(id) {
                            if let (Ok(mut image), Some(stamp)) = (cached.outcome, cached.stamp) {
                                image.names.shrink_to_fit();
                                image.big_data_names.shrink_to_fit();
                                self.known_images.insert(id.clone(), fingerprint(&stamp));
                                added_images.push(image);
                            }
                        }
                    }
                    Some(reason) => {
                        entry.warn_once("image", id, reason);
                        pending += 1;
                    }
                }
            }
        });

        // Known images whose record the writer rewrote (names changed).
        for id in &gone_images {
            self.known_images.remove(id);
        }
        let mut renamed: Vec<(String, Vec<String>)> = Vec::new();
        for (id, print) in self.known_images.iter_mut() {
            let path = images_ro.join(id).join(IMAGES_JSON);
            let Some(stamp) = stamp_of(&path) else {
                continue; // going away: the next scan removes it
            };
            if fingerprint(&stamp) == *print {
                continue;
            }
            *print = fingerprint(&stamp);
            let parsed = read_record(&images_ro, id, IMAGES_JSON, None)
                .and_then(|r| r.ok_or_else(|| "unchanged".to_string()))
                .and_then(|(_, bytes)| meta::parse_image(&bytes, id))
                .and_then(meta::check_shared_image);
            match parsed {
                Ok((image, _)) => renamed.push((id.clone(), image.names)),
                Err(e) => tracing::warn!(
                    "share: image {id}: its record changed and is invalid \
                     (keeping its names as they were): {e}"
                ),
            }
        }
        // Only those whose names really differ.
        let renamed_hidden: HashSet<String> = store.with_state(|st| {
            renamed.retain(|(id, names)| {
                st.images
                    .get(id)
                    .filter(|i| i.shared)
                    .or_else(|| st.hidden_images.get(id))
                    .is_some_and(|i| i.names != *names)
            });
            renamed
                .iter()
                .filter(|(id, _)| st.hidden_images.contains_key(id))
                .map(|(id, _)| id.clone())
                .collect()
        });

        self.stats = ScanStats {
            layers_on_share: fs_layers.len(),
            images_on_share: fs_images.len(),
            pending,
        };
        // What a local entry of the same id hides is no event either.
        let (hidden_layers, hidden_images): (HashSet<String>, HashSet<String>) =
            store.with_state(|st| {
                (
                    added
                        .iter()
                        .filter(|l| st.layers.get(&l.id).is_some_and(|x| !x.shared))
                        .map(|l| l.id.clone())
                        .collect(),
                    added_images
                        .iter()
                        .filter(|i| st.images.get(&i.id).is_some_and(|x| !x.shared))
                        .map(|i| i.id.clone())
                        .collect(),
                )
            });
        let mut events = Vec::new();
        for id in gone_images.iter().filter(|id| !hidden_gone.contains(*id)) {
            events.push(StoreEvent::ImageRemoved { id: id.clone() });
        }
        for id in gone_layers.iter().filter(|id| !hidden_gone.contains(*id)) {
            events.push(StoreEvent::LayerRemoved { id: id.clone() });
        }
        for l in added.iter().filter(|l| !hidden_layers.contains(&l.id)) {
            events.push(StoreEvent::LayerAdded { id: l.id.clone() });
        }
        for i in added_images
            .iter()
            .filter(|i| !hidden_images.contains(&i.id))
        {
            events.push(StoreEvent::ImageAdded {
                id: i.id.clone(),
                names: i.names.clone(),
            });
        }
        for (id, names) in renamed
            .iter()
            .filter(|(id, _)| !renamed_hidden.contains(id))
        {
            events.push(StoreEvent::ImageUpdated {
                id: id.clone(),
                names: names.clone(),
            });
        }
        drop(parents);
        // A big first scan grows the caches to every image on the share; only
        // the few pending entries stay, so give the rest back (10,000 images
        // would keep ~5 MB of empty buckets otherwise).
        self.layers.shrink_to_fit();
        self.images.shrink_to_fit();
        store.apply_shared(SharedDelta {
            add_layers: added,
            add_images: added_images,
            remove_images: gone_images.into_iter().collect(),
            remove_layers: gone_layers.into_iter().collect(),
            rename_images: renamed,
        });
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use storectl_storage::{Role, RootConfig, StoreOptions};

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn merges_of_sorted_ids() {
        let fs = ids(&["a", "c", "d", "f"]);
        let (new, gone) = diff_sorted(&fs, ["b", "c", "f", "g"].into_iter());
        assert_eq!(new, ids(&["a", "d"]));
        assert_eq!(gone.into_iter().collect::<Vec<_>>(), ids(&["b", "g"]));
        let (new, gone) = diff_sorted(&fs, std::iter::empty());
        assert_eq!((new, gone.len()), (fs.clone(), 0));
        let (new, gone) = diff_sorted(&[], ["x"].into_iter());
        assert_eq!((new.len(), gone.len()), (0, 1));
        assert_eq!(
            intersect_sorted(fs.clone(), &ids(&["b", "c", "f", "z"])),
            ids(&["c", "f"])
        );
        assert!(intersect_sorted(fs, &[]).is_empty());
    }

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn put_layer(share: &Path, id: &str, parent: Option<&str>) {
        let o = share.join("overlay").join(id);
        fs::create_dir_all(o.join("diff")).unwrap();
        fs::write(o.join("link"), "ABCDEFGHIJKLMNOPQRSTUVWXYZ").unwrap();
        let r = share.join("overlay-layers").join(id);
        fs::create_dir_all(&r).unwrap();
        let parent = parent.map_or(String::new(), |p| format!(r#","parent":"{p}""#));
        fs::write(r.join(LAYER_JSON), format!(r#"{{"id":"{id}"{parent}}}"#)).unwrap();
    }

    #[test]
    fn pending_entries_wait_for_their_chain_then_join() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        fs::create_dir(&share).unwrap();
        crate::share::init(
            &dir.path().join("w"),
            &share,
            Role::Writer,
            RootConfig::default(),
        )
        .unwrap();
        let root = dir.path().join("r");
        crate::share::init(&root, &share, Role::Reader, RootConfig::default()).unwrap();
        let store = Store::open(StoreOptions::new(&root)).unwrap();
        let mut scanner = Scanner::new(store.layout().clone());
        let (a, b, img) = (hex('a'), hex('b'), hex('c'));
        // The child layer and the image arrive before the base layer.
        put_layer(&share, &b, Some(&a));
        let d = share.join("overlay-images").join(&img);
        fs::create_dir(&d).unwrap();
        fs::write(
            d.join(IMAGES_JSON),
            format!(r#"{{"id":"{img}","layer":"{b}"}}"#),
        )
        .unwrap();
        for _ in 0..2 {
            assert_eq!(scanner.scan(&store).unwrap(), vec![]);
            assert_eq!(scanner.stats.pending, 2);
        }
        put_layer(&share, &a, None);
        assert_eq!(
            scanner.scan(&store).unwrap(),
            vec![
                StoreEvent::LayerAdded { id: a.clone() },
                StoreEvent::LayerAdded { id: b.clone() },
                StoreEvent::ImageAdded {
                    id: img.clone(),
                    names: vec![]
                },
            ]
        );
        assert_eq!(scanner.stats.pending, 0);
        assert!(scanner.layers.is_empty() && scanner.images.is_empty());
        assert_eq!(
            store.with_state(|s| (s.layers.len(), s.images.len())),
            (2, 1)
        );
        assert_eq!(scanner.scan(&store).unwrap(), vec![]);
        // The base goes: the child and the image go with it.
        fs::remove_dir_all(share.join("overlay-layers").join(&a)).unwrap();
        let events = scanner.scan(&store).unwrap();
        assert_eq!(events[0], StoreEvent::ImageRemoved { id: img });
        assert!(events.contains(&StoreEvent::LayerRemoved { id: a }));
    }
}
