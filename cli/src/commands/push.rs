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

/// `push` through a daemon.
pub fn run_remote(c: &mut crate::daemon::client::Client, args: Args) -> anyhow::Result<()> {
    use crate::daemon::client::{follow, request_stream, CredentialAnswers};
    use crate::daemon::pb::storectl::v1 as pb;
    let answers = CredentialAnswers::new(&args.registry)?;
    let first = pb::PushClientMessage {
        msg: Some(pb::push_client_message::Msg::Request(pb::PushRequest {
            image: args.image.clone(),
            reference: args.reference.clone(),
            uncompressed: matches!(args.compression, CompressionArg::None),
            jobs: args.jobs as u32,
            registry: Some(args.registry.options()),
        })),
    };
    let renderer = args.progress.renderer();
    let socket = c.socket.clone();
    let images = &mut c.images;
    let result = c.runtime.block_on(async {
        let (atx, arx) = tokio::sync::mpsc::channel(4);
        let requests = request_stream(first, arx, |a| pb::PushClientMessage {
            msg: Some(pb::push_client_message::Msg::Credentials(a)),
        });
        let inbound = images
            .push(requests)
            .await
            .map_err(|s| crate::daemon::client::status_error(&socket, s))?
            .into_inner();
        follow(&socket, inbound, &renderer, Some((&answers, &atx)), |_| {
            Ok(())
        })
        .await
    });
    renderer.finish(result.as_ref().ok().map(|_| "Pushed"));
    let r = result.with_context(|| format!("pushing {} to {}", args.image, args.reference))?;
    if args.progress.print_result() {
        outln!("{}", r.digest);
    }
    Ok(())
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
        ..PushOptions::default()
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
