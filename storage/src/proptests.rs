//! Property tests of the pure parsers: references, platforms and the on-disk
//! records (auth challenges: storectl-transfer's). Any input either parses or is
//! refused, never panics; what parses normalizes stably.

use proptest::prelude::*;

use crate::import::platform::Platform;
use crate::reference::{self, normalize_name};

/// Strings shaped like image references (valid and not quite).
fn reference_like() -> impl Strategy<Value = String> {
    (
        proptest::option::of("[a-zA-Z0-9-]{1,10}(\\.[a-z]{2,3})?(:[0-9]{1,5})?"),
        proptest::collection::vec("[a-z0-9]{1,6}([._-]{1,2}[a-z0-9]{1,4})?", 1..4),
        proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        proptest::option::of("[a-f0-9]{64}"),
    )
        .prop_map(|(domain, path, tag, digest)| {
            let mut s = String::new();
            if let Some(d) = domain {
                s.push_str(&d);
                s.push('/');
            }
            s.push_str(&path.join("/"));
            if let Some(t) = tag {
                s.push(':');
                s.push_str(&t);
            }
            if let Some(d) = digest {
                s.push_str("@sha256:");
                s.push_str(&d);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_text_as_a_reference_never_panics(s in ".{0,300}") {
        let _ = reference::parse(&s);
    }

    /// Normalizing twice changes nothing, and the normalized form parses to
    /// the same registry, repository, tag and digest.
    #[test]
    fn normalizing_a_reference_is_stable(s in reference_like()) {
        if let Ok(n) = normalize_name(&s) {
            let again = normalize_name(&n).expect("the normalized form parses");
            prop_assert_eq!(&again, &n);
            let a = reference::parse(&s).expect("parsed once");
            let b = reference::parse(&n).expect("normalized form parses");
            prop_assert_eq!(&a.domain, &b.domain);
            prop_assert_eq!(&a.path, &b.path);
            prop_assert_eq!(&a.digest, &b.digest);
            prop_assert_eq!(a.tag.as_deref().or(a.digest.is_none().then_some("latest")), b.tag.as_deref());
        }
    }

    /// What parses as a platform prints as something that parses the same.
    #[test]
    fn platforms_round_trip(s in "[a-z0-9_]{0,8}(/[a-z0-9_]{0,8}){0,3}") {
        if let Ok(p) = Platform::parse(&s) {
            prop_assert_eq!(Platform::parse(&p.to_string()), Ok(p));
        }
    }

    /// Records read from a share may be anything.
    #[test]
    fn any_bytes_as_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let id = "a".repeat(64);
        let _ = crate::meta::parse_layer(&bytes, &id);
        let _ = crate::meta::parse_image(&bytes, &id);
        let _ = crate::import::spec::parse_config(&bytes);
    }
}

/// Layer records as the writer makes them.
fn layer_record() -> impl Strategy<Value = crate::Layer> {
    (
        "[a-f0-9]{64}",
        proptest::option::of("[a-f0-9]{64}"),
        proptest::collection::vec("[a-z0-9]{1,8}(:[a-z0-9]{1,5})?", 0..3),
        proptest::option::of((0u64..4_000_000_000, 0u32..1_000_000_000)),
        proptest::option::of("[a-f0-9]{64}"),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        prop_oneof![Just(0u8), Just(2u8), Just(4u8)],
    )
        .prop_filter("a layer is not its own parent", |(id, parent, ..)| {
            parent.as_ref() != Some(id)
        })
        .prop_map(
            |(id, parent, names, created, digest, size, disk, compression)| crate::Layer {
                diff_digest: Some(format!("sha256:{id}")),
                id,
                names,
                parent,
                created: created.map(|(s, n)| crate::fsutil::rfc3339(s as i64, n)),
                compressed_diff_digest: digest.map(|d| format!("sha256:{d}")),
                compressed_size: size,
                diff_size: size.map(|s| s / 2),
                compression,
                incomplete: false,
                disk_size: disk,
                shared: false,
            },
        )
}

/// Image records as the writer makes them.
fn image_record() -> impl Strategy<Value = crate::Image> {
    (
        "[a-f0-9]{64}",
        "[a-f0-9]{64}",
        "[a-f0-9]{64}",
        proptest::collection::vec("[a-z0-9]{1,8}(/[a-z]{1,4})?:[a-z0-9]{1,5}", 0..4),
        proptest::option::of((0u64..4_000_000_000, 0u32..1_000_000_000)),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(id, top, manifest, names, created, msize, csize)| {
            use crate::meta::{CONFIG, MANIFEST};
            let mut names = names;
            names.dedup();
            crate::Image {
                digest: Some(format!("sha256:{manifest}")),
                names,
                layer: Some(top),
                created: created.map(|(s, n)| crate::fsutil::rfc3339(s as i64, n)),
                big_data_names: vec![MANIFEST.into(), CONFIG.into()],
                big_data_sizes: [
                    (MANIFEST.into(), msize.into()),
                    (CONFIG.into(), csize.into()),
                ]
                .into(),
                big_data_digests: [
                    (MANIFEST.into(), format!("sha256:{manifest}")),
                    (CONFIG.into(), format!("sha256:{id}")),
                ]
                .into(),
                id,
                shared: false,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// What the writer renders, a reader parses back to the same records,
    /// with each record's bytes the line the writer spliced in.
    #[test]
    fn index_files_round_trip(
        layers in proptest::collection::vec(layer_record(), 0..8),
        images in proptest::collection::vec(image_record(), 0..8),
    ) {
        use crate::csindex::*;
        let mut layers = layers;
        layers.sort_by(|a, b| a.id.cmp(&b.id));
        layers.dedup_by(|a, b| a.id == b.id);
        let lines: Vec<Vec<u8>> = layers.iter().map(layer_line).collect();
        let bytes = render(lines.iter().map(Vec::as_slice));
        let parsed = parse_layers(&bytes).unwrap();
        prop_assert!(parsed.skipped.is_empty(), "{:?}", parsed.skipped);
        prop_assert_eq!(parsed.records.len(), layers.len());
        for ((got, raw), (want, line)) in parsed.records.iter().zip(layers.iter().zip(&lines)) {
            prop_assert_eq!(got, want);
            prop_assert_eq!(*raw, &line[..]);
        }
        let mut images = images;
        images.sort_by(|a, b| a.id.cmp(&b.id));
        images.dedup_by(|a, b| a.id == b.id);
        let dups = duplicate_names(&images);
        let none = std::collections::BTreeSet::new();
        let lines: Vec<Vec<u8>> = images
            .iter()
            .map(|i| image_line(i, dups.get(i.id.as_str()).unwrap_or(&none)))
            .collect();
        let bytes = render(lines.iter().map(Vec::as_slice));
        let parsed = parse_images(&bytes).unwrap();
        prop_assert!(parsed.skipped.is_empty(), "{:?}", parsed.skipped);
        prop_assert_eq!(parsed.records.len(), images.len());
        for ((got, _), want) in parsed.records.iter().zip(&images) {
            let mut want = want.clone();
            let dropped = dups.get(want.id.as_str()).cloned().unwrap_or_default();
            want.names.retain(|n| !dropped.contains(n.as_str()));
            prop_assert_eq!(got, &want);
        }
    }

    /// Any bytes as an index or a stamp: an error or records, never a panic;
    /// every record a reader gets has a 64-hex id, seen once.
    #[test]
    fn any_bytes_as_an_index_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        use crate::csindex::*;
        let _ = split_records(&bytes);
        let _ = parse_stamp(&bytes);
        if let Ok(p) = parse_layers(&bytes) {
            let mut ids = std::collections::BTreeSet::new();
            for (l, _) in &p.records {
                prop_assert!(crate::digest::is_hex64(&l.id));
                prop_assert!(ids.insert(l.id.clone()));
            }
        }
        if let Ok(p) = parse_images(&bytes) {
            for (i, _) in &p.records {
                prop_assert!(crate::digest::is_hex64(&i.id));
            }
        }
    }

    /// A truncated or spliced index (a torn write, junk in the middle)
    /// is refused or yields only whole, valid records.
    #[test]
    fn damaged_index_files_yield_whole_records_or_nothing(
        layers in proptest::collection::vec(layer_record(), 1..6),
        cut in any::<prop::sample::Index>(),
        junk in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        use crate::csindex::*;
        let lines: Vec<Vec<u8>> = layers.iter().map(layer_line).collect();
        let bytes = render(lines.iter().map(Vec::as_slice));
        let at = cut.index(bytes.len());
        let mut damaged = bytes[..at].to_vec();
        damaged.extend_from_slice(&junk);
        damaged.extend_from_slice(&bytes[at..]);
        for candidate in [&bytes[..at], &damaged[..]] {
            if let Ok(p) = parse_layers(candidate) {
                for (l, _) in &p.records {
                    prop_assert!(layers.iter().any(|x| x == l) || crate::digest::is_hex64(&l.id));
                }
            }
        }
    }

    /// Any text as a timestamp: Go's form or nothing, and Go's form is stable.
    #[test]
    fn go_timestamps_are_stable(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:[0-9]{2})") {
        if let Some(g) = crate::csindex::go_timestamp(&s) {
            prop_assert_eq!(crate::csindex::go_timestamp(&g), Some(g.clone()));
        }
    }

    /// `used_among` says of its layers what `referenced_layers` says, on
    /// random forests of layers (some chains broken, some looping) and
    /// images on random tops.
    #[test]
    fn used_among_agrees_with_referenced_layers(
        parents in proptest::collection::vec(proptest::option::of(0usize..24), 1..24),
        tops in proptest::collection::vec(0usize..30, 0..12),
        among in proptest::collection::vec(0usize..30, 0..10),
    ) {
        let id = |n: usize| format!("{n:064x}");
        let mut st = crate::State::default();
        for (n, p) in parents.iter().enumerate() {
            let mut l: crate::Layer = serde_json::from_str(&format!(r#"{{"id":"{}"}}"#, id(n))).unwrap();
            l.parent = p.map(id);
            st.layers.insert(l.id.clone(), l);
        }
        for (k, top) in tops.iter().enumerate() {
            let mut i: crate::Image = serde_json::from_str(&format!(r#"{{"id":"{}"}}"#, id(100 + k))).unwrap();
            i.layer = Some(id(*top));
            st.images.insert(i.id.clone(), i);
        }
        let among: Vec<String> = among.into_iter().map(id).collect();
        let refs: Vec<&str> = among.iter().map(String::as_str).collect();
        let all = st.referenced_layers();
        let want: std::collections::BTreeSet<String> =
            among.iter().filter(|a| all.contains(*a)).cloned().collect();
        prop_assert_eq!(st.used_among(&refs), want);
        // As if the first image were gone.
        let first = st.images.keys().next().cloned();
        if let Some(first) = first {
            let mut without = st.clone();
            without.images.remove(&first);
            let all = without.referenced_layers();
            let want: std::collections::BTreeSet<String> =
                among.iter().filter(|a| all.contains(*a)).cloned().collect();
            prop_assert_eq!(st.used_among_except(&refs, Some(&first)), want);
        }
    }
}
