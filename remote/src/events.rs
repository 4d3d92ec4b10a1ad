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
    LayerAdded {
        id: String,
    },
    LayerRemoved {
        id: String,
    },
}
