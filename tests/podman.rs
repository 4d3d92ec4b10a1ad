//! Podman reads a storectl share as an additional image store (issue 10,
//! point 2): the real podman (Debian's 4.3.1) with its own graph root and
//! run root — "another host" — and the share bind-mounted read-only for it,
//! configured by the storage.conf lines docs/nfs.md gives
//! (`additionalimagestores = [ … ]`, through `CONTAINERS_STORAGE_CONF`).
//!
//! * `podman_lists_runs_and_follows_the_share` — `podman images` lists the
//!   share's images with the ids and names `storectl ls` gives (on the
//!   writer and on a storectl reader); `podman run --rm` runs busybox from
//!   the share (layer 2's whiteout and file are there); an image the writer
//!   loads afterwards is in the next `podman images`, one it removes is
//!   gone; `podman system service` (one long-running containers/storage
//!   reader, asked over its socket) sees both without a restart.
//! * `podman_load_and_pull_reuse_shared_layers` — `podman load` and `podman
//!   pull` of images on the share's base layer: podman keeps no copy of the
//!   base (containers/image finds it by id in the additional store); only
//!   the layers above it are podman's own (containers/image names layers
//!   above the base differently from OCI chain ids, so it cannot find ours
//!   by id — it reads their content from the share instead of the network).
//! * `skopeo_copies_a_shared_image_with_our_digests` — `skopeo copy
//!   containers-storage:IMAGE docker-archive:…` through the additional
//!   store writes layer tars whose sha256 are our diffIDs.
//!
//! Skips, saying why, when podman (or, for the images, busybox-static) is
//! missing. Uses runc when it is installed (crun refuses hosts with cgroup v1
//! and v2 controllers both mounted).
#![allow(clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::Env;
use serde_json::Value;
use storectl_fixtures::{write_docker_archive, write_oci_layout, Compression, Entry, Image, Layer};

/// Podman instances share host-wide state (its SHM locks): one test at a time.
static PODMAN: Mutex<()> = Mutex::new(());

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Why this test cannot run here, if it cannot.
fn missing() -> Option<&'static str> {
    if !have("podman") {
        return Some("podman is not installed (scripts/setup-debian.sh)");
    }
    if busybox().is_none() {
        return Some("busybox-static is not installed (scripts/setup-debian.sh)");
    }
    None
}

macro_rules! skip_without_podman {
    () => {
        if let Some(why) = missing() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A busybox image: layer 1 has busybox and /etc/remove-me, layer 2
/// deletes it (a whiteout) and adds /etc/hello.
fn busybox_image(name: &str) -> Image {
    let bin = fs::read(busybox().expect("busybox")).unwrap();
    let mut base = vec![
        Entry::dir("bin"),
        Entry::file("bin/busybox", bin).mode(0o755),
        Entry::dir("etc"),
        Entry::file("etc/motd", "storectl podman test\n"),
        Entry::file("etc/remove-me", "deleted by layer 2\n"),
        Entry::dir("tmp").mode(0o1777),
    ];
    for applet in ["sh", "cat", "ls", "echo", "test"] {
        base.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    let top = vec![
        Entry::whiteout("etc/remove-me"),
        Entry::file("etc/hello", "hello from layer 2\n"),
    ];
    Image::new(vec![
        Layer::new(base, Compression::Gzip),
        Layer::new(top, Compression::Gzip),
    ])
    .named(name)
}

/// An image on busybox's base layer with one more layer of its own.
fn on_busybox(name: &str, text: &str) -> Image {
    let mut image = busybox_image(name);
    image.layers.truncate(1);
    image.layers.push(Layer::new(
        vec![Entry::file("etc/own", format!("{text}\n"))],
        Compression::Gzip,
    ));
    image
}

/// A writer on `T/share`, the share bind-mounted read-only at `T/ro` (what
/// another host sees), a storectl reader of it, and podman's own roots
/// with a storage.conf naming the read-only share.
struct Setup {
    env: Env,
    writer: PathBuf,
    share: PathBuf,
    _ro: PathBuf,
    reader: PathBuf,
    conf: PathBuf,
    podman_root: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let env = Env::new();
        let (writer, share, ro) = (env.path("writer"), env.path("share"), env.path("ro"));
        fs::create_dir_all(&share).unwrap();
        fs::create_dir_all(&ro).unwrap();
        let share_s = share.display().to_string();
        env.run_root(&writer, &["init", "--shared", &share_s, "--role", "writer"])
            .ok();
        sh(Command::new("mount").arg("--bind").arg(&share).arg(&ro));
        sh(Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&ro));
        let reader = env.path("reader");
        let ro_s = ro.display().to_string();
        env.run_root(&reader, &["init", "--shared", &ro_s, "--role", "reader"])
            .ok();
        let podman_root = env.path("podman");
        let conf = env.path("storage.conf");
        // The lines docs/nfs.md gives.
        fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}/root\"\nrunroot = \"{}/run\"\n\n\
                 [storage.options]\nadditionalimagestores = [ \"{}\" ]\n",
                podman_root.display(),
                podman_root.display(),
                ro.display()
            ),
        )
        .unwrap();
        Setup {
            env,
            writer,
            share,
            _ro: ro,
            reader,
            conf,
            podman_root,
        }
    }

    fn podman(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_STORAGE_CONF", &self.conf);
        if have("runc") {
            cmd.args(["--runtime", "runc"]);
        }
        cmd.args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        cmd
    }

    /// Load an image into the writer; its id.
    fn load(&self, image: Image) -> String {
        let name = image
            .name
            .clone()
            .unwrap_or_default()
            .replace(['/', ':'], "-");
        let dir = self.env.path(&format!("oci-{name}"));
        let _ = fs::remove_dir_all(&dir);
        let id = write_oci_layout(&dir, &[image]).expect("OCI layout")[0].id();
        let out = self
            .env
            .run_root(&self.writer, &["load", &dir.display().to_string()])
            .ok();
        assert!(out.contains(&id), "{out}");
        id
    }

    /// id → names, as `storectl ls --json` on `root` lists them.
    fn storectl_ls(&self, root: &Path) -> BTreeMap<String, Vec<String>> {
        let out = self.env.run_root(root, &["ls", "--json"]).ok();
        let v: Vec<Value> = serde_json::from_str(&out).unwrap();
        v.iter()
            .map(|i| (i["id"].as_str().unwrap().to_string(), strings(&i["names"])))
            .collect()
    }

    /// id → names, as `podman images` lists the read-only ones.
    fn podman_images(&self) -> BTreeMap<String, Vec<String>> {
        let out = sh(self.podman().args(["images", "--format", "json"]));
        parse_podman_images(&out)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The read-only share, and whatever podman left mounted in its own
        // root (a failed test), deepest first.
        let base = self.env.dir().display().to_string();
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&base))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// id → names of the read-only images in podman's JSON image list (the
/// CLI's `Id`/`Names`/`ReadOnly`, the service's the same).
fn parse_podman_images(json: &str) -> BTreeMap<String, Vec<String>> {
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    v.as_array()
        .unwrap()
        .iter()
        .filter(|i| i["ReadOnly"].as_bool() == Some(true))
        .map(|i| (i["Id"].as_str().unwrap().to_string(), strings(&i["Names"])))
        .collect()
}

/// `podman system service` on a socket of its own, stopped on drop.
struct Service {
    child: Child,
    socket: PathBuf,
}

impl Service {
    fn start(setup: &Setup) -> Service {
        let socket = setup.env.path("podman.sock");
        let child = setup
            .podman()
            .args(["system", "service", "--time", "0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman system service");
        let service = Service { child, socket };
        let start = Instant::now();
        while service.try_images().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "podman system service did not answer on {}",
                service.socket.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        service
    }

    fn try_images(&self) -> Option<BTreeMap<String, Vec<String>>> {
        let out = Command::new("curl")
            .args(["-sf", "--unix-socket"])
            .arg(&self.socket)
            .arg("http://d/v4.0.0/libpod/images/json")
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        // The libpod API's list: Id, Names, ReadOnly.
        Some(parse_podman_images(&String::from_utf8_lossy(&out.stdout)))
    }

    /// The service's list once `want` holds (it reloads when the lock
    /// files' tokens change; waits up to a minute, then fails showing it).
    fn images_once(
        &self,
        what: &str,
        want: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
    ) -> BTreeMap<String, Vec<String>> {
        let start = Instant::now();
        loop {
            let images = self.try_images().expect("the service answers");
            if want(&images) {
                return images;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "podman system service never saw {what}: {images:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs root"]
fn podman_lists_runs_and_follows_the_share() {
    skip_without_podman!();
    require_root!();
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new();
    let busybox = setup.load(busybox_image("localhost/busybox:latest"));
    let other = setup.load(on_busybox("localhost/other:v1", "other"));
    setup
        .env
        .run_root(&setup.writer, &["tag", &busybox, "localhost/bb:again"])
        .ok();

    // Same ids and names as storectl on the writer and on a reader.
    let listed = setup.storectl_ls(&setup.writer);
    assert_eq!(listed.len(), 2);
    assert_eq!(setup.storectl_ls(&setup.reader), listed);
    assert_eq!(setup.podman_images(), listed, "podman images");

    // podman run on the share's layers.
    let out = sh(setup.podman().args([
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "localhost/busybox:latest",
        "sh",
        "-c",
        "cat /etc/hello /etc/motd; test -e /etc/remove-me && echo still there || echo whiteout ok",
    ]));
    assert_eq!(
        out, "hello from layer 2\nstorectl podman test\nwhiteout ok\n",
        "podman run"
    );

    // A long-running containers/storage reader, and the next podman.
    let service = Service::start(&setup);
    assert_eq!(
        service.try_images().unwrap(),
        listed,
        "podman system service"
    );
    let third = setup.load(on_busybox("localhost/third:v1", "third"));
    let listed = setup.storectl_ls(&setup.writer);
    assert!(listed.contains_key(&third));
    assert_eq!(setup.podman_images(), listed, "podman images after a load");
    let seen = service.images_once("the loaded image", |i| i.contains_key(&third));
    assert_eq!(seen, listed, "podman system service after a load");

    setup.env.run_root(&setup.writer, &["rmi", &other]).ok();
    let listed = setup.storectl_ls(&setup.writer);
    assert!(!listed.contains_key(&other));
    assert_eq!(setup.podman_images(), listed, "podman images after rmi");
    let seen = service.images_once("the removal", |i| !i.contains_key(&other));
    assert_eq!(seen, listed, "podman system service after rmi");
    // The image podman ran is still whole for it.
    let out = sh(setup.podman().args([
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        &third,
        "cat",
        "/etc/own",
    ]));
    assert_eq!(out, "third\n");
    assert!(setup.share.join("overlay-images/images.json").is_file());
}

/// The layer ids in podman's own graph root.
fn podman_own_layers(setup: &Setup) -> Vec<String> {
    let path = setup.podman_root.join("root/overlay-layers/layers.json");
    let Ok(bytes) = fs::read(&path) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
#[ignore = "needs root"]
fn podman_load_and_pull_reuse_shared_layers() {
    skip_without_podman!();
    require_root!();
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new();
    let busybox = busybox_image("localhost/busybox:latest").build();
    let base = busybox.chain_ids()[0].clone();
    setup.load(busybox_image("localhost/busybox:latest"));
    assert!(setup.share.join("overlay").join(&base).is_dir());

    // podman load of another image on the same base.
    let archive = setup.env.path("loaded.tar");
    write_docker_archive(&archive, &[on_busybox("localhost/loaded:v1", "loaded")]).unwrap();
    sh(setup.podman().args(["load", "-i"]).arg(&archive));
    let own = podman_own_layers(&setup);
    assert_eq!(own.len(), 1, "only the top layer is podman's own: {own:?}");
    assert!(!own.contains(&base), "the shared base is not copied");
    let out = sh(setup.podman().args([
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "localhost/loaded:v1",
        "cat",
        "/etc/own",
        "/etc/motd",
    ]));
    assert_eq!(out, "loaded\nstorectl podman test\n");

    // podman pull from a registry, the same.
    if !have("docker-registry") {
        eprintln!("pull part skipped: docker-registry is not installed");
        return;
    }
    let registry = storectl_fixtures::registry::Registry::start(None);
    let layout = setup.env.path("pulled-oci");
    write_oci_layout(&layout, &[on_busybox("localhost/pulled:v1", "pulled")]).unwrap();
    let dest = registry.r("pulled:v1");
    storectl_fixtures::registry::skopeo_copy(&layout, "v1", &dest, &[]);
    let out = sh(setup
        .podman()
        .args(["pull", "--tls-verify=false"])
        .arg(&dest));
    assert!(!out.is_empty());
    let own = podman_own_layers(&setup);
    assert_eq!(own.len(), 2, "one top layer per image: {own:?}");
    assert!(!own.contains(&base), "the shared base is not copied");
}

#[test]
#[ignore = "needs root"]
fn skopeo_copies_a_shared_image_with_our_digests() {
    skip_without_podman!();
    if !have("skopeo") {
        eprintln!("skipped: skopeo is not installed");
        return;
    }
    require_root!();
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new();
    let id = setup.load(busybox_image("localhost/busybox:latest"));
    let out = setup.env.path("copied.tar");
    let mut cmd = Command::new("skopeo");
    cmd.env("CONTAINERS_STORAGE_CONF", &setup.conf).args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "containers-storage:localhost/busybox:latest",
    ]);
    sh(cmd.arg(format!("docker-archive:{}", out.display())));
    let inspect: Value =
        serde_json::from_str(&setup.env.run_root(&setup.writer, &["inspect", &id]).ok()).unwrap();
    let ours: Vec<String> = inspect["config"]["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    // The archive's layer tars, hashed.
    let dir = setup.env.path("copied");
    fs::create_dir_all(&dir).unwrap();
    sh(Command::new("tar").arg("-xf").arg(&out).arg("-C").arg(&dir));
    let manifest: Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let theirs: Vec<String> = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            storectl_storage::digest::sha256_digest(
                &fs::read(dir.join(l.as_str().unwrap())).unwrap(),
            )
        })
        .collect();
    assert_eq!(theirs, ours, "skopeo's layer tars are our diffIDs");
    assert_eq!(
        manifest[0]["Config"]
            .as_str()
            .unwrap()
            .trim_end_matches(".json"),
        id
    );
}
