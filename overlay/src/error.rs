use std::path::PathBuf;

/// Errors of the layer driver. Every I/O error names the path it happened on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tar entry that would escape the layer or is otherwise unsafe
    /// (`..`, absolute path, path through a symlink, hardlink out of the
    /// layer, whiteout naming `.` or `..`, duplicate entry, …).
    #[error("hostile layer entry {entry:?}: {reason}")]
    HostileEntry { entry: String, reason: String },
    /// The tar stream is malformed or ends early.
    #[error("malformed layer tar: {0}")]
    MalformedTar(String),
    /// The uncompressed stream grew past the configured limit (gzip bomb guard).
    #[error("layer exceeds the size limit of {limit} bytes uncompressed")]
    SizeLimit { limit: u64 },
    /// The blob's magic bytes contradict its declared media type.
    #[error("layer compression mismatch: declared {declared}, content looks like {detected}")]
    CompressionMismatch { declared: String, detected: String },
    /// A media type we cannot decompress.
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("layer {0} does not exist")]
    LayerUnknown(String),
    #[error("invalid layer id {0:?}")]
    InvalidLayerId(String),
    #[error("tar-split metadata is corrupt: {0}")]
    TarSplit(String),
    #[error("mount {target}: {reason}")]
    Mount { target: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wrap an `io::Error` with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
