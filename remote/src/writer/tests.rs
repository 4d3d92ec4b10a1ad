//! The share writer with a writer store: containers/storage's index kept in
//! step with every change, opening (and re-reading) from it, the sweep's
//! rebuild, the legacy names after a crash.

use std::collections::BTreeMap;

use storectl_storage::lock::WriterLock;
use storectl_storage::{Layer, LoadOptions, NoopReporter, Role, RootConfig, IMAGES_JSON};

use super::*;

/// A writer root `tmp/root` wired to its own share `tmp/share` (as
/// `storectl init --role writer` does), opened with [`open_store`].
fn writer(tmp: &Path) -> StoreOptions {
    let (root, share) = (tmp.join("root"), tmp.join("share"));
    for d in ["overlay", "overlay-layers", "overlay-images"] {
        fs::create_dir_all(share.join(d)).unwrap();
        fs::create_dir_all(root.join(d)).unwrap();
        std::os::unix::fs::symlink(share.join(d), root.join(d).join("RO")).unwrap();
    }
    fs::write(share.join("generation"), "0 init\n").unwrap();
    StoreOptions {
        root,
        config: Some(RootConfig {
            role: Role::Writer,
            shared: Some(share),
            ..RootConfig::default()
        }),
        share_hook: Some(hook),
        ..StoreOptions::new("")
    }
}

fn share_of(opts: &StoreOptions) -> PathBuf {
    opts.config.as_ref().unwrap().shared.clone().unwrap()
}

/// For a test that needs root (layer entries owned by root): a temporary
/// directory, [`writer`] options in it, and their share.
fn as_root() -> (tempfile::TempDir, StoreOptions, PathBuf) {
    assert!(
        rustix::process::geteuid().is_root(),
        "needs root: layer entries owned by root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let opts = writer(tmp.path());
    let share = share_of(&opts);
    (tmp, opts, share)
}

/// An OCI layout of image `n` (2 layers, the base shared by every `n`).
fn image_layout(tmp: &Path, n: usize) -> String {
    use storectl_fixtures::{Compression, Entry, Image as Fixture, Layer as FLayer};
    let base = FLayer::new(vec![Entry::file("base", "base\n")], Compression::Gzip);
    let top = FLayer::new(
        vec![Entry::file("top", format!("image {n}\n"))],
        Compression::None,
    );
    let img = Fixture::new(vec![base, top]).named(&format!("localhost/indexed-{n}:v1"));
    let dir = tmp.join(format!("layout-{n}"));
    if !dir.exists() {
        storectl_fixtures::write_oci_layout(&dir, std::slice::from_ref(&img)).unwrap();
    }
    dir.display().to_string()
}

fn load(store: &Store, tmp: &Path, n: usize) -> Image {
    let source = image_layout(tmp, n);
    store
        .load(&source, &LoadOptions::default(), &NoopReporter)
        .unwrap()
}

fn writer_of(store: &Store) -> &ShareWriter {
    let hook = store.share_hook().expect("opened with the share writer");
    hook.as_any().downcast_ref::<ShareWriter>().unwrap()
}

/// Did the store's open (or last re-read) take the index? Its share
/// writer then knows the index's lines, nothing serialized.
fn seeded(store: &Store) -> bool {
    writer_of(store).knows_index()
}

type Records = (BTreeMap<String, Layer>, BTreeMap<String, Image>);

/// The store's state as its per-id records give it (a store opened
/// without the share writer, re-read from the records).
fn from_records(opts: &StoreOptions) -> Records {
    let store = Store::open(StoreOptions {
        share_hook: None,
        ..opts.clone()
    })
    .unwrap();
    store.reload().unwrap();
    in_memory(&store)
}

fn in_memory(store: &Store) -> Records {
    // Whole records: a lazily opened store parses each here.
    store.with_state(|st| {
        let layers = st.layers.iter().map(|(k, v)| (k.clone(), v.clone()));
        let images = st.images.iter().map(|(k, v)| (k.clone(), v.clone()));
        (layers.collect(), images.collect())
    })
}

/// The layer and image ids containers/storage's index on `share` lists,
/// after checking that its stamp vouches for the share's `generation`.
fn indexed(share: &Path) -> (Vec<String>, Vec<String>) {
    let generation = fs::read_to_string(share.join("generation")).unwrap();
    let layers = fs::read(csindex::layers_index(share)).unwrap();
    let images = fs::read(csindex::images_index(share)).unwrap();
    let stamp = cache::read_stamp(share).expect("a stamp");
    assert!(
        stamp.is_current(&generation, layers.len() as u64, images.len() as u64),
        "{stamp:?} for {generation:?}"
    );
    let l = csindex::parse_layers(&layers).unwrap();
    let i = csindex::parse_images(&images).unwrap();
    // In id order but for records a load appended since the last rewrite.
    (
        sorted(l.records.into_iter().map(|(l, _)| l.id).collect()),
        sorted(i.records.into_iter().map(|(i, _)| i.id).collect()),
    )
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// Every change leaves the index listing what the store holds, with a
/// current stamp, and the files containers/storage reads beside it.
#[test]
fn the_index_follows_every_change() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = writer(tmp.path());
    let share = share_of(&opts);
    fs::write(
        share.join("storectl-share.json"),
        r#"{"removed_layers_grace_secs": 0}"#,
    )
    .unwrap();
    let store = open_store(opts.clone()).unwrap();
    let (zero, one) = (load(&store, tmp.path(), 0), load(&store, tmp.path(), 1));
    let layer_ids = || sorted(store.layers().into_iter().map(|l| l.id).collect());
    let image_ids = || sorted(store.images().into_iter().map(|i| i.id).collect());
    assert_eq!(indexed(&share), (layer_ids(), image_ids()));
    assert_eq!(layer_ids().len(), 3, "the base once");
    for layer in store.layers() {
        let split = share
            .join("overlay-layers")
            .join(format!("{}.tar-split.gz", layer.id));
        assert!(split.is_file(), "{}", split.display());
        let short = links::read_short_name(&share.join("overlay"), &layer.id).unwrap();
        let link = share.join("overlay/l").join(short);
        assert_eq!(fs::read_link(link).unwrap(), links::short_target(&layer.id));
    }
    store.tag(&zero.id, "localhost/zero:v2").unwrap();
    let images = fs::read(csindex::images_index(&share)).unwrap();
    assert!(String::from_utf8_lossy(&images).contains("localhost/zero:v2"));
    store.remove_image(&one.id, false).unwrap();
    assert_eq!(indexed(&share), (layer_ids(), vec![zero.id.clone()]));
    let top = one.layer.clone().unwrap();
    assert!(!share
        .join("overlay-layers")
        .join(format!("{top}.tar-split.gz"))
        .exists());
    assert_eq!(from_records(&opts), in_memory(&store));
}

#[test]
#[ignore = "needs root"]
fn a_writer_opens_from_a_current_index_and_falls_back_otherwise() {
    let (tmp, opts, share) = as_root();
    {
        let store = open_store(opts.clone()).unwrap();
        assert!(!seeded(&store), "no index yet");
        for n in 0..3 {
            load(&store, tmp.path(), n);
        }
        store
            .tag("localhost/indexed-0:v1", "localhost/renamed:v2")
            .unwrap();
    }
    let records = {
        let store = open_store(opts.clone()).unwrap();
        assert!(
            seeded(&store),
            "a released lock and a current stamp: the index"
        );
        let records = from_records(&opts);
        assert_eq!(
            in_memory(&store),
            records,
            "the index gives what the records give"
        );
        assert_eq!(records.1.len(), 3);
        assert_eq!(records.0.len(), 4);
        // A mutation of a store opened from the index keeps index and
        // records in step.
        let img = store.resolve_image("localhost/indexed-1:v1").unwrap();
        store.remove_image(&img.id, false).unwrap();
        load(&store, tmp.path(), 1);
        from_records(&opts)
    };
    let store = open_store(opts.clone()).unwrap();
    assert!(seeded(&store));
    assert_eq!(in_memory(&store), records);
    drop(store);

    // A stale stamp (another generation): the records.
    let generation = fs::read_to_string(share.join("generation")).unwrap();
    fs::write(share.join("generation"), "999 elsewhere\n").unwrap();
    let store = open_store(opts.clone()).unwrap();
    assert!(!seeded(&store), "stale stamp");
    assert_eq!(in_memory(&store), records);
    drop(store);
    fs::write(share.join("generation"), &generation).unwrap();

    // The last holder crashed (no `released`): the records.
    let lock = share.join("writer.lock");
    let text = fs::read_to_string(&lock).unwrap();
    assert!(text.contains("released"), "{text}");
    fs::write(&lock, "host elsewhere pid 1\n").unwrap();
    let store = open_store(opts.clone()).unwrap();
    assert!(!seeded(&store), "crashed holder");
    assert_eq!(in_memory(&store), records);
    drop(store);
    fs::write(&lock, &text).unwrap();

    // An index that does not parse, at the stamp's size: the records.
    let images_json = csindex::images_index(&share);
    let good = fs::read(&images_json).unwrap();
    let mut bad = good.clone();
    let at = bad.iter().position(|&b| b == b'{').unwrap();
    bad[at] = b'x';
    fs::write(&images_json, &bad).unwrap();
    let store = open_store(opts.clone()).unwrap();
    assert!(!seeded(&store), "unclean index");
    assert_eq!(in_memory(&store), records);
    drop(store);
    fs::write(&images_json, &good).unwrap();
    let store = open_store(opts).unwrap();
    assert!(seeded(&store), "current again");
}

#[test]
#[ignore = "needs root"]
fn a_long_lived_writer_rereads_from_the_index_after_another_process() {
    let (tmp, opts, share) = as_root();
    let long = open_store(opts.clone()).unwrap();
    load(&long, tmp.path(), 0);
    let other = open_store(opts.clone()).unwrap();
    let one = load(&other, tmp.path(), 1);
    drop(other);
    // Which source the next re-read takes shows: the record of image 1
    // says one name, the index (current, the other process let go
    // normally) another.
    let record = share.join("overlay-images").join(&one.id).join(IMAGES_JSON);
    let text = fs::read_to_string(&record).unwrap();
    fs::write(&record, text.replace("indexed-1", "only-in-the-record")).unwrap();
    long.tag("localhost/indexed-0:v1", "localhost/zero:v2")
        .unwrap();
    let names = long.with_state(|st| st.images[&one.id].names.clone());
    assert_eq!(
        names,
        vec!["localhost/indexed-1:v1".to_string()],
        "from the index"
    );
    // After a crash (another process moved `generation` on and never let
    // go of the lock), the records.
    let mut lock = WriterLock::acquire(&long.layout().writer_lock()).unwrap();
    fs::write(share.join("generation"), "1000 crashed\n").unwrap();
    lock.leave_unreleased();
    drop(lock);
    long.tag("localhost/indexed-0:v1", "localhost/zero:v3")
        .unwrap();
    let names = long.with_state(|st| st.images[&one.id].names.clone());
    assert_eq!(
        names,
        vec!["localhost/only-in-the-record:v1".to_string()],
        "from the records"
    );
}

/// Layers an `rmi` leaves waiting out the grace period are in no image's
/// chain, so not in the index: a writer opened from the index still knows
/// them (from their records), and its gc deletes them.
#[test]
#[ignore = "needs root"]
fn a_writer_opened_from_the_index_knows_the_layers_waiting_to_go() {
    let (tmp, opts, share) = as_root();
    fs::write(
        share.join("storectl-share.json"),
        r#"{"removed_layers_grace_secs": 3600}"#,
    )
    .unwrap();
    let waiting = {
        let store = open_store(opts.clone()).unwrap();
        for n in 0..2 {
            load(&store, tmp.path(), n);
        }
        let one = store.resolve_image("localhost/indexed-1:v1").unwrap();
        let top = one.layer.clone().unwrap();
        store.remove_image(&one.id, false).unwrap();
        assert!(
            store.removals().layers.contains_key(&top),
            "its top layer waits"
        );
        top
    };
    let store = open_store(opts.clone()).unwrap();
    assert!(seeded(&store), "opened from the index");
    assert!(store.layer(&waiting).is_ok(), "the waiting layer is known");
    assert_eq!(in_memory(&store), from_records(&opts));
    let report = store.gc(Some(0)).unwrap();
    assert_eq!(report.deleted, vec![waiting.clone()]);
    assert!(!share.join("overlay").join(&waiting).exists());
    assert!(!share.join("overlay-layers").join(&waiting).exists());
}

/// After a crash, the next change's sweep rebuilds the index (moving
/// what sits on its names aside) and the per-entry files a crash left
/// stale or missing.
#[test]
fn the_sweep_after_a_crash_rebuilds_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = writer(tmp.path());
    let share = share_of(&opts);
    let store = open_store(opts.clone()).unwrap();
    let zero = load(&store, tmp.path(), 0);
    let top = zero.layer.clone().unwrap();
    let split = share
        .join("overlay-layers")
        .join(format!("{top}.tar-split.gz"));
    fs::remove_file(&split).unwrap();
    let stale = share
        .join("overlay-layers")
        .join(format!("{}.tar-split.gz", "e".repeat(64)));
    fs::write(&stale, "left by a crash").unwrap();
    fs::remove_file(csindex::layers_index(&share)).unwrap();
    fs::create_dir(csindex::layers_index(&share)).unwrap(); // in the way
    let mut lock = WriterLock::acquire(&store.layout().writer_lock()).unwrap();
    lock.leave_unreleased();
    drop(lock);
    store.tag(&zero.id, "localhost/zero:v2").unwrap();
    assert_eq!(
        indexed(&share),
        (
            sorted(store.layers().into_iter().map(|l| l.id).collect()),
            vec![zero.id.clone()]
        )
    );
    assert!(split.is_file() && !stale.exists());
    let trash = share.join(fsutil::TRASH);
    assert_eq!(
        fs::read_dir(trash).unwrap().count(),
        1,
        "the directory went aside"
    );
}

/// A writer's legacy names of its shared entries: dangling ones go,
/// missing ones come back.
#[test]
fn a_writer_restores_its_legacy_links_and_drops_dangling_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(writer(tmp.path())).unwrap();
    let image = load(&store, tmp.path(), 0);
    let top = image.layer.clone().unwrap();
    let short = store.driver().short_link_path(&top).unwrap();
    let layout = store.layout();
    let links = [
        layout.overlay().join(&top),
        layout.layers().join(&top),
        layout.images().join(&image.id),
    ];
    for link in links.iter().chain([&short]) {
        fs::remove_file(link).unwrap();
    }
    let gone = "d".repeat(64);
    let dangling = layout.layers().join(&gone);
    std::os::unix::fs::symlink(links::id_target(&gone), &dangling).unwrap();
    writer_of(&store).repair_legacy_links(&store).unwrap();
    assert_eq!(fs::read_link(&links[0]).unwrap(), links::id_target(&top));
    assert_eq!(fs::read_link(&links[1]).unwrap(), links::id_target(&top));
    assert_eq!(
        fs::read_link(&links[2]).unwrap(),
        links::id_target(&image.id)
    );
    assert_eq!(fs::read_link(&short).unwrap(), links::short_target(&top));
    assert!(fs::symlink_metadata(&dangling).is_err());
    assert!(layout.overlay().join(&top).join("diff/top").is_file());
}

/// `index_appends` in `storectl-share.json`: absent, unreadable or true =
/// appends; false = none.
#[test]
fn the_share_settings_say_whether_loads_append() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path();
    assert!(appends_allowed(Some(share)), "no settings file");
    let file = share.join(crate::share::SHARE_FILE);
    for (text, want) in [
        (r#"{"overlay_xattrs": "user"}"#, true),
        (r#"{"overlay_xattrs": "user", "index_appends": true}"#, true),
        (
            r#"{"overlay_xattrs": "user", "index_appends": false}"#,
            false,
        ),
        ("not json", true),
    ] {
        fs::write(&file, text).unwrap();
        assert_eq!(appends_allowed(Some(share)), want, "{text}");
    }
    assert!(appends_allowed(None));
}
