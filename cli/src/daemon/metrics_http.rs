//! Prometheus metrics on `--metrics ADDR`: HTTP/1.1 served by hyper,
//! `GET /metrics` only (read-only; no other path, no other method).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use super::{log, Daemon};

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A request head must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 32;

fn reply(status: StatusCode, kind: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(kind),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    daemon: Arc<Daemon>,
    handle: PrometheusHandle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            PLAIN,
            format!(
                "no such endpoint: {}; only GET /metrics\n",
                req.uri().path()
            ),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            format!("/metrics wants GET, not {}\n", req.method()),
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return Ok(r);
    }
    let body = tokio::task::spawn_blocking(move || {
        storectl_storage::metrics::record_store(&daemon.store);
        handle.render()
    })
    .await;
    Ok(match body {
        Ok(text) => reply(StatusCode::OK, TEXT_FORMAT, text),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            PLAIN,
            format!("rendering the metrics: {e}\n"),
        ),
    })
}

/// Accept and serve until the process ends.
pub async fn serve(listener: TcpListener, daemon: Arc<Daemon>, prom: PrometheusHandle) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut last_error = None;
    loop {
        let permit = match Arc::clone(&slots).acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: say so once, back off a little.
                let msg = e.to_string();
                if last_error.as_ref() != Some(&msg) {
                    log(format!("accepting metrics connections: {msg}"));
                    last_error = Some(msg);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        last_error = None;
        let daemon = Arc::clone(&daemon);
        let prom = prom.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                handle(req, Arc::clone(&daemon), prom.clone())
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
