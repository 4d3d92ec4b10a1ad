//! Progress events, in containerd's transfer-service shape.
//!
//! Every blob of an operation moves through `waiting → downloading →
//! extracting → complete` (or straight to `already exists`); the operation
//! itself reports `resolving` at the start, `saved` when an export finished
//! writing, and `done` at the end. Events go to a [`Reporter`]; the library
//! ships [`NoopReporter`], the CLI renders bars or JSON lines, a daemon can
//! export metrics.
//!
//! Byte counts come from [`ProgressReader`], a reader wrapper that reports at
//! most once per interval (default 100 ms) per blob.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What happened to a blob or an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EventKind {
    #[serde(rename = "resolving")]
    Resolving,
    #[serde(rename = "waiting")]
    Waiting,
    #[serde(rename = "downloading")]
    Downloading,
    #[serde(rename = "extracting")]
    Extracting,
    #[serde(rename = "uploading")]
    Uploading,
    #[serde(rename = "complete")]
    Complete,
    #[serde(rename = "already exists")]
    AlreadyExists,
    #[serde(rename = "saved")]
    Saved,
    #[serde(rename = "done")]
    Done,
}

impl EventKind {
    /// The event's name as it appears in JSON (`already exists`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Resolving => "resolving",
            EventKind::Waiting => "waiting",
            EventKind::Downloading => "downloading",
            EventKind::Extracting => "extracting",
            EventKind::Uploading => "uploading",
            EventKind::Complete => "complete",
            EventKind::AlreadyExists => "already exists",
            EventKind::Saved => "saved",
            EventKind::Done => "done",
        }
    }
}

/// One progress event: `{event, name, parents, progress, total}`, and for a
/// blob `layer` and `compressed` when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgressEvent {
    pub event: EventKind,
    /// The blob digest (`sha256:…`) or, for operation events, the image reference or id.
    pub name: String,
    /// Names of the enclosing nodes (e.g. the image reference for a layer).
    pub parents: Vec<String>,
    /// Bytes done so far.
    pub progress: u64,
    /// Bytes in all (0 when unknown).
    pub total: u64,
    /// For a blob event: the id of the layer the blob is (or becomes) in the
    /// store — the id `ls --layers`, `verify` and `rmi` show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// For a blob event: whether the bytes counted are compressed (`None`
    /// until known: a blob's compression is found when it is opened).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compressed: Option<bool>,
}

/// Receives progress events. Called from worker threads.
pub trait Reporter: Send + Sync {
    fn report(&self, event: &ProgressEvent);
}

/// A reporter that drops everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopReporter;

impl Reporter for NoopReporter {
    fn report(&self, _event: &ProgressEvent) {}
}

impl<F: Fn(&ProgressEvent) + Send + Sync> Reporter for F {
    fn report(&self, event: &ProgressEvent) {
        self(event)
    }
}

/// The default minimum time between two byte-count events of one blob.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

/// Counts bytes read through it and reports them as `event` at most once per
/// `interval`. [`ProgressReader::flush_report`] reports the final count.
pub struct ProgressReader<'a, R> {
    inner: R,
    reporter: &'a dyn Reporter,
    event: ProgressEvent,
    interval: Duration,
    last: Option<Instant>,
}

impl<'a, R: Read> ProgressReader<'a, R> {
    /// `event` is the template (kind, name, parents, total); its `progress` is
    /// overwritten by the byte count.
    pub fn new(
        inner: R,
        reporter: &'a dyn Reporter,
        event: ProgressEvent,
        interval: Duration,
    ) -> Self {
        ProgressReader {
            inner,
            reporter,
            event,
            interval,
            last: None,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.event.progress
    }

    /// Report the current count now, whatever the interval.
    pub fn flush_report(&mut self) {
        self.last = Some(Instant::now());
        self.reporter.report(&self.event);
    }
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.event.progress += n as u64;
        let due = self.last.is_none_or(|t| t.elapsed() >= self.interval);
        if due {
            self.flush_report();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[test]
    fn reader_throttles_and_counts() {
        let seen = Mutex::new(Vec::new());
        let rep = |e: &ProgressEvent| seen.lock().push(e.progress);
        let data = vec![1u8; 1 << 20];
        let template = ProgressEvent {
            event: EventKind::Extracting,
            name: "sha256:x".into(),
            parents: vec![],
            progress: 0,
            total: data.len() as u64,
            layer: None,
            compressed: None,
        };
        let mut r = ProgressReader::new(&data[..], &rep, template, Duration::from_secs(3600));
        let mut buf = [0u8; 1000];
        while r.read(&mut buf).unwrap() > 0 {}
        r.flush_report();
        let seen = seen.into_inner();
        // One report at the first read (nothing before), then only the final one.
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(*seen.last().unwrap(), 1 << 20);
    }

    #[test]
    fn event_names_serialize_like_containerd() {
        let e = ProgressEvent {
            event: EventKind::AlreadyExists,
            name: "n".into(),
            parents: vec!["p".into()],
            progress: 1,
            total: 2,
            layer: None,
            compressed: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "already exists");
        assert_eq!(v["parents"][0], "p");
        assert_eq!(EventKind::AlreadyExists.as_str(), "already exists");
    }
}
