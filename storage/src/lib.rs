//! # storectl-storage — layer store, image store, and the `Store` facade
//!
//! This crate owns the metadata half of a store root, and drives the layer
//! driver ([`storectl_overlay`]) for the contents:
//!
//! ```text
//! <root>/
//!   overlay/ …                         the layer driver's (see storectl-overlay)
//!   overlay-layers/<id>/layer.json     one record per layer; <id> = OCI chain id
//!   overlay-layers/<id>/<id>.tar-split.gz   tar headers to rebuild the layer tar
//!   overlay-layers/<id> -> RO/<id>     a shared (read-only) layer's record
//!   overlay-images/<id>/images.json    one record per image; <id> = sha256 of config
//!   overlay-images/<id>/manifest       the manifest it was loaded from
//!   overlay-images/<id>/config         the image config
//!   overlay-containers/<id>/container.json  one record per container
//!                                      (writable layer: overlay/<id>/, always local)
//!   mounts/<image id>/                 where `mount` puts an image
//!   usage-cache.json                   layer figures for `df` ([`Store::disk_usage`])
//!   generation                         replaced after every publish or removal
//!   storage.lock                       the single-writer lock (flock; "host H pid P")
//! ```
//!
//! Field names in the records follow containers/storage (`compressed-diff-digest`,
//! `diff-size`, `big-data-names`, …).
//!
//! This crate knows nothing of HTTP, TLS or registry auth: pulling, pushing
//! and saving live in `storectl-transfer`, which builds a
//! [`SourceImage`](import::SourceImage) (config, manifest, and layer blobs —
//! a registry's as [`RemoteBlob`](import::RemoteBlob)s) and hands it to
//! [`Store::import`], and reads layers back with [`Store::write_layer_tar`].
//! The progress vocabulary ([`progress`]) is here because `load` reports
//! with it too.
//!
//! ## containers/storage's index on a share
//!
//! A writer also keeps, on the share, the files containers/storage reads
//! (podman's `additionalimagestores`), rendered by the pure [`csindex`]
//! module. The store does not write them itself: it calls a [`ShareHook`]
//! at fixed points of every change ([`share_hook`]), which storectl-remote's
//! share writer implements and `storectl_remote::open_store` installs; a
//! writer store opened without one changes nothing
//! ([`Error::NoShareWriter`]). The store reads them (opening from the
//! index, `index_state.rs`).
//!
//! ```text
//! <share>/overlay-layers/layers.json        the shared images' layers, one record per line
//! <share>/overlay-layers/<id>.tar-split.gz  a hardlink of <id>/<id>.tar-split.gz
//! <share>/overlay-images/images.json        every shared image, one record per line
//! <share>/overlay-images/<id>/=<base64 key> big data under containers/storage's names
//! <share>/overlay/l/<short>                 -> ../<id>/diff, as in a podman root
//! <share>/storectl-index.json               stamp: the generation text and both sizes
//! <share>/storage.lock, overlay-layers/layers.lock, overlay-images/images.lock
//!                                           64-byte change tokens, rewritten in place
//! ```
//!
//! **Write order** (each file temp + fsync + rename, or — a change that
//! only adds records — appended in place under containers/storage's lock):
//! per-id dirs → `layers.json` → `images.json` → stamp → `generation`; a
//! removal writes `images.json` before `layers.json`, and both before the
//! per-id dirs go.
//! So containers/storage never lists an image or layer whose directories
//! are not whole, and a reader that finds the stamp naming the `generation`
//! it read, with both sizes matching, knows the index is that generation's
//! ([`csindex::Stamp`]); anything else (no stamp, an older generation, other
//! sizes) means "use the directories".
//!
//! A writer also keeps `<share>/storectl-removed.json`: the layers of
//! removed shared images waiting out the share's grace period
//! ([`grace`], [`Store::gc`]).
//!
//! ## Rules
//!
//! * **Layer id = chain id.** A layer two images share is stored once and
//!   imported once; `rmi` removes only layers no remaining image needs.
//! * **Atomic publish.** Everything appears by `rename`: a layer's overlay dir
//!   (built in `.staging-*`, synced), then its record dir, then the image dir
//!   (staged whole) — only after every layer of its chain. Removal is the
//!   reverse: the image dir is renamed away first. Readers take no lock and
//!   never see half a layer or image. `generation` is bumped after each step.
//! * **One writer.** Mutations hold `storage.lock`; a second writer waits
//!   for it, forever by default as podman's do ([`StoreOptions::lock_wait`]:
//!   a timeout, after which it gets [`Error::Locked`] naming the holder, and
//!   a callback told who holds it once the wait passes a second). After a
//!   crashed holder (no `released` in the lock file) the next one sweeps the
//!   dot-prefixed debris (`.staging-*`, `.trash-*`, `.tmp-*`) and layers no
//!   image uses; otherwise a mutation trusts the in-memory state and re-reads
//!   records only when `generation` changed: its work does not grow with
//!   the store. A writer opens (and re-reads) its shared layers and images
//!   from containers/storage's index on the share when the index can stand
//!   for their records (current stamp, a holder that let go normally:
//!   `index_state.rs`), not from 40,000 per-id records; each record is
//!   parsed when first used ([`Records`]). At
//!   most [`MAX_LAYERS`] layers per image, extracted `jobs` at a time.
//! * **Everything is checked.** Every blob's sha256 against its descriptor,
//!   every layer's uncompressed sha256 against the config's `rootfs.diff_ids`;
//!   a mismatch leaves nothing behind.
//! * **Junk is skipped, not fatal.** Opening a store skips (with a `tracing`
//!   warning) records that do not parse, layers whose chain is broken, and
//!   images missing a layer (one warning each, naming the path); a writer
//!   moves an entry it did not make that sits on a name it must write to a
//!   dot-prefixed `.storectl-trash/`. The library never prints.
//! * **Sharing's writer side is not here.** This crate depends on the layer
//!   driver only (cli → remote → storage → overlay); what a writer keeps on
//!   its share for other programs is behind [`ShareHook`].
//!
//! ## Using it
//!
//! ```no_run
//! use storectl_storage::{LoadOptions, NoopReporter, Store, StoreOptions};
//! // A local root (a writer root: `storectl_remote::open_store`).
//! let store = Store::open(StoreOptions::new("/var/lib/storectl"))?;
//! let image = store.load("busybox-oci:latest", &LoadOptions::default(), &NoopReporter)?;
//! let path = store.mount_image(&image)?;
//! # Ok::<(), storectl_storage::Error>(())
//! ```

pub mod bundle;
pub mod config;
pub mod container;
pub mod csindex;
pub mod digest;
mod error;
pub mod fsutil;
pub mod grace;
pub mod import;
mod index_state;
mod layer_tar;
pub mod links;
pub mod lock;
pub mod meta;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod progress;
#[cfg(test)]
mod proptests;
pub mod reference;
pub mod share_hook;
mod store;
pub mod usage;

pub use config::{Layout, Role, RootConfig};
pub use container::Container;
pub use error::{Error, IoContext, Result};
pub use lock::{LockHolder, LockNotice, LockWait};
pub use meta::{Image, Layer};
pub use progress::{EventKind, NoopReporter, ProgressEvent, Reporter};
pub use share_hook::{Change, IndexLines, MakeShareHook, ShareHook};
pub use store::{
    list_id_entries, list_ids, ContainerOptions, ContainerUsage, DiskUsage, FsUsage, GcReport,
    ImageUsage, LayerCheck, LoadOptions, Record, Records, Removed, SharedDelta, State, Store,
    StoreOptions, IMAGES_JSON, LAYER_JSON, MAX_LAYERS,
};
pub use storectl_overlay::XattrMode;
