//! The CLI as a podman user expects it: no panics (closed pipes, non-ASCII
//! and control characters in records), `ls` columns and flags, `load
//! --name`, `save` formats and names, `rmi` of several names and images.

#![allow(clippy::print_stderr)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{is_id, strings, Env, STORECTL};
use serde_json::Value;
use storectl_fixtures::{write_docker_archive, write_oci_layout, Compression, Entry, Image, Layer};

/// A small image of plain files (loads without root), `layers` layers.
fn plain(name: &str, seed: &str, layers: usize) -> Image {
    let mut ls = vec![Layer::new(
        vec![
            Entry::dir("etc"),
            Entry::file("etc/base", format!("base of {seed}\n")),
        ],
        Compression::Gzip,
    )];
    for i in 1..layers {
        ls.push(Layer::new(
            vec![Entry::file(&format!("etc/l{i}"), format!("{seed} {i}\n"))],
            Compression::None,
        ));
    }
    Image::new(ls).named(name)
}

/// The image record `images.json` of image `id`, edited by `f`.
fn edit_record(env: &Env, id: &str, f: impl FnOnce(&mut Value)) {
    let path = env.root.join("overlay-images").join(id).join("images.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// Run `storectl --root ROOT args…` with stdout a pipe whose reader is
/// already gone; returns (exit code, stderr).
fn run_into_closed_pipe(env: &Env, args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(STORECTL)
        .arg("--root")
        .arg(&env.root)
        .args(args)
        .env_remove("STORECTL_ROOT")
        .env_remove("STORECTL_LOG")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code(), err)
}

#[test]
#[ignore = "needs root"]
fn closed_stdout_and_hostile_text_never_panic() {
    require_root!();
    let env = Env::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let oci = env.path(&format!("oci{i}"));
        let img = plain(&format!("localhost/img{i}:v{i}"), &format!("s{i}"), 1);
        write_oci_layout(&oci, std::slice::from_ref(&img)).unwrap();
        ids.push(env.load(&oci, &[]));
    }
    // Many names: more output than a pipe holds.
    for n in 0..300 {
        env.run(&["tag", &ids[0], &format!("localhost/many:{n}")])
            .ok();
    }
    for args in [
        &["ls"][..],
        &["ls", "--json"],
        &["ls", "--layers"],
        &["inspect", &ids[1]],
        &["info"],
        &["verify"],
    ] {
        let (code, err) = run_into_closed_pipe(&env, args);
        assert_eq!(code, Some(0), "{args:?} into a closed pipe: {err}");
        assert!(err.is_empty(), "{args:?} printed on stderr: {err}");
    }
    // `storectl ls | head -1`, for real.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{STORECTL}' --root '{}' ls 2>err | head -1",
            env.root.display()
        ))
        .current_dir(env.dir())
        .output()
        .unwrap();
    let err = std::fs::read_to_string(env.path("err")).unwrap();
    assert!(out.status.success() && err.is_empty(), "{out:?} {err}");

    // Non-ASCII and control characters in a record: no panic, nothing raw.
    edit_record(&env, &ids[1], |v| {
        v["created"] = "ééééééééééééééé2023-11-14".into();
        v["names"] = serde_json::json!([
            "localhost/évil:ñ",
            "localhost/x:y\n+ image forged",
            "localhost/clear:\u{1b}[2J",
            "localhost/c1:\u{9b}31m",
        ]);
    });
    edit_record(&env, &ids[2], |v| {
        v["created"] = "2023-11-14T22:13:20\u{1b}[2J".into();
    });
    for args in [
        &["ls"][..],
        &["ls", "--layers"],
        &["ls", "--no-trunc"],
        &["ls", "--json"],
        &["inspect", &ids[1]],
        &["rmi", "localhost/nope:y\n+ image forged\u{1b}[2J"],
        &["inspect", "localhost/nope:\u{1b}[2J"],
    ] {
        let run = env.run(args);
        assert!(
            run.code == Some(0) || run.code == Some(1),
            "{args:?}: exit {:?}: {}",
            run.code,
            run.stderr
        );
        for (what, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
            let raw: Vec<char> = text
                .chars()
                .filter(|c| *c != '\n' && c.is_control())
                .collect();
            assert!(
                raw.is_empty(),
                "{args:?}: raw controls {raw:?} on {what}: {text:?}"
            );
            assert!(
                !text.lines().any(|l| l.starts_with("+ image forged")),
                "{args:?}: a forged line on {what}: {text}"
            );
        }
    }
    let ls = env.run(&["ls"]).ok();
    assert!(ls.contains("localhost/évil"), "{ls}");
    assert!(
        ls.contains("\\x1b[2J") && ls.contains("y\\n+ image forged"),
        "{ls}"
    );
    // JSON keeps the values (escaped as JSON).
    let names = env.image_names(&ids[1]);
    assert!(
        names.contains(&"localhost/clear:\u{1b}[2J".to_string()),
        "{names:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn ls_columns_created_no_trunc_quiet_and_format() {
    require_root!();
    let env = Env::new();
    let oci = env.path("oci");
    let img = plain("localhost/a-rather-long-repository-name/x:1", "a", 2);
    write_oci_layout(&oci, std::slice::from_ref(&img)).unwrap();
    let id = env.load(&oci, &[]);
    env.run(&["tag", &id, "b:2"]).ok();
    let out = env.run(&["ls"]).ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("REPOSITORY"), "{out}");
    // Every column starts at the same place, two spaces after the widest cell.
    let widest = "localhost/a-rather-long-repository-name/x".len();
    for l in &lines {
        assert_eq!(
            l.char_indices().nth(widest + 2).map(|(_, c)| c),
            l[widest + 2..].chars().next(),
        );
        assert_ne!(
            &l[widest + 2..widest + 3],
            " ",
            "column not at its content: {out}"
        );
        assert_eq!(&l[widest..widest + 2], "  ", "{out}");
    }
    let tag_col = lines[0].find("TAG").unwrap();
    assert_eq!(tag_col, widest + 2, "{out}");
    // The TAG column is as wide as its widest cell ("TAG").
    assert_eq!(lines[0].find("IMAGE ID"), Some(tag_col + 5), "{out}");
    // CREATED as podman: the fixture's 2023 time is years ago.
    assert!(
        lines[1].contains(" years ago") && !lines[1].contains("2023-"),
        "{out}"
    );
    assert!(
        lines[1].contains(&id[..12]) && !lines[1].contains(&id[..13]),
        "{out}"
    );
    // --no-trunc: the full id.
    let full = env.run(&["ls", "--no-trunc"]).ok();
    assert!(full.contains(&format!("sha256:{id}")), "{full}");
    // -q / --quiet: each id once.
    assert_eq!(env.run(&["ls", "-q"]).ok(), format!("{}\n", &id[..12]));
    assert_eq!(
        env.run(&["ls", "--quiet", "--no-trunc"]).ok(),
        format!("sha256:{id}\n")
    );
    // --format json is --json.
    let a = env.run(&["ls", "--format", "json"]).ok();
    let b = env.run(&["ls", "--json"]).ok();
    assert_eq!(a, b);
    let v: Value = serde_json::from_str(&a).unwrap();
    assert_eq!(v[0]["id"], id.as_str());
    // --layers: each layer by its layer id, labelled digests.
    let layers = env.run(&["ls", "--layers"]).ok();
    for l in env.image_layers(&id) {
        assert!(layers.contains(&format!("layer  {}", &l[..12])), "{layers}");
    }
    assert!(layers.contains("diffID"), "{layers}");
}

#[test]
#[ignore = "needs root"]
fn load_name_adds_a_name_and_never_picks() {
    require_root!();
    let env = Env::new();
    let img = plain("localhost/from-archive:1", "n", 2);
    let archive = env.path("one.tar");
    let built = write_docker_archive(&archive, std::slice::from_ref(&img)).unwrap();
    // A file, whatever its RepoTags say.
    let id = env.load(&archive, &["--name", "busybox:1.36"]);
    assert_eq!(id, built[0].id());
    let names = env.image_names(&id);
    assert!(
        names.contains(&"docker.io/library/busybox:1.36".to_string())
            && names.contains(&"localhost/from-archive:1".to_string()),
        "{names:?}"
    );
    // From standard input.
    let run = env.run_stdin(&["load", "-", "--name", "localhost/stdin:x"], &archive);
    assert_eq!(run.ok().trim(), id);
    assert!(env
        .image_names(&id)
        .contains(&"localhost/stdin:x".to_string()));

    // Several images: PATH:TAG picks, --name alone does not.
    let two = [
        plain("localhost/m:a", "ma", 1),
        plain("localhost/m:b", "mb", 1),
    ];
    let multi = env.path("multi.tar");
    let built = write_docker_archive(&multi, &two).unwrap();
    env.run(&[
        "load",
        &multi.display().to_string(),
        "--name",
        "localhost/m:b",
    ])
    .err_containing("PATH:");
    let b = env.load_spec(
        &format!("{}:localhost/m:b", multi.display()),
        &["--name", "localhost/picked:1"],
    );
    assert_eq!(b, built[1].id());
    let names = env.image_names(&b);
    assert!(
        names.contains(&"localhost/picked:1".to_string()),
        "{names:?}"
    );
    let run = env.run_stdin(&["load", "-:localhost/m:a"], &multi);
    assert_eq!(run.ok().trim(), built[0].id());
}

/// `manifest.json` or `index.json` of a tarball.
fn tar_member(path: &Path, name: &str) -> Option<Value> {
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some(name) {
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            return Some(serde_json::from_str(&s).unwrap());
        }
    }
    None
}

#[test]
#[ignore = "needs root"]
fn save_formats_names_and_parent() {
    require_root!();
    let env = Env::new();
    let oci = env.path("oci");
    let img = plain("localhost/orig:1", "s", 2);
    write_oci_layout(&oci, std::slice::from_ref(&img)).unwrap();
    let id = env.load(&oci, &["--name", "busybox"]);
    let full = "docker.io/library/busybox:latest";

    // Default: a docker-archive carrying the name asked for, normalized.
    let tarball = env.path("busybox.tar");
    env.run(&[
        "save",
        "busybox",
        "-o",
        &tarball.display().to_string(),
        "-q",
    ])
    .ok();
    assert!(tarball.is_file());
    let m = tar_member(&tarball, "manifest.json").expect("a docker-archive");
    assert_eq!(strings(&m[0]["RepoTags"]), vec![full.to_string()]);
    // Saved again over it (as podman save -o): replaced.
    env.run(&[
        "save",
        "localhost/orig:1",
        "-o",
        &tarball.display().to_string(),
        "-q",
    ])
    .ok();
    let m = tar_member(&tarball, "manifest.json").expect("a docker-archive");
    assert_eq!(
        strings(&m[0]["RepoTags"]),
        vec!["localhost/orig:1".to_string()]
    );
    env.run(&[
        "save",
        "busybox",
        "-o",
        &tarball.display().to_string(),
        "-q",
    ])
    .ok();

    // oci-archive: an OCI layout in a tar, ref.name = the full name.
    let ociar = env.path("busybox-oci.tar");
    env.run(&[
        "save",
        "localhost/orig:1",
        "-o",
        &ociar.display().to_string(),
        "--format",
        "oci-archive",
        "-q",
    ])
    .ok();
    let index = tar_member(&ociar, "index.json").expect("an OCI archive");
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "localhost/orig:1"
    );
    assert!(tar_member(&ociar, "oci-layout").is_some());

    // oci-dir.
    let dir = env.path("busybox-oci");
    env.run(&[
        "save",
        "busybox",
        "-o",
        &dir.display().to_string(),
        "--format",
        "oci-dir",
        "-q",
    ])
    .ok();
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        full
    );

    // By id: no name (as podman).
    let byid = env.path("byid.tar");
    env.run(&["save", &id[..12], "-o", &byid.display().to_string(), "-q"])
        .ok();
    let m = tar_member(&byid, "manifest.json").unwrap();
    assert!(strings(&m[0]["RepoTags"]).is_empty(), "{m}");

    // A missing parent directory is an error, and is not created.
    let missing = env.path("no/such/dir/x.tar");
    env.run(&[
        "save",
        "busybox",
        "-o",
        &missing.display().to_string(),
        "-q",
    ])
    .err_containing("no/such/dir");
    assert!(!env.path("no").exists());

    // Each loads back as the same image, with the name it carries.
    for (path, name) in [
        (&tarball, Some(full)),
        (&ociar, Some("localhost/orig:1")),
        (&dir, Some(full)),
        (&byid, None),
    ] {
        let other = Env::new();
        assert_eq!(other.load(path, &[]), id, "{}", path.display());
        let names = other.image_names(&id);
        match name {
            Some(n) => assert_eq!(names, vec![n.to_string()], "{}", path.display()),
            None => assert!(names.is_empty(), "{names:?}"),
        }
    }
}

#[test]
#[ignore = "needs root"]
fn rmi_names_ids_force_and_several() {
    require_root!();
    let env = Env::new();
    let mut ids = Vec::new();
    for (i, name) in ["localhost/r:1", "localhost/s:1", "localhost/t:1"]
        .iter()
        .enumerate()
    {
        let oci = env.path(&format!("oci{i}"));
        write_oci_layout(&oci, &[plain(name, name, 1)]).unwrap();
        ids.push(env.load(&oci, &[]));
    }
    env.run(&["tag", &ids[0], "localhost/r:2"]).ok();
    // By id (full or prefix) with several names: refused without --force.
    for by in [ids[0].as_str(), &ids[0][..10]] {
        let line = env.run(&["rmi", by]).err_containing("must force");
        assert!(line.contains("multiple repositories"), "{line}");
    }
    assert_eq!(env.ls().len(), 3);
    // By name: only that name goes.
    let out = env.run(&["rmi", "localhost/r:2"]).ok();
    assert!(out.contains("Untagged: localhost/r:2"), "{out}");
    assert_eq!(env.image_names(&ids[0]), vec!["localhost/r:1".to_string()]);
    env.run(&["tag", &ids[0], "localhost/r:3"]).ok();
    let out = env.run(&["rmi", "--force", &ids[0]]).ok();
    assert!(out.contains(&format!("Deleted: {}", ids[0])), "{out}");
    // Several: goes on past a failure, reports it, exits 1 at the end.
    let run = env.run(&["rmi", "localhost/s:1", "localhost/nope:1", &ids[2]]);
    assert!(
        run.stdout.contains(&ids[1]) && run.stdout.contains(&ids[2]),
        "{run:?}"
    );
    let line = run.err_containing("nope");
    assert!(line.starts_with("storectl: error: "), "{line}");
    assert!(env.ls().is_empty());
    assert!(is_id(&ids[0]));
}

#[test]
fn argument_errors_are_clap_and_exit_2() {
    let env = Env::new();
    let run = env.run(&["ls", "--no-such-flag"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    let run = env.run(&["save", "x", "-o", "y", "--format", "nope"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    // --help into a closed pipe: quiet.
    let (code, err) = run_into_closed_pipe(&env, &["--help"]);
    assert!(!err.contains("panicked"), "{code:?} {err}");
}

#[test]
#[ignore = "needs root"]
fn one_name_per_layer_across_progress_ls_and_verify() {
    require_root!();
    let env = Env::new();
    let base = Layer::new(
        vec![Entry::dir("etc"), Entry::file("etc/base", "shared base\n")],
        Compression::Gzip,
    );
    let first = Image::new(vec![base.clone()]).named("localhost/first:1");
    let second = Image::new(vec![
        base,
        Layer::new(vec![Entry::file("etc/two", "two\n")], Compression::Gzip),
        Layer::new(vec![Entry::file("etc/three", "3\n")], Compression::None),
    ])
    .named("localhost/second:1");
    let (oci1, oci2) = (env.path("first"), env.path("second"));
    write_oci_layout(&oci1, &[first]).unwrap();
    write_oci_layout(&oci2, &[second]).unwrap();
    env.load(&oci1, &[]);
    let run = env.run(&["load", &oci2.display().to_string(), "--progress", "plain"]);
    let stderr = run.stderr.clone();
    let id = run.ok().trim().to_string();
    let layers = env.image_layers(&id);
    assert_eq!(layers.len(), 3);
    // Progress: one line per layer, by layer id; sizes labelled.
    let lines: Vec<&str> = stderr.lines().collect();
    for l in &layers {
        assert!(
            lines.iter().any(|line| line.starts_with(&l[..12])),
            "no progress line for layer {l}:\n{stderr}"
        );
    }
    assert!(
        stderr.contains(&format!("{} already exists", &layers[0][..12])),
        "{stderr}"
    );
    assert!(
        stderr.contains(" compressed\n") && stderr.contains(" uncompressed\n"),
        "{stderr}"
    );
    // Only the layers written count.
    assert!(
        stderr.contains("Loaded: 2 layers written, 1 already present ("),
        "{stderr}"
    );
    // ls --layers and verify name the same ids.
    let table = env.run(&["ls", "--layers"]).ok();
    let verify = env.run(&["verify", &id]).ok();
    for l in &layers {
        assert!(table.contains(&format!("layer  {}", &l[..12])), "{table}");
        assert!(verify.contains(&format!("ok        {l}")), "{verify}");
    }
    // JSON progress events carry the layer id beside the blob digest.
    env.run(&["rmi", &id]).ok();
    let out = env
        .run(&["load", &oci2.display().to_string(), "--progress", "json"])
        .ok();
    let named: std::collections::BTreeSet<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["layer"].as_str().map(String::from))
        .collect();
    assert_eq!(named, layers.iter().cloned().collect(), "{out}");
}

/// The commands of the first `sh` block of the README's "Using storectl"
/// section, one per line.
/// The lines of the first `sh` block after the README's heading `heading`.
fn readme_examples(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split(&format!("\n{heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("a section {heading:?}"));
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("an sh block");
    block.lines().map(String::from).collect()
}

#[test]
#[ignore = "needs root"]
fn readme_examples_run_as_written() {
    require_root!();
    let env = Env::new();
    // What scripts/demo.sh leaves in the working directory, made from
    // fixtures: with the host's busybox as its shell, for the containers
    // block's `runc run`.
    let runc = Command::new("runc").arg("--version").output().is_ok();
    let shell = common::busybox().filter(|_| runc);
    let img = match &shell {
        Some(bb) => Image::new(vec![
            Layer::new(
                vec![
                    Entry::dir("bin"),
                    Entry::file("bin/busybox", std::fs::read(bb).unwrap()).mode(0o755),
                    Entry::symlink("bin/sh", "busybox"),
                    Entry::dir("etc"),
                    Entry::dir("tmp").mode(0o1777),
                ],
                Compression::Gzip,
            ),
            Layer::new(vec![Entry::file("etc/motd", "readme\n")], Compression::None),
        ])
        .named("busybox:latest"),
        None => plain("busybox:latest", "readme", 2),
    };
    write_oci_layout(&env.path("busybox-oci"), std::slice::from_ref(&img)).unwrap();
    write_docker_archive(&env.path("busybox.tar"), std::slice::from_ref(&img)).unwrap();
    let gz = Command::new("gzip")
        .args(["-k", "busybox.tar"])
        .current_dir(env.dir())
        .status()
        .unwrap();
    assert!(gz.success());
    let bin_dir = Path::new(STORECTL).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The blocks in the order a reader types them, in one working
    // directory and store: the containers block uses what the first left.
    let mut examples = readme_examples("## Using storectl");
    assert!(examples.len() >= 10, "{examples:?}");
    let containers = readme_examples("### Containers");
    assert!(containers.len() >= 8, "{containers:?}");
    if shell.is_some() {
        examples.extend(containers);
    } else {
        eprintln!(
            "skipping the README's containers block: runc or busybox-static is not \
             installed (scripts/setup-debian.sh)"
        );
    }
    for line in &examples {
        let out = Command::new("bash")
            .args(["-o", "pipefail", "-c", line])
            .current_dir(env.dir())
            .env("PATH", &path)
            .env("STORECTL_ROOT", &env.root)
            .env_remove("STORECTL_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README example failed: {line}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
