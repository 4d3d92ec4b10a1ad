//! docker-archive tarballs (`docker save`, `skopeo copy … docker-archive:`):
//! `manifest.json` = `[{"Config": …, "RepoTags": […], "Layers": […]}]`.

use serde::Deserialize;

use super::blobs::Blobs;
use super::{normalize_names, SourceImage, SourceLayer};
use crate::digest::sha256_digest;
use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The image of the archive named `want` (`PATH:TAG`; a `RepoTags` entry as
/// written or normalized), or its only image.
pub(super) fn open(blobs: &Blobs, want: Option<&str>) -> Result<SourceImage> {
    let path = blobs.path();
    let entries: Vec<Entry> = serde_json::from_slice(&blobs.read_document("manifest.json")?)
        .map_err(|e| Error::archive(path, format!("manifest.json: {e}")))?;
    let tags = |e: &Entry| normalize_names(e.repo_tags.iter().flatten().map(String::as_str));
    let entry = match (want, entries.as_slice()) {
        (_, []) => return Err(Error::archive(path, "manifest.json lists no images")),
        (Some(want), many) => {
            let want_norm = crate::reference::normalize_name(want).ok();
            many.iter()
                .find(|e| {
                    e.repo_tags.iter().flatten().any(|t| t == want)
                        || want_norm.as_ref().is_some_and(|w| tags(e).contains(w))
                })
                .ok_or_else(|| {
                    let all: Vec<String> = many.iter().flat_map(tags).collect();
                    Error::archive(
                        path,
                        format!(
                            "no image named {want:?} in the archive (names: {})",
                            all.join(", ")
                        ),
                    )
                })?
        }
        (None, [one]) => one,
        (None, many) => {
            let all: Vec<String> = many.iter().flat_map(tags).collect();
            return Err(Error::archive(
                path,
                format!(
                    "the archive holds {} images; pick one with PATH:NAME (names: {})",
                    many.len(),
                    all.join(", ")
                ),
            ));
        }
    };
    let config = blobs.read_document(&entry.config)?;
    let config_digest = sha256_digest(&config);
    // Configs are stored by digest (`<hex>.json` or `blobs/sha256/<hex>`): check it.
    let stem = entry
        .config
        .rsplit('/')
        .next()
        .unwrap_or("")
        .trim_end_matches(".json");
    if crate::digest::is_hex64(stem) && !config_digest.ends_with(stem) {
        return Err(Error::DigestMismatch {
            what: entry.config.clone(),
            expected: format!("sha256:{stem}"),
            found: config_digest,
        });
    }
    let mut layers = Vec::with_capacity(entry.layers.len());
    for name in &entry.layers {
        // Newer archives store layers by digest: `blobs/sha256/<hex>`.
        let digest = name
            .strip_prefix("blobs/sha256/")
            .filter(|h| crate::digest::is_hex64(h))
            .map(|h| format!("sha256:{h}"));
        layers.push(SourceLayer {
            digest,
            compression: None,
            blob: super::Blob::File(blobs.locate(name)?),
        });
    }
    Ok(SourceImage {
        manifest: None,
        manifest_digest: None,
        config,
        config_digest,
        layers,
        names: tags(entry),
        spill: None,
    })
}
