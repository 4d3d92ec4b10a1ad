//! Removal: `rmi` ([`Store::remove_image`]: the image dir renamed away
//! first, then the layers no other image needs, top first), taking back
//! the layers a failed import published (`unpublish_layers`), and the
//! writer's grace period for removed shared layers (see [`crate::grace`]):
//! `rmi` of a shared image leaves the layers no other image needs on the
//! share, listed in `<share>/storectl-removed.json`; [`Store::gc`] (and
//! every later `rmi`) deletes those past their time; the crash sweep never
//! deletes a layer that still waits.

use super::*;
use crate::grace::{self, Removals, REMOVED_FILE};

/// What [`Store::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Layers deleted (their grace period was over).
    pub deleted: Vec<String>,
    /// Layers still waiting: (id, RFC 3339 time they may go).
    pub waiting: Vec<(String, String)>,
}

/// What [`Store::remove_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// The image was named by one of several names: only that name went.
    Untagged { image: String, name: String },
    /// The image went, with the layers no other image needed (top first),
    /// and (`force`) the containers that used it.
    Deleted {
        image: String,
        layers: Vec<String>,
        containers: Vec<String>,
    },
}

/// Seconds since the epoch now.
pub(super) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Store {
    /// The share's grace period for removed layers, in seconds (the
    /// share's `storectl-share.json`; a store without a share has none).
    pub fn removed_layers_grace(&self) -> Option<u64> {
        let share = self.layout.config.shared.as_ref()?;
        let bytes = fsutil::read_small_file(&share.join("storectl-share.json"), 64 << 10)
            .unwrap_or_default();
        Some(grace::grace_secs(&bytes))
    }

    /// The removals the share lists (none without a share, or when the file
    /// is missing; one that does not parse is warned about and read as empty).
    pub fn removals(&self) -> Removals {
        let Some(share) = self.layout.config.shared.as_ref() else {
            return Removals::default();
        };
        let path = share.join(REMOVED_FILE);
        match fsutil::read_small_file(&path, fsutil::MAX_DOCUMENT) {
            Ok(bytes) => grace::parse(&bytes).unwrap_or_else(|e| {
                self.warn_once(format!("{}: {e}; read as empty", path.display()));
                Removals::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Removals::default(),
            Err(e) => {
                self.warn_once(format!("{}: {e}; read as empty", path.display()));
                Removals::default()
            }
        }
    }

    /// Replace the share's removals file (writer lock held).
    pub(super) fn write_removals(&self, r: &Removals) -> Result<()> {
        let Some(share) = self.writes_share() else {
            return Ok(());
        };
        write_atomic(share, REMOVED_FILE, &grace::render(r))
    }

    /// Does this writer keep removed shared layers for a grace period?
    /// (A grace of 0 deletes them at once, as before.)
    pub(super) fn keeps_removed_layers(&self) -> bool {
        self.writes_share().is_some() && self.removed_layers_grace().is_some_and(|g| g > 0)
    }

    /// Delete the removed shared layers whose grace period is over at
    /// `now` — or, with `grace` given, that were removed more than `grace`
    /// seconds ago — and no image needs again; forget those an image needs
    /// again. containers/storage's index forgets the layers (and
    /// `generation` moves) before their directories go. Writer lock held.
    pub(super) fn collect_expired(&self, now: i64, grace: Option<u64>) -> Result<GcReport> {
        let mut report = GcReport::default();
        if self.writes_share().is_none() {
            return Ok(report);
        }
        let mut removals = self.removals();
        if removals.layers.is_empty() && removals.images.is_empty() {
            return Ok(report);
        }
        // Needed by an image again (re-loaded), or gone already: asked of
        // the listed layers only, not of every image's chain.
        let stale: Vec<String> = self.with_state(|st| {
            let listed: Vec<&str> = removals.layers.keys().map(String::as_str).collect();
            let used = st.used_among(&listed);
            listed
                .into_iter()
                .filter(|id| used.contains(*id) || !st.layers.contains_key(id))
                .map(str::to_string)
                .collect()
        });
        removals.forget(&stale);
        let due = |p: &grace::PendingLayer| match grace {
            None => p.delete_after_secs <= now,
            Some(g) => {
                p.removed_secs
                    .saturating_add(i64::try_from(g).unwrap_or(i64::MAX))
                    <= now
            }
        };
        let mut expired: Vec<String> = removals
            .layers
            .iter()
            .filter(|(_, p)| due(p))
            .map(|(id, _)| id.clone())
            .collect();
        // Never a parent whose child stays (children expire no later).
        let staying: BTreeSet<String> = self.with_state(|st| {
            st.layers
                .values()
                .filter(|l| !expired.contains(&l.id))
                .filter_map(|l| l.parent.clone())
                .filter(|p| expired.contains(p))
                .collect()
        });
        expired.retain(|id| !staying.contains(id));
        // Children before parents.
        expired.sort_by_key(|id| {
            std::cmp::Reverse(self.with_state(|st| st.chain_skeleton(id).map_or(0, |c| c.len())))
        });
        if !expired.is_empty() {
            {
                let mut st = self.state.write();
                for id in &expired {
                    st.layers.remove(id);
                }
            }
            self.bump_generation()?;
            for id in &expired {
                match self.remove_layer_files(id, true) {
                    Ok(()) => report.deleted.push(id.clone()),
                    Err(e) => tracing::warn!("could not delete removed layer {id}: {e}"),
                }
            }
            removals.forget(&report.deleted);
            self.bump_generation()?;
        }
        report.waiting = removals
            .layers
            .iter()
            .map(|(id, p)| (id.clone(), p.delete_after.clone()))
            .collect();
        self.write_removals(&removals)?;
        Ok(report)
    }

    /// On a writer: delete the removed shared layers whose grace period is
    /// over (`grace` = instead, those removed more than `grace` seconds
    /// ago; `Some(0)` = every one no image needs). Elsewhere nothing waits.
    pub fn gc(&self, grace: Option<u64>) -> Result<GcReport> {
        let _lock = self.begin_write()?;
        self.collect_expired(now_secs(), grace)
    }
}

impl Store {
    /// Remove the layers `ids` (published by a failed import, base first)
    /// that no image uses, top first. False when one could not be removed.
    pub(super) fn unpublish_layers(&self, ids: &[String]) -> bool {
        let used = {
            let among: Vec<&str> = ids.iter().map(String::as_str).collect();
            self.state.read().used_among(&among)
        };
        let mut all = true;
        let doomed: Vec<(&String, bool)> = {
            let state = self.state.read();
            ids.iter()
                .rev()
                .filter(|id| !used.contains(*id))
                .map(|id| (id, state.layers.get(id).is_some_and(|l| l.shared)))
                .collect()
        };
        if self.share_hook.is_some() && !doomed.is_empty() {
            // Out of what the share hook keeps (containers/storage's index)
            // before their directories go.
            let mut state = self.state.write();
            for (id, _) in &doomed {
                state.layers.remove(id);
            }
            drop(state);
            if let Err(e) = self.bump_generation() {
                tracing::warn!(
                    "could not take the layers of the failed load out of the index: {e}"
                );
                return false;
            }
        }
        for (id, shared) in doomed {
            match self.remove_layer_files(id, shared) {
                Ok(()) => {
                    self.state.write().layers.remove(id);
                }
                Err(e) => {
                    tracing::warn!("could not take back layer {id} of the failed load: {e}");
                    all = false;
                }
            }
        }
        if !ids.is_empty() && self.bump_generation().is_err() {
            all = false;
        }
        all
    }

    /// Remove an image, then every layer of its chain that no other image
    /// needs. As `podman rmi`: named by one of several names, the image only
    /// loses that name; named by id (or id prefix) while it has several names,
    /// it is refused ([`Error::MustForce`]) unless `force`.
    pub fn remove_image(&self, name: &str, force: bool) -> Result<Removed> {
        let _lock = self.begin_write()?;
        let image = self.resolve_image(name)?;
        self.check_mutable(image.shared, &format!("image {}", image.id))?;
        let normalized = crate::reference::normalize_name(name).ok();
        let by_name = image
            .names
            .iter()
            .find(|n| *n == name || Some(*n) == normalized.as_ref())
            .cloned();
        if by_name.is_none() && image.names.len() > 1 && !force {
            return Err(Error::MustForce {
                id: image.id,
                names: image.names,
            });
        }
        if let (Some(by_name), true) = (by_name, image.names.len() > 1) {
            let mut image = image;
            image.names.retain(|n| *n != by_name);
            self.write_image_record(&image)?;
            self.bump_generation()?;
            return Ok(Removed::Untagged {
                image: image.id,
                name: by_name,
            });
        }
        let mount = self.mount_path(&image.id);
        if storectl_overlay::mount::is_mounted(&mount).unwrap_or(false) {
            return Err(Error::ImageMounted {
                id: image.id,
                path: mount,
            });
        }
        // Containers on it: refused, or (force) removed first, as podman.
        let users = self.containers_of_image(&image.id)?;
        if !users.is_empty() && !force {
            return Err(Error::ImageInUse {
                id: image.id,
                containers: users
                    .iter()
                    .map(|c| c.names.first().unwrap_or(&c.id).clone())
                    .collect(),
            });
        }
        for c in &users {
            self.remove_container_locked(c, true)?;
        }
        let chain: Vec<(String, bool)> = self
            .image_layers(&image)?
            .into_iter()
            .rev()
            .map(|l| (l.id, l.shared))
            .collect();
        // The layers of its chain another image uses (parents of a used
        // layer are used too): found once, they stay so while the lock is held.
        let used = {
            let ids: Vec<&str> = chain.iter().map(|(id, _)| id.as_str()).collect();
            self.with_state(|st| st.used_among_except(&ids, Some(&image.id)))
        };
        let image_dir = self.image_dir(&image.id);
        // A writer keeps the shared layers only this image used for the
        // share's grace period (a reader's container may run on them),
        // listed in the share's removals file before the image goes.
        let keep = image.shared && self.keeps_removed_layers();
        if keep {
            let waiting: Vec<String> = chain
                .iter()
                .take_while(|(id, _)| !used.contains(id.as_str()))
                .filter(|(_, shared)| *shared)
                .map(|(id, _)| id.clone())
                .collect();
            if !waiting.is_empty() {
                let mut removals = self.removals();
                let grace = self.removed_layers_grace().unwrap_or(0);
                removals.add(&image.id, &waiting, removals::now_secs(), grace);
                self.write_removals(&removals)?;
            }
        }
        if self.share_hook.is_some() {
            // What the share hook keeps (containers/storage's index) forgets
            // the image and the layers only it used, and `generation` moves
            // on, before their directories go.
            let mut state = self.state.write();
            state.images.remove(&image.id);
            for (id, shared) in chain.iter().take_while(|(id, _)| !used.contains(id)) {
                if !(keep && *shared) {
                    state.layers.remove(id);
                }
            }
            drop(state);
            self.bump_generation()?;
        }
        fsutil::remove_dir_atomic(&image_dir)?;
        if image.shared {
            let link = self.images_dir().join(&image.id);
            match fs::remove_file(&link) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&link, e))
                }
                _ => {}
            }
        }
        self.state.write().images.remove(&image.id);
        self.bump_generation()?;
        let mut removed = Vec::new();
        for (id, shared) in chain {
            if used.contains(&id) {
                break; // parents of a used layer are used too
            }
            if shared && !self.publishes_shared() {
                continue; // a reader's local image on shared layers: not ours to remove
            }
            if shared && keep {
                continue; // waits for the grace period (see above)
            }
            self.remove_layer_files(&id, shared)?;
            let twin = {
                let mut state = self.state.write();
                state.layers.remove(&id);
                let twin = state.hidden_layers.remove(&id);
                if let Some(twin) = &twin {
                    state.layers.insert(id.clone(), twin.clone());
                }
                twin
            };
            if twin.is_some() {
                self.keep_links(std::slice::from_ref(&id), &[], &[], &[]);
            }
            removed.push(id);
        }
        // The shared copy of a local image (same id) shows again.
        let twin = {
            let mut state = self.state.write();
            let twin = state.hidden_images.remove(&image.id);
            if let Some(twin) = &twin {
                state.images.insert(twin.id.clone(), twin.clone());
            }
            twin
        };
        if twin.is_some() {
            self.keep_links(&[], std::slice::from_ref(&image.id), &[], &[]);
        }
        if !removed.is_empty() {
            self.bump_generation()?;
        }
        if keep {
            // Layers of earlier removals whose grace period is over.
            self.collect_expired(removals::now_secs(), None)?;
        }
        Ok(Removed::Deleted {
            image: image.id,
            layers: removed,
            containers: users.into_iter().map(|c| c.id).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{self, load, local, names_in, reader, shared_delta, writer};
    use super::*;
    use storectl_fixtures::{
        write_oci_layout, Compression, Entry, Image as Fixture, Layer as FixtureLayer,
    };

    #[test]
    fn removed_shared_layers_wait_out_the_grace_period() {
        let tmp = tempfile::tempdir().unwrap();
        let store = writer(tmp.path());
        let oci = tmp.path().join("oci");
        write_oci_layout(
            &oci,
            &[Fixture::new(vec![FixtureLayer::new(
                vec![Entry::file("f", "x\n")],
                Compression::None,
            )])
            .named("localhost/g:1")],
        )
        .unwrap();
        let image = store
            .load(
                &oci.display().to_string(),
                &LoadOptions::default(),
                &crate::NoopReporter,
            )
            .unwrap();
        let layer = image.layer.clone().unwrap();
        let on_share = store.layout.overlay_ro().join(&layer);
        store.remove_image("localhost/g:1", false).unwrap();
        assert!(store.images().is_empty(), "the image goes at once");
        assert!(on_share.is_dir(), "its layer waits");
        let r = store.removals();
        assert!(r.protects(&layer, now_secs()));
        assert_eq!(r.images[&image.id].layers, vec![layer.clone()]);
        // The crash sweep keeps it; gc before its time keeps it.
        store.remove_orphans().unwrap();
        assert!(on_share.is_dir(), "the sweep keeps a waiting layer");
        let report = store.gc(None).unwrap();
        assert!(report.deleted.is_empty());
        assert_eq!(report.waiting.len(), 1);
        // Past its time (as if an hour went by), gc deletes it.
        let report = store.collect_expired(now_secs() + 3601, None).unwrap();
        assert_eq!(report.deleted, vec![layer.clone()]);
        assert!(!on_share.exists());
        assert!(store.removals().layers.is_empty());
        assert!(store.removals().images.is_empty());
    }

    #[test]
    fn a_layer_needed_again_leaves_the_list() {
        let tmp = tempfile::tempdir().unwrap();
        let store = writer(tmp.path());
        let oci = tmp.path().join("oci");
        write_oci_layout(
            &oci,
            &[Fixture::new(vec![FixtureLayer::new(
                vec![Entry::file("f", "y\n")],
                Compression::Gzip,
            )])
            .named("localhost/h:1")],
        )
        .unwrap();
        let src = oci.display().to_string();
        let opts = LoadOptions::default();
        let image = store.load(&src, &opts, &crate::NoopReporter).unwrap();
        store.remove_image(&image.id, false).unwrap();
        store.load(&src, &opts, &crate::NoopReporter).unwrap();
        let report = store.gc(Some(0)).unwrap();
        assert!(report.deleted.is_empty(), "needed again: kept");
        assert!(store.removals().layers.is_empty());
        assert_eq!(store.images().len(), 1);
    }

    /// Removes `image` by `name` and returns what went, checking that its
    /// (local) image dir is gone.
    fn rmi(store: &Store, name: &str, force: bool) -> Result<Removed> {
        let removed = store.remove_image(name, force)?;
        if let Removed::Deleted { image, .. } = &removed {
            assert!(!crate::links::is_real_dir(
                &store.image_dir_of(image, false)
            ));
        }
        Ok(removed)
    }

    #[test]
    fn a_name_of_several_only_untags_and_an_id_needs_force() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local(tmp.path());
        let image = load(
            &store,
            tmp.path(),
            "localhost/r:1",
            &[("b", "b\n"), ("t", "t\n")],
        );
        store.tag(&image.id, "localhost/r:2").unwrap();
        let removed = rmi(&store, "localhost/r:2", false).unwrap();
        let name = "localhost/r:2".to_string();
        let untagged = Removed::Untagged {
            image: image.id.clone(),
            name,
        };
        assert_eq!(removed, untagged);
        let reopened = local(tmp.path());
        let names = reopened.resolve_image(&image.id).unwrap().names;
        assert_eq!(names, vec!["localhost/r:1".to_string()], "on disk too");
        store.tag(&image.id, "localhost/r:2").unwrap();
        let err = rmi(&store, &image.id[..12], false).unwrap_err();
        assert!(matches!(err, Error::MustForce { .. }), "{err}");
        let chain: Vec<String> = store
            .image_layers(&image)
            .unwrap()
            .into_iter()
            .rev()
            .map(|l| l.id)
            .collect();
        let removed = rmi(&store, &image.id[..12], true).unwrap();
        let deleted = Removed::Deleted {
            image: image.id.clone(),
            layers: chain,
            containers: vec![],
        };
        assert_eq!(removed, deleted, "top first");
        assert!(store.images().is_empty() && store.layers().is_empty());
        assert_eq!(names_in(&store.layers_dir()), Vec::<String>::new());
        // The last name of an image removes it.
        let again = load(&store, tmp.path(), "localhost/r:1", &[("b", "b\n")]);
        let removed = rmi(&store, "localhost/r:1", false).unwrap();
        assert!(matches!(removed, Removed::Deleted { image, .. } if image == again.id));
    }

    #[test]
    fn layers_another_image_uses_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local(tmp.path());
        let base = ("base", "base\n");
        let a = load(&store, tmp.path(), "localhost/a:1", &[base, ("a", "a\n")]);
        let b = load(&store, tmp.path(), "localhost/b:1", &[base, ("b", "b\n")]);
        let (a_top, b_top) = (a.layer.clone().unwrap(), b.layer.clone().unwrap());
        let base_id = store.layer(&a_top).unwrap().parent.unwrap();
        let Removed::Deleted { layers, .. } = rmi(&store, "localhost/a:1", false).unwrap() else {
            panic!("untagged")
        };
        assert_eq!(layers, vec![a_top.clone()]);
        assert!(!store.layout.overlay().join(&a_top).exists());
        assert!(store.verify_layer(&base_id).unwrap().ok());
        let Removed::Deleted { layers, .. } = rmi(&store, &b.id, false).unwrap() else {
            panic!("untagged")
        };
        assert_eq!(layers, vec![b_top, base_id]);
        assert_eq!(names_in(&store.layout.overlay()), vec!["l".to_string()]);
    }

    #[test]
    fn an_image_containers_use_goes_only_with_them() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local(tmp.path());
        let image = load(&store, tmp.path(), "localhost/c:1", &[("c", "c\n")]);
        let opts = ContainerOptions {
            name: Some("web".into()),
            ..Default::default()
        };
        let c = store.create_container(&image.id, &opts).unwrap();
        let err = rmi(&store, "localhost/c:1", false).unwrap_err();
        match err {
            Error::ImageInUse { containers, .. } => assert_eq!(containers, vec!["web".to_string()]),
            e => panic!("{e}"),
        }
        assert_eq!(store.images().len(), 1);
        let removed = rmi(&store, "localhost/c:1", true).unwrap();
        assert!(
            matches!(removed, Removed::Deleted { containers, .. } if containers == vec![c.id.clone()])
        );
        assert!(store.containers().unwrap().is_empty());
        assert!(!store.layout.overlay().join(&c.id).exists());
    }

    /// A failed import takes back the layers it published that no image
    /// uses, top first, and leaves those an image uses.
    #[test]
    fn a_failed_import_takes_back_only_unused_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local(tmp.path());
        let base = ("base", "base\n");
        let keep = load(&store, tmp.path(), "localhost/k:1", &[base]);
        let failed = load(&store, tmp.path(), "localhost/f:1", &[base, ("f", "f\n")]);
        // As if the image had never been published.
        fs::remove_dir_all(store.images_dir().join(&failed.id)).unwrap();
        store.state.write().images.remove(&failed.id);
        let top = failed.layer.clone().unwrap();
        let published = vec![keep.layer.clone().unwrap(), top.clone()];
        let generation = store.read_generation();
        assert!(store.unpublish_layers(&published));
        assert_eq!(store.layers().len(), 1);
        assert!(store.layer(&published[0]).is_ok());
        assert!(!store.layout.overlay().join(&top).exists());
        assert!(!store.layers_dir().join(&top).exists());
        assert_ne!(store.read_generation(), generation);
    }

    /// On a reader, a local image with the id of a shared one hides it;
    /// its removal leaves the shared layers under it alone, and the shared
    /// image shows again — which the reader may not remove.
    #[test]
    fn a_reader_removes_its_local_copy_and_the_shared_one_shows_again() {
        let tmp = tempfile::tempdir().unwrap();
        let writer = test_support::writer(tmp.path());
        let files = [("s", "s\n")];
        let shared = load(&writer, tmp.path(), "localhost/s:1", &files);
        let reader = reader(tmp.path());
        reader.apply_shared(shared_delta(&writer));
        let local = load(&reader, tmp.path(), "localhost/s:1", &files);
        assert_eq!(local.id, shared.id);
        assert!(
            !reader.resolve_image(&shared.id).unwrap().shared,
            "the local one wins"
        );
        let removed = rmi(&reader, &local.id, false).unwrap();
        let deleted = Removed::Deleted {
            image: local.id.clone(),
            layers: vec![],
            containers: vec![],
        };
        assert_eq!(removed, deleted, "shared layers are not the reader's");
        assert!(
            reader.resolve_image(&shared.id).unwrap().shared,
            "shows again"
        );
        let link = reader.images_dir().join(&shared.id);
        assert_eq!(
            fs::read_link(link).unwrap(),
            crate::links::id_target(&shared.id)
        );
        let top = shared.layer.clone().unwrap();
        assert!(writer.verify_layer(&top).unwrap().ok());
        let err = rmi(&reader, &shared.id, false).unwrap_err();
        assert!(matches!(err, Error::ReadOnlyStore { .. }), "{err}");
    }
}
