//! A writer's shared layers and images from containers/storage's index on
//! its share (`overlay-layers/layers.json`, `overlay-images/images.json`,
//! [`crate::csindex`]) instead of 40,000 per-id records: pure functions over
//! bytes; the I/O is [`crate::Store`]'s.
//!
//! The index stands for the records only when nothing can have changed
//! them behind it ([`trusted`]): the stamp names the `generation` the store
//! read, the files have the sizes the stamp gives, and the last holder of
//! the writer lock let go normally (a crash between publishing a directory
//! and rewriting the index leaves the lock file without `released`): the
//! files are then the ones that writer rendered from its checked state.
//! [`lazy_entries`] reads each line's id where the writer renders it (the
//! whole parse for a line with it elsewhere), in id order, each id once;
//! the records themselves are parsed when first used ([`crate::Records`]:
//! the whole parse with the checks a shared record gets, [`layer`],
//! [`image`]; or a skeleton scan, [`layer_skeleton`], [`image_skeleton`]).
//! Files that do not split into records, or list an id twice, and the
//! store reads the records as before: the fallback is the slow path, never
//! a different answer.

use rayon::prelude::*;

use crate::csindex::{self, Stamp};
use crate::digest::is_hex64;
use crate::meta::{self, Image, Layer};
use crate::store::Record;

/// Why the index does not stand for the records now, or `Ok`. Pure.
///
/// `generation` is the share's `generation` text, `lock_released` whether
/// the writer lock's last holder let go normally, `stamp` the parsed stamp,
/// `sizes` the sizes of `layers.json` and `images.json` (`None`: missing or
/// not a regular file).
pub(crate) fn trusted(
    generation: Option<&str>,
    lock_released: bool,
    stamp: Option<&Stamp>,
    sizes: (Option<u64>, Option<u64>),
) -> Result<(), String> {
    let generation = generation.ok_or("no generation")?;
    if !lock_released {
        return Err("the writer lock's last holder did not let go normally".into());
    }
    let stamp = stamp.ok_or("no valid stamp")?;
    let (Some(layers), Some(images)) = sizes else {
        return Err("an index file is missing".into());
    };
    if stamp.generation != generation {
        return Err("the stamp is not for the current generation".into());
    }
    if !stamp.is_current(generation, layers, images) {
        return Err("the index files do not have the sizes the stamp gives".into());
    }
    Ok(())
}

/// The records of an index file, each as its bytes. A file as the writer
/// renders it ([`csindex::render`]: one record per line) is split on its
/// newlines; any other JSON array by [`csindex::split_records`]. Pure.
pub(crate) fn records(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    if bytes == b"[]\n" {
        return Ok(Vec::new());
    }
    if let Some(body) = bytes
        .strip_prefix(b"[\n")
        .and_then(|b| b.strip_suffix(b"\n]\n"))
    {
        let mut out = Vec::new();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', body) {
            match body[start..end].strip_suffix(b",") {
                Some(record) if is_record(record) => out.push(record),
                _ => return csindex::split_records(bytes).map_err(|e| e.to_string()),
            }
            start = end + 1;
        }
        let last = &body[start..];
        if !is_record(last) {
            return csindex::split_records(bytes).map_err(|e| e.to_string());
        }
        out.push(last);
        return Ok(out);
    }
    csindex::split_records(bytes).map_err(|e| e.to_string())
}

/// Does `line` look like one whole record (`{…}`)? Whether it is one is for
/// the parser to say: a record split across lines fails to parse.
fn is_record(line: &[u8]) -> bool {
    line.first() == Some(&b'{') && line.last() == Some(&b'}')
}

/// One `layers.json` record as a shared layer, or why not: it must parse as
/// [`csindex::parse_layer_record`] does and pass
/// [`meta::check_shared_layer`] without a note.
pub(crate) fn layer(bytes: &[u8]) -> Result<Layer, String> {
    // containers/storage's `flags` (incomplete) is not in our lines: take
    // the full parse for a record that has it.
    let layer = if memchr::memmem::find(bytes, b"\"flags\"").is_some() {
        csindex::parse_layer_record(bytes)?
    } else {
        let layer: Layer = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if !is_hex64(&layer.id) {
            return Err(format!("invalid id {:?}", layer.id));
        }
        if layer.incomplete {
            return Err(format!("layer {} is marked incomplete", layer.id));
        }
        if let Some(p) = &layer.parent {
            if !is_hex64(p) || *p == layer.id {
                return Err(format!("layer {}: invalid parent {p:?}", layer.id));
            }
        }
        layer
    };
    let (mut layer, notes) = meta::check_shared_layer(layer);
    if let Some(note) = notes.first() {
        return Err(format!("layer {}: {note}", layer.id));
    }
    layer.shared = true;
    Ok(layer)
}

/// One `images.json` record as a shared image, or why not (as
/// [`csindex::parse_image_record`], then [`meta::check_shared_image`]
/// without a note).
pub(crate) fn image(bytes: &[u8]) -> Result<Image, String> {
    let image = match image_borrowed(bytes) {
        Some(image) => image,
        None => csindex::parse_image_record(bytes)?,
    };
    let id = image.id.clone();
    let (mut image, notes) =
        meta::check_shared_image(image).map_err(|e| format!("image {id}: {e}"))?;
    if let Some(note) = notes.first() {
        return Err(format!("image {id}: {note}"));
    }
    image.names.shrink_to_fit();
    image.shared = true;
    Ok(image)
}

/// The skeleton of a layer line as the writer renders it
/// ([`csindex::layer_line`]: `{"id":"<64 hex>","parent":"<64 hex>",…}`, no
/// names): its id and parent, `shared` set, every other field empty — what
/// whole-store questions on a lazily opened store read
/// ([`crate::store::Records`]). `None` for any other line, which is then
/// parsed whole. Pure: reads the line's first 150 bytes, and searches the
/// rest for the keys that would make the skeleton wrong.
pub(crate) fn layer_skeleton(line: &[u8]) -> Option<Layer> {
    /// The keys the writer renders after `parent`, in its order (serde's:
    /// the fields' order in [`Layer`]); `compression` is always there.
    const NEXT: [&[u8]; 6] = [
        b",\"created\":",
        b",\"compressed-diff-digest\":",
        b",\"compressed-size\":",
        b",\"diff-digest\":",
        b",\"diff-size\":",
        b",\"compression\":",
    ];
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    static INCOMPLETE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"incomplete\""));
    static PARENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"parent\""));
    let (id, mut rest) = hex_field(line.strip_prefix(b"{")?, b"\"id\":\"")?;
    let mut parent = None;
    if let Some((p, after)) = rest
        .strip_prefix(b",")
        .and_then(|r| hex_field(r, b"\"parent\":\""))
    {
        (parent, rest) = (Some(p), after);
    }
    // What follows is a key the writer puts after `parent` (no names), no
    // parent further on (a line of another order), the line ends as a
    // record does, and it is not marked incomplete.
    if !NEXT.iter().any(|key| rest.starts_with(key))
        || line.last() != Some(&b'}')
        || parent.is_none() && PARENT.find(rest).is_some()
        || INCOMPLETE.find(rest).is_some()
    {
        return None;
    }
    if parent == Some(id) {
        return None;
    }
    let mut layer = bare_layer(id);
    layer.parent = parent.map(str::to_string);
    layer.shared = true;
    Some(layer)
}

/// The skeleton of an image line as the writer renders it
/// ([`csindex::image_line`]: `{"id":…,"digest":…,"names":[…],
/// "names-history":[…],"layer":…,…}`): id, names (of a reference's
/// characters) and top layer, `shared` set,
/// every other field empty. `None` for any other line, which is then
/// parsed whole. Pure.
pub(crate) fn image_skeleton(line: &[u8]) -> Option<Image> {
    let (id, mut rest) = hex_field(line.strip_prefix(b"{")?, b"\"id\":\"")?;
    if let Some(after) = rest.strip_prefix(b",\"digest\":\"") {
        let end = memchr::memchr(b'"', after)?;
        rest = &after[end + 1..];
    }
    let (names, after) = string_list(rest.strip_prefix(b",\"names\":")?)?;
    let (_, after) = string_list(after.strip_prefix(b",\"names-history\":")?)?;
    let (top, _) = hex_field(after.strip_prefix(b",")?, b"\"layer\":\"")?;
    if line.last() != Some(&b'}') {
        return None;
    }
    // Only a reference's characters (no control character, no space: what
    // a terminal or a line format would be fooled by); the whole parse
    // checks each name as a reference.
    let reference_chars = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if !reference_chars(name) {
            return None;
        }
        out.push(name.to_string());
    }
    let mut image = bare_image(id);
    image.names = out;
    image.layer = Some(top.to_string());
    image.shared = true;
    Some(image)
}

/// `bytes` starting with `key` (`"name":"`), then 64 lowercase hex and a
/// closing quote: the hex, and what follows the quote.
fn hex_field<'a>(bytes: &'a [u8], key: &[u8]) -> Option<(&'a str, &'a [u8])> {
    let after = bytes.strip_prefix(key)?;
    let hex = std::str::from_utf8(after.get(..64)?).ok()?;
    if !is_hex64(hex) || after.get(64) != Some(&b'"') {
        return None;
    }
    Some((hex, &after[65..]))
}

/// A JSON array of plain strings (no escapes) at the start of `bytes`:
/// the strings, and what follows the `]`.
fn string_list(bytes: &[u8]) -> Option<(Vec<&str>, &[u8])> {
    let mut out = Vec::new();
    let mut utf8 = true;
    let rest = each_string(bytes, |s| match std::str::from_utf8(s) {
        Ok(s) => out.push(s),
        Err(_) => utf8 = false,
    })?;
    utf8.then_some((out, rest))
}

/// Call `each` with every string of the JSON array of plain strings (no
/// escapes) at the start of `bytes`, in order; what follows the `]`.
/// `None` for anything else (an escape: the whole parse decides).
fn each_string<'a>(bytes: &'a [u8], mut each: impl FnMut(&'a [u8])) -> Option<&'a [u8]> {
    let mut rest = bytes.strip_prefix(b"[")?;
    if let Some(after) = rest.strip_prefix(b"]") {
        return Some(after);
    }
    loop {
        let body = rest.strip_prefix(b"\"")?;
        let end = memchr::memchr2(b'"', b'\\', body)?;
        if body[end] != b'"' {
            return None;
        }
        each(&body[..end]);
        rest = &body[end + 1..];
        match rest.first()? {
            b',' => rest = &rest[1..],
            b']' => return Some(&rest[1..]),
            _ => return None,
        }
    }
}

/// Whether the image record `line` may have one of `names`: `false` only
/// when its names are as [`image_skeleton`] reads them and none is one of
/// `names` (then the line need not be read further), `true` otherwise.
/// Pure; allocates nothing: a question about a few names over every line
/// of a big index.
pub(crate) fn image_line_may_name(line: &[u8], names: &[&str]) -> bool {
    let names_list = || {
        let (_, mut rest) = hex_field(line.strip_prefix(b"{")?, b"\"id\":\"")?;
        if let Some(after) = rest.strip_prefix(b",\"digest\":\"") {
            let end = memchr::memchr(b'"', after)?;
            rest = &after[end + 1..];
        }
        rest.strip_prefix(b",\"names\":")
    };
    let Some(list) = names_list() else {
        return true;
    };
    let mut found = false;
    let read = each_string(list, |s| found |= names.iter().any(|n| n.as_bytes() == s));
    found || read.is_none()
}

/// [`csindex::parse_image_record`] for a record whose strings need no
/// unescaping (the writer's own lines), without allocating its big-data
/// keys; `None` for anything else, which the full parse then decides.
fn image_borrowed(bytes: &[u8]) -> Option<Image> {
    use std::collections::BTreeMap;
    #[derive(serde::Deserialize)]
    struct Borrowed<'a> {
        #[serde(borrow)]
        id: &'a str,
        #[serde(default, borrow)]
        digest: Option<&'a str>,
        #[serde(default, borrow)]
        names: Vec<&'a str>,
        #[serde(default, borrow)]
        layer: Option<&'a str>,
        #[serde(rename = "big-data-names", default, borrow)]
        big_data_names: Vec<&'a str>,
        #[serde(rename = "big-data-sizes", default, borrow)]
        big_data_sizes: BTreeMap<&'a str, u64>,
        #[serde(rename = "big-data-digests", default, borrow)]
        big_data_digests: BTreeMap<&'a str, &'a str>,
        #[serde(default, borrow)]
        created: Option<&'a str>,
    }
    let b: Borrowed<'_> = serde_json::from_slice(bytes).ok()?;
    if !is_hex64(b.id) || !b.layer.is_some_and(is_hex64) {
        return None; // the full parse says why
    }
    let config = csindex::config_key(b.id);
    let mut image = Image {
        id: b.id.to_string(),
        digest: b.digest.map(str::to_string),
        names: b.names.iter().map(|n| n.to_string()).collect(),
        layer: b.layer.map(str::to_string),
        created: b.created.map(str::to_string),
        big_data_names: Vec::new(),
        big_data_sizes: BTreeMap::new(),
        big_data_digests: BTreeMap::new(),
        shared: false,
    };
    for (key, ours) in [
        (meta::MANIFEST, meta::MANIFEST),
        (config.as_str(), meta::CONFIG),
    ] {
        if !b.big_data_names.contains(&key) {
            continue;
        }
        image.big_data_names.push(ours.to_string());
        if let Some(size) = b.big_data_sizes.get(key) {
            image.big_data_sizes.insert(ours.to_string(), *size);
        }
        if let Some(digest) = b.big_data_digests.get(key) {
            image
                .big_data_digests
                .insert(ours.to_string(), digest.to_string());
        }
    }
    Some(image)
}

/// The records of index file `file` for a lazy open
/// ([`crate::store::Records`]): each line's id and the line, in id order (a
/// load appends its records after the others: a stable sort finds the
/// runs). The id is read where the writer renders it (`{"id":"<64 hex>"`);
/// a line with it elsewhere is parsed whole ([`Record::from_line`], and
/// kept whole). `Err`: a file that does not split into records, a line
/// that parses in no way, or an id twice — then the index cannot stand for
/// the records (`what`: "layer" or "image", for the reason). Nothing else
/// is checked: a trusted index ([`trusted`]) has the bytes this writer
/// wrote from its checked state. Pure.
pub(crate) fn lazy_entries<'a, T: Record>(
    file: &'a [u8],
    what: &str,
) -> Result<Vec<LazyEntry<'a, T>>, String> {
    let lines = records(file)?;
    // Straight into the entries (40,000 at 10,000 images): a line that
    // parses in no way leaves its reason aside (and an empty entry).
    let failed = parking_lot::Mutex::new(None);
    let mut out: Vec<LazyEntry<'a, T>> = Vec::with_capacity(lines.len());
    lines
        .par_iter()
        .with_min_len(1024)
        .map(|raw| match csindex::line_id(raw) {
            Some(id) => (id.to_string(), *raw, None),
            None => match T::from_line(raw) {
                Ok(whole) => (whole.id().to_string(), *raw, Some(Box::new(whole))),
                Err(why) => {
                    failed.lock().get_or_insert(why);
                    (String::new(), *raw, None)
                }
            },
        })
        .collect_into_vec(&mut out);
    if let Some(why) = failed.into_inner() {
        return Err(why);
    }
    // In id order, but for records a load appended since the last whole
    // rewrite (at the end): a stable sort finds the runs.
    if !out.is_sorted_by(|a, b| a.0 <= b.0) {
        out.sort_by(|a, b| a.0.cmp(&b.0));
    }
    each_once(out.iter().map(|(id, ..)| id.as_str()), what)?;
    Ok(out)
}

/// A record of an index file as a lazy open reads it: its id, its line,
/// and the record when the line had to be parsed whole for its id.
pub(crate) type LazyEntry<'a, T> = (String, &'a [u8], Option<Box<T>>);

/// A layer with an id alone (shared unset).
pub(crate) fn bare_layer(id: &str) -> Layer {
    Layer {
        id: id.to_string(),
        names: Vec::new(),
        parent: None,
        created: None,
        compressed_diff_digest: None,
        compressed_size: None,
        diff_digest: None,
        diff_size: None,
        compression: 0,
        incomplete: false,
        disk_size: None,
        shared: false,
    }
}

/// An image with an id alone (shared unset).
pub(crate) fn bare_image(id: &str) -> Image {
    Image {
        id: id.to_string(),
        digest: None,
        names: Vec::new(),
        layer: None,
        created: None,
        big_data_names: Vec::new(),
        big_data_sizes: Default::default(),
        big_data_digests: Default::default(),
        shared: false,
    }
}

/// Ids (sorted) strictly ascending: none twice.
fn each_once<'a>(mut ids: impl Iterator<Item = &'a str>, what: &str) -> Result<(), String> {
    let Some(mut last) = ids.next() else {
        return Ok(());
    };
    for id in ids {
        if id <= last {
            return Err(format!("{what} {id} is listed twice"));
        }
        last = id;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn hex(label: &str) -> String {
        crate::digest::sha256_digest(label.as_bytes())[7..].to_string()
    }

    fn layer_of(id: &str, parent: Option<&str>) -> Layer {
        let mut l = csindex::tests::layer(id, parent);
        l.shared = true;
        l
    }

    fn image_of(id: &str, top: &str, name: &str) -> Image {
        let mut i = csindex::tests::image(id, top, &[name]);
        i.shared = true;
        i
    }

    /// Index files as the writer renders them: `n` images on chains of 2.
    fn index(n: usize) -> (Vec<Layer>, Vec<Image>, Vec<u8>, Vec<u8>) {
        let mut layers = Vec::new();
        let mut images = Vec::new();
        for k in 0..n {
            let base = hex(&format!("base {k}"));
            let top = hex(&format!("top {k}"));
            layers.push(layer_of(&base, None));
            layers.push(layer_of(&top, Some(&base)));
            images.push(image_of(
                &hex(&format!("image {k}")),
                &top,
                &format!("img{k}:1"),
            ));
        }
        layers.sort_by(|a, b| a.id.cmp(&b.id));
        images.sort_by(|a, b| a.id.cmp(&b.id));
        let none = BTreeSet::new();
        let l: Vec<Vec<u8>> = layers.iter().map(csindex::layer_line).collect();
        let i: Vec<Vec<u8>> = images
            .iter()
            .map(|i| csindex::image_line(i, &none))
            .collect();
        let l = csindex::render(l.iter().map(Vec::as_slice));
        let i = csindex::render(i.iter().map(Vec::as_slice));
        (layers, images, l, i)
    }

    /// Both files as a lazy open reads them.
    type Entries<'a> = (Vec<LazyEntry<'a, Layer>>, Vec<LazyEntry<'a, Image>>);

    fn lazy<'a>(l: &'a [u8], i: &'a [u8]) -> Result<Entries<'a>, String> {
        let layers = lazy_entries(l, "layer")?;
        let images = lazy_entries(i, "image")?;
        Ok((layers, images))
    }

    #[test]
    fn the_writers_index_reads_back_as_its_records() {
        for n in [0, 1, 7] {
            let (layers, images, l, i) = index(n);
            let (got_layers, got_images) = lazy(&l, &i).unwrap();
            // Each line by its id, unparsed; parsed, the record; its
            // skeleton has the fields whole-store questions read.
            assert_eq!(got_layers.len(), layers.len());
            for ((id, raw, whole), want) in got_layers.iter().zip(&layers) {
                assert!(whole.is_none(), "a line of ours is not parsed");
                assert_eq!(id, &want.id);
                assert_eq!(&layer(raw).unwrap(), want);
                let skeleton = layer_skeleton(raw).unwrap();
                assert_eq!((&skeleton.id, &skeleton.parent), (&want.id, &want.parent));
                assert!(skeleton.shared && skeleton.diff_digest.is_none());
            }
            assert_eq!(got_images.len(), images.len());
            for ((id, raw, whole), want) in got_images.iter().zip(&images) {
                assert!(whole.is_none());
                assert_eq!(id, &want.id);
                assert_eq!(&image(raw).unwrap(), want);
                let skeleton = image_skeleton(raw).unwrap();
                assert_eq!(
                    (&skeleton.names, &skeleton.layer),
                    (&want.names, &want.layer)
                );
                assert!(skeleton.shared && skeleton.digest.is_none());
            }
            // The bytes kept are the file's lines: re-rendered, the same file.
            let again = csindex::render(got_layers.iter().map(|(_, raw, _)| *raw));
            assert_eq!(again, l);
            let again = csindex::render(got_images.iter().map(|(_, raw, _)| *raw));
            assert_eq!(again, i);
        }
    }

    #[test]
    fn lines_not_as_the_writer_renders_them_are_read_whole() {
        let a = hex("a");
        let b = hex("b");
        // Keys in another order, names on a layer, escapes in a name, a
        // parent that is not right after the id: each is read whole, and
        // its skeleton would be wrong or is not sure.
        let layer_lines = [
            format!(r#"{{"id":"{a}","created":"2026-01-01T00:00:00Z","parent":"{b}"}}"#),
            format!(r#"{{"id":"{a}","names":["x"],"parent":"{b}"}}"#),
            format!(r#"{{"flags":{{"incomplete":true}},"id":"{a}"}}"#),
            format!(r#"{{"id":"{a}","parent":"{a}"}}"#),
            format!(r#"{{"id":"{}"}}"#, a.to_uppercase()),
        ];
        for line in &layer_lines {
            assert!(layer_skeleton(line.as_bytes()).is_none(), "{line}");
        }
        let plain = format!(r#"{{"id":"{a}","parent":"{b}","created":"x"}}"#);
        let skeleton = layer_skeleton(plain.as_bytes()).unwrap();
        assert_eq!(skeleton.parent.as_deref(), Some(b.as_str()));
        let base = format!(r#"{{"id":"{a}","created":"x"}}"#);
        assert_eq!(layer_skeleton(base.as_bytes()).unwrap().parent, None);
        let image_lines = [
            format!(r#"{{"id":"{a}","layer":"{b}","names":["x:1"],"names-history":[]}}"#),
            format!(r#"{{"id":"{a}","names":["x\u0031:1"],"names-history":[],"layer":"{b}"}}"#),
            format!(r#"{{"id":"{a}","names":["Bad Name"],"names-history":[],"layer":"{b}"}}"#),
            format!(r#"{{"id":"{a}","names":[],"names-history":[]}}"#),
        ];
        for line in &image_lines {
            assert!(image_skeleton(line.as_bytes()).is_none(), "{line}");
        }
        let plain = format!(
            r#"{{"id":"{a}","digest":"sha256:{b}","names":["x:1","y:2"],"names-history":["x:1"],"layer":"{b}"}}"#
        );
        let skeleton = image_skeleton(plain.as_bytes()).unwrap();
        assert_eq!(skeleton.names, ["x:1", "y:2"]);
        assert_eq!(skeleton.layer.as_deref(), Some(b.as_str()));
    }

    #[test]
    fn records_appended_out_of_order_read_as_the_sorted_file() {
        // A load appends its records after the others (not in id order):
        // the same records, sorted, with each line's bytes as in the file.
        let (layers, images, l, i) = index(5);
        let none = BTreeSet::new();
        let mut l_lines: Vec<Vec<u8>> = layers.iter().map(csindex::layer_line).collect();
        let mut i_lines: Vec<Vec<u8>> = images
            .iter()
            .map(|i| csindex::image_line(i, &none))
            .collect();
        l_lines.rotate_left(3);
        i_lines.reverse();
        let l2 = csindex::render(l_lines.iter().map(Vec::as_slice));
        let i2 = csindex::render(i_lines.iter().map(Vec::as_slice));
        assert_ne!((&l2, &i2), (&l, &i));
        assert_eq!(lazy(&l2, &i2).unwrap(), lazy(&l, &i).unwrap());
    }

    #[test]
    fn a_line_with_its_id_elsewhere_is_parsed_whole() {
        let (layers, _, _, i) = index(2);
        let mut line = String::from_utf8(csindex::layer_line(&layers[0])).unwrap();
        line = line.replacen("{\"id\"", "{\"names\":[],\"id\"", 1);
        let l = csindex::render([line.as_bytes(), &csindex::layer_line(&layers[1])[..]]);
        let (got, _) = lazy(&l, &i).unwrap();
        assert_eq!(got[0].0, layers[0].id);
        assert_eq!(got[0].2.as_deref(), Some(&layers[0]), "parsed whole");
        assert!(got[1].2.is_none());
    }

    #[test]
    fn the_borrowed_image_parse_agrees_with_the_full_one() {
        let (_, _, _, i) = index(4);
        for raw in records(&i).unwrap() {
            let fast = image_borrowed(raw).expect("the writer's lines need no unescaping");
            assert_eq!(fast, csindex::parse_image_record(raw).unwrap());
        }
        // Escapes: left to the full parse, which reads them.
        let (_, images, _, _) = index(1);
        let mut escaped = images[0].clone();
        escaped.names = vec!["localhost/a\\u0062:1".into()];
        let line = csindex::image_line(&escaped, &BTreeSet::new());
        assert!(image_borrowed(&line).is_none());
        assert!(csindex::parse_image_record(&line).is_ok());
    }

    #[test]
    fn records_split_any_array_and_the_fast_path_agrees() {
        let (_, _, l, _) = index(3);
        let fast = records(&l).unwrap();
        assert_eq!(fast, csindex::split_records(&l).unwrap());
        // Another layout (one line, spaces) still splits, by the slow path.
        let other = b"[ {\"a\":1} , {\"b\":\"x,y\\n\"} ]".to_vec();
        assert_eq!(
            records(&other).unwrap(),
            vec![&b"{\"a\":1}"[..], &b"{\"b\":\"x,y\\n\"}"[..]]
        );
        assert!(records(b"[\n{\"a\":1},\n").is_err(), "truncated");
        assert!(records(b"").is_err());
        assert_eq!(records(b"[]\n").unwrap(), Vec::<&[u8]>::new());
        // A record split over lines by hand is not one line: the slow path.
        let split = b"[\n{\"a\":\n1},\n{\"b\":2}\n]\n";
        assert_eq!(
            records(split).unwrap(),
            vec![&b"{\"a\":\n1}"[..], &b"{\"b\":2}"[..]]
        );
    }

    #[test]
    fn an_index_that_cannot_be_read_falls_back() {
        let (layers, _, l, i) = index(3);
        let render_layers = |ls: &[Layer]| {
            let lines: Vec<Vec<u8>> = ls.iter().map(csindex::layer_line).collect();
            csindex::render(lines.iter().map(Vec::as_slice))
        };
        let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            (
                "a layer twice",
                render_layers(&[layers.clone(), vec![layers[0].clone()]].concat()),
                i.clone(),
            ),
            (
                "a bad id",
                l.clone(),
                i.clone()
                    .into_iter()
                    .map(|b| if b == b'a' { b'A' } else { b })
                    .collect(),
            ),
            ("not json", b"[\n{nope}\n]\n".to_vec(), i.clone()),
            ("not an array", l.clone(), b"{}".to_vec()),
        ];
        for (what, l, i) in cases {
            assert!(lazy(&l, &i).is_err(), "{what}: accepted");
        }
    }

    #[test]
    fn the_index_is_trusted_only_when_nothing_changed_behind_it() {
        let stamp = Stamp {
            generation: "7 x\n".into(),
            layers_size: 10,
            images_size: 20,
        };
        let ok = (Some(10), Some(20));
        assert_eq!(trusted(Some("7 x\n"), true, Some(&stamp), ok), Ok(()));
        let stale = trusted(Some("8 y\n"), true, Some(&stamp), ok).unwrap_err();
        assert!(stale.contains("generation"), "{stale}");
        let crashed = trusted(Some("7 x\n"), false, Some(&stamp), ok).unwrap_err();
        assert!(crashed.contains("let go"), "{crashed}");
        assert!(trusted(Some("7 x\n"), true, Some(&stamp), (Some(11), Some(20))).is_err());
        assert!(trusted(Some("7 x\n"), true, Some(&stamp), (Some(10), None)).is_err());
        assert!(trusted(Some("7 x\n"), true, None, ok).is_err());
        assert!(trusted(None, true, Some(&stamp), ok).is_err());
    }
}
