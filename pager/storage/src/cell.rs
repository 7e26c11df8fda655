//! A storage root in a cell of sites (thesis C5, C8, M2): volume ids come from the cell's
//! catalog, so that no two volumes of the cell share one, and mounting a volume takes its
//! mount lock there, so that one manager at a time mounts it. The daemon provides the catalog
//! (on etcd, `clu-cell`); this crate knows only the [`CellCatalog`] trait. Without one, a root
//! is a cell of its own, as before.
//!
//! A volume mounted in a cell is served through [`Fenced`]: once the site's lease (and with it
//! the lock) is gone, every change to the volume is refused, since another site may mount it.

use std::sync::Arc;

use clu_proto::{CluId, ClusterKind, VolId};
use journal::{Batch, Lsn, PageRun};

use crate::{ClusterDesc, Result, StorageError, Volume, VolumeInfo};

/// What a storage root asks of its cell's catalog. Every call may wait on another machine: the
/// root calls them with none of its locks held.
pub trait CellCatalog: Send + Sync {
    /// Allocates an id no volume of the cell has, and records volume `name` of `service`
    /// (at `vol-<id>` under this site's root) under it.
    fn allocate(&self, name: &str, service: &str) -> Result<VolId>;
    /// Records a volume this root had before it joined the cell (or that another site created
    /// on storage this one shares); refuses if the cell knows another volume by that id.
    fn adopt(&self, vol: VolId, name: &str, service: &str, location: &str) -> Result<()>;
    /// Forgets a volume's record (its creation failed, or it was deleted).
    fn forget(&self, vol: VolId) -> Result<()>;
    /// Takes the volume's mount lock for this site; returns its fencing epoch. Refuses with
    /// [`StorageError::MountedElsewhere`] when another site holds it.
    fn lock_mount(&self, vol: VolId) -> Result<u64>;
    /// Releases the volume's mount lock.
    fn unlock_mount(&self, vol: VolId) -> Result<()>;
    /// The volume as reached through the site that mounts it, if another site does (remote
    /// paging); `None` if no site mounts it.
    fn remote(&self, vol: VolId) -> Result<Option<Arc<dyn Volume>>>;
    /// Places cluster `id`'s image on this site; refuses with
    /// [`StorageError::PlacedElsewhere`] while another site holds it. `Ok(true)` when this
    /// site also held it last (an image it kept is still the stored one). With `read_copy`
    /// (a shareable cluster mapped read-only), a read copy: any number of sites may hold one
    /// while no site holds it for writing; a placement for writing is refused with
    /// [`StorageError::ReadCopies`] while other sites hold read copies.
    fn place(&self, id: clu_proto::ClusterId, read_copy: bool) -> Result<bool>;
    /// Gives up the placement of cluster `id`'s image on this site: its writable image and
    /// its read copy, whichever this site holds.
    fn unplace(&self, id: clu_proto::ClusterId) -> Result<()>;
    /// The site holding cluster `id`'s image for writing now, if any.
    fn placed(&self, id: clu_proto::ClusterId) -> Result<Option<String>>;
    /// That site, or else the first holding a read copy (what `clu_Where` answers).
    fn where_is(&self, id: clu_proto::ClusterId) -> Result<Option<String>>;
    /// The site's lease now (its membership's generation: a site that lost its lease and
    /// joined again has another), `None` while it has none. Local, no I/O: it is asked before
    /// every change to a volume.
    fn lease(&self) -> Option<u64>;
}

/// A volume of a cell: refuses changes once the lease under which it was mounted (or, for a
/// volume another site mounts, reached) is gone, even after the site joined the cell again
/// with a new lease: the locks and placements of the old one went with it, and another site
/// may hold them now.
pub struct Fenced {
    inner: Arc<dyn Volume>,
    cell: Arc<dyn CellCatalog>,
    lease: Option<u64>,
}

impl Fenced {
    /// Serves `inner` while `cell`'s lease is the one it has now.
    pub fn new(inner: Arc<dyn Volume>, cell: Arc<dyn CellCatalog>) -> Fenced {
        let lease = cell.lease();
        Fenced { inner, cell, lease }
    }

    /// Whether the lease this volume was obtained under is still the site's.
    pub fn current(&self) -> bool {
        self.lease.is_some() && self.cell.lease() == self.lease
    }

    fn check(&self) -> Result<()> {
        if self.current() {
            Ok(())
        } else {
            Err(StorageError::LockLost(self.inner.id()))
        }
    }
}

impl Volume for Fenced {
    fn id(&self) -> VolId {
        self.inner.id()
    }
    fn info(&self) -> VolumeInfo {
        self.inner.info()
    }
    fn set_capacity(&self, capacity_pages: u64) -> Result<()> {
        self.check()?;
        self.inner.set_capacity(capacity_pages)
    }
    fn checkpoint(&self) -> Result<()> {
        // Makes durable what was committed while the lock was held: no new change.
        self.inner.checkpoint()
    }
    fn unmount(&self) -> Result<()> {
        self.inner.unmount()
    }
    fn clu_create(&self, npages: u64, owner: u32, kind: ClusterKind) -> Result<ClusterDesc> {
        self.check()?;
        self.inner.clu_create(npages, owner, kind)
    }
    fn clu_get_desc(&self, clu: CluId) -> Result<ClusterDesc> {
        self.inner.clu_get_desc(clu)
    }
    fn clu_update(&self, clu: CluId, f: &mut dyn FnMut(&mut ClusterDesc)) -> Result<ClusterDesc> {
        self.check()?;
        self.inner.clu_update(clu, f)
    }
    fn clu_list(&self) -> Vec<ClusterDesc> {
        self.inner.clu_list()
    }
    fn clu_destroy(&self, clu: CluId) -> Result<()> {
        self.check()?;
        self.inner.clu_destroy(clu)
    }
    fn clu_resize(&self, clu: CluId, add_pages: u64) -> Result<ClusterDesc> {
        self.check()?;
        self.inner.clu_resize(clu, add_pages)
    }
    fn clu_read(&self, clu: CluId, first_page: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.clu_read(clu, first_page, buf)
    }
    fn clu_write(&self, clu: CluId, runs: &[PageRun<'_>]) -> Result<Lsn> {
        self.check()?;
        self.inner.clu_write(clu, runs)
    }
    fn clu_commit(&self, clu: CluId, batch: Batch) -> Result<Lsn> {
        self.check()?;
        self.inner.clu_commit(clu, batch)
    }
    fn clu_commit_group(&self, ops: Vec<(CluId, Batch)>) -> Result<Lsn> {
        self.check()?;
        self.inner.clu_commit_group(ops)
    }
    fn clu_prepare_group(
        &self,
        ops: Vec<(CluId, Batch)>,
        txid: u64,
        coordinator: VolId,
    ) -> Result<()> {
        self.check()?;
        self.inner.clu_prepare_group(ops, txid, coordinator)
    }
    fn clu_decide_group(&self, txid: u64, commit: bool) -> Result<()> {
        self.check()?;
        self.inner.clu_decide_group(txid, commit)
    }
    fn clu_decide_group_unsynced(&self, txid: u64, commit: bool) -> Result<Option<Lsn>> {
        self.check()?;
        self.inner.clu_decide_group_unsynced(txid, commit)
    }
    fn clu_sync_to(&self, lsn: Lsn) -> Result<()> {
        self.inner.clu_sync_to(lsn)
    }
    fn record_decision(&self, txid: u64) -> Result<()> {
        self.check()?;
        self.inner.record_decision(txid)
    }
    fn forget_decision(&self, txid: u64) -> Result<()> {
        self.inner.forget_decision(txid)
    }
    fn clu_prefetch(&self, clu: CluId, first_page: u64, npages: u64) {
        self.inner.clu_prefetch(clu, first_page, npages)
    }
    fn clu_uncache(&self, clu: CluId, first_page: u64, npages: u64) {
        self.inner.clu_uncache(clu, first_page, npages)
    }
    fn clu_history(&self, clu: CluId) -> Vec<u32> {
        self.inner.clu_history(clu)
    }
    fn clu_set_history(&self, clu: CluId, pages: &[u32]) -> Result<()> {
        self.check()?;
        self.inner.clu_set_history(clu, pages)
    }
    fn cacheable(&self) -> bool {
        self.inner.cacheable()
    }
    fn fenced_out(&self) -> bool {
        !self.current()
    }
}
