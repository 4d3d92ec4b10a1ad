use std::path::PathBuf;

/// Errors of read-only sharing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The directory given as a share does not hold a storectl share.
    #[error("{path} is not a storectl share: {reason}")]
    NotAShare { path: PathBuf, reason: String },
    /// The root is already wired differently.
    #[error("{path} already exists and is not a link to {expected}")]
    Conflict { path: PathBuf, expected: PathBuf },
    /// The root cannot be wired to this share as it is.
    #[error("{path} cannot join this share: {reason}")]
    Incompatible { path: PathBuf, reason: String },
    /// The root is not a reader/writer of a share.
    #[error(
        "store {root} is not set up for sharing (run `storectl init --shared DIR --role reader`)"
    )]
    NotShared { root: PathBuf },
    #[error(transparent)]
    Storage(#[from] storectl_storage::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}
