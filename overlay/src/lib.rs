//! # storectl-overlay — the layer driver
//!
//! This crate owns the `overlay/` directory of a store root and everything that
//! touches layer *contents*: creating layer directories, applying an OCI layer
//! tar stream into a layer's `diff/` (with whiteouts, xattrs, hardlinks,
//! ownership), recording tar-split metadata so the exact layer tar can be rebuilt
//! later, and mounting a chain of layers with the kernel's overlayfs.
//!
//! ## On-disk layout
//!
//! ```text
//! overlay/
//!   <id>/               a local layer (container layers, images on a local store)
//!     diff/             the layer's files, in overlayfs "upper" form
//!     work/ merged/     only for read-write (container) layers
//!     link              the layer's short name, e.g. "5ZKQ3V6X2JH4DTPFOGNPMU7W3C"
//!     lower             "l/<short>:l/<short>…" of the parent chain, top first
//!   <id> -> RO/<id>     a read-only image layer on a shared store (relative symlink)
//!   RO/<id>/            diff/ link [lower]        (the part that can live on a share)
//!   l/<short> -> ../<id>/diff                     short names (for the legacy mount fallback)
//!   empty/              an empty lower dir for mounting one-layer chains
//!   .staging-*          a layer being built; renamed to <id> when complete
//!   .trash-*            a layer being removed
//! ```
//!
//! ## Rules
//!
//! * A layer directory appears under its final name only once it is complete:
//!   it is built in a `.staging-<random>` sibling, synced, and renamed
//!   ([`Driver::stage_layer`] → [`StagedLayer::commit`]).
//! * Dot-prefixed names are debris of an interrupted writer; only a caller that
//!   holds the store's writer lock may remove them ([`Driver::remove_debris`]).
//! * Applying a tar never writes outside the layer's `diff/`: every path is
//!   resolved relative to the diff directory's fd, refusing `..`, absolute paths
//!   and any path that passes through a symlink (see [`apply`]).
//! * The host never follows a symlink that came from a layer.
//! * A layer is synced once, with `syncfs` at commit, not file by file.
//!
//! ## Modules
//!
//! * [`driver`]: layer directories (stage, commit, remove, debris, usage);
//! * [`apply`]: a layer tar stream into `diff/`;
//! * [`tarsplit`]: the tar-split record written while applying, and
//!   [`tarsplit::reassemble`] to rebuild the identical tar;
//! * [`compression`]: gzip/zstd detection and streaming decompression;
//! * [`mount`]: overlayfs mounts of layer chains (the new mount API's
//!   `lowerdir+`, up to [`MAX_LOWERS`] layers; a one-page legacy fallback).
//!
//! ## Whiteouts
//!
//! OCI whiteouts are stored the way overlayfs reads them:
//!
//! ```text
//! tar entry            diff/ on disk
//! dir/.wh.NAME    ->   dir/NAME   character device 0:0
//! dir/.wh..wh..opq ->  dir/       xattr trusted.overlay.opaque = "y"
//! ```
//!
//! A store wired to a share writes `user.overlay.opaque` and mounts with
//! overlayfs' `userxattr` option ([`XattrMode::User`]), because NFS carries
//! only `user.*` xattrs; where the filesystem takes it, such a layer also
//! gets `trusted.overlay.opaque` (which `userxattr` mounts ignore) for
//! containers/storage, which mounts a share's layers without `userxattr`.

pub mod apply;
pub mod compression;
pub mod driver;
mod error;
mod fsutil;
pub mod mount;
#[cfg(test)]
mod proptests;
pub mod tarsplit;
#[cfg(test)]
mod testutil;

pub use apply::{apply_tar, ApplyOptions, ApplyStats};
pub use compression::Compression;
pub use driver::{is_layer_id, Driver, StagedLayer, XattrMode};
pub use error::{Error, Result};
pub use mount::{MountApi, MAX_LOWERS};
