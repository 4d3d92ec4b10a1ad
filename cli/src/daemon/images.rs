//! `storectl.v1.Images`: the store through the daemon.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use storectl_storage::meta::{CONFIG, MANIFEST};
use storectl_storage::metrics::MetricsReporter;
use storectl_storage::{LoadOptions, Removed};
use storectl_transfer::registry::{ClientOptions, Credentials, Platform, RegistryClient};
use storectl_transfer::{PullOptions, PushCompression, PushOptions, SaveFormat};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::ops::{CredSource, Op, OpCredentials, OpReporter, Outbound, Outcome};
use super::pb::storectl::v1 as pb;
use super::pb::storectl::v1::operation_message::Msg;
use super::{log, Daemon};

/// Messages queued per stream before the sender waits.
const QUEUE: usize = 16;

pub type OpStream = Pin<Box<dyn Stream<Item = Outbound> + Send>>;

pub struct Service(pub Arc<Daemon>);

/// A storage error as a gRPC status (the message is the error's one line).
pub fn store_status(e: &storectl_storage::Error) -> Status {
    use storectl_storage::Error as E;
    let msg = crate::one_line(&anyhow::anyhow!("{e}"));
    match e {
        E::ImageUnknown { .. } | E::LayerUnknown { .. } => Status::not_found(msg),
        E::InvalidName { .. } | E::AmbiguousImage { .. } | E::Reference(_) => {
            Status::invalid_argument(msg)
        }
        E::MustForce { .. } | E::ImageMounted { .. } | E::ImageInUse { .. } => {
            Status::failed_precondition(msg)
        }
        E::Locked { .. } | E::ReadOnlyStore { .. } => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

/// The registry client of one operation: the client's options, no auth file
/// of the daemon's, credentials asked of the operation's clients.
pub fn op_client(opts: Option<&pb::RegistryOptions>, op: &Arc<Op>) -> RegistryClient {
    let o = opts.cloned().unwrap_or_default();
    RegistryClient::new(ClientOptions {
        insecure_skip_tls_verify: o.tls_verify_disabled,
        plain_http: o.plain_http.then_some(true),
        retries: if o.retries == 0 { 3 } else { o.retries },
        use_default_auth_file: false,
        ..ClientOptions::default()
    })
    .with_credentials_provider(Arc::new(OpCredentials(Arc::downgrade(op))))
}

fn jobs(n: u32) -> usize {
    if n == 0 {
        3
    } else {
        n.clamp(1, 32) as usize
    }
}

/// Read the client's credentials answers until its side closes.
fn spawn_answers<M: Send + 'static>(
    op: Arc<Op>,
    sub: u64,
    mut inbound: Streaming<M>,
    answer: fn(M) -> Option<pb::CredentialsAnswer>,
) {
    tokio::spawn(async move {
        while let Ok(Some(m)) = inbound.message().await {
            if let Some(a) = answer(m) {
                let creds = (!a.none && !a.username.is_empty())
                    .then(|| Credentials::new(a.username, a.password));
                op.answer(a.id, creds);
            }
        }
        op.not_listening(sub);
    });
}

impl Service {
    /// Subscribe a new stream to `op` and start its sampler.
    fn stream(
        &self,
        op: &Arc<Op>,
        creds: CredSource,
        joined: bool,
    ) -> (mpsc::Sender<Outbound>, u64, OpStream) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sub = op.subscribe(tx.clone(), creds);
        let id = sub.id;
        self.0.track(op);
        tokio::spawn(Arc::clone(op).stream_progress(sub, tx.clone(), joined));
        (tx, id, Box::pin(ReceiverStream::new(rx)))
    }

    /// Run `job` for `op` on a blocking thread; its result finishes the op.
    fn run(&self, op: &Arc<Op>, job: impl FnOnce(&Daemon, &Arc<Op>) -> Outcome + Send + 'static) {
        let daemon = Arc::clone(&self.0);
        let op = Arc::clone(op);
        tokio::spawn(async move {
            let op2 = Arc::clone(&op);
            let outcome = daemon
                .blocking(move |d| {
                    let outcome = job(d, &op2);
                    d.changed();
                    outcome
                })
                .await
                .unwrap_or_else(|s| Outcome::Failed(s.message().to_string()));
            match &outcome {
                Outcome::Done(r) => log(format!("{} {}: done {}", op.kind, op.what, r.id)),
                Outcome::Failed(m) => log(format!("{} {}: {m}", op.kind, op.what)),
            }
            op.finish(outcome);
        });
    }
}

async fn first<M>(inbound: &mut Streaming<M>) -> Result<M, Status> {
    inbound
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the stream ended before the request"))
}

/// The failure's one line (the client adds what it was doing).
fn fail(e: impl Into<anyhow::Error>) -> Outcome {
    Outcome::Failed(crate::one_line(&e.into()))
}

#[tonic::async_trait]
impl pb::images_server::Images for Service {
    type PullStream = OpStream;
    type PushStream = OpStream;
    type LoadStream = OpStream;
    type SaveStream = OpStream;

    async fn pull(
        &self,
        req: Request<Streaming<pb::PullClientMessage>>,
    ) -> Result<Response<OpStream>, Status> {
        let mut inbound = req.into_inner();
        let Some(pb::pull_client_message::Msg::Request(r)) = first(&mut inbound).await?.msg else {
            return Err(Status::invalid_argument(
                "the first message of Pull must be a PullRequest",
            ));
        };
        let name = storectl_storage::reference::parse(&r.reference)
            .map_err(|e| Status::invalid_argument(format!("{:?}: {e}", r.reference)))?
            .to_string();
        let platform = match r.platform.as_str() {
            "" => None,
            p => Some(Platform::parse(p).map_err(Status::invalid_argument)?),
        };
        let key = format!(
            "{name}\0{}",
            platform.as_ref().map(|p| p.to_string()).unwrap_or_default()
        );
        let (op, new) = self.0.ops.pull(&key, || Op::new("pull", name.clone()));
        let (_tx, sub, stream) = self.stream(&op, CredSource::Stream, !new);
        spawn_answers(Arc::clone(&op), sub, inbound, |m| match m.msg {
            Some(pb::pull_client_message::Msg::Credentials(a)) => Some(a),
            _ => None,
        });
        if new {
            self.run(&op, move |d, op| run_pull(d, op, &r, platform));
        }
        Ok(Response::new(stream))
    }

    async fn push(
        &self,
        req: Request<Streaming<pb::PushClientMessage>>,
    ) -> Result<Response<OpStream>, Status> {
        let mut inbound = req.into_inner();
        let Some(pb::push_client_message::Msg::Request(r)) = first(&mut inbound).await?.msg else {
            return Err(Status::invalid_argument(
                "the first message of Push must be a PushRequest",
            ));
        };
        let op = Op::new("push", format!("{} to {}", r.image, r.reference));
        let (_tx, sub, stream) = self.stream(&op, CredSource::Stream, false);
        spawn_answers(Arc::clone(&op), sub, inbound, |m| match m.msg {
            Some(pb::push_client_message::Msg::Credentials(a)) => Some(a),
            _ => None,
        });
        self.run(&op, move |d, op| {
            let image = match d.store.resolve_image(&r.image) {
                Ok(i) => i,
                Err(e) => return fail(e),
            };
            let client = op_client(r.registry.as_ref(), op);
            let opts = PushOptions {
                compression: if r.uncompressed {
                    PushCompression::None
                } else {
                    PushCompression::Gzip
                },
                jobs: jobs(r.jobs),
                cancel: op.cancel.clone(),
            };
            let reporter = MetricsReporter::wrap("push", OpReporter(Arc::clone(op)));
            match storectl_transfer::push(&d.store, &image, &r.reference, &client, &opts, &reporter)
            {
                Ok(digest) => Outcome::Done(pb::Result {
                    id: image.id.clone(),
                    names: image.names.clone(),
                    digest,
                    ..Default::default()
                }),
                Err(e) => fail(e),
            }
        });
        Ok(Response::new(stream))
    }

    async fn load(
        &self,
        req: Request<Streaming<pb::LoadClientMessage>>,
    ) -> Result<Response<OpStream>, Status> {
        let mut inbound = req.into_inner();
        let Some(pb::load_client_message::Msg::Request(r)) = first(&mut inbound).await?.msg else {
            return Err(Status::invalid_argument(
                "the first message of Load must be a LoadRequest",
            ));
        };
        let shown = if r.path.is_empty() {
            "<stream>".to_string()
        } else {
            r.path.clone()
        };
        let op = Op::new("load", shown);
        let (tx, _sub, stream) = self.stream(&op, CredSource::Fixed(None), false);
        let opts = LoadOptions {
            name: (!r.name.is_empty()).then(|| r.name.clone()),
            max_layer_size: (r.max_layer_size != 0).then_some(r.max_layer_size),
            jobs: jobs(r.jobs),
            ..LoadOptions::default()
        };
        let tag = r.tag.clone();
        if !r.path.is_empty() {
            let spec = if tag.is_empty() {
                r.path.clone()
            } else {
                format!("{}:{tag}", r.path)
            };
            self.run(&op, move |d, op| load(d, op, &spec, &opts));
            return Ok(Response::new(stream));
        }
        // The archive comes over the stream: into an unnamed file in the
        // store root (nothing left behind by a crash), then loaded from it.
        let (chunks_tx, mut chunks_rx) = mpsc::channel::<Vec<u8>>(4);
        let root = self.0.store.root().to_path_buf();
        let op2 = Arc::clone(&op);
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(pb::LoadClientMessage {
                        msg: Some(pb::load_client_message::Msg::Data(d)),
                    })) => {
                        if chunks_tx.send(d).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(_)) => {
                        op2.cancel.cancel();
                        return;
                    }
                    Ok(None) => return,
                    Err(s) => {
                        // A message the daemon would not take (too large,
                        // malformed), or the client went away mid-upload:
                        // the call ends with that status.
                        op2.cancel.cancel();
                        // tonic says OUT_OF_RANGE for a message over the
                        // limit; gRPC's own servers say RESOURCE_EXHAUSTED.
                        let code = match s.code() {
                            tonic::Code::OutOfRange if s.message().contains("too large") => {
                                tonic::Code::ResourceExhausted
                            }
                            c => c,
                        };
                        let _ = tx
                            .send(Err(Status::new(
                                code,
                                format!("reading the archive from the client: {}", s.message()),
                            )))
                            .await;
                        return;
                    }
                }
            }
        });
        self.run(&op, move |d, op| {
            let mut file = match tempfile::tempfile_in(&root) {
                Ok(f) => f,
                Err(e) => {
                    return fail(
                        anyhow::Error::new(e)
                            .context(format!("a temporary file in {}", root.display())),
                    )
                }
            };
            while let Some(chunk) = chunks_rx.blocking_recv() {
                if let Err(e) = file.write_all(&chunk) {
                    return fail(
                        anyhow::Error::new(e)
                            .context(format!("spooling the archive into {}", root.display())),
                    );
                }
            }
            if op.cancel.is_cancelled() {
                return Outcome::Failed(
                    "loading: the upload of the archive was interrupted".into(),
                );
            }
            use std::os::fd::AsRawFd;
            let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
            let spec = if tag.is_empty() {
                fd_path
            } else {
                format!("{fd_path}:{tag}")
            };
            let outcome = load(d, op, &spec, &opts);
            drop(file);
            outcome
        });
        Ok(Response::new(stream))
    }

    async fn save(&self, req: Request<pb::SaveRequest>) -> Result<Response<OpStream>, Status> {
        let r = req.into_inner();
        let format = match pb::SaveFormat::try_from(r.format) {
            Ok(pb::SaveFormat::DockerArchive) => SaveFormat::DockerArchive,
            Ok(pb::SaveFormat::OciArchive) => SaveFormat::OciArchive,
            Ok(pb::SaveFormat::OciDir) => SaveFormat::Oci,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown save format {}",
                    r.format
                )))
            }
        };
        let op = Op::new("save", r.image.clone());
        let (tx, _sub, stream) = self.stream(&op, CredSource::Fixed(None), false);
        self.run(&op, move |d, op| {
            let image = match d.store.resolve_image(&r.image) {
                Ok(i) => i,
                Err(e) => return fail(e),
            };
            let name = crate::commands::save::archive_name(&image, &r.image).cloned();
            let reporter = MetricsReporter::wrap("save", OpReporter(Arc::clone(op)));
            let result = if r.path.is_empty() {
                let mut out = ChannelWriter { tx };
                storectl_transfer::save_to_writer(
                    &d.store,
                    &image,
                    &mut out,
                    Path::new("<stream>"),
                    format,
                    name.as_deref(),
                    &reporter,
                )
            } else {
                storectl_transfer::save(
                    &d.store,
                    &image,
                    &PathBuf::from(&r.path),
                    format,
                    name.as_deref(),
                    &reporter,
                )
            };
            match result {
                Ok(()) => Outcome::Done(pb::Result {
                    id: image.id.clone(),
                    names: name.into_iter().collect(),
                    ..Default::default()
                }),
                Err(e) => fail(e),
            }
        });
        Ok(Response::new(stream))
    }

    async fn tag(&self, req: Request<pb::TagRequest>) -> Result<Response<pb::TagResponse>, Status> {
        let r = req.into_inner();
        let image = self
            .0
            .blocking(move |d| {
                let res = d.store.tag(&r.image, &r.name);
                d.changed();
                res
            })
            .await?
            .map_err(|e| store_status(&e))?;
        Ok(Response::new(pb::TagResponse { id: image.id }))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let r = req.into_inner();
        let removed = self
            .0
            .blocking(move |d| {
                let res = d.store.remove_image(&r.image, r.force);
                d.changed();
                res
            })
            .await?
            .map_err(|e| store_status(&e))?;
        Ok(Response::new(match removed {
            Removed::Untagged { name, .. } => pb::RemoveResponse {
                untagged: name,
                ..Default::default()
            },
            Removed::Deleted { image, layers, .. } => pb::RemoveResponse {
                deleted: image,
                deleted_layers: layers,
                ..Default::default()
            },
        }))
    }

    async fn list(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let listing = self
            .0
            .blocking(|d| crate::commands::ls::listing(&d.store))
            .await?
            .map_err(|e| Status::internal(crate::one_line(&e)))?;
        Ok(Response::new(convert::listing_pb(&listing)))
    }

    async fn inspect(
        &self,
        req: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let name = req.into_inner().image;
        let r = self
            .0
            .blocking(move |d| -> Result<pb::InspectResponse, Status> {
                let store = &d.store;
                let image = store.resolve_image(&name).map_err(|e| store_status(&e))?;
                let layers = store.image_layers(&image).map_err(|e| store_status(&e))?;
                let listed = crate::commands::ls::Listed {
                    size: store.image_size(&image),
                    layers,
                    image: image.clone(),
                };
                let shadowed = store.with_state(|st| st.shadowed_names());
                Ok(pb::InspectResponse {
                    image: Some(convert::image_pb(&listed, &shadowed)),
                    manifest: store
                        .image_big_data(&image, MANIFEST)
                        .map_err(|e| store_status(&e))?,
                    config: store
                        .image_big_data(&image, CONFIG)
                        .map_err(|e| store_status(&e))?,
                })
            })
            .await??;
        Ok(Response::new(r))
    }
}

fn run_pull(d: &Daemon, op: &Arc<Op>, r: &pb::PullRequest, platform: Option<Platform>) -> Outcome {
    let client = op_client(r.registry.as_ref(), op);
    let opts = PullOptions {
        platform,
        load: LoadOptions {
            jobs: jobs(r.jobs),
            ..LoadOptions::default()
        },
        cancel: op.cancel.clone(),
    };
    let reporter = MetricsReporter::wrap("pull", OpReporter(Arc::clone(op)));
    match storectl_transfer::pull(&d.store, &r.reference, &client, &opts, &reporter) {
        Ok(image) => Outcome::Done(pb::Result {
            id: image.id,
            names: image.names,
            ..Default::default()
        }),
        Err(e) => fail(e),
    }
}

fn load(d: &Daemon, op: &Arc<Op>, spec: &str, opts: &LoadOptions) -> Outcome {
    let reporter = MetricsReporter::wrap("load", OpReporter(Arc::clone(op)));
    match d.store.load(spec, opts, &reporter) {
        Ok(image) => Outcome::Done(pb::Result {
            id: image.id,
            names: image.names,
            ..Default::default()
        }),
        Err(e) => fail(e),
    }
}

/// Writes go to the client as `data` messages (from a blocking thread).
struct ChannelWriter {
    tx: mpsc::Sender<Outbound>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let msg = pb::OperationMessage {
            msg: Some(Msg::Data(buf.to_vec())),
        };
        self.tx.blocking_send(Ok(msg)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
