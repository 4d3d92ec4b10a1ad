//! Containers (issue 9, points 2–4): writable layers over images, mounted
//! read-write, runtime bundles that runc runs, images in use protected.
//!
//! * `containers_live_in_their_own_layer` — create/list/mount/umount/rm on a
//!   local store: writes land in `overlay/<id>/diff` and survive
//!   umount/mount; the image layers are untouched; a mounted container needs
//!   `rm --force`; `rmi` of an image in use is refused naming the container,
//!   `rmi --force` removes it too.
//! * `runc_runs_a_bundle_on_a_local_store`, `runc_runs_a_bundle_on_a_reader`
//!   — busybox under runc from `storectl bundle`; on a reader whose image is
//!   on a read-only bind mount of the share, the writable layer is local
//!   and the share is byte-for-byte the same afterwards.
//! * `kill_during_create_and_rm_leaves_whole_containers` — `kill -9` at
//!   random moments of `create` and `rm`: every listed container is whole,
//!   and the next mutation leaves no debris.
//!
//! Root-only (mounts). The runc tests skip, saying why, without runc or
//! busybox-static; crun is not used: it refuses this host's hybrid cgroup
//! layout (see tests/podman.rs).
#![allow(clippy::print_stderr)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{is_mountpoint, Env};
use serde_json::Value;
use storectl_fixtures::{snapshot, write_oci_layout, Compression, Entry, Image, Layer, Tree};

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why runc tests cannot run here, if they cannot.
fn missing_runc() -> Option<&'static str> {
    if !have("runc") {
        return Some("runc is not installed (scripts/setup-debian.sh)");
    }
    if busybox().is_none() {
        return Some("busybox-static is not installed (scripts/setup-debian.sh)");
    }
    None
}

/// A busybox image (layer 1: busybox, /etc/remove-me; layer 2 deletes it
/// and adds /etc/hello), or a plain two-layer one without busybox.
fn image(name: &str) -> Image {
    let mut base = vec![
        Entry::dir("bin"),
        Entry::dir("etc"),
        Entry::file("etc/motd", "storectl containers test\n"),
        Entry::file("etc/remove-me", "deleted by layer 2\n"),
        Entry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        Entry::dir("tmp").mode(0o1777),
    ];
    if let Some(bb) = busybox() {
        base.push(Entry::file("bin/busybox", fs::read(bb).unwrap()).mode(0o755));
        for applet in ["sh", "cat", "ls", "echo", "test", "id"] {
            base.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
        }
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

/// Load `image` into `root`; its id.
fn load(env: &Env, root: &Path, image: Image) -> String {
    let oci = env.path(&format!("oci-{}", fastrand_suffix()));
    write_oci_layout(&oci, &[image]).unwrap();
    let out = env
        .run_root(root, &["load", &oci.display().to_string()])
        .ok();
    out.lines().last().unwrap().trim().to_string()
}

fn fastrand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn containers(env: &Env, root: &Path) -> Vec<Value> {
    let out = env.run_root(root, &["containers", "--json"]).ok();
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The image layers' trees (by layer dir name) under `overlay` (through
/// `RO/` when there), without container layers.
fn layer_trees(overlay: &Path, layers: &[String]) -> Vec<(String, Tree)> {
    layers
        .iter()
        .map(|id| {
            let dir = overlay.join(id).join("diff");
            let dir = if dir.is_dir() {
                dir
            } else {
                overlay.join("RO").join(id).join("diff")
            };
            (id.clone(), snapshot(&dir).unwrap())
        })
        .collect()
}

#[test]
#[ignore = "needs root"]
fn containers_live_in_their_own_layer() {
    require_root!();
    let env = Env::new();
    let id = load(&env, &env.root, image("localhost/c:1"));
    let layers = env.image_layers(&id);
    let before = layer_trees(&env.root.join("overlay"), &layers);
    let c = env.run(&["create", "localhost/c:1", "--name", "web"]).ok();
    let c = c.trim().to_string();
    assert!(common::is_id(&c), "create printed {c:?}");
    assert!(env.root.join("overlay").join(&c).join("diff").is_dir());
    let record: Value = serde_json::from_slice(
        &fs::read(
            env.root
                .join("overlay-containers")
                .join(&c)
                .join("container.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for key in ["id", "names", "image", "layer", "created"] {
        assert!(record.get(key).is_some(), "{key} in {record}");
    }
    assert_eq!(record["image"], id.as_str());
    env.run(&["create", &id, "--name", "web"])
        .err_containing("already in use");
    let list = containers(&env, &env.root);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], c.as_str());
    assert_eq!(list[0]["names"][0], "web");
    assert_eq!(list[0]["mounted"], false);

    let path = PathBuf::from(env.run(&["mount", "web"]).ok().trim());
    assert_eq!(path, env.root.join("overlay").join(&c).join("merged"));
    assert!(is_mountpoint(&path));
    assert_eq!(containers(&env, &env.root)[0]["mounted"], true);
    assert!(!path.join("etc/remove-me").exists());
    fs::write(path.join("etc/written"), "by the container\n").unwrap();
    fs::remove_file(path.join("etc/motd")).unwrap();
    env.run(&["umount", "web"]).ok();
    assert!(!is_mountpoint(&path));
    let diff = env.root.join("overlay").join(&c).join("diff");
    assert_eq!(
        fs::read_to_string(diff.join("etc/written")).unwrap(),
        "by the container\n"
    );
    let size = containers(&env, &env.root)[0]["writable_layer"]["used_bytes"]
        .as_u64()
        .unwrap();
    assert!(size >= 17, "the writable layer counts the new file: {size}");
    let path = PathBuf::from(env.run(&["mount", &c[..12]]).ok().trim());
    assert_eq!(
        fs::read_to_string(path.join("etc/written")).unwrap(),
        "by the container\n"
    );
    assert!(!path.join("etc/motd").exists(), "the deletion survived");
    assert_eq!(
        layer_trees(&env.root.join("overlay"), &layers),
        before,
        "the image layers are untouched"
    );

    // Images in use.
    let err = env.run(&["rmi", "localhost/c:1"]).err_containing("in use");
    assert!(err.contains("web"), "{err}");
    env.run(&["rm", "web"]).err_containing("mounted");
    let other = env.run(&["create", &id]).ok().trim().to_string();
    env.run(&["rm", "--force", "web"]).ok();
    assert!(!is_mountpoint(&path));
    assert!(!env.root.join("overlay").join(&c).exists());
    assert!(!env.root.join("overlay-containers").join(&c).exists());
    let out = env.run(&["rmi", "--force", "localhost/c:1"]).ok();
    assert!(
        out.contains(&format!("Removed container: {other}")),
        "{out}"
    );
    assert!(containers(&env, &env.root).is_empty());
    env.assert_store_empty("after rmi --force");
}

/// Run `bundle` + `runc run` for container `c` of `root`: runc's output.
fn run_in_runc(env: &Env, root: &Path, c: &str, script: &str) -> String {
    let bundle = env.path(&format!("bundle-{}", fastrand_suffix()));
    let config = env
        .run_root(
            root,
            &[
                "bundle",
                c,
                &bundle.display().to_string(),
                "--",
                "/bin/sh",
                "-c",
                script,
            ],
        )
        .ok();
    let config: Value = serde_json::from_slice(&fs::read(config.trim()).unwrap()).unwrap();
    assert_eq!(
        PathBuf::from(config["root"]["path"].as_str().unwrap()),
        root.join("overlay").join(c).join("merged")
    );
    let state = env.path("runc-state");
    let name = format!("storectl-test-{}-{}", std::process::id(), fastrand_suffix());
    let out = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["run", "-b"])
        .arg(&bundle)
        .arg(&name)
        .stdin(Stdio::null())
        .output()
        .expect("runc");
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["delete", "--force", &name])
        .output();
    assert!(
        out.status.success(),
        "runc run failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SCRIPT: &str = "cat /etc/hello; test ! -e /etc/remove-me && echo whiteout-ok; \
                      echo from-runc > /tmp/runc-wrote; id -u";

/// Checks after [`SCRIPT`] ran in container `c` of `root`: its output, the
/// file it wrote in the writable layer, and that it survives umount/mount.
fn check_runc_run(env: &Env, root: &Path, c: &str, out: &str) {
    assert_eq!(out, "hello from layer 2\nwhiteout-ok\n0\n", "runc output");
    let diff = root.join("overlay").join(c).join("diff");
    assert_eq!(
        fs::read_to_string(diff.join("tmp/runc-wrote")).unwrap(),
        "from-runc\n",
        "the write landed in the container's writable layer"
    );
    env.run_root(root, &["umount", c]).ok();
    let path = PathBuf::from(env.run_root(root, &["mount", c]).ok().trim());
    assert_eq!(
        fs::read_to_string(path.join("tmp/runc-wrote")).unwrap(),
        "from-runc\n"
    );
    env.run_root(root, &["umount", c]).ok();
}

#[test]
#[ignore = "needs root"]
fn runc_runs_a_bundle_on_a_local_store() {
    require_root!();
    if let Some(why) = missing_runc() {
        eprintln!("skipped: {why}");
        return;
    }
    let env = Env::new();
    let id = load(&env, &env.root, image("localhost/bb:1"));
    let layers = env.image_layers(&id);
    let before = layer_trees(&env.root.join("overlay"), &layers);
    let c = env.run(&["create", &id]).ok().trim().to_string();
    let out = run_in_runc(&env, &env.root, &c, SCRIPT);
    check_runc_run(&env, &env.root, &c, &out);
    assert_eq!(layer_trees(&env.root.join("overlay"), &layers), before);
    env.run(&["rm", &c]).ok();
}

/// A writer on `T/share`, bind-mounted read-only at `T/ro` for a reader at
/// `T/reader`. Unmounted on drop.
struct Shared {
    writer: PathBuf,
    share: PathBuf,
    ro: PathBuf,
    reader: PathBuf,
}

impl Shared {
    fn new(env: &Env) -> Shared {
        let (writer, share, ro, reader) = (
            env.path("writer"),
            env.path("share"),
            env.path("ro"),
            env.path("reader"),
        );
        fs::create_dir_all(&share).unwrap();
        fs::create_dir_all(&ro).unwrap();
        let s = share.display().to_string();
        env.run_root(&writer, &["init", "--shared", &s, "--role", "writer"])
            .ok();
        assert!(Command::new("mount")
            .arg("--bind")
            .arg(&share)
            .arg(&ro)
            .status()
            .unwrap()
            .success());
        assert!(Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&ro)
            .status()
            .unwrap()
            .success());
        let r = ro.display().to_string();
        env.run_root(&reader, &["init", "--shared", &r, "--role", "reader"])
            .ok();
        Shared {
            writer,
            share,
            ro,
            reader,
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.ro).status();
    }
}

#[test]
#[ignore = "needs root"]
fn runc_runs_a_bundle_on_a_reader() {
    require_root!();
    if let Some(why) = missing_runc() {
        eprintln!("skipped: {why}");
        return;
    }
    let env = Env::new();
    let sh = Shared::new(&env);
    let id = load(&env, &sh.writer, image("localhost/bb:shared"));
    let share_before = snapshot(&sh.share).unwrap();
    let c = env
        .run_root(
            &sh.reader,
            &["create", "localhost/bb:shared", "--name", "r1"],
        )
        .ok()
        .trim()
        .to_string();
    // The writable layer is the reader's own, not under RO/ or the share.
    let layer = sh.reader.join("overlay").join(&c);
    assert!(fs::symlink_metadata(&layer).unwrap().is_dir());
    assert!(!sh.share.join("overlay").join(&c).exists());
    let list = containers(&env, &sh.reader);
    assert_eq!(list[0]["image"], id.as_str());
    let out = run_in_runc(&env, &sh.reader, &c, SCRIPT);
    check_runc_run(&env, &sh.reader, &c, &out);
    assert_eq!(
        snapshot(&sh.share).unwrap(),
        share_before,
        "the share is untouched"
    );
    // A shared image cannot be removed from a reader; its container can.
    env.run_root(&sh.reader, &["rmi", &id])
        .err_containing("read-only share");
    env.run_root(&sh.reader, &["rm", "r1"]).ok();
    assert!(!layer.exists());
    assert_eq!(snapshot(&sh.share).unwrap(), share_before);
}

/// Everything in `root` that is neither an image layer nor a whole
/// container: dot-prefixed debris in the container and overlay dirs, and
/// `overlay/<id>` dirs with no layer record and no container record.
fn debris(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["overlay", "overlay-containers", "overlay-layers"] {
        for e in fs::read_dir(root.join(sub)).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') {
                out.push(format!("{sub}/{n}"));
            } else if sub == "overlay"
                && common::is_id(&n)
                && !root.join("overlay-layers").join(&n).exists()
                && !root.join("overlay-containers").join(&n).exists()
            {
                out.push(format!("{sub}/{n} (no record)"));
            }
        }
    }
    out
}

/// Each listed container is whole: record, layer with diff/work/merged.
fn assert_whole(env: &Env, root: &Path) -> usize {
    let list = containers(env, root);
    for c in &list {
        let id = c["id"].as_str().unwrap();
        for part in ["diff", "work", "merged"] {
            assert!(
                root.join("overlay").join(id).join(part).is_dir(),
                "container {id} is listed without its layer's {part}/"
            );
        }
    }
    list.len()
}

#[test]
#[ignore = "needs root"]
fn kill_during_create_and_rm_leaves_whole_containers() {
    require_root!();
    let env = Env::new();
    let id = load(&env, &env.root, image("localhost/k:1"));
    let mut seed: u64 = u64::from(std::process::id());
    let mut next = || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % 40
    };
    let mut killed = 0;
    for round in 0..24 {
        let existing: Vec<String> = containers(&env, &env.root)
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect();
        let args: Vec<String> = if round % 3 == 2 && !existing.is_empty() {
            vec!["rm".into(), existing[0].clone()]
        } else {
            vec!["create".into(), id.clone()]
        };
        let mut child = Command::new(common::STORECTL)
            .arg("--root")
            .arg(&env.root)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(next()));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_whole(&env, &env.root);
    }
    eprintln!("{killed} of 24 runs killed before they finished");
    // The next mutation after a crashed holder sweeps the debris.
    let c = env.run(&["create", &id]).ok().trim().to_string();
    assert_eq!(debris(&env.root), Vec::<String>::new());
    let n = assert_whole(&env, &env.root);
    assert!(n >= 1);
    env.run(&["rm", &c]).ok();
    assert_eq!(debris(&env.root), Vec::<String>::new());
}
