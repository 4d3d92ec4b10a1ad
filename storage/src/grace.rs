//! The grace period of shared layers a writer removed — pure functions over
//! `<share>/storectl-removed.json` and the share's settings.
//!
//! A writer's `rmi` of a shared image removes the image at once (every
//! listing drops it), but the layers no remaining image needs stay on the
//! share for the share's grace period (`removed_layers_grace_secs` in
//! `storectl-share.json`, default [`DEFAULT_GRACE_SECS`]), so a reader's
//! running container or mount on them keeps working. The writer lists them
//! here, with the time they may go; `storectl gc` (and each later `rmi`)
//! deletes those past it. Readers read the file (never write it) to tell
//! users of a removed image when its layers go.
//!
//! ```json
//! {"images": {"<image id>": {"removed": "…Z", "delete-after": "…Z",
//!                             "delete-after-secs": N, "layers": ["<id>", …]}},
//!  "layers": {"<layer id>": {"removed": "…Z", "removed-secs": N,
//!                            "delete-after": "…Z", "delete-after-secs": N}}}
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::is_hex64;

/// The file on the share.
pub const REMOVED_FILE: &str = "storectl-removed.json";
/// The grace period of a share whose settings do not say.
pub const DEFAULT_GRACE_SECS: u64 = 3600;
/// The most entries the file may list (it is read from the share).
const MAX_ENTRIES: usize = 100_000;

/// A removed layer waiting for its grace period to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLayer {
    /// RFC 3339 time of the removal.
    pub removed: String,
    /// `removed` as seconds since the epoch.
    #[serde(rename = "removed-secs")]
    pub removed_secs: i64,
    /// RFC 3339 time from which it may be deleted.
    #[serde(rename = "delete-after")]
    pub delete_after: String,
    /// `delete-after` as seconds since the epoch.
    #[serde(rename = "delete-after-secs")]
    pub delete_after_secs: i64,
}

/// A removed image and the layers that went pending with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedImage {
    pub removed: String,
    #[serde(rename = "delete-after")]
    pub delete_after: String,
    #[serde(rename = "delete-after-secs")]
    pub delete_after_secs: i64,
    /// Its layers that wait (those other images did not need).
    #[serde(default)]
    pub layers: Vec<String>,
}

/// The content of [`REMOVED_FILE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removals {
    #[serde(default)]
    pub images: BTreeMap<String, RemovedImage>,
    #[serde(default)]
    pub layers: BTreeMap<String, PendingLayer>,
}

impl Removals {
    /// Record that image `image` was removed at `now` (seconds since the
    /// epoch) and its `layers` wait `grace` seconds. A layer already
    /// waiting keeps its later time.
    pub fn add(&mut self, image: &str, layers: &[String], now: i64, grace: u64) {
        let until = now.saturating_add(i64::try_from(grace).unwrap_or(i64::MAX));
        let (removed, delete_after) = (rfc3339(now), rfc3339(until));
        for id in layers {
            let entry = self.layers.entry(id.clone()).or_insert(PendingLayer {
                removed: removed.clone(),
                removed_secs: now,
                delete_after: delete_after.clone(),
                delete_after_secs: until,
            });
            if entry.delete_after_secs < until {
                entry.delete_after = delete_after.clone();
                entry.delete_after_secs = until;
            }
        }
        self.images.insert(
            image.to_string(),
            RemovedImage {
                removed,
                delete_after,
                delete_after_secs: until,
                layers: layers.to_vec(),
            },
        );
    }

    /// Layers whose grace period is over at `now`.
    pub fn expired(&self, now: i64) -> Vec<String> {
        self.layers
            .iter()
            .filter(|(_, p)| p.delete_after_secs <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Is layer `id` waiting (listed, grace not over at `now`)?
    pub fn protects(&self, id: &str, now: i64) -> bool {
        self.layers
            .get(id)
            .is_some_and(|p| p.delete_after_secs > now)
    }

    /// Forget layers `gone` (deleted, or needed by an image again), and
    /// images none of whose layers wait any more.
    pub fn forget(&mut self, gone: &[String]) {
        for id in gone {
            self.layers.remove(id);
        }
        let layers = &self.layers;
        self.images
            .retain(|_, i| i.layers.iter().any(|l| layers.contains_key(l)));
    }
}

/// Parse [`REMOVED_FILE`] (text from the share: ids must be 64 hex, the
/// entry count is bounded). Pure.
pub fn parse(bytes: &[u8]) -> Result<Removals, String> {
    let r: Removals = serde_json::from_slice(bytes).map_err(|e| format!("{REMOVED_FILE}: {e}"))?;
    if r.layers.len() + r.images.len() > MAX_ENTRIES {
        return Err(format!("{REMOVED_FILE}: more than {MAX_ENTRIES} entries"));
    }
    let bad = r
        .layers
        .keys()
        .chain(r.images.keys())
        .chain(r.images.values().flat_map(|i| i.layers.iter()))
        .find(|id| !is_hex64(id));
    if let Some(id) = bad {
        return Err(format!("{REMOVED_FILE}: {id:?} is not an id"));
    }
    Ok(r)
}

/// The bytes of [`REMOVED_FILE`].
pub fn render(r: &Removals) -> Vec<u8> {
    serde_json::to_vec_pretty(r).expect("removals serialize")
}

/// `removed_layers_grace_secs` of the share's `storectl-share.json` text
/// (absent or unreadable = [`DEFAULT_GRACE_SECS`]). Pure.
pub fn grace_secs(share_json: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Settings {
        removed_layers_grace_secs: Option<u64>,
    }
    serde_json::from_slice::<Settings>(share_json)
        .ok()
        .and_then(|s| s.removed_layers_grace_secs)
        .unwrap_or(DEFAULT_GRACE_SECS)
}

fn rfc3339(secs: i64) -> String {
    crate::fsutil::rfc3339(secs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> String {
        c.to_string().repeat(64)
    }

    #[test]
    fn layers_wait_their_grace_and_go() {
        let mut r = Removals::default();
        r.add(&id('i'), &[id('a'), id('b')], 1000, 3600);
        assert!(r.protects(&id('a'), 4599));
        assert!(!r.protects(&id('a'), 4600));
        assert!(!r.protects(&id('c'), 0));
        assert_eq!(r.expired(4599), Vec::<String>::new());
        assert_eq!(r.expired(4600), [id('a'), id('b')]);
        // A later removal of another image keeps the later time.
        r.add(&id('j'), &[id('b')], 2000, 3600);
        assert_eq!(r.expired(4600), [id('a')]);
        r.forget(&[id('a')]);
        assert!(r.images.contains_key(&id('i')), "b still waits");
        r.forget(&[id('b')]);
        assert!(r.images.is_empty() && r.layers.is_empty());
        assert_eq!(r.images.len(), 0);
    }

    #[test]
    fn the_file_round_trips_and_junk_is_refused() {
        let mut r = Removals::default();
        r.add(&id('e'), &[id('a')], 0, 60);
        assert_eq!(parse(&render(&r)).unwrap(), r);
        assert_eq!(r.layers[&id('a')].delete_after, "1970-01-01T00:01:00Z");
        assert!(parse(b"{").is_err());
        assert!(parse(br#"{"layers":{"../x":{"removed":"","removed-secs":0,"delete-after":"","delete-after-secs":0}}}"#).is_err());
        assert_eq!(parse(b"{}").unwrap(), Removals::default());
    }

    #[test]
    fn the_grace_comes_from_the_share_settings() {
        assert_eq!(
            grace_secs(br#"{"overlay_xattrs":"user"}"#),
            DEFAULT_GRACE_SECS
        );
        assert_eq!(grace_secs(br#"{"removed_layers_grace_secs":5}"#), 5);
        assert_eq!(grace_secs(b"junk"), DEFAULT_GRACE_SECS);
    }
}
