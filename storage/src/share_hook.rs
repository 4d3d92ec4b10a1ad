//! The writer side of sharing, as the store sees it: a [`ShareHook`] that a
//! writer's [`Store`] calls at fixed points of every change, so that what
//! other programs read on the share — containers/storage's index
//! (`layers.json`, `images.json`, the stamp, lock-file tokens), the
//! per-entry files beside it (tar-split links, short names, big-data
//! names) — and the writer's own legacy names follow the store.
//!
//! The store knows when; the hook knows what. storectl-remote's `writer`
//! implements it, and `storectl_remote::open_store` installs it
//! ([`StoreOptions::share_hook`](crate::StoreOptions::share_hook)). A writer
//! store opened without one reads as any other, but refuses every change
//! ([`Error::NoShareWriter`](crate::Error::NoShareWriter)): the index would
//! go stale, and podman reads it without asking whether it is current.
//!
//! The calls, in a change's order (writer lock held throughout):
//!
//! 1. [`before_mutation`](ShareHook::before_mutation), the state current;
//!    after a crashed holder, [`sweeping`](ShareHook::sweeping) before the
//!    sweep removes unused layers and [`swept`](ShareHook::swept) after;
//! 2. while publishing: [`layer_published`](ShareHook::layer_published)
//!    after each shared layer's directories are in place,
//!    [`image_staged`](ShareHook::image_staged) while a shared image's
//!    directory is staged, [`image_changed`](ShareHook::image_changed) when
//!    a record is rewritten in place;
//! 3. [`before_generation`](ShareHook::before_generation) each time the
//!    state changed, before `generation` is replaced: a publish, and a
//!    removal — which takes its image and layers out of the state first, so
//!    the index forgets them before their directories go
//!    ([`removing_layer`](ShareHook::removing_layer) for each then).
//!
//! Whenever the store (re-)reads its state it says where from:
//! [`read_from_index`](ShareHook::read_from_index) with the lines it read,
//! or [`read_from_records`](ShareHook::read_from_records).

use std::any::Any;
use std::fmt;
use std::path::Path;

use crate::config::Layout;
use crate::csindex::Line;
use crate::error::Result;
use crate::meta::Image;
use crate::store::{State, Store};

/// Makes a writer store's [`ShareHook`] as it opens (one per store: a hook
/// keeps what it knows of the share in step with that store's state).
pub type MakeShareHook = fn(&Layout) -> Box<dyn ShareHook>;

/// containers/storage's index files as a writer store read its state from
/// them: each record's line, by id, ascending, and the files' sizes. A
/// line's id is beside it only when it is not where the writer renders it
/// ([`csindex::line_id`](crate::csindex::line_id)): 40,000 ids not copied
/// at 10,000 images.
#[derive(Debug, Default)]
pub struct IndexLines {
    pub layers: Vec<(Option<String>, Line)>,
    pub images: Vec<(Option<String>, Line)>,
    /// Of `layers.json` and `images.json`.
    pub sizes: (u64, u64),
}

/// What the change [`ShareHook::before_generation`] is told of did, as far
/// as the store knows it without a diff.
/// Besides, records rewritten in place were each told of
/// ([`ShareHook::image_changed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change<'a> {
    /// A layer was published, and nothing else changed: no image, no
    /// removal. (containers/storage's index lists a layer only once an
    /// image uses it, so such a change leaves the index as it is.)
    LayerAdded,
    /// Image `id` was published (a new record), and nothing else changed:
    /// nothing removed; the layers it needs were published before.
    ImageAdded(&'a str),
    /// Anything else: the hook diffs the state to find out.
    Other,
}

/// The writer side of sharing (see the module documentation). An error
/// stops the change the store was making, as an error of its own would.
pub trait ShareHook: Send + Sync + fmt::Debug {
    /// The hook as `Any`, for its implementer to find it again
    /// ([`Store::share_hook`]).
    fn as_any(&self) -> &dyn Any;

    /// The store's state was read from containers/storage's index on the
    /// share (at open, or re-reading after another writer process), whose
    /// files held `lines`.
    fn read_from_index(&self, lines: IndexLines);

    /// The store's state was re-read from the per-id records: whatever the
    /// hook knew of the share may be out of date.
    fn read_from_records(&self);

    /// Before a change: the state is current, as of `generation` (the
    /// share's text).
    fn before_mutation(&self, store: &Store, generation: &str) -> Result<()>;

    /// In the sweep after a crashed writer, before it removes the layers no
    /// image uses (already out of the state), as of `generation`.
    fn sweeping(&self, store: &Store, generation: &str) -> Result<()>;

    /// At the end of the sweep after a crashed writer.
    fn swept(&self, store: &Store) -> Result<()>;

    /// Shared layer `id`'s overlay directory and record are in place on the
    /// share (not yet in the state).
    fn layer_published(&self, id: &str) -> Result<()>;

    /// Shared `image`'s directory is staged at `staging` (its files
    /// written; synced and renamed into place next).
    fn image_staged(&self, image: &Image, staging: &Path) -> Result<()>;

    /// Image `id`'s record was rewritten in place (its names).
    fn image_changed(&self, id: &str);

    /// Shared layer `id`'s files are about to be removed (it is out of the
    /// state; `generation` moved on since).
    fn removing_layer(&self, id: &str) -> Result<()>;

    /// The state (`state`) changed — how, as far as the store knows:
    /// `change` — and `generation` is about to be replaced by `text`.
    fn before_generation(&self, state: &State, text: &str, change: Change<'_>) -> Result<()>;
}
