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

/// `pull` through a daemon: its progress stream drawn here, its credentials
/// requests answered from here.
pub fn run_remote(c: &mut crate::daemon::client::Client, args: Args) -> anyhow::Result<()> {
    use crate::daemon::client::{follow, request_stream, CredentialAnswers};
    use crate::daemon::pb::storectl::v1 as pb;
    if let Some(p) = &args.platform {
        Platform::parse(p)
            .map_err(anyhow::Error::msg)
            .context("--platform")?;
    }
    let answers = CredentialAnswers::new(&args.registry)?;
    let first = pb::PullClientMessage {
        msg: Some(pb::pull_client_message::Msg::Request(pb::PullRequest {
            reference: args.reference.clone(),
            platform: args.platform.clone().unwrap_or_default(),
            jobs: args.jobs as u32,
            registry: Some(args.registry.options()),
        })),
    };
    let renderer = args.progress.renderer();
    let socket = c.socket.clone();
    let images = &mut c.images;
    let result = c.runtime.block_on(async {
        let (atx, arx) = tokio::sync::mpsc::channel(4);
        let requests = request_stream(first, arx, |a| pb::PullClientMessage {
            msg: Some(pb::pull_client_message::Msg::Credentials(a)),
        });
        let inbound = images
            .pull(requests)
            .await
            .map_err(|s| crate::daemon::client::status_error(&socket, s))?
            .into_inner();
        follow(&socket, inbound, &renderer, Some((&answers, &atx)), |_| {
            Ok(())
        })
        .await
    });
    renderer.finish(result.as_ref().ok().map(|_| "Pulled"));
    let r = result.with_context(|| format!("pulling {}", args.reference))?;
    if args.progress.print_result() {
        outln!("{}", r.id);
    }
    Ok(())
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
        ..PullOptions::default()
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
