//! A reader's saved view and its use of the share's index (issue 10, points
//! 3 and 4, reader side), driven through the real `storectl` binary: a writer
//! and a reader process on one shared directory.
//!
//! * `ls_starts_from_the_saved_view` — with `generation` unchanged, `ls`
//!   lists what the reader validated last without reading the share's
//!   entries (a record damaged in place, junk planted by hand: not seen);
//!   an entry removed by hand makes the directories' link counts fall short
//!   and the reader lists the directories, with a warning; `refresh
//!   --rescan` lists them on demand. A damaged view is ignored with a
//!   warning and rebuilt.
//! * `changes_are_seen_through_the_index` — loads, a tag and an `rmi` on the
//!   writer reach one-shot `ls`, `refresh` and `info` through the index;
//!   only the new ids are read (a known record damaged in place stays as it
//!   was validated); the reader's legacy links follow.
//! * `a_missing_stale_or_damaged_index_falls_back_to_the_directories` — no
//!   stamp, a stamp of another generation, a torn file, garbage with a
//!   matching stamp, a symlink, a 300 MB file: one warning each, and the
//!   reader lists what the directories hold.
//! * `a_local_image_on_a_waiting_shared_layer_stays` — the index lists only
//!   the layers of its images; a shared layer waiting out the grace period
//!   after the writer's `rmi` still carries a reader's local image (its
//!   directories are looked at), until the writer's `gc` deletes it.
//! * `a_hostile_index_never_lists_what_the_directories_do_not_hold` — an id
//!   with no directory, `../` ids, duplicate ids, an index that keeps an
//!   image the writer removed, names that are not the record's, an id whose
//!   record is bad: never listed, never a crash.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use common::{Env, Run};
use serde_json::{json, Value};
use storectl_fixtures::{write_oci_layout, Compression, Entry, Image, Layer};

const STAMP: &str = "storectl-index.json";
const LAYERS: &str = "overlay-layers/layers.json";
const IMAGES: &str = "overlay-images/images.json";

/// A writer root and a reader root on one share.
struct World {
    env: Env,
    share: PathBuf,
    writer: PathBuf,
    reader: PathBuf,
}

impl World {
    fn new() -> World {
        let env = Env::new();
        let (share, writer, reader) = (env.path("share"), env.path("writer"), env.path("reader"));
        fs::create_dir_all(&share).unwrap();
        for (root, role) in [(&writer, "writer"), (&reader, "reader")] {
            env.run_root(
                root,
                &[
                    "init",
                    "--shared",
                    &share.display().to_string(),
                    "--role",
                    role,
                ],
            )
            .ok();
        }
        World {
            env,
            share,
            writer,
            reader,
        }
    }

    /// An OCI layout of a two-layer image on a shared base, named
    /// `localhost/NAME:v1`.
    fn image(&self, name: &str) -> PathBuf {
        let dir = self.env.path(&format!("images/{name}"));
        let base = Layer::new(
            vec![Entry::dir("etc"), Entry::file("etc/base", "shared base\n")],
            Compression::Gzip,
        );
        let top = Layer::new(
            vec![Entry::file(&format!("etc/{name}"), format!("{name}\n"))],
            Compression::Gzip,
        );
        let image = Image::new(vec![base, top]).named(&format!("localhost/{name}:v1"));
        write_oci_layout(&dir, &[image]).expect("OCI layout");
        dir
    }

    fn load(&self, name: &str) -> String {
        let dir = self.image(name);
        let out = self
            .env
            .run_root(&self.writer, &["load", &dir.display().to_string()])
            .ok();
        out.lines().last().unwrap().trim().to_string()
    }

    fn writer(&self, args: &[&str]) -> String {
        self.env.run_root(&self.writer, args).ok()
    }

    fn reader(&self, args: &[&str]) -> Run {
        self.env.run_root(&self.reader, args)
    }

    /// `ls --json` on the reader: id → names; with its stderr.
    fn ls(&self) -> (BTreeMap<String, Vec<String>>, String) {
        let run = self.reader(&["ls", "--json"]);
        let stderr = run.stderr.clone();
        let v: Value = serde_json::from_str(&run.ok()).expect("ls --json");
        let listed = v
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["id"].as_str().unwrap().to_string(),
                    common::strings(&i["names"]),
                )
            })
            .collect();
        (listed, stderr)
    }

    /// The ids `ls` lists, asserting it warned about nothing.
    fn ls_quiet(&self) -> Vec<String> {
        let (listed, stderr) = self.ls();
        assert!(stderr.trim().is_empty(), "unexpected warnings:\n{stderr}");
        listed.into_keys().collect()
    }

    /// Where the reader's last one-shot scan read the share from (`info`
    /// runs the same scan as `ls`).
    fn source(&self) -> (String, u64) {
        let v: Value = serde_json::from_str(&self.reader(&["info", "--json"]).ok()).unwrap();
        let scan = &v["share_scan"];
        (
            scan["source"].as_str().unwrap().to_string(),
            scan["fallbacks"].as_u64().unwrap(),
        )
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.share.join(rel)
    }

    fn generation(&self) -> String {
        fs::read_to_string(self.path("generation")).unwrap()
    }

    /// Publish an index as a writer would (files, stamp, `generation`), but
    /// with any content: the stamp names a new generation and the files'
    /// sizes, so a reader takes it as current.
    fn forge(&self, layers: Option<&[u8]>, images: Option<&[u8]>) {
        if let Some(b) = layers {
            fs::write(self.path(LAYERS), b).unwrap();
        }
        if let Some(b) = images {
            fs::write(self.path(IMAGES), b).unwrap();
        }
        let size = |rel: &str| fs::symlink_metadata(self.path(rel)).map_or(0, |m| m.len());
        let gen = format!("{} forged\n", self.generation().len() + rand_suffix());
        let stamp =
            json!({"generation": gen, "layers-size": size(LAYERS), "images-size": size(IMAGES)});
        fs::write(self.path(STAMP), serde_json::to_vec(&stamp).unwrap()).unwrap();
        fs::write(self.path(".tmp-gen"), &gen).unwrap();
        fs::rename(self.path(".tmp-gen"), self.path("generation")).unwrap();
    }

    /// Bump `generation` by hand (the index is then stale).
    fn bump(&self) {
        let gen = format!("{} by hand\n", rand_suffix());
        fs::write(self.path(".tmp-gen"), &gen).unwrap();
        fs::rename(self.path(".tmp-gen"), self.path("generation")).unwrap();
    }

    /// The index's records, parsed.
    fn records(&self, rel: &str) -> Vec<Value> {
        serde_json::from_slice::<Value>(&fs::read(self.path(rel)).unwrap())
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

/// A number unlike the last one (generation texts must differ).
fn rand_suffix() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(1000);
    N.fetch_add(1, Ordering::Relaxed) + std::process::id() as usize
}

fn one_line_with(stderr: &str, what: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one warning ({what}), got:\n{stderr}"
    );
    assert!(
        lines[0].contains(what) && lines[0].contains("reading its directories instead"),
        "expected a warning with {what:?}:\n{stderr}"
    );
}

/// A way to spoil the index after a writer's change.
type Spoil = Box<dyn Fn(&World)>;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn ls_starts_from_the_saved_view() {
    let w = World::new();
    let a = w.load("a");
    let b = w.load("b");
    assert_eq!(w.ls_quiet(), sorted(vec![a.clone(), b.clone()]));
    assert!(w.reader.join("share-view").is_file(), "the view is saved");
    assert_eq!(w.source(), ("view".into(), 0));

    // Nothing on the share is read again: a record damaged in place (no
    // writer, no generation) does not change what is listed.
    let record = w.path(&format!("overlay-images/{a}/images.json"));
    let good = fs::read(&record).unwrap();
    fs::write(&record, b"{ damaged").unwrap();
    let (listed, stderr) = w.ls();
    assert!(stderr.trim().is_empty(), "{stderr}");
    assert_eq!(listed[&a], vec!["localhost/a:v1".to_string()]);
    fs::write(&record, &good).unwrap();

    // An image removed by hand: the share's link counts fall short of the
    // view, and the reader lists the directories.
    let trash = w.env.path("trash");
    fs::rename(w.path(&format!("overlay-images/{b}")), &trash).unwrap();
    let (listed, stderr) = w.ls();
    one_line_with(&stderr, "fewer than the 2 ids");
    assert_eq!(listed.keys().cloned().collect::<Vec<_>>(), vec![a.clone()]);
    assert_eq!(w.source(), ("view".into(), 0), "the view was saved again");
    fs::rename(&trash, w.path(&format!("overlay-images/{b}"))).unwrap();

    // Junk planted by hand is not seen until the directories are listed.
    let junk = "f".repeat(64);
    fs::create_dir(w.path(&format!("overlay-images/{junk}"))).unwrap();
    assert_eq!(w.ls_quiet(), vec![a.clone()]);
    let rescan = w.reader(&["refresh", "--rescan"]);
    assert_eq!(rescan.code, Some(0), "{rescan:?}");
    assert!(
        rescan.stderr.contains(&junk) && rescan.stderr.contains("skipping image"),
        "{}",
        rescan.stderr
    );
    assert!(
        rescan.stdout.contains(&format!("+ image {b}")),
        "{}",
        rescan.stdout
    );
    assert_eq!(w.ls_quiet(), sorted(vec![a.clone(), b.clone()]));

    // A damaged view is ignored with a warning, and saved anew.
    let view = w.reader.join("share-view");
    let mut bytes = fs::read(&view).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    fs::write(&view, &bytes).unwrap();
    let (listed, stderr) = w.ls();
    assert!(
        stderr.contains("ignoring the share view") && stderr.contains("checksum"),
        "{stderr}"
    );
    assert_eq!(listed.len(), 2);
    fs::write(&view, &bytes[..n / 3]).unwrap();
    let (listed, stderr) = w.ls();
    assert!(stderr.contains("truncated"), "{stderr}");
    assert_eq!(listed.len(), 2);
    assert_eq!(w.ls_quiet().len(), 2, "the view was rebuilt");
    assert_eq!(w.source(), ("view".into(), 0));
}

#[test]
fn changes_are_seen_through_the_index() {
    let w = World::new();
    let a = w.load("a");
    assert_eq!(w.ls_quiet(), vec![a.clone()]);
    let b = w.load("b");
    assert_eq!(w.ls_quiet(), sorted(vec![a.clone(), b.clone()]));
    w.load("c-unused"); // moves generation on
    assert_eq!(w.source(), ("index".into(), 0));

    // Only new ids are read: a known record damaged in place (after the
    // writer's load, which reads every record) stays as it was validated,
    // while the new image joins.
    let d = w.load("d");
    let record = w.path(&format!("overlay-images/{a}/images.json"));
    let good = fs::read(&record).unwrap();
    fs::write(&record, b"{ damaged").unwrap();
    let (listed, stderr) = w.ls();
    assert!(stderr.trim().is_empty(), "{stderr}");
    assert!(
        listed.contains_key(&d) && listed.contains_key(&a),
        "{listed:?}"
    );
    assert_eq!(listed[&a], vec!["localhost/a:v1".to_string()]);
    fs::write(&record, &good).unwrap();

    // A name the writer adds is seen (the index's names differ from the
    // reader's: the record is read again).
    w.writer(&["tag", &a, "localhost/a:v2"]);
    let (listed, stderr) = w.ls();
    assert!(stderr.trim().is_empty(), "{stderr}");
    assert_eq!(
        sorted(listed[&a].clone()),
        vec!["localhost/a:v1".to_string(), "localhost/a:v2".to_string()]
    );

    // A removal, through one-shot `refresh`: it says what changed.
    let out = w.reader(&["refresh"]).ok();
    w.writer(&["rmi", &b]);
    assert_eq!(w.source(), ("index".into(), 0));
    let out2 = w.reader(&["refresh"]).ok();
    assert!(out2.contains(&format!("- image {b}")), "{out}\n---\n{out2}");
    let ids = w.ls_quiet();
    assert!(!ids.contains(&b) && ids.contains(&a), "{ids:?}");

    // The reader's legacy links follow the index's changes.
    let links = w.reader.join("overlay-images");
    assert!(fs::symlink_metadata(links.join(&a)).unwrap().is_symlink());
    assert!(
        fs::symlink_metadata(links.join(&b)).is_err(),
        "b's link is gone"
    );
    assert!(fs::symlink_metadata(links.join(&d)).unwrap().is_symlink());
}

#[test]
fn a_missing_stale_or_damaged_index_falls_back_to_the_directories() {
    let w = World::new();
    let a = w.load("a");
    assert_eq!(w.ls_quiet(), vec![a.clone()]);
    let mut want = vec![a.clone()];

    // Each case: the writer publishes an image, then the index is spoiled.
    let cases: Vec<(&str, &str, Spoil)> = vec![
        (
            "missing",
            "has no index",
            Box::new(|w| fs::remove_file(w.path(STAMP)).unwrap()),
        ),
        ("stale", "is not current", Box::new(|w| w.bump())),
        (
            "torn",
            "is not current",
            Box::new(|w| {
                let bytes = fs::read(w.path(IMAGES)).unwrap();
                fs::write(w.path(IMAGES), &bytes[..bytes.len() / 2]).unwrap();
            }),
        ),
        (
            "garbage",
            "is damaged",
            Box::new(|w| w.forge(Some(b"[{\"id\": oops"), None)),
        ),
        (
            "symlink",
            "cannot be read",
            Box::new(|w| {
                let real = w.env.path("real-images.json");
                fs::rename(w.path(IMAGES), &real).unwrap();
                std::os::unix::fs::symlink(&real, w.path(IMAGES)).unwrap();
                w.forge(None, None);
            }),
        ),
        (
            "huge",
            "more than",
            Box::new(|w| {
                let f = fs::File::create(w.path(LAYERS)).unwrap();
                f.set_len(300 << 20).unwrap(); // sparse
                w.forge(None, None);
            }),
        ),
    ];
    for (i, (case, warning, spoil)) in cases.iter().enumerate() {
        let id = w.load(&format!("img{i}"));
        want.push(id.clone());
        spoil(&w);
        let (listed, stderr) = w.ls();
        one_line_with(&stderr, warning);
        assert_eq!(
            listed.keys().cloned().collect::<Vec<_>>(),
            sorted(want.clone()),
            "{case}"
        );
        assert_eq!(w.source(), ("view".into(), 0), "{case}: the view was saved");
        // The writer's next mutation rebuilds the index: quiet again.
        if *case == "symlink" {
            fs::remove_file(w.path(IMAGES)).unwrap();
        }
        w.writer(&["tag", &a, &format!("localhost/a:case{i}")]);
        let ids = w.ls_quiet();
        assert_eq!(
            ids,
            sorted(want.clone()),
            "{case}: after the writer's repair"
        );
        assert_eq!(w.source(), ("view".into(), 0));
    }
}

#[test]
fn a_hostile_index_never_lists_what_the_directories_do_not_hold() {
    let w = World::new();
    let a = w.load("a");
    let b = w.load("b");
    assert_eq!(w.ls_quiet(), sorted(vec![a.clone(), b.clone()]));
    let images = fs::read(w.path(IMAGES)).unwrap();
    let layers = fs::read(w.path(LAYERS)).unwrap();
    let original = w.records(IMAGES);
    let with_image = |extra: Value| -> Vec<u8> {
        let mut recs = original.clone();
        recs.push(extra);
        serde_json::to_vec(&recs).unwrap()
    };
    let top_of_a = original.iter().find(|r| r["id"] == a.as_str()).unwrap()["layer"].clone();
    let check = |what: &str, warning: &str| {
        let (listed, stderr) = w.ls();
        one_line_with(&stderr, warning);
        let ids: Vec<String> = listed.keys().cloned().collect();
        assert_eq!(ids, sorted(vec![a.clone(), b.clone()]), "{what}");
        assert_eq!(listed[&a], vec!["localhost/a:v1".to_string()], "{what}");
    };

    // An id that has no directory on the share.
    let ghost = "9".repeat(64);
    w.forge(
        None,
        Some(&with_image(
            json!({"id": ghost, "names": ["localhost/ghost:v1"], "layer": top_of_a}),
        )),
    );
    check(
        "an id without a directory",
        "disagrees with its directories",
    );
    // Ids that climb out, upper case, empty.
    for bad in [
        "../../../../etc",
        "../overlay-images/x",
        "",
        &"A".repeat(64),
    ] {
        w.forge(
            None,
            Some(&with_image(json!({"id": bad, "layer": top_of_a}))),
        );
        check(&format!("id {bad:?}"), "invalid id");
    }
    w.forge(
        Some(&serde_json::to_vec(&json!([{"id": "../x"}])).unwrap()),
        Some(&images),
    );
    check("a layer id that climbs out", "invalid id");
    w.forge(Some(&layers), None);
    // The same id twice.
    let dup = original
        .iter()
        .find(|r| r["id"] == a.as_str())
        .unwrap()
        .clone();
    w.forge(None, Some(&with_image(dup)));
    check("a duplicate id", "listed twice");
    // Names that are not the record's: the record's names are listed.
    let mut recs = original.clone();
    for r in &mut recs {
        if r["id"] == a.as_str() {
            r["names"] = json!(["localhost/evil:v1", "\u{1b}[2Jx"]);
        }
    }
    w.forge(None, Some(&serde_json::to_vec(&recs).unwrap()));
    assert_eq!(w.source(), ("index".into(), 0));
    let (listed, stderr) = w.ls();
    assert!(stderr.trim().is_empty(), "{stderr}");
    assert_eq!(listed[&a], vec!["localhost/a:v1".to_string()]);

    // An id listed by the index whose directory holds a bad record: read
    // (it is new), skipped with a warning, not listed.
    let bad = "8".repeat(64);
    let dir = w.path(&format!("overlay-images/{bad}"));
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("images.json"), b"{\"id\": \"nope\"}").unwrap();
    w.forge(
        None,
        Some(&with_image(json!({"id": bad, "layer": top_of_a}))),
    );
    let (listed, stderr) = w.ls();
    assert!(
        stderr.contains(&bad) && stderr.contains("skipping image"),
        "{stderr}"
    );
    assert!(!listed.contains_key(&bad));
    fs::remove_dir_all(&dir).unwrap();
    w.forge(None, Some(&images));
    assert_eq!(w.ls_quiet(), sorted(vec![a.clone(), b.clone()]));

    // An index that keeps an image the writer removed (its directory is
    // gone, the stamp is current): the link counts fall short.
    let old_images = fs::read(w.path(IMAGES)).unwrap();
    let old_layers = fs::read(w.path(LAYERS)).unwrap();
    w.writer(&["rmi", &b]);
    assert!(!w.path(&format!("overlay-images/{b}")).exists());
    w.forge(Some(&old_layers), Some(&old_images));
    let (listed, stderr) = w.ls();
    one_line_with(&stderr, "fewer than");
    assert_eq!(listed.keys().cloned().collect::<Vec<_>>(), vec![a.clone()]);
    // …and the reader kept nothing of it: the next lie is caught the same way.
    w.forge(Some(&old_layers), Some(&old_images));
    let (listed, _) = w.ls();
    assert_eq!(listed.keys().cloned().collect::<Vec<_>>(), vec![a.clone()]);
}

#[test]
fn a_local_image_on_a_waiting_shared_layer_stays() {
    let w = World::new();
    common::set_removed_layers_grace(&w.share, 3600);
    let a = w.load("a");
    assert_eq!(w.ls_quiet(), vec![a.clone()]);
    // A local image of the reader on the shared base layer.
    let dir = w.image("local");
    let out = w.reader(&["load", &dir.display().to_string()]).ok();
    let local = out.lines().last().unwrap().trim().to_string();
    assert_eq!(w.ls_quiet(), sorted(vec![a.clone(), local.clone()]));
    // The writer removes the shared image: its layers wait on the share,
    // out of the index; the reader reads the index and keeps them.
    w.writer(&["rmi", &a]);
    assert_eq!(w.ls_quiet(), vec![local.clone()]);
    // An index that lists the layers of its images only (what a writer
    // rebuilding it from its images writes): no image left, no layer listed,
    // while the waiting layers' directories are still on the share.
    assert!(w.records(IMAGES).is_empty());
    w.forge(Some(b"[]\n"), None);
    assert_eq!(w.source(), ("index".into(), 0));
    assert_eq!(w.ls_quiet(), vec![local.clone()]);
    // The writer deletes the waiting layers: the local image loses its base.
    w.writer(&["gc", "--grace", "0"]);
    let (listed, stderr) = w.ls();
    assert!(!listed.contains_key(&local), "{listed:?}");
    assert!(stderr.contains(&local), "{stderr}");
}
