//! The writer side of a store, driven through the real `storectl` binary.
//!
//! * `a_second_writer_waits_for_the_lock` — two `storectl` processes on one
//!   root: the second waits (saying after a second who holds the lock) and
//!   goes on once the first is done; with `--lock-timeout` it gives up,
//!   naming the holder.
//! * `an_image_deeper_than_overlayfs_is_refused_before_anything_is_written`
//!   — 501 layers: a clear error, the root unchanged.
//! * `a_killed_load_of_a_deep_image_leaves_few_staging_dirs` — staging dirs
//!   are made as layers start and published batch by batch: killed midway, a
//!   load leaves at most `jobs` of them (and the next load cleans up).

#![allow(clippy::print_stderr)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Env, STORECTL};
use storectl_fixtures::{write_oci_layout, Compression, Entry, Image, Layer};

fn host() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// A one-layer image (OCI layout at `dir`) whose layer is `seed`'s files.
fn small_image(dir: &Path, seed: &str) -> String {
    let image = Image::new(vec![Layer::new(
        vec![
            Entry::dir("etc"),
            Entry::file("etc/seed", format!("{seed}\n")),
        ],
        Compression::Gzip,
    )])
    .named(&format!("localhost/{seed}:v1"));
    write_oci_layout(dir, &[image]).expect("OCI layout")[0].id()
}

/// A `storectl load` stopped (SIGSTOP) while it holds the writer lock;
/// [`Held::release`] lets it go on.
struct Held {
    child: Child,
    id: String,
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    let _ = rustix::process::kill_process(pid, sig);
}

impl Held {
    /// Start `storectl load` of a 32 MB image and stop it as soon as it
    /// holds the lock at `lock`.
    fn start(env: &Env, root: &Path, name: &str, lock: &Path) -> Held {
        let dir = env.path(name);
        let big: Vec<u8> = (0..32u64 << 20)
            .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
            .collect();
        let image = Image::new(vec![Layer::new(
            vec![
                Entry::file("held", format!("{name}\n")),
                Entry::file("big", big),
            ],
            Compression::None,
        )])
        .named(&format!("localhost/{name}:v1"));
        let built = write_oci_layout(&dir, &[image]).expect("OCI layout");
        let mut child = Command::new(STORECTL)
            .arg("--root")
            .arg(root)
            .args(["load", &dir.display().to_string()])
            .env_remove("STORECTL_ROOT")
            .env_remove("STORECTL_LOCK_TIMEOUT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn load");
        let holder = format!("host {} pid {}", host(), child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if fs::read_to_string(lock)
                .unwrap_or_default()
                .contains(&holder)
            {
                signal(child.id(), rustix::process::Signal::STOP);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the first writer never took the lock"
            );
            thread::sleep(Duration::from_micros(200));
        }
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the first load ended before it could be stopped"
        );
        Held {
            child,
            id: built[0].id(),
        }
    }

    fn holder(&self) -> String {
        format!("host {} pid {}", host(), self.child.id())
    }

    /// Let the load go on; it must succeed.
    fn release(self) {
        signal(self.child.id(), rustix::process::Signal::CONT);
        let out = self.child.wait_with_output().expect("wait load");
        assert!(
            out.status.success(),
            "the first load failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().last(),
            Some(self.id.as_str())
        );
    }
}

/// A running `storectl` whose stderr lines arrive on a channel.
struct Waiter {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Waiter {
    fn start(root: &Path, args: &[&str]) -> Waiter {
        let mut child = Command::new(STORECTL)
            .arg("--root")
            .arg(root)
            .args(args)
            .env_remove("STORECTL_ROOT")
            .env_remove("STORECTL_LOCK_TIMEOUT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn storectl");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Waiter {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Wait up to `limit` for a stderr line containing `what`.
    fn line_containing(&mut self, what: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(what) {
                        return Some(line);
                    }
                }
                Err(_) => break,
            }
        }
        None
    }

    /// Wait for the exit; (exit code, stdout, every stderr line).
    fn finish(mut self) -> (Option<i32>, String, Vec<String>) {
        let out = self.child.wait_with_output().expect("wait");
        self.stderr.extend(self.lines.iter());
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            self.stderr,
        )
    }
}

#[test]
#[ignore = "needs root"]
fn a_second_writer_waits_for_the_lock() {
    require_root!();
    let env = Env::new();
    let lock = env.root.join("storage.lock");
    let b_dir = env.path("b");
    let b = small_image(&b_dir, "second");

    // The second load waits for the first, says whom it waits for (after
    // about a second, once), and goes on when the first is done.
    let first = Held::start(&env, &env.root, "first", &lock);
    let started = Instant::now();
    let mut second = Waiter::start(&env.root, &["load", &b_dir.display().to_string()]);
    let notice = second.line_containing("waiting for the store lock", Duration::from_secs(10));
    let waited = started.elapsed();
    let Some(notice) = notice else {
        panic!(
            "no waiting notice; stderr: {:?}; the second load's exit: {:?}",
            second.stderr,
            second.child.try_wait()
        );
    };
    assert!(
        notice.contains(&first.holder()),
        "the notice names the holder ({}): {notice}",
        first.holder()
    );
    assert!(
        waited >= Duration::from_millis(900),
        "noticed after {waited:?}, not after a second"
    );
    thread::sleep(Duration::from_millis(1500));
    assert!(
        second.child.try_wait().expect("try_wait").is_none(),
        "the second load did not wait: {:?}",
        second.stderr
    );
    first.release();
    let (code, stdout, stderr) = second.finish();
    assert_eq!(code, Some(0), "the second load: {stderr:?}");
    assert_eq!(stdout.lines().last(), Some(b.as_str()));
    let notices = stderr.iter().filter(|l| l.contains("waiting")).count();
    assert_eq!(notices, 1, "one notice: {stderr:?}");
    assert!(!stderr.iter().any(|l| l.contains("error")), "{stderr:?}");
    let ids: Vec<String> = env
        .ls()
        .iter()
        .map(|i| i["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let _ = fs::remove_dir_all(env.path("first"));

    // `--lock-timeout` bounds the wait: the error names the holder.
    let held = Held::start(&env, &env.root, "third", &lock);
    for args in [
        vec!["--lock-timeout", "1s", "rmi", b.as_str()],
        vec![
            "tag",
            "--lock-timeout",
            "500ms",
            b.as_str(),
            "localhost/other:v1",
        ],
    ] {
        let started = Instant::now();
        let r = env.run(&args);
        let waited = started.elapsed();
        let line = r.err_containing("locked");
        assert!(line.contains(&held.holder()), "{line}");
        assert!(
            waited >= Duration::from_millis(450) && waited < Duration::from_secs(5),
            "{args:?} gave up after {waited:?}"
        );
    }
    // `0`: no wait at all.
    let started = Instant::now();
    env.run(&["--lock-timeout", "0", "rmi", &b])
        .err_containing(&held.holder());
    assert!(started.elapsed() < Duration::from_millis(900));
    held.release();
    env.run(&["rmi", &b]).ok();
}

/// Every path below `dir` (not following symlinks), with its size.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let meta = e.metadata().expect("metadata");
            let p = e.path();
            out.push((
                p.display().to_string(),
                if meta.is_dir() { 0 } else { meta.len() },
            ));
            if meta.is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

/// An image of `n` small layers (one file each), as an OCI layout at `dir`.
fn deep_image(dir: &Path, n: usize, file_size: usize) -> String {
    let layers: Vec<Layer> = (0..n)
        .map(|i| {
            let content: Vec<u8> = (0..file_size).map(|j| (i * 31 + j) as u8).collect();
            Layer::new(
                vec![Entry::file(&format!("layer-{i:04}"), content)],
                Compression::None,
            )
        })
        .collect();
    let image = Image::new(layers).named(&format!("localhost/deep-{n}:v1"));
    write_oci_layout(dir, &[image]).expect("OCI layout")[0].id()
}

/// Entries of `dir` whose name starts with `.staging-`.
fn staging_in(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".staging-"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "needs root"]
fn an_image_deeper_than_overlayfs_is_refused_before_anything_is_written() {
    require_root!();
    let env = Env::new();
    let dir = env.path("deep");
    deep_image(&dir, 501, 16);
    env.run(&["ls"]).ok(); // the root exists, as after any use
    let before = listing(&env.root);
    let line = env
        .run(&["load", &dir.display().to_string()])
        .err_containing("501 layers");
    assert!(line.contains("500"), "the limit is named: {line}");
    assert_eq!(
        listing(&env.root),
        before,
        "the refused load wrote to the root"
    );
    // 500 is fine (overlayfs' own maximum).
    let ok = env.path("deep-500");
    let id = deep_image(&ok, 500, 16);
    assert_eq!(env.load(&ok, &[]), id);
}

#[test]
#[ignore = "needs root"]
fn a_killed_load_of_a_deep_image_leaves_few_staging_dirs() {
    require_root!();
    let env = Env::new();
    let dir = env.path("deep");
    let id = deep_image(&dir, 300, 64 << 10);
    let jobs = 3;
    let mut child = Command::new(STORECTL)
        .arg("--root")
        .arg(&env.root)
        .args([
            "load",
            &dir.display().to_string(),
            "--jobs",
            &jobs.to_string(),
        ])
        .env_remove("STORECTL_ROOT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn load");
    // Kill it once it has started well over `jobs` layers: published layers
    // (their `l/` short names) plus those being staged.
    let overlay = env.root.join("overlay");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut most_staging = 0;
    loop {
        let staging = staging_in(&overlay);
        most_staging = most_staging.max(staging);
        let published = fs::read_dir(overlay.join("l"))
            .map(|rd| rd.count())
            .unwrap_or(0);
        if published + staging >= 60 {
            signal(child.id(), rustix::process::Signal::KILL);
            break;
        }
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the load ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "the load made no progress");
        thread::sleep(Duration::from_millis(2));
    }
    child.wait().expect("wait");
    let left = staging_in(&overlay) + staging_in(&env.root.join("overlay-layers"));
    assert!(
        left <= jobs + 1 && most_staging <= jobs,
        "{left} staging dirs left by the killed load ({most_staging} at once while it ran; jobs = {jobs})"
    );
    // The next writer sweeps what the killed one left and loads the image.
    assert_eq!(env.load(&dir, &[]), id);
    assert_eq!(staging_in(&overlay), 0);
    assert_eq!(env.image_layers(&id).len(), 300);
}

/// A record on a writer's share that the writer did not write is checked as a
/// reader checks it: a name that is not a reference (one that would forge a
/// line) skips the record with a warning, on the writer too. (A writer whose
/// index is current opens from it and never reads that record; one that
/// reads the records — here after a crashed holder — skips it.)
#[test]
#[ignore = "needs root"]
fn a_writer_skips_a_share_record_with_an_invalid_name() {
    require_root!();
    let env = Env::new();
    let share = env.path("share");
    env.run(&[
        "init",
        "--shared",
        &share.display().to_string(),
        "--role",
        "writer",
    ])
    .ok();
    common::set_removed_layers_grace(&share, 0);
    let id = small_image(&env.path("img"), "named");
    env.run(&["load", &env.path("img").display().to_string()])
        .ok();
    // A copy of the real record under another id, with a forging name.
    let images = share.join("overlay-images");
    let forged = "f".repeat(64);
    let record = fs::read_to_string(images.join(&id).join("images.json")).expect("the record");
    let mut v: serde_json::Value = serde_json::from_str(&record).expect("JSON");
    v["id"] = forged.clone().into();
    v["names"] = serde_json::json!(["evil\n+ image x", "ok/\u{1b}[2Jname:1"]);
    fs::create_dir(images.join(&forged)).unwrap();
    fs::write(
        images.join(&forged).join("images.json"),
        serde_json::to_vec(&v).unwrap(),
    )
    .unwrap();
    // From the index (current, the last holder let go): not even read.
    let run = env.run(&["ls", "--json"]);
    let out = run.ok();
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).expect("ls --json");
    let ids: Vec<&str> = listed.iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids, [id.as_str()], "only the real image: {out}");
    // The writer's next process opens the store from the records (the last
    // holder of the lock crashed).
    fs::write(share.join("writer.lock"), "host elsewhere pid 1\n").expect("lock file");
    let run = env.run(&["ls", "--json"]);
    let stderr = run.stderr.clone();
    let out = run.ok();
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).expect("ls --json");
    let ids: Vec<&str> = listed.iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids, [id.as_str()], "only the real image: {out}");
    assert!(
        stderr.contains(&forged) && stderr.contains("invalid name"),
        "a warning names the skipped record: {stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}
