//! `storectl mount` / `storectl umount`.

use std::path::Path;

use storectl_storage::Error as StorageError;

use crate::outln;
use crate::util::open_store_scanned;

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
    outln!("{}", store.mount_image(&image)?.display());
    Ok(())
}

pub fn run_umount(root: &Path, args: UmountArgs) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let id = match store.resolve_image(&args.image) {
        Ok(image) => image.id,
        // Still mounted here, but gone from the store (e.g. removed on the
        // writer host): unmount it by its id.
        Err(StorageError::ImageUnknown { .. }) => {
            let prefix = args.image.strip_prefix("sha256:").unwrap_or(&args.image);
            match store.mounted_ids(prefix)?.as_slice() {
                [one] => one.clone(),
                _ => return Err(store.resolve_image(&args.image).unwrap_err().into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    if !store.unmount_id(&id)? {
        anyhow::bail!("image {id} is not mounted");
    }
    outln!("{}", id);
    Ok(())
}
