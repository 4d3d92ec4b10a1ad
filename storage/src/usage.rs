//! Disk usage as `du --apparent-size` and `du --inodes` count it: every
//! entry's apparent size (`st_size`: files, directories, symlinks, devices)
//! and one inode per entry, a hardlinked file once. Symlinks are never
//! followed and nothing crosses into another filesystem's mount.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};

/// Bytes and inodes of a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.bytes += other.bytes;
        self.inodes += other.inodes;
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(mut self, other: Usage) -> Usage {
        self += other;
        self
    }
}

/// The usage of the tree at `dir` (itself included), as `du -s
/// --apparent-size -B1` and `du -s --inodes` report it. A missing `dir` is
/// empty; an entry that vanishes during the walk is skipped.
pub fn walk(dir: &Path) -> Result<Usage> {
    let top = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Usage::default()),
        Err(e) => return Err(crate::Error::io(dir, e)),
    };
    let mut usage = Usage {
        bytes: top.len(),
        inodes: 1,
    };
    if !top.is_dir() {
        return Ok(usage);
    }
    let dev = top.dev();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(crate::Error::io(&d, e)),
        };
        for entry in entries {
            let entry = entry.at(&d)?;
            let path = entry.path();
            let m = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(crate::Error::io(&path, e)),
            };
            if !m.is_dir() && m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            usage.bytes += m.len();
            usage.inodes += 1;
            if m.is_dir() && m.dev() == dev {
                stack.push(path);
            }
        }
    }
    Ok(usage)
}

/// The mount point of the filesystem holding `path` (absolute, canonical),
/// per a `/proc/self/mountinfo` text: the longest mount point that is
/// `path` or an ancestor (`/` when none is). Pure.
pub fn mount_point(mountinfo: &str, path: &str) -> String {
    let mut best = "/".to_string();
    for line in mountinfo.lines() {
        let Some(mp) = line.split(' ').nth(4) else {
            continue;
        };
        let mp = mp.replace("\\040", " ");
        let inside = path == mp || path.starts_with(&format!("{}/", mp.trim_end_matches('/')));
        if inside && mp.len() >= best.len() {
            best = mp;
        }
    }
    best
}

/// `dir` itself and its direct entries that are not directories (what
/// [`walk`] adds besides its subdirectories' trees).
pub fn walk_shallow(dir: &Path) -> Result<Usage> {
    let top = std::fs::symlink_metadata(dir).at(dir)?;
    let mut usage = Usage {
        bytes: top.len(),
        inodes: 1,
    };
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let path = entry.path();
        let m = std::fs::symlink_metadata(&path).at(&path)?;
        if !m.is_dir() {
            usage.bytes += m.len();
            usage.inodes += 1;
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_the_longest_ancestor() {
        let mi = "22 1 0:21 / / rw - ext4 /dev/sda1 rw\n\
                  30 22 0:25 / /var/lib rw - ext4 /dev/sdb rw\n\
                  31 22 0:26 / /var/lib\\040x rw - tmpfs t rw\n";
        assert_eq!(mount_point(mi, "/var/lib/storectl"), "/var/lib");
        assert_eq!(mount_point(mi, "/var/libx"), "/");
        assert_eq!(mount_point(mi, "/var/lib x/s"), "/var/lib x");
    }

    #[test]
    fn counts_as_du_does() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("t");
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/f"), vec![1u8; 1000]).unwrap();
        std::fs::hard_link(d.join("a/f"), d.join("a/b/g")).unwrap();
        std::os::unix::fs::symlink("0123456789", d.join("s")).unwrap();
        std::os::unix::fs::symlink("/", d.join("root")).unwrap();
        let u = walk(&d).unwrap();
        let dirs: u64 = ["", "a", "a/b"]
            .iter()
            .map(|p| std::fs::metadata(d.join(p)).unwrap().len())
            .sum();
        assert_eq!(u.bytes, dirs + 1000 + 10 + 1);
        assert_eq!(u.inodes, 3 + 1 + 2, "3 dirs, the file once, 2 symlinks");
        let du = |flag: &str| -> Option<u64> {
            let out = std::process::Command::new("du")
                .args(["-s", flag])
                .arg(&d)
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        // `du -b` is `--apparent-size --block-size=1`.
        let (bytes, inodes) = (
            du("-b").expect("du -b"),
            du("--inodes").expect("du --inodes"),
        );
        assert_eq!((u.bytes, u.inodes), (bytes, inodes), "as du says");
        assert_eq!(walk(&tmp.path().join("missing")).unwrap(), Usage::default());
    }
}
