//! Getting images out to a registry: `push`.
//!
//! Every layer tar is rebuilt from the store ([`Store::write_layer_tar`]),
//! gzip-compressed (or not) into a temporary file in the store root, and
//! uploaded unless the registry has the blob (HEAD first; a cross-repository
//! mount is tried from another repository of the same registry). The config
//! is sent unchanged, so a pushed image pulls back with the same id.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek};

use flate2::write::GzEncoder;
use rayon::prelude::*;
use serde_json::json;
use storectl_storage::digest::HashingWriter;
use storectl_storage::fsutil::unique_suffix;
use storectl_storage::import::spec;
use storectl_storage::meta::{Image, Layer, CONFIG};
use storectl_storage::progress::{EventKind, Reporter};
use storectl_storage::Store;

use crate::error::{Error, IoContext, Result};
use crate::registry::{BlobPushed, RegistryClient, Repository, UploadOptions};
use crate::save::{blob_event, op_event};
use crate::{Cancel, CancelReader};

/// How `push` sends layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushCompression {
    /// The layer tars as they are: blob digest = diffID.
    None,
    /// gzip (what registries usually hold).
    Gzip,
}

/// Options for [`push`].
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub compression: PushCompression,
    /// Layers prepared and uploaded at once.
    pub jobs: usize,
    /// Set from another thread to stop the push (see [`Cancel`]).
    pub cancel: Cancel,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            compression: PushCompression::Gzip,
            jobs: 3,
            cancel: Cancel::default(),
        }
    }
}

/// Push `image` to `reference` (`registry/repo[:tag]`). Blobs the registry
/// has are not sent (HEAD first; a cross-repository mount is tried from
/// another repository of the same registry the image is named after).
/// Returns the pushed manifest's digest.
pub fn push(
    store: &Store,
    image: &Image,
    reference: &str,
    client: &RegistryClient,
    opts: &PushOptions,
    reporter: &dyn Reporter,
) -> Result<String> {
    let r = storectl_storage::reference::parse(reference)?;
    let name = r.to_string();
    reporter.report(&op_event(EventKind::Resolving, &name));
    let repo = Repository::from_reference(&r);
    let mount_from = image.names.iter().find_map(|n| {
        let other = storectl_storage::reference::parse(n).ok()?;
        (other.domain == r.domain && other.path != r.path).then_some(other.path)
    });
    let layers = store.image_layers(image)?;
    for layer in &layers {
        reporter.report(&blob_event(EventKind::Waiting, layer, &name, 0));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs.clamp(1, 16))
        .build()
        .map_err(|e| Error::io(store.root(), std::io::Error::other(e)))?;
    let pushed: Vec<Result<serde_json::Value>> = pool.install(|| {
        layers
            .par_iter()
            .map(|layer| {
                push_layer(
                    store,
                    layer,
                    &repo,
                    client,
                    opts,
                    &mount_from,
                    &name,
                    reporter,
                )
            })
            .collect()
    });
    opts.cancel.check()?;
    let mut descs = Vec::with_capacity(pushed.len());
    for d in pushed {
        descs.push(d?);
    }
    let config = store.image_big_data(image, CONFIG)?;
    let config_digest = format!("sha256:{}", image.id);
    if client.head_blob(&repo, &config_digest)?.is_none() {
        client.push_blob(
            &repo,
            &config_digest,
            config.len() as u64,
            &mut &config[..],
            &UploadOptions::default(),
        )?;
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": spec::OCI_MANIFEST,
        "config": {"mediaType": spec::OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": descs,
    }))
    .expect("a manifest serializes");
    let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
    let reference = r.digest.clone().unwrap_or(tag);
    let digest = client.put_manifest(&repo, &reference, &manifest, spec::OCI_MANIFEST)?;
    reporter.report(&op_event(EventKind::Done, &digest));
    Ok(digest)
}

/// Prepare one layer blob in a temp file, and upload it unless the
/// registry has it. Returns its manifest descriptor.
#[allow(clippy::too_many_arguments)]
fn push_layer(
    store: &Store,
    layer: &Layer,
    repo: &Repository,
    client: &RegistryClient,
    opts: &PushOptions,
    mount_from: &Option<String>,
    parent: &str,
    reporter: &dyn Reporter,
) -> Result<serde_json::Value> {
    let (media_type, known) = match opts.compression {
        PushCompression::None => (
            spec::OCI_LAYER_TAR,
            layer.diff_digest.clone().zip(layer.diff_size),
        ),
        PushCompression::Gzip => ("application/vnd.oci.image.layer.v1.tar+gzip", None),
    };
    // Uncompressed: the digest is known, so ask before rebuilding anything.
    if let Some((digest, size)) = &known {
        if client.head_blob(repo, digest)?.is_some() {
            reporter.report(&blob_event(EventKind::AlreadyExists, layer, parent, *size));
            return Ok(json!({"mediaType": media_type, "digest": digest, "size": size}));
        }
    }
    let tmp_path = store.root().join(format!(".tmp-push-{}", unique_suffix()));
    let result = (|| {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .at(&tmp_path)?;
        let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        match opts.compression {
            PushCompression::None => {
                store.write_layer_tar(layer, &mut w)?;
            }
            PushCompression::Gzip => {
                let mut gz = GzEncoder::new(&mut w, flate2::Compression::fast());
                store.write_layer_tar(layer, &mut gz)?;
                gz.finish().at(&tmp_path)?;
            }
        }
        let (digest, size) = (w.digest(), w.count());
        let mut file = w
            .inner
            .into_inner()
            .map_err(|e| Error::io(&tmp_path, e.into_error()))?;
        if known.is_none() && client.head_blob(repo, &digest)?.is_some() {
            let mut e = blob_event(EventKind::AlreadyExists, layer, parent, size);
            (e.total, e.progress) = (size, size);
            e.compressed = Some(opts.compression == PushCompression::Gzip);
            reporter.report(&e);
            return Ok(json!({"mediaType": media_type, "digest": digest, "size": size}));
        }
        file.rewind().at(&tmp_path)?;
        let compressed = opts.compression == PushCompression::Gzip;
        let mut event = blob_event(EventKind::Uploading, layer, parent, 0);
        event.total = size;
        event.compressed = Some(compressed);
        opts.cancel.check()?;
        let mut reader = storectl_storage::progress::ProgressReader::new(
            CancelReader {
                inner: std::io::BufReader::with_capacity(1 << 20, file),
                cancel: opts.cancel.clone(),
            },
            reporter,
            event,
            storectl_storage::progress::DEFAULT_INTERVAL,
        );
        let upload = UploadOptions {
            mount_from: mount_from.clone(),
            chunk_size: None,
        };
        let how = client.push_blob(repo, &digest, size, &mut reader as &mut dyn Read, &upload)?;
        let mut done = blob_event(EventKind::Complete, layer, parent, size);
        done.total = size;
        done.progress = size;
        done.compressed = Some(compressed);
        if how == BlobPushed::Mounted {
            done.event = EventKind::AlreadyExists;
        }
        reporter.report(&done);
        Ok(json!({"mediaType": media_type, "digest": digest, "size": size}))
    })();
    let _ = fs::remove_file(&tmp_path);
    result
}
