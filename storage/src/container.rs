//! Container records: what `overlay-containers/<id>/container.json` holds,
//! parsed and checked without I/O.
//!
//! A container is a writable layer over an image's chain. Its record uses
//! containers/storage's field names (`id`, `names`, `image`, `layer`,
//! `metadata`, `created`), plus the chain it was made on (`image-layers`,
//! top first), so that it mounts whatever happens to the image record later
//! (a writer may remove a shared image a reader's container runs on; its
//! layers stay for the share's grace period). The writable layer is the
//! layer driver's local `overlay/<layer>/` (`diff/`, `work/`, `merged/`),
//! and its id is the container's id: a local directory `overlay/<id>` is a
//! container's exactly when `overlay-containers/<id>` exists.

use serde::{Deserialize, Serialize};

use crate::digest::is_hex64;

/// The file in a container's record directory.
pub const CONTAINER_JSON: &str = "container.json";

/// One container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// 64 lowercase hex, random; the record directory's name.
    pub id: String,
    /// Unique among the store's containers (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
    #[serde(default)]
    pub names: Vec<String>,
    /// The image id it was made from.
    pub image: String,
    /// The writable layer's id (= `id`): `overlay/<layer>/`.
    pub layer: String,
    /// Free text for the caller (containers/storage's `metadata`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    /// RFC 3339 time it was made.
    pub created: String,
    /// The image's layers it mounts over, top first.
    #[serde(rename = "image-layers", default)]
    pub image_layers: Vec<String>,
}

/// Is `name` a valid container name (podman's rule:
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 253 characters)? Pure.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok {
        return Err(format!(
            "{name:?} is not a valid container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
        ));
    }
    if name.len() > 253 {
        return Err(format!(
            "container name of {} bytes (at most 253)",
            name.len()
        ));
    }
    if is_hex64(name) {
        return Err(format!("{name:?} would be taken for a container id"));
    }
    Ok(())
}

/// Parse a container record and check it against the directory it is in
/// (`dir_id`): ids are 64 hex, the layer is the container's, names are
/// valid, the chain is not empty. Pure.
pub fn parse_container(bytes: &[u8], dir_id: &str) -> Result<Container, String> {
    let c: Container =
        serde_json::from_slice(bytes).map_err(|e| format!("container record: {e}"))?;
    if c.id != dir_id {
        return Err(format!(
            "container record names id {:?}, its directory {dir_id}",
            c.id
        ));
    }
    if !is_hex64(&c.image) {
        return Err(format!("container {}: bad image id {:?}", c.id, c.image));
    }
    if c.layer != c.id {
        return Err(format!(
            "container {}: its layer {:?} is not its own id",
            c.id, c.layer
        ));
    }
    if c.image_layers.is_empty() || !c.image_layers.iter().all(|l| is_hex64(l)) {
        return Err(format!("container {}: bad image-layers", c.id));
    }
    for name in &c.names {
        check_name(name).map_err(|e| format!("container {}: {e}", c.id))?;
    }
    Ok(c)
}

/// The record's bytes (pretty JSON, as the other records).
pub fn render_container(c: &Container) -> Vec<u8> {
    serde_json::to_vec_pretty(c).expect("a container record serializes")
}

/// Find a container among `all` by full id, name, or unique id prefix
/// (as `podman` does). Pure.
pub fn resolve<'a>(all: &'a [Container], name: &str) -> Result<&'a Container, ResolveError> {
    if let Some(c) = all.iter().find(|c| c.id == name) {
        return Ok(c);
    }
    if let Some(c) = all.iter().find(|c| c.names.iter().any(|n| n == name)) {
        return Ok(c);
    }
    let is_prefix =
        !name.is_empty() && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let matches: Vec<&Container> = if is_prefix {
        all.iter().filter(|c| c.id.starts_with(name)).collect()
    } else {
        Vec::new()
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(ResolveError::Unknown),
        many => Err(ResolveError::Ambiguous(many.len())),
    }
}

/// Why [`resolve`] found no single container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveError {
    Unknown,
    Ambiguous(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn record(id: &str) -> Container {
        Container {
            id: id.into(),
            names: vec!["web".into()],
            image: hex('b'),
            layer: id.into(),
            metadata: String::new(),
            created: "2026-12-02T11:00:00Z".into(),
            image_layers: vec![hex('c'), hex('d')],
        }
    }

    #[test]
    fn records_round_trip_with_containers_storage_names() {
        let c = record(&hex('a'));
        let bytes = render_container(&c);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        for key in ["id", "names", "image", "layer", "created", "image-layers"] {
            assert!(v.get(key).is_some(), "{key} in {v}");
        }
        assert_eq!(parse_container(&bytes, &hex('a')).unwrap(), c);
    }

    #[test]
    fn bad_records_are_refused() {
        let good = record(&hex('a'));
        type Change = Box<dyn Fn(&mut Container)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.id = hex('e')), "directory"),
            (Box::new(|c| c.image = "x".into()), "image id"),
            (Box::new(|c| c.layer = hex('f')), "own id"),
            (Box::new(|c| c.image_layers.clear()), "image-layers"),
            (
                Box::new(|c| c.image_layers.push("../x".into())),
                "image-layers",
            ),
            (
                Box::new(|c| c.names.push("a/b".into())),
                "valid container name",
            ),
        ];
        for (change, why) in cases {
            let mut c = good.clone();
            change(&mut c);
            let err = parse_container(&render_container(&c), &hex('a')).unwrap_err();
            assert!(err.contains(why), "{err} should mention {why}");
        }
        assert!(parse_container(b"{", &hex('a')).is_err());
        assert!(parse_container(b"[]", &hex('a')).is_err());
    }

    #[test]
    fn names_follow_podman() {
        for ok in ["web", "a", "A.b_c-1", "9"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "_a", "a b", "a/b", "é", &hex('a')] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name(&"a".repeat(254)).is_err());
    }

    #[test]
    fn resolve_by_id_name_and_prefix() {
        let mut one = record(&format!("ab{}", "0".repeat(62)));
        one.names = vec!["one".into()];
        let mut two = record(&format!("ac{}", "0".repeat(62)));
        two.names = vec!["two".into()];
        let all = vec![one.clone(), two.clone()];
        assert_eq!(resolve(&all, &one.id).unwrap().id, one.id);
        assert_eq!(resolve(&all, "two").unwrap().id, two.id);
        assert_eq!(resolve(&all, "ab").unwrap().id, one.id);
        assert_eq!(resolve(&all, "a").unwrap_err(), ResolveError::Ambiguous(2));
        assert_eq!(resolve(&all, "three").unwrap_err(), ResolveError::Unknown);
        assert_eq!(resolve(&all, "").unwrap_err(), ResolveError::Unknown);
    }
}
