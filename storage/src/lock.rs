//! The single-writer lock: an exclusive `flock` on a lock file, released by the
//! OS when the holder exits or crashes. The holder writes `host pid` into the
//! file so a second writer can say who holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::{Error, IoContext, Result};

/// A held writer lock; dropped = released.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
    path: PathBuf,
}

impl WriterLock {
    /// Take the lock at `path` without waiting. Held by someone else →
    /// [`Error::Locked`] naming the holder; a store we cannot write →
    /// [`Error::ReadOnlyStore`].
    pub fn acquire(path: &Path) -> Result<WriterLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    Error::ReadOnlyStore {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    }
                }
                _ => Error::io(path, e),
            })?;
        if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
            if e == rustix::io::Errno::WOULDBLOCK {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                    holder: if holder.is_empty() {
                        "unknown holder".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            return Err(Error::io(path, e.into()));
        }
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let me = format!("host {host} pid {}\n", std::process::id());
        file.set_len(0).at(path)?;
        file.rewind().at(path)?;
        file.write_all(me.as_bytes()).at(path)?;
        Ok(WriterLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_writer_is_told_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let held = WriterLock::acquire(&p).unwrap();
        // flock locks belong to the open file description: a second open conflicts.
        match WriterLock::acquire(&p) {
            Err(Error::Locked { holder, .. }) => {
                assert!(
                    holder.contains(&format!("pid {}", std::process::id())),
                    "{holder}"
                )
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(held);
        WriterLock::acquire(&p).unwrap();
    }
}
