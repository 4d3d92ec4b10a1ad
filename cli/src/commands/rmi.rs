//! `storectl rmi`: remove images and the layers no other image needs.

use std::path::Path;

use storectl_storage::Removed;

use crate::util::{open_store_scanned, out};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image names, ids or unique id prefixes.
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    // On a reader, scan first: a shared image is refused as read-only, not unknown.
    let (store, _refresher) = open_store_scanned(root)?;
    for name in &args.images {
        match store.remove_image(name)? {
            Removed::Untagged { name, .. } => out(format!("Untagged {name}")),
            Removed::Deleted { image, layers } => {
                for layer in &layers {
                    out(format!("Deleted layer {layer}"));
                }
                out(format!("Deleted {image}"));
            }
        }
    }
    Ok(())
}
