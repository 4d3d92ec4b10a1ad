//! Store events: what a refresher changed in the in-memory store.

use serde::Serialize;

/// One change to the in-memory store, as a daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event")]
pub enum StoreEvent {
    ImageAdded {
        id: String,
        names: Vec<String>,
    },
    /// A shared image's names changed (tagged or untagged on the writer).
    ImageUpdated {
        id: String,
        names: Vec<String>,
    },
    ImageRemoved {
        id: String,
    },
    /// The writer removed an image that containers or a mount of this host
    /// use (sent after its `ImageRemoved`). They keep working while its
    /// layers stay on the share: until `layers_deleted_after` (RFC 3339; the
    /// share's grace period), `None` when the share does not say (a writer
    /// without a grace period deletes them at once).
    ImageRemovedInUse {
        id: String,
        /// The containers made from it (names, else ids).
        containers: Vec<String>,
        /// Whether the image itself is mounted (`storectl mount IMAGE`).
        mounted: bool,
        layers_deleted_after: Option<String>,
    },
    LayerAdded {
        id: String,
    },
    LayerRemoved {
        id: String,
    },
}
