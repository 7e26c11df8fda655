//! The reliable service's errors beyond the storage service's own.

use clu_storage::StorageError;

/// A backup server could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach backup server {addr}: {reason}; check that `pager backup-server` runs there and the address is right")]
pub struct ConnectError {
    /// `HOST:PORT`.
    pub addr: String,
    /// What failed.
    pub reason: String,
}

/// What a restoration or a reliable volume's creation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GoofyError {
    /// Storage failed here.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A backup server could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// `pager vol restore` could not proceed.
    #[error("restoration failed: {0}")]
    Restore(String),
    /// The volume's settings are wrong.
    #[error("{0}")]
    Invalid(String),
}
