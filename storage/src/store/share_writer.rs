//! The writer side of sharing in the store: containers/storage's index on the
//! share (`layers.json`, `images.json`, the stamp, short names, tar-split and
//! big-data links), kept current by every mutation and rebuilt when it is not
//! (see the crate documentation, "containers/storage's index on a share").

use super::*;

impl Store {
    /// The share whose containers/storage index this store keeps: a
    /// writer's.
    pub(super) fn index_share(&self) -> Option<&Path> {
        match (self.layout.role(), &self.layout.config.shared) {
            (Role::Writer, Some(share)) if self.read_only.is_none() => Some(share),
            _ => None,
        }
    }

    /// On a writer: know the index on the share before changing anything —
    /// the lines of every shared record, and whether the files on the share
    /// are their render at the current `generation` (the stamp says so and
    /// the sizes agree). When they are not (a share without an index, one
    /// an older storectl changed, a crash), it is rebuilt.
    pub(super) fn ensure_index(&self) -> Result<()> {
        let Some(share) = self.index_share() else {
            return Ok(());
        };
        let current = {
            let mut cache = self.index.lock();
            if cache.is_ready() {
                return Ok(());
            }
            let generation = self.synced_generation.lock().clone();
            let started = std::time::Instant::now();
            let current = cache.init(share, &self.state.read(), generation.as_deref());
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
            self.rebuild_index()?;
        }
        Ok(())
    }

    /// On a writer: (re)build containers/storage's index on the share from
    /// the in-memory state — the lock files, each shared layer's `l/<short>`
    /// link and tar-split link, each shared image's big-data links (those
    /// missing), then both index files and the stamp for the current
    /// `generation`. Runs when a mutation finds the index missing or not
    /// current, and in every sweep after a crash. Writer lock held.
    pub(super) fn rebuild_index(&self) -> Result<()> {
        let Some(share) = self.index_share() else {
            return Ok(());
        };
        tracing::info!(
            "rebuilding containers/storage's index on {}",
            share.display()
        );
        // Whatever sits on a name of the index that is not what we write
        // there (a directory, a symlink, a FIFO) goes out of the way.
        let what = "containers/storage's index";
        for rel in crate::share_index::FILES {
            let path = share.join(rel);
            if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
                self.move_aside(&path, true, what)?;
            }
        }
        let l_dir = self.layout.overlay_ro().join("l");
        if fs::symlink_metadata(&l_dir).is_ok_and(|m| !m.is_dir()) {
            self.move_aside(&l_dir, true, what)?;
        }
        crate::share_index::ensure_lock_files(share)?;
        self.repair_index_entries()?;
        let synced = {
            let mut cache = self.index.lock();
            cache.invalidate();
            let state = self.state.read();
            cache.init(share, &state, None);
            cache.sync(share, &state)?
        };
        // Not matched on the guard: `bump_generation` takes the lock again.
        let synced_generation = self.synced_generation.lock().clone();
        match synced_generation {
            Some(generation) => crate::share_index::write_stamp(
                share,
                &crate::csindex::Stamp {
                    generation,
                    layers_size: synced.layers_size,
                    images_size: synced.images_size,
                },
            ),
            None => self.bump_generation(),
        }
    }

    /// The per-entry files containers/storage needs beside the index, for
    /// every shared layer and image this store knows, made where missing.
    pub(super) fn repair_index_entries(&self) -> Result<()> {
        let (layers, images): (Vec<String>, Vec<Image>) = self.with_state(|st| {
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
        for (short, id) in crate::links::short_links(&l_dir).at(&l_dir)? {
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
                    self.move_aside(&path, true, "containers/storage's index")?;
                }
            }
        }
        for id in &layers {
            self.link_share_short_name(id)?;
            self.link_share_tar_split(id, false)?;
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
    pub(super) fn link_share_short_name(&self, id: &str) -> Result<()> {
        let overlay_ro = self.layout.overlay_ro();
        let Some(short) = crate::links::read_short_name(&overlay_ro, id) else {
            self.warn_once(format!(
                "shared layer {id} has no valid link file: containers/storage cannot \
                 mount images on it"
            ));
            return Ok(());
        };
        let l_dir = overlay_ro.join("l");
        create_dir(&l_dir)?;
        let path = l_dir.join(&short);
        let outcome =
            crate::links::add_link(&path, &crate::links::short_target(id), false).at(&path)?;
        if outcome == crate::links::Outcome::Occupied {
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
    pub(super) fn link_share_tar_split(&self, id: &str, replace: bool) -> Result<()> {
        let dir = self.layout.layers_ro();
        let name = format!("{id}.tar-split.gz");
        let dest = dir.join(&name);
        if !replace && fs::symlink_metadata(&dest).is_ok() {
            return Ok(());
        }
        if fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_file()) {
            self.move_aside(&dest, true, &format!("layer {id}"))?;
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
}
