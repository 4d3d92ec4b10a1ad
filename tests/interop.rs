//! Interop with images made by other tools: a busybox image built with umoci
//! (layer 1: busybox + files; layer 2: deletes one file, adds another),
//! converted to a docker archive by skopeo. Both forms load, mount, and run
//! `busybox echo` in a chroot; the deleted file is gone.
//! Skips, saying why, when umoci, skopeo or busybox-static is missing.
#![allow(clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Env;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn umoci(args: &[&str]) -> String {
    sh(Command::new("umoci").args(args))
}

/// Build `dir/oci` (tag `busybox`) and `dir/busybox.tar`.
fn build_image(dir: &Path, busybox: &Path) -> (PathBuf, PathBuf) {
    let oci = dir.join("oci");
    let image = format!("{}:busybox", oci.display());
    let bundle = dir.join("bundle");
    let bundle_s = bundle.display().to_string();
    umoci(&["init", "--layout", &oci.display().to_string()]);
    umoci(&["new", "--image", &image]);
    umoci(&["unpack", "--image", &image, &bundle_s]);
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.join("etc/motd"), "interop image\n").unwrap();
    std::fs::write(rootfs.join("etc/remove-me"), "deleted by layer 2\n").unwrap();
    umoci(&["repack", "--image", &image, &bundle_s]);
    std::fs::remove_dir_all(&bundle).unwrap();

    umoci(&["unpack", "--image", &image, &bundle_s]);
    std::fs::remove_file(rootfs.join("etc/remove-me")).unwrap();
    std::fs::write(rootfs.join("etc/hello"), "hello from layer 2\n").unwrap();
    umoci(&["repack", "--image", &image, &bundle_s]);
    std::fs::remove_dir_all(&bundle).unwrap();
    umoci(&["config", "--image", &image, "--config.cmd", "/bin/sh"]);
    umoci(&["gc", "--layout", &oci.display().to_string()]);

    let archive = dir.join("busybox.tar");
    sh(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{image}"),
        &format!(
            "docker-archive:{}:localhost/busybox-interop:latest",
            archive.display()
        ),
    ]));
    (oci, archive)
}

#[test]
#[ignore = "needs root"]
fn umoci_and_skopeo_images_load_mount_and_run() {
    require_root!();
    let Some(bb) = common::busybox() else {
        eprintln!("skipping: busybox-static is not installed");
        return;
    };
    for tool in ["umoci", "skopeo"] {
        if !have(tool) {
            eprintln!("skipping: {tool} is not installed");
            return;
        }
    }
    let work = tempfile::tempdir().unwrap();
    let (oci, archive) = build_image(work.path(), &bb);
    let host_busybox = std::fs::read(&bb).unwrap();

    for (form, spec) in [
        ("oci", format!("{}:busybox", oci.display())),
        ("docker-archive", archive.display().to_string()),
    ] {
        let env = Env::new();
        let id = env.load_spec(&spec, &[]);
        let layers = env.image_layers(&id);
        assert_eq!(layers.len(), 2, "{form}: two layers: {layers:?}");
        env.run(&["verify", &id]).ok();
        let m = env.mount(&id);
        let out = sh(Command::new("chroot")
            .arg(&m.path)
            .args(["/bin/busybox", "echo", "hello"]));
        assert_eq!(out.trim(), "hello", "{form}");
        let out = sh(Command::new("chroot").arg(&m.path).args([
            "/bin/sh",
            "-c",
            "cat /etc/hello; ls /etc",
        ]));
        assert!(out.contains("hello from layer 2"), "{form}: {out}");
        assert!(!out.contains("remove-me"), "{form}: {out}");
        assert!(
            std::fs::symlink_metadata(m.path.join("etc/remove-me")).is_err(),
            "{form}: the deleted file is visible"
        );
        assert_eq!(
            std::fs::read(m.path.join("bin/busybox")).unwrap(),
            host_busybox,
            "{form}: busybox differs"
        );
        assert_eq!(
            std::fs::read_to_string(m.path.join("etc/motd")).unwrap(),
            "interop image\n"
        );
        m.umount();
    }
}
