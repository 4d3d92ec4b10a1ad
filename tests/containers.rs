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
//! * `a_writer_rmi_leaves_a_readers_container_working_for_the_grace_period`
//!   — the writer removes the image a reader's container runs on (under
//!   runc, reading its files in a loop) and is mounted: the image vanishes
//!   from every listing at once, the reader's `refresh --watch` reports
//!   `ImageRemovedInUse` with the time the layers go, the container keeps
//!   working (runc exits 0, a new mount works) while `gc` and a crash sweep
//!   on the writer keep the layers; past the grace period `gc` deletes them.
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
    if common::busybox().is_none() {
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
    if let Some(bb) = common::busybox() {
        base.push(Entry::file("bin/busybox", fs::read(bb).unwrap()).mode(0o755));
        for applet in ["sh", "cat", "ls", "echo", "test", "id", "sleep"] {
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

/// Set the share's grace period for removed layers.
fn set_grace(share: &Path, secs: u64) {
    let path = share.join("storectl-share.json");
    let mut v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        v["removed_layers_grace_secs"], 3600,
        "a new share says its default grace: {v}"
    );
    v["removed_layers_grace_secs"] = serde_json::json!(secs);
    fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
#[ignore = "needs root"]
fn a_writer_rmi_leaves_a_readers_container_working_for_the_grace_period() {
    require_root!();
    if let Some(why) = missing_runc() {
        eprintln!("skipped: {why}");
        return;
    }
    const GRACE: u64 = 6;
    let env = Env::new();
    let sh = Shared::new(&env);
    set_grace(&sh.share, GRACE);
    let id = load(&env, &sh.writer, image("localhost/bb:gone"));
    let layers: Vec<String> = {
        let out = env.run_root(&sh.writer, &["ls", "--json"]).ok();
        let v: Value = serde_json::from_str(&out).unwrap();
        common::strings(&v[0]["layers"])
    };
    let c = env
        .run_root(&sh.reader, &["create", &id, "--name", "victim"])
        .ok()
        .trim()
        .to_string();
    // A watching reader (a daemon's refresher) and a running container.
    let mut watch = Command::new(common::STORECTL)
        .arg("--root")
        .arg(&sh.reader)
        .args(["refresh", "--watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let bundle = env.path("bundle-victim");
    env.run_root(
        &sh.reader,
        &[
            "bundle",
            "victim",
            &bundle.display().to_string(),
            "--",
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 40 ]; do cat /etc/hello >/dev/null || exit 9; \
             i=$((i+1)); sleep 0.1; done; echo survived",
        ],
    )
    .ok();
    let state = env.path("runc-state");
    let name = format!("storectl-victim-{}", std::process::id());
    let runc = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["run", "-b"])
        .arg(&bundle)
        .arg(&name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500)); // the watcher has scanned
    let out = env.run_root(&sh.writer, &["rmi", &id]).ok();
    assert!(out.contains("Kept 2 layer(s) on the share until"), "{out}");
    // Gone from every listing at once; the layers wait on the share.
    assert!(env
        .run_root(&sh.writer, &["ls", "-q"])
        .ok()
        .trim()
        .is_empty());
    assert!(env
        .run_root(&sh.reader, &["ls", "-q"])
        .ok()
        .trim()
        .is_empty());
    for l in &layers {
        assert!(sh.share.join("overlay").join(l).join("diff").is_dir());
    }
    let runc_out = runc.wait_with_output().unwrap();
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["delete", "--force", &name])
        .output();
    assert!(
        runc_out.status.success(),
        "the running container broke: {}",
        String::from_utf8_lossy(&runc_out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&runc_out.stdout), "survived\n");
    // The watcher's event and warning.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = watch.kill();
    let watched = watch.wait_with_output().unwrap();
    let events = String::from_utf8_lossy(&watched.stdout);
    let in_use: Value = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "ImageRemovedInUse")
        .unwrap_or_else(|| panic!("no ImageRemovedInUse event in {events}"));
    assert_eq!(in_use["id"], id.as_str());
    assert_eq!(in_use["containers"][0], "victim");
    let until = in_use["layers_deleted_after"].as_str().unwrap().to_string();
    let warnings = String::from_utf8_lossy(&watched.stderr);
    assert!(
        warnings.lines().any(|l| l.contains(&until)
            && l.contains("victim")
            && l.contains("keep working")
            && !l.contains("  ")),
        "one warning line says when: {warnings}"
    );
    // Within the grace period: gc and a crashed writer's sweep keep them,
    // and the reader's container mounts and lists.
    let gc = env.run_root(&sh.writer, &["gc"]).ok();
    assert!(gc.contains("Waiting"), "{gc}");
    fs::write(sh.share.join("writer.lock"), "host crashed pid 1\n").unwrap();
    env.run_root(&sh.writer, &["gc"]).ok();
    for l in &layers {
        assert!(
            sh.share.join("overlay").join(l).join("diff").is_dir(),
            "kept by the sweep"
        );
    }
    let path = PathBuf::from(env.run_root(&sh.reader, &["mount", "victim"]).ok().trim());
    assert_eq!(
        fs::read_to_string(path.join("etc/hello")).unwrap(),
        "hello from layer 2\n"
    );
    env.run_root(&sh.reader, &["umount", "victim"]).ok();
    let list = containers(&env, &sh.reader);
    assert_eq!(list[0]["image_present"], false);
    assert_eq!(list[0]["image_layers_deleted_after"], until.as_str());
    // Past it, gc deletes them.
    std::thread::sleep(Duration::from_secs(GRACE));
    let gc = env.run_root(&sh.writer, &["gc"]).ok();
    for l in &layers {
        assert!(gc.contains(l.as_str()), "{gc}");
        assert!(!sh.share.join("overlay").join(l).exists());
    }
    assert!(
        !sh.share.join("storectl-removed.json").exists()
            || !fs::read_to_string(sh.share.join("storectl-removed.json"))
                .unwrap()
                .contains(&id)
    );
    env.run_root(&sh.reader, &["mount", "victim"])
        .err_containing("layer");
    env.run_root(&sh.reader, &["rm", "victim"]).ok();
    assert!(!sh.reader.join("overlay").join(&c).exists());
}

/// `du -s -c ARGS…`'s total with `flag` (`-b` = apparent bytes, `--inodes`).
fn du_total(flag: &str, paths: &[PathBuf]) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-c", flag])
        .args(paths)
        .output()
        .expect("du");
    assert!(out.status.success(), "du {flag} {paths:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("du said {text}"))
}

/// `got` is within 1% of `want`.
fn assert_close(what: &str, got: u64, want: u64) {
    let diff = got.abs_diff(want);
    assert!(
        diff * 100 <= want.max(1),
        "{what}: df says {got}, du {want} (more than 1% apart)"
    );
}

/// Check `df --json` of `root` against `du`: the image filesystem entry of
/// `source` over the layer dirs `layer_dirs`, the container filesystem and
/// each container's writable layer.
fn check_df(env: &Env, root: &Path, source: &str, layer_dirs: &[PathBuf]) -> Value {
    let df: Value = serde_json::from_str(&env.run_root(root, &["df", "--json"]).ok()).unwrap();
    let fs_of = |list: &Value, source: &str| -> Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|f| f["source"] == source)
            .unwrap_or_else(|| panic!("no {source} filesystem in {df}"))
            .clone()
    };
    let images = fs_of(&df["image_filesystems"], source);
    assert!(images["timestamp"].as_i64().unwrap() > 0);
    assert!(images["fs_id"]["mountpoint"].as_str().is_some());
    assert_close(
        "image bytes",
        images["used_bytes"].as_u64().unwrap(),
        du_total("-b", layer_dirs),
    );
    assert_close(
        "image inodes",
        images["inodes_used"].as_u64().unwrap(),
        du_total("--inodes", layer_dirs),
    );
    let ids: Vec<String> = df["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    let dirs: Vec<PathBuf> = ids.iter().map(|c| root.join("overlay").join(c)).collect();
    if !dirs.is_empty() {
        let cfs = fs_of(&df["container_filesystems"], "local");
        assert_close(
            "container bytes",
            cfs["used_bytes"].as_u64().unwrap(),
            du_total("-b", &dirs),
        );
        assert_close(
            "container inodes",
            cfs["inodes_used"].as_u64().unwrap(),
            du_total("--inodes", &dirs),
        );
    }
    for (c, dir) in df["containers"].as_array().unwrap().iter().zip(&dirs) {
        let diff = [dir.join("diff")];
        let w = &c["writable_layer"];
        assert_close(
            "writable bytes",
            w["used_bytes"].as_u64().unwrap(),
            du_total("-b", &diff),
        );
        assert_close(
            "writable inodes",
            w["inodes_used"].as_u64().unwrap(),
            du_total("--inodes", &diff),
        );
    }
    df
}

#[test]
#[ignore = "needs root"]
fn df_matches_du_on_a_local_store_and_a_reader() {
    require_root!();
    let env = Env::new();
    let a = load(&env, &env.root, image("localhost/a:1"));
    let mut other = image("localhost/b:1");
    other.layers[1] = Layer::new(
        vec![Entry::file("etc/b", vec![7u8; 300_000])],
        Compression::Gzip,
    );
    let b = load(&env, &env.root, other);
    let c = env
        .run(&["create", &a, "--name", "du"])
        .ok()
        .trim()
        .to_string();
    let path = PathBuf::from(env.run(&["mount", "du"]).ok().trim());
    fs::write(path.join("big"), vec![1u8; 250_000]).unwrap();
    fs::create_dir_all(path.join("d/e")).unwrap();
    for i in 0..50 {
        fs::write(path.join(format!("d/e/f{i}")), format!("{i}")).unwrap();
    }
    env.run(&["umount", "du"]).ok();
    let mut layers: Vec<String> = env.image_layers(&a);
    layers.extend(env.image_layers(&b));
    layers.sort();
    layers.dedup();
    assert_eq!(layers.len(), 3, "the base is shared");
    let dirs: Vec<PathBuf> = layers
        .iter()
        .map(|l| env.root.join("overlay").join(l))
        .collect();
    let df = check_df(&env, &env.root, "local", &dirs);
    assert!(
        env.root.join("usage-cache.json").is_file(),
        "layer figures are kept"
    );
    // Per image: the base counts as shared, the top as unique.
    let img = |id: &str| {
        df["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .unwrap()
            .clone()
    };
    let (ia, ib) = (img(&a), img(&b));
    assert_eq!(ia["shared_size"], ib["shared_size"]);
    assert!(ib["unique_size"].as_u64().unwrap() > 300_000);
    assert_eq!(
        ia["size"].as_u64().unwrap(),
        ia["shared_size"].as_u64().unwrap() + ia["unique_size"].as_u64().unwrap()
    );
    assert_eq!(ia["containers"], 1);
    let w = df["containers"][0]["writable_layer"]["used_bytes"]
        .as_u64()
        .unwrap();
    assert!(w > 250_000, "{w}");
    // A removed image's layer leaves the figures.
    env.run(&["rmi", &b]).ok();
    let dirs: Vec<PathBuf> = env
        .image_layers(&a)
        .iter()
        .map(|l| env.root.join("overlay").join(l))
        .collect();
    check_df(&env, &env.root, "local", &dirs);
    env.run(&["rm", &c]).ok();

    // A reader: the share's figures apart from the local disk.
    let sh = Shared::new(&env);
    let s = load(&env, &sh.writer, image("localhost/s:1"));
    let layers = env.run_root(&sh.writer, &["ls", "--json"]).ok();
    let layers: Value = serde_json::from_str(&layers).unwrap();
    let layers = common::strings(&layers[0]["layers"]);
    let rc = env
        .run_root(&sh.reader, &["create", &s])
        .ok()
        .trim()
        .to_string();
    let p = PathBuf::from(env.run_root(&sh.reader, &["mount", &rc]).ok().trim());
    fs::write(p.join("reader-file"), vec![2u8; 123_456]).unwrap();
    env.run_root(&sh.reader, &["umount", &rc]).ok();
    let share_dirs: Vec<PathBuf> = layers
        .iter()
        .map(|l| sh.share.join("overlay").join(l))
        .collect();
    let df = check_df(&env, &sh.reader, "share", &share_dirs);
    let local = df["image_filesystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["source"] == "local")
        .unwrap()
        .clone();
    assert_eq!(
        local["used_bytes"], 0,
        "no local image layers on the reader"
    );
    assert!(
        !sh.share.join("usage-cache.json").exists(),
        "a reader never writes the share"
    );
    env.run_root(&sh.reader, &["rm", &rc]).ok();
    let _ = c;
}
