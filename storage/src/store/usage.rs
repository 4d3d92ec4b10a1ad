//! Disk usage as a CRI image service reports it (`ImageFsInfo`:
//! `timestamp`, `fs_id.mountpoint`, `used_bytes`, `inodes_used`; per
//! container `writable_layer`), and per image shared vs unique size (as
//! `podman system df -v`).
//!
//! **Incremental.** Image layers never change once published, so each is
//! measured (walked as `du --apparent-size` / `du --inodes` count) once, the
//! first time a figure needs it, and remembered in `<root>/usage-cache.json`
//! (`{"layers": {"<id>": {"bytes": N, "inodes": M}}}`, the host's own file:
//! a reader never writes the share). A call walks only layers new since the
//! last one, drops layers that are gone, and walks each container's writable
//! layer (which changes while it runs; nothing else is walked).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;
use crate::usage::{self, Usage};

/// The cache file in the root.
const CACHE: &str = "usage-cache.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    #[serde(default)]
    layers: BTreeMap<String, Usage>,
}

/// One filesystem's figures (CRI `FilesystemUsage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsUsage {
    /// Nanoseconds since the epoch when the figures were taken.
    pub timestamp: i64,
    /// CRI `fs_id.mountpoint`: the mount point of the filesystem holding
    /// [`FsUsage::path`].
    pub mountpoint: PathBuf,
    /// The directory the figures are of.
    pub path: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
    /// `local` (this host's root) or `share` (a writer's or reader's share).
    pub source: &'static str,
}

/// One image's sizes (bytes of its layers as `du --apparent-size` counts
/// them): `shared` = of layers another image also uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageUsage {
    pub id: String,
    pub names: Vec<String>,
    pub size: u64,
    pub shared_size: u64,
    pub unique_size: u64,
    /// Containers made from it.
    pub containers: usize,
    /// On the share (`true`) or local.
    pub shared: bool,
}

/// One container's writable layer (CRI `ContainerStats.writable_layer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerUsage {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    /// Its `overlay/<id>/diff`.
    pub writable_layer: Usage,
}

/// What [`Store::disk_usage`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    /// Image layers, each counted once: the local ones (this root's
    /// `overlay/`), and — on a writer or reader — the share's separately.
    pub image_filesystems: Vec<FsUsage>,
    /// Containers' layers (`overlay/<id>/`: diff, work, merged), local.
    pub container_filesystems: Vec<FsUsage>,
    pub images: Vec<ImageUsage>,
    pub containers: Vec<ContainerUsage>,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl Store {
    /// The usage of every image layer this store knows (id → usage),
    /// measuring only the layers the cache does not have yet.
    fn layer_usages(&self) -> Result<BTreeMap<String, Usage>> {
        let path = self.root.join(CACHE);
        let mut cache: Cache = fsutil::read_small_file(&path, fsutil::MAX_DOCUMENT)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let layers = self.layers();
        let mut changed = false;
        for layer in &layers {
            if !cache.layers.contains_key(&layer.id) {
                let u = usage::walk(&self.overlay_dir(layer))?;
                cache.layers.insert(layer.id.clone(), u);
                changed = true;
            }
        }
        let known: BTreeSet<&str> = layers.iter().map(|l| l.id.as_str()).collect();
        let before = cache.layers.len();
        cache.layers.retain(|id, _| known.contains(id.as_str()));
        changed |= cache.layers.len() != before;
        if changed && self.read_only.is_none() {
            let json = serde_json::to_vec(&cache).expect("the usage cache serializes");
            // Best effort: a cache that cannot be written is measured again.
            if let Err(e) = write_atomic(&self.root, CACHE, &json) {
                tracing::debug!("usage cache not written: {e}");
            }
        }
        Ok(cache.layers)
    }

    /// Disk usage of images and containers (see the module documentation).
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let timestamp = now_ns();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mount_of = |dir: &Path| -> PathBuf {
            let canonical = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
            PathBuf::from(usage::mount_point(&mountinfo, &canonical.to_string_lossy()))
        };
        let sizes = self.layer_usages()?;
        let containers = self.containers()?;
        let (layers, images) = self.with_state(|st| {
            (
                st.layers.values().cloned().collect::<Vec<_>>(),
                st.images.values().cloned().collect::<Vec<_>>(),
            )
        });
        let mut local = Usage::default();
        let mut share = Usage::default();
        for l in &layers {
            let u = sizes.get(&l.id).copied().unwrap_or_default();
            if l.shared {
                share += u;
            } else {
                local += u;
            }
        }
        let mut image_filesystems = vec![FsUsage {
            timestamp,
            mountpoint: mount_of(&self.layout.overlay()),
            path: self.layout.overlay(),
            used_bytes: local.bytes,
            inodes_used: local.inodes,
            source: "local",
        }];
        if let Some(dir) = &self.layout.config.shared {
            image_filesystems.push(FsUsage {
                timestamp,
                mountpoint: mount_of(&dir.join("overlay")),
                path: dir.join("overlay"),
                used_bytes: share.bytes,
                inodes_used: share.inodes,
                source: "share",
            });
        }
        // Per image: a layer another image also uses is shared.
        let chains: Vec<(Image, Vec<String>)> = images
            .into_iter()
            .map(|i| {
                let chain = self
                    .image_layers(&i)
                    .map(|ls| ls.into_iter().map(|l| l.id).collect())
                    .unwrap_or_default();
                (i, chain)
            })
            .collect();
        let mut users: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, chain) in &chains {
            for id in chain {
                *users.entry(id.as_str()).or_default() += 1;
            }
        }
        let images = chains
            .iter()
            .map(|(i, chain)| {
                let size_of = |id: &String| sizes.get(id).map_or(0, |u| u.bytes);
                let size = chain.iter().map(size_of).sum();
                let shared_size = chain
                    .iter()
                    .filter(|id| users.get(id.as_str()).copied().unwrap_or(0) > 1)
                    .map(size_of)
                    .sum();
                ImageUsage {
                    id: i.id.clone(),
                    names: i.names.clone(),
                    size,
                    shared_size,
                    unique_size: size - shared_size,
                    containers: containers.iter().filter(|c| c.image == i.id).count(),
                    shared: i.shared,
                }
            })
            .collect();
        let mut total = Usage::default();
        let mut per_container = Vec::with_capacity(containers.len());
        for c in &containers {
            let dir = self.layout.overlay().join(&c.layer);
            // The layer dir's entries, its diff/ walked once.
            let diff = usage::walk(&dir.join("diff"))?;
            total += usage::walk_shallow(&dir)? + diff;
            total += usage::walk(&dir.join("work"))?;
            // merged/ itself only: when mounted, it is the container's root.
            let merged = dir.join("merged");
            if let Ok(m) = fs::symlink_metadata(&merged) {
                let mounted = self.container_mounted(c);
                total += Usage {
                    bytes: if mounted { 0 } else { m.len() },
                    inodes: 1,
                };
            }
            per_container.push(ContainerUsage {
                id: c.id.clone(),
                names: c.names.clone(),
                image: c.image.clone(),
                writable_layer: diff,
            });
        }
        Ok(DiskUsage {
            image_filesystems,
            container_filesystems: vec![FsUsage {
                timestamp,
                mountpoint: mount_of(&self.layout.overlay()),
                path: self.layout.overlay(),
                used_bytes: total.bytes,
                inodes_used: total.inodes,
                source: "local",
            }],
            images,
            containers: per_container,
        })
    }
}
