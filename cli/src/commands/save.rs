//! `storectl save`: write an image to a docker-archive (the default, as
//! `podman save`), an OCI archive or an OCI layout directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use storectl_transfer::SaveFormat;

use crate::progress::ProgressArgs;
use crate::util::open_store_scanned;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// A `docker save` tarball.
    DockerArchive,
    /// An OCI image layout in a tarball.
    OciArchive,
    /// An OCI image layout directory.
    #[value(alias = "oci")]
    OciDir,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image name, id or unique id prefix. Saved by name, the archive carries
    /// that name (normalized); saved by id, none (as `podman save`).
    image: String,
    /// Where to write: a tarball replaces an existing file; a directory
    /// (oci-dir) must not exist or be empty. Its parent directory must exist.
    #[arg(short, long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "docker-archive")]
    format: FormatArg,
    #[command(flatten)]
    progress: ProgressArgs,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let image = store.resolve_image(&args.image)?;
    let format = match args.format {
        FormatArg::DockerArchive => SaveFormat::DockerArchive,
        FormatArg::OciArchive => SaveFormat::OciArchive,
        FormatArg::OciDir => SaveFormat::Oci,
    };
    // The name the user asked for, when it is one of the image's names.
    let normalized = storectl_storage::reference::normalize_name(&args.image).ok();
    let name = image
        .names
        .iter()
        .find(|n| **n == args.image || Some(*n) == normalized.as_ref())
        .filter(|n| !n.contains('@'));
    let renderer = args.progress.renderer();
    let result = storectl_transfer::save(
        &store,
        &image,
        &args.output,
        format,
        name.map(String::as_str),
        &renderer,
    );
    renderer.finish(result.as_ref().ok().map(|_| "Saved"));
    result.with_context(|| format!("saving {} to {}", image.id, args.output.display()))
}
