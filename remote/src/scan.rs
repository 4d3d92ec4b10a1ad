//! Scanning the share: which shared layers and images exist, which of the new
//! ones are valid, and what the in-memory store must add and drop.
//!
//! The ids come from a listing of the three directories ([`Scanner::scan`])
//! or from the share's index (`Scanner::scan_index`, checked against the
//! directories first). Only the three `RO` directories are read. Only names of exactly 64
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
use storectl_storage::{Layout, SharedDelta, Store, IMAGES_JSON, LAYER_JSON};

use crate::error::{IoContext, Result};
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
    /// What the last full scan found besides ids ([`Baseline`]).
    pub(crate) baseline: Baseline,
}

/// A stable fingerprint of a record's stamp (FNV-1a over its fields): kept
/// in a reader's saved view, so it must not change between builds.
fn fingerprint(stamp: &Stamp) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for word in [
        stamp.ino,
        stamp.size,
        stamp.mtime.0 as u64,
        stamp.mtime.1 as u64,
        stamp.ctime.0 as u64,
        stamp.ctime.1 as u64,
    ] {
        for byte in word.to_le_bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // 0 means "unknown" in a saved view.
    h.max(1)
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

/// The share's three directories, in the order of every per-directory array
/// here: `overlay/`, `overlay-layers/`, `overlay-images/`.
pub const SHARE_DIRS: [&str; 3] = crate::share::SHARE_DIRS;

/// For each share directory: how many subdirectories it had at the last full
/// scan that are neither ids nor dot-prefixed (`l/`, a stray directory), or
/// `None` when its link count does not count subdirectories (btrfs, ext4
/// past 65,000) or changed while it was listed.
///
/// A directory's link count is 2 + its subdirectories on the filesystems
/// NFS servers export (ext4, xfs), and one `fstat` reads it. When a reader
/// updates its view from the index, or trusts it because `generation` is
/// unchanged, the count must cover every id the view keeps plus this
/// baseline; a directory that vanished without the index saying so (a
/// hand-removed image, an index that keeps a removed id) makes it fall
/// short, and the reader rescans the directories. Staging and trash
/// directories only add, so a busy writer does not trigger it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Baseline(pub [Option<u64>; 3]);

/// Does every share directory's link count (`nlink`) cover `ids` subdirectories
/// plus its baseline? Pure. `Err` says which does not, for the warning.
pub fn links_cover(
    nlink: [u64; 3],
    ids: [u64; 3],
    baseline: Baseline,
) -> std::result::Result<(), String> {
    for d in 0..3 {
        let Some(other) = baseline.0[d] else { continue };
        if nlink[d] < 2 {
            continue; // the filesystem stopped counting (ext4 past 65,000)
        }
        let subdirs = nlink[d] - 2;
        if subdirs < ids[d].saturating_add(other) {
            return Err(format!(
                "{}/ on the share has {subdirs} subdirectories, fewer than the {} ids this \
                 reader holds and the {other} other directories it had",
                SHARE_DIRS[d], ids[d]
            ));
        }
    }
    Ok(())
}

/// Open share directory `name` (never through a symlink) and read its link
/// count. Opened rather than `stat`ed: NFS revalidates a directory's
/// attributes on open (close-to-open), not on a `stat` within its cache time.
pub(crate) fn open_share_dir(share: &Path, name: &str) -> std::io::Result<(OwnedFd, u64)> {
    let fd = open_dir_nofollow(&share.join(name))?;
    let st = rustix::fs::fstat(&fd)?;
    Ok((fd, st.st_nlink as u64))
}

/// The share's three directories ([`SHARE_DIRS`]), open, with their link counts.
#[derive(Debug)]
pub(crate) struct ShareDirs {
    pub fds: [OwnedFd; 3],
    pub nlink: [u64; 3],
}

impl ShareDirs {
    /// Open them; `Err` names the one that could not be opened.
    pub fn open(share: &Path) -> std::result::Result<ShareDirs, (usize, std::io::Error)> {
        let mut nlink = [0u64; 3];
        let mut open = |d: usize| {
            open_share_dir(share, SHARE_DIRS[d]).map(|(fd, n)| {
                nlink[d] = n;
                fd
            })
        };
        let fds = [
            open(0).map_err(|e| (0, e))?,
            open(1).map_err(|e| (1, e))?,
            open(2).map_err(|e| (2, e))?,
        ];
        Ok(ShareDirs { fds, nlink })
    }
}

/// One share directory as a full scan lists it.
struct Listing {
    /// Names of exactly 64 lowercase hex, ascending (any file type: the
    /// validation says what is wrong with a non-directory).
    ids: Vec<String>,
    /// Its baseline ([`Baseline`]).
    other_dirs: Option<u64>,
}

/// List share directory `name`: its ids, and how many other non-dot
/// subdirectories it has when its link count accounts for every
/// subdirectory (read before and after the listing, which must agree).
fn list_share_dir(share: &Path, name: &str) -> Result<Listing> {
    let path = share.join(name);
    let (fd, before) = open_share_dir(share, name).at(&path)?;
    let mut dir = rustix::fs::Dir::read_from(&fd)
        .map_err(std::io::Error::from)
        .at(&path)?;
    let mut ids = Vec::new();
    let (mut id_dirs, mut dot_dirs, mut other_dirs) = (0u64, 0u64, 0u64);
    for entry in dir.by_ref() {
        let entry = entry.map_err(std::io::Error::from).at(&path)?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                std::str::from_utf8(name).is_ok_and(|n| has_entry(&fd, n, FileType::Directory))
            }
            _ => false,
        };
        let text = std::str::from_utf8(name).ok();
        match text {
            Some(id) if storectl_storage::digest::is_hex64(id) => {
                ids.push(id.to_string());
                id_dirs += u64::from(is_dir);
            }
            _ if name.starts_with(b".") => dot_dirs += u64::from(is_dir),
            _ => other_dirs += u64::from(is_dir),
        }
    }
    let after = rustix::fs::fstat(&fd)
        .map_err(std::io::Error::from)
        .at(&path)?
        .st_nlink as u64;
    ids.sort_unstable();
    ids.dedup();
    let counted = before == after && before >= 2 && before - 2 == id_dirs + dot_dirs + other_dirs;
    Ok(Listing {
        ids,
        other_dirs: counted.then_some(other_dirs),
    })
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
fn known_ids<'a, V: storectl_storage::Record>(
    visible: impl Iterator<Item = &'a String> + 'a,
    hidden: &'a storectl_storage::Records<V>,
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
            baseline: Baseline::default(),
        }
    }

    /// The share this reader reads.
    fn share(&self) -> Result<&Path> {
        self.layout
            .config
            .shared
            .as_deref()
            .ok_or_else(|| crate::Error::NotShared {
                root: self.layout.root.clone(),
            })
    }

    /// The fingerprint of shared image `id`'s `images.json` when it joined
    /// (0 = unknown), for a saved view.
    pub(crate) fn fingerprint_of(&self, id: &str) -> u64 {
        self.known_images.get(id).copied().unwrap_or(0)
    }

    /// Images that joined the store from a saved view, with the fingerprints
    /// their records had (a full scan re-reads one whose record changed).
    pub(crate) fn remember_images<'a>(&mut self, images: impl Iterator<Item = (&'a str, u64)>) {
        for (id, fp) in images {
            self.known_images.insert(id.to_string(), fp);
        }
    }

    /// Update the store from the share's index: the ids the store lacks are
    /// validated from their directories as in a full scan, the ids it has
    /// and the index lacks go (a writer's removal leaves the index before
    /// the directories), and only images whose names the index gives
    /// differently have their record looked at. Before anything changes,
    /// the index is checked against the directories (`dirs`): a new id's
    /// directories must be there, and the directories' link counts must
    /// cover every id the index lists ([`links_cover`]: an id it keeps whose
    /// directory is gone makes them fall short). `Ok(Err)` says how they
    /// disagree (nothing was changed: list the directories).
    pub(crate) fn scan_index(
        &mut self,
        store: &Store,
        index: &crate::index::ShareIndex,
        dirs: &ShareDirs,
    ) -> Result<std::result::Result<Vec<StoreEvent>, String>> {
        let share = self.share()?.to_path_buf();
        let index_layers: Vec<String> = index.layers.clone();
        let index_images: Vec<String> = index.images.iter().map(|(id, _)| id.clone()).collect();
        let (new_layers, gone_layers, new_images, gone_images, renamed) = store.with_state(|st| {
            let (new_layers, gone_layers) = diff_sorted(
                &index_layers,
                known_ids(st.layers.shared_keys(), &st.hidden_layers),
            );
            let (new_images, gone_images) = diff_sorted(
                &index_images,
                known_ids(st.images.shared_keys(), &st.hidden_images),
            );
            let renamed: Vec<String> = index
                .images
                .iter()
                .filter(|(id, names)| {
                    st.images
                        .get(id)
                        .filter(|i| i.shared)
                        .or_else(|| st.hidden_images.get(id))
                        .is_some_and(|i| i.names != *names)
                })
                .map(|(id, _)| id.clone())
                .collect();
            (new_layers, gone_layers, new_images, gone_images, renamed)
        });
        // Images the index dropped go, whether or not their directories are
        // still there (a removal leaves the index first). Ids it lists must
        // have their directories.
        drop(gone_images);
        let kind = |d: usize, id: &str| {
            rustix::fs::statat(&dirs.fds[d], id, AtFlags::SYMLINK_NOFOLLOW)
                .ok()
                .map(|st| FileType::from_raw_mode(st.st_mode))
        };
        // The index lists only the layers of its images: a layer no image
        // uses (waiting out the share's grace period after an `rmi`,
        // published ahead of its image) is still on the share, and a local
        // image of this host may stand on it. Such a layer stays while its
        // directories do (two `stat`s each), as a full scan would keep it.
        let mut index_layers = index_layers;
        let kept: Vec<String> = gone_layers
            .into_iter()
            .filter(|id| {
                kind(0, id) == Some(FileType::Directory) && kind(1, id) == Some(FileType::Directory)
            })
            .collect();
        if !kept.is_empty() {
            index_layers.extend(kept);
            index_layers.sort_unstable();
        }
        for id in &new_images {
            if kind(2, id) != Some(FileType::Directory) {
                return Ok(Err(format!(
                    "it lists image {id} but overlay-images/{id} is not a directory"
                )));
            }
        }
        for id in &new_layers {
            if kind(0, id) != Some(FileType::Directory) || kind(1, id) != Some(FileType::Directory)
            {
                return Ok(Err(format!(
                    "it lists layer {id} but overlay/{id} or overlay-layers/{id} is not a directory"
                )));
            }
        }
        let counts = [
            index_layers.len() as u64,
            index_layers.len() as u64,
            index_images.len() as u64,
        ];
        if links_cover(dirs.nlink, counts, self.baseline).is_err() {
            // Counted before the index was read: what it added since is not
            // in them. Count again.
            let fresh = ShareDirs::open(&share).map_err(|(d, e)| crate::Error::Io {
                path: share.join(SHARE_DIRS[d]),
                source: e,
            })?;
            if let Err(reason) = links_cover(fresh.nlink, counts, self.baseline) {
                return Ok(Err(reason));
            }
        }
        drop((new_layers, new_images));
        self.scan_ids(store, index_layers, index_images, Some(&renamed))
            .map(Ok)
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

    /// A full scan: list the share's three directories, compare with the
    /// store's shared entries, apply the difference to the store, and return
    /// it as events. Records are read only for ids the store does not have;
    /// every known image's `images.json` is `stat`ed for a changed name.
    pub fn scan(&mut self, store: &Store) -> Result<Vec<StoreEvent>> {
        let share = self.share()?.to_path_buf();
        let overlay = list_share_dir(&share, SHARE_DIRS[0])?;
        let records = list_share_dir(&share, SHARE_DIRS[1])?;
        let images = list_share_dir(&share, SHARE_DIRS[2])?;
        let baseline = Baseline([overlay.other_dirs, records.other_dirs, images.other_dirs]);
        // Sorted id lists: every set operation below is one merge pass (a
        // rescan of 30,000 layers is then mostly readdir, not hashing).
        let fs_layers = intersect_sorted(records.ids, &overlay.ids);
        drop(overlay.ids);
        let events = self.scan_ids(store, fs_layers, images.ids, None)?;
        self.baseline = baseline;
        Ok(events)
    }

    /// The scan of `fs_layers` and `fs_images` (ascending: what is on the
    /// share, from its directories or its index): ids the store lacks are
    /// read and validated, ids it has and these lack are removed. `renamed`
    /// says which known images may have new names (`None`: `stat` every
    /// known image's record).
    pub(crate) fn scan_ids(
        &mut self,
        store: &Store,
        fs_layers: Vec<String>,
        fs_images: Vec<String>,
        renamed: Option<&[String]>,
    ) -> Result<Vec<StoreEvent>> {
        let layers_ro = self.layout.layers_ro();
        let images_ro = self.layout.images_ro();
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
                    known_ids(st.layers.shared_keys(), &st.hidden_layers),
                );
                let (new_images, mut gone_images) = diff_sorted(
                    &fs_images,
                    known_ids(st.images.shared_keys(), &st.hidden_images),
                );
                // Gone while hidden: nobody saw them, nobody hears they went.
                let hidden_gone: HashSet<String> = gone_layers
                    .iter()
                    .filter(|id| st.hidden_layers.contains_key(id))
                    .chain(
                        gone_images
                            .iter()
                            .filter(|id| st.hidden_images.contains_key(id)),
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
        let candidates: Vec<(&String, &mut u64)> = match renamed {
            None => self.known_images.iter_mut().collect(),
            Some(ids) => {
                let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
                self.known_images
                    .iter_mut()
                    .filter(|(id, _)| ids.contains(id.as_str()))
                    .collect()
            }
        };
        let mut renamed: Vec<(String, Vec<String>)> = Vec::new();
        for (id, print) in candidates {
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
            links_in_step: false,
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
