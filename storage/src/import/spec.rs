//! The parts of the OCI image spec (and Docker schema 2) that import and the
//! registry client need — the one set of media types, descriptors and
//! platforms of the project — parsed leniently: unknown fields are ignored,
//! missing optional ones default.
//! (oci-spec's types reject some real-world Docker configs, e.g. `null` lists.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

pub use super::platform::Platform;

/// Whether `media_type` is an index (OCI image index or Docker manifest list).
pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Whether `media_type` is any manifest or index type.
pub fn is_manifest_media_type(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_INDEX | OCI_MANIFEST | DOCKER_LIST | DOCKER_MANIFEST
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// An OCI image index or Docker manifest list.
#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An OCI image manifest or Docker schema 2 manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The fields of an image config that the store reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    pub rootfs: RootFs,
}

/// Parse an image config and check its diff ids are sha256 digests (pure).
pub fn parse_config(bytes: &[u8]) -> Result<Config, String> {
    let config: Config = serde_json::from_slice(bytes).map_err(|e| format!("image config: {e}"))?;
    if config.rootfs.kind != "layers" {
        return Err(format!(
            "image config: rootfs type {:?}, expected \"layers\"",
            config.rootfs.kind
        ));
    }
    for d in &config.rootfs.diff_ids {
        if crate::digest::sha256_hex(d).is_none() {
            return Err(format!("image config: bad diff id {d:?}"));
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parsing_checks_diff_ids() {
        let good = format!(
            r#"{{"rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}},"config":{{"Env":null}}}}"#,
            "a".repeat(64)
        );
        assert_eq!(
            parse_config(good.as_bytes()).unwrap().rootfs.diff_ids.len(),
            1
        );
        assert!(parse_config(br#"{"rootfs":{"type":"layers","diff_ids":["md5:x"]}}"#).is_err());
        assert!(parse_config(br#"{"rootfs":{"type":"other","diff_ids":[]}}"#).is_err());
        assert!(parse_config(b"not json").is_err());
    }
}
