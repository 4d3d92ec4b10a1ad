//! `storectl.v1.Events`: image and layer events for subscribers.
//!
//! Two sources: the refresher on a reader host (what appears on and leaves
//! the share), and the daemon's own changes to its local store — after each
//! mutation the local images and layers are compared with the last state
//! published, so concurrent operations never report a change twice.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use storectl_remote::{Refresher, StoreEvent};
use storectl_storage::Store;
use tokio::sync::broadcast;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::pb::storectl::v1 as pb;
use super::{log, Daemon};

/// Events buffered per subscriber; a slower one misses events and is told so.
const BUFFER: usize = 1024;

/// The local images (id → names) and layers of a store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Local {
    images: BTreeMap<String, Vec<String>>,
    layers: BTreeSet<String>,
}

/// Local records are never unread lines of a writer's index
/// (`Records::iter_unindexed`): a writer of a 10,000-image share does not
/// parse and copy its 40,000 shared records after each of its operations.
fn local(store: &Store) -> Local {
    store.with_state(|st| Local {
        images: st
            .images
            .iter_unindexed()
            .filter(|(_, i)| !i.shared)
            .map(|(id, i)| (id.clone(), i.names.clone()))
            .collect(),
        layers: st
            .layers
            .iter_unindexed()
            .filter(|(_, l)| !l.shared)
            .map(|(id, _)| id.clone())
            .collect(),
    })
}

fn image_event(id: &str, names: &[String]) -> pb::ImageEvent {
    pb::ImageEvent {
        id: id.to_string(),
        names: names.to_vec(),
    }
}

fn event(kind: pb::event::Kind) -> pb::Event {
    pb::Event { kind: Some(kind) }
}

/// The events that take `before` to `after` (pure): layers added, images
/// added or renamed, images removed, layers removed.
fn diff(before: &Local, after: &Local) -> Vec<pb::Event> {
    use pb::event::Kind;
    let mut out = Vec::new();
    for id in after.layers.difference(&before.layers) {
        out.push(event(Kind::LayerAdded(pb::LayerEvent { id: id.clone() })));
    }
    for (id, names) in &after.images {
        match before.images.get(id) {
            None => out.push(event(Kind::ImageAdded(image_event(id, names)))),
            Some(old) if old != names => {
                out.push(event(Kind::ImageUpdated(image_event(id, names))))
            }
            Some(_) => {}
        }
    }
    for id in before.images.keys() {
        if !after.images.contains_key(id) {
            out.push(event(Kind::ImageRemoved(image_event(id, &[]))));
        }
    }
    for id in before.layers.difference(&after.layers) {
        out.push(event(Kind::LayerRemoved(pb::LayerEvent { id: id.clone() })));
    }
    out
}

/// Fans events out to subscribers.
pub struct Hub {
    tx: broadcast::Sender<pb::Event>,
    published: Mutex<Local>,
}

impl Hub {
    pub fn new(store: &Store) -> Hub {
        let (tx, _) = broadcast::channel(BUFFER);
        Hub {
            tx,
            published: Mutex::new(local(store)),
        }
    }

    /// After a mutation of the local store: publish what changed.
    pub fn store_changed(&self, store: &Store) {
        let mut published = self.published.lock();
        let now = local(store);
        for e in diff(&published, &now) {
            let _ = self.tx.send(e);
        }
        *published = now;
    }
}

/// Forward the refresher's events (on their own thread: its channel blocks).
pub fn forward_refresher(refresher: &Arc<Refresher>, hub: &Hub) -> anyhow::Result<()> {
    use pb::event::Kind;
    let rx = refresher.subscribe();
    let tx = hub.tx.clone();
    std::thread::Builder::new()
        .name("storectl-events".into())
        .spawn(move || {
            for e in rx {
                let (line, ev) = match e {
                    StoreEvent::ImageAdded { id, names } => (
                        format!("image added {id} {}", names.join(" ")),
                        Kind::ImageAdded(image_event(&id, &names)),
                    ),
                    StoreEvent::ImageUpdated { id, names } => (
                        format!("image renamed {id} {}", names.join(" ")),
                        Kind::ImageUpdated(image_event(&id, &names)),
                    ),
                    StoreEvent::ImageRemoved { id } => (
                        format!("image removed {id}"),
                        Kind::ImageRemoved(image_event(&id, &[])),
                    ),
                    StoreEvent::LayerAdded { id } => (
                        format!("layer added {id}"),
                        Kind::LayerAdded(pb::LayerEvent { id }),
                    ),
                    StoreEvent::LayerRemoved { id } => (
                        format!("layer removed {id}"),
                        Kind::LayerRemoved(pb::LayerEvent { id }),
                    ),
                    // Not in the API's event kinds (yet): logged only.
                    StoreEvent::ImageRemovedInUse {
                        id,
                        layers_deleted_after,
                        ..
                    } => {
                        log(format!(
                            "image removed in use {id} layers until {}",
                            layers_deleted_after.as_deref().unwrap_or("-")
                        ));
                        continue;
                    }
                };
                log(line.trim_end());
                let _ = tx.send(event(ev));
            }
        })?;
    Ok(())
}

pub struct Service(pub Arc<Daemon>);

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::events_server::Events for Service {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        _req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let rx = self.0.events.tx.subscribe();
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).map(|r| {
            r.map_err(|e| {
                Status::data_loss(format!(
                    "this subscriber fell behind and missed events ({e}); subscribe again"
                ))
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

impl Daemon {
    /// Publish the local changes after a mutation (on a blocking thread).
    pub fn changed(&self) {
        self.events.store_changed(&self.store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_every_change_once() {
        let mut a = Local::default();
        a.images.insert("i1".into(), vec!["n1".into()]);
        a.images.insert("i2".into(), vec![]);
        a.layers.extend(["l1".to_string(), "l2".to_string()]);
        let mut b = Local::default();
        b.images.insert("i1".into(), vec!["n1".into(), "n2".into()]);
        b.images.insert("i3".into(), vec!["n3".into()]);
        b.layers.extend(["l1".to_string(), "l3".to_string()]);
        let kinds: Vec<String> = diff(&a, &b)
            .into_iter()
            .map(|e| match e.kind.unwrap() {
                pb::event::Kind::ImageAdded(i) => format!("+image {}", i.id),
                pb::event::Kind::ImageUpdated(i) => format!("~image {} {:?}", i.id, i.names),
                pb::event::Kind::ImageRemoved(i) => format!("-image {}", i.id),
                pb::event::Kind::LayerAdded(l) => format!("+layer {}", l.id),
                pb::event::Kind::LayerRemoved(l) => format!("-layer {}", l.id),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "+layer l3",
                "~image i1 [\"n1\", \"n2\"]",
                "+image i3",
                "-image i2",
                "-layer l2"
            ]
        );
        assert!(diff(&b, &b).is_empty());
    }
}
