//! The client side: `storectl --host unix://PATH VERB …` (or
//! `$STORECTL_HOST`) runs pull, push, load, save, tag, rmi, ls and inspect
//! through a daemon, drawing its progress stream with the same renderer as
//! in-process runs. Registry credentials stay with the client: it answers
//! the daemon's requests from `--creds`, the auth file (and its credential
//! helpers), or a prompt on a terminal.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hyper_util::rt::TokioIo;
use storectl_storage::progress::Reporter;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Streaming;

use super::convert;
use super::pb::storectl::v1 as pb;
use super::pb::storectl::v1::operation_message::Msg;
use crate::commands::registry_args::RegistryArgs;
use crate::progress::Renderer;

/// A connection to a daemon, and a runtime to drive it.
pub struct Client {
    pub runtime: tokio::runtime::Runtime,
    pub images: pb::images_client::ImagesClient<Channel>,
    pub socket: PathBuf,
}

/// `unix:///run/storectl/storectl.sock` (or a bare absolute path) → the path.
pub fn socket_path(host: &str) -> anyhow::Result<PathBuf> {
    let path = host.strip_prefix("unix://").unwrap_or(host);
    if !path.starts_with('/') {
        anyhow::bail!(
            "--host {host:?}: expected unix:///PATH/TO/SOCKET (the daemon serves only a unix socket)"
        );
    }
    Ok(PathBuf::from(path))
}

impl Client {
    pub fn connect(host: &str) -> anyhow::Result<Client> {
        let socket = socket_path(host)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let path = socket.clone();
        let channel = runtime
            .block_on(async move {
                Endpoint::try_from("http://storectl.sock")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await
            })
            .map_err(|e| anyhow::anyhow!("{}", transport_error(&e)))
            .with_context(|| format!("cannot reach the storectl daemon at {}", socket.display()))?;
        let images = pb::images_client::ImagesClient::new(channel)
            .max_decoding_message_size(super::MAX_REPLY);
        Ok(Client {
            runtime,
            images,
            socket,
        })
    }

    /// A status from the daemon as an error (one line).
    pub fn status(&self, s: tonic::Status) -> anyhow::Error {
        status_error(&self.socket, s)
    }
}

/// The innermost message of a transport error (e.g. `Permission denied`).
fn transport_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        last = c.to_string();
        cur = c.source();
    }
    last
}

pub fn status_error(socket: &Path, s: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            if s.message().is_empty()
                || s.message().contains("transport")
                || s.message().contains("connection")
                || s.message().contains("h2 protocol")
                || s.message().contains("broken pipe") =>
        {
            let detail = std::error::Error::source(&s)
                .map(transport_error)
                .unwrap_or_else(|| s.message().to_string());
            anyhow::anyhow!(
                "lost the connection to the storectl daemon at {} ({detail})",
                socket.display()
            )
        }
        _ => anyhow::anyhow!("{}", s.message()),
    }
}

/// Where the client finds registry credentials to answer the daemon with.
pub struct CredentialAnswers {
    creds: Option<storectl_transfer::registry::Credentials>,
}

impl CredentialAnswers {
    pub fn new(args: &RegistryArgs) -> anyhow::Result<Self> {
        Ok(CredentialAnswers {
            creds: args.credentials()?,
        })
    }

    /// Credentials for `registry`: `--creds`, the auth file (its credential
    /// helpers included), or a prompt when standard input is a terminal.
    fn answer(&self, registry: &str) -> Option<storectl_transfer::registry::Credentials> {
        if let Some(c) = &self.creds {
            return Some(c.clone());
        }
        let from_file =
            storectl_transfer::registry::AuthFile::load_default().and_then(|f| f.resolve(registry));
        match from_file {
            Ok(Some(c)) => return Some(c),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}"),
        }
        crate::util::prompt_credentials(registry)
    }
}

/// Read an operation's stream to its end: progress to `renderer`, answers to
/// credentials requests on `answers_tx`, data to `data`. Returns the result.
pub async fn follow(
    socket: &Path,
    mut inbound: Streaming<pb::OperationMessage>,
    renderer: &Renderer,
    answers: Option<(&CredentialAnswers, &mpsc::Sender<pb::CredentialsAnswer>)>,
    mut data: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<pb::Result> {
    let report = |p: &pb::Progress| {
        for e in &p.events {
            if let Some(ev) = convert::progress_event(e) {
                renderer.report(&ev);
            }
        }
    };
    loop {
        let msg = inbound
            .message()
            .await
            .map_err(|s| status_error(socket, s))?;
        let Some(msg) = msg else {
            anyhow::bail!(
                "the storectl daemon at {} ended the operation without a result",
                socket.display()
            );
        };
        match msg.msg {
            Some(Msg::Progress(p)) => report(&p),
            Some(Msg::Data(d)) => data(&d)?,
            Some(Msg::Credentials(req)) => {
                // A prompt blocks this (single-threaded) runtime meanwhile: fine.
                let creds = answers.and_then(|(a, _)| a.answer(&req.registry));
                if let Some((_, tx)) = answers {
                    let answer = match creds {
                        Some(c) => pb::CredentialsAnswer {
                            id: req.id,
                            username: c.username,
                            password: c.password,
                            none: false,
                        },
                        None => pb::CredentialsAnswer {
                            id: req.id,
                            none: true,
                            ..Default::default()
                        },
                    };
                    let _ = tx.send(answer).await;
                }
            }
            Some(Msg::Result(r)) => {
                if let Some(p) = &r.last {
                    report(p);
                }
                return Ok(r);
            }
            Some(Msg::Error(f)) => {
                if let Some(p) = &f.last {
                    report(p);
                }
                return Err(anyhow::anyhow!("{}", f.message));
            }
            None => {}
        }
    }
}

/// A request stream: the first message, then what `rx` yields (credentials answers).
pub fn request_stream<M: Send + 'static>(
    first: M,
    answers: mpsc::Receiver<pb::CredentialsAnswer>,
    wrap: fn(pb::CredentialsAnswer) -> M,
) -> impl tokio_stream::Stream<Item = M> + Send + 'static {
    use tokio_stream::StreamExt;
    tokio_stream::once(first).chain(ReceiverStream::new(answers).map(wrap))
}
