//! Store records ↔ API messages (pure).

use storectl_storage::meta::{Image, Layer};
use storectl_storage::progress::{EventKind, ProgressEvent};

use super::pb::storectl::v1 as pb;
use crate::commands::ls::{Listed, Listing};

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn opt_n(n: u64) -> Option<u64> {
    (n != 0).then_some(n)
}

pub fn layer_pb(l: &Layer) -> pb::Layer {
    pb::Layer {
        id: l.id.clone(),
        parent: l.parent.clone().unwrap_or_default(),
        created: l.created.clone().unwrap_or_default(),
        compressed_diff_digest: l.compressed_diff_digest.clone().unwrap_or_default(),
        compressed_size: l.compressed_size.unwrap_or(0),
        diff_digest: l.diff_digest.clone().unwrap_or_default(),
        diff_size: l.diff_size.unwrap_or(0),
        compression: u32::from(l.compression),
        disk_size: l.disk_size.unwrap_or(0),
        shared: l.shared,
        names: l.names.clone(),
    }
}

pub fn layer_from_pb(l: &pb::Layer) -> Layer {
    Layer {
        id: l.id.clone(),
        names: l.names.clone(),
        parent: opt(&l.parent),
        created: opt(&l.created),
        compressed_diff_digest: opt(&l.compressed_diff_digest),
        compressed_size: opt_n(l.compressed_size),
        diff_digest: opt(&l.diff_digest),
        diff_size: opt_n(l.diff_size),
        compression: u8::try_from(l.compression).unwrap_or(0),
        incomplete: false,
        disk_size: opt_n(l.disk_size),
        shared: l.shared,
    }
}

pub fn image_pb(listed: &Listed, shadowed: &std::collections::BTreeSet<String>) -> pb::Image {
    let image = &listed.image;
    pb::Image {
        id: image.id.clone(),
        names: image.names.clone(),
        digest: image.digest.clone().unwrap_or_default(),
        created: image.created.clone().unwrap_or_default(),
        size: listed.size,
        shared: image.shared,
        shadowed_names: if image.shared {
            image
                .names
                .iter()
                .filter(|n| shadowed.contains(*n))
                .cloned()
                .collect()
        } else {
            Vec::new()
        },
        layers: listed.layers.iter().map(layer_pb).collect(),
        top_layer: image.layer.clone().unwrap_or_default(),
    }
}

pub fn listed_from_pb(i: &pb::Image) -> Listed {
    Listed {
        image: Image {
            id: i.id.clone(),
            digest: opt(&i.digest),
            names: i.names.clone(),
            layer: opt(&i.top_layer),
            created: opt(&i.created),
            big_data_names: Vec::new(),
            big_data_sizes: Default::default(),
            big_data_digests: Default::default(),
            shared: i.shared,
        },
        size: i.size,
        layers: i.layers.iter().map(layer_from_pb).collect(),
    }
}

pub fn listing_pb(l: &Listing) -> pb::ListResponse {
    pb::ListResponse {
        images: l.images.iter().map(|i| image_pb(i, &l.shadowed)).collect(),
        reader: l.reader,
    }
}

pub fn listing_from_pb(r: &pb::ListResponse) -> Listing {
    Listing {
        images: r.images.iter().map(listed_from_pb).collect(),
        shadowed: r
            .images
            .iter()
            .flat_map(|i| i.shadowed_names.iter().cloned())
            .collect(),
        reader: r.reader,
    }
}

fn kind(s: &str) -> Option<EventKind> {
    Some(match s {
        "resolving" => EventKind::Resolving,
        "waiting" => EventKind::Waiting,
        "downloading" => EventKind::Downloading,
        "extracting" => EventKind::Extracting,
        "uploading" => EventKind::Uploading,
        "complete" => EventKind::Complete,
        "already exists" => EventKind::AlreadyExists,
        "saved" => EventKind::Saved,
        "done" => EventKind::Done,
        _ => return None,
    })
}

/// An API event as the renderer takes it (`None`: an event kind this client
/// does not know, skipped).
pub fn progress_event(e: &pb::TransferEvent) -> Option<ProgressEvent> {
    Some(ProgressEvent {
        event: kind(&e.event)?,
        name: e.name.clone(),
        parents: e.parents.clone(),
        progress: e.progress,
        total: e.total,
        layer: opt(&e.layer),
        compressed: match pb::Compressed::try_from(e.compressed) {
            Ok(pb::Compressed::Yes) => Some(true),
            Ok(pb::Compressed::No) => Some(false),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_round_trip() {
        let l = Layer {
            id: "a".repeat(64),
            names: vec![],
            parent: Some("b".repeat(64)),
            created: Some("2024-01-01T00:00:00Z".into()),
            compressed_diff_digest: Some("sha256:c".into()),
            compressed_size: Some(10),
            diff_digest: Some("sha256:d".into()),
            diff_size: Some(20),
            compression: 2,
            incomplete: false,
            disk_size: Some(30),
            shared: true,
        };
        assert_eq!(layer_from_pb(&layer_pb(&l)), l);
    }

    #[test]
    fn every_event_kind_crosses() {
        for k in [
            EventKind::Resolving,
            EventKind::Waiting,
            EventKind::Downloading,
            EventKind::Extracting,
            EventKind::Uploading,
            EventKind::Complete,
            EventKind::AlreadyExists,
            EventKind::Saved,
            EventKind::Done,
        ] {
            let e = ProgressEvent {
                event: k,
                name: "sha256:x".into(),
                parents: vec!["p".into()],
                progress: 3,
                total: 9,
                layer: Some("l".into()),
                compressed: Some(false),
            };
            assert_eq!(
                progress_event(&super::super::ops::transfer_event(&e)),
                Some(e)
            );
        }
        let unknown = pb::TransferEvent {
            event: "teleporting".into(),
            ..Default::default()
        };
        assert_eq!(progress_event(&unknown), None);
    }
}
