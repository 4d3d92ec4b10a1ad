//! Every valid fixture, as an OCI layout and as a docker archive (plain,
//! gzip- and zstd-compressed): load it, check what `ls`/`inspect` report,
//! mount it, compare the merged view with the tree the fixture predicts,
//! check hardlinks, unmount.

#![allow(clippy::print_stderr)]

mod common;

use std::path::Path;

use common::Env;
use storectl_fixtures::{
    assert_trees_eq, expected_merged, snapshot, valid, write_docker_archive, write_oci_layout,
    Compression, Fixture,
};

#[derive(Debug, Clone, Copy)]
enum Form {
    Oci,
    DockerArchive,
    /// `docker save | gzip` (or zstd): the whole archive compressed.
    Compressed(Compression),
}

fn check(f: &Fixture, form: Form) {
    require_root!();
    let env = Env::new();
    let what = format!("{} ({form:?})", f.name);
    let images = std::slice::from_ref(&f.image);
    let (source, built) = match form {
        Form::Oci => {
            let p = env.path("oci");
            let b = write_oci_layout(&p, images).unwrap();
            (p, b)
        }
        Form::DockerArchive => {
            let p = env.path("image.tar");
            let b = write_docker_archive(&p, images).unwrap();
            (p, b)
        }
        Form::Compressed(c) => {
            let plain = env.path("image.tar");
            let b = write_docker_archive(&plain, images).unwrap();
            let p = env.path("image.tar.z");
            std::fs::write(&p, c.compress(&std::fs::read(&plain).unwrap())).unwrap();
            std::fs::remove_file(&plain).unwrap();
            (p, b)
        }
    };
    let built = &built[0];
    let id = env.load(&source, &[]);
    assert_eq!(id, built.id(), "{what}: the image id is the config digest");

    // ls --json
    let ls = env.ls();
    assert_eq!(ls.len(), 1, "{what}: {ls:?}");
    let entry = &ls[0];
    assert_eq!(entry["id"], id.as_str());
    assert_eq!(
        common::strings(&entry["layers"]),
        built.chain_ids(),
        "{what}: layers are the chain ids, base first"
    );
    let name = f.image.name.clone().unwrap();
    assert!(
        common::strings(&entry["names"]).contains(&name),
        "{what}: names {:?} lack {name}",
        entry["names"]
    );
    let size = entry["size"].as_u64().expect("size is a number");
    let tar_total: usize = built
        .layers
        .iter()
        .map(|l| l.tar.as_ref().unwrap().len())
        .sum();
    assert!(
        size > 0 && size <= tar_total as u64 * 2,
        "{what}: size {size}"
    );
    assert!(
        entry["created"].is_string(),
        "{what}: created {:?}",
        entry["created"]
    );
    // Every layer is on disk, and only those.
    let on_disk = env.layer_records();
    let want: std::collections::BTreeSet<String> = built.chain_ids().into_iter().collect();
    assert_eq!(on_disk, want, "{what}: layer records");
    assert_eq!(env.layer_dirs(), want, "{what}: layer dirs");
    assert_eq!(
        env.image_records(),
        [id.clone()].into_iter().collect(),
        "{what}: image records"
    );

    // inspect, by name and by id
    for key in [name.as_str(), id.as_str()] {
        let out = env.run(&["inspect", key]).ok();
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{what}: inspect {key} is not JSON ({e}): {out}"));
        assert!(v.is_object(), "{what}: inspect is not an object");
        for d in built.diff_ids() {
            assert!(out.contains(&d), "{what}: inspect lacks diff id {d}");
        }
        assert!(out.contains(&id), "{what}: inspect lacks the id");
    }
    // the table lists it
    let table = env.run(&["ls"]).ok();
    assert!(
        table.contains(&id[..12]),
        "{what}: ls table lacks the short id:\n{table}"
    );

    let (expected, links) = expected_merged(&f.image);
    let m = env.mount(&id);
    let actual = snapshot(&m.path).unwrap();
    assert_trees_eq(&expected, &actual, &format!("merged view of {what}"));
    common::assert_hardlinks(&m.path, &links, &what);
    // read-only
    let err = std::fs::write(m.path.join("new-file"), "x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(30),
        "{what}: mount is not read-only: {err}"
    );
    m.umount();
    // mounting by name works as well
    let m = env.mount(&name);
    assert!(m.path.join("etc").is_dir());
    m.umount();
    // umount of an image that is not mounted is an error
    env.run(&["umount", &id]).err();
}

#[test]
#[ignore = "needs root"]
fn layered_oci() {
    check(&valid()[0], Form::Oci);
}

#[test]
#[ignore = "needs root"]
fn layered_docker_archive() {
    check(&valid()[0], Form::DockerArchive);
}

#[test]
#[ignore = "needs root"]
fn layered_compressed_docker_archives() {
    for c in [Compression::Gzip, Compression::Zstd] {
        check(&valid()[0], Form::Compressed(c));
    }
}

/// `docker save IMAGE | storectl load -`, plain and gzip-compressed.
#[test]
#[ignore = "needs root"]
fn archive_on_standard_input() {
    require_root!();
    let f = &valid()[0];
    for c in [None, Some(Compression::Gzip)] {
        let env = Env::new();
        let plain = env.path("image.tar");
        let built = write_docker_archive(&plain, std::slice::from_ref(&f.image))
            .unwrap()
            .remove(0);
        let input = match c {
            None => plain,
            Some(c) => {
                let p = env.path("image.tar.z");
                std::fs::write(&p, c.compress(&std::fs::read(&plain).unwrap())).unwrap();
                p
            }
        };
        let out = env.run_stdin(&["load", "-q", "-"], &input).ok();
        assert_eq!(out.trim(), built.id(), "{c:?}");
        assert_eq!(env.layer_records().len(), built.layers.len(), "{c:?}");
    }
    let env = Env::new();
    let err = env.run_stdin(&["load", "-"], Path::new("/dev/null")).err();
    assert!(err.contains("<stdin>"), "{err}");
}

/// A compressed archive cut short is a clear error that leaves nothing in the
/// store (the decompressed copy is an unnamed temporary file).
#[test]
fn truncated_compressed_archive_leaves_nothing() {
    let env = Env::new();
    let plain = env.path("image.tar");
    write_docker_archive(&plain, std::slice::from_ref(&valid()[0].image)).unwrap();
    let gz = Compression::Gzip.compress(&std::fs::read(&plain).unwrap());
    let cut = env.path("cut.tar.gz");
    std::fs::write(&cut, &gz[..gz.len() / 2]).unwrap();
    let err = env.run(&["load", cut.to_str().unwrap()]).err();
    assert!(
        err.contains("cut.tar.gz") && err.contains("gzip"),
        "the error names the file and the compression: {err}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&env.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            ![
                "overlay",
                "overlay-layers",
                "overlay-images",
                "storage.lock",
                "generation",
            ]
            .contains(&n.as_str())
        })
        .collect();
    left.sort();
    assert!(left.is_empty(), "left in the root: {left:?}");
    assert!(env.layer_records().is_empty() && env.layer_dirs().is_empty());
    assert!(env.image_records().is_empty());
}

#[test]
#[ignore = "needs root"]
fn shared_images_each_alone() {
    for f in valid().iter().filter(|f| f.name.starts_with("shared-")) {
        check(f, Form::Oci);
        check(f, Form::DockerArchive);
    }
}

/// `.wh.X` and `X` in one layer (BuildKit's and containerd's way of writing
/// a path that changed type) loads, shows the new entries, and hides the old
/// directories' contents; `verify` rebuilds its layers byte for byte.
#[test]
#[ignore = "needs root"]
fn whiteout_and_entry_of_one_name() {
    let f = valid()
        .into_iter()
        .find(|f| f.name == "type-change")
        .unwrap();
    check(&f, Form::Oci);
    check(&f, Form::DockerArchive);
    let env = Env::new();
    let p = env.path("oci");
    write_oci_layout(&p, std::slice::from_ref(&f.image)).unwrap();
    env.load(&p, &[]);
    let out = env.run(&["verify"]).ok();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        2,
        "{out}"
    );
}

#[test]
fn catalogue_is_covered() {
    // The tests above index the catalogue: keep them in step with it.
    let names: Vec<&str> = valid().iter().map(|f| f.name).collect();
    assert_eq!(names, ["layered", "shared-a", "shared-b", "type-change"]);
}
