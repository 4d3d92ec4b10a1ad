//! `storectl serve`: a long-running process that exposes Prometheus metrics
//! and a tiny HTTP API, and keeps a reader in step with its share.
//!
//! ```text
//! GET  /metrics               Prometheus text format (version 0.0.4)
//! GET  /images[?layers=true]  JSON, as `storectl ls --json [--layers]`
//! POST /pull?reference=REF    pull REF into the store: {"id": …, "names": […]}
//!                             or 4xx/5xx with {"error": "…"}
//! ```
//!
//! Everything is served on `--metrics ADDR`, unless `--api ADDR` is given:
//! then `/metrics` stays on the metrics address and `/images` and `/pull` move
//! to the API address (so the metrics port can be opened to a scraper without
//! opening `POST /pull`). The server is plain HTTP/1.1 on std sockets, one
//! thread per connection (at most `--max-connections`, the rest get 503),
//! `Connection: close`. Metrics go through `metrics-exporter-prometheus`
//! installed as the process's recorder, without its HTTP listener.
//!
//! On a reader root the refresher runs on a thread and its events are logged
//! on stderr. SIGINT or SIGTERM stops the process.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use parking_lot::Mutex;
use serde_json::json;
use storectl_remote::StoreEvent;
use storectl_storage::metrics::{record_store, MetricsReporter};
use storectl_storage::{Error as StoreError, LoadOptions, Store};
use storectl_transfer::registry::{RegistryClient, RegistryError};
use storectl_transfer::{Error as TransferError, PullOptions};

use super::registry_args::RegistryArgs;
use crate::util::open_store_scanned;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serve `GET /metrics` on this address, HOST:PORT (port 0 picks a free
    /// one; the line on stderr tells which).
    #[arg(long, value_name = "ADDR")]
    metrics: String,
    /// Serve `GET /images` and `POST /pull` on this address instead of the
    /// metrics address.
    #[arg(long, value_name = "ADDR")]
    api: Option<String>,
    /// Connections served at once; more get 503.
    #[arg(long, default_value_t = 32)]
    max_connections: usize,
    /// Layers downloaded at once by `POST /pull`.
    #[arg(long, default_value_t = 3)]
    jobs: usize,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Bucket bounds (seconds) of the refresh duration histogram.
const REFRESH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Per-layer progress gauges not updated for this long are dropped.
const IDLE_GAUGES: Duration = Duration::from_secs(3600);
/// How often the exporter's upkeep runs (histogram draining, idle expiry).
const UPKEEP: Duration = Duration::from_secs(5);
/// A request's line and headers, at most.
const MAX_HEAD: u64 = 16 << 10;
/// A request body is read (and ignored) up to this size.
const MAX_BODY: u64 = 64 << 10;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

/// One line on stderr, `storectl serve: …` (control characters escaped).
fn log(line: impl std::fmt::Display) {
    use std::io::Write;
    let line = format!(
        "storectl serve: {}\n",
        crate::output::escape_controls(&line.to_string())
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Which routes a listener answers.
#[derive(Debug, Clone, Copy)]
struct Routes {
    metrics: bool,
    api: bool,
}

struct Server {
    store: Arc<Store>,
    handle: PrometheusHandle,
    client: RegistryClient,
    jobs: usize,
    /// One pull at a time (they would take the store's writer lock in turn).
    writing: Mutex<()>,
    active: AtomicUsize,
    max_connections: usize,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
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

    let (store, refresher) = open_store_scanned(root)?;
    let client = args.registry.client()?;
    let bind = |addr: &str| {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        let local = listener
            .local_addr()
            .with_context(|| format!("address of the listener on {addr}"))?;
        anyhow::Ok((listener, local))
    };
    let (metrics_listener, metrics_addr) = bind(&args.metrics)?;
    let api_listener = args.api.as_deref().map(bind).transpose()?;

    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the SIGINT/SIGTERM handler")?;

    let _refreshing = match &refresher {
        Some(refresher) => {
            let events = refresher.subscribe();
            std::thread::Builder::new()
                .name("storectl-events".into())
                .spawn(move || {
                    for e in events {
                        log_event(&e);
                    }
                })
                .context("spawning the event logger")?;
            Some(refresher.spawn())
        }
        None => None,
    };

    let server = Arc::new(Server {
        store,
        handle: handle.clone(),
        client,
        jobs: args.jobs,
        writing: Mutex::new(()),
        active: AtomicUsize::new(0),
        max_connections: args.max_connections.max(1),
    });
    let separate_api = api_listener.is_some();
    spawn_accept(
        metrics_listener,
        metrics_addr,
        Arc::clone(&server),
        Routes {
            metrics: true,
            api: !separate_api,
        },
    )?;
    log(format!("serving metrics on http://{metrics_addr}/metrics"));
    if let Some((listener, addr)) = api_listener {
        spawn_accept(
            listener,
            addr,
            Arc::clone(&server),
            Routes {
                metrics: false,
                api: true,
            },
        )?;
        log(format!("serving the API on http://{addr}/"));
    }

    // Until SIGINT/SIGTERM (or the handler went away).
    while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(UPKEEP) {
        handle.run_upkeep();
    }
    log("stopping");
    Ok(())
}

fn log_event(e: &StoreEvent) {
    match e {
        StoreEvent::ImageAdded { id, names } => {
            log(format!("image added {id} {}", names.join(" ")).trim_end())
        }
        StoreEvent::ImageUpdated { id, names } => {
            log(format!("image renamed {id} {}", names.join(" ")).trim_end())
        }
        StoreEvent::ImageRemoved { id } => log(format!("image removed {id}")),
        StoreEvent::LayerAdded { id } => log(format!("layer added {id}")),
        StoreEvent::LayerRemoved { id } => log(format!("layer removed {id}")),
    }
}

/// Accept connections on a thread; each is served on its own thread.
fn spawn_accept(
    listener: TcpListener,
    addr: SocketAddr,
    server: Arc<Server>,
    routes: Routes,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name(format!("storectl-accept-{}", addr.port()))
        .spawn(move || accept_loop(listener, addr, server, routes))
        .with_context(|| format!("spawning the acceptor of {addr}"))?;
    Ok(())
}

/// Decrements the active connection count when a connection thread ends.
struct Slot(Arc<Server>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, addr: SocketAddr, server: Arc<Server>, routes: Routes) {
    let mut last_error = None;
    for conn in listener.incoming() {
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: say so once, back off a little.
                let msg = e.to_string();
                if last_error.as_ref() != Some(&msg) {
                    log(format!("accepting on {addr}: {msg}"));
                    last_error = Some(msg);
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        last_error = None;
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        if server.active.fetch_add(1, Ordering::SeqCst) >= server.max_connections {
            server.active.fetch_sub(1, Ordering::SeqCst);
            let _ = respond_error(&mut stream, 503, "too many connections");
            continue;
        }
        let slot = Slot(Arc::clone(&server));
        let spawned = std::thread::Builder::new()
            .name("storectl-http".into())
            .spawn(move || {
                let slot = slot;
                serve_connection(&slot.0, stream, routes);
            });
        if let Err(e) = spawned {
            // The closure (and its slot) was dropped: the count is right.
            log(format!("spawning a connection thread: {e}"));
        }
    }
}

/// A parsed request: method, path, decoded query.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
}

/// Why a request could not be read: the status to answer, and a message.
type Bad = (u16, String);

fn serve_connection(server: &Server, mut stream: TcpStream, routes: Routes) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let request = match read_request(&stream) {
        Ok(r) => r,
        Err((status, msg)) => {
            let _ = respond_error(&mut stream, status, &msg);
            return;
        }
    };
    let result = route(server, &request, routes);
    let written = match result {
        Ok(Reply { status, kind, body }) => respond(&mut stream, status, kind, body.as_bytes()),
        Err((status, msg)) => respond_error(&mut stream, status, &msg),
    };
    if let Err(e) = written {
        log(format!(
            "{} {}: writing the response to {peer}: {e}",
            request.method, request.path
        ));
    }
}

/// Read the request line and headers (and drain a small body).
fn read_request(stream: &TcpStream) -> Result<Request, Bad> {
    let mut reader = BufReader::new(stream.take(MAX_HEAD + MAX_BODY));
    let mut head = 0u64;
    let mut next_line = |reader: &mut BufReader<_>| -> Result<String, Bad> {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| (400, format!("reading the request: {e}")))?;
        head += n as u64;
        if head > MAX_HEAD {
            return Err((431, "request head too large".into()));
        }
        if n == 0 {
            return Err((400, "incomplete request".into()));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    let line = next_line(&mut reader)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((400, format!("bad request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err((505, format!("unsupported version {version:?}")));
    }
    let mut length = 0u64;
    loop {
        let header = next_line(&mut reader)?;
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| (400, format!("bad Content-Length {value:?}")))?;
            }
        }
    }
    if length > MAX_BODY {
        return Err((413, "request body too large".into()));
    }
    io::copy(&mut (&mut reader).take(length), &mut io::sink())
        .map_err(|e| (400, format!("reading the request body: {e}")))?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        method: method.to_string(),
        path: percent_decode(path).ok_or_else(|| (400, format!("bad path {path:?}")))?,
        query: parse_query(query).ok_or_else(|| (400, format!("bad query {query:?}")))?,
    })
}

/// `a=1&b=x%2Fy` → {a: 1, b: x/y}; `None` for bad escapes or non-UTF-8.
fn parse_query(query: &str) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(
            percent_decode(&k.replace('+', " "))?,
            percent_decode(&v.replace('+', " "))?,
        );
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

struct Reply {
    status: u16,
    kind: &'static str,
    body: String,
}

fn json_reply(status: u16, v: &serde_json::Value) -> Reply {
    Reply {
        status,
        kind: JSON,
        body: format!("{v}\n"),
    }
}

fn route(server: &Server, req: &Request, routes: Routes) -> Result<Reply, Bad> {
    let method = req.method.as_str();
    let want = |m: &str| {
        if method == m {
            Ok(())
        } else {
            Err((405, format!("{} wants {m}, not {method}", req.path)))
        }
    };
    match req.path.as_str() {
        "/metrics" if routes.metrics => {
            want("GET")?;
            record_store(&server.store);
            Ok(Reply {
                status: 200,
                kind: TEXT_FORMAT,
                body: server.handle.render(),
            })
        }
        "/images" if routes.api => {
            want("GET")?;
            let layers = matches!(
                req.query.get("layers").map(String::as_str),
                Some("true" | "1")
            );
            let list = super::ls::images_json(&server.store, layers)
                .map_err(|e| (500, crate::one_line(&e)))?;
            Ok(json_reply(200, &list))
        }
        "/pull" if routes.api => {
            want("POST")?;
            let reference = req
                .query
                .get("reference")
                .filter(|r| !r.is_empty())
                .ok_or_else(|| (400, "POST /pull wants ?reference=REF".to_string()))?;
            pull(server, reference)
        }
        _ => Err((404, format!("no such endpoint: {}", req.path))),
    }
}

/// `POST /pull`: pull in this process, recording transfer metrics.
fn pull(server: &Server, reference: &str) -> Result<Reply, Bad> {
    let opts = PullOptions {
        platform: None,
        load: LoadOptions {
            jobs: server.jobs,
            ..LoadOptions::default()
        },
    };
    let reporter = MetricsReporter::new("pull");
    let result = {
        let _writing = server.writing.lock();
        storectl_transfer::pull(&server.store, reference, &server.client, &opts, &reporter)
    };
    match result {
        Ok(image) => {
            log(format!("pulled {reference}: {}", image.id));
            Ok(json_reply(
                200,
                &json!({"id": image.id, "names": image.names}),
            ))
        }
        Err(e) => {
            let status = status_of(&e);
            let msg = format!("pulling {reference}: {}", crate::one_line(&e.into()));
            log(&msg);
            Err((status, msg))
        }
    }
}

/// The HTTP status for a failed pull.
fn status_of(e: &TransferError) -> u16 {
    if let Some(r) = e.registry() {
        return match r {
            RegistryError::NotFound { .. } => 404,
            RegistryError::NoMatchingPlatform { .. } => 400,
            _ => 502,
        };
    }
    match e {
        TransferError::Reference(_)
        | TransferError::Store(StoreError::Reference(_) | StoreError::InvalidName { .. }) => 400,
        TransferError::Store(StoreError::ImageUnknown { .. }) => 404,
        TransferError::Store(StoreError::Locked { .. } | StoreError::ReadOnlyStore { .. }) => 409,
        TransferError::DigestMismatch { .. }
        | TransferError::InvalidArchive { .. }
        | TransferError::PlatformMismatch { .. }
        | TransferError::Store(
            StoreError::DigestMismatch { .. } | StoreError::InvalidArchive { .. },
        ) => 502,
        _ => 500,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn respond(stream: &mut TcpStream, status: u16, kind: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

fn respond_error(stream: &mut TcpStream, status: u16, msg: &str) -> io::Result<()> {
    let Reply { body, .. } = json_reply(status, &json!({ "error": msg }));
    respond(stream, status, JSON, body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        let q = parse_query("reference=127.0.0.1%3A5000%2Frepo%3Av1&layers=true&x").unwrap();
        assert_eq!(q["reference"], "127.0.0.1:5000/repo:v1");
        assert_eq!(q["layers"], "true");
        assert_eq!(q["x"], "");
        assert_eq!(parse_query("a=b+c").unwrap()["a"], "b c");
        assert!(parse_query("a=%zz").is_none());
        assert!(parse_query("a=%4").is_none());
        assert!(parse_query("a=%ff").is_none(), "not UTF-8");
    }

    #[test]
    fn pull_errors_map_to_statuses() {
        let e = TransferError::Registry(RegistryError::NotFound {
            what: "manifest".into(),
        });
        assert_eq!(status_of(&e), 404);
        let e = TransferError::Store(StoreError::Remote(Box::new(RegistryError::NotFound {
            what: "blob".into(),
        })));
        assert_eq!(status_of(&e), 404);
        let e = TransferError::Store(StoreError::Locked {
            path: "/x".into(),
            holder: "pid 1".into(),
        });
        assert_eq!(status_of(&e), 409);
    }
}
