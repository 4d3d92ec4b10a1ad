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
//! * `writer_killed_at_20_points_podman_sees_only_whole_images` (issue 10,
//!   point 4) — kill -9 the writer at 20 points spread over a `load` and an
//!   `rmi` of a 3-layer image: after each, `podman images`, a running
//!   `podman system service` and a fresh storectl reader list only images
//!   whose every layer is on the share (podman runs the image whenever it
//!   lists it), the image that stays loaded throughout is never lost, and
//!   the next writer leaves an index that lists exactly the share.
//!
//! * `podman_sees_opaque_directories_of_a_share` — podman honours only
//!   `trusted.overlay.opaque`, which layers of both modes carry on a local
//!   share (see docs/nfs.md for NFS).
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

/// Why this test cannot run here, if it cannot.
fn missing() -> Option<&'static str> {
    if !have("podman") {
        return Some("podman is not installed (scripts/setup-debian.sh)");
    }
    if common::busybox().is_none() {
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
    busybox_image_with(name, vec![], vec![])
}

/// [`busybox_image`] with more entries in each layer.
fn busybox_image_with(name: &str, more_base: Vec<Entry>, more_top: Vec<Entry>) -> Image {
    let bin = fs::read(common::busybox().expect("busybox")).unwrap();
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
    base.extend(more_base);
    let mut top = vec![
        Entry::whiteout("etc/remove-me"),
        Entry::file("etc/hello", "hello from layer 2\n"),
    ];
    top.extend(more_top);
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
        Setup::with_xattrs(None)
    }

    /// With the share's opaque-directory xattr mode fixed (`trusted`,
    /// `user`) instead of probed.
    fn with_xattrs(mode: Option<&str>) -> Setup {
        let env = Env::new();
        let (writer, share, ro) = (env.path("writer"), env.path("share"), env.path("ro"));
        fs::create_dir_all(&share).unwrap();
        if let Some(mode) = mode {
            fs::write(
                share.join("storectl-share.json"),
                format!("{{\"overlay_xattrs\": \"{mode}\"}}\n"),
            )
            .unwrap();
        }
        fs::create_dir_all(&ro).unwrap();
        let share_s = share.display().to_string();
        env.run_root(&writer, &["init", "--shared", &share_s, "--role", "writer"])
            .ok();
        common::set_removed_layers_grace(&share, 0);
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

/// A 3-layer image on busybox's base with `mb` MB of incompressible data
/// in each upper layer (so that a `load` takes long enough to be killed
/// at many points).
fn bulky(name: &str, seed: u64, mb: usize) -> Image {
    let mut image = busybox_image(name);
    image.layers.truncate(1);
    let mut rng = storectl_fixtures::gen::Prng::new(seed);
    for i in 0..2 {
        let data: Vec<u8> = (0..mb << 20).map(|_| rng.below(256) as u8).collect();
        image.layers.push(Layer::new(
            vec![
                Entry::file(&format!("etc/own{i}"), format!("{name} {i}\n")),
                Entry::file(&format!("bulk{i}"), data),
            ],
            Compression::Gzip,
        ));
    }
    image
}

/// What the share's index lists, and whether it is what its directories
/// hold: (image ids, problems).
fn index_view(share: &Path) -> (Vec<String>, Vec<String>) {
    let read = |p: &str| -> Vec<Value> {
        let bytes = fs::read(share.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        serde_json::from_slice::<Value>(&bytes)
            .unwrap_or_else(|e| panic!("{p} is not JSON ({e})"))
            .as_array()
            .unwrap()
            .clone()
    };
    let mut problems = Vec::new();
    let layers = read("overlay-layers/layers.json");
    let images = read("overlay-images/images.json");
    let mut parents = BTreeMap::new();
    for l in &layers {
        let id = l["id"].as_str().unwrap().to_string();
        if !share.join("overlay").join(&id).join("diff").is_dir() {
            problems.push(format!("layers.json lists {id}, which has no directory"));
        }
        parents.insert(id, l["parent"].as_str().map(String::from));
    }
    let mut ids = Vec::new();
    for i in &images {
        let id = i["id"].as_str().unwrap().to_string();
        if !share
            .join("overlay-images")
            .join(&id)
            .join("manifest")
            .is_file()
        {
            problems.push(format!("images.json lists {id}, which has no directory"));
        }
        let mut next = i["layer"].as_str().map(String::from);
        while let Some(l) = next {
            match parents.get(&l) {
                Some(p) => next = p.clone(),
                None => {
                    problems.push(format!("image {id}: layer {l} is not in layers.json"));
                    break;
                }
            }
        }
        ids.push(id);
    }
    // In id order, but for records a load appended since the last rewrite.
    ids.sort();
    (ids, problems)
}

#[test]
#[ignore = "needs root"]
fn writer_killed_at_20_points_podman_sees_only_whole_images() {
    use std::os::unix::process::ExitStatusExt;
    skip_without_podman!();
    require_root!();
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let setup = Setup::new();
    let other = setup.load(on_busybox("localhost/other:v1", "other"));
    let image = bulky("localhost/bulky:v1", 10, 6);
    let dir = setup.env.path("bulky-oci");
    let built = write_oci_layout(&dir, &[image]).expect("OCI layout");
    let (id, chain) = (built[0].id(), built[0].chain_ids());
    let dir_s = dir.display().to_string();
    let storectl = |args: &[&str]| {
        let mut cmd = Command::new(common::STORECTL);
        cmd.arg("--root").arg(&setup.writer).args(args);
        cmd.env_remove("STORECTL_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    let time = |args: &[&str]| {
        let t = Instant::now();
        assert!(storectl(args).status().unwrap().success(), "{args:?}");
        t.elapsed()
    };
    let load_time = time(&["load", &dir_s]);
    let rmi_time = time(&["rmi", &id]);
    eprintln!("load {load_time:?}, rmi {rmi_time:?}");
    // Every kill starts with the image loaded (and `check` leaves it so).
    time(&["load", &dir_s]);
    let service = Service::start(&setup);
    let known = |what: &str, k: &str, images: &BTreeMap<String, Vec<String>>| {
        assert!(
            images.contains_key(&other),
            "kill {k}: {what} lost the other image"
        );
        for i in images.keys() {
            assert!(i == &id || i == &other, "kill {k}: {what} lists {i}");
        }
    };
    // After a kill: every view lists only whole images, the other image
    // always; then the next writer cleans up.
    let check = |k: &str| {
        let (indexed, problems) = index_view(&setup.share);
        assert!(problems.is_empty(), "{k}: {problems:#?}");
        let podman = setup.podman_images();
        known("podman images", k, &podman);
        let served = service.try_images().expect("the service answers");
        known("podman system service", k, &served);
        for seen in [&podman, &served] {
            for i in seen.keys() {
                assert!(indexed.contains(i), "{k}: {i} listed, not indexed");
            }
        }
        if podman.contains_key(&id) {
            // Whole: podman mounts its chain and reads every layer.
            for l in &chain {
                assert!(setup.share.join("overlay").join(l).join("diff").is_dir());
            }
            let out = sh(setup.podman().args([
                "run",
                "--rm",
                "--network",
                "none",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
                &id,
                "cat",
                "/etc/own0",
                "/etc/own1",
                "/etc/motd",
            ]));
            assert_eq!(
                out, "localhost/bulky:v1 0\nlocalhost/bulky:v1 1\nstorectl podman test\n",
                "{k}"
            );
        }
        let read = setup.storectl_ls(&setup.reader);
        known("a storectl reader", k, &read);

        // The next writer cleans up; its index is the share's.
        time(&["load", &dir_s]);
        let (indexed, problems) = index_view(&setup.share);
        assert!(problems.is_empty(), "after {k}: {problems:#?}");
        let mut want = vec![id.clone(), other.clone()];
        want.sort();
        assert_eq!(indexed, want, "after {k}");
        assert_eq!(setup.podman_images(), setup.storectl_ls(&setup.writer));
    };
    let mut rng = storectl_fixtures::gen::Prng::new(20);
    let mut interrupted = Vec::new();
    for k in 0..20 {
        let during_load = k % 2 == 0;
        let (args, took) = if during_load {
            time(&["rmi", &id]);
            (vec!["load", dir_s.as_str()], load_time)
        } else {
            (vec!["rmi", id.as_str()], rmi_time)
        };
        // Ten points per operation, one in each tenth of 110% of its time.
        let slot = (k / 2) as f64 + rng.below(1000) as f64 / 1000.0;
        let delay = took.mul_f64(slot / 10.0 * 1.1);
        let mut child = storectl(&args).spawn().expect("spawn the writer");
        std::thread::sleep(delay);
        let _ = child.kill();
        if child.wait().unwrap().signal() == Some(9) {
            interrupted.push(format!("{} at {delay:?}", args[0]));
        }
        check(&format!("kill {k} ({} at {delay:?})", args[0]));
    }
    // And at the index's own steps, seen on the share (polled; a step
    // that passes between two polls is tried again, up to 8 times).
    let top = chain.last().unwrap().clone();
    let has = |p: &str, what: &str| {
        fs::read_to_string(setup.share.join(p)).is_ok_and(|t| t.contains(what))
    };
    let stamp_ahead = || {
        let stamp = fs::read_to_string(setup.share.join("storectl-index.json")).unwrap_or_default();
        let generation = fs::read_to_string(setup.share.join("generation")).unwrap_or_default();
        let v: Value = serde_json::from_str(&stamp).unwrap_or(Value::Null);
        v["generation"].as_str().is_some_and(|g| g != generation)
    };
    type Hit<'a> = Box<dyn Fn() -> bool + 'a>;
    let points: Vec<(&str, bool, Hit)> = vec![
        (
            "load: layers.json lists the new layers, images.json not the image",
            false,
            Box::new(|| {
                has("overlay-layers/layers.json", &top) && !has("overlay-images/images.json", &id)
            }),
        ),
        (
            "load: the stamp names a generation not yet written",
            false,
            Box::new(|| has("overlay-images/images.json", &id) && stamp_ahead()),
        ),
        (
            "rmi: images.json without the image, its directory still there",
            true,
            Box::new(|| {
                !has("overlay-images/images.json", &id)
                    && setup.share.join("overlay-images").join(&id).exists()
            }),
        ),
        (
            "rmi: layers.json without its layers, their directories still there",
            true,
            Box::new(|| {
                !has("overlay-layers/layers.json", &top)
                    && setup.share.join("overlay").join(&top).exists()
            }),
        ),
    ];
    for (what, rmi, hit) in &points {
        let args: Vec<&str> = if *rmi {
            vec!["rmi", &id]
        } else {
            vec!["load", &dir_s]
        };
        let mut reached = false;
        for _ in 0..8 {
            if !*rmi {
                time(&["rmi", &id]);
            }
            let mut child = storectl(&args).spawn().expect("spawn the writer");
            loop {
                if hit() {
                    let _ = child.kill();
                    reached = child.wait().unwrap().signal() == Some(9);
                    break;
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
            }
            if reached {
                break;
            }
            if *rmi {
                time(&["load", &dir_s]);
            }
        }
        eprintln!(
            "{what}: {}",
            if reached {
                "killed there"
            } else {
                "not reached in 8 runs"
            }
        );
        check(what);
    }
    eprintln!(
        "{} of 20 kills interrupted the writer: {interrupted:?}",
        interrupted.len()
    );
    assert!(
        interrupted.len() >= 5,
        "too few kills hit a running writer: {interrupted:?}"
    );
}

/// Podman (as root, no `userxattr`) honours only `trusted.overlay.opaque`:
/// a directory an image made opaque hides the lower layers' files on a
/// share in `trusted` mode, and in `user` mode too, whose layers also carry
/// the trusted marker where the filesystem takes it (a local share here;
/// not over NFS: docs/nfs.md).
#[test]
#[ignore = "needs root"]
fn podman_sees_opaque_directories_of_a_share() {
    skip_without_podman!();
    require_root!();
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    for mode in ["trusted", "user"] {
        let setup = Setup::with_xattrs(Some(mode));
        let image = busybox_image_with(
            "localhost/opaque:v1",
            vec![Entry::dir("data"), Entry::file("data/old", "lower\n")],
            vec![Entry::opaque("data"), Entry::file("data/new", "upper\n")],
        );
        let id = setup.load(image);
        let out = sh(setup.podman().args([
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            &id,
            "ls",
            "/data",
        ]));
        assert_eq!(
            out, "new\n",
            "{mode} share: the opaque directory hides the lower file"
        );
    }
}
