//! `storectl inspect`: an image's metadata, layers and config as JSON.

use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};
use storectl_storage::meta::{CONFIG, MANIFEST};

use super::ls::Listed;
use crate::util::open_store_scanned;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image name, id or unique id prefix.
    image: String,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let image = store.resolve_image(&args.image)?;
    let listed = Listed {
        size: store.image_size(&image),
        layers: store.image_layers(&image)?,
        image: image.clone(),
    };
    let v = inspect_json(
        &listed,
        &store.image_big_data(&image, MANIFEST)?,
        &store.image_big_data(&image, CONFIG)?,
    )?;
    crate::output::json(&v, true)?;
    Ok(())
}

/// `inspect` through a daemon.
pub fn run_remote(c: &mut crate::daemon::client::Client, args: Args) -> anyhow::Result<()> {
    let req = crate::daemon::pb::storectl::v1::InspectRequest { image: args.image };
    let r = c
        .runtime
        .block_on(c.images.inspect(req))
        .map_err(|s| c.status(s))?
        .into_inner();
    let image = r
        .image
        .as_ref()
        .context("the daemon's answer has no image")?;
    let listed = crate::daemon::convert::listed_from_pb(image);
    let v = inspect_json(&listed, &r.manifest, &r.config)?;
    crate::output::json(&v, true)?;
    Ok(())
}

/// What `inspect` prints.
fn inspect_json(listed: &Listed, manifest: &[u8], config: &[u8]) -> anyhow::Result<Value> {
    let image = &listed.image;
    let doc = |key: &str, bytes: &[u8]| -> anyhow::Result<Value> {
        serde_json::from_slice(bytes).with_context(|| format!("image {} {key}", image.id))
    };
    Ok(json!({
        "id": image.id,
        "digest": image.digest,
        "names": image.names,
        "created": image.created,
        "size": listed.size,
        "layers": listed.layers,
        "manifest": doc(MANIFEST, manifest)?,
        "config": doc(CONFIG, config)?,
    }))
}
