//! Small rendering helpers shared by the verbs.

use std::path::Path;

use std::sync::Arc;

use anyhow::Context;
use storectl_remote::{RefreshOptions, Refresher};
use storectl_storage::{Role, Store, StoreOptions};

/// Open the store at `root`, with the root in the error's context.
pub fn open_store(root: &Path) -> anyhow::Result<Store> {
    Store::open(StoreOptions::new(root))
        .with_context(|| format!("opening store {}", root.display()))
}

/// Open the store and, on a reader, scan the share once so shared images are
/// visible. Returns the refresher too (for verbs that keep watching).
pub fn open_store_scanned(root: &Path) -> anyhow::Result<(Arc<Store>, Option<Arc<Refresher>>)> {
    let store = Arc::new(open_store(root)?);
    if store.layout().role() != Role::Reader {
        return Ok((store, None));
    }
    let opts = RefreshOptions::from_config(&store.layout().config);
    let refresher = Arc::new(Refresher::new(Arc::clone(&store), opts)?);
    refresher.scan_now().context("scanning the share")?;
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

/// `2026-11-22T07:40:01.123Z` → `2026-11-22 07:40:01`.
pub fn short_time(rfc3339: Option<&str>) -> String {
    match rfc3339 {
        Some(t) if t.len() >= 19 => format!("{} {}", &t[..10], &t[11..19]),
        Some(t) => t.to_string(),
        None => "-".into(),
    }
}

/// Print one line on stdout.
#[allow(clippy::print_stdout)]
pub fn out(line: impl std::fmt::Display) {
    println!("{line}");
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
    fn times_shorten() {
        assert_eq!(
            short_time(Some("2026-11-22T07:40:01.123Z")),
            "2026-11-22 07:40:01"
        );
        assert_eq!(short_time(None), "-");
    }
}
