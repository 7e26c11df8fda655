//! The journal's error type.

use std::io;
use std::path::PathBuf;

use crate::format::DecodeError;
use crate::recovery::RecoveryError;
use crate::Lsn;

/// Everything that can go wrong with a journal. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A system call failed.
    #[error("journal I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No journal where one was expected.
    #[error("no journal at {0}: the volume's directory is incomplete or was moved; put it back, restore the volume from a backup, or delete it (`pager vol delete --force`)")]
    NotFound(PathBuf),
    /// A journal already exists where one was to be created.
    #[error("a journal already exists at {0}; refusing to overwrite it")]
    AlreadyExists(PathBuf),
    /// Neither anchor slot is intact.
    #[error("the anchor {path} has no intact slot (slot 0: {slot0:?}, slot 1: {slot1:?}); the volume cannot be recovered automatically: restore it from a backup")]
    AnchorUnreadable {
        /// The anchor file.
        path: PathBuf,
        /// Why slot 0 was rejected.
        slot0: DecodeError,
        /// Why slot 1 was rejected.
        slot1: DecodeError,
    },
    /// A structure carries a format version this build does not know.
    #[error("{path} was written in journal format version {found}, this build reads version {}; use a matching clu-pager release", crate::FORMAT_VERSION)]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// Recovery found the log damaged in a way it must not paper over.
    #[error("journal at {dir}: {source}")]
    Recovery {
        /// The journal directory.
        dir: PathBuf,
        /// What was found.
        #[source]
        source: RecoveryError,
    },
    /// A commit's page runs are malformed (a caller bug).
    #[error("invalid page run: {0}")]
    InvalidRun(String),
    /// Applying a validated operation to the cluster files failed.
    #[error("operation {lsn} for cluster {cluster:#010x} is durable in the journal but could not be applied: {source}; the journal stopped: `pager vol unmount VOL` then `pager vol mount VOL` replays it")]
    Apply {
        /// The operation.
        lsn: Lsn,
        /// The cluster.
        cluster: u32,
        /// The error from the apply target.
        #[source]
        source: io::Error,
    },
    /// A consumer asked to retain records that were already deleted.
    #[error("log records from {from} are gone (the oldest log file is {oldest}); the consumer needs a full copy")]
    AlreadyDeleted {
        /// The position asked for.
        from: Lsn,
        /// The oldest file still on disk.
        oldest: u64,
    },
    /// Reading the log back (replication) found something it cannot use.
    #[error("the log cannot be read back at {at}: {why}; the consumer needs a full copy")]
    Unreadable {
        /// Where.
        at: Lsn,
        /// What was found.
        why: String,
    },
    /// An earlier failure put the journal out of service.
    #[error("the journal stopped after an earlier failure ({0}); run `pager vol unmount VOL` then `pager vol mount VOL` so that recovery replays the log")]
    Stopped(String),
}

impl JournalError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        JournalError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether this error is the disk being full (the caller may retry once space is freed).
    pub fn is_no_space(&self) -> bool {
        matches!(self, JournalError::Io { source, .. } if source.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32))
    }
}
