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
                    .filter(|i| state.chain(i.layer.as_deref().unwrap_or("")).is_none())
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
