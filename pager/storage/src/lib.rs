//! The storage service (*service de stockage*, thesis IV.2.2, requirements C1-C8 and H1-H11).
//!
//! A common part ([`Storage`]: the catalog of volumes, the mount table, dispatch by volume id)
//! over a table of storage services that plug in like drivers ([`StorageService`] in a
//! [`DriverTable`], which the daemon assembles). Each service binds volumes to physical
//! entities; this crate has the fast local service ([`ssr`]: a volume is a directory, a cluster
//! a file). Others plug in from their own crates (the reliable service, `clu-goofy`) without
//! this crate knowing them.
//!
//! | thesis primitive | here |
//! |---|---|
//! | `vol_Create`, `vol_Resize`, `vol_Delete` | [`StorageService::vol_create`], [`StorageService::vol_resize`], [`StorageService::vol_delete`] |
//! | `vol_Mount`, `vol_Unmount` | [`StorageService::vol_mount`], [`Volume::unmount`] |
//! | `vol_CluCreate`, `vol_CluGetDesc`, `vol_CluDestroy`, `vol_CluResize` | [`Volume::clu_create`], [`Volume::clu_get_desc`], [`Volume::clu_destroy`], [`Volume::clu_resize`] |
//! | `vol_CluRead`, `vol_CluWrite` | [`Volume::clu_read`], [`Volume::clu_write`] (atomic, through the journal) |

mod catalog;
mod cell;
mod descriptor;
mod error;
pub mod fsutil;
pub mod history;
mod root;
pub mod ssr;

use std::path::Path;

use clu_proto::{CluId, ClusterKind, VolId};
use journal::{Batch, Lsn, PageRun};

pub use catalog::{parse_mounts, Catalog, CatalogEntry, CatalogError};
pub use cell::{CellCatalog, Fenced};
pub use descriptor::{
    ClusterDesc, ClusterStats, FormatError, Grant, Grants, Means, VolumeMeta, MAX_GRANTS,
};
pub use error::{Result, StorageError};
pub use root::{DriverTable, Storage, StorageConfig, VolumeStatus};

/// Parameters of a new volume that every service understands. What only one service
/// understands (a reliable volume's backups) it takes through [`Storage::vol_create_by`].
#[derive(Clone, Debug, Default)]
pub struct VolumeParams {
    /// Its name in the catalog (set by [`Storage::vol_create_in`]).
    pub name: String,
    /// Capacity in pages; 0 means no limit beyond the disk's.
    pub capacity_pages: u64,
    /// The journal's first log file (0 or 1 for a new volume; past the LSN a restored volume
    /// was restored to, so that its LSNs follow those of the history it continues).
    pub first_log_file: u64,
}

/// What a mounted volume reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Its id.
    pub vol: VolId,
    /// Number of clusters.
    pub clusters: usize,
    /// Pages allocated to clusters.
    pub used_pages: u64,
    /// Capacity in pages; 0 means no limit.
    pub capacity_pages: u64,
    /// The journal's `logLSN`.
    pub log_lsn: Lsn,
    /// The journal's `durableLSN`.
    pub durable_lsn: Lsn,
}

/// One storage service: an entry of the driver table (H5). Administration primitives work on a
/// volume's location; mounting yields a [`Volume`] that serves the cluster primitives.
pub trait StorageService: Send + Sync {
    /// The name the catalog records for volumes of this service.
    fn name(&self) -> &'static str;
    /// Creates an empty volume at `location`.
    fn vol_create(&self, vol: VolId, location: &Path, params: &VolumeParams) -> Result<()>;
    /// Changes the capacity of an unmounted volume.
    fn vol_resize(&self, location: &Path, capacity_pages: u64) -> Result<()>;
    /// Deletes an unmounted volume; refuses if it holds clusters unless `force`.
    fn vol_delete(&self, vol: VolId, location: &Path, force: bool) -> Result<()>;
    /// Mounts the volume at `location`, recovering its journal.
    fn vol_mount(&self, vol: VolId, location: &Path) -> Result<Box<dyn Volume>>;
}

/// A mounted volume: the cluster primitives (H8).
pub trait Volume: Send + Sync {
    /// Its id.
    fn id(&self) -> VolId;
    /// Current figures.
    fn info(&self) -> VolumeInfo;
    /// Sets the capacity while mounted.
    fn set_capacity(&self, capacity_pages: u64) -> Result<()>;
    /// Makes every committed write durable in the cluster files and trims the journal.
    fn checkpoint(&self) -> Result<()>;
    /// Checkpoints and closes. Every later call fails with [`StorageError::NotMounted`].
    fn unmount(&self) -> Result<()>;
    /// Creates a cluster of `npages` zero pages owned by `owner`.
    fn clu_create(&self, npages: u64, owner: u32, kind: ClusterKind) -> Result<ClusterDesc>;
    /// The descriptor of a cluster.
    fn clu_get_desc(&self, clu: CluId) -> Result<ClusterDesc>;
    /// Changes a cluster's descriptor with `f` (kind, owner, grants, statistics; the id and the
    /// size are kept) and stores it. Returns the new descriptor.
    fn clu_update(&self, clu: CluId, f: &mut dyn FnMut(&mut ClusterDesc)) -> Result<ClusterDesc>;
    /// Every cluster's descriptor, by cluster number.
    fn clu_list(&self) -> Vec<ClusterDesc>;
    /// Destroys a cluster and its storage.
    fn clu_destroy(&self, clu: CluId) -> Result<()>;
    /// Adds `add_pages` zero pages at the end of a cluster.
    fn clu_resize(&self, clu: CluId, add_pages: u64) -> Result<ClusterDesc>;
    /// Reads whole pages from `first_page` into `buf` (a multiple of the page size).
    fn clu_read(&self, clu: CluId, first_page: u64, buf: &mut [u8]) -> Result<()>;
    /// Writes runs of whole pages atomically: after a crash, either all or none are stored.
    fn clu_write(&self, clu: CluId, runs: &[PageRun<'_>]) -> Result<Lsn>;
    /// Writes the runs of `batch` atomically, as [`Volume::clu_write`] does; the service may
    /// return once they are durable and store them in the cluster's image afterwards (the
    /// batch is its to keep), provided every later read sees them. The default writes them
    /// with `clu_write`.
    fn clu_commit(&self, clu: CluId, batch: Batch) -> Result<Lsn> {
        self.clu_write(clu, &batch.runs())
    }
    /// Writes the batches of several clusters of this volume as one atomic group: after a
    /// crash, all of them are stored or none (a group within one volume is one journal group:
    /// no two-phase commit). Returns as [`Volume::clu_commit`] does, with the LSN of the
    /// group's last operation. Each cluster at most once. The default takes a group of one
    /// cluster and refuses more (a service that cannot write several clusters atomically).
    fn clu_commit_group(&self, ops: Vec<(CluId, Batch)>) -> Result<Lsn> {
        let mut ops = ops;
        match ops.len() {
            0 => Err(StorageError::Invalid("an empty commit group".into())),
            1 => {
                let (clu, batch) = ops.remove(0);
                self.clu_commit(clu, batch)
            }
            n => Err(StorageError::Invalid(format!(
                "volume {} cannot commit {n} clusters atomically (its storage service has no \
                 commit groups); commit them one by one",
                self.id()
            ))),
        }
    }
    /// The first phase of a commit group across volumes (two-phase commit): stores the batches
    /// of clusters of this volume durably as a *prepared* group of transaction `txid`, whose
    /// outcome the coordinator volume `coordinator` records; nothing is applied until
    /// [`Volume::clu_decide_group`]. After a crash before the decision, the next mount asks
    /// the coordinator's decisions (presumed abort). The default refuses (a service without
    /// prepared state).
    fn clu_prepare_group(
        &self,
        _ops: Vec<(CluId, Batch)>,
        _txid: u64,
        _coordinator: VolId,
    ) -> Result<()> {
        Err(StorageError::Invalid(format!(
            "volume {} cannot take part in a commit group across volumes (its storage service \
             has no prepared state: reliable and remote volumes do not, in this release); \
             commit its clusters as a group of their own",
            self.id()
        )))
    }
    /// The second phase: applies (`commit`) or drops the group prepared for `txid`; nothing
    /// to do if none is. The default has nothing prepared.
    fn clu_decide_group(&self, _txid: u64, _commit: bool) -> Result<()> {
        Ok(())
    }
    /// [`Volume::clu_decide_group`] without waiting for the outcome to be durable here: the
    /// part is applied or dropped when this returns, and the outcome is durable once
    /// [`Volume::clu_sync_to`] the position returned has returned (none: durable already).
    /// Until then a crash leaves the part in doubt again, decided at the next mount from the
    /// coordinator's decisions, which therefore keeps the decision that long.
    fn clu_decide_group_unsynced(&self, txid: u64, commit: bool) -> Result<Option<Lsn>> {
        self.clu_decide_group(txid, commit).map(|()| None)
    }
    /// Waits until what this volume logged up to `lsn` is durable.
    fn clu_sync_to(&self, _lsn: Lsn) -> Result<()> {
        Ok(())
    }
    /// As the coordinator of `txid`: records the decision to commit, durably (the commit
    /// point). The default refuses.
    fn record_decision(&self, _txid: u64) -> Result<()> {
        Err(StorageError::Invalid(format!(
            "volume {} cannot coordinate a commit group across volumes",
            self.id()
        )))
    }
    /// As the coordinator: every participant recorded the outcome of `txid`.
    fn forget_decision(&self, _txid: u64) -> Result<()> {
        Ok(())
    }
    /// Hints that pages `first_page..first_page+npages` will be read soon (a service may start
    /// reading them in the background). The default does nothing.
    fn clu_prefetch(&self, _clu: CluId, _first_page: u64, _npages: u64) {}
    /// Says that pages `first_page..first_page+npages` were read and are held by the caller
    /// (the site's image): a service may drop its own cached copy, so that the data is in
    /// memory once. The default does nothing.
    fn clu_uncache(&self, _clu: CluId, _first_page: u64, _npages: u64) {}
    /// The cluster's access history (see [`history`]); empty if there is none.
    fn clu_history(&self, _clu: CluId) -> Vec<u32> {
        Vec::new()
    }
    /// Replaces the cluster's access history (an empty one removes it).
    fn clu_set_history(&self, _clu: CluId, _pages: &[u32]) -> Result<()> {
        Ok(())
    }
    /// Whether a clean image of one of its clusters stays valid while no process of this site
    /// maps it (the site cache): not when another site may change the cluster meanwhile (a
    /// volume reached through the site that mounts it). The default is yes.
    fn cacheable(&self) -> bool {
        true
    }
    /// Whether the lease this volume was mounted under in a cell is gone, so that it refuses
    /// every change until mounted again ([`Fenced`]). Never for a volume outside a cell.
    fn fenced_out(&self) -> bool {
        false
    }
}
