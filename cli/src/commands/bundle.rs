//! `storectl bundle CONTAINER DIR [-- COMMAND…]`: an OCI runtime bundle
//! (`DIR/config.json`) whose root is the container's read-write mount, so
//! that `runc run -b DIR NAME` runs it.

use std::path::{Path, PathBuf};

use crate::outln;
use crate::util::open_store_scanned;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container name, id or unique id prefix.
    container: String,
    /// The bundle directory (made if missing; its config.json is replaced).
    dir: PathBuf,
    /// A command to run instead of the image's Cmd (after its Entrypoint).
    #[arg(last = true)]
    command: Vec<String>,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let c = store.resolve_container(&args.container)?;
    let config = store.write_bundle(&c, &args.dir, &args.command)?;
    outln!("{}", config.display());
    Ok(())
}
