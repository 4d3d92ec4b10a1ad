//! Mounting layer chains with the kernel's overlayfs.

use std::ffi::{CString, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::{Driver, Error, Result};

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
            if self.exists(id) {
                let short = self.short_link_path(id)?;
                lowers.push(root.join(short.strip_prefix(self.dir()).unwrap_or(&short)));
            } else {
                // A reader's shared layer has no local name: use RO/<id>/diff.
                let shared = root.join("RO").join(id).join("diff");
                if !crate::is_layer_id(id) || !shared.is_dir() {
                    return Err(Error::LayerUnknown((*id).to_owned()));
                }
                lowers.push(shared);
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
        let data = overlay_options(&lowers);
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
/// characters overlayfs and the option parser treat specially (pure).
pub(crate) fn overlay_options(lowers: &[PathBuf]) -> Vec<u8> {
    let mut out = b"lowerdir=".to_vec();
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
