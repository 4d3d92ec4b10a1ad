//! Getting images out to disk: `save` to an OCI layout (a directory or a
//! tarball) or a docker-archive.
//!
//! The original compressed blobs are not kept, so every layer tar is rebuilt
//! from the layer's `diff/` and its tar-split metadata
//! ([`Store::write_layer_tar`]) — byte for byte the tar that was imported,
//! checked against its diffID while it is written. The config is written
//! unchanged, so the image id (and every diffID) survives a save and
//! re-import; manifests are new (their layer digests describe the blobs as
//! written: uncompressed tars).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use storectl_storage::fsutil::{sync_dir, unique_suffix};
use storectl_storage::import::spec;
use storectl_storage::meta::{Image, Layer, CONFIG};
use storectl_storage::progress::{EventKind, ProgressEvent, Reporter};
use storectl_storage::Store;

use crate::error::{Error, IoContext, Result};

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

pub(crate) fn op_event(event: EventKind, name: &str) -> ProgressEvent {
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

pub(crate) fn blob_event(
    event: EventKind,
    layer: &Layer,
    parent: &str,
    progress: u64,
) -> ProgressEvent {
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
            LayoutSink::Dir(dir) => Ok(storectl_storage::fsutil::write_synced(
                &dir.join(name),
                data,
            )?),
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

/// Save `image` to `dest` (which must not exist, or be an empty directory,
/// or for a tarball a file it replaces; its parent directory must exist), carrying `name` (a normalized
/// reference: the docker-archive's `RepoTags`, the OCI index entry's
/// `org.opencontainers.image.ref.name` and `io.containerd.image.name`), or
/// no name (as `podman save ID`). Written beside `dest` first and renamed
/// into place when complete.
pub fn save(
    store: &Store,
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
        SaveFormat::Oci => save_oci_dir(store, image, &tmp, name, reporter),
        SaveFormat::OciArchive => save_tar(&tmp, |tar| {
            save_oci(
                store,
                image,
                LayoutSink::Tar { tar, path: &tmp },
                name,
                reporter,
            )
        }),
        SaveFormat::DockerArchive => save_tar(&tmp, |tar| {
            save_docker_archive(store, image, tar, &tmp, name, reporter)
        }),
    };
    let result = result.and_then(|()| {
        fs::rename(&tmp, dest).at(dest)?;
        Ok(sync_dir(&parent)?)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp).or_else(|_| fs::remove_file(&tmp));
    }
    result?;
    reporter.report(&op_event(EventKind::Saved, &dest.to_string_lossy()));
    Ok(())
}

/// Write `image` as a tarball (`OciArchive`, or `DockerArchive`; `Oci`, a
/// directory, is written as an `OciArchive` of its contents) into `out`, as
/// it is made: what a daemon streams to a client. `shown` names the stream
/// in messages. Nothing is written to disk.
pub fn save_to_writer(
    store: &Store,
    image: &Image,
    out: &mut dyn Write,
    shown: &Path,
    format: SaveFormat,
    name: Option<&str>,
    reporter: &dyn Reporter,
) -> Result<()> {
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, out));
    match format {
        SaveFormat::Oci | SaveFormat::OciArchive => save_oci(
            store,
            image,
            LayoutSink::Tar {
                tar: &mut tar,
                path: shown,
            },
            name,
            reporter,
        )?,
        SaveFormat::DockerArchive => {
            save_docker_archive(store, image, &mut tar, shown, name, reporter)?
        }
    }
    let mut out = tar.into_inner().at(shown)?;
    out.flush().at(shown)?;
    reporter.report(&op_event(EventKind::Saved, &shown.to_string_lossy()));
    Ok(())
}

/// Write a tarball at `path` with `fill`, then flush and fsync it.
fn save_tar(
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
    store: &Store,
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
    let written = store.write_layer_tar(layer, out)?;
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
    store: &Store,
    image: &Image,
    dir: &Path,
    name: Option<&str>,
    reporter: &dyn Reporter,
) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    // `dir` is new, beside the destination: its parent exists.
    fs::create_dir(dir).at(dir)?;
    fs::create_dir_all(&blobs).at(&blobs)?;
    save_oci::<std::io::Sink>(store, image, LayoutSink::Dir(dir), name, reporter)?;
    sync_dir(&blobs)?;
    Ok(sync_dir(dir)?)
}

/// Write an OCI image layout (layers as uncompressed tars) into `sink`.
fn save_oci<W: Write>(
    store: &Store,
    image: &Image,
    mut sink: LayoutSink<'_, W>,
    name: Option<&str>,
    reporter: &dyn Reporter,
) -> Result<()> {
    let layers = store.image_layers(image)?;
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
                let size = store.write_layer_tar(layer, &mut f)?;
                let f = f
                    .into_inner()
                    .map_err(|e| Error::io(&tmp, e.into_error()))?;
                f.sync_all().at(&tmp)?;
                fs::rename(&tmp, dir.join(&member)).at(dir.join(&member))?;
                size
            }
            LayoutSink::Tar { tar, path } => append_layer(store, tar, path, &member, layer)?,
        };
        descs.push(json!({"mediaType": spec::OCI_LAYER_TAR, "digest": digest, "size": size}));
        reporter.report(&blob_event(EventKind::Complete, layer, &image.id, size));
    }
    let config = store.image_big_data(image, CONFIG)?;
    sink.put(&format!("blobs/sha256/{}", image.id), &config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": spec::OCI_MANIFEST,
        "config": {"mediaType": spec::OCI_CONFIG, "digest": format!("sha256:{}", image.id), "size": config.len()},
        "layers": descs,
    }))
    .expect("a manifest serializes");
    let manifest_digest = storectl_storage::digest::sha256_digest(&manifest);
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
    store: &Store,
    image: &Image,
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: Option<&str>,
    reporter: &dyn Reporter,
) -> Result<()> {
    let layers = store.image_layers(image)?;
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
        let size = append_layer(store, tar, path, &member, layer)?;
        layer_names.push(member);
        reporter.report(&blob_event(EventKind::Complete, layer, &image.id, size));
    }
    let config = store.image_big_data(image, CONFIG)?;
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
