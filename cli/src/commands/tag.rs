//! `storectl tag`: add a name to an image.

use std::path::Path;

use crate::outln;
use crate::util::open_store_scanned;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image name, id or unique id prefix.
    image: String,
    /// The new name, NAME[:TAG].
    name: String,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    // On a reader, scan first: a shared image is refused as read-only, not unknown.
    let (store, _refresher) = open_store_scanned(root)?;
    let image = store.tag(&args.image, &args.name)?;
    outln!("{}", image.id);
    Ok(())
}
