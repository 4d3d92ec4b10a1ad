//! `storectl inspect`: an image's metadata, layers and config as JSON.

use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};
use storectl_storage::meta::{CONFIG, MANIFEST};

use crate::util::open_store_scanned;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image name, id or unique id prefix.
    image: String,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let image = store.resolve_image(&args.image)?;
    let doc = |key: &str| -> anyhow::Result<Value> {
        let bytes = store.image_big_data(&image, key)?;
        serde_json::from_slice(&bytes).with_context(|| format!("image {} {key}", image.id))
    };
    let v = json!({
        "id": image.id,
        "digest": image.digest,
        "names": image.names,
        "created": image.created,
        "size": store.image_size(&image),
        "layers": store.image_layers(&image)?,
        "manifest": doc(MANIFEST)?,
        "config": doc(CONFIG)?,
    });
    crate::output::json(&v, true)?;
    Ok(())
}
