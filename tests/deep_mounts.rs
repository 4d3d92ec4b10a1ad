//! Deep images and the flags of `storectl mount`, end to end:
//!
//! * `image_of_128_layers_mounts_on_a_local_store`,
//!   `image_of_128_layers_mounts_on_a_writer_and_a_reader` — docker's
//!   practical maximum mounts everywhere (the lower dirs go to the kernel one
//!   by one, `lowerdir+`, instead of in one page of mount options); the
//!   merged view is what the image holds.
//! * `mount_is_read_only_nodev_nosuid` — a read-only look at an image never
//!   gives its device nodes or setuid files their power.
//!
//! overlayfs' own maximum, 500 layers, and the one-page legacy fallback are
//! tested in the overlay crate (`mount::tests`).
#![allow(clippy::print_stderr)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::Env;
use storectl_fixtures::{
    assert_trees_eq, expected_tree, snapshot, write_oci_layout, Compression, Entry, Image, Layer,
};

/// An image of `n` tiny layers: layer `i` adds `layers/<i>` and rewrites
/// `top`; every tenth layer deletes the file of the layer below it.
fn deep_image(n: usize) -> Image {
    let layers = (0..n)
        .map(|i| {
            let mut entries = vec![
                Entry::dir("layers"),
                Entry::file(&format!("layers/{i}"), format!("layer {i}\n")),
                Entry::file("top", format!("{i}\n")),
            ];
            if i % 10 == 9 {
                entries.push(Entry::whiteout(&format!("layers/{}", i - 1)));
            }
            Layer::new(entries, Compression::None)
        })
        .collect();
    Image::new(layers).named(&format!("localhost/deep-{n}:v1"))
}

/// The options field of `target`'s line in /proc/self/mountinfo (the
/// per-mount flags: `ro,nosuid,nodev,…`).
fn mount_flags(target: &Path) -> Vec<String> {
    let target = target.canonicalize().expect("mount point");
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4).map(Path::new) == Some(target.as_path()))
        .unwrap_or_else(|| panic!("{} is not in mountinfo", target.display()));
    line.split(' ')
        .nth(5)
        .unwrap_or("")
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Mount image `id` on `root`, compare the merged view with `image`, check
/// the mount's flags, unmount.
#[track_caller]
fn check_mount(env: &Env, root: &Path, id: &str, image: &Image, what: &str) {
    let started = std::time::Instant::now();
    let out = env.run_root(root, &["mount", id]).ok();
    eprintln!("{what}: storectl mount took {:?}", started.elapsed());
    let path = PathBuf::from(out.lines().last().unwrap_or("").trim());
    let guard = Unmount(path.clone());
    assert!(common::is_mountpoint(&path), "{what}: {out}");
    let tree = snapshot(&path).expect("read the mount");
    let flags = mount_flags(&path);
    assert_trees_eq(&expected_tree(image), &tree, what);
    for flag in ["ro", "nodev", "nosuid"] {
        assert!(
            flags.iter().any(|f| f == flag),
            "{what}: {flag} in {flags:?}"
        );
    }
    env.run_root(root, &["umount", id]).ok();
    assert!(!common::is_mountpoint(&path), "{what}: still mounted");
    drop(guard);
}

/// Detaches a mount left behind by a failed check.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if common::is_mountpoint(&self.0) {
            let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

#[test]
#[ignore = "needs root"]
fn image_of_128_layers_mounts_on_a_local_store() {
    require_root!();
    let env = Env::new();
    let image = deep_image(128);
    let oci = env.path("oci");
    let built = write_oci_layout(&oci, std::slice::from_ref(&image))
        .unwrap()
        .remove(0);
    let id = env.load(&oci, &[]);
    assert_eq!(id, built.id());
    assert_eq!(env.image_layers(&id).len(), 128);
    check_mount(&env, &env.root, &id, &image, "128 layers, local store");
}

#[test]
#[ignore = "needs root"]
fn image_of_128_layers_mounts_on_a_writer_and_a_reader() {
    require_root!();
    let env = Env::new();
    // Canonical paths: init canonicalizes the share.
    let base = env.dir().canonicalize().unwrap();
    let share = base.join("share");
    fs::create_dir(&share).unwrap();
    let share_arg = share.display().to_string();
    let writer = base.join("writer");
    let reader = base.join("reader");
    env.run_root(
        &writer,
        &["init", "--shared", &share_arg, "--role", "writer"],
    )
    .ok();
    env.run_root(
        &reader,
        &["init", "--shared", &share_arg, "--role", "reader"],
    )
    .ok();
    let image = deep_image(128);
    let oci = env.path("oci");
    write_oci_layout(&oci, std::slice::from_ref(&image)).unwrap();
    let out = env
        .run_root(&writer, &["load", &oci.display().to_string()])
        .ok();
    let id = out.lines().last().unwrap_or("").trim().to_owned();
    assert!(common::is_id(&id), "{out}");
    check_mount(&env, &writer, &id, &image, "128 layers, share writer");
    // The reader's lower dirs are `<root>/overlay/RO/<64 hex>/diff`: long
    // paths, no local short names.
    let ls = env.run_root(&reader, &["ls", "--json"]).ok();
    assert!(ls.contains(&id), "the reader lists the image: {ls}");
    check_mount(&env, &reader, &id, &image, "128 layers, share reader");
}

/// `storectl mount IMAGE` is a read-only look: `ro,nodev,nosuid`, so a
/// device node in the image cannot be opened through it.
#[test]
#[ignore = "needs root"]
fn mount_is_read_only_nodev_nosuid() {
    require_root!();
    let env = Env::new();
    let image = Image::new(vec![Layer::new(
        vec![
            Entry::dir("dev"),
            Entry::char_dev("dev/null", 1, 3),
            Entry::dir("bin"),
            Entry::file("bin/su", "setuid\n").mode(0o4755),
        ],
        Compression::Gzip,
    )])
    .named("localhost/flags:v1");
    let oci = env.path("oci");
    write_oci_layout(&oci, std::slice::from_ref(&image)).unwrap();
    let id = env.load(&oci, &[]);
    let m = env.mount(&id);
    let flags = mount_flags(&m.path);
    let vfs = rustix::fs::statvfs(&m.path).expect("statvfs");
    let open_dev = fs::File::open(m.path.join("dev/null")).map(|_| ());
    m.umount();
    for flag in ["ro", "nodev", "nosuid"] {
        assert!(flags.iter().any(|f| f == flag), "{flag} in {flags:?}");
    }
    use rustix::fs::StatVfsMountFlags as F;
    assert!(
        vfs.f_flag.contains(F::RDONLY | F::NODEV | F::NOSUID),
        "{:?}",
        vfs.f_flag
    );
    let err = open_dev.expect_err("a device node of the image opens");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
}
