//! The refresher: a reader's loop that keeps the in-memory store in step with
//! the share.
//!
//! ```text
//!  every interval (1 s)            read <share>/generation (fresh open)
//!        │ unchanged and full rescan not due ──────────────► done (µs)
//!        ▼ changed, or full rescan due (60 s)
//!  scan: readdir overlay/RO, overlay-layers/RO, overlay-images/RO   (no lock)
//!        diff id sets against the store's shared entries       (read lock, brief)
//!        read + validate only new ids, parents first           (no lock)
//!        apply adds and removals in one step                   (write lock, brief)
//!        send ImageAdded / ImageRemoved / LayerAdded / LayerRemoved
//! ```

use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::fs::{FileType, Mode, OFlags};
use storectl_storage::{Role, RootConfig, Store};

use crate::error::{Error, Result};
use crate::events::StoreEvent;
use crate::scan::{ScanStats, Scanner};

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

/// Counters for metrics and `storectl info`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RefreshStats {
    pub ticks: u64,
    pub scans: u64,
    pub errors: u64,
    pub last_scan: Option<Duration>,
    pub share: ScanStats,
}

struct Inner {
    scanner: Scanner,
    generation: Option<Vec<u8>>,
    last_scan: Option<Instant>,
    stats: RefreshStats,
    last_error: Option<String>,
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
                last_scan: None,
                stats: RefreshStats::default(),
                last_error: None,
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

    /// One cycle: read `generation`; scan when it changed or a full rescan is due.
    pub fn tick(&self) -> Result<Tick> {
        self.run(false)
    }

    /// Scan now, whatever `generation` says.
    pub fn scan_now(&self) -> Result<Vec<StoreEvent>> {
        Ok(self.run(true)?.events)
    }

    fn run(&self, force: bool) -> Result<Tick> {
        let mut inner = self.inner.lock();
        inner.stats.ticks += 1;
        // A fresh open each time: NFS close-to-open consistency gives the current value.
        let generation = read_generation(&self.store.layout().generation());
        let due = inner
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.opts.full_rescan);
        if !force && !due && generation == inner.generation {
            return Ok(Tick {
                scanned: false,
                events: Vec::new(),
            });
        }
        // The share's directories always exist (`init` makes and requires
        // them): one that is missing means the share is not there (an NFS
        // mount dropped), not that it is empty. Keep what we have.
        let layout = self.store.layout();
        for dir in [layout.overlay_ro(), layout.layers_ro(), layout.images_ro()] {
            if !dir.is_dir() {
                inner.stats.errors += 1;
                crate::metrics::failed();
                return Err(Error::NotAShare {
                    path: dir,
                    reason: "it is missing (is the share mounted?)".into(),
                });
            }
        }
        let started = Instant::now();
        let result = inner.scanner.scan(&self.store);
        inner.stats.scans += 1;
        inner.stats.last_scan = Some(started.elapsed());
        inner.last_scan = Some(Instant::now());
        let events = match result {
            Ok(events) => {
                inner.generation = generation;
                inner.stats.share = inner.scanner.stats;
                inner.last_error = None;
                crate::metrics::scanned(started.elapsed(), true, inner.stats.share.pending);
                events
            }
            Err(e) => {
                inner.stats.errors += 1;
                crate::metrics::scanned(started.elapsed(), false, 0);
                return Err(e);
            }
        };
        drop(inner);
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
