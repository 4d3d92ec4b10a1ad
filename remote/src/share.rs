//! Wiring a local root to a share: `storectl init --shared DIR --role …`.

use std::fs;
use std::path::{Path, PathBuf};

use storectl_storage::{Layout, Role, RootConfig};

use crate::error::{Error, IoContext, Result};

/// The share's three directories, each the `RO` of the local dir of that name.
pub const SHARE_DIRS: [&str; 3] = ["overlay", "overlay-layers", "overlay-images"];

/// Set up `root` as `role` of the share at `share`:
///
/// * a writer creates the share layout when absent (`overlay/`,
///   `overlay-layers/`, `overlay-images/`, `generation`);
/// * a reader requires it, and never writes to it;
/// * both get `<root>/{overlay,overlay-layers,overlay-images}/RO -> <share>/…`
///   and `<root>/storectl.json` with the role and intervals.
///
/// Running it again with the same arguments changes nothing.
pub fn init(root: &Path, share: &Path, role: Role, mut config: RootConfig) -> Result<RootConfig> {
    let share = share.canonicalize().map_err(|e| Error::NotAShare {
        path: share.to_path_buf(),
        reason: e.to_string(),
    })?;
    match role {
        Role::Writer => {
            for d in SHARE_DIRS {
                let p = share.join(d);
                fs::create_dir_all(&p).at(&p)?;
            }
            let gen = share.join("generation");
            if !gen.exists() {
                storectl_storage::fsutil::write_atomic(&share, "generation", b"0 init\n")
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
    config.role = role;
    config.shared = Some(share.clone());
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
        let other = dir.path().join("other");
        fs::create_dir(&other).unwrap();
        assert!(matches!(
            init(&reader, &other, Role::Writer, RootConfig::default()),
            Err(Error::Conflict { .. })
        ));
    }
}
