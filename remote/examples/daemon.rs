//! A minimal daemon on a reader host: open the store, start the refresher,
//! and log every event until interrupted.
//!
//! ```sh
//! storectl --root /var/lib/storectl init --shared /mnt/share --role reader
//! cargo run -p storectl-remote --example daemon -- /var/lib/storectl
//! ```
//!
//! A real daemon would also keep the `Arc<Store>` to serve `images()`,
//! `mount_image()`, … while the refresher keeps it current.

use std::sync::Arc;

use storectl_remote::{RefreshOptions, Refresher, StoreEvent};
use storectl_storage::{Store, StoreOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/var/lib/storectl".into());
    let store = Arc::new(Store::open(StoreOptions::new(&root))?);
    let opts = RefreshOptions::from_config(&store.layout().config);
    let refresher = Arc::new(Refresher::new(Arc::clone(&store), opts)?);
    let events = refresher.subscribe();
    let _running = refresher.spawn(); // stops when dropped
    tracing::info!(
        "watching {} every {:?} (full rescan every {:?})",
        root,
        opts.interval,
        opts.full_rescan
    );
    for event in events {
        match event {
            StoreEvent::ImageAdded { id, names } => {
                tracing::info!(
                    "image added {id} {names:?}; {} images now",
                    store.images().len()
                )
            }
            StoreEvent::ImageUpdated { id, names } => {
                tracing::info!("image {id} is now named {names:?}")
            }
            StoreEvent::ImageRemoved { id } => tracing::info!("image removed {id}"),
            StoreEvent::LayerAdded { id } => tracing::debug!("layer added {id}"),
            StoreEvent::LayerRemoved { id } => tracing::debug!("layer removed {id}"),
            StoreEvent::ImageRemovedInUse {
                id,
                containers,
                layers_deleted_after,
                ..
            } => tracing::warn!(
                "image {id} removed while containers {containers:?} use it;                  its layers go after {layers_deleted_after:?}"
            ),
        }
    }
    Ok(())
}
