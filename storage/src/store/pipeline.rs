//! The import pipeline: plan (which layers of the source the store lacks,
//! [`Store::import`]), extract (`jobs` layers at a time into staging dirs,
//! every digest checked: `prepare_batch`, `prepare_layer`),
//! publish (each layer, then the image, by rename: `publish_layer`,
//! `publish_image`). A failure leaves nothing behind.

use super::*;

/// Options for [`Store::load`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// An extra name for the image (`NAME[:TAG]`), whatever names the source
    /// gives it. It never picks an image: a source with several takes
    /// `PATH:TAG`.
    pub name: Option<String>,
    /// Refuse a layer once its uncompressed tar passes this many bytes.
    pub max_layer_size: Option<u64>,
    /// Layers imported at once.
    pub jobs: usize,
    /// Minimum time between two progress events of one blob.
    pub progress_interval: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            name: None,
            max_layer_size: None,
            jobs: 3,
            progress_interval: DEFAULT_INTERVAL,
        }
    }
}

impl Store {
    /// Import the image at `source` (`PATH` or `PATH:TAG`; an OCI layout
    /// directory, or a docker-archive / OCI-archive tarball; `-` for a
    /// tarball on standard input), adding `opts.name` to its names. Layers already in
    /// the store are not imported again; the others are extracted in parallel
    /// and published base first, the image last.
    pub fn load(&self, source: &str, opts: &LoadOptions, reporter: &dyn Reporter) -> Result<Image> {
        let op = |event, name: &str| ProgressEvent {
            event,
            name: name.to_string(),
            parents: vec![],
            progress: 0,
            total: 0,
            layer: None,
            compressed: None,
        };
        reporter.report(&op(EventKind::Resolving, source));
        let src = import::open_source(source, &self.root)?;
        let image = self.import(src, opts, reporter)?;
        reporter.report(&op(EventKind::Done, &image.id));
        Ok(image)
    }

    /// Import `src` — its config, manifest and layer blobs, local or
    /// [`Remote`](crate::import::Blob::Remote) — as [`load`](Self::load) does
    /// after opening an archive (and `storectl-transfer`'s pull after reading
    /// a registry's manifest and config): layers extracted `opts.jobs` at a
    /// time, checked, and published in order only when all succeeded.
    pub fn import(
        &self,
        src: SourceImage,
        opts: &LoadOptions,
        reporter: &dyn Reporter,
    ) -> Result<Image> {
        let config = spec::parse_config(&src.config).map_err(|reason| Error::InvalidArchive {
            path: PathBuf::from(&src.config_digest),
            reason,
        })?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != src.layers.len() {
            return Err(Error::InvalidArchive {
                path: PathBuf::from(&src.config_digest),
                reason: format!(
                    "the config lists {} layers, the manifest {}",
                    diff_ids.len(),
                    src.layers.len()
                ),
            });
        }
        if diff_ids.len() > MAX_LAYERS {
            return Err(Error::TooManyLayers {
                image: src
                    .names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| src.config_digest.clone()),
                layers: diff_ids.len(),
                max: MAX_LAYERS,
            });
        }
        let image_id = crate::digest::sha256_hex(&src.config_digest)
            .ok_or_else(|| Error::InvalidArchive {
                path: PathBuf::from(&src.config_digest),
                reason: "config digest is not sha256".into(),
            })?
            .to_string();
        let mut names = src.names.clone();
        if let Some(n) = &opts.name {
            let n = crate::reference::normalize_name(n).map_err(|e| Error::InvalidName {
                name: n.clone(),
                reason: e.to_string(),
            })?;
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let chain = chain_ids(diff_ids);
        let parent_name = names.first().cloned().unwrap_or_else(|| image_id.clone());
        let blob_event = |event, i: usize, progress: u64| {
            let total = src.layers[i].blob.len();
            ProgressEvent {
                event,
                name: src.layers[i]
                    .digest
                    .clone()
                    .unwrap_or_else(|| diff_ids[i].clone()),
                parents: vec![parent_name.clone()],
                progress: if event == EventKind::Waiting {
                    0
                } else {
                    progress.min(total)
                },
                total,
                layer: Some(chain[i].clone()),
                compressed: src.layers[i].is_compressed(),
            }
        };

        let mut lock = self.begin_write()?;
        // On a reader, a shared image cannot take names: a local record of
        // it is made instead (on the shared layers), and hides the shared one.
        let reader = self.layout.role() == Role::Reader;
        let loaded = || {
            self.state
                .read()
                .images
                .get(&image_id)
                .filter(|i| !(reader && i.shared))
                .cloned()
        };
        if let Some(image) = loaded() {
            for i in 0..chain.len() {
                reporter.report(&blob_event(
                    EventKind::AlreadyExists,
                    i,
                    src.layers[i].blob.len(),
                ));
            }
            return self.add_names(&image.id, &names);
        }
        // A local layer can be on disk but not loaded: its chain broke when
        // the writer removed a shared ancestor. It is whole (incomplete ones
        // went in `begin_write`) and named by its content, so it is kept and
        // rejoins once this import brings the ancestor back.
        let mut stranded = false;
        let todo: Vec<usize> = {
            let state = self.state.read();
            (0..chain.len())
                .filter(|&i| {
                    let loaded = state.layers.contains_key(&chain[i]);
                    let have = loaded || self.is_stranded_layer(&chain[i]);
                    stranded |= !loaded && have;
                    let ev = if have {
                        EventKind::AlreadyExists
                    } else {
                        EventKind::Waiting
                    };
                    reporter.report(&blob_event(ev, i, src.layers[i].blob.len()));
                    !have
                })
                .collect()
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.jobs.clamp(1, 16))
            .build()
            .map_err(|e| Error::io(&self.root, std::io::Error::other(e)))?;
        // The first failure stops the other layers' streams: their work is lost anyway.
        let cancel = AtomicBool::new(false);
        let staging_fs = if self.publishes_shared() {
            self.layout.overlay_ro()
        } else {
            self.layout.overlay()
        };
        // Layers are extracted `jobs` at a time and each batch is published
        // before the next starts: staging dirs (and tar-split buffers) exist
        // for at most `jobs` layers, however many the image has.
        let mut published: Vec<String> = Vec::new();
        let mut extract = || -> Result<()> {
            for batch in todo.chunks(opts.jobs.clamp(1, 16)) {
                let prepared = self.prepare_batch(
                    batch,
                    &src,
                    diff_ids,
                    &chain,
                    opts,
                    &cancel,
                    reporter,
                    &pool,
                    &staging_fs,
                    &blob_event,
                )?;
                for p in prepared {
                    let parents: Vec<String> = match &p.layer.parent {
                        Some(parent) => {
                            if stranded && !self.state.read().layers.contains_key(parent) {
                                self.reload()?; // a stranded parent rejoins now
                            }
                            self.state
                                .read()
                                .chain_skeleton(parent)
                                .map(|c| c.iter().map(|l| l.id.clone()).collect())
                                .ok_or_else(|| Error::LayerUnknown { id: parent.clone() })?
                        }
                        None => Vec::new(),
                    };
                    let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
                    let id = p.layer.id.clone();
                    self.publish_layer(p, &parents)?;
                    published.push(id);
                }
            }
            Ok(())
        };
        if let Err(e) = extract() {
            // Take back the layers this import published: a failed load
            // leaves nothing behind. What cannot be taken back is left to
            // the next writer's sweep.
            if !self.unpublish_layers(&published) {
                lock.leave_unreleased();
            }
            return Err(e);
        }

        if stranded {
            self.reload()?;
            if let Some(image) = loaded() {
                return self.add_names(&image.id, &names);
            }
        }
        let manifest = match (&src.manifest, &src.manifest_digest) {
            (Some(m), Some(d)) => (m.clone(), d.clone()),
            _ => {
                let m = self.docker_manifest(&src, &chain)?;
                let d = sha256_digest(&m);
                (m, d)
            }
        };
        // The names go into the staged record: the image never appears nameless.
        self.take_names_from_others(&image_id, &names)?;
        let image = Image {
            id: image_id.clone(),
            digest: Some(manifest.1.clone()),
            names: names.clone(),
            layer: chain.last().cloned(),
            created: config
                .created
                .clone()
                .or_else(|| Some(fsutil::now_rfc3339())),
            big_data_names: vec![MANIFEST.into(), CONFIG.into()],
            big_data_sizes: [
                (MANIFEST.to_string(), manifest.0.len() as u64),
                (CONFIG.to_string(), src.config.len() as u64),
            ]
            .into(),
            big_data_digests: [
                (MANIFEST.to_string(), manifest.1.clone()),
                (CONFIG.to_string(), src.config_digest.clone()),
            ]
            .into(),
            shared: false,
        };
        self.publish_image(&image, &manifest.0, &src.config)?;
        Ok(self
            .state
            .read()
            .images
            .get(&image_id)
            .cloned()
            .unwrap_or(image))
    }

    /// Extract the layers `batch` (indexes into the source) in parallel.
    /// The first failure cancels the others; every staging dir of a failed
    /// batch is removed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn prepare_batch(
        &self,
        batch: &[usize],
        src: &SourceImage,
        diff_ids: &[String],
        chain: &[String],
        opts: &LoadOptions,
        cancel: &AtomicBool,
        reporter: &dyn Reporter,
        pool: &rayon::ThreadPool,
        staging_fs: &Path,
        blob_event: &(dyn Fn(EventKind, usize, u64) -> ProgressEvent + Sync),
    ) -> Result<Vec<Prepared>> {
        let results: Vec<Result<Prepared>> = flushing_in_background(staging_fs, || {
            pool.install(|| {
                batch
                    .par_iter()
                    .map(|&i| {
                        let parent = i.checked_sub(1).map(|p| chain[p].clone());
                        let prepared = self.prepare_layer(
                            &src.layers[i],
                            &diff_ids[i],
                            &chain[i],
                            parent,
                            opts,
                            cancel,
                            reporter,
                            blob_event(
                                if src.layers[i].blob.is_remote() {
                                    EventKind::Downloading
                                } else {
                                    EventKind::Extracting
                                },
                                i,
                                0,
                            ),
                        );
                        match prepared {
                            Ok(p) => {
                                let mut done = blob_event(EventKind::Complete, i, u64::MAX);
                                // The blob was its own tar, or compressed.
                                done.compressed =
                                    Some(p.layer.compressed_diff_digest != p.layer.diff_digest);
                                reporter.report(&done);
                                Ok(p)
                            }
                            // The first failure cancels the rest; theirs follow from it.
                            Err(e) if !cancel.swap(true, Ordering::Relaxed) => Err(e),
                            Err(_) => Err(Error::Cancelled),
                        }
                    })
                    .collect()
            })
        });
        let mut prepared = Vec::with_capacity(results.len());
        let mut first_err = None;
        for r in results {
            match r {
                Ok(p) => prepared.push(p),
                // A real failure wins over the "cancelled" it caused elsewhere.
                Err(Error::Cancelled) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e), // `prepared` drops, removing its staging dirs
            None => Ok(prepared),
        }
    }

    /// A Docker schema 2 manifest for an image that came without one
    /// (docker-archive): its layers as the uncompressed tars we hold.
    pub(super) fn docker_manifest(&self, src: &SourceImage, chain: &[String]) -> Result<Vec<u8>> {
        let state = self.state.read();
        let mut layers = Vec::new();
        for id in chain {
            let l = state
                .layers
                .get(id)
                .ok_or_else(|| Error::LayerUnknown { id: id.clone() })?;
            layers.push(spec::Descriptor {
                media_type: spec::DOCKER_LAYER_TAR.into(),
                digest: l.diff_digest.clone().unwrap_or_default(),
                size: l.diff_size.unwrap_or(0),
                annotations: None,
                platform: None,
            });
        }
        let manifest = spec::Manifest {
            schema_version: 2,
            media_type: Some(spec::DOCKER_MANIFEST.into()),
            config: spec::Descriptor {
                media_type: spec::DOCKER_CONFIG.into(),
                digest: src.config_digest.clone(),
                size: src.config.len() as u64,
                annotations: None,
                platform: None,
            },
            layers,
            annotations: None,
        };
        Ok(serde_json::to_vec(&manifest).expect("a manifest serializes"))
    }

    /// Extract one layer blob into a staging dir and check its digests.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn prepare_layer(
        &self,
        src: &SourceLayer,
        diff_id: &str,
        id: &str,
        parent: Option<String>,
        opts: &LoadOptions,
        cancel: &AtomicBool,
        reporter: &dyn Reporter,
        event: ProgressEvent,
    ) -> Result<Prepared> {
        let layer_err = |source| Error::Layer {
            layer: src.digest.clone().unwrap_or_else(|| diff_id.to_string()),
            source,
        };
        let staged = self
            .driver
            .stage_layer(self.publishes_shared())
            .map_err(layer_err)?;
        let blob_path = src.blob.describe();
        let stream = Cancellable {
            inner: src.blob.open()?,
            cancel,
        };
        let mut blob = std::io::BufReader::with_capacity(256 << 10, stream);
        // An uncompressed blob is its own tar: hash it once, not twice.
        let magic = blob.fill_buf().at(&blob_path)?;
        let plain = storectl_overlay::Compression::detect(magic).is_none()
            && matches!(
                src.compression,
                None | Some(storectl_overlay::Compression::None)
            );
        let mut event = event;
        event.compressed = Some(!plain);
        let progress = ProgressReader::new(blob, reporter, event, opts.progress_interval);
        let mut compressed = if plain {
            HashingReader::counting(progress)
        } else {
            HashingReader::new(progress)
        };
        let (compression, stream) =
            storectl_overlay::compression::decompress(Box::new(&mut compressed), src.compression)
                .map_err(layer_err)?;
        let mut uncompressed = HashingReader::new(stream);
        let mut tar_split = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let stats = apply_tar(
            &staged.diff_path(),
            &mut uncompressed,
            Some(&mut tar_split),
            &ApplyOptions {
                max_size: opts.max_layer_size,
                xattrs: self.driver.xattr_mode(),
            },
        )
        .map_err(layer_err)?;
        let (found_diff, diff_size) = uncompressed.finish().at(&blob_path)?;
        let (found_blob, blob_size) = compressed.finish().at(&blob_path)?;
        let found_blob = if plain {
            found_diff.clone()
        } else {
            found_blob
        };
        if found_diff != diff_id {
            return Err(Error::DigestMismatch {
                what: format!(
                    "uncompressed layer {}",
                    src.digest.as_deref().unwrap_or(diff_id)
                ),
                expected: diff_id.to_string(),
                found: found_diff,
            });
        }
        if let Some(want) = &src.digest {
            if *want != found_blob {
                return Err(Error::DigestMismatch {
                    what: format!("layer blob {want}"),
                    expected: want.clone(),
                    found: found_blob,
                });
            }
        }
        let tar_split = tar_split.finish().at(staged.diff_path())?;
        let layer = Layer {
            id: id.to_string(),
            names: Vec::new(),
            parent,
            created: Some(fsutil::now_rfc3339()),
            compressed_diff_digest: Some(found_blob),
            compressed_size: Some(blob_size),
            diff_digest: Some(found_diff),
            diff_size: Some(diff_size),
            compression: compression.code(),
            incomplete: false,
            disk_size: Some(stats.file_bytes),
            shared: false,
        };
        Ok(Prepared {
            staged,
            layer,
            tar_split,
        })
    }

    /// Publish a prepared layer: overlay dir first, then its record (both by
    /// rename), then the `RO` symlink.
    pub(super) fn publish_layer(&self, p: Prepared, parents: &[&str]) -> Result<()> {
        let id = p.layer.id.clone();
        if self.layout.role() == Role::Reader {
            // A legacy link of a shared layer of this id: the local layer takes the name.
            self.unlink_entry(&self.layout.overlay(), &id)?;
            self.unlink_entry(&self.layers_dir(), &id)?;
        }
        let shared = self.publishes_shared();
        // The layer is not in the store, so whatever sits on its names was
        // not made by us: out of the way (to the trash, with a warning).
        let what = format!("layer {id}");
        if shared {
            self.move_aside(&self.layout.overlay_ro().join(&id), true, &what)?;
            self.move_aside(&self.layout.layers_ro().join(&id), true, &what)?;
            self.move_aside(&self.layers_dir().join(&id), false, &what)?;
        }
        self.move_aside(&self.layout.overlay().join(&id), false, &what)?;
        if !shared {
            self.move_aside(&self.layers_dir().join(&id), false, &what)?;
        }
        p.staged.commit(&id, parents)?;
        let mut layer = p.layer;
        let json = serde_json::to_vec_pretty(&layer).expect("a layer record serializes");
        layer.shared = shared;
        let parent_dir = if shared {
            self.layout.layers_ro()
        } else {
            self.layers_dir()
        };
        create_dir(&parent_dir)?;
        let staging = parent_dir.join(format!(".staging-{}", unique_suffix()));
        fs::create_dir(&staging).at(&staging)?;
        write_synced(&staging.join(LAYER_JSON), &json)?;
        write_synced(&staging.join(format!("{id}.tar-split.gz")), &p.tar_split)?;
        sync_dir(&staging)?;
        let dest = parent_dir.join(&id);
        fs::rename(&staging, &dest).at(&dest)?;
        if let Some(hook) = &self.share_hook {
            hook.layer_published(&id)?;
        }
        sync_dir(&parent_dir)?;
        if shared {
            let link = self.layers_dir().join(&id);
            std::os::unix::fs::symlink(format!("{RO}/{id}"), &link).at(&link)?;
            sync_dir(&self.layers_dir())?;
        }
        {
            let mut state = self.state.write();
            if let Some(old) = state.layers.insert(id.clone(), layer) {
                if old.shared && !shared {
                    state.hidden_layers.insert(id, old);
                }
            }
        }
        self.bump_generation_after(Change::LayerAdded)
    }

    /// Move whatever is at `path` (an entry storectl did not make, on a name
    /// it must write) into a dot-prefixed trash dir — the share's when
    /// `on_share`, else the root's — with a warning saying where it went.
    pub(super) fn move_aside(&self, path: &Path, on_share: bool, what: &str) -> Result<()> {
        let base = match (&self.layout.config.shared, on_share) {
            (Some(share), true) => share,
            _ => &self.root,
        };
        fsutil::move_to_trash(base, path, what)
    }

    /// Publish an image dir whole: stage `images.json`, `manifest`, `config`,
    /// fsync, rename into place.
    pub(super) fn publish_image(
        &self,
        image: &Image,
        manifest: &[u8],
        config: &[u8],
    ) -> Result<()> {
        let shared = self.publishes_shared();
        let dir = if shared {
            self.layout.images_ro()
        } else {
            self.images_dir()
        };
        create_dir(&dir)?;
        if self.layout.role() == Role::Reader {
            // A shared image's legacy link: the local record takes the name.
            self.unlink_entry(&dir, &image.id)?;
        }
        // The image is not in the store: whatever sits on its names was not
        // made by us (out of the way, to the trash, with a warning).
        let what = format!("image {}", image.id);
        if shared {
            self.move_aside(&self.layout.images_ro().join(&image.id), true, &what)?;
        }
        self.move_aside(&self.images_dir().join(&image.id), false, &what)?;
        let staging = dir.join(format!(".staging-{}", unique_suffix()));
        fs::create_dir(&staging).at(&staging)?;
        let json = serde_json::to_vec_pretty(image).expect("an image record serializes");
        write_synced(&staging.join(IMAGES_JSON), &json)?;
        write_synced(&staging.join(MANIFEST), manifest)?;
        write_synced(&staging.join(CONFIG), config)?;
        if let Some(hook) = &self.share_hook {
            hook.image_staged(image, &staging)?;
        }
        sync_dir(&staging)?;
        let dest = dir.join(&image.id);
        fs::rename(&staging, &dest).at(&dest)?;
        sync_dir(&dir)?;
        if shared {
            let link = self.images_dir().join(&image.id);
            std::os::unix::fs::symlink(format!("{RO}/{}", image.id), &link).at(&link)?;
        }
        let id = image.id.clone();
        let mut image = image.clone();
        image.shared = shared;
        let (collisions, replaced) = {
            let mut state = self.state.write();
            let names = image.names.clone();
            let old = state.images.insert(image.id.clone(), image);
            let replaced = old.is_some();
            if let Some(old) = old.filter(|old| old.shared && !shared) {
                state.hidden_images.insert(old.id.clone(), old);
            }
            let collisions = if shared {
                Vec::new()
            } else {
                shared_claims(&state, names)
            };
            (collisions, replaced)
        };
        self.warn_collisions(collisions);
        self.bump_generation_after(if replaced {
            Change::Other
        } else {
            Change::ImageAdded(&id)
        })
    }
}

/// A layer extracted into staging, verified, not yet published.
pub(super) struct Prepared {
    staged: StagedLayer,
    layer: Layer,
    tar_split: Vec<u8>,
}

/// A blob stream that stops (with an error) once `cancel` is set.
pub(super) struct Cancellable<'a, R> {
    inner: R,
    cancel: &'a AtomicBool,
}

impl<R: std::io::Read> std::io::Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            // Not `Interrupted`: readers retry that kind.
            return Err(std::io::Error::other("cancelled: another layer failed"));
        }
        self.inner.read(buf)
    }
}

/// `io::Write` into a sha256.
pub(super) struct HashWriter(pub(super) Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How often [`flushing_in_background`] flushes.
pub(super) const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Run `work` (layer extraction) while a thread flushes the filesystem of
/// `dir` every [`FLUSH_INTERVAL`]: writeback then overlaps extraction instead
/// of following it, and the `syncfs` at commit finds little left to write
/// (interleaved A/B: a docker-archive load ~19% faster, OCI ~9%). Durability
/// still comes from that commit-time sync alone.
pub(super) fn flushing_in_background<T>(dir: &Path, work: impl FnOnce() -> T) -> T {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let flusher = std::thread::Builder::new()
            .name("storectl-flush".into())
            .spawn_scoped(scope, move || {
                let Ok(fd) = fs::File::open(dir) else { return };
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(FLUSH_INTERVAL)
                {
                    let _ = rustix::fs::syncfs(&fd); // best effort; the commit syncs for real
                }
            });
        let out = work();
        drop(stop);
        if let Ok(handle) = flusher {
            let _ = handle.join();
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use storectl_fixtures::{
        write_oci_layout, Compression, Entry, Image as Fixture, Layer as FixtureLayer,
    };

    fn fixture(top: &str) -> Fixture {
        Fixture::new(vec![
            FixtureLayer::new(vec![Entry::file("base", "base\n")], Compression::Gzip),
            FixtureLayer::new(vec![Entry::file("top", top)], Compression::None),
        ])
        .named(&format!("localhost/{top}:1"))
    }

    /// Dot-free entries of `dir` (what a listing would show).
    fn visible(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.') && n != "l" && n != "RO")
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn only_missing_layers_are_extracted_and_published_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(StoreOptions::new(tmp.path().join("root"))).unwrap();
        for (i, top) in ["one", "two"].iter().enumerate() {
            let oci = tmp.path().join(top);
            let built = write_oci_layout(&oci, &[fixture(top)]).unwrap();
            let image = store
                .load(
                    &oci.display().to_string(),
                    &LoadOptions::default(),
                    &crate::NoopReporter,
                )
                .unwrap();
            assert_eq!(image.id, built[0].id());
            assert_eq!(
                image.layer.as_deref(),
                built[0].chain_ids().last().map(String::as_str)
            );
            // The base is stored once: one new layer for the second image.
            assert_eq!(store.layers().len(), 2 + i);
        }
        for layer in store.layers() {
            assert!(store.verify_layer(&layer.id).unwrap().ok());
        }
    }

    #[test]
    fn a_bad_blob_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(StoreOptions::new(tmp.path().join("root"))).unwrap();
        let oci = tmp.path().join("oci");
        let built = write_oci_layout(&oci, &[fixture("bad")]).unwrap();
        // Flip a byte of the (uncompressed) top layer's blob.
        let hex = built[0].layers[1]
            .blob_digest
            .trim_start_matches("sha256:")
            .to_string();
        let blob = oci.join("blobs/sha256").join(hex);
        let mut bytes = fs::read(&blob).unwrap();
        bytes[600] ^= 1;
        fs::write(&blob, bytes).unwrap();
        let err = store
            .load(
                &oci.display().to_string(),
                &LoadOptions::default(),
                &crate::NoopReporter,
            )
            .unwrap_err();
        assert!(
            matches!(err, Error::DigestMismatch { .. } | Error::Layer { .. }),
            "{err}"
        );
        assert!(store.images().is_empty() && store.layers().is_empty());
        for sub in ["overlay", "overlay-layers", "overlay-images"] {
            assert_eq!(
                visible(&tmp.path().join("root").join(sub)),
                Vec::<String>::new(),
                "{sub}"
            );
        }
    }
}
