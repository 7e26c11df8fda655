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
        use StorageError as S;
        let code = match &e {
            _ if e.is_no_space() => ErrorCode::NoSpace,
            S::NoSuchVolume(_) | S::NoSuchCluster(_) | S::NotMounted(_) => ErrorCode::NotFound,
            S::Quota { .. } | S::NoVolumeIds | S::NoClusterIds(_) => ErrorCode::NoSpace,
            S::BadName(_)
            | S::Invalid(_)
            | S::OutOfRange { .. }
            | S::ForeignVolume(_)
            | S::UnknownService { .. } => ErrorCode::Invalid,
            S::AlreadyMounted(_)
            | S::StillMounted(_)
            | S::VolumeNotEmpty { .. }
            | S::NameTaken(_)
            | S::RootBusy(_)
            | S::MountedElsewhere { .. } => ErrorCode::Busy,
            S::Io { .. } | S::Journal(_) | S::Corrupt { .. } => ErrorCode::Io,
            S::Fenced { .. } | S::Cell(_) | S::LockLost(_) => ErrorCode::Unavailable,
        };
        Refusal::new(code, e.to_string())
    }
}

impl From<PagingError> for Refusal {
    fn from(e: PagingError) -> Refusal {
        let code = match e {
            PagingError::Full(_) => ErrorCode::NoSpace,
            _ => ErrorCode::Io,
        };
        Refusal::new(code, e.to_string())
    }
}
