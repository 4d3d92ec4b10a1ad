//! A writer's shared layers and images from containers/storage's index on
//! its share (`overlay-layers/layers.json`, `overlay-images/images.json`,
//! [`crate::csindex`]) instead of 40,000 per-id records: pure functions over
//! bytes; the I/O is [`crate::Store`]'s.
//!
//! The index stands for the records only when nothing can have changed
//! them behind it ([`trusted`]): the stamp names the `generation` the store
//! read, the files have the sizes the stamp gives, and the last holder of
//! the writer lock let go normally (a crash between publishing a directory
//! and rewriting the index leaves the lock file without `released`). Then
//! [`parse`] must find every record clean — each parses, ids and parents
//! are 64 hex, no id twice, every layer's parent and every
//! image's top layer listed, no name on two images, and the checks a shared
//! record gets ([`crate::meta::check_shared_layer`],
//! [`crate::meta::check_shared_image`]) note nothing. Anything else and the
//! store reads the records as before: the fallback is the slow path, never
//! a different answer.

use std::collections::HashSet;

use rayon::prelude::*;

use crate::csindex::{self, Stamp};
use crate::digest::is_hex64;
use crate::meta::{self, Image, Layer};

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
fn layer(bytes: &[u8]) -> Result<Layer, String> {
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
fn image(bytes: &[u8]) -> Result<Image, String> {
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

/// Every record of both files, in id order, each with its bytes in the
/// file (what the writer's index cache splices back unchanged).
#[derive(Debug)]
pub(crate) struct Records<'a> {
    pub layers: Vec<(Layer, &'a [u8])>,
    pub images: Vec<(Image, &'a [u8])>,
}

/// Parse both index files (pure; records in parallel): `Err` says why they
/// cannot stand for the records — see the module doc for what is required.
pub(crate) fn parse<'a>(layers: &'a [u8], images: &'a [u8]) -> Result<Records<'a>, String> {
    let (layer_lines, image_lines) = (records(layers)?, records(images)?);
    let (layers, images) = rayon::join(
        || {
            layer_lines
                .par_iter()
                .map(|raw| layer(raw).map(|l| (l, *raw)))
                .collect::<Result<Vec<_>, String>>()
        },
        || {
            image_lines
                .par_iter()
                .map(|raw| image(raw).map(|i| (i, *raw)))
                .collect::<Result<Vec<_>, String>>()
        },
    );
    let (mut layers, mut images) = (layers?, images?);
    // In id order, but for records a load appended since the last whole
    // rewrite (at the end): a stable sort finds the runs.
    layers.sort_by(|(a, _), (b, _)| a.id.cmp(&b.id));
    images.sort_by(|(a, _), (b, _)| a.id.cmp(&b.id));
    each_once(layers.iter().map(|(l, _)| l.id.as_str()), "layer")?;
    each_once(images.iter().map(|(i, _)| i.id.as_str()), "image")?;
    // Layers are in id order: a parent is found by binary search, and its
    // index stands for it. The search runs over the ids' first 16 hex
    // digits as numbers (in the same order, and in one array: a search
    // over the strings themselves misses the cache at every step), then
    // compares whole ids among those with the same prefix.
    let keys: Vec<u64> = layers.iter().map(|(l, _)| id_key(&l.id)).collect();
    let index_of = |id: &str| {
        let key = id_key(id);
        let first = keys.partition_point(|k| *k < key);
        (first..keys.len())
            .take_while(|&at| keys[at] == key)
            .find(|&at| layers[at].0.id == id)
    };
    let mut parent_at: Vec<Option<usize>> = Vec::with_capacity(layers.len());
    for (l, _) in &layers {
        parent_at.push(match l.parent.as_deref() {
            None => None,
            Some(p) => Some(
                index_of(p)
                    .ok_or_else(|| format!("layer {}: its parent {p} is not listed", l.id))?,
            ),
        });
    }
    let mut names = HashSet::new();
    for (i, _) in &images {
        let top = i.layer.as_deref().unwrap_or_default();
        if index_of(top).is_none() {
            return Err(format!("image {}: its top layer {top} is not listed", i.id));
        }
        if let Some(n) = i.names.iter().find(|n| !names.insert(n.as_str())) {
            return Err(format!(
                "image {}: the name {n:?} is another image's too",
                i.id
            ));
        }
    }
    // A chain that loops never reaches a base layer.
    let mut ends_at_base = vec![false; layers.len()];
    let mut path = Vec::new();
    for start in 0..layers.len() {
        path.clear();
        let mut next = Some(start);
        while let Some(at) = next {
            if ends_at_base[at] {
                break;
            }
            if path.len() > layers.len() {
                return Err(format!(
                    "layer {}: its parent chain loops",
                    layers[start].0.id
                ));
            }
            path.push(at);
            next = parent_at[at];
        }
        for &at in &path {
            ends_at_base[at] = true;
        }
    }
    Ok(Records { layers, images })
}

/// The first 16 hex digits of an id (lowercase hex, checked) as a number:
/// ids in order have their keys in order. Only a key: the whole id is
/// compared before a match counts.
fn id_key(id: &str) -> u64 {
    id.get(..16)
        .and_then(|p| u64::from_str_radix(p, 16).ok())
        .unwrap_or(u64::MAX)
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

    #[test]
    fn the_writers_index_reads_back_as_its_records() {
        for n in [0, 1, 7] {
            let (layers, images, l, i) = index(n);
            let got = parse(&l, &i).unwrap();
            let got_layers: Vec<Layer> = got.layers.iter().map(|(l, _)| l.clone()).collect();
            let got_images: Vec<Image> = got.images.iter().map(|(i, _)| i.clone()).collect();
            assert_eq!(got_layers, layers);
            assert_eq!(got_images, images);
            // The bytes kept are the file's lines: re-rendered, the same file.
            let again = csindex::render(got.layers.iter().map(|(_, raw)| *raw));
            assert_eq!(again, l);
            let again = csindex::render(got.images.iter().map(|(_, raw)| *raw));
            assert_eq!(again, i);
        }
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
        let got = parse(&l2, &i2).unwrap();
        let want = parse(&l, &i).unwrap();
        let ids = |r: &Records<'_>| {
            let layers: Vec<String> = r.layers.iter().map(|(l, _)| l.id.clone()).collect();
            let images: Vec<String> = r.images.iter().map(|(i, _)| i.id.clone()).collect();
            (layers, images)
        };
        assert_eq!(ids(&got), ids(&want));
        for ((a, raw_a), (b, raw_b)) in got.layers.iter().zip(&want.layers) {
            assert_eq!((a, *raw_a), (b, *raw_b));
        }
    }

    #[test]
    fn parents_are_found_among_ids_with_the_same_prefix() {
        // Four layers whose ids share their first 16 hex digits (the
        // search's key): each parent is told apart by its whole id.
        let id = |tail: char| format!("{}{}", "ab".repeat(8), tail.to_string().repeat(48));
        let (a, b, c, d) = (id('1'), id('2'), id('3'), id('4'));
        let mut layers = vec![
            layer_of(&a, None),
            layer_of(&b, Some(&a)),
            layer_of(&c, Some(&b)),
            layer_of(&d, Some(&a)),
        ];
        layers.sort_by(|x, y| x.id.cmp(&y.id));
        let images = [image_of(&hex("image"), &c, "img:1")];
        let render = |layers: &[Layer]| {
            let l: Vec<Vec<u8>> = layers.iter().map(csindex::layer_line).collect();
            let i = csindex::image_line(&images[0], &BTreeSet::new());
            (
                csindex::render(l.iter().map(Vec::as_slice)),
                csindex::render([&i[..]]),
            )
        };
        let (l, i) = render(&layers);
        let got = parse(&l, &i).unwrap();
        assert_eq!(got.layers.len(), 4);
        // A parent with the same prefix that is not listed is missing.
        layers.retain(|x| x.id != b);
        let (l, i) = render(&layers);
        let err = parse(&l, &i).unwrap_err();
        assert!(
            err.contains(&format!("its parent {b} is not listed")),
            "{err}"
        );
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
    fn anything_unclean_falls_back() {
        let (layers, images, l, i) = index(3);
        let none = BTreeSet::new();
        let render_layers = |ls: &[Layer]| {
            let lines: Vec<Vec<u8>> = ls.iter().map(csindex::layer_line).collect();
            csindex::render(lines.iter().map(Vec::as_slice))
        };
        let render_images = |is: &[Image]| {
            let lines: Vec<Vec<u8>> = is.iter().map(|i| csindex::image_line(i, &none)).collect();
            csindex::render(lines.iter().map(Vec::as_slice))
        };
        let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            (
                "a layer twice",
                render_layers(&[layers.clone(), vec![layers[0].clone()]].concat()),
                i.clone(),
            ),
            (
                "a missing parent",
                render_layers(
                    &layers
                        .iter()
                        .filter(|l| l.parent.is_some())
                        .cloned()
                        .collect::<Vec<_>>(),
                ),
                render_images(&[]),
            ),
            ("a missing top layer", render_layers(&[]), i.clone()),
            ("a name twice", l.clone(), {
                let mut is = images.clone();
                is[1].names = is[0].names.clone();
                render_images(&is)
            }),
            ("a name that is no reference", l.clone(), {
                let mut is = images.clone();
                is[0].names = vec!["Bad Name\u{1b}[2J".into()];
                render_images(&is)
            }),
            (
                "a bad id",
                l.clone(),
                i.clone()
                    .into_iter()
                    .map(|b| if b == b'a' { b'A' } else { b })
                    .collect(),
            ),
            ("not json", b"[\n{nope}\n]\n".to_vec(), i.clone()),
            (
                "an incomplete layer",
                {
                    let mut s = String::from_utf8(l.clone()).unwrap();
                    s = s.replacen("{\"id\"", "{\"flags\":{\"incomplete\":true},\"id\"", 1);
                    s.into_bytes()
                },
                i.clone(),
            ),
        ];
        for (what, l, i) in cases {
            assert!(parse(&l, &i).is_err(), "{what}: accepted");
        }
        // A loop: a -> b -> a.
        let (a, b) = (hex("a"), hex("b"));
        let mut looped = vec![layer_of(&a, Some(&b)), layer_of(&b, Some(&a))];
        looped.sort_by(|x, y| x.id.cmp(&y.id));
        let looped = render_layers(&looped);
        let err = parse(&looped, b"[]\n").unwrap_err();
        assert!(err.contains("loops"), "{err}");
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
