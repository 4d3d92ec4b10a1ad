//! A mutation's start and end: the writer lock and making the in-memory
//! state current before a change ([`Store::begin_write`]), and replacing
//! `generation` after one ([`Store::bump_generation`]).

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
    pub(super) fn begin_write(&self) -> Result<WriterLock> {
        if let Some(reason) = &self.read_only {
            return Err(Error::ReadOnlyStore {
                path: self.root.clone(),
                reason: reason.clone(),
            });
        }
        let lock = WriterLock::acquire_waiting(&self.layout.writer_lock(), &self.lock_wait)?;
        let reader = self.layout.role() == Role::Reader;
        let generation = self.read_generation();
        let current =
            !reader && generation.is_some() && *self.synced_generation.lock() == generation;
        if lock.previous_released() && current {
            self.ensure_index()?;
            return Ok(lock);
        }
        if !lock.previous_released() || reader {
            self.sweep_debris()?;
        }
        // Another process changed the share (or this is the first
        // mutation): re-read it — from the index when that process let go
        // normally and left it current, else from the records — and what
        // this one knew of the index is void.
        let from_index = match lock.previous_released() && !reader {
            true => self.state_from_index(true),
            false => None,
        };
        match from_index {
            Some(opened) => self.install_from_index(opened),
            None => {
                self.reload()?;
                self.index.lock().invalidate();
                *self.synced_generation.lock() = self.read_generation();
            }
        }
        if !lock.previous_released() || reader {
            self.remove_orphans()?;
        }
        *self.synced_generation.lock() = self.read_generation();
        self.ensure_index()?;
        Ok(lock)
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
        // containers/storage's index first (the per-id directories are
        // published already), then the stamp naming this generation.
        if let Some(share) = self.index_share() {
            let mut cache = self.index.lock();
            if cache.is_ready() {
                let started = std::time::Instant::now();
                let synced = cache.sync(share, &self.state.read()).inspect_err(|_| {
                    // Unknown now: the next mutation rebuilds it (moving
                    // junk that was in the way aside).
                    cache.invalidate();
                });
                let synced = synced?;
                tracing::debug!(
                    "containers/storage index: {} records serialized, layers.json {} \
                     ({} bytes), images.json {} ({} bytes), in {:?}",
                    synced.serialized,
                    if synced.layers_written {
                        "written"
                    } else {
                        "kept"
                    },
                    synced.layers_size,
                    if synced.images_written {
                        "written"
                    } else {
                        "kept"
                    },
                    synced.images_size,
                    started.elapsed()
                );
                crate::share_index::write_stamp(
                    share,
                    &crate::csindex::Stamp {
                        generation: text.clone(),
                        layers_size: synced.layers_size,
                        images_size: synced.images_size,
                    },
                )?;
            }
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
