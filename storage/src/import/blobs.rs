//! Access to the files of an image source: a directory, or a tarball whose
//! members are indexed once (name → byte range) so each can be streamed on its
//! own without extracting the archive.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// JSON documents (index, manifest, config) larger than this are refused.
const MAX_DOCUMENT: u64 = 32 << 20;

/// A byte range of a file: one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobLocation {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl BlobLocation {
    /// Open the blob for streaming.
    pub fn open(&self) -> Result<std::io::Take<File>> {
        let mut f = File::open(&self.path).at(&self.path)?;
        f.seek(SeekFrom::Start(self.offset)).at(&self.path)?;
        Ok(f.take(self.len))
    }
}

#[derive(Debug)]
pub(super) enum Blobs {
    Dir(PathBuf),
    Tar {
        /// Where the tarball is read.
        path: PathBuf,
        /// What messages call it (the user's file, when `path` is a spill).
        shown: PathBuf,
        members: HashMap<String, (u64, u64)>,
    },
}

/// Normalize a member name: strip `./` and leading `/`, resolve `..`, and
/// refuse a name that climbs above the archive's root (pure).
fn clean_name(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Blobs {
    pub fn dir(path: &Path) -> Blobs {
        Blobs::Dir(path.to_path_buf())
    }

    /// Index the regular-file members of the tarball at `path`. Symlink
    /// members (docker save links identical layers) resolve to their target.
    pub fn tar(path: &Path) -> Result<Blobs> {
        Blobs::tar_at(path, path)
    }

    /// [`Blobs::tar`] of the tarball read at `path` (a decompressed copy)
    /// whose messages name `shown` (the file the user gave).
    pub fn tar_at(path: &Path, shown: &Path) -> Result<Blobs> {
        let file = File::open(path).at(path)?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        let mut links = Vec::new();
        let bad = |e: std::io::Error| Error::archive(shown, format!("unreadable tar: {e}"));
        for (i, entry) in archive.entries_with_seek().map_err(bad)?.enumerate() {
            let entry = entry.map_err(|e| {
                if i == 0 {
                    Error::archive(
                        shown,
                        "not a tar archive (an OCI layout directory, or a docker-archive or \
                         oci-archive tarball, plain, gzip or zstd, is expected)",
                    )
                } else {
                    bad(e)
                }
            })?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = clean_name(&raw) else {
                continue;
            };
            let kind = entry.header().entry_type();
            if kind.is_file() {
                members.insert(name, (entry.raw_file_position(), entry.size()));
            } else if kind.is_symlink() || kind.is_hard_link() {
                if let Some(target) = entry.link_name_bytes() {
                    let target = String::from_utf8_lossy(&target).into_owned();
                    links.push((name, target, kind.is_symlink()));
                }
            }
        }
        for (name, target, symlink) in links {
            let joined = match (symlink, name.rsplit_once('/')) {
                (true, Some((dir, _))) if !target.starts_with('/') => format!("{dir}/{target}"),
                _ => target,
            };
            if let Some(t) = clean_name(&joined).and_then(|t| members.get(&t).copied()) {
                members.insert(name, t);
            }
        }
        // An archive whose last member is cut short fails here, not mid-import.
        let len = std::fs::metadata(path).at(path)?.len();
        if let Some((name, _)) = members.iter().find(|(_, (off, size))| off + size > len) {
            return Err(Error::archive(shown, format!("member {name} is truncated")));
        }
        Ok(Blobs::Tar {
            path: path.to_path_buf(),
            shown: shown.to_path_buf(),
            members,
        })
    }

    /// The source's path (for messages).
    pub fn path(&self) -> &Path {
        match self {
            Blobs::Dir(p) => p,
            Blobs::Tar { shown, .. } => shown,
        }
    }

    pub fn exists(&self, name: &str) -> bool {
        self.locate(name).is_ok()
    }

    /// Where member `name` lives.
    pub fn locate(&self, name: &str) -> Result<BlobLocation> {
        let missing = || Error::archive(self.path(), format!("{name} is missing"));
        let clean = clean_name(name)
            .ok_or_else(|| Error::archive(self.path(), format!("refusing member name {name:?}")))?;
        match self {
            Blobs::Dir(dir) => {
                let path = dir.join(&clean);
                let meta = std::fs::metadata(&path).map_err(|_| missing())?;
                if !meta.is_file() {
                    return Err(missing());
                }
                Ok(BlobLocation {
                    path,
                    offset: 0,
                    len: meta.len(),
                })
            }
            Blobs::Tar { path, members, .. } => {
                let (offset, len) = *members.get(&clean).ok_or_else(missing)?;
                Ok(BlobLocation {
                    path: path.clone(),
                    offset,
                    len,
                })
            }
        }
    }

    /// Read a (small) JSON document member.
    pub fn read_document(&self, name: &str) -> Result<Vec<u8>> {
        let loc = self.locate(name)?;
        if loc.len > MAX_DOCUMENT {
            return Err(Error::archive(
                self.path(),
                format!(
                    "{name} is {} bytes, larger than any image document should be",
                    loc.len
                ),
            ));
        }
        let mut buf = Vec::with_capacity(loc.len as usize);
        loc.open()?.read_to_end(&mut buf).at(&loc.path)?;
        Ok(buf)
    }

    /// The path of a blob named by digest in an OCI layout.
    pub fn blob_name(digest: &str) -> Option<String> {
        crate::digest::sha256_hex(digest).map(|h| format!("blobs/sha256/{h}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_cleaned() {
        assert_eq!(clean_name("./a/b").as_deref(), Some("a/b"));
        assert_eq!(clean_name("/a//b/").as_deref(), Some("a/b"));
        assert_eq!(clean_name("a/../b").as_deref(), Some("b"));
        assert_eq!(clean_name("a/../../b"), None);
        assert_eq!(clean_name("./"), None);
    }

    #[test]
    fn tar_members_are_indexed_and_symlinks_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        let mut b = tar::Builder::new(File::create(&p).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "x/layer.tar", &b"hello"[..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "y/layer.tar", "../x/layer.tar")
            .unwrap();
        b.into_inner().unwrap();
        let blobs = Blobs::tar(&p).unwrap();
        let mut s = String::new();
        blobs
            .locate("y/layer.tar")
            .unwrap()
            .open()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello");
        assert!(blobs.locate("../x").is_err());
        assert!(!blobs.exists("z"));
    }

    #[test]
    fn dir_refuses_escaping_names() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::dir(dir.path());
        assert!(blobs.locate("../etc/passwd").is_err());
    }
}
