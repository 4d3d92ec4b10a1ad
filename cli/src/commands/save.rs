//! `storectl save`: write an image to an OCI layout or a docker-archive.

use std::path::{Path, PathBuf};

use anyhow::Context;
use storectl_storage::SaveFormat;

use crate::progress::ProgressArgs;
use crate::util::open_store_scanned;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// An OCI image layout directory.
    Oci,
    /// A `docker save` tarball.
    DockerArchive,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image name, id or unique id prefix.
    image: String,
    /// Where to write (must not exist).
    #[arg(short, long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "oci")]
    format: FormatArg,
    #[command(flatten)]
    progress: ProgressArgs,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let image = store.resolve_image(&args.image)?;
    let format = match args.format {
        FormatArg::Oci => SaveFormat::Oci,
        FormatArg::DockerArchive => SaveFormat::DockerArchive,
    };
    let renderer = args.progress.renderer();
    let result = store.save(&image, &args.output, format, &renderer);
    renderer.finish(result.as_ref().ok().map(|_| "Saved"));
    result.with_context(|| format!("saving {} to {}", image.id, args.output.display()))
}
