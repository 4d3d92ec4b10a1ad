//! `storectl pull`: fetch an image from a registry.

use std::path::Path;

use anyhow::Context;
use storectl_storage::LoadOptions;
use storectl_transfer::registry::Platform;
use storectl_transfer::PullOptions;

use super::registry_args::RegistryArgs;
use crate::outln;
use crate::progress::ProgressArgs;
use crate::util::open_store_scanned;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image, `[registry/]repository[:tag][@digest]`.
    reference: String,
    /// Pick this platform from a multi-platform image: os/arch[/variant].
    #[arg(long)]
    platform: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Layers downloaded at once.
    #[arg(long, default_value_t = 3)]
    jobs: usize,
    #[command(flatten)]
    progress: ProgressArgs,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    // On a reader, scan first: layers on the share are not downloaded again.
    let (store, _refresher) = open_store_scanned(root)?;
    let platform = match &args.platform {
        Some(p) => Some(
            Platform::parse(p)
                .map_err(anyhow::Error::msg)
                .context("--platform")?,
        ),
        None => None,
    };
    let opts = PullOptions {
        platform,
        load: LoadOptions {
            jobs: args.jobs,
            ..LoadOptions::default()
        },
    };
    let client = args.registry.client()?;
    let renderer = args.progress.renderer();
    let image = storectl_transfer::pull(&store, &args.reference, &client, &opts, &renderer);
    renderer.finish(image.as_ref().ok().map(|_| "Pulled"));
    let image = image.with_context(|| format!("pulling {}", args.reference))?;
    if args.progress.print_result() {
        outln!("{}", image.id);
    }
    Ok(())
}
