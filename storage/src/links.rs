//! The legacy names of shared entries in a root: `overlay/<id> -> RO/<id>`,
//! `overlay-layers/<id> -> RO/<id>`, `overlay-images/<id> -> RO/<id>` and
//! `overlay/l/<short> -> ../<id>/diff`, so that a program reading the
//! containers/storage layout (`<root>/overlay/<id>/diff`) finds shared layers.
//!
//! The writer makes them as it publishes (the share's writer in
//! storectl-remote repairs them after a crash); a reader's refresher keeps
//! them in its own root in step with the share ([`crate::Store::apply_shared`],
//! [`crate::Store::repair_shared_links`]). On a reader, everything here
//! writes only under the root's own directories, never under `RO/` (the
//! share), and never follows a symlink found on the share: a layer's `link`
//! file is read beneath its directory with `O_NOFOLLOW`.
//!
//! A name held by anything but one of these symlinks (a local layer's or
//! image's directory, a local layer's short name) is never touched: local
//! entries win.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// The directory that holds the shared entries, as a link target: `RO/<id>`.
pub fn id_target(id: &str) -> PathBuf {
    Path::new("RO").join(id)
}

/// The target of a layer's short name: `../<id>/diff`.
pub fn short_target(id: &str) -> PathBuf {
    Path::new("..").join(id).join("diff")
}

/// The layer id a short-name link points at (`../<id>/diff`), if it has that form.
pub(crate) fn id_of_short_target(target: &Path) -> Option<String> {
    let s = target.to_str()?;
    let id = s.strip_prefix("../")?.strip_suffix("/diff")?;
    crate::digest::is_hex64(id).then(|| id.to_string())
}

/// Is `s` a short name as the layer driver makes them (`[A-Z2-7]`, ≤ 64)? Pure.
pub(crate) fn is_short_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// What a link operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Made (or, for a removal, removed).
    Done,
    /// Already as wanted.
    Unchanged,
    /// The name is held by something else (a local entry): left alone.
    Occupied,
}

/// The target of the symlink at `path`, `None` if it is not a symlink (or absent).
fn link_target(path: &Path) -> Option<PathBuf> {
    let md = std::fs::symlink_metadata(path).ok()?;
    if !md.file_type().is_symlink() {
        return None;
    }
    std::fs::read_link(path).ok()
}

/// Make `path` a symlink to `target`. A symlink with another target is
/// replaced (atomically) only when `replace` is set; anything else there is
/// left alone.
pub fn add_link(path: &Path, target: &Path, replace: bool) -> io::Result<Outcome> {
    match std::os::unix::fs::symlink(target, path) {
        Ok(()) => return Ok(Outcome::Done),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    match link_target(path) {
        Some(t) if t == target => Ok(Outcome::Unchanged),
        Some(_) if replace => {
            let dir = path.parent().unwrap_or(Path::new("."));
            let tmp = dir.join(format!(".tmp-link-{}", crate::fsutil::unique_suffix()));
            std::os::unix::fs::symlink(target, &tmp)?;
            std::fs::rename(&tmp, path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            Ok(Outcome::Done)
        }
        _ => Ok(Outcome::Occupied),
    }
}

/// Remove `path` if it is a symlink to `target` (else leave it).
pub fn remove_link(path: &Path, target: &Path) -> io::Result<Outcome> {
    match link_target(path) {
        Some(t) if t == target => match std::fs::remove_file(path) {
            Ok(()) => Ok(Outcome::Done),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Outcome::Unchanged),
            Err(e) => Err(e),
        },
        Some(_) => Ok(Outcome::Occupied),
        None if std::fs::symlink_metadata(path).is_ok() => Ok(Outcome::Occupied),
        None => Ok(Outcome::Unchanged),
    }
}

/// The short name in `<overlay_ro>/<id>/link`, read without following a
/// symlink on the share (the entry and the file are opened `O_NOFOLLOW`; the
/// file must be a regular file, at most 64 bytes are read), validated.
pub fn read_short_name(overlay_ro: &Path, id: &str) -> Option<String> {
    read_short_name_at(&open_overlay_ro(overlay_ro)?, id)
}

/// The symlinks in `l_dir`: (short name, the layer id its target names, if it
/// has the `../<id>/diff` form). A missing `l_dir` has none.
pub fn short_links(l_dir: &Path) -> io::Result<Vec<(String, Option<String>)>> {
    match LinkDir::open(l_dir) {
        Ok(l) => l.short_links(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// One of the root's own directories, opened once, where many links are made
/// relative to its fd (`symlinkat`, `readlinkat`): no path walk per link.
pub(crate) struct LinkDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl LinkDir {
    /// Open `path` (a directory of the root; created by the store).
    pub(crate) fn open(path: &Path) -> io::Result<LinkDir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(LinkDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The target of the symlink `name` (one `readlinkat`), `None` if it is
    /// not a symlink (or absent).
    pub(crate) fn target(&self, name: &str) -> Option<PathBuf> {
        rustix::fs::readlinkat(&self.fd, name, Vec::new())
            .ok()
            .map(|t| PathBuf::from(OsString::from_vec(t.into_bytes())))
    }

    /// [`add_link`] for `name` in this directory.
    pub(crate) fn add(&self, name: &str, target: &Path, replace: bool) -> io::Result<Outcome> {
        match rustix::fs::symlinkat(target, &self.fd, name) {
            Ok(()) => return Ok(Outcome::Done),
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        match self.target(name) {
            Some(t) if t == target => Ok(Outcome::Unchanged),
            Some(_) if replace => {
                let tmp = format!(".tmp-link-{}", crate::fsutil::unique_suffix());
                rustix::fs::symlinkat(target, &self.fd, tmp.as_str())?;
                rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name).inspect_err(|_| {
                    let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
                })?;
                Ok(Outcome::Done)
            }
            _ => Ok(Outcome::Occupied),
        }
    }

    /// [`short_links`] of this directory (an `overlay/l`).
    pub(crate) fn short_links(&self) -> io::Result<Vec<(String, Option<String>)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            if !entry.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let target = self.target(&name);
            out.push((name, target.as_deref().and_then(id_of_short_target)));
        }
        Ok(out)
    }

    /// Remove the entry `name` (a link found stale). Gone already is fine.
    pub(crate) fn remove(&self, name: &str) -> io::Result<bool> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// [`read_short_name`] with the share's `overlay` dir already open (`ro`).
pub(crate) fn read_short_name_at(ro: &OwnedFd, id: &str) -> Option<String> {
    let dir = rustix::fs::openat(
        ro,
        id,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let fd = rustix::fs::openat(
        &dir,
        "link",
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    drop(dir);
    let st = rustix::fs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return None;
    }
    let mut bytes = Vec::with_capacity(64);
    std::fs::File::from(fd)
        .take(65)
        .read_to_end(&mut bytes)
        .ok()?;
    let short = std::str::from_utf8(&bytes).ok()?.trim();
    is_short_name(short).then(|| short.to_string())
}

/// The share's `overlay` dir (`overlay_ro`, a symlink in the root), opened
/// for [`read_short_name_at`].
pub(crate) fn open_overlay_ro(overlay_ro: &Path) -> Option<OwnedFd> {
    rustix::fs::open(
        overlay_ro,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// Is `path` a real directory (not a symlink)?
pub fn is_real_dir(path: &Path) -> bool {
    rustix::fs::statat(rustix::fs::CWD, path, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn short_targets_and_names() {
        assert_eq!(id_of_short_target(&short_target(A)), Some(A.to_string()));
        assert_eq!(id_of_short_target(Path::new("../x/diff")), None);
        assert_eq!(id_of_short_target(&id_target(A)), None);
        assert!(is_short_name("ABCDEFGHIJKLMNOPQRSTUVWXYZ"));
        assert!(is_short_name("A234567"));
        assert!(!is_short_name("abc"));
        assert!(!is_short_name("A/B"));
        assert!(!is_short_name(""));
        assert!(!is_short_name(&"A".repeat(65)));
    }

    #[test]
    fn links_are_added_removed_and_never_replace_local_entries() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join(A);
        let target = id_target(A);
        assert_eq!(add_link(&link, &target, true).unwrap(), Outcome::Done);
        assert_eq!(add_link(&link, &target, true).unwrap(), Outcome::Unchanged);
        assert_eq!(std::fs::read_link(&link).unwrap(), target);
        // A wrong target is replaced only when asked.
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("elsewhere", &link).unwrap();
        assert_eq!(add_link(&link, &target, false).unwrap(), Outcome::Occupied);
        assert_eq!(remove_link(&link, &target).unwrap(), Outcome::Occupied);
        assert_eq!(add_link(&link, &target, true).unwrap(), Outcome::Done);
        assert_eq!(std::fs::read_link(&link).unwrap(), target);
        assert_eq!(remove_link(&link, &target).unwrap(), Outcome::Done);
        assert_eq!(remove_link(&link, &target).unwrap(), Outcome::Unchanged);
        // A local directory keeps its name.
        std::fs::create_dir(&link).unwrap();
        assert_eq!(add_link(&link, &target, true).unwrap(), Outcome::Occupied);
        assert_eq!(remove_link(&link, &target).unwrap(), Outcome::Occupied);
        assert!(is_real_dir(&link));
    }

    #[test]
    fn link_dirs_add_replace_and_leave_local_entries() {
        let dir = tempfile::tempdir().unwrap();
        let d = LinkDir::open(dir.path()).unwrap();
        let target = id_target(A);
        assert_eq!(d.add(A, &target, true).unwrap(), Outcome::Done);
        assert_eq!(d.add(A, &target, true).unwrap(), Outcome::Unchanged);
        assert_eq!(d.target(A), Some(target.clone()));
        // A link elsewhere is replaced only when asked, atomically (no temp left).
        std::fs::remove_file(dir.path().join(A)).unwrap();
        std::os::unix::fs::symlink("elsewhere", dir.path().join(A)).unwrap();
        assert_eq!(d.add(A, &target, false).unwrap(), Outcome::Occupied);
        assert_eq!(d.add(A, &target, true).unwrap(), Outcome::Done);
        assert_eq!(std::fs::read_link(dir.path().join(A)).unwrap(), target);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(d.remove(A).unwrap());
        assert!(!d.remove(A).unwrap(), "gone already");
        // A local directory keeps its name; it is not a link.
        std::fs::create_dir(dir.path().join(A)).unwrap();
        assert_eq!(d.add(A, &target, true).unwrap(), Outcome::Occupied);
        assert_eq!(d.target(A), None);
        assert!(is_real_dir(&dir.path().join(A)));
        // Short links list with the layer their target names.
        let l = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(short_target(A), l.path().join("SHORT")).unwrap();
        std::os::unix::fs::symlink("junk", l.path().join("JUNK")).unwrap();
        std::fs::write(l.path().join("FILE"), "").unwrap();
        let mut links = short_links(l.path()).unwrap();
        links.sort();
        assert_eq!(
            links,
            vec![("JUNK".into(), None), ("SHORT".into(), Some(A.to_string()))]
        );
        assert!(short_links(&l.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn short_names_are_read_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path();
        std::fs::create_dir(ro.join(A)).unwrap();
        assert_eq!(read_short_name(ro, A), None);
        std::fs::write(ro.join(A).join("link"), "ABCDEF\n").unwrap();
        assert_eq!(read_short_name(ro, A).as_deref(), Some("ABCDEF"));
        std::fs::write(ro.join(A).join("link"), "../../etc").unwrap();
        assert_eq!(read_short_name(ro, A), None);
        std::fs::remove_file(ro.join(A).join("link")).unwrap();
        std::fs::write(ro.join("outside"), "SECRET").unwrap();
        std::os::unix::fs::symlink(ro.join("outside"), ro.join(A).join("link")).unwrap();
        assert_eq!(read_short_name(ro, A), None, "a symlinked link file");
        let b = "b".repeat(64);
        std::os::unix::fs::symlink(ro.join(A), ro.join(&b)).unwrap();
        assert_eq!(read_short_name(ro, &b), None, "a symlinked layer dir");
    }
}
