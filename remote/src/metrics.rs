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
