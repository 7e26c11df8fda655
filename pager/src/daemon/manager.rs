//! The memory manager proper: the table of cluster images on this site, the resident budget
//! shared by all of them, the paging partition, and the cluster operations (B1-B10) as the
//! connections call them.
//!
//! Lock order: `images`, then an image's `commit_lock`, then its `state`. A fault path that
//! holds an image's `state` and needs room in another image only ever *tries* the other locks.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use client::{ClusterId, ClusterKind, ErrorCode, MapMode, VolId};
use tracing::{info, warn};

mod status;

use super::error::Refusal;
use super::image::{Image, Region};
use crate::paging::PagingPartition;
use crate::storage::Storage;
use crate::sync::lock;

/// A counter for `pager status`.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the manager has done since it started.
#[derive(Default)]
pub(crate) struct Stats {
    pub missing_faults: Counter,
    pub minor_faults: Counter,
    pub wp_faults: Counter,
    pub zero_fills: Counter,
    pub storage_reads: Counter,
    pub paging_reads: Counter,
    pub evicted_clean: Counter,
    pub evicted_dirty: Counter,
    pub poisoned: Counter,
    pub commits: Counter,
    pub committed_pages: Counter,
    pub aborts: Counter,
    pub connections: Counter,
    pub prefetched: Counter,
}

/// The largest cluster a request may create or grow to, in pages (64 GiB).
pub const MAX_CLUSTER_PAGES: u64 = 1 << 24;

/// The memory manager.
pub struct Manager {
    pub(crate) storage: Storage,
    pub(crate) paging: PagingPartition,
    pub(crate) budget: u64,
    resident: AtomicU64,
    pub(crate) stats: Stats,
    images: Mutex<HashMap<ClusterId, Arc<Image>>>,
    pub(crate) socket: PathBuf,
    pub(crate) live_connections: AtomicU64,
    /// How long a fault thread keeps looking for the next fault before sleeping.
    pub(crate) spin: std::time::Duration,
    started: Instant,
}

impl Manager {
    pub(crate) fn new(
        storage: Storage,
        paging: PagingPartition,
        budget: u64,
        socket: PathBuf,
        spin: std::time::Duration,
    ) -> Manager {
        Manager {
            storage,
            paging,
            budget: budget.max(1),
            resident: AtomicU64::new(0),
            stats: Stats::default(),
            images: Mutex::new(HashMap::new()),
            socket,
            live_connections: AtomicU64::new(0),
            spin,
            started: Instant::now(),
        }
    }

    pub(crate) fn resident(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }
    pub(crate) fn add_resident(&self, n: u64) {
        self.resident.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn sub_resident(&self, n: u64) {
        let _ = self
            .resident
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(n))
            });
    }

    /// Evicts up to `want` pages from images other than `except`, without waiting for a lock.
    pub(crate) fn evict_elsewhere(&self, except: ClusterId, want: u64) {
        let others: Vec<Arc<Image>> = match self.images.try_lock() {
            Ok(map) => map.values().filter(|i| i.id != except).cloned().collect(),
            Err(_) => return,
        };
        let mut left = want;
        for img in others {
            if left == 0 {
                break;
            }
            if let Ok(mut st) = img.state.try_lock() {
                left -= img.evict_some(self, &mut st, left);
            }
        }
    }

    fn image(&self, id: ClusterId) -> Result<Arc<Image>, Refusal> {
        lock(&self.images)
            .get(&id)
            .cloned()
            .ok_or_else(|| not_mapped(id))
    }

    /// The image, if `conn` maps it; and whether writable.
    pub(crate) fn mapped(&self, conn: u64, id: ClusterId) -> Result<(Arc<Image>, bool), Refusal> {
        let img = self.image(id)?;
        match img.mapper_status(conn).0 {
            Some(w) => Ok((img, w)),
            None => Err(not_mapped(id)),
        }
    }

    /// `clu_CreateMap`.
    pub(crate) fn create_map(
        &self,
        conn: u64,
        uid: u32,
        vol: VolId,
        npages: u64,
        kind: ClusterKind,
    ) -> Result<(ClusterId, u64, File), Refusal> {
        if npages == 0 || npages > MAX_CLUSTER_PAGES {
            return Err(Refusal::invalid(format!(
                "a cluster has 1 to {MAX_CLUSTER_PAGES} pages, not {npages}"
            )));
        }
        let volume = self.storage.volume(vol)?;
        let desc = volume.clu_create(npages, uid, kind)?;
        let img = match Image::new(desc.id, volume.clone(), npages, true) {
            Ok(img) => img,
            Err(e) => {
                let _ = volume.clu_destroy(desc.id.clu());
                return Err(e);
            }
        };
        img.set_temporary(kind == ClusterKind::Temporary);
        img.add_mapper(conn, true)?;
        let memfd = dup(img.memfd())?;
        lock(&self.images).insert(desc.id, Arc::new(img));
        info!(cluster = %desc.id, npages, owner = uid, kind = kind.name(), "created and mapped");
        Ok((desc.id, npages, memfd))
    }

    /// `clu_Map`.
    pub(crate) fn map(
        self: &Arc<Self>,
        conn: u64,
        uid: u32,
        id: ClusterId,
        mode: MapMode,
    ) -> Result<(u64, bool, File), Refusal> {
        let desc = self.storage.clu_get_desc(id)?;
        let writable = mode == MapMode::ReadWrite;
        super::rights::may_map(&desc, uid, writable)?;
        let mut images = lock(&self.images);
        let img = match images.get(&id) {
            Some(img) => img.clone(),
            None => {
                let volume = self.storage.volume(id.vol())?;
                let history = volume.clu_history(id.clu());
                let img = Arc::new(Image::new(id, volume, desc.npages, false)?);
                img.set_temporary(desc.kind == ClusterKind::Temporary);
                images.insert(id, img.clone());
                if !history.is_empty() {
                    super::image::spawn_replay(self.clone(), &img, history);
                }
                img
            }
        };
        if let Err(e) = img.add_mapper(conn, writable) {
            if img.mapper_status(conn).1 == 0 {
                images.remove(&id);
            }
            return Err(e);
        }
        let memfd = if writable {
            dup(img.memfd())?
        } else {
            read_only(img.memfd())?
        };
        Ok((img.npages(), writable, memfd))
    }

    /// A region the client registered with its userfaultfd.
    pub(crate) fn attach(
        &self,
        conn: u64,
        id: ClusterId,
        uffd: Arc<userfaultfd::Uffd>,
        pagemap: Option<Arc<File>>,
        region: Region,
    ) -> Result<(Arc<Image>, bool), Refusal> {
        let img = self.image(id)?;
        let writable = img.attach(conn, uffd, pagemap, region)?;
        Ok((img, writable))
    }

    /// `clu_Unmap` (`write_back`), or the end of a process that mapped it (no write-back: a
    /// crash is not a coherence point). The last mapper on the site commits or discards, then
    /// the image's memory is freed.
    pub(crate) fn unmap(&self, conn: u64, id: ClusterId, write_back: bool) -> Result<(), Refusal> {
        let mut images = lock(&self.images);
        let img = images.get(&id).cloned().ok_or_else(|| not_mapped(id))?;
        let (me, mappers) = img.mapper_status(conn);
        if me.is_none() {
            return Err(not_mapped(id));
        }
        // A temporary cluster lives in the pager's memory (and paging partition) until it is
        // destroyed or the pager stops: its last unmap neither writes nor discards.
        let last = mappers == 1 && !img.is_temporary();
        if last {
            if write_back {
                let n = img.commit(self)?;
                info!(cluster = %id, pages = n, "last unmap: written back");
            } else {
                let n = img.abort(self);
                if n > 0 {
                    warn!(cluster = %id, pages = n, "last mapper ended without unmapping: its uncommitted pages are discarded");
                }
            }
        }
        img.remove_mapper(conn);
        // Ends the use (its statistics) once no process maps the image.
        img.end_use();
        if last {
            img.release(self);
            images.remove(&id);
        }
        Ok(())
    }

    /// `clu_Commit`.
    pub(crate) fn commit(&self, conn: u64, id: ClusterId) -> Result<u64, Refusal> {
        self.mapped(conn, id)?.0.commit(self)
    }

    /// `clu_Abort`.
    pub(crate) fn abort(&self, conn: u64, id: ClusterId) -> Result<u64, Refusal> {
        Ok(self.mapped(conn, id)?.0.abort(self))
    }

    /// `clu_Resize`.
    pub(crate) fn resize(&self, conn: u64, id: ClusterId, add: u64) -> Result<u64, Refusal> {
        let (img, writable) = self.mapped(conn, id)?;
        if !writable {
            return Err(Refusal::new(
                ErrorCode::AccessDenied,
                format!("cluster {id} is mapped read-only here; map it read-write to resize it"),
            ));
        }
        let npages = img.npages();
        if add == 0 || npages.saturating_add(add) > MAX_CLUSTER_PAGES {
            return Err(Refusal::invalid(format!(
                "cannot add {add} pages to a cluster of {npages} (limit {MAX_CLUSTER_PAGES})"
            )));
        }
        img.resize(add)
    }

    /// `clu_Extend`: the current size.
    pub(crate) fn extend(&self, conn: u64, id: ClusterId) -> Result<u64, Refusal> {
        Ok(self.mapped(conn, id)?.0.npages())
    }

    /// Whether any process maps the cluster.
    pub(crate) fn is_mapped(&self, id: ClusterId) -> bool {
        self.mappers(id) > 0
    }

    /// How many processes map the cluster.
    pub(crate) fn mappers(&self, id: ClusterId) -> usize {
        lock(&self.images).get(&id).map_or(0, |img| img.mappers())
    }

    /// Drops the in-memory image of a cluster no process maps (a temporary cluster's, before
    /// it is destroyed).
    pub(crate) fn forget(&self, id: ClusterId) {
        let mut images = lock(&self.images);
        if let Some(img) = images.get(&id).cloned() {
            if img.mappers() == 0 {
                img.release(self);
                images.remove(&id);
            }
        }
    }

    /// `clu_Owner`: anyone may ask.
    pub(crate) fn owner(&self, id: ClusterId) -> Result<u32, Refusal> {
        Ok(self.storage.clu_get_desc(id)?.owner)
    }

    /// `clu_Grant` (`grant`) or `clu_Revoke`: the owner (or root) changes who may map it.
    pub(crate) fn set_grant(
        &self,
        uid: u32,
        id: ClusterId,
        grantee: u32,
        grant: Option<MapMode>,
    ) -> Result<(), Refusal> {
        let desc = self.storage.clu_get_desc(id)?;
        super::rights::may_administer(&desc, uid)?;
        let volume = self.storage.volume(id.vol())?;
        let mut outcome = Ok(());
        volume.clu_update(id.clu(), &mut |d| {
            outcome = match grant {
                Some(mode) => {
                    let g = crate::storage::Grant {
                        uid: grantee,
                        read_only: mode == MapMode::ReadOnly,
                    };
                    if d.grants.set(g) {
                        Ok(())
                    } else {
                        Err(Refusal::new(
                            ErrorCode::NoSpace,
                            format!(
                                "cluster {id} has {} grants already; revoke one first",
                                crate::storage::MAX_GRANTS
                            ),
                        ))
                    }
                }
                None if d.grants.revoke(grantee) => Ok(()),
                None => Err(Refusal::new(
                    ErrorCode::NotFound,
                    format!("uid {grantee} has no grant on cluster {id}"),
                )),
            };
        })?;
        outcome
    }

    /// `clu_Promote`: a temporary cluster becomes persistent (protected): its current image is
    /// committed, then its descriptor says so. Its id was allocated in the volume at creation,
    /// so nothing is renamed (G3).
    pub(crate) fn promote(&self, uid: u32, id: ClusterId) -> Result<(), Refusal> {
        let desc = self.storage.clu_get_desc(id)?;
        super::rights::may_administer(&desc, uid)?;
        if desc.kind != ClusterKind::Temporary {
            return Err(Refusal::invalid(format!(
                "cluster {id} is {}, not temporary",
                desc.kind.name()
            )));
        }
        if let Ok(img) = self.image(id) {
            img.set_temporary(false);
            if let Err(e) = img.commit(self) {
                img.set_temporary(true);
                return Err(e);
            }
        }
        self.storage
            .volume(id.vol())?
            .clu_update(id.clu(), &mut |d| d.kind = ClusterKind::Protected)?;
        info!(cluster = %id, "temporary cluster promoted to persistent");
        Ok(())
    }

    /// Whether any process maps a cluster of the volume.
    pub(crate) fn volume_in_use(&self, vol: VolId) -> bool {
        lock(&self.images).keys().any(|id| id.vol() == vol)
    }
}

fn not_mapped(id: ClusterId) -> Refusal {
    Refusal::new(
        ErrorCode::NotFound,
        format!("cluster {id} is not mapped by this process; map it first"),
    )
}

/// A new, read-only open of the memfd: a read-only mapper cannot map it writable or write to it
/// (a `dup` would share the pager's read-write open).
fn read_only(f: &File) -> Result<File, Refusal> {
    use std::os::fd::AsRawFd;
    File::open(format!("/proc/self/fd/{}", f.as_raw_fd())).map_err(|e| {
        Refusal::new(
            ErrorCode::Io,
            format!("reopening the memory object read-only: {e}"),
        )
    })
}

fn dup(f: &File) -> Result<File, Refusal> {
    f.try_clone()
        .map_err(|e| Refusal::new(ErrorCode::Io, format!("dup of the memory object: {e}")))
}
