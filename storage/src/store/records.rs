//! [`Records`]: the layers or images of a [`State`](super::State), by id,
//! each parsed when first used.
//!
//! A writer opening from containers/storage's index on its share reads
//! 40,000 records at 10,000 images; parsing them all costs several times a
//! whole `load`, and so does merely building 40,000 records in memory. So a
//! record from the index starts as its line alone (its id is the key): the
//! first [`get`](Records::get) parses the line — the same parse and checks
//! as an eager open — and keeps the result. A record the index gave is a
//! shared one ([`Records::shared_keys`] knows without parsing).
//!
//! Reading is lazy, meaning never differs: [`get`](Records::get),
//! [`iter`](Records::iter), [`values`](Records::values) always give whole
//! records. The `skeleton*` accessors give a record's *skeleton* instead —
//! its id and `shared`, a layer's `parent`, an image's `names` and top
//! `layer` are right, other fields may be empty — read by a scan of its
//! line ([`crate::index_state`]) that is far cheaper than a parse, for the
//! questions that need those fields of many records (names, chains).
//!
//! ```text
//!  id ──▶ Slot::Whole(record)            (local, changed, or parsed whole)
//!  id ──▶ Slot::Lazy { line,             (from the index, unused so far)
//!                      skeleton: once,   ← skeleton(), skeleton_values()
//!                      whole:    once }  ← get(), iter(), values()
//! ```
//!
//! A line that does not parse when used (the index was trusted at open:
//! this can only be damage at the same size) stands as its skeleton, or as
//! a record with its id alone, with a warning that says how to have the
//! writer read the directories instead: never a panic.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::csindex::Line;
use crate::meta::{Image, Layer};

/// A layer or image record as [`Records`] holds it.
pub trait Record: Clone + fmt::Debug + Send + Sync {
    /// The whole record from its index line, as an eager open reads it
    /// (parsed and checked as a shared record).
    fn from_line(line: &[u8]) -> Result<Self, String>;
    /// The record's skeleton from a line as the writer renders it; `None`
    /// for any other line (then the whole parse stands in).
    fn skeleton_from_line(line: &[u8]) -> Option<Self>;
    /// What a line that parses in no way stands as: its id, shared.
    fn unreadable(id: &str) -> Self;
    fn is_shared(&self) -> bool;
    fn id(&self) -> &str;
}

impl Record for Layer {
    fn from_line(line: &[u8]) -> Result<Layer, String> {
        crate::index_state::layer(line)
    }
    fn skeleton_from_line(line: &[u8]) -> Option<Layer> {
        crate::index_state::layer_skeleton(line)
    }
    fn unreadable(id: &str) -> Layer {
        let mut layer = crate::index_state::bare_layer(id);
        layer.shared = true;
        layer
    }
    fn is_shared(&self) -> bool {
        self.shared
    }
    fn id(&self) -> &str {
        &self.id
    }
}

impl Record for Image {
    fn from_line(line: &[u8]) -> Result<Image, String> {
        crate::index_state::image(line)
    }
    fn skeleton_from_line(line: &[u8]) -> Option<Image> {
        crate::index_state::image_skeleton(line)
    }
    fn unreadable(id: &str) -> Image {
        let mut image = crate::index_state::bare_image(id);
        image.shared = true;
        image
    }
    fn is_shared(&self) -> bool {
        self.shared
    }
    fn id(&self) -> &str {
        &self.id
    }
}

/// One record: whole, or an index line parsed at first use.
#[derive(Clone)]
enum Slot<T> {
    Whole(Box<T>),
    Lazy(Lazy<T>),
}

#[derive(Clone)]
struct Lazy<T> {
    line: Line,
    skeleton: OnceLock<Box<T>>,
    whole: OnceLock<Box<T>>,
}

impl<T: Record> Lazy<T> {
    fn new(line: Line) -> Lazy<T> {
        Lazy {
            line,
            skeleton: OnceLock::new(),
            whole: OnceLock::new(),
        }
    }

    fn parse(&self, id: &str) -> T {
        match T::from_line(&self.line) {
            Ok(t) => t,
            Err(why) => {
                tracing::warn!(
                    "record {id} in containers/storage's index does not parse: {why} \
                     (remove the share's {} and the writer reads the records from their \
                     directories, and rebuilds the index at its next change)",
                    crate::csindex::STAMP
                );
                T::skeleton_from_line(&self.line).unwrap_or_else(|| T::unreadable(id))
            }
        }
    }

    fn whole(&self, id: &str) -> &T {
        self.whole.get_or_init(|| Box::new(self.parse(id)))
    }

    fn skeleton(&self, id: &str) -> &T {
        if let Some(whole) = self.whole.get() {
            return whole;
        }
        if let Some(skeleton) = self.skeleton.get() {
            return skeleton;
        }
        match T::skeleton_from_line(&self.line) {
            Some(t) => self.skeleton.get_or_init(|| Box::new(t)),
            None => self.whole(id),
        }
    }

    fn into_whole(mut self, id: &str) -> T {
        match self.whole.take() {
            Some(t) => *t,
            None => self.parse(id),
        }
    }
}

impl<T: Record> Slot<T> {
    fn whole(&self, id: &str) -> &T {
        match self {
            Slot::Whole(t) => t,
            Slot::Lazy(lazy) => lazy.whole(id),
        }
    }

    fn skeleton(&self, id: &str) -> &T {
        match self {
            Slot::Whole(t) => t,
            Slot::Lazy(lazy) => lazy.skeleton(id),
        }
    }

    fn into_whole(self, id: &str) -> T {
        match self {
            Slot::Whole(t) => *t,
            Slot::Lazy(lazy) => lazy.into_whole(id),
        }
    }

    fn is_shared(&self) -> bool {
        match self {
            Slot::Whole(t) => t.is_shared(),
            Slot::Lazy(_) => true, // from the share's index
        }
    }
}

/// Layers or images by id, ascending; see the module documentation.
#[derive(Clone)]
pub struct Records<T> {
    map: BTreeMap<String, Slot<T>>,
}

impl<T> Default for Records<T> {
    fn default() -> Self {
        Records {
            map: BTreeMap::new(),
        }
    }
}

impl<T: Record> fmt::Debug for Records<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<T: Record> Records<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records from `entries` in ascending id order (built in bulk): each
    /// an index line to parse when used, or (given) already whole.
    pub fn from_index(entries: impl IntoIterator<Item = (String, Line, Option<Box<T>>)>) -> Self {
        Records {
            map: entries
                .into_iter()
                .map(|(id, line, whole)| match whole {
                    None => (id, Slot::Lazy(Lazy::new(line))),
                    Some(whole) => (id, Slot::Whole(whole)),
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    /// The whole record `id` (parsed now if it was not).
    pub fn get(&self, id: &str) -> Option<&T> {
        self.map.get_key_value(id).map(|(id, s)| s.whole(id))
    }

    /// Record `id` to change: whole from now on.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        let (key, slot) = self.map.get_key_value(id)?;
        if let Slot::Lazy(_) = slot {
            let key = key.clone();
            let slot = self.map.remove(&key)?;
            let whole = slot.into_whole(&key);
            self.map.insert(key, Slot::Whole(Box::new(whole)));
        }
        match self.map.get_mut(id)? {
            Slot::Whole(t) => Some(t),
            Slot::Lazy(_) => None, // made whole above
        }
    }

    /// Record `id`'s skeleton (see the module documentation).
    pub fn skeleton(&self, id: &str) -> Option<&T> {
        self.map.get_key_value(id).map(|(id, s)| s.skeleton(id))
    }

    /// Every record's skeleton, by id (the unread ones scanned in parallel
    /// first).
    pub fn skeleton_iter(&self) -> impl DoubleEndedIterator<Item = (&String, &T)> + Clone {
        self.read_all(
            |lazy| lazy.whole.get().is_none() && lazy.skeleton.get().is_none(),
            |slot, id| {
                slot.skeleton(id);
            },
        );
        self.map.iter().map(|(id, s)| (id, s.skeleton(id)))
    }

    /// Every record's skeleton, by id.
    pub fn skeleton_values(&self) -> impl DoubleEndedIterator<Item = &T> + Clone {
        self.skeleton_iter().map(|(_, t)| t)
    }

    /// The skeletons of the records whose line `may_match` says may be one
    /// asked for, by id — of those not read yet; every record read already
    /// (or whole) is given, for the caller to check. The lines are asked in
    /// parallel when there are many: a question about a few records of a
    /// big index ([`State::images_named`](super::State::images_named)).
    pub fn skeletons_where(&self, may_match: impl Fn(&[u8]) -> bool + Sync) -> Vec<(&String, &T)> {
        fn pick<'a, T: Record>(
            (id, slot): (&'a String, &'a Slot<T>),
            may_match: &(impl Fn(&[u8]) -> bool + Sync),
        ) -> Option<(&'a String, &'a T)> {
            match slot {
                Slot::Lazy(lazy)
                    if lazy.whole.get().is_none()
                        && lazy.skeleton.get().is_none()
                        && !may_match(&lazy.line) =>
                {
                    None
                }
                slot => Some((id, slot.skeleton(id))),
            }
        }
        if self.map.len() >= 1024 {
            let pick = |entry| pick(entry, &may_match);
            self.map.par_iter().filter_map(pick).collect()
        } else {
            self.map
                .iter()
                .filter_map(|entry| pick(entry, &may_match))
                .collect()
        }
    }

    /// The ids of the shared records, parsing none.
    pub fn shared_keys(&self) -> impl DoubleEndedIterator<Item = &String> + Clone {
        self.map
            .iter()
            .filter(|(_, s)| s.is_shared())
            .map(|(id, _)| id)
    }

    /// The records that did not come from the index unread: local ones,
    /// and those changed or added since (whole, parsing none).
    pub fn iter_unindexed(&self) -> impl DoubleEndedIterator<Item = (&String, &T)> + Clone {
        self.map.iter().filter_map(|(id, s)| match s {
            Slot::Whole(t) => Some((id, &**t)),
            Slot::Lazy(_) => None,
        })
    }

    /// Every whole record, by id (the unparsed ones parsed now, in
    /// parallel when there are many).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&String, &T)> + Clone {
        self.read_all(
            |lazy| lazy.whole.get().is_none(),
            |slot, id| {
                slot.whole(id);
            },
        );
        self.map.iter().map(|(id, s)| (id, s.whole(id)))
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &T> + Clone {
        self.iter().map(|(_, t)| t)
    }

    /// Whole records from id `start` on, by id.
    pub fn range_from(&self, start: &str) -> impl DoubleEndedIterator<Item = (&String, &T)> {
        self.map
            .range::<str, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
            .map(|(id, s)| (id, s.whole(id)))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + Clone {
        self.map.keys()
    }

    pub fn into_keys(self) -> impl DoubleEndedIterator<Item = String> {
        self.map.into_keys()
    }

    /// Insert a whole record; the one it replaces, whole.
    pub fn insert(&mut self, id: String, record: T) -> Option<T> {
        let old = self.map.remove_entry(id.as_str());
        self.map.insert(id, Slot::Whole(Box::new(record)));
        old.map(|(id, slot)| slot.into_whole(&id))
    }

    /// Record `id`, whole, out of the map.
    pub fn remove(&mut self, id: &str) -> Option<T> {
        self.remove_entry(id).map(|(_, t)| t)
    }

    pub fn remove_entry(&mut self, id: &str) -> Option<(String, T)> {
        let (id, slot) = self.map.remove_entry(id)?;
        let whole = slot.into_whole(&id);
        Some((id, whole))
    }

    /// Keep the records `keep` says to (each given whole).
    pub fn retain(&mut self, mut keep: impl FnMut(&String, &T) -> bool) {
        self.map.retain(|id, slot| keep(id, slot.whole(id)));
    }

    /// Move every record of `other` in (replacing those with its ids). A
    /// large sorted batch is merged with `append`, which builds densely
    /// packed nodes.
    pub fn append(&mut self, other: &mut Records<T>) {
        self.map.append(&mut other.map);
    }

    /// How many records have been parsed whole (for tests and debugging).
    pub fn parsed(&self) -> usize {
        self.map
            .values()
            .filter(|s| match s {
                Slot::Whole(_) => true,
                Slot::Lazy(lazy) => lazy.whole.get().is_some(),
            })
            .count()
    }

    /// Read every lazy record `unread` says is unread with `read`, in
    /// parallel, when there are many (a whole-store question on a store
    /// just opened from the index).
    fn read_all(&self, unread: impl Fn(&Lazy<T>) -> bool, read: impl Fn(&Slot<T>, &str) + Sync) {
        let many = self
            .map
            .values()
            .filter(|s| matches!(s, Slot::Lazy(lazy) if unread(lazy)))
            .take(256)
            .count()
            >= 256;
        if many {
            self.map.par_iter().for_each(|(id, slot)| {
                read(slot, id);
            });
        }
    }
}

impl<'a, T: Record> IntoIterator for &'a Records<T> {
    type Item = (&'a String, &'a T);
    type IntoIter = Box<dyn DoubleEndedIterator<Item = (&'a String, &'a T)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<T: Record> Extend<(String, T)> for Records<T> {
    fn extend<I: IntoIterator<Item = (String, T)>>(&mut self, iter: I) {
        for (id, t) in iter {
            self.insert(id, t);
        }
    }
}

impl<T: Record> FromIterator<(String, T)> for Records<T> {
    fn from_iter<I: IntoIterator<Item = (String, T)>>(iter: I) -> Self {
        Records {
            map: iter
                .into_iter()
                .map(|(id, t)| (id, Slot::Whole(Box::new(t))))
                .collect(),
        }
    }
}

impl<T: Record, K: AsRef<str> + ?Sized> std::ops::Index<&K> for Records<T> {
    type Output = T;
    fn index(&self, id: &K) -> &T {
        match self.get(id.as_ref()) {
            Some(t) => t,
            None => panic!("no record {}", id.as_ref()),
        }
    }
}

impl<T: Record + PartialEq> PartialEq for Records<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csindex;
    use crate::store::State;

    fn hex(label: &str) -> String {
        crate::digest::sha256_digest(label.as_bytes())[7..].to_string()
    }

    fn lazy_layer(id: &str, parent: Option<&str>) -> (String, Line, Option<Box<Layer>>) {
        let mut whole = csindex::tests::layer(id, parent);
        whole.shared = true;
        (
            id.to_string(),
            Line::from(csindex::layer_line(&whole)),
            None,
        )
    }

    #[test]
    fn a_lazy_record_reads_whole_and_is_parsed_once_used() {
        let (a, b) = (hex("a"), hex("b"));
        let mut records: Records<Layer> =
            Records::from_index([lazy_layer(&a, None), lazy_layer(&b, Some(&a))]);
        assert_eq!(records.parsed(), 0);
        let mut ids = vec![&a, &b];
        ids.sort();
        assert_eq!(records.shared_keys().collect::<Vec<_>>(), ids);
        // The skeleton has the parent, not the digests.
        let skeleton = records.skeleton(&b).unwrap();
        assert_eq!(skeleton.parent.as_deref(), Some(a.as_str()));
        assert!(skeleton.diff_digest.is_none());
        assert_eq!(records.parsed(), 0);
        // `get` gives the whole record, as the line says.
        let mut want = csindex::tests::layer(&b, Some(&a));
        want.shared = true;
        assert_eq!(records.get(&b), Some(&want));
        assert_eq!(records.parsed(), 1);
        // A change makes it whole; removing gives it whole.
        records.get_mut(&a).unwrap().names.push("x".into());
        assert_eq!(records[&a].names, ["x"]);
        let removed = records.remove(&b).unwrap();
        assert_eq!(removed, want);
        assert_eq!(records.keys().collect::<Vec<_>>(), [&a]);
    }

    #[test]
    fn a_line_damaged_after_the_open_stands_as_what_can_be_read() {
        let (a, b) = (hex("a"), hex("b"));
        // Its skeleton still reads: that (the parent kept).
        let (_, line, _) = lazy_layer(&a, Some(&b));
        let text = String::from_utf8(line.to_vec()).unwrap();
        let text = text.replace("\"compression\":", "\"compression\":x");
        let damaged =
            Records::<Layer>::from_index([(a.clone(), Line::from(text.into_bytes()), None)]);
        let got = damaged.get(&a).unwrap();
        assert_eq!(got.parent.as_deref(), Some(b.as_str()));
        assert!(got.diff_digest.is_none());
        // Nothing reads: its id alone, shared.
        let junk =
            Records::<Layer>::from_index([(a.clone(), Line::from(b"{\"id\":".to_vec()), None)]);
        assert_eq!(junk.get(&a), Some(&Layer::unreadable(&a)));
        assert!(junk[&a].shared && junk[&a].parent.is_none());
    }

    /// How many lazy records have been read at all (skeleton or whole).
    fn read<T: Record>(records: &Records<T>) -> usize {
        records
            .map
            .values()
            .filter(|s| match s {
                Slot::Whole(_) => true,
                Slot::Lazy(l) => l.whole.get().is_some() || l.skeleton.get().is_some(),
            })
            .count()
    }

    /// Images by name read only the lines whose names list may hold one
    /// (in parallel over a big index as one by one over a small one); a
    /// line whose names the scan cannot read (an escape) is read, and
    /// found when it has the name.
    #[test]
    fn images_by_name_read_only_the_lines_that_may_name_them() {
        let none = std::collections::BTreeSet::new();
        for n in [10, 2000] {
            let mut entries: Vec<(String, Line, Option<Box<Image>>)> = (0..n)
                .map(|i| {
                    let id = hex(&format!("image{i}"));
                    let name = format!("localhost/app{i}:1");
                    let mut image = csindex::tests::image(&id, &hex("top"), &[&name]);
                    image.shared = true;
                    (id, Line::from(csindex::image_line(&image, &none)), None)
                })
                .collect();
            // One line as another program may write it: the name escaped.
            let (escaped, line, _) = entries.pop().unwrap();
            let text = String::from_utf8(line.to_vec()).unwrap();
            let text = text.replacen("localhost/app", "localhost\\/app", 1);
            entries.push((escaped.clone(), Line::from(text.into_bytes()), None));
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let state = State {
                images: Records::from_index(entries),
                ..State::default()
            };
            let found = state.images_named(&["localhost/app3:1", "localhost/none:1"]);
            assert_eq!(found.len(), 1);
            assert_eq!(found[0].id, hex("image3"));
            assert_eq!(read(&state.images), 2, "the one named and the escaped one");
            // The escaped name is found, and read whole.
            let last = format!("localhost/app{}:1", n - 1);
            let found = state.images_named(&[&last]);
            assert_eq!(found.iter().map(|i| &i.id).collect::<Vec<_>>(), [&escaped]);
            assert!(state.images_named(&[]).is_empty());
        }
    }
}
