//! `storectl rmi`: remove images and the layers no other image needs.
//!
//! As `podman rmi`: `rmi NAME` of an image with several names removes that
//! name only; `rmi ID` of such an image is refused without `--force`; with
//! several images, a failure is reported (one `storectl: error:` line on
//! stderr) and the others are still removed, and the exit code is 1 if any failed.

use std::path::Path;

use storectl_storage::Removed;

use crate::outln;
use crate::output::{self, Reported};
use crate::util::open_store_scanned;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image names, ids or unique id prefixes.
    #[arg(required = true)]
    images: Vec<String>,
    /// Remove an image named by id even when it has several names (all
    /// go), and the containers that use it (else refused, naming them).
    #[arg(short, long)]
    force: bool,
}

/// `rmi` through a daemon: the same lines, one call per image.
pub fn run_remote(c: &mut crate::daemon::client::Client, args: Args) -> anyhow::Result<()> {
    let mut failed = 0;
    for name in &args.images {
        let req = crate::daemon::pb::storectl::v1::RemoveRequest {
            image: name.clone(),
            force: args.force,
        };
        match c.runtime.block_on(c.images.remove(req)) {
            Ok(r) => {
                let r = r.into_inner();
                if !r.untagged.is_empty() {
                    outln!("Untagged: {}", r.untagged);
                } else {
                    for layer in &r.deleted_layers {
                        outln!("Deleted layer: {layer}");
                    }
                    outln!("Deleted: {}", r.deleted);
                }
            }
            Err(s) => {
                failed += 1;
                output::error_line(&crate::one_line(&c.status(s)));
            }
        }
    }
    if failed > 0 {
        return Err(Reported { failed }.into());
    }
    Ok(())
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    // On a reader, scan first: a shared image is refused as read-only, not unknown.
    let (store, _refresher) = open_store_scanned(root)?;
    let mut failed = 0;
    for name in &args.images {
        match store.remove_image(name, args.force) {
            Ok(Removed::Untagged { name, .. }) => outln!("Untagged: {name}"),
            Ok(Removed::Deleted {
                image,
                layers,
                containers,
            }) => {
                for c in &containers {
                    outln!("Removed container: {c}");
                }
                for layer in &layers {
                    outln!("Deleted layer: {layer}");
                }
                outln!("Deleted: {image}");
                if let Some(r) = store.removals().images.get(&image) {
                    outln!(
                        "Kept {} layer(s) on the share until {} (its grace period; storectl gc deletes them then)",
                        r.layers.len(),
                        r.delete_after
                    );
                }
            }
            Err(e) => {
                failed += 1;
                output::error_line(&crate::one_line(&e.into()));
            }
        }
    }
    if failed > 0 {
        return Err(Reported { failed }.into());
    }
    Ok(())
}
