//! `storectl serve --socket PATH` and `storectl --host unix://PATH`, end to
//! end: the real daemon, real clients (ours, and a Python one built from the
//! `.proto` files), a real `docker-registry` on 127.0.0.1, and a throttling
//! TCP proxy in front of it so pulls last long enough to be interrupted.
//!
//! * `python_client_drives_cri_and_images` — Debian's python3-grpcio drives
//!   the CRI image service as kubelet would (pull with auth from an htpasswd
//!   registry, list, status, fs info, remove) and our Images.Pull (progress
//!   every tick, per-layer totals, credentials asked over the stream, one
//!   result), Events, and a malformed and an oversized message.
//! * `client_in_tmux_draws_like_a_local_pull` — `storectl --host … pull` at
//!   160 and 80 columns: bars, then compact lines, as without a daemon.
//! * `many_clients_share_downloads_and_cancel` — 8 clients at once (two per
//!   image): one download per image; a client killed mid-pull cancels it
//!   unless another client waits on it; no debris.
//! * `daemon_killed_mid_pull_then_restarts_clean` — SIGKILL of the daemon:
//!   every client one error line; after a restart the pull succeeds, no debris.
//! * `socket_permissions_and_peer_credentials` — 0660 root:GROUP; `nobody`
//!   refused unless in the group; with the mode loosened by hand the daemon
//!   still refuses it (SO_PEERCRED).
//! * `reader_daemon_streams_the_refreshers_events` — a daemon on a reader of
//!   a share: its `ls` is the merged view, and `Events.Subscribe` (Python)
//!   gets the image and its layers added, then removed, as the writer loads
//!   and removes it.
//! * `a_list_bigger_than_a_request_reaches_the_client` — a 10 MB `ls` (as a
//!   store of 10,000 images gives) over the socket.
//!
//! Needs root; tools missing (docker-registry, skopeo, htpasswd, tmux,
//! setpriv, python3-grpcio) skip a test, saying why.
#![allow(clippy::print_stderr, clippy::print_stdout)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::throttle::Throttle;
use common::tmux::{strip_ansi, Tmux};
use common::{Env, Run, STORECTL};
use serde_json::Value;
use storectl_fixtures::gen::Prng;
use storectl_fixtures::registry::{missing, skopeo, skopeo_copy, Registry};
use storectl_fixtures::{write_oci_layout, BuiltImage, Compression, Entry, Image, Layer};

/// Root and every tool in `tools`, or `false` with the reason printed.
fn ready(tools: &[&str]) -> bool {
    require_root!();
    if let Some(t) = missing(tools) {
        eprintln!("skipping: {t} is not installed (scripts/setup-debian.sh installs it)");
        return false;
    }
    true
}

// ---------------------------------------------------------------------------
// The daemon

/// A running `storectl serve`, SIGKILLed on drop.
struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    root: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(root: &Path, socket: &Path, extra: &[&str]) -> Daemon {
        let mut child = Command::new(STORECTL)
            .arg("--root")
            .arg(root)
            .args(["serve", "--socket"])
            .arg(socket)
            .args(extra)
            .env_remove("STORECTL_ROOT")
            .env_remove("STORECTL_HOST")
            .env("STORECTL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("storectl serve starts");
        let stderr = child.stderr.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let d = Daemon {
            child: Some(child),
            socket: socket.to_path_buf(),
            root: root.to_path_buf(),
            lines,
        };
        let want = format!(
            "storectl serve: serving gRPC on unix://{}",
            socket.display()
        );
        assert!(
            d.wait_line(&want, Duration::from_secs(30)),
            "no {want:?}: {:?}",
            d.stderr()
        );
        d
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn stderr(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn wait_line(&self, what: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr().iter().any(|l| l.contains(what)) {
                return true;
            }
            if let Some(c) = &self.child {
                let _ = c.id();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `storectl --host unix://SOCKET args…`.
    fn client(&self, args: &[&str]) -> Run {
        client(&self.host(), args)
    }

    /// Start a client without waiting for it.
    fn spawn_client(&self, args: &[&str]) -> Child {
        Command::new(STORECTL)
            .args(["--host", &self.host()])
            .args(args)
            .env_remove("STORECTL_ROOT")
            .env("HOME", self.root.parent().unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("a client starts")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client(host: &str, args: &[&str]) -> Run {
    let mut all = vec!["--host".to_string(), host.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let out = Command::new(STORECTL)
        .args(&all)
        .env_remove("STORECTL_ROOT")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("run storectl");
    Run::from_output(all, out)
}

/// A finished spawned client as a `Run`.
fn wait_client(child: Child, args: &[&str]) -> Run {
    let out = child.wait_with_output().expect("client exits");
    Run::from_output(args.iter().map(|s| s.to_string()).collect(), out)
}

/// Dot-prefixed debris (`.staging-*`, `.tmp-*`, `.trash-*`) anywhere in the
/// store's top directories.
fn debris(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["", "overlay", "overlay-layers", "overlay-images"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(".staging") || n.starts_with(".tmp") || n.starts_with(".trash") {
                out.push(format!("{dir}/{n}"));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Images

/// An image of layers of random (incompressible) bytes, `sizes` long each.
fn image(name: &str, seed: u64, sizes: &[usize]) -> Image {
    let mut rng = Prng::new(seed);
    Image::new(
        sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Layer::new(
                    vec![
                        Entry::dir(&format!("l{i}")),
                        Entry::file(&format!("l{i}/data"), rng.bytes(*n)),
                    ],
                    Compression::Gzip,
                )
            })
            .collect(),
    )
    .named(name)
}

/// Push `image` to `reg` as `repo_tag` (with `creds` USER:PASS when given).
fn push(
    env: &Env,
    reg: &Registry,
    image: &Image,
    repo_tag: &str,
    creds: Option<&str>,
) -> BuiltImage {
    let dir = env.path(&format!("oci-{}", repo_tag.replace(['/', ':'], "-")));
    let built = write_oci_layout(&dir, std::slice::from_ref(image))
        .unwrap()
        .remove(0);
    let creds = creds.map(|c| format!("--dest-creds={c}"));
    let extra: Vec<&str> = creds.iter().map(String::as_str).collect();
    skopeo_copy(&dir, &image.tag().unwrap(), &reg.r(repo_tag), &extra);
    built
}

/// The layer blobs (digest → size) of `repo_tag` as the registry serves it.
fn blobs(reg: &Registry, repo_tag: &str, creds: Option<&str>) -> Vec<(String, u64)> {
    let reference = format!("docker://{}", reg.r(repo_tag));
    let creds = creds.map(|c| format!("--creds={c}"));
    let mut args = vec!["inspect", "--raw", "--tls-verify=false"];
    args.extend(creds.as_deref());
    args.push(&reference);
    let m: Value = serde_json::from_str(&skopeo(&args)).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn short(id: &str) -> &str {
    &id.trim_start_matches("sha256:")[..12]
}

/// A socket path in a directory others may traverse.
fn socket_in(env: &Env) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = env.path("run");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(env.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.join("storectl.sock")
}

// ---------------------------------------------------------------------------
// Tests

#[test]
#[ignore = "needs root"]
fn python_client_drives_cri_and_images() {
    if !ready(&["docker-registry", "skopeo", "htpasswd"]) {
        return;
    }
    let python = "/usr/bin/python3";
    let have_grpc = Command::new(python)
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_grpc {
        eprintln!(
            "skipping: {python} lacks grpc (apt-get install python3-grpcio python3-grpc-tools)"
        );
        return;
    }
    let env = Env::new();
    let reg = Registry::start(Some(("alice", "s3cret")));
    let creds = "alice:s3cret";
    push(
        &env,
        &reg,
        &image("localhost/cri:1", 1, &[200_000]),
        "cri/img:1",
        Some(creds),
    );
    let big = image("localhost/stream:1", 2, &[6 << 20, 6 << 20, 3 << 20]);
    let built = push(&env, &reg, &big, "stream/img:1", Some(creds));
    let stream_blobs: serde_json::Map<String, Value> = blobs(&reg, "stream/img:1", Some(creds))
        .into_iter()
        .map(|(d, n)| (d, Value::from(n)))
        .collect();
    // Slow enough for several 100 ms ticks.
    let proxy = Throttle::start(&reg.addr, 24 << 20);
    let socket = socket_in(&env);
    let daemon = Daemon::start(&env.root, &socket, &[]);
    let scenario = serde_json::json!({
        "cri_ref": format!("{}/cri/img:1", proxy.addr),
        "stream_ref": format!("{}/stream/img:1", proxy.addr),
        "registry": proxy.addr,
        "user": "alice",
        "password": "s3cret",
        "stream_blobs": stream_blobs,
    });
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/daemon_client.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(&daemon.socket)
        .arg(&proto)
        .arg(scenario.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client failed:\n{stderr}\n{stdout}\ndaemon: {:#?}",
        daemon.stderr()
    );
    let figures: Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("python client: {figures}");
    // The image pulled over the stream is there, under its id.
    let ls: Value = serde_json::from_str(&daemon.client(&["ls", "--json"]).ok()).unwrap();
    assert!(
        ls.as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == built.id().as_str()),
        "{ls}"
    );
    // The malformed and oversized messages did not stop the daemon.
    assert!(daemon.child.is_some());
    assert!(daemon.client(&["ls", "-q"]).code == Some(0));
}

#[test]
#[ignore = "needs root"]
fn client_in_tmux_draws_like_a_local_pull() {
    if !ready(&["docker-registry", "skopeo", "tmux"]) {
        return;
    }
    let env = Env::new();
    let reg = Registry::start(None);
    let img = image("localhost/render:1", 3, &[12 << 20, 12 << 20, 40_000]);
    let built = push(&env, &reg, &img, "render/img:1", None);
    let proxy = Throttle::start(&reg.addr, 12 << 20);
    let reference = format!("{}/render/img:1", proxy.addr);
    let ids: Vec<String> = built
        .chain_ids()
        .iter()
        .map(|l| short(l).to_string())
        .collect();
    let socket = socket_in(&env);
    let daemon = Daemon::start(&env.root, &socket, &[]);
    let tmux = Tmux::new("daemon");
    for width in [160u16, 80] {
        let script = format!(
            "HOME=/nonexistent '{STORECTL}' --host '{}' pull '{reference}'",
            daemon.host()
        );
        let (pane, raw) = tmux.run(env.dir(), width, &script);
        let what = format!("pane at {width} columns:\n{pane}");
        assert!(pane.contains("EXIT=0"), "{what}");
        let summary: Vec<&str> = pane.lines().filter(|l| l.starts_with("Pulled: ")).collect();
        assert_eq!(summary.len(), 1, "{what}");
        assert!(
            summary[0].starts_with("Pulled: 3 layers written (")
                && summary[0].contains(" compressed) in "),
            "{what}"
        );
        for id in &ids {
            let lines: Vec<&str> = pane.lines().filter(|l| l.contains(id.as_str())).collect();
            assert_eq!(lines.len(), 1, "one line for layer {id}; {what}");
            let l = lines[0].trim_end();
            assert!(
                l.starts_with(id.as_str()) && l.contains("complete"),
                "{l:?}; {what}"
            );
            if width >= 110 {
                assert!(l.contains("[====") && l.contains(']'), "a full bar: {l:?}");
                assert!(l.contains(" / "), "bytes: {l:?}");
            } else {
                let parts: Vec<&str> = l.split(' ').collect();
                assert_eq!(parts.len(), 3, "compact form: {l:?}");
                let (cur, total) = parts[2].split_once('/').expect("cur/total");
                assert_eq!(cur, total, "{l:?}");
                assert!(!l.contains('['), "no bar when narrow: {l:?}");
            }
        }
        let frames = strip_ansi(&raw);
        if width >= 110 {
            assert!(
                frames
                    .lines()
                    .any(|l| l.contains("downloading") && l.contains("/s") && l.contains('[')),
                "no wide downloading frame with a rate:\n{frames}"
            );
        } else {
            assert!(frames.contains("downloading"), "{frames}");
            assert!(!frames.contains('['), "a bar at {width} columns:\n{frames}");
        }
        // Again from nothing for the next width.
        daemon.client(&["rmi", &reference]).ok();
    }
    // --progress json: JSON lines on stdout, the id not printed.
    let run = daemon.client(&["pull", "--progress", "json", &reference]);
    let out = run.ok();
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.iter().any(|e| e["event"] == "downloading"), "{out}");
    assert!(
        events.iter().filter(|e| e["event"] == "complete").count() >= 3,
        "{out}"
    );
    assert_eq!(events.last().unwrap()["event"], "done", "{out}");
}

#[test]
#[ignore = "needs root"]
fn many_clients_share_downloads_and_cancel() {
    if !ready(&["docker-registry", "skopeo"]) {
        return;
    }
    let env = Env::new();
    let reg = Registry::start(None);
    let mut wanted = Vec::new();
    let mut all_blobs = 0u64;
    for i in 0..4u64 {
        let img = image(&format!("localhost/many{i}:1"), 10 + i, &[2 << 20, 2 << 20]);
        let tag = format!("many/img{i}:1");
        let built = push(&env, &reg, &img, &tag, None);
        all_blobs += blobs(&reg, &tag, None).iter().map(|(_, n)| n).sum::<u64>();
        wanted.push((tag, built.id()));
    }
    let proxy = Throttle::start(&reg.addr, 4 << 20);
    let socket = socket_in(&env);
    let daemon = Daemon::start(&env.root, &socket, &[]);

    // 8 clients at once, two per image.
    let refs: Vec<String> = wanted
        .iter()
        .map(|(t, _)| format!("{}/{t}", proxy.addr))
        .collect();
    let children: Vec<(Child, usize)> = (0..8)
        .map(|k| (daemon.spawn_client(&["pull", "-q", &refs[k % 4]]), k % 4))
        .collect();
    for (child, i) in children {
        let run = wait_client(child, &["pull", "-q", &refs[i]]);
        assert_eq!(run.ok().trim(), wanted[i].1, "client of image {i}");
    }
    let moved = proxy.bytes();
    eprintln!("8 clients, 4 images: {moved} bytes through the proxy, blobs {all_blobs}");
    assert!(moved >= all_blobs, "{moved} < {all_blobs}");
    assert!(
        moved < all_blobs + all_blobs / 4,
        "two pulls of one image share one download: {moved} bytes for {all_blobs} of blobs"
    );
    assert_eq!(
        daemon
            .stderr()
            .iter()
            .filter(|l| l.contains(": done "))
            .count(),
        4,
        "one pull per image: {:#?}",
        daemon.stderr()
    );
    for r in &refs {
        daemon.client(&["rmi", r]).ok();
    }

    // A client that goes away mid-pull cancels it...
    proxy.rate.store(1 << 20, Ordering::Relaxed);
    let before = proxy.bytes();
    let mut lone = daemon.spawn_client(&["pull", "-q", &refs[0]]);
    proxy.wait_bytes(before + (256 << 10));
    lone.kill().unwrap();
    let _ = lone.wait();
    assert!(
        daemon.wait_line(
            &format!("pull {}: cancelled", refs[0]),
            Duration::from_secs(30)
        ),
        "{:#?}",
        daemon.stderr()
    );
    let ls: Value = serde_json::from_str(&daemon.client(&["ls", "--json"]).ok()).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 0, "{ls}");
    assert_eq!(debris(&env.root), Vec::<String>::new());

    // ...unless another client waits on it.
    let before = proxy.bytes();
    let mut first = daemon.spawn_client(&["pull", "-q", &refs[1]]);
    proxy.wait_bytes(before + (128 << 10));
    let second = daemon.spawn_client(&["pull", "-q", &refs[1]]);
    std::thread::sleep(Duration::from_millis(300));
    first.kill().unwrap();
    let _ = first.wait();
    proxy.rate.store(64 << 20, Ordering::Relaxed);
    let run = wait_client(second, &["pull", "-q", &refs[1]]);
    assert_eq!(run.ok().trim(), wanted[1].1);
    assert!(!daemon
        .stderr()
        .iter()
        .any(|l| l.contains(&format!("pull {}: cancelled", refs[1]))));
    assert_eq!(debris(&env.root), Vec::<String>::new());
}

#[test]
#[ignore = "needs root"]
fn daemon_killed_mid_pull_then_restarts_clean() {
    if !ready(&["docker-registry", "skopeo"]) {
        return;
    }
    let env = Env::new();
    let reg = Registry::start(None);
    let img = image("localhost/killed:1", 20, &[3 << 20, 3 << 20]);
    let built = push(&env, &reg, &img, "killed/img:1", None);
    let proxy = Throttle::start(&reg.addr, 1 << 20);
    let reference = format!("{}/killed/img:1", proxy.addr);
    let socket = socket_in(&env);
    let mut daemon = Daemon::start(&env.root, &socket, &[]);
    let a = daemon.spawn_client(&["pull", "-q", &reference]);
    let b = daemon.spawn_client(&["pull", "-q", &reference]);
    proxy.wait_bytes(512 << 10);
    daemon.kill();
    for c in [a, b] {
        let line = wait_client(c, &["pull", "-q", &reference]).err();
        assert!(
            line.contains("lost the connection to the storectl daemon"),
            "{line}"
        );
        assert!(
            line.starts_with(&format!("storectl: error: pulling {reference}: ")),
            "{line}"
        );
    }
    proxy.rate.store(64 << 20, Ordering::Relaxed);
    // The stale socket is replaced; the next writer sweeps what the killed one left.
    let daemon = Daemon::start(&env.root, &socket, &[]);
    let id = daemon.client(&["pull", "-q", &reference]).ok();
    assert_eq!(id.trim(), built.id());
    assert_eq!(debris(&env.root), Vec::<String>::new());
    let verify = Command::new(STORECTL)
        .arg("--root")
        .arg(&env.root)
        .args(["verify"])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
}

#[test]
#[ignore = "needs root"]
fn socket_permissions_and_peer_credentials() {
    if !ready(&["setpriv"]) {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = Env::new();
    env.run(&["init"]).ok();
    let socket = socket_in(&env);
    let as_nobody = |groups: Option<&str>, args: &[&str]| -> Run {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534"]);
        match groups {
            Some(g) => cmd.arg(format!("--groups={g}")),
            None => cmd.arg("--clear-groups"),
        };
        let host = format!("unix://{}", socket.display());
        let mut all = vec!["--host".to_string(), host];
        all.extend(args.iter().map(|s| s.to_string()));
        let out = cmd
            .arg(STORECTL)
            .args(&all)
            .env_remove("STORECTL_ROOT")
            .env("HOME", "/nonexistent")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run::from_output(all, out)
    };

    let daemon = Daemon::start(&env.root, &socket, &[]);
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    let line = as_nobody(None, &["ls"]).err();
    assert!(line.contains("Permission denied"), "{line}");
    assert!(line.contains("cannot reach the storectl daemon"), "{line}");
    drop(daemon);

    let daemon = Daemon::start(&env.root, &socket, &["--group", "4242"]);
    assert_eq!(std::fs::metadata(&socket).unwrap().gid(), 4242);
    as_nobody(Some("4242"), &["ls"]).ok();
    as_nobody(None, &["ls"]).err_containing("Permission denied");

    // The mode loosened by hand: the daemon still checks who calls.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let line = as_nobody(None, &["ls"]).err();
    assert!(line.contains("uid 65534 may not use this daemon"), "{line}");
    assert!(daemon.wait_line("refused uid 65534", Duration::from_secs(5)));
    as_nobody(Some("4242"), &["ls"]).ok();
    // And root, of course.
    daemon.client(&["ls"]).ok();
}

#[test]
#[ignore = "needs root"]
fn reader_daemon_streams_the_refreshers_events() {
    require_root!();
    let python = "/usr/bin/python3";
    let have_grpc = Command::new(python)
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_grpc {
        eprintln!(
            "skipping: {python} lacks grpc (apt-get install python3-grpcio python3-grpc-tools)"
        );
        return;
    }
    let env = Env::new();
    let base = env.dir().canonicalize().unwrap();
    let share = base.join("share");
    std::fs::create_dir(&share).unwrap();
    let share_arg = share.display().to_string();
    let (writer, reader) = (base.join("writer"), base.join("reader"));
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
    let socket = socket_in(&env);
    let daemon = Daemon::start(&reader, &socket, &[]);
    // A subscriber of our own, waiting for 8 events.
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/daemon_client.py");
    let mut sub = Command::new(python)
        .arg(&script)
        .arg(&daemon.socket)
        .arg(&proto)
        .args(["events", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    // The writer loads an image of 3 layers, then removes it.
    let layout = base.join("layout");
    let img = image("localhost/shared:1", 30, &[10_000, 10_000, 10_000]);
    let built = write_oci_layout(&layout, std::slice::from_ref(&img))
        .unwrap()
        .remove(0);
    let loaded = env
        .run_root(&writer, &["load", "-q", &layout.display().to_string()])
        .ok();
    assert_eq!(loaded.trim(), built.id());
    // The daemon's merged view has it, as shared.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ls: Value = serde_json::from_str(&daemon.client(&["ls", "--json"]).ok()).unwrap();
        if ls
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == built.id().as_str() && i["shared"] == true)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reader's daemon never listed it: {ls}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    env.run_root(&writer, &["rmi", &built.id()]).ok();
    let events: Vec<Value> = lines
        .by_ref()
        .take(8)
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let _ = sub.kill();
    let _ = sub.wait();
    let kinds: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let count = |k: &str| kinds.iter().filter(|(kind, _)| kind == k).count();
    assert_eq!(count("layer_added"), 3, "{kinds:?}");
    assert_eq!(count("layer_removed"), 3, "{kinds:?}");
    let added = kinds
        .iter()
        .position(|e| *e == ("image_added".into(), built.id()))
        .expect("image_added");
    let removed = kinds
        .iter()
        .position(|e| *e == ("image_removed".into(), built.id()))
        .expect("image_removed");
    assert!(added < removed, "{kinds:?}");
    assert_eq!(events[added]["names"][0], "localhost/shared:1");
    for id in built.chain_ids() {
        assert!(
            kinds.contains(&("layer_added".into(), id.clone())),
            "{id}: {kinds:?}"
        );
    }
}

/// A reply bigger than a request may be (8 MiB) reaches the client whole:
/// `ls` of 10 images with 4,000 long names each (about 10 MB of list), as a
/// store of 10,000 images gives (before: "decoded message length too
/// large", and no list).
#[test]
#[ignore = "needs root"]
fn a_list_bigger_than_a_request_reaches_the_client() {
    require_root!();
    let env = Env::new();
    let root = env.dir().join("store");
    let mut ids = Vec::new();
    for k in 0..10u64 {
        let layout = env.path(&format!("layout{k}"));
        let img = image(&format!("localhost/big{k}:1"), 40 + k, &[100]);
        write_oci_layout(&layout, std::slice::from_ref(&img)).unwrap();
        ids.push(env.load(&layout, &["-q"]));
    }
    // Many long names, written into the records while no daemon runs.
    let long = "x".repeat(230);
    for (k, id) in ids.iter().enumerate() {
        let record = root.join("overlay-images").join(id).join("images.json");
        let mut json: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        let names: Vec<String> = (0..4000)
            .map(|n| format!("localhost/{long}{k}:{n}"))
            .collect();
        json["names"] = serde_json::json!(names);
        std::fs::write(&record, serde_json::to_vec(&json).unwrap()).unwrap();
    }
    let socket = socket_in(&env);
    let daemon = Daemon::start(&root, &socket, &[]);
    let out = daemon.client(&["ls", "--format", "json"]).ok();
    assert!(out.len() > 8 << 20, "{} bytes of list", out.len());
    let listed: Value = serde_json::from_str(&out).unwrap();
    let names: usize = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["names"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(names, 40_000);
}
