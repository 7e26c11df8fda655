//! Errors of the storage service. Each message says what to do.

use std::io;
use std::path::PathBuf;

use clu_proto::{ClusterId, VolId};
use journal::JournalError;

/// Everything the storage service can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A system call failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The volume's journal refused or failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Another process holds the storage root.
    #[error("the storage root {0} is in use by another pager or backup server (it holds the root's lock file); stop it or use another --root")]
    RootBusy(PathBuf),
    /// No volume by that name or id in the catalog.
    #[error("no volume `{0}` in the catalog; `pager vol list` shows the volumes")]
    NoSuchVolume(String),
    /// The volume exists but is not mounted.
    #[error("volume {0} is not mounted; mount it with `pager vol mount {0}`")]
    NotMounted(VolId),
    /// The volume is already mounted.
    #[error("volume {0} is already mounted here; nothing to do")]
    AlreadyMounted(VolId),
    /// The operation needs the volume unmounted.
    #[error("volume {0} is mounted; unmount it first with `pager vol unmount {0}`")]
    StillMounted(VolId),
    /// The volume belongs to another cell.
    #[error("volume {0} belongs to another cell; volumes of other cells are not supported yet")]
    ForeignVolume(VolId),
    /// A volume name is malformed.
    #[error("`{0}` is not a valid volume name: use 1 to 32 letters, digits, `-`, `_` or `.`, starting with a letter")]
    BadName(String),
    /// A volume name is taken.
    #[error(
        "a volume named `{0}` already exists; pick another name (`pager vol list` shows them)"
    )]
    NameTaken(String),
    /// No volume id is left in this cell.
    #[error("all 32767 volume ids of this cell are in use; delete a volume first")]
    NoVolumeIds,
    /// The volume still holds clusters.
    #[error("volume {vol} still holds {clusters} clusters; destroy them first or pass --force")]
    VolumeNotEmpty {
        /// The volume.
        vol: VolId,
        /// How many clusters it holds.
        clusters: usize,
    },
    /// The catalog names a storage service this pager does not have.
    #[error("volume {vol} uses storage service `{service}`, which this pager does not have; run the pager release that created it")]
    UnknownService {
        /// The volume.
        vol: VolId,
        /// The service's name.
        service: String,
    },
    /// No such cluster.
    #[error("no cluster {0}; `pager clu list VOL` shows a volume's clusters")]
    NoSuchCluster(ClusterId),
    /// All 65536 cluster ids of the volume are used.
    #[error("volume {0} has no cluster id left (64K clusters per volume); destroy clusters no longer used (`pager clu destroy`) or create another volume")]
    NoClusterIds(VolId),
    /// The volume's capacity would be exceeded.
    #[error("volume {vol} has room for {free} more pages, {wanted} were asked for; grow it with `pager vol resize`")]
    Quota {
        /// The volume.
        vol: VolId,
        /// Pages asked for.
        wanted: u64,
        /// Pages left.
        free: u64,
    },
    /// A page range outside the cluster.
    #[error("pages {first}..{end} are outside cluster {id}, which has {npages} pages")]
    OutOfRange {
        /// The cluster.
        id: ClusterId,
        /// First page asked for.
        first: u64,
        /// One past the last page asked for.
        end: u64,
        /// The cluster's size.
        npages: u64,
    },
    /// A buffer that is not whole pages, or a size of zero.
    #[error("{0}")]
    Invalid(String),
    /// A reliable volume whose primary copy here was replaced by a restoration elsewhere.
    #[error("volume {vol} is fenced: {why}. It was restored on another manager, which is its primary now; this copy must not be used: unmount it here (`pager vol unmount`)")]
    Fenced {
        /// The volume.
        vol: VolId,
        /// What the backup said.
        why: String,
    },
    /// The cell's catalog refused or could not be reached (the reason says what to do).
    #[error("the cell's catalog: {0}")]
    Cell(String),
    /// Another site of the cell holds the volume's mount lock.
    #[error("volume {vol} is mounted by site `{site}` of the cell; unmount it there first (or wait for that site's lease to expire if it died)")]
    MountedElsewhere {
        /// The volume.
        vol: VolId,
        /// The site holding it.
        site: String,
    },
    /// Another site of the cell holds the cluster's image (one image per cluster).
    #[error("cluster {id}'s image is held on site `{site}`: run this work there (clu_Where names it), or unmap it there first")]
    PlacedElsewhere {
        /// The cluster.
        id: ClusterId,
        /// The site holding it.
        site: String,
    },
    /// Other sites hold read copies of the cluster: it may not be mapped for writing.
    #[error("cluster {id} has read copies on site(s) {sites}: it cannot be mapped read-write until they unmap it (read copies are not recalled)")]
    ReadCopies {
        /// The cluster.
        id: ClusterId,
        /// The sites, comma-separated.
        sites: String,
    },
    /// The lease under which a volume was mounted here, or a cluster of it was placed here,
    /// is gone (the catalog was unreachable for longer than the lease): another site may hold
    /// the volume or the cluster now, so this one must not change it.
    #[error("volume {0} is no longer mounted by this site (or its clusters placed here): the site's lease in the cell's catalog, under which they were, is gone (the catalog was unreachable for longer than the lease); the site joins the cell again by itself once etcd answers and mounts its volumes again, unless another site took them over meanwhile: then unmap the cluster and map it again")]
    LockLost(VolId),
    /// The site that mounts a remote volume refused, or could not be reached.
    #[error("site {site}: {message}")]
    Remote {
        /// The site (or its address, if it was not reached).
        site: String,
        /// The code the client gets.
        code: clu_proto::ErrorCode,
        /// What that site said, or why it was not reached.
        message: String,
    },
    /// A persistent structure failed its checks.
    #[error("{path} is damaged ({reason}); restore the volume from a backup")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl StorageError {
    /// The code a client gets for this error.
    pub fn code(&self) -> clu_proto::ErrorCode {
        use clu_proto::ErrorCode;
        use StorageError as S;
        match self {
            _ if self.is_no_space() => ErrorCode::NoSpace,
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
            S::Remote { code, .. } => *code,
            S::PlacedElsewhere { .. } | S::ReadCopies { .. } => ErrorCode::Remote,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            path: path.into(),
            source,
        }
    }

    /// A damaged persistent structure at `path`.
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        StorageError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Whether the disk is full (the same call may succeed once space is freed).
    pub fn is_no_space(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            StorageError::Journal(j) => j.is_no_space(),
            _ => false,
        }
    }
}

/// The storage service's result type.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
