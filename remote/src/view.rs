//! A reader's validated view of its share, kept in the reader's **own** root
//! (`<root>/share-view`), so that a one-shot command starts from what an
//! earlier process validated instead of reading every entry on the share.
//!
//! It holds every shared layer and image record the store had after the last
//! successful scan (visible or hidden by a local entry of the same id, each
//! image with the fingerprint of its `images.json`), the `generation` text
//! they reflect, the share they came from, how many *other* subdirectories
//! each share directory had at the last full directory scan (see
//! [`crate::scan::Baseline`]), how many entries were pending, and whether
//! the root's legacy links matched the records ([`Store::links_in_step`])
//! and the fingerprints of the root's directories that hold them.
//!
//! ## Format (version 2)
//!
//! ```text
//! "storectl-share-view\n"  magic (20 bytes)
//! u32 LE                   version
//! u64 LE                   payload length
//! payload                  share, generation, links flag, 4 × u64 root dir
//!                          fingerprints, baselines, pending, the layer count,
//!                          the layers' byte length (decoded on a second thread
//!                          while the images are), layers, images:
//!                          varints (LEB128), byte strings (varint length +
//!                          bytes), options (0 | 1 + value); a parent or top
//!                          layer as the index of a layer of the view (or, for
//!                          one not in it, its id)
//! u64 LE                   CRC-64/NVME of the payload
//! ```
//!
//! Binary, not JSON: a view of 10,000 images and 30,000 layers decodes in
//! tens of milliseconds, well inside a one-shot `ls`. Decoding is pure and
//! checks everything: the checksum, every length against what is left,
//! ids (64 lowercase hex, ascending, each once), every reference to a layer
//! in range. A layer whose chain is not whole in the view, and an image on
//! one, are left out. A file that fails any check (truncated, corrupt) is
//! ignored with a warning and replaced by the next scan; one of another
//! version (another storectl) or another share is replaced quietly. It is
//! written to a temporary file and renamed over the old one (not fsynced: a
//! view lost in a crash only costs one full scan).
//!
//! [`Store::links_in_step`]: storectl_storage::Store::links_in_step

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crc_fast::CrcAlgorithm;
use storectl_storage::digest::is_hex64;
use storectl_storage::meta::{Image, Layer};

use crate::error::{IoContext, Result};
use crate::scan::Baseline;

/// The view's file in a reader's root.
pub const VIEW_FILE: &str = "share-view";
const MAGIC: &[u8; 20] = b"storectl-share-view\n";
const VERSION: u32 = 2;
/// Bytes before the payload: magic, version, length.
const HEADER: usize = MAGIC.len() + 4 + 8;
/// The most a view may hold (about 3 million records).
pub const MAX_VIEW: u64 = 1 << 30;

/// What a reader validated on its share, as saved in its root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// The share the records came from (the root's `shared` directory).
    pub share: PathBuf,
    /// The `generation` text the records reflect.
    pub generation: Vec<u8>,
    /// The root's legacy links matched the records when it was saved…
    pub links_in_step: bool,
    /// …and the root's directories that hold them were as these
    /// fingerprints say ([`root_dirs`]): a link made or removed since (by
    /// hand, by another process) changes one, and the links are repaired.
    pub root_dirs: [u64; 4],
    /// Other subdirectories of `overlay/`, `overlay-layers/`, `overlay-images/`
    /// on the share at the last full scan.
    pub baseline: Baseline,
    /// Entries on the share that were not (yet) valid.
    pub pending: u64,
    /// Shared layer records, ascending by id (see [`parent_first`]).
    pub layers: Vec<Layer>,
    /// Shared image records, ascending by id, each with the fingerprint of
    /// its `images.json` (0 = unknown).
    pub images: Vec<(Image, u64)>,
}

// ---------------------------------------------------------------------------
// Encoding (pure).

struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }
    fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn opt_str(&mut self, s: &Option<String>) {
        match s {
            None => self.0.push(0),
            Some(s) => {
                self.0.push(1);
                self.bytes(s.as_bytes());
            }
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.0.push(0),
            Some(v) => {
                self.0.push(1);
                self.varint(v);
            }
        }
    }
    fn strs(&mut self, v: &[String]) {
        self.varint(v.len() as u64);
        for s in v {
            self.bytes(s.as_bytes());
        }
    }
    /// A layer id another record refers to (a parent, a top layer): its
    /// index among the view's layers when it is one (the reader then finds
    /// it without a search), else the id itself.
    fn layer_ref(&mut self, id: &Option<String>, index: &HashMap<&str, usize>) {
        match id {
            None => self.0.push(0),
            Some(id) => match index.get(id.as_str()) {
                Some(&i) => {
                    self.0.push(1);
                    self.varint(i as u64);
                }
                None => {
                    self.0.push(2);
                    self.bytes(id.as_bytes());
                }
            },
        }
    }

    fn layer(&mut self, layer: &Layer, index: &HashMap<&str, usize>) {
        // Every field, by name: a field added to `Layer` fails to compile
        // here until the view carries it (and VERSION is bumped).
        let Layer {
            id,
            names,
            parent,
            created,
            compressed_diff_digest,
            compressed_size,
            diff_digest,
            diff_size,
            compression,
            incomplete: _, // a shared record in a view never is
            disk_size,
            shared: _, // always, in a view
        } = layer;
        self.bytes(id.as_bytes());
        self.strs(names);
        self.layer_ref(parent, index);
        self.opt_str(created);
        self.opt_str(compressed_diff_digest);
        self.opt_u64(*compressed_size);
        self.opt_str(diff_digest);
        self.opt_u64(*diff_size);
        self.0.push(*compression);
        self.opt_u64(*disk_size);
    }

    fn image(&mut self, image: &Image, fingerprint: u64, index: &HashMap<&str, usize>) {
        let Image {
            id,
            digest,
            names,
            layer,
            created,
            big_data_names,
            big_data_sizes,
            big_data_digests,
            shared: _,
        } = image;
        self.bytes(id.as_bytes());
        self.opt_str(digest);
        self.strs(names);
        self.layer_ref(layer, index);
        self.opt_str(created);
        self.strs(big_data_names);
        self.varint(big_data_sizes.len() as u64);
        for (k, v) in big_data_sizes {
            self.bytes(k.as_bytes());
            self.varint(*v);
        }
        self.varint(big_data_digests.len() as u64);
        for (k, v) in big_data_digests {
            self.bytes(k.as_bytes());
            self.bytes(v.as_bytes());
        }
        self.0.extend_from_slice(&fingerprint.to_le_bytes());
    }
}

/// The parts of a view, borrowed (the store's records are encoded in place,
/// under its read lock, without copying them first).
#[derive(Debug)]
pub struct ViewParts<'a> {
    pub share: &'a Path,
    pub generation: &'a [u8],
    pub links_in_step: bool,
    pub root_dirs: [u64; 4],
    pub baseline: Baseline,
    pub pending: u64,
}

/// Encode a view (pure). `layers` and `images` must be ascending by id.
pub fn encode<'a>(
    parts: &ViewParts<'_>,
    layers: impl ExactSizeIterator<Item = &'a Layer>,
    images: impl ExactSizeIterator<Item = (&'a Image, u64)>,
) -> Vec<u8> {
    let layers: Vec<&Layer> = layers.collect();
    let index: HashMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.id.as_str(), i))
        .collect();
    let mut w = Writer(Vec::with_capacity(
        HEADER + 64 + layers.len() * 320 + images.len() * 640,
    ));
    w.0.extend_from_slice(MAGIC);
    w.0.extend_from_slice(&VERSION.to_le_bytes());
    w.0.extend_from_slice(&0u64.to_le_bytes()); // the length, below
    w.bytes(parts.share.as_os_str().as_bytes());
    w.bytes(parts.generation);
    w.0.push(u8::from(parts.links_in_step));
    for f in parts.root_dirs {
        w.0.extend_from_slice(&f.to_le_bytes());
    }
    for b in parts.baseline.0 {
        w.opt_u64(b);
    }
    w.varint(parts.pending);
    w.varint(layers.len() as u64);
    // The layers' bytes, so that a reader decodes them and the images at once.
    let len_at = w.0.len();
    w.0.extend_from_slice(&0u64.to_le_bytes());
    for l in &layers {
        w.layer(l, &index);
    }
    let len = (w.0.len() - len_at - 8) as u64;
    w.0[len_at..len_at + 8].copy_from_slice(&len.to_le_bytes());
    w.varint(images.len() as u64);
    for (i, fp) in images {
        w.image(i, fp, &index);
    }
    let len = (w.0.len() - HEADER) as u64;
    w.0[MAGIC.len() + 4..HEADER].copy_from_slice(&len.to_le_bytes());
    let crc = crc_fast::checksum(CrcAlgorithm::Crc64Nvme, &w.0[HEADER..]);
    w.0.extend_from_slice(&crc.to_le_bytes());
    w.0
}

// ---------------------------------------------------------------------------
// Decoding (pure).

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    /// Where `buf` starts in the file (for messages).
    base: usize,
}

impl<'a> Reader<'a> {
    fn truncated(&self) -> String {
        format!("truncated at byte {}", self.base + self.at)
    }
    fn left(&self) -> usize {
        self.buf.len() - self.at
    }
    fn u8(&mut self) -> Result<u8, String> {
        let b = *self.buf.get(self.at).ok_or_else(|| self.truncated())?;
        self.at += 1;
        Ok(b)
    }
    fn u64_le(&mut self) -> Result<u64, String> {
        let b = self
            .buf
            .get(self.at..self.at + 8)
            .ok_or_else(|| self.truncated())?;
        self.at += 8;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("a number too long at byte {}", self.base + self.at))
    }
    /// A count of items that each take at least one byte: never more than
    /// what is left (a corrupt count cannot make us allocate).
    fn count(&mut self) -> Result<usize, String> {
        let n = self.varint()?;
        if n > self.left() as u64 {
            return Err(format!(
                "a count of {n} at byte {} exceeds the file",
                self.base + self.at
            ));
        }
        Ok(n as usize)
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.count()?;
        let b = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(b)
    }
    fn string(&mut self) -> Result<String, String> {
        let at = self.base + self.at;
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("text that is not UTF-8 at byte {at}"))
    }
    fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("a flag of {b} at byte {}", self.base + self.at - 1)),
        }
    }
    fn opt_str(&mut self) -> Result<Option<String>, String> {
        Ok(match self.flag()? {
            true => Some(self.string()?),
            false => None,
        })
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, String> {
        Ok(match self.flag()? {
            true => Some(self.varint()?),
            false => None,
        })
    }
    fn strs(&mut self) -> Result<Vec<String>, String> {
        let n = self.count()?;
        (0..n).map(|_| self.string()).collect()
    }
    fn id(&mut self, after: Option<&str>) -> Result<String, String> {
        let at = self.base + self.at;
        let id = self.string()?;
        if !is_hex64(&id) {
            return Err(format!("an invalid id {id:?} at byte {at}"));
        }
        if after.is_some_and(|prev| prev >= id.as_str()) {
            return Err(format!("ids out of order at byte {at}"));
        }
        Ok(id)
    }

    /// What [`Writer::layer_ref`] wrote.
    fn layer_ref(&mut self) -> Result<LayerRef, String> {
        match self.u8()? {
            0 => Ok(LayerRef::None),
            1 => Ok(LayerRef::Index(self.varint()?)),
            2 => self.bytes().map(|_| LayerRef::Absent),
            b => Err(format!(
                "a layer reference of kind {b} at byte {}",
                self.base + self.at - 1
            )),
        }
    }

    /// A layer, and its parent as the file refers to it (the record's
    /// `parent` is set once every layer is read).
    fn layer(&mut self, after: Option<&str>) -> Result<(Layer, LayerRef), String> {
        let id = self.id(after)?;
        let names = self.strs()?;
        let parent = self.layer_ref()?;
        let layer = Layer {
            id,
            names,
            parent: None,
            created: self.opt_str()?,
            compressed_diff_digest: self.opt_str()?,
            compressed_size: self.opt_u64()?,
            diff_digest: self.opt_str()?,
            diff_size: self.opt_u64()?,
            compression: self.u8()?,
            incomplete: false,
            disk_size: self.opt_u64()?,
            shared: true,
        };
        Ok((layer, parent))
    }

    /// An image, its fingerprint, and its top layer as the file refers to
    /// it (the record's `layer` is set by the caller).
    fn image(&mut self, after: Option<&str>) -> Result<(Image, u64, LayerRef), String> {
        let id = self.id(after)?;
        let digest = self.opt_str()?;
        let names = self.strs()?;
        let top = self.layer_ref()?;
        let created = self.opt_str()?;
        let big_data_names = self.strs()?;
        let mut big_data_sizes = BTreeMap::new();
        for _ in 0..self.count()? {
            big_data_sizes.insert(self.string()?, self.varint()?);
        }
        let mut big_data_digests = BTreeMap::new();
        for _ in 0..self.count()? {
            big_data_digests.insert(self.string()?, self.string()?);
        }
        let fingerprint = self.u64_le()?;
        let image = Image {
            id,
            digest,
            names,
            layer: None,
            created,
            big_data_names,
            big_data_sizes,
            big_data_digests,
            shared: true,
        };
        Ok((image, fingerprint, top))
    }
}

/// A layer id as a view refers to it.
enum LayerRef {
    None,
    /// The index of a layer of the view.
    Index(u64),
    /// A layer that is not in the view (its id is in the file, unused).
    Absent,
}

/// An id as 32 bytes (`None` when it is not 64 lowercase hex): a sorted
/// array of these is searched without chasing a pointer per comparison.
fn key(id: &str) -> Option<[u8; 32]> {
    if !is_hex64(id) {
        return None;
    }
    let nibble = |c: u8| if c <= b'9' { c - b'0' } else { c - b'a' + 10 };
    let b = id.as_bytes();
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nibble(b[2 * i]) << 4 | nibble(b[2 * i + 1]);
    }
    Some(out)
}

/// For each of `layers` (ascending by id), the index of its parent among
/// them: `Ok(None)` for a base layer, `Err(())` for a parent not there.
fn parent_indexes(layers: &[Layer]) -> Vec<Result<Option<usize>, ()>> {
    let keys: Vec<[u8; 32]> = layers
        .iter()
        .map(|l| key(&l.id).unwrap_or([0; 32]))
        .collect();
    layers
        .iter()
        .map(|l| match l.parent.as_deref() {
            None => Ok(None),
            Some(p) => key(p)
                .and_then(|k| keys.binary_search(&k).ok())
                .map(Some)
                .ok_or(()),
        })
        .collect()
}

/// Which layers have a whole chain among them, given each one's parent
/// (`Ok(None)`: a base layer; `Err`: a parent not among them): every parent
/// present, ending in a base layer, no loop. Pure, O(n).
fn whole_chains(parents: &[Result<Option<usize>, ()>]) -> Vec<bool> {
    const NEW: u8 = 0;
    const WALKING: u8 = 1;
    const WHOLE: u8 = 2;
    const BROKEN: u8 = 3;
    let mut state = vec![NEW; parents.len()];
    let mut path = Vec::new();
    for start in 0..parents.len() {
        let mut cur = start;
        let whole = loop {
            match state[cur] {
                WHOLE => break true,
                BROKEN | WALKING => break false, // WALKING again: a loop
                _ => {}
            }
            state[cur] = WALKING;
            path.push(cur);
            match parents[cur] {
                Ok(None) => break true,
                Ok(Some(next)) => cur = next,
                Err(()) => break false,
            }
        };
        for &i in &path {
            state[i] = if whole { WHOLE } else { BROKEN };
        }
        path.clear();
    }
    state.into_iter().map(|s| s == WHOLE).collect()
}

/// The order of `layers` (ascending by id) with every parent before its
/// children (each layer's chain must be whole among them). Pure.
pub fn parent_first(layers: &[Layer]) -> Vec<usize> {
    let parents = parent_indexes(layers);
    let mut done = vec![false; layers.len()];
    let mut order = Vec::with_capacity(layers.len());
    let mut path = Vec::new();
    for start in 0..layers.len() {
        let mut cur = Some(start);
        while let Some(i) = cur.filter(|&i| !done[i] && !path.contains(&i)) {
            path.push(i);
            cur = parents[i].ok().flatten();
        }
        for &i in path.iter().rev() {
            done[i] = true;
            order.push(i);
        }
        path.clear();
    }
    order
}

/// `n` layers from `r`, which must hold exactly them, with their parents as
/// the file refers to them.
fn decode_layers(r: &mut Reader<'_>, n: usize) -> Result<(Vec<Layer>, Vec<LayerRef>), String> {
    let mut layers: Vec<Layer> = Vec::with_capacity(n);
    let mut refs = Vec::with_capacity(n);
    for _ in 0..n {
        let (l, parent) = r.layer(layers.last().map(|l| l.id.as_str()))?;
        layers.push(l);
        refs.push(parent);
    }
    if r.left() != 0 {
        return Err(format!("{} bytes after the layers", r.left()));
    }
    Ok((layers, refs))
}

/// The images section, to the end of `r`, with their top layers as the file
/// refers to them.
#[allow(clippy::type_complexity)]
fn decode_images(r: &mut Reader<'_>) -> Result<(Vec<(Image, u64)>, Vec<LayerRef>), String> {
    let m = r.count()?;
    let mut images: Vec<(Image, u64)> = Vec::with_capacity(m);
    let mut tops = Vec::with_capacity(m);
    for _ in 0..m {
        let (i, fp, top) = r.image(images.last().map(|(i, _)| i.id.as_str()))?;
        images.push((i, fp));
        tops.push(top);
    }
    if r.left() != 0 {
        return Err(format!("{} bytes after the records", r.left()));
    }
    Ok((images, tops))
}

/// The version of a view file, if it is one (pure).
fn version_of(bytes: &[u8]) -> Option<u32> {
    let v = bytes.get(MAGIC.len()..MAGIC.len() + 4)?;
    (bytes.starts_with(MAGIC)).then(|| u32::from_le_bytes(v.try_into().expect("4 bytes")))
}

/// Decode a view (pure). Any damage is an error saying what and where.
/// Layers whose chain is not whole in the view, and images on them, are
/// left out.
pub fn decode(bytes: &[u8]) -> Result<View, String> {
    if bytes.len() < HEADER + 8 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a storectl share view".into());
    }
    let version = u32::from_le_bytes(bytes[MAGIC.len()..MAGIC.len() + 4].try_into().expect("4"));
    if version != VERSION {
        return Err(format!(
            "version {version}, this storectl reads version {VERSION}"
        ));
    }
    let len = u64::from_le_bytes(bytes[MAGIC.len() + 4..HEADER].try_into().expect("8"));
    if len != (bytes.len() - HEADER - 8) as u64 {
        return Err(format!(
            "{} bytes, its header says {} (truncated?)",
            bytes.len(),
            len + HEADER as u64 + 8
        ));
    }
    let (payload, crc) = bytes[HEADER..].split_at(bytes.len() - HEADER - 8);
    let crc = u64::from_le_bytes(crc.try_into().expect("8"));
    if crc_fast::checksum(CrcAlgorithm::Crc64Nvme, payload) != crc {
        return Err("its checksum does not match (corrupt)".into());
    }
    let mut r = Reader {
        buf: payload,
        at: 0,
        base: HEADER,
    };
    let share = PathBuf::from(std::ffi::OsStr::from_bytes(r.bytes()?));
    let generation = r.bytes()?.to_vec();
    let links_in_step = r.flag()?;
    let mut root_dirs = [0u64; 4];
    for f in &mut root_dirs {
        *f = r.u64_le()?;
    }
    let mut baseline = Baseline::default();
    for b in &mut baseline.0 {
        *b = r.opt_u64()?;
    }
    let pending = r.varint()?;
    let n = r.count()?;
    let len = r.u64_le()?;
    if len > r.left() as u64 {
        return Err(format!("the layers' {len} bytes exceed the file"));
    }
    let len = len as usize;
    let mut layer_reader = Reader {
        buf: &payload[r.at..r.at + len],
        at: 0,
        base: HEADER + r.at,
    };
    r.at += len;
    // The layers on another thread while this one reads the images (half
    // the time of a one-shot `ls` on a big share is here).
    let (layers, images) = std::thread::scope(|s| {
        let layers = s.spawn(move || decode_layers(&mut layer_reader, n));
        let images = decode_images(&mut r);
        let layers = layers
            .join()
            .unwrap_or_else(|_| Err("decoding the layers failed".into()));
        (layers, images)
    });
    let (mut layers, refs) = layers?;
    let (mut images, tops) = images?;
    let resolve = |r: LayerRef| -> Result<Result<Option<usize>, ()>, u64> {
        match r {
            LayerRef::None => Ok(Ok(None)),
            LayerRef::Index(j) if j < n as u64 => Ok(Ok(Some(j as usize))),
            LayerRef::Index(j) => Err(j),
            LayerRef::Absent => Ok(Err(())),
        }
    };
    let parents = refs
        .into_iter()
        .enumerate()
        .map(|(i, r)| resolve(r).map_err(|j| format!("layer {i} refers to layer {j} of {n}")))
        .collect::<Result<Vec<_>, String>>()?;
    // Whole chains only: a layer whose parent is not in the view (or whose
    // parents loop) is left out, and so is every image on one (a full scan
    // takes them again if they are whole on the share).
    let whole = whole_chains(&parents);
    for (i, p) in parents.iter().enumerate() {
        if let (true, Ok(Some(j))) = (whole[i], p) {
            layers[i].parent = Some(layers[*j].id.clone());
        }
    }
    let mut keep_image = Vec::with_capacity(images.len());
    for (k, top) in tops.into_iter().enumerate() {
        let top = resolve(top).map_err(|j| format!("image {k} refers to layer {j} of {n}"))?;
        let keep = match top {
            Ok(Some(j)) if whole[j] => {
                images[k].0.layer = Some(layers[j].id.clone());
                true
            }
            _ => false, // no top layer, or not a whole chain
        };
        keep_image.push(keep);
    }
    if whole.iter().any(|w| !w) {
        let mut keep = whole.into_iter();
        layers.retain(|_| keep.next().unwrap_or(false));
    }
    if keep_image.iter().any(|k| !k) {
        let mut keep = keep_image.into_iter();
        images.retain(|_| keep.next().unwrap_or(false));
    }
    Ok(View {
        share,
        generation,
        links_in_step,
        root_dirs,
        baseline,
        pending,
        layers,
        images,
    })
}

// ---------------------------------------------------------------------------
// I/O.

/// Fingerprints of the directories of `root` that hold the legacy links of
/// shared entries: `overlay/`, `overlay-layers/`, `overlay-images/`,
/// `overlay/l/` (inode, modification and change times; 0 when absent).
pub fn root_dirs(root: &Path) -> [u64; 4] {
    let dirs = [
        root.join("overlay"),
        root.join("overlay-layers"),
        root.join("overlay-images"),
        root.join("overlay").join("l"),
    ];
    dirs.map(|d| {
        let Ok(st) = rustix::fs::stat(&d) else {
            return 0;
        };
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for word in [
            st.st_ino,
            st.st_mtime as u64,
            st.st_mtime_nsec as i64 as u64,
            st.st_ctime as u64,
            st.st_ctime_nsec as i64 as u64,
        ] {
            for byte in word.to_le_bytes() {
                h ^= u64::from(byte);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h.max(1)
    })
}

/// The view saved in `root`, if there is one that decodes and belongs to
/// `share`. A damaged one is warned about (and replaced by the next save);
/// an absent one is the normal first start.
pub fn load(root: &Path, share: &Path) -> Option<View> {
    let path = root.join(VIEW_FILE);
    let bytes = match storectl_storage::fsutil::read_small_file(&path, MAX_VIEW) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(
                "ignoring the share view {}: {e}; reading the share",
                path.display()
            );
            return None;
        }
    };
    if let Some(v) = version_of(&bytes).filter(|v| *v != VERSION) {
        // Another storectl's: not damage, just not ours to read.
        tracing::debug!(
            "the share view {} is of version {v}, this storectl reads {VERSION}: rebuilding it",
            path.display()
        );
        return None;
    }
    match decode(&bytes) {
        Ok(view) if view.share == share => Some(view),
        Ok(view) => {
            tracing::debug!(
                "the share view {} is of {}, not {}: not used",
                path.display(),
                view.share.display(),
                share.display()
            );
            None
        }
        Err(reason) => {
            tracing::warn!(
                "ignoring the share view {}: {reason}; reading the share",
                path.display()
            );
            None
        }
    }
}

/// Replace `root`'s view with `bytes` ([`encode`]): a temporary file renamed
/// over the old one, so a reader of the file sees the old view or the new.
pub fn save(root: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = root.join(format!(
        ".tmp-{VIEW_FILE}-{}",
        storectl_storage::fsutil::unique_suffix()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        drop(f);
        let dest = root.join(VIEW_FILE);
        std::fs::rename(&tmp, &dest).at(&dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn layer(id: &str, parent: Option<&str>) -> Layer {
        Layer {
            id: id.into(),
            names: vec!["n".into()],
            parent: parent.map(String::from),
            created: Some("2026-01-01T00:00:00Z".into()),
            compressed_diff_digest: Some(format!("sha256:{id}")),
            compressed_size: Some(12),
            diff_digest: Some(format!("sha256:{id}")),
            diff_size: Some(u64::MAX),
            compression: 2,
            incomplete: false,
            disk_size: None,
            shared: true,
        }
    }

    fn image(id: &str, top: &str) -> Image {
        Image {
            id: id.into(),
            digest: Some(format!("sha256:{id}")),
            names: vec!["localhost/a:1".into(), "localhost/é:2".into()],
            layer: Some(top.into()),
            created: None,
            big_data_names: vec!["manifest".into(), "config".into()],
            big_data_sizes: [("manifest".into(), 3), ("config".into(), 300)].into(),
            big_data_digests: [("config".into(), format!("sha256:{id}"))].into(),
            shared: true,
        }
    }

    fn sample() -> View {
        let (a, b, c, i, j) = (hex('a'), hex('b'), hex('c'), hex('d'), hex('e'));
        View {
            share: "/mnt/share".into(),
            generation: b"7 abc\n".to_vec(),
            links_in_step: true,
            root_dirs: [1, 2, u64::MAX, 0],
            baseline: Baseline([Some(1), None, Some(0)]),
            pending: 3,
            layers: vec![layer(&a, None), layer(&b, Some(&a)), layer(&c, Some(&a))],
            images: vec![(image(&i, &b), 42), (image(&j, &c), 0)],
        }
    }

    fn enc(v: &View) -> Vec<u8> {
        let parts = ViewParts {
            share: &v.share,
            generation: &v.generation,
            links_in_step: v.links_in_step,
            root_dirs: v.root_dirs,
            baseline: v.baseline,
            pending: v.pending,
        };
        encode(
            &parts,
            v.layers.iter(),
            v.images.iter().map(|(i, fp)| (i, *fp)),
        )
    }

    #[test]
    fn a_view_round_trips() {
        let v = sample();
        assert_eq!(decode(&enc(&v)).unwrap(), v);
        let empty = View::default();
        assert_eq!(decode(&enc(&empty)).unwrap(), empty);
    }

    #[test]
    fn every_damage_is_refused() {
        let bytes = enc(&sample());
        // Every truncation.
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "truncated to {n}");
        }
        // Every flipped bit of the payload and checksum (caught by the CRC).
        for i in HEADER..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                assert!(decode(&b).is_err(), "bit {bit:#x} of byte {i}");
            }
        }
        let mut other = bytes.clone();
        other[MAGIC.len()] = 3;
        assert!(decode(&other).unwrap_err().contains("version 3"));
        assert_eq!(version_of(&other), Some(3));
        assert!(decode(b"").is_err());
    }

    /// Payloads that pass the checksum but break the rules (a view written
    /// by something else): refused, never trusted, never a panic.
    #[test]
    fn inconsistent_views_are_refused() {
        let check = |v: View, want: &str| {
            let err = decode(&enc(&v)).unwrap_err();
            assert!(err.contains(want), "{err}");
        };
        let mut v = sample();
        v.layers[0].id = "../../etc".into();
        check(v, "invalid id");
        let mut v = sample();
        v.layers.swap(0, 1);
        check(v, "out of order");
        let mut v = sample();
        let dup = v.images[0].clone();
        v.images.insert(0, dup);
        check(v, "out of order");
        // A count far beyond the file.
        let mut w = Writer(Vec::new());
        w.0.extend_from_slice(MAGIC);
        w.0.extend_from_slice(&VERSION.to_le_bytes());
        w.0.extend_from_slice(&0u64.to_le_bytes());
        w.bytes(b"/s");
        w.bytes(b"1");
        w.0.push(0);
        w.0.extend_from_slice(&[0; 32]);
        for _ in 0..3 {
            w.0.push(0);
        }
        w.varint(0);
        w.varint(u64::MAX);
        let len = (w.0.len() - HEADER) as u64;
        w.0[MAGIC.len() + 4..HEADER].copy_from_slice(&len.to_le_bytes());
        let crc = crc_fast::checksum(CrcAlgorithm::Crc64Nvme, &w.0[HEADER..]);
        w.0.extend_from_slice(&crc.to_le_bytes());
        assert!(decode(&w.0).unwrap_err().contains("exceeds the file"));
    }

    /// Only whole chains are seeded: a layer whose parent is not in the view
    /// (or whose parents loop) is left out with its descendants and images.
    #[test]
    fn only_whole_chains_come_back_parents_first() {
        let (a, b, c, d, x, y) = (hex('a'), hex('b'), hex('c'), hex('d'), hex('8'), hex('9'));
        let (i, j, k) = (hex('1'), hex('2'), hex('3'));
        let v = View {
            layers: vec![
                layer(&x, Some(&y)),        // a loop…
                layer(&y, Some(&x)),        // …of two
                layer(&a, Some(&c)),        // child before its parent
                layer(&b, Some(&hex('f'))), // parent absent
                layer(&c, None),
                layer(&d, Some(&b)), // on the broken one
            ],
            images: vec![(image(&i, &a), 1), (image(&j, &d), 2), (image(&k, &y), 3)],
            ..View::default()
        };
        let mut sorted = v.clone();
        sorted.layers.sort_by(|p, q| p.id.cmp(&q.id));
        let got = decode(&enc(&sorted)).unwrap();
        let ids: Vec<&str> = got.layers.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, vec![a.as_str(), c.as_str()]);
        let order: Vec<&str> = parent_first(&got.layers)
            .into_iter()
            .map(|i| got.layers[i].id.as_str())
            .collect();
        assert_eq!(order, vec![c.as_str(), a.as_str()]);
        let images: Vec<&str> = got.images.iter().map(|(i, _)| i.id.as_str()).collect();
        assert_eq!(images, vec![i.as_str()]);
    }

    #[test]
    fn load_ignores_damage_and_other_shares() {
        let dir = tempfile::tempdir().unwrap();
        let v = sample();
        assert_eq!(load(dir.path(), &v.share), None, "absent");
        save(dir.path(), &enc(&v)).unwrap();
        assert_eq!(load(dir.path(), &v.share), Some(v.clone()));
        assert_eq!(load(dir.path(), Path::new("/mnt/other")), None);
        let path = dir.path().join(VIEW_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(load(dir.path(), &v.share), None, "corrupt");
        // Only the view is left behind, no temporary file.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(VIEW_FILE)]);
    }
}
