//! Applying an (uncompressed) OCI layer tar stream into a layer's `diff/`.
//!
//! All file work happens relative to directory fds opened beneath the diff
//! directory with symlink resolution refused, so a hostile archive cannot
//! reach outside it.
//!
//! How it works: the stream goes through a [`crate::tarsplit`] recorder (which
//! counts bytes, enforces the size limit and records tar-split segments) into
//! the `tar` crate's entry iterator. Each entry's parent directory is opened
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//! relative to the diff fd (the last one is cached), and the entry is created
//! in it with an `*at` call that never follows a symlink and never replaces an
//! existing name. Directory modes and times are applied at the end, after all
//! children were created.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use crate::fsutil::{self, join, normalize};
use crate::tarsplit::{RecState, Recorder};
use crate::{Error, Result, XattrMode};

/// Read and write buffer size: large, as layers are big and syscalls cost.
const BUF_SIZE: usize = 256 * 1024;

/// Options for [`apply_tar`].
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Refuse the layer once more than this many uncompressed tar bytes were
    /// read (gzip bomb guard). `None` = no limit.
    pub max_size: Option<u64>,
    /// The namespace of the opaque-directory xattr written (the store's
    /// [`XattrMode`]; the mount must use the same).
    pub xattrs: XattrMode,
}

/// What [`apply_tar`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Tar entries processed.
    pub entries: u64,
    /// Bytes of the uncompressed tar stream, including trailing padding (read to EOF).
    pub tar_size: u64,
    /// Bytes of the regular files written (a hardlink adds none): what
    /// [`crate::Driver::diff_usage`] would count, without walking the tree.
    pub file_bytes: u64,
}

/// Apply the uncompressed tar stream `reader` into the existing, empty
/// directory `diff`.
///
/// * regular files, dirs, symlinks (target stored as-is), hardlinks (target
///   must be an earlier entry of this layer), char/block devices, fifos;
/// * uid/gid (lchown), modes incl. setuid/setgid/sticky (set after chown),
///   mtimes (dirs fixed up at the end), xattrs from PAX `SCHILY.xattr.*`;
/// * PAX records as POSIX reads them: the last record of a keyword applies,
///   and an empty value deletes it (the ustar field applies; no xattr);
///   a `size`, `uid` or `gid` the `tar` crate read differently is
///   [`crate::Error::MalformedTar`];
/// * `.wh.NAME` → char device 0:0 `NAME`; `.wh..wh..opq` → opaque xattr on its dir;
///   other `.wh..wh.*` entries (aufs metadata) are skipped;
/// * `.wh.NAME` and an entry `NAME` in one layer (how BuildKit and containerd
///   write a path that changed type): the entry replaces the whiteout node,
///   and a directory made so is opaque (it hides the lower directory); a
///   whiteout *after* its entry hides only the lower layers (OCI), so the
///   entry stays and, if a directory, becomes opaque; a whiteout or opaque
///   marker beneath a whited-out name or a non-directory of this layer is
///   ignored (the path is hidden already; containers/storage ignores it too);
/// * leading `./` and `/`-free relative names only: `..` components, absolute
///   paths, paths through a symlink, hardlinks out of the layer, whiteouts
///   naming `.`/`..`, and duplicate non-directory entries (other than a
///   whiteout and its replacement) are [`crate::Error::HostileEntry`] naming
///   the entry;
/// * the stream is read to EOF (so the caller's digest covers every byte);
/// * if `tar_split` is given, tar-split JSON lines are written to it
///   (see [`crate::tarsplit`]) so [`crate::tarsplit::reassemble`] can rebuild the
///   identical stream from `diff` later.
///
/// Also: a stream that ends without an end-of-archive block (or inside an
/// entry) is [`crate::Error::MalformedTar`]; GNU sparse files (`S` entries and the PAX
/// `GNU.sparse.*` formats) and unknown
/// entry types are refused; PAX global headers are ignored; xattrs in the
/// `trusted.overlay.*` and `user.overlay.*` namespaces are not taken from the
/// tar (they would change what overlayfs shows, in either [`XattrMode`]), and an xattr the filesystem does not support
/// (`EOPNOTSUPP`) is skipped, as containers/storage does. A failure of
/// `reader` itself is an [`crate::Error::Io`] on the path `<layer stream>`.
///
/// On error the diff directory is left in an undefined state; the caller
/// discards the staged layer.
pub fn apply_tar(
    diff: &Path,
    reader: &mut dyn Read,
    tar_split: Option<&mut dyn Write>,
    opts: &ApplyOptions,
) -> Result<ApplyStats> {
    let diff_fd = rustix::fs::open(
        diff,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(diff, e.into()))?;
    let limit = opts.max_size;
    let state = Rc::new(RefCell::new(RecState::new(tar_split, limit)));
    let mut buffered = BufReader::with_capacity(BUF_SIZE, reader);
    let mut archive = tar::Archive::new(Recorder::new(&mut buffered, state.clone()));
    let mut applier = Applier {
        diff,
        root: Rc::new(diff_fd),
        cache: None,
        dirs: HashMap::new(),
        buf: vec![0u8; BUF_SIZE],
        state: &state,
        limit,
        xattrs: opts.xattrs,
        file_bytes: 0,
        whiteouts: HashSet::new(),
    };
    let mut entries = 0u64;
    let mut end_of_last = 0u64;
    {
        let iter = archive.entries().map_err(|e| applier.stream_err(e))?;
        for entry in iter {
            let entry = entry.map_err(|e| applier.stream_err(e))?;
            entries += 1;
            end_of_last = entry
                .raw_file_position()
                .saturating_add(entry.size().saturating_add(511) & !511);
            applier.apply_entry(entry)?;
        }
    }
    // The iterator stops at the first zero block; a stream that simply ends
    // (at an entry boundary, or empty) has been cut.
    if state.borrow().total < end_of_last.saturating_add(512) {
        return Err(Error::MalformedTar(
            "stream ends without the end-of-archive marker (truncated)".into(),
        ));
    }
    // Read the rest (second zero block, padding) so the caller's digest
    // covers every byte and tar-split records it.
    let mut recorder = archive.into_inner();
    io::copy(&mut recorder, &mut io::sink()).map_err(|e| applier.stream_err(e))?;
    applier.finish_dirs()?;
    state
        .borrow_mut()
        .finish()
        .map_err(|e| applier.stream_err(e))?;
    let tar_size = state.borrow().total;
    Ok(ApplyStats {
        entries,
        tar_size,
        file_bytes: applier.file_bytes,
    })
}

/// Ownership, mode, times and xattrs of an entry.
#[derive(Debug, Clone)]
struct Meta {
    uid: Uid,
    gid: Gid,
    mode: u32,
    atime: Timespec,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn times(&self) -> Timestamps {
        Timestamps {
            last_access: self.atime,
            last_modification: self.mtime,
        }
    }
}

/// Parse a PAX time value like `1700000000.123456789` or `-1.5` (pure).
fn parse_pax_time(s: &str) -> Option<Timespec> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = match digits.split_once('.') {
        Some((a, b)) => (a, b),
        None => (digits, ""),
    };
    if secs.is_empty() && frac.is_empty() {
        return None;
    }
    if !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = if secs.is_empty() {
        0
    } else {
        secs.parse().ok()?
    };
    let mut nanos: i64 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(b - b'0') * 10i64.pow(8 - i as u32);
    }
    let (sec, nsec) = if !neg {
        (secs, nanos)
    } else if nanos == 0 {
        (-secs, 0)
    } else {
        (-secs - 1, 1_000_000_000 - nanos)
    };
    Some(Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    })
}

/// A numeric header field that is empty (all NUL or spaces) reads as 0, as
/// Go's `archive/tar` (and so containers/storage) reads it (pure).
fn lenient(field: &[u8], parsed: io::Result<u64>) -> io::Result<u64> {
    match parsed {
        Err(_) if field.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        r => r,
    }
}

/// What a (normalized) entry name means for overlayfs (pure).
#[derive(Debug, PartialEq, Eq)]
enum Special<'a> {
    /// An ordinary name.
    None,
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// `.wh.NAME`: NAME is deleted.
    Whiteout(&'a [u8]),
    /// Other `.wh..wh.*` (aufs metadata), at any depth: ignored.
    AufsMeta,
}

fn classify<'a>(comps: &[&'a [u8]]) -> Special<'a> {
    let Some((last, parents)) = comps.split_last() else {
        return Special::None;
    };
    if parents.iter().any(|c| c.starts_with(b".wh..wh.")) {
        return Special::AufsMeta;
    }
    if *last == b".wh..wh..opq" {
        Special::Opaque
    } else if last.starts_with(b".wh..wh.") {
        Special::AufsMeta
    } else if let Some(name) = last.strip_prefix(b".wh.") {
        Special::Whiteout(name)
    } else {
        Special::None
    }
}

/// An entry's PAX extended-header records as POSIX pax and Go's
/// `archive/tar` (so podman and umoci) read them: a later record of a
/// keyword replaces an earlier one, and a record with an empty value deletes
/// the keyword, so the header's own field applies (an empty
/// `SCHILY.xattr.NAME` sets no xattr, an empty `path` keeps the ustar name).
/// Global headers (`g`) are not applied to later entries, as in Go.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct PaxRecords {
    /// The value of each keyword in effect.
    values: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The first record of each keyword: what the `tar` crate takes for
    /// `path`, `linkpath`, `size`, `uid` and `gid`, to be checked against
    /// `values`.
    first: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl PaxRecords {
    /// From the records in the order they appear (pure).
    fn new(records: Vec<(Vec<u8>, Vec<u8>)>) -> PaxRecords {
        let mut out = PaxRecords::default();
        for (key, value) in records {
            out.first
                .entry(key.clone())
                .or_insert_with(|| value.clone());
            if value.is_empty() {
                out.values.remove(&key);
            } else {
                out.values.insert(key, value);
            }
        }
        out
    }

    /// The value of `key` in effect (never empty).
    fn get(&self, key: &str) -> Option<&[u8]> {
        self.values.get(key.as_bytes()).map(Vec::as_slice)
    }

    fn first(&self, key: &str) -> Option<&[u8]> {
        self.first.get(key.as_bytes()).map(Vec::as_slice)
    }

    /// Whether a keyword starting with `prefix` is in effect.
    fn has_prefix(&self, prefix: &str) -> bool {
        self.values.keys().any(|k| k.starts_with(prefix.as_bytes()))
    }
}

/// An entry's name (`key` = `path`) or link target (`linkpath`) with empty
/// PAX values deleting the keyword (pure). `from_crate` is what the `tar`
/// crate reports: a GNU long name if there is one, else the *first* PAX
/// record of `key` (even an empty one), else `header`, the ustar field.
fn effective_field<'a>(
    from_crate: &'a [u8],
    header: &'a [u8],
    pax: &'a PaxRecords,
    key: &str,
) -> &'a [u8] {
    match pax.first(key) {
        // The crate took the first PAX record: the one in effect wins.
        Some(first) if first == from_crate => pax.get(key).unwrap_or(header),
        // No PAX record, or a GNU long name (it takes precedence, as in Go).
        _ if !from_crate.is_empty() => from_crate,
        _ => pax.get(key).unwrap_or(header),
    }
}

/// A decimal PAX number, as Go's `strconv.ParseInt` reads one (pure).
fn pax_number(key: &str, value: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("bad PAX {key} {:?}", String::from_utf8_lossy(value)))
}

/// The entry's `uid` or `gid` (`key`) given the header's value as the `tar`
/// crate reports it (pure). The crate replaces the header's value with the
/// first PAX record of `key` when that one is a number; a later record that
/// deletes it leaves the ustar value unknown, so that is an error.
fn effective_id(from_crate: u64, pax: &PaxRecords, key: &str) -> Result<u64, String> {
    match pax.get(key) {
        Some(v) => pax_number(key, v),
        None if pax.first(key).is_some_and(|v| pax_number(key, v).is_ok()) => Err(format!(
            "PAX {key} records disagree (a number, then an empty one)"
        )),
        None => Ok(from_crate),
    }
}

/// Check the size the `tar` crate framed the entry with (`from_crate`: the
/// first PAX `size` record that is a number, else the header's) against the
/// size in effect (pure): a disagreement means tools would read different
/// archives, so it is refused.
fn check_size(from_crate: u64, header: u64, pax: &PaxRecords) -> Result<(), String> {
    let want = match pax.get("size") {
        Some(v) => pax_number("size", v)?,
        None => header,
    };
    if want == from_crate {
        Ok(())
    } else {
        Err(format!(
            "PAX size records disagree ({from_crate} or {want} bytes)"
        ))
    }
}

/// A link entry's target, per [`effective_field`].
fn link_target<R: Read>(entry: &tar::Entry<'_, R>, pax: &PaxRecords) -> Vec<u8> {
    let from_crate = entry.link_name_bytes().unwrap_or_default();
    let header = entry.header().link_name_bytes().unwrap_or_default();
    effective_field(&from_crate, &header, pax, "linkpath").to_vec()
}

fn is_errno(e: &io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno.raw_os_error())
}

/// Give `name` in `dir` the entry's owner, never following a symlink.
fn chown_nofollow(dir: impl AsFd, name: &OsStr, meta: &Meta) -> rustix::io::Result<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(meta.uid),
        Some(meta.gid),
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

struct Applier<'a, 'w> {
    diff: &'a Path,
    root: Rc<OwnedFd>,
    /// The last parent directory opened: its relative path and fd.
    cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// Directories with an entry: mode and times to apply at the end.
    dirs: HashMap<Vec<u8>, Meta>,
    buf: Vec<u8>,
    state: &'a RefCell<RecState<'w>>,
    limit: Option<u64>,
    xattrs: XattrMode,
    /// Sizes of the regular files written so far.
    file_bytes: u64,
    /// Whiteout nodes (`.wh.NAME` entries) this layer made, by relative
    /// path: a later entry of the same name replaces one (see
    /// [`Applier::take_whiteout`]).
    whiteouts: HashSet<Vec<u8>>,
}

/// An error about the entry named `entry`.
fn hostile(entry: &str, reason: impl Into<String>) -> Error {
    Error::HostileEntry {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

impl Applier<'_, '_> {
    /// Turn an error from the tar reader into the real cause: the size limit,
    /// the underlying stream, the tar-split writer, or a malformed archive.
    fn stream_err(&self, e: io::Error) -> Error {
        let mut st = self.state.borrow_mut();
        if st.limit_hit {
            return Error::SizeLimit {
                limit: self.limit.unwrap_or(0),
            };
        }
        if let Some(e) = st.stream_err.take() {
            return Error::io("<layer stream>", e);
        }
        if let Some(e) = st.split_err.take() {
            return Error::io("<tar-split>", e);
        }
        Error::MalformedTar(e.to_string())
    }

    fn path_of(&self, rel: &[u8]) -> PathBuf {
        self.diff.join(OsStr::from_bytes(rel))
    }

    /// An error from resolving `rel` beneath the diff dir.
    fn resolve_err(&self, e: io::Error, rel: &[u8], entry: &str) -> Error {
        if is_errno(&e, Errno::LOOP) {
            hostile(entry, "path passes through a symlink")
        } else if is_errno(&e, Errno::XDEV) {
            hostile(entry, "path escapes the layer")
        } else if is_errno(&e, Errno::NOTDIR) {
            hostile(entry, "a parent of the path is not a directory")
        } else {
            Error::io(self.path_of(rel), e)
        }
    }

    /// The directory `comps` (relative to diff), opened beneath it without
    /// following symlinks; missing directories are created (0755) when
    /// `create`, else a missing one is `ENOENT` in an `Io` error.
    fn dir(&mut self, comps: &[&[u8]], create: bool, entry: &str) -> Result<Rc<OwnedFd>> {
        if comps.is_empty() {
            return Ok(self.root.clone());
        }
        let key = join(comps);
        if let Some((k, fd)) = &self.cache {
            if *k == key {
                return Ok(fd.clone());
            }
        }
        let fd = match fsutil::open_dir_beneath(&*self.root, &key) {
            Ok(fd) => fd,
            Err(e) if create && is_errno(&e, Errno::NOENT) => self.create_dirs(comps, entry)?,
            // A whiteout this layer made sits on the path: the name became a
            // directory (see `take_whiteout`).
            Err(e) if create && is_errno(&e, Errno::NOTDIR) && self.under_whiteout(comps) => {
                self.create_dirs(comps, entry)?
            }
            Err(e) => return Err(self.resolve_err(e, &key, entry)),
        };
        let fd = Rc::new(fd);
        self.cache = Some((key, fd.clone()));
        Ok(fd)
    }

    /// Create the missing directories of `comps`, one component at a time.
    /// A whiteout this layer made on the way is replaced by an opaque
    /// directory (the entry shows the name became a directory).
    fn create_dirs(&mut self, comps: &[&[u8]], entry: &str) -> Result<OwnedFd> {
        let root = self.root.clone();
        let mut cur: Option<OwnedFd> = None;
        for (i, comp) in comps.iter().enumerate() {
            let rel = join(&comps[..=i]);
            let parent = cur.as_ref().map_or(root.as_fd(), |f| f.as_fd());
            let flags = OFlags::RDONLY | OFlags::DIRECTORY;
            let next = match fsutil::open_beneath(parent, comp, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(e)
                    if is_errno(&e, Errno::NOENT)
                        || (is_errno(&e, Errno::NOTDIR) && self.whiteouts.contains(&rel)) =>
                {
                    let replaced = self.take_whiteout(parent, comp, &rel)?;
                    match rustix::fs::mkdirat(parent, OsStr::from_bytes(comp), Mode::from(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(Error::io(self.path_of(&rel), e.into())),
                    }
                    let fd = fsutil::open_beneath(parent, comp, flags, Mode::empty())
                        .map_err(|e| self.resolve_err(e, &rel, entry))?;
                    rustix::fs::fchmod(&fd, Mode::from(0o755))
                        .map_err(|e| Error::io(self.path_of(&rel), e.into()))?;
                    if replaced {
                        self.set_opaque(&fd, &rel)?;
                    }
                    fd
                }
                Err(e) => return Err(self.resolve_err(e, &rel, entry)),
            };
            cur = Some(next);
        }
        cur.ok_or_else(|| hostile(entry, "empty path"))
    }

    /// The directory `comps` for a whiteout or opaque marker in it, created
    /// if missing; `None` when a component is a non-directory this layer
    /// wrote (e.g. `d` then `d/.wh.x` when a directory became a file): the
    /// marker is moot, and containers/storage ignores it too.
    fn marker_dir(&mut self, comps: &[&[u8]], entry: &str) -> Result<Option<Rc<OwnedFd>>> {
        match self.dir(comps, true, entry) {
            Ok(fd) => Ok(Some(fd)),
            Err(e @ Error::HostileEntry { .. }) => {
                let key = join(comps);
                match fsutil::open_dir_beneath(&*self.root, &key) {
                    Err(e) if is_errno(&e, Errno::NOTDIR) => Ok(None),
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Does `comps` (or a directory above it) name a whiteout this layer made?
    fn under_whiteout(&self, comps: &[&[u8]]) -> bool {
        !self.whiteouts.is_empty()
            && (1..=comps.len()).any(|n| self.whiteouts.contains(&join(&comps[..n])))
    }

    /// If `name` in `parent` (relative path `rel`) is a whiteout an earlier
    /// `.wh.` entry of this layer made, remove it and return true: the entry
    /// that follows takes its place. (BuildKit and containerd write `.wh.a`
    /// then `a` when a path changes type; the whiteout hides the lower
    /// layers' `a`, and a directory made in its place is opaque.)
    fn take_whiteout(&mut self, parent: impl AsFd, name: &[u8], rel: &[u8]) -> Result<bool> {
        if !self.whiteouts.remove(rel) {
            return Ok(false);
        }
        rustix::fs::unlinkat(parent, OsStr::from_bytes(name), AtFlags::empty())
            .map_err(|e| Error::io(self.path_of(rel), e.into()))?;
        Ok(true)
    }

    /// Mark the directory `fd` (relative path `rel`) opaque: it hides the
    /// lower layers' contents of the same path.
    ///
    /// In [`XattrMode::User`] the directory also gets `trusted.overlay.opaque`
    /// where the filesystem takes it (a local or block-device share, as
    /// root): containers/storage (podman, CRI-O) mounts a share's layers
    /// without `userxattr` and reads only that one. Over NFS `trusted.*` does
    /// not cross and is skipped: a `userxattr` mount ignores it either way.
    fn set_opaque(&self, fd: impl AsFd, rel: &[u8]) -> Result<()> {
        let fd = fd.as_fd();
        rustix::fs::fsetxattr(fd, self.xattrs.opaque_xattr(), b"y", XattrFlags::empty())
            .map_err(|e| Error::io(self.path_of(rel), e.into()))?;
        if self.xattrs == XattrMode::User {
            // Best effort: EPERM (not root) or EOPNOTSUPP (NFS) leaves the
            // user marker alone, which is all this store's own mounts read.
            let _ = rustix::fs::fsetxattr(
                fd,
                XattrMode::Trusted.opaque_xattr(),
                b"y",
                XattrFlags::empty(),
            );
        }
        Ok(())
    }

    /// Read the rest of the entry's data without keeping it (it stays in
    /// tar-split segments). Errors if the stream ends inside it.
    fn drain<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<()> {
        let size = entry.size();
        let mut got = 0u64;
        loop {
            let n = entry.read(&mut self.buf).map_err(|e| self.stream_err(e))?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        if got != size {
            return Err(Error::MalformedTar(format!(
                "{shown}: stream ends inside the entry's data"
            )));
        }
        Ok(())
    }

    /// Record a content-less tar-split file entry for a non-regular entry and
    /// skip whatever data it has.
    fn no_content<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        shown: &str,
    ) -> Result<()> {
        self.state
            .borrow_mut()
            .file_entry(raw, 0, false)
            .map_err(|e| self.stream_err(e))?;
        self.drain(entry, shown)
    }

    /// The entry's PAX records (see [`PaxRecords`]).
    fn pax_records<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<PaxRecords> {
        let bad = |e: io::Error| Error::MalformedTar(format!("{shown}: bad PAX header: {e}"));
        let mut records = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(bad)? {
            for ext in exts {
                let ext = ext.map_err(bad)?;
                records.push((ext.key_bytes().to_vec(), ext.value_bytes().to_vec()));
            }
        }
        Ok(PaxRecords::new(records))
    }

    fn meta<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        pax: &PaxRecords,
        shown: &str,
    ) -> Result<Meta> {
        let h = entry.header();
        let bad =
            |what: &str, e: io::Error| Error::MalformedTar(format!("{shown}: bad {what}: {e}"));
        let id = |what: &str, v: u64| -> Result<u32> {
            u32::try_from(v)
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| hostile(shown, format!("{what} {v} out of range")))
        };
        let old = h.as_old();
        let uid = lenient(&old.uid, h.uid()).map_err(|e| bad("uid", e))?;
        let gid = lenient(&old.gid, h.gid()).map_err(|e| bad("gid", e))?;
        let pax_err = |why: String| Error::MalformedTar(format!("{shown}: {why}"));
        let uid = effective_id(uid, pax, "uid").map_err(pax_err)?;
        let gid = effective_id(gid, pax, "gid").map_err(pax_err)?;
        let uid = Uid::from_raw(id("uid", uid)?);
        let gid = Gid::from_raw(id("gid", gid)?);
        let mode = lenient(&old.mode, h.mode().map(u64::from)).map_err(|e| bad("mode", e))?;
        let mode = (mode & 0o7777) as u32;
        let secs = lenient(&old.mtime, h.mtime()).map_err(|e| bad("mtime", e))?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(secs).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let pax_time = |key: &str| {
            pax.get(key)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(parse_pax_time)
        };
        if let Some(t) = pax_time("mtime") {
            mtime = t;
        }
        let atime = pax_time("atime");
        let xattrs = pax
            .values
            .iter()
            .filter_map(|(key, value)| {
                let name = std::str::from_utf8(key)
                    .ok()?
                    .strip_prefix("SCHILY.xattr.")?;
                (!name.is_empty() && !XattrMode::is_overlay_xattr(name))
                    .then(|| (name.to_owned(), value.clone()))
            })
            .collect();
        Ok(Meta {
            uid,
            gid,
            mode,
            atime: atime.unwrap_or(mtime),
            mtime,
            xattrs,
        })
    }

    fn set_xattrs_fd(&self, fd: impl AsFd, meta: &Meta, rel: &[u8]) -> Result<()> {
        for (name, value) in &meta.xattrs {
            match rustix::fs::fsetxattr(fd.as_fd(), name.as_str(), value, XattrFlags::empty()) {
                Ok(()) | Err(Errno::OPNOTSUPP) => {}
                Err(e) => return Err(Error::io(self.path_of(rel), e.into())),
            }
        }
        Ok(())
    }

    /// xattrs on a node that must not be opened (symlink, device, fifo):
    /// `lsetxattr` on `/proc/self/fd/<parent>/<name>`, which resolves the
    /// parent through its fd and does not follow the last component.
    fn set_xattrs_at(&self, parent: &OwnedFd, name: &[u8], meta: &Meta, rel: &[u8]) -> Result<()> {
        if meta.xattrs.is_empty() {
            return Ok(());
        }
        let mut p = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
        p.extend_from_slice(name);
        let p = Path::new(OsStr::from_bytes(&p));
        for (xname, value) in &meta.xattrs {
            match rustix::fs::lsetxattr(p, xname.as_str(), value, XattrFlags::empty()) {
                Ok(()) | Err(Errno::OPNOTSUPP) => {}
                Err(e) => return Err(Error::io(self.path_of(rel), e.into())),
            }
        }
        Ok(())
    }

    fn apply_entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let mut raw = entry.path_bytes().into_owned();
        let mut etype = entry.header().entry_type();
        let mut pax = PaxRecords::default();
        if etype != EntryType::XGlobalHeader {
            let shown = String::from_utf8_lossy(&raw).into_owned();
            pax = self.pax_records(&mut entry, &shown)?;
            let header_name = entry.header().path_bytes();
            raw = effective_field(&raw, &header_name, &pax, "path").to_vec();
            // GNU sparse files (the old 'S' entry, whose size field is the
            // stored size, and the PAX formats' GNU.sparse.* records, whose
            // data holds a map) are refused before their sizes are compared:
            // storing them as written would give a different file.
            if etype == EntryType::GNUSparse || pax.has_prefix("GNU.sparse.") {
                let real = pax.get("GNU.sparse.name").unwrap_or(&raw);
                return Err(Error::MalformedTar(format!(
                    "{}: GNU sparse files are not supported",
                    String::from_utf8_lossy(real)
                )));
            }
            let header_size = entry
                .header()
                .entry_size()
                .map_err(|e| Error::MalformedTar(format!("{shown}: bad size: {e}")))?;
            check_size(entry.size(), header_size, &pax)
                .map_err(|why| Error::MalformedTar(format!("{shown}: {why}")))?;
        }
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let shown = shown.as_str();
        // Old (V7) archives mark directories with a trailing slash only.
        if etype == EntryType::Regular && raw.ends_with(b"/") {
            etype = EntryType::Directory;
        }
        let comps = normalize(&raw).map_err(|r| hostile(shown, r.reason()))?;
        let rel = join(&comps);
        match etype {
            EntryType::XGlobalHeader => return self.no_content(&mut entry, &raw, shown),
            EntryType::GNUSparse => {
                return Err(Error::MalformedTar(format!(
                    "{shown}: GNU sparse files are not supported"
                )))
            }
            _ => {}
        }
        let special = classify(&comps);
        match special {
            Special::AufsMeta => return self.no_content(&mut entry, &raw, shown),
            Special::Opaque => {
                let parents = &comps[..comps.len() - 1];
                // Inside a path this layer whited out, or beneath a
                // non-directory: it stays hidden (as containers/storage
                // leaves it).
                if !self.under_whiteout(parents) {
                    if let Some(dir) = self.marker_dir(parents, shown)? {
                        self.set_opaque(&*dir, &join(parents))?;
                    }
                }
                return self.no_content(&mut entry, &raw, shown);
            }
            Special::Whiteout(name) => {
                if matches!(name, b"" | b"." | b"..") {
                    return Err(hostile(shown, "whiteout names `.`, `..` or nothing"));
                }
                let parents = &comps[..comps.len() - 1];
                // `.wh.foo` then `foo/.wh.bar` (some tools write both for
                // `rm -rf foo/bar`): foo is hidden already.
                if self.under_whiteout(parents) {
                    return self.no_content(&mut entry, &raw, shown);
                }
                let meta = self.meta(&entry, &pax, shown)?;
                let Some(parent) = self.marker_dir(parents, shown)? else {
                    return self.no_content(&mut entry, &raw, shown);
                };
                let target = join(&[parents, &[name]].concat());
                match rustix::fs::mknodat(
                    &*parent,
                    OsStr::from_bytes(name),
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                ) {
                    Ok(()) => {
                        chown_nofollow(&*parent, OsStr::from_bytes(name), &meta)
                            .map_err(|e| Error::io(self.path_of(&target), e.into()))?;
                        self.whiteouts.insert(target);
                    }
                    // The name is an entry of this layer: a whiteout hides
                    // only the lower layers (OCI), so the entry stays; a
                    // non-directory hides the lower path already, a
                    // directory must become opaque to.
                    Err(Errno::EXIST) => {
                        if !self.whiteouts.contains(&target) {
                            let st = rustix::fs::statat(
                                &*parent,
                                OsStr::from_bytes(name),
                                AtFlags::SYMLINK_NOFOLLOW,
                            )
                            .map_err(|e| Error::io(self.path_of(&target), e.into()))?;
                            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                                let dir = fsutil::open_dir_beneath(&*parent, name)
                                    .map_err(|e| self.resolve_err(e, &target, shown))?;
                                self.set_opaque(&dir, &target)?;
                            }
                        }
                    }
                    Err(e) => return Err(Error::io(self.path_of(&target), e.into())),
                }
                return self.no_content(&mut entry, &raw, shown);
            }
            Special::None => {}
        }

        let meta = self.meta(&entry, &pax, shown)?;
        if etype == EntryType::Directory {
            self.apply_dir(&comps, &rel, &meta, shown)?;
            return self.no_content(&mut entry, &raw, shown);
        }
        let Some((name, parents)) = comps.split_last() else {
            return Err(hostile(shown, "a non-directory entry names the layer root"));
        };
        let name = OsStr::from_bytes(name);
        let io_err = |e: Errno| Error::io(self.diff.join(OsStr::from_bytes(&rel)), e.into());
        let dup = || {
            hostile(
                shown,
                "duplicate entry: the path already exists in this layer",
            )
        };
        match etype {
            EntryType::Regular | EntryType::Continuous => {
                let parent = self.dir(parents, true, shown)?;
                self.take_whiteout(&parent, name.as_bytes(), &rel)?;
                let fd = match rustix::fs::openat(
                    &*parent,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from(0o600),
                ) {
                    Ok(fd) => fd,
                    Err(Errno::EXIST) => return Err(dup()),
                    Err(e) => return Err(io_err(e)),
                };
                let mut file = File::from(fd);
                self.state
                    .borrow_mut()
                    .start_content()
                    .map_err(|e| self.stream_err(e))?;
                let size = entry.size();
                self.file_bytes += size;
                let mut copied = 0u64;
                loop {
                    let n = entry.read(&mut self.buf).map_err(|e| self.stream_err(e))?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&self.buf[..n])
                        .map_err(|e| Error::io(self.path_of(&rel), e))?;
                    copied += n as u64;
                }
                if copied != size {
                    return Err(Error::MalformedTar(format!(
                        "{shown}: stream ends inside the file's content"
                    )));
                }
                self.state
                    .borrow_mut()
                    .file_entry(&raw, size, true)
                    .map_err(|e| self.stream_err(e))?;
                rustix::fs::fchown(&file, Some(meta.uid), Some(meta.gid)).map_err(io_err)?;
                rustix::fs::fchmod(&file, Mode::from(meta.mode)).map_err(io_err)?;
                self.set_xattrs_fd(&file, &meta, &rel)?;
                rustix::fs::futimens(&file, &meta.times()).map_err(io_err)?;
                Ok(())
            }
            EntryType::Symlink => {
                let target = link_target(&entry, &pax);
                if target.is_empty() {
                    return Err(hostile(shown, "symlink without a target"));
                }
                if target.contains(&0) {
                    return Err(hostile(shown, "symlink target contains a NUL byte"));
                }
                let parent = self.dir(parents, true, shown)?;
                self.take_whiteout(&parent, name.as_bytes(), &rel)?;
                match rustix::fs::symlinkat(OsStr::from_bytes(&target), &*parent, name) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => return Err(dup()),
                    Err(e) => return Err(io_err(e)),
                }
                chown_nofollow(&*parent, name, &meta).map_err(io_err)?;
                self.set_xattrs_at(&parent, name.as_bytes(), &meta, &rel)?;
                rustix::fs::utimensat(&*parent, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err)?;
                self.no_content(&mut entry, &raw, shown)
            }
            EntryType::Link => {
                let target = link_target(&entry, &pax);
                let tcomps = normalize(&target)
                    .map_err(|r| hostile(shown, format!("hardlink target: {}", r.reason())))?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(hostile(shown, "hardlink to the layer root"));
                };
                let absent = || {
                    hostile(
                        shown,
                        "hardlink target is not an earlier entry of this layer",
                    )
                };
                let tparent = match self.dir(tparents, false, shown) {
                    Ok(fd) => fd,
                    Err(Error::Io { source, .. }) if is_errno(&source, Errno::NOENT) => {
                        return Err(absent())
                    }
                    Err(Error::HostileEntry { reason, .. }) => {
                        return Err(hostile(shown, format!("hardlink target: {reason}")))
                    }
                    Err(e) => return Err(e),
                };
                let tname = OsStr::from_bytes(tname);
                let st = match rustix::fs::statat(&*tparent, tname, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(Errno::NOENT) => return Err(absent()),
                    Err(e) => return Err(io_err(e)),
                };
                match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => return Err(hostile(shown, "hardlink to a directory")),
                    FileType::CharacterDevice if st.st_rdev == 0 => {
                        return Err(hostile(shown, "hardlink to a whiteout"))
                    }
                    _ => {}
                }
                let parent = self.dir(parents, true, shown)?;
                self.take_whiteout(&parent, name.as_bytes(), &rel)?;
                match rustix::fs::linkat(&*tparent, tname, &*parent, name, AtFlags::empty()) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => return Err(dup()),
                    Err(e) => return Err(io_err(e)),
                }
                self.no_content(&mut entry, &raw, shown)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = entry.header();
                let bad =
                    |e: io::Error| Error::MalformedTar(format!("{shown}: bad device number: {e}"));
                let dev = if etype == EntryType::Fifo {
                    0
                } else {
                    let major = h.device_major().map_err(bad)?.unwrap_or(0);
                    let minor = h.device_minor().map_err(bad)?.unwrap_or(0);
                    rustix::fs::makedev(major, minor)
                };
                let ftype = match etype {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let parent = self.dir(parents, true, shown)?;
                self.take_whiteout(&parent, name.as_bytes(), &rel)?;
                match rustix::fs::mknodat(&*parent, name, ftype, Mode::from(0o600), dev) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => return Err(dup()),
                    Err(e) => return Err(io_err(e)),
                }
                chown_nofollow(&*parent, name, &meta).map_err(io_err)?;
                // The node was just created by us (mknodat never follows),
                // so following the last component here cannot leave the layer.
                rustix::fs::chmodat(&*parent, name, Mode::from(meta.mode), AtFlags::empty())
                    .map_err(io_err)?;
                self.set_xattrs_at(&parent, name.as_bytes(), &meta, &rel)?;
                rustix::fs::utimensat(&*parent, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err)?;
                self.no_content(&mut entry, &raw, shown)
            }
            other => Err(hostile(
                shown,
                format!("unsupported entry type {:?}", other.as_byte() as char),
            )),
        }
    }

    /// A directory entry: create it (or accept an existing directory, whose
    /// metadata it updates), chown it and set xattrs now; mode and times at
    /// the end.
    fn apply_dir(&mut self, comps: &[&[u8]], rel: &[u8], meta: &Meta, shown: &str) -> Result<()> {
        let fd = match comps.split_last() {
            None => self.root.clone(),
            Some((name, parents)) => {
                let parent = self.dir(parents, true, shown)?;
                let replaced = self.take_whiteout(&parent, name, rel)?;
                let name = OsStr::from_bytes(name);
                match rustix::fs::mkdirat(&*parent, name, Mode::from(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        let st = rustix::fs::statat(&*parent, name, AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(|e| Error::io(self.path_of(rel), e.into()))?;
                        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                            return Err(hostile(
                                shown,
                                "duplicate entry: a non-directory already exists at this path",
                            ));
                        }
                    }
                    Err(e) => return Err(Error::io(self.path_of(rel), e.into())),
                }
                let fd = fsutil::open_dir_beneath(&*parent, name.as_bytes())
                    .map_err(|e| self.resolve_err(e, rel, shown))?;
                if replaced {
                    self.set_opaque(&fd, rel)?;
                }
                Rc::new(fd)
            }
        };
        rustix::fs::fchown(&*fd, Some(meta.uid), Some(meta.gid))
            .map_err(|e| Error::io(self.path_of(rel), e.into()))?;
        self.set_xattrs_fd(&*fd, meta, rel)?;
        self.dirs.insert(rel.to_vec(), meta.clone());
        Ok(())
    }

    /// Apply directory modes and times, deepest first (so a read-only
    /// directory never blocks reaching its children).
    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs: Vec<(Vec<u8>, Meta)> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(rel, _)| {
            std::cmp::Reverse(
                rel.iter().filter(|&&b| b == b'/').count() + usize::from(!rel.is_empty()),
            )
        });
        self.cache = None;
        for (rel, meta) in dirs {
            let fd = fsutil::open_dir_beneath(&*self.root, &rel)
                .map_err(|e| Error::io(self.path_of(&rel), e))?;
            let io_err = |e: Errno| Error::io(self.path_of(&rel), e.into());
            rustix::fs::fchmod(&fd, Mode::from(meta.mode)).map_err(io_err)?;
            rustix::fs::futimens(&fd, &meta.times()).map_err(io_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod apply_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = parse_pax_time("1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_pax_time("12").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 0));
        let t = parse_pax_time("1.123456789999").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1, 123_456_789));
        let t = parse_pax_time("-1.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 500_000_000));
        assert!(parse_pax_time("").is_none());
        assert!(parse_pax_time("1e5").is_none());
        assert!(parse_pax_time("-").is_none());
    }

    #[test]
    fn empty_numeric_fields_read_as_zero() {
        let err = || Err(io::Error::other("not a number"));
        assert_eq!(lenient(b"\0\0\0", err()).unwrap(), 0);
        assert_eq!(lenient(b"   \0", err()).unwrap(), 0);
        assert!(lenient(b"12x\0", err()).is_err());
        assert_eq!(lenient(b"0000755\0", Ok(0o755)).unwrap(), 0o755);
    }

    #[test]
    fn pax_records_last_wins_and_empty_deletes() {
        let r = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        let pax = PaxRecords::new(vec![
            r("path", ""),
            r("path", "b"),
            r("linkpath", "t"),
            r("linkpath", ""),
            r("uid", "5"),
            r("SCHILY.xattr.user.a", ""),
        ]);
        assert_eq!(pax.get("path"), Some(&b"b"[..]));
        assert_eq!(pax.first("path"), Some(&b""[..]));
        assert_eq!(pax.get("linkpath"), None);
        assert_eq!(pax.get("SCHILY.xattr.user.a"), None);
        // path: the crate took the first (empty) record; the last applies.
        assert_eq!(effective_field(b"", b"ustar", &pax, "path"), b"b");
        // A GNU long name wins over PAX records.
        assert_eq!(effective_field(b"long", b"ustar", &pax, "path"), b"long");
        // linkpath deleted: the ustar target.
        assert_eq!(effective_field(b"t", b"ustar", &pax, "linkpath"), b"ustar");
        // No record: whatever the crate reports.
        let none = PaxRecords::default();
        assert_eq!(effective_field(b"x", b"x", &none, "path"), b"x");
        assert_eq!(effective_field(b"", b"", &none, "path"), b"");

        assert_eq!(effective_id(7, &pax, "uid"), Ok(5));
        assert_eq!(effective_id(7, &pax, "gid"), Ok(7));
        let deleted = PaxRecords::new(vec![r("gid", "3"), r("gid", "")]);
        assert!(effective_id(3, &deleted, "gid").is_err());
        let empty = PaxRecords::new(vec![r("gid", "")]);
        assert_eq!(effective_id(8, &empty, "gid"), Ok(8));
        let bad = PaxRecords::new(vec![r("uid", "x1")]);
        assert!(effective_id(8, &bad, "uid").is_err());

        let size = |recs: Vec<(Vec<u8>, Vec<u8>)>| PaxRecords::new(recs);
        assert_eq!(check_size(10, 10, &none), Ok(()));
        assert_eq!(check_size(10, 10, &size(vec![r("size", "")])), Ok(()));
        assert_eq!(check_size(12, 10, &size(vec![r("size", "12")])), Ok(()));
        assert!(check_size(12, 10, &size(vec![r("size", "12"), r("size", "")])).is_err());
        assert!(check_size(10, 10, &size(vec![r("size", "1x")])).is_err());
    }

    #[test]
    fn classify_whiteouts() {
        assert_eq!(classify(&[b"a", b".wh.b"]), Special::Whiteout(b"b"));
        assert_eq!(classify(&[b".wh..wh..opq"]), Special::Opaque);
        assert_eq!(classify(&[b"a", b".wh..wh.plnk"]), Special::AufsMeta);
        assert_eq!(classify(&[b".wh..wh.plnk", b"1.2"]), Special::AufsMeta);
        assert_eq!(classify(&[b".wh.."]), Special::Whiteout(b"."));
        assert_eq!(classify(&[b"a", b"b"]), Special::None);
        assert_eq!(classify(&[]), Special::None);
    }
}
