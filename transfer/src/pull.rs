//! Pulling an image from an OCI distribution registry into the store.
//!
//! The manifest (picked for the wanted platform from an index) and the config
//! are fetched and verified first; the layers then go through the same import
//! path as `load`: streamed download → digest → decompress → apply, several at
//! once, into staging dirs, published in order only when all succeeded. A
//! layer whose chain id the store already has (locally, or on a share a reader
//! sees) is not downloaded and reports `already exists`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use storectl_overlay::Compression;
use storectl_storage::digest::sha256_digest;
use storectl_storage::import::{spec, Blob, BoxError, RemoteBlob, SourceImage, SourceLayer};
use storectl_storage::progress::{EventKind, ProgressEvent, Reporter};
use storectl_storage::{Image, LoadOptions, Store};

use crate::error::{Error, IoContext, Result};
use crate::registry::{Platform, RegistryClient, Repository};
use crate::{Cancel, CancelReader};

/// Image configs larger than this are refused.
const MAX_CONFIG: u64 = 32 << 20;

/// Options for [`pull`].
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// The platform to pick from an index (default: this host's).
    pub platform: Option<Platform>,
    /// Layers at once, size limit, progress interval.
    pub load: LoadOptions,
    /// Set from another thread to stop the pull (see [`Cancel`]).
    pub cancel: Cancel,
}

/// A layer blob in a registry, opened when the store's import reads it
/// (streamed, resumed with `Range`, verified at EOF: [`crate::registry::BlobReader`]).
#[derive(Debug)]
struct RegistryBlob {
    client: RegistryClient,
    repo: Repository,
    digest: String,
    cancel: Cancel,
}

impl RemoteBlob for RegistryBlob {
    fn open(&self) -> std::result::Result<Box<dyn Read + Send>, BoxError> {
        if self.cancel.is_cancelled() {
            return Err(Box::new(Error::Cancelled));
        }
        Ok(Box::new(CancelReader {
            inner: self.client.get_blob(&self.repo, &self.digest, 0)?,
            cancel: self.cancel.clone(),
        }))
    }

    fn describe(&self) -> String {
        format!("{}@{}", self.repo, self.digest)
    }
}

/// Pull `reference` (`[registry/]repo[:tag][@digest]`) with `client` into `store`.
pub fn pull(
    store: &Store,
    reference: &str,
    client: &RegistryClient,
    opts: &PullOptions,
    reporter: &dyn Reporter,
) -> Result<Image> {
    let r = storectl_storage::reference::parse(reference)?;
    let name = r.to_string();
    let op = |event| ProgressEvent {
        event,
        name: name.clone(),
        parents: vec![],
        progress: 0,
        total: 0,
        layer: None,
        compressed: None,
    };
    reporter.report(&op(EventKind::Resolving));
    let repo = Repository::from_reference(&r);
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    let (index, manifest) =
        client.get_platform_manifest(&repo, r.registry_reference(), &platform)?;
    let where_ = || PathBuf::from(format!("{repo}@{}", manifest.digest));
    let parsed: spec::Manifest =
        serde_json::from_slice(&manifest.bytes).map_err(|e| Error::InvalidArchive {
            path: where_(),
            reason: format!("manifest: {e}"),
        })?;
    opts.cancel.check()?;
    let mut config = Vec::new();
    client
        .get_blob(&repo, &parsed.config.digest, 0)?
        .take(MAX_CONFIG + 1)
        .read_to_end(&mut config)
        .at(where_())?;
    let found = sha256_digest(&config);
    if found != parsed.config.digest {
        return Err(Error::DigestMismatch {
            what: format!("config of {name}"),
            expected: parsed.config.digest.clone(),
            found,
        });
    }
    // A single-platform image asked for by another platform: say so.
    if let (None, Some(want)) = (&index, &opts.platform) {
        if let Ok(cfg) = spec::parse_config(&config) {
            let have = Platform::new(
                cfg.os.as_deref().unwrap_or(""),
                cfg.architecture.as_deref().unwrap_or(""),
                None,
            );
            if have.os != want.os || have.architecture != want.architecture {
                return Err(Error::PlatformMismatch {
                    image: name.clone(),
                    have: format!("{}/{}", have.os, have.architecture),
                    want: format!("{}/{}", want.os, want.architecture),
                });
            }
        }
    }
    let mut layers = Vec::with_capacity(parsed.layers.len());
    for d in &parsed.layers {
        let compression =
            Compression::from_media_type(&d.media_type).map_err(|e| Error::InvalidArchive {
                path: where_(),
                reason: format!("layer {}: {e}", d.digest),
            })?;
        layers.push(SourceLayer {
            digest: Some(d.digest.clone()),
            compression: Some(compression),
            blob: Blob::Remote {
                source: Arc::new(RegistryBlob {
                    client: client.clone(),
                    repo: repo.clone(),
                    digest: d.digest.clone(),
                    cancel: opts.cancel.clone(),
                }),
                size: d.size,
            },
        });
    }
    let src = SourceImage {
        manifest: Some(manifest.bytes.clone()),
        manifest_digest: Some(manifest.digest.clone()),
        config_digest: parsed.config.digest.clone(),
        config,
        layers,
        names: if r.tag.is_some() || r.digest.is_none() {
            vec![name.clone()]
        } else {
            Vec::new()
        },
        spill: None,
    };
    opts.cancel.check()?;
    let image = match store.import(src, &opts.load, reporter) {
        Err(_) if opts.cancel.is_cancelled() => return Err(Error::Cancelled),
        r => r?,
    };
    reporter.report(&ProgressEvent {
        name: image.id.clone(),
        ..op(EventKind::Done)
    });
    Ok(image)
}
