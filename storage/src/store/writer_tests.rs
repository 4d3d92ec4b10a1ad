//! Unit tests of the writer side of [`Store`]: `reload` against a concurrent
//! refresher delta.

use std::cell::RefCell;

use super::*;

thread_local! {
    /// Run once by [`Store::reload`] between reading the disk and installing
    /// the result (this thread only).
    static AFTER_DISK_READ: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
}

pub(super) fn after_disk_read() {
    if let Some(hook) = AFTER_DISK_READ.with(|h| h.borrow_mut().take()) {
        hook();
    }
}

fn hex(label: &str) -> String {
    crate::digest::sha256_digest(label.as_bytes())
        .trim_start_matches("sha256:")
        .to_string()
}

fn layer(id: &str) -> Layer {
    meta::parse_layer(format!(r#"{{"id":"{id}"}}"#).as_bytes(), id).unwrap()
}

fn image(id: &str, top: &str) -> Image {
    meta::parse_image(format!(r#"{{"id":"{id}","layer":"{top}"}}"#).as_bytes(), id).unwrap()
}

#[test]
fn reload_keeps_a_refresher_delta_applied_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir_all(&share).unwrap();
    let store = std::sync::Arc::new(
        Store::open(StoreOptions {
            root: tmp.path().join("root"),
            config: Some(RootConfig {
                role: Role::Reader,
                shared: Some(share),
                ..RootConfig::default()
            }),
            ..StoreOptions::new("")
        })
        .unwrap(),
    );
    let (base, old, new) = (hex("base"), hex("old image"), hex("new image"));
    store.apply_shared(SharedDelta {
        add_layers: vec![layer(&base)],
        add_images: vec![image(&old, &base)],
        ..SharedDelta::default()
    });
    // The refresher's next delta lands while `reload` is between its disk
    // read and installing the result.
    let refresher_store = std::sync::Arc::clone(&store);
    let delta = SharedDelta {
        add_images: vec![image(&new, &base)],
        remove_images: vec![old.clone()],
        ..SharedDelta::default()
    };
    let hook: Box<dyn FnOnce()> = Box::new(move || refresher_store.apply_shared(delta));
    AFTER_DISK_READ.with(|h| *h.borrow_mut() = Some(hook));
    store.reload().unwrap();
    assert!(
        AFTER_DISK_READ.with(|h| h.borrow().is_none()),
        "the hook did not run"
    );
    store.with_state(|s| {
        assert!(s.images.contains_key(&new), "the added image was lost");
        assert!(!s.images.contains_key(&old), "the removed image came back");
        assert!(s.layers.contains_key(&base));
    });
}

// ---------------------------------------------------------------------------
// A writer's open from containers/storage's index (crate::index_state).

/// A writer root wired to its own share (as `storectl init --role writer`).
fn writer(tmp: &Path) -> StoreOptions {
    let (root, share) = (tmp.join("root"), tmp.join("share"));
    for d in ["overlay", "overlay-layers", "overlay-images"] {
        fs::create_dir_all(share.join(d)).unwrap();
        fs::create_dir_all(root.join(d)).unwrap();
        std::os::unix::fs::symlink(share.join(d), root.join(d).join(RO)).unwrap();
    }
    fs::write(share.join("generation"), "0 init\n").unwrap();
    StoreOptions {
        root,
        config: Some(RootConfig {
            role: Role::Writer,
            shared: Some(share),
            ..RootConfig::default()
        }),
        ..StoreOptions::new("")
    }
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
    storectl_fixtures::write_oci_layout(&dir, std::slice::from_ref(&img)).unwrap();
    dir.display().to_string()
}

/// Did the store's open (or last re-read) take the index? Its cache was
/// then seeded with the files' lines, nothing serialized.
fn seeded(store: &Store) -> bool {
    store.index.lock().is_ready()
}

/// The store's state as its per-id records give it.
fn from_records(store: &Store) -> (BTreeMap<String, Layer>, BTreeMap<String, Image>) {
    let st = store.read_state().unwrap();
    (st.layers, st.images)
}

fn in_memory(store: &Store) -> (BTreeMap<String, Layer>, BTreeMap<String, Image>) {
    store.with_state(|st| (st.layers.clone(), st.images.clone()))
}

#[test]
#[ignore = "needs root"]
fn a_writer_opens_from_a_current_index_and_falls_back_otherwise() {
    assert!(
        rustix::process::geteuid().is_root(),
        "needs root: layer entries owned by root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let opts = writer(tmp.path());
    let share = opts.config.as_ref().unwrap().shared.clone().unwrap();
    {
        let store = Store::open(opts.clone()).unwrap();
        assert!(!seeded(&store), "no index yet");
        for n in 0..3 {
            store
                .load(
                    &image_layout(tmp.path(), n),
                    &LoadOptions::default(),
                    &crate::NoopReporter,
                )
                .unwrap();
        }
        store
            .tag("localhost/indexed-0:v1", "localhost/renamed:v2")
            .unwrap();
    }
    let records = {
        let store = Store::open(opts.clone()).unwrap();
        assert!(
            seeded(&store),
            "a released lock and a current stamp: the index"
        );
        let records = from_records(&store);
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
        store
            .load(
                &image_layout(tmp.path(), 1),
                &LoadOptions::default(),
                &crate::NoopReporter,
            )
            .unwrap();
        from_records(&store)
    };
    let store = Store::open(opts.clone()).unwrap();
    assert!(seeded(&store));
    assert_eq!(in_memory(&store), records);
    drop(store);

    // A stale stamp (another generation): the records.
    let generation = fs::read_to_string(share.join("generation")).unwrap();
    fs::write(share.join("generation"), "999 elsewhere\n").unwrap();
    let store = Store::open(opts.clone()).unwrap();
    assert!(!seeded(&store), "stale stamp");
    assert_eq!(in_memory(&store), records);
    drop(store);
    fs::write(share.join("generation"), &generation).unwrap();

    // The last holder crashed (no `released`): the records.
    let lock = share.join("writer.lock");
    let text = fs::read_to_string(&lock).unwrap();
    assert!(text.contains("released"), "{text}");
    fs::write(&lock, "host elsewhere pid 1\n").unwrap();
    let store = Store::open(opts.clone()).unwrap();
    assert!(!seeded(&store), "crashed holder");
    assert_eq!(in_memory(&store), records);
    drop(store);
    fs::write(&lock, &text).unwrap();

    // An index that does not parse, at the stamp's size: the records.
    let images_json = crate::share_index::images_index(&share);
    let good = fs::read(&images_json).unwrap();
    let mut bad = good.clone();
    let at = bad.iter().position(|&b| b == b'{').unwrap();
    bad[at] = b'x';
    fs::write(&images_json, &bad).unwrap();
    let store = Store::open(opts.clone()).unwrap();
    assert!(!seeded(&store), "unclean index");
    assert_eq!(in_memory(&store), records);
    drop(store);
    fs::write(&images_json, &good).unwrap();
    let store = Store::open(opts).unwrap();
    assert!(seeded(&store), "current again");
}

#[test]
#[ignore = "needs root"]
fn a_long_lived_writer_rereads_from_the_index_after_another_process() {
    assert!(
        rustix::process::geteuid().is_root(),
        "needs root: layer entries owned by root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let opts = writer(tmp.path());
    let share = opts.config.as_ref().unwrap().shared.clone().unwrap();
    let long = Store::open(opts.clone()).unwrap();
    let load = |store: &Store, n| {
        store
            .load(
                &image_layout(tmp.path(), n),
                &LoadOptions::default(),
                &crate::NoopReporter,
            )
            .unwrap()
    };
    load(&long, 0);
    let other = Store::open(opts.clone()).unwrap();
    let one = load(&other, 1);
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
    // After a crash, the records.
    let other = Store::open(opts.clone()).unwrap();
    let mut lock = WriterLock::acquire(&other.layout.writer_lock()).unwrap();
    other.bump_generation().unwrap();
    lock.leave_unreleased();
    drop(lock);
    drop(other);
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
    assert!(
        rustix::process::geteuid().is_root(),
        "needs root: layer entries owned by root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let opts = writer(tmp.path());
    let share = opts.config.as_ref().unwrap().shared.clone().unwrap();
    fs::write(
        share.join("storectl-share.json"),
        r#"{"removed_layers_grace_secs": 3600}"#,
    )
    .unwrap();
    let waiting = {
        let store = Store::open(opts.clone()).unwrap();
        for n in 0..2 {
            store
                .load(
                    &image_layout(tmp.path(), n),
                    &LoadOptions::default(),
                    &crate::NoopReporter,
                )
                .unwrap();
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
    let store = Store::open(opts.clone()).unwrap();
    assert!(seeded(&store), "opened from the index");
    assert!(store.layer(&waiting).is_ok(), "the waiting layer is known");
    assert_eq!(in_memory(&store), from_records(&store));
    let report = store.gc(Some(0)).unwrap();
    assert_eq!(report.deleted, vec![waiting.clone()]);
    assert!(!share.join("overlay").join(&waiting).exists());
    assert!(!share.join("overlay-layers").join(&waiting).exists());
}
