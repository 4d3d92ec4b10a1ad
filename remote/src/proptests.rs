//! Property tests of the reader's pure parsers: the saved view and the ids of
//! the share's index. Any bytes are refused or decoded, never a panic; what
//! the index parser returns is only 64-hex ids, each once; a view round-trips.

use proptest::prelude::*;
use storectl_storage::digest::is_hex64;
use storectl_storage::meta::{Image, Layer};

use crate::scan::Baseline;
use crate::view::{decode, encode, ViewParts};

fn layers() -> impl Strategy<Value = Vec<Layer>> {
    proptest::collection::btree_map(
        "[a-f0-9]{64}",
        (
            proptest::option::of("[a-f0-9]{64}"),
            proptest::collection::vec("\\PC{0,12}", 0..3),
            proptest::option::of("\\PC{0,30}"),
            proptest::option::of(any::<u64>()),
            any::<u8>(),
        ),
        0..12,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(id, (parent, names, created, size, compression))| Layer {
                parent: parent.filter(|p| *p != id),
                diff_digest: Some(format!("sha256:{id}")),
                id,
                names,
                created,
                compressed_diff_digest: None,
                compressed_size: size,
                diff_size: size,
                compression,
                incomplete: false,
                disk_size: size.map(|s| s / 2),
                shared: true,
            })
            .collect()
    })
}

fn images(tops: Vec<String>) -> impl Strategy<Value = Vec<(Image, u64)>> {
    proptest::collection::btree_map(
        "[a-f0-9]{64}",
        (
            proptest::sample::select(if tops.is_empty() {
                vec!["x".to_string()]
            } else {
                tops
            }),
            proptest::collection::vec("\\PC{0,20}", 0..3),
            proptest::collection::btree_map("[a-z=:]{1,8}", any::<u64>(), 0..3),
            any::<u64>(),
        ),
        0..8,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(id, (top, names, sizes, fp))| {
                let image = Image {
                    digest: Some(format!("sha256:{id}")),
                    names,
                    layer: Some(top),
                    created: None,
                    big_data_names: sizes.keys().cloned().collect(),
                    big_data_digests: sizes.keys().map(|k| (k.clone(), id.clone())).collect(),
                    big_data_sizes: sizes,
                    id,
                    shared: true,
                };
                (image, fp)
            })
            .collect()
    })
}

fn encoded(layers: &[Layer], images: &[(Image, u64)]) -> Vec<u8> {
    let parts = ViewParts {
        share: std::path::Path::new("/mnt/share"),
        generation: b"3 x\n",
        links_in_step: true,
        root_dirs: [1, 2, 3, 4],
        baseline: Baseline([Some(1), None, Some(0)]),
        pending: 2,
    };
    encode(&parts, layers.iter(), images.iter().map(|(i, f)| (i, *f)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A view round-trips: every layer whose chain is whole comes back as it
    /// was, every image on one of them too, nothing else.
    #[test]
    fn views_round_trip(
        (layers, images) in layers().prop_flat_map(|ls| {
            let tops = ls.iter().map(|l| l.id.clone()).collect();
            (Just(ls), images(tops))
        })
    ) {
        let view = decode(&encoded(&layers, &images)).unwrap();
        prop_assert_eq!(view.generation, b"3 x\n".to_vec());
        let ids: std::collections::BTreeSet<&str> =
            layers.iter().map(|l| l.id.as_str()).collect();
        for l in &view.layers {
            prop_assert!(layers.contains(l));
            prop_assert!(l.parent.as_deref().is_none_or(|p| ids.contains(p)));
        }
        for l in &layers {
            if l.parent.is_none() {
                prop_assert!(view.layers.contains(l), "a base layer is whole");
            }
        }
        for (i, _) in &view.images {
            prop_assert!(view.layers.iter().any(|l| Some(&l.id) == i.layer.as_ref()));
        }
    }

    /// Any bytes, and any damage to a real view: refused or decoded, never a
    /// panic, never an invalid id.
    #[test]
    fn any_bytes_as_a_view(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        layers in layers(),
        flip in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let _ = decode(&bytes);
        let real = encoded(&layers, &[]);
        let mut damaged = real.clone();
        let i = flip.index(damaged.len());
        damaged[i] ^= 0x20;
        prop_assert!(decode(&damaged).is_err());
        let _ = decode(&real[..cut.index(real.len())]);
        if let Ok(v) = decode(&real) {
            prop_assert!(v.layers.iter().all(|l| is_hex64(&l.id)));
        }
    }

    /// Any bytes as an index file: an error or ids that are 64 hex, each once.
    #[test]
    fn any_bytes_as_an_index(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(ids) = crate::index::parse_layer_ids(&bytes) {
            prop_assert!(ids.iter().all(|id| is_hex64(id)));
            prop_assert!(ids.windows(2).all(|w| w[0] < w[1]));
        }
        if let Ok(images) = crate::index::parse_image_ids(&bytes) {
            prop_assert!(images.iter().all(|(id, _)| is_hex64(id)));
            prop_assert!(images.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }

    /// Index-shaped text with hostile ids: only valid, unique ids get through.
    #[test]
    fn hostile_ids_in_an_index(
        ids in proptest::collection::vec(
            prop_oneof!["[a-f0-9]{64}", "\\.\\./[a-z/]{0,20}", "[A-F0-9]{64}", "\\PC{0,70}"],
            0..6,
        )
    ) {
        let recs: Vec<serde_json::Value> =
            ids.iter().map(|id| serde_json::json!({"id": id, "names": ["a"]})).collect();
        let bytes = serde_json::to_vec(&recs).unwrap();
        let valid = ids.iter().all(|id| is_hex64(id));
        let unique = ids.iter().collect::<std::collections::BTreeSet<_>>().len() == ids.len();
        match crate::index::parse_image_ids(&bytes) {
            Ok(got) => {
                prop_assert!(valid && unique);
                prop_assert_eq!(got.len(), ids.len());
            }
            Err(_) => prop_assert!(!(valid && unique)),
        }
    }
}
