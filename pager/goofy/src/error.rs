//! The reliable service's errors beyond the storage service's own.

use clu_storage::StorageError;

/// What a restoration or a reliable volume's creation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GoofyError {
    /// Storage failed here.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The transport between sites refused.
    #[error(transparent)]
    Transport(#[from] clu_transport::TransportError),
    /// `pager vol restore` could not proceed.
    #[error("restoration failed: {0}")]
    Restore(String),
    /// The volume's settings are wrong.
    #[error("{0}")]
    Invalid(String),
}
