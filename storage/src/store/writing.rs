//! A mutation's start and end: the writer lock and making the in-memory
//! state current before a change ([`Store::begin_write`]), and replacing
//! `generation` after one ([`Store::bump_generation`]) — on a writer, with
//! the share hook's turn at both ([`crate::share_hook`]).

use super::*;

impl Store {
    /// Take the writer lock and make the in-memory state current.
    ///
    /// A writer (or local store) trusts its in-memory state: it alone
    /// changes the store, under this lock, and every change replaces
    /// `generation`. So when `generation` is what this store last read or
    /// wrote, nothing is re-read; otherwise the records are reloaded. When the
    /// previous holder did not let go normally (a crash, `kill -9`, or the
    /// first write with this lock file) the debris of interrupted writers and
    /// unused layers are swept first. A mutation's own work therefore does
    /// not grow with the number of images in the store.
    ///
    /// A reader's local store has no `generation` of its own: it sweeps its
    /// local dirs and reloads every time (it never writes to the share).
    ///
    /// A writer store without its share hook changes nothing
    /// ([`Error::NoShareWriter`]).
    pub(super) fn begin_write(&self) -> Result<WriterLock> {
        if let Some(reason) = &self.read_only {
            return Err(Error::ReadOnlyStore {
                path: self.root.clone(),
                reason: reason.clone(),
            });
        }
        if let (Some(share), None) = (self.writes_share(), &self.share_hook) {
            return Err(Error::NoShareWriter {
                root: self.root.clone(),
                share: share.to_path_buf(),
            });
        }
        let lock = WriterLock::acquire_waiting(&self.layout.writer_lock(), &self.lock_wait)?;
        let reader = self.layout.role() == Role::Reader;
        let generation = self.read_generation();
        let current =
            !reader && generation.is_some() && *self.synced_generation.lock() == generation;
        if lock.previous_released() && current {
            self.before_mutation()?;
            return Ok(lock);
        }
        if !lock.previous_released() || reader {
            self.sweep_debris()?;
        }
        // Another process changed the share (or this is the first
        // mutation): re-read it — from the index when that process let go
        // normally and left it current, else from the records — and what
        // the share hook knew is void.
        let from_index = match lock.previous_released() && !reader {
            true => self.state_from_index(true),
            false => None,
        };
        match from_index {
            Some(opened) => self.install_from_index(opened),
            None => {
                self.reload()?;
                if let Some(hook) = &self.share_hook {
                    hook.read_from_records();
                }
                *self.synced_generation.lock() = self.read_generation();
            }
        }
        if !lock.previous_released() || reader {
            self.remove_orphans()?;
        }
        *self.synced_generation.lock() = self.read_generation();
        self.before_mutation()?;
        Ok(lock)
    }

    /// On a writer: the share hook's turn before a change.
    fn before_mutation(&self) -> Result<()> {
        let Some(hook) = &self.share_hook else {
            return Ok(());
        };
        hook.before_mutation(self, &self.hook_generation()?)
    }

    /// The `generation` text the state matches, for the share hook: on a
    /// new share, which has none, the first is written now.
    pub(super) fn hook_generation(&self) -> Result<String> {
        if let Some(generation) = self.synced_generation.lock().clone() {
            return Ok(generation);
        }
        self.bump_generation()?;
        Ok(self.synced_generation.lock().clone().unwrap_or_default())
    }

    /// `generation`'s text (`None` when missing or unreadable).
    pub(super) fn read_generation(&self) -> Option<String> {
        fsutil::read_small_file(&self.layout.generation(), 4096)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    }

    /// Replace `generation` so readers notice a change. A reader's changes
    /// are local and concern nobody else.
    pub(super) fn bump_generation(&self) -> Result<()> {
        self.bump_generation_after(Change::Other)
    }

    /// [`Store::bump_generation`] after a change the share hook may take
    /// the store's word for (`change`).
    pub(super) fn bump_generation_after(&self, change: Change<'_>) -> Result<()> {
        if self.layout.role() == Role::Reader {
            return Ok(());
        }
        let path = self.layout.generation();
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let current: u64 = fsutil::read_small_file(&path, 4096)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let text = format!("{} {}\n", current + 1, unique_suffix());
        // What the share hook keeps first (the per-id directories are
        // published already), then `generation`.
        if let Some(hook) = &self.share_hook {
            hook.before_generation(&self.state.read(), &text, change)?;
        }
        write_atomic(&dir, "generation", text.as_bytes())?;
        // The in-memory state is this generation: the next mutation of this
        // store need not re-read anything.
        *self.synced_generation.lock() = Some(text);
        Ok(())
    }

    /// Refuse to change a shared image or layer from a reader.
    pub(super) fn check_mutable(&self, shared: bool, what: &str) -> Result<()> {
        if shared && self.layout.role() != Role::Writer {
            return Err(Error::ReadOnlyStore {
                path: self
                    .layout
                    .config
                    .shared
                    .clone()
                    .unwrap_or_else(|| self.root.clone()),
                reason: format!("{what} is on the read-only share; change it on the writer host"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{load, local, reader, writer, writer_without_hook, Recorder};
    use super::*;

    /// `generation`'s counter (its first word).
    fn counter(store: &Store) -> u64 {
        let text = store.read_generation().unwrap();
        text.split_whitespace().next().unwrap().parse().unwrap()
    }

    #[test]
    fn every_bump_replaces_generation_and_a_reader_never_writes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local(tmp.path());
        assert_eq!(store.read_generation(), None, "a new root");
        store.bump_generation().unwrap();
        let first = store.read_generation().unwrap();
        assert_eq!(counter(&store), 1);
        store.bump_generation().unwrap();
        assert_eq!(counter(&store), 2);
        assert_ne!(store.read_generation().unwrap(), first);
        assert_eq!(*store.synced_generation.lock(), store.read_generation());
        let reader = reader(tmp.path());
        reader.bump_generation().unwrap();
        assert!(
            !reader.layout.generation().exists(),
            "the share's is the writer's"
        );
    }

    /// A mutation trusts the in-memory state while `generation` is what
    /// the store last read or wrote, and re-reads the records once it is
    /// not (another process changed the store).
    #[test]
    fn a_mutation_rereads_only_when_generation_moved() {
        let tmp = tempfile::tempdir().unwrap();
        let (this, other) = (local(tmp.path()), local(tmp.path()));
        let loaded = load(&other, tmp.path(), "localhost/o:1", &[("o", "o\n")]);
        assert!(this.images().is_empty());
        drop(this.begin_write().unwrap());
        assert_eq!(
            this.images(),
            vec![loaded.clone()],
            "another process loaded it"
        );
        // Changed behind the store's back, `generation` as it was: not seen.
        fs::remove_dir_all(this.images_dir().join(&loaded.id)).unwrap();
        drop(this.begin_write().unwrap());
        assert_eq!(this.images().len(), 1, "trusted, not re-read");
        other.bump_generation().unwrap();
        drop(this.begin_write().unwrap());
        assert!(this.images().is_empty(), "re-read");
    }

    /// The debris of interrupted writers is swept when the last holder of
    /// the lock did not let go normally (and on the first write with a new
    /// lock file), not after a normal release.
    #[test]
    fn a_mutation_after_a_crashed_holder_sweeps() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local(tmp.path());
        drop(store.begin_write().unwrap());
        let debris = store.layers_dir().join(".staging-1");
        fs::create_dir(&debris).unwrap();
        drop(store.begin_write().unwrap());
        assert!(debris.exists(), "released normally: no sweep");
        let mut crashed = WriterLock::acquire(&store.layout.writer_lock()).unwrap();
        crashed.leave_unreleased();
        drop(crashed);
        drop(store.begin_write().unwrap());
        assert!(!debris.exists(), "swept after the crash");
    }

    #[test]
    fn a_read_only_root_refuses_mutations_before_taking_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = local(tmp.path());
        store.read_only = Some("mounted read-only".into());
        let err = store.begin_write().unwrap_err();
        assert!(matches!(err, Error::ReadOnlyStore { .. }), "{err}");
        assert!(!store.layout.writer_lock().exists());
    }

    #[test]
    fn a_reader_may_change_local_entries_only() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let reader = reader(tmp.path());
        let refused = reader.check_mutable(true, "image x").unwrap_err();
        match refused {
            Error::ReadOnlyStore { path, reason } => {
                assert_eq!(path, share);
                assert!(reason.contains("image x"), "{reason}");
            }
            e => panic!("{e}"),
        }
        assert!(reader.check_mutable(false, "image x").is_ok());
        assert!(writer(tmp.path()).check_mutable(true, "image x").is_ok());
    }

    /// A writer store opened without its share hook reads as any other,
    /// and refuses every change before it touches anything.
    #[test]
    fn a_writer_without_its_share_hook_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let store = writer_without_hook(tmp.path());
        assert!(store.share_hook().is_none() && store.images().is_empty());
        match store.remove_image("localhost/x:1", false).unwrap_err() {
            Error::NoShareWriter { share: named, .. } => assert_eq!(named, share),
            e => panic!("{e}"),
        }
        assert!(matches!(store.gc(None), Err(Error::NoShareWriter { .. })));
        assert!(
            !store.layout.writer_lock().exists(),
            "the lock was not taken"
        );
        assert!(!store.layout.generation().exists());
        // Opened with it, the same root changes.
        let store = writer(tmp.path());
        load(&store, tmp.path(), "localhost/w:1", &[("w", "w\n")]);
        assert_eq!(store.images().len(), 1);
    }

    /// A writer calls its share hook at each step of a change: before it
    /// (after the sweep of a first write), as each shared layer and the
    /// image are published, before every `generation`, and as removed
    /// layers go — after `generation` moved on without them.
    #[test]
    fn a_writer_calls_its_share_hook_at_each_step() {
        let tmp = tempfile::tempdir().unwrap();
        let store = writer(tmp.path());
        let image = load(
            &store,
            tmp.path(),
            "localhost/h:1",
            &[("b", "b\n"), ("t", "t\n")],
        );
        let top = image.layer.clone().unwrap();
        let base = store.layer(&top).unwrap().parent.unwrap();
        let short = |call: &str, id: &str| format!("{call}({})", &id[..8]);
        let first_write = [
            "read_from_records()",
            "before_generation()", // the share's first generation
            "sweeping()",
            "swept()",
            "before_mutation()",
        ];
        let publish = [
            short("layer_published", &base),
            "before_generation()".into(),
            short("layer_published", &top),
            "before_generation()".into(),
            short("image_staged", &image.id),
            "before_generation()".into(),
        ];
        let want: Vec<String> = first_write
            .map(String::from)
            .into_iter()
            .chain(publish)
            .collect();
        assert_eq!(Recorder::take(&store), want);
        store.tag(&image.id, "localhost/h:2").unwrap();
        let tag = [
            "before_mutation()".into(),
            short("image_changed", &image.id),
            "before_generation()".into(),
        ];
        assert_eq!(Recorder::take(&store), tag);
        // Its layers wait out the share's grace period; gc ends it.
        store.remove_image(&image.id, true).unwrap();
        let rmi = [
            "before_mutation()",
            "before_generation()", // the image out of the state
            "before_generation()", // its directory gone
        ];
        assert_eq!(Recorder::take(&store), rmi.map(String::from));
        store.gc(Some(0)).unwrap();
        let gc = [
            "before_mutation()".into(),
            "before_generation()".into(), // the layers out of the state
            short("removing_layer", &top),
            short("removing_layer", &base),
            "before_generation()".into(),
        ];
        assert_eq!(Recorder::take(&store), gc);
    }
}
