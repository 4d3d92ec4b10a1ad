//! A reader's shared entries: what a refresher found on the share, applied
//! to the in-memory state in one step ([`Store::apply_shared`]); local
//! entries win over shared ones of the same id or name.

use super::*;

/// Shared layers and images a refresher found added or removed on the share,
/// applied to the in-memory store in one step by [`Store::apply_shared`].
#[derive(Debug, Default, Clone)]
pub struct SharedDelta {
    /// New layers, parents before children.
    pub add_layers: Vec<Layer>,
    pub add_images: Vec<Image>,
    pub remove_images: Vec<String>,
    pub remove_layers: Vec<String>,
    /// Shared images whose names changed on the writer: (id, new names).
    pub rename_images: Vec<(String, Vec<String>)>,
    /// The root's legacy links already match this delta's entries (a
    /// reader's validated view says so: the process that saved it kept them
    /// in step). No link is made or checked for them, and the first delta of
    /// the process does not trigger the full repair; later deltas keep the
    /// links as usual. See [`Store::links_in_step`].
    pub links_in_step: bool,
}

impl SharedDelta {
    pub fn is_empty(&self) -> bool {
        self.add_layers.is_empty()
            && self.add_images.is_empty()
            && self.remove_images.is_empty()
            && self.remove_layers.is_empty()
            && self.rename_images.is_empty()
    }
}

impl Store {
    /// Apply what a refresher found on the share, under the state lock once,
    /// so nobody sees a layer without its parent or an image without its layers.
    /// Removals touch only shared entries; a local image on a shared layer that
    /// vanished is dropped from memory too (its chain is broken).
    ///
    /// Local entries win: a shared layer or image with the id of a local one
    /// is kept aside ([`State::hidden_layers`], [`State::hidden_images`]), and
    /// a name both a local and a shared image have belongs to the local one
    /// (warned about once per name). On a reader, the legacy names of shared
    /// entries in this root (`overlay/<id>`, `overlay-layers/<id>`,
    /// `overlay-images/<id>` `-> RO/<id>`, `overlay/l/<short>`) follow: made
    /// for what joined, removed for what left, all of them checked on the
    /// first call in a process ([`Store::repair_shared_links`]).
    pub fn apply_shared(&self, delta: SharedDelta) {
        let mut linked_layers = Vec::new();
        let mut linked_images = Vec::new();
        let mut unlinked_layers = Vec::new();
        let mut unlinked_images = Vec::new();
        let mut named: Vec<String> = Vec::new();
        // Ids whose links to keep (none when they are in step already).
        let track = self.layout.role() == Role::Reader && !delta.links_in_step;
        let collisions = {
            let mut state = self.state.write();
            // Names are compared only when there are local images to collide with.
            let has_local = state.images.values().any(|i| !i.shared);
            let mut layers = Vec::with_capacity(delta.add_layers.len());
            for mut l in delta.add_layers {
                l.shared = true;
                if state.layers.get(&l.id).is_some_and(|x| !x.shared) {
                    state.hidden_layers.insert(l.id.clone(), l);
                } else {
                    if track {
                        linked_layers.push(l.id.clone());
                    }
                    layers.push((l.id.clone(), l));
                }
            }
            let mut images = Vec::with_capacity(delta.add_images.len());
            for mut i in delta.add_images {
                i.shared = true;
                if state.images.get(&i.id).is_some_and(|x| !x.shared) {
                    tracing::warn!(
                        "shared image {} has the id of a local image: the local one \
                         (and its names) wins, the shared copy stays hidden",
                        i.id
                    );
                    state.hidden_images.insert(i.id.clone(), i);
                } else {
                    if track {
                        linked_images.push(i.id.clone());
                    }
                    if has_local {
                        named.extend(i.names.iter().cloned());
                    }
                    images.push((i.id.clone(), i));
                }
            }
            insert_batch(&mut state.layers, layers);
            insert_batch(&mut state.images, images);
            for (id, names) in delta.rename_images {
                if let Some(image) = state.images.get_mut(&id).filter(|i| i.shared) {
                    if has_local {
                        named.extend(names.iter().cloned());
                    }
                    image.names = names;
                } else if let Some(image) = state.hidden_images.get_mut(&id) {
                    image.names = names;
                }
            }
            for id in &delta.remove_images {
                if state.images.get(id).is_some_and(|i| i.shared) {
                    state.images.remove(id);
                    unlinked_images.push(id.clone());
                }
                state.hidden_images.remove(id);
            }
            for id in &delta.remove_layers {
                if state.layers.get(id).is_some_and(|l| l.shared) {
                    state.layers.remove(id);
                    unlinked_layers.push(id.clone());
                }
                state.hidden_layers.remove(id);
            }
            if !delta.remove_layers.is_empty() {
                let broken: Vec<String> = state
                    .images
                    .values()
                    .filter(|i| {
                        state
                            .chain_skeleton(i.layer.as_deref().unwrap_or(""))
                            .is_none()
                    })
                    .map(|i| i.id.clone())
                    .collect();
                for id in broken {
                    tracing::warn!("image {id} lost a shared layer; dropping it");
                    if state.images.remove(&id).is_some_and(|i| i.shared) {
                        unlinked_images.push(id);
                    }
                }
            }
            local_claims(&state, named)
        };
        self.warn_collisions(collisions);
        if self.layout.role() == Role::Reader && delta.links_in_step {
            // Links in step with what was applied: later deltas go by delta.
            self.links.lock().repaired = true;
        } else if self.layout.role() == Role::Reader {
            self.keep_links(
                &linked_layers,
                &linked_images,
                &unlinked_layers,
                &unlinked_images,
            );
        }
    }

    /// Warn, once per name in this process, that `names` are claimed by a
    /// local and a shared image.
    pub(super) fn warn_collisions(&self, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let mut warned = self.warned_names.lock();
        for name in names {
            if warned.insert(name.clone()) {
                tracing::warn!(
                    "{name:?} names a local and a shared image: it resolves to the local \
                     one (`storectl ls` marks the shared one's name as shadowed)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{id, image, layer, reader};
    use super::*;

    /// A delta whose links are taken as kept (no link is made): what it
    /// does to the state alone.
    fn delta() -> SharedDelta {
        SharedDelta {
            links_in_step: true,
            ..SharedDelta::default()
        }
    }

    #[test]
    fn shared_entries_join_and_leave_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let store = reader(tmp.path());
        let (base, top, img) = (id("base"), id("top"), id("image"));
        assert!(delta().is_empty());
        let add = SharedDelta {
            add_layers: vec![layer(&base, None, false), layer(&top, Some(&base), false)],
            add_images: vec![image(&img, &top, &["localhost/i:1"], false)],
            ..delta()
        };
        assert!(!add.is_empty());
        store.apply_shared(add);
        store.with_state(|st| {
            assert!(st.layers.values().all(|l| l.shared) && st.layers.len() == 2);
            assert!(
                st.images[&img].shared,
                "marked shared whatever the record says"
            );
        });
        store.apply_shared(SharedDelta {
            rename_images: vec![(img.clone(), vec!["localhost/j:1".into()])],
            ..delta()
        });
        assert_eq!(store.resolve_image("localhost/j:1").unwrap().id, img);
        // A layer goes without its image: the image (its chain broken) goes too.
        store.apply_shared(SharedDelta {
            remove_layers: vec![top.clone()],
            ..delta()
        });
        store.with_state(|st| {
            assert!(st.images.is_empty(), "no image without its layers");
            assert_eq!(st.layers.keys().collect::<Vec<_>>(), vec![&base]);
        });
    }

    /// A shared layer or image with the id of a local one stays hidden
    /// behind it, follows renames and removals there, and never removes
    /// the local one; a name both have is the local image's.
    #[test]
    fn local_entries_win_over_shared_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let store = reader(tmp.path());
        let (l, i, s) = (id("layer"), id("image"), id("shared image"));
        {
            let mut st = store.state.write();
            st.layers.insert(l.clone(), layer(&l, None, false));
            st.images
                .insert(i.clone(), image(&i, &l, &["localhost/x:1"], false));
        }
        store.apply_shared(SharedDelta {
            add_layers: vec![layer(&l, None, true)],
            add_images: vec![
                image(&i, &l, &["localhost/hidden:1"], true),
                image(&s, &l, &["localhost/x:1", "localhost/s:1"], true),
            ],
            ..delta()
        });
        store.with_state(|st| {
            assert!(!st.layers[&l].shared && st.hidden_layers[&l].shared);
            assert!(!st.images[&i].shared && st.hidden_images[&i].shared);
            assert_eq!(st.shadowed_names(), ["localhost/x:1".to_string()].into());
        });
        assert!(store.warned_names.lock().contains("localhost/x:1"));
        assert_eq!(store.resolve_image("localhost/x:1").unwrap().id, i);
        assert_eq!(store.resolve_image("localhost/s:1").unwrap().id, s);
        store.apply_shared(SharedDelta {
            rename_images: vec![(i.clone(), vec!["localhost/renamed:1".into()])],
            ..delta()
        });
        store.with_state(|st| {
            assert_eq!(st.hidden_images[&i].names, vec!["localhost/renamed:1"]);
            assert_eq!(
                st.images[&i].names,
                vec!["localhost/x:1"],
                "the local names"
            );
        });
        store.apply_shared(SharedDelta {
            remove_images: vec![i.clone(), s.clone()],
            remove_layers: vec![l.clone()],
            ..delta()
        });
        store.with_state(|st| {
            assert!(st.hidden_layers.is_empty() && st.hidden_images.is_empty());
            assert!(
                !st.layers[&l].shared && !st.images[&i].shared,
                "local ones stay"
            );
            assert!(!st.images.contains_key(&s));
        });
    }
}
