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

/// The name the archive carries: the one the user asked for, when it is one
/// of the image's names (not a digest reference); saved by id, none.
pub fn archive_name<'a>(image: &'a storectl_storage::Image, asked: &str) -> Option<&'a String> {
    let normalized = storectl_storage::reference::normalize_name(asked).ok();
    image
        .names
        .iter()
        .find(|n| **n == asked || Some(*n) == normalized.as_ref())
        .filter(|n| !n.contains('@'))
}

/// `save` through a daemon: the tarball is streamed back and written here
/// (beside the destination, renamed into place when complete); an OCI
/// directory comes as an oci-archive and is unpacked here.
pub fn run_remote(c: &mut crate::daemon::client::Client, args: Args) -> anyhow::Result<()> {
    use crate::daemon::client::follow;
    use crate::daemon::pb::storectl::v1 as pb;
    use std::io::Write;
    let dest = &args.output;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !std::fs::metadata(&parent)
        .with_context(|| format!("{}", parent.display()))?
        .is_dir()
    {
        anyhow::bail!("{}: not a directory", parent.display());
    }
    let dir = matches!(args.format, FormatArg::OciDir);
    match std::fs::symlink_metadata(dest) {
        Err(_) => {}
        Ok(m) if dir && m.is_dir() && std::fs::read_dir(dest)?.next().is_none() => {}
        Ok(m) if !dir && m.is_file() => {}
        Ok(_) => anyhow::bail!("{}: already exists; choose a new path", dest.display()),
    }
    let format = match args.format {
        FormatArg::DockerArchive => pb::SaveFormat::DockerArchive,
        FormatArg::OciArchive => pb::SaveFormat::OciArchive,
        FormatArg::OciDir => pb::SaveFormat::OciDir,
    };
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let tmp = parent.join(format!(
        ".{file_name}.tmp-{}",
        storectl_storage::fsutil::unique_suffix()
    ));
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?,
    );
    let renderer = args.progress.renderer();
    let socket = c.socket.clone();
    let images = &mut c.images;
    let req = pb::SaveRequest {
        image: args.image.clone(),
        format: format as i32,
        path: String::new(),
    };
    let result = c.runtime.block_on(async {
        let inbound = images
            .save(req)
            .await
            .map_err(|s| crate::daemon::client::status_error(&socket, s))?
            .into_inner();
        follow(&socket, inbound, &renderer, None, |d| {
            out.write_all(d)
                .with_context(|| format!("{}", tmp.display()))
        })
        .await
    });
    let finished = result.and_then(|r| {
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("{}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("{}", tmp.display()))?;
        if dir {
            let unpacked = parent.join(format!(
                ".{file_name}.tmp-{}",
                storectl_storage::fsutil::unique_suffix()
            ));
            let unpack = (|| {
                let mut a = tar::Archive::new(std::fs::File::open(&tmp)?);
                std::fs::create_dir(&unpacked)?;
                a.unpack(&unpacked)?;
                if dest.exists() {
                    std::fs::remove_dir(dest)?;
                }
                std::fs::rename(&unpacked, dest)
            })();
            let _ = std::fs::remove_file(&tmp);
            if unpack.is_err() {
                let _ = std::fs::remove_dir_all(&unpacked);
            }
            unpack.with_context(|| format!("unpacking the layout into {}", dest.display()))?;
        } else {
            std::fs::rename(&tmp, dest).with_context(|| format!("{}", dest.display()))?;
        }
        Ok(r)
    });
    if finished.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renderer.finish(finished.as_ref().ok().map(|_| "Saved"));
    finished.with_context(|| format!("saving {} to {}", args.image, dest.display()))?;
    Ok(())
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let image = store.resolve_image(&args.image)?;
    let format = match args.format {
        FormatArg::DockerArchive => SaveFormat::DockerArchive,
        FormatArg::OciArchive => SaveFormat::OciArchive,
        FormatArg::OciDir => SaveFormat::Oci,
    };
    let name = archive_name(&image, &args.image);
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
