//! Prometheus-style metrics for transfers and the store (feature `metrics`).
//!
//! Everything is recorded through the [`metrics`] facade: this crate installs
//! no recorder and exports nothing. Without a recorder every call is a cheap
//! no-op; a process that wants the numbers installs one of its own choice.
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `storectl_transfer_progress_percent` | gauge, 0–100 | `operation`, `layer` |
//! | `storectl_transfer_bytes_total` | counter | `operation` |
//! | `storectl_transfer_layers_total` | counter | `operation`, `result` = `complete` \| `already_exists` |
//! | `storectl_images` | gauge | `source` = `local` \| `shared` |
//! | `storectl_layers` | gauge | `source` = `local` \| `shared` |
//!
//! `operation` is what the caller names the transfer (`pull`, `load`, `push`,
//! `save`); `layer` is the blob digest the progress events carry. Bytes are
//! counted from the growth of each blob's `progress` (what was downloaded,
//! read from an archive, uploaded or written), so a completed blob adds
//! exactly its size; a blob that `already exists` adds nothing.
//!
//! ## In a daemon
//!
//! ```no_run
//! use storectl_storage::metrics::{describe, record_store, MetricsReporter};
//! use storectl_storage::{LoadOptions, NoopReporter, Store, StoreOptions};
//!
//! // Once, at start: the daemon installs its own recorder (any `metrics`
//! // exporter works; `storectl serve` uses metrics-exporter-prometheus).
//! let recorder = metrics_util::debugging::DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! recorder.install().expect("no other recorder");
//! describe();
//!
//! // Per transfer: record, and pass the events on to the daemon's own reporter.
//! let store = Store::open(StoreOptions::new("/var/lib/storectl"))?;
//! let reporter = MetricsReporter::wrap("load", NoopReporter);
//! let image = store.load("busybox.tar", &LoadOptions::default(), &reporter)?;
//! // (storectl-transfer's pull, push and save take the same reporter.)
//!
//! // When scraped: refresh the store gauges, then render.
//! record_store(&store);
//! let _values = snapshotter.snapshot();
//! # Ok::<(), storectl_storage::Error>(())
//! ```
//!
//! The progress gauge keeps one series per layer ever transferred; a
//! long-running daemon that transfers many distinct layers should let its
//! exporter expire idle gauges (`PrometheusBuilder::idle_timeout`).

use std::collections::HashMap;

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use parking_lot::Mutex;

use crate::progress::{EventKind, NoopReporter, ProgressEvent, Reporter};
use crate::Store;

/// Gauge: a blob's progress in percent (0–100), `{operation, layer}`.
pub const TRANSFER_PROGRESS: &str = "storectl_transfer_progress_percent";
/// Counter: bytes moved, `{operation}`.
pub const TRANSFER_BYTES: &str = "storectl_transfer_bytes_total";
/// Counter: blobs finished, `{operation, result}`.
pub const TRANSFER_LAYERS: &str = "storectl_transfer_layers_total";
/// Gauge: images in the store, `{source}`.
pub const IMAGES: &str = "storectl_images";
/// Gauge: layers in the store, `{source}`.
pub const LAYERS: &str = "storectl_layers";

/// Describe every metric of this module to the installed recorder (help text
/// and units). Call once after installing it; optional.
pub fn describe() {
    describe_gauge!(
        TRANSFER_PROGRESS,
        Unit::Percent,
        "Progress of a blob of a transfer, 0-100."
    );
    describe_counter!(
        TRANSFER_BYTES,
        Unit::Bytes,
        "Bytes moved by transfers (downloaded, read, uploaded or written)."
    );
    describe_counter!(
        TRANSFER_LAYERS,
        Unit::Count,
        "Blobs finished by transfers, by result (complete, already_exists)."
    );
    describe_gauge!(IMAGES, Unit::Count, "Images in the store, local or shared.");
    describe_gauge!(LAYERS, Unit::Count, "Layers in the store, local or shared.");
}

/// What the reporter remembers of one blob.
#[derive(Debug, Default)]
struct BlobState {
    /// The highest byte count seen (already added to the counter).
    progress: u64,
    finished: bool,
}

/// A [`Reporter`] that records progress events as metrics, then passes each
/// event on to the reporter it wraps (a renderer, or [`NoopReporter`]).
///
/// Use one per transfer: it remembers each blob's byte count to add only the
/// growth to `storectl_transfer_bytes_total`.
#[derive(Debug)]
pub struct MetricsReporter<R = NoopReporter> {
    operation: String,
    inner: R,
    blobs: Mutex<HashMap<String, BlobState>>,
}

impl MetricsReporter<NoopReporter> {
    /// Record only, for an operation named `operation` (`pull`, `load`, …).
    pub fn new(operation: impl Into<String>) -> Self {
        MetricsReporter::wrap(operation, NoopReporter)
    }
}

impl<R: Reporter> MetricsReporter<R> {
    /// Record, and pass every event on to `inner`.
    pub fn wrap(operation: impl Into<String>, inner: R) -> Self {
        MetricsReporter {
            operation: operation.into(),
            inner,
            blobs: Mutex::new(HashMap::new()),
        }
    }

    /// The wrapped reporter.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// The wrapped reporter, unwrapped.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn record(&self, e: &ProgressEvent) {
        // Operation events (the reference, the image id) are not blobs.
        if matches!(
            e.event,
            EventKind::Resolving | EventKind::Saved | EventKind::Done
        ) {
            return;
        }
        let mut blobs = self.blobs.lock();
        let blob = blobs.entry(e.name.clone()).or_default();
        if blob.finished {
            return;
        }
        let op = self.operation.clone();
        let percent = |done: f64| {
            gauge!(TRANSFER_PROGRESS, "operation" => op.clone(), "layer" => e.name.clone())
                .set(done)
        };
        let mut add_bytes = |to: u64| {
            if to > blob.progress {
                counter!(TRANSFER_BYTES, "operation" => op.clone()).increment(to - blob.progress);
                blob.progress = to;
            }
        };
        match e.event {
            EventKind::Waiting => percent(0.0),
            EventKind::Downloading | EventKind::Extracting | EventKind::Uploading => {
                add_bytes(e.progress);
                if e.total > 0 {
                    percent(e.progress.min(e.total) as f64 * 100.0 / e.total as f64);
                }
            }
            EventKind::Complete | EventKind::AlreadyExists => {
                let result = if e.event == EventKind::Complete {
                    add_bytes(e.progress.max(e.total));
                    "complete"
                } else {
                    "already_exists"
                };
                blob.finished = true;
                percent(100.0);
                counter!(TRANSFER_LAYERS, "operation" => op.clone(), "result" => result)
                    .increment(1);
            }
            EventKind::Resolving | EventKind::Saved | EventKind::Done => {}
        }
    }
}

impl<R: Reporter> Reporter for MetricsReporter<R> {
    fn report(&self, event: &ProgressEvent) {
        self.record(event);
        self.inner.report(event);
    }
}

/// Set `storectl_images{source}` and `storectl_layers{source}` from the
/// store's in-memory state (`shared` = seen through a share). Cheap: counts
/// under the state's read lock; call it before each scrape.
pub fn record_store(store: &Store) {
    let (images, layers) = store.with_state(|s| {
        let images = s.images.shared_keys().count();
        let layers = s.layers.shared_keys().count();
        (
            (s.images.len() - images, images),
            (s.layers.len() - layers, layers),
        )
    });
    for (name, (local, shared)) in [(IMAGES, images), (LAYERS, layers)] {
        gauge!(name, "source" => "local").set(local as f64);
        gauge!(name, "source" => "shared").set(shared as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use metrics_util::MetricKind;

    fn ev(event: EventKind, name: &str, progress: u64, total: u64) -> ProgressEvent {
        ProgressEvent {
            event,
            name: name.into(),
            parents: vec!["img".into()],
            progress,
            total,
            layer: None,
            compressed: None,
        }
    }

    type Entries = Vec<(
        metrics_util::CompositeKey,
        Option<Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )>;

    /// Take a snapshot (it resets the recorder's values).
    fn snapshot(snap: &Snapshotter) -> Entries {
        snap.snapshot().into_vec()
    }

    /// The value of `name` with exactly `labels` in the snapshot.
    fn value(entries: &Entries, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = entries
            .iter()
            .filter(|(k, _, _, _)| {
                let key = k.key();
                let mut have: Vec<(&str, &str)> =
                    key.labels().map(|l| (l.key(), l.value())).collect();
                let mut want = labels.to_vec();
                have.sort();
                want.sort();
                k.kind() == kind && key.name() == name && have == want
            })
            .map(|(_, _, _, v)| match v {
                DebugValue::Counter(c) => *c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            })
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0]
    }

    #[test]
    fn progress_reaches_100_and_bytes_add_up_to_the_blob() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let seen = Mutex::new(0usize);
        let reporter = MetricsReporter::wrap("pull", |_: &ProgressEvent| *seen.lock() += 1);
        let events = [
            ev(EventKind::Resolving, "ref", 0, 0),
            ev(EventKind::Waiting, "sha256:a", 0, 1000),
            ev(EventKind::Waiting, "sha256:b", 0, 700),
            ev(EventKind::Downloading, "sha256:a", 0, 1000),
            ev(EventKind::Downloading, "sha256:a", 250, 1000),
            ev(EventKind::AlreadyExists, "sha256:b", 700, 700),
            // A stale (lower) count adds nothing.
            ev(EventKind::Downloading, "sha256:a", 200, 1000),
            ev(EventKind::Downloading, "sha256:a", 900, 1000),
            ev(EventKind::Complete, "sha256:a", 1000, 1000),
            // A repeated completion counts once.
            ev(EventKind::Complete, "sha256:a", 1000, 1000),
            ev(EventKind::Done, "image-id", 0, 0),
        ];
        metrics::with_local_recorder(&recorder, || {
            reporter.report(&events[0]);
            reporter.report(&events[1]);
            reporter.report(&events[2]);
            reporter.report(&events[3]);
            reporter.report(&events[4]);
            let mid = snapshot(&snap);
            assert_eq!(
                value(
                    &mid,
                    MetricKind::Counter,
                    TRANSFER_BYTES,
                    &[("operation", "pull")]
                ),
                250.0
            );
            let mid = value(
                &mid,
                MetricKind::Gauge,
                TRANSFER_PROGRESS,
                &[("operation", "pull"), ("layer", "sha256:a")],
            );
            assert_eq!(mid, 25.0);
            for e in &events[5..] {
                reporter.report(e);
            }
        });
        assert_eq!(*seen.lock(), events.len(), "every event is passed on");
        // Values since the first snapshot (taking one resets them).
        let snap = snapshot(&snap);
        let gauge = |layer| {
            value(
                &snap,
                MetricKind::Gauge,
                TRANSFER_PROGRESS,
                &[("operation", "pull"), ("layer", layer)],
            )
        };
        assert_eq!(gauge("sha256:a"), 100.0);
        assert_eq!(gauge("sha256:b"), 100.0);
        let bytes = value(
            &snap,
            MetricKind::Counter,
            TRANSFER_BYTES,
            &[("operation", "pull")],
        );
        assert_eq!(
            250.0 + bytes,
            1000.0,
            "the downloaded blob's size, not the existing one's"
        );
        let layers = |result| {
            value(
                &snap,
                MetricKind::Counter,
                TRANSFER_LAYERS,
                &[("operation", "pull"), ("result", result)],
            )
        };
        assert_eq!(layers("complete"), 1.0);
        assert_eq!(layers("already_exists"), 1.0);
    }

    #[test]
    #[ignore = "needs root"]
    fn a_load_through_the_reporter_counts_every_blob_byte() {
        assert!(
            rustix::process::geteuid().is_root(),
            "needs root: layer entries owned by root"
        );
        let tmp = tempfile::tempdir().unwrap();
        let img = storectl_fixtures::Image::new(vec![
            storectl_fixtures::Layer::new(
                vec![storectl_fixtures::Entry::file("a", vec![7u8; 50_000])],
                storectl_fixtures::Compression::Gzip,
            ),
            storectl_fixtures::Layer::new(
                vec![storectl_fixtures::Entry::file("b", "hello\n")],
                storectl_fixtures::Compression::None,
            ),
        ])
        .named("localhost/metrics:v1");
        let layout = tmp.path().join("layout");
        let built = storectl_fixtures::write_oci_layout(&layout, std::slice::from_ref(&img))
            .unwrap()
            .remove(0);
        let store = Store::open(crate::StoreOptions::new(tmp.path().join("root"))).unwrap();
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        // Layers import on a thread pool: a thread-local recorder would miss
        // them. The only global recorder of this test binary.
        recorder.install().unwrap();
        let reporter = MetricsReporter::new("load");
        {
            store
                .load(
                    &layout.display().to_string(),
                    &crate::LoadOptions {
                        jobs: 1,
                        ..Default::default()
                    },
                    &reporter,
                )
                .unwrap();
            record_store(&store);
        }
        let snap = snapshot(&snap);
        let blobs: u64 = built.layers.iter().map(|l| l.blob.len() as u64).sum();
        let bytes = value(
            &snap,
            MetricKind::Counter,
            TRANSFER_BYTES,
            &[("operation", "load")],
        );
        assert_eq!(bytes, blobs as f64);
        for l in &built.layers {
            let p = value(
                &snap,
                MetricKind::Gauge,
                TRANSFER_PROGRESS,
                &[("operation", "load"), ("layer", l.blob_digest.as_str())],
            );
            assert_eq!(p, 100.0, "{}", l.blob_digest);
        }
        let store_gauge =
            |name, source| value(&snap, MetricKind::Gauge, name, &[("source", source)]);
        assert_eq!(store_gauge(IMAGES, "local"), 1.0);
        assert_eq!(store_gauge(IMAGES, "shared"), 0.0);
        assert_eq!(store_gauge(LAYERS, "local"), 2.0);
        assert_eq!(store_gauge(LAYERS, "shared"), 0.0);
    }
}
