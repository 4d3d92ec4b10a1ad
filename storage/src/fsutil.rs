//! Small filesystem helpers: atomic file replacement, directory sync, time
//! stamps, the trash for entries storectl did not make.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, IoContext, Result};

/// A name unique to this process and call, for `.staging-*` / `.tmp-*` / `.trash-*`.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Write `data` to `dir/name` atomically: `.tmp-*` file, fsync, rename, fsync dir.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".tmp-{}", unique_suffix()));
    let result = (|| {
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(data).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        let dest = dir.join(name);
        fs::rename(&tmp, &dest).at(&dest)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Open a metadata file without ever blocking or following a symlink:
/// `O_NOFOLLOW | O_NONBLOCK` (a FIFO planted as junk cannot hang us); it
/// must be a regular file of at most `cap` bytes. Its fd and size.
fn open_metadata(path: &Path, cap: u64) -> std::io::Result<(rustix::fd::OwnedFd, u64)> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let size = st.st_size as u64;
    if size > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{size} bytes, more than the {cap} a metadata file may have"),
        ));
    }
    Ok((fd, size))
}

/// Read a small metadata file without ever blocking or following a symlink
/// ([`open_metadata`]: a regular file of at most `cap` bytes).
pub fn read_small_file(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let (fd, size) = open_metadata(path, cap)?;
    read_opened(fd, size, cap)
}

fn read_opened(fd: rustix::fd::OwnedFd, size: u64, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(size as usize);
    File::from(fd).take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "grew past its size limit while being read",
        ));
    }
    Ok(buf)
}

/// The most a layer or image record may hold.
pub const MAX_RECORD: u64 = 1 << 20;
/// The most a stored manifest or config may hold.
pub const MAX_DOCUMENT: u64 = 32 << 20;

/// Write a new file `path` and fsync it (for files inside a staging dir).
pub fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = File::create(path).at(path)?;
    f.write_all(data).at(path)?;
    f.sync_all().at(path)
}

/// fsync a directory so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Rename `path` to a dot-prefixed `.trash-*` sibling and delete it. The rename
/// makes the removal atomic for readers; the delete may be finished by a later
/// writer's debris sweep if we crash.
pub fn remove_dir_atomic(path: &Path) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let trash: PathBuf = parent.join(format!(".trash-{}", unique_suffix()));
    fs::rename(path, &trash).at(path)?;
    sync_dir(parent)?;
    fs::remove_dir_all(&trash).at(&trash)
}

/// Is `name` debris left by an interrupted writer?
pub fn is_debris(name: &str) -> bool {
    name.starts_with(".staging-") || name.starts_with(".trash-") || name.starts_with(".tmp-")
}

/// Remove debris entries directly inside `dir`. Returns how many were removed.
pub fn remove_debris_in(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(crate::Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        if !is_debris(&name.to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let ft = entry.file_type().at(&path)?;
        if ft.is_dir() {
            fs::remove_dir_all(&path).at(&path)?;
        } else {
            fs::remove_file(&path).at(&path)?;
        }
        removed += 1;
    }
    Ok(removed)
}

/// The current time as RFC 3339 UTC with nanoseconds, e.g. `2026-11-22T07:40:01.123456789Z`.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Format seconds since the epoch (UTC) as RFC 3339 (pure).
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}")
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Create `path` and its parents; one that cannot be made because the root
/// is not ours to write (permissions, a read-only mount, a file in the way)
/// is [`Error::ReadOnlyStore`].
pub fn create_dir(path: &Path) -> Result<()> {
    match fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(match e.kind() {
            std::io::ErrorKind::PermissionDenied
            | std::io::ErrorKind::ReadOnlyFilesystem
            | std::io::ErrorKind::AlreadyExists
            | std::io::ErrorKind::NotADirectory => Error::ReadOnlyStore {
                path: path.to_path_buf(),
                reason: e.to_string(),
            },
            _ => Error::io(path, e),
        }),
    }
}

/// Where entries storectl did not make go when they sit on a name it must
/// write (in the share, or the root): dot-prefixed, so no reader lists it,
/// and not debris, so nothing deletes it unasked.
pub const TRASH: &str = ".storectl-trash";

/// Move whatever is at `path` (an entry storectl did not make, on a name it
/// must write — `what` says whose) into `base`'s [`TRASH`], with a warning
/// saying where it went. Nothing there: nothing to do.
pub fn move_to_trash(base: &Path, path: &Path, what: &str) -> Result<()> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let trash = base.join(TRASH);
    fs::create_dir_all(&trash).at(&trash)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dest = trash.join(format!("{name}.{}", unique_suffix()));
    fs::rename(path, &dest).at(path)?;
    tracing::warn!(
        "{} was in the way of {what} (not made by storectl): moved to {}; \
         delete it when done looking (rm -rf {})",
        path.display(),
        dest.display(),
        dest.display()
    );
    Ok(())
}

/// A file's bytes as they were when it was opened: read into memory, or
/// mapped from the page cache ([`read_or_map`]).
pub struct FileBytes(Bytes);

enum Bytes {
    Read(Vec<u8>),
    Mapped {
        ptr: std::ptr::NonNull<u8>,
        len: usize,
    },
}

// SAFETY: a mapping is read-only and owned by this value alone, which
// unmaps it on drop; nothing writes through it.
unsafe impl Send for FileBytes {}
// SAFETY: as above: shared access only reads.
unsafe impl Sync for FileBytes {}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Bytes::Read(v) => v,
            // SAFETY: `ptr` maps `len` readable bytes until drop, bytes
            // that do not change (see `read_or_map`).
            Bytes::Mapped { ptr, len } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
        }
    }
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        if let Bytes::Mapped { ptr, len } = self.0 {
            // SAFETY: mapped by `read_or_map` with this length; unmapped
            // once, here, when no borrow of it is left.
            let _ = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) };
        }
    }
}

impl std::fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.0 {
            Bytes::Read(_) => "read",
            Bytes::Mapped { .. } => "mapped",
        };
        write!(f, "FileBytes({} bytes, {how})", self.len())
    }
}

impl From<Vec<u8>> for FileBytes {
    fn from(v: Vec<u8>) -> FileBytes {
        FileBytes(Bytes::Read(v))
    }
}

/// Filesystem magic numbers (`statfs`'s `f_type`).
pub mod fs_magic {
    pub const EXT4: u64 = 0xEF53;
    pub const XFS: u64 = 0x5846_5342;
    pub const BTRFS: u64 = 0x9123_683E;
    pub const TMPFS: u64 = 0x0102_1994;
}

/// Is the filesystem of `fd` a local one (ext4, xfs, btrfs, tmpfs)? `false`
/// for NFS, FUSE, anything else, and when it cannot tell.
pub fn is_local_fs(fd: impl rustix::fd::AsFd) -> bool {
    use fs_magic::*;
    rustix::fs::fstatfs(fd).is_ok_and(|fs| matches!(fs.f_type as u64, EXT4 | XFS | BTRFS | TMPFS))
}

/// [`read_small_file`], or — `map` set, a regular file of 1 MiB or more on
/// a local filesystem ([`is_local_fs`]) — the file mapped read-only: no
/// copy, no fresh memory (a writer opening from a 10,000-image index has
/// 26 MB of it), pages shared with the page cache.
///
/// Only for files that are never changed in place below the size they had
/// when opened — containers/storage's index: storectl and containers/storage
/// replace it by rename or append to it, and a replaced file stays whole
/// while mapped. A file truncated in place by another program while mapped
/// would make a read of its lost pages fault (`SIGBUS`), as with any
/// mapping (git maps its index and packs the same way): so for short-lived
/// processes, and never over NFS or FUSE.
pub fn read_or_map(path: &Path, cap: u64, map: bool) -> std::io::Result<FileBytes> {
    const BIG: u64 = 1 << 20;
    let (fd, size) = open_metadata(path, cap)?;
    if !map || size < BIG || !is_local_fs(&fd) {
        return read_opened(fd, size, cap).map(FileBytes::from);
    }
    let len = size as usize;
    // SAFETY: a new private read-only mapping of `len` bytes of a regular
    // file (`len` > 0), owned by the `FileBytes` made of it.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::PRIVATE,
            &fd,
            0,
        )
    }?;
    let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
        .ok_or_else(|| std::io::Error::other("mmap gave a null pointer"))?;
    Ok(FileBytes(Bytes::Mapped { ptr, len }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_795_340_401, 0), "2026-11-22T09:40:01Z");
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "f", b"one").unwrap();
        write_atomic(dir.path(), "f", b"two").unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn small_files_are_read_safely() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"abc").unwrap();
        assert_eq!(read_small_file(&f, 3).unwrap(), b"abc");
        assert!(read_small_file(&f, 2).is_err(), "over the cap");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(
            read_small_file(&fifo, 10).is_err(),
            "a FIFO neither blocks nor reads"
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(
            read_small_file(&link, 10).is_err(),
            "a symlink is not followed"
        );
        assert!(read_small_file(dir.path(), 10).is_err(), "a directory");
    }

    #[test]
    fn debris_names() {
        assert!(is_debris(".staging-1-2"));
        assert!(is_debris(".trash-x"));
        assert!(!is_debris(".nfs000123"));
        assert!(!is_debris("abc"));
    }

    /// A big file on a local filesystem is mapped, a small one (or one
    /// asked not to be) read: the same bytes either way; a mapped file
    /// replaced by rename keeps the bytes it had.
    #[test]
    fn index_files_are_mapped_or_read_with_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layers.json");
        let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        fs::write(&path, &big).unwrap();
        let local = is_local_fs(File::open(&path).unwrap());
        let mapped = read_or_map(&path, 64 << 20, true).unwrap();
        assert_eq!(*mapped, big[..]);
        let how = format!("{mapped:?}");
        assert!(how.contains(if local { "mapped" } else { "read" }), "{how}");
        let read = read_or_map(&path, 64 << 20, false).unwrap();
        assert!(format!("{read:?}").contains("read"));
        assert_eq!(*read, big[..]);
        fs::write(dir.path().join("small"), b"[]\n").unwrap();
        let small = read_or_map(&dir.path().join("small"), 64, true).unwrap();
        assert_eq!(
            (&*small, format!("{small:?}").contains("read")),
            (&b"[]\n"[..], true)
        );
        // Over the cap: refused, mapped or not.
        assert!(read_or_map(&path, 1 << 20, true).is_err());
        // Replaced by rename while mapped: the mapping keeps the old file.
        let tmp = dir.path().join("new");
        fs::write(&tmp, b"[]\n").unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert_eq!(*mapped, big[..]);
    }
}
