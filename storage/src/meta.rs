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
    if let Some(bad) = image
        .big_data_names
        .iter()
        .find(|n| n.is_empty() || *n == "." || *n == ".." || n.contains('/') || n.contains('\0'))
    {
        return Err(format!("invalid big-data name {bad:?}"));
    }
    match &image.layer {
        Some(l) if crate::digest::is_hex64(l) => Ok(image),
        Some(l) => Err(format!("invalid top layer {l:?}")),
        None => Err("no top layer".into()),
    }
}

/// Is `s` an RFC 3339 date-time (`2026-11-22T07:40:01.123Z`,
/// `…+02:00`), as records and image configs carry? Pure; the characters are
/// checked, not the calendar.
pub fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let at = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if s.len() > 64
        || !(digits(0..4) && at(4, b"-") && digits(5..7) && at(7, b"-") && digits(8..10))
        || !(at(10, b"Tt ") && digits(11..13) && at(13, b":") && digits(14..16))
        || !(at(16, b":") && digits(17..19))
    {
        return false;
    }
    let mut i = 19;
    if at(i, b".") {
        let start = i + 1;
        i = start;
        while at(i, b"0123456789") {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len() && digits(i + 1..i + 3) && at(i + 3, b":") && digits(i + 4..i + 6)
        }
        _ => false,
    }
}

/// Is `s` a name for a file beside `images.json` (a big-data key)? Pure:
/// 1–255 bytes of `[A-Za-z0-9._:=+@-]`, not starting with `.`.
pub fn is_big_data_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:=+@-".contains(&b))
}

/// Check the text of an image record from a share, which another host wrote
/// and this one will print and act on. Every name must be a valid image
/// reference (else the record is refused: `Err` says which name, escaped);
/// `created`, `digest` and big-data digests that are not what they claim to be
/// are dropped, each with a note. Big-data names must be plain file names.
/// Pure.
pub fn check_shared_image(mut image: Image) -> Result<(Image, Vec<String>), String> {
    for name in &image.names {
        crate::reference::parse(name).map_err(|e| format!("invalid name {name:?}: {e}"))?;
    }
    for name in &image.big_data_names {
        if !is_big_data_name(name) {
            return Err(format!("invalid big-data name {name:?}"));
        }
    }
    let mut notes = Vec::new();
    if let Some(c) = image.created.take_if(|c| !is_timestamp(c)) {
        notes.push(format!("dropped its invalid created {c:?}"));
    }
    if let Some(d) = image
        .digest
        .take_if(|d| crate::reference::validate_digest(d).is_err())
    {
        notes.push(format!("dropped its invalid digest {d:?}"));
    }
    let names = &image.big_data_names;
    image.big_data_sizes.retain(|k, _| names.contains(k));
    image.big_data_digests.retain(|k, d| {
        let ok = names.contains(k) && crate::reference::validate_digest(d).is_ok();
        if !ok {
            notes.push(format!("dropped its invalid big-data digest {k:?}: {d:?}"));
        }
        ok
    });
    Ok((image, notes))
}

/// Check the text of a layer record from a share (see [`check_shared_image`]):
/// names that are not valid references, and a `created` or digest that is
/// not one, are dropped, each with a note. Pure.
pub fn check_shared_layer(mut layer: Layer) -> (Layer, Vec<String>) {
    let mut notes = Vec::new();
    layer.names.retain(|n| {
        let ok = crate::reference::parse(n).is_ok();
        if !ok {
            notes.push(format!("dropped its invalid name {n:?}"));
        }
        ok
    });
    if let Some(c) = layer.created.take_if(|c| !is_timestamp(c)) {
        notes.push(format!("dropped its invalid created {c:?}"));
    }
    for (what, field) in [
        ("compressed-diff-digest", &mut layer.compressed_diff_digest),
        ("diff-digest", &mut layer.diff_digest),
    ] {
        if let Some(d) = field.take_if(|d| crate::reference::validate_digest(d).is_err()) {
            notes.push(format!("dropped its invalid {what} {d:?}"));
        }
    }
    (layer, notes)
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
    fn timestamps() {
        for ok in [
            "2026-11-22T07:40:01Z",
            "2026-11-22T07:40:01.123456789Z",
            "2026-11-22t07:40:01z",
            "2026-11-22 07:40:01+02:00",
            "1970-01-01T00:00:00.0-00:30",
        ] {
            assert!(is_timestamp(ok), "{ok}");
        }
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22T07:40:01",
            "2026-11-22T07:40:01.Z",
            "2026-11-22T07:40:01Z\n+ image x",
            "\u{1b}[2J2026-11-22T07:40:01Z",
            "2026-11-22T07:40:01+0200",
            "2026-11-22T07:40:01Zé",
            "２０２６-11-22T07:40:01Z",
        ] {
            assert!(!is_timestamp(bad), "{bad:?}");
        }
    }

    fn image(names: &[&str]) -> Image {
        Image {
            id: A.into(),
            digest: Some(format!("sha256:{B}")),
            names: names.iter().map(|n| n.to_string()).collect(),
            layer: Some(B.into()),
            created: Some("2026-11-22T07:40:01Z".into()),
            big_data_names: vec![MANIFEST.into(), CONFIG.into()],
            big_data_sizes: [(MANIFEST.to_string(), 3)].into(),
            big_data_digests: [(CONFIG.to_string(), format!("sha256:{A}"))].into(),
            shared: false,
        }
    }

    #[test]
    fn shared_image_text_is_checked() {
        let good = image(&["docker.io/library/busybox:latest", "localhost/a:1"]);
        assert_eq!(check_shared_image(good.clone()).unwrap(), (good, vec![]));
        for bad in [
            "localhost/a:1\n+ image 0000 forged",
            "\u{1b}[2Jlocalhost/a:1",
            "localhost/a:1 b",
            "",
            A,
            "Localhost/A",
        ] {
            let err = check_shared_image(image(&["ok:1", bad])).unwrap_err();
            assert!(err.contains("invalid name"), "{err}");
            assert!(
                !err.contains('\n') && !err.contains('\u{1b}'),
                "escaped: {err}"
            );
        }
        let mut odd = image(&["ok:1"]);
        odd.created = Some("\u{1b}[2J".into());
        odd.digest = Some("sha256:xyz\n".into());
        odd.big_data_digests.insert(MANIFEST.into(), "md5:x".into());
        odd.big_data_sizes.insert("other".into(), 1);
        let (checked, notes) = check_shared_image(odd).unwrap();
        assert_eq!(checked.created, None);
        assert_eq!(checked.digest, None);
        assert_eq!(checked.big_data_digests.len(), 1);
        assert_eq!(checked.big_data_sizes.len(), 1);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes
            .iter()
            .all(|n| !n.contains('\u{1b}') && !n.contains('\n')));
        let mut file = image(&[]);
        file.big_data_names.push("../../etc/passwd".into());
        assert!(check_shared_image(file).is_err());
    }

    #[test]
    fn shared_layer_text_is_checked() {
        let layer = Layer {
            id: A.into(),
            names: vec!["ok:1".into(), "bad\u{1b}[2J".into()],
            parent: None,
            created: Some("yesterday\n".into()),
            compressed_diff_digest: Some(format!("sha256:{A}")),
            compressed_size: None,
            diff_digest: Some("sha256:\u{1b}".into()),
            diff_size: None,
            compression: 0,
            incomplete: false,
            disk_size: None,
            shared: false,
        };
        let (checked, notes) = check_shared_layer(layer);
        assert_eq!(checked.names, vec!["ok:1".to_string()]);
        assert_eq!(checked.created, None);
        assert_eq!(checked.diff_digest, None);
        assert!(checked.compressed_diff_digest.is_some());
        assert_eq!(notes.len(), 3, "{notes:?}");
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
        for bad in ["../../etc/passwd", "a/b", "..", ".", ""] {
            let json = format!(r#"{{"id":"{A}","layer":"{B}","big-data-names":["{bad}"]}}"#);
            assert!(parse_image(json.as_bytes(), A).is_err(), "{bad}");
        }
        let json =
            format!(r#"{{"id":"{A}","layer":"{B}","big-data-names":["manifest","config"]}}"#);
        assert!(parse_image(json.as_bytes(), A).is_ok());
    }
}
