//! `storectl serve --socket PATH --metrics ADDR`, end to end: the real binary
//! serving metrics on 127.0.0.1, scraped over TCP, the Prometheus text parsed
//! here (`name{labels} value` lines; every non-comment line must parse).
//!
//! * `local_store_metrics_images_and_errors` — store gauges, only `GET
//!   /metrics` answered (404/405 otherwise, garbage gets a 400 and the server
//!   stays up), the image list through the daemon (`storectl --host … ls`),
//!   a second daemon on the same socket refused, SIGTERM.
//! * `reader_sees_the_writers_image_and_refresh_metrics` — a reader of a
//!   share: `storectl_images{source="shared"} 1` once the writer loaded one,
//!   refresh scans/duration present, the event logged.
//! * `pull_through_serve_records_transfer_metrics` — a real `docker-registry`
//!   on 127.0.0.1 fed by `skopeo copy`: `storectl --host … pull`, every
//!   layer's progress gauge at 100, bytes equal to the layer blob sizes, then
//!   a second pull where every layer `already exists`; a missing tag fails
//!   with "not found".
//!
//! Needs root (layer ownership); the registry test also needs
//! `docker-registry` and `skopeo` and skips, saying why, without them.
#![allow(clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Env, STORECTL};
use serde_json::Value;
use storectl_fixtures::gen::TextGen;
use storectl_fixtures::registry::{free_port, missing, skopeo_copy, Registry};
use storectl_fixtures::{write_oci_layout, BuiltImage, Compression, Entry, Image, Layer};

// ---------------------------------------------------------------------------
// The Prometheus text format

/// One sample line: `name{k="v",…} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parse the text exposition format; panics on a line that is not a comment,
/// blank, or a valid sample.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample(l).unwrap_or_else(|| panic!("not a sample line: {l:?}\n{text}")))
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid_name {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let (l, after) = parse_labels(body)?;
        labels = l;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = match fields.next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    // An optional timestamp, nothing more.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",…}` → the labels and what follows the `}`.
fn parse_labels(body: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut i = 0;
    loop {
        if body[i..].starts_with('}') {
            return Some((labels, &body[i + 1..]));
        }
        let eq = body[i..].find('=')? + i;
        let key = &body[i..eq];
        let valid = !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !key.starts_with(|c: char| c.is_ascii_digit());
        if !valid || !body[eq + 1..].starts_with('"') {
            return None;
        }
        i = eq + 2;
        let mut value = String::new();
        loop {
            let c = body[i..].chars().next()?;
            i += c.len_utf8();
            match c {
                '"' => break,
                '\\' => {
                    let e = body[i..].chars().next()?;
                    i += e.len_utf8();
                    match e {
                        'n' => value.push('\n'),
                        '\\' | '"' => value.push(e),
                        _ => return None,
                    }
                }
                c => value.push(c),
            }
        }
        labels.insert(key.to_string(), value);
        if body[i..].starts_with(',') {
            i += 1;
        } else if !body[i..].starts_with('}') {
            return None;
        }
    }
}

/// The value of `name` with exactly `labels`, if present.
fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
        .collect();
    assert!(found.len() <= 1, "{name}{labels:?} appears twice");
    found.first().copied()
}

#[track_caller]
fn must(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    get(samples, name, labels).unwrap_or_else(|| {
        let names: Vec<String> = samples
            .iter()
            .map(|s| format!("{}{:?}", s.name, s.labels))
            .collect();
        panic!("{name}{labels:?} missing; have {names:#?}")
    })
}

#[test]
fn the_parser_reads_what_prometheus_writes() {
    let text =
        "# HELP a_total A.\n# TYPE a_total counter\na_total{op=\"pull\",layer=\"sha256:ab\"} 3\n\
                b 1.5e3 1700000000\nc{x=\"q\\\"uote\\\\\"} +Inf\nd_bucket{le=\"0.5\"} 0\n";
    let s = parse_prometheus(text);
    assert_eq!(s.len(), 4);
    assert_eq!(
        get(&s, "a_total", &[("op", "pull"), ("layer", "sha256:ab")]),
        Some(3.0)
    );
    assert_eq!(get(&s, "b", &[]), Some(1500.0));
    assert_eq!(get(&s, "c", &[("x", "q\"uote\\")]), Some(f64::INFINITY));
    assert_eq!(get(&s, "d_bucket", &[("le", "0.5")]), Some(0.0));
    for bad in ["x{a=\"1} 2", "x 1 2 3", "9x 1", "x{a=1} 2", "x{a=\"1\"}"] {
        assert!(parse_sample(bad).is_none(), "{bad}");
    }
}

// ---------------------------------------------------------------------------
// A tiny HTTP client

/// A response: status, content type, body.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: String,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn http(addr: &str, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("writing to {addr}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading from {addr}: {e}"));
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Response {
        status,
        content_type,
        body: body.to_string(),
    }
}

// ---------------------------------------------------------------------------
// The serve process

/// A running `storectl serve`, SIGKILLed on drop.
struct Serve {
    child: Option<Child>,
    addr: String,
    /// `unix://SOCKET`, for `storectl --host`.
    host: String,
    lines: Arc<Mutex<Vec<String>>>,
    rx: Receiver<String>,
}

impl Serve {
    /// `storectl --root ROOT serve --socket ROOT.sock --metrics
    /// 127.0.0.1:<free port> extra…`; waits for its `serving metrics on
    /// http://ADDR/metrics` line.
    fn start(root: &Path, extra: &[&str]) -> Serve {
        let mut last = String::new();
        for _ in 0..3 {
            let addr = format!("127.0.0.1:{}", free_port());
            match Serve::try_start(root, &addr, extra) {
                Ok(s) => return s,
                // The port was taken meanwhile: another one.
                Err(e) => last = e,
            }
        }
        panic!("storectl serve did not start: {last}");
    }

    fn try_start(root: &Path, addr: &str, extra: &[&str]) -> Result<Serve, String> {
        let socket = root.with_extension("sock");
        let mut child = Command::new(STORECTL)
            .arg("--root")
            .arg(root)
            .args(["serve", "--metrics", addr, "--socket"])
            .arg(&socket)
            .args(extra)
            .env_remove("STORECTL_ROOT")
            .env("STORECTL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("storectl serve starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let serve = Serve {
            child: Some(child),
            addr: addr.to_string(),
            host: format!("unix://{}", socket.display()),
            lines,
            rx,
        };
        let want = format!("storectl serve: serving metrics on http://{addr}/metrics");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match serve.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line == want => return Ok(serve),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        Err(format!("no {want:?} line; stderr: {:?}", serve.stderr()))
    }

    fn stderr(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Wait until a stderr line contains `what`.
    fn wait_line(&self, what: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr().iter().any(|l| l.contains(what)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn get(&self, target: &str) -> Response {
        http(&self.addr, "GET", target, &[])
    }

    /// `storectl --host unix://SOCKET args…` (the store root is the daemon's).
    fn client(&self, env: &Env, args: &[&str]) -> common::Run {
        let mut all = vec!["--host", self.host.as_str()];
        all.extend_from_slice(args);
        env.run(&all)
    }

    /// `GET /metrics`, checked and parsed.
    #[track_caller]
    fn scrape(&self) -> Vec<Sample> {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.content_type.starts_with("text/plain; version=0.0.4"),
            "{r:?}"
        );
        parse_prometheus(&r.body)
    }

    /// Scrape until `ok` holds (or panic after `timeout`).
    #[track_caller]
    fn scrape_until(&self, timeout: Duration, ok: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.scrape();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "metrics never got there: {s:#?}\nstderr: {:?}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, and the exit status (SIGKILL after 10 s).
    fn stop(mut self) -> (ExitStatus, Vec<String>) {
        let child = self.child.as_mut().expect("running");
        let pid = rustix::process::Pid::from_child(child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50)); // the last lines
                return (status, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Drop kills it.
        panic!(
            "storectl serve ignored SIGTERM; stderr: {:?}",
            self.stderr()
        );
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Images

/// An image of three small layers (gzip, uncompressed, gzip), named
/// `localhost/metrics-SEED:v1`, written as an OCI layout in `dir`.
fn make_image(dir: &Path, seed: u64) -> (Image, BuiltImage) {
    let mut text = TextGen::new(seed);
    let layers = [Compression::Gzip, Compression::None, Compression::Gzip]
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            Layer::new(
                vec![
                    Entry::dir(&format!("d{i}")),
                    Entry::file(&format!("d{i}/a.txt"), text.content(3000 + 1000 * i)),
                    Entry::file(&format!("d{i}/seed"), format!("{seed} {i}\n")),
                ],
                c,
            )
        })
        .collect();
    let image = Image::new(layers).named(&format!("localhost/metrics-{seed}:v1"));
    let built = write_oci_layout(dir, std::slice::from_ref(&image))
        .expect("write the OCI layout")
        .remove(0);
    (image, built)
}

// ---------------------------------------------------------------------------
// Tests

#[test]
#[ignore = "needs root"]
fn local_store_metrics_images_and_errors() {
    require_root!();
    let env = Env::new();
    let (_, built) = make_image(&env.path("layout"), 1);
    let id = env.load(&env.path("layout"), &["-q"]);
    assert_eq!(id, built.id());

    let serve = Serve::start(&env.root, &[]);
    let s = serve.scrape();
    assert_eq!(must(&s, "storectl_images", &[("source", "local")]), 1.0);
    assert_eq!(must(&s, "storectl_images", &[("source", "shared")]), 0.0);
    assert_eq!(must(&s, "storectl_layers", &[("source", "local")]), 3.0);
    assert_eq!(must(&s, "storectl_layers", &[("source", "shared")]), 0.0);
    assert!(
        !s.iter().any(|x| x.name.starts_with("storectl_refresh")),
        "no refresher on a local store: {s:?}"
    );

    // The image list comes through the daemon's socket, as `ls --json`.
    let list: Value = serde_json::from_str(&serve.client(&env, &["ls", "--json"]).ok()).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["names"][0], "localhost/metrics-1:v1");
    assert_eq!(list[0]["layers"].as_array().map(Vec::len), Some(3));
    let same = env.run(&["ls", "--json"]).ok();
    assert_eq!(
        list,
        serde_json::from_str::<Value>(&same).unwrap(),
        "ls through the daemon is ls --json"
    );

    // The metrics port is read-only and answers only GET /metrics.
    for (method, target, status) in [
        ("POST", "/pull?reference=x/y", 404),
        ("GET", "/images", 404),
        ("POST", "/metrics", 405),
        ("PUT", "/metrics", 405),
        ("GET", "/nope", 404),
    ] {
        let r = http(&serve.addr, method, target, &[]);
        assert_eq!(r.status, status, "{method} {target}: {r:?}");
        assert!(!r.body.trim().is_empty(), "{method} {target}: {r:?}");
    }
    // Garbage instead of HTTP gets a 400, and the server stays up.
    let mut s = TcpStream::connect(&serve.addr).unwrap();
    s.write_all(b"hello\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 400 "), "{raw:?}");
    assert_eq!(serve.get("/metrics").status, 200);

    let (status, stderr) = serve.stop();
    assert!(status.success(), "{status:?} {stderr:?}");
    assert_eq!(
        stderr.last().map(String::as_str),
        Some("storectl serve: stopping")
    );

    // SIGTERM removed the socket; a new daemon serves on it, and a second
    // one on the same socket is refused while the first runs.
    let serve = Serve::start(&env.root, &[]);
    let second = Command::new(STORECTL)
        .arg("--root")
        .arg(&env.root)
        .args(["serve", "--socket"])
        .arg(env.root.with_extension("sock"))
        .env_remove("STORECTL_ROOT")
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another daemon is serving on"), "{err}");
    assert_eq!(serve.get("/metrics").status, 200);
}

#[test]
#[ignore = "needs root"]
fn reader_sees_the_writers_image_and_refresh_metrics() {
    require_root!();
    let env = Env::new();
    let base = env.dir().canonicalize().unwrap();
    let share = base.join("share");
    std::fs::create_dir(&share).unwrap();
    let share_arg = share.display().to_string();
    let writer = base.join("writer");
    let reader = base.join("reader");
    env.run_root(
        &writer,
        &["init", "--shared", &share_arg, "--role", "writer"],
    )
    .ok();
    common::set_removed_layers_grace(&share, 0);
    env.run_root(
        &reader,
        &[
            "init",
            "--shared",
            &share_arg,
            "--role",
            "reader",
            "--refresh-interval-ms",
            "100",
        ],
    )
    .ok();

    let serve = Serve::start(&reader, &[]);
    let s = serve.scrape();
    assert_eq!(must(&s, "storectl_images", &[("source", "shared")]), 0.0);
    assert!(
        must(&s, "storectl_refresh_scans_total", &[]) >= 1.0,
        "the first scan counts"
    );

    let (_, built) = make_image(&base.join("layout"), 2);
    let out = env
        .run_root(
            &writer,
            &["load", "-q", &base.join("layout").display().to_string()],
        )
        .ok();
    assert_eq!(out.trim(), built.id());

    // The scan applies the image before it counts itself: wait for both.
    let s = serve.scrape_until(Duration::from_secs(10), |s| {
        get(s, "storectl_images", &[("source", "shared")]) == Some(1.0)
            && get(s, "storectl_refresh_scans_total", &[]).unwrap_or(0.0) >= 2.0
            && get(s, "storectl_refresh_duration_seconds_count", &[]).unwrap_or(0.0) >= 2.0
    });
    assert_eq!(must(&s, "storectl_layers", &[("source", "shared")]), 3.0);
    assert_eq!(must(&s, "storectl_images", &[("source", "local")]), 0.0);
    assert!(must(&s, "storectl_refresh_scans_total", &[]) >= 2.0);
    assert!(must(&s, "storectl_refresh_duration_seconds_count", &[]) >= 2.0);
    assert!(must(&s, "storectl_refresh_duration_seconds_sum", &[]) >= 0.0);
    assert!(
        get(
            &s,
            "storectl_refresh_duration_seconds_bucket",
            &[("le", "+Inf")]
        )
        .is_some(),
        "a histogram with buckets"
    );
    assert_eq!(must(&s, "storectl_share_pending_entries", &[]), 0.0);
    assert_eq!(
        get(&s, "storectl_refresh_errors_total", &[]).unwrap_or(0.0),
        0.0
    );
    assert!(
        serve.wait_line(
            &format!("image added {} localhost/metrics-2:v1", built.id()),
            Duration::from_secs(5)
        ),
        "{:?}",
        serve.stderr()
    );
    let list: Value = serde_json::from_str(&serve.client(&env, &["ls", "--json"]).ok()).unwrap();
    assert_eq!(list[0]["id"], built.id().as_str());
    assert_eq!(list[0]["shared"], true);
    let (status, stderr) = serve.stop();
    assert!(status.success(), "{status:?} {stderr:?}");
}

// ---------------------------------------------------------------------------
// With a registry

#[test]
#[ignore = "needs root"]
fn pull_through_serve_records_transfer_metrics() {
    require_root!();
    if let Some(tool) = missing(&["docker-registry", "skopeo"]) {
        eprintln!("skipping: {tool} is not installed (apt-get install docker-registry skopeo)");
        return;
    }
    let reg = Registry::start(None);
    let env = Env::new();
    let layout = env.path("layout");
    let (image, built) = make_image(&layout, 3);
    let reference = format!("{}/metrics/img:v1", reg.addr);
    skopeo_copy(&layout, &image.tag().expect("a tag"), &reference, &[]);

    // The layers as the registry serves them (sizes of the blobs to pull).
    let manifest = http(
        &reg.addr,
        "GET",
        "/v2/metrics/img/manifests/v1",
        &[(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        )],
    );
    assert_eq!(manifest.status, 200, "{manifest:?}");
    let manifest = manifest.json();
    let layers: Vec<(String, u64)> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(layers.len(), 3);
    let blob_bytes: u64 = layers.iter().map(|(_, n)| n).sum();

    let serve = Serve::start(&env.root, &[]);
    let id = serve.client(&env, &["pull", "-q", &reference]).ok();
    assert_eq!(id.trim(), built.id(), "stderr: {:?}", serve.stderr());
    let ls = env.ls();
    assert_eq!(ls[0]["names"][0], reference.as_str());

    let s = serve.scrape();
    for (digest, _) in &layers {
        let p = must(
            &s,
            "storectl_transfer_progress_percent",
            &[("operation", "pull"), ("layer", digest)],
        );
        assert_eq!(p, 100.0, "{digest}");
    }
    assert_eq!(
        must(
            &s,
            "storectl_transfer_bytes_total",
            &[("operation", "pull")]
        ),
        blob_bytes as f64,
        "bytes transferred = the layer blobs' sizes"
    );
    assert_eq!(
        must(
            &s,
            "storectl_transfer_layers_total",
            &[("operation", "pull"), ("result", "complete")]
        ),
        3.0
    );
    assert_eq!(must(&s, "storectl_images", &[("source", "local")]), 1.0);
    assert_eq!(must(&s, "storectl_layers", &[("source", "local")]), 3.0);

    // Again: every layer already exists, no byte moves.
    serve.client(&env, &["pull", "-q", &reference]).ok();
    let s = serve.scrape();
    assert_eq!(
        must(
            &s,
            "storectl_transfer_layers_total",
            &[("operation", "pull"), ("result", "already_exists")]
        ),
        3.0
    );
    assert_eq!(
        must(
            &s,
            "storectl_transfer_bytes_total",
            &[("operation", "pull")]
        ),
        blob_bytes as f64
    );

    // A tag the registry does not have.
    let missing = format!("{}/metrics/img:nope", reg.addr);
    let err = serve.client(&env, &["pull", "-q", &missing]).err();
    assert!(err.contains("not found"), "{err}");

    // The pulled image is in the store for the CLI too.
    let ls = env.ls();
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["id"], built.id().as_str());
    let (status, _) = serve.stop();
    assert!(status.success());
}
