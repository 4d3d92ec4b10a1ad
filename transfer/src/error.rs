use std::path::PathBuf;

use crate::registry::RegistryError;

/// Errors of a transfer: the store's, the registry's, or this crate's own.
/// Every I/O error names its path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] storectl_storage::Error),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Reference(#[from] storectl_storage::reference::ReferenceError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A manifest that does not parse or describes something unusable.
    #[error("{path}: not a valid image archive: {reason}")]
    InvalidArchive { path: PathBuf, reason: String },
    #[error("digest mismatch for {what}: expected {expected}, found {found}")]
    DigestMismatch {
        what: String,
        expected: String,
        found: String,
    },
    /// The caller cancelled the operation ([`crate::Cancel`]).
    #[error("cancelled")]
    Cancelled,
    /// An explicitly requested platform that the (single-platform) image is not for.
    #[error("{image} is for {have}, not the requested {want}")]
    PlatformMismatch {
        image: String,
        have: String,
        want: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The registry error behind this one, if any: directly, or from a
    /// registry blob the store failed to open.
    pub fn registry(&self) -> Option<&RegistryError> {
        match self {
            Error::Registry(r) => Some(r),
            Error::Store(storectl_storage::Error::Remote(e)) => e.downcast_ref(),
            _ => None,
        }
    }
}

/// `result.map_err(|e| Error::io(path, e))` in short.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
