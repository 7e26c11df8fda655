//! What a request can fail with: a code of the C ABI and a message for the user.

use clu_proto::ErrorCode;

use crate::paging::PagingError;
use clu_storage::StorageError;

/// A refused or failed request, as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The code.
    pub code: ErrorCode,
    /// What happened and what to do.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// `EINVAL`.
    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::Invalid, message)
    }
}

impl From<StorageError> for Refusal {
    fn from(e: StorageError) -> Refusal {
        Refusal::new(e.code(), e.to_string())
    }
}

impl From<PagingError> for Refusal {
    fn from(e: PagingError) -> Refusal {
        let code = match e {
            PagingError::Full(_) => ErrorCode::NoSpace,
            PagingError::Down(_) | PagingError::Server { .. } => ErrorCode::Unavailable,
            _ => ErrorCode::Io,
        };
        Refusal::new(code, e.to_string())
    }
}
