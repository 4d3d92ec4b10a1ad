//! The on-disk records: `layer.json` and `images.json`, with containers/storage
//! field names, and their pure (de)serialization.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

/// `overlay-layers/<id>/layer.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// The layer's chain id (64 hex).
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The parent layer's id; `None` for a base layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Digest of the blob as it was distributed (compressed).
    #[serde(
        rename = "compressed-diff-digest",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub compressed_diff_digest: Option<String>,
    #[serde(
        rename = "compressed-size",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub compressed_size: Option<u64>,
    /// The layer's diffID: digest of the uncompressed tar.
    #[serde(
        rename = "diff-digest",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub diff_digest: Option<String>,
    /// Bytes of the uncompressed tar.
    #[serde(rename = "diff-size", default, skip_serializing_if = "Option::is_none")]
    pub diff_size: Option<u64>,
    /// containers/storage compression code: 0 none, 2 gzip, 4 zstd.
    #[serde(default)]
    pub compression: u8,
    /// Set while a layer is being written; a reader never uses such a layer.
    #[serde(default, skip_serializing_if = "is_false")]
    pub incomplete: bool,
    /// Bytes the extracted files use (apparent sizes).
    #[serde(rename = "disk-size", default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<u64>,
    /// In memory only: the layer lives under `RO/` (on the share).
    #[serde(skip)]
    pub shared: bool,
}

/// `overlay-images/<id>/images.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// sha256 hex of the image config.
    pub id: String,
    /// Digest of the manifest the image was loaded from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default)]
    pub names: Vec<String>,
    /// The top layer's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(rename = "big-data-names", default)]
    pub big_data_names: Vec<String>,
    #[serde(rename = "big-data-sizes", default)]
    pub big_data_sizes: BTreeMap<String, u64>,
    #[serde(rename = "big-data-digests", default)]
    pub big_data_digests: BTreeMap<String, String>,
    /// In memory only: the image lives under `overlay-images/RO` (on the share).
    #[serde(skip)]
    pub shared: bool,
}

/// The big-data keys (file names in the image dir) we store.
pub const MANIFEST: &str = "manifest";
pub const CONFIG: &str = "config";

/// Parse a `layer.json` (pure). The record's id must equal `expected_id`.
pub fn parse_layer(bytes: &[u8], expected_id: &str) -> Result<Layer, String> {
    let layer: Layer = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if layer.id != expected_id {
        return Err(format!("id {:?} does not match its directory", layer.id));
    }
    if let Some(p) = &layer.parent {
        if !crate::digest::is_hex64(p) || p == &layer.id {
            return Err(format!("invalid parent {p:?}"));
        }
    }
    Ok(layer)
}

/// Parse an `images.json` (pure). The record's id must equal `expected_id` and
/// name a top layer.
pub fn parse_image(bytes: &[u8], expected_id: &str) -> Result<Image, String> {
    let image: Image = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if image.id != expected_id {
        return Err(format!("id {:?} does not match its directory", image.id));
    }
    match &image.layer {
        Some(l) if crate::digest::is_hex64(l) => Ok(image),
        Some(l) => Err(format!("invalid top layer {l:?}")),
        None => Err("no top layer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn layer_uses_containers_storage_field_names() {
        let l = Layer {
            id: A.into(),
            names: vec![],
            parent: Some(B.into()),
            created: None,
            compressed_diff_digest: Some("sha256:c".into()),
            compressed_size: Some(3),
            diff_digest: Some("sha256:d".into()),
            diff_size: Some(10),
            compression: 2,
            incomplete: false,
            disk_size: None,
            shared: false,
        };
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(v["compressed-diff-digest"], "sha256:c");
        assert_eq!(v["diff-size"], 10);
        assert!(v.get("incomplete").is_none());
        let back = parse_layer(&serde_json::to_vec(&l).unwrap(), A).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn bad_records_are_rejected() {
        assert!(parse_layer(b"{", A).is_err());
        assert!(parse_layer(format!(r#"{{"id":"{B}"}}"#).as_bytes(), A).is_err());
        assert!(parse_layer(format!(r#"{{"id":"{A}","parent":"{A}"}}"#).as_bytes(), A).is_err());
        assert!(parse_layer(format!(r#"{{"id":"{A}","parent":"../x"}}"#).as_bytes(), A).is_err());
        assert!(parse_image(format!(r#"{{"id":"{A}"}}"#).as_bytes(), A).is_err());
        assert!(parse_image(format!(r#"{{"id":"{A}","layer":"{B}"}}"#).as_bytes(), A).is_ok());
        assert!(parse_image(b"[]", A).is_err());
    }
}
