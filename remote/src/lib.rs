//! # storectl-remote — read-only sharing across hosts
//!
//! One *writer* host loads images into a share (NFS or any POSIX network
//! filesystem); any number of *reader* hosts mount it and see images appear and
//! vanish within about a second, without a restart, without a lock on the
//! share, and without ever seeing half an image.
//!
//! The parts: [`share`] wires a root to a share (`init`); [`writer`] is the
//! writer side — containers/storage's index on the share, kept by a
//! [`ShareHook`](storectl_storage::ShareHook) the writer's store calls
//! ([`open_store`] installs it); the reader side is the [`Refresher`]
//! ([`scan`], [`view`], [`index`]), with [`events`] and [`metrics`].
//!
//! ## Layout
//!
//! ```text
//! <share>/                           what many hosts mount
//!   overlay/<id>/        diff/ link          layer contents
//!   overlay-layers/<id>/ layer.json <id>.tar-split.gz
//!   overlay-images/<id>/ images.json manifest config
//!   generation                       replaced by the writer after every change
//!   writer.lock                      the single-writer lock (flock)
//!   storectl-share.json              {"overlay_xattrs": "user"|"trusted", fixed by the first
//!                                     writer; "removed_layers_grace_secs": 3600;
//!                                     "index_appends": true}
//!   storectl-removed.json            removed images' layers waiting out the grace period
//!   overlay-layers/layers.json, overlay-images/images.json, storectl-index.json, …
//!                                    containers/storage's index (see [`writer`])
//!
//! <root>/ (each host's own)
//!   storectl.json                    {"role": "writer"|"reader", "shared": …, intervals,
//!                                     "overlay_xattrs": copied from the share}
//!   share-view                       a reader's validated view of the share (see [`view`])
//!   overlay/RO        -> <share>/overlay
//!   overlay-layers/RO -> <share>/overlay-layers
//!   overlay-images/RO -> <share>/overlay-images
//!   overlay/<id>, overlay-layers/<id>, overlay-images/<id>   local layers/images
//! ```
//!
//! `overlay/<id> -> RO/<id>` (and the same for layer records, images and the
//! `overlay/l/` short names) keep the usual containers/storage names: the
//! writer makes them as it publishes, a reader's refresher keeps them in the
//! reader's own root in step with the share. storectl itself resolves shared
//! entries through `RO/`; a local entry always keeps its name.
//!
//! ## Rules
//!
//! * The writer publishes by rename only (see `storectl-storage`): a layer's
//!   dir, then its record, then — after the whole chain — the image dir, then
//!   `generation`. Removal renames the image away first.
//! * The writer keeps containers/storage's index current at every change
//!   ([`writer`]: index files, then the stamp, before `generation`); a
//!   program that opens a writer root must open it with [`open_store`] to
//!   change it (`Store::open` alone gives a store that refuses changes).
//! * A reader never writes, deletes or locks anything on the share, and never
//!   follows a symlink found there. Only 64-hex names count; image names must
//!   be valid references (text from the share is untrusted).
//! * On a reader, local first: a name or id a local and a shared image both
//!   have is the local one's (see docs/sharing.md).
//! * The [`Refresher`] reads `generation` each tick and scans only when it
//!   changed (or a full rescan is due). A scan reads JSON only for new ids,
//!   adds layers parent-first and images only when their whole chain is
//!   present, retries what is not yet valid on later scans — re-reading a
//!   record only when its file changed, warning once — and applies the result
//!   to the store under its lock in one short step.
//! * A scan takes the share's ids from the reader's saved [`view`] when
//!   `generation` is what it validated last, from the share's [`index`] when
//!   that is current, and from a listing of the directories otherwise (with
//!   a warning) and every full rescan. The share's directories' link counts
//!   check the view and the index ([`scan::links_cover`]). The view lives in
//!   the reader's own root (`<root>/share-view`), so a one-shot command
//!   starts from it: a constant number of file reads on the share.
//! * Every change is a [`StoreEvent`] for [`Refresher::subscribe`]rs.
//!
//! ## Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use storectl_remote::{RefreshOptions, Refresher};
//! use storectl_storage::{Store, StoreOptions};
//!
//! let store = Arc::new(Store::open(StoreOptions::new("/var/lib/storectl"))?);
//! let opts = RefreshOptions::from_config(&store.layout().config);
//! let refresher = Arc::new(Refresher::new(store, opts)?);
//! let events = refresher.subscribe();
//! let _running = refresher.spawn();
//! for event in events {
//!     println!("{event:?}");
//! }
//! # Ok::<(), storectl_remote::Error>(())
//! ```

mod error;
pub mod events;
pub mod index;
pub mod metrics;
#[cfg(test)]
mod proptests;
pub mod refresher;
pub mod scan;
pub mod share;
pub mod view;
pub mod writer;

pub use error::{Error, Result};
pub use events::StoreEvent;
pub use refresher::{RefreshOptions, RefreshStats, Refresher, RefresherHandle, ScanSource, Tick};
pub use scan::ScanStats;
pub use writer::open_store;
