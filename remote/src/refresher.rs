//! The refresher: a reader's loop that keeps the in-memory store in step with
//! the share.
//!
//! ```text
//!  every interval (1 s)            read <share>/generation (fresh open)
//!        │ unchanged and full rescan not due ──────────────► done (µs)
//!        ▼ changed, or full rescan due (60 s), or the first scan of the process
//!  open the share's three directories (their link counts)
//!  first scan: seed the store from the saved view (<root>/share-view)
//!  ids from: the view (generation unchanged) | the index (its stamp is this
//!        generation) | readdir of the three directories (fallback, rescan)
//!  diff id sets against the store's shared entries       (read lock, brief)
//!  read + validate only new ids, parents first           (no lock)
//!  apply adds and removals in one step                   (write lock, brief)
//!  send ImageAdded / ImageRemoved / LayerAdded / LayerRemoved
//!  save the view when it changed
//! ```

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::fs::{FileType, Mode, OFlags};
use storectl_storage::{Role, RootConfig, SharedDelta, Store};

use crate::error::{Error, Result};
use crate::events::StoreEvent;
use crate::scan::{Baseline, ScanStats, Scanner};

/// How often to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshOptions {
    /// Between two reads of `generation`.
    pub interval: Duration,
    /// Scan even when `generation` did not change, this often.
    pub full_rescan: Duration,
}

impl RefreshOptions {
    pub fn from_config(config: &RootConfig) -> Self {
        RefreshOptions {
            interval: Duration::from_millis(config.refresh_interval_ms.max(1)),
            full_rescan: Duration::from_secs(config.full_rescan_secs.max(1)),
        }
    }
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// Whether the share was scanned (generation changed or rescan due).
    pub scanned: bool,
    pub events: Vec<StoreEvent>,
}

/// Where a scan took the share's ids from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanSource {
    /// `generation` was what this reader last validated: its view stands
    /// (the share's directories' link counts agreed).
    View,
    /// The share's index (`layers.json`, `images.json`), current for
    /// `generation`; only new and gone ids were looked up on the share.
    Index,
    /// A listing of the share's three directories.
    Directories,
}

/// Counters for metrics and `storectl info`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RefreshStats {
    pub ticks: u64,
    pub scans: u64,
    pub errors: u64,
    pub last_scan: Option<Duration>,
    /// What the last scan read.
    pub last_source: Option<ScanSource>,
    /// Scans that meant to use the view or the index and read the
    /// directories instead (the index was missing, stale, damaged or
    /// disagreed with the directories).
    pub fallbacks: u64,
    pub share: ScanStats,
}

/// What a saved view says beyond its records, to save only when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Saved {
    generation: Option<Vec<u8>>,
    baseline: Baseline,
    links_in_step: bool,
    root_dirs: [u64; 4],
    pending: u64,
}

struct Inner {
    scanner: Scanner,
    generation: Option<Vec<u8>>,
    /// The first scan of this process ran (the store was seeded from the
    /// saved view, if there was one).
    started: bool,
    /// The last full directory scan (or the first scan of this process):
    /// the next is due `full_rescan` after it.
    last_full: Option<Instant>,
    /// What the saved view holds (`None`: nothing saved, or unknown).
    saved: Option<Saved>,
    stats: RefreshStats,
    last_error: Option<String>,
    /// Reasons for reading the directories already warned about.
    warned: HashSet<String>,
    /// What the first scan took from the saved view, until its events are
    /// sent (with that scan's, or the next successful one's).
    seeded: Option<Seeded>,
    /// The saved view, read ahead by the caller ([`Refresher::preload_view`]).
    preloaded: Option<Option<crate::view::View>>,
}

/// How hard [`Refresher::run`] looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Force {
    /// A tick: only when `generation` changed or a full scan is due.
    No,
    /// Now: the view, the index or the directories, whichever is current.
    Update,
    /// Now, listing the directories.
    Full,
}

/// The shared entries a process's first scan took from the saved view.
struct Seeded {
    /// Parents first.
    layers: Vec<String>,
    images: Vec<String>,
}

/// Keeps a reader store's shared images in step with the share.
pub struct Refresher {
    store: Arc<Store>,
    opts: RefreshOptions,
    inner: Mutex<Inner>,
    subscribers: Mutex<Vec<Sender<StoreEvent>>>,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("opts", &self.opts)
            .finish()
    }
}

/// A reader must mount the share's layers the way the writer wrote them: when
/// the share names its [`storectl_storage::XattrMode`] (a share made again
/// under the reader, say) and this root was set up for the other, refuse.
/// An unreadable or absent file is left to the scans to report.
fn check_xattr_mode(layout: &storectl_storage::Layout) -> Result<()> {
    let Some(share) = &layout.config.shared else {
        return Ok(());
    };
    match crate::share::ShareConfig::recorded(share) {
        Some(cfg) if cfg.overlay_xattrs != layout.config.overlay_xattrs => {
            Err(Error::Incompatible {
                path: layout.root.clone(),
                reason: format!(
                    "the share marks opaque directories with {} xattrs, this root mounts for {}; \
                 run `storectl init --shared {} --role reader` on an empty root",
                    cfg.overlay_xattrs,
                    layout.config.overlay_xattrs,
                    share.display()
                ),
            })
        }
        _ => Ok(()),
    }
}

impl Refresher {
    /// A refresher for a reader store (`storectl init --role reader`).
    pub fn new(store: Arc<Store>, opts: RefreshOptions) -> Result<Refresher> {
        if store.layout().role() != Role::Reader {
            return Err(Error::NotShared {
                root: store.root().to_path_buf(),
            });
        }
        check_xattr_mode(store.layout())?;
        let scanner = Scanner::new(store.layout().clone());
        Ok(Refresher {
            store,
            opts,
            inner: Mutex::new(Inner {
                scanner,
                generation: None,
                started: false,
                last_full: None,
                saved: None,
                stats: RefreshStats::default(),
                last_error: None,
                warned: HashSet::new(),
                seeded: None,
                preloaded: None,
            }),
            subscribers: Mutex::new(Vec::new()),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn options(&self) -> RefreshOptions {
        self.opts
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> Receiver<StoreEvent> {
        let (tx, rx) = mpsc::channel();
        self.subscribers.lock().push(tx);
        rx
    }

    pub fn stats(&self) -> RefreshStats {
        self.inner.lock().stats
    }

    /// One cycle: read `generation`; when it changed (or a full rescan is
    /// due) bring the store up to date. The first cycle of a process starts
    /// from the saved view.
    pub fn tick(&self) -> Result<Tick> {
        self.run(Force::No, true)
    }

    /// Bring the store up to date now: from the saved view when `generation`
    /// is what it was validated at, from the share's index when that is
    /// current, else by listing the share's directories (see
    /// [`crate::view`] and docs/sharing.md). A one-shot command calls this.
    pub fn scan_now(&self) -> Result<Vec<StoreEvent>> {
        Ok(self.run(Force::Update, true)?.events)
    }

    /// [`Refresher::scan_now`] for a caller that does not want the events
    /// (a one-shot command): a first scan that starts from the saved view
    /// then makes no event per entry, unless someone subscribed.
    pub fn update(&self) -> Result<()> {
        self.run(Force::Update, false).map(|_| ())
    }

    /// Give the first scan the saved view, read by the caller ahead of time
    /// ([`crate::view::load`] of this root and share, `None` if there was
    /// none): a one-shot command reads it while the store opens.
    pub fn preload_view(&self, view: Option<crate::view::View>) {
        let mut inner = self.inner.lock();
        if !inner.started {
            inner.preloaded = Some(view);
        }
    }

    /// List the share's directories now, whatever `generation` and the index
    /// say (for changes made on the share without a writer).
    pub fn full_scan_now(&self) -> Result<Vec<StoreEvent>> {
        Ok(self.run(Force::Full, true)?.events)
    }

    fn run(&self, force: Force, want_events: bool) -> Result<Tick> {
        let want_events = want_events || !self.subscribers.lock().is_empty();
        let mut inner = self.inner.lock();
        inner.stats.ticks += 1;
        let layout = self.store.layout();
        // A fresh open each time: NFS close-to-open consistency gives the current value.
        let generation = read_generation(&layout.generation());
        let first = !inner.started;
        let due = !first
            && inner
                .last_full
                .is_none_or(|t| t.elapsed() >= self.opts.full_rescan);
        if force == Force::No && !first && !due && generation == inner.generation {
            return Ok(Tick {
                scanned: false,
                events: Vec::new(),
            });
        }
        // The share's directories always exist (`init` makes and requires
        // them): one that is missing means the share is not there (an NFS
        // mount dropped), not that it is empty. Keep what we have. Their
        // link counts check the view and the index against the directories.
        let share = layout
            .config
            .shared
            .clone()
            .ok_or_else(|| Error::NotShared {
                root: layout.root.clone(),
            })?;
        let ro = [layout.overlay_ro(), layout.layers_ro(), layout.images_ro()];
        let dirs = match crate::scan::ShareDirs::open(&share) {
            Ok(dirs) => dirs,
            Err((d, e)) => {
                inner.stats.errors += 1;
                crate::metrics::failed();
                let reason = match e.raw_os_error() {
                    Some(n)
                        if n == rustix::io::Errno::NOENT.raw_os_error()
                            || n == rustix::io::Errno::NOTDIR.raw_os_error()
                            || n == rustix::io::Errno::LOOP.raw_os_error() =>
                    {
                        "it is missing (is the share mounted?)".to_string()
                    }
                    _ => e.to_string(),
                };
                return Err(Error::NotAShare {
                    path: ro[d].clone(),
                    reason,
                });
            }
        };
        let started = Instant::now();
        let mut from_view = false;
        if first {
            inner.started = true;
            inner.last_full = Some(started);
            let view = match inner.preloaded.take() {
                Some(view) => view.filter(|v| v.share == share),
                None => crate::view::load(&layout.root, &share),
            };
            if let Some(view) = view {
                from_view = true;
                inner.seeded = self.seed(&mut inner, view, want_events);
            }
        }
        let plan = if force == Force::Full || due || (first && !from_view) {
            ScanSource::Directories
        } else if generation.is_some() && generation == inner.generation {
            ScanSource::View
        } else {
            ScanSource::Index
        };
        let mut generation = generation;
        let result = self.scan_by(&mut inner, plan, &share, &mut generation, &dirs);
        drop(dirs);
        inner.stats.scans += 1;
        inner.stats.last_scan = Some(started.elapsed());
        let (events, source) = match result {
            Ok(done) => done,
            Err(e) => {
                inner.stats.errors += 1;
                crate::metrics::scanned(started.elapsed(), false, 0);
                return Err(e);
            }
        };
        if source == ScanSource::Directories {
            inner.last_full = Some(Instant::now());
        }
        if plan != source {
            inner.stats.fallbacks += 1;
        }
        inner.generation = generation;
        inner.stats.last_source = Some(source);
        inner.stats.share = inner.scanner.stats;
        inner.last_error = None;
        crate::metrics::scanned(started.elapsed(), true, inner.stats.share.pending);
        self.save_view(&mut inner, &share, !events.is_empty());
        // The entries seeded from the view join now (kept for the next
        // successful scan if this one failed).
        let events = match inner.seeded.take() {
            Some(seeded) => self.first_events(&seeded, events),
            None => events,
        };
        drop(inner);
        let mut events = events;
        let in_use = in_use_events(&self.store, &events);
        events.extend(in_use);
        if !events.is_empty() {
            self.subscribers
                .lock()
                .retain(|tx| events.iter().all(|e| tx.send(e.clone()).is_ok()));
        }
        Ok(Tick {
            scanned: true,
            events,
        })
    }

    /// Warn that the directories are read instead, once per reason kind in
    /// this process (a one-shot command says it once).
    fn warn_fallback(&self, inner: &mut Inner, kind: &str, reason: &str) {
        if inner.warned.insert(kind.to_string()) {
            tracing::warn!("share: {reason}; reading its directories instead");
        } else {
            tracing::debug!("share: {reason}; reading its directories instead");
        }
    }

    /// Scan as `plan` says, falling back to the directories (with a warning)
    /// when the view or the index does not hold up. `generation` is what the
    /// store will be at: re-read when a writer moved it while the index was
    /// being read.
    fn scan_by(
        &self,
        inner: &mut Inner,
        plan: ScanSource,
        share: &Path,
        generation: &mut Option<Vec<u8>>,
        dirs: &crate::scan::ShareDirs,
    ) -> Result<(Vec<StoreEvent>, ScanSource)> {
        match plan {
            ScanSource::View => {
                let ids = self.shared_counts();
                match crate::scan::links_cover(dirs.nlink, ids, inner.scanner.baseline) {
                    Ok(()) => return Ok((Vec::new(), ScanSource::View)),
                    Err(reason) => self.warn_fallback(
                        inner,
                        "links",
                        &format!("{reason} (changed without its writer?)"),
                    ),
                }
            }
            ScanSource::Index => match self.read_index(share, generation, dirs) {
                Ok(index) => match inner.scanner.scan_index(&self.store, &index, dirs)? {
                    Ok(events) => return Ok((events, ScanSource::Index)),
                    Err(reason) => self.warn_fallback(
                        inner,
                        "disagrees",
                        &format!("its index disagrees with its directories: {reason}"),
                    ),
                },
                Err(problem) => {
                    let kind = problem.kind();
                    self.warn_fallback(inner, kind, &problem.to_string());
                }
            },
            ScanSource::Directories => {}
        }
        Ok((inner.scanner.scan(&self.store)?, ScanSource::Directories))
    }

    /// The share's index for `generation`. A writer that publishes between
    /// our read of `generation` and of the stamp makes the stamp newer:
    /// `generation` is read again and the index with it (a few times).
    fn read_index(
        &self,
        share: &Path,
        generation: &mut Option<Vec<u8>>,
        dirs: &crate::scan::ShareDirs,
    ) -> std::result::Result<crate::index::ShareIndex, crate::index::IndexProblem> {
        use crate::index::IndexProblem;
        let root = rustix::fs::open(
            share,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| IndexProblem::Unreadable(format!("{}: {e}", share.display())))?;
        let mut tries = 0;
        loop {
            let result =
                crate::index::read(&root, &dirs.fds[1], &dirs.fds[2], generation.as_deref());
            tries += 1;
            match result {
                Err(IndexProblem::Stale(_)) if tries < 3 => {
                    let now = read_generation(&self.store.layout().generation());
                    if now == *generation {
                        return result;
                    }
                    *generation = now;
                }
                _ => return result,
            }
        }
    }

    /// How many shared layers (twice: `overlay/`, `overlay-layers/`) and
    /// images the store has, hidden ones included.
    fn shared_counts(&self) -> [u64; 3] {
        self.store.with_state(|st| {
            let layers = st.layers.values().filter(|l| l.shared).count() + st.hidden_layers.len();
            let images = st.images.values().filter(|i| i.shared).count() + st.hidden_images.len();
            [layers as u64, layers as u64, images as u64]
        })
    }

    /// Seed the store with a saved view's records (their legacy links as the
    /// view says), and take its generation, baseline and fingerprints.
    /// With `want_events`, returns what was seeded, for [`Self::first_events`].
    fn seed(
        &self,
        inner: &mut Inner,
        view: crate::view::View,
        want_events: bool,
    ) -> Option<Seeded> {
        let seeded = want_events.then(|| Seeded {
            layers: crate::view::parent_first(&view.layers)
                .into_iter()
                .map(|i| view.layers[i].id.clone())
                .collect(),
            images: view.images.iter().map(|(i, _)| i.id.clone()).collect(),
        });
        inner
            .scanner
            .remember_images(view.images.iter().map(|(i, fp)| (i.id.as_str(), *fp)));
        inner.scanner.baseline = view.baseline;
        inner.scanner.stats = ScanStats {
            layers_on_share: view.layers.len(),
            images_on_share: view.images.len(),
            pending: view.pending as usize,
        };
        inner.generation = Some(view.generation.clone());
        // The links are as the view says only if nothing changed the
        // directories that hold them since it was saved.
        let root_dirs = crate::view::root_dirs(&self.store.layout().root);
        let links_in_step = view.links_in_step && root_dirs == view.root_dirs;
        if view.links_in_step && !links_in_step {
            tracing::debug!(
                "the root's legacy links changed since the share view was saved: repairing them"
            );
        }
        inner.saved = Some(Saved {
            generation: Some(view.generation),
            baseline: view.baseline,
            links_in_step: view.links_in_step,
            root_dirs: view.root_dirs,
            pending: view.pending,
        });
        self.store.apply_shared(SharedDelta {
            add_layers: view.layers,
            add_images: view.images.into_iter().map(|(i, _)| i).collect(),
            links_in_step,
            ..SharedDelta::default()
        });
        seeded
    }

    /// The events of a process's first scan that started from the saved
    /// view: every seeded entry still in the store joins (parents first),
    /// with what the scan added; what the scan removed or renamed of the
    /// seeded entries nobody heard of.
    fn first_events(&self, seeded: &Seeded, delta: Vec<StoreEvent>) -> Vec<StoreEvent> {
        let (mut layers, mut images) = self.store.with_state(|st| {
            let layers: Vec<StoreEvent> = seeded
                .layers
                .iter()
                .filter(|id| st.layers.get(id).is_some_and(|l| l.shared))
                .map(|id| StoreEvent::LayerAdded { id: id.clone() })
                .collect();
            let images: Vec<StoreEvent> = seeded
                .images
                .iter()
                .filter_map(|id| st.images.get(id).filter(|i| i.shared))
                .map(|i| StoreEvent::ImageAdded {
                    id: i.id.clone(),
                    names: i.names.clone(),
                })
                .collect();
            (layers, images)
        });
        let mut rest = Vec::new();
        for e in delta {
            match e {
                StoreEvent::LayerAdded { .. } => layers.push(e),
                StoreEvent::ImageAdded { .. } => images.push(e),
                // Only seeded entries can have been removed or renamed.
                _ => rest.push(e),
            }
        }
        let seeded_ids: HashSet<&str> = seeded
            .layers
            .iter()
            .chain(&seeded.images)
            .map(String::as_str)
            .collect();
        rest.retain(|e| {
            let id = match e {
                StoreEvent::ImageRemoved { id }
                | StoreEvent::LayerRemoved { id }
                | StoreEvent::ImageUpdated { id, .. } => id,
                _ => return true,
            };
            !seeded_ids.contains(id.as_str())
        });
        layers.extend(images);
        layers.extend(rest);
        layers
    }

    /// Save the view when what it would hold changed. A root this process
    /// cannot write (another user's) keeps its view as it is, quietly.
    fn save_view(&self, inner: &mut Inner, share: &Path, changed: bool) {
        let now = Saved {
            generation: inner.generation.clone(),
            baseline: inner.scanner.baseline,
            links_in_step: self.store.links_in_step(),
            root_dirs: crate::view::root_dirs(&self.store.layout().root),
            pending: inner.scanner.stats.pending as u64,
        };
        if !self.store.writable() || (!changed && inner.saved.as_ref() == Some(&now)) {
            return;
        }
        let Some(generation) = &now.generation else {
            return; // nothing to vouch for
        };
        let parts = crate::view::ViewParts {
            share,
            generation,
            links_in_step: now.links_in_step,
            root_dirs: now.root_dirs,
            baseline: now.baseline,
            pending: now.pending,
        };
        let scanner = &inner.scanner;
        let bytes = self.store.with_state(|st| {
            let mut layers: Vec<&storectl_storage::Layer> = st
                .layers
                .values()
                .filter(|l| l.shared)
                .chain(st.hidden_layers.values())
                .collect();
            let mut images: Vec<&storectl_storage::Image> = st
                .images
                .values()
                .filter(|i| i.shared)
                .chain(st.hidden_images.values())
                .collect();
            if !st.hidden_layers.is_empty() {
                layers.sort_by(|a, b| a.id.cmp(&b.id));
            }
            if !st.hidden_images.is_empty() {
                images.sort_by(|a, b| a.id.cmp(&b.id));
            }
            crate::view::encode(
                &parts,
                layers.into_iter(),
                images
                    .into_iter()
                    .map(|i| (i, scanner.fingerprint_of(&i.id))),
            )
        });
        match crate::view::save(&self.store.layout().root, &bytes) {
            Ok(()) => inner.saved = Some(now),
            Err(Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                tracing::debug!("not saving the share view: {source}");
            }
            Err(e) => {
                if inner.warned.insert(format!("save: {e}")) {
                    tracing::warn!("not saving the share view: {e}");
                }
            }
        }
    }

    /// Run [`Refresher::tick`] every interval on a thread until the handle is
    /// dropped or stopped. Errors are logged once per distinct message.
    pub fn spawn(self: &Arc<Self>) -> RefresherHandle {
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let me = Arc::clone(self);
        let thread = std::thread::Builder::new()
            .name("storectl-refresh".into())
            .spawn(move || loop {
                if let Err(e) = me.tick() {
                    let msg = e.to_string();
                    let mut inner = me.inner.lock();
                    if inner.last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!("refresh failed: {msg}");
                        inner.last_error = Some(msg);
                    }
                }
                match stop_rx.recv_timeout(me.opts.interval) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            })
            .expect("spawning the refresher thread");
        RefresherHandle {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

/// For each removed image this host still uses (containers made from it,
/// or its mount), an [`StoreEvent::ImageRemovedInUse`] and a warning that
/// says when its layers go.
fn in_use_events(store: &Store, events: &[StoreEvent]) -> Vec<StoreEvent> {
    let mut out = Vec::new();
    let mut removals = None;
    for e in events {
        let StoreEvent::ImageRemoved { id } = e else {
            continue;
        };
        let containers: Vec<String> = match store.containers_of_image(id) {
            Ok(cs) => cs
                .into_iter()
                .map(|c| c.names.first().cloned().unwrap_or(c.id))
                .collect(),
            Err(e) => {
                tracing::warn!("listing containers: {e}");
                Vec::new()
            }
        };
        let mounted = store.mounted_ids(id).is_ok_and(|m| m.contains(id));
        if containers.is_empty() && !mounted {
            continue;
        }
        let removals = removals.get_or_insert_with(|| store.removals());
        let until = removals.images.get(id).map(|i| i.delete_after.clone());
        let users = match (containers.is_empty(), mounted) {
            (false, true) => format!("container(s) {} and its mount", containers.join(", ")),
            (false, false) => format!("container(s) {}", containers.join(", ")),
            _ => "its mount".to_string(),
        };
        match &until {
            Some(t) => tracing::warn!(
                "image {id} was removed on the writer host while {users} use it: \
                 they keep working until its layers are deleted from the share \
                 after {t} (the share's grace period)"
            ),
            None => tracing::warn!(
                "image {id} was removed on the writer host while {users} use it: \
                 the share lists no grace period for its layers; they may be gone already"
            ),
        }
        out.push(StoreEvent::ImageRemovedInUse {
            id: id.clone(),
            containers,
            mounted,
            layers_deleted_after: until,
        });
    }
    out
}

/// The content of the share's `generation` file, or `None` when it cannot be
/// read or is not a regular file. Opened without following a symlink and
/// without blocking (a FIFO there must not hang the refresher), and at most
/// [`MAX_GENERATION`] bytes of it are read (it is a counter and a suffix).
fn read_generation(path: &Path) -> Option<Vec<u8>> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_GENERATION)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// More of `generation` than a writer ever writes.
const MAX_GENERATION: u64 = 4096;

/// A running refresher thread; dropping it stops the thread.
#[derive(Debug)]
pub struct RefresherHandle {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RefresherHandle {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RefresherHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_read_without_blocking_or_following() {
        let dir = tempfile::tempdir().unwrap();
        let gen = dir.path().join("generation");
        assert_eq!(read_generation(&gen), None);
        std::fs::write(&gen, b"7 abc\n").unwrap();
        assert_eq!(read_generation(&gen).as_deref(), Some(&b"7 abc\n"[..]));
        std::fs::write(&gen, vec![b'1'; 1 << 20]).unwrap();
        assert_eq!(
            read_generation(&gen).map(|g| g.len() as u64),
            Some(MAX_GENERATION)
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&gen, &link).unwrap();
        assert_eq!(read_generation(&link), None, "a symlink is not followed");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::RUSR, 0).unwrap();
        assert_eq!(
            read_generation(&fifo),
            None,
            "a FIFO is not read (nor waited on)"
        );
        assert_eq!(
            read_generation(dir.path()),
            None,
            "a directory is not a generation"
        );
    }

    #[test]
    fn a_reader_refuses_a_share_of_the_other_xattr_mode() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        let root = dir.path().join("reader");
        crate::share::init(
            &dir.path().join("w"),
            &share,
            Role::Writer,
            Default::default(),
        )
        .unwrap();
        let cfg = crate::share::init(&root, &share, Role::Reader, Default::default()).unwrap();
        let open = || {
            let store = Store::open(storectl_storage::StoreOptions::new(&root)).unwrap();
            Refresher::new(Arc::new(store), RefreshOptions::from_config(&cfg))
        };
        open().expect("the reader matches its share");
        // The share made again by a writer of the other mode.
        let other = match cfg.overlay_xattrs {
            storectl_storage::XattrMode::User => "trusted",
            storectl_storage::XattrMode::Trusted => "user",
        };
        let file = share.join(crate::share::SHARE_FILE);
        std::fs::write(&file, format!(r#"{{"overlay_xattrs":"{other}"}}"#)).unwrap();
        assert!(matches!(open(), Err(Error::Incompatible { .. })));
        // An absent or unreadable file is not this check's business.
        std::fs::remove_file(&file).unwrap();
        open().expect("no share file: nothing to compare");
    }
}
