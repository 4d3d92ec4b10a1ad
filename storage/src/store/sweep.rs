//! The sweep after a crashed writer: the debris of interrupted writers
//! (`.staging-*`, `.trash-*`, `.tmp-*`), layers no image uses, overlay dirs
//! without a record, and the writer's legacy links a crash left dangling
//! or missing.

use super::*;

impl Store {
    /// Remove the dot-prefixed debris (`.staging-*`, `.trash-*`, `.tmp-*`)
    /// interrupted writers leave. A reader sweeps only its local dirs.
    pub(super) fn sweep_debris(&self) -> Result<()> {
        let mut dirs = vec![
            self.layers_dir(),
            self.images_dir(),
            self.layout.containers(),
            self.root.clone(),
        ];
        match self.layout.role() {
            Role::Reader => dirs.push(self.layout.overlay()),
            Role::Local | Role::Writer => {
                self.driver.remove_debris()?;
            }
        }
        if let (Role::Writer, Some(share)) = (self.layout.role(), &self.layout.config.shared) {
            dirs.extend([
                self.layout.layers_ro(),
                self.layout.images_ro(),
                share.clone(),
            ]);
        }
        for dir in dirs {
            fsutil::remove_debris_in(&dir)?;
        }
        Ok(())
    }

    /// Remove what a crash between publish steps can leave: overlay dirs with
    /// no layer record, records marked incomplete, image layers that no image
    /// uses any more (an interrupted import or `rmi`), dangling legacy
    /// symlinks. Only what this root may write: a reader leaves the share alone.
    pub(super) fn remove_orphans(&self) -> Result<()> {
        let state = self.state();
        let referenced = state.referenced_layers();
        let writer = self.publishes_shared();
        // Removed shared layers in their grace period are not orphans.
        let removals = if writer {
            self.removals()
        } else {
            crate::grace::Removals::default()
        };
        let now = removals::now_secs();
        let records = self.entry_ids(&self.layers_dir(), &self.layout.layers_ro(), writer)?;
        let mut gone = Vec::new();
        for (id, shared) in records {
            let incomplete = fsutil::read_small_file(
                &self.layer_dir_of(&id, shared).join(LAYER_JSON),
                fsutil::MAX_RECORD,
            )
            .ok()
            .and_then(|b| meta::parse_layer(&b, &id).ok())
            .is_some_and(|l| l.incomplete);
            let waiting = shared && removals.protects(&id, now);
            if incomplete
                || (state.layers.contains_key(&id) && !referenced.contains(&id) && !waiting)
            {
                gone.push((id, shared));
            }
        }
        // Children before parents.
        gone.sort_by_key(|(id, _)| {
            std::cmp::Reverse(state.chain(id).map(|c| c.len()).unwrap_or(0))
        });
        let mut changed = false;
        // A writer's index on the share is rebuilt in every sweep, without
        // the layers about to go: containers/storage stops listing them
        // before their directories are touched.
        if self.index_share().is_some() {
            {
                let mut st = self.state.write();
                for (id, _) in &gone {
                    st.layers.remove(id);
                }
            }
            self.rebuild_index()?;
        }
        // Entries nobody made as we do can refuse to go: each is skipped
        // with a warning, never a reason to refuse the mutation.
        let skip = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            tracing::warn!(
                "skipping {what} {}: {e} (not made by storectl? remove it: rm -rf {})",
                path.display(),
                path.display()
            )
        };
        for (id, shared) in &gone {
            tracing::info!("removing unused layer {id}");
            match self.remove_layer_files(id, *shared) {
                Ok(()) => changed = true,
                Err(e) => skip("layer", &self.layer_dir_of(id, *shared), &e),
            }
        }
        let overlay_dirs =
            self.entry_ids(&self.layout.overlay(), &self.layout.overlay_ro(), writer)?;
        for (id, shared) in overlay_dirs {
            let record = self.layer_dir_of(&id, shared);
            let has_record = fs::symlink_metadata(&record).is_ok();
            // A container's writable layer has a container record instead.
            let container = !shared && self.is_container_layer(&id);
            if !has_record && !container && !gone.iter().any(|(g, _)| *g == id) {
                tracing::info!("removing orphaned overlay directory {id}");
                match self.driver.remove_layer(&id) {
                    Ok(()) => changed = true,
                    Err(e) => {
                        let dir = if shared {
                            self.layout.overlay_ro().join(&id)
                        } else {
                            self.layout.overlay().join(&id)
                        };
                        skip("overlay directory", &dir, &e)
                    }
                }
            }
        }
        if writer {
            self.repair_legacy_links()?;
        }
        // A crash while rewriting an image record leaves `.tmp-*` inside it.
        // (A reader's shared images are on the share, which it never writes.)
        for image in state.images.values().filter(|i| writer || !i.shared) {
            let dir = self.image_dir_of(&image.id, image.shared);
            if let Err(e) = fsutil::remove_debris_in(&dir) {
                skip("image", &dir, &e);
            }
        }
        if changed {
            self.reload()?;
            self.bump_generation()?;
        }
        Ok(())
    }

    /// The writer's legacy names (`<id> -> RO/<id>` in `overlay/`,
    /// `overlay-layers/`, `overlay-images/`, and `overlay/l/<short>`): drop
    /// those whose target is gone, create those a crash left missing — for
    /// the shared layers and images this store knows, never for entries on
    /// the share it did not take (junk).
    pub(super) fn repair_legacy_links(&self) -> Result<()> {
        let state = self.state();
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
            (self.layers_dir(), &layers),
            (self.images_dir(), &images),
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
                    std::os::unix::fs::symlink(format!("{RO}/{id}"), &link).at(&link)?;
                }
            }
        }
        for id in layers {
            let Ok(short) = self.driver.short_link_path(id) else {
                continue;
            };
            if fs::symlink_metadata(&short).is_err() {
                std::os::unix::fs::symlink(format!("../{id}/diff"), &short).at(&short)?;
            }
        }
        Ok(())
    }
}
