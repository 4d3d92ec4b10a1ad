//! Property tests of the pure parsers: references and the on-disk records
//! (auth challenges and platforms: storectl-transfer's). Any input either parses or is
//! refused, never panics; what parses normalizes stably.

use proptest::prelude::*;

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

    /// Records read from a share may be anything.
    #[test]
    fn any_bytes_as_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let id = "a".repeat(64);
        let _ = crate::meta::parse_layer(&bytes, &id);
        let _ = crate::meta::parse_image(&bytes, &id);
        let _ = crate::import::spec::parse_config(&bytes);
    }
}
