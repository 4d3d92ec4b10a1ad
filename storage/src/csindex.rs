//! containers/storage's own index of a share, as pure functions over bytes:
//! `overlay-layers/layers.json`, `overlay-images/images.json`, the
//! `storectl-index.json` stamp beside `generation`, big-data file names and
//! lock-file change tokens. The I/O is the writer's: storectl-remote's
//! `writer` keeps the index, [`crate::Store`] opens from it.
//!
//! ## The files
//!
//! `layers.json` and `images.json` are JSON arrays of containers/storage
//! records (the fields `podman load` writes; see [`layer_line`],
//! [`image_line`]), rendered **one record per line**:
//!
//! ```text
//! [
//! {"id":"…","parent":"…",…},
//! {"id":"…",…}
//! ]
//! ```
//!
//! A record's line never contains a newline (JSON escapes them), so a writer
//! keeps each record's line and rewrites a file by splicing the unchanged
//! lines' bytes ([`render`]); nothing is re-serialized. Any JSON array is read
//! back ([`split_records`] does not depend on the line layout), so an index
//! another program rewrote still parses.
//!
//! The stamp ([`Stamp`]) says which `generation` text the two files reflect
//! and their byte sizes: a reader trusts the index only when the stamp names
//! the `generation` it read and both sizes match, which a stale index (a
//! writer that crashed after the files, before `generation`) or a torn one
//! (between the two files) does not.
//!
//! ## Parsing is defensive
//!
//! The index is on a share another host wrote. A file that is not a JSON
//! array is an error; a record that does not parse, whose id is not 64
//! lowercase hex (`../x`, empty, upper case), whose parent or top layer is
//! not one, or that repeats an id already seen, is skipped with a note
//! ([`Parsed::skipped`]). Nothing here panics on any input (property tested).
//! The checks are structural: text a reader shows or acts on (names,
//! `created`, digests) is checked as for per-id records
//! ([`crate::meta::check_shared_image`], [`crate::meta::check_shared_layer`]),
//! and an id is only as good as the directory that holds it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::is_hex64;
use crate::meta::{Image, Layer, CONFIG, MANIFEST};

/// containers/storage's layer index, in `overlay-layers/`.
pub const LAYERS_INDEX: &str = "layers.json";
/// containers/storage's image index, in `overlay-images/`.
pub const IMAGES_INDEX: &str = "images.json";
/// The stamp, on the share beside `generation`.
pub const STAMP: &str = "storectl-index.json";
/// containers/storage's lock files (relative to the share), each holding a
/// [`TOKEN_LEN`]-byte change token rewritten in place on every change.
pub const STORAGE_LOCK: &str = "storage.lock";
pub const LAYERS_LOCK: &str = "overlay-layers/layers.lock";
pub const IMAGES_LOCK: &str = "overlay-images/images.lock";
/// Bytes of a containers/storage lock file's change token.
pub const TOKEN_LEN: usize = 64;
/// The most an index file may hold (a reader refuses a bigger one): about
/// 400,000 layer records.
pub const MAX_INDEX: u64 = 256 << 20;
/// The most nested a record may be (deeper is refused, not recursed into).
const MAX_DEPTH: usize = 64;

/// `<share>/overlay-layers/layers.json`.
pub fn layers_index(share: &Path) -> PathBuf {
    share.join("overlay-layers").join(LAYERS_INDEX)
}

/// `<share>/overlay-images/images.json`.
pub fn images_index(share: &Path) -> PathBuf {
    share.join("overlay-images").join(IMAGES_INDEX)
}

/// One record's line, as in an index file: its own bytes, or a range of a
/// file read whole (a store opened from the index keeps the files' bytes
/// instead of copying 40,000 lines out of them).
#[derive(Debug, Clone)]
pub enum Line {
    Own(Box<[u8]>),
    In(
        std::sync::Arc<crate::fsutil::FileBytes>,
        std::ops::Range<usize>,
    ),
}

/// A record line's id where the writer renders it ([`layer_line`],
/// [`image_line`]: `{"id":"<64 lowercase hex>",…}`); `None` for a line
/// with it anywhere else. Pure.
pub fn line_id(line: &[u8]) -> Option<&str> {
    let rest = line.strip_prefix(b"{\"id\":\"")?;
    let id = std::str::from_utf8(rest.get(..64)?).ok()?;
    let closed = rest.get(64..66) == Some(b"\",") && line.last() == Some(&b'}');
    (closed && is_hex64(id)).then_some(id)
}

impl std::ops::Deref for Line {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Line::Own(b) => b,
            Line::In(file, range) => &file[range.clone()],
        }
    }
}

impl PartialEq for Line {
    fn eq(&self, other: &Line) -> bool {
        **self == **other
    }
}

impl From<Vec<u8>> for Line {
    fn from(v: Vec<u8>) -> Line {
        Line::Own(v.into_boxed_slice())
    }
}

/// Why an index file cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("not a JSON array: {0}")]
    NotAnArray(String),
    #[error("{0} bytes, more than an index may have")]
    TooBig(usize),
}

/// What a parse of an index file gave: the records in file order, each with
/// its bytes in the file (what a writer splices back unchanged), and one note
/// per skipped record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a, T> {
    pub records: Vec<(T, &'a [u8])>,
    pub skipped: Vec<String>,
}

/// `[\n` + lines joined by `,\n` + `\n]\n` (`[]\n` when there are none).
/// Each line must be one record's JSON without a newline ([`layer_line`],
/// [`image_line`], or bytes [`split_records`] returned).
pub fn render<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let lines: Vec<&[u8]> = lines.into_iter().collect();
    if lines.is_empty() {
        return b"[]\n".to_vec();
    }
    let len = lines.iter().map(|l| l.len() + 2).sum::<usize>() + 4;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(b"[\n");
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",\n");
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"\n]\n");
    out
}

/// The elements of a JSON array, each as its bytes in `bytes` (surrounding
/// whitespace trimmed), without parsing them: strings and nesting are
/// tracked so commas inside records do not split. Whether each element is
/// valid JSON is for its parser to say. Pure, O(len), no recursion.
pub fn split_records(bytes: &[u8]) -> Result<Vec<&[u8]>, IndexError> {
    if bytes.len() as u64 > MAX_INDEX {
        return Err(IndexError::TooBig(bytes.len()));
    }
    let bad = |what: &str, at: usize| IndexError::NotAnArray(format!("{what} at byte {at}"));
    let is_ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let mut i = 0;
    while i < bytes.len() && is_ws(bytes[i]) {
        i += 1;
    }
    if bytes.get(i) != Some(&b'[') {
        return Err(bad("no opening [", i));
    }
    i += 1;
    let mut out = Vec::new();
    let mut start = i;
    let mut depth = 0usize;
    let mut in_string = false;
    let mut seen_content = false;
    let mut closed = None;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => {
                    in_string = true;
                    seen_content = true;
                }
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(bad("nested too deep", i));
                    }
                    seen_content = true;
                }
                b']' | b'}' if depth > 0 => depth -= 1,
                b']' => {
                    closed = Some(i);
                    break;
                }
                b'}' => return Err(bad("unbalanced }", i)),
                b',' if depth == 0 => {
                    let elem = trim(&bytes[start..i]);
                    if elem.is_empty() {
                        return Err(bad("empty element", i));
                    }
                    out.push(elem);
                    start = i + 1;
                    seen_content = false;
                }
                b if !is_ws(b) => seen_content = true,
                _ => {}
            }
        }
        i += 1;
    }
    let Some(end) = closed else {
        return Err(bad("no closing ] (truncated?)", bytes.len()));
    };
    let last = trim(&bytes[start..end]);
    match (last.is_empty(), out.is_empty()) {
        (false, _) => out.push(last),
        (true, true) if !seen_content => {} // `[]`
        (true, _) => return Err(bad("trailing comma", end)),
    }
    if let Some(extra) = bytes[end + 1..].iter().position(|&b| !is_ws(b)) {
        return Err(bad("content after ]", end + 1 + extra));
    }
    Ok(out)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\n' | b'\r', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\n' | b'\r'] = s {
        s = rest;
    }
    s
}

/// `created` as Go's `time.Time` reads it (containers/storage refuses the
/// whole file over one bad time): RFC 3339 with `T` and `Z` upper case, a
/// real calendar date, at most 9 fraction digits. Lower-case `t`/`z` or a
/// space separator are normalized; anything else is `None` (left out of the
/// record). Pure.
pub fn go_timestamp(s: &str) -> Option<String> {
    if !crate::meta::is_timestamp(s) {
        return None;
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> u32 {
        b[r].iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
    };
    let (year, month, day) = (num(0..4), num(5..7), num(8..10));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > days || num(11..13) > 23 || num(14..16) > 59 || num(17..19) > 59 {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    out.push_str(&s[..10]);
    out.push('T');
    out.push_str(&s[11..19]);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        out.push('.');
        out.push_str(&frac[..digits.min(9)]);
        rest = &frac[digits..];
    }
    match rest {
        "Z" | "z" => out.push('Z'),
        zone => {
            let z = zone.as_bytes();
            let (h, m) = (
                u32::from(z[1] - b'0') * 10 + u32::from(z[2] - b'0'),
                u32::from(z[4] - b'0') * 10 + u32::from(z[5] - b'0'),
            );
            if h > 23 || m > 59 {
                return None;
            }
            out.push_str(zone);
        }
    }
    Some(out)
}

/// A `sha256:<64 hex>` digest (what containers/storage validates; anything
/// else in a digest field makes it refuse the whole images.json).
fn is_sha256(d: &str) -> bool {
    crate::digest::sha256_hex(d).is_some()
}

/// containers/storage's file name for big-data `key` in an image's
/// directory: the key itself when it is only `[a-z0-9.]`, else `=` and its
/// standard base64 (`manifest` → `manifest`, `sha256:…` → `=c2hh…`).
pub fn big_data_file_name(key: &str) -> String {
    use base64::Engine as _;
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase());
    if plain {
        key.to_string()
    } else {
        format!("={}", base64::engine::general_purpose::STANDARD.encode(key))
    }
}

/// containers/storage's big-data key of an image's config: its digest.
pub fn config_key(image_id: &str) -> String {
    format!("sha256:{image_id}")
}

/// containers/storage's big-data key of a manifest by digest.
pub fn manifest_key(digest: &str) -> String {
    format!("manifest-{digest}")
}

/// The containers/storage big-data items of `image` as (key, our file name
/// in its directory, size, digest): the config under [`config_key`], the
/// manifest as `manifest` and under [`manifest_key`]. Only items with a
/// recorded size and a sha256 digest are given (containers/storage checks
/// manifest digests). Pure.
pub fn big_data_items(image: &Image) -> Vec<(String, &'static str, u64, String)> {
    let mut out = Vec::new();
    let item = |name: &str| {
        let size = *image.big_data_sizes.get(name)?;
        let digest = image.big_data_digests.get(name).filter(|d| is_sha256(d))?;
        image
            .big_data_names
            .iter()
            .any(|n| n == name)
            .then(|| (size, digest.clone()))
    };
    if let Some((size, digest)) = item(CONFIG) {
        out.push((config_key(&image.id), CONFIG, size, digest));
    }
    if let Some((size, digest)) = item(MANIFEST) {
        out.push((manifest_key(&digest), MANIFEST, size, digest.clone()));
        out.push((MANIFEST.to_string(), MANIFEST, size, digest));
    }
    out
}

/// A layer's line in `layers.json`: our record with containers/storage's
/// field names (`id`, `names`, `parent`, `created`, `compressed-diff-digest`,
/// `compressed-size`, `diff-digest`, `diff-size`, `compression`) and ours
/// (`disk-size`), which it ignores. `created` is given in Go's form or left
/// out ([`go_timestamp`]); digests that are not sha256 are left out.
pub fn layer_line(layer: &Layer) -> Vec<u8> {
    let mut l = layer.clone();
    l.created = l.created.as_deref().and_then(go_timestamp);
    l.compressed_diff_digest = l.compressed_diff_digest.filter(|d| is_sha256(d));
    l.diff_digest = l.diff_digest.filter(|d| is_sha256(d));
    l.incomplete = false;
    serde_json::to_vec(&l).expect("a layer record serializes")
}

/// containers/storage's image record, the fields we read (`names-history`
/// and `metadata` are not).
#[derive(Debug, Deserialize)]
struct CsImage {
    id: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    layer: Option<String>,
    #[serde(rename = "big-data-names", default)]
    big_data_names: Vec<String>,
    #[serde(rename = "big-data-sizes", default)]
    big_data_sizes: BTreeMap<String, u64>,
    #[serde(rename = "big-data-digests", default)]
    big_data_digests: BTreeMap<String, String>,
    #[serde(default)]
    created: Option<String>,
}

/// The same for writing (a `metadata` string).
#[derive(Serialize)]
struct CsImageOut<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    names: &'a [&'a str],
    #[serde(rename = "names-history", skip_serializing_if = "<[_]>::is_empty")]
    names_history: &'a [&'a str],
    #[serde(skip_serializing_if = "Option::is_none")]
    layer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<String>,
    #[serde(rename = "big-data-names")]
    big_data_names: Vec<&'a str>,
    #[serde(rename = "big-data-sizes")]
    big_data_sizes: BTreeMap<&'a str, u64>,
    #[serde(rename = "big-data-digests")]
    big_data_digests: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<String>,
}

/// An image's line in `images.json`, as podman writes it: `id`, `digest`,
/// `names`, `names-history`, `layer`, `metadata` (a JSON string with the
/// manifest's empty signature list), the big-data items of
/// [`big_data_items`] (config under its digest, `manifest-<digest>`,
/// `manifest`) with their sizes and digests, `created` (Go's form, else left
/// out). Names in `drop_names` are left out (a name another record already
/// has: containers/storage refuses a read-only store whose images share a
/// name), and so is a `digest` that is not sha256.
pub fn image_line(image: &Image, drop_names: &BTreeSet<&str>) -> Vec<u8> {
    let items = big_data_items(image);
    let names: Vec<&str> = image
        .names
        .iter()
        .map(String::as_str)
        .filter(|n| !drop_names.contains(n))
        .collect();
    let digest = image.digest.as_deref().filter(|d| is_sha256(d));
    let metadata = digest.map(|d| serde_json::json!({ "signatures-sizes": { d: [] } }).to_string());
    let out = CsImageOut {
        id: &image.id,
        digest,
        names: &names,
        names_history: &names,
        layer: image.layer.as_deref(),
        metadata,
        big_data_names: items.iter().map(|i| i.0.as_str()).collect(),
        big_data_sizes: items.iter().map(|i| (i.0.as_str(), i.2)).collect(),
        big_data_digests: items.iter().map(|i| (i.0.as_str(), i.3.as_str())).collect(),
        created: image.created.as_deref().and_then(go_timestamp),
    };
    serde_json::to_vec(&out).expect("an image record serializes")
}

/// Parse one `layers.json` record (pure): it must have a 64-hex `id`, and a
/// `parent` (if any) that is another 64-hex id. A record marked incomplete
/// (ours, or containers/storage's `flags.incomplete`) is refused.
pub fn parse_layer_record(bytes: &[u8]) -> Result<Layer, String> {
    #[derive(Deserialize)]
    struct Flags {
        #[serde(default)]
        incomplete: bool,
    }
    #[derive(Deserialize)]
    struct Extra {
        #[serde(default)]
        flags: Option<Flags>,
    }
    let layer: Layer = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !is_hex64(&layer.id) {
        return Err(format!("invalid id {:?}", layer.id));
    }
    let extra: Extra = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if layer.incomplete || extra.flags.is_some_and(|f| f.incomplete) {
        return Err(format!("layer {} is marked incomplete", layer.id));
    }
    crate::meta::parse_layer(bytes, &layer.id)
}

/// Parse one `images.json` record (pure) into our image record: the config
/// item ([`config_key`]) becomes `config`, `manifest` stays, the
/// `manifest-<digest>` alias and items we do not keep are dropped. The id
/// and top layer must be 64 hex.
pub fn parse_image_record(bytes: &[u8]) -> Result<Image, String> {
    let cs: CsImage = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !is_hex64(&cs.id) {
        return Err(format!("invalid id {:?}", cs.id));
    }
    match cs.layer.as_deref() {
        Some(l) if is_hex64(l) => {}
        Some(l) => return Err(format!("invalid top layer {l:?}")),
        None => return Err("no top layer".into()),
    }
    let config = config_key(&cs.id);
    let mut image = Image {
        id: cs.id,
        digest: cs.digest,
        names: cs.names,
        layer: cs.layer,
        created: cs.created,
        big_data_names: Vec::new(),
        big_data_sizes: BTreeMap::new(),
        big_data_digests: BTreeMap::new(),
        shared: false,
    };
    for (key, ours) in [(MANIFEST, MANIFEST), (config.as_str(), CONFIG)] {
        if !cs.big_data_names.iter().any(|n| n == key) {
            continue;
        }
        image.big_data_names.push(ours.to_string());
        if let Some(size) = cs.big_data_sizes.get(key) {
            image.big_data_sizes.insert(ours.to_string(), *size);
        }
        if let Some(digest) = cs.big_data_digests.get(key) {
            image
                .big_data_digests
                .insert(ours.to_string(), digest.clone());
        }
    }
    Ok(image)
}

/// The id of one record, however else it is malformed (for notes).
fn record_id(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_slice::<Id>(bytes).ok().map(|r| r.id)
}

fn parse_all<'a, T>(
    bytes: &'a [u8],
    what: &str,
    parse: impl Fn(&[u8]) -> Result<T, String>,
    id_of: impl Fn(&T) -> &str,
) -> Result<Parsed<'a, T>, IndexError> {
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, raw) in split_records(bytes)?.into_iter().enumerate() {
        match parse(raw) {
            Ok(record) if !seen.insert(id_of(&record).to_string()) => {
                skipped.push(format!(
                    "{what} record {i}: a second record of id {}",
                    id_of(&record)
                ));
            }
            Ok(record) => records.push((record, raw)),
            Err(e) => {
                let id = record_id(raw)
                    .map(|id| format!(" ({id:?})"))
                    .unwrap_or_default();
                skipped.push(format!("{what} record {i}{id}: {e}"));
            }
        }
    }
    Ok(Parsed { records, skipped })
}

/// Parse `layers.json` (pure): every valid record, in file order, with its
/// bytes; invalid and repeated ones skipped with a note.
pub fn parse_layers(bytes: &[u8]) -> Result<Parsed<'_, Layer>, IndexError> {
    parse_all(bytes, "layer", parse_layer_record, |l| &l.id)
}

/// Parse `images.json` (pure), as [`parse_layers`]; a name a record before
/// it already has is dropped from the later one, with a note.
pub fn parse_images(bytes: &[u8]) -> Result<Parsed<'_, Image>, IndexError> {
    let mut parsed = parse_all(bytes, "image", parse_image_record, |i| &i.id)?;
    let mut names = BTreeSet::new();
    for (image, _) in &mut parsed.records {
        let id = &image.id;
        let skipped = &mut parsed.skipped;
        image.names.retain(|n| {
            let first = names.insert(n.clone());
            if !first {
                skipped.push(format!(
                    "image {id}: dropped the name {n:?} another image has"
                ));
            }
            first
        });
    }
    Ok(parsed)
}

/// Names of `images` that an image before it (in this order) already has,
/// by image id: what [`image_line`] must leave out. Pure.
pub fn duplicate_names<'a>(
    images: impl IntoIterator<Item = &'a Image>,
) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for image in images {
        for name in &image.names {
            if !seen.insert(name) {
                out.entry(&image.id).or_default().insert(name);
            }
        }
    }
    out
}

/// `storectl-index.json`: which `generation` text the index files reflect,
/// and their sizes. Written after both files, before `generation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The exact text of `generation` the index reflects.
    pub generation: String,
    /// Bytes of `overlay-layers/layers.json`.
    #[serde(rename = "layers-size")]
    pub layers_size: u64,
    /// Bytes of `overlay-images/images.json`.
    #[serde(rename = "images-size")]
    pub images_size: u64,
}

/// The most a stamp may hold.
pub const MAX_STAMP: u64 = 4096;

impl Stamp {
    /// Does this stamp vouch for an index of these sizes at `generation`?
    pub fn is_current(&self, generation: &str, layers_size: u64, images_size: u64) -> bool {
        self.generation == generation
            && self.layers_size == layers_size
            && self.images_size == images_size
    }
}

/// The stamp's bytes (one line of JSON).
pub fn render_stamp(stamp: &Stamp) -> Vec<u8> {
    let mut out = serde_json::to_vec(stamp).expect("a stamp serializes");
    out.push(b'\n');
    out
}

/// Parse a stamp (pure): JSON with `generation` (at most 4096 bytes, as
/// `generation` itself), `layers-size` and `images-size`.
pub fn parse_stamp(bytes: &[u8]) -> Result<Stamp, String> {
    if bytes.len() as u64 > MAX_STAMP {
        return Err(format!("{} bytes, more than a stamp may have", bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// A containers/storage lock-file change token: 64 bytes that differ on
/// every call (its layout: time, a counter and the process id, little
/// endian, then random bytes). A reader compares the token it last saw with
/// the file's first 64 bytes and reloads the index when they differ. Pure.
pub fn token(unix_nanos: u64, counter: u64, pid: u32, random: &[u8; 44]) -> [u8; TOKEN_LEN] {
    let mut out = [0u8; TOKEN_LEN];
    out[..8].copy_from_slice(&unix_nanos.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
    out[16..20].copy_from_slice(&pid.to_le_bytes());
    out[20..].copy_from_slice(random);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    pub(crate) fn layer(id: &str, parent: Option<&str>) -> Layer {
        Layer {
            id: id.into(),
            names: vec![],
            parent: parent.map(Into::into),
            created: Some("2026-12-02T10:54:33.500876467Z".into()),
            compressed_diff_digest: Some(format!("sha256:{C}")),
            compressed_size: Some(1990144),
            diff_digest: Some(format!("sha256:{id}")),
            diff_size: Some(1990144),
            compression: 2,
            incomplete: false,
            disk_size: Some(100),
            shared: false,
        }
    }

    pub(crate) fn image(id: &str, top: &str, names: &[&str]) -> Image {
        Image {
            id: id.into(),
            digest: Some(format!("sha256:{C}")),
            names: names.iter().map(|n| n.to_string()).collect(),
            layer: Some(top.into()),
            created: Some("2026-12-02T10:54:32.765906043Z".into()),
            big_data_names: vec![MANIFEST.into(), CONFIG.into()],
            big_data_sizes: [(MANIFEST.into(), 588), (CONFIG.into(), 548)].into(),
            big_data_digests: [
                (MANIFEST.into(), format!("sha256:{C}")),
                (CONFIG.into(), format!("sha256:{id}")),
            ]
            .into(),
            shared: false,
        }
    }

    /// The fields and key names podman 4.3.1's `podman load` writes.
    #[test]
    fn records_have_podmans_fields() {
        let l: serde_json::Value = serde_json::from_slice(&layer_line(&layer(B, Some(A)))).unwrap();
        for key in [
            "id",
            "parent",
            "created",
            "compressed-diff-digest",
            "compressed-size",
            "diff-digest",
            "diff-size",
        ] {
            assert!(l.get(key).is_some(), "{key} in {l}");
        }
        let line = image_line(
            &image(A, B, &["docker.io/library/busybox:latest"]),
            &BTreeSet::new(),
        );
        let i: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let config = format!("sha256:{A}");
        let manifest = format!("manifest-sha256:{C}");
        assert_eq!(
            i["big-data-names"],
            serde_json::json!([config, manifest, "manifest"])
        );
        assert_eq!(i["big-data-sizes"][&config], 548);
        assert_eq!(i["big-data-sizes"][&manifest], 588);
        assert_eq!(i["big-data-digests"]["manifest"], format!("sha256:{C}"));
        assert_eq!(i["names-history"], i["names"]);
        assert_eq!(i["layer"], B);
        let metadata: serde_json::Value =
            serde_json::from_str(i["metadata"].as_str().unwrap()).unwrap();
        assert_eq!(
            metadata,
            serde_json::json!({"signatures-sizes": {format!("sha256:{C}"): []}})
        );
        assert!(!line.contains(&b'\n'));
    }

    #[test]
    fn big_data_file_names_as_containers_storage() {
        assert_eq!(big_data_file_name("manifest"), "manifest");
        // Measured with podman 4.3.1 (`podman load` of a busybox image).
        assert_eq!(
            big_data_file_name(
                "manifest-sha256:831606a30f5b6140f2ffad82709b0208889f5ce09d1e13c7a3b2f4133c3d55f5"
            ),
            "=bWFuaWZlc3Qtc2hhMjU2OjgzMTYwNmEzMGY1YjYxNDBmMmZmYWQ4MjcwOWIwMjA4ODg5ZjVjZTA5ZDFlMTNjN2EzYjJmNDEzM2MzZDU1ZjU="
        );
        assert_eq!(
            big_data_file_name(
                "sha256:7c41c0d113a5bbb9878d489b167a54ef5e8c76239c786a7405ae08cdd5e364a2"
            ),
            "=c2hhMjU2OjdjNDFjMGQxMTNhNWJiYjk4NzhkNDg5YjE2N2E1NGVmNWU4Yzc2MjM5Yzc4NmE3NDA1YWUwOGNkZDVlMzY0YTI="
        );
        assert_eq!(big_data_file_name("../x"), "=Li4veA==");
        assert_eq!(big_data_file_name(""), "=");
        assert!(!big_data_file_name("a/b").contains('/'));
    }

    #[test]
    fn records_round_trip() {
        let l = layer(B, Some(A));
        assert_eq!(parse_layer_record(&layer_line(&l)).unwrap(), l);
        let i = image(A, B, &["x:1", "y:2"]);
        assert_eq!(
            parse_image_record(&image_line(&i, &BTreeSet::new())).unwrap(),
            i
        );
        let dropped = image_line(&i, &["x:1"].into());
        assert_eq!(parse_image_record(&dropped).unwrap().names, vec!["y:2"]);
    }

    #[test]
    fn render_and_split() {
        assert_eq!(render(std::iter::empty()), b"[]\n");
        assert_eq!(split_records(b"[]\n").unwrap(), Vec::<&[u8]>::new());
        assert_eq!(split_records(b" [ ] ").unwrap(), Vec::<&[u8]>::new());
        let lines: Vec<Vec<u8>> = vec![
            br#"{"id":"a,]}"}"#.to_vec(),
            br#"{"x":[1,{"y":"\"]"}]}"#.to_vec(),
        ];
        let bytes = render(lines.iter().map(Vec::as_slice));
        assert_eq!(
            bytes,
            b"[\n{\"id\":\"a,]}\"},\n{\"x\":[1,{\"y\":\"\\\"]\"}]}\n]\n"
        );
        assert_eq!(split_records(&bytes).unwrap(), lines);
        // Another program's layout of the same array.
        assert_eq!(
            split_records(br#"[{"id":"a,]}"},{"x":[1,{"y":"\"]"}]}]"#).unwrap(),
            lines
        );
        for bad in [
            &b""[..],
            b"{}",
            b"[",
            b"[{}",
            b"[{},]",
            b"[,]",
            b"[,{}]",
            b"[{}] x",
            b"[{}}]",
            b"[\"abc]",
        ] {
            assert!(
                split_records(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("[{}{}]", "[".repeat(100), "]".repeat(100));
        assert!(split_records(deep.as_bytes()).is_err());
    }

    #[test]
    fn hostile_records_are_skipped() {
        let good = layer_line(&layer(A, None));
        let child = layer_line(&layer(B, Some(A)));
        let mut evil = layer(A, None);
        evil.id = "../../../etc".into();
        let evil = serde_json::to_vec(&evil).unwrap();
        let upper = layer_line(&layer(&A.to_uppercase(), None));
        let loops = layer_line(&layer(C, Some(C)));
        let incomplete = format!(r#"{{"id":"{C}","flags":{{"incomplete":true}}}}"#);
        let lines: Vec<&[u8]> = vec![
            &good,
            &evil,
            &good,
            b"{\"id\": 5}",
            b"[1,2]",
            b"\"str\"",
            &upper,
            &loops,
            incomplete.as_bytes(),
            &child,
        ];
        let bytes = render(lines);
        let parsed = parse_layers(&bytes).unwrap();
        let ids: Vec<&str> = parsed.records.iter().map(|(l, _)| l.id.as_str()).collect();
        assert_eq!(ids, vec![A, B]);
        assert_eq!(parsed.records[0].1, &good[..], "bytes as in the file");
        assert_eq!(parsed.skipped.len(), 8, "{:#?}", parsed.skipped);
        assert!(
            parsed.skipped[1].contains("second record"),
            "{}",
            parsed.skipped[1]
        );
    }

    #[test]
    fn image_records_are_checked() {
        let i = image(A, B, &["x:1"]);
        let ok = image_line(&i, &BTreeSet::new());
        let mut bad_top = i.clone();
        bad_top.layer = Some("../x".into());
        let bad_top = image_line(&bad_top, &BTreeSet::new());
        let no_top = format!(r#"{{"id":"{C}"}}"#);
        let second = image_line(&image(C, B, &["x:1", "z:1"]), &BTreeSet::new());
        let bytes = render([&ok[..], &bad_top, no_top.as_bytes(), &second]);
        let parsed = parse_images(&bytes).unwrap();
        assert_eq!(parsed.records.len(), 2);
        assert_eq!(
            parsed.records[1].0.names,
            vec!["z:1"],
            "x:1 is the first image's"
        );
        assert_eq!(parsed.skipped.len(), 3, "{:#?}", parsed.skipped);
        let (first, second) = (image(A, B, &["x:1"]), image(C, B, &["x:1", "y:1"]));
        let dups = duplicate_names([&first, &second]);
        assert_eq!(dups.get(C), Some(&["x:1"].into()));
        assert_eq!(dups.get(A), None);
    }

    #[test]
    fn go_timestamps() {
        for (given, want) in [
            ("2026-11-22T07:40:01Z", Some("2026-11-22T07:40:01Z")),
            ("2026-11-22t07:40:01.5z", Some("2026-11-22T07:40:01.5Z")),
            (
                "2026-11-22 07:40:01+02:00",
                Some("2026-11-22T07:40:01+02:00"),
            ),
            (
                "2026-11-22T07:40:01.1234567891234Z",
                Some("2026-11-22T07:40:01.123456789Z"),
            ),
            ("2024-02-29T00:00:00Z", Some("2024-02-29T00:00:00Z")),
            ("2026-02-29T00:00:00Z", None),
            ("2026-13-01T00:00:00Z", None),
            ("2026-00-01T00:00:00Z", None),
            ("2026-04-31T00:00:00Z", None),
            ("2026-04-30T24:00:00Z", None),
            ("2026-04-30T23:60:00Z", None),
            ("2026-04-30T23:00:60Z", None),
            ("2026-04-30T23:00:00+24:00", None),
            ("2026-04-30T23:00:00+01:60", None),
            ("yesterday", None),
        ] {
            assert_eq!(go_timestamp(given).as_deref(), want, "{given}");
        }
    }

    #[test]
    fn stamps() {
        let s = Stamp {
            generation: "7 123-4-abc\n".into(),
            layers_size: 10,
            images_size: 20,
        };
        let bytes = render_stamp(&s);
        assert_eq!(parse_stamp(&bytes).unwrap(), s);
        assert!(s.is_current("7 123-4-abc\n", 10, 20));
        assert!(!s.is_current("8 123-4-abc\n", 10, 20), "stale");
        assert!(!s.is_current("7 123-4-abc\n", 11, 20), "torn");
        assert!(!s.is_current("7 123-4-abc\n", 10, 21), "torn");
        assert!(parse_stamp(b"{}").is_err());
        assert!(parse_stamp(&vec![b' '; 5000]).is_err());
    }

    #[test]
    fn tokens_differ() {
        let a = token(1, 2, 3, &[0; 44]);
        let b = token(1, 3, 3, &[0; 44]);
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_LEN);
    }
}
