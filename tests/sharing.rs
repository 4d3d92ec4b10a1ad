//! Read-only sharing, end to end: one writer root and reader roots on one
//! share directory, each driven by its own `storectl` process.
//!
//! * `watch_sees_load_and_rmi_within_two_seconds` — default settings.
//! * `readers_never_change_the_share` — every reader verb, SIGKILLed readers;
//!   `reader_refuses_shared_changes_clearly` — `rmi`/`tag` say why.
//! * `writer_killed_at_random_points` — kill -9 during `load` / `rmi`, with a
//!   reader watching all along; the next writer start cleans up.
//!   `writer_killed_at_protocol_steps` — the same at each step of the
//!   publish and removal protocols (detected on the share), one world each.
//! * `watching_reader_gets_the_names_of_a_new_image` — names are part of
//!   what a reader sees first.
//! * `junk_on_the_share_is_skipped_once` — 30+ bad entries of 20+ kinds next
//!   to real images: one warning each, nothing read outside the share,
//!   entries that become valid are taken; `junk_generation_file_does_not_hang_readers`.
//! * `read_only_bind_mounted_share`; `share_going_away_is_not_an_empty_share`.
//! * `writer_next_to_junk_loads_pulls_and_removes` — the same junk kinds on
//!   a writer's share: load, pull (local docker-registry) and rmi go on,
//!   junk on a name to write goes to the share's `.storectl-trash`.
//! * `second_writer_is_refused_naming_the_holder` (with `--lock-timeout`:
//!   without it a second writer waits, see tests/writer.rs).
//!
//! Needs root (overlay mounts, bind mounts). Set `SHARING_SEED` to replay the
//! random kill points of a failed run (the seed is printed).
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use storectl_fixtures::gen::{Prng, TextGen};
use storectl_fixtures::{
    diff_trees, expected_tree, sha256_digest, snapshot, write_oci_layout, Compression, Entry,
    Image, Layer,
};

const STORECTL: &str = env!("CARGO_BIN_EXE_storectl");

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Root-only tests are `#[ignore = "needs root"]` and fail without root.
macro_rules! require_root {
    () => {
        assert!(
            is_root(),
            "needs root (overlay and bind mounts): run as root"
        );
    };
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A 64-hex id derived from a label (for planted entries).
fn hexid(label: &str) -> String {
    sha256_digest(label.as_bytes())
        .trim_start_matches("sha256:")
        .to_string()
}

fn seed() -> u64 {
    let seed = std::env::var("SHARING_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("SHARING_SEED={seed}");
    seed
}

// ---------------------------------------------------------------------------
// Running storectl

/// What one `storectl` run did.
#[derive(Debug)]
struct Run {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "storectl {}\n  status: {}\n  stdout: {}\n  stderr: {}",
            self.args.join(" "),
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Assert success; return stdout.
    #[track_caller]
    fn ok(self) -> String {
        assert!(
            self.status.success(),
            "expected success:\n{}",
            self.describe()
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.describe());
        self.stdout
    }

    /// Assert exit code 1 without a panic; return stderr.
    #[track_caller]
    fn fails(self) -> String {
        assert_eq!(
            self.status.code(),
            Some(1),
            "expected exit 1:\n{}",
            self.describe()
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.describe());
        self.stderr
    }
}

fn storectl(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(STORECTL);
    cmd.arg("--root")
        .arg(root)
        .args(args)
        .env_remove("STORECTL_ROOT")
        .env("STORECTL_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

fn run(root: &Path, args: &[&str]) -> Run {
    let out = storectl(root, args).output().expect("run storectl");
    Run {
        args: std::iter::once(format!("--root {}", root.display()))
            .chain(args.iter().map(|s| s.to_string()))
            .collect(),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `load` that must succeed; returns the image id (the last stdout line).
#[track_caller]
fn load(root: &Path, img: &TestImage) -> String {
    let out = run(root, &["load", &img.dir.display().to_string()]).ok();
    let id = out.lines().last().unwrap_or("").trim().to_string();
    assert_eq!(id, img.id, "load printed {out:?}");
    id
}

/// `ls --json`, as id → (names, layers, shared).
#[track_caller]
fn ls(root: &Path) -> BTreeMap<String, (Vec<String>, Vec<String>, bool)> {
    let out = run(root, &["ls", "--json"]).ok();
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ls --json is not JSON ({e}): {out}"));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .map(|s| s.as_str().expect("a string").to_string())
            .collect()
    };
    v.as_array()
        .unwrap_or_else(|| panic!("ls --json is not an array: {out}"))
        .iter()
        .map(|i| {
            (
                i["id"].as_str().expect("id").to_string(),
                (
                    strings(&i["names"]),
                    strings(&i["layers"]),
                    i["shared"] == true,
                ),
            )
        })
        .collect()
}

fn kill(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    let _ = rustix::process::kill_process(pid, sig);
}

// ---------------------------------------------------------------------------
// Test worlds: a share, roots, and a guard for every mount under them

/// Unmounts everything mounted below its dir (by any process) on drop.
struct MountGuard(PathBuf);

/// Mount points below `dir`, deepest first (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        for _ in 0..3 {
            let mounts = mounts_under(&self.0);
            if mounts.is_empty() {
                return;
            }
            for m in mounts {
                let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

struct World {
    // Fields drop in order: mounts go before the directories.
    _mounts: MountGuard,
    tmp: tempfile::TempDir,
    share: PathBuf,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::Builder::new()
            .prefix("storectl-sharing-")
            .tempdir()
            .expect("temp dir");
        // Keep paths canonical (init canonicalizes the share).
        let base = tmp.path().canonicalize().expect("canonical temp dir");
        let share = base.join("share");
        fs::create_dir(&share).expect("share dir");
        World {
            _mounts: MountGuard(base),
            tmp,
            share,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().canonicalize().expect("temp dir").join(name)
    }

    /// `init --shared SHARE --role writer` of root `T/name`.
    fn writer(&self, name: &str) -> PathBuf {
        let root = self.path(name);
        let share = self.share.display().to_string();
        let out = run(&root, &["init", "--shared", &share, "--role", "writer"]).ok();
        assert!(out.contains("writer"), "{out}");
        // Removal mechanics: no grace period (tests/containers.rs tests it).
        let settings = self.share.join("storectl-share.json");
        let mut v: Value = serde_json::from_slice(&fs::read(&settings).unwrap()).unwrap();
        v["removed_layers_grace_secs"] = serde_json::json!(0);
        fs::write(&settings, serde_json::to_vec(&v).unwrap()).unwrap();
        root
    }

    /// `init --shared share --role reader [extra…]` of root `T/name`.
    fn reader(&self, name: &str, share: &Path, extra: &[&str]) -> PathBuf {
        let root = self.path(name);
        let share = share.display().to_string();
        let mut args = vec!["init", "--shared", &share, "--role", "reader"];
        args.extend_from_slice(extra);
        let out = run(&root, &args).ok();
        assert!(out.contains("reader"), "{out}");
        root
    }

    /// A reader of this world's share that ticks every 50 ms and rescans fully every second.
    fn fast_reader(&self, name: &str) -> PathBuf {
        self.reader(
            name,
            &self.share,
            &["--refresh-interval-ms", "50", "--full-rescan-secs", "1"],
        )
    }
}

// ---------------------------------------------------------------------------
// Test images

/// An image written as an OCI layout, with what a store should make of it.
struct TestImage {
    image: Image,
    dir: PathBuf,
    id: String,
    /// Layer ids (chain ids), base first.
    chain: Vec<String>,
    name: String,
}

/// An image of `layers` layers (2–3) with distinct files per `seed`, an
/// opaque directory and a whiteout in each upper layer; the base layer
/// carries `big` bytes of incompressible data.
fn make_image(dir: &Path, seed: u64, layers: usize, big: usize) -> TestImage {
    let mut text = TextGen::new(seed);
    let mut rng = Prng::new(seed ^ 0x5eed);
    let mut out = Vec::new();
    for i in 0..layers {
        let mut entries = vec![
            Entry::dir("etc"),
            Entry::file("etc/release", format!("image {seed} layer {i}\n")),
            Entry::dir(&format!("data{i}")),
        ];
        for j in 0..3 {
            let n = 200 + rng.below(20_000) as usize;
            entries.push(Entry::file(
                &format!("data{i}/file{j}.txt"),
                text.content(n),
            ));
        }
        entries.push(Entry::symlink(&format!("data{i}/link"), "file0.txt"));
        if i == 0 {
            entries.push(Entry::file(
                "etc/base-only",
                "hidden by the opaque etc/ above\n",
            ));
        } else {
            // Whiteouts, so a mount shows them honoured (an opaque marker in
            // the wrong xattr namespace would show etc/base-only).
            entries.push(Entry::opaque("etc"));
            entries.push(Entry::whiteout(&format!("data{}/link", i - 1)));
        }
        let compression = if i == 0 && big > 0 {
            entries.push(Entry::file("data0/big.bin", rng.bytes(big)).mode(0o600));
            Compression::None
        } else {
            Compression::Gzip
        };
        out.push(Layer::new(entries, compression));
    }
    let name = format!("localhost/sharing-{seed}:v1");
    let image = Image::new(out).named(&name);
    let dir = dir.join(format!("image-{seed}"));
    let built = write_oci_layout(&dir, std::slice::from_ref(&image)).expect("write OCI layout");
    let built = &built[0];
    TestImage {
        id: built.id(),
        chain: built.chain_ids(),
        image,
        dir,
        name,
    }
}

/// Mount `img` on `root` (a reader), compare every file with what the image
/// holds (every file is read: its sha256 is compared), unmount.
#[track_caller]
fn check_mounted(root: &Path, img: &TestImage) {
    let out = run(root, &["mount", &img.id]).ok();
    let path = PathBuf::from(out.lines().last().expect("mount prints a path").trim());
    let tree = snapshot(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let diffs = diff_trees(&expected_tree(&img.image), &tree);
    run(root, &["umount", &img.id]).ok();
    assert!(
        diffs.is_empty(),
        "image {} mounted at {} differs:\n{}",
        img.id,
        path.display(),
        diffs.join("\n")
    );
}

// ---------------------------------------------------------------------------
// A full listing of a directory tree (the share), without following symlinks

fn listing(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<String, String>) {
        let dir = root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").file_name())
            .collect();
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let path = root.join(&rel);
            let md = fs::symlink_metadata(&path).expect("lstat");
            let ft = md.file_type();
            let kind = if ft.is_symlink() {
                format!(
                    "symlink -> {}",
                    fs::read_link(&path).expect("readlink").display()
                )
            } else if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_file() {
                let mut bytes = Vec::new();
                fs::File::open(&path)
                    .and_then(|mut f| f.read_to_end(&mut bytes))
                    .expect("read file");
                format!("file {} {}", md.len(), sha256_digest(&bytes))
            } else if ft.is_fifo() {
                "fifo".to_string()
            } else {
                format!("other {:o}", md.mode())
            };
            out.insert(
                rel.display().to_string(),
                format!(
                    "{kind} mode {:o} uid {} gid {} ino {} mtime {}.{:09}",
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    md.ino(),
                    md.mtime(),
                    md.mtime_nsec()
                ),
            );
            if ft.is_dir() {
                walk(root, &rel, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

#[track_caller]
fn assert_same_listing(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) {
    let mut diffs = Vec::new();
    for (p, b) in before {
        match after.get(p) {
            None => diffs.push(format!("removed  {p}: {b}")),
            Some(a) if a != b => diffs.push(format!("changed  {p}:\n   was {b}\n   now {a}")),
            Some(_) => {}
        }
    }
    for (p, a) in after {
        if !before.contains_key(p) {
            diffs.push(format!("added    {p}: {a}"));
        }
    }
    assert!(diffs.is_empty(), "the share changed:\n{}", diffs.join("\n"));
}

// ---------------------------------------------------------------------------
// A background `refresh --watch`

struct Watch {
    child: Child,
    lines: Receiver<(Instant, String)>,
    stdout_thread: Option<JoinHandle<()>>,
    stderr_thread: Option<JoinHandle<String>>,
}

impl Watch {
    /// Start `refresh --watch [extra…]` and wait until its refresher thread
    /// runs (after its first scan and subscription: events from now on print).
    fn start(root: &Path, extra: &[&str]) -> Watch {
        let mut args = vec!["refresh", "--watch"];
        args.extend_from_slice(extra);
        let mut child = storectl(root, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn refresh --watch");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        let stdout_thread = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let stderr_thread = thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut s);
            s
        });
        let mut w = Watch {
            child,
            lines,
            stdout_thread: Some(stdout_thread),
            stderr_thread: Some(stderr_thread),
        };
        w.wait_ready();
        w
    }

    fn wait_ready(&mut self) {
        let pid = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("refresh --watch exited early: {status}");
            }
            let ready = fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|t| {
                    fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "storectl-refres")
                });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "refresh --watch never started its refresher"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The first line (skipping others, which are returned too) matching
    /// `want` before `deadline`.
    fn wait_for(
        &self,
        deadline: Instant,
        want: impl Fn(&str) -> bool,
    ) -> (Option<(Instant, String)>, Vec<String>) {
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, line)) if want(&line) => return (Some((t, line)), skipped),
                Ok((_, line)) => skipped.push(line),
                Err(_) => return (None, skipped),
            }
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, wait; returns (status, remaining stdout lines, stderr).
    fn stop(mut self) -> (ExitStatus, Vec<String>, String) {
        kill(self.child.id(), rustix::process::Signal::TERM);
        let status = self.child.wait().expect("wait refresh --watch");
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        let rest = self.lines.try_iter().map(|(_, l)| l).collect();
        let stderr = self
            .stderr_thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        (status, rest, stderr)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// 1. Latency with default settings

#[test]
#[ignore = "needs root"]
fn watch_sees_load_and_rmi_within_two_seconds() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let reader = w.reader("reader", &w.share, &[]); // default: 1000 ms, 60 s
    let images: Vec<TestImage> = (0..2)
        .map(|i| make_image(&w.path("images"), 100 + i, 2 + i as usize, 0))
        .collect();
    let watch = Watch::start(&reader, &[]);
    let limit = Duration::from_secs(2);
    for img in &images {
        load(&writer, img);
        let loaded = Instant::now();
        let added = format!("+ image {} ", img.id);
        let (seen, skipped) = watch.wait_for(loaded + limit, |l| l.starts_with(&added));
        let (t, line) = seen.unwrap_or_else(|| {
            panic!(
                "no `+ image {}` within {limit:?} of load (other lines: {skipped:?})",
                img.id
            )
        });
        assert!(
            skipped.is_empty(),
            "unexpected lines before the add: {skipped:?}"
        );
        assert!(line.ends_with(&img.name), "names missing in {line:?}");
        eprintln!("added after {:?}", t.saturating_duration_since(loaded));

        run(&writer, &["rmi", &img.id]).ok();
        let removed = Instant::now();
        let want = format!("- image {}", img.id);
        let (seen, skipped) = watch.wait_for(removed + limit, |l| l == want);
        let (t, _) = seen.unwrap_or_else(|| {
            panic!("no `{want}` within {limit:?} of rmi (other lines: {skipped:?})")
        });
        assert!(
            skipped.is_empty(),
            "unexpected lines before the removal: {skipped:?}"
        );
        eprintln!("removed after {:?}", t.saturating_duration_since(removed));
    }
    let (status, rest, stderr) = watch.stop();
    assert!(
        status.success(),
        "refresh --watch on SIGTERM: {status}; stderr: {stderr}"
    );
    assert!(rest.is_empty(), "unexpected lines: {rest:?}");
    assert!(stderr.trim().is_empty(), "refresh --watch stderr: {stderr}");
}

/// A name added or removed on the writer reaches a watching reader as
/// `~ image ID NAMES`, and a one-shot `refresh` and `ls` agree.
#[test]
#[ignore = "needs root"]
fn tags_on_the_writer_reach_a_watching_reader() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let reader = w.reader("reader", &w.share, &[]);
    let img = make_image(&w.path("images"), 150, 2, 0);
    let watch = Watch::start(&reader, &[]);
    load(&writer, &img);
    let limit = Duration::from_secs(3);
    let added = format!("+ image {} ", img.id);
    let (seen, _) = watch.wait_for(Instant::now() + limit, |l| l.starts_with(&added));
    assert!(seen.is_some(), "the watcher never saw the image");

    run(&writer, &["tag", &img.id, "localhost/extra:2"]).ok();
    let want = format!("~ image {} {} localhost/extra:2", img.id, img.name);
    let (seen, skipped) = watch.wait_for(Instant::now() + limit, |l| l == want);
    assert!(
        seen.is_some(),
        "no `{want}` after tag (other lines: {skipped:?})"
    );

    run(&writer, &["rmi", &img.name]).ok(); // untags: the image keeps its other name
    let want = format!("~ image {} localhost/extra:2", img.id);
    let (seen, skipped) = watch.wait_for(Instant::now() + limit, |l| l == want);
    assert!(
        seen.is_some(),
        "no `{want}` after untag (other lines: {skipped:?})"
    );
    let (status, rest, stderr) = watch.stop();
    assert!(status.success(), "watch: {status}; stderr: {stderr}");
    assert!(rest.is_empty(), "unexpected lines: {rest:?}");

    let listed = run(&reader, &["ls", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&listed).expect("ls --json");
    let names = v[0]["names"].clone();
    assert_eq!(names, serde_json::json!(["localhost/extra:2"]), "{listed}");
}

// ---------------------------------------------------------------------------
// 2. Readers never change the share

#[test]
#[ignore = "needs root"]
fn readers_never_change_the_share() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let a = make_image(&w.path("images"), 200, 3, 1 << 20);
    let b = make_image(&w.path("images"), 201, 2, 0);
    let local = make_image(&w.path("images"), 202, 2, 0);
    load(&writer, &a);
    load(&writer, &b);
    let before = listing(&w.share);

    let reader = w.reader("reader", &w.share, &["--refresh-interval-ms", "100"]);
    let mut rng = Prng::new(seed());
    let refreshed = run(&reader, &["refresh"]).ok();
    for img in [&a, &b] {
        assert!(
            refreshed.contains(&format!("+ image {} {}", img.id, img.name)),
            "first refresh: {refreshed}"
        );
    }
    assert_eq!(
        run(&reader, &["refresh"]).ok(),
        "",
        "a second refresh reports nothing new"
    );
    let listed = ls(&reader);
    assert_eq!(
        listed.keys().collect::<BTreeSet<_>>(),
        BTreeSet::from([&a.id, &b.id])
    );
    for img in [&a, &b] {
        let (names, layers, shared) = &listed[&img.id];
        assert_eq!(names, &vec![img.name.clone()]);
        assert_eq!(layers, &img.chain);
        assert!(shared);
    }
    run(&reader, &["ls"]).ok();
    run(&reader, &["info"]).ok();
    let info: Value =
        serde_json::from_str(&run(&reader, &["info", "--json"]).ok()).expect("info JSON");
    assert_eq!(info["role"], "reader");
    assert_eq!(info["images"]["shared"], 2);
    assert_eq!(info["layers"]["shared"], 5);
    // The reader mounts in the share's xattr mode; the writer wrote the
    // opaque markers in it (`user` wherever the share takes user xattrs).
    let share_cfg: Value =
        serde_json::from_slice(&fs::read(w.share.join("storectl-share.json")).expect("share file"))
            .expect("share JSON");
    assert_eq!(info["overlay_xattrs"], share_cfg["overlay_xattrs"]);
    let etc = storectl_fixtures::tree::snapshot_node(
        &w.share.join("overlay").join(&a.chain[1]).join("diff/etc"),
    )
    .expect("an upper layer's opaque etc/");
    assert_eq!(
        etc.xattrs.contains_key("user.overlay.opaque"),
        info["overlay_xattrs"] == "user",
        "{:?} in {info}",
        etc.xattrs
    );
    check_mounted(&reader, &a);
    check_mounted(&reader, &b);
    run(&reader, &["verify"]).ok();

    // Readers killed at random moments, with an image mounted meanwhile.
    run(&reader, &["mount", &b.id]).ok();
    for round in 0..6 {
        let json = round % 2 == 1;
        let mut watch = Watch::start(&reader, if json { &["--json"] } else { &[] });
        thread::sleep(Duration::from_millis(rng.below(700)));
        assert!(watch.alive(), "refresh --watch died");
        let _ = watch.child.kill();
    }
    for args in [
        &["refresh"][..],
        &["ls", "--json"],
        &["info"],
        &["mount", &a.id],
        &["umount", &a.id],
        &["refresh", "--watch"],
    ] {
        for _ in 0..3 {
            let mut child = storectl(&reader, args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            thread::sleep(Duration::from_micros(rng.below(40_000)));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    // Restarted readers work as before.
    run(&reader, &["refresh"]).ok();
    assert_eq!(
        ls(&reader).keys().collect::<BTreeSet<_>>(),
        BTreeSet::from([&a.id, &b.id])
    );
    let _ = run(&reader, &["umount", &a.id]); // in case a killed `mount` got that far
    run(&reader, &["umount", &b.id]).ok();
    check_mounted(&reader, &a);

    // Changing a shared image on a reader fails, and changes nothing.
    for args in [
        vec!["rmi", a.id.as_str()],
        vec!["rmi", a.name.as_str()],
        vec!["tag", a.id.as_str(), "localhost/renamed:v2"],
        vec!["tag", b.name.as_str(), "localhost/renamed:v3"],
    ] {
        run(&reader, &args).fails();
    }
    // A reader's own image stays local (and can be removed there).
    load(&reader, &local);
    let listed = ls(&reader);
    assert!(!listed[&local.id].2, "a reader's load is local");
    check_mounted(&reader, &local);
    run(&reader, &["rmi", &local.id]).ok();

    assert_same_listing(&before, &listing(&w.share));
    // …and the writer still has both images, intact.
    assert_eq!(
        ls(&writer).keys().collect::<BTreeSet<_>>(),
        BTreeSet::from([&a.id, &b.id])
    );
    run(&writer, &["verify"]).ok();
}

/// `rmi`/`tag` of a shared image on a reader: exit 1 with an error that says
/// why (the image is on the read-only share), not that the image is unknown
/// — `ls` on the same root lists it.
#[test]
#[ignore = "needs root"]
fn reader_refuses_shared_changes_clearly() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let a = make_image(&w.path("images"), 210, 2, 0);
    load(&writer, &a);
    let reader = w.reader("reader", &w.share, &[]);
    assert!(ls(&reader).contains_key(&a.id));
    let before = listing(&w.share);
    for args in [
        vec!["rmi", a.id.as_str()],
        vec!["rmi", a.name.as_str()],
        vec!["tag", a.id.as_str(), "localhost/renamed:v2"],
    ] {
        let r = run(&reader, &args);
        let d = r.describe();
        let stderr = r.fails().to_lowercase();
        assert!(
            stderr.contains("read-only") || stderr.contains("writer host"),
            "expected a read-only-share error:\n{d}"
        );
    }
    assert_same_listing(&before, &listing(&w.share));
}

// ---------------------------------------------------------------------------
// 3. kill -9 the writer at random points

/// A reader's `refresh --watch --json` events, checked in order: an image is
/// only ever added after every layer of its chain, nothing is added twice or
/// removed without being there, and no layer goes while an image needs it.
#[derive(Default)]
struct EventLog {
    images: BTreeSet<String>,
    layers: BTreeSet<String>,
    images_added: usize,
    violations: Vec<String>,
}

impl EventLog {
    fn apply(&mut self, line: &str, chains: &HashMap<String, Vec<String>>) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            self.violations.push(format!("not JSON: {line:?}"));
            return;
        };
        let id = v["id"].as_str().unwrap_or_default().to_string();
        match v["event"].as_str() {
            Some("LayerAdded") => {
                if !self.layers.insert(id.clone()) {
                    self.violations.push(format!("layer {id} added twice"));
                }
            }
            Some("LayerRemoved") => {
                if !self.layers.remove(&id) {
                    self.violations
                        .push(format!("layer {id} removed but not there"));
                }
                for image in &self.images {
                    if chains.get(image).is_some_and(|c| c.contains(&id)) {
                        self.violations
                            .push(format!("layer {id} removed while image {image} needs it"));
                    }
                }
            }
            Some("ImageAdded") => {
                self.images_added += 1;
                match chains.get(&id) {
                    None => self.violations.push(format!("unknown image added: {line}")),
                    Some(chain) => {
                        let missing: Vec<&String> =
                            chain.iter().filter(|l| !self.layers.contains(*l)).collect();
                        if !missing.is_empty() {
                            self.violations
                                .push(format!("image {id} added before its layers {missing:?}"));
                        }
                    }
                }
                if !self.images.insert(id.clone()) {
                    self.violations.push(format!("image {id} added twice"));
                }
            }
            Some("ImageRemoved") => {
                if !self.images.remove(&id) {
                    self.violations
                        .push(format!("image {id} removed but not there"));
                }
            }
            _ => self.violations.push(format!("unknown event: {line}")),
        }
    }
}

/// What a fresh reader process lists must be whole: known images with their
/// full chains on the share, and every file readable through a mount.
/// Returns the listed ids.
#[track_caller]
fn check_reader_view(reader: &Path, share: &Path, images: &[&TestImage]) -> BTreeSet<String> {
    let listed = ls(reader);
    for (id, (names, layers, shared)) in &listed {
        let img = images
            .iter()
            .find(|i| &i.id == id)
            .unwrap_or_else(|| panic!("reader lists an unknown image {id}"));
        assert!(shared, "image {id} is not shared");
        assert_eq!(names, &vec![img.name.clone()], "names of image {id}");
        assert_eq!(layers, &img.chain, "layers of image {id}");
        for l in layers {
            assert!(
                share.join("overlay").join(l).join("diff").is_dir(),
                "layer {l} of {id}"
            );
        }
        check_mounted(reader, img);
    }
    listed.into_keys().collect()
}

/// Feed the watcher's lines to `log` until its image set is `want` (or fail).
#[track_caller]
fn converge(
    watch: &Watch,
    log: &mut EventLog,
    chains: &HashMap<String, Vec<String>>,
    want: &BTreeSet<String>,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for (_, line) in watch.lines.try_iter() {
            log.apply(&line, chains);
        }
        if &log.images == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the watching reader shows {:?}, a fresh reader {want:?}",
            log.images
        );
        thread::sleep(Duration::from_millis(20));
    }
}

const DEBRIS: [&str; 3] = [".staging-", ".trash-", ".tmp-"];

/// Make the writer lock file look as a crashed holder leaves it (without
/// the `released` a holder that lets go normally writes): the next writer
/// then sweeps, as after a real crash. For crashes simulated by planting.
fn crashed_holder(lock: &Path) {
    fs::write(lock, "host crashed-host pid 1\n").expect("lock file");
}

/// Paths below `root` (not following symlinks) whose name is writer debris.
fn debris(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if DEBRIS.iter().any(|d| name.starts_with(d)) {
                out.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Names in `dir` (all of them).
fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// After a writer start: no debris anywhere; the share holds exactly the
/// layers and images of `images`, each whole; the writer's root has its
/// legacy names and short links for them and no dangling or orphan entries.
/// Returns what is wrong, one line each.
fn writer_problems(share: &Path, writer: &Path, images: &[&TestImage]) -> Vec<String> {
    let mut bad = Vec::new();
    for d in [debris(share), debris(writer)].concat() {
        bad.push(format!("debris left: {}", d.display()));
    }
    let layers: BTreeSet<String> = images.iter().flat_map(|i| i.chain.clone()).collect();
    let ids: BTreeSet<String> = images.iter().map(|i| i.id.clone()).collect();
    let hex =
        |d: &Path| -> BTreeSet<String> { names(d).into_iter().filter(|n| is_id(n)).collect() };
    let mut same = |what: &str, found: BTreeSet<String>, want: &BTreeSet<String>| {
        if &found != want {
            bad.push(format!("{what}: {found:?}, expected {want:?}"));
        }
    };
    same("share overlay/", hex(&share.join("overlay")), &layers);
    same(
        "share overlay-layers/",
        hex(&share.join("overlay-layers")),
        &layers,
    );
    same(
        "share overlay-images/",
        hex(&share.join("overlay-images")),
        &ids,
    );
    let mut expected = BTreeSet::from(["RO".to_string(), "l".to_string()]);
    expected.extend(layers.iter().cloned());
    let overlay: BTreeSet<String> = names(&writer.join("overlay"))
        .into_iter()
        .filter(|n| n != "empty")
        .collect();
    same("writer overlay/", overlay, &expected);
    let mut expected = BTreeSet::from(["RO".to_string()]);
    expected.extend(layers.iter().cloned());
    same(
        "writer overlay-layers/",
        names(&writer.join("overlay-layers")),
        &expected,
    );
    let mut expected = BTreeSet::from(["RO".to_string()]);
    expected.extend(ids.iter().cloned());
    same(
        "writer overlay-images/",
        names(&writer.join("overlay-images")),
        &expected,
    );
    let shorts = names(&writer.join("overlay/l")).len();
    if shorts != layers.len() {
        bad.push(format!(
            "writer overlay/l/ holds {shorts} links for {} layers",
            layers.len()
        ));
    }
    let ro = |id: &str| Some(Path::new("RO").join(id));
    for l in &layers {
        let dir = share.join("overlay").join(l);
        if !(dir.join("diff").is_dir() && dir.join("link").is_file()) {
            bad.push(format!("layer {l}: no diff/ or link in {}", dir.display()));
            continue;
        }
        let rec = share.join("overlay-layers").join(l);
        match fs::read(rec.join("layer.json")).map(|b| serde_json::from_slice::<Value>(&b)) {
            Ok(Ok(v)) if v["id"] == l.as_str() && v["incomplete"] != true => {}
            other => bad.push(format!("layer {l}: bad record {other:?}")),
        }
        if !rec.join(format!("{l}.tar-split.gz")).is_file() {
            bad.push(format!("layer {l}: no tar-split"));
        }
        for d in ["overlay", "overlay-layers"] {
            let legacy = writer.join(d).join(l);
            if fs::read_link(&legacy).ok() != ro(l) {
                bad.push(format!("writer {d}/{l} is not a link to RO/{l}"));
            }
        }
        let short = fs::read_to_string(dir.join("link")).unwrap_or_default();
        let short = writer.join("overlay/l").join(short.trim());
        if short.canonicalize().ok() != dir.join("diff").canonicalize().ok() {
            bad.push(format!("layer {l}: short link {} broken", short.display()));
        }
    }
    for id in &ids {
        let dir = share.join("overlay-images").join(id);
        for f in ["images.json", "manifest", "config"] {
            if !dir.join(f).is_file() {
                bad.push(format!("image {id}: no {f}"));
            }
        }
        if fs::read_link(writer.join("overlay-images").join(id)).ok() != ro(id) {
            bad.push(format!(
                "writer overlay-images/{id} is not a link to RO/{id}"
            ));
        }
    }
    bad
}

#[track_caller]
fn assert_writer_clean(share: &Path, writer: &Path, images: &[&TestImage]) {
    let bad = writer_problems(share, writer, images);
    assert!(
        bad.is_empty(),
        "after the next writer start:\n{}",
        bad.join("\n")
    );
}

#[test]
#[ignore = "needs root"]
fn writer_killed_at_random_points() {
    use std::os::unix::process::ExitStatusExt;
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let reader = w.fast_reader("reader");
    let img = make_image(&w.path("images"), 300, 3, 6 << 20);
    let other = make_image(&w.path("images"), 301, 2, 0);
    let chains: HashMap<String, Vec<String>> = [&img, &other]
        .iter()
        .map(|i| (i.id.clone(), i.chain.clone()))
        .collect();
    load(&writer, &other); // stays loaded throughout: must never be disturbed
    let watch = Watch::start(&reader, &["--json"]);
    let mut log = EventLog::default();
    // The watcher started after `other` was there: take its layers as known.
    log.images.insert(other.id.clone());
    log.layers.extend(other.chain.iter().cloned());

    // How long the operations take, to spread the kills over them.
    let t = Instant::now();
    load(&writer, &img);
    let load_time = t.elapsed();
    let t = Instant::now();
    run(&writer, &["rmi", &img.id]).ok();
    let rmi_time = t.elapsed();
    eprintln!("load {load_time:?}, rmi {rmi_time:?}");

    let mut rng = Prng::new(seed());
    let mut interrupted = Vec::new();
    for k in 0..20 {
        let during_load = k % 2 == 0;
        let dir = img.dir.display().to_string();
        let (args, took): (Vec<&str>, Duration) = if during_load {
            if ls(&writer).contains_key(&img.id) {
                run(&writer, &["rmi", &img.id]).ok();
            }
            (vec!["load", &dir], load_time)
        } else {
            (vec!["rmi", &img.id], rmi_time)
        };
        // Ten points per operation, one in each tenth of 110% of its time.
        let slot = (k / 2) as f64 + rng.below(1000) as f64 / 1000.0;
        let delay = took.mul_f64(slot / 10.0 * 1.1);
        let mut child = storectl(&writer, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().expect("wait writer");
        let killed = status.signal() == Some(9);
        if killed {
            interrupted.push(format!("{} at {delay:?}", args[0]));
        }

        // The share is frozen now: what a reader shows must be whole, and the
        // watching reader must agree with a fresh one.
        let view = check_reader_view(&reader, &w.share, &[&img, &other]);
        assert!(
            view.contains(&other.id),
            "kill {k}: the other image vanished"
        );
        converge(&watch, &mut log, &chains, &view);
        assert!(log.violations.is_empty(), "kill {k}: {:#?}", log.violations);

        // The next writer start cleans up, and the image loads fine.
        load(&writer, &img);
        assert_writer_clean(&w.share, &writer, &[&img, &other]);
        run(&writer, &["verify"]).ok();
    }
    eprintln!(
        "{} of 20 kills interrupted the writer: {interrupted:?}",
        interrupted.len()
    );
    let want: BTreeSet<String> = [img.id.clone(), other.id.clone()].into();
    converge(&watch, &mut log, &chains, &want);
    check_reader_view(&reader, &w.share, &[&img, &other]);
    let mut watch = watch;
    assert!(watch.alive(), "the watching reader died");
    let (status, rest, stderr) = watch.stop();
    for line in rest {
        log.apply(&line, &chains);
    }
    assert!(log.violations.is_empty(), "{:#?}", log.violations);
    assert!(
        status.success(),
        "refresh --watch: {status}, stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(log.images_added > 0);
    assert!(
        interrupted.len() >= 5,
        "too few kills hit a running writer: {interrupted:?}"
    );
}

/// Is there an entry named `prefix…` in `dir`?
fn has_name(dir: &Path, prefix: &str) -> bool {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
}

/// Run `storectl args` on `root` and SIGKILL it the moment `hit()` holds
/// (polled without pause). False when it exited before that.
fn kill_when(root: &Path, args: &[&str], hit: impl Fn() -> bool) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let mut child = storectl(root, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    loop {
        if hit() {
            let _ = child.kill();
            let status = child.wait().expect("wait writer");
            return status.signal() == Some(9);
        }
        if child.try_wait().expect("try_wait").is_some() {
            return false;
        }
    }
}

/// A kill point of the publish protocol: (what, during `rmi`?, reached?).
type KillPoint = (&'static str, bool, fn(&Path, &TestImage) -> bool);

/// kill -9 the writer at each step of the publish and removal protocols
/// (detected on the share), each in a fresh world; then a fresh reader sees
/// only whole images (with their names), the next writer start cleans up,
/// the image loads and verifies, and `rmi` leaves an empty share. One more
/// case is a crash state no timing can hit reliably (between two syscalls).
#[test]
#[ignore = "needs root"]
fn writer_killed_at_protocol_steps() {
    require_root!();
    let images = tempfile::tempdir().expect("temp dir");
    let img = make_image(images.path(), 700, 3, 2 << 20);
    let points: Vec<KillPoint> = vec![
        (
            "load: extracting a layer (overlay/.staging-*)",
            false,
            |s, _| has_name(&s.join("overlay"), ".staging-"),
        ),
        (
            "load: a layer record published, no image yet",
            false,
            |s, _| names(&s.join("overlay-layers")).iter().any(|n| is_id(n)),
        ),
        (
            "load: staging the image dir (overlay-images/.staging-*)",
            false,
            |s, _| has_name(&s.join("overlay-images"), ".staging-"),
        ),
        ("load: image dir just renamed into place", false, |s, i| {
            s.join("overlay-images").join(&i.id).exists()
        }),
        (
            "rmi: image dir renamed away (overlay-images/.trash-*)",
            true,
            |s, _| has_name(&s.join("overlay-images"), ".trash-"),
        ),
        (
            "rmi: a layer record being removed (overlay-layers/.trash-*)",
            true,
            |s, _| has_name(&s.join("overlay-layers"), ".trash-"),
        ),
        (
            "rmi: a layer dir being removed (overlay/.trash-*)",
            true,
            |s, _| has_name(&s.join("overlay"), ".trash-"),
        ),
    ];
    let mut failures = Vec::new();
    let dir = img.dir.display().to_string();
    for (what, rmi, hit) in &points {
        let args = if *rmi {
            ["rmi", &img.id]
        } else {
            ["load", &dir]
        };
        // A short step can pass between two polls on a busy machine: try
        // again, each time in a fresh world.
        let attempt = || {
            let w = World::new();
            let writer = w.writer("writer");
            let reader = w.reader("reader", &w.share, &[]);
            if *rmi {
                load(&writer, &img);
            }
            kill_when(&writer, &args, || hit(&w.share, &img)).then_some((w, writer, reader))
        };
        let Some((w, writer, reader)) = (0..8).find_map(|_| attempt()) else {
            failures.push(format!(
                "{what}: the writer finished before this point, 8 times"
            ));
            continue;
        };
        soft(
            &mut failures,
            what,
            "a fresh reader right after the kill",
            || {
                check_reader_view(&reader, &w.share, &[&img]);
            },
        );
        soft(&mut failures, what, "the next writer start", || {
            load(&writer, &img);
            assert_writer_clean(&w.share, &writer, &[&img]);
            run(&writer, &["verify"]).ok();
            assert!(check_reader_view(&reader, &w.share, &[&img]).contains(&img.id));
        });
        soft(&mut failures, what, "rmi after that", || {
            run(&writer, &["rmi", &img.id]).ok();
            assert_writer_clean(&w.share, &writer, &[]);
        });
    }
    // Crashed inside the driver's layer removal, between renaming RO/<id>
    // away and unlinking the writer's `overlay/<id> -> RO/<id>`: a .trash
    // dir, that dangling name, and a dangling short link.
    let w = World::new();
    let writer = w.writer("writer");
    load(&writer, &img);
    run(&writer, &["rmi", &img.id]).ok();
    let top = img.chain.last().expect("a layer");
    fs::create_dir_all(w.share.join("overlay/.trash-crashed/diff")).expect("trash");
    symlink(Path::new("RO").join(top), writer.join("overlay").join(top)).expect("symlink");
    symlink(
        Path::new("..").join(top).join("diff"),
        writer.join("overlay/l/CRASHEDCRASHEDCRASHEDCRASH"),
    )
    .expect("symlink");
    crashed_holder(&w.share.join("writer.lock"));
    let what = "rmi: between renaming RO/<top> away and unlinking overlay/<top> (simulated)";
    soft(&mut failures, what, "the next writer start", || {
        load(&writer, &img);
        assert_writer_clean(&w.share, &writer, &[&img]);
        run(&writer, &["verify"]).ok();
    });
    // The names are part of the staged image record, so no step writes inside
    // a published image dir during load; a crashed `tag` can still leave a
    // `.tmp-*` there (simulated), which the next writer start removes.
    let what = "tag: rewriting images.json (overlay-images/<id>/.tmp-*, simulated)";
    fs::write(
        w.share
            .join("overlay-images")
            .join(&img.id)
            .join(".tmp-crashed"),
        b"{",
    )
    .expect("plant .tmp");
    crashed_holder(&w.share.join("writer.lock"));
    soft(&mut failures, what, "the next writer start", || {
        run(&writer, &["tag", &img.id, "localhost/after-crash:1"]).ok();
        assert_writer_clean(&w.share, &writer, &[&img]);
    });
    assert!(
        failures.is_empty(),
        "{} failures at {} kill points:\n\n{}",
        failures.len(),
        points.len() + 2,
        failures.join("\n\n")
    );
}

/// A watching reader that finds a new image while the writer is still
/// publishing it (stopped right after the image dir's rename) must report
/// it with its names: it never reads a known image's record again.
#[test]
#[ignore = "needs root"]
fn watching_reader_gets_the_names_of_a_new_image() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let reader = w.fast_reader("reader");
    let img = make_image(&w.path("images"), 800, 2, 1 << 20);
    let watch = Watch::start(&reader, &["--json"]);
    let mut child = storectl(&writer, &["load", &img.dir.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn load");
    let image_dir = w.share.join("overlay-images").join(&img.id);
    while !image_dir.exists() {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "load ended early"
        );
    }
    kill(child.id(), rustix::process::Signal::STOP);
    let (seen, _) = watch.wait_for(Instant::now() + Duration::from_secs(3), |l| {
        l.contains("ImageAdded")
    });
    kill(child.id(), rustix::process::Signal::CONT);
    assert!(child.wait().expect("wait load").success());
    let (_, line) = seen.expect("the watcher reports the image");
    let (_, rest, _) = watch.stop();
    let v: Value = serde_json::from_str(&line).expect("JSON event");
    assert_eq!(v["id"], img.id.as_str());
    assert_eq!(
        v["names"],
        json!([img.name]),
        "ImageAdded without the image's name; later lines: {rest:?}"
    );
}

/// Run one group of checks; a failure is recorded and the test goes on.
fn soft(failures: &mut Vec<String>, point: &str, step: &str, f: impl FnOnce()) {
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        failures.push(format!("{point}\n  {step}: {}", panic_text(&e)));
    }
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(panic)".into())
}

// ---------------------------------------------------------------------------
// 4. Junk on the share

/// Plants entries into a share by hand (as a broken or hostile writer would).
struct Planter {
    share: PathBuf,
}

impl Planter {
    fn overlay(&self) -> PathBuf {
        self.share.join("overlay")
    }
    fn layers(&self) -> PathBuf {
        self.share.join("overlay-layers")
    }
    fn images(&self) -> PathBuf {
        self.share.join("overlay-images")
    }

    /// A layer's overlay dir: `diff/` with one file (unless `diff` is
    /// false) and a `link` file.
    fn overlay_dir(&self, id: &str, diff: bool) {
        let dir = self.overlay().join(id);
        fs::create_dir_all(&dir).expect("overlay dir");
        if diff {
            fs::create_dir(dir.join("diff")).expect("diff");
            fs::write(
                dir.join("diff/planted.txt"),
                format!("planted layer {id}\n"),
            )
            .expect("file");
        }
        fs::write(dir.join("link"), "PLANTEDPLANTEDPLANTEDPLANT").expect("link");
    }

    /// `overlay-layers/<id>/layer.json` with these bytes.
    fn layer_record(&self, id: &str, bytes: &[u8]) {
        let dir = self.layers().join(id);
        fs::create_dir_all(&dir).expect("record dir");
        fs::write(dir.join("layer.json"), bytes).expect("layer.json");
    }

    /// A layer: overlay dir with `diff/` plus a record.
    fn layer(&self, id: &str, record: &[u8]) {
        self.overlay_dir(id, true);
        self.layer_record(id, record);
    }

    /// `overlay-images/<id>/images.json` with these bytes, plus `manifest`
    /// and `config` files.
    fn image_record(&self, id: &str, bytes: &[u8]) {
        let dir = self.images().join(id);
        fs::create_dir_all(&dir).expect("image dir");
        fs::write(dir.join("images.json"), bytes).expect("images.json");
        fs::write(dir.join("manifest"), b"{}").expect("manifest");
        fs::write(dir.join("config"), b"{}").expect("config");
    }
}

fn layer_json(id: &str, parent: Option<&str>) -> Vec<u8> {
    let mut v = json!({"id": id, "diff-size": 0, "compression": 0});
    if let Some(p) = parent {
        v["parent"] = json!(p);
    }
    serde_json::to_vec(&v).expect("json")
}

fn image_json(id: &str, top: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id,
        "names": [name],
        "layer": top,
        "big-data-names": ["manifest", "config"],
    }))
    .expect("json")
}

/// Valid JSON of about `n` bytes (a long `names` list).
fn huge_json(mut v: Value, n: usize) -> Vec<u8> {
    let names: Vec<String> = (0..n / 80)
        .map(|i| format!("localhost/padding-{i:060}"))
        .collect();
    v["names"] = json!(names);
    serde_json::to_vec(&v).expect("json")
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

/// Strip ANSI colour sequences.
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The outside file's access time must not move: set it well before its
/// mtime (so relatime would update it on any read).
fn age_atime(path: &Path) -> SystemTime {
    let old = SystemTime::now() - Duration::from_secs(100_000);
    let f = fs::File::options()
        .write(true)
        .open(path)
        .expect("open outside file");
    f.set_times(fs::FileTimes::new().set_accessed(old))
        .expect("set atime");
    fs::metadata(path)
        .and_then(|m| m.accessed())
        .expect("atime")
}

#[test]
#[ignore = "needs root"]
fn junk_on_the_share_is_skipped_once() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let a = make_image(&w.path("images"), 400, 3, 0);
    let b = make_image(&w.path("images"), 401, 2, 0);
    load(&writer, &a);
    load(&writer, &b);
    let a_top = a.chain.last().expect("a layer").clone();
    let p = Planter {
        share: w.share.clone(),
    };
    // What must warn exactly once: ("layer"|"image", id).
    let mut bad: BTreeSet<(&str, String)> = BTreeSet::new();
    let id = |label: &str| hexid(label);

    // A valid hand-made image: the reader must take it.
    let (pv_layer, pv) = (id("planted-valid-layer"), id("planted-valid-image"));
    p.layer(&pv_layer, &layer_json(&pv_layer, None));
    p.image_record(&pv, &image_json(&pv, &pv_layer, "localhost/planted:v1"));

    // 1. Bad JSON: a layer record and an image record.
    let l = id("bad-json-layer");
    p.layer(&l, b"{\"id\": \"not even closed");
    bad.insert(("layer", l.clone()));
    let i = id("bad-json-image-on-it");
    p.image_record(&i, &image_json(&i, &l, "localhost/j1:v1"));
    bad.insert(("image", i));
    let i = id("bad-json-image");
    p.image_record(&i, b"{\"id\": [1, 2,");
    bad.insert(("image", i));
    let i = id("json-of-wrong-shape");
    p.image_record(&i, b"[]");
    bad.insert(("image", i));

    // 2. Huge JSON (5 MB), valid otherwise.
    let l = id("huge-layer");
    p.layer(&l, &huge_json(json!({"id": l}), 5 << 20));
    bad.insert(("layer", l));
    let i = id("huge-image");
    p.image_record(&i, &huge_json(json!({"id": i, "layer": a_top}), 5 << 20));
    bad.insert(("image", i));

    // 3. A chain whose middle layer is absent.
    let (m1, m2, m3) = (id("middle-1"), id("middle-2-absent"), id("middle-3"));
    p.layer(&m1, &layer_json(&m1, None)); // valid on its own
    p.layer(&m3, &layer_json(&m3, Some(&m2)));
    bad.insert(("layer", m3.clone()));
    let i = id("image-missing-middle");
    p.image_record(&i, &image_json(&i, &m3, "localhost/j3:v1"));
    bad.insert(("image", i));
    // …and one whose middle layer has a record but no overlay dir.
    let (n2, n3) = (id("middle-2-record-only"), id("middle-3b"));
    p.layer_record(&n2, &layer_json(&n2, Some(&m1)));
    p.layer(&n3, &layer_json(&n3, Some(&n2)));
    bad.insert(("layer", n3.clone()));
    let i = id("image-missing-middle-overlay");
    p.image_record(&i, &image_json(&i, &n3, "localhost/j3b:v1"));
    bad.insert(("image", i));

    // 4. A parent cycle.
    let (c1, c2) = (id("cycle-1"), id("cycle-2"));
    p.layer(&c1, &layer_json(&c1, Some(&c2)));
    p.layer(&c2, &layer_json(&c2, Some(&c1)));
    bad.insert(("layer", c1.clone()));
    bad.insert(("layer", c2));
    let i = id("image-on-cycle");
    p.image_record(&i, &image_json(&i, &c1, "localhost/j4:v1"));
    bad.insert(("image", i));

    // 5. Symlinks out of the share, to valid-looking records.
    let outside = w.path("outside");
    fs::create_dir_all(outside.join("image")).expect("outside");
    let escaped_image = id("escaped-image");
    fs::write(
        outside.join("image/images.json"),
        image_json(&escaped_image, &a_top, "localhost/escaped:v1"),
    )
    .expect("outside images.json");
    fs::write(outside.join("image/manifest"), b"{}").expect("outside manifest");
    fs::write(outside.join("image/config"), b"{}").expect("outside config");
    symlink(outside.join("image"), p.images().join(&escaped_image)).expect("symlink");
    bad.insert(("image", escaped_image.clone()));
    let escaped_layer = id("escaped-layer-record");
    fs::write(outside.join("layer.json"), layer_json(&escaped_layer, None)).expect("outside layer");
    p.overlay_dir(&escaped_layer, true);
    fs::create_dir(p.layers().join(&escaped_layer)).expect("record dir");
    symlink(
        outside.join("layer.json"),
        p.layers().join(&escaped_layer).join("layer.json"),
    )
    .expect("symlink");
    bad.insert(("layer", escaped_layer.clone()));
    let escaped_on_layer = id("image-on-escaped-layer");
    p.image_record(
        &escaped_on_layer,
        &image_json(&escaped_on_layer, &escaped_layer, "localhost/j5:v1"),
    );
    bad.insert(("image", escaped_on_layer.clone()));
    let escaped_overlay = id("escaped-overlay-dir");
    fs::create_dir_all(outside.join("overlay/diff")).expect("outside overlay");
    fs::write(outside.join("overlay/link"), "OUTSIDEOUTSIDEOUTSIDEOUTSI").expect("link");
    symlink(outside.join("overlay"), p.overlay().join(&escaped_overlay)).expect("symlink");
    p.layer_record(&escaped_overlay, &layer_json(&escaped_overlay, None));
    bad.insert(("layer", escaped_overlay.clone()));
    let outside_files = [
        outside.join("image/images.json"),
        outside.join("image/manifest"),
        outside.join("layer.json"),
        outside.join("overlay/link"),
    ];
    let outside_before = listing(&outside);

    // 6. Names that are not ids: ignored quietly.
    let upper = hexid("upper-case").to_uppercase();
    p.image_record(&upper, &image_json(&upper, &a_top, "localhost/upper:v1"));
    p.image_record(
        "not-an-id",
        &image_json("not-an-id", &a_top, "localhost/nohex:v1"),
    );
    let short = &hexid("short")[..63];
    p.layer(short, &layer_json(short, None));
    for dir in [p.overlay(), p.layers(), p.images()] {
        fs::write(dir.join(".nfs000000001234"), b"silly rename").expect(".nfs");
    }
    fs::write(w.share.join(".nfs000000005678"), b"silly rename").expect(".nfs");

    // 7. An incomplete layer, and an image on it.
    let l = id("incomplete");
    let mut rec = json!({"id": l, "incomplete": true});
    p.layer(&l, &serde_json::to_vec(&rec).expect("json"));
    bad.insert(("layer", l.clone()));
    let i = id("image-on-incomplete");
    p.image_record(&i, &image_json(&i, &l, "localhost/j7:v1"));
    bad.insert(("image", i));
    rec["incomplete"] = json!(false);

    // 8. Unreadable: a chmod 000 dir (root reads it anyway: its record names
    // a missing layer), FIFOs where records belong (must not hang), and a
    // directory named layer.json.
    let i = id("mode-000");
    p.image_record(&i, &image_json(&i, &id("no-such-layer"), "localhost/j8:v1"));
    fs::set_permissions(p.images().join(&i), fs::Permissions::from_mode(0o000)).expect("chmod");
    bad.insert(("image", i));
    let l = id("fifo-layer-json");
    p.overlay_dir(&l, true);
    fs::create_dir(p.layers().join(&l)).expect("record dir");
    mkfifo(&p.layers().join(&l).join("layer.json"));
    bad.insert(("layer", l));
    let i = id("fifo-images-json");
    fs::create_dir(p.images().join(&i)).expect("image dir");
    mkfifo(&p.images().join(&i).join("images.json"));
    bad.insert(("image", i));
    let l = id("dir-layer-json");
    p.overlay_dir(&l, true);
    fs::create_dir_all(p.layers().join(&l).join("layer.json")).expect("dir");
    bad.insert(("layer", l));

    // 9. Files where directories belong.
    let l = id("file-record");
    p.overlay_dir(&l, true);
    fs::write(p.layers().join(&l), layer_json(&l, None)).expect("file");
    bad.insert(("layer", l));
    let l = id("file-overlay");
    fs::write(p.overlay().join(&l), b"not a dir").expect("file");
    p.layer_record(&l, &layer_json(&l, None));
    bad.insert(("layer", l));
    let i = id("file-image");
    fs::write(
        p.images().join(&i),
        image_json(&i, &a_top, "localhost/j9:v1"),
    )
    .expect("file");
    bad.insert(("image", i));

    // 10. An overlay dir without diff/.
    let l = id("no-diff");
    p.overlay_dir(&l, false);
    p.layer_record(&l, &layer_json(&l, None));
    bad.insert(("layer", l));

    // 11. Records whose id is not their directory's name.
    let l = id("layer-id-mismatch");
    p.layer(&l, &layer_json(&m1, None));
    bad.insert(("layer", l));
    let i = id("image-id-mismatch");
    p.image_record(&i, &image_json(&a.id, &a_top, "localhost/j11:v1"));
    bad.insert(("image", i));

    // 12. A top layer that is not hex, a parent that climbs out.
    let i = id("top-not-hex");
    p.image_record(&i, &image_json(&i, "../../../etc", "localhost/j12:v1"));
    bad.insert(("image", i));
    let l = id("parent-climbs");
    p.layer(&l, &layer_json(&l, Some("../../etc")));
    bad.insert(("layer", l));

    // 13. Empty files.
    let l = id("empty-layer-json");
    p.layer(&l, b"");
    bad.insert(("layer", l));
    let i = id("empty-images-json");
    p.image_record(&i, b"");
    bad.insert(("image", i));

    // 14. Dangling symlinks.
    let i = id("dangling-image");
    symlink("/nonexistent/storectl-sharing", p.images().join(&i)).expect("symlink");
    bad.insert(("image", i));
    let l = id("dangling-layer-json");
    p.overlay_dir(&l, true);
    fs::create_dir(p.layers().join(&l)).expect("record dir");
    symlink(
        "../nonexistent.json",
        p.layers().join(&l).join("layer.json"),
    )
    .expect("symlink");
    bad.insert(("layer", l));

    // 15. Big-data names that climb out, or name missing files.
    let i = id("big-data-climbs");
    let mut v: Value =
        serde_json::from_slice(&image_json(&i, &a_top, "localhost/j15:v1")).expect("json");
    v["big-data-names"] = json!(["../../../../../etc/passwd"]);
    p.image_record(&i, &serde_json::to_vec(&v).expect("json"));
    bad.insert(("image", i));
    let i = id("big-data-missing");
    p.image_record(&i, &image_json(&i, &a_top, "localhost/j15b:v1"));
    fs::remove_file(p.images().join(&i).join("manifest")).expect("rm");
    bad.insert(("image", i));

    let atimes: Vec<SystemTime> = outside_files.iter().map(|f| age_atime(f)).collect();
    let shared_before = listing(&w.share);

    // A watching reader, rescanning every second.
    let reader = w.reader(
        "reader",
        &w.share,
        &["--refresh-interval-ms", "100", "--full-rescan-secs", "1"],
    );
    let started = Instant::now();
    let watch = Watch::start(&reader, &["--json"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the first scan hung"
    );
    // A valid image planted later, with a generation bump, shows up: the
    // refresher keeps working next to the junk (and scans again).
    let (pv2_layer, pv2) = (id("planted-later-layer"), id("planted-later-image"));
    p.layer(&pv2_layer, &layer_json(&pv2_layer, Some(&pv_layer)));
    p.image_record(&pv2, &image_json(&pv2, &pv2_layer, "localhost/planted:v2"));
    fs::write(w.share.join(".tmp-gen"), b"999 planted\n").expect("generation");
    fs::rename(w.share.join(".tmp-gen"), w.share.join("generation")).expect("generation");
    let (seen, _) = watch.wait_for(Instant::now() + Duration::from_secs(5), |l| {
        l.contains("ImageAdded") && l.contains(&pv2)
    });
    assert!(seen.is_some(), "the image planted later never showed up");
    // Entries that become valid are taken on a later scan (they warned once
    // while broken): a record fixed in place, and the missing overlay dir of
    // a chain's middle layer arriving (by rename, as a writer publishes).
    let fixed_layer = id("bad-json-layer");
    let fixed_image = id("bad-json-image-on-it");
    let record = p.layers().join(&fixed_layer);
    fs::write(record.join(".tmp-fix"), layer_json(&fixed_layer, None)).expect("fix");
    fs::rename(record.join(".tmp-fix"), record.join("layer.json")).expect("fix");
    p.overlay_dir(".staging-n2", true);
    fs::rename(p.overlay().join(".staging-n2"), p.overlay().join(&n2)).expect("publish");
    let completed_image = id("image-missing-middle-overlay");
    fs::write(w.share.join(".tmp-gen"), b"1000 planted\n").expect("generation");
    fs::rename(w.share.join(".tmp-gen"), w.share.join("generation")).expect("generation");
    let mut waiting: BTreeSet<&String> = [&fixed_image, &completed_image].into();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !waiting.is_empty() {
        let (seen, _) = watch.wait_for(deadline, |l| l.contains("ImageAdded"));
        let Some((_, line)) = seen else {
            panic!("images {waiting:?} never showed up once valid");
        };
        waiting.retain(|i| !line.contains(i.as_str()));
    }
    // Full rescans (every second) must not warn again.
    thread::sleep(Duration::from_millis(2500));
    let (status, _, stderr) = watch.stop();
    // The watcher changed nothing (but for what the test itself planted).
    let ours = [
        format!("overlay/{pv2_layer}"),
        format!("overlay-layers/{pv2_layer}"),
        format!("overlay-images/{pv2}"),
        format!("overlay/{n2}"),
        format!("overlay-layers/{fixed_layer}"),
    ];
    let theirs = |l: BTreeMap<String, String>| -> BTreeMap<String, String> {
        l.into_iter()
            .filter(|(k, _)| {
                !ours.iter().any(|o| k.starts_with(o.as_str()))
                    && !["generation", "overlay", "overlay-layers", "overlay-images"]
                        .contains(&k.as_str())
            })
            .collect()
    };
    let after_watch = listing(&w.share);
    assert_same_listing(&theirs(shared_before), &theirs(after_watch.clone()));
    assert!(status.success(), "refresh --watch: {status}\n{stderr}");
    let stderr = plain(&stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Exactly one warning per bad id, naming it; no other warnings — but
    // one: the test bumped `generation` by hand, past the writer's index, so
    // the reader says once that it lists the directories instead.
    let stale: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("its index is not current") && l.contains("999 planted"))
        .collect();
    assert_eq!(stale.len(), 1, "the stale index warning: {stderr}");
    let mut warned: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut other = Vec::new();
    for line in stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !stale.contains(l))
    {
        let subject = line
            .split_once("skipping ")
            .and_then(|(_, rest)| rest.split_once(':'))
            .and_then(|(s, _)| s.split_once(' '))
            .filter(|(what, id)| ["layer", "image"].contains(what) && is_id(id));
        match subject {
            Some((what, id)) => {
                *warned
                    .entry((what.to_string(), id.to_string()))
                    .or_default() += 1
            }
            None => other.push(line.to_string()),
        }
    }
    assert!(
        other.is_empty(),
        "unexpected stderr lines:\n{}",
        other.join("\n")
    );
    let expected: BTreeMap<(String, String), usize> = bad
        .iter()
        .map(|(w, i)| ((w.to_string(), i.clone()), 1))
        .collect();
    let mut diffs = Vec::new();
    for (k, n) in &expected {
        if warned.get(k) != Some(n) {
            diffs.push(format!(
                "{} {}: {} warnings",
                k.0,
                k.1,
                warned.get(k).unwrap_or(&0)
            ));
        }
    }
    for (k, n) in &warned {
        if !expected.contains_key(k) {
            diffs.push(format!("{} {}: {n} unexpected warnings", k.0, k.1));
        }
    }
    assert!(
        diffs.is_empty(),
        "warnings per id:\n{}\nstderr:\n{stderr}",
        diffs.join("\n")
    );
    // A warning says why: an image dir that is a symlink out of the share.
    let escaped = stderr
        .lines()
        .find(|l| l.contains(&escaped_image))
        .expect("a warning for the symlinked image dir");
    assert!(escaped.contains("symlink"), "{escaped}");
    eprintln!("{stderr}");

    // Every valid image is listed, nothing else; they mount.
    let listed = ls(&reader);
    let want: BTreeSet<&String> = [&a.id, &b.id, &pv, &pv2, &fixed_image, &completed_image].into();
    assert_eq!(listed.keys().collect::<BTreeSet<_>>(), want);
    assert_eq!(
        listed[&completed_image].1,
        vec![m1.clone(), n2.clone(), n3.clone()]
    );
    assert_eq!(listed[&pv2].1, vec![pv_layer.clone(), pv2_layer.clone()]);
    check_mounted(&reader, &a);
    check_mounted(&reader, &b);
    let mnt = run(&reader, &["mount", &pv2]).ok();
    let mnt = PathBuf::from(mnt.trim());
    // Both layers hold /planted.txt; the upper one shows.
    assert_eq!(
        fs::read_to_string(mnt.join("planted.txt")).expect("planted file"),
        format!("planted layer {pv2_layer}\n")
    );
    run(&reader, &["umount", &pv2]).ok();
    let info: Value = serde_json::from_str(&run(&reader, &["info", "--json"]).ok()).expect("JSON");
    assert_eq!(info["images"]["shared"], 6, "{info}");
    assert!(info["pending_on_share"].as_u64().unwrap_or(0) > 0, "{info}");

    // Nothing outside was read, nothing inside or outside changed.
    for (f, before) in outside_files.iter().zip(&atimes) {
        let now = fs::metadata(f).and_then(|m| m.accessed()).expect("atime");
        assert_eq!(&now, before, "{} was read", f.display());
    }
    assert_same_listing(&outside_before, &listing(&outside));
    assert_same_listing(&after_watch, &listing(&w.share));
    assert!(bad.len() >= 30, "{} bad entries", bad.len());
}

/// `run`, but killed (and reported as hung: `None`) after `limit`.
fn run_limited(root: &Path, args: &[&str], limit: Duration) -> Option<Run> {
    let child = storectl(root, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn storectl");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out.expect("wait storectl");
            Some(Run {
                args: args.iter().map(|s| s.to_string()).collect(),
                status: out.status,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
        Err(_) => {
            kill(pid, rustix::process::Signal::KILL);
            None
        }
    }
}

/// The share's `generation` replaced by a FIFO (or a huge file): readers
/// must neither hang on it nor stop seeing images.
#[test]
#[ignore = "needs root"]
fn junk_generation_file_does_not_hang_readers() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let a = make_image(&w.path("images"), 410, 2, 0);
    load(&writer, &a);
    let reader = w.reader("reader", &w.share, &["--refresh-interval-ms", "100"]);
    let limit = Duration::from_secs(5);
    let mut hung = Vec::new();
    for junk in ["fifo", "huge"] {
        let tmp = w.share.join(".tmp-junk-generation");
        if junk == "fifo" {
            mkfifo(&tmp);
        } else {
            fs::write(&tmp, vec![b'7'; 64 << 20]).expect("huge generation");
        }
        fs::rename(&tmp, w.share.join("generation")).expect("replace generation");
        for args in [&["refresh"][..], &["ls", "--json"], &["info", "--json"]] {
            let started = Instant::now();
            match run_limited(&reader, args, limit) {
                None => hung.push(format!("{junk} generation: storectl {args:?} hung")),
                Some(r) => {
                    let d = r.describe();
                    let out = r.ok();
                    if args[0] == "ls" {
                        assert!(out.contains(&a.id), "{d}");
                    }
                    eprintln!("{junk} generation: {args:?} took {:?}", started.elapsed());
                }
            }
        }
        let watch = Watch::start(&reader, &[]);
        let (status, _, stderr) = watch.stop();
        assert!(status.success(), "refresh --watch: {status} {stderr}");
    }
    assert!(hung.is_empty(), "{}", hung.join("\n"));
}

/// FIFOs where records belong on the share must not hang the writer either
/// (it reads the shared records when it starts a change).
#[test]
#[ignore = "needs root"]
fn junk_fifo_records_do_not_hang_the_writer() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let a = make_image(&w.path("images"), 420, 2, 0);
    let b = make_image(&w.path("images"), 421, 2, 0);
    load(&writer, &a);
    let p = Planter {
        share: w.share.clone(),
    };
    let l = hexid("writer-fifo-layer-json");
    p.overlay_dir(&l, true);
    fs::create_dir(p.layers().join(&l)).expect("record dir");
    mkfifo(&p.layers().join(&l).join("layer.json"));
    let i = hexid("writer-fifo-images-json");
    fs::create_dir(p.images().join(&i)).expect("image dir");
    mkfifo(&p.images().join(&i).join("images.json"));
    let limit = Duration::from_secs(3);
    let dir = b.dir.display().to_string();
    let mut hung = Vec::new();
    for args in [&["ls"][..], &["load", &dir], &["rmi", &a.id]] {
        match run_limited(&writer, args, limit) {
            None => hung.push(format!("writer `storectl {}` hung", args.join(" "))),
            Some(r) => {
                r.ok();
            }
        }
    }
    assert!(hung.is_empty(), "{}", hung.join("\n"));
}

// ---------------------------------------------------------------------------
// 5. A read-only bind mount of the share

#[test]
#[ignore = "needs root"]
fn read_only_bind_mounted_share() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let a = make_image(&w.path("images"), 500, 3, 0);
    let b = make_image(&w.path("images"), 501, 2, 0);
    load(&writer, &a);
    let ro = w.path("ro-share");
    fs::create_dir(&ro).expect("mount point");
    rustix::mount::mount_bind(&w.share, &ro).expect("bind mount");
    rustix::mount::mount_remount(
        &ro,
        rustix::mount::MountFlags::BIND | rustix::mount::MountFlags::RDONLY,
        "",
    )
    .expect("remount read-only");
    let err = fs::write(ro.join("probe"), b"x").expect_err("the bind mount is read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    let reader = w.reader("reader", &ro, &[]);
    let out = run(&reader, &["refresh"]).ok();
    assert_eq!(out.trim(), format!("+ image {} {}", a.id, a.name));
    let listed = ls(&reader);
    assert_eq!(listed.keys().collect::<Vec<_>>(), vec![&a.id]);
    assert_eq!(listed[&a.id].1, a.chain);
    assert!(listed[&a.id].2, "shared");
    check_mounted(&reader, &a);
    run(&reader, &["info"]).ok();
    run(&reader, &["verify"]).ok();

    // The writer goes on; readers on the read-only mount follow.
    load(&writer, &b);
    let out = run(&reader, &["refresh"]).ok();
    assert_eq!(out.trim(), format!("+ image {} {}", b.id, b.name));
    check_mounted(&reader, &b);
    run(&writer, &["rmi", &a.id]).ok();
    let watch = Watch::start(&reader, &[]);
    load(&writer, &a);
    let (seen, skipped) = watch.wait_for(Instant::now() + Duration::from_secs(3), |l| {
        l.starts_with(&format!("+ image {} ", a.id))
    });
    assert!(
        seen.is_some(),
        "the watcher on the read-only mount missed the load: {skipped:?}"
    );
    let (status, _, stderr) = watch.stop();
    assert!(
        status.success() && stderr.trim().is_empty(),
        "{status}: {stderr}"
    );
    let out = run(&reader, &["refresh"]).ok();
    assert_eq!(out.trim(), "", "a and b were both seen before");
    assert_eq!(ls(&reader).len(), 2);
    check_mounted(&reader, &a);
    // A reader's own image still loads (locally) next to the read-only share.
    let local = make_image(&w.path("images"), 502, 2, 0);
    load(&reader, &local);
    check_mounted(&reader, &local);
}

/// A share that goes away (an NFS mount dropped: the reader's links point at
/// an empty mount point) is not an empty share: a watching reader keeps its
/// images instead of reporting every one removed, one-shot verbs say the
/// share is missing, and all is as before once it is back.
#[test]
#[ignore = "needs root"]
fn share_going_away_is_not_an_empty_share() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let a = make_image(&w.path("images"), 510, 2, 0);
    load(&writer, &a);
    let mnt = w.path("mnt");
    fs::create_dir(&mnt).expect("mount point");
    rustix::mount::mount_bind(&w.share, &mnt).expect("bind mount");
    let reader = w.reader(
        "reader",
        &mnt,
        &["--refresh-interval-ms", "100", "--full-rescan-secs", "1"],
    );
    assert!(ls(&reader).contains_key(&a.id));
    let watch = Watch::start(&reader, &[]);
    rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::DETACH).expect("unmount");
    let (seen, _) = watch.wait_for(Instant::now() + Duration::from_millis(2500), |l| {
        l.starts_with("- image")
    });
    let gone = run(&reader, &["ls", "--json"]);
    rustix::mount::mount_bind(&w.share, &mnt).expect("bind mount again");
    let (again, _) = watch.wait_for(Instant::now() + Duration::from_millis(2500), |l| {
        l.starts_with("+ image")
    });
    let (status, _, stderr) = watch.stop();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        seen.is_none() && again.is_none(),
        "the watcher dropped the share's images while it was away: {seen:?}, then {again:?}"
    );
    let d = gone.describe();
    assert_eq!(
        gone.status.code(),
        Some(1),
        "ls while the share is away:\n{d}"
    );
    assert!(ls(&reader).contains_key(&a.id));
}

/// The writer removes an image a reader has mounted: the reader can still
/// unmount it with `storectl umount`.
#[test]
#[ignore = "needs root"]
fn reader_unmounts_an_image_the_writer_removed() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let a = make_image(&w.path("images"), 520, 2, 0);
    load(&writer, &a);
    let reader = w.reader("reader", &w.share, &[]);
    let path = PathBuf::from(run(&reader, &["mount", &a.id]).ok().trim());
    run(&writer, &["rmi", &a.id]).ok();
    assert!(!ls(&reader).contains_key(&a.id));
    let r = run(&reader, &["umount", &a.id]);
    let still = mounts_under(&path);
    let d = r.describe();
    assert!(
        r.status.success(),
        "umount of a removed image on the reader:\n{d}"
    );
    assert!(still.is_empty(), "still mounted: {still:?}");
}

// ---------------------------------------------------------------------------
// 6. One writer per share

/// The junk kinds of `junk_on_the_share_is_skipped_once`, planted on a
/// writer's share next to its images (`a_top`: a real layer). Returns the
/// planted entries (paths) the writer must leave where they are.
fn plant_writer_junk(p: &Planter, outside: &Path, a_top: &str) -> Vec<PathBuf> {
    let id = |label: &str| hexid(&format!("writer-junk/{label}"));
    let mut left = Vec::new();
    let image = |label: &str, bytes: &[u8]| {
        let i = id(label);
        p.image_record(&i, bytes);
        p.images().join(i)
    };
    // 1. Bad JSON, JSON of the wrong shape; 2. huge JSON; 13. empty files.
    left.push(image("bad-json", b"{\"id\": [1, 2,"));
    left.push(image("wrong-shape", b"[]"));
    let i = id("huge");
    left.push(image(
        "huge",
        &huge_json(json!({"id": i, "layer": a_top}), 2 << 20),
    ));
    left.push(image("empty", b""));
    let l = id("bad-json-layer");
    p.layer(&l, b"{\"id\": \"not even closed");
    left.push(p.layers().join(&l));
    let l = id("empty-layer");
    p.layer(&l, b"");
    left.push(p.layers().join(&l));
    // 3. A chain whose middle layer is absent, an image on it.
    let (m1, m2, m3) = (id("m1"), id("m2-absent"), id("m3"));
    p.layer(&m1, &layer_json(&m1, None));
    p.layer(&m3, &layer_json(&m3, Some(&m2)));
    let i = id("on-missing-middle");
    left.push(image(
        "on-missing-middle",
        &image_json(&i, &m3, "localhost/wj3:v1"),
    ));
    // 4. A parent cycle.
    let (c1, c2) = (id("cycle-1"), id("cycle-2"));
    p.layer(&c1, &layer_json(&c1, Some(&c2)));
    p.layer(&c2, &layer_json(&c2, Some(&c1)));
    left.push(p.layers().join(&c1));
    // 5. Symlinks out of the share.
    fs::create_dir_all(outside.join("image")).expect("outside");
    let escaped = id("escaped-image");
    fs::write(
        outside.join("image/images.json"),
        image_json(&escaped, a_top, "localhost/wj5:v1"),
    )
    .expect("outside images.json");
    symlink(outside.join("image"), p.images().join(&escaped)).expect("symlink");
    left.push(p.images().join(&escaped));
    let l = id("escaped-overlay");
    fs::create_dir_all(outside.join("overlay/diff")).expect("outside overlay");
    symlink(outside.join("overlay"), p.overlay().join(&l)).expect("symlink");
    p.layer_record(&l, &layer_json(&l, None));
    left.push(p.overlay().join(&l));
    // 6. Names that are not ids.
    p.image_record(
        "not-an-id",
        &image_json("not-an-id", a_top, "localhost/wj6:v1"),
    );
    left.push(p.images().join("not-an-id"));
    fs::write(p.images().join(".nfs000000009999"), b"silly rename").expect(".nfs");
    left.push(p.images().join(".nfs000000009999"));
    // 8. Unreadable: mode 000, FIFOs, a directory named layer.json.
    let i = id("mode-000");
    left.push(image(
        "mode-000",
        &image_json(&i, &id("nothing"), "localhost/wj8:v1"),
    ));
    fs::set_permissions(p.images().join(&i), fs::Permissions::from_mode(0o000)).expect("chmod");
    let i = id("fifo-images-json");
    fs::create_dir(p.images().join(&i)).expect("image dir");
    mkfifo(&p.images().join(&i).join("images.json"));
    left.push(p.images().join(&i));
    let l = id("dir-layer-json");
    p.overlay_dir(&l, true);
    fs::create_dir_all(p.layers().join(&l).join("layer.json")).expect("dir");
    left.push(p.layers().join(&l));
    // 9. Files where directories belong; empty directories.
    let i = id("file-image");
    fs::write(
        p.images().join(&i),
        image_json(&i, a_top, "localhost/wj9:v1"),
    )
    .expect("file");
    left.push(p.images().join(&i));
    let l = id("file-record");
    p.overlay_dir(&l, true);
    fs::write(p.layers().join(&l), layer_json(&l, None)).expect("file");
    left.push(p.layers().join(&l));
    let l = id("file-overlay");
    fs::write(p.overlay().join(&l), b"not a dir").expect("file");
    p.layer_record(&l, &layer_json(&l, None));
    left.push(p.overlay().join(&l));
    let i = id("empty-image-dir");
    fs::create_dir(p.images().join(&i)).expect("empty dir");
    left.push(p.images().join(&i));
    let l = id("empty-record-dir");
    p.overlay_dir(&l, true);
    fs::create_dir(p.layers().join(&l)).expect("empty dir");
    left.push(p.layers().join(&l));
    // 10. An overlay dir without diff/.
    let l = id("no-diff");
    p.overlay_dir(&l, false);
    p.layer_record(&l, &layer_json(&l, None));
    left.push(p.layers().join(&l));
    // 11. Ids that are not their directory's name.
    left.push(image(
        "image-id-mismatch",
        &image_json(&id("other"), a_top, "localhost/wj11:v1"),
    ));
    let l = id("layer-id-mismatch");
    p.layer(&l, &layer_json(&m1, None));
    left.push(p.layers().join(&l));
    // 12. A top layer that is not hex, a parent that climbs out.
    let i = id("top-not-hex");
    left.push(image(
        "top-not-hex",
        &image_json(&i, "../../../etc", "localhost/wj12:v1"),
    ));
    let l = id("parent-climbs");
    p.layer(&l, &layer_json(&l, Some("../../etc")));
    left.push(p.layers().join(&l));
    // 14. Dangling symlinks.
    let i = id("dangling-image");
    symlink("/nonexistent/storectl-writer", p.images().join(&i)).expect("symlink");
    left.push(p.images().join(&i));
    // 15. Big-data names that climb out.
    let i = id("big-data-climbs");
    let mut v: Value =
        serde_json::from_slice(&image_json(&i, a_top, "localhost/wj15:v1")).expect("json");
    v["big-data-names"] = json!(["../../../../../etc/passwd"]);
    left.push(image(
        "big-data-climbs",
        &serde_json::to_vec(&v).expect("json"),
    ));
    left
}

#[test]
#[ignore = "needs root"]
fn writer_next_to_junk_loads_pulls_and_removes() {
    require_root!();
    if let Some(t) = storectl_fixtures::registry::missing(&["docker-registry", "skopeo"]) {
        panic!("{t} is not installed (apt-get install docker-registry skopeo)");
    }
    let w = World::new();
    let writer = w.writer("writer");
    let a = make_image(&w.path("images"), 700, 3, 0);
    load(&writer, &a);
    let p = Planter {
        share: w.share.clone(),
    };
    let outside = w.path("outside");
    let left = plant_writer_junk(&p, &outside, a.chain.last().expect("a layer"));
    // Junk on the very names the next loads must write: the image dir (a
    // file), a layer's overlay dir (a full dir), a layer record (a bad
    // record), the writer's own legacy link of the image (a plain file).
    let b = make_image(&w.path("images"), 701, 3, 0);
    fs::write(p.images().join(&b.id), b"junk where an image dir goes").expect("plant");
    p.overlay_dir(&b.chain[0], true);
    p.layer_record(&b.chain[1], b"{\"id\": \"junk\"}");
    fs::write(writer.join("overlay-images").join(&b.id), b"junk").expect("plant");
    let in_the_way = [
        p.images().join(&b.id),
        p.overlay().join(&b.chain[0]),
        p.layers().join(&b.chain[1]),
    ];
    let c = make_image(&w.path("images"), 702, 2, 0);
    let reg = storectl_fixtures::registry::Registry::start(None);
    let pulled = make_image(&w.path("images"), 703, 2, 0);
    let tag = pulled.image.tag().expect("a tag");
    storectl_fixtures::registry::skopeo_copy(&pulled.dir, &tag, &reg.r("test/junk:v1"), &[]);

    let mut stderr = String::new();
    // Run a verb that must succeed; each skipped entry warns at most once in it.
    let step = |stderr: &mut String, args: &[&str]| {
        let r = run(&writer, args);
        for line in r.stderr.lines().filter(|l| l.contains("skipping")) {
            let n = r.stderr.lines().filter(|l| *l == line).count();
            assert_eq!(n, 1, "warned {n} times in one run of {args:?}: {line}");
        }
        stderr.push_str(&r.stderr);
        r.ok()
    };
    // A writer that starts clean, then one after a crash (it sweeps): the
    // junk blocks neither.
    step(&mut stderr, &["load", &c.dir.display().to_string()]);
    step(&mut stderr, &["load", &b.dir.display().to_string()]);
    crashed_holder(&w.share.join("writer.lock"));
    step(
        &mut stderr,
        &["pull", &reg.r("test/junk:v1"), "--tls-verify=false"],
    );
    let listed = ls(&writer);
    for img in [&a, &b, &c, &pulled] {
        assert!(
            listed.contains_key(&img.id),
            "{} missing: {listed:?}",
            img.id
        );
    }
    assert_eq!(listed.len(), 4, "only the real images: {listed:?}");
    run(&writer, &["verify"]).ok();
    {
        let mnt = PathBuf::from(step(&mut stderr, &["mount", &b.id]).trim());
        assert!(mnt.join("etc/release").is_file(), "{}", mnt.display());
        step(&mut stderr, &["umount", &b.id]);
    }
    // What sat on a name to write went to the share's trash, each with a
    // warning naming it; the rest stays where it is.
    let trash = w.share.join(".storectl-trash");
    for path in &in_the_way {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(
            fs::read_dir(&trash)
                .expect("the share's trash")
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&name)),
            "{} not in the trash",
            path.display()
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&format!("/{name} ")) && l.contains("moved to")),
            "no warning for {}:\n{stderr}",
            path.display()
        );
    }
    for path in &left {
        assert!(
            fs::symlink_metadata(path).is_ok(),
            "{} was removed",
            path.display()
        );
    }
    // rmi of each (also after another simulated crash).
    crashed_holder(&w.share.join("writer.lock"));
    for img in [&b, &c, &pulled, &a] {
        step(&mut stderr, &["rmi", &img.id]);
    }
    assert!(ls(&writer).is_empty());
    for path in &left {
        assert!(
            fs::symlink_metadata(path).is_ok(),
            "{} was removed",
            path.display()
        );
    }
    let _ = fs::set_permissions(
        p.images().join(hexid("writer-junk/mode-000")),
        fs::Permissions::from_mode(0o755),
    );
}

#[test]
#[ignore = "needs root"]
fn second_writer_is_refused_naming_the_holder() {
    use std::os::unix::process::ExitStatusExt;
    require_root!();
    let w = World::new();
    let first = w.writer("writer-1");
    let second = w.writer("writer-2"); // another host, wrongly set up as a writer too
    let big = make_image(&w.path("images"), 600, 3, 24 << 20);
    let small = make_image(&w.path("images"), 601, 2, 0);
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();

    // Stop the first writer while it holds the lock, in the middle of a load.
    let mut child = storectl(&first, &["load", &big.dir.display().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn load");
    let holder = format!("host {host} pid {}", child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let content = fs::read_to_string(w.share.join("writer.lock")).unwrap_or_default();
        if content.contains(&holder) {
            kill(child.id(), rustix::process::Signal::STOP);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first writer never took the lock"
        );
        thread::sleep(Duration::from_micros(200));
    }
    let still_running = child.try_wait().expect("try_wait").is_none();
    assert!(still_running, "the load ended before it could be stopped");

    let dir = small.dir.display().to_string();
    for (root, args) in [
        (&second, vec!["load", dir.as_str(), "--lock-timeout", "1s"]),
        (
            &second,
            vec!["rmi", big.id.as_str(), "--lock-timeout", "1s"],
        ),
        (
            &second,
            vec![
                "tag",
                big.id.as_str(),
                "localhost/other:v1",
                "--lock-timeout",
                "1s",
            ],
        ),
        (&first, vec!["load", dir.as_str(), "--lock-timeout", "1s"]), // the same root, another process
    ] {
        let started = Instant::now();
        let r = run(root, &args);
        let d = r.describe();
        let stderr = r.fails();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "it waited for the lock: {d}"
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(lines.len(), 1, "one error line:\n{d}");
        assert!(
            lines[0].contains(&holder),
            "the error names the holder ({holder}):\n{d}"
        );
        assert!(lines[0].contains("locked"), "{d}");
    }

    // The first writer goes on and finishes; then the lock is free again.
    kill(child.id(), rustix::process::Signal::CONT);
    let out = child.wait_with_output().expect("wait load");
    assert!(
        out.status.success(),
        "the first load: {:?}",
        out.status.signal()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim().lines().last(),
        Some(big.id.as_str())
    );
    load(&second, &small);
    let listed = ls(&second);
    assert!(
        listed.contains_key(&big.id) && listed.contains_key(&small.id),
        "{listed:?}"
    );
    run(&second, &["verify"]).ok();
}

/// A fixture image written as an OCI layout under `dir`, and its layer
/// blobs' digests.
fn fixture_image(dir: &Path, fixture: &str) -> TestImage {
    let image = storectl_fixtures::valid()
        .into_iter()
        .find(|f| f.name == fixture)
        .expect("a fixture of that name")
        .image;
    let dir = dir.join(fixture);
    let built = write_oci_layout(&dir, std::slice::from_ref(&image)).expect("write OCI layout");
    TestImage {
        id: built[0].id(),
        chain: built[0].chain_ids(),
        name: image.name.clone().expect("a named fixture"),
        image,
        dir,
    }
}

/// A reader's local image on top of a shared layer outlives the writer's
/// removal of that layer: it is skipped (never deleted) with a warning that
/// says how to restore it, and loading it again brings back only what is
/// missing.
#[test]
#[ignore = "needs root"]
fn local_image_on_a_removed_shared_layer_is_restored_by_loading_it_again() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let reader = w.reader("reader", &w.share, &[]);
    let a = fixture_image(&w.path("images"), "shared-a");
    let b = fixture_image(&w.path("images"), "shared-b");
    assert_eq!(
        a.chain[0], b.chain[0],
        "the fixtures share their base layer"
    );
    load(&writer, &a);
    run(&reader, &["refresh"]).ok();
    let load_b = || {
        let r = run(&reader, &["load", &b.dir.display().to_string()]);
        let progress = r.stderr.clone();
        (r.ok(), progress)
    };
    let (_, progress) = load_b();
    assert!(
        progress.contains("already exists"),
        "the base comes from the share: {progress}"
    );
    assert!(!ls(&reader)[&b.id].2, "b is local");

    run(&writer, &["rmi", &a.id]).ok();
    run(&reader, &["refresh"]).ok();
    let listed = run(&reader, &["ls", "--json"]);
    let stderr = plain(&listed.stderr);
    listed.ok();
    assert!(
        stderr.contains(&format!("skipping image {}", b.id)) && stderr.contains("load or pull"),
        "{stderr}"
    );
    assert!(!ls(&reader).contains_key(&b.id));
    let b_top = b.chain.last().expect("a layer");
    assert!(
        w.path("reader")
            .join("overlay")
            .join(b_top)
            .join("diff")
            .is_dir(),
        "the local layer is kept"
    );

    let (out, progress) = load_b();
    // Progress rows are named by layer id (chain id).
    let line_of = |layer: usize| {
        let id = &b.chain[layer][..12];
        progress
            .lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap_or_else(|| panic!("no line for layer {layer}: {progress}"))
            .to_string()
    };
    assert!(
        line_of(0).contains("complete"),
        "the base is imported again: {progress}"
    );
    assert!(
        line_of(1).contains("already exists"),
        "the local layer is reused: {progress}"
    );
    assert_eq!(out.lines().last().map(str::trim), Some(b.id.as_str()));
    let listed = ls(&reader);
    assert_eq!(listed[&b.id].1, b.chain);
    check_mounted(&reader, &b);
    run(&reader, &["verify"]).ok();
}

// ---------------------------------------------------------------------------
// Legacy links on readers, untrusted text from the share, names on a reader

/// A root's legacy links of shared entries: `overlay/<id>`,
/// `overlay-layers/<id>`, `overlay-images/<id>` symlinks, and the
/// `overlay/l/<short>` links whose layer is not a local directory.
fn legacy_links(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for dir in ["overlay", "overlay-layers", "overlay-images", "overlay/l"] {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries {
            let e = e.expect("dir entry");
            if !e.file_type().expect("file type").is_symlink() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "RO" {
                continue;
            }
            // Gone since the readdir: the refresher is removing links.
            let Ok(target) = fs::read_link(e.path()) else {
                continue;
            };
            let target = target.display().to_string();
            if dir == "overlay/l" {
                let id = target.trim_start_matches("../").trim_end_matches("/diff");
                let layer = root.join("overlay").join(id);
                if fs::symlink_metadata(&layer).is_ok_and(|m| m.is_dir()) {
                    continue; // a local layer's short name
                }
            }
            out.insert(format!("{dir}/{name}"), target);
        }
    }
    out
}

/// The legacy links a root should have for these shared images (short names
/// as the share's `link` files say).
fn expected_links(share: &Path, images: &[&TestImage]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for img in images {
        out.insert(
            format!("overlay-images/{}", img.id),
            format!("RO/{}", img.id),
        );
        for id in &img.chain {
            out.insert(format!("overlay/{id}"), format!("RO/{id}"));
            out.insert(format!("overlay-layers/{id}"), format!("RO/{id}"));
            let short =
                fs::read_to_string(share.join("overlay").join(id).join("link")).expect("link file");
            out.insert(
                format!("overlay/l/{}", short.trim()),
                format!("../{id}/diff"),
            );
        }
    }
    out
}

/// Wait (up to `limit`) until `root`'s legacy links are `want`.
#[track_caller]
fn wait_for_links(root: &Path, want: &BTreeMap<String, String>, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let have = legacy_links(root);
        if have == *want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "legacy links after {limit:?}:\n  have {have:#?}\n  want {want:#?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A read-only bind mount of the world's share at `T/name`.
fn read_only_share(w: &World, name: &str) -> PathBuf {
    let ro = w.path(name);
    fs::create_dir(&ro).expect("mount point");
    rustix::mount::mount_bind(&w.share, &ro).expect("bind mount");
    rustix::mount::mount_remount(
        &ro,
        rustix::mount::MountFlags::BIND | rustix::mount::MountFlags::RDONLY,
        "",
    )
    .expect("remount read-only");
    ro
}

/// A reader keeps the legacy layout (`overlay/<id> -> RO/<id>`, …, and the
/// `l/` short names) of shared layers and images in its own root: made within
/// ~2 s of the writer's load, gone within ~2 s of its rmi, repaired by any
/// reader start (stale removed, missing made); local layers untouched;
/// nothing written to the share (a read-only mount).
#[test]
#[ignore = "needs root"]
fn readers_keep_the_legacy_links() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let ro = read_only_share(&w, "ro-share");
    let reader = w.reader("reader", &ro, &[]); // default: 1 s ticks
    let a = make_image(&w.path("images"), 3100, 3, 0);
    let b = make_image(&w.path("images"), 3101, 2, 0);
    let local = make_image(&w.path("images"), 3102, 2, 0);
    load(&reader, &local);
    let limit = Duration::from_secs(2);

    let watch = Watch::start(&reader, &[]);
    load(&writer, &a);
    let took = wait_for_links(&reader, &expected_links(&w.share, &[&a]), limit);
    eprintln!("links made {took:?} after the load");
    // A program reading the legacy layout finds the shared layers.
    for (i, id) in a.chain.iter().enumerate() {
        let path = reader.join("overlay").join(id).join("diff/etc/release");
        let out = Command::new("cat").arg(&path).output().expect("cat");
        assert!(out.status.success(), "cat {}: {out:?}", path.display());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("image 3100 layer {i}\n")
        );
        let record = reader.join("overlay-layers").join(id).join("layer.json");
        assert!(fs::read(&record).is_ok(), "{}", record.display());
    }
    let record = reader
        .join("overlay-images")
        .join(&a.id)
        .join("images.json");
    assert!(fs::read(&record).is_ok(), "{}", record.display());

    run(&writer, &["rmi", &a.id]).ok();
    let took = wait_for_links(&reader, &BTreeMap::new(), limit);
    eprintln!("links removed {took:?} after the rmi");
    let (status, _, stderr) = watch.stop();
    assert!(
        status.success() && stderr.trim().is_empty(),
        "{status}: {stderr}"
    );

    // While no reader runs: b arrives, and the root gets stale and broken links.
    load(&writer, &b);
    let stale = hexid("a layer that left");
    let stale_image = hexid("an image that left");
    for dir in ["overlay", "overlay-layers"] {
        symlink(format!("RO/{stale}"), reader.join(dir).join(&stale)).expect("plant");
    }
    symlink(
        format!("RO/{stale_image}"),
        reader.join("overlay-images").join(&stale_image),
    )
    .expect("plant");
    symlink(
        format!("../{stale}/diff"),
        reader.join("overlay/l/STALESTALESTALESTALESTALE"),
    )
    .expect("plant");
    symlink("RO/elsewhere", reader.join("overlay").join(&b.chain[0])).expect("plant");
    let before = listing(&w.share);
    let out = run(&reader, &["refresh"]).ok();
    assert_eq!(out.trim(), format!("+ image {} {}", b.id, b.name));
    let want = expected_links(&w.share, &[&b]);
    assert_eq!(legacy_links(&reader), want, "repaired at start");
    // Missing ones come back at the next start of any reader verb.
    fs::remove_file(reader.join("overlay-layers").join(&b.chain[1])).expect("rm");
    let short =
        fs::read_to_string(w.share.join("overlay").join(&b.chain[1]).join("link")).expect("link");
    fs::remove_file(reader.join("overlay/l").join(short.trim())).expect("rm");
    run(&reader, &["ls"]).ok();
    assert_eq!(legacy_links(&reader), want, "repaired by ls");

    // Local layers keep their own directories; everything still mounts.
    for id in &local.chain {
        let m = fs::symlink_metadata(reader.join("overlay").join(id)).expect("local layer");
        assert!(m.is_dir(), "local layer {id} is a directory");
    }
    check_mounted(&reader, &b);
    check_mounted(&reader, &local);
    let listed = ls(&reader);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed[&b.id].2 && !listed[&local.id].2);
    // Removing the local image never deletes through a link.
    run(&reader, &["rmi", &local.id]).ok();
    assert_eq!(legacy_links(&reader), want);
    check_mounted(&reader, &b);
    assert_same_listing(&before, &listing(&w.share));
    // Re-running init on the reader (links present) is fine.
    let share = ro.display().to_string();
    run(&reader, &["init", "--shared", &share, "--role", "reader"]).ok();
}

/// Text read from the share is untrusted: an image record whose name is not
/// a reference (a newline that would forge a `+ image` line, an escape
/// sequence) is skipped with a warning; a bogus `created` or digest is
/// dropped; the refresh lines and `ls` show only what is valid.
#[test]
#[ignore = "needs root"]
fn untrusted_text_on_the_share() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let reader = w.reader("reader", &w.share, &[]);
    let a = make_image(&w.path("images"), 3200, 2, 0);
    load(&writer, &a);
    let top = a.chain.last().expect("a layer");
    let p = Planter {
        share: w.share.clone(),
    };
    let fake = hexid("a forged image");
    let forged = hexid("forged by a newline");
    let escaped = hexid("an escape sequence");
    let odd = hexid("a bogus created");
    let record = |id: &str, name: &str| {
        let mut v: Value = serde_json::from_slice(&image_json(id, top, name)).expect("json");
        if id == odd {
            v["created"] = json!("\u{1b}[2J2026-01-01T00:00:00Z");
            v["digest"] = json!("sha256:\u{1b}[31mred");
        }
        serde_json::to_vec(&v).expect("json")
    };
    p.image_record(
        &forged,
        &record(
            &forged,
            &format!("localhost/x:1\n+ image {fake} localhost/forged:1"),
        ),
    );
    p.image_record(&escaped, &record(&escaped, "\u{1b}[2Jlocalhost/esc:1"));
    p.image_record(&odd, &record(&odd, "localhost/odd:1"));

    let r = run(&reader, &["refresh"]);
    let stderr = r.stderr.clone();
    let out = r.ok();
    let lines: BTreeSet<&str> = out.lines().collect();
    let a_line = format!("+ image {} {}", a.id, a.name);
    let odd_line = format!("+ image {odd} localhost/odd:1");
    assert_eq!(
        lines,
        BTreeSet::from([a_line.as_str(), odd_line.as_str()]),
        "refresh printed:\n{out}"
    );
    assert!(!out.contains(&fake) && !out.contains('\u{1b}'), "{out:?}");
    for id in [&forged, &escaped] {
        assert!(
            stderr.contains(&format!("skipping image {id}")) && stderr.contains("invalid name"),
            "no warning for {id}: {stderr}"
        );
    }
    assert!(
        stderr.contains("created"),
        "the dropped created is said: {stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "warnings escape what they quote: {stderr:?}"
    );
    assert!(
        !stderr.lines().any(|l| l.starts_with("+ image")),
        "{stderr}"
    );

    let listed = run(&reader, &["ls", "--json"]).ok();
    let v: Value = serde_json::from_str(&listed).expect("ls --json");
    let ids: BTreeSet<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, BTreeSet::from([a.id.as_str(), odd.as_str()]));
    let odd_entry = v
        .as_array()
        .expect("array")
        .iter()
        .find(|i| i["id"] == json!(odd))
        .expect("odd image");
    assert_eq!(odd_entry["created"], Value::Null, "{odd_entry}");
    assert_eq!(odd_entry["digest"], Value::Null, "{odd_entry}");
    let table = run(&reader, &["ls"]).ok();
    assert!(
        !table.contains('\u{1b}') && !table.contains(&fake),
        "{table:?}"
    );
}

/// A name a local and a shared image both have is the local one's on a
/// reader: it resolves there, `ls` marks the shared row, a warning says so
/// once. A shared image with the id of a local one stays hidden behind it
/// (the local record and names stay) until the local one is removed.
#[test]
#[ignore = "needs root"]
fn names_on_a_reader_are_local_first() {
    require_root!();
    let w = World::new();
    let writer = w.writer("writer");
    let reader = w.reader("reader", &w.share, &[]);
    let dir = w.path("images");
    // The shared image's id sorts first (the old code resolved to it).
    let (shared, local) = (0..)
        .map(|k| {
            (
                make_image(&dir, 3300 + k, 2, 0),
                make_image(&dir, 3400 + k, 2, 0),
            )
        })
        .find(|(s, l)| s.id < l.id)
        .expect("a pair");
    load(&writer, &shared);
    load(&reader, &local);
    let tagged = run(&reader, &["tag", &local.id, &shared.name]);
    let tag_stderr = plain(&tagged.stderr);
    tagged.ok();

    let r = run(&reader, &["inspect", &shared.name]);
    let stderr = plain(&r.stderr);
    let v: Value = serde_json::from_str(&r.ok()).expect("inspect JSON");
    assert_eq!(
        v["id"],
        json!(local.id),
        "the name resolves to the local image"
    );
    let warnings = stderr.matches("names a local and a shared image").count();
    assert_eq!(warnings, 1, "one warning per name: {stderr}");
    assert!(
        tag_stderr.contains("names a local and a shared image"),
        "tag warns: {tag_stderr}"
    );

    let listed = run(&reader, &["ls", "--json"]).ok();
    let v: Value = serde_json::from_str(&listed).expect("ls --json");
    let entry = |id: &str| {
        v.as_array()
            .expect("array")
            .iter()
            .find(|i| i["id"] == json!(id))
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {listed}"))
    };
    assert_eq!(entry(&shared.id)["shadowed_names"], json!([shared.name]));
    assert_eq!(entry(&local.id)["names"], json!([local.name, shared.name]));
    let table = run(&reader, &["ls"]).ok();
    let (repo, tag) = shared.name.rsplit_once(':').expect("a tag");
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with(repo) && l.contains(tag))
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    for row in rows {
        if row.contains(&shared.id[..12]) {
            assert!(
                row.trim_end().ends_with("shared (name shadowed by local)"),
                "{row}"
            );
        } else {
            assert!(
                row.contains(&local.id[..12]) && row.trim_end().ends_with("local"),
                "{row}"
            );
        }
    }

    // Same id: the reader's local image first, then the writer publishes it.
    let both = make_image(&dir, 3500, 2, 0);
    load(&reader, &both);
    run(&reader, &["tag", &both.id, "localhost/mine:1"]).ok();
    load(&writer, &both);
    run(&writer, &["tag", &both.id, "localhost/fromwriter:1"]).ok();
    let out = run(&reader, &["refresh"]).ok();
    assert!(
        !out.contains(&both.id),
        "the hidden copy is no event: {out}"
    );
    // The hidden copy is the same image: its names lead to the local one.
    let r = run(&reader, &["inspect", "localhost/fromwriter:1"]);
    let v: Value = serde_json::from_str(&r.ok()).expect("inspect JSON");
    assert_eq!(v["id"], both.id.as_str(), "{v}");
    let listed = ls(&reader);
    assert_eq!(
        listed[&both.id],
        (
            vec![both.name.clone(), "localhost/mine:1".to_string()],
            both.chain.clone(),
            false
        ),
        "the local record and its names stay"
    );
    check_mounted(&reader, &both);
    // The local copy goes: the shared one shows, with its links.
    let before = listing(&w.share);
    run(&reader, &["rmi", "localhost/mine:1"]).ok();
    run(&reader, &["rmi", &both.name]).ok();
    let listed = ls(&reader);
    assert_eq!(
        listed[&both.id],
        (
            vec![both.name.clone(), "localhost/fromwriter:1".to_string()],
            both.chain.clone(),
            true
        ),
        "the shared copy shows again"
    );
    check_mounted(&reader, &both);
    assert_eq!(
        legacy_links(&reader),
        expected_links(&w.share, &[&shared, &both])
    );
    assert_same_listing(&before, &listing(&w.share));
}
