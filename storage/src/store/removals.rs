//! The writer's grace period for removed shared layers (see
//! [`crate::grace`]): `rmi` of a shared image leaves the layers no other
//! image needs on the share, listed in `<share>/storectl-removed.json`;
//! [`Store::gc`] (and every later `rmi`) deletes those past their time; the
//! crash sweep never deletes a layer that still waits.

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
        let Some(share) = self.index_share() else {
            return Ok(());
        };
        write_atomic(share, REMOVED_FILE, &grace::render(r))
    }

    /// Does this writer keep removed shared layers for a grace period?
    /// (A grace of 0 deletes them at once, as before.)
    pub(super) fn keeps_removed_layers(&self) -> bool {
        self.index_share().is_some() && self.removed_layers_grace().is_some_and(|g| g > 0)
    }

    /// Delete the removed shared layers whose grace period is over at
    /// `now` — or, with `grace` given, that were removed more than `grace`
    /// seconds ago — and no image needs again; forget those an image needs
    /// again. containers/storage's index forgets the layers (and
    /// `generation` moves) before their directories go. Writer lock held.
    pub(super) fn collect_expired(&self, now: i64, grace: Option<u64>) -> Result<GcReport> {
        let mut report = GcReport::default();
        if self.index_share().is_none() {
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
                .filter(|id| used.contains(*id) || !st.layers.contains_key(*id))
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
            std::cmp::Reverse(self.with_state(|st| st.chain(id).map_or(0, |c| c.len())))
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

#[cfg(test)]
mod tests {
    use super::*;
    use storectl_fixtures::{
        write_oci_layout, Compression, Entry, Image as Fixture, Layer as FixtureLayer,
    };

    /// A writer root `T/root` on share `T/share` (wired as `init` does).
    fn writer(tmp: &Path) -> Store {
        let share = tmp.join("share");
        let root = tmp.join("root");
        for d in ["overlay", "overlay-layers", "overlay-images"] {
            fs::create_dir_all(share.join(d)).unwrap();
            fs::create_dir_all(root.join(d)).unwrap();
            std::os::unix::fs::symlink(share.join(d), root.join(d).join("RO")).unwrap();
        }
        Store::open(StoreOptions {
            config: Some(RootConfig {
                role: Role::Writer,
                shared: Some(share),
                ..RootConfig::default()
            }),
            ..StoreOptions::new(root)
        })
        .unwrap()
    }

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
}
