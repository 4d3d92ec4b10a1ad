//! Layer directories under `overlay/`.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::fsutil;
use crate::mount::MountApi;
use crate::{Error, Result};

/// True for a valid layer id: exactly 64 lowercase hex characters (so `RO`,
/// `l`, dot names and junk never are).
pub fn is_layer_id(s: &str) -> bool {
    // Every byte checked without stopping early: branch-free, so the
    // compiler checks them many at a time (a store opened from the index
    // checks 40,000 ids).
    s.len() == 64
        && s.bytes().fold(true, |ok, b| {
            ok & ((b.wrapping_sub(b'0') < 10) | (b.wrapping_sub(b'a') < 6))
        })
}

/// Where a store keeps overlayfs' own metadata (the opaque-directory marker),
/// and so how its chains are mounted.
///
/// * `Trusted` (the default): `trusted.overlay.opaque`, plain mounts. Root
///   only, and NFS does not carry `trusted.*` xattrs.
/// * `User`: `user.overlay.opaque`, mounted with overlayfs' `userxattr`
///   option (Linux 5.11+). NFS 4.2 carries `user.*` xattrs, so a share
///   written this way mounts correctly on readers across NFS.
///
/// A layer written in one mode shows its opaque directories only in a mount
/// of the same mode: a store (and a share) keeps one mode for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XattrMode {
    #[default]
    Trusted,
    User,
}

impl XattrMode {
    /// The xattr that makes a directory opaque in this mode.
    pub fn opaque_xattr(self) -> &'static str {
        match self {
            XattrMode::Trusted => "trusted.overlay.opaque",
            XattrMode::User => "user.overlay.opaque",
        }
    }

    /// Is `name` overlayfs metadata in either mode (never taken from a layer tar)?
    pub fn is_overlay_xattr(name: &str) -> bool {
        name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.")
    }
}

impl std::fmt::Display for XattrMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XattrMode::Trusted => "trusted",
            XattrMode::User => "user",
        })
    }
}

/// The layer driver for one store root's `overlay/` directory.
#[derive(Debug)]
pub struct Driver {
    root: PathBuf,
    xattrs: XattrMode,
    mount_api: MountApi,
}

/// A layer being built in a `.staging-*` directory. Dropping it without
/// [`StagedLayer::commit`] removes the staging directory.
#[derive(Debug)]
pub struct StagedLayer {
    path: PathBuf,
    committed: bool,
    /// The driver directory (`<root>/overlay`).
    root: PathBuf,
    short: String,
    read_only: bool,
}

/// Create a directory with exactly `mode` (not subject to the umask).
fn mkdir_mode(path: &Path, mode: u32) -> Result<()> {
    fs::create_dir(path).map_err(|e| Error::io(path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))
}

/// `mkdir -p` that tolerates an existing directory.
fn ensure_dir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(path).map_err(|e| Error::io(path, e))
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Remove `path` whatever it is (a tree is removed without following symlinks).
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// Ignore `NotFound`.
fn allow_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

pub(crate) fn check_layer_id(id: &str) -> Result<()> {
    if is_layer_id(id) {
        Ok(())
    } else {
        Err(Error::InvalidLayerId(id.to_owned()))
    }
}

/// Rename `from` to `to`, refusing to replace an existing `to`. Uses
/// `RENAME_NOREPLACE` where the filesystem has it (NFS does not: there the
/// existence check and the rename are two steps, which is fine under the
/// single-writer lock).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            if fs::symlink_metadata(to).is_ok() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            fs::rename(from, to)
        }
        Err(e) => Err(e.into()),
    }
}

impl Driver {
    /// Open (creating if needed) the driver directory `overlay_dir`
    /// (`<root>/overlay`), with its `l/` subdirectory. Read-only stores may
    /// open a directory they cannot write (`create = false`; it may be missing).
    ///
    /// With `create = false` the directory must exist.
    pub fn open(overlay_dir: &Path, create: bool) -> Result<Driver> {
        if create {
            ensure_dir(overlay_dir)?;
            ensure_dir(&overlay_dir.join("l"))?;
        } else if overlay_dir.exists() && !overlay_dir.is_dir() {
            // Missing is fine for a store opened read-only: it is just empty.
            return Err(Error::io(
                overlay_dir,
                io::Error::from(io::ErrorKind::NotADirectory),
            ));
        }
        Ok(Driver {
            root: overlay_dir.to_path_buf(),
            xattrs: XattrMode::default(),
            mount_api: MountApi::default(),
        })
    }

    /// Use `mode` for this store's layers: what [`crate::ApplyOptions`]
    /// should write and how [`Driver::mount_read_only`] mounts.
    pub fn with_xattr_mode(mut self, mode: XattrMode) -> Driver {
        self.xattrs = mode;
        self
    }

    /// The store's [`XattrMode`].
    pub fn xattr_mode(&self) -> XattrMode {
        self.xattrs
    }

    /// Mount chains the way `api` says ([`MountApi::Auto`] by default;
    /// [`MountApi::Legacy`] forces the one-page option string that kernels
    /// before 6.8 need).
    pub fn with_mount_api(mut self, api: MountApi) -> Driver {
        self.mount_api = api;
        self
    }

    /// How this driver mounts chains.
    pub fn mount_api(&self) -> MountApi {
        self.mount_api
    }

    /// `<root>/overlay`.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Start building a layer. `read_only` layers go under `RO/` (shared
    /// placement) and get no `work/`; others get `diff/ work/ merged/`. Writes
    /// `link` (a fresh short name) into the staging dir. Parents are named only
    /// at [`StagedLayer::commit`], so the layers of one chain can be staged and
    /// extracted in parallel before any of them is committed.
    pub fn stage_layer(&self, read_only: bool) -> Result<StagedLayer> {
        let base = if read_only {
            let ro = self.root.join("RO");
            ensure_dir(&ro)?;
            ro
        } else {
            self.root.clone()
        };
        let suffix = fsutil::random_suffix().map_err(|e| Error::io(&base, e))?;
        let path = base.join(format!(".staging-{suffix}"));
        let short = fsutil::new_short_name().map_err(|e| Error::io(&base, e))?;
        mkdir_mode(&path, 0o700)?;
        // From here on, dropping `staged` cleans up.
        let staged = StagedLayer {
            path,
            committed: false,
            root: self.root.clone(),
            short,
            read_only,
        };
        mkdir_mode(&staged.path.join("diff"), 0o755)?;
        if !read_only {
            mkdir_mode(&staged.path.join("work"), 0o700)?;
            mkdir_mode(&staged.path.join("merged"), 0o700)?;
        }
        let link = staged.path.join("link");
        fs::write(&link, &staged.short).map_err(|e| Error::io(&link, e))?;
        Ok(staged)
    }

    /// Layer `id`'s directory: `<id>` (a dir, or the writer's `RO` symlink),
    /// else `RO/<id>` (a shared layer on a reader, which has no local name).
    pub fn layer_dir(&self, id: &str) -> PathBuf {
        let top = self.root.join(id);
        if top.is_dir() {
            top
        } else {
            self.root.join("RO").join(id)
        }
    }

    /// Does layer `id` exist (as a directory, an `RO/` symlink, or — on a
    /// reader — only under `RO/`)?
    ///
    /// A dangling `RO` symlink and an invalid id are "no".
    pub fn exists(&self, id: &str) -> bool {
        is_layer_id(id) && self.layer_dir(id).is_dir()
    }

    /// Path of layer `id`'s `diff/` (through `RO` when shared).
    pub fn diff_path(&self, id: &str) -> PathBuf {
        self.layer_dir(id).join("diff")
    }

    /// The short name in layer `id`'s `link` file, validated.
    fn read_link(&self, id: &str) -> Result<String> {
        let path = self.layer_dir(id).join("link");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.exists(id) => {
                return Err(Error::LayerUnknown(id.to_owned()))
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let short = text.trim();
        if fsutil::is_short_name(short) {
            Ok(short.to_owned())
        } else {
            Err(Error::io(
                &path,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad short name {short:?}"),
                ),
            ))
        }
    }

    /// `<root>/overlay/l/<short>` for layer `id` (reads its `link` file).
    pub fn short_link_path(&self, id: &str) -> Result<PathBuf> {
        check_layer_id(id)?;
        Ok(self.root.join("l").join(self.read_link(id)?))
    }

    /// `<root>/overlay/l/<short>` for layer `id` when that link is the layer's
    /// own (a symlink to `../<id>/diff`): the short name in a shared layer's
    /// `link` file may be another layer's, by accident or on purpose.
    pub fn own_short_link(&self, id: &str) -> Option<PathBuf> {
        let short = self.short_link_path(id).ok()?;
        let target = fs::read_link(&short).ok()?;
        (target == Path::new("..").join(id).join("diff")).then_some(short)
    }

    /// Remove layer `id`: rename it to `.trash-*`, remove its `l/` link and
    /// `RO` symlink, then delete the tree. Missing layer = `LayerUnknown`.
    ///
    /// Also cleans up half-published layers: an `RO/<id>` without its
    /// symlink, or a dangling `<id>` symlink.
    pub fn remove_layer(&self, id: &str) -> Result<()> {
        check_layer_id(id)?;
        let top = self.root.join(id);
        let ro = self.root.join("RO").join(id);
        let top_meta = fs::symlink_metadata(&top).ok();
        let ro_exists = fs::symlink_metadata(&ro).is_ok();
        let (dir, parent) = match &top_meta {
            Some(m) if m.is_dir() => (top.clone(), self.root.clone()),
            _ if ro_exists => (ro.clone(), self.root.join("RO")),
            Some(_) => {
                // A dangling symlink: nothing to delete but the link.
                fs::remove_file(&top).map_err(|e| Error::io(&top, e))?;
                return Err(Error::LayerUnknown(id.to_owned()));
            }
            None => return Err(Error::LayerUnknown(id.to_owned())),
        };
        let short = self.read_link(id).ok();
        let suffix = fsutil::random_suffix().map_err(|e| Error::io(&parent, e))?;
        let trash = parent.join(format!(".trash-{suffix}"));
        fs::rename(&dir, &trash).map_err(|e| Error::io(&dir, e))?;
        if top_meta
            .as_ref()
            .is_some_and(|m| m.file_type().is_symlink())
        {
            allow_missing(fs::remove_file(&top)).map_err(|e| Error::io(&top, e))?;
        }
        if let Some(short) = short {
            let link = self.root.join("l").join(short);
            allow_missing(fs::remove_file(&link)).map_err(|e| Error::io(&link, e))?;
        }
        fs::remove_dir_all(&trash).map_err(|e| Error::io(&trash, e))
    }

    /// Remove `.staging-*` / `.trash-*` debris under `overlay/` and `overlay/RO/`,
    /// and dangling `l/` links. Only call while holding the store's writer lock.
    /// Returns the number of entries removed.
    pub fn remove_debris(&self) -> Result<usize> {
        let mut removed = 0;
        for dir in [self.root.clone(), self.root.join("RO")] {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&dir, e)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| Error::io(&dir, e))?;
                let name = ent.file_name();
                let name = name.as_bytes();
                if name.starts_with(b".staging-") || name.starts_with(b".trash-") {
                    let path = ent.path();
                    allow_missing(remove_any(&path)).map_err(|e| Error::io(&path, e))?;
                    removed += 1;
                }
            }
        }
        let l = self.root.join("l");
        match fs::read_dir(&l) {
            Ok(rd) => {
                for ent in rd {
                    let ent = ent.map_err(|e| Error::io(&l, e))?;
                    let path = ent.path();
                    let is_link = ent
                        .file_type()
                        .map_err(|e| Error::io(&path, e))?
                        .is_symlink();
                    // metadata() follows the link: NotFound = dangling.
                    if is_link && fs::metadata(&path).is_err() {
                        allow_missing(fs::remove_file(&path)).map_err(|e| Error::io(&path, e))?;
                        removed += 1;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&l, e)),
        }
        Ok(removed)
    }

    /// Bytes used by the files in layer `id`'s diff (apparent sizes, hardlinks once).
    ///
    /// Symlinks are not followed; only regular files count.
    pub fn diff_usage(&self, id: &str) -> Result<u64> {
        check_layer_id(id)?;
        if !self.exists(id) {
            return Err(Error::LayerUnknown(id.to_owned()));
        }
        dir_usage(&self.diff_path(id))
    }
}

/// Apparent size of the regular files under `dir`, hardlinks counted once.
fn dir_usage(dir: &Path) -> Result<u64> {
    let mut total = 0u64;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = fs::read_dir(&d).map_err(|e| Error::io(&d, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(&d, e))?;
            let path = ent.path();
            let ft = ent.file_type().map_err(|e| Error::io(&path, e))?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let m = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
                if m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
                    continue;
                }
                total += m.len();
            }
        }
    }
    Ok(total)
}

impl StagedLayer {
    /// The staging directory's `diff/`, to apply a tar into.
    pub fn diff_path(&self) -> PathBuf {
        self.path.join("diff")
    }

    /// The staging directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The layer's fresh short name (contents of `link`).
    pub fn short_name(&self) -> &str {
        &self.short
    }

    /// Write `lower` (the short names of `parents`, nearest parent first, as
    /// `l/<short>:l/<short>…`; parents must be committed already; none = no
    /// `lower` file, as in containers/storage), sync the staged tree (syncfs of
    /// its filesystem), rename it to its final name `id` (`RO/<id>` plus the
    /// `<id> -> RO/<id>` symlink when read-only), and create `l/<short>`.
    /// Fails if `id` already exists; a parent that does not exist is `LayerUnknown`.
    ///
    /// On failure the staging directory is removed (the value is consumed).
    pub fn commit(mut self, id: &str, parents: &[&str]) -> Result<()> {
        check_layer_id(id)?;
        let driver = Driver {
            root: self.root.clone(),
            xattrs: XattrMode::default(),
            mount_api: MountApi::default(),
        };
        let mut lower = Vec::with_capacity(parents.len());
        for parent in parents {
            check_layer_id(parent)?;
            if !driver.exists(parent) {
                return Err(Error::LayerUnknown((*parent).to_owned()));
            }
            lower.push(format!("l/{}", driver.read_link(parent)?));
        }
        if !lower.is_empty() {
            let lower_path = self.path.join("lower");
            fs::write(&lower_path, lower.join(":")).map_err(|e| Error::io(&lower_path, e))?;
        }
        let top = self.root.join(id);
        if fs::symlink_metadata(&top).is_ok() {
            return Err(Error::io(&top, io::ErrorKind::AlreadyExists.into()));
        }
        let dir = fs::File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        rustix::fs::syncfs(&dir).map_err(|e| Error::io(&self.path, e.into()))?;
        drop(dir);
        let final_dir = if self.read_only {
            self.root.join("RO").join(id)
        } else {
            top.clone()
        };
        rename_noreplace(&self.path, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        self.committed = true;
        if self.read_only {
            let target = Path::new("RO").join(id);
            symlink(&target, &top).map_err(|e| Error::io(&top, e))?;
        }
        let link = self.root.join("l").join(&self.short);
        let target = Path::new("..").join(id).join("diff");
        ensure_dir(&self.root.join("l"))?;
        symlink(&target, &link).map_err(|e| Error::io(&link, e))?;
        Ok(())
    }
}

impl Drop for StagedLayer {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: leftovers are debris that remove_debris deletes.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn driver() -> (tempfile::TempDir, Driver) {
        let tmp = tempfile::tempdir().unwrap();
        let d = Driver::open(&tmp.path().join("overlay"), true).unwrap();
        (tmp, d)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn layer_ids() {
        assert!(is_layer_id(A));
        assert!(!is_layer_id(&A[1..]));
        assert!(!is_layer_id(&A.to_uppercase()));
        assert!(!is_layer_id("RO"));
        assert!(!is_layer_id(&format!(".{}", &A[1..])));
    }

    #[test]
    fn open_creates_or_requires() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("root/overlay");
        // Not creating: a missing dir is an empty driver; a file is an error.
        let empty = Driver::open(&dir, false).unwrap();
        assert!(!empty.exists(A) && !dir.exists());
        fs::create_dir_all(tmp.path().join("root")).unwrap();
        fs::write(&dir, b"").unwrap();
        assert!(matches!(Driver::open(&dir, false), Err(Error::Io { .. })));
        fs::remove_file(&dir).unwrap();
        let d = Driver::open(&dir, true).unwrap();
        assert!(dir.join("l").is_dir());
        assert_eq!(d.dir(), dir);
        Driver::open(&dir, true).unwrap();
        Driver::open(&dir, false).unwrap();
    }

    #[test]
    fn local_layer_lifecycle() {
        let (_tmp, d) = driver();
        let staged = d.stage_layer(false).unwrap();
        let staging = staged.path().to_path_buf();
        assert!(staging
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(".staging-"));
        assert_eq!(staging.parent().unwrap(), d.dir());
        assert_eq!(names(&staging), ["diff", "link", "merged", "work"]);
        let short = staged.short_name().to_owned();
        assert_eq!(short.len(), 26);
        assert_eq!(fs::read_to_string(staging.join("link")).unwrap(), short);
        fs::write(staged.diff_path().join("f"), b"12345").unwrap();
        assert!(!d.exists(A));
        staged.commit(A, &[]).unwrap();
        assert!(!staging.exists());
        assert!(d.exists(A));
        assert!(fs::symlink_metadata(d.dir().join(A)).unwrap().is_dir());
        assert!(!d.dir().join(A).join("lower").exists());
        assert_eq!(fs::read(d.diff_path(A).join("f")).unwrap(), b"12345");
        let link = d.short_link_path(A).unwrap();
        assert_eq!(link, d.dir().join("l").join(&short));
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("..").join(A).join("diff")
        );
        assert_eq!(fs::read(link.join("f")).unwrap(), b"12345");
        assert_eq!(d.diff_usage(A).unwrap(), 5);

        d.remove_layer(A).unwrap();
        assert!(!d.exists(A));
        assert!(fs::symlink_metadata(&link).is_err(), "l/ link removed");
        assert_eq!(names(d.dir()), ["l"]);
        assert!(matches!(d.remove_layer(A), Err(Error::LayerUnknown(id)) if id == A));
        assert!(matches!(d.diff_usage(A), Err(Error::LayerUnknown(_))));
        assert!(matches!(d.short_link_path(A), Err(Error::LayerUnknown(_))));
    }

    #[test]
    fn read_only_layer_lifecycle_with_parent() {
        let (_tmp, d) = driver();
        let base = d.stage_layer(true).unwrap();
        let base_short = base.short_name().to_owned();
        assert_eq!(base.path().parent().unwrap(), d.dir().join("RO"));
        assert_eq!(names(base.path()), ["diff", "link"]);
        // Two layers of one chain staged at once; parents named at commit.
        let top = d.stage_layer(true).unwrap();
        assert!(matches!(
            d.stage_layer(true).unwrap().commit(B, &[A]),
            Err(Error::LayerUnknown(p)) if p == A
        ));
        base.commit(A, &[]).unwrap();
        top.commit(B, &[A]).unwrap();
        for id in [A, B] {
            assert!(d.exists(id));
            assert!(d.dir().join("RO").join(id).join("diff").is_dir());
            assert_eq!(
                fs::read_link(d.dir().join(id)).unwrap(),
                Path::new("RO").join(id)
            );
            assert!(
                d.short_link_path(id).unwrap().join(".").is_dir(),
                "l/ link resolves"
            );
        }
        assert_eq!(
            fs::read_to_string(d.dir().join(B).join("lower")).unwrap(),
            format!("l/{base_short}")
        );
        // Staging dirs are gone (the failed commit's too).
        assert_eq!(names(&d.dir().join("RO")), [A, B]);

        d.remove_layer(B).unwrap();
        assert!(
            fs::symlink_metadata(d.dir().join(B)).is_err(),
            "RO symlink removed"
        );
        assert_eq!(names(&d.dir().join("RO")), [A]);
        assert_eq!(names(&d.dir().join("l")), [base_short]);
    }

    #[test]
    fn commit_refuses_existing_and_bad_ids() {
        let (_tmp, d) = driver();
        d.stage_layer(false).unwrap().commit(A, &[]).unwrap();
        let s = d.stage_layer(false).unwrap();
        let staging = s.path().to_path_buf();
        assert!(s.commit(A, &[]).is_err());
        assert!(!staging.exists(), "failed commit cleans up");
        assert!(matches!(
            d.stage_layer(false).unwrap().commit("../x", &[]),
            Err(Error::InvalidLayerId(_))
        ));
        assert!(matches!(
            d.remove_layer("RO"),
            Err(Error::InvalidLayerId(_))
        ));
        // An RO layer may not take the name of a local one either.
        assert!(d.stage_layer(true).unwrap().commit(A, &[]).is_err());
        assert_eq!(names(d.dir()), vec!["RO".to_owned(), A.into(), "l".into()]);
        assert!(names(&d.dir().join("RO")).is_empty());
    }

    #[test]
    fn dropped_staging_is_removed() {
        let (_tmp, d) = driver();
        let s = d.stage_layer(true).unwrap();
        let p = s.path().to_path_buf();
        assert!(p.is_dir());
        drop(s);
        assert!(!p.exists());
    }

    #[test]
    fn remove_debris_cleans_dot_dirs_and_dangling_links() {
        let (_tmp, d) = driver();
        d.stage_layer(false).unwrap().commit(A, &[]).unwrap();
        let keep = d.short_link_path(A).unwrap();
        fs::create_dir_all(d.dir().join(".staging-1/diff/x")).unwrap();
        fs::create_dir(d.dir().join(".trash-2")).unwrap();
        fs::create_dir_all(d.dir().join("RO/.staging-3/diff")).unwrap();
        fs::write(d.dir().join("RO/.trash-4"), b"").unwrap();
        symlink("../nope/diff", d.dir().join("l/DANGLING")).unwrap();
        fs::create_dir(d.dir().join("RO").join(B)).unwrap(); // not debris
        fs::create_dir(d.dir().join("junk")).unwrap(); // not ours to judge
        assert_eq!(d.remove_debris().unwrap(), 5);
        assert_eq!(
            names(d.dir()),
            vec!["RO".to_owned(), A.into(), "junk".into(), "l".into()]
        );
        assert_eq!(names(&d.dir().join("RO")), [B]);
        assert!(fs::symlink_metadata(&keep).is_ok());
        assert_eq!(d.remove_debris().unwrap(), 0);
    }

    #[test]
    fn remove_half_published_layer() {
        let (_tmp, d) = driver();
        // RO/<id> without its symlink (a crash between rename and symlink).
        fs::create_dir_all(d.dir().join("RO").join(A).join("diff")).unwrap();
        d.remove_layer(A).unwrap();
        assert!(!d.dir().join("RO").join(A).exists());
        // A dangling symlink only.
        symlink(Path::new("RO").join(B), d.dir().join(B)).unwrap();
        assert!(!d.exists(B));
        assert!(matches!(d.remove_layer(B), Err(Error::LayerUnknown(_))));
        assert!(fs::symlink_metadata(d.dir().join(B)).is_err());
    }

    #[test]
    #[ignore = "needs root"]
    fn diff_usage_counts_hardlinks_once_and_skips_symlinks() {
        crate::testutil::require_root("layer entries owned by root");
        let (_tmp, d) = driver();
        let s = d.stage_layer(false).unwrap();
        let diff = s.diff_path();
        let mut t = crate::testutil::RawTar::new();
        t.file("a", &[1u8; 1000]);
        t.hardlink("a2", "a");
        t.file("sub/b", &[2u8; 24]);
        t.symlink("big", "/usr/lib/huge");
        t.dir("empty");
        let stats = crate::apply_tar(
            &diff,
            &mut Cursor::new(t.finish()),
            None,
            &Default::default(),
        )
        .unwrap();
        s.commit(A, &[]).unwrap();
        assert_eq!(d.diff_usage(A).unwrap(), 1024);
        // What apply counted while writing agrees with the walk.
        assert_eq!(stats.file_bytes, 1024);
    }
}
