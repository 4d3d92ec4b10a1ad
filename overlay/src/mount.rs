//! Mounting layer chains with the kernel's overlayfs.
//!
//! Chains are mounted with the kernel's new mount API: `fsopen("overlay")`,
//! one `fsconfig(FSCONFIG_SET_STRING, "lowerdir+", path)` per layer (top
//! first; Linux 6.8+), `fsmount` and `move_mount`. Each layer is its own
//! parameter, so there is no length limit: a chain may be as deep as
//! overlayfs stacks, [`MAX_LOWERS`] (500) directories.
//!
//! On a kernel without `lowerdir+` (`fsconfig` says `EINVAL`; before 6.5,
//! whose overlayfs takes no parameter one by one, it is not tried), or when
//! [`MountApi::Legacy`] is asked for, the chain goes into one classic
//! `lowerdir=` option string of at most a page, with short names relative to
//! the driver directory (`l/<short>`, or `RO/<id>/diff` for a reader's
//! shared layer, which has no local short name), mounted by `mount(2)` from
//! a thread that has its own working directory (`unshare(CLONE_FS)` +
//! `fchdir`), so the process's is never changed. That fits about 140 layers
//! with short names (about 55 on a reader); a longer chain is a clear error.
//!
//! Every mount is read-only, `nodev` and `nosuid`.

use std::ffi::{CString, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

use crate::{Driver, Error, Result, XattrMode};

/// Name of the empty directory used as a second lower layer for one-layer chains.
const EMPTY_DIR: &str = "empty";

/// The most lower directories overlayfs stacks in one mount (the kernel's
/// `OVL_MAX_STACK`).
pub const MAX_LOWERS: usize = 500;

/// `fsconfig` copies a string value of at most this many bytes (with its
/// NUL); a longer lower path goes through its `/proc/self/fd/N` name.
const FSCONFIG_STRING_MAX: usize = 256;

/// How [`Driver::mount_read_only`] talks to the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MountApi {
    /// The new mount API with `lowerdir+` (no length limit), falling back
    /// to [`MountApi::Legacy`] on a kernel without it.
    #[default]
    Auto,
    /// One `lowerdir=` option string of at most a page, with short names
    /// relative to the driver directory (what kernels before 6.8 take).
    Legacy,
}

/// One lower directory of a chain: its absolute path (for `lowerdir+`) and
/// its short name relative to the driver directory (for the legacy string).
#[derive(Debug, Clone)]
struct Lower {
    abs: PathBuf,
    short: PathBuf,
}

/// Why the new mount API did not mount.
enum NewApiError {
    /// The kernel has no `fsopen` or no `lowerdir+`: use the legacy way.
    Unsupported(String),
    Failed(String),
}

/// The writable part of a read-write mount: a layer's `diff/` (overlayfs'
/// upper directory) and `work/`.
#[derive(Debug, Clone)]
struct Upper {
    diff: Lower,
    work: Lower,
}

impl Driver {
    /// Mount the chain `layers` (top first) read-only, `nodev`, `nosuid` at
    /// `target` (created if missing). A one-layer chain gets an extra empty
    /// lower (overlayfs needs two without an upper). At most [`MAX_LOWERS`]
    /// layers; see the module documentation for how, and for the legacy
    /// way's page limit.
    pub fn mount_read_only(&self, layers: &[&str], target: &Path) -> Result<()> {
        self.mount_chain(layers, None, target)
    }

    /// Mount the chain `layers` (top first; read-only lowers) under the
    /// writable layer `upper` (a local layer of this driver made with
    /// `read_only = false`: its `diff/` is overlayfs' upper directory, its
    /// `work/` the work directory) read-write and `nodev` at `target` — a
    /// container's root. Writes land in `upper`'s `diff/`; the lowers are
    /// never written. At most [`MAX_LOWERS`]` - 1` lowers.
    pub fn mount_read_write(&self, layers: &[&str], upper: &str, target: &Path) -> Result<()> {
        crate::driver::check_layer_id(upper)?;
        let dir = self.dir().join(upper);
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Err(Error::LayerUnknown(upper.to_owned()));
        }
        self.mount_chain(layers, Some(upper), target)
    }

    fn mount_chain(&self, layers: &[&str], upper: Option<&str>, target: &Path) -> Result<()> {
        let mount_err = |reason: String| Error::Mount {
            target: target.to_path_buf(),
            reason,
        };
        if layers.is_empty() {
            return Err(mount_err("no layers to mount".into()));
        }
        let max = MAX_LOWERS - usize::from(upper.is_some());
        if layers.len() > max {
            return Err(mount_err(format!(
                "{} layers; overlayfs stacks at most {max}",
                layers.len()
            )));
        }
        let root = std::path::absolute(self.dir()).map_err(|e| Error::io(self.dir(), e))?;
        let mut lowers: Vec<Lower> = Vec::with_capacity(layers.len() + 1);
        for id in layers {
            if !self.exists(id) {
                return Err(Error::LayerUnknown((*id).to_owned()));
            }
            let diff = self.diff_path(id);
            let rel_diff = diff.strip_prefix(self.dir()).unwrap_or(&diff).to_path_buf();
            // A reader's shared layer may have no local `l/` name: RO/<id>/diff.
            let short = self
                .own_short_link(id)
                .and_then(|p| p.strip_prefix(self.dir()).ok().map(Path::to_path_buf))
                .unwrap_or_else(|| rel_diff.clone());
            lowers.push(Lower {
                abs: root.join(&rel_diff),
                short,
            });
        }
        if lowers.len() == 1 && upper.is_none() {
            let empty = root.join(EMPTY_DIR);
            match fs::create_dir(&empty) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(&empty, e)),
            }
            lowers.push(Lower {
                abs: empty,
                short: PathBuf::from(EMPTY_DIR),
            });
        }
        let upper = upper.map(|id| {
            let part = |name: &str| Lower {
                abs: root.join(id).join(name),
                short: Path::new(id).join(name),
            };
            Upper {
                diff: part("diff"),
                work: part("work"),
            }
        });
        // Check the legacy string before anything is created.
        let legacy = if self.mount_api() == MountApi::Legacy || !overlay_takes_fsconfig() {
            Some(legacy_options(&lowers, upper.as_ref(), self.xattr_mode()).map_err(mount_err)?)
        } else {
            None
        };
        fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
        let data = match legacy {
            Some(data) => data,
            None => match mount_new_api(&lowers, upper.as_ref(), self.xattr_mode(), target) {
                Ok(()) => return Ok(()),
                Err(NewApiError::Failed(why)) => return Err(mount_err(why)),
                Err(NewApiError::Unsupported(why)) => {
                    legacy_options(&lowers, upper.as_ref(), self.xattr_mode())
                        .map_err(|e| mount_err(format!("{why}; {e}")))?
                }
            },
        };
        mount_legacy(&root, &data, upper.is_some(), target).map_err(mount_err)
    }
}

/// Can overlayfs take its parameters one by one through `fsconfig`? Only
/// since Linux 6.5: before, `fsconfig` strings are joined into one legacy
/// option page, so `lowerdir+` would fail only at `FSCONFIG_CMD_CREATE`,
/// and unclearly. 6.5 to 6.7 refuse `lowerdir+` itself (`EINVAL`), which
/// [`mount_new_api`] takes as the sign to fall back.
fn overlay_takes_fsconfig() -> bool {
    let uname = rustix::system::uname();
    kernel_version(&uname.release().to_string_lossy()).is_none_or(|v| v >= (6, 5))
}

/// `(major, minor)` of a kernel release like `6.18.0-1-amd64` (pure).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The messages the kernel logged for the filesystem context `fs` (what
/// `read` on an `fsopen` fd returns), for error messages.
fn fs_log(fs: &OwnedFd) -> String {
    let mut msgs = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..16 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => {
                msgs.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
            }
            _ => break,
        }
    }
    msgs.join("; ")
}

/// `what failed: errno (kernel log)`.
fn describe(what: &str, e: rustix::io::Errno, fs: Option<&OwnedFd>) -> String {
    let log = fs.map(fs_log).unwrap_or_default();
    if log.is_empty() {
        format!("{what}: {}", io::Error::from(e))
    } else {
        format!("{what}: {} ({log})", io::Error::from(e))
    }
}

/// Mount `lowers` at `target` with `fsopen`/`fsconfig("lowerdir+")`/
/// `fsmount`/`move_mount`.
fn mount_new_api(
    lowers: &[Lower],
    upper: Option<&Upper>,
    mode: XattrMode,
    target: &Path,
) -> Result<(), NewApiError> {
    use rustix::io::Errno;
    let fs = match rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fs) => fs,
        Err(Errno::NOSYS) => {
            return Err(NewApiError::Unsupported(describe(
                "fsopen",
                Errno::NOSYS,
                None,
            )))
        }
        Err(e) => return Err(NewApiError::Failed(describe("fsopen overlay", e, None))),
    };
    // The source mount(2) would show ("overlay", not "none").
    rustix::mount::fsconfig_set_string(&fs, "source", "overlay")
        .map_err(|e| NewApiError::Failed(describe("fsconfig source", e, Some(&fs))))?;
    if mode == XattrMode::User {
        rustix::mount::fsconfig_set_flag(&fs, "userxattr")
            .map_err(|e| NewApiError::Failed(describe("fsconfig userxattr", e, Some(&fs))))?;
    }
    // Kept open until the superblock is made, for `/proc/self/fd/N` names.
    let mut held: Vec<OwnedFd> = Vec::new();
    for (i, lower) in lowers.iter().enumerate() {
        let bytes = lower.abs.as_os_str().as_bytes();
        let name = if bytes.len() < FSCONFIG_STRING_MAX {
            lower.abs.as_os_str().to_owned()
        } else {
            let fd = rustix::fs::open(
                &lower.abs,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| {
                NewApiError::Failed(describe(&lower.abs.display().to_string(), e, None))
            })?;
            let name = OsString::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ));
            held.push(fd);
            name
        };
        match rustix::mount::fsconfig_set_string(&fs, "lowerdir+", name.as_os_str()) {
            Ok(()) => {}
            // An overlayfs without `lowerdir+` (before Linux 6.8) says
            // "Unknown parameter".
            Err(Errno::INVAL) if i == 0 => {
                return Err(NewApiError::Unsupported(describe(
                    "fsconfig lowerdir+",
                    Errno::INVAL,
                    Some(&fs),
                )))
            }
            Err(e) => {
                return Err(NewApiError::Failed(describe(
                    &format!("fsconfig lowerdir+={}", lower.abs.display()),
                    e,
                    Some(&fs),
                )))
            }
        }
    }
    if let Some(upper) = upper {
        for (key, dir) in [("upperdir", &upper.diff), ("workdir", &upper.work)] {
            rustix::mount::fsconfig_set_string(&fs, key, dir.abs.as_os_str()).map_err(|e| {
                NewApiError::Failed(describe(
                    &format!("fsconfig {key}={}", dir.abs.display()),
                    e,
                    Some(&fs),
                ))
            })?;
        }
    }
    rustix::mount::fsconfig_create(&fs)
        .map_err(|e| NewApiError::Failed(describe("overlay mount failed", e, Some(&fs))))?;
    drop(held);
    let attrs = match upper {
        None => {
            MountAttrFlags::MOUNT_ATTR_RDONLY
                | MountAttrFlags::MOUNT_ATTR_NODEV
                | MountAttrFlags::MOUNT_ATTR_NOSUID
        }
        // A container's root: setuid programs in it work (as podman's).
        Some(_) => MountAttrFlags::MOUNT_ATTR_NODEV,
    };
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| NewApiError::Failed(describe("fsmount", e, Some(&fs))))?;
    rustix::mount::move_mount(
        mnt.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| NewApiError::Failed(describe("move_mount", e, None)))
}

/// The legacy option string for `lowers`, with their short names relative
/// to the driver directory, if it fits in a page (pure but for the page
/// size).
fn legacy_options(
    lowers: &[Lower],
    upper: Option<&Upper>,
    mode: XattrMode,
) -> Result<CString, String> {
    let shorts: Vec<PathBuf> = lowers.iter().map(|l| l.short.clone()).collect();
    let mut data = overlay_options(&shorts, mode);
    if let Some(upper) = upper {
        for (key, dir) in [("upperdir", &upper.diff), ("workdir", &upper.work)] {
            data.push(b',');
            data.extend_from_slice(key.as_bytes());
            data.push(b'=');
            data.extend(escape_option(dir.short.as_os_str().as_bytes()));
        }
    }
    let page = rustix::param::page_size();
    if data.len() >= page {
        return Err(format!(
            "{} lower directories need {} bytes of mount options, more than a page ({page}); \
             this kernel has no overlayfs `lowerdir+` (Linux 6.8+) for longer chains",
            lowers.len(),
            data.len()
        ));
    }
    CString::new(data).map_err(|_| "NUL byte in a layer path".to_owned())
}

/// `mount(2)` the legacy option string `data` (paths relative to `root`) at
/// `target`, from a thread whose working directory is `root`.
fn mount_legacy(root: &Path, data: &CString, writable: bool, target: &Path) -> Result<(), String> {
    let flags = if writable {
        MountFlags::NODEV
    } else {
        MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID
    };
    let target = std::path::absolute(target).map_err(|e| format!("{}: {e}", target.display()))?;
    let dir = rustix::fs::open(
        root,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("{}: {}", root.display(), io::Error::from(e)))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<(), String> {
                // SAFETY: CLONE_FS gives this thread its own working
                // directory, root and umask; no file descriptor table is
                // unshared, so no fd of another thread becomes invalid here.
                unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
                    .map_err(|e| format!("unshare(CLONE_FS): {}", io::Error::from(e)))?;
                rustix::process::fchdir(&dir)
                    .map_err(|e| format!("chdir {}: {}", root.display(), io::Error::from(e)))?;
                rustix::mount::mount("overlay", &target, "overlay", flags, Some(data.as_c_str()))
                    .map_err(|e| format!("overlay mount failed: {}", io::Error::from(e)))
            })
            .join()
            .unwrap_or_else(|_| Err("the mount thread panicked".to_owned()))
    })
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
        out.extend(escape_option(dir.as_os_str().as_bytes()));
    }
    out
}

/// `bytes` with the characters overlayfs' option parser treats specially
/// (`:` `,` `\\`) escaped by a backslash (pure).
fn escape_option(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if matches!(b, b':' | b',' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
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
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(
            kernel_version("5.15.167.4-microsoft-standard-WSL2"),
            Some((5, 15))
        );
        assert_eq!(kernel_version("6.8"), Some((6, 8)));
        assert_eq!(kernel_version("6"), None);
        assert_eq!(kernel_version("x"), None);
        assert!(overlay_takes_fsconfig(), "this kernel is 6.5 or newer");
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
    fn bad_chains_are_refused_before_mounting() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Driver::open(&tmp.path().join("overlay"), true)
            .unwrap()
            .with_mount_api(MountApi::Legacy);
        // 60 shared layers with no local short name (as on a reader):
        // `RO/<id>/diff` each, more than a page for the legacy string.
        let ids: Vec<String> = (0..60).map(id).collect();
        for i in &ids {
            fs::create_dir_all(d.dir().join("RO").join(i).join("diff")).unwrap();
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let target = tmp.path().join("mnt");
        let err = d.mount_read_only(&refs, &target).unwrap_err();
        assert!(
            matches!(&err, Error::Mount { reason, .. } if reason.contains("page") && reason.contains("lowerdir+")),
            "{err}"
        );
        assert!(!target.exists(), "refused before anything is made");
        let d = Driver::open(d.dir(), false).unwrap();
        assert_eq!(d.mount_api(), MountApi::Auto);
        let many: Vec<String> = (0..=MAX_LOWERS as u32).map(id).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = d.mount_read_only(&many, &target).unwrap_err();
        assert!(
            matches!(&err, Error::Mount { reason, .. } if reason.contains("at most 500")),
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
        assert!(!target.exists());
    }

    /// A chain of `n` layers (ids 1..=n, top first in the result): layer
    /// `i` adds `f<i>` and rewrites `top`; every third one is a shared
    /// (`RO/`) layer; with `reader_like`, every seventh has no `l/` short
    /// name (as a reader's shared layers).
    fn deep_chain(d: &Driver, n: u32, reader_like: bool) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for i in 1..=n {
            let mut t = RawTar::new();
            t.file(&format!("f{i}"), i.to_string().as_bytes());
            t.file("top", i.to_string().as_bytes());
            if i == n {
                t.file(".wh.f1", b"");
            }
            let s = d.stage_layer(i % 3 == 0).unwrap();
            crate::apply_tar(
                &s.diff_path(),
                &mut Cursor::new(t.finish()),
                None,
                &crate::ApplyOptions {
                    xattrs: d.xattr_mode(),
                    ..Default::default()
                },
            )
            .unwrap();
            let parent: Vec<&str> = ids.last().map(String::as_str).into_iter().collect();
            s.commit(&id(i), &parent).unwrap();
            if reader_like && i % 7 == 0 {
                fs::remove_file(d.short_link_path(&id(i)).unwrap()).unwrap();
            }
            ids.push(id(i));
        }
        ids.reverse();
        ids
    }

    /// The per-mount options of `target`'s line in /proc/self/mountinfo,
    /// and its source and superblock options.
    pub(crate) fn mount_options(target: &Path) -> (String, String) {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let target = fs::canonicalize(target).unwrap();
        let line = text
            .lines()
            .find(|l| {
                l.split(' ').nth(4).map(|p| unescape_octal(p.as_bytes()))
                    == Some(target.as_os_str().as_bytes().to_vec())
            })
            .unwrap_or_else(|| panic!("{} is not in mountinfo", target.display()));
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-").unwrap();
        // After "-": fstype, source, superblock options.
        (fields[5].to_owned(), fields[sep + 2..].join(" "))
    }

    /// What a mount of [`deep_chain`] shows: files, `top`, flags.
    fn deep_view(target: &Path, n: u32) -> (usize, Vec<u8>, bool, String, String) {
        let (opts, sb) = mount_options(target);
        let files = (1..=n)
            .filter(|i| target.join(format!("f{i}")).exists())
            .count();
        let top = fs::read(target.join("top")).unwrap_or_default();
        let f1 = target.join("f1").exists();
        unmount(target).unwrap();
        (files, top, f1, opts, sb)
    }

    /// A read-write mount over a chain (new API and legacy): writes and
    /// deletions land in the upper layer's `diff/` (a deletion as a
    /// whiteout), the lowers are untouched, the mount is `rw`, `nodev`, not
    /// `nosuid`; a missing upper is `LayerUnknown`.
    #[test]
    #[ignore = "needs root"]
    fn read_write_mounts_write_only_the_upper() {
        require_root("overlay mounts");
        for api in [MountApi::Auto, MountApi::Legacy] {
            let tmp = tempfile::tempdir().unwrap();
            let d = Driver::open(&tmp.path().join("overlay"), true)
                .unwrap()
                .with_mount_api(api);
            let ids = deep_chain(&d, 3, false);
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let before = crate::testutil::tree(d.dir());
            let upper = d.stage_layer(false).unwrap();
            upper.commit(&id(100), &refs).unwrap();
            let target = tmp.path().join("rw");
            assert!(matches!(
                d.mount_read_write(&refs, &id(101), &target),
                Err(Error::LayerUnknown(_))
            ));
            d.mount_read_write(&refs, &id(100), &target).unwrap();
            let (opts, sb) = mount_options(&target);
            assert!(sb.contains("upperdir="), "{api:?}: {sb}");
            for flag in ["rw", "nodev"] {
                assert!(opts.split(',').any(|o| o == flag), "{flag} in {opts}");
            }
            assert!(!opts.split(',').any(|o| o == "nosuid"), "{opts}");
            assert_eq!(fs::read(target.join("top")).unwrap(), b"3");
            fs::write(target.join("top"), "written").unwrap();
            fs::write(target.join("new"), "new").unwrap();
            fs::remove_file(target.join("f2")).unwrap();
            unmount(&target).unwrap();
            let diff = d.dir().join(id(100)).join("diff");
            assert_eq!(fs::read(diff.join("top")).unwrap(), b"written");
            assert_eq!(fs::read(diff.join("new")).unwrap(), b"new");
            let wh = fs::symlink_metadata(diff.join("f2")).unwrap();
            assert!(std::os::unix::fs::FileTypeExt::is_char_device(
                &wh.file_type()
            ));
            let after: Vec<String> = crate::testutil::tree(d.dir())
                .into_iter()
                .filter(|l| !l.contains(&id(100)) && !l.starts_with("l/"))
                .collect();
            let before: Vec<String> = before
                .into_iter()
                .filter(|l| !l.starts_with("l/"))
                .collect();
            assert_eq!(after, before, "{api:?}: the lower layers are untouched");
            assert_eq!(fs::read(d.diff_path(&ids[0]).join("top")).unwrap(), b"3");
            assert!(d.diff_path(&ids[1]).join("f2").is_file());
            // Mounted again, the writes are there.
            d.mount_read_write(&refs, &id(100), &target).unwrap();
            assert_eq!(fs::read(target.join("top")).unwrap(), b"written");
            assert!(!target.join("f2").exists());
            unmount(&target).unwrap();
        }
    }

    /// overlayfs' own maximum, 500 layers (a few shared, a few without a
    /// short name), through `lowerdir+`; mounted read-only, nodev, nosuid.
    #[test]
    #[ignore = "needs root"]
    fn five_hundred_layers_mount_with_lowerdir_plus() {
        require_root("overlay mounts");
        let tmp = tempfile::tempdir().unwrap();
        let d = Driver::open(&tmp.path().join("overlay"), true).unwrap();
        let ids = deep_chain(&d, MAX_LOWERS as u32, true);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let target = tmp.path().join("m");
        d.mount_read_only(&refs, &target).unwrap();
        let (files, top, f1, opts, sb) = deep_view(&target, MAX_LOWERS as u32);
        assert!(
            sb.starts_with("overlay ") && sb.contains(",lowerdir+="),
            "{sb:.200}"
        );
        assert_eq!(
            files,
            MAX_LOWERS - 1,
            "every layer's file but the whited-out f1"
        );
        assert_eq!(top, b"500", "the top layer wins");
        assert!(!f1);
        for flag in ["ro", "nodev", "nosuid"] {
            assert!(opts.split(',').any(|o| o == flag), "{flag} in {opts}");
        }
        // A store root whose lower paths pass fsconfig's 256-byte string
        // limit: they go by /proc/self/fd names.
        let long = tmp.path().join("x".repeat(200));
        fs::create_dir(&long).unwrap();
        fs::rename(d.dir(), long.join("overlay")).unwrap();
        let d = Driver::open(&long.join("overlay"), false).unwrap();
        assert!(d.diff_path(&ids[0]).as_os_str().len() > 256);
        d.mount_read_only(&refs[..3], &target).unwrap();
        let (files, top, _, _, _) = deep_view(&target, MAX_LOWERS as u32);
        assert_eq!((files, top), (3, b"500".to_vec()));
    }

    /// The legacy way (kernels before 6.8), forced: one page of short
    /// relative names holds docker's 128 layers; a chain that does not fit
    /// is a clear error before anything is mounted.
    #[test]
    #[ignore = "needs root"]
    fn legacy_mount_fits_a_page_and_refuses_beyond() {
        require_root("overlay mounts");
        let tmp = tempfile::tempdir().unwrap();
        let d = Driver::open(&tmp.path().join("overlay"), true)
            .unwrap()
            .with_mount_api(MountApi::Legacy);
        let ids = deep_chain(&d, 160, false);
        // How many of the top layers fit: every layer's short name is
        // `l/<26>` or `RO/<64>/diff`.
        let fits = (1..=ids.len())
            .take_while(|&k| {
                let lowers: Vec<PathBuf> = ids[ids.len() - k..]
                    .iter()
                    .map(|i| {
                        d.own_short_link(i)
                            .map(|p| p.strip_prefix(d.dir()).unwrap().to_path_buf())
                            .unwrap_or_else(|| Path::new("RO").join(i).join("diff"))
                    })
                    .collect();
                overlay_options(&lowers, d.xattr_mode()).len() < rustix::param::page_size()
            })
            .count();
        assert!((128..160).contains(&fits), "{fits} layers fit a page");
        let base: Vec<&str> = ids[ids.len() - fits..].iter().map(String::as_str).collect();
        let target = tmp.path().join("m");
        let cwd = std::env::current_dir().unwrap();
        d.mount_read_only(&base, &target).unwrap();
        let (files, top, _, opts, sb) = deep_view(&target, 160);
        assert!(sb.contains(",lowerdir=l/"), "{sb:.200}");
        assert_eq!(files, fits, "f1 is hidden only by layer 160");
        assert_eq!(top, fits.to_string().as_bytes());
        for flag in ["ro", "nodev", "nosuid"] {
            assert!(opts.split(',').any(|o| o == flag), "{flag} in {opts}");
        }
        // The process's working directory is never changed.
        assert_eq!(std::env::current_dir().unwrap(), cwd);
        let one_more: Vec<&str> = ids[ids.len() - fits - 1..]
            .iter()
            .map(String::as_str)
            .collect();
        let err = d.mount_read_only(&one_more, &target).unwrap_err();
        assert!(
            matches!(&err, Error::Mount { reason, .. } if reason.contains("more than a page")),
            "{err}"
        );
        assert!(!is_mounted(&target).unwrap());
        // The same chain mounts the new way.
        let d = Driver::open(d.dir(), false).unwrap();
        d.mount_read_only(&one_more, &target).unwrap();
        let (files, _, _, _, _) = deep_view(&target, 160);
        assert_eq!(files, fits + 1);
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
            // The marker is written in the store's namespace; a user-mode
            // layer also carries the trusted one where the filesystem takes
            // it (here, as root), for containers/storage's mounts.
            let mut want = vec![mode.opaque_xattr().to_string()];
            if mode == XattrMode::User {
                want.insert(0, XattrMode::Trusted.opaque_xattr().to_string());
            }
            let mut have = xattr_names(&d.diff_path(&top).join("var/old"));
            have.sort();
            assert_eq!(have, want, "{mode}");

            let v = view(&d, &[&top, &base], &tmp.path().join("m2"));
            assert_eq!(v.keep, b"top", "{mode}");
            assert!(!v.gone, "{mode}: whiteout hides the lower file");
            assert!(!v.hidden, "{mode}: opaque dir hides lower contents");
            assert_eq!(v.b, b"new", "{mode}");
            assert!(!v.writable, "{mode}: read-only");
            // overlayfs hides its own namespace's marker from the merged view.
            assert!(
                !v.opaque_xattrs.contains(&mode.opaque_xattr().to_string()),
                "{mode}: {:?}",
                v.opaque_xattrs
            );

            // Mounted in the other mode: trusted-mode layers' opaque dirs are
            // not honoured by a `userxattr` mount (the mode is the store's),
            // while user-mode layers also carry the trusted marker, so a
            // plain mount (containers/storage's, podman's) honours them.
            let other = match mode {
                XattrMode::Trusted => XattrMode::User,
                XattrMode::User => XattrMode::Trusted,
            };
            let d_other = Driver::open(d.dir(), false).unwrap().with_xattr_mode(other);
            let v = view(&d_other, &[&top, &base], &tmp.path().join("m3"));
            assert_eq!(
                v.hidden,
                mode == XattrMode::Trusted,
                "{mode} layers in a {other} mount: {v:?}"
            );
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
            t.file("d2f2/old", b"old");
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
                fs::read(m.join("d2f2")).unwrap_or_default(),
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
                ["after", "afterf", "d2d", "d2f", "d2f2", "d2s", "f2d", "hl", "imp", "s2d"],
                "{mode}"
            );
            assert_eq!(
                seen.12, b"file",
                "{mode}: dir -> file, markers beneath ignored"
            );
        }
    }
}
