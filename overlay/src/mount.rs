//! Mounting layer chains with the kernel's overlayfs.

use std::ffi::{CString, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::{Driver, Error, Result, XattrMode};

/// Name of the empty directory used as a second lower layer for one-layer chains.
const EMPTY_DIR: &str = "empty";

impl Driver {
    /// Mount the chain `layers` (top first) read-only at `target` (created if
    /// missing). Lower dirs are given by their `l/<short>` links, or as
    /// `RO/<id>/diff` for a shared layer with no local name (on a reader); a one-layer
    /// chain gets an extra empty lower (overlayfs needs two without an upper).
    ///
    /// The option string must fit in a page (the kernel's limit for mount
    /// data); a longer chain is a `Mount` error.
    pub fn mount_read_only(&self, layers: &[&str], target: &Path) -> Result<()> {
        let mount_err = |reason: String| Error::Mount {
            target: target.to_path_buf(),
            reason,
        };
        if layers.is_empty() {
            return Err(mount_err("no layers to mount".into()));
        }
        let root = std::path::absolute(self.dir()).map_err(|e| Error::io(self.dir(), e))?;
        let mut lowers: Vec<PathBuf> = Vec::with_capacity(layers.len() + 1);
        for id in layers {
            if !self.exists(id) {
                return Err(Error::LayerUnknown((*id).to_owned()));
            }
            let short = self.own_short_link(id);
            if let Some(short) = short {
                lowers.push(root.join(short.strip_prefix(self.dir()).unwrap_or(&short)));
            } else {
                // A reader's shared layer has no local `l/` name: RO/<id>/diff.
                let diff = self.diff_path(id);
                lowers.push(root.join(diff.strip_prefix(self.dir()).unwrap_or(&diff)));
            }
        }
        if lowers.len() == 1 {
            let empty = root.join(EMPTY_DIR);
            match fs::create_dir(&empty) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(&empty, e)),
            }
            lowers.push(empty);
        }
        let data = overlay_options(&lowers, self.xattr_mode());
        let page = rustix::param::page_size();
        if data.len() >= page {
            return Err(mount_err(format!(
                "mount options are {} bytes, more than a page ({page}); chain too long",
                data.len()
            )));
        }
        let data = CString::new(data).map_err(|_| mount_err("NUL byte in a layer path".into()))?;
        match fs::create_dir_all(target) {
            Ok(()) => {}
            Err(e) => return Err(Error::io(target, e)),
        }
        rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            MountFlags::RDONLY,
            Some(data.as_c_str()),
        )
        .map_err(|e| mount_err(format!("overlay mount failed: {}", io::Error::from(e))))
    }
}

/// The overlayfs option string for `lowers` (top first), escaping the
/// characters overlayfs and the option parser treat specially, with
/// `userxattr` in [`XattrMode::User`] (pure).
pub(crate) fn overlay_options(lowers: &[PathBuf], mode: XattrMode) -> Vec<u8> {
    let mut out = match mode {
        XattrMode::Trusted => b"lowerdir=".to_vec(),
        XattrMode::User => b"userxattr,lowerdir=".to_vec(),
    };
    for (i, dir) in lowers.iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        for &b in dir.as_os_str().as_bytes() {
            if matches!(b, b':' | b',' | b'\\') {
                out.push(b'\\');
            }
            out.push(b);
        }
    }
    out
}

/// Unmount `target` (lazy detach is not used: a busy mount is an error).
pub fn unmount(target: &Path) -> Result<()> {
    rustix::mount::unmount(target, UnmountFlags::empty()).map_err(|e| Error::Mount {
        target: target.to_path_buf(),
        reason: format!("unmount failed: {}", io::Error::from(e)),
    })
}

/// Is `target` currently a mount point (per `/proc/self/mountinfo`)?
///
/// `target` is compared after resolving symlinks (when it exists).
pub fn is_mounted(target: &Path) -> Result<bool> {
    const MOUNTINFO: &str = "/proc/self/mountinfo";
    let target = fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    let text = fs::read(MOUNTINFO).map_err(|e| Error::io(MOUNTINFO, e))?;
    let found = mount_points(&text).any(|p| Path::new(&p) == target);
    Ok(found)
}

/// The mount points listed in a mountinfo text, unescaped (pure).
pub(crate) fn mount_points(mountinfo: &[u8]) -> impl Iterator<Item = OsString> + '_ {
    mountinfo.split(|&b| b == b'\n').filter_map(|line| {
        // id parent major:minor root mount-point options …
        let field = line.split(|&b| b == b' ').nth(4)?;
        Some(OsString::from_vec(unescape_octal(field)))
    })
}

/// Undo the kernel's `\ooo` escapes (space, tab, newline, backslash) (pure).
pub(crate) fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (u32::from(s[i + 1] - b'0') << 6)
                | (u32::from(s[i + 2] - b'0') << 3)
                | u32::from(s[i + 3] - b'0');
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{require_root, type_change_layer, RawTar};
    use std::io::Cursor;

    fn id(n: u32) -> String {
        format!("{n:064x}")
    }

    #[test]
    fn options_escape_special_characters() {
        let lowers = [PathBuf::from("/s/l/AB"), PathBuf::from("/we:ird,dir\\x")];
        assert_eq!(
            overlay_options(&lowers, XattrMode::Trusted),
            b"lowerdir=/s/l/AB:/we\\:ird\\,dir\\\\x".to_vec()
        );
        assert_eq!(
            overlay_options(&lowers[..1], XattrMode::User),
            b"userxattr,lowerdir=/s/l/AB".to_vec()
        );
    }

    #[test]
    fn mountinfo_parsing_unescapes_octal() {
        let text = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
            40 22 0:35 / /mnt/with\\040space rw - overlay overlay ro,lowerdir=/x\n\
            41 22 0:36 / /tab\\011and\\134back rw - tmpfs tmpfs rw\n\
            \n\
            short line\n";
        let points: Vec<OsString> = mount_points(text).collect();
        assert_eq!(
            points,
            [
                OsString::from("/"),
                OsString::from("/mnt/with space"),
                OsString::from("/tab\tand\\back"),
            ]
        );
        assert_eq!(unescape_octal(b"a\\040b"), b"a b");
        assert_eq!(
            unescape_octal(b"bad\\09x\\"),
            b"bad\\09x\\",
            "not an escape"
        );
        assert_eq!(unescape_octal(b"\\777"), b"\\777", "out of byte range");
    }

    #[test]
    fn is_mounted_on_real_mountinfo() {
        assert!(is_mounted(Path::new("/")).unwrap());
        let tmp = tempfile::tempdir().unwrap();
        assert!(!is_mounted(tmp.path()).unwrap());
    }

    #[test]
    fn too_long_chain_is_refused_before_mounting() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Driver::open(&tmp.path().join("overlay"), true).unwrap();
        let ids: Vec<String> = (0..60).map(id).collect();
        for i in &ids {
            fs::create_dir_all(d.dir().join("RO").join(i).join("diff")).unwrap();
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let target = tmp.path().join("mnt");
        let err = d.mount_read_only(&refs, &target).unwrap_err();
        assert!(
            matches!(&err, Error::Mount { reason, .. } if reason.contains("page")),
            "{err}"
        );
        assert!(matches!(
            d.mount_read_only(&[&id(999)], &target),
            Err(Error::LayerUnknown(_))
        ));
        assert!(matches!(
            d.mount_read_only(&[], &target),
            Err(Error::Mount { .. })
        ));
    }

    /// Build a committed layer from a tar, in the driver's xattr mode.
    fn layer(d: &Driver, n: u32, parents: &[&str], tar: Vec<u8>) -> String {
        let s = d.stage_layer(false).unwrap();
        crate::apply_tar(
            &s.diff_path(),
            &mut Cursor::new(tar),
            None,
            &crate::ApplyOptions {
                xattrs: d.xattr_mode(),
                ..Default::default()
            },
        )
        .unwrap();
        let i = id(n);
        s.commit(&i, parents).unwrap();
        i
    }

    /// What a two-layer chain with a whiteout and an opaque dir shows.
    #[derive(Debug)]
    struct View {
        keep: Vec<u8>,
        gone: bool,
        hidden: bool,
        b: Vec<u8>,
        writable: bool,
        opaque_xattrs: Vec<String>,
    }

    fn view(d: &Driver, layers: &[&str], target: &Path) -> View {
        d.mount_read_only(layers, target).unwrap();
        assert!(is_mounted(target).unwrap());
        // Read everything first, so a failed check never leaves a mount behind.
        let v = View {
            keep: fs::read(target.join("etc/keep")).unwrap_or_default(),
            gone: target.join("etc/gone").exists(),
            hidden: target.join("var/old/a").exists(),
            b: fs::read(target.join("var/old/b")).unwrap_or_default(),
            writable: fs::write(target.join("new"), b"x").is_ok(),
            opaque_xattrs: xattr_names(&target.join("var/old")),
        };
        unmount(target).unwrap();
        assert!(!is_mounted(target).unwrap());
        v
    }

    fn xattr_names(path: &Path) -> Vec<String> {
        let mut buf = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(path, &mut buf).unwrap_or(0);
        buf[..n]
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .filter(|n| n.contains("overlay"))
            .collect()
    }

    #[test]
    #[ignore = "needs root"]
    fn mount_chains_with_whiteouts() {
        require_root("overlay mounts");
        for mode in [XattrMode::Trusted, XattrMode::User] {
            let tmp = tempfile::tempdir().unwrap();
            let d = Driver::open(&tmp.path().join("overlay"), true)
                .unwrap()
                .with_xattr_mode(mode);
            let mut t = RawTar::new();
            t.file("etc/keep", b"base");
            t.file("etc/gone", b"deleted above");
            t.file("var/old/a", b"hidden by opaque");
            let base = layer(&d, 1, &[], t.finish());
            let mut t = RawTar::new();
            t.file("etc/.wh.gone", b"");
            t.file("var/old/.wh..wh..opq", b"");
            t.file("var/old/b", b"new");
            t.file("etc/keep", b"top");
            let top = layer(&d, 2, &[&base], t.finish());
            // The marker is written in the store's namespace only.
            assert_eq!(
                xattr_names(&d.diff_path(&top).join("var/old")),
                vec![mode.opaque_xattr().to_string()],
                "{mode}"
            );

            let v = view(&d, &[&top, &base], &tmp.path().join("m2"));
            assert_eq!(v.keep, b"top", "{mode}");
            assert!(!v.gone, "{mode}: whiteout hides the lower file");
            assert!(!v.hidden, "{mode}: opaque dir hides lower contents");
            assert_eq!(v.b, b"new", "{mode}");
            assert!(!v.writable, "{mode}: read-only");
            assert!(v.opaque_xattrs.is_empty(), "{mode}: {:?}", v.opaque_xattrs);

            // Mounted in the other mode, the marker is not honoured: the
            // mode is a property of the store, not of a mount.
            let other = match mode {
                XattrMode::Trusted => XattrMode::User,
                XattrMode::User => XattrMode::Trusted,
            };
            let d_other = Driver::open(d.dir(), false).unwrap().with_xattr_mode(other);
            let v = view(&d_other, &[&top, &base], &tmp.path().join("m3"));
            assert!(v.hidden, "{mode} layers in a {other} mount: {v:?}");
            assert!(
                !v.gone,
                "{mode} layers in a {other} mount: whiteouts still work"
            );

            // One layer: an empty second lower is added.
            let m1 = tmp.path().join("deeper/m1");
            d.mount_read_only(&[&base], &m1).unwrap();
            assert!(is_mounted(&m1).unwrap());
            let content = fs::read(m1.join("etc/gone"));
            unmount(&m1).unwrap();
            assert_eq!(content.unwrap(), b"deleted above");
            assert!(d.dir().join(EMPTY_DIR).is_dir());
            assert!(unmount(&m1).is_err(), "not mounted any more");
        }
    }

    /// `.wh.X` and `X` in one layer: the mount shows the new entry, and a
    /// directory made so hides the lower directory's contents.
    #[test]
    #[ignore = "needs root"]
    fn whiteout_and_entry_of_one_name_show_the_entry() {
        require_root("overlay mounts");
        for mode in [XattrMode::Trusted, XattrMode::User] {
            let tmp = tempfile::tempdir().unwrap();
            let d = Driver::open(&tmp.path().join("overlay"), true)
                .unwrap()
                .with_xattr_mode(mode);
            let mut t = RawTar::new();
            t.file("f2d", b"old file");
            t.file("d2f/old", b"old");
            t.symlink("s2d", "/etc");
            t.file("d2d/old", b"old");
            t.file("imp/old", b"old");
            t.file("after/old", b"old");
            t.file("afterf", b"old");
            t.file("gone/sub/y", b"y");
            t.file("twice", b"t");
            t.file("d2s/old", b"old");
            t.file("hl/old", b"old");
            let base = layer(&d, 1, &[], t.finish());
            let top = layer(&d, 2, &[&base], type_change_layer());
            let m = tmp.path().join("m");
            d.mount_read_only(&[&top, &base], &m).unwrap();
            let names = |p: &str| -> Vec<String> {
                let mut v: Vec<String> = fs::read_dir(m.join(p))
                    .map(|rd| {
                        rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                v.sort();
                v
            };
            let seen = (
                names("f2d"),
                fs::read(m.join("d2f")).unwrap_or_default(),
                names("s2d"),
                names("d2d"),
                names("imp"),
                names("after"),
                fs::read(m.join("afterf")).unwrap_or_default(),
                fs::symlink_metadata(m.join("gone")).is_ok(),
                fs::symlink_metadata(m.join("twice")).is_ok(),
                fs::read_link(m.join("d2s")).ok(),
                fs::read(m.join("hl")).unwrap_or_default(),
                names(""),
            );
            unmount(&m).unwrap();
            assert_eq!(seen.0, ["new"], "{mode}: file -> dir");
            assert_eq!(seen.1, b"now a file", "{mode}: dir -> file");
            assert_eq!(seen.2, ["x"], "{mode}: symlink -> dir");
            assert_eq!(seen.3, ["new"], "{mode}: dir -> dir, old contents hidden");
            assert_eq!(seen.4, ["x"], "{mode}: implicit dir");
            assert_eq!(seen.5, ["new"], "{mode}: whiteout after its dir");
            assert_eq!(seen.6, b"new", "{mode}: whiteout after its file");
            assert!(!seen.7 && !seen.8, "{mode}: whited out");
            assert_eq!(seen.9.as_deref(), Some(Path::new("f2d")), "{mode}");
            assert_eq!(seen.10, b"now a file", "{mode}: hardlink");
            assert_eq!(
                seen.11,
                ["after", "afterf", "d2d", "d2f", "d2s", "f2d", "hl", "imp", "s2d"],
                "{mode}"
            );
        }
    }
}
