//! Property tests of the registry client's pure parsers (auth challenges):
//! any input either parses or is refused, never panics.

use proptest::prelude::*;

use crate::registry::parse_challenges;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_challenge_header_never_panics(s in ".{0,400}") {
        let _ = parse_challenges(&s);
    }

    /// A Bearer challenge with quoted parameters (any printable values,
    /// `\"` escaped) gives back every parameter.
    #[test]
    fn bearer_challenges_keep_their_parameters(
        realm in "[ -~]{0,40}",
        service in "[ -~]{0,20}",
        scope in "[a-z:/,*]{0,40}",
    ) {
        let q = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
        let header = format!(
            "Bearer realm=\"{}\",service=\"{}\",scope=\"{}\"",
            q(&realm), q(&service), q(&scope)
        );
        let cs = parse_challenges(&header);
        prop_assert_eq!(cs.len(), 1, "{}", header);
        prop_assert_eq!(cs[0].scheme.as_str(), "bearer");
        prop_assert_eq!(cs[0].param("realm"), Some(realm.as_str()));
        prop_assert_eq!(cs[0].param("service"), Some(service.as_str()));
        prop_assert_eq!(cs[0].param("scope"), Some(scope.as_str()));
    }
}
