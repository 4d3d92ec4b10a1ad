//! Wiring a local root to a share: `storectl init --shared DIR --role …`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storectl_storage::{Layout, Role, RootConfig, XattrMode};

use crate::error::{Error, IoContext, Result};

/// The share's three directories, each the `RO` of the local dir of that name.
pub const SHARE_DIRS: [&str; 3] = ["overlay", "overlay-layers", "overlay-images"];

/// The share's settings, written once by the first writer: `<share>/storectl-share.json`.
pub const SHARE_FILE: &str = "storectl-share.json";

/// What every host of a share must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareConfig {
    /// How the layers on the share mark opaque directories, and so how every
    /// host mounts them: `user` for a share made by this version (NFS
    /// carries only `user.*` xattrs), `trusted` for a share made before
    /// the file existed (absent file = `trusted`).
    #[serde(default)]
    pub overlay_xattrs: XattrMode,
    /// How long the layers of an image the writer removed stay on the
    /// share (for readers' containers and mounts on it), in seconds; absent
    /// = one hour. 0 deletes them with the image.
    #[serde(default = "default_grace")]
    pub removed_layers_grace_secs: u64,
    /// Whether a writer's load may append its records to containers/
    /// storage's index files in place (under containers/storage's `fcntl`
    /// lock) instead of replacing them by rename; absent = yes. Set it to
    /// `false` on a share mounted where `fcntl` locks do not reach other
    /// hosts (NFSv3 `nolock`): there podman could read a file being
    /// appended to.
    #[serde(default = "yes")]
    pub index_appends: bool,
}

fn default_grace() -> u64 {
    storectl_storage::grace::DEFAULT_GRACE_SECS
}

fn yes() -> bool {
    true
}

impl ShareConfig {
    /// Parse `storectl-share.json` (pure).
    pub fn parse(bytes: &[u8]) -> std::result::Result<ShareConfig, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// The bytes of `<share>/storectl-share.json`.
    fn read(share: &Path) -> std::io::Result<Vec<u8>> {
        storectl_storage::fsutil::read_small_file(&share.join(SHARE_FILE), 64 << 10)
    }

    /// Read the share's settings; an absent file is a share made before the
    /// file existed (`trusted`).
    pub fn load(share: &Path) -> Result<ShareConfig> {
        let bytes = match ShareConfig::read(share) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ShareConfig {
                    overlay_xattrs: XattrMode::Trusted,
                    removed_layers_grace_secs: default_grace(),
                    index_appends: true,
                })
            }
            Err(source) => {
                return Err(Error::Io {
                    path: share.join(SHARE_FILE),
                    source,
                })
            }
        };
        ShareConfig::parse(&bytes).map_err(|reason| Error::NotAShare {
            path: share.to_path_buf(),
            reason: format!("{SHARE_FILE}: {reason}"),
        })
    }

    /// The settings the share's file states, if it is there and parses
    /// (nothing is inferred for an absent or unreadable file).
    pub fn recorded(share: &Path) -> Option<ShareConfig> {
        ShareConfig::parse(&ShareConfig::read(share).ok()?).ok()
    }
}

/// The settings a writer gives a share that has no `storectl-share.json`:
/// `user` xattrs for a share it is creating now on a filesystem that takes
/// `user.*` xattrs, else `trusted` (a share made before the file existed,
/// whose layers and readers use `trusted`, or a filesystem without user
/// xattrs).
fn new_share_config(share: &Path, creating: bool) -> ShareConfig {
    let overlay_xattrs = if creating && takes_user_xattrs(&share.join("overlay")) {
        XattrMode::User
    } else {
        XattrMode::Trusted
    };
    ShareConfig {
        overlay_xattrs,
        removed_layers_grace_secs: default_grace(),
        index_appends: true,
    }
}

/// Does the driver dir `overlay` (absent = no) hold a layer of its own? The
/// legacy links `<id> -> RO/<id>` of shared layers are not its layers.
fn has_layers(overlay: &Path) -> Result<bool> {
    Ok(storectl_storage::list_id_entries(overlay)?
        .iter()
        .any(|(_, symlink)| !symlink))
}

/// Can `dir` carry `user.*` xattrs? (Set and removed again: probed.)
fn takes_user_xattrs(dir: &Path) -> bool {
    const PROBE: &str = "user.storectl.probe";
    let set = rustix::fs::setxattr(dir, PROBE, b"1", rustix::fs::XattrFlags::empty()).is_ok();
    if set {
        let _ = rustix::fs::removexattr(dir, PROBE);
    }
    set
}

/// Set up `root` as `role` of the share at `share`:
///
/// * a writer creates the share (directory and layout) when absent
///   (`overlay/`, `overlay-layers/`, `overlay-images/`, `generation`,
///   `storectl-share.json`);
/// * a reader requires it, and never writes to it;
/// * both get `<root>/{overlay,overlay-layers,overlay-images}/RO -> <share>/…`
///   and `<root>/storectl.json` with the role, intervals and the share's
///   [`XattrMode`] (from `storectl-share.json`, which the first writer
///   writes); a root that already holds layers of the other mode is refused.
///
/// Running it again with the same arguments changes nothing.
pub fn init(root: &Path, share: &Path, role: Role, mut config: RootConfig) -> Result<RootConfig> {
    // Compared before anything is created: canonical where the path exists.
    let resolved = |p: &Path| p.canonicalize().or_else(|_| std::path::absolute(p)).at(p);
    let (root_abs, share_abs) = (resolved(root)?, resolved(share)?);
    if share_abs.starts_with(&root_abs) || root_abs.starts_with(&share_abs) {
        return Err(Error::Incompatible {
            path: root.to_path_buf(),
            reason: format!(
                "the share {} and the store root must be separate directories, \
                 neither inside the other",
                share_abs.display()
            ),
        });
    }
    if role == Role::Writer {
        fs::create_dir_all(share).at(share)?;
    }
    let share = share.canonicalize().map_err(|e| Error::NotAShare {
        path: share.to_path_buf(),
        reason: e.to_string(),
    })?;
    match role {
        Role::Writer => {
            let creating = SHARE_DIRS.iter().all(|d| !share.join(d).exists());
            for d in SHARE_DIRS {
                let p = share.join(d);
                fs::create_dir_all(&p).at(&p)?;
            }
            let gen = share.join("generation");
            if !gen.exists() {
                storectl_storage::fsutil::write_atomic(&share, "generation", b"0 init\n")
                    .map_err(Error::from)?;
            }
            if fs::symlink_metadata(share.join(SHARE_FILE)).is_err() {
                let cfg = new_share_config(&share, creating);
                let json = serde_json::to_vec_pretty(&cfg).expect("a share config serializes");
                storectl_storage::fsutil::write_atomic(&share, SHARE_FILE, &json)
                    .map_err(Error::from)?;
            }
        }
        Role::Reader => {
            for d in SHARE_DIRS {
                if !share.join(d).is_dir() {
                    return Err(Error::NotAShare {
                        path: share.clone(),
                        reason: format!(
                            "{d}/ is missing (has a writer run `storectl init` on it?)"
                        ),
                    });
                }
            }
        }
        Role::Local => {
            return Err(Error::NotAShare {
                path: share,
                reason: "a share needs the role writer or reader".into(),
            })
        }
    }
    let share_cfg = ShareConfig::load(&share)?;
    let before = RootConfig::load(root).map_err(Error::from)?;
    if before.overlay_xattrs != share_cfg.overlay_xattrs && has_layers(&root.join("overlay"))? {
        return Err(Error::Incompatible {
            path: root.to_path_buf(),
            reason: format!(
                "its layers mark opaque directories with {} xattrs, the share's with {}; \
                 wire an empty root to this share",
                before.overlay_xattrs, share_cfg.overlay_xattrs
            ),
        });
    }
    config.role = role;
    config.shared = Some(share.clone());
    config.overlay_xattrs = share_cfg.overlay_xattrs;
    let layout = Layout {
        root: root.to_path_buf(),
        config: config.clone(),
    };
    for (local, target) in [
        (layout.overlay_ro(), share.join("overlay")),
        (layout.layers_ro(), share.join("overlay-layers")),
        (layout.images_ro(), share.join("overlay-images")),
    ] {
        link_into_share(&local, &target)?;
    }
    config.save(root).map_err(Error::from)?;
    Ok(config)
}

/// Make `local` a symlink to `target`, or accept one that already is.
fn link_into_share(local: &Path, target: &PathBuf) -> Result<()> {
    if let Some(parent) = local.parent() {
        fs::create_dir_all(parent).at(parent)?;
    }
    match fs::read_link(local) {
        Ok(existing) if &existing == target => return Ok(()),
        Ok(_) => {
            return Err(Error::Conflict {
                path: local.to_path_buf(),
                expected: target.clone(),
            })
        }
        Err(_) if fs::symlink_metadata(local).is_ok() => {
            // A real directory: fine only if empty (then replace it).
            fs::remove_dir(local).map_err(|_| Error::Conflict {
                path: local.to_path_buf(),
                expected: target.clone(),
            })?;
        }
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, local).at(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_creates_reader_requires() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        fs::create_dir(&share).unwrap();
        let reader = dir.path().join("reader");
        assert!(matches!(
            init(&reader, &share, Role::Reader, RootConfig::default()),
            Err(Error::NotAShare { .. })
        ));
        let writer = dir.path().join("writer");
        init(&writer, &share, Role::Writer, RootConfig::default()).unwrap();
        // idempotent
        init(&writer, &share, Role::Writer, RootConfig::default()).unwrap();
        let cfg = init(&reader, &share, Role::Reader, RootConfig::default()).unwrap();
        assert_eq!(cfg.role, Role::Reader);
        assert_eq!(
            fs::read_link(reader.join("overlay-images/RO")).unwrap(),
            share.canonicalize().unwrap().join("overlay-images")
        );
        assert_eq!(RootConfig::load(&reader).unwrap(), cfg);
        // The first writer fixed the share's xattr mode; every root follows it.
        let share_cfg = ShareConfig::load(&share).unwrap();
        let want = if takes_user_xattrs(&share.join("overlay")) {
            XattrMode::User
        } else {
            XattrMode::Trusted
        };
        assert_eq!(share_cfg.overlay_xattrs, want);
        assert_eq!(cfg.overlay_xattrs, want);
        assert_eq!(RootConfig::load(&writer).unwrap().overlay_xattrs, want);
        let other = dir.path().join("other");
        fs::create_dir(&other).unwrap();
        assert!(matches!(
            init(&reader, &other, Role::Writer, RootConfig::default()),
            Err(Error::Conflict { .. })
        ));
    }

    #[test]
    fn old_shares_stay_trusted_and_mixed_roots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layer = "a".repeat(64);
        let init_as = |name: &str, share: &Path, role| {
            init(&dir.path().join(name), share, role, RootConfig::default())
        };
        // A share made before storectl-share.json (its layers, if any, and
        // its readers use trusted xattrs): no file.
        let old = dir.path().join("old");
        for d in SHARE_DIRS {
            fs::create_dir_all(old.join(d)).unwrap();
        }
        let reader = init_as("r", &old, Role::Reader).unwrap();
        assert_eq!(reader.overlay_xattrs, XattrMode::Trusted);
        assert!(!old.join(SHARE_FILE).exists(), "a reader never writes");
        let writer = init_as("w", &old, Role::Writer).unwrap();
        assert_eq!(writer.overlay_xattrs, XattrMode::Trusted);
        assert_eq!(
            ShareConfig::load(&old).unwrap().overlay_xattrs,
            XattrMode::Trusted
        );

        // A local root with trusted layers cannot join a user-xattr share.
        let new = dir.path().join("new");
        for d in SHARE_DIRS {
            fs::create_dir_all(new.join(d)).unwrap();
        }
        fs::write(new.join(SHARE_FILE), br#"{"overlay_xattrs":"user"}"#).unwrap();
        let local = dir.path().join("local");
        fs::create_dir_all(local.join("overlay").join(&layer)).unwrap();
        for role in [Role::Reader, Role::Writer] {
            let r = init(&local, &new, role, RootConfig::default());
            assert!(
                matches!(r, Err(Error::Incompatible { .. })),
                "{role}: {r:?}"
            );
        }
        // Neither inside the other.
        for (r, sh) in [
            (new.clone(), new.clone()),
            (new.join("root"), new.clone()),
            (dir.path().to_path_buf(), new.clone()),
        ] {
            let res = init(&r, &sh, Role::Writer, RootConfig::default());
            assert!(
                matches!(res, Err(Error::Incompatible { .. })),
                "{r:?} {sh:?}: {res:?}"
            );
        }
        assert!(!new.join("overlay/RO").exists());
        // An empty root can.
        let fresh = init_as("fresh", &new, Role::Writer).unwrap();
        assert_eq!(fresh.overlay_xattrs, XattrMode::User);

        fs::write(new.join(SHARE_FILE), b"{not json").unwrap();
        assert!(matches!(
            init_as("bad", &new, Role::Reader),
            Err(Error::NotAShare { .. })
        ));
    }
}
