//! A root's role in read-only sharing, kept in `<root>/storectl.json`.
//!
//! ```text
//! local   no share (the default when the file is absent)
//! writer  image layers and images are published under the RO/ dirs, which
//!         point into the share; `generation` and `writer.lock` live on the share
//! reader  the RO/ dirs point into the share, which is never written; images
//!         appear and vanish through the refresher; local loads stay local
//! ```
//!
//! The share holds `overlay/`, `overlay-layers/`, `overlay-images/` (each is the
//! `RO` subdirectory of the local dir of the same name), `generation`,
//! `writer.lock` and `storectl-share.json` (the share's [`XattrMode`], which
//! every root wired to it copies into its own config).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storectl_overlay::XattrMode;

use crate::error::{Error, IoContext, Result};

/// The file in a store root that holds its [`RootConfig`].
pub const CONFIG_FILE: &str = "storectl.json";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Local,
    Writer,
    Reader,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Local => "local",
            Role::Writer => "writer",
            Role::Reader => "reader",
        })
    }
}

fn default_interval_ms() -> u64 {
    1000
}

fn default_rescan_secs() -> u64 {
    60
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootConfig {
    #[serde(default)]
    pub role: Role,
    /// The share's directory (writer and reader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<PathBuf>,
    /// How often the refresher reads `generation`.
    #[serde(default = "default_interval_ms")]
    pub refresh_interval_ms: u64,
    /// How often the refresher rescans even when `generation` is unchanged.
    #[serde(default = "default_rescan_secs")]
    pub full_rescan_secs: u64,
    /// Where the opaque-directory marker lives and how chains are mounted:
    /// `trusted` (absent = this) or `user` (`userxattr` mounts; a share's
    /// mode, so that it works over NFS). See [`XattrMode`].
    #[serde(default)]
    pub overlay_xattrs: XattrMode,
}

impl Default for RootConfig {
    fn default() -> Self {
        RootConfig {
            role: Role::Local,
            shared: None,
            refresh_interval_ms: default_interval_ms(),
            full_rescan_secs: default_rescan_secs(),
            overlay_xattrs: XattrMode::default(),
        }
    }
}

impl RootConfig {
    /// Read `<root>/storectl.json`; absent = a local store.
    pub fn load(root: &Path) -> Result<RootConfig> {
        let path = root.join(CONFIG_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let cfg: RootConfig =
                    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                        path: path.clone(),
                        source,
                    })?;
                if cfg.role != Role::Local && cfg.shared.is_none() {
                    return Err(Error::InvalidArchive {
                        path,
                        reason: format!("role {} needs a \"shared\" directory", cfg.role),
                    });
                }
                Ok(cfg)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RootConfig::default()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Write `<root>/storectl.json` atomically.
    pub fn save(&self, root: &Path) -> Result<()> {
        std::fs::create_dir_all(root).at(root)?;
        let json = serde_json::to_vec_pretty(self).expect("a config serializes");
        crate::fsutil::write_atomic(root, CONFIG_FILE, &json)
    }
}

/// Where things are in a root (and its share).
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub config: RootConfig,
}

impl Layout {
    pub fn overlay(&self) -> PathBuf {
        self.root.join("overlay")
    }
    pub fn layers(&self) -> PathBuf {
        self.root.join("overlay-layers")
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("overlay-images")
    }
    /// `overlay/RO`: shared layer dirs.
    pub fn overlay_ro(&self) -> PathBuf {
        self.overlay().join("RO")
    }
    /// `overlay-containers`: container records (always local).
    pub fn containers(&self) -> PathBuf {
        self.root.join("overlay-containers")
    }
    /// `overlay-layers/RO`: shared layer records.
    pub fn layers_ro(&self) -> PathBuf {
        self.layers().join("RO")
    }
    /// `overlay-images/RO`: shared images.
    pub fn images_ro(&self) -> PathBuf {
        self.images().join("RO")
    }
    /// The `generation` file readers poll: on the share when there is one.
    pub fn generation(&self) -> PathBuf {
        match &self.config.shared {
            Some(share) => share.join("generation"),
            None => self.root.join("generation"),
        }
    }
    /// The writer lock: on the share for a writer, else in the root.
    pub fn writer_lock(&self) -> PathBuf {
        match (&self.config.role, &self.config.shared) {
            (Role::Writer, Some(share)) => share.join("writer.lock"),
            _ => self.root.join("storage.lock"),
        }
    }
    pub fn role(&self) -> Role {
        self.config.role
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RootConfig::load(dir.path()).unwrap(), RootConfig::default());
        let cfg = RootConfig {
            role: Role::Reader,
            shared: Some("/mnt/share".into()),
            refresh_interval_ms: 250,
            full_rescan_secs: 30,
            overlay_xattrs: XattrMode::User,
        };
        cfg.save(dir.path()).unwrap();
        assert_eq!(RootConfig::load(dir.path()).unwrap(), cfg);
        std::fs::write(dir.path().join(CONFIG_FILE), br#"{"role":"writer"}"#).unwrap();
        assert!(RootConfig::load(dir.path()).is_err());
    }
}
