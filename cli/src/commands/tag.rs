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

/// `tag` through a daemon.
pub fn run_remote(c: &mut crate::daemon::client::Client, args: Args) -> anyhow::Result<()> {
    let req = crate::daemon::pb::storectl::v1::TagRequest {
        image: args.image,
        name: args.name,
    };
    let r = c
        .runtime
        .block_on(c.images.tag(req))
        .map_err(|s| c.status(s))?
        .into_inner();
    outln!("{}", r.id);
    Ok(())
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    // On a reader, scan first: a shared image is refused as read-only, not unknown.
    let (store, _refresher) = open_store_scanned(root)?;
    let image = store.tag(&args.image, &args.name)?;
    outln!("{}", image.id);
    Ok(())
}
