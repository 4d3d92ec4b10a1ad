//! `storectl mount` / `storectl umount`.

use std::path::Path;

use crate::util::{open_store_scanned, out};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image name, id or unique id prefix.
    image: String,
}

#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// Image name, id or unique id prefix.
    image: String,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let image = store.resolve_image(&args.image)?;
    out(store.mount_image(&image)?.display());
    Ok(())
}

pub fn run_umount(root: &Path, args: UmountArgs) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let image = store.resolve_image(&args.image)?;
    if !store.unmount_image(&image)? {
        anyhow::bail!("image {} is not mounted", image.id);
    }
    out(image.id);
    Ok(())
}
