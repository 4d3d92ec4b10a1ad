//! OCI image layouts: `oci-layout`, `index.json`, `blobs/sha256/…`.

use storectl_overlay::Compression;

use super::blobs::Blobs;
use super::spec::{self, Descriptor, Index, Manifest};
use super::{normalize_names, SourceImage, SourceLayer};
use crate::digest::sha256_digest;
use crate::error::{Error, Result};

/// Read the blob a descriptor names and check its digest.
fn read_verified(blobs: &Blobs, desc: &Descriptor) -> Result<Vec<u8>> {
    let name = Blobs::blob_name(&desc.digest).ok_or_else(|| {
        Error::archive(
            blobs.path(),
            format!("unsupported or malformed digest {:?}", desc.digest),
        )
    })?;
    let bytes = blobs.read_document(&name)?;
    let found = sha256_digest(&bytes);
    if found != desc.digest {
        return Err(Error::DigestMismatch {
            what: name,
            expected: desc.digest.clone(),
            found,
        });
    }
    Ok(bytes)
}

/// Does a `ref.name` annotation (or a wanted tag) designate `want`?
fn ref_matches(desc: &Descriptor, want: &str) -> bool {
    [spec::ANNOTATION_REF_NAME, spec::ANNOTATION_CONTAINERD_NAME]
        .iter()
        .filter_map(|k| desc.annotation(k))
        .any(|name| {
            name == want
                || crate::reference::normalize_name(name).ok()
                    == crate::reference::normalize_name(want)
                        .ok()
                        .filter(|_| want.contains(':') || want.contains('/'))
        })
}

/// The names an index entry gives its image: the containerd name, and
/// `ref.name` when it is a full reference rather than a bare tag.
fn names_of(desc: &Descriptor) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(n) = desc.annotation(spec::ANNOTATION_CONTAINERD_NAME) {
        names.push(n);
    }
    if let Some(n) = desc.annotation(spec::ANNOTATION_REF_NAME) {
        if n.contains(':') || n.contains('/') {
            names.push(n);
        }
    }
    normalize_names(names)
}

/// The `ref.name` tags of several index entries, for an error that asks to pick one.
fn tags_of(many: &[Descriptor]) -> String {
    let tags: Vec<&str> = many
        .iter()
        .filter_map(|d| d.annotation(spec::ANNOTATION_REF_NAME))
        .collect();
    tags.join(", ")
}

pub(super) fn open(blobs: &Blobs, tag: Option<&str>) -> Result<SourceImage> {
    let path = blobs.path();
    let index_bytes = blobs.read_document("index.json")?;
    let index: Index = serde_json::from_slice(&index_bytes)
        .map_err(|e| Error::archive(path, format!("index.json: {e}")))?;
    let chosen = match tag {
        Some(tag) => index
            .manifests
            .iter()
            .find(|d| ref_matches(d, tag))
            .ok_or_else(|| {
                Error::archive(path, format!("no image tagged {tag:?} in the layout"))
            })?,
        None => match index.manifests.as_slice() {
            [] => return Err(Error::archive(path, "index.json lists no images")),
            [one] => one,
            many if many.iter().all(|d| d.platform.is_some()) => {
                let host = spec::Platform::host();
                let first = super::platform::pick_best(many, &host).ok_or_else(|| {
                    Error::archive(path, "no image for this host's platform in the layout")
                })?;
                let same = many.iter().filter(|d| d.platform == first.platform).count();
                if same > 1 {
                    return Err(Error::archive(
                        path,
                        format!(
                            "the layout holds {same} images for {}/{}; pick one with PATH:TAG (tags: {})",
                            host.os,
                            host.architecture,
                            tags_of(many)
                        ),
                    ));
                }
                first
            }
            many => {
                return Err(Error::archive(
                    path,
                    format!(
                        "the layout holds {} images; pick one with PATH:TAG (tags: {})",
                        many.len(),
                        tags_of(many)
                    ),
                ));
            }
        },
    };
    let names = names_of(chosen);
    let (manifest_bytes, manifest_digest) = resolve_manifest(blobs, chosen, 0)?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| Error::archive(path, format!("manifest {manifest_digest}: {e}")))?;
    let config = read_verified(blobs, &manifest.config)?;
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for desc in &manifest.layers {
        let compression = Compression::from_media_type(&desc.media_type)
            .map_err(|e| Error::archive(path, format!("layer {}: {e}", desc.digest)))?;
        let name = Blobs::blob_name(&desc.digest).ok_or_else(|| {
            Error::archive(path, format!("malformed layer digest {:?}", desc.digest))
        })?;
        let blob = blobs.locate(&name)?;
        if blob.len != desc.size {
            return Err(Error::archive(
                path,
                format!(
                    "layer {} is {} bytes, the manifest says {}",
                    desc.digest, blob.len, desc.size
                ),
            ));
        }
        layers.push(SourceLayer {
            digest: Some(desc.digest.clone()),
            compression: Some(compression),
            blob: super::Blob::File(blob),
        });
    }
    Ok(SourceImage {
        manifest: Some(manifest_bytes),
        manifest_digest: Some(manifest_digest),
        config_digest: manifest.config.digest.clone(),
        config,
        layers,
        names,
        spill: None,
    })
}

/// Follow (nested) indexes to this host's image manifest. Returns the
/// manifest's bytes and digest.
fn resolve_manifest(blobs: &Blobs, desc: &Descriptor, depth: u32) -> Result<(Vec<u8>, String)> {
    if depth > 4 {
        return Err(Error::archive(
            blobs.path(),
            "image indexes nested too deeply",
        ));
    }
    let bytes = read_verified(blobs, desc)?;
    let is_index = desc.media_type == spec::OCI_INDEX
        || desc.media_type == spec::DOCKER_LIST
        || serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .is_some_and(|v| v.get("manifests").is_some());
    if !is_index {
        return Ok((bytes, desc.digest.clone()));
    }
    let index: Index = serde_json::from_slice(&bytes)
        .map_err(|e| Error::archive(blobs.path(), format!("index {}: {e}", desc.digest)))?;
    let platform = spec::Platform::host();
    let next = super::platform::pick_best(&index.manifests, &platform).ok_or_else(|| {
        Error::archive(
            blobs.path(),
            format!(
                "index {} has no image for {}/{}",
                desc.digest, platform.os, platform.architecture
            ),
        )
    })?;
    resolve_manifest(blobs, next, depth + 1)
}
