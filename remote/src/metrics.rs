//! Refresher metrics (feature `metrics`), recorded through the [`metrics`]
//! facade after each scan; without the feature these hooks are empty.
//!
//! | metric | kind |
//! | --- | --- |
//! | `storectl_refresh_duration_seconds` | histogram: each scan's duration |
//! | `storectl_refresh_scans_total` | counter: scans run (failed ones too) |
//! | `storectl_refresh_errors_total` | counter: failed ticks (share missing, scan error) |
//! | `storectl_share_pending_entries` | gauge: entries on the share not (yet) valid |
//!
//! This crate installs no recorder: a daemon installs its own (for example
//! `metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()`),
//! calls [`describe`] once, and renders on scrape; see
//! `storectl_storage::metrics` for the transfer and store metrics.

/// Histogram: seconds per scan.
pub const REFRESH_DURATION: &str = "storectl_refresh_duration_seconds";
/// Counter: scans run.
pub const REFRESH_SCANS: &str = "storectl_refresh_scans_total";
/// Counter: failed ticks.
pub const REFRESH_ERRORS: &str = "storectl_refresh_errors_total";
/// Gauge: entries on the share that are not (yet) valid.
pub const SHARE_PENDING: &str = "storectl_share_pending_entries";

/// Describe this module's metrics to the installed recorder (optional).
#[cfg(feature = "metrics")]
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        REFRESH_DURATION,
        Unit::Seconds,
        "Duration of each scan of the share."
    );
    describe_counter!(REFRESH_SCANS, Unit::Count, "Scans of the share.");
    describe_counter!(
        REFRESH_ERRORS,
        Unit::Count,
        "Failed refreshes (share missing, scan error)."
    );
    describe_gauge!(
        SHARE_PENDING,
        Unit::Count,
        "Entries on the share that are not (yet) valid."
    );
}

/// A scan finished (`ok` or not) in `duration`, leaving `pending` entries.
#[cfg(feature = "metrics")]
pub(crate) fn scanned(duration: std::time::Duration, ok: bool, pending: usize) {
    metrics::histogram!(REFRESH_DURATION).record(duration.as_secs_f64());
    metrics::counter!(REFRESH_SCANS).increment(1);
    if ok {
        metrics::gauge!(SHARE_PENDING).set(pending as f64);
    } else {
        failed();
    }
}

/// A tick failed.
#[cfg(feature = "metrics")]
pub(crate) fn failed() {
    metrics::counter!(REFRESH_ERRORS).increment(1);
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn scanned(_duration: std::time::Duration, _ok: bool, _pending: usize) {}

#[cfg(not(feature = "metrics"))]
pub(crate) fn failed() {}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::fs;
    use std::sync::Arc;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::MetricKind;
    use storectl_storage::{Role, RootConfig, Store, StoreOptions};

    use super::*;
    use crate::{RefreshOptions, Refresher};

    #[test]
    fn scans_pending_entries_and_errors_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        fs::create_dir(&share).unwrap();
        let cfg = RootConfig::default();
        crate::share::init(&dir.path().join("w"), &share, Role::Writer, cfg.clone()).unwrap();
        let root = dir.path().join("r");
        crate::share::init(&root, &share, Role::Reader, cfg).unwrap();
        // A layer whose parent is not there: pending.
        let (id, parent) = ("b".repeat(64), "a".repeat(64));
        fs::create_dir_all(share.join("overlay").join(&id).join("diff")).unwrap();
        fs::write(
            share.join("overlay").join(&id).join("link"),
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        )
        .unwrap();
        let record = share.join("overlay-layers").join(&id);
        fs::create_dir_all(&record).unwrap();
        fs::write(
            record.join("layer.json"),
            format!(r#"{{"id":"{id}","parent":"{parent}"}}"#),
        )
        .unwrap();

        let store = Arc::new(Store::open(StoreOptions::new(&root)).unwrap());
        let opts = RefreshOptions::from_config(&store.layout().config);
        let refresher = Refresher::new(store, opts).unwrap();
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            refresher.scan_now().unwrap();
            // The share goes away (an NFS mount dropped): an error.
            fs::rename(share.join("overlay-images"), share.join("gone")).unwrap();
            assert!(refresher.scan_now().is_err());
        });
        let values: Vec<(String, MetricKind, DebugValue)> = snap
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, _, _, v)| (k.key().name().to_string(), k.kind(), v))
            .collect();
        let find = |name: &str| {
            values
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, kind, v)| (*kind, v))
                .unwrap_or_else(|| panic!("{name} missing: {values:?}"))
        };
        assert_eq!(
            find(REFRESH_SCANS),
            (MetricKind::Counter, &DebugValue::Counter(1))
        );
        assert_eq!(
            find(REFRESH_ERRORS),
            (MetricKind::Counter, &DebugValue::Counter(1))
        );
        assert_eq!(
            find(SHARE_PENDING),
            (MetricKind::Gauge, &DebugValue::Gauge(1.0.into()))
        );
        match find(REFRESH_DURATION) {
            (MetricKind::Histogram, DebugValue::Histogram(v)) => assert_eq!(v.len(), 1),
            other => panic!("{other:?}"),
        }
    }
}
