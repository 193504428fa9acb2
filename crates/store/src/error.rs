//! Store errors. Every one names the file it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest {}: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
    #[error("pending {}: {reason}", path.display())]
    Pending { path: PathBuf, reason: String },
    #[error("snapshot file {}: {reason}", path.display())]
    Snapshot { path: PathBuf, reason: String },
    #[error("bad boot id {0:?}: want r<resetCount>-<16 lowercase hex>")]
    BootId(String),
    #[error("{} already exists", .0.display())]
    Exists(PathBuf),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches the operation and path to an I/O error.
pub(crate) fn io<T>(op: &'static str, path: &std::path::Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|source| StoreError::Io { op, path: path.to_path_buf(), source })
}
