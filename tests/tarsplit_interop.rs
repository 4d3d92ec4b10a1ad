//! Our tar-split metadata against the reference implementation, Debian's
//! `tar-split` (vbatts/tar-split, what containers/storage uses):
//!
//! * `tar-split asm` rebuilds every layer of a loaded fixture, byte for byte,
//!   from our `<id>.tar-split.gz` and the layer's `diff/` (whiteouts in
//!   overlay form, hardlinks, xattrs, long names, …);
//! * metadata written by `tar-split disasm` replaces ours, and
//!   `storectl verify` (our reassembly) still matches every diffID.
//!
//! Skips, saying why, when `tar-split` is not installed.
#![allow(clippy::print_stderr)]

mod common;

use std::process::{Command, Stdio};

use common::Env;
use storectl_fixtures::registry::have;
use storectl_fixtures::{sha256_digest, valid, write_oci_layout};

fn tar_split(args: &[&str]) -> Vec<u8> {
    let out = Command::new("tar-split")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("tar-split runs");
    assert!(
        out.status.success(),
        "tar-split {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
#[ignore = "needs root"]
fn reference_tar_split_reads_and_writes_our_metadata() {
    require_root!();
    if !have("tar-split") {
        eprintln!("skipping: tar-split is not installed (apt-get install tar-split)");
        return;
    }
    let mut layers_checked = 0;
    for f in valid() {
        let env = Env::new();
        let oci = env.path("oci");
        let built = write_oci_layout(&oci, std::slice::from_ref(&f.image))
            .unwrap()
            .remove(0);
        env.load(&oci, &[]);
        for (layer, id) in built.layers.iter().zip(built.chain_ids()) {
            let tar = layer.tar.as_ref().expect("an uncompressed tar");
            let split = env
                .root
                .join("overlay-layers")
                .join(&id)
                .join(format!("{id}.tar-split.gz"));
            let diff = env.root.join("overlay").join(&id).join("diff");
            // 1. The reference assembler, our metadata.
            let out = env.path(&format!("asm-{id}.tar"));
            tar_split(&[
                "asm",
                "--input",
                &split.display().to_string(),
                "--path",
                &diff.display().to_string(),
                "--output",
                &out.display().to_string(),
            ]);
            let rebuilt = std::fs::read(&out).unwrap();
            assert_eq!(
                sha256_digest(&rebuilt),
                layer.diff_id,
                "{}: tar-split asm of layer {id} from our metadata",
                f.name
            );
            // 2. The reference disassembler's metadata, our assembler.
            let original = env.path(&format!("layer-{id}.tar"));
            std::fs::write(&original, tar).unwrap();
            let theirs = env.path(&format!("theirs-{id}.json.gz"));
            tar_split(&[
                "disasm",
                "--no-stdout",
                "--output",
                &theirs.display().to_string(),
                &original.display().to_string(),
            ]);
            std::fs::copy(&theirs, &split).unwrap();
            layers_checked += 1;
        }
        let out = env.run(&["verify"]).ok();
        assert!(
            out.lines().filter(|l| l.starts_with("ok ")).count() == built.layers.len(),
            "{}: verify with tar-split's own metadata:\n{out}",
            f.name
        );
    }
    assert!(layers_checked >= 4, "{layers_checked} layers checked");
}
