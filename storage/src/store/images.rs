//! The image store: resolving names and ids (local first on a reader), an
//! image's chain and documents, names (tag, untag), read-only mounts.
//! Removal (`remove_image`) stays with the writer's removal protocol in
//! `store.rs`.

use super::*;

impl Store {
    /// Find an image by full id, `sha256:` id, name (as given or normalized),
    /// or unique id prefix.
    pub fn resolve_image(&self, name: &str) -> Result<Image> {
        let state = self.state.read();
        let bare = name.strip_prefix("sha256:").unwrap_or(name);
        if let Some(i) = state.images.get(bare) {
            return Ok(i.clone());
        }
        // A name a local and a shared image both have is the local one's.
        let normalized = crate::reference::normalize_name(name).ok();
        let named = |i: &&Image| {
            i.names
                .iter()
                .any(|n| n == name || Some(n) == normalized.as_ref())
        };
        // Names are in the records' skeletons: only the one found is parsed.
        let asked: Vec<&str> = [Some(name), normalized.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let holders = state.images_named(&asked);
        let local = holders.iter().copied().find(|i| !i.shared);
        let shared = holders.iter().copied().find(|i| i.shared);
        if let Some(i) = local.or(shared) {
            let image = state.images[&i.id].clone();
            if local.is_some() && shared.is_some() {
                drop(state);
                self.warn_collisions(vec![normalized.unwrap_or_else(|| name.to_string())]);
            }
            return Ok(image);
        }
        // A shared image hidden by a local one of the same id is the same
        // image (same config): its names lead to the local one.
        if let Some(i) = state
            .hidden_images
            .values()
            .find(named)
            .and_then(|hidden| state.images.get(&hidden.id))
        {
            return Ok(i.clone());
        }
        let is_prefix = !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_hexdigit());
        let matches: Vec<&Image> = if is_prefix {
            state
                .images
                .range_from(bare)
                .take_while(|(id, _)| id.starts_with(bare))
                .map(|(_, i)| i)
                .collect()
        } else {
            Vec::new()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::ImageUnknown { name: name.into() }),
            many => Err(Error::AmbiguousImage {
                name: name.into(),
                count: many.len(),
            }),
        }
    }

    /// The image's layers, base first.
    pub fn image_layers(&self, image: &Image) -> Result<Vec<Layer>> {
        let state = self.state.read();
        let top = image.layer.as_deref().unwrap_or("");
        let mut chain: Vec<Layer> = state
            .chain(top)
            .ok_or_else(|| Error::LayerUnknown { id: top.into() })?
            .into_iter()
            .cloned()
            .collect();
        chain.reverse();
        Ok(chain)
    }

    /// Bytes of the image's uncompressed layers.
    pub fn image_size(&self, image: &Image) -> u64 {
        let state = self.state.read();
        state
            .chain(image.layer.as_deref().unwrap_or(""))
            .map_or(0, |ls| ls.iter().filter_map(|l| l.diff_size).sum())
    }

    /// A stored document of the image (`manifest`, `config`).
    pub fn image_big_data(&self, image: &Image, key: &str) -> Result<Vec<u8>> {
        if !image.big_data_names.iter().any(|k| k == key) {
            return Err(Error::io(
                self.image_dir(&image.id).join(key),
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        let path = self.image_dir(&image.id).join(key);
        fsutil::read_small_file(&path, fsutil::MAX_DOCUMENT).at(path)
    }

    /// Rewrite an image's `images.json` in place (atomic replace).
    pub(super) fn write_image_record(&self, image: &Image) -> Result<()> {
        let json = serde_json::to_vec_pretty(image).expect("an image record serializes");
        write_atomic(&self.image_dir(&image.id), IMAGES_JSON, &json)?;
        if let Some(hook) = &self.share_hook {
            hook.image_changed(&image.id);
        }
        self.state
            .write()
            .images
            .insert(image.id.clone(), image.clone());
        Ok(())
    }

    /// Take `names` away from every image but `id` that has them (a name
    /// names one image). A reader leaves shared images alone. Writer lock held.
    pub(super) fn take_names_from_others(&self, id: &str, names: &[String]) -> Result<()> {
        let reader = self.layout.role() == Role::Reader;
        let state = self.state.read();
        // Skeletons (names, shared) to find them; the whole records to write.
        let asked: Vec<&str> = names.iter().map(String::as_str).collect();
        let others: Vec<Image> = state
            .images_named(&asked)
            .into_iter()
            .filter(|i| i.id != id && !(reader && i.shared))
            .filter_map(|i| state.images.get(&i.id).cloned())
            .collect();
        drop(state);
        for mut other in others {
            other.names.retain(|n| !names.contains(n));
            self.write_image_record(&other)?;
        }
        Ok(())
    }

    /// Give image `id` the (normalized) `names`, taking them from any other
    /// image that has them. Writer lock held.
    pub(super) fn add_names(&self, id: &str, names: &[String]) -> Result<Image> {
        self.take_names_from_others(id, names)?;
        let mut image = self
            .state
            .read()
            .images
            .get(id)
            .cloned()
            .ok_or_else(|| Error::ImageUnknown { name: id.into() })?;
        let before = image.names.len();
        for n in names {
            if !image.names.contains(n) {
                image.names.push(n.clone());
            }
        }
        if image.names.len() != before {
            self.write_image_record(&image)?;
            self.bump_generation()?;
            if !image.shared {
                let collisions = shared_claims(&self.state.read(), names.to_vec());
                self.warn_collisions(collisions);
            }
        }
        Ok(image)
    }

    /// Add the name `name` (normalized, e.g. `docker.io/library/x:latest`) to an image.
    pub fn tag(&self, image: &str, name: &str) -> Result<Image> {
        let normalized =
            crate::reference::normalize_name(name).map_err(|e| Error::InvalidName {
                name: name.into(),
                reason: e.to_string(),
            })?;
        let _lock = self.begin_write()?;
        let image = self.resolve_image(image)?;
        self.check_mutable(image.shared, &format!("image {}", image.id))?;
        self.add_names(&image.id, &[normalized])
    }

    /// Mount an image read-only, `nodev`, `nosuid` (overlayfs over its
    /// layers, up to 500) at [`Store::mount_path`]; mounting a mounted image
    /// returns the same path.
    pub fn mount_image(&self, image: &Image) -> Result<PathBuf> {
        let target = self.mount_path(&image.id);
        if storectl_overlay::mount::is_mounted(&target)? {
            return Ok(target);
        }
        let ids: Vec<String> = self
            .image_layers(image)?
            .into_iter()
            .rev()
            .map(|l| l.id)
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.driver.mount_read_only(&ids, &target)?;
        Ok(target)
    }

    /// Unmount an image mounted by [`Store::mount_image`]. Returns false when
    /// it was not mounted.
    pub fn unmount_image(&self, image: &Image) -> Result<bool> {
        self.unmount_id(&image.id)
    }

    /// Unmount the mount of image id `id` (which may be gone from the store
    /// since — on a reader, the writer may have removed it).
    pub fn unmount_id(&self, id: &str) -> Result<bool> {
        if !is_hex64(id) {
            return Err(Error::ImageUnknown { name: id.into() });
        }
        let target = self.mount_path(id);
        if !storectl_overlay::mount::is_mounted(&target)? {
            return Ok(false);
        }
        storectl_overlay::mount::unmount(&target)?;
        let _ = fs::remove_dir(&target);
        Ok(true)
    }

    /// Ids of images mounted under `mounts/` whose id starts with `prefix`.
    pub fn mounted_ids(&self, prefix: &str) -> Result<Vec<String>> {
        let mut ids = list_ids(&self.root.join(MOUNTS))?;
        ids.retain(|id| {
            id.starts_with(prefix)
                && storectl_overlay::mount::is_mounted(&self.mount_path(id)).unwrap_or(false)
        });
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storectl_fixtures::{
        write_oci_layout, Compression, Entry, Image as Fixture, Layer as FixtureLayer,
    };

    /// A local store with images `a` and `b` (each one layer of its own
    /// file), loaded from OCI layouts.
    fn store(tmp: &Path) -> (Store, Image, Image) {
        let store = Store::open(StoreOptions::new(tmp.join("root"))).unwrap();
        let mut out = Vec::new();
        for name in ["a", "b"] {
            let oci = tmp.join(format!("oci-{name}"));
            let fixture = Fixture::new(vec![FixtureLayer::new(
                vec![Entry::file(name, format!("{name}\n"))],
                Compression::Gzip,
            )])
            .named(&format!("localhost/{name}:1"));
            write_oci_layout(&oci, &[fixture]).unwrap();
            let image = store
                .load(
                    &oci.display().to_string(),
                    &LoadOptions::default(),
                    &crate::NoopReporter,
                )
                .unwrap();
            out.push(image);
        }
        let b = out.pop().unwrap();
        let a = out.pop().unwrap();
        (store, a, b)
    }

    #[test]
    fn images_resolve_by_id_name_and_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, a, b) = store(tmp.path());
        assert_eq!(store.resolve_image(&a.id).unwrap().id, a.id);
        assert_eq!(
            store.resolve_image(&format!("sha256:{}", a.id)).unwrap().id,
            a.id
        );
        assert_eq!(store.resolve_image("localhost/b:1").unwrap().id, b.id);
        assert_eq!(store.resolve_image(&b.id[..12]).unwrap().id, b.id);
        assert!(matches!(
            store.resolve_image("localhost/c:1"),
            Err(Error::ImageUnknown { .. })
        ));
        assert!(matches!(
            store.resolve_image(""),
            Err(Error::ImageUnknown { .. })
        ));
    }

    #[test]
    fn chains_documents_and_names() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, a, b) = store(tmp.path());
        let layers = store.image_layers(&a).unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(Some(&layers[0].id), a.layer.as_ref());
        assert_eq!(store.image_size(&a), layers[0].diff_size.unwrap());
        let config = store.image_big_data(&a, CONFIG).unwrap();
        assert_eq!(
            crate::digest::sha256_digest(&config),
            format!("sha256:{}", a.id)
        );
        assert!(store.image_big_data(&a, "nope").is_err());
        // A name names one image: tagging b with a's name takes it from a.
        store.tag(&b.id, "localhost/a:1").unwrap();
        assert_eq!(store.resolve_image("localhost/a:1").unwrap().id, b.id);
        assert!(store.resolve_image(&a.id).unwrap().names.is_empty());
        let reopened = Store::open(StoreOptions::new(store.root())).unwrap();
        assert_eq!(reopened.resolve_image("localhost/a:1").unwrap().id, b.id);
        assert!(store.tag(&a.id, "not a name!").is_err());
    }
}
