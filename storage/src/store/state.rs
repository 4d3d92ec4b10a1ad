//! The in-memory state of a store ([`State`]: its layers and images, and on
//! a reader the shared entries a local one hides) and the pure queries on
//! it: chains, missing ancestors, shadowed names, which layers images use.
//! Nothing here reads or writes the disk.

use super::records::{Record, Records};
use super::*;

/// Insert `items` into `map`. A large batch (a reader's first scan) is merged
/// with `append`, which builds densely packed nodes — about 500 bytes less per
/// image than one insert at a time; a small one is inserted in place.
pub(super) fn insert_batch<V: Record>(map: &mut Records<V>, items: Vec<(String, V)>) {
    if items.len() >= 64 && items.len() * 4 >= map.len() {
        let mut batch: Records<V> = items.into_iter().collect();
        map.append(&mut batch);
    } else {
        map.extend(items);
    }
}

/// The names of `names` that a local image of `state` has.
pub(super) fn local_claims(state: &State, names: Vec<String>) -> Vec<String> {
    // Local images are never unread index lines.
    let local = || state.images.iter_unindexed().map(|(_, i)| i);
    if names.is_empty() || local().all(|i| i.shared) {
        return Vec::new();
    }
    let local: BTreeSet<&str> = local()
        .filter(|i| !i.shared)
        .flat_map(|i| i.names.iter().map(String::as_str))
        .collect();
    names
        .into_iter()
        .filter(|n| local.contains(n.as_str()))
        .collect()
}

/// The names of `names` that a shared image of `state` has.
pub(super) fn shared_claims(state: &State, names: Vec<String>) -> Vec<String> {
    let asked: Vec<&str> = names.iter().map(String::as_str).collect();
    let holders = state.images_named(&asked);
    names
        .into_iter()
        .filter(|n| holders.iter().any(|i| i.shared && i.names.contains(n)))
        .collect()
}

/// Carry a reader's shared entries from `old` into `new` (read from its own
/// disk): a shared entry whose id a local one now has is hidden by it, a
/// hidden one whose local entry went takes its place again.
pub(super) fn keep_shared(new: &mut State, old: &State) {
    /// The same for layers and images: `entries` go to `visible` unless a
    /// local entry holds their id there, then to `hidden`.
    fn carry<'a, T: Record + 'a>(
        visible: &mut Records<T>,
        hidden: &mut Records<T>,
        entries: impl Iterator<Item = (&'a String, &'a T)>,
    ) {
        for (id, entry) in entries {
            let to = if visible.contains_key(id) {
                &mut *hidden
            } else {
                &mut *visible
            };
            to.insert(id.clone(), entry.clone());
        }
    }
    let layers = old.layers.iter().filter(|(_, l)| l.shared);
    carry(
        &mut new.layers,
        &mut new.hidden_layers,
        layers.chain(old.hidden_layers.iter()),
    );
    let images = old.images.iter().filter(|(_, i)| i.shared);
    carry(
        &mut new.images,
        &mut new.hidden_images,
        images.chain(old.hidden_images.iter()),
    );
}

/// The in-memory view of a store: every valid layer and image.
#[derive(Debug, Default, Clone)]
pub struct State {
    pub layers: Records<Layer>,
    pub images: Records<Image>,
    /// On a reader: shared layers the share holds under the id of a local
    /// layer. The local one wins (it is what `layers` has); this copy takes
    /// its place if the local one goes.
    pub hidden_layers: Records<Layer>,
    /// On a reader: shared images with the id of a local image, hidden by it
    /// (the local record and its names win; see docs/sharing.md).
    pub hidden_images: Records<Image>,
}

impl State {
    /// The images (skeletons: ids, names, `shared`) that have one of
    /// `names`, by id. Only the index lines whose names list may hold one
    /// are read ([`Records::skeletons_where`]): on a writer opened from a big
    /// index, a few microseconds a line rather than a skeleton each.
    pub fn images_named(&self, names: &[&str]) -> Vec<&Image> {
        if names.is_empty() {
            return Vec::new();
        }
        self.images
            .skeletons_where(|line| crate::index_state::image_line_may_name(line, names))
            .into_iter()
            .map(|(_, i)| i)
            .filter(|i| i.names.iter().any(|n| names.contains(&n.as_str())))
            .collect()
    }

    /// The layers of the chain ending at `top`, top first, whole; `None`
    /// when a layer is missing or the parents loop.
    pub fn chain(&self, top: &str) -> Option<Vec<&Layer>> {
        let chain = self.chain_skeleton(top)?;
        Some(
            chain
                .iter()
                .filter_map(|l| self.layers.get(&l.id))
                .collect(),
        )
    }

    /// [`State::chain`] as skeletons ([`Records::skeleton`]: ids, parents
    /// and `shared` only), parsing no record: for questions of which layers
    /// and how many.
    pub fn chain_skeleton(&self, top: &str) -> Option<Vec<&Layer>> {
        let mut out = Vec::new();
        let mut next = Some(top);
        while let Some(id) = next {
            let layer = self.layers.skeleton(id)?;
            if out.len() > self.layers.len() {
                return None; // a cycle
            }
            out.push(layer);
            next = layer.parent.as_deref();
        }
        Some(out)
    }

    /// The first layer of the chain ending at `top` that is not present.
    pub fn missing_ancestor<'a>(&'a self, top: &'a str) -> Option<&'a str> {
        let mut next = top;
        for _ in 0..=self.layers.len() {
            match self.layers.skeleton(next) {
                None => return Some(next),
                Some(l) => match l.parent.as_deref() {
                    Some(p) => next = p,
                    None => return None,
                },
            }
        }
        None // a cycle: nothing is missing, the chain just never ends
    }

    /// Names that both a local and a shared image have. On a reader the local
    /// image owns such a name ([`Store::resolve_image`]); the shared image's is
    /// shadowed.
    pub fn shadowed_names(&self) -> BTreeSet<String> {
        let local: BTreeSet<&str> = self
            .images
            .skeleton_values()
            .filter(|i| !i.shared)
            .flat_map(|i| i.names.iter().map(String::as_str))
            .collect();
        if local.is_empty() {
            return BTreeSet::new();
        }
        self.images
            .skeleton_values()
            .filter(|i| i.shared)
            .flat_map(|i| i.names.iter())
            .filter(|n| local.contains(n.as_str()))
            .cloned()
            .collect()
    }

    /// Which of the layers `among` some image's (whole) chain uses: what
    /// [`State::referenced_layers`] would say of them, without collecting
    /// every layer of every image (a walk stops where an earlier one
    /// found the rest of its chain used).
    pub fn used_among(&self, among: &[&str]) -> BTreeSet<String> {
        self.used_among_except(among, None)
    }

    /// [`State::used_among`], as if image `except` were gone.
    ///
    /// A layer is used when an image's chain holds it, that is when the
    /// image's top layer is the layer or below it: the layers below `among`
    /// are found level by level (one pass over the layers' parents each),
    /// and only the image tops among them have their chains walked — work
    /// that follows the chains `among` is on, not every image's.
    pub fn used_among_except(&self, among: &[&str], except: Option<&str>) -> BTreeSet<String> {
        use std::collections::HashSet;
        let wanted: HashSet<&str> = among
            .iter()
            .copied()
            .filter(|id| self.layers.contains_key(id))
            .collect();
        if wanted.is_empty() {
            return BTreeSet::new();
        }
        let tops: HashSet<&str> = self
            .images
            .skeleton_values()
            .filter(|i| Some(i.id.as_str()) != except)
            .filter_map(|i| i.layer.as_deref())
            .collect();
        let mut found: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|id| tops.contains(id))
            .collect();
        let mut seen = wanted.clone();
        let mut level = wanted.clone();
        while !level.is_empty() {
            let mut below = HashSet::new();
            for (id, layer) in self.layers.skeleton_iter() {
                let under = layer.parent.as_deref().is_some_and(|p| level.contains(p));
                if under && seen.insert(id.as_str()) {
                    below.insert(id.as_str());
                    if tops.contains(id.as_str()) {
                        found.push(id);
                    }
                }
            }
            level = below;
        }
        let mut used = BTreeSet::new();
        for top in found {
            // Only a whole chain counts (as in `referenced_layers`).
            for layer in self.chain_skeleton(top).unwrap_or_default() {
                if wanted.contains(layer.id.as_str()) {
                    used.insert(layer.id.clone());
                }
            }
        }
        used
    }

    /// Layers some image's chain uses.
    pub fn referenced_layers(&self) -> BTreeSet<String> {
        self.images
            .skeleton_values()
            .filter_map(|i| self.chain_skeleton(i.layer.as_deref()?))
            .flatten()
            .map(|l| l.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{id, image, layer};
    use super::*;

    /// Layers `base` ← `mid` ← `top`, `other` on `base`, and `orphan` on a
    /// missing `gone`; images `i-top` on `top`, `i-other` on `other`.
    fn forest() -> State {
        let (base, mid, top, other) = (id("base"), id("mid"), id("top"), id("other"));
        let mut st = State::default();
        for l in [
            layer(&base, None, false),
            layer(&mid, Some(&base), false),
            layer(&top, Some(&mid), false),
            layer(&other, Some(&base), false),
            layer(&id("orphan"), Some(&id("gone")), false),
        ] {
            st.layers.insert(l.id.clone(), l);
        }
        for i in [
            image(&id("i-top"), &top, &["localhost/top:1"], false),
            image(&id("i-other"), &other, &["localhost/other:1"], false),
        ] {
            st.images.insert(i.id.clone(), i);
        }
        st
    }

    fn ids(layers: Option<Vec<&Layer>>) -> Option<Vec<String>> {
        layers.map(|c| c.into_iter().map(|l| l.id.clone()).collect())
    }

    #[test]
    fn chains_go_top_first_and_break_on_a_missing_layer_or_a_loop() {
        let mut st = forest();
        let want = [id("top"), id("mid"), id("base")].to_vec();
        assert_eq!(ids(st.chain(&id("top"))), Some(want));
        assert_eq!(ids(st.chain(&id("base"))), Some(vec![id("base")]));
        assert_eq!(ids(st.chain(&id("orphan"))), None, "its parent is gone");
        assert_eq!(ids(st.chain(&id("nowhere"))), None);
        assert_eq!(
            st.missing_ancestor(&id("orphan")),
            Some(id("gone").as_str())
        );
        assert_eq!(st.missing_ancestor(&id("top")), None, "a whole chain");
        let nowhere = id("nowhere");
        assert_eq!(st.missing_ancestor(&nowhere), Some(nowhere.as_str()));
        // base → top → mid → base: a loop is no chain, and nothing is missing.
        st.layers.get_mut(&id("base")).unwrap().parent = Some(id("top"));
        assert_eq!(ids(st.chain(&id("top"))), None);
        assert_eq!(st.missing_ancestor(&id("top")), None);
    }

    #[test]
    fn the_layers_images_use_are_those_of_whole_chains() {
        let mut st = forest();
        let used: BTreeSet<String> = [id("base"), id("mid"), id("top"), id("other")].into();
        assert_eq!(st.referenced_layers(), used);
        let among = [id("base"), id("mid"), id("orphan"), id("nowhere")];
        let among: Vec<&str> = among.iter().map(String::as_str).collect();
        assert_eq!(st.used_among(&among), [id("base"), id("mid")].into());
        // Without i-top, mid is unused; base stays (i-other sits on it).
        let except = id("i-top");
        let used = st.used_among_except(&among, Some(&except));
        assert_eq!(used, [id("base")].into());
        // An image on a broken chain uses nothing.
        let on_orphan = image(&id("i-orphan"), &id("orphan"), &[], false);
        st.images.insert(on_orphan.id.clone(), on_orphan);
        assert!(!st.referenced_layers().contains(&id("orphan")));
        assert!(st.used_among(&[id("orphan").as_str()]).is_empty());
    }

    #[test]
    fn names_a_local_and_a_shared_image_both_have_are_shadowed() {
        let mut st = forest();
        assert!(st.shadowed_names().is_empty(), "no shared image");
        let shared = image(
            &id("shared"),
            &id("base"),
            &["localhost/top:1", "localhost/shared:1"],
            true,
        );
        st.images.insert(shared.id.clone(), shared);
        assert_eq!(st.shadowed_names(), ["localhost/top:1".to_string()].into());
        let names = |n: &[&str]| n.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let asked = names(&["localhost/top:1", "localhost/shared:1", "localhost/x:1"]);
        assert_eq!(
            local_claims(&st, asked.clone()),
            names(&["localhost/top:1"])
        );
        assert_eq!(
            shared_claims(&st, asked),
            names(&["localhost/top:1", "localhost/shared:1"])
        );
        // Without local images, nothing is claimed locally.
        st.images.retain(|_, i| i.shared);
        assert!(local_claims(&st, names(&["localhost/shared:1"])).is_empty());
        assert!(st.shadowed_names().is_empty());
    }

    #[test]
    fn batches_small_and_large_insert_the_same() {
        for (have, add) in [(10, 3), (10, 100), (0, 64), (1000, 70)] {
            let entry = |n: usize, shared: bool| {
                let id = id(&n.to_string());
                (id.clone(), layer(&id, None, shared))
            };
            let mut map: Records<Layer> = (0..have).map(|n| entry(n, false)).collect();
            let mut want = map.clone();
            // Half of the batch replaces entries that are there.
            let items: Vec<(String, Layer)> =
                (have / 2..have / 2 + add).map(|n| entry(n, true)).collect();
            want.extend(items.clone());
            insert_batch(&mut map, items);
            assert_eq!(map, want, "{have} + {add}");
        }
    }

    #[test]
    fn a_reread_state_keeps_the_shared_entries_local_ones_hide() {
        let (a, b, c) = (id("a"), id("b"), id("c"));
        let mut old = State::default();
        for l in [layer(&a, None, true), layer(&b, None, true)] {
            old.layers.insert(l.id.clone(), l);
        }
        old.images.insert(a.clone(), image(&a, &a, &[], true));
        // c's shared copy was hidden by a local layer c, which went.
        old.hidden_layers.insert(c.clone(), layer(&c, None, true));
        old.layers.insert(c.clone(), layer(&c, None, false));
        // The disk now holds a local layer and image of id b.
        let mut new = State::default();
        new.layers.insert(b.clone(), layer(&b, None, false));
        new.images.insert(b.clone(), image(&b, &b, &[], false));
        keep_shared(&mut new, &old);
        assert!(new.layers[&a].shared && new.images[&a].shared);
        assert!(!new.layers[&b].shared, "the local layer wins");
        assert!(new.hidden_layers[&b].shared, "the shared copy waits");
        assert!(new.layers[&c].shared, "the hidden copy shows again");
        assert!(!new.hidden_layers.contains_key(&c));
        assert!(new.hidden_images.is_empty());
    }
}
