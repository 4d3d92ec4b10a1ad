//! Getting images out: `save` to an OCI layout or a docker-archive, and `push`
//! to a registry.
//!
//! The original compressed blobs are not kept, so every layer tar is rebuilt
//! from the layer's `diff/` and its tar-split metadata — byte for byte the tar
//! that was imported, checked against its diffID while it is written. The
//! config is written unchanged, so the image id (and every diffID) survives a
//! save and re-import, or a push and pull; manifests are new (their layer
//! digests describe the blobs as written: uncompressed tars, or gzip on push).

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use rayon::prelude::*;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{sync_dir, unique_suffix};
use crate::import::spec;
use crate::meta::{Image, Layer, CONFIG};
use crate::progress::{EventKind, ProgressEvent, Reporter};
use crate::registry::{BlobPushed, RegistryClient, Repository, UploadOptions};
use crate::Store;

/// What `save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    /// An OCI image layout directory (uncompressed layers).
    Oci,
    /// A `docker save` style tarball.
    DockerArchive,
}

/// How `push` sends layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushCompression {
    /// The layer tars as they are: blob digest = diffID.
    None,
    /// gzip (what registries usually hold).
    Gzip,
}

/// Options for [`Store::push`].
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub compression: PushCompression,
    /// Layers prepared and uploaded at once.
    pub jobs: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            compression: PushCompression::Gzip,
            jobs: 3,
        }
    }
}

/// Writes through to `inner`, hashing and counting.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

fn op_event(event: EventKind, name: &str) -> ProgressEvent {
    ProgressEvent {
        event,
        name: name.to_string(),
        parents: vec![],
        progress: 0,
        total: 0,
    }
}

fn blob_event(event: EventKind, layer: &Layer, parent: &str, progress: u64) -> ProgressEvent {
    let total = layer.diff_size.unwrap_or(0);
    ProgressEvent {
        event,
        name: layer
            .diff_digest
            .clone()
            .unwrap_or_else(|| layer.id.clone()),
        parents: vec![parent.to_string()],
        progress: progress.min(total),
        total,
    }
}

/// `docker.io/library/busybox:1` → `1`; a name without a tag → `latest`.
fn tag_of(name: &str) -> &str {
    let name = name.split('@').next().unwrap_or(name);
    match name.rsplit_once(':') {
        Some((_, tag)) if !tag.contains('/') => tag,
        _ => "latest",
    }
}

impl Store {
    /// Rebuild layer `layer`'s tar into `out` from its diff and tar-split, and
    /// check it hashes to the layer's diffID. Returns the bytes written. On a
    /// mismatch the caller must discard what was written.
    pub fn write_layer_tar(&self, layer: &Layer, out: &mut dyn Write) -> Result<u64> {
        let split_path = self
            .layer_record_dir(layer)
            .join(format!("{}.tar-split.gz", layer.id));
        let file = File::open(&split_path).at(&split_path)?;
        let mut split = GzDecoder::new(std::io::BufReader::new(file));
        let mut w = HashingWriter::new(out);
        storectl_overlay::tarsplit::reassemble(
            &self.overlay_dir(layer).join("diff"),
            &mut split,
            &mut w,
        )
        .map_err(|source| Error::Layer {
            layer: layer.id.clone(),
            source,
        })?;
        let found = w.digest();
        let expected = layer.diff_digest.clone().unwrap_or_default();
        if found != expected {
            return Err(Error::DigestMismatch {
                what: format!(
                    "layer {} rebuilt from disk (run `storectl verify`)",
                    layer.id
                ),
                expected,
                found,
            });
        }
        Ok(w.count)
    }

    /// Save `image` to `dest` (which must not exist, or be an empty directory).
    /// Written beside `dest` first and renamed into place when complete.
    pub fn save(
        &self,
        image: &Image,
        dest: &Path,
        format: SaveFormat,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        match fs::symlink_metadata(dest) {
            Err(_) => {}
            Ok(m) if m.is_dir() && fs::read_dir(dest).at(dest)?.next().is_none() => {
                fs::remove_dir(dest).at(dest)?;
            }
            Ok(_) => {
                return Err(Error::io(
                    dest,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "already exists; choose a new path",
                    ),
                ))
            }
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let tmp = parent.join(format!(".{name}.tmp-{}", unique_suffix()));
        let result = match format {
            SaveFormat::Oci => self.save_oci(image, &tmp, reporter),
            SaveFormat::DockerArchive => self.save_docker_archive(image, &tmp, reporter),
        };
        let result = result.and_then(|()| {
            fs::rename(&tmp, dest).at(dest)?;
            sync_dir(&parent)
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp).or_else(|_| fs::remove_file(&tmp));
        }
        result?;
        reporter.report(&op_event(EventKind::Saved, &dest.to_string_lossy()));
        Ok(())
    }

    fn save_oci(&self, image: &Image, dir: &Path, reporter: &dyn Reporter) -> Result<()> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).at(&blobs)?;
        let layers = self.image_layers(image)?;
        let mut descs = Vec::new();
        for layer in &layers {
            reporter.report(&blob_event(EventKind::Waiting, layer, &image.id, 0));
        }
        for layer in &layers {
            let tmp = blobs.join(format!(".tmp-{}", unique_suffix()));
            let mut f = BufWriter::with_capacity(1 << 20, File::create(&tmp).at(&tmp)?);
            let size = self.write_layer_tar(layer, &mut f)?;
            let f = f
                .into_inner()
                .map_err(|e| Error::io(&tmp, e.into_error()))?;
            f.sync_all().at(&tmp)?;
            let digest = layer.diff_digest.clone().unwrap_or_default();
            let hex = digest.trim_start_matches("sha256:");
            fs::rename(&tmp, blobs.join(hex)).at(blobs.join(hex))?;
            descs.push(json!({"mediaType": spec::OCI_LAYER_TAR, "digest": digest, "size": size}));
            reporter.report(&blob_event(EventKind::Complete, layer, &image.id, size));
        }
        let config = self.image_big_data(image, CONFIG)?;
        let config_path = blobs.join(&image.id);
        crate::fsutil::write_synced(&config_path, &config)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": spec::OCI_MANIFEST,
            "config": {"mediaType": spec::OCI_CONFIG, "digest": format!("sha256:{}", image.id), "size": config.len()},
            "layers": descs,
        }))
        .expect("a manifest serializes");
        let manifest_digest = crate::digest::sha256_digest(&manifest);
        let mpath = blobs.join(manifest_digest.trim_start_matches("sha256:"));
        crate::fsutil::write_synced(&mpath, &manifest)?;
        let mut annotations = serde_json::Map::new();
        if let Some(n) = image.names.first() {
            annotations.insert(spec::ANNOTATION_REF_NAME.into(), json!(tag_of(n)));
            annotations.insert(spec::ANNOTATION_CONTAINERD_NAME.into(), json!(n));
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": spec::OCI_INDEX,
            "manifests": [{
                "mediaType": spec::OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": annotations,
            }],
        });
        crate::fsutil::write_synced(
            &dir.join("index.json"),
            &serde_json::to_vec(&index).expect("an index serializes"),
        )?;
        crate::fsutil::write_synced(
            &dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        sync_dir(&blobs)?;
        sync_dir(dir)
    }

    fn save_docker_archive(
        &self,
        image: &Image,
        path: &Path,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let file = File::create(path).at(path)?;
        let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
        let layers = self.image_layers(image)?;
        let mut layer_names = Vec::new();
        for layer in &layers {
            reporter.report(&blob_event(EventKind::Waiting, layer, &image.id, 0));
        }
        for layer in &layers {
            let hex = layer
                .diff_digest
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches("sha256:")
                .to_string();
            let member = format!("{hex}/layer.tar");
            let size = layer.diff_size.unwrap_or(0);
            let mut header = tar::Header::new_gnu();
            header.set_path(&member).at(path)?;
            header.set_size(size);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            let out = tar.get_mut();
            out.write_all(header.as_bytes()).at(path)?;
            let written = self.write_layer_tar(layer, out)?;
            if written != size {
                return Err(Error::DigestMismatch {
                    what: format!("size of layer {}", layer.id),
                    expected: size.to_string(),
                    found: written.to_string(),
                });
            }
            let pad = (512 - size % 512) % 512;
            out.write_all(&vec![0u8; pad as usize]).at(path)?;
            layer_names.push(member);
            reporter.report(&blob_event(EventKind::Complete, layer, &image.id, size));
        }
        let config = self.image_big_data(image, CONFIG)?;
        let config_name = format!("{}.json", image.id);
        let mut header = tar::Header::new_gnu();
        header.set_size(config.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, &config_name, &config[..])
            .at(path)?;
        let tags: Vec<&String> = image.names.iter().filter(|n| !n.contains('@')).collect();
        let manifest = serde_json::to_vec(&json!([{
            "Config": config_name,
            "RepoTags": tags,
            "Layers": layer_names,
        }]))
        .expect("manifest.json serializes");
        let mut header = tar::Header::new_gnu();
        header.set_size(manifest.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, "manifest.json", &manifest[..])
            .at(path)?;
        let out = tar.into_inner().at(path)?;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().at(path)
    }

    /// Push `image` to `reference` (`registry/repo[:tag]`). Blobs the registry
    /// has are not sent (HEAD first; a cross-repository mount is tried from
    /// another repository of the same registry the image is named after).
    /// Returns the pushed manifest's digest.
    pub fn push(
        &self,
        image: &Image,
        reference: &str,
        client: &RegistryClient,
        opts: &PushOptions,
        reporter: &dyn Reporter,
    ) -> Result<String> {
        let r = crate::reference::parse(reference)?;
        let name = r.to_string();
        reporter.report(&op_event(EventKind::Resolving, &name));
        let repo = Repository::from_reference(&r);
        let mount_from = image.names.iter().find_map(|n| {
            let other = crate::reference::parse(n).ok()?;
            (other.domain == r.domain && other.path != r.path).then_some(other.path)
        });
        let layers = self.image_layers(image)?;
        for layer in &layers {
            reporter.report(&blob_event(EventKind::Waiting, layer, &name, 0));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.jobs.clamp(1, 16))
            .build()
            .map_err(|e| Error::io(self.root(), std::io::Error::other(e)))?;
        let pushed: Vec<Result<serde_json::Value>> = pool.install(|| {
            layers
                .par_iter()
                .map(|layer| {
                    self.push_layer(layer, &repo, client, opts, &mount_from, &name, reporter)
                })
                .collect()
        });
        let mut descs = Vec::with_capacity(pushed.len());
        for d in pushed {
            descs.push(d?);
        }
        let config = self.image_big_data(image, CONFIG)?;
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
        &self,
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
        let tmp_path = self.root().join(format!(".tmp-push-{}", unique_suffix()));
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
                    self.write_layer_tar(layer, &mut w)?;
                }
                PushCompression::Gzip => {
                    let mut gz = GzEncoder::new(&mut w, flate2::Compression::fast());
                    self.write_layer_tar(layer, &mut gz)?;
                    gz.finish().at(&tmp_path)?;
                }
            }
            let (digest, size) = (w.digest(), w.count);
            let mut file = w
                .inner
                .into_inner()
                .map_err(|e| Error::io(&tmp_path, e.into_error()))?;
            if known.is_none() && client.head_blob(repo, &digest)?.is_some() {
                reporter.report(&blob_event(EventKind::AlreadyExists, layer, parent, size));
                return Ok(json!({"mediaType": media_type, "digest": digest, "size": size}));
            }
            file.rewind().at(&tmp_path)?;
            let mut event = blob_event(EventKind::Uploading, layer, parent, 0);
            event.total = size;
            let mut reader = crate::progress::ProgressReader::new(
                std::io::BufReader::with_capacity(1 << 20, file),
                reporter,
                event,
                crate::progress::DEFAULT_INTERVAL,
            );
            let upload = UploadOptions {
                mount_from: mount_from.clone(),
                chunk_size: None,
            };
            let how =
                client.push_blob(repo, &digest, size, &mut reader as &mut dyn Read, &upload)?;
            let mut done = blob_event(EventKind::Complete, layer, parent, size);
            done.total = size;
            done.progress = size;
            if how == BlobPushed::Mounted {
                done.event = EventKind::AlreadyExists;
            }
            reporter.report(&done);
            Ok(json!({"mediaType": media_type, "digest": digest, "size": size}))
        })();
        let _ = fs::remove_file(&tmp_path);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::tag_of;

    #[test]
    fn tags_of_names() {
        assert_eq!(tag_of("docker.io/library/busybox:1.36"), "1.36");
        assert_eq!(tag_of("localhost:5000/a"), "latest");
        assert_eq!(tag_of("localhost:5000/a:v2"), "v2");
        assert_eq!(tag_of("a/b@sha256:abc"), "latest");
    }
}
