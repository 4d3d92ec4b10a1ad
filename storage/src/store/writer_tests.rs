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
