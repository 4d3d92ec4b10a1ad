//! Test helpers: a raw tar writer that can produce any entry (hostile names
//! included, which `tar::Builder` refuses), PAX records, root detection.

use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

/// Builds a tar stream header by header.
#[derive(Default)]
pub struct RawTar {
    pub buf: Vec<u8>,
    /// mtime given to every header (settable per entry with the closure).
    pub mtime: u64,
}

fn pad(buf: &mut Vec<u8>) {
    let rem = buf.len() % 512;
    if rem != 0 {
        buf.resize(buf.len() + 512 - rem, 0);
    }
}

/// One PAX record `"<len> key=value\n"`.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len = len.to_string().len() + body;
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    assert_eq!(rec.len(), len);
    rec
}

impl RawTar {
    pub fn new() -> Self {
        RawTar {
            buf: Vec::new(),
            mtime: 1_600_000_000,
        }
    }

    fn header(&self, kind: EntryType, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.mtime);
        h
    }

    fn push(&mut self, h: &Header, data: &[u8]) {
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(data);
        pad(&mut self.buf);
    }

    /// A GNU long name (`L`) or long link (`K`) entry.
    fn long(&mut self, kind: EntryType, value: &[u8]) {
        let mut data = value.to_vec();
        data.push(0);
        let mut h = self.header(kind, data.len() as u64);
        set_name(&mut h, b"././@LongLink");
        h.set_cksum();
        self.push(&h, &data);
    }

    /// Append an entry with the raw `name`, `kind`, `link` target and `data`;
    /// `f` may adjust the header before the checksum is set.
    pub fn entry_with(
        &mut self,
        name: &[u8],
        kind: EntryType,
        link: Option<&[u8]>,
        data: &[u8],
        f: impl FnOnce(&mut Header),
    ) -> &mut Self {
        if name.len() > 100 {
            self.long(EntryType::GNULongName, name);
        }
        if let Some(link) = link.filter(|l| l.len() > 100) {
            self.long(EntryType::GNULongLink, link);
        }
        let mut h = self.header(kind, data.len() as u64);
        set_name(&mut h, &name[..name.len().min(100)]);
        if let Some(link) = link {
            let l = &link[..link.len().min(100)];
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        f(&mut h);
        h.set_cksum();
        self.push(&h, data);
        self
    }

    pub fn entry(
        &mut self,
        name: &[u8],
        kind: EntryType,
        link: Option<&[u8]>,
        data: &[u8],
    ) -> &mut Self {
        self.entry_with(name, kind, link, data, |_| {})
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name.as_bytes(), EntryType::Regular, None, data)
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name.as_bytes(), EntryType::Directory, None, b"")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            name.as_bytes(),
            EntryType::Symlink,
            Some(target.as_bytes()),
            b"",
        )
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            name.as_bytes(),
            EntryType::Link,
            Some(target.as_bytes()),
            b"",
        )
    }

    /// A PAX extended header (`x`) for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let mut h = self.header(EntryType::XHeader, data.len() as u64);
        set_name(&mut h, b"./PaxHeaders/entry");
        h.set_cksum();
        self.push(&h, &data);
        self
    }

    /// The two zero blocks.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = self.buf.clone();
        out.resize(out.len() + 1024, 0);
        out
    }
}

/// A layer with `.wh.X` and an entry `X` in one layer, in both orders (the
/// apply and mount tests of paths that change type).
pub fn type_change_layer() -> Vec<u8> {
    let mut t = RawTar::new();
    // file -> dir
    t.file(".wh.f2d", b"");
    t.entry_with(b"f2d/", EntryType::Directory, None, b"", |h| {
        h.set_mode(0o750)
    });
    t.file("f2d/new", b"in the new dir");
    // dir -> file
    t.file(".wh.d2f", b"");
    t.file("d2f", b"now a file");
    // symlink -> dir
    t.file(".wh.s2d", b"");
    t.dir("s2d/");
    t.file("s2d/x", b"x");
    // dir -> dir with new contents
    t.file(".wh.d2d", b"");
    t.dir("d2d/");
    t.file("d2d/new", b"new");
    // a dir made implicitly by a child entry
    t.file(".wh.imp", b"");
    t.file("imp/x", b"x");
    // whiteouts after the entry: they hide only the lower layers
    t.dir("after/");
    t.file("after/new", b"new");
    t.file(".wh.after", b"");
    t.file("afterf", b"new");
    t.file(".wh.afterf", b"");
    // a whiteout under a whited-out dir (`rm -rf gone`), a repeated one
    t.file(".wh.gone", b"");
    t.file("gone/.wh.sub", b"");
    t.file(".wh.twice", b"");
    t.file(".wh.twice", b"");
    // dir -> symlink, and a hardlink in place of a whiteout
    t.file(".wh.d2s", b"");
    t.symlink("d2s", "f2d");
    t.file(".wh.hl", b"");
    t.hardlink("hl", "d2f");
    // dir -> file without a whiteout, then markers beneath the file (moot,
    // ignored as containers/storage ignores them)
    t.file("d2f2", b"file");
    t.file("d2f2/.wh.old", b"");
    t.file("d2f2/.wh..wh..opq", b"");
    t.finish()
}

fn set_name(h: &mut Header, name: &[u8]) {
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name);
}

/// Are we root (needed for mknod, chown, trusted xattrs, mount)?
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Fail a root-only test run without root. Such tests are marked
/// `#[ignore = "needs root"]`, so a plain `cargo test` lists them as ignored;
/// the README's test command runs them as root (`-- --include-ignored`).
pub fn require_root(why: &str) {
    assert!(is_root(), "needs root: {why}");
}

/// Say why a test is skipped (a tool it compares with is not installed).
#[allow(clippy::print_stderr)]
pub fn skip(why: &str) {
    eprintln!("skipped: {why}");
}

/// A scratch dir with an empty `diff/` and a `sentinel/` sibling that must
/// stay empty.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("diff")).unwrap();
        std::fs::create_dir(dir.path().join("sentinel")).unwrap();
        Scratch { dir }
    }

    pub fn diff(&self) -> PathBuf {
        self.dir.path().join("diff")
    }

    pub fn sentinel(&self) -> PathBuf {
        self.dir.path().join("sentinel")
    }

    /// Nothing was written outside `diff/`: the sentinel is empty and the
    /// scratch dir holds only `diff` and `sentinel`.
    pub fn assert_contained(&self) {
        let s: Vec<_> = std::fs::read_dir(self.sentinel()).unwrap().collect();
        assert!(s.is_empty(), "sentinel dir was written to: {s:?}");
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["diff", "sentinel"]);
    }
}

/// Names under `dir`, recursively, relative, sorted (symlinks not followed).
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}
