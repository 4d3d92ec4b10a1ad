//! The daemon (`storectl serve`) and its client (`storectl --host …`).
//!
//! * [`serve`]: gRPC (tonic) on a unix socket — our `storectl.v1.Images` and
//!   `Events`, and the CRI's `runtime.v1.ImageService` — plus Prometheus
//!   metrics over HTTP/1.1 (hyper) on `--metrics ADDR`. The library crates
//!   stay synchronous: every store call runs on a blocking thread.
//! * [`client`]: the verbs that run through a daemon.
//!
//! The `.proto` files under `proto/` are the API's reference; docs/daemon.md
//! describes it.

// tonic's API is `Result<_, tonic::Status>` throughout; Status is large by design.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod convert;
mod cri;
mod events;
mod images;
mod metrics_http;
mod ops;
pub mod pb;
mod socket;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use metrics_util::MetricKindMask;
use parking_lot::Mutex;
use storectl_remote::Refresher;
use storectl_storage::Store;

use crate::util::open_store_scanned;

/// Where `storectl serve` listens by default.
pub const DEFAULT_SOCKET: &str = "/run/storectl/storectl.sock";
/// The largest message the daemon takes (a load streams 1 MiB chunks).
pub const MAX_MESSAGE: usize = 8 << 20;
/// The largest reply a client takes from its daemon: a list of 10,000
/// images is about 12 MB, of 100,000 about 120 MB.
pub const MAX_REPLY: usize = 512 << 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The unix socket to serve gRPC on (created 0660, owned by root or
    /// this user, group `--group`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The group (name or number) whose members may use the socket besides
    /// root; default: the daemon's own group.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Also serve Prometheus metrics on `GET /metrics` at this address,
    /// HOST:PORT (port 0 picks a free one; the line on stderr tells which).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

/// Bucket bounds (seconds) of the refresh duration histogram.
const REFRESH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Per-layer progress gauges not updated for this long are dropped.
const IDLE_GAUGES: Duration = Duration::from_secs(3600);
/// How often the exporter's upkeep runs (histogram draining, idle expiry).
const UPKEEP: Duration = Duration::from_secs(5);
/// On SIGTERM, how long running operations get to clean up after being cancelled.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// One line on stderr, `storectl serve: …` (control characters escaped).
pub(crate) fn log(line: impl std::fmt::Display) {
    use std::io::Write;
    let line = format!(
        "storectl serve: {}\n",
        crate::output::escape_controls(&line.to_string())
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// What every service shares.
pub struct Daemon {
    pub store: Arc<Store>,
    pub ops: Arc<ops::Registry>,
    pub events: events::Hub,
    /// Every running operation (cancelled on SIGTERM).
    running: Mutex<Vec<std::sync::Weak<ops::Op>>>,
    blocking: tokio::sync::Semaphore,
}

impl Daemon {
    /// Run `f` on a blocking thread (the library is synchronous).
    pub async fn blocking<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Daemon) -> R + Send + 'static,
    ) -> Result<R, tonic::Status> {
        let me = Arc::clone(self);
        let _permit = self
            .blocking
            .acquire()
            .await
            .map_err(|_| tonic::Status::unavailable("the daemon is stopping"))?;
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| tonic::Status::internal(format!("a worker thread failed: {e}")))
    }

    fn track(&self, op: &Arc<ops::Op>) {
        let mut running = self.running.lock();
        running.retain(|w| w.upgrade().is_some_and(|o| !o.is_finished()));
        running.push(Arc::downgrade(op));
    }

    fn cancel_all(&self) -> Vec<Arc<ops::Op>> {
        let running: Vec<Arc<ops::Op>> = self
            .running
            .lock()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|o| !o.is_finished())
            .collect();
        for op in &running {
            op.cancel.cancel();
        }
        running
    }
}

pub fn serve(root: &Path, args: Args) -> anyhow::Result<()> {
    // The recorder first, so the first scan of a reader's share counts.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(storectl_remote::metrics::REFRESH_DURATION.into()),
            REFRESH_BUCKETS,
        )
        .context("refresh duration buckets")?
        .idle_timeout(MetricKindMask::GAUGE, Some(IDLE_GAUGES))
        .install_recorder()
        .context("installing the metrics recorder")?;
    storectl_storage::metrics::describe();
    storectl_remote::metrics::describe();

    crate::util::set_long_lived();
    let (store, refresher) = open_store_scanned(root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("storectl-daemon")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(store, refresher, args, handle))
}

async fn run(
    store: Arc<Store>,
    refresher: Option<Arc<Refresher>>,
    args: Args,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    let group = socket::resolve_group(args.group.as_deref())?;
    let listener = socket::bind(&args.socket, group)?;
    let daemon = Arc::new(Daemon {
        events: events::Hub::new(&store),
        store,
        ops: Arc::new(ops::Registry::default()),
        running: Mutex::new(Vec::new()),
        blocking: tokio::sync::Semaphore::new(64),
    });

    let metrics = match &args.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let local = listener
                .local_addr()
                .with_context(|| format!("address of the listener on {addr}"))?;
            let d = Arc::clone(&daemon);
            let h = handle.clone();
            tokio::spawn(metrics_http::serve(listener, d, h));
            Some(local)
        }
        None => None,
    };

    let _refreshing = match &refresher {
        Some(refresher) => {
            events::forward_refresher(refresher, &daemon.events)?;
            Some(refresher.spawn())
        }
        None => None,
    };

    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(UPKEEP);
        loop {
            t.tick().await;
            upkeep.run_upkeep();
        }
    });

    let grpc = socket::grpc_server(Arc::clone(&daemon), group, listener);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move { grpc.serve_with_incoming_shutdown(stop_rx).await });
    log(format!("serving gRPC on unix://{}", args.socket.display()));
    if let Some(addr) = metrics {
        log(format!("serving metrics on http://{addr}/metrics"));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let ended = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        r = server => Some(r),
    };
    if let Some(r) = ended {
        // The server stopped by itself: an error.
        r.context("the gRPC server task")?.context("serving gRPC")?;
    }
    log("stopping");
    let running = daemon.cancel_all();
    let _ = stop_tx.send(());
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for op in running {
        while !op.is_finished() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}
