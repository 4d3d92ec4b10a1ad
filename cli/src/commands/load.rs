//! `storectl load`: import an OCI layout or a docker-archive.

use std::path::Path;

use storectl_storage::LoadOptions;

use crate::outln;
use crate::progress::ProgressArgs;
use crate::util::open_store_scanned;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An OCI image layout directory or a docker-archive / OCI-archive tarball
    /// (plain, gzip or zstd), or `-` for a tarball on standard input
    /// (`docker save IMAGE | storectl load -`); `PATH:TAG` (or `-:TAG`) picks
    /// one image of several.
    #[arg(allow_hyphen_values = true)]
    path: String,
    /// Add the name NAME[:TAG] to the loaded image, whatever names the archive
    /// gives it (it does not pick an image: use PATH:TAG for that).
    #[arg(long)]
    name: Option<String>,
    /// Refuse a layer whose uncompressed tar is larger (e.g. 64M, 2G).
    #[arg(long, value_parser = parse_size)]
    max_layer_size: Option<u64>,
    /// Layers imported at once.
    #[arg(long, default_value_t = 3)]
    jobs: usize,
    #[command(flatten)]
    progress: ProgressArgs,
}

/// `123`, `64K`, `64M`, `2G`, `1T` (binary units) → bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size unit in {s:?}")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

/// Chunks of the archive a client streams to the daemon.
const CHUNK: usize = 1 << 20;

/// Sends what is written as chunks (from the thread reading the source).
struct Chunks(tokio::sync::mpsc::Sender<Vec<u8>>);

impl std::io::Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for piece in buf.chunks(CHUNK) {
            self.0.blocking_send(piece.to_vec()).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the daemon stopped reading")
            })?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stream `source` (a file, standard input, or a directory as a tar of its
/// contents) into `out` (on a thread of its own).
fn send_source(
    source: Option<std::path::PathBuf>,
    out: Chunks,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    use anyhow::Context;
    std::thread::spawn(move || {
        let mut out = std::io::BufWriter::with_capacity(CHUNK, out);
        match &source {
            None => {
                std::io::copy(&mut std::io::stdin().lock(), &mut out)
                    .context("reading standard input")?;
            }
            Some(p) if p.is_dir() => {
                let mut tar = tar::Builder::new(&mut out);
                tar.follow_symlinks(false);
                tar.append_dir_all(".", p)
                    .with_context(|| format!("reading the layout {}", p.display()))?;
                tar.into_inner()
                    .with_context(|| format!("reading the layout {}", p.display()))?;
            }
            Some(p) => {
                let mut f = std::fs::File::open(p).with_context(|| format!("{}", p.display()))?;
                std::io::copy(&mut f, &mut out)
                    .with_context(|| format!("reading {}", p.display()))?;
            }
        }
        std::io::Write::flush(&mut out).context("sending the archive")?;
        Ok(())
    })
}

/// `load` through a daemon: the archive (or the layout, as a tar) is
/// streamed from here, so the path is the client's.
pub fn run_remote(c: &mut crate::daemon::client::Client, args: Args) -> anyhow::Result<()> {
    use crate::daemon::client::follow;
    use crate::daemon::pb::storectl::v1 as pb;
    use anyhow::Context;
    use tokio_stream::StreamExt;
    let (source, tag) = match args.path.as_str() {
        "-" => (None, None),
        p if p.starts_with("-:") && !Path::new(p).exists() => (None, Some(p[2..].to_string())),
        p => {
            let (path, tag) = storectl_storage::import::split_source_spec(p);
            std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
            (Some(path), tag)
        }
    };
    let first = pb::LoadClientMessage {
        msg: Some(pb::load_client_message::Msg::Request(pb::LoadRequest {
            path: String::new(),
            tag: tag.unwrap_or_default(),
            name: args.name.clone().unwrap_or_default(),
            max_layer_size: args.max_layer_size.unwrap_or(0),
            jobs: args.jobs as u32,
        })),
    };
    let renderer = args.progress.renderer();
    let socket = c.socket.clone();
    let images = &mut c.images;
    let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let sender = send_source(source, Chunks(chunks_tx));
    let result = c.runtime.block_on(async {
        let requests = tokio_stream::once(first).chain(
            tokio_stream::wrappers::ReceiverStream::new(chunks_rx).map(|d| pb::LoadClientMessage {
                msg: Some(pb::load_client_message::Msg::Data(d)),
            }),
        );
        let inbound = images
            .load(requests)
            .await
            .map_err(|s| crate::daemon::client::status_error(&socket, s))?
            .into_inner();
        follow(&socket, inbound, &renderer, None, |_| Ok(())).await
    });
    let sent = sender
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the thread reading the archive failed")));
    renderer.finish(result.as_ref().ok().map(|_| "Loaded"));
    // A failure to read the source explains a failed load best.
    let r = match (result, sent) {
        (Err(_), Err(e)) => return Err(e),
        (r, _) => r?,
    };
    if args.progress.print_result() {
        outln!("{}", r.id);
    }
    Ok(())
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    // On a reader, scan first: layers on the share are not imported again.
    let (store, _refresher) = open_store_scanned(root)?;
    let opts = LoadOptions {
        name: args.name,
        max_layer_size: args.max_layer_size,
        jobs: args.jobs,
        ..LoadOptions::default()
    };
    let renderer = args.progress.renderer();
    let image = store.load(&args.path, &opts, &renderer);
    renderer.finish(image.as_ref().ok().map(|_| "Loaded"));
    let image = image?;
    if args.progress.print_result() {
        outln!("{}", image.id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("10"), Ok(10));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("x").is_err());
        assert!(parse_size("5Q").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
