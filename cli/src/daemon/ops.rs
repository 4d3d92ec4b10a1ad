//! Long operations (pull, push, load, save) and the clients waiting on them.
//!
//! An [`Op`] runs the synchronous library call on a blocking thread. Its
//! reporter keeps the per-layer map (`{id, status, current, total}`, as
//! iSulad samples it) and a log of containerd-style events. Each client
//! stream ([`Subscriber`]) has its own sampler that sends a `Progress`
//! message every 100 ms tick (never more often): the whole layer map and the
//! events since its previous message, folded per blob. The end (result or
//! failure) goes out at once, carrying the final map and the last events.
//!
//! Pulls of the same reference and platform share one `Op`: a second client
//! subscribes to the running one. When the last subscriber goes away (its
//! stream dropped: the client disconnected or cancelled) the operation is
//! cancelled. Credentials are asked of a subscriber that can answer when a
//! registry challenges; the answer lives only in this operation's registry
//! client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use storectl_storage::progress::{EventKind, ProgressEvent, Reporter};
use storectl_transfer::registry::{Credentials, CredentialsProvider};
use storectl_transfer::Cancel;
use tokio::sync::{mpsc, Notify};
use tonic::Status;

use super::pb::storectl::v1 as pb;

/// The sampling interval of progress streams.
pub const TICK: Duration = Duration::from_millis(100);
/// How long a credentials request waits for the client's answer.
const CREDENTIALS_WAIT: Duration = Duration::from_secs(300);

/// What a stream's receiver gets.
pub type Outbound = Result<pb::OperationMessage, Status>;

/// How an operation ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Done(pb::Result),
    Failed(String),
}

/// How a subscriber answers a credentials request.
pub enum CredSource {
    /// Ask the client over its stream.
    Stream,
    /// Given with the request (CRI `auth`), or none.
    Fixed(Option<Credentials>),
}

struct Sub {
    id: u64,
    tx: mpsc::Sender<Outbound>,
    creds: CredSource,
    /// The client's side of the stream is still open (it can answer).
    listening: bool,
}

#[derive(Default)]
struct State {
    layers: Vec<pb::LayerProgress>,
    index: HashMap<String, usize>,
    events: Vec<pb::TransferEvent>,
    outcome: Option<Outcome>,
    subs: Vec<Sub>,
    /// Credentials requests waiting for an answer, by id.
    pending: HashMap<u64, std::sync::mpsc::Sender<Option<Credentials>>>,
}

/// One running operation.
pub struct Op {
    pub kind: &'static str,
    /// What it is about (the reference, image, path), for log lines.
    pub what: String,
    pub cancel: Cancel,
    state: Mutex<State>,
    finished: Notify,
    next_id: AtomicU64,
    /// Called once when it finishes (the registry's entry is removed).
    on_finish: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op")
            .field("kind", &self.kind)
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

fn compressed(c: Option<bool>) -> i32 {
    match c {
        None => pb::Compressed::Unknown as i32,
        Some(true) => pb::Compressed::Yes as i32,
        Some(false) => pb::Compressed::No as i32,
    }
}

/// A library progress event as the API sends it.
pub fn transfer_event(e: &ProgressEvent) -> pb::TransferEvent {
    pb::TransferEvent {
        event: e.event.as_str().to_string(),
        name: e.name.clone(),
        parents: e.parents.clone(),
        progress: e.progress,
        total: e.total,
        layer: e.layer.clone().unwrap_or_default(),
        compressed: compressed(e.compressed),
    }
}

/// `events` with several events of one name folded into the last, in the
/// order each name first appears (pure).
pub fn fold_events(events: &[pb::TransferEvent]) -> Vec<pb::TransferEvent> {
    let mut out: Vec<pb::TransferEvent> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for e in events {
        match at.get(e.name.as_str()) {
            Some(&i) => out[i] = e.clone(),
            None => {
                at.insert(&e.name, out.len());
                out.push(e.clone());
            }
        }
    }
    out
}

impl Op {
    pub fn new(kind: &'static str, what: String) -> Arc<Op> {
        Arc::new(Op {
            kind,
            what,
            cancel: Cancel::new(),
            state: Mutex::new(State::default()),
            finished: Notify::new(),
            next_id: AtomicU64::new(1),
            on_finish: Mutex::new(None),
        })
    }

    pub fn set_on_finish(&self, f: impl FnOnce() + Send + 'static) {
        *self.on_finish.lock() = Some(Box::new(f));
    }

    pub fn is_finished(&self) -> bool {
        self.state.lock().outcome.is_some()
    }

    /// Record the end and wake every stream.
    pub fn finish(&self, outcome: Outcome) {
        {
            let mut st = self.state.lock();
            if st.outcome.is_some() {
                return;
            }
            st.outcome = Some(outcome);
            // Nobody will answer now.
            st.pending.clear();
        }
        self.finished.notify_waiters();
        if let Some(f) = self.on_finish.lock().take() {
            f();
        }
    }

    /// Add a client stream (its messages go to `tx`); the returned guard
    /// cancels the operation when it is the last to go before the end.
    pub fn subscribe(self: &Arc<Op>, tx: mpsc::Sender<Outbound>, creds: CredSource) -> Subscriber {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.state.lock().subs.push(Sub {
            id,
            tx,
            creds,
            listening: true,
        });
        Subscriber {
            op: Arc::clone(self),
            id,
        }
    }

    /// A client's answer to credentials request `id`.
    pub fn answer(&self, id: u64, creds: Option<Credentials>) {
        if let Some(tx) = self.state.lock().pending.remove(&id) {
            let _ = tx.send(creds);
        }
    }

    /// Ask a subscriber for credentials (on the blocking thread of the
    /// operation). `None` when nobody can or does answer.
    fn ask(&self, registry: &str, realm: Option<&str>) -> Option<Credentials> {
        let (id, tx, rx) = {
            let mut st = self.state.lock();
            // A subscriber with credentials given up front answers at once.
            for s in &st.subs {
                if let CredSource::Fixed(Some(c)) = &s.creds {
                    return Some(c.clone());
                }
            }
            let asked = st
                .subs
                .iter()
                .find(|s| matches!(s.creds, CredSource::Stream) && s.listening)?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let tx = asked.tx.clone();
            let (atx, arx) = std::sync::mpsc::channel();
            st.pending.insert(id, atx);
            (id, tx, arx)
        };
        let request = pb::OperationMessage {
            msg: Some(pb::operation_message::Msg::Credentials(
                pb::CredentialsRequest {
                    id,
                    registry: registry.to_string(),
                    realm: realm.unwrap_or_default().to_string(),
                },
            )),
        };
        if tx.blocking_send(Ok(request)).is_err() {
            return None;
        }
        let deadline = Instant::now() + CREDENTIALS_WAIT;
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(c) => return c,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if self.cancel.is_cancelled() || self.is_finished() {
                        return None;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
        None
    }

    /// This client can no longer answer (it closed its side of the stream).
    pub fn not_listening(&self, sub: u64) {
        let mut st = self.state.lock();
        if let Some(s) = st.subs.iter_mut().find(|s| s.id == sub) {
            s.listening = false;
        }
    }

    /// The layer map, and the events from `cursor` on (folded); moves the cursor.
    fn sample(&self, cursor: &mut usize) -> (Vec<pb::LayerProgress>, Vec<pb::TransferEvent>) {
        let st = self.state.lock();
        let events = fold_events(&st.events[(*cursor).min(st.events.len())..]);
        *cursor = st.events.len();
        (st.layers.clone(), events)
    }

    fn outcome(&self) -> Option<Outcome> {
        self.state.lock().outcome.clone()
    }

    /// The sampler of one stream: a `Progress` per tick until the end, then
    /// the result or failure (with the final map and events). Ends early
    /// when the client is gone.
    pub async fn stream_progress(
        self: Arc<Op>,
        sub: Subscriber,
        tx: mpsc::Sender<Outbound>,
        joined: bool,
    ) {
        let mut cursor = 0usize;
        let mut tick = 0u64;
        let start = tokio::time::Instant::now() + TICK;
        let mut interval = tokio::time::interval_at(start, TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Register for the wake-up before looking, so none is missed.
            let finished = self.finished.notified();
            if let Some(outcome) = self.outcome() {
                let (layers, events) = self.sample(&mut cursor);
                let last = pb::Progress {
                    tick: tick + 1,
                    interval_ms: TICK.as_millis() as u32,
                    layers,
                    events,
                };
                let msg = match outcome {
                    Outcome::Done(mut r) => {
                        r.last = Some(last);
                        r.shared = joined;
                        pb::operation_message::Msg::Result(r)
                    }
                    Outcome::Failed(message) => pb::operation_message::Msg::Error(pb::Failure {
                        message,
                        last: Some(last),
                    }),
                };
                let _ = tx.send(Ok(pb::OperationMessage { msg: Some(msg) })).await;
                break;
            }
            tokio::select! {
                _ = interval.tick() => {}
                _ = finished => continue,
                _ = tx.closed() => break,
            }
            tick += 1;
            let (layers, events) = self.sample(&mut cursor);
            let msg = pb::OperationMessage {
                msg: Some(pb::operation_message::Msg::Progress(pb::Progress {
                    tick,
                    interval_ms: TICK.as_millis() as u32,
                    layers,
                    events,
                })),
            };
            if tx.send(Ok(msg)).await.is_err() {
                break;
            }
        }
        drop(sub);
    }
}

/// A client waiting on an [`Op`]. Dropped when its stream ends.
#[derive(Debug)]
pub struct Subscriber {
    op: Arc<Op>,
    pub id: u64,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let last = {
            let mut st = self.op.state.lock();
            st.subs.retain(|s| s.id != self.id);
            st.subs.is_empty() && st.outcome.is_none()
        };
        if last {
            self.op.cancel.cancel();
        }
    }
}

/// Records progress into the op's state.
pub struct OpReporter(pub Arc<Op>);

impl Reporter for OpReporter {
    fn report(&self, e: &ProgressEvent) {
        let mut st = self.0.state.lock();
        st.events.push(transfer_event(e));
        if matches!(
            e.event,
            EventKind::Resolving | EventKind::Done | EventKind::Saved
        ) {
            return;
        }
        let id = e.layer.clone().unwrap_or_else(|| e.name.clone());
        let finished = matches!(e.event, EventKind::Complete | EventKind::AlreadyExists);
        let entry = pb::LayerProgress {
            id,
            status: e.event.as_str().to_string(),
            current: if finished { e.total } else { e.progress },
            total: e.total,
        };
        match st.index.get(&e.name) {
            Some(&i) => st.layers[i] = entry,
            None => {
                let i = st.layers.len();
                st.index.insert(e.name.clone(), i);
                st.layers.push(entry);
            }
        }
    }
}

/// Asks the op's subscribers (see [`Op::ask`]).
pub struct OpCredentials(pub Weak<Op>);

impl CredentialsProvider for OpCredentials {
    fn credentials(&self, registry: &str) -> Option<Credentials> {
        self.credentials_for_realm(registry, None)
    }

    fn credentials_for_realm(&self, registry: &str, realm: Option<&str>) -> Option<Credentials> {
        self.0.upgrade()?.ask(registry, realm)
    }
}

/// Running pulls by (reference, platform), for sharing.
#[derive(Default)]
pub struct Registry {
    pulls: Mutex<HashMap<String, Weak<Op>>>,
}

impl Registry {
    /// The running pull for `key`, or a new one made by `make` (true: new).
    pub fn pull(self: &Arc<Self>, key: &str, make: impl FnOnce() -> Arc<Op>) -> (Arc<Op>, bool) {
        let mut pulls = self.pulls.lock();
        if let Some(op) = pulls.get(key).and_then(Weak::upgrade) {
            if !op.is_finished() && !op.cancel.is_cancelled() {
                return (op, false);
            }
        }
        let op = make();
        pulls.insert(key.to_string(), Arc::downgrade(&op));
        let me = Arc::downgrade(self);
        let key = key.to_string();
        let weak = Arc::downgrade(&op);
        op.set_on_finish(move || {
            if let Some(me) = me.upgrade() {
                let mut pulls = me.pulls.lock();
                if pulls.get(&key).is_some_and(|w| w.ptr_eq(&weak)) {
                    pulls.remove(&key);
                }
            }
        });
        (op, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, name: &str, progress: u64) -> pb::TransferEvent {
        pb::TransferEvent {
            event: event.into(),
            name: name.into(),
            progress,
            ..Default::default()
        }
    }

    #[test]
    fn events_fold_per_name_in_first_seen_order() {
        let events = [
            ev("resolving", "ref", 0),
            ev("downloading", "a", 1),
            ev("downloading", "b", 1),
            ev("downloading", "a", 5),
            ev("complete", "a", 9),
        ];
        let folded = fold_events(&events);
        let got: Vec<(&str, &str, u64)> = folded
            .iter()
            .map(|e| (e.name.as_str(), e.event.as_str(), e.progress))
            .collect();
        assert_eq!(
            got,
            [
                ("ref", "resolving", 0),
                ("a", "complete", 9),
                ("b", "downloading", 1)
            ]
        );
        assert!(fold_events(&[]).is_empty());
    }

    #[test]
    fn the_reporter_keeps_one_row_per_blob() {
        let op = Op::new("pull", "x".into());
        let r = OpReporter(Arc::clone(&op));
        let e = |event, name: &str, progress, layer: Option<&str>| ProgressEvent {
            event,
            name: name.into(),
            parents: vec![],
            progress,
            total: 10,
            layer: layer.map(str::to_string),
            compressed: None,
        };
        r.report(&e(EventKind::Resolving, "ref", 0, None));
        r.report(&e(EventKind::Waiting, "sha256:a", 0, Some("L1")));
        r.report(&e(EventKind::Downloading, "sha256:a", 4, Some("L1")));
        r.report(&e(EventKind::Complete, "sha256:a", 7, Some("L1")));
        r.report(&e(EventKind::AlreadyExists, "sha256:b", 0, None));
        let mut cursor = 0;
        let (layers, events) = op.sample(&mut cursor);
        assert_eq!(layers.len(), 2);
        assert_eq!(
            (layers[0].id.as_str(), layers[0].status.as_str()),
            ("L1", "complete")
        );
        assert_eq!((layers[0].current, layers[0].total), (10, 10));
        assert_eq!(layers[1].id, "sha256:b");
        assert_eq!(events.len(), 3);
        assert_eq!(cursor, 5);
        let (_, events) = op.sample(&mut cursor);
        assert!(events.is_empty());
    }

    #[test]
    fn the_last_subscriber_leaving_cancels() {
        let op = Op::new("pull", "x".into());
        let (tx, _rx) = mpsc::channel(1);
        let a = op.subscribe(tx.clone(), CredSource::Stream);
        let b = op.subscribe(tx, CredSource::Stream);
        drop(a);
        assert!(!op.cancel.is_cancelled(), "another client waits");
        drop(b);
        assert!(op.cancel.is_cancelled());
        // After the end nobody cancels anything.
        let op = Op::new("pull", "y".into());
        let (tx, _rx) = mpsc::channel(1);
        let a = op.subscribe(tx, CredSource::Stream);
        op.finish(Outcome::Failed("x".into()));
        drop(a);
        assert!(!op.cancel.is_cancelled());
    }
}
