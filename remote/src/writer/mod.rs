//! The writer side of sharing: what a writer store keeps on its share for
//! other programs, beside the per-id directories it publishes —
//! containers/storage's index (`layers.json`, `images.json`, the stamp,
//! the lock files' change tokens: `cache.rs`), the files containers/storage
//! reads beside it (each shared layer's `<id>.tar-split.gz` and
//! `overlay/l/<short>`, each shared image's big data under its own names)
//! — and, after a crash, the writer root's legacy names of shared entries.
//!
//! [`ShareWriter`] is the [`ShareHook`] a writer [`Store`] calls at fixed
//! points of every change ([`storectl_storage::share_hook`]); [`open_store`]
//! opens a store with it. The format, the write order and what a reader may
//! trust are the crate documentation's of `storectl-storage`
//! ("containers/storage's index on a share") and docs/sharing.md.

use std::any::Any;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use storectl_storage::csindex::{self, Stamp};
use storectl_storage::digest::is_hex64;
use storectl_storage::fsutil::{self, create_dir, sync_dir, unique_suffix};
use storectl_storage::links::{self, Outcome};
use storectl_storage::{
    list_id_entries, Change, Error, Image, IndexLines, IoContext, Layout, Result, ShareHook, State,
    Store, StoreOptions,
};

mod cache;
mod lines;
#[cfg(test)]
mod tests;

use cache::IndexCache;

/// Open the store `opts` names with the writer side of sharing installed
/// (a writer root needs it to change anything; any other root ignores it).
/// Programs that may open a writer root open stores with this.
pub fn open_store(mut opts: StoreOptions) -> Result<Store> {
    opts.share_hook = Some(hook);
    Store::open(opts)
}

/// A writer store's [`ShareWriter`], as
/// [`StoreOptions::share_hook`](storectl_storage::StoreOptions::share_hook)
/// makes it.
pub fn hook(layout: &Layout) -> Box<dyn ShareHook> {
    Box::new(ShareWriter::new(layout))
}

/// The writer side of sharing for one writer store.
#[derive(Debug)]
pub struct ShareWriter {
    layout: Layout,
    share: PathBuf,
    /// What is known of the index on the share.
    cache: Mutex<IndexCache>,
    /// Warnings already given (each once per store).
    warned: Mutex<BTreeSet<String>>,
}

/// Whether the share's settings let a load append to the index files
/// (`index_appends` in `storectl-share.json`; unreadable = yes, as absent).
fn appends_allowed(share: Option<&Path>) -> bool {
    share
        .and_then(crate::share::ShareConfig::recorded)
        .is_none_or(|c| c.index_appends)
}

impl ShareWriter {
    /// The share writer of the store at `layout` (a writer's: its share is
    /// `layout.config.shared`).
    pub fn new(layout: &Layout) -> ShareWriter {
        ShareWriter {
            layout: layout.clone(),
            share: layout.config.shared.clone().unwrap_or_default(),
            cache: Mutex::new(IndexCache::new(appends_allowed(
                layout.config.shared.as_deref(),
            ))),
            warned: Mutex::default(),
        }
    }

    /// Does the share writer know the index on the share (read at open or
    /// at a re-read, or made current before a change)?
    pub fn knows_index(&self) -> bool {
        self.cache.lock().is_ready()
    }

    fn warn_once(&self, message: String) {
        if self.warned.lock().insert(message.clone()) {
            tracing::warn!("{message}");
        }
    }

    /// Move what sits on a name of ours on the share to its trash.
    fn move_aside(&self, path: &Path, what: &str) -> Result<()> {
        fsutil::move_to_trash(&self.share, path, what)
    }

    /// (Re)build containers/storage's index on the share from `store`'s
    /// state — the lock files, each shared layer's `l/<short>` link and
    /// tar-split link, each shared image's big-data links (those missing),
    /// then both index files and the stamp for `generation`. Runs when a
    /// change finds the index missing or not current, and in every sweep
    /// after a crash.
    fn rebuild_index(&self, store: &Store, generation: &str) -> Result<()> {
        let share = &self.share;
        tracing::info!(
            "rebuilding containers/storage's index on {}",
            share.display()
        );
        // Whatever sits on a name of the index that is not what we write
        // there (a directory, a symlink, a FIFO) goes out of the way.
        let what = "containers/storage's index";
        for rel in cache::FILES {
            let path = share.join(rel);
            if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
                self.move_aside(&path, what)?;
            }
        }
        let l_dir = self.layout.overlay_ro().join("l");
        if fs::symlink_metadata(&l_dir).is_ok_and(|m| !m.is_dir()) {
            self.move_aside(&l_dir, what)?;
        }
        cache::ensure_lock_files(share)?;
        self.repair_index_entries(store)?;
        let synced = {
            let mut cache = self.cache.lock();
            cache.invalidate();
            store.with_state(|state| {
                cache.init(share, state, None);
                cache.sync(share, state, Change::Other)
            })?
        };
        let stamp = Stamp {
            generation: generation.to_string(),
            layers_size: synced.layers_size,
            images_size: synced.images_size,
        };
        cache::write_stamp(share, &stamp)
    }

    /// The per-entry files containers/storage needs beside the index, for
    /// every shared layer and image `store` knows, made where missing.
    fn repair_index_entries(&self, store: &Store) -> Result<()> {
        let (layers, images): (Vec<String>, Vec<Image>) = store.with_state(|st| {
            (
                st.layers
                    .values()
                    .filter(|l| l.shared)
                    .map(|l| l.id.clone())
                    .collect(),
                st.images.values().filter(|i| i.shared).cloned().collect(),
            )
        });
        // What a crash left of layers that are gone: short names and
        // tar-splits of ids no shared layer has.
        let known: BTreeSet<&str> = layers.iter().map(String::as_str).collect();
        let l_dir = self.layout.overlay_ro().join("l");
        for (short, id) in links::short_links(&l_dir).at(&l_dir)? {
            if id.as_deref().is_none_or(|id| !known.contains(id)) {
                let path = l_dir.join(&short);
                tracing::info!("removing the stale link {}", path.display());
                allow_missing(fs::remove_file(&path)).at(&path)?;
            }
        }
        let layers_ro = self.layout.layers_ro();
        for entry in fs::read_dir(&layers_ro).at(&layers_ro)? {
            let name = entry.at(&layers_ro)?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".tar-split.gz")) else {
                continue;
            };
            if is_hex64(id) && !known.contains(id) {
                let path = layers_ro.join(&name);
                if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                    tracing::info!("removing the stale {}", path.display());
                    allow_missing(fs::remove_file(&path)).at(&path)?;
                } else {
                    self.move_aside(&path, "containers/storage's index")?;
                }
            }
        }
        for id in &layers {
            self.link_short_name(id)?;
            self.link_tar_split(id, false)?;
        }
        for image in &images {
            let dir = self.layout.images_ro().join(&image.id);
            link_big_data(&dir, image, false)?;
        }
        Ok(())
    }

    /// `<share>/overlay/l/<short> -> ../<id>/diff` for shared layer `id`
    /// (its short name read from its `link` file, without following
    /// symlinks). A name held by something else is left, with a warning.
    fn link_short_name(&self, id: &str) -> Result<()> {
        let overlay_ro = self.layout.overlay_ro();
        let Some(short) = links::read_short_name(&overlay_ro, id) else {
            self.warn_once(format!(
                "shared layer {id} has no valid link file: containers/storage cannot \
                 mount images on it"
            ));
            return Ok(());
        };
        let l_dir = overlay_ro.join("l");
        create_dir(&l_dir)?;
        let path = l_dir.join(&short);
        let outcome = links::add_link(&path, &links::short_target(id), false).at(&path)?;
        if outcome == Outcome::Occupied {
            self.warn_once(format!(
                "{} is not a link to layer {id}'s diff: left alone (containers/storage \
                 cannot mount images on that layer)",
                path.display()
            ));
        }
        Ok(())
    }

    /// `<share>/overlay-layers/<id>.tar-split.gz`, a hardlink of the
    /// layer's own tar-split; `replace` = even if something is there.
    fn link_tar_split(&self, id: &str, replace: bool) -> Result<()> {
        let dir = self.layout.layers_ro();
        let name = format!("{id}.tar-split.gz");
        let dest = dir.join(&name);
        if !replace && fs::symlink_metadata(&dest).is_ok() {
            return Ok(());
        }
        if fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_file()) {
            self.move_aside(&dest, &format!("layer {id}"))?;
        }
        let src = dir.join(id).join(&name);
        let tmp = dir.join(format!(".tmp-{}", unique_suffix()));
        match fs::hard_link(&src, &tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&tmp, e)),
        }
        fs::rename(&tmp, &dest).at(&dest).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    /// The writer root's legacy names (`<id> -> RO/<id>` in `overlay/`,
    /// `overlay-layers/`, `overlay-images/`, and `overlay/l/<short>`): drop
    /// those whose target is gone, create those a crash left missing — for
    /// the shared layers and images `store` knows, never for entries on the
    /// share it did not take (junk).
    fn repair_legacy_links(&self, store: &Store) -> Result<()> {
        let state = store.state();
        let layers: Vec<&str> = state
            .layers
            .values()
            .filter(|l| l.shared)
            .map(|l| l.id.as_str())
            .collect();
        let images: Vec<&str> = state
            .images
            .values()
            .filter(|i| i.shared)
            .map(|i| i.id.as_str())
            .collect();
        let dirs = [
            (self.layout.overlay(), &layers),
            (self.layout.layers(), &layers),
            (self.layout.images(), &images),
        ];
        for (dir, ids) in dirs {
            for (id, symlink) in list_id_entries(&dir)? {
                let link = dir.join(&id);
                if symlink && !link.exists() {
                    fs::remove_file(&link).at(&link)?;
                }
            }
            for id in ids.iter() {
                let link = dir.join(id);
                if fs::symlink_metadata(&link).is_err() {
                    tracing::info!("restoring the link {}", link.display());
                    std::os::unix::fs::symlink(links::id_target(id), &link).at(&link)?;
                }
            }
        }
        for id in layers {
            let Ok(short) = store.driver().short_link_path(id) else {
                continue;
            };
            if fs::symlink_metadata(&short).is_err() {
                std::os::unix::fs::symlink(links::short_target(id), &short).at(&short)?;
            }
        }
        Ok(())
    }
}

impl ShareHook for ShareWriter {
    fn as_any(&self) -> &dyn Any {
        self
    }

    /// The files' lines are what the index holds: nothing is serialized.
    fn read_from_index(&self, lines: IndexLines) {
        let mut cache = self.cache.lock();
        cache.invalidate();
        cache.seed(lines.layers, lines.images, lines.sizes);
    }

    fn read_from_records(&self) {
        self.cache.lock().invalidate();
    }

    /// Know the index on the share before changing anything — the lines of
    /// every shared record, and whether the files on the share are their
    /// render at `generation` (the stamp says so and the sizes agree). When
    /// they are not (a share without an index, one an older storectl
    /// changed, a crash), it is rebuilt.
    fn before_mutation(&self, store: &Store, generation: &str) -> Result<()> {
        let current = {
            let mut cache = self.cache.lock();
            if cache.is_ready() {
                return Ok(());
            }
            let started = std::time::Instant::now();
            let current = store.with_state(|st| cache.init(&self.share, st, Some(generation)));
            tracing::debug!(
                "containers/storage index: every record serialized in {:?}; the files on \
                 the share are {}",
                started.elapsed(),
                if current {
                    "current"
                } else {
                    "not current: rebuilding"
                }
            );
            current
        };
        if !current {
            self.rebuild_index(store, generation)?;
        }
        Ok(())
    }

    /// The index is rebuilt in every sweep after a crash.
    fn sweeping(&self, store: &Store, generation: &str) -> Result<()> {
        self.rebuild_index(store, generation)
    }

    fn swept(&self, store: &Store) -> Result<()> {
        self.repair_legacy_links(store)
    }

    /// What containers/storage reads beside the index: the tar-split under
    /// its name, the short name on the share.
    fn layer_published(&self, id: &str) -> Result<()> {
        self.link_tar_split(id, true)?;
        self.link_short_name(id)?;
        sync_dir(&self.layout.overlay_ro().join("l"))
    }

    fn image_staged(&self, image: &Image, staging: &Path) -> Result<()> {
        link_big_data(staging, image, true)
    }

    fn image_changed(&self, id: &str) {
        self.cache.lock().mark_image(id);
    }

    /// containers/storage's names of it on the share (the index no longer
    /// lists it).
    fn removing_layer(&self, id: &str) -> Result<()> {
        let split = self.layout.layers_ro().join(format!("{id}.tar-split.gz"));
        allow_missing(fs::remove_file(&split)).at(&split)?;
        let overlay_ro = self.layout.overlay_ro();
        if let Some(short) = links::read_short_name(&overlay_ro, id) {
            let path = overlay_ro.join("l").join(short);
            links::remove_link(&path, &links::short_target(id)).at(&path)?;
        }
        Ok(())
    }

    /// containers/storage's index files in line with `state` (the per-id
    /// directories are published already), then the stamp naming `text`.
    fn before_generation(&self, state: &State, text: &str, change: Change<'_>) -> Result<()> {
        let mut cache = self.cache.lock();
        if !cache.is_ready() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let synced = cache.sync(&self.share, state, change).inspect_err(|_| {
            // Unknown now: the next change rebuilds it (moving junk that
            // was in the way aside).
            cache.invalidate();
        });
        let synced = synced?;
        let done = |written| if written { "written" } else { "kept" };
        tracing::debug!(
            "containers/storage index: {} records serialized, layers.json {} \
             ({} bytes), images.json {} ({} bytes), in {:?}",
            synced.serialized,
            done(synced.layers_written),
            synced.layers_size,
            done(synced.images_written),
            synced.images_size,
            started.elapsed()
        );
        let stamp = Stamp {
            generation: text.to_string(),
            layers_size: synced.layers_size,
            images_size: synced.images_size,
        };
        cache::write_stamp(&self.share, &stamp)
    }
}

/// `Ok` for a file that was already gone.
fn allow_missing(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// In image directory `dir`: containers/storage's file name of each
/// big-data item of `image` that is not ours (the config as `=<base64 of
/// sha256:<id>>`, the manifest as `=<base64 of manifest-<digest>>`), a
/// hardlink of our `config` or `manifest`. `replace` = even if a file of
/// that name is there (a staging dir: never).
fn link_big_data(dir: &Path, image: &Image, replace: bool) -> Result<()> {
    for (key, ours, _, _) in csindex::big_data_items(image) {
        let name = csindex::big_data_file_name(&key);
        if name == ours {
            continue;
        }
        let dest = dir.join(&name);
        if fs::symlink_metadata(&dest).is_ok() {
            if !replace {
                continue;
            }
            fs::remove_file(&dest).at(&dest)?;
        }
        let src = dir.join(ours);
        match fs::hard_link(&src, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !replace => {}
            Err(e) => return Err(Error::io(&dest, e)),
        }
    }
    Ok(())
}
