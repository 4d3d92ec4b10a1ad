//! `storectl tag`: add a name to an image.

use std::path::Path;

use crate::util::{open_store, out};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image name, id or unique id prefix.
    image: String,
    /// The new name, NAME[:TAG].
    name: String,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let store = open_store(root)?;
    let image = store.tag(&args.image, &args.name)?;
    out(image.id);
    Ok(())
}
