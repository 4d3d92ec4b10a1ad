//! # storectl-transfer — registries, pull, push and save
//!
//! Everything that moves an image between a [`Store`](storectl_storage::Store)
//! and the outside world except `load` (which is the store's own: an archive
//! on disk is just another source of blobs):
//!
//! * [`registry`]: a synchronous OCI distribution client (ureq + rustls;
//!   auth files, bearer tokens, retries, resumed blob downloads);
//! * [`pull()`]: manifest and config from a registry, verified, then the
//!   layers through [`Store::import`](storectl_storage::Store::import) as
//!   [`RemoteBlob`](storectl_storage::import::RemoteBlob)s, several at once;
//! * [`push()`]: layer tars rebuilt from the store (gzip or plain), uploaded
//!   unless the registry has them;
//! * [`save()`]: an OCI layout (directory or tarball) or a docker-archive.
//!
//! Direction of dependencies: `cli → transfer → storage → overlay`. The
//! store crate knows nothing of HTTP, TLS or auth. Progress is reported with
//! the store's vocabulary ([`progress`], re-exported here): containerd's
//! `{event, name, parents, progress, total}` per blob, at most every 100 ms.
//!
//! ```no_run
//! use storectl_storage::{NoopReporter, Store, StoreOptions};
//! use storectl_transfer::registry::{ClientOptions, RegistryClient};
//! use storectl_transfer::{pull, PullOptions};
//! let store = Store::open(StoreOptions::new("/var/lib/storectl"))?;
//! let client = RegistryClient::new(ClientOptions::default());
//! let image = pull(&store, "127.0.0.1:5000/busybox:latest", &client, &PullOptions::default(), &NoopReporter)?;
//! # Ok::<(), storectl_transfer::Error>(())
//! ```
//!
//! Like the store, this crate is synchronous and never prints (tracing only).

mod error;
#[cfg(test)]
mod proptests;
mod pull;
mod push;
pub mod registry;
mod save;

pub use error::{Error, Result};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A flag the caller sets to stop a pull or push from another thread: the
/// next blob read (or request) fails, the store's import discards what it
/// staged, and the operation returns [`Error::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Cancel::default()
    }

    /// Ask the operation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// A reader whose next read fails with "cancelled" (an `io::ErrorKind::Other`
/// error) once its [`Cancel`] is set.
pub(crate) struct CancelReader<R> {
    pub inner: R,
    pub cancel: Cancel,
}

impl<R: std::io::Read> std::io::Read for CancelReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other("cancelled"));
        }
        self.inner.read(buf)
    }
}
pub use pull::{pull, PullOptions};
pub use push::{push, PushCompression, PushOptions};
pub use save::{save, save_to_writer, SaveFormat};
pub use storectl_storage::progress;
