//! The sweep after a crashed writer: the debris of interrupted writers
//! (`.staging-*`, `.trash-*`, `.tmp-*`), layers no image uses, overlay dirs
//! without a record; on a writer, with the share hook's turns
//! ([`crate::share_hook::ShareHook::sweeping`], `swept`).

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
            std::cmp::Reverse(state.chain_skeleton(id).map(|c| c.len()).unwrap_or(0))
        });
        let mut changed = false;
        // A writer's share hook has its turn in every sweep, without the
        // layers about to go (containers/storage's index is rebuilt: it
        // stops listing them before their directories are touched).
        if let Some(hook) = &self.share_hook {
            {
                let mut st = self.state.write();
                for (id, _) in &gone {
                    st.layers.remove(id);
                }
            }
            hook.sweeping(self, &self.hook_generation()?)?;
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
        if let Some(hook) = &self.share_hook {
            hook.swept(self)?;
        }
        // A crash while rewriting an image record leaves `.tmp-*` inside it.
        // (A reader's shared images are on the share, which it never writes.)
        for image in state
            .images
            .skeleton_values()
            .filter(|i| writer || !i.shared)
        {
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
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{id, layer_on_share, load, local, names_in, reader, writer};
    use super::*;
    use crate::links::id_target;

    fn mkdir(path: &Path) -> PathBuf {
        fs::create_dir_all(path.join("diff")).unwrap();
        path.to_path_buf()
    }

    #[test]
    fn debris_goes_and_whole_layers_and_junk_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local(tmp.path());
        let image = load(&store, tmp.path(), "localhost/s:1", &[("a", "a\n")]);
        let top = image.layer.clone().unwrap();
        fs::create_dir_all(store.layout.containers()).unwrap();
        let debris = [
            mkdir(&store.layers_dir().join(".staging-1")),
            mkdir(&store.images_dir().join(".trash-2")),
            mkdir(&store.layout.containers().join(".tmp-3")),
            mkdir(&store.layout.overlay().join(".staging-4")),
        ];
        fs::write(store.root().join(".tmp-5"), "half a file").unwrap();
        let junk = mkdir(&store.layers_dir().join("not-an-id"));
        let layer_dirs = [
            store.layout.overlay().join(&top).join("diff"),
            store.layers_dir().join(&top).join(LAYER_JSON),
            store.images_dir().join(&image.id).join(IMAGES_JSON),
        ];
        store.sweep_debris().unwrap();
        for path in debris.iter().chain([&store.root().join(".tmp-5")]) {
            assert!(fs::symlink_metadata(path).is_err(), "{}", path.display());
        }
        assert!(junk.is_dir(), "not debris: not ours to judge");
        for path in &layer_dirs {
            assert!(path.exists(), "{}", path.display());
        }
        assert!(store.verify_layer(&top).unwrap().ok());
    }

    /// A reader sweeps its own root; the share's debris is its writer's.
    /// A writer sweeps the share too.
    #[test]
    fn a_reader_sweeps_its_root_and_a_writer_the_share_too() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let store = reader(tmp.path());
        let on_share = [
            mkdir(&share.join("overlay-layers/.staging-1")),
            mkdir(&share.join("overlay/.staging-2")),
            mkdir(&share.join(".tmp-3")),
        ];
        let own = [
            mkdir(&store.layers_dir().join(".staging-4")),
            mkdir(&store.layout.overlay().join(".trash-5")),
        ];
        store.sweep_debris().unwrap();
        assert!(own.iter().all(|p| !p.exists()));
        assert!(on_share.iter().all(|p| p.exists()), "the reader's sweep");
        writer(tmp.path()).sweep_debris().unwrap();
        assert!(on_share.iter().all(|p| !p.exists()), "the writer's sweep");
    }

    /// What crashes between publish steps leave: the layers of an image
    /// whose `rmi` stopped after the image dir went, an overlay dir without
    /// its record, a record still marked incomplete, a temp file in an
    /// image record. The sweep removes them, keeps what images use, and
    /// moves `generation` on.
    #[test]
    fn the_sweep_removes_what_interrupted_writers_leave() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local(tmp.path());
        let base = ("base", "base\n");
        let keep = load(&store, tmp.path(), "localhost/k:1", &[base, ("k", "k\n")]);
        let gone = load(&store, tmp.path(), "localhost/g:1", &[base, ("g", "g\n")]);
        fs::remove_dir_all(store.images_dir().join(&gone.id)).unwrap();
        let stray = mkdir(&store.layout.overlay().join(id("stray")));
        let half = id("half");
        mkdir(&store.layout.overlay().join(&half));
        let half_record = store.layers_dir().join(&half);
        fs::create_dir_all(&half_record).unwrap();
        let json = format!(r#"{{"id":"{half}","incomplete":true}}"#);
        fs::write(half_record.join(LAYER_JSON), json).unwrap();
        let tmp_file = store.images_dir().join(&keep.id).join(".tmp-1");
        fs::write(&tmp_file, "{").unwrap();
        store.reload().unwrap();
        let generation = store.read_generation();
        store.remove_orphans().unwrap();
        let kept: Vec<String> = store
            .image_layers(&keep)
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        let mut want = kept.clone();
        want.sort();
        assert_eq!(names_in(&store.layers_dir()), want);
        assert_eq!(
            names_in(&store.layout.overlay()),
            [want.clone(), vec!["l".to_string()]].concat()
        );
        assert_eq!(store.layers().len(), 2);
        assert!(!stray.exists() && !half_record.exists() && !tmp_file.exists());
        assert_ne!(store.read_generation(), generation);
        assert!(kept.iter().all(|l| store.verify_layer(l).unwrap().ok()));
    }

    #[test]
    fn a_reader_never_deletes_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let a = id("a");
        layer_on_share(&share, &a, "SHORTSHORT");
        let store = reader(tmp.path());
        // A local record left incomplete, whose overlay name is the link of the
        // shared layer of that id: the orphan sweep removes the record only.
        std::os::unix::fs::symlink(id_target(&a), store.layout.overlay().join(&a)).unwrap();
        let record = store.layers_dir().join(&a);
        fs::create_dir(&record).unwrap();
        let json = format!(r#"{{"id":"{a}","incomplete":true}}"#);
        fs::write(record.join(LAYER_JSON), json).unwrap();
        // Any mutation sweeps orphans first.
        assert!(store.remove_image("nothing-by-this-name", false).is_err());
        assert!(!record.exists(), "the local record went");
        assert!(
            share.join("overlay").join(&a).join("diff/file").is_file(),
            "the shared layer is untouched"
        );
        assert_eq!(
            names_in(&share.join("overlay")),
            vec![a],
            "no trash on the share"
        );
    }
}
