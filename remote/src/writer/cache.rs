//! The writer's upkeep of containers/storage's index on its share (format
//! and contract: [`storectl_storage::csindex`], docs/sharing.md).
//!
//! [`IndexCache`] keeps each shared record's line as it is in the files on
//! the share. A sync diffs the in-memory [`State`] against it by id (a
//! merge walk of two sorted key lists: no record is compared or
//! serialized unless it is new or marked changed), serializes only new and
//! changed records, and either appends the new ones to the files in place
//! (a change that only adds records: [`append_lines`]) or renders each file
//! that changed by splicing the kept lines' bytes, in id order.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use storectl_storage::csindex::{self, images_index, layers_index, Line, Stamp};
use storectl_storage::fsutil::{self, write_atomic};
use storectl_storage::{Change, Image, IoContext, Layer, Result, State};

use super::lines::IdLines;

/// What the writer knows of the index on its share.
#[derive(Debug, Default)]
pub(super) struct IndexCache {
    /// False until [`IndexCache::init`]: nothing is known.
    ready: bool,
    layers: IdLines,
    images: IdLines,
    /// Images whose record changed in place (names): re-serialized at the
    /// next sync.
    dirty_images: BTreeSet<String>,
    /// Images that had a name left out as another's at the last sync.
    had_dup_names: BTreeSet<String>,
    /// The sizes of the two files on the share when they hold exactly the
    /// lines of `layers` / `images` (rendered in id order, or in another
    /// order after appends: the same size); `None` = unknown (rewrite both).
    on_disk: Option<(u64, u64)>,
    /// New records are never appended in place (the share's
    /// `index_appends` is false): every change rewrites by rename.
    no_appends: bool,
}

/// Renders one index file's bytes (on the thread that writes it).
type Render<'a> = Box<dyn Fn() -> Vec<u8> + Sync + 'a>;

/// What a sync wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Synced {
    pub layers_written: bool,
    pub images_written: bool,
    pub layers_size: u64,
    pub images_size: u64,
    /// Records serialized (new or changed); every other line was spliced.
    pub serialized: usize,
    /// The new records were appended to the files in place (no rewrite).
    pub appended: bool,
}

/// Every file of the index, relative to the share.
pub(super) const FILES: [&str; 6] = [
    "overlay-layers/layers.json",
    "overlay-images/images.json",
    csindex::STAMP,
    csindex::STORAGE_LOCK,
    csindex::LAYERS_LOCK,
    csindex::IMAGES_LOCK,
];

/// The shared images' skeletons (ids, names and top layers).
fn shared_images(state: &State) -> impl Iterator<Item = (&String, &Image)> {
    state.images.skeleton_iter().filter(|(_, i)| i.shared)
}

/// The shared layers of `image`'s chain (none when it is broken).
fn chain_of<'a>(state: &'a State, image: &Image) -> Vec<&'a Layer> {
    let top = image.layer.as_deref().unwrap_or_default();
    let mut chain = state.chain(top).unwrap_or_default();
    chain.retain(|l| l.shared);
    chain
}

impl IndexCache {
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// A cache that knows nothing yet; `appends`: whether a change that
    /// only adds records may append them in place.
    pub fn new(appends: bool) -> IndexCache {
        IndexCache {
            no_appends: !appends,
            ..IndexCache::default()
        }
    }

    /// Forget everything (another process changed the share).
    pub fn invalidate(&mut self) {
        *self = IndexCache::new(!self.no_appends);
    }

    /// An image's record changed in place: re-serialize it at the next sync.
    pub fn mark_image(&mut self, id: &str) {
        if self.ready {
            self.dirty_images.insert(id.to_string());
        }
    }

    /// Take `state` as what the index on `share` holds when the stamp
    /// vouches for `generation` and the files have the sizes its render
    /// would have; otherwise the next sync rewrites both files. Serializes
    /// every shared record (once per process, or after another process
    /// changed the share). Returns whether the index on the share is current.
    pub fn init(&mut self, share: &Path, state: &State, generation: Option<&str>) -> bool {
        let dups = csindex::duplicate_names(shared_images(state).map(|(_, i)| i));
        let none = BTreeSet::new();
        // The layers of the shared images' chains: a layer joins the index
        // with the first image that uses it.
        let mut listed: BTreeMap<&String, &Layer> = BTreeMap::new();
        for (_, image) in shared_images(state) {
            for l in chain_of(state, image) {
                listed.entry(&l.id).or_insert(l);
            }
        }
        self.layers = listed
            .into_iter()
            .map(|(id, l)| (id.clone(), Line::from(csindex::layer_line(l))))
            .collect();
        self.images = shared_images(state)
            .map(|(id, _)| (id, &state.images[id]))
            .map(|(id, i)| {
                let drop = dups.get(id.as_str()).unwrap_or(&none);
                (id.clone(), Line::from(csindex::image_line(i, drop)))
            })
            .collect();
        self.had_dup_names = dups.keys().map(|id| id.to_string()).collect();
        self.dirty_images.clear();
        self.ready = true;
        let sizes = (
            rendered_len(self.layers.values()),
            rendered_len(self.images.values()),
        );
        let stamp = read_stamp(share);
        let on_disk = (
            file_size(&layers_index(share)),
            file_size(&images_index(share)),
        );
        // Lock files must be there (a read-only containers/storage store
        // cannot create them) and be files.
        let locks_ok = [
            csindex::STORAGE_LOCK,
            csindex::LAYERS_LOCK,
            csindex::IMAGES_LOCK,
        ]
        .iter()
        .all(|l| file_size(&share.join(l)).is_some());
        let current = locks_ok
            && match (stamp, generation) {
                (Some(stamp), Some(generation)) => {
                    stamp.is_current(generation, sizes.0, sizes.1)
                        && on_disk == (Some(sizes.0), Some(sizes.1))
                }
                _ => false,
            };
        self.on_disk = current.then_some(sizes);
        current
    }

    /// Take the index files as read when the store's state came from them
    /// (`storectl_storage`'s `index_state`): each record's line as it is in the file,
    /// by id, and the files' sizes. Nothing is serialized. When the lines,
    /// rendered, are not exactly the files (another program's layout), the
    /// next sync rewrites both.
    pub fn seed(
        &mut self,
        layers: Vec<(Option<String>, Line)>,
        images: Vec<(Option<String>, Line)>,
        sizes: (u64, u64),
    ) {
        // The lines as they are, no id copied (`IdLines`).
        self.layers = IdLines::from_sorted(layers);
        self.images = IdLines::from_sorted(images);
        // The index had no name on two images (else it was not used).
        self.had_dup_names.clear();
        self.dirty_images.clear();
        self.ready = true;
        let rendered = (
            rendered_len(self.layers.values()),
            rendered_len(self.images.values()),
        );
        self.on_disk = (rendered == sizes).then_some(sizes);
    }

    /// Bring the index files on `share` in line with `state` (which the
    /// per-id directories already hold): write `layers.json` and
    /// `images.json` where they changed, in the contract's order — new
    /// layers before the images that use them, images gone before their
    /// layers — each followed by its lock file's change token. The stamp and
    /// `generation` are the caller's ([`write_stamp`]). After a
    /// [`Change::LayerAdded`] with the files as this cache knows them and no
    /// image marked, nothing is compared: the index lists a layer only once
    /// an image uses it.
    pub fn sync(&mut self, share: &Path, state: &State, change: Change) -> Result<Synced> {
        debug_assert!(self.ready);
        if let (Change::LayerAdded, Some((layers_size, images_size)), true) =
            (change, self.on_disk, self.dirty_images.is_empty())
        {
            return Ok(Synced {
                layers_size,
                images_size,
                ..Synced::default()
            });
        }
        // The diff, under the caller's state guard: ids only. After an
        // image's publish, with the files as this cache knows them, that
        // image (a shared one not listed yet) is the whole of it.
        let mut gone_layers = Vec::new();
        let mut add_images = Vec::new();
        let mut gone_images = Vec::new();
        match (change, self.on_disk) {
            (Change::ImageAdded(id), Some(_)) if !self.images.contains_key(id) => {
                if state.images.skeleton(id).is_some_and(|i| i.shared) {
                    add_images.push(id.to_string());
                }
            }
            _ => {
                merge_walk(
                    self.layers.keys(),
                    state.layers.shared_keys().map(String::as_str),
                    |id| gone_layers.push(id.to_string()),
                    |_| {},
                );
                merge_walk(
                    self.images.keys(),
                    state.images.shared_keys().map(String::as_str),
                    |id| gone_images.push(id.to_string()),
                    |id| add_images.push(id.to_string()),
                );
            }
        }
        let mut redo: BTreeSet<String> = std::mem::take(&mut self.dirty_images);
        // Names held twice can change only when images do.
        let images_moved = !(add_images.is_empty() && gone_images.is_empty() && redo.is_empty());
        // Layers join with the first image that uses them: a layer published
        // for an image still on its way is not listed yet.
        let mut add_layers: BTreeSet<String> = BTreeSet::new();
        for id in &add_images {
            for l in chain_of(state, &state.images[id]) {
                if !self.layers.contains_key(&l.id) {
                    add_layers.insert(l.id.clone());
                }
            }
        }
        let dups = if !images_moved {
            BTreeMap::new()
        } else if self.had_dup_names.is_empty() {
            // No name was on two images at the last sync: one can be now
            // only among the images added or changed since and those that
            // have one of their names (found without reading every record).
            let names: BTreeSet<&str> = add_images
                .iter()
                .chain(&redo)
                .filter_map(|id| state.images.skeleton(id))
                .filter(|i| i.shared)
                .flat_map(|i| i.names.iter().map(String::as_str))
                .collect();
            let names: Vec<&str> = names.into_iter().collect();
            let holders = state.images_named(&names);
            csindex::duplicate_names(holders.into_iter().filter(|i| i.shared))
        } else {
            csindex::duplicate_names(shared_images(state).map(|(_, i)| i))
        };
        if images_moved {
            redo.extend(add_images.iter().cloned());
            redo.extend(self.had_dup_names.iter().cloned());
            redo.extend(dups.keys().map(|id| id.to_string()));
            self.had_dup_names = dups.keys().map(|id| id.to_string()).collect();
        }
        redo.retain(|id| state.images.get(id).is_some_and(|i| i.shared));

        // New lines: only what is new or changed is serialized.
        let mut out = Synced::default();
        let none = BTreeSet::new();
        let mut changed_images = !gone_images.is_empty();
        // A record already in the file that changes (names) means a rewrite.
        let mut changed_in_place = false;
        for id in &redo {
            let image = &state.images[id];
            let line = csindex::image_line(image, dups.get(id.as_str()).unwrap_or(&none));
            let line = Line::from(line);
            out.serialized += 1;
            if self.images.get(id) != Some(&line) {
                let new = self.images.insert(id.clone(), line).is_none();
                changed_in_place |= !new;
                changed_images = true;
            }
        }
        for id in &gone_images {
            self.images.remove(id);
        }
        out.serialized += add_layers.len();
        for id in &add_layers {
            let line = csindex::layer_line(&state.layers[id]);
            self.layers.insert(id.clone(), Line::from(line));
        }
        let removed: BTreeMap<String, Line> = gone_layers
            .iter()
            .filter_map(|id| self.layers.remove(id).map(|l| (id.clone(), l)))
            .collect();

        let unknown = self.on_disk.is_none();
        let (mut layers_size, mut images_size) = self.on_disk.unwrap_or((0, 0));
        // Only records added (a load, a pull): appended to the files in
        // place, layers first, each under its lock — O(what was added),
        // whatever the share's size. Anything else, or a file that is not
        // as this cache knows it, and the files are rewritten whole below.
        let (mut layers_done, mut images_done) = (false, false);
        if !(unknown || self.no_appends)
            && removed.is_empty()
            && gone_images.is_empty()
            && !changed_in_place
        {
            let added_images: Vec<&[u8]> = add_images
                .iter()
                .filter_map(|id| self.images.get(id).map(|l| &l[..]))
                .collect();
            let added_layers: Vec<&[u8]> = add_layers
                .iter()
                .map(|id| &self.layers[id.as_str()][..])
                .collect();
            layers_done = added_layers.is_empty();
            if !layers_done {
                if let Some(size) =
                    append_lines(share, csindex::LAYERS_INDEX, layers_size, &added_layers)
                {
                    (layers_size, layers_done) = (size, true);
                    out.layers_written = true;
                }
            }
            images_done = layers_done && added_images.is_empty();
            if layers_done && !images_done {
                if let Some(size) =
                    append_lines(share, csindex::IMAGES_INDEX, images_size, &added_images)
                {
                    (images_size, images_done) = (size, true);
                    out.images_written = true;
                }
            }
            out.appended = layers_done && images_done && (out.layers_written || out.images_written);
        }
        // The files to replace, in the contract's order: 1. new layers,
        // before any image uses them (the removed ones stay listed until no
        // image needs them); 2. images; 3. layers gone, after the images
        // that used them.
        let mut writes: Vec<(&'static str, Render<'_>)> = Vec::new();
        if !layers_done && (!add_layers.is_empty() || (unknown && removed.is_empty())) {
            let (layers, removed) = (&self.layers, &removed);
            writes.push((
                csindex::LAYERS_INDEX,
                Box::new(move || csindex::render(merge_lines(layers, removed))),
            ));
        }
        if !images_done && (changed_images || unknown) {
            let images = &self.images;
            writes.push((
                csindex::IMAGES_INDEX,
                Box::new(move || csindex::render(images.values().map(|l| &l[..]))),
            ));
        }
        if !removed.is_empty() {
            let layers = &self.layers;
            writes.push((
                csindex::LAYERS_INDEX,
                Box::new(move || csindex::render(layers.values().map(|l| &l[..]))),
            ));
        }
        // Each file is rendered, written and synced under a temporary name
        // at the same time as the others (two 13 MB files at 10,000 images:
        // their syncs overlap), then renamed into place one by one, in order.
        let staged: Vec<Result<Staged>> = if writes.len() == 1 {
            vec![Staged::write(share, writes[0].0, &writes[0].1())]
        } else {
            std::thread::scope(|scope| {
                let running: Vec<_> = writes
                    .iter()
                    .map(|(name, render)| {
                        scope.spawn(move || Staged::write(share, name, &render()))
                    })
                    .collect();
                running
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        };
        let staged: Vec<Staged> = staged.into_iter().collect::<Result<_>>()?;
        for file in staged {
            let size = file.size;
            match file.name {
                csindex::LAYERS_INDEX => {
                    layers_size = size;
                    out.layers_written = true;
                }
                _ => {
                    images_size = size;
                    out.images_written = true;
                }
            }
            file.commit(share)?;
        }
        self.on_disk = Some((layers_size, images_size));
        out.layers_size = layers_size;
        out.images_size = images_size;
        Ok(out)
    }
}

/// Call `only_old` for keys only in `old`, `only_new` for keys only in
/// `new`; both sorted ascending.
fn merge_walk<'a>(
    old: impl Iterator<Item = &'a str>,
    new: impl Iterator<Item = &'a str>,
    mut only_old: impl FnMut(&'a str),
    mut only_new: impl FnMut(&'a str),
) {
    let mut old = old.peekable();
    let mut new = new.peekable();
    loop {
        match (old.peek(), new.peek()) {
            (Some(o), Some(n)) => match o.cmp(n) {
                std::cmp::Ordering::Less => only_old(old.next().unwrap_or_else(|| unreachable!())),
                std::cmp::Ordering::Greater => {
                    only_new(new.next().unwrap_or_else(|| unreachable!()))
                }
                std::cmp::Ordering::Equal => {
                    old.next();
                    new.next();
                }
            },
            (Some(_), None) => only_old(old.next().unwrap_or_else(|| unreachable!())),
            (None, Some(_)) => only_new(new.next().unwrap_or_else(|| unreachable!())),
            (None, None) => return,
        }
    }
}

/// The lines of `a` and `b` (disjoint) in id order.
fn merge_lines<'a>(
    a: &'a IdLines,
    b: &'a BTreeMap<String, Line>,
) -> impl Iterator<Item = &'a [u8]> {
    let sorted = b.is_empty();
    let b = b.iter().map(|(id, line)| (id.as_str(), line));
    let mut all: Vec<(&str, &Line)> = a.iter().chain(b).collect();
    if !sorted {
        all.sort_by(|x, y| x.0.cmp(y.0));
    }
    all.into_iter().map(|(_, l)| &l[..])
}

fn rendered_len<'a>(lines: impl Iterator<Item = &'a Line>) -> u64 {
    let (n, bytes) = lines.fold((0u64, 0u64), |(n, b), l| (n + 1, b + l.len() as u64));
    if n == 0 {
        3 // "[]\n"
    } else {
        bytes + 2 * (n - 1) + 5
    }
}

fn file_size(path: &Path) -> Option<u64> {
    fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// The stamp on `share`, if there is a valid one.
pub(super) fn read_stamp(share: &Path) -> Option<Stamp> {
    let bytes = fsutil::read_small_file(&share.join(csindex::STAMP), csindex::MAX_STAMP).ok()?;
    csindex::parse_stamp(&bytes).ok()
}

/// Write the stamp (atomically), then `storage.lock`'s token.
pub(super) fn write_stamp(share: &Path, stamp: &Stamp) -> Result<()> {
    write_atomic(share, csindex::STAMP, &csindex::render_stamp(stamp))?;
    let lock = TokenLock::acquire(&share.join(csindex::STORAGE_LOCK))?;
    lock.record_write()
}

/// A new index file (`layers.json` or `images.json`) written and synced
/// under a temporary name in its directory; [`Staged::commit`] renames it
/// into place, dropped uncommitted it is removed.
struct Staged {
    name: &'static str,
    dir: PathBuf,
    tmp: PathBuf,
    size: u64,
    committed: bool,
}

impl Staged {
    fn write(share: &Path, name: &'static str, bytes: &[u8]) -> Result<Staged> {
        use std::io::Write;
        let dir = match name {
            csindex::LAYERS_INDEX => share.join("overlay-layers"),
            _ => share.join("overlay-images"),
        };
        let tmp = dir.join(format!(".tmp-{}", fsutil::unique_suffix()));
        let staged = Staged {
            name,
            dir,
            tmp,
            size: bytes.len() as u64,
            committed: false,
        };
        let mut f = File::create(&staged.tmp).at(&staged.tmp)?;
        f.write_all(bytes).at(&staged.tmp)?;
        f.sync_all().at(&staged.tmp)?;
        Ok(staged)
    }

    /// Rename it over its name (and sync the directory) under the write
    /// lock of its containers/storage lock file, whose token is then
    /// rewritten.
    fn commit(mut self, share: &Path) -> Result<()> {
        let lock_path = match self.name {
            csindex::LAYERS_INDEX => share.join(csindex::LAYERS_LOCK),
            _ => share.join(csindex::IMAGES_LOCK),
        };
        let lock = TokenLock::acquire(&lock_path)?;
        let dest = self.dir.join(self.name);
        fs::rename(&self.tmp, &dest).at(&dest)?;
        self.committed = true;
        fsutil::sync_dir(&self.dir)?;
        lock.record_write()
    }
}

impl Drop for Staged {
    /// Best effort: a temporary left behind is debris the next sweep removes.
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Append `lines` (records new to the index) to the index file `name`,
/// which this cache knows to be `expected` bytes long: under the write lock
/// of its containers/storage lock file, its closing `\n]\n` (or a whole
/// `[]\n`) is overwritten with the lines and a new close, the data synced,
/// and the change token rewritten. The file then reads as
/// [`csindex::render`] of its records with the new ones last. Returns the
/// new size, or `None` when the file is not as expected (size, ending, not a
/// regular file), no write lock could be had (a containers/storage reader
/// must never see a file being appended to), or a write failed: the caller
/// rewrites the file whole (atomically) instead. A crash in between leaves
/// a file the stamp does not vouch for, which the next writer rebuilds.
fn append_lines(share: &Path, name: &'static str, expected: u64, lines: &[&[u8]]) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let (path, lock_path) = match name {
        csindex::LAYERS_INDEX => (layers_index(share), share.join(csindex::LAYERS_LOCK)),
        _ => (images_index(share), share.join(csindex::IMAGES_LOCK)),
    };
    let not_now = |why: String| {
        tracing::debug!("{}: rewriting instead of appending: {why}", path.display());
        None
    };
    let lock = match TokenLock::acquire(&lock_path) {
        Ok(lock) if lock.locked => lock,
        Ok(_) => return not_now("no write lock".into()),
        Err(e) => return not_now(e.to_string()),
    };
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => return not_now(e.to_string()),
    };
    match file.metadata() {
        Ok(m) if m.is_file() && m.len() == expected && expected >= 3 => {}
        Ok(m) => return not_now(format!("{} bytes, {expected} expected", m.len())),
        Err(e) => return not_now(e.to_string()),
    }
    let mut tail = [0u8; 3];
    if let Err(e) = file.read_exact_at(&mut tail, expected - 3) {
        return not_now(e.to_string());
    }
    let (at, open) = match &tail {
        b"[]\n" if expected == 3 => (0, &b"[\n"[..]),
        b"\n]\n" => (expected - 3, &b",\n"[..]),
        _ => return not_now("it does not end as the writer renders it".into()),
    };
    let mut bytes = open.to_vec();
    for (k, line) in lines.iter().enumerate() {
        if k > 0 {
            bytes.extend_from_slice(b",\n");
        }
        bytes.extend_from_slice(line);
    }
    bytes.extend_from_slice(b"\n]\n");
    let written = file
        .write_all_at(&bytes, at)
        .and_then(|()| file.sync_data());
    if let Err(e) = written {
        return not_now(format!("writing: {e}"));
    }
    if let Err(e) = lock.record_write() {
        return not_now(e.to_string());
    }
    Some(at + bytes.len() as u64)
}

/// Make sure the three lock files exist (a read-only containers/storage
/// store opens them with `O_CREAT`, which a read-only mount refuses).
pub(super) fn ensure_lock_files(share: &Path) -> Result<()> {
    for rel in [
        csindex::STORAGE_LOCK,
        csindex::LAYERS_LOCK,
        csindex::IMAGES_LOCK,
    ] {
        let path = share.join(rel);
        if fs::symlink_metadata(&path).is_err() {
            TokenLock::acquire(&path)?.record_write()?;
        }
    }
    Ok(())
}

/// How long the writer waits for a containers/storage reader's read lock
/// on a lock file before it writes without it (a reader holds it only
/// while it loads the index; one stuck longer must not stop the writer).
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// A containers/storage lock file opened for writing, under an `fcntl`
/// write lock when one could be had within [`LOCK_PATIENCE`].
struct TokenLock {
    file: File,
    path: PathBuf,
    /// Whether the `fcntl` write lock is held (not after a reader kept it
    /// longer than [`LOCK_PATIENCE`]).
    locked: bool,
}

impl TokenLock {
    fn acquire(path: &Path) -> Result<TokenLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .at(path)?;
        let start = Instant::now();
        let mut delay = Duration::from_millis(1);
        let mut locked = false;
        loop {
            match rustix::fs::fcntl_lock(
                &file,
                rustix::fs::FlockOperation::NonBlockingLockExclusive,
            ) {
                Ok(()) => {
                    locked = true;
                    break;
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::ACCESS)
                    if start.elapsed() < LOCK_PATIENCE =>
                {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
                Err(e) => {
                    tracing::warn!(
                        "{}: no write lock ({e}); a containers/storage reader held it for \
                         {LOCK_PATIENCE:?}: writing the index without it",
                        path.display()
                    );
                    break;
                }
            }
        }
        Ok(TokenLock {
            file,
            path: path.to_path_buf(),
            locked,
        })
    }

    /// Rewrite the token in place (`pwrite` at offset 0 of this inode: a
    /// reader that keeps the file open sees it). Closing the file drops the
    /// lock.
    fn record_write(self) -> Result<()> {
        let token = new_token();
        let n = rustix::io::pwrite(&self.file, &token, 0)
            .map_err(std::io::Error::from)
            .at(&self.path)?;
        if n != token.len() {
            return Err(storectl_storage::Error::io(
                &self.path,
                std::io::Error::other("short write of the change token"),
            ));
        }
        Ok(())
    }
}

/// A fresh change token: time, a process-wide counter, the pid, and bytes
/// hashed from them and the stack address (uniqueness comes from the first
/// three).
fn new_token() -> [u8; csindex::TOKEN_LEN] {
    use sha2::{Digest as _, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let mut h = Sha256::new();
    h.update(nanos.to_le_bytes());
    h.update(counter.to_le_bytes());
    h.update(pid.to_le_bytes());
    h.update((&h as *const Sha256 as usize).to_le_bytes());
    let a = h.finalize();
    let b = Sha256::digest(a);
    let mut random = [0u8; 44];
    random[..32].copy_from_slice(&a);
    random[32..].copy_from_slice(&b[..12]);
    csindex::token(nanos, counter, pid, &random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_len_is_the_render_length() {
        let lines: Vec<Line> = vec![b"{\"a\":1}".to_vec().into(), b"{}".to_vec().into()];
        for n in 0..=lines.len() {
            let want = csindex::render(lines[..n].iter().map(|l| &l[..])).len() as u64;
            assert_eq!(rendered_len(lines[..n].iter()), want);
        }
    }

    #[test]
    fn tokens_are_rewritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layers.lock");
        TokenLock::acquire(&path).unwrap().record_write().unwrap();
        let reader = File::open(&path).unwrap();
        let read = || {
            let mut buf = [0u8; 64];
            rustix::io::pread(&reader, &mut buf, 0).unwrap();
            buf
        };
        let first = read();
        TokenLock::acquire(&path).unwrap().record_write().unwrap();
        let second = read();
        assert_ne!(first, second, "the open file sees the new token");
        assert_eq!(fs::metadata(&path).unwrap().len(), 64);
    }

    fn hex(n: usize, kind: &str) -> String {
        storectl_storage::digest::sha256_digest(format!("{kind}{n}").as_bytes())[7..].to_string()
    }

    /// A shared layer record `id` on `parent`.
    fn layer(id: &str, parent: Option<&str>) -> Layer {
        let json =
            serde_json::json!({"id": id, "parent": parent, "diff-digest": format!("sha256:{id}")});
        let mut l: Layer = serde_json::from_value(json).unwrap();
        l.shared = true;
        l
    }

    /// A shared image record `id` on `top`, named `names`.
    fn image(id: &str, top: &str, names: &[&str]) -> Image {
        let json = serde_json::json!({"id": id, "layer": top, "names": names});
        let mut i: Image = serde_json::from_value(json).unwrap();
        i.shared = true;
        i
    }

    /// A writer's state: `n` images, each on a chain of 3 layers of its own.
    fn state(n: usize) -> State {
        let mut st = State::default();
        for i in 0..n {
            let mut parent: Option<String> = None;
            for j in 0..3 {
                let id = hex(i * 3 + j, "layer");
                let l = layer(&id, parent.as_deref());
                st.layers.insert(id.clone(), l);
                parent = Some(id);
            }
            let id = hex(i, "image");
            let name = format!("localhost/image{i}:latest");
            let image = image(&id, parent.as_deref().unwrap_or_default(), &[&name]);
            st.images.insert(id, image);
        }
        st
    }

    fn share() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in ["overlay-layers", "overlay-images"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        dir
    }

    fn on_disk(share: &Path) -> (Vec<String>, Vec<(String, Vec<String>)>) {
        let layers = fs::read(layers_index(share)).unwrap();
        let images = fs::read(images_index(share)).unwrap();
        let l = csindex::parse_layers(&layers).unwrap();
        let i = csindex::parse_images(&images).unwrap();
        assert!(l.skipped.is_empty() && i.skipped.is_empty());
        // In id order but for records appended since the last rewrite.
        let mut layers: Vec<String> = l.records.into_iter().map(|(l, _)| l.id).collect();
        let mut images: Vec<(String, Vec<String>)> = i
            .records
            .into_iter()
            .map(|(i, _)| (i.id, i.names))
            .collect();
        layers.sort();
        images.sort();
        (layers, images)
    }

    fn expected(st: &State) -> (Vec<String>, Vec<(String, Vec<String>)>) {
        (
            st.layers.keys().cloned().collect(),
            st.images
                .values()
                .map(|i| (i.id.clone(), i.names.clone()))
                .collect(),
        )
    }

    /// A sync serializes only the records that are new or changed, writes
    /// only the files that changed, and the files always list the state.
    #[test]
    fn a_sync_serializes_only_what_changed() {
        let share = share();
        let share = share.path();
        let mut st = state(50);
        let mut cache = IndexCache::default();
        assert!(!cache.init(share, &st, Some("1 x\n")), "no index yet");
        let first = cache.sync(share, &st, Change::Other).unwrap();
        assert!(first.layers_written && first.images_written);
        assert_eq!(first.serialized, 0, "init serialized them");
        assert_eq!(on_disk(share), expected(&st));
        let stamp = Stamp {
            generation: "1 x\n".into(),
            layers_size: first.layers_size,
            images_size: first.images_size,
        };
        write_stamp(share, &stamp).unwrap();
        // A fresh process trusts a current index.
        assert!(IndexCache::default().init(share, &st, Some("1 x\n")));
        assert!(
            !IndexCache::default().init(share, &st, Some("2 y\n")),
            "stale"
        );

        // A new layer: not listed until an image uses it.
        let new_layer = hex(1000, "layer");
        let top = st.images.values().next().unwrap().layer.clone();
        let l = layer(&new_layer, top.as_deref());
        st.layers.insert(new_layer.clone(), l);
        let s = cache.sync(share, &st, Change::Other).unwrap();
        let wrote = |s: Synced| (s.layers_written, s.images_written, s.serialized);
        assert_eq!(wrote(s), (false, false, 0));
        assert!(!on_disk(share).0.contains(&new_layer));
        // Told so, the cache takes the store's word for it (no diff) and
        // gives the files' sizes for the stamp.
        let s = cache.sync(share, &st, Change::LayerAdded).unwrap();
        assert_eq!(wrote(s), (false, false, 0));
        let size = |p: PathBuf| fs::metadata(p).unwrap().len();
        assert_eq!(
            (s.layers_size, s.images_size),
            (size(layers_index(share)), size(images_index(share)))
        );

        // A new image on it: both files, only it and its layer serialized.
        let new_image = hex(1000, "image");
        let image = image(&new_image, &new_layer, &["new:1"]);
        st.images.insert(new_image.clone(), image);
        // Told which image was added, the cache finds it and its new layer
        // without a diff of the state.
        let s = cache
            .sync(share, &st, Change::ImageAdded(&new_image))
            .unwrap();
        assert_eq!(wrote(s), (true, true, 2));
        assert_eq!(on_disk(share), expected(&st));

        // A name changes in place: written even when the change that
        // follows is a layer's (an image marked is not left for later).
        st.images.get_mut(&new_image).unwrap().names = vec!["renamed:1".into()];
        cache.mark_image(&new_image);
        let s = cache.sync(share, &st, Change::LayerAdded).unwrap();
        assert_eq!(
            (s.layers_written, s.images_written, s.serialized),
            (false, true, 1)
        );
        assert_eq!(on_disk(share), expected(&st));

        // A name another image has is left out of the second one's record,
        // and given back when the first lets go of it.
        let (first_id, first_name) = {
            let i = st.images.values().next().unwrap();
            (i.id.clone(), i.names[0].clone())
        };
        st.images.get_mut(&new_image).unwrap().names = vec![first_name.clone()];
        cache.mark_image(&new_image);
        cache.sync(share, &st, Change::Other).unwrap();
        let (_, images) = on_disk(share);
        let holders: Vec<&String> = images
            .iter()
            .filter(|(_, n)| n.contains(&first_name))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(holders.len(), 1, "one image per name");
        st.images.get_mut(&first_id).unwrap().names.clear();
        cache.mark_image(&first_id);
        cache.sync(share, &st, Change::Other).unwrap();
        assert_eq!(on_disk(share), expected(&st));

        // Removal: the image and its layer go, nothing is serialized.
        st.images.remove(&new_image);
        st.layers.remove(&new_layer);
        let s = cache.sync(share, &st, Change::Other).unwrap();
        assert_eq!(
            (s.layers_written, s.images_written, s.serialized),
            (true, true, 0)
        );
        assert_eq!(on_disk(share), expected(&st));
        // Nothing changed: nothing written.
        let s = cache.sync(share, &st, Change::Other).unwrap();
        assert_eq!(
            (s.layers_written, s.images_written, s.serialized),
            (false, false, 0)
        );
    }

    /// A sync that only adds records appends them to both files in place
    /// (the same inodes, the old bytes kept, each lock's token rewritten);
    /// one that removes or changes a record rewrites the files whole, in id
    /// order; a file changed behind the cache is rewritten, not appended to.
    #[test]
    fn a_load_appends_in_place() {
        use std::os::unix::fs::MetadataExt;
        let share = share();
        let share = share.path();
        let mut st = state(20);
        let mut cache = IndexCache::default();
        cache.init(share, &st, None);
        assert!(
            !cache.sync(share, &st, Change::Other).unwrap().appended,
            "no index yet"
        );
        let inode = |p: PathBuf| fs::metadata(p).unwrap().ino();
        let token = |lock: &str| fs::read(share.join(lock)).unwrap();
        let read = || {
            (
                fs::read(layers_index(share)).unwrap(),
                fs::read(images_index(share)).unwrap(),
            )
        };
        let add = |st: &mut State, k: usize| {
            let base = hex(5000 + k, "layer");
            let top = hex(6000 + k, "layer");
            st.layers.insert(base.clone(), layer(&base, None));
            st.layers.insert(top.clone(), layer(&top, Some(&base)));
            let id = hex(5000 + k, "image");
            let name = format!("localhost/added{k}:1");
            st.images.insert(id.clone(), image(&id, &top, &[&name]));
            id
        };

        let (old_l, old_i) = read();
        let inodes = (inode(layers_index(share)), inode(images_index(share)));
        let tokens = (token(csindex::LAYERS_LOCK), token(csindex::IMAGES_LOCK));
        let added = add(&mut st, 1);
        let s = cache.sync(share, &st, Change::Other).unwrap();
        assert!(s.appended && s.layers_written && s.images_written);
        assert_eq!(s.serialized, 3, "one image and its two layers");
        let (new_l, new_i) = read();
        assert_eq!(
            (inode(layers_index(share)), inode(images_index(share))),
            inodes
        );
        assert_eq!(new_l[..old_l.len() - 3], old_l[..old_l.len() - 3]);
        assert_eq!(new_i[..old_i.len() - 3], old_i[..old_i.len() - 3]);
        assert!(new_l.ends_with(b"}\n]\n") && new_i.ends_with(b"}\n]\n"));
        assert_eq!(
            (new_l.len() as u64, new_i.len() as u64),
            (s.layers_size, s.images_size)
        );
        assert_ne!(token(csindex::LAYERS_LOCK), tokens.0);
        assert_ne!(token(csindex::IMAGES_LOCK), tokens.1);
        assert_eq!(on_disk(share), expected(&st));

        // A removal rewrites both whole, in id order again.
        st.images.remove(&added);
        st.layers.remove(&hex(5001, "layer"));
        st.layers.remove(&hex(6001, "layer"));
        let s = cache.sync(share, &st, Change::Other).unwrap();
        assert!(!s.appended);
        assert_ne!(inode(images_index(share)), inodes.1, "replaced by rename");
        let lines: Vec<Vec<u8>> = st
            .images
            .values()
            .map(|i| csindex::image_line(i, &BTreeSet::new()))
            .collect();
        assert_eq!(read().1, csindex::render(lines.iter().map(Vec::as_slice)));
        assert_eq!(on_disk(share), expected(&st));

        // A file not as the cache knows it is not appended to.
        let mut l = fs::read(layers_index(share)).unwrap();
        l.splice(1..1, *b" ");
        fs::write(layers_index(share), &l).unwrap();
        let before = inode(layers_index(share));
        add(&mut st, 2);
        let s = cache.sync(share, &st, Change::Other).unwrap();
        assert!(!s.appended && s.layers_written && s.images_written);
        assert_ne!(inode(layers_index(share)), before);
        assert_eq!(on_disk(share), expected(&st));
        // A share whose settings say no appends: a load rewrites too.
        let mut no = IndexCache::new(false);
        no.init(share, &st, None);
        no.sync(share, &st, Change::Other).unwrap();
        let before = inode(images_index(share));
        add(&mut st, 4);
        let s = no.sync(share, &st, Change::Other).unwrap();
        assert!(!s.appended && s.images_written);
        assert_ne!(inode(images_index(share)), before);
        assert_eq!(on_disk(share), expected(&st));
        // An empty index's `[]` is appended to as a whole file.
        let empty = share.join("empty");
        for d in ["overlay-layers", "overlay-images"] {
            fs::create_dir_all(empty.join(d)).unwrap();
        }
        let mut st = State::default();
        let mut cache = IndexCache::default();
        cache.init(&empty, &st, None);
        cache.sync(&empty, &st, Change::Other).unwrap();
        assert_eq!(fs::read(layers_index(&empty)).unwrap(), b"[]\n");
        add(&mut st, 3);
        let s = cache.sync(&empty, &st, Change::Other).unwrap();
        assert!(s.appended);
        assert_eq!(on_disk(&empty), expected(&st));
    }

    /// Both files are written at once, renamed one by one: a rename that
    /// fails (a directory on `images.json`) leaves `layers.json` in place
    /// and no temporary behind.
    #[test]
    fn a_failed_sync_leaves_no_temporaries() {
        let share = share();
        let share = share.path();
        let st = state(3);
        let mut cache = IndexCache::default();
        cache.init(share, &st, None);
        fs::create_dir(images_index(share)).unwrap();
        fs::write(images_index(share).join("x"), "junk").unwrap();
        assert!(cache.sync(share, &st, Change::Other).is_err());
        assert_eq!(on_disk_layers(share), expected(&st).0);
        for d in ["overlay-layers", "overlay-images"] {
            let tmp: Vec<_> = fs::read_dir(share.join(d))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with(".tmp-"))
                .collect();
            assert!(tmp.is_empty(), "{d}: {tmp:?}");
        }
    }

    fn on_disk_layers(share: &Path) -> Vec<String> {
        let layers = fs::read(layers_index(share)).unwrap();
        let l = csindex::parse_layers(&layers).unwrap();
        l.records.into_iter().map(|(l, _)| l.id).collect()
    }

    #[test]
    fn merge_walk_finds_both_sides() {
        let old: Vec<String> = ["a", "b", "d"].map(String::from).to_vec();
        let new: Vec<String> = ["b", "c", "d", "e"].map(String::from).to_vec();
        let (mut gone, mut added) = (vec![], vec![]);
        merge_walk(
            old.iter().map(String::as_str),
            new.iter().map(String::as_str),
            |x| gone.push(x.to_string()),
            |x| added.push(x.to_string()),
        );
        assert_eq!(gone, vec!["a"]);
        assert_eq!(added, vec!["c", "e"]);
    }
}
