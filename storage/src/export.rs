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
    /// An OCI image layout in a tarball (`oci-archive`).
    OciArchive,
    /// A `docker save` style tarball (what `podman save` writes by default).
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
        layer: None,
        compressed: None,
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
        layer: Some(layer.id.clone()),
        compressed: Some(false),
    }
}

/// Where `save` puts the parts of an OCI layout: files of a directory, or
/// members of a tarball.
enum LayoutSink<'a, W: Write> {
    Dir(&'a Path),
    Tar {
        tar: &'a mut tar::Builder<W>,
        path: &'a Path,
    },
}

impl<W: Write> LayoutSink<'_, W> {
    /// Add the document `name` (a path inside the layout).
    fn put(&mut self, name: &str, data: &[u8]) -> Result<()> {
        match self {
            LayoutSink::Dir(dir) => crate::fsutil::write_synced(&dir.join(name), data),
            LayoutSink::Tar { tar, path } => append_member(tar, path, name, data),
        }
    }
}

/// Append a regular file member to a tarball being written at `path`.
fn append_member<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: &str,
    data: &[u8],
) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data).at(path)
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

    /// Save `image` to `dest` (which must not exist, or be an empty directory,
    /// or for a tarball a file it replaces; its parent directory must exist), carrying `name` (a normalized
    /// reference: the docker-archive's `RepoTags`, the OCI index entry's
    /// `org.opencontainers.image.ref.name` and `io.containerd.image.name`), or
    /// no name (as `podman save ID`). Written beside `dest` first and renamed
    /// into place when complete.
    pub fn save(
        &self,
        image: &Image,
        dest: &Path,
        format: SaveFormat,
        name: Option<&str>,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !fs::metadata(&parent).at(&parent)?.is_dir() {
            return Err(Error::io(
                &parent,
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        let tarball = format != SaveFormat::Oci;
        match fs::symlink_metadata(dest) {
            Err(_) => {}
            Ok(m) if m.is_dir() && fs::read_dir(dest).at(dest)?.next().is_none() => {
                fs::remove_dir(dest).at(dest)?;
            }
            // A tarball replaces a file (as `podman save -o`): renamed over it
            // when complete, so a failed save leaves the old file.
            Ok(m) if tarball && m.is_file() => {}
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
        let file_name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let tmp = parent.join(format!(".{file_name}.tmp-{}", unique_suffix()));
        let result = match format {
            SaveFormat::Oci => self.save_oci_dir(image, &tmp, name, reporter),
            SaveFormat::OciArchive => self.save_tar(&tmp, |tar| {
                self.save_oci(image, LayoutSink::Tar { tar, path: &tmp }, name, reporter)
            }),
            SaveFormat::DockerArchive => self.save_tar(&tmp, |tar| {
                self.save_docker_archive(image, tar, &tmp, name, reporter)
            }),
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

    /// Write a tarball at `path` with `fill`, then flush and fsync it.
    fn save_tar(
        &self,
        path: &Path,
        fill: impl FnOnce(&mut tar::Builder<BufWriter<File>>) -> Result<()>,
    ) -> Result<()> {
        let file = File::create(path).at(path)?;
        let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
        fill(&mut tar)?;
        let out = tar.into_inner().at(path)?;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().at(path)
    }

    /// Append layer `layer`'s tar as member `member`, rebuilt and checked.
    fn append_layer<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        path: &Path,
        member: &str,
        layer: &Layer,
    ) -> Result<u64> {
        let size = layer.diff_size.unwrap_or(0);
        let mut header = tar::Header::new_gnu();
        header.set_path(member).at(path)?;
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
        Ok(size)
    }

    fn save_oci_dir(
        &self,
        image: &Image,
        dir: &Path,
        name: Option<&str>,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let blobs = dir.join("blobs/sha256");
        // `dir` is new, beside the destination: its parent exists.
        fs::create_dir(dir).at(dir)?;
        fs::create_dir_all(&blobs).at(&blobs)?;
        self.save_oci::<std::io::Sink>(image, LayoutSink::Dir(dir), name, reporter)?;
        sync_dir(&blobs)?;
        sync_dir(dir)
    }

    /// Write an OCI image layout (layers as uncompressed tars) into `sink`.
    fn save_oci<W: Write>(
        &self,
        image: &Image,
        mut sink: LayoutSink<'_, W>,
        name: Option<&str>,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let layers = self.image_layers(image)?;
        let mut descs = Vec::new();
        for layer in &layers {
            reporter.report(&blob_event(EventKind::Waiting, layer, &image.id, 0));
        }
        for layer in &layers {
            let digest = layer.diff_digest.clone().unwrap_or_default();
            let member = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
            let size = match &mut sink {
                LayoutSink::Dir(dir) => {
                    let blobs = dir.join("blobs/sha256");
                    let tmp = blobs.join(format!(".tmp-{}", unique_suffix()));
                    let mut f = BufWriter::with_capacity(1 << 20, File::create(&tmp).at(&tmp)?);
                    let size = self.write_layer_tar(layer, &mut f)?;
                    let f = f
                        .into_inner()
                        .map_err(|e| Error::io(&tmp, e.into_error()))?;
                    f.sync_all().at(&tmp)?;
                    fs::rename(&tmp, dir.join(&member)).at(dir.join(&member))?;
                    size
                }
                LayoutSink::Tar { tar, path } => self.append_layer(tar, path, &member, layer)?,
            };
            descs.push(json!({"mediaType": spec::OCI_LAYER_TAR, "digest": digest, "size": size}));
            reporter.report(&blob_event(EventKind::Complete, layer, &image.id, size));
        }
        let config = self.image_big_data(image, CONFIG)?;
        sink.put(&format!("blobs/sha256/{}", image.id), &config)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": spec::OCI_MANIFEST,
            "config": {"mediaType": spec::OCI_CONFIG, "digest": format!("sha256:{}", image.id), "size": config.len()},
            "layers": descs,
        }))
        .expect("a manifest serializes");
        let manifest_digest = crate::digest::sha256_digest(&manifest);
        sink.put(
            &format!(
                "blobs/sha256/{}",
                manifest_digest.trim_start_matches("sha256:")
            ),
            &manifest,
        )?;
        let mut entry = json!({
            "mediaType": spec::OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
        });
        if let Some(n) = name {
            let mut annotations = serde_json::Map::new();
            annotations.insert(spec::ANNOTATION_REF_NAME.into(), json!(n));
            annotations.insert(spec::ANNOTATION_CONTAINERD_NAME.into(), json!(n));
            entry["annotations"] = annotations.into();
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": spec::OCI_INDEX,
            "manifests": [entry],
        });
        sink.put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        sink.put(
            "index.json",
            &serde_json::to_vec(&index).expect("an index serializes"),
        )
    }

    fn save_docker_archive<W: Write>(
        &self,
        image: &Image,
        tar: &mut tar::Builder<W>,
        path: &Path,
        name: Option<&str>,
        reporter: &dyn Reporter,
    ) -> Result<()> {
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
            let size = self.append_layer(tar, path, &member, layer)?;
            layer_names.push(member);
            reporter.report(&blob_event(EventKind::Complete, layer, &image.id, size));
        }
        let config = self.image_big_data(image, CONFIG)?;
        let config_name = format!("{}.json", image.id);
        append_member(tar, path, &config_name, &config)?;
        let manifest = serde_json::to_vec(&json!([{
            "Config": config_name,
            "RepoTags": name.into_iter().collect::<Vec<_>>(),
            "Layers": layer_names,
        }]))
        .expect("manifest.json serializes");
        append_member(tar, path, "manifest.json", &manifest)
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
}
