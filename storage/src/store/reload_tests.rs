//! `reload` against a concurrent refresher delta.

use std::cell::RefCell;

use super::test_support::{id, image, layer, reader};
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

#[test]
fn reload_keeps_a_refresher_delta_applied_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(reader(tmp.path()));
    let (base, old, new) = (id("base"), id("old image"), id("new image"));
    store.apply_shared(SharedDelta {
        add_layers: vec![layer(&base, None, false)],
        add_images: vec![image(&old, &base, &[], false)],
        ..SharedDelta::default()
    });
    // The refresher's next delta lands while `reload` is between its disk
    // read and installing the result.
    let refresher_store = std::sync::Arc::clone(&store);
    let delta = SharedDelta {
        add_images: vec![image(&new, &base, &[], false)],
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
