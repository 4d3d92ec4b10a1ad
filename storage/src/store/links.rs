//! A reader's upkeep of the legacy names of shared entries in its own root
//! (`overlay/<id>`, `overlay-layers/<id>`, `overlay-images/<id>` `-> RO/<id>`,
//! `overlay/l/<short>`): made as entries join, removed as they leave, all
//! repaired on the first scan of a process (see docs/sharing.md).

use super::*;

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
}
