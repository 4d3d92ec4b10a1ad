//! A reader's upkeep of the legacy names of shared entries in its own root
//! (`overlay/<id>`, `overlay-layers/<id>`, `overlay-images/<id>` `-> RO/<id>`,
//! `overlay/l/<short>`): made as entries join, removed as they leave, all
//! repaired on the first scan of a process (see docs/sharing.md).

use super::*;

/// How far a reader's legacy links ([`crate::links`]) are kept.
#[derive(Debug, Default)]
pub(super) struct LinkUpkeep {
    /// A full repair ran in this process: from now on, deltas only.
    pub(super) repaired: bool,
    /// The root turned out not writable for us (another user's root, a
    /// read-only mount): stop trying, quietly.
    disabled: bool,
    /// A link could not be made or removed in this process: the links may
    /// not match the store ([`Store::links_in_step`] says no).
    failed: bool,
    /// Messages already warned about.
    warned: BTreeSet<String>,
}

/// The `<id> -> RO/<id>` links in `dir` (one of a reader's own directories,
/// listed as `entries`) for exactly the ids `want`: a link of an id not
/// wanted goes, a missing one (or one pointing elsewhere) is made, a real
/// entry (a local layer or image) is left alone. Returns (made, removed).
fn repair_id_links(
    dir: &Path,
    entries: Vec<(String, bool)>,
    want: &BTreeSet<String>,
) -> Result<(usize, usize)> {
    let d = crate::links::LinkDir::open(dir).at(dir)?;
    let (mut made, mut removed) = (0, 0);
    // readdir's d_type tells links (local entries are directories); one
    // readlink each checks their target (a link elsewhere would lead the
    // driver, which takes `overlay/<id>` first, astray).
    let mut have = BTreeSet::new();
    for (id, symlink) in entries {
        if !symlink {
            have.insert(id); // a local entry holds the name
        } else if want.contains(&id) {
            if d.target(&id) == Some(crate::links::id_target(&id)) {
                have.insert(id);
            }
        } else {
            tracing::debug!("removing the stale link {}", dir.join(&id).display());
            removed += usize::from(d.remove(&id).at(dir.join(&id))?);
        }
    }
    for id in want.iter().filter(|id| !have.contains(*id)) {
        let outcome = d
            .add(id, &crate::links::id_target(id), true)
            .at(dir.join(id))?;
        made += usize::from(outcome == crate::links::Outcome::Done);
    }
    Ok((made, removed))
}

impl Store {
    /// A reader's legacy links after a delta: a full repair the first time in
    /// this process (directory listings and a `readlink` per link, not a
    /// link attempt per entry), then only what changed. Failures are warned
    /// about (each entry on its own), never fatal: the links serve other
    /// programs, storectl itself reads through `RO/`.
    pub(super) fn keep_links(
        &self,
        add_layers: &[String],
        add_images: &[String],
        removed_layers: &[String],
        removed_images: &[String],
    ) {
        let first = {
            let mut upkeep = self.links.lock();
            if upkeep.disabled || self.read_only.is_some() {
                return;
            }
            !std::mem::replace(&mut upkeep.repaired, true)
        };
        if first {
            self.report_links(self.repair_shared_links());
            return;
        }
        for id in removed_images {
            self.report_links(self.unlink_entry(&self.images_dir(), id));
        }
        for id in removed_layers {
            self.report_links(self.unlink_entry(&self.layers_dir(), id));
            self.report_links(self.unlink_entry(&self.layout.overlay(), id));
        }
        if !removed_layers.is_empty() {
            let gone: BTreeSet<&str> = removed_layers.iter().map(String::as_str).collect();
            self.report_links(self.remove_short_links(|id| gone.contains(id)));
        }
        for id in add_layers {
            self.report_links(self.link_layer(id));
        }
        for id in add_images {
            self.report_links(self.link_entry(&self.images_dir(), id));
        }
    }

    /// Warn about a link failure once per message; stop trying when the root
    /// cannot be written by this process.
    pub(super) fn report_links<T>(&self, result: Result<T>) {
        let Err(e) = result else { return };
        let mut upkeep = self.links.lock();
        if let Error::Io { source, .. } = &e {
            if matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) {
                tracing::debug!("not keeping legacy links: {e}");
                upkeep.disabled = true;
                return;
            }
        }
        upkeep.failed = true;
        let msg = e.to_string();
        if upkeep.warned.insert(msg.clone()) {
            tracing::warn!("legacy links of shared entries: {msg}");
        }
    }

    /// `dir/<id> -> RO/<id>`, unless a local entry holds the name.
    pub(super) fn link_entry(&self, dir: &Path, id: &str) -> Result<()> {
        let path = dir.join(id);
        crate::links::add_link(&path, &crate::links::id_target(id), true).at(&path)?;
        Ok(())
    }

    /// Remove `dir/<id>` if it is the link `-> RO/<id>` (never a local entry).
    pub(super) fn unlink_entry(&self, dir: &Path, id: &str) -> Result<()> {
        let path = dir.join(id);
        crate::links::remove_link(&path, &crate::links::id_target(id)).at(&path)?;
        Ok(())
    }

    /// A shared layer's legacy names: `overlay/<id>`, `overlay-layers/<id>`,
    /// and `overlay/l/<short>` with the short name of its `link` file (read
    /// without following symlinks on the share). A short name another layer
    /// holds is left to it.
    pub(super) fn link_layer(&self, id: &str) -> Result<()> {
        let overlay = self.layout.overlay();
        let path = overlay.join(id);
        let made = crate::links::add_link(&path, &crate::links::id_target(id), true).at(&path)?;
        self.link_entry(&self.layers_dir(), id)?;
        if made == crate::links::Outcome::Occupied {
            return Ok(()); // a local layer of that id: its own short name serves
        }
        self.link_short_name(id).map(|_| ())
    }

    /// `overlay/l/<short> -> ../<id>/diff` for shared layer `id`; true if made.
    pub(super) fn link_short_name(&self, id: &str) -> Result<bool> {
        let Some(short) = crate::links::read_short_name(&self.layout.overlay_ro(), id) else {
            return Ok(false); // mounts fall back to RO/<id>/diff
        };
        let l_dir = self.layout.overlay().join("l");
        create_dir(&l_dir)?;
        let path = l_dir.join(&short);
        let outcome =
            crate::links::add_link(&path, &crate::links::short_target(id), false).at(&path)?;
        if outcome == crate::links::Outcome::Occupied {
            // Only other programs miss it; a scan warns about the layer's own faults.
            tracing::debug!(
                "shared layer {id}: its short name {short} is another layer's; \
                 not linked (it mounts through RO/{id}/diff)"
            );
        }
        Ok(outcome == crate::links::Outcome::Done)
    }

    /// Remove the `overlay/l/` links to `../<id>/diff` for the ids `gone`
    /// says, unless a local layer of that id is there.
    pub(super) fn remove_short_links(&self, gone: impl Fn(&str) -> bool) -> Result<()> {
        let overlay = self.layout.overlay();
        let l_dir = overlay.join("l");
        for (short, id) in crate::links::short_links(&l_dir).at(&l_dir)? {
            let Some(id) = id else { continue };
            if gone(&id) && !crate::links::is_real_dir(&overlay.join(&id)) {
                let path = l_dir.join(&short);
                crate::links::remove_link(&path, &crate::links::short_target(&id)).at(&path)?;
            }
        }
        Ok(())
    }

    /// On a reader: make the legacy names of shared entries in this root
    /// match the in-memory store — links of shared layers and images that
    /// vanished are removed, missing ones made (after a crash, a reader that
    /// was not running, or a root made before readers kept them). Local
    /// entries are never touched. Returns (links made, links removed).
    pub fn repair_shared_links(&self) -> Result<(usize, usize)> {
        if self.layout.role() != Role::Reader || self.read_only.is_some() {
            return Ok((0, 0));
        }
        let (layers, images): (BTreeSet<String>, BTreeSet<String>) = self.with_state(|st| {
            (
                st.layers
                    .values()
                    .filter(|l| l.shared)
                    .map(|l| l.id.clone())
                    .collect(),
                st.images
                    .values()
                    .filter(|i| i.shared)
                    .map(|i| i.id.clone())
                    .collect(),
            )
        });
        let overlay = self.layout.overlay();
        let overlay_entries = list_id_entries(&overlay)?;
        // Local layers are real directories in `overlay/`: their names and
        // short names are theirs.
        let local: BTreeSet<String> = overlay_entries
            .iter()
            .filter(|(_, symlink)| !symlink)
            .map(|(id, _)| id.clone())
            .collect();
        let l_dir = overlay.join("l");
        create_dir(&l_dir)?;
        let (layers_dir, images_dir) = (self.layers_dir(), self.images_dir());
        // The four directories are independent, and a fresh reader makes
        // ~3 links per layer (each an inode the kernel allocates under the
        // directory's lock): one thread per directory.
        let jobs: [&(dyn Fn() -> Result<(usize, usize)> + Sync); 4] = [
            &|| repair_id_links(&overlay, overlay_entries.clone(), &layers),
            &|| repair_id_links(&layers_dir, list_id_entries(&layers_dir)?, &layers),
            &|| repair_id_links(&images_dir, list_id_entries(&images_dir)?, &images),
            &|| self.repair_short_links(&l_dir, &layers, &local),
        ];
        let results: Vec<Result<(usize, usize)>> = std::thread::scope(|scope| {
            let running: Vec<_> = jobs.iter().map(|job| scope.spawn(job)).collect();
            running
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let (mut made, mut removed) = (0, 0);
        for result in results {
            let (m, r) = result?;
            made += m;
            removed += r;
        }
        if made + removed > 0 {
            tracing::info!("legacy links of shared entries: {made} made, {removed} removed");
        }
        Ok((made, removed))
    }

    /// On a reader: do the root's legacy links of shared entries match the
    /// in-memory store? True once this process repaired them (or was told
    /// they were in step, [`SharedDelta::links_in_step`]) and kept them
    /// without a failure since. A reader's saved view records this, so the
    /// next process need not list and `readlink` every link again.
    pub fn links_in_step(&self) -> bool {
        let upkeep = self.links.lock();
        self.layout.role() == Role::Reader
            && self.read_only.is_none()
            && upkeep.repaired
            && !upkeep.disabled
            && !upkeep.failed
    }

    /// The short names in `l_dir` (`overlay/l`): stale ones (their layer is
    /// neither shared nor `local`) go; a shared layer without one gets it
    /// (its `link` file on the share read beneath its dir, validated).
    pub(super) fn repair_short_links(
        &self,
        l_dir: &Path,
        layers: &BTreeSet<String>,
        local: &BTreeSet<String>,
    ) -> Result<(usize, usize)> {
        let (mut made, mut removed) = (0, 0);
        let l = crate::links::LinkDir::open(l_dir).at(l_dir)?;
        let mut short_of = BTreeSet::new();
        for (short, id) in l.short_links().at(l_dir)? {
            let Some(id) = id else { continue };
            if layers.contains(&id) || local.contains(&id) {
                short_of.insert(id);
            } else {
                let path = l_dir.join(&short);
                let outcome =
                    crate::links::remove_link(&path, &crate::links::short_target(&id)).at(&path)?;
                removed += usize::from(outcome == crate::links::Outcome::Done);
            }
        }
        let overlay_ro = self.layout.overlay_ro();
        let Some(ro) = crate::links::open_overlay_ro(&overlay_ro) else {
            return Ok((made, removed)); // mounts fall back to RO/<id>/diff
        };
        for id in layers
            .iter()
            .filter(|id| !short_of.contains(*id) && !local.contains(*id))
        {
            let Some(short) = crate::links::read_short_name_at(&ro, id) else {
                continue;
            };
            let outcome = l
                .add(&short, &crate::links::short_target(id), false)
                .at(l_dir.join(&short))?;
            if outcome == crate::links::Outcome::Occupied {
                tracing::debug!(
                    "shared layer {id}: its short name {short} is another layer's; \
                     not linked (it mounts through RO/{id}/diff)"
                );
            }
            made += usize::from(outcome == crate::links::Outcome::Done);
        }
        Ok((made, removed))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{id, image, layer_on_share, reader, writer};
    use super::*;
    use crate::links::{id_target, is_real_dir, short_target};

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    /// A reader at `tmp/reader` whose share holds layer `A` (short name
    /// `SHORTSHORT`), not yet applied.
    fn reader_with_a(tmp: &Path) -> (Store, Layer) {
        let store = reader(tmp);
        let a = layer_on_share(&tmp.join("share"), A, "SHORTSHORT");
        (store, a)
    }

    /// `A`'s legacy names in `root`: `overlay/A`, `overlay-layers/A`, and
    /// its short name.
    fn assert_a_linked(root: &Path) {
        let overlay = root.join("overlay");
        assert_eq!(fs::read_link(overlay.join(A)).unwrap(), id_target(A));
        let record = root.join("overlay-layers").join(A);
        assert_eq!(fs::read_link(record).unwrap(), id_target(A));
        let short = overlay.join("l/SHORTSHORT");
        assert_eq!(fs::read_link(short).unwrap(), short_target(A));
    }

    fn is_link(path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink())
    }

    #[test]
    fn a_reader_links_repairs_and_unlinks_shared_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, a) = reader_with_a(tmp.path());
        let (root, share) = (store.root().to_path_buf(), tmp.path().join("share"));
        let stale = "c".repeat(64);
        std::os::unix::fs::symlink(id_target(&stale), root.join("overlay").join(&stale)).unwrap();
        store.apply_shared(SharedDelta {
            add_layers: vec![a.clone()],
            ..Default::default()
        });
        let overlay = root.join("overlay");
        assert_a_linked(&root);
        assert!(
            fs::symlink_metadata(overlay.join(&stale)).is_err(),
            "stale link gone"
        );
        let via_link = fs::read_to_string(overlay.join(A).join("diff/file")).unwrap();
        assert_eq!(via_link, "shared");
        // Reopened, the store does not take the links for local layers.
        drop(store);
        let store = reader(tmp.path());
        assert!(store.layers().is_empty(), "links are not local layers");
        store.apply_shared(SharedDelta {
            add_layers: vec![a],
            ..Default::default()
        });
        store.apply_shared(SharedDelta {
            remove_layers: vec![A.to_string()],
            ..Default::default()
        });
        for path in [
            overlay.join(A),
            root.join("overlay-layers").join(A),
            overlay.join("l/SHORTSHORT"),
        ] {
            assert!(fs::symlink_metadata(&path).is_err(), "{}", path.display());
        }
        assert!(share.join("overlay").join(A).join("diff/file").is_file());
    }

    /// The first scan's repair in one go: stale links (ids and short names)
    /// go, a link elsewhere is replaced, missing ones are made, and a local
    /// layer's directory and short name stay; a second repair does nothing.
    #[test]
    fn a_reader_repair_fixes_every_kind_of_link() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, a) = reader_with_a(tmp.path());
        let root = store.root().to_path_buf();
        let (overlay, l) = (root.join("overlay"), root.join("overlay/l"));
        fs::create_dir_all(&l).unwrap();
        let (stale, local) = ("c".repeat(64), "d".repeat(64));
        std::os::unix::fs::symlink(id_target(&stale), root.join("overlay-images").join(&stale))
            .unwrap();
        std::os::unix::fs::symlink(short_target(&stale), l.join("STALE")).unwrap();
        std::os::unix::fs::symlink("RO/elsewhere", overlay.join(A)).unwrap();
        fs::create_dir_all(overlay.join(&local).join("diff")).unwrap();
        std::os::unix::fs::symlink(short_target(&local), l.join("LOCAL")).unwrap();
        store.apply_shared(SharedDelta {
            add_layers: vec![a],
            ..Default::default()
        });
        assert_a_linked(&root);
        assert!(fs::symlink_metadata(l.join("STALE")).is_err());
        assert!(fs::symlink_metadata(root.join("overlay-images").join(&stale)).is_err());
        assert!(is_real_dir(&overlay.join(&local)));
        assert_eq!(
            fs::read_link(l.join("LOCAL")).unwrap(),
            short_target(&local)
        );
        assert_eq!(store.repair_shared_links().unwrap(), (0, 0));
    }

    /// After the first repair of a process, a delta makes and removes the
    /// links of what it adds and removes, and looks at nothing else: a stale
    /// link made meanwhile stays until the next repair.
    #[test]
    fn after_the_first_repair_deltas_touch_only_what_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, a) = reader_with_a(tmp.path());
        let images = store.images_dir();
        store.apply_shared(SharedDelta {
            add_layers: vec![a],
            ..Default::default()
        });
        let stale = id("stale");
        std::os::unix::fs::symlink(id_target(&stale), images.join(&stale)).unwrap();
        let img = image(&id("image"), A, &["localhost/i:1"], true);
        store.apply_shared(SharedDelta {
            add_images: vec![img.clone()],
            ..Default::default()
        });
        assert_eq!(
            fs::read_link(images.join(&img.id)).unwrap(),
            id_target(&img.id)
        );
        assert!(is_link(&images.join(&stale)), "a delta lists nothing");
        store.apply_shared(SharedDelta {
            remove_images: vec![img.id.clone()],
            ..Default::default()
        });
        assert!(!is_link(&images.join(&img.id)));
        assert!(is_link(&store.layers_dir().join(A)), "the layer stays");
        assert_eq!(store.repair_shared_links().unwrap(), (0, 1));
        assert!(!is_link(&images.join(&stale)));
    }

    /// A local layer with the id of a shared one keeps its names: its
    /// directory, and its own short name (the shared one's is not made).
    #[test]
    fn a_local_layer_keeps_its_names_when_a_shared_one_comes_and_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, a) = reader_with_a(tmp.path());
        let b = layer_on_share(&tmp.path().join("share"), &id("b"), "SHORTB");
        // The first delta repairs; the next ones go by delta.
        store.apply_shared(SharedDelta {
            add_layers: vec![b],
            ..Default::default()
        });
        let overlay = store.layout.overlay();
        fs::create_dir_all(overlay.join(A).join("diff")).unwrap();
        store.apply_shared(SharedDelta {
            add_layers: vec![a],
            ..Default::default()
        });
        assert!(is_real_dir(&overlay.join(A)));
        assert!(!is_link(&overlay.join("l/SHORTSHORT")));
        assert!(
            is_link(&store.layers_dir().join(A)),
            "no local record: linked"
        );
        store.apply_shared(SharedDelta {
            remove_layers: vec![A.to_string()],
            ..Default::default()
        });
        assert!(is_real_dir(&overlay.join(A)));
        assert!(!is_link(&store.layers_dir().join(A)));
        assert!(is_link(&overlay.join("l/SHORTB")), "another layer's stays");
    }

    #[test]
    fn links_are_in_step_only_on_a_reader_that_kept_them_without_a_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, a) = reader_with_a(tmp.path());
        assert!(!store.links_in_step(), "nothing repaired yet");
        store.apply_shared(SharedDelta {
            add_layers: vec![a.clone()],
            ..Default::default()
        });
        assert!(store.links_in_step());
        drop(store);
        // Told they are in step (a saved view): believed, nothing is made.
        let store = reader(tmp.path());
        fs::remove_file(store.layers_dir().join(A)).unwrap();
        store.apply_shared(SharedDelta {
            add_layers: vec![a.clone()],
            links_in_step: true,
            ..Default::default()
        });
        assert!(store.links_in_step());
        assert!(!is_link(&store.layers_dir().join(A)));
        drop(store);
        // A repair that fails: not in step.
        let store = reader(tmp.path());
        let l = store.layout.overlay().join("l");
        fs::remove_dir_all(&l).unwrap();
        fs::write(&l, "in the way").unwrap();
        store.apply_shared(SharedDelta {
            add_layers: vec![a],
            ..Default::default()
        });
        assert!(!store.links_in_step());
        // A writer keeps no reader's links.
        let tmp = tempfile::tempdir().unwrap();
        assert!(!writer(tmp.path()).links_in_step());
    }
}
