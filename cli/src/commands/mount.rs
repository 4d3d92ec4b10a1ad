//! `storectl mount` / `storectl umount`: a container (read-write: its own
//! writable layer over its image), or an image (read-only).
//!
//! The argument names a container first (id, name or unique id prefix, as
//! `podman mount`), then an image (as `podman image mount`).

use std::path::Path;

use storectl_storage::{Error as StorageError, Store};

use crate::outln;
use crate::util::open_store_scanned;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container (name, id or unique id prefix), else image.
    target: String,
}

#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// Container (name, id or unique id prefix), else image.
    target: String,
}

/// The container `name` names, if it names exactly one; an ambiguous
/// prefix is an error, an unknown one means "an image then".
fn container(store: &Store, name: &str) -> anyhow::Result<Option<storectl_storage::Container>> {
    match store.resolve_container(name) {
        Ok(c) => Ok(Some(c)),
        Err(StorageError::ContainerUnknown { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    if let Some(c) = container(&store, &args.target)? {
        outln!("{}", store.mount_container(&c)?.display());
        return Ok(());
    }
    let image = store.resolve_image(&args.target)?;
    outln!("{}", store.mount_image(&image)?.display());
    Ok(())
}

pub fn run_umount(root: &Path, args: UmountArgs) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    if let Some(c) = container(&store, &args.target)? {
        if !store.unmount_container(&c)? {
            anyhow::bail!("container {} is not mounted", c.id);
        }
        outln!("{}", c.id);
        return Ok(());
    }
    let id = match store.resolve_image(&args.target) {
        Ok(image) => image.id,
        // Still mounted here, but gone from the store (e.g. removed on the
        // writer host): unmount it by its id.
        Err(StorageError::ImageUnknown { .. }) => {
            let prefix = args.target.strip_prefix("sha256:").unwrap_or(&args.target);
            match store.mounted_ids(prefix)?.as_slice() {
                [one] => one.clone(),
                _ => return Err(store.resolve_image(&args.target).unwrap_err().into()),
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
