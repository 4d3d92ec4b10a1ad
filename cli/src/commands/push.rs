//! `storectl push`: upload an image to a registry.

use std::path::Path;

use anyhow::Context;
use storectl_transfer::{PushCompression, PushOptions};

use super::registry_args::RegistryArgs;
use crate::outln;
use crate::progress::ProgressArgs;
use crate::util::open_store_scanned;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressionArg {
    Gzip,
    None,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image name, id or unique id prefix.
    image: String,
    /// Where to push: `registry/repository[:tag]`.
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// How layers are sent.
    #[arg(long, value_enum, default_value = "gzip")]
    compression: CompressionArg,
    /// Layers prepared and uploaded at once.
    #[arg(long, default_value_t = 3)]
    jobs: usize,
    #[command(flatten)]
    progress: ProgressArgs,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let image = store.resolve_image(&args.image)?;
    let opts = PushOptions {
        compression: match args.compression {
            CompressionArg::Gzip => PushCompression::Gzip,
            CompressionArg::None => PushCompression::None,
        },
        jobs: args.jobs,
    };
    let client = args.registry.client()?;
    let renderer = args.progress.renderer();
    let digest =
        storectl_transfer::push(&store, &image, &args.reference, &client, &opts, &renderer);
    renderer.finish(digest.as_ref().ok().map(|_| "Pushed"));
    let digest = digest.with_context(|| format!("pushing {} to {}", image.id, args.reference))?;
    if args.progress.print_result() {
        outln!("{}", digest);
    }
    Ok(())
}
