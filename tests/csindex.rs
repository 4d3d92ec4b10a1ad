//! containers/storage's index that a writer keeps on its share (issue 10,
//! point 1), driven through the real `storectl` binary; the podman side is
//! in tests/podman.rs.
//!
//! * `the_writer_keeps_the_index_in_step` — loads, a tag, an untag and an
//!   `rmi`: after each, `layers.json` / `images.json` list exactly the
//!   share's layers and images (ids, parents, names), the stamp names the
//!   current `generation` with both sizes, every per-entry file
//!   containers/storage reads is there (tar-split and big-data hardlinks,
//!   `overlay/l/<short>`), and the three lock files carry a new 64-byte
//!   token, written in place (same inode).
//! * `a_share_without_an_index_gets_one` — a share whose index, links and
//!   lock files are gone (as one an older storectl made) gets them all back
//!   at the next mutation.
//! * `junk_on_the_index_names_never_blocks_the_writer` — a directory on
//!   `layers.json`, a symlink (to a file outside) on `images.lock`, a FIFO
//!   on `storage.lock`, a file on `overlay/l`, a directory on the next
//!   layer's tar-split name: the next load works, each goes to
//!   `.storectl-trash/`, the file outside is untouched.
//! * `a_stale_index_is_rebuilt_after_a_crash` — an index that lists an image
//!   the share no longer has, and a stamp for another generation: the next
//!   writer after a crashed one rebuilds it from the directories.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::Env;
use serde_json::Value;
use storectl_fixtures::{write_oci_layout, Compression, Entry, Image, Layer};

/// A writer root `T/writer` on share `T/share`.
fn writer(env: &Env) -> (PathBuf, PathBuf) {
    let (root, share) = (env.path("writer"), env.path("share"));
    fs::create_dir_all(&share).unwrap();
    env.run_root(
        &root,
        &[
            "init",
            "--shared",
            &share.display().to_string(),
            "--role",
            "writer",
        ],
    )
    .ok();
    // Removal mechanics: no grace period (tests/containers.rs tests it).
    common::set_removed_layers_grace(&share, 0);
    (root, share)
}

fn base() -> Layer {
    Layer::new(
        vec![Entry::dir("etc"), Entry::file("etc/base", "shared base\n")],
        Compression::Gzip,
    )
}

/// An OCI layout at `T/name` of a two-layer image on the shared base.
fn image(env: &Env, name: &str) -> PathBuf {
    let dir = env.path(name);
    let top = Layer::new(
        vec![Entry::file(&format!("etc/{name}"), format!("{name}\n"))],
        Compression::Gzip,
    );
    let image = Image::new(vec![base(), top]).named(&format!("localhost/{name}:v1"));
    write_oci_layout(&dir, &[image]).expect("OCI layout");
    dir
}

fn load(env: &Env, root: &Path, dir: &Path) -> String {
    let out = env
        .run_root(root, &["load", &dir.display().to_string()])
        .ok();
    out.lines().last().unwrap().trim().to_string()
}

fn array(path: &Path) -> Vec<Value> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = String::from_utf8(bytes).unwrap();
    // One record per line.
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() > 1 {
        assert_eq!(lines[0], "[", "{text}");
        assert_eq!(*lines.last().unwrap(), "]", "{text}");
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    v.as_array().unwrap().clone()
}

fn ids_in(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| common::is_id(n))
        .collect();
    ids.sort();
    ids
}

fn token(path: &Path) -> (Vec<u8>, u64) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len(), 64, "{}", path.display());
    (bytes, fs::metadata(path).unwrap().ino())
}

const LOCKS: [&str; 3] = [
    "storage.lock",
    "overlay-layers/layers.lock",
    "overlay-images/images.lock",
];

/// The index on `share` lists exactly its per-id directories, with what
/// `storectl ls` on `root` says, and everything beside it is in place.
/// Returns the tokens of the lock files.
fn assert_index(env: &Env, root: &Path, share: &Path) -> Vec<(Vec<u8>, u64)> {
    let layers = array(&share.join("overlay-layers/layers.json"));
    let images = array(&share.join("overlay-images/images.json"));
    // In id order, but for records a load appended since the last rewrite.
    let mut layer_ids: Vec<String> = layers
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    layer_ids.sort();
    assert_eq!(
        layer_ids,
        ids_in(&share.join("overlay")),
        "layers.json lists the layers"
    );
    assert_eq!(layer_ids, ids_in(&share.join("overlay-layers")));
    let mut image_ids: Vec<String> = images
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    image_ids.sort();
    assert_eq!(
        image_ids,
        ids_in(&share.join("overlay-images")),
        "images.json lists the images"
    );
    // Same ids and names as `storectl ls`.
    let out = env.run_root(root, &["ls", "--json"]).ok();
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    let by_ls: BTreeMap<String, Value> = listed
        .iter()
        .map(|i| (i["id"].as_str().unwrap().to_string(), i["names"].clone()))
        .collect();
    let by_index: BTreeMap<String, Value> = images
        .iter()
        .map(|i| {
            let names = i.get("names").cloned().unwrap_or(Value::Array(vec![]));
            (i["id"].as_str().unwrap().to_string(), names)
        })
        .collect();
    assert_eq!(by_index, by_ls);
    for l in &layers {
        let id = l["id"].as_str().unwrap();
        if let Some(parent) = l.get("parent") {
            assert!(layer_ids.iter().any(|x| x == parent.as_str().unwrap()));
        }
        assert!(l["diff-digest"].as_str().unwrap().starts_with("sha256:"));
        // The tar-split beside the index is the layer's own (a hardlink).
        let split = format!("{id}.tar-split.gz");
        let a = fs::metadata(share.join("overlay-layers").join(&split)).unwrap();
        let b = fs::metadata(share.join("overlay-layers").join(id).join(&split)).unwrap();
        assert_eq!(a.ino(), b.ino(), "{split} is a hardlink");
        // Its short name resolves on the share.
        let short = fs::read_to_string(share.join("overlay").join(id).join("link")).unwrap();
        let target = fs::read_link(share.join("overlay/l").join(short.trim())).unwrap();
        assert_eq!(target, Path::new("..").join(id).join("diff"));
    }
    for i in &images {
        let id = i["id"].as_str().unwrap();
        let dir = share.join("overlay-images").join(id);
        let keys: Vec<&str> = i["big-data-names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        let digest = i["digest"].as_str().unwrap();
        assert_eq!(
            keys,
            vec![
                format!("sha256:{id}"),
                format!("manifest-{digest}"),
                "manifest".into()
            ]
        );
        for key in keys {
            // containers/storage's file name (checked against podman's in
            // the unit tests).
            let name = storectl_storage::csindex::big_data_file_name(key);
            let bytes = fs::read(dir.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(i["big-data-sizes"][key], bytes.len() as u64, "{key}");
            let digest = storectl_storage::digest::sha256_digest(&bytes);
            assert_eq!(i["big-data-digests"][key], digest, "{key}");
        }
        let layer = i["layer"].as_str().unwrap();
        assert!(
            layer_ids.iter().any(|x| x == layer),
            "its top layer is listed"
        );
    }
    // The stamp vouches for this generation and these files.
    let stamp: Value =
        serde_json::from_slice(&fs::read(share.join("storectl-index.json")).unwrap()).unwrap();
    let generation = fs::read_to_string(share.join("generation")).unwrap();
    assert_eq!(stamp["generation"], generation);
    assert_eq!(
        stamp["layers-size"],
        fs::metadata(share.join("overlay-layers/layers.json"))
            .unwrap()
            .len()
    );
    assert_eq!(
        stamp["images-size"],
        fs::metadata(share.join("overlay-images/images.json"))
            .unwrap()
            .len()
    );
    LOCKS.iter().map(|l| token(&share.join(l))).collect()
}

/// Tokens changed (only images.json's and storage.lock's after a name
/// change: layers.json is not rewritten), on the same inode (in place).
fn assert_new_tokens(before: &[(Vec<u8>, u64)], after: &[(Vec<u8>, u64)], what: &str) {
    let names_only = what == "tag" || what == "untag";
    for ((b, bi), ((a, ai), lock)) in before.iter().zip(after.iter().zip(LOCKS)) {
        assert_eq!(bi, ai, "{lock} is rewritten in place ({what})");
        if names_only && lock == "overlay-layers/layers.lock" {
            assert_eq!(b, a, "layers.json is not rewritten for a {what}");
        } else {
            assert_ne!(b, a, "{lock} has a new token after {what}");
        }
    }
}

#[test]
fn the_writer_keeps_the_index_in_step() {
    let env = Env::new();
    let (root, share) = writer(&env);
    let one = load(&env, &root, &image(&env, "one"));
    let t1 = assert_index(&env, &root, &share);
    let two = load(&env, &root, &image(&env, "two"));
    let t2 = assert_index(&env, &root, &share);
    assert_new_tokens(&t1, &t2, "load");
    assert_eq!(array(&share.join("overlay-images/images.json")).len(), 2);
    assert_eq!(
        array(&share.join("overlay-layers/layers.json")).len(),
        3,
        "one base"
    );

    env.run_root(&root, &["tag", &one, "localhost/extra:v2"])
        .ok();
    let t3 = assert_index(&env, &root, &share);
    assert_new_tokens(&t2, &t3, "tag");
    env.run_root(&root, &["rmi", "localhost/extra:v2"]).ok();
    let t4 = assert_index(&env, &root, &share);
    assert_new_tokens(&t3, &t4, "untag");

    env.run_root(&root, &["rmi", &two]).ok();
    let t5 = assert_index(&env, &root, &share);
    assert_new_tokens(&t4, &t5, "rmi");
    assert_eq!(array(&share.join("overlay-layers/layers.json")).len(), 2);
    // The removed layer's containers/storage names went with it.
    let l_links = fs::read_dir(share.join("overlay/l")).unwrap().count();
    assert_eq!(l_links, 2);
    let splits = fs::read_dir(share.join("overlay-layers"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tar-split.gz")
        })
        .count();
    assert_eq!(splits, 2);

    env.run_root(&root, &["rmi", &one]).ok();
    assert_index(&env, &root, &share);
    assert_eq!(
        fs::read(share.join("overlay-images/images.json")).unwrap(),
        b"[]\n"
    );
    assert_eq!(
        fs::read(share.join("overlay-layers/layers.json")).unwrap(),
        b"[]\n"
    );
}

#[test]
fn a_share_without_an_index_gets_one() {
    let env = Env::new();
    let (root, share) = writer(&env);
    let one = load(&env, &root, &image(&env, "one"));
    load(&env, &root, &image(&env, "two"));
    // As a share an older storectl made: none of containers/storage's files.
    for f in [
        "overlay-layers/layers.json",
        "overlay-images/images.json",
        "storectl-index.json",
    ]
    .iter()
    .chain(LOCKS.iter())
    {
        fs::remove_file(share.join(f)).unwrap();
    }
    fs::remove_dir_all(share.join("overlay/l")).unwrap();
    for id in ids_in(&share.join("overlay-layers")) {
        fs::remove_file(
            share
                .join("overlay-layers")
                .join(format!("{id}.tar-split.gz")),
        )
        .unwrap();
    }
    for id in ids_in(&share.join("overlay-images")) {
        for e in fs::read_dir(share.join("overlay-images").join(&id)).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().starts_with('=') {
                fs::remove_file(e.path()).unwrap();
            }
        }
    }
    // `ls` (no mutation) writes nothing.
    env.run_root(&root, &["ls"]).ok();
    assert!(!share.join("overlay-layers/layers.json").exists());
    env.run_root(&root, &["tag", &one, "localhost/again:v1"])
        .ok();
    assert_index(&env, &root, &share);
}

#[test]
fn a_stale_index_is_rebuilt_after_a_crash() {
    let env = Env::new();
    let (root, share) = writer(&env);
    let one = load(&env, &root, &image(&env, "one"));
    let two = load(&env, &root, &image(&env, "two"));
    let stale_images = fs::read(share.join("overlay-images/images.json")).unwrap();
    let stale_layers = fs::read(share.join("overlay-layers/layers.json")).unwrap();
    env.run_root(&root, &["rmi", &two]).ok();
    // The files of an earlier generation come back, and the writer lock
    // says its holder crashed (no `released`).
    fs::write(share.join("overlay-images/images.json"), stale_images).unwrap();
    fs::write(share.join("overlay-layers/layers.json"), stale_layers).unwrap();
    fs::write(share.join("writer.lock"), "host x pid 1\n").unwrap();
    // What a crash between the index and the directories could leave of a
    // gone layer: its short name and tar-split.
    let gone = "f".repeat(64);
    std::os::unix::fs::symlink(
        format!("../{gone}/diff"),
        share.join("overlay/l/STALESTALE"),
    )
    .unwrap();
    let stale_split = share.join(format!("overlay-layers/{gone}.tar-split.gz"));
    fs::write(&stale_split, "x").unwrap();
    env.run_root(&root, &["tag", &one, "localhost/after:v1"])
        .ok();
    assert!(fs::symlink_metadata(share.join("overlay/l/STALESTALE")).is_err());
    assert!(!stale_split.exists());
    let images = array(&share.join("overlay-images/images.json"));
    assert_eq!(images.len(), 1, "the removed image is not listed again");
    assert_index(&env, &root, &share);
}

#[test]
fn junk_on_the_index_names_never_blocks_the_writer() {
    let env = Env::new();
    let (root, share) = writer(&env);
    let one = load(&env, &root, &image(&env, "one"));
    let outside = env.path("outside");
    fs::write(&outside, "not the writer's").unwrap();
    let junk = [
        "overlay-layers/layers.json",
        "overlay-images/images.lock",
        "storage.lock",
        "overlay/l",
    ];
    fs::remove_file(share.join(junk[0])).unwrap();
    fs::create_dir(share.join(junk[0])).unwrap();
    fs::remove_file(share.join(junk[1])).unwrap();
    std::os::unix::fs::symlink(&outside, share.join(junk[1])).unwrap();
    fs::remove_file(share.join(junk[2])).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        share.join(junk[2]),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    fs::remove_dir_all(share.join(junk[3])).unwrap();
    fs::write(share.join(junk[3]), "junk").unwrap();
    // The next image's top layer: a directory on its tar-split's name.
    let dir = image(&env, "two");
    let top = top_layer(&dir);
    let split = share.join(format!("overlay-layers/{top}.tar-split.gz"));
    fs::create_dir(&split).unwrap();
    let run = env.run_root(&root, &["load", &dir.display().to_string()]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains(".storectl-trash"), "{}", run.stderr);
    let two = run.stdout.lines().last().unwrap().trim().to_string();
    assert_ne!(one, two);
    assert_index(&env, &root, &share);
    let trash = fs::read_dir(share.join(".storectl-trash")).unwrap().count();
    assert_eq!(trash, 5, "each piece of junk went to the trash");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "not the writer's");
    // The same on an index that is current (no rebuild): the layer's
    // publication moves it.
    let dir = image(&env, "three");
    let split = share.join(format!("overlay-layers/{}.tar-split.gz", top_layer(&dir)));
    fs::create_dir(&split).unwrap();
    env.run_root(&root, &["load", &dir.display().to_string()])
        .ok();
    assert_index(&env, &root, &share);
    assert_eq!(
        fs::read_dir(share.join(".storectl-trash")).unwrap().count(),
        6
    );
}

/// The top layer's chain id of the image in OCI layout `dir`.
fn top_layer(dir: &Path) -> String {
    {
        let layout: Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        let manifest = layout["manifests"][0]["digest"].as_str().unwrap()[7..].to_string();
        let m: Value =
            serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(manifest)).unwrap())
                .unwrap();
        let config = m["config"]["digest"].as_str().unwrap()[7..].to_string();
        let c: Value =
            serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(config)).unwrap())
                .unwrap();
        let diff_ids: Vec<String> = c["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect();
        storectl_fixtures::chain_ids(&diff_ids)
            .last()
            .unwrap()
            .clone()
    }
}
