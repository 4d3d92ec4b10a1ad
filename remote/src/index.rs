//! Reading the share's containers/storage index on a reader: which layer and
//! image ids the writer published as of a `generation`, in a constant number
//! of file reads (the stamp and two files, whatever the share's size).
//!
//! The writer keeps `overlay-layers/layers.json`, `overlay-images/images.json`
//! and the stamp `storectl-index.json` ([`storectl_storage::csindex`]). A
//! reader uses them only as a list of ids (and of each image's names, to
//! know which records to look at again), only when the stamp names the
//! `generation` it read and both files have the sizes the stamp gives, and
//! only when every record has a valid id, once. Everything it keeps still
//! comes from the per-id directories; anything else about the index makes it
//! read the directories instead.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags};
use serde::Deserialize;
use storectl_storage::csindex::{self, IMAGES_INDEX, LAYERS_INDEX, MAX_INDEX, MAX_STAMP, STAMP};
use storectl_storage::digest::is_hex64;

/// The ids the index lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareIndex {
    /// Layer ids, ascending, each once.
    pub layers: Vec<String>,
    /// Image ids, ascending, each once, with the names the index gives them
    /// (a name two images claim is the first one's only).
    pub images: Vec<(String, Vec<String>)>,
}

/// Why the index cannot stand in for the directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexProblem {
    /// No stamp: a share whose writer does not keep an index (yet).
    Missing,
    /// A file cannot be read.
    Unreadable(String),
    /// The stamp is of another `generation`, or the files are not the
    /// sizes it gives (a writer between two steps, or one that crashed).
    Stale(String),
    /// A file is not what a writer writes.
    Damaged(String),
}

impl IndexProblem {
    /// The kind, to warn once per kind.
    pub fn kind(&self) -> &'static str {
        match self {
            IndexProblem::Missing => "missing",
            IndexProblem::Unreadable(_) => "unreadable",
            IndexProblem::Stale(_) => "stale",
            IndexProblem::Damaged(_) => "damaged",
        }
    }
}

impl fmt::Display for IndexProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexProblem::Missing => write!(
                f,
                "it has no index ({STAMP} is missing: its writer does not keep one yet)"
            ),
            IndexProblem::Unreadable(r) => write!(f, "its index cannot be read: {r}"),
            IndexProblem::Stale(r) => write!(f, "its index is not current: {r}"),
            IndexProblem::Damaged(r) => write!(f, "its index is damaged: {r}"),
        }
    }
}

/// Text from the share in a message: escaped, and at most 80 characters.
fn quoted(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut short: String = text.chars().take(80).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    format!("{short:?}")
}

/// One record of `layers.json` as a reader needs it.
#[derive(Deserialize)]
struct LayerIds<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

/// One record of `images.json` as a reader needs it.
#[derive(Deserialize)]
struct ImageIds<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default)]
    names: Vec<String>,
}

/// Check ids are valid and each listed once; sort them. Pure.
fn checked<T>(what: &str, mut records: Vec<(String, T)>) -> Result<Vec<(String, T)>, String> {
    records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = records.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("{what} {} is listed twice", w[0].0));
    }
    Ok(records)
}

/// The ids of `layers.json` (pure): every record must parse and have a
/// 64-hex id, seen once.
pub fn parse_layer_ids(bytes: &[u8]) -> Result<Vec<String>, String> {
    let records = csindex::split_records(bytes).map_err(|e| format!("{LAYERS_INDEX}: {e}"))?;
    let mut ids = Vec::with_capacity(records.len());
    for (i, raw) in records.into_iter().enumerate() {
        let rec: LayerIds<'_> =
            serde_json::from_slice(raw).map_err(|e| format!("{LAYERS_INDEX}: record {i}: {e}"))?;
        if !is_hex64(&rec.id) {
            return Err(format!(
                "{LAYERS_INDEX}: record {i}: invalid id {}",
                quoted(rec.id.as_bytes())
            ));
        }
        ids.push((rec.id.into_owned(), ()));
    }
    let ids = checked(&format!("{LAYERS_INDEX}: layer"), ids)?;
    Ok(ids.into_iter().map(|(id, ())| id).collect())
}

/// The ids and names of `images.json` (pure), as [`parse_layer_ids`].
pub fn parse_image_ids(bytes: &[u8]) -> Result<Vec<(String, Vec<String>)>, String> {
    let records = csindex::split_records(bytes).map_err(|e| format!("{IMAGES_INDEX}: {e}"))?;
    let mut images = Vec::with_capacity(records.len());
    for (i, raw) in records.into_iter().enumerate() {
        let rec: ImageIds<'_> =
            serde_json::from_slice(raw).map_err(|e| format!("{IMAGES_INDEX}: record {i}: {e}"))?;
        if !is_hex64(&rec.id) {
            return Err(format!(
                "{IMAGES_INDEX}: record {i}: invalid id {}",
                quoted(rec.id.as_bytes())
            ));
        }
        images.push((rec.id.into_owned(), rec.names));
    }
    checked(&format!("{IMAGES_INDEX}: image"), images)
}

/// Read `name` beneath `dir`: a regular file (never through a symlink, never
/// blocking on a FIFO) of exactly `size` bytes when a size is given, at
/// most `cap` bytes. `Ok(None)` when it does not exist.
fn read_beneath(
    dir: impl AsFd,
    name: &str,
    size: Option<u64>,
    cap: u64,
) -> Result<Option<Vec<u8>>, IndexProblem> {
    let fd: OwnedFd = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(IndexProblem::Unreadable(format!("{name}: {e}"))),
    };
    let st =
        rustix::fs::fstat(&fd).map_err(|e| IndexProblem::Unreadable(format!("{name}: {e}")))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(IndexProblem::Damaged(format!(
            "{name} is not a regular file"
        )));
    }
    let len = st.st_size as u64;
    if len > cap {
        return Err(IndexProblem::Damaged(format!(
            "{name} is {len} bytes, more than the {cap} it may have"
        )));
    }
    if let Some(want) = size.filter(|&s| s != len) {
        return Err(IndexProblem::Stale(format!(
            "{name} is {len} bytes, its stamp says {want}"
        )));
    }
    // One read for the whole file (and one to see it ends there): a read
    // is a round trip on a network share.
    let mut file = std::fs::File::from(fd);
    let mut bytes = vec![0u8; len as usize];
    let mut filled = 0;
    let unreadable = |e: std::io::Error| IndexProblem::Unreadable(format!("{name}: {e}"));
    while filled < bytes.len() {
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(unreadable(e)),
        }
    }
    let mut more = [0u8; 1];
    let grew = loop {
        match file.read(&mut more) {
            Ok(n) => break n > 0,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(unreadable(e)),
        }
    };
    if filled != bytes.len() || grew {
        return Err(IndexProblem::Stale(format!(
            "{name} changed while it was read"
        )));
    }
    Ok(Some(bytes))
}

/// Read the index of the share whose root is `share_dir` and whose
/// `overlay-layers/` and `overlay-images/` are `layers_dir` and `images_dir`
/// (opened without following symlinks), for the `generation` text read
/// before it.
pub fn read(
    share_dir: impl AsFd,
    layers_dir: impl AsFd,
    images_dir: impl AsFd,
    generation: Option<&[u8]>,
) -> Result<ShareIndex, IndexProblem> {
    let Some(generation) = generation else {
        return Err(IndexProblem::Stale("generation cannot be read".into()));
    };
    let Some(stamp) = read_beneath(share_dir, STAMP, None, MAX_STAMP)? else {
        return Err(IndexProblem::Missing);
    };
    let stamp =
        csindex::parse_stamp(&stamp).map_err(|e| IndexProblem::Damaged(format!("{STAMP}: {e}")))?;
    if stamp.generation.as_bytes() != generation {
        return Err(IndexProblem::Stale(format!(
            "its stamp is of generation {}, the share is at {}",
            quoted(stamp.generation.as_bytes()),
            quoted(generation)
        )));
    }
    let missing = |name: &str| IndexProblem::Stale(format!("{name} is missing"));
    let layers = read_beneath(layers_dir, LAYERS_INDEX, Some(stamp.layers_size), MAX_INDEX)?
        .ok_or_else(|| missing(LAYERS_INDEX))?;
    let images = read_beneath(images_dir, IMAGES_INDEX, Some(stamp.images_size), MAX_INDEX)?
        .ok_or_else(|| missing(IMAGES_INDEX))?;
    Ok(ShareIndex {
        layers: parse_layer_ids(&layers).map_err(IndexProblem::Damaged)?,
        images: parse_image_ids(&images).map_err(IndexProblem::Damaged)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    #[test]
    fn ids_of_what_the_writer_renders() {
        use storectl_storage::meta::{Image, Layer};
        let layer = |id: &str, parent: Option<&str>| Layer {
            id: id.into(),
            names: vec![],
            parent: parent.map(String::from),
            created: Some("2026-01-01T00:00:00Z".into()),
            compressed_diff_digest: None,
            compressed_size: None,
            diff_digest: Some(format!("sha256:{id}")),
            diff_size: Some(3),
            compression: 0,
            incomplete: false,
            disk_size: None,
            shared: true,
        };
        let (a, b) = (hex('b'), hex('a'));
        let lines = [
            csindex::layer_line(&layer(&a, None)),
            csindex::layer_line(&layer(&b, Some(&a))),
        ];
        let bytes = csindex::render(lines.iter().map(Vec::as_slice));
        assert_eq!(parse_layer_ids(&bytes).unwrap(), vec![b.clone(), a.clone()]);
        let image = Image {
            id: hex('c'),
            digest: None,
            names: vec!["localhost/x:1".into()],
            layer: Some(b.clone()),
            created: None,
            big_data_names: vec![],
            big_data_sizes: Default::default(),
            big_data_digests: Default::default(),
            shared: true,
        };
        let line = csindex::image_line(&image, &Default::default());
        let bytes = csindex::render([line.as_slice()]);
        assert_eq!(
            parse_image_ids(&bytes).unwrap(),
            vec![(hex('c'), vec!["localhost/x:1".to_string()])]
        );
        assert_eq!(parse_layer_ids(b"[]\n").unwrap(), Vec::<String>::new());
    }

    /// Hostile and damaged files are refused whole, never partly used.
    #[test]
    fn hostile_indexes_are_refused() {
        let a = hex('a');
        let cases: Vec<(String, &str)> = vec![
            (format!(r#"[{{"id":"{a}"}},{{"id":"{a}"}}]"#), "twice"),
            (r#"[{"id":"../../etc"}]"#.into(), "invalid id"),
            (
                format!(r#"[{{"id":"{}"}}]"#, a.to_uppercase()),
                "invalid id",
            ),
            (r#"[{"id":""}]"#.into(), "invalid id"),
            (r#"[{"names":["x"]}]"#.into(), "missing field"),
            (r#"[{"id":7}]"#.into(), "record 0"),
            (format!(r#"[{{"id":"{a}"}}"#), "truncated"),
            (format!(r#"[{{"id":"{a}"}}]junk"#), "after"),
            ("{}".into(), "["),
            (String::new(), "["),
            (format!(r#"[{{"id":"{a}"}},]"#), "trailing comma"),
            (format!("[{}]", "[".repeat(100_000)), "deep"),
        ];
        for (bytes, want) in &cases {
            for err in [
                parse_layer_ids(bytes.as_bytes()).unwrap_err(),
                parse_image_ids(bytes.as_bytes()).unwrap_err(),
            ] {
                assert!(err.contains(want), "{bytes:.80}: {err}");
            }
        }
        // An id with control characters is quoted escaped.
        let err = parse_layer_ids(br#"[{"id":"\u001b[2Jx"}]"#).unwrap_err();
        assert!(!err.contains('\u{1b}'), "{err}");
    }

    #[test]
    fn only_a_current_whole_index_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path();
        for d in ["overlay-layers", "overlay-images"] {
            std::fs::create_dir(share.join(d)).unwrap();
        }
        let open = |p: &std::path::Path| {
            rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
        };
        let read_at = |gen: &[u8]| {
            read(
                open(share),
                open(&share.join("overlay-layers")),
                open(&share.join("overlay-images")),
                Some(gen),
            )
        };
        assert_eq!(read_at(b"1 x\n"), Err(IndexProblem::Missing));
        let a = hex('a');
        let layers = format!("[\n{{\"id\":\"{a}\"}}\n]\n");
        let images = "[]\n";
        std::fs::write(share.join("overlay-layers/layers.json"), &layers).unwrap();
        std::fs::write(share.join("overlay-images/images.json"), images).unwrap();
        let stamp = |gen: &str, l: usize, i: usize| {
            let s = csindex::Stamp {
                generation: gen.into(),
                layers_size: l as u64,
                images_size: i as u64,
            };
            std::fs::write(share.join(STAMP), csindex::render_stamp(&s)).unwrap();
        };
        stamp("1 x\n", layers.len(), images.len());
        let index = read_at(b"1 x\n").unwrap();
        assert_eq!(index.layers, vec![a.clone()]);
        assert!(matches!(read_at(b"2 y\n"), Err(IndexProblem::Stale(_))));
        stamp("1 x\n", layers.len() + 1, images.len());
        assert!(matches!(read_at(b"1 x\n"), Err(IndexProblem::Stale(_))));
        std::fs::write(share.join(STAMP), b"{not json").unwrap();
        assert!(matches!(read_at(b"1 x\n"), Err(IndexProblem::Damaged(_))));
        // A symlink where a file belongs is not followed.
        stamp("1 x\n", layers.len(), images.len());
        let real = share.join("overlay-layers/real.json");
        std::fs::rename(share.join("overlay-layers/layers.json"), &real).unwrap();
        std::os::unix::fs::symlink(&real, share.join("overlay-layers/layers.json")).unwrap();
        assert!(matches!(
            read_at(b"1 x\n"),
            Err(IndexProblem::Unreadable(_))
        ));
        std::fs::remove_file(share.join("overlay-layers/layers.json")).unwrap();
        assert!(
            matches!(read_at(b"1 x\n"), Err(IndexProblem::Stale(_))),
            "missing file"
        );
    }
}
