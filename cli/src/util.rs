//! Small rendering helpers shared by the verbs.

use std::path::Path;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use storectl_remote::{RefreshOptions, Refresher};
use storectl_storage::{LockHolder, LockWait, Role, Store, StoreOptions};

/// `--lock-timeout`, set once by `main`; `None` = wait forever.
static LOCK_TIMEOUT: OnceLock<Option<Duration>> = OnceLock::new();

/// Set by the daemon before it opens its store: a long-lived process.
static LONG_LIVED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This process keeps its store open for long (the daemon): a writer's
/// index is read, not mapped (see `StoreOptions::map_index`).
pub fn set_long_lived() {
    LONG_LIVED.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn set_lock_timeout(timeout: Option<Duration>) {
    let _ = LOCK_TIMEOUT.set(timeout);
}

/// Open the store at `root` (with the writer side of sharing, for a
/// writer root), with the root in the error's context. A mutation waits
/// for another writer's lock as `--lock-timeout` says, and says on stderr
/// whom it waits for once that takes more than a second.
pub fn open_store(root: &Path) -> anyhow::Result<Store> {
    let mut opts = StoreOptions::new(root);
    // A one-shot command maps a writer's index files (a third of its
    // opening time at 10,000 images); the daemon reads them.
    opts.map_index = !LONG_LIVED.load(std::sync::atomic::Ordering::Relaxed);
    opts.lock_wait = LockWait {
        timeout: LOCK_TIMEOUT.get().copied().flatten(),
        on_wait: Some(Arc::new(|holder: &LockHolder| {
            // The holder's host comes from a file on the share: escaped.
            let holder = holder.to_string();
            let _ = crate::output::flush();
            let line = format!(
                "storectl: waiting for the store lock held by {}…\n",
                crate::output::escape_controls(&holder)
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        })),
        ..LockWait::default()
    };
    // A writer root keeps containers/storage's index on its share: the
    // writer side of sharing is installed (other roots ignore it).
    storectl_remote::open_store(opts).with_context(|| format!("opening store {}", root.display()))
}

/// A duration as `--lock-timeout` takes it (pure): a number with a unit
/// (`ms`, `s`, `m`, `h`), or a bare number of seconds; `0` = not at all.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 5m, 1h, 0)"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

/// Open the store and, on a reader, scan the share once so shared images are
/// visible. Returns the refresher too (for verbs that keep watching).
pub fn open_store_scanned(root: &Path) -> anyhow::Result<(Arc<Store>, Option<Arc<Refresher>>)> {
    // On a reader, its saved view of the share is read while the store
    // opens: both take tens of milliseconds next to a big share.
    let preload = match storectl_storage::RootConfig::load(root) {
        Ok(cfg) if cfg.role == Role::Reader => cfg.shared.map(|share| {
            let root = root.to_path_buf();
            std::thread::spawn(move || storectl_remote::view::load(&root, &share))
        }),
        _ => None,
    };
    let store = Arc::new(open_store(root)?);
    // Never freed: the process exits when the verb is done, and the kernel
    // takes back a store of 10,000 images at once, where freeing it record
    // by record costs ~20 ms at every exit.
    std::mem::forget(Arc::clone(&store));
    if store.layout().role() != Role::Reader {
        return Ok((store, None));
    }
    let opts = RefreshOptions::from_config(&store.layout().config);
    let refresher = Arc::new(Refresher::new(Arc::clone(&store), opts)?);
    if let Some(view) = preload.and_then(|h| h.join().ok()) {
        refresher.preload_view(view);
    }
    refresher.update().context("scanning the share")?;
    Ok((store, Some(refresher)))
}

/// Bytes as podman prints them: decimal units, three significant digits.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else if v >= 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// The first `n` characters of `s` (never splits a character).
pub fn prefix(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// An RFC 3339 time (`2026-11-22T07:40:01.123Z`, `…+02:00`) as seconds since
/// the epoch; `None` when it is not one.
pub fn parse_rfc3339(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().all(u8::is_ascii_digit).then(|| {
            digits
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, ok: &[u8]| b.get(at).is_some_and(|c| ok.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, s) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && sep(i + 3, b":") => {
            let off = num(i + 1, 2)? * 3600 + num(i + 4, 2)? * 60;
            if *c == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// A duration as podman (go-units' `HumanDuration`) says it: `Less than a
/// second`, `About a minute`, `2 hours`, `3 days`, `2 weeks`, `5 months`, `2 years`.
pub fn human_duration(secs: i64) -> String {
    let hours = (secs as f64 / 3600.0 + 0.5) as i64;
    match secs {
        s if s < 1 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s / 60 == 1 => "About a minute".into(),
        s if s / 60 < 60 => format!("{} minutes", s / 60),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        s => format!("{} years", s / 3600 / 24 / 365),
    }
}

/// Seconds since the epoch now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// An image's `created` as podman's CREATED column: `2 hours ago`; the text
/// itself (escaped by the writer) when it is not an RFC 3339 time, `-` when absent.
pub fn created_ago(created: Option<&str>, now: i64) -> String {
    match created {
        None => "-".into(),
        Some(t) => match parse_rfc3339(t) {
            Some(then) => format!("{} ago", human_duration(now - then)),
            None => t.to_string(),
        },
    }
}

/// Ask for a registry's username and password on the terminal (the password
/// not echoed). `None` when standard input is not a terminal or nothing is typed.
pub fn prompt_credentials(registry: &str) -> Option<storectl_transfer::registry::Credentials> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    if !rustix::termios::isatty(&stdin) {
        return None;
    }
    let _ = crate::output::flush();
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "Username for {}: ",
        crate::output::escape_controls(registry)
    );
    let _ = err.flush();
    let mut user = String::new();
    stdin.lock().read_line(&mut user).ok()?;
    let user = user.trim().to_string();
    if user.is_empty() {
        return None;
    }
    let _ = write!(err, "Password: ");
    let _ = err.flush();
    let saved = rustix::termios::tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet);
    }
    let mut pass = String::new();
    let read = stdin.lock().read_line(&mut pass);
    if let Some(t) = &saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, t);
    }
    let _ = writeln!(err);
    read.ok()?;
    Some(storectl_transfer::registry::Credentials::new(
        user,
        pass.trim_end_matches(['\r', '\n']),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_podman() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(4_260_000), "4.26 MB");
        assert_eq!(human_size(42_600_000), "42.6 MB");
        assert_eq!(human_size(426_000_000), "426 MB");
    }

    #[test]
    fn lock_timeouts_parse() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123456789Z"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-15T00:13:20+02:00"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-13-14T22:13:20Z",
            "２０２３-11-14T22:13:20Z",
            "2023-11-14T22:13:20Zjunk",
            "2023-11-14T22:13:20é",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations_read_like_podman() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(-5), "Less than a second");
        assert_eq!(human_duration(30), "30 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(2 * 3600 + 60), "2 hours");
        assert_eq!(human_duration(3 * 86_400), "3 days");
        assert_eq!(human_duration(20 * 86_400), "2 weeks");
        assert_eq!(human_duration(100 * 86_400), "3 months");
        assert_eq!(human_duration(1000 * 86_400), "2 years");
        assert_eq!(
            created_ago(Some("1970-01-01T02:00:00Z"), 4 * 3600),
            "2 hours ago"
        );
        assert_eq!(created_ago(Some("yesterday é"), 0), "yesterday é");
        assert_eq!(created_ago(None, 0), "-");
    }

    #[test]
    fn prefixes_never_split_a_character() {
        assert_eq!(prefix("abcdef", 3), "abc");
        assert_eq!(prefix("ab", 3), "ab");
        assert_eq!(prefix("ééé", 2), "éé");
    }
}
