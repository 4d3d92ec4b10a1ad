//! Small helpers shared by the modules: path normalization (pure), opening
//! directories beneath a root fd without following symlinks, random names.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// How every path taken from a layer (or from tar-split metadata) is resolved:
/// beneath the starting directory, never through a symlink or magic link.
pub(crate) const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Why a path from a layer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    Absolute,
    DotDot,
    Nul,
}

impl PathError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            PathError::Absolute => "absolute path",
            PathError::DotDot => "path contains a `..` component",
            PathError::Nul => "path contains a NUL byte",
        }
    }
}

/// Split a tar entry name into its components (pure). Leading `./`, repeated
/// slashes, `.` components and a trailing slash are dropped; an absolute
/// path, a `..` component or a NUL byte is refused. The root (`./`, `.`)
/// gives an empty list.
pub(crate) fn normalize(name: &[u8]) -> Result<Vec<&[u8]>, PathError> {
    if name.first() == Some(&b'/') {
        return Err(PathError::Absolute);
    }
    if name.contains(&0) {
        return Err(PathError::Nul);
    }
    let mut out = Vec::new();
    for comp in name.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(PathError::DotDot),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Join normalized components with `/` (pure).
pub(crate) fn join(comps: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(comps.iter().map(|c| c.len() + 1).sum());
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    out
}

/// `openat2(dir, path, flags, RESOLVE_BENEATH|NO_SYMLINKS|NO_MAGICLINKS)`,
/// retrying the rare `EAGAIN` the kernel returns when a concurrent rename
/// raced the lookup.
pub(crate) fn open_beneath<Fd: AsFd>(
    dir: Fd,
    path: &[u8],
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let path: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(path);
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir.as_fd(), path, flags | OFlags::CLOEXEC, mode, RESOLVE) {
            Err(rustix::io::Errno::AGAIN) if tries < 16 => tries += 1,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// Open the directory `path` (bytes, relative) beneath `dir` for reading.
pub(crate) fn open_dir_beneath<Fd: AsFd>(dir: Fd, path: &[u8]) -> io::Result<OwnedFd> {
    let path = if path.is_empty() { b"." as &[u8] } else { path };
    open_beneath(dir, path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
}

/// `n` bytes from the kernel's random source.
pub(crate) fn random_bytes(n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(k) => filled += k,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf)
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Encode random bytes as a short name like containers/storage's `l/` links:
/// one base32 character per byte (32 divides 256, so uniformly). Pure.
pub(crate) fn short_name_from(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| BASE32[usize::from(b & 31)] as char)
        .collect()
}

/// A fresh 26-character short name for `l/`.
pub(crate) fn new_short_name() -> io::Result<String> {
    Ok(short_name_from(&random_bytes(26)?))
}

/// A fresh random suffix for `.staging-*` / `.trash-*` names (16 hex chars).
pub(crate) fn random_suffix() -> io::Result<String> {
    Ok(random_bytes(8)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Is `s` a plausible short name (what `link` files contain)? Pure.
pub(crate) fn is_short_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| BASE32.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_dots_and_slashes() {
        assert_eq!(normalize(b"./a/b").unwrap(), vec![b"a" as &[u8], b"b"]);
        assert_eq!(normalize(b"a//./b/").unwrap(), vec![b"a" as &[u8], b"b"]);
        assert!(normalize(b"./").unwrap().is_empty());
        assert!(normalize(b".").unwrap().is_empty());
        assert!(normalize(b"").unwrap().is_empty());
        assert_eq!(normalize(b"././x").unwrap(), vec![b"x" as &[u8]]);
    }

    #[test]
    fn normalize_refuses_escapes() {
        assert_eq!(normalize(b"/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(normalize(b"../x"), Err(PathError::DotDot));
        assert_eq!(normalize(b"a/../../x"), Err(PathError::DotDot));
        assert_eq!(normalize(b"a/.."), Err(PathError::DotDot));
        assert_eq!(normalize(b"a\0b"), Err(PathError::Nul));
        // `..` only as a whole component: these are ordinary names.
        assert_eq!(
            normalize(b"a..b/..c").unwrap(),
            vec![b"a..b" as &[u8], b"..c"]
        );
    }

    #[test]
    fn join_components() {
        assert_eq!(join(&[b"a", b"b", b"c"]), b"a/b/c");
        assert_eq!(join(&[]), b"");
    }

    #[test]
    fn short_names() {
        let s = short_name_from(&[0, 1, 31, 32, 255]);
        assert_eq!(s, "AB7A7");
        let n = new_short_name().unwrap();
        assert_eq!(n.len(), 26);
        assert!(is_short_name(&n));
        assert_ne!(n, new_short_name().unwrap());
        assert!(!is_short_name("../x"));
        assert!(!is_short_name(""));
        assert!(!is_short_name("abc"));
        assert_eq!(random_suffix().unwrap().len(), 16);
    }
}
