//! `verify`, corrupted blobs, and stores that cannot be written.

#![allow(clippy::print_stderr)]

mod common;

use std::path::Path;

use common::Env;
use storectl_fixtures::catalogue::{layered, shared_a};
use storectl_fixtures::write_oci_layout;

/// Find a regular file under `dir`.
fn some_file(dir: &Path) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let ft = e.file_type().ok()?;
        if ft.is_file() && e.metadata().ok()?.len() > 0 {
            return Some(e.path());
        }
        if ft.is_dir() {
            if let Some(p) = some_file(&e.path()) {
                return Some(p);
            }
        }
    }
    None
}

#[test]
#[ignore = "needs root"]
fn verify_passes_then_names_a_corrupted_layer() {
    require_root!();
    let env = Env::new();
    let oci = env.path("oci");
    let images = [layered(), shared_a()];
    let built = write_oci_layout(&oci, &images).unwrap();
    let id = env.load_spec(&format!("{}:v1", oci.display()), &[]);
    let id2 = env.load_spec(&format!("{}:a", oci.display()), &[]);
    assert_eq!(id, built[0].id());

    let out = env.run(&["verify"]).ok();
    for l in built[0].chain_ids().iter().chain(&built[1].chain_ids()) {
        assert!(
            out.contains(l.as_str()),
            "verify does not mention layer {l}:\n{out}"
        );
    }
    env.run(&["verify", &id]).ok();

    // Corrupt one file of the middle layer of `layered`.
    let victim = built[0].chain_ids()[1].clone();
    let diff = env.root.join("overlay").join(&victim).join("diff");
    let file = some_file(&diff).expect("a file in the middle layer");
    let mut content = std::fs::read(&file).unwrap();
    content[0] ^= 0x55;
    std::fs::write(&file, &content).unwrap();

    for args in [vec!["verify"], vec!["verify", id.as_str()]] {
        let r = env.run(&args);
        let all = format!("{}{}", r.stdout, r.stderr);
        let line = r.err();
        assert!(
            line.contains(&victim),
            "verify {args:?} should name layer {victim}: {line}\n{all}"
        );
        for other in built[0].chain_ids().iter().filter(|c| **c != victim) {
            assert!(
                !line.contains(other.as_str()),
                "only {victim} is bad: {line}"
            );
        }
    }
    // The other image's layers are all fine.
    env.run(&["verify", &id2]).ok();
}

/// Flip one byte of `blob` in the OCI layout `dir` (at `offset`, or in the middle).
fn flip(dir: &Path, digest: &str, offset: Option<usize>) {
    let p = dir
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let mut data = std::fs::read(&p).unwrap();
    let at = offset.unwrap_or(data.len() / 2);
    data[at] ^= 0x01;
    std::fs::write(&p, data).unwrap();
}

/// A named way to corrupt a written layout.
type Corruption<'a> = (
    &'a str,
    Box<dyn Fn(&Path, &storectl_fixtures::BuiltImage) + 'a>,
);

#[test]
#[ignore = "needs root"]
fn digest_mismatch_leaves_nothing_behind() {
    require_root!();
    let img = layered();
    // layer 3 is uncompressed: a flipped content byte keeps the tar valid,
    // so only the digest check can catch it.
    let motd = b"layer 3 motd";
    let cases: Vec<Corruption> = vec![
        (
            "uncompressed layer content",
            Box::new(|dir, b| {
                let tar = b.layers[2].tar.as_ref().unwrap();
                let at = tar.windows(motd.len()).position(|w| w == motd).unwrap();
                flip(dir, &b.layers[2].blob_digest, Some(at));
            }),
        ),
        (
            "gzip layer",
            Box::new(|dir, b| flip(dir, &b.layers[0].blob_digest, None)),
        ),
        (
            "config",
            Box::new(|dir, b| flip(dir, &b.config_digest, Some(20))),
        ),
    ];
    for (what, corrupt) in cases {
        let env = Env::new();
        let oci = env.path("oci");
        let built = write_oci_layout(&oci, std::slice::from_ref(&img)).unwrap();
        corrupt(&oci, &built[0]);
        let line = env.run(&["load", &oci.display().to_string()]).err();
        if what != "gzip layer" {
            // A flipped gzip byte may fail decompression before the digest check.
            assert!(
                line.to_lowercase().contains("digest"),
                "{what}: expected a digest error: {line}"
            );
        }
        if what == "uncompressed layer content" {
            let hex = built[0].layers[2].blob_digest.trim_start_matches("sha256:");
            assert!(
                line.contains(&hex[..12]),
                "{what}: should name the blob: {line}"
            );
        }
        env.assert_store_empty(what);
    }
}

#[test]
fn root_that_is_a_file_is_a_clear_error() {
    let env = Env::new();
    let oci = env.path("oci");
    write_oci_layout(&oci, &[shared_a()]).unwrap();
    let file_root = env.path("not-a-dir");
    std::fs::write(&file_root, "x").unwrap();
    let r = env.run_root(&file_root, &["load", &oci.display().to_string()]);
    let line = r.err();
    assert!(
        line.contains(&file_root.display().to_string()),
        "should name the root: {line}"
    );
    assert_eq!(std::fs::read(&file_root).unwrap(), b"x");
}

#[test]
#[ignore = "needs root"]
fn read_only_root_is_a_clear_error() {
    require_root!();
    let env = Env::new();
    let oci = env.path("oci");
    write_oci_layout(&oci, &[shared_a()]).unwrap();
    let ro = env.path("ro-root");
    std::fs::create_dir(&ro).unwrap();
    let sh = |args: &[&str]| {
        let st = std::process::Command::new("mount")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "mount {args:?}");
    };
    let ro_s = ro.display().to_string();
    sh(&["--bind", &ro_s, &ro_s]);
    sh(&["-o", "remount,bind,ro", &ro_s]);
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(ro_s.clone());
    let r = env.run_root(&ro, &["load", &oci.display().to_string()]);
    let line = r.err();
    let l = line.to_lowercase();
    assert!(
        line.contains(&ro_s) && (l.contains("read-only") || l.contains("permission")),
        "should name the root and say it is read-only: {line}"
    );
    assert_eq!(
        std::fs::read_dir(&ro).unwrap().count(),
        0,
        "nothing written"
    );
}
