//! `storectl verify`: rebuild each layer's tar from its files and tar-split
//! metadata, and check it hashes to the layer's diffID. Layers are named by
//! their layer id, as in `ls --layers`, `rmi` and progress.

use std::path::Path;

use crate::outln;
use crate::util::open_store_scanned;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this image's layers (default: every layer in the store).
    image: Option<String>,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let layers = match &args.image {
        Some(name) => store.image_layers(&store.resolve_image(name)?)?,
        None => store.layers(),
    };
    let mut bad = Vec::new();
    for layer in &layers {
        let check = store.verify_layer(&layer.id)?;
        match &check.found {
            _ if check.ok() => outln!("ok        {}", layer.id),
            Ok(found) => {
                outln!(
                    "MISMATCH  {}  diffID {}, the rebuilt tar hashes to {found}",
                    layer.id,
                    check.expected
                );
                bad.push(layer.id.clone());
            }
            Err(why) => {
                outln!("FAILED    {}  {why}", layer.id);
                bad.push(layer.id.clone());
            }
        }
    }
    if !bad.is_empty() {
        // Each is on its own line above: the error names a few.
        const NAMED: usize = 5;
        let more = match bad.len().saturating_sub(NAMED) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        anyhow::bail!(
            "{} of {} layers failed verification: {}{more}",
            bad.len(),
            layers.len(),
            bad[..bad.len().min(NAMED)].join(", ")
        );
    }
    Ok(())
}
