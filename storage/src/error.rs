use std::path::PathBuf;

/// Errors of the layer and image stores. Every I/O error names its path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("image not known: {name}")]
    ImageUnknown { name: String },
    #[error("{name:?} is ambiguous: it matches {count} images")]
    AmbiguousImage { name: String, count: usize },
    #[error("layer not known: {id}")]
    LayerUnknown { id: String },
    #[error("digest mismatch for {what}: expected {expected}, found {found}")]
    DigestMismatch {
        what: String,
        expected: String,
        found: String,
    },
    /// A malformed image archive or layout (bad JSON, missing blob, …).
    #[error("{path}: not a valid image archive: {reason}")]
    InvalidArchive { path: PathBuf, reason: String },
    /// The store root cannot be written (permissions, read-only mount, …).
    #[error("store root {path} is not writable: {reason}")]
    ReadOnlyStore { path: PathBuf, reason: String },
    /// A writer root opened without the writer side of sharing
    /// ([`crate::StoreOptions::share_hook`]): a change would leave
    /// containers/storage's index on the share stale, which podman reads
    /// without asking whether it is current.
    #[error(
        "store {root} writes to the share {share}, but was opened without the share's writer \
         (storectl_remote::open_store), which keeps containers/storage's index there: \
         refusing to change it"
    )]
    NoShareWriter { root: PathBuf, share: PathBuf },
    /// Another writer holds the store's lock.
    #[error("store {path} is locked by another writer ({holder})")]
    Locked { path: PathBuf, holder: String },
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("image {id} is mounted at {path}; unmount it first")]
    ImageMounted { id: String, path: PathBuf },
    /// `rmi ID` of an image with several names, without `force` (as podman:
    /// remove a name with `rmi NAME`, or all of them with `--force`).
    #[error("unable to delete image {id} (must force) - image is referenced in multiple repositories: {}", names.join(", "))]
    MustForce { id: String, names: Vec<String> },
    #[error("no such container: {name}")]
    ContainerUnknown { name: String },
    #[error("{name:?} is ambiguous: it matches {count} containers")]
    AmbiguousContainer { name: String, count: usize },
    #[error("the container name {name:?} is already in use by container {id}")]
    ContainerNameInUse { name: String, id: String },
    #[error("invalid container name: {reason}")]
    InvalidContainerName { reason: String },
    /// `rm` of a mounted container without `force`.
    #[error("container {id} is mounted at {path}; unmount it first (or rm --force)")]
    ContainerMounted { id: String, path: PathBuf },
    /// `rmi` of an image containers use, without `force` (as podman).
    #[error("image {id} is in use by container(s) {}: remove them first, or rmi --force to remove them too", containers.join(", "))]
    ImageInUse { id: String, containers: Vec<String> },
    /// A runtime bundle cannot be made (no command, unknown user, …).
    #[error("container {container}: {reason}")]
    Bundle { container: String, reason: String },
    #[error("layer {layer}: {source}")]
    Layer {
        layer: String,
        #[source]
        source: storectl_overlay::Error,
    },
    /// An image with more layers than overlayfs can stack; refused before
    /// anything is written.
    #[error("{image} has {layers} layers, more than the {max} overlayfs can stack")]
    TooManyLayers {
        image: String,
        layers: usize,
        max: usize,
    },
    /// The operation stopped because another part of it failed.
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Overlay(#[from] storectl_overlay::Error),
    /// A [`RemoteBlob`](crate::import::RemoteBlob) failed to open (the
    /// source's own error, e.g. a registry's).
    #[error(transparent)]
    Remote(crate::import::BoxError),
    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// [`Error::Io`] at `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn archive(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidArchive {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// `result.map_err(|e| Error::io(path, e))` in short.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
