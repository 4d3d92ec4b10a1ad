//! Registry transfer, end to end: the real `storectl` binary pulling from a
//! real registry (Debian's `docker-registry` on a free 127.0.0.1 port, with
//! temporary storage, anonymous or with htpasswd basic auth, killed on drop).
//! The registry's content comes from a tool we did not write: OCI layouts
//! generated here are pushed with `skopeo copy`.
//!
//! * `anonymous_pull_mount_verify_and_pull_again` — `--progress json` events,
//!   `ls --json`, the mounted tree, `verify`; a second pull (by tag and by
//!   digest) reports every layer `already exists`.
//! * `zstd_and_uncompressed_layers` — a zstd image made by skopeo
//!   (`--dest-compress-format zstd`) and an image mixing gzip, zstd and
//!   uncompressed layers (pushed with `--preserve-digests`).
//! * `basic_auth` — `--creds`, `REGISTRY_AUTH_FILE`, wrong and missing
//!   credentials.
//! * `multi_platform_index` — the host's manifest by default, `--platform`
//!   for the other one, a clear error for one that is not there.
//! * `registry_killed_mid_pull` — exit 1, a clear error, nothing visible in
//!   the store; a later pull from the restarted registry succeeds.
//! * `rendering_in_a_terminal_and_piped` — inside tmux at 160 and 80 columns
//!   (one line per layer, wide and compact forms, summary line); piped plain
//!   lines; `--quiet`.
//! * `reader_pull_reuses_the_shares_layers` — a reader pulls an image whose
//!   base layer the writer published: `already exists`, the share untouched.
//!
//! Needs root (layer ownership, overlay mounts), `docker-registry`, `skopeo`,
//! `htpasswd` and `tmux`; a missing one skips the test, saying why.
#![allow(clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::throttle::Throttle;
use common::tmux::{strip_ansi, Tmux};
use common::{Env, Run, STORECTL};
use serde_json::{json, Value};
use storectl_fixtures::gen::{build_parallel, Prng, TextGen};
use storectl_fixtures::registry::{missing, skopeo, skopeo_copy, Registry};
use storectl_fixtures::write::write_oci_layout_built;
use storectl_fixtures::{
    assert_trees_eq, diff_trees, expected_tree, sha256_digest, snapshot, write_oci_layout,
    BuiltImage, Compression, Entry, Image, Layer,
};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

// ---------------------------------------------------------------------------
// Tools and the registry

/// Root and every tool in `tools`, or `false` with the reason printed.
fn ready(tools: &[&str]) -> bool {
    require_root!();
    if let Some(t) = missing(tools) {
        eprintln!(
            "skipping: {t} is not installed \
             (apt-get install docker-registry skopeo apache2-utils tmux)"
        );
        return false;
    }
    true
}

/// `skopeo copy` of `oci:LAYOUT:TAG` to `docker://ADDR/repo_tag`.
fn push(reg: &Registry, layout: &Path, tag: &str, repo_tag: &str, extra: &[&str]) {
    skopeo_copy(layout, tag, &reg.r(repo_tag), extra);
}

/// Write `image` as an OCI layout at `dir` and push it to `ADDR/repo_tag`.
fn push_image(
    reg: &Registry,
    dir: &Path,
    image: &Image,
    repo_tag: &str,
    extra: &[&str],
) -> BuiltImage {
    let built = write_oci_layout(dir, std::slice::from_ref(image))
        .unwrap()
        .remove(0);
    push(reg, dir, &image.tag().unwrap(), repo_tag, extra);
    built
}

/// The manifest (or index) as the registry serves it, fetched by skopeo:
/// the bytes and the parsed JSON.
fn raw_manifest(reg: &Registry, repo_tag: &str, creds: Option<&str>) -> (String, Value) {
    let reference = format!("docker://{}", reg.r(repo_tag));
    let creds = creds.map(|c| format!("--creds={c}"));
    let mut args = vec!["inspect", "--raw", "--tls-verify=false"];
    args.extend(creds.as_deref());
    args.push(&reference);
    let raw = skopeo(&args);
    let v = serde_json::from_str(&raw).expect("a JSON manifest");
    (raw, v)
}

/// The layer digests and media types of a manifest.
fn manifest_layers(m: &Value) -> Vec<(String, String)> {
    m["layers"]
        .as_array()
        .expect("a manifest with layers")
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["mediaType"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Running storectl

/// Run `storectl --root root args…` with an empty `$HOME` (no
/// `~/.docker/config.json`), no auth-file variables, plus `envs`.
fn storectl(env: &Env, root: &Path, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let home = env.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut all = vec!["--root".to_string(), root.display().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let out = Command::new(STORECTL)
        .args(&all)
        .env("HOME", &home)
        .env_remove("STORECTL_ROOT")
        .env_remove("STORECTL_LOG")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run storectl");
    Run {
        args: all,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ls --json` of `root`.
fn ls(env: &Env, root: &Path) -> Vec<Value> {
    let out = storectl(env, root, &["ls", "--json"], &[]).ok();
    serde_json::from_str::<Value>(&out)
        .unwrap_or_else(|e| panic!("ls --json is not JSON ({e}): {out}"))
        .as_array()
        .expect("ls --json is an array")
        .clone()
}

/// `pull REF --progress json [extra…]` that must succeed; the events.
fn pull_json(env: &Env, root: &Path, reference: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["pull", reference, "--progress", "json"];
    args.extend_from_slice(extra);
    let run = storectl(env, root, &args, &[]);
    let stderr = run.stderr.clone();
    let out = run.ok();
    assert!(
        stderr.trim().is_empty(),
        "pull --progress json wrote to stderr: {stderr}"
    );
    events(&out)
}

/// Every stdout line of `--progress json` is one event object.
fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON event line ({e}): {l:?}"));
            for key in ["event", "name", "parents", "progress", "total"] {
                assert!(v.get(key).is_some(), "event without {key}: {l}");
            }
            v
        })
        .collect()
}

/// The event kinds reported for blob `name`, in order.
fn kinds_of(events: &[Value], name: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["name"] == name)
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

/// `resolving` first, `done` (naming the image id) last, and the blob events
/// name exactly `layers`.
fn check_frame(events: &[Value], layers: &[String], image_id: &str) {
    assert_eq!(
        events.first().map(|e| &e["event"]),
        Some(&json!("resolving"))
    );
    let last = events.last().unwrap();
    assert_eq!(last["event"], "done", "{events:#?}");
    assert_eq!(last["name"], image_id);
    let mut named: Vec<String> = events[1..events.len() - 1]
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    named.sort();
    named.dedup();
    let mut want = layers.to_vec();
    want.sort();
    want.dedup();
    assert_eq!(named, want, "blob events name the manifest's layers");
}

/// A first pull: every layer `waiting`, then `downloading` (progress within
/// `total`), then `complete` with progress = total.
fn check_first_pull(events: &[Value], layers: &[String], image_id: &str) {
    check_frame(events, layers, image_id);
    for l in layers {
        let kinds = kinds_of(events, l);
        assert_eq!(
            kinds.first().map(String::as_str),
            Some("waiting"),
            "{l}: {kinds:?}"
        );
        assert_eq!(
            kinds.last().map(String::as_str),
            Some("complete"),
            "{l}: {kinds:?}"
        );
        assert!(kinds.iter().any(|k| k == "downloading"), "{l}: {kinds:?}");
        assert!(
            kinds[1..kinds.len() - 1]
                .iter()
                .all(|k| k == "downloading" || k == "extracting"),
            "{l}: {kinds:?}"
        );
        for e in events.iter().filter(|e| e["name"] == l.as_str()) {
            let (p, t) = (
                e["progress"].as_u64().unwrap(),
                e["total"].as_u64().unwrap(),
            );
            assert!(t > 0 && p <= t, "{l}: progress {p} of {t}");
            if e["event"] == "complete" {
                assert_eq!(p, t, "{l}: complete at {p} of {t}");
            }
        }
    }
}

/// A pull of what the store has: every layer only `already exists`.
fn check_already_there(events: &[Value], layers: &[String], image_id: &str) {
    check_frame(events, layers, image_id);
    for l in layers {
        assert_eq!(kinds_of(events, l), vec!["already exists"], "{l}");
    }
}

/// Mount `image` in `root`, compare the merged view with `expected`, unmount.
fn check_mounted(env: &Env, root: &Path, image: &str, expected: &Image, what: &str) {
    let out = storectl(env, root, &["mount", image], &[]).ok();
    let path = PathBuf::from(out.lines().last().unwrap_or("").trim());
    assert!(
        common::is_mountpoint(&path),
        "{what}: mount printed {out:?}"
    );
    let actual = snapshot(&path);
    let umount = storectl(env, root, &["umount", image], &[]);
    if common::is_mountpoint(&path) {
        let _ = Command::new("umount").arg("-l").arg(&path).status();
    }
    assert_trees_eq(&expected_tree(expected), &actual.unwrap(), what);
    umount.ok();
}

/// `verify IMAGE` passes, one `ok` line per layer.
fn check_verify(env: &Env, root: &Path, image: &str, layers: usize) {
    let out = storectl(env, root, &["verify", image], &[]).ok();
    let ok = out.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(ok, layers, "verify {image}:\n{out}");
}

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..12]
}

// ---------------------------------------------------------------------------
// Images

/// Text-ish bytes, cheap to make in a debug build: 64 KiB pieces of a 2 MiB
/// text pool, picked at random (gzip compresses it about as well as text).
fn text(seed: u64, n: usize) -> Vec<u8> {
    const PIECE: usize = 64 << 10;
    let pool = TextGen::new(seed).content(2 << 20);
    let mut rng = Prng::new(seed ^ 0x7e57);
    let mut out = Vec::with_capacity(n + PIECE);
    while out.len() < n {
        let at = rng.below((pool.len() - PIECE) as u64) as usize;
        out.extend_from_slice(format!("-- {} --\n", rng.next_u64()).as_bytes());
        out.extend_from_slice(&pool[at..at + PIECE]);
    }
    out.truncate(n);
    out
}

/// FNV-1a of `s`: a seed per image.
fn seed_of(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A small three-layer image; `tag` varies the content so images differ.
fn small_image(name: &str, tag: &str, compressions: [Compression; 3]) -> Image {
    let seed = seed_of(&format!("{name}:{tag}"));
    let mut t = TextGen::new(seed);
    Image::new(vec![
        Layer::new(
            vec![
                Entry::dir("etc"),
                Entry::file("etc/os-release", format!("NAME=registry-test\nTAG={tag}\n")),
                Entry::dir("bin"),
                Entry::symlink("bin/sh", "/bin/busybox"),
                Entry::dir("usr"),
                Entry::dir("usr/share"),
                Entry::file("usr/share/words", t.content(300_000)),
                Entry::file("etc/remove-me", "gone in layer 3\n"),
            ],
            compressions[0],
        ),
        Layer::new(
            vec![
                Entry::dir("opt"),
                Entry::dir("opt/app"),
                Entry::file("opt/app/run", format!("#!/bin/sh\necho {tag}\n")).mode(0o755),
                Entry::file("opt/app/data", text(seed, 1 << 20)),
                Entry::file("opt/app/owned", "x").owner(1000, 1000),
            ],
            compressions[1],
        ),
        Layer::new(
            vec![
                Entry::whiteout("etc/remove-me"),
                Entry::file("etc/app.conf", format!("tag = {tag}\n")),
            ],
            compressions[2],
        ),
    ])
    .named(&format!("localhost/{name}:{tag}"))
}

fn gzip3(name: &str, tag: &str) -> Image {
    small_image(name, tag, [Compression::Gzip; 3])
}

// ---------------------------------------------------------------------------
// 1. Anonymous pull

#[test]
#[ignore = "needs root"]
fn anonymous_pull_mount_verify_and_pull_again() {
    if !ready(&["docker-registry", "skopeo"]) {
        return;
    }
    let env = Env::new();
    let reg = Registry::start(None);
    let image = gzip3("anon", "v1");
    let built = push_image(&reg, &env.path("oci"), &image, "test/anon:v1", &[]);
    let reference = reg.r("test/anon:v1");
    let (raw, manifest) = raw_manifest(&reg, "test/anon:v1", None);
    let layers: Vec<String> = manifest_layers(&manifest)
        .into_iter()
        .map(|l| l.0)
        .collect();
    let blobs: Vec<String> = built.layers.iter().map(|l| l.blob_digest.clone()).collect();
    assert_eq!(layers, blobs, "skopeo passed the gzip blobs through");

    // First pull: every blob waiting → downloading → complete.
    let ev = pull_json(&env, &env.root, &reference, &["--tls-verify=false"]);
    check_first_pull(&ev, &layers, &built.id());
    for e in &ev[1..ev.len() - 1] {
        assert_eq!(e["parents"], json!([reference]), "{e}");
    }

    // ls --json: the image, its name, its layers (the chain ids).
    let ls = ls(&env, &env.root);
    assert_eq!(ls.len(), 1, "{ls:#?}");
    assert_eq!(ls[0]["id"], built.id());
    assert_eq!(common::strings(&ls[0]["names"]), vec![reference.clone()]);
    assert_eq!(common::strings(&ls[0]["layers"]), built.chain_ids());
    assert_eq!(
        ls[0]["digest"],
        sha256_digest(raw.as_bytes()),
        "the image's digest is the manifest's"
    );

    // The mounted tree is what was generated; verify re-hashes every layer.
    check_mounted(&env, &env.root, &reference, &image, "pulled image");
    check_verify(&env, &env.root, &reference, 3);

    // Again by tag, then by digest: nothing is downloaded.
    let ev = pull_json(&env, &env.root, &reference, &[]);
    check_already_there(&ev, &layers, &built.id());
    let digest = ls[0]["digest"].as_str().unwrap().to_string();
    let by_digest = format!("{}@{digest}", reg.r("test/anon"));
    let ev = pull_json(&env, &env.root, &by_digest, &[]);
    check_already_there(&ev, &layers, &built.id());
    assert_eq!(self::ls(&env, &env.root).len(), 1);

    // An unknown tag is a clear error and leaves the store as it was.
    let line = storectl(&env, &env.root, &["pull", &reg.r("test/anon:nope")], &[])
        .err_containing("not found");
    assert!(line.contains("test/anon:nope"), "{line}");
    assert_eq!(self::ls(&env, &env.root).len(), 1);
}

// ---------------------------------------------------------------------------
// zstd and uncompressed layers

#[test]
#[ignore = "needs root"]
fn zstd_and_uncompressed_layers() {
    if !ready(&["docker-registry", "skopeo"]) {
        return;
    }
    let env = Env::new();
    let reg = Registry::start(None);

    // skopeo recompresses a gzip image as zstd.
    let zimage = gzip3("zstd", "z1");
    let zbuilt = push_image(
        &reg,
        &env.path("oci-z"),
        &zimage,
        "test/zstd:1",
        &["--dest-compress", "--dest-compress-format", "zstd"],
    );
    let zlayers = manifest_layers(&raw_manifest(&reg, "test/zstd:1", None).1);
    for (d, mt) in &zlayers {
        assert_eq!(mt, "application/vnd.oci.image.layer.v1.tar+zstd", "{d}");
    }
    // gzip, zstd and uncompressed in one image; --preserve-digests keeps
    // skopeo from compressing the uncompressed one.
    let mixed = small_image(
        "mixed",
        "m1",
        [Compression::Gzip, Compression::Zstd, Compression::None],
    );
    let mbuilt = push_image(
        &reg,
        &env.path("oci-m"),
        &mixed,
        "test/mixed:1",
        &["--preserve-digests"],
    );
    let mlayers = manifest_layers(&raw_manifest(&reg, "test/mixed:1", None).1);
    let types: Vec<&str> = mlayers.iter().map(|l| l.1.as_str()).collect();
    assert_eq!(
        types,
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar",
        ]
    );

    for (repo_tag, image, built, layers) in [
        ("test/zstd:1", &zimage, &zbuilt, &zlayers),
        ("test/mixed:1", &mixed, &mbuilt, &mlayers),
    ] {
        let reference = reg.r(repo_tag);
        let digests: Vec<String> = layers.iter().map(|l| l.0.clone()).collect();
        let ev = pull_json(&env, &env.root, &reference, &[]);
        check_first_pull(&ev, &digests, &built.id());
        check_mounted(&env, &env.root, &reference, image, repo_tag);
        check_verify(&env, &env.root, &reference, 3);
        let ls = ls(&env, &env.root);
        let entry = ls.iter().find(|i| i["id"] == built.id()).unwrap();
        assert_eq!(common::strings(&entry["layers"]), built.chain_ids());
    }
}

// ---------------------------------------------------------------------------
// 2. Basic auth

/// RFC 4648 base64 (for a docker config.json `auth` value).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
#[ignore = "needs root"]
fn basic_auth() {
    if !ready(&["docker-registry", "skopeo", "htpasswd"]) {
        return;
    }
    assert_eq!(base64(b"alice:pw"), "YWxpY2U6cHc=");
    let env = Env::new();
    let (user, pass) = ("alice", "s3cret-Pw");
    let creds = format!("{user}:{pass}");
    let reg = Registry::start(Some((user, pass)));
    let image = gzip3("auth", "a1");
    let built = write_oci_layout(&env.path("oci"), std::slice::from_ref(&image))
        .unwrap()
        .remove(0);
    push(
        &reg,
        &env.path("oci"),
        "a1",
        "private/img:a1",
        &[&format!("--dest-creds={creds}")],
    );
    let reference = reg.r("private/img:a1");

    // --creds
    let root = env.path("with-creds");
    let out = storectl(
        &env,
        &root,
        &["pull", "-q", "--creds", &creds, &reference],
        &[],
    )
    .ok();
    assert_eq!(out.trim(), built.id());
    check_verify(&env, &root, &reference, 3);

    // REGISTRY_AUTH_FILE with `auths`
    let auth_file = env.path("auth.json");
    let write_auth = |pass: &str| {
        let cfg = json!({"auths": {reg.addr.clone(): {"auth": base64(format!("{user}:{pass}").as_bytes())}}});
        std::fs::write(&auth_file, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    };
    write_auth(pass);
    let auth_env = [("REGISTRY_AUTH_FILE", auth_file.to_str().unwrap())];
    let root = env.path("with-auth-file");
    let out = storectl(&env, &root, &["pull", "-q", &reference], &auth_env).ok();
    assert_eq!(out.trim(), built.id());
    assert_eq!(ls(&env, &root).len(), 1);

    // Wrong password, on the command line and in the auth file.
    let root = env.path("wrong");
    for (args, envs) in [
        (vec!["pull", "--creds", "alice:wrong", &reference], &[][..]),
        (vec!["pull", &reference], &auth_env[..]),
    ] {
        if !envs.is_empty() {
            write_auth("not-it");
        }
        let line = storectl(&env, &root, &args, envs).err_containing("authentication");
        assert!(line.contains("wrong username or password"), "{line}");
        assert!(
            line.contains(&reg.addr),
            "the error names the registry: {line}"
        );
        assert!(
            !line.contains("not-it") && !line.contains("alice:wrong"),
            "no password in the error: {line}"
        );
        assert!(ls(&env, &root).is_empty());
    }

    // No credentials at all (empty $HOME, no auth file).
    let root = env.path("none");
    let line = storectl(&env, &root, &["pull", &reference], &[]).err_containing("authentication");
    assert!(line.contains("credentials required"), "{line}");
    assert!(ls(&env, &root).is_empty());

    // A malformed --creds is refused before any request.
    storectl(
        &env,
        &root,
        &["pull", "--creds", "no-colon", &reference],
        &[],
    )
    .err_containing("USER:PASS");
}

// ---------------------------------------------------------------------------
// 3. Platforms

/// `built` with the config's architecture set to `arch` (new config digest).
fn with_arch(mut built: BuiltImage, arch: &str) -> BuiltImage {
    let mut cfg: Value = serde_json::from_slice(&built.config).unwrap();
    cfg["architecture"] = json!(arch);
    built.config = serde_json::to_vec(&cfg).unwrap();
    built.config_digest = sha256_digest(&built.config);
    built
}

fn put_blob(layout: &Path, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let path = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::write(path, data).unwrap();
    digest
}

#[test]
#[ignore = "needs root"]
fn multi_platform_index() {
    if !ready(&["docker-registry", "skopeo"]) {
        return;
    }
    let env = Env::new();
    let reg = Registry::start(None);
    let host = storectl_fixtures::image::host_arch();
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    let img_host = gzip3("multi", host);
    let img_other = gzip3("multi", other);
    let b_host = img_host.build();
    let b_other = with_arch(img_other.build(), other);

    // An OCI layout whose index.json names one nested index (tag `multi`)
    // listing the two platform manifests; `skopeo copy --all` pushes it whole.
    let layout = env.path("oci-multi");
    write_oci_layout_built(
        &layout,
        &[img_host.clone(), img_other.clone()],
        &[b_host.clone(), b_other.clone()],
    )
    .unwrap();
    let mut entries = Vec::new();
    for (b, arch) in [(&b_host, host), (&b_other, other)] {
        let m = b.oci_manifest();
        entries.push(json!({
            "mediaType": OCI_MANIFEST,
            "digest": put_blob(&layout, &m),
            "size": m.len(),
            "platform": {"os": "linux", "architecture": arch},
        }));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    }))
    .unwrap();
    let top = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_INDEX,
            "digest": put_blob(&layout, &index),
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    push(
        &reg,
        &layout,
        "multi",
        "test/multi:1",
        &["--all", "--preserve-digests"],
    );
    let (_, served) = raw_manifest(&reg, "test/multi:1", None);
    assert_eq!(served["mediaType"], OCI_INDEX, "{served}");
    assert_eq!(served["manifests"].as_array().unwrap().len(), 2);
    let reference = reg.r("test/multi:1");

    // Default: the host's platform.
    let root = env.path("default");
    let out = storectl(&env, &root, &["pull", "-q", &reference], &[]).ok();
    assert_eq!(out.trim(), b_host.id(), "the host's ({host}) manifest");
    check_mounted(&env, &root, &reference, &img_host, "host platform");

    // --platform picks the other one.
    let root = env.path("other");
    let platform = format!("linux/{other}");
    let ev = pull_json(&env, &root, &reference, &["--platform", &platform]);
    let blobs: Vec<String> = b_other
        .layers
        .iter()
        .map(|l| l.blob_digest.clone())
        .collect();
    check_first_pull(&ev, &blobs, &b_other.id());
    let ls = ls(&env, &root);
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["id"], b_other.id());
    let inspect = storectl(&env, &root, &["inspect", &reference], &[]).ok();
    assert!(inspect.contains(&format!("\"{other}\"")), "{inspect}");
    check_mounted(&env, &root, &reference, &img_other, "--platform");

    // A platform the index does not have: a clear error listing what it has.
    let root = env.path("missing");
    let line = storectl(
        &env,
        &root,
        &["pull", "--platform", "windows/s390x", &reference],
        &[],
    )
    .err_containing("windows/s390x");
    assert!(
        line.contains(&format!("linux/{host}")) && line.contains(&platform),
        "the error lists the available platforms: {line}"
    );
    storectl(
        &env,
        &root,
        &["pull", "--platform", "linux//x", &reference],
        &[],
    )
    .err_containing("--platform");
}

// ---------------------------------------------------------------------------
// 4. Registry killed mid-pull

#[test]
#[ignore = "needs root"]
fn registry_killed_mid_pull() {
    if !ready(&["docker-registry", "skopeo"]) {
        return;
    }
    let env = Env::new();
    let mut reg = Registry::start(None);
    // ~144 MB of text in three layers (~45 MB of gzip).
    let layer = |dir: &str, seed: u64, files: usize, size: usize| {
        let mut e = vec![Entry::dir(dir)];
        for i in 0..files {
            e.push(Entry::file(
                &format!("{dir}/f{i:03}.txt"),
                text(seed + i as u64, size),
            ));
        }
        Layer::new(e, Compression::Gzip)
    };
    let image = Image::new(vec![
        layer("a", 100, 6, 8 << 20),
        layer("b", 200, 48, 1 << 20),
        layer("c", 300, 3, 16 << 20),
    ])
    .named("localhost/big:1");
    let built = build_parallel(&image, 1).unwrap();
    let layout = env.path("oci-big");
    write_oci_layout_built(
        &layout,
        std::slice::from_ref(&image),
        std::slice::from_ref(&built),
    )
    .unwrap();
    push(&reg, &layout, "1", "test/big:1", &[]);
    let reference = reg.r("test/big:1");

    let mut child = Command::new(STORECTL)
        .args([
            "--root",
            env.root.to_str().unwrap(),
            "pull",
            "--progress",
            "json",
            &reference,
        ])
        .env("HOME", env.path("home"))
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("STORECTL_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("storectl runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        let e: Value = serde_json::from_str(&line).unwrap();
        line.clear();
        let downloading = e["event"] == "downloading";
        seen.push(e);
        if downloading {
            break;
        }
    }
    assert!(
        seen.iter().any(|e| e["event"] == "downloading"),
        "no downloading event before the end: {seen:?}"
    );
    reg.kill();
    let killed = Instant::now();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    let took = killed.elapsed();
    let run = Run {
        args: vec!["pull".into(), reference.clone()],
        code: status.code(),
        stdout: rest.clone(),
        stderr,
    };
    let line = run.err();
    eprintln!("registry killed mid-pull: storectl gave up after {took:?}: {line}");
    assert!(
        line.starts_with("storectl: error: pulling ") && line.contains(&reg.addr),
        "the error says what failed and where: {line}"
    );
    assert!(
        ["cannot reach", "connection", "refused", "reset"]
            .iter()
            .any(|w| line.to_lowercase().contains(w)),
        "the error says the registry went away: {line}"
    );
    assert!(
        took < Duration::from_secs(30),
        "storectl took {took:?} to give up"
    );
    let all: Vec<Value> = seen.into_iter().chain(events(&rest)).collect();
    assert!(
        !all.iter().any(|e| e["event"] == "done"),
        "a failed pull reported done"
    );

    // Nothing visible: no image, no layer, no layer dir, no short link.
    let check_empty = |what: &str| {
        assert!(ls(&env, &env.root).is_empty(), "{what}: ls lists an image");
        for sub in ["overlay", "overlay-layers", "overlay-images"] {
            let v = env.visible_entries(sub);
            assert!(v.is_empty(), "{what}: left in {sub}: {v:?}");
        }
        let links: Vec<_> = std::fs::read_dir(env.root.join("overlay/l"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(links.is_empty(), "{what}: short links left: {links:?}");
    };
    check_empty("after the failed pull");

    // The registry back on the same storage: the pull succeeds.
    reg.restart();
    let ev = pull_json(&env, &env.root, &reference, &[]);
    let blobs: Vec<String> = built.layers.iter().map(|l| l.blob_digest.clone()).collect();
    check_first_pull(&ev, &blobs, &built.id());
    let ls = ls(&env, &env.root);
    assert_eq!(ls.len(), 1);
    assert_eq!(common::strings(&ls[0]["layers"]), built.chain_ids());
    check_verify(&env, &env.root, &reference, 3);
}

// ---------------------------------------------------------------------------
// 5. Rendering

/// Lines of `pane` naming layer `id` (a short id).
fn lines_naming<'a>(pane: &'a str, id: &str) -> Vec<&'a str> {
    pane.lines().filter(|l| l.contains(id)).collect()
}

/// The summary line: `Pulled: N layers written (<size> compressed) in <secs>s`.
fn check_summary(text: &str, layers: usize) {
    let summary: Vec<&str> = text.lines().filter(|l| l.starts_with("Pulled: ")).collect();
    assert_eq!(summary.len(), 1, "one summary line:\n{text}");
    let s = summary[0].trim_end();
    assert!(
        s.starts_with(&format!("Pulled: {layers} layers written ("))
            && s.contains(" compressed) in ")
            && s.ends_with('s')
            && s.contains(" in "),
        "summary line {s:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn rendering_in_a_terminal_and_piped() {
    if !ready(&["docker-registry", "skopeo", "tmux"]) {
        return;
    }
    let env = Env::new();
    let reg = Registry::start(None);
    // Two 16 MB layers (MB sizes; downloads last long enough for frames with
    // a rate) and a small one (kB).
    let image = Image::new(vec![
        Layer::new(
            vec![Entry::dir("x"), Entry::file("x/one", text(11, 16 << 20))],
            Compression::Gzip,
        ),
        Layer::new(
            vec![Entry::dir("y"), Entry::file("y/two", text(12, 16 << 20))],
            Compression::Gzip,
        ),
        Layer::new(vec![Entry::file("z", text(13, 40_000))], Compression::Gzip),
    ])
    .named("localhost/render:1");
    let built = build_parallel(&image, 1).unwrap();
    let layout = env.path("oci-render");
    write_oci_layout_built(
        &layout,
        std::slice::from_ref(&image),
        std::slice::from_ref(&built),
    )
    .unwrap();
    push(&reg, &layout, "1", "test/render:1", &[]);
    // Through a proxy at 8 MB/s a connection: each big layer downloads for
    // about a second, so frames with a rate are drawn however fast the
    // machine (unthrottled, a quiet machine pulled it in 0.2 s, no rate yet).
    let proxy = Throttle::start(&reg.addr, 8 << 20);
    let reference = format!("{}/test/render:1", proxy.addr);
    // Rows are named by layer id, as `ls --layers` and `verify` name them.
    let ids: Vec<String> = built
        .chain_ids()
        .iter()
        .map(|l| short(l).to_string())
        .collect();
    let home = env.path("home");
    std::fs::create_dir_all(&home).unwrap();

    let tmux = Tmux::new("render");
    for width in [160u16, 80] {
        let root = env.path(&format!("tty-{width}"));
        let script = format!(
            "HOME='{}' '{STORECTL}' --root '{}' pull '{reference}'",
            home.display(),
            root.display()
        );
        let (pane, raw) = tmux.run(env.dir(), width, &script);
        let what = format!("pane at {width} columns:\n{pane}");
        assert!(pane.contains("EXIT=0"), "{what}");
        check_summary(&pane, 3);
        for id in &ids {
            let lines = lines_naming(&pane, id);
            assert_eq!(lines.len(), 1, "one line for layer {id}; {what}");
            let l = lines[0].trim_end();
            assert!(
                l.starts_with(id.as_str()) && l.contains("complete"),
                "{l:?}; {what}"
            );
            if width >= 110 {
                // `id  complete  [=====…]  12.0 MB / 12.0 MB`
                assert!(l.contains("[====") && l.contains(']'), "a full bar: {l:?}");
                assert!(!l.contains('>'), "a complete bar has no head: {l:?}");
                assert!(l.contains("MB / ") || l.contains("kB / "), "bytes: {l:?}");
                assert!(l.chars().count() < width as usize, "{l:?}");
            } else {
                // `id complete 12.0MB/12.0MB`
                let parts: Vec<&str> = l.split(' ').collect();
                assert_eq!(parts.len(), 3, "compact form: {l:?}");
                assert_eq!(parts[1], "complete", "{l:?}");
                let (cur, total) = parts[2].split_once('/').expect("cur/total");
                assert_eq!(cur, total, "{l:?}");
                assert!(total.ends_with("MB") || total.ends_with("kB"), "{l:?}");
                assert!(!l.contains('['), "no bar when narrow: {l:?}");
            }
        }
        // Every frame the pane received: while downloading, the wide form
        // showed a bar and a rate; the narrow form never a bar.
        let frames = strip_ansi(&raw);
        if width >= 110 {
            assert!(
                frames
                    .lines()
                    .any(|l| l.contains("downloading") && l.contains("/s") && l.contains('[')),
                "no wide downloading line with a rate in the pane's output:\n{frames}"
            );
        } else {
            assert!(frames.contains("downloading"), "{frames}");
            assert!(!frames.contains('['), "a bar at {width} columns:\n{frames}");
        }
        assert_eq!(ls(&env, &root).len(), 1);
    }

    // Piped, no --progress: one plain line per finished layer on stderr.
    let root = env.path("piped");
    let run = storectl(&env, &root, &["pull", &reference], &[]);
    let stderr = run.stderr.clone();
    let out = run.ok();
    assert_eq!(out, format!("{}\n", built.id()), "stdout is the image id");
    assert!(
        !stderr.contains('\x1b'),
        "no escape codes when piped: {stderr:?}"
    );
    for id in &ids {
        let lines = lines_naming(&stderr, id);
        assert_eq!(lines.len(), 1, "one line for {id}:\n{stderr}");
        assert!(lines[0].starts_with(&format!("{id} complete ")), "{stderr}");
    }
    check_summary(&stderr, 3);
    assert_eq!(stderr.lines().count(), 4, "{stderr}");

    // --quiet: the image id only.
    let root = env.path("quiet");
    let run = storectl(&env, &root, &["pull", "--quiet", &reference], &[]);
    let stderr = run.stderr.clone();
    assert_eq!(run.ok(), format!("{}\n", built.id()));
    assert_eq!(stderr, "", "--quiet writes nothing to stderr");
}

// ---------------------------------------------------------------------------
// 6. A reader pulls over the share's layers

#[test]
#[ignore = "needs root"]
fn reader_pull_reuses_the_shares_layers() {
    if !ready(&["docker-registry", "skopeo"]) {
        return;
    }
    let env = Env::new();
    let reg = Registry::start(None);
    let base = Layer::new(
        vec![
            Entry::dir("etc"),
            Entry::file("etc/base", "the shared base\n"),
            Entry::file("etc/words", text(77, 400_000)),
        ],
        Compression::Gzip,
    );
    let top = |n: &str| {
        Layer::new(
            vec![
                Entry::dir(n),
                Entry::file(&format!("{n}/file"), text(seed_of(n), 200_000)),
            ],
            Compression::Gzip,
        )
    };
    let a = Image::new(vec![base.clone(), top("aaa")]).named("localhost/a:1");
    let b = Image::new(vec![base, top("bbbbbb")]).named("localhost/b:1");
    let built_a = push_image(&reg, &env.path("oci-a"), &a, "share/a:1", &[]);
    let built_b = push_image(&reg, &env.path("oci-b"), &b, "share/b:1", &[]);
    let base_blob = built_a.layers[0].blob_digest.clone();
    assert_eq!(base_blob, built_b.layers[0].blob_digest);

    let share = env.path("share");
    std::fs::create_dir_all(&share).unwrap();
    let share_s = share.to_str().unwrap();
    let writer = env.path("writer");
    let reader = env.path("reader");
    storectl(
        &env,
        &writer,
        &["init", "--shared", share_s, "--role", "writer"],
        &[],
    )
    .ok();
    common::set_removed_layers_grace(&share, 0);
    storectl(
        &env,
        &reader,
        &["init", "--shared", share_s, "--role", "reader"],
        &[],
    )
    .ok();

    // The writer publishes a (base + its own layer).
    let ev = pull_json(&env, &writer, &reg.r("share/a:1"), &[]);
    let blobs_a: Vec<String> = built_a
        .layers
        .iter()
        .map(|l| l.blob_digest.clone())
        .collect();
    check_first_pull(&ev, &blobs_a, &built_a.id());

    // The reader pulls b: the base is on the share already.
    let before = snapshot(&share).unwrap();
    let ev = pull_json(&env, &reader, &reg.r("share/b:1"), &[]);
    check_frame(
        &ev,
        &[base_blob.clone(), built_b.layers[1].blob_digest.clone()],
        &built_b.id(),
    );
    assert_eq!(kinds_of(&ev, &base_blob), vec!["already exists"]);
    let own = kinds_of(&ev, &built_b.layers[1].blob_digest);
    assert_eq!(own.first().map(String::as_str), Some("waiting"), "{own:?}");
    assert_eq!(own.last().map(String::as_str), Some("complete"), "{own:?}");
    let after = snapshot(&share).unwrap();
    let changed = diff_trees(&before, &after);
    assert!(
        changed.is_empty(),
        "the reader's pull changed the share:\n{}",
        changed.join("\n")
    );

    // The reader sees both; b is local, a is the share's; b mounts whole.
    let listed: BTreeMap<String, bool> = ls(&env, &reader)
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["shared"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        BTreeMap::from([(built_a.id(), true), (built_b.id(), false)]),
        "reader's images (id → shared)"
    );
    check_mounted(&env, &reader, &built_b.id(), &b, "b on the reader");
    // The writer does not see the reader's image.
    let on_writer: Vec<Value> = ls(&env, &writer);
    assert_eq!(on_writer.len(), 1);
    assert_eq!(on_writer[0]["id"], built_a.id());
    let after_mount = snapshot(&share).unwrap();
    let changed = diff_trees(&before, &after_mount);
    assert!(
        changed.is_empty(),
        "mounting on the reader changed the share:\n{}",
        changed.join("\n")
    );
}

#[test]
#[ignore = "needs root"]
fn credential_helpers_answer_for_the_registry() {
    use std::os::unix::fs::PermissionsExt;
    if !ready(&["docker-registry", "skopeo", "htpasswd"]) {
        return;
    }
    let env = Env::new();
    let (user, pass) = ("alice", "s3cret-Pw");
    let reg = Registry::start(Some((user, pass)));
    let image = gzip3("helped", "h1");
    let built = write_oci_layout(&env.path("oci"), std::slice::from_ref(&image))
        .unwrap()
        .remove(0);
    push(
        &reg,
        &env.path("oci"),
        "h1",
        "private/img:h1",
        &[&format!("--dest-creds={user}:{pass}")],
    );
    let reference = reg.r("private/img:h1");
    // A helper that knows this registry only, and logs what it is asked.
    let bin = env.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = env.path("helper.log");
    let helper = bin.join("docker-credential-storectltest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\necho \"$1 $server\" >> '{}'\n\
             if [ \"$1\" = get ] && [ \"$server\" = '{}' ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{pass}\"}}' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
            log.display(),
            reg.addr
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let config = env.path("home/.docker/config.json");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    for (i, cfg) in [
        json!({"credHelpers": {reg.addr.clone(): "storectltest"}}),
        json!({"credsStore": "storectltest"}),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&config, serde_json::to_vec(&cfg).unwrap()).unwrap();
        let root = env.path(&format!("helped-{i}"));
        let out = storectl(&env, &root, &["pull", "-q", &reference], &[("PATH", &path)]).ok();
        assert_eq!(out.trim(), built.id(), "{cfg}");
    }
    let asked = std::fs::read_to_string(&log).unwrap();
    assert_eq!(asked, format!("get {0}\nget {0}\n", reg.addr), "{asked}");
    // A helper that is not installed: a warning, then no credentials.
    std::fs::write(&config, br#"{"credsStore": "storectl-not-installed"}"#).unwrap();
    let run = storectl(
        &env,
        &env.path("unhelped"),
        &["pull", "-q", &reference],
        &[("PATH", &path)],
    );
    let stderr = run.stderr.clone();
    let line = run.err_containing("credentials required");
    assert!(line.contains(&reg.addr), "{line}");
    assert!(
        stderr.contains("docker-credential-storectl-not-installed is not installed"),
        "{stderr}"
    );
}
