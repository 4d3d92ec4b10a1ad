//! The container store: writable layers over images, their records in
//! `overlay-containers/<id>/`, mounting them read-write, removing them.
//!
//! Containers are always local: the writable layer is `overlay/<id>/` in
//! this root (never under `RO/`, never on a share, also on a reader whose
//! image is shared), the record `overlay-containers/<id>/container.json`.
//! Nothing here touches `generation` or the share: readers of a share never
//! learn of a writer host's containers.
//!
//! **Crash safety.** Creating makes the layer first (staged, synced,
//! renamed to `overlay/<id>`), then the record (staged, synced, renamed);
//! removing renames the record away first, then the layer. A `kill -9`
//! at any point leaves either no record (and perhaps an `overlay/<id>`
//! without one, or dot-prefixed debris) or a whole container; the next
//! mutation after a crashed holder sweeps the debris and such layers
//! ([`Store::remove_orphans`]), and no listing ever shows a half container.

use std::io::Read;
use std::path::PathBuf;

use super::*;
use crate::bundle;
use crate::container::{self, check_name, Container, CONTAINER_JSON};
use crate::usage::{self, Usage};

/// Options for [`Store::create_container`].
#[derive(Debug, Clone, Default)]
pub struct ContainerOptions {
    /// A name, unique among this store's containers.
    pub name: Option<String>,
    /// Free text kept in the record (`metadata`).
    pub metadata: String,
}

/// The image config a container keeps beside its record (so a bundle can
/// be made after its image is gone).
const CONTAINER_CONFIG: &str = "config";

/// `rel` (e.g. `etc/passwd`) read beneath `root` as if `root` were `/`
/// (`openat2` `RESOLVE_IN_ROOT`: a symlink in the container cannot lead
/// out of it); missing = empty.
fn read_in_root(root: &Path, rel: &str) -> Result<String> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(root, e.into()))?;
    let path = root.join(rel);
    let fd = match rustix::fs::openat2(
        &dir,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(String::new()),
        Err(e) => return Err(Error::io(&path, e.into())),
    };
    let mut text = String::new();
    fs::File::from(fd)
        .take(fsutil::MAX_DOCUMENT)
        .read_to_string(&mut text)
        .at(&path)?;
    Ok(text)
}

/// 32 random bytes as 64 hex: a new container's id.
fn random_id() -> Result<String> {
    let path = Path::new("/dev/urandom");
    let mut buf = [0u8; 32];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .at(path)?;
    Ok(hex::encode(buf))
}

impl Store {
    /// `overlay-containers/<id>`.
    fn container_dir(&self, id: &str) -> PathBuf {
        self.layout.containers().join(id)
    }

    /// Where a container is mounted: its layer's `merged/`, as
    /// containers/storage does.
    pub fn container_mount_path(&self, c: &Container) -> PathBuf {
        self.layout.overlay().join(&c.layer).join("merged")
    }

    /// Is container `c` mounted?
    pub fn container_mounted(&self, c: &Container) -> bool {
        storectl_overlay::mount::is_mounted(&self.container_mount_path(c)).unwrap_or(false)
    }

    /// Is `overlay/<id>` a container's writable layer (its record exists,
    /// whatever state the record is in)?
    pub(super) fn is_container_layer(&self, id: &str) -> bool {
        fs::symlink_metadata(self.container_dir(id)).is_ok()
    }

    /// Every container of this store, by id. A record that does not parse
    /// is skipped with a warning (once), never fatal.
    pub fn containers(&self) -> Result<Vec<Container>> {
        let dir = self.layout.containers();
        let mut out = Vec::new();
        for id in list_ids(&dir)? {
            let path = dir.join(&id).join(CONTAINER_JSON);
            let parsed = fsutil::read_small_file(&path, fsutil::MAX_RECORD)
                .map_err(|e| e.to_string())
                .and_then(|b| container::parse_container(&b, &id));
            match parsed {
                Ok(c) => out.push(c),
                Err(e) => self.warn_once(format!(
                    "skipping container {}: {e}{}",
                    path.display(),
                    removal_hint(&dir.join(&id))
                )),
            }
        }
        Ok(out)
    }

    /// Find a container by id, name or unique id prefix.
    pub fn resolve_container(&self, name: &str) -> Result<Container> {
        let all = self.containers()?;
        match container::resolve(&all, name) {
            Ok(c) => Ok(c.clone()),
            Err(container::ResolveError::Unknown) => {
                Err(Error::ContainerUnknown { name: name.into() })
            }
            Err(container::ResolveError::Ambiguous(count)) => Err(Error::AmbiguousContainer {
                name: name.into(),
                count,
            }),
        }
    }

    /// The containers made from image `id`.
    pub fn containers_of_image(&self, id: &str) -> Result<Vec<Container>> {
        let mut all = self.containers()?;
        all.retain(|c| c.image == id);
        Ok(all)
    }

    /// Make a container from `image` (name, id or prefix): a writable layer
    /// `overlay/<id>` over the image's chain and its record. The layer is
    /// local on every role; on a reader the image may be shared.
    pub fn create_container(&self, image: &str, opts: &ContainerOptions) -> Result<Container> {
        if let Some(name) = &opts.name {
            check_name(name).map_err(|reason| Error::InvalidContainerName { reason })?;
        }
        let _lock = self.begin_write()?;
        let image = self.resolve_image(image)?;
        let chain: Vec<String> = self
            .image_layers(&image)?
            .into_iter()
            .rev()
            .map(|l| l.id)
            .collect();
        if let Some(name) = &opts.name {
            if let Some(other) = self
                .containers()?
                .into_iter()
                .find(|c| c.names.contains(name))
            {
                return Err(Error::ContainerNameInUse {
                    name: name.clone(),
                    id: other.id,
                });
            }
        }
        let config = self.image_big_data(&image, CONFIG)?;
        let id = loop {
            let id = random_id()?;
            // Never an id an image layer, a container or debris has.
            if !self.driver.exists(&id) && !self.is_container_layer(&id) {
                break id;
            }
        };
        let c = Container {
            id: id.clone(),
            names: opts.name.iter().cloned().collect(),
            image: image.id.clone(),
            layer: id.clone(),
            metadata: opts.metadata.clone(),
            created: fsutil::now_rfc3339(),
            image_layers: chain.clone(),
        };
        // The layer first: a crash before the record leaves only a layer
        // without a record, which the next sweep removes.
        let parents: Vec<&str> = chain.iter().map(String::as_str).collect();
        let staged = self.driver.stage_layer(false)?;
        staged.commit(&id, &parents)?;
        let made = (|| {
            sync_dir(&self.layout.overlay())?;
            let dir = self.layout.containers();
            create_dir(&dir)?;
            let staging = dir.join(format!(".staging-{}", unique_suffix()));
            fs::create_dir(&staging).at(&staging)?;
            write_synced(
                &staging.join(CONTAINER_JSON),
                &container::render_container(&c),
            )?;
            write_synced(&staging.join(CONTAINER_CONFIG), &config)?;
            sync_dir(&staging)?;
            let dest = dir.join(&id);
            fs::rename(&staging, &dest).at(&dest)?;
            sync_dir(&dir)
        })();
        if let Err(e) = made {
            if let Err(e2) = self.driver.remove_layer(&id) {
                tracing::warn!("could not take back the layer of container {id}: {e2}");
            }
            return Err(e);
        }
        tracing::info!("created container {id} from image {}", image.id);
        Ok(c)
    }

    /// Mount container `c` read-write (its layer's `diff/` is the upper
    /// directory, local; the image's layers the lowers) at
    /// [`Store::container_mount_path`]; a mounted container's path is
    /// returned as it is.
    pub fn mount_container(&self, c: &Container) -> Result<PathBuf> {
        let target = self.container_mount_path(c);
        if storectl_overlay::mount::is_mounted(&target)? {
            return Ok(target);
        }
        let lowers: Vec<&str> = c.image_layers.iter().map(String::as_str).collect();
        self.driver.mount_read_write(&lowers, &c.layer, &target)?;
        Ok(target)
    }

    /// Unmount container `c`; false when it was not mounted.
    pub fn unmount_container(&self, c: &Container) -> Result<bool> {
        let target = self.container_mount_path(c);
        if !storectl_overlay::mount::is_mounted(&target)? {
            return Ok(false);
        }
        storectl_overlay::mount::unmount(&target)?;
        Ok(true)
    }

    /// Remove a container (id, name or prefix): its record, then its
    /// layer. A mounted one is refused unless `force`, which unmounts it.
    pub fn remove_container(&self, name: &str, force: bool) -> Result<Container> {
        let _lock = self.begin_write()?;
        let c = self.resolve_container(name)?;
        self.remove_container_locked(&c, force)?;
        Ok(c)
    }

    /// [`Store::remove_container`] with the writer lock held.
    pub(super) fn remove_container_locked(&self, c: &Container, force: bool) -> Result<()> {
        if self.container_mounted(c) {
            if !force {
                return Err(Error::ContainerMounted {
                    id: c.id.clone(),
                    path: self.container_mount_path(c),
                });
            }
            self.unmount_container(c)?;
        }
        // The record first: from here on the container is gone, and a
        // crash leaves a layer without a record (swept).
        fsutil::remove_dir_atomic(&self.container_dir(&c.id))?;
        match self.driver.remove_layer(&c.layer) {
            Ok(()) | Err(storectl_overlay::Error::LayerUnknown(_)) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!("removed container {}", c.id);
        Ok(())
    }

    /// Write an OCI runtime bundle for container `c` into `dir`:
    /// `dir/config.json` from the image config the container was made from
    /// (see [`crate::bundle`]), its root the container's mount (mounted
    /// here if it is not). `command` replaces the image's `Cmd` when not
    /// empty. Returns the path of `config.json`.
    pub fn write_bundle(&self, c: &Container, dir: &Path, command: &[String]) -> Result<PathBuf> {
        let fail = |reason: String| Error::Bundle {
            container: c.id.clone(),
            reason,
        };
        let config_path = self.container_dir(&c.id).join(CONTAINER_CONFIG);
        let config =
            fsutil::read_small_file(&config_path, fsutil::MAX_DOCUMENT).at(&config_path)?;
        let rc = bundle::parse_runtime_config(&config).map_err(fail)?;
        let args = bundle::process_args(&rc, command);
        if args.is_empty() {
            return Err(fail(
                "its image has no Entrypoint or Cmd: give the command to run".into(),
            ));
        }
        let root = self.mount_container(c)?;
        let root = std::path::absolute(&root).at(&root)?;
        let (uid, gid) = bundle::resolve_user(
            rc.user.as_deref().unwrap_or(""),
            &read_in_root(&root, "etc/passwd")?,
            &read_in_root(&root, "etc/group")?,
        )
        .map_err(fail)?;
        let spec = bundle::BundleSpec {
            root: root.display().to_string(),
            hostname: c
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| c.id[..12].to_string()),
            args,
            env: bundle::process_env(&rc),
            cwd: rc
                .working_dir
                .clone()
                .filter(|d| d.starts_with('/'))
                .unwrap_or_else(|| "/".into()),
            uid,
            gid,
            stop_signal: rc.stop_signal.clone(),
            container_id: c.id.clone(),
            image_id: c.image.clone(),
        };
        fs::create_dir_all(dir).at(dir)?;
        let json = serde_json::to_vec_pretty(&bundle::runtime_config(&spec))
            .expect("a runtime config serializes");
        write_atomic(dir, "config.json", &json)?;
        Ok(dir.join("config.json"))
    }

    /// The container's writable layer usage (its `diff/`, as `du
    /// --apparent-size` / `du --inodes`): CRI's `writable_layer`. Walks that
    /// one layer (it changes while the container runs; nothing else is
    /// walked).
    pub fn container_usage(&self, c: &Container) -> Result<Usage> {
        usage::walk(&self.layout.overlay().join(&c.layer).join("diff"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storectl_fixtures::{
        write_oci_layout, Compression, Entry, Image as FixtureImage, Layer as FixtureLayer,
    };

    fn store_with_image(tmp: &Path) -> (Store, Image) {
        let image = FixtureImage::new(vec![
            FixtureLayer::new(vec![Entry::file("a", "base\n")], Compression::Gzip),
            FixtureLayer::new(vec![Entry::file("b", "top\n")], Compression::None),
        ])
        .named("localhost/c:1");
        let oci = tmp.join("oci");
        write_oci_layout(&oci, &[image]).unwrap();
        let store = Store::open(StoreOptions::new(tmp.join("root"))).unwrap();
        let loaded = store
            .load(
                &oci.display().to_string(),
                &LoadOptions::default(),
                &crate::NoopReporter,
            )
            .unwrap();
        (store, loaded)
    }

    #[test]
    fn create_list_resolve_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, image) = store_with_image(tmp.path());
        let opts = ContainerOptions {
            name: Some("web".into()),
            ..Default::default()
        };
        let c = store.create_container("localhost/c:1", &opts).unwrap();
        assert_eq!(c.image, image.id);
        assert_eq!(c.layer, c.id);
        assert_eq!(c.image_layers.len(), 2);
        assert!(store.layout.overlay().join(&c.id).join("diff").is_dir());
        assert!(store
            .layout
            .containers()
            .join(&c.id)
            .join(CONTAINER_JSON)
            .is_file());
        assert_eq!(store.resolve_container("web").unwrap(), c);
        assert_eq!(store.resolve_container(&c.id[..8]).unwrap(), c);
        let dup = store.create_container(&image.id, &opts).unwrap_err();
        assert!(matches!(dup, Error::ContainerNameInUse { .. }), "{dup}");
        let bad = ContainerOptions {
            name: Some("no/slash".into()),
            ..Default::default()
        };
        assert!(matches!(
            store.create_container(&image.id, &bad),
            Err(Error::InvalidContainerName { .. })
        ));
        let other = store
            .create_container(&image.id, &ContainerOptions::default())
            .unwrap();
        assert_eq!(store.containers_of_image(&image.id).unwrap().len(), 2);
        assert_eq!(
            store.container_usage(&c).unwrap(),
            usage::walk(&store.layout.overlay().join(&c.id).join("diff")).unwrap()
        );
        // A crash sweep keeps container layers (they have no layer record).
        store.remove_orphans().unwrap();
        assert!(store.layout.overlay().join(&c.id).is_dir());
        store.remove_container("web", false).unwrap();
        assert!(!store.layout.overlay().join(&c.id).exists());
        assert!(!store.layout.containers().join(&c.id).exists());
        assert!(matches!(
            store.resolve_container("web"),
            Err(Error::ContainerUnknown { .. })
        ));
        assert_eq!(store.containers().unwrap(), vec![other]);
    }

    #[test]
    fn a_layer_without_its_record_is_swept_and_junk_records_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, image) = store_with_image(tmp.path());
        let c = store
            .create_container(&image.id, &ContainerOptions::default())
            .unwrap();
        // What a crash between the layer and the record leaves.
        fs::remove_dir_all(store.layout.containers().join(&c.id)).unwrap();
        let junk = store.layout.containers().join("f".repeat(64));
        fs::create_dir_all(&junk).unwrap();
        fs::write(junk.join(CONTAINER_JSON), "{").unwrap();
        assert!(store.containers().unwrap().is_empty(), "junk is skipped");
        store.remove_orphans().unwrap();
        assert!(
            !store.layout.overlay().join(&c.id).exists(),
            "the orphan layer went"
        );
        assert!(junk.exists(), "a record storectl cannot read is left alone");
    }
}
