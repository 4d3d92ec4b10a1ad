//! The single-writer lock: an exclusive `flock` on a lock file, released by the
//! OS when the holder exits or crashes. The holder writes `host pid` into the
//! file so a waiting writer can say who holds it.
//!
//! A second writer waits for the lock, as podman's do ([`LockWait`]): forever
//! by default, or up to a timeout, after which it gets [`Error::Locked`]
//! naming the holder. After [`LockWait::notice_after`] of waiting it calls
//! [`LockWait::on_wait`] once with the holder, so a front end can say why it
//! is not moving (the library itself never prints).
//!
//! A holder that lets go normally (not by crashing) appends ` released` to
//! the file; the next holder learns from [`WriterLock::previous_released`]
//! whether anything may have been left half done, and so whether it must
//! sweep the store before trusting it.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

use crate::error::{Error, IoContext, Result};

/// Called once a writer has waited [`LockWait::notice_after`] for the lock,
/// with the holder as the lock file names it (`host H pid P`).
pub type LockNotice = Arc<dyn Fn(&LockHolder) + Send + Sync>;

/// Who holds a writer lock, from the lock file's `host H pid P`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub host: Option<String>,
    pub pid: Option<u32>,
}

impl LockHolder {
    /// Parse the lock file's text (pure). Anything else gives an unknown holder.
    pub fn parse(text: &str) -> LockHolder {
        let mut holder = LockHolder {
            host: None,
            pid: None,
        };
        let mut words = text.split_whitespace();
        while let Some(key) = words.next() {
            match (key, words.next()) {
                ("host", Some(h)) => holder.host = Some(h.to_string()),
                ("pid", Some(p)) => holder.pid = p.parse().ok(),
                _ => {}
            }
        }
        holder
    }
}

impl fmt::Display for LockHolder {
    /// `host H pid P`, or `an unknown holder`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.pid) {
            (None, None) => f.write_str("an unknown holder"),
            (host, pid) => {
                let host = host.as_deref().unwrap_or("?");
                match pid {
                    Some(p) => write!(f, "host {host} pid {p}"),
                    None => write!(f, "host {host}"),
                }
            }
        }
    }
}

/// How a writer waits for the lock another writer holds.
#[derive(Clone)]
pub struct LockWait {
    /// Give up after this long ([`Error::Locked`]); `None` = wait forever
    /// (podman's behaviour, the default); zero = do not wait at all.
    pub timeout: Option<Duration>,
    /// When to call `on_wait`.
    pub notice_after: Duration,
    /// Called once after `notice_after` of waiting.
    pub on_wait: Option<LockNotice>,
}

impl Default for LockWait {
    fn default() -> Self {
        LockWait {
            timeout: None,
            notice_after: Duration::from_secs(1),
            on_wait: None,
        }
    }
}

impl fmt::Debug for LockWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockWait")
            .field("timeout", &self.timeout)
            .field("notice_after", &self.notice_after)
            .field("on_wait", &self.on_wait.as_ref().map(|_| "callback"))
            .finish()
    }
}

/// A held writer lock; dropped = released.
#[derive(Debug)]
pub struct WriterLock {
    file: File,
    path: PathBuf,
    /// What this holder wrote (`host H pid P`).
    me: String,
    previous_released: bool,
    /// Do not mark the file `released` on drop: the next holder sweeps.
    unreleased: bool,
}

/// The word a holder appends when it lets go normally.
const RELEASED: &str = "released";

/// How often a writer with a timeout tries the lock again.
const POLL: Duration = Duration::from_millis(25);

impl WriterLock {
    /// Take the lock at `path` without waiting. Held by someone else →
    /// [`Error::Locked`] naming the holder; a store we cannot write →
    /// [`Error::ReadOnlyStore`].
    pub fn acquire(path: &Path) -> Result<WriterLock> {
        WriterLock::acquire_waiting(
            path,
            &LockWait {
                timeout: Some(Duration::ZERO),
                ..LockWait::default()
            },
        )
    }

    /// Take the lock at `path`, waiting for its holder as `wait` says.
    pub fn acquire_waiting(path: &Path, wait: &LockWait) -> Result<WriterLock> {
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
        let started = Instant::now();
        let mut noticed = false;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {}
                Err(e) => return Err(Error::io(path, e.into())),
            }
            let waited = started.elapsed();
            if wait.timeout.is_some_and(|t| waited >= t) {
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                    holder: holder_of(&mut file).to_string(),
                });
            }
            if !noticed && waited >= wait.notice_after {
                noticed = true;
                if let Some(on_wait) = &wait.on_wait {
                    on_wait(&holder_of(&mut file));
                }
            }
            if wait.timeout.is_none() && noticed {
                // Nothing left to report or give up on: sleep in the kernel
                // until the holder lets go (or dies).
                flock(&file, FlockOperation::LockExclusive)
                    .map_err(|e| Error::io(path, e.into()))?;
                break;
            }
            let mut pause = POLL;
            if let Some(t) = wait.timeout {
                pause = pause.min(t.saturating_sub(waited));
            }
            if !noticed {
                pause = pause.min(wait.notice_after.saturating_sub(waited));
            }
            std::thread::sleep(pause.max(Duration::from_millis(1)));
        }
        let mut previous = String::new();
        file.rewind().at(path)?;
        let _ = (&file).take(4096).read_to_string(&mut previous);
        let previous_released = released(&previous);
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let me = format!("host {host} pid {}", std::process::id());
        file.set_len(0).at(path)?;
        file.rewind().at(path)?;
        file.write_all(format!("{me}\n").as_bytes()).at(path)?;
        Ok(WriterLock {
            file,
            path: path.to_path_buf(),
            me,
            previous_released,
            unreleased: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Did the previous holder let go normally? False after a crash (or
    /// `kill -9`) in the middle of a change, and for a new or old-format
    /// lock file: then the store may hold debris and must be swept.
    pub fn previous_released(&self) -> bool {
        self.previous_released
    }

    /// Let go as a crashed holder would: the next holder sweeps the store
    /// (for a change that failed half done and could not be taken back).
    pub fn leave_unreleased(&mut self) {
        self.unreleased = true;
    }
}

impl Drop for WriterLock {
    /// Mark the lock file `released` (not while unwinding from a panic: what
    /// the panic interrupted may be half done). Best effort; the kernel
    /// drops the `flock` when the file closes.
    fn drop(&mut self) {
        if self.unreleased || std::thread::panicking() {
            return;
        }
        let text = format!("{} {RELEASED}\n", self.me);
        let _ = self.file.set_len(0);
        let _ = self.file.rewind();
        let _ = self.file.write_all(text.as_bytes());
    }
}

/// Does a lock file's text say its last holder let go normally? Pure.
pub(crate) fn released(text: &str) -> bool {
    text.split_whitespace().any(|w| w == RELEASED)
}

/// Did the last holder of the lock at `path` let go normally? Read without
/// taking the lock (a holder now, or a crashed one, says no).
pub(crate) fn last_released(path: &Path) -> bool {
    crate::fsutil::read_small_file(path, 4096)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|t| released(&t))
}

/// The holder a lock file names (best effort: unknown when unreadable).
fn holder_of(file: &mut File) -> LockHolder {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.take(4096).read_to_string(&mut text);
    LockHolder::parse(&text)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

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

    #[test]
    fn the_next_holder_learns_whether_the_last_one_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let first = WriterLock::acquire(&p).unwrap();
        assert!(!first.previous_released(), "a new lock file: sweep once");
        drop(first);
        let second = WriterLock::acquire(&p).unwrap();
        assert!(second.previous_released());
        // A holder that crashes never marks the file.
        std::mem::forget(second);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains(RELEASED), "{text}");
        assert_eq!(LockHolder::parse(&text).pid, Some(std::process::id()));
    }

    #[test]
    fn holders_parse() {
        let h = LockHolder::parse("host box-1 pid 4242\n");
        assert_eq!(h.host.as_deref(), Some("box-1"));
        assert_eq!(h.pid, Some(4242));
        assert_eq!(h.to_string(), "host box-1 pid 4242");
        assert_eq!(LockHolder::parse("").to_string(), "an unknown holder");
        assert_eq!(
            LockHolder::parse("pid x host").to_string(),
            "an unknown holder"
        );
    }

    #[test]
    fn a_writer_waits_reports_once_and_gets_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let held = WriterLock::acquire(&p).unwrap();
        let notices = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&notices);
        let wait = LockWait {
            timeout: None,
            notice_after: Duration::from_millis(100),
            on_wait: Some(Arc::new(move |h: &LockHolder| {
                seen.lock().unwrap().push(h.clone())
            })),
        };
        let started = Instant::now();
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || WriterLock::acquire_waiting(&p, &wait).map(|_| ()))
        };
        std::thread::sleep(Duration::from_millis(400));
        assert!(!waiter.is_finished(), "the second writer did not wait");
        drop(held);
        waiter.join().unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(400));
        let notices = notices.lock().unwrap();
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert_eq!(notices[0].pid, Some(std::process::id()));
    }

    #[test]
    fn a_writer_gives_up_after_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let _held = WriterLock::acquire(&p).unwrap();
        let started = Instant::now();
        let wait = LockWait {
            timeout: Some(Duration::from_millis(300)),
            ..LockWait::default()
        };
        match WriterLock::acquire_waiting(&p, &wait) {
            Err(Error::Locked { holder, .. }) => {
                assert!(holder.contains(&format!("pid {}", std::process::id())))
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }
}
