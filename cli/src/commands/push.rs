//! `storectl push`: upload an image to a registry.

use std::path::Path;

use anyhow::Context;
use storectl_storage::{PushCompression, PushOptions};

use super::registry_args::RegistryArgs;
use crate::progress::{ProgressMode, Renderer};
use crate::util::{open_store_scanned, out};

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
    /// How to show progress.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Print only the manifest digest.
    #[arg(long, short)]
    quiet: bool,
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
    let mode = if args.quiet { ProgressMode::None } else { args.progress };
    let renderer = Renderer::new(mode);
    let digest = store.push(&image, &args.reference, &client, &opts, &renderer);
    renderer.finish(digest.as_ref().ok().map(|_| "Pushed"));
    let digest = digest.with_context(|| format!("pushing {} to {}", image.id, args.reference))?;
    if mode != ProgressMode::Json {
        out(digest);
    }
    Ok(())
}
