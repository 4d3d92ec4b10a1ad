//! Shared helpers of the integration tests: a store in a temp dir, running the
//! real `storectl` binary, and assertions on its output and on the disk.
#![allow(dead_code, clippy::print_stderr)]

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use storectl_fixtures::{snapshot, Tree};

pub mod throttle;
pub mod tmux;

/// The `storectl` binary under test.
pub const STORECTL: &str = env!("CARGO_BIN_EXE_storectl");

/// The host's static busybox (Debian's busybox-static), to put a shell in
/// generated images; `None` when it is not installed.
pub fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Are we root (needed for mounts)?
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Fail a root-only test that runs without root. Such tests are marked
/// `#[ignore = "needs root"]`, so a plain `cargo test` shows them as ignored;
/// the README's test command runs them as root (`-- --include-ignored`).
#[macro_export]
macro_rules! require_root {
    () => {
        assert!(
            $crate::common::is_root(),
            "needs root (overlay mounts, devices, ownership): run as root"
        );
    };
}

/// Is `name` exactly 64 lowercase hex digits?
pub fn is_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A test work dir `T` with a store root at `T/store`.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

/// What one run of `storectl` did.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// A finished process's output as a `Run` (of `args`).
    pub fn from_output(args: Vec<String>, out: Output) -> Run {
        Run::from(args, out)
    }

    fn from(args: Vec<String>, out: Output) -> Run {
        Run {
            args,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "storectl {:?}\n  exit: {:?}\n  stdout: {}\n  stderr: {}",
            self.args,
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Assert exit 0; returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "expected success:\n{}", self.describe());
        self.stdout
    }

    /// Assert exit 1 with one error line on stderr, the last one (progress
    /// lines may precede it; no other line may look like an error or a
    /// panic); returns it.
    pub fn err(self) -> String {
        assert_eq!(self.code, Some(1), "expected exit 1:\n{}", self.describe());
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let Some((last, before)) = lines.split_last() else {
            panic!("expected an error on stderr:\n{}", self.describe());
        };
        let noisy: Vec<&&str> = before
            .iter()
            .filter(|l| {
                let l = l.to_lowercase();
                l.contains("error") || l.contains("panic")
            })
            .collect();
        assert!(
            noisy.is_empty() && !last.contains("panicked"),
            "expected exactly one error line on stderr:\n{}",
            self.describe()
        );
        last.to_string()
    }

    /// Assert exit 1 and that the error line contains `what`
    /// (case-insensitive); returns the line.
    pub fn err_containing(self, what: &str) -> String {
        let d = self.describe();
        let line = self.err();
        assert!(
            line.to_lowercase().contains(&what.to_lowercase()),
            "expected the error to mention {what:?}:\n{d}"
        );
        line
    }
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("storectl-test-")
            .tempdir()
            .expect("temp dir");
        let root = tmp.path().join("store");
        Env { tmp, root }
    }

    /// `T`.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// `T/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Run `storectl --root ROOT args…`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_root(&self.root, args)
    }

    /// Run `storectl --root root args…`.
    pub fn run_root(&self, root: &Path, args: &[&str]) -> Run {
        self.run_with(root, args, std::process::Stdio::null())
    }

    /// Run `storectl --root ROOT args… < input`.
    pub fn run_stdin(&self, args: &[&str], input: &Path) -> Run {
        let file = std::fs::File::open(input).expect("the input file");
        self.run_with(&self.root, args, file.into())
    }

    fn run_with(&self, root: &Path, args: &[&str], stdin: std::process::Stdio) -> Run {
        let mut all = vec!["--root".to_string(), root.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        let out = Command::new(STORECTL)
            .args(&all)
            .env_remove("STORECTL_ROOT")
            .env_remove("STORECTL_LOG")
            .stdin(stdin)
            .output()
            .expect("run storectl");
        Run::from(all, out)
    }

    /// `load` that must succeed; returns the image id (last stdout line).
    pub fn load(&self, source: &Path, extra: &[&str]) -> String {
        self.load_spec(&source.display().to_string(), extra)
    }

    /// `load SPEC` (e.g. `DIR:TAG`) that must succeed; returns the image id.
    pub fn load_spec(&self, spec: &str, extra: &[&str]) -> String {
        let mut args = vec!["load", spec];
        args.extend_from_slice(extra);
        let out = self.run(&args).ok();
        let id = out.lines().last().unwrap_or("").trim().to_string();
        assert!(
            is_id(&id),
            "load printed {out:?}, last line is not a 64-hex id"
        );
        id
    }

    /// `ls --json`, parsed.
    pub fn ls(&self) -> Vec<Value> {
        let out = self.run(&["ls", "--json"]).ok();
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ls --json is not JSON ({e}): {out}"));
        v.as_array()
            .unwrap_or_else(|| panic!("ls --json is not an array: {out}"))
            .clone()
    }

    /// The `ls --json` object of image `id`.
    pub fn ls_image(&self, id: &str) -> Value {
        self.ls()
            .into_iter()
            .find(|i| i["id"] == id)
            .unwrap_or_else(|| panic!("image {id} not in ls --json"))
    }

    /// `ls --json` layers of image `id`, base first.
    pub fn image_layers(&self, id: &str) -> Vec<String> {
        strings(&self.ls_image(id)["layers"])
    }

    /// `ls --json` names of image `id`.
    pub fn image_names(&self, id: &str) -> Vec<String> {
        strings(&self.ls_image(id)["names"])
    }

    /// 64-hex entries of `ROOT/sub` and of `ROOT/sub/RO`.
    pub fn ids_in(&self, sub: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for d in [self.root.join(sub), self.root.join(sub).join("RO")] {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if is_id(&n) {
                        out.insert(n);
                    }
                }
            }
        }
        out
    }

    /// The layer records on disk (`overlay-layers/<id>`).
    pub fn layer_records(&self) -> BTreeSet<String> {
        self.ids_in("overlay-layers")
    }

    /// The layer dirs on disk (`overlay/<id>`).
    pub fn layer_dirs(&self) -> BTreeSet<String> {
        self.ids_in("overlay")
    }

    /// The image records on disk (`overlay-images/<id>`).
    pub fn image_records(&self) -> BTreeSet<String> {
        self.ids_in("overlay-images")
    }

    /// Non-dot entries of `ROOT/sub` other than the structural `RO` and `l`.
    pub fn visible_entries(&self, sub: &str) -> Vec<String> {
        let mut out = Vec::new();
        for d in [self.root.join(sub), self.root.join(sub).join("RO")] {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if !n.starts_with('.') && n != "RO" && n != "l" {
                        out.push(format!("{}/{n}", d.display()));
                    }
                }
            }
        }
        out
    }

    /// Nothing is visible in the store: `ls --json` is empty and no layer or
    /// image (no non-dot entry) is on disk.
    pub fn assert_store_empty(&self, what: &str) {
        let ls = self.ls();
        assert!(ls.is_empty(), "{what}: ls --json lists images: {ls:?}");
        for sub in ["overlay-layers", "overlay-images", "overlay"] {
            let v = self.visible_entries(sub);
            assert!(v.is_empty(), "{what}: left behind in {sub}: {v:?}");
        }
        if let Ok(rd) = std::fs::read_dir(self.root.join("overlay/l")) {
            let links: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
            assert!(links.is_empty(), "{what}: short-name links left: {links:?}");
        }
    }

    /// `mount IMAGE` that must succeed; the mount is undone on drop.
    pub fn mount(&self, image: &str) -> Mounted<'_> {
        let out = self.run(&["mount", image]).ok();
        let path = PathBuf::from(out.lines().last().unwrap_or("").trim());
        assert!(path.is_absolute(), "mount printed {out:?}");
        assert!(
            is_mountpoint(&path),
            "{} is not a mount point after `mount`",
            path.display()
        );
        Mounted {
            env: self,
            image: image.to_string(),
            path,
            done: false,
        }
    }
}

/// A mounted image; unmounted (with `storectl umount`, or `umount -l` as a
/// fallback) on drop.
pub struct Mounted<'a> {
    env: &'a Env,
    image: String,
    pub path: PathBuf,
    done: bool,
}

impl Mounted<'_> {
    /// `umount IMAGE` that must succeed and remove the mount.
    pub fn umount(mut self) {
        self.done = true;
        self.env.run(&["umount", &self.image]).ok();
        assert!(
            !is_mountpoint(&self.path),
            "{} is still mounted after `umount`",
            self.path.display()
        );
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = self.env.run(&["umount", &self.image]);
        if is_mountpoint(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Is `path` a mount point (listed in /proc/self/mountinfo)?
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    let want = canon.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m.replace("\\040", " ") == want)
}

/// A JSON array of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

/// Snapshot of `dir` minus the subtree `exclude` (a direct child name), plus
/// the link count of every non-directory (a hardlink made to a file outside
/// the store changes its count).
pub fn outside_state(dir: &Path, exclude: &str) -> Vec<String> {
    let tree: Tree = snapshot(dir).expect("snapshot");
    tree.iter()
        .filter(|(p, _)| *p != exclude && !p.starts_with(&format!("{exclude}/")))
        .map(|(p, n)| {
            let nlink = std::fs::symlink_metadata(dir.join(p)).map_or(0, |m| m.nlink());
            format!("{p}: {n:?} nlink {nlink}")
        })
        .collect()
}

/// Hardlink groups must share one inode in `mount`.
pub fn assert_hardlinks(mount: &Path, groups: &[Vec<String>], what: &str) {
    for g in groups {
        let inos: BTreeSet<(u64, u64)> = g
            .iter()
            .map(|p| {
                let m = std::fs::symlink_metadata(mount.join(p))
                    .unwrap_or_else(|e| panic!("{what}: {p}: {e}"));
                (m.dev(), m.ino())
            })
            .collect();
        assert_eq!(
            inos.len(),
            1,
            "{what}: hardlinks {g:?} are not one inode: {inos:?}"
        );
    }
}

/// Set the share's grace period for removed layers
/// (`removed_layers_grace_secs` in `storectl-share.json`; 0 = a writer's
/// `rmi` deletes them with the image, which tests of removal mechanics use).
pub fn set_removed_layers_grace(share: &Path, secs: u64) {
    let path = share.join("storectl-share.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).expect("storectl-share.json"))
        .expect("storectl-share.json is JSON");
    v["removed_layers_grace_secs"] = serde_json::json!(secs);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).expect("storectl-share.json");
}
