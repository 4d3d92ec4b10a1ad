//! `storectl rmi`: remove images and the layers no other image needs.

use std::path::Path;

use crate::util::{open_store, out};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image names, ids or unique id prefixes.
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let store = open_store(root)?;
    for name in &args.images {
        let removed = store.remove_image(name)?;
        for layer in &removed.layers {
            out(format!("Deleted layer {layer}"));
        }
        out(format!("Deleted {}", removed.image));
    }
    Ok(())
}
