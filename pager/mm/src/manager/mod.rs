//! The memory manager proper: the images of the clusters mapped on this site, and the cluster
//! operations (thesis B1-B10) as the daemon's connections call them.
//!
//! Lock order: an image's `commit_lock`, then its `state`, then the image table, then the
//! image's `mappers`. Under the table lock only `mappers` is ever taken (mapper bookkeeping
//! happens there, so that "is this the last mapper" is decided once); that lock is a leaf held
//! across no I/O and no system call, so the table never waits behind an image's I/O. Commits,
//! aborts and releases run with the table unlocked. A fault path that holds an image's `state`
//! and needs room in another image only ever *tries* the table and the other image.

mod group;
mod table;

use std::fs::File;
use std::sync::Arc;

use clu_proto::{ClusterId, ClusterKind, ErrorCode, MapMode, VolId};
use clu_storage::{Grant, Storage, MAX_GRANTS};
use tracing::{info, warn};
use userfaultfd::Uffd;

use self::table::{Entry, ImageTable};
use crate::error::Refusal;
use crate::image::{spawn_replay, Image, ImageView, Placement};
use crate::regions::UserRegion;
use crate::rights;
use crate::site::{Reclaim, Site};
use crate::types::ConnId;
use clu_storage::ClusterDesc;

/// Which cached images [`Manager::drop_cached`] drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheScope {
    /// Every cached image.
    All,
    /// Those of one volume.
    Volume(VolId),
    /// That of one cluster.
    Cluster(ClusterId),
}

/// The largest cluster a request may create or grow to, in pages (64 GiB).
pub const MAX_CLUSTER_PAGES: u64 = 1 << 24;

/// The memory manager of a site.
pub struct Manager {
    storage: Arc<Storage>,
    site: Arc<Site>,
    table: Arc<ImageTable>,
    /// Maps under way, by cluster: while one is, a last unmap here keeps the cell's placement
    /// (the map counts on it). A leaf: taken under the table lock, held for no I/O.
    pins: std::sync::Mutex<std::collections::HashMap<ClusterId, u32>>,
}

/// A map under way, pinning its cluster's placement on this site until dropped.
struct Pin<'a> {
    manager: &'a Manager,
    id: ClusterId,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut pins = clu_sys::sync::lock(&self.manager.pins);
        if let Some(n) = pins.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.id);
            }
        }
    }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("site", &self.site)
            .finish_non_exhaustive()
    }
}

/// A mapping just granted: the cluster's size, whether writable, and the memory object to
/// send the client.
#[derive(Debug)]
pub struct MapReply {
    /// The cluster.
    pub id: ClusterId,
    /// Its size in pages.
    pub npages: u64,
    /// Mapped read-write.
    pub writable: bool,
    /// The memfd (read-only for a read-only mapping).
    pub memfd: File,
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

impl Manager {
    /// A manager of `storage`'s volumes with the site's resources.
    pub fn new(storage: Arc<Storage>, site: Arc<Site>) -> Manager {
        let table = Arc::new(ImageTable::default());
        let reclaim: Arc<dyn Reclaim> = table.clone();
        site.set_reclaim(Arc::downgrade(&reclaim));
        Manager {
            storage,
            site,
            table,
            pins: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The storage root.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The site's resources.
    pub fn site(&self) -> &Site {
        &self.site
    }

    /// Every image on the site, as `pager status` shows it.
    pub fn images(&self) -> Vec<ImageView> {
        self.table.images().iter().map(|i| i.view()).collect()
    }

    /// The image, if `conn` maps it; and whether writable.
    pub fn mapped(&self, conn: ConnId, id: ClusterId) -> Result<(Arc<Image>, bool), Refusal> {
        let img = self.table.image(id).ok_or_else(|| not_mapped(id))?;
        match img.mapper_status(conn).0 {
            Some(w) => Ok((img, w)),
            None => Err(not_mapped(id)),
        }
    }

    /// `clu_CreateMap`.
    pub fn create_map(
        &self,
        conn: ConnId,
        uid: u32,
        vol: VolId,
        npages: u64,
        kind: ClusterKind,
    ) -> Result<MapReply, Refusal> {
        if npages == 0 || npages > MAX_CLUSTER_PAGES {
            return Err(Refusal::invalid(format!(
                "a cluster has 1 to {MAX_CLUSTER_PAGES} pages, not {npages}"
            )));
        }
        let volume = self.storage.volume(vol)?;
        let desc = volume.clu_create(npages, uid, kind)?;
        if let Err(e) = self.storage.place(desc.id, false) {
            let _ = volume.clu_destroy(desc.id.clu());
            return Err(e.into());
        }
        let img = match Image::new(desc.id, self.site.clone(), volume.clone(), npages, true) {
            Ok(img) => img,
            Err(e) => {
                let _ = volume.clu_destroy(desc.id.clu());
                return Err(e);
            }
        };
        img.set_temporary(kind == ClusterKind::Temporary);
        img.set_placement(Placement::Write);
        img.add_mapper(conn, true)?;
        let memfd = dup(img.memfd())?;
        self.table.lock().insert(desc.id, Entry::new(Arc::new(img)));
        info!(cluster = %desc.id, npages, owner = uid, kind = kind.name(), "created and mapped");
        Ok(MapReply {
            id: desc.id,
            npages,
            writable: true,
            memfd,
        })
    }

    /// `clu_Map`. The image is built (memfd, access history) without the table's lock; a map
    /// that meets an image being closed waits for that close.
    pub fn map(
        &self,
        conn: ConnId,
        uid: u32,
        id: ClusterId,
        mode: MapMode,
    ) -> Result<MapReply, Refusal> {
        let desc = self.storage.clu_get_desc(id)?;
        let writable = mode == MapMode::ReadWrite;
        rights::may_map(&desc, uid, writable)?;
        // One image per cluster in the cell (E1-E2, F8): unless the image here is placed
        // as this map needs already, it is placed on this site first (a call to the catalog,
        // no lock held), refused while another site holds it for writing; a read-only map of
        // a shareable cluster needs only a read copy, which other sites may hold too. If
        // another site held it for writing since this site last did, an image kept here may
        // be older than the stored one: it goes.
        let need = Placement::needed(desc.kind, writable);
        let (pin, held) = self.pin(id);
        let placing = held < need;
        if placing
            && !self.storage.place(id, need == Placement::ReadCopy)?
            && self.table.image(id).is_some_and(|i| i.mappers() == 0)
        {
            info!(cluster = %id, "another site held the cluster since: the cached image is dropped");
            self.forget(id);
        }
        let mapped = self.map_placed(conn, id, &desc, writable, need);
        if mapped.is_err()
            && self.pin_count(id) == 1
            && !self.table.image(id).is_some_and(|i| i.mappers() > 0)
        {
            // Placed for (or kept for) a map that failed, no process here maps it, and no
            // other map is under way: give it back.
            self.storage.unplace(id);
            if let Some(img) = self.table.image(id) {
                img.set_placement(Placement::None);
            }
        }
        drop(pin);
        mapped
    }

    /// Pins cluster `id`'s placement for a map under way, once no close of its image is under
    /// way here (a close in progress may be giving the placement up: the map waits for it);
    /// returns how the image here is placed now.
    fn pin(&self, id: ClusterId) -> (Pin<'_>, Placement) {
        loop {
            let table = self.table.lock();
            match table.get(&id).cloned() {
                Some(entry) if entry.is_closing() => {
                    drop(table);
                    entry.wait_while_closing();
                }
                found => {
                    *clu_sys::sync::lock(&self.pins).entry(id).or_insert(0) += 1;
                    let held = found
                        .filter(|e| e.image.mappers() > 0)
                        .map_or(Placement::None, |e| e.image.placement());
                    return (Pin { manager: self, id }, held);
                }
            }
        }
    }

    /// Maps of `id` under way on this site.
    fn pin_count(&self, id: ClusterId) -> u32 {
        clu_sys::sync::lock(&self.pins)
            .get(&id)
            .copied()
            .unwrap_or(0)
    }

    /// The rest of `clu_Map`, once the image is placed on this site as the map needs.
    fn map_placed(
        &self,
        conn: ConnId,
        id: ClusterId,
        desc: &ClusterDesc,
        writable: bool,
        need: Placement,
    ) -> Result<MapReply, Refusal> {
        if let Some(img) = self.table.image(id) {
            // A cached image must be the stored image: one read from a volume since unmounted,
            // restored or replaced, or of another size than the descriptor's, is dropped.
            let current = self.storage.volume(id.vol())?;
            if img.mappers() == 0
                && !img.is_temporary()
                && (!img.is_of(&current) || img.npages() != desc.npages)
            {
                info!(cluster = %id, "the cached image is not the stored one any more; dropped");
                self.forget(id);
            }
        }
        let mut fresh: Option<(Arc<Image>, Vec<u32>)> = None;
        let img = loop {
            let mut table = self.table.lock();
            match table.get(&id).cloned() {
                Some(entry) if entry.is_closing() => {
                    drop(table);
                    entry.wait_while_closing();
                }
                Some(entry) => {
                    entry.image.add_mapper(conn, writable)?;
                    entry.image.set_placement(need);
                    break entry.image.clone();
                }
                None => match fresh.take() {
                    Some((img, history)) => {
                        img.add_mapper(conn, writable)?;
                        img.set_placement(need);
                        table.insert(id, Entry::new(img.clone()));
                        drop(table);
                        if !history.is_empty() {
                            spawn_replay(&img, history);
                        }
                        break img;
                    }
                    None => {
                        drop(table);
                        let volume = self.storage.volume(id.vol())?;
                        let history = volume.clu_history(id.clu());
                        let img = Image::new(id, self.site.clone(), volume, desc.npages, false)?;
                        img.set_temporary(desc.kind == ClusterKind::Temporary);
                        fresh = Some((Arc::new(img), history));
                    }
                },
            }
        };
        img.touch();
        let memfd = if writable {
            dup(img.memfd())
        } else {
            read_only(img.memfd())
        };
        let memfd = match memfd {
            Ok(f) => f,
            Err(e) => {
                let _ = self.unmap(conn, id, false);
                return Err(e);
            }
        };
        Ok(MapReply {
            id,
            npages: img.npages(),
            writable,
            memfd,
        })
    }

    /// A region the client registered with its userfaultfd.
    pub fn attach(
        &self,
        conn: ConnId,
        id: ClusterId,
        uffd: Arc<Uffd>,
        pagemap: Option<Arc<File>>,
        region: UserRegion,
    ) -> Result<(Arc<Image>, bool), Refusal> {
        let img = self.table.image(id).ok_or_else(|| not_mapped(id))?;
        let writable = img.attach(conn, uffd, pagemap, region)?;
        if img.resident_pages() > 0 {
            // The image is resident (cached, or mapped elsewhere): map it ahead in the
            // background, as MAP_POPULATE would.
            let bg = img.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("populate-{id}"))
                .spawn(move || {
                    let n = bg.populate(conn, region);
                    tracing::debug!(cluster = %bg.id(), pages = n, "mapped ahead");
                });
            if let Err(e) = spawned {
                warn!(cluster = %id, "no thread to map ahead: {e}");
            }
        }
        Ok((img, writable))
    }

    /// `clu_Unmap` (`write_back`), or the end of a process that mapped it (no write-back: a
    /// crash is not a coherence point). The last mapper on the site commits or discards, then
    /// the image's memory is freed; all of that with the table unlocked, the image marked
    /// closing meanwhile.
    pub fn unmap(&self, conn: ConnId, id: ClusterId, write_back: bool) -> Result<(), Refusal> {
        let entry = {
            let table = self.table.lock();
            let entry = table.get(&id).cloned().ok_or_else(|| not_mapped(id))?;
            let img = &entry.image;
            let (me, mappers) = img.mapper_status(conn);
            if me.is_none() {
                return Err(not_mapped(id));
            }
            // A temporary cluster lives in the pager's memory (and paging partition) until it
            // is destroyed or the pager stops: its last unmap neither writes nor discards.
            if mappers > 1 || img.is_temporary() {
                let left = img.remove_mapper(conn);
                drop(table);
                img.forget_faults(conn);
                if left == 0 {
                    img.end_use();
                }
                return Ok(());
            }
            entry.set_closing(true);
            entry
        };
        let img = &entry.image;
        if write_back {
            match img.commit() {
                Ok(n) => info!(cluster = %id, pages = n, "last unmap: written back"),
                Err(e) => {
                    // The process stays a mapper, with its pages dirty: it may retry.
                    entry.set_closing(false);
                    return Err(e);
                }
            }
        } else {
            let n = img.abort();
            if n > 0 {
                warn!(cluster = %id, pages = n, "last mapper ended without unmapping: its uncommitted pages are discarded");
            }
        }
        img.remove_mapper(conn);
        // Ends the use (its statistics) once no process maps the image.
        img.end_use();
        // No process of this site maps it now: another site may place it (a call to the
        // catalog, with the entry still closing so that a map here waits for it).
        // A map under way here counts on the placement (it pinned it before this close began):
        // it stays.
        if self.pin_count(id) == 0 {
            self.storage.unplace(id);
            img.set_placement(Placement::None);
        }
        if self.site.caches_images() && img.cacheable() {
            // The image stays, clean, as the site's cache: the next map finds it warm.
            img.retire();
            entry.set_closing(false);
        } else {
            img.release();
            self.table.remove(&entry);
        }
        Ok(())
    }

    /// `clu_Commit`.
    pub fn commit(&self, conn: ConnId, id: ClusterId) -> Result<u64, Refusal> {
        self.mapped(conn, id)?.0.commit()
    }

    /// `clu_Abort`.
    pub fn abort(&self, conn: ConnId, id: ClusterId) -> Result<u64, Refusal> {
        Ok(self.mapped(conn, id)?.0.abort())
    }

    /// `clu_Resize`.
    pub fn resize(&self, conn: ConnId, id: ClusterId, add: u64) -> Result<u64, Refusal> {
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
    pub fn extend(&self, conn: ConnId, id: ClusterId) -> Result<u64, Refusal> {
        Ok(self.mapped(conn, id)?.0.npages())
    }

    /// Whether any process maps the cluster.
    pub fn is_mapped(&self, id: ClusterId) -> bool {
        self.mappers(id) > 0
    }

    /// How many processes map the cluster.
    pub fn mappers(&self, id: ClusterId) -> usize {
        self.table.lock().get(&id).map_or(0, |e| e.image.mappers())
    }

    /// Drops the in-memory image of a cluster no process maps (a cached image, or a temporary
    /// cluster's before it is destroyed): its modifications are discarded as it is released.
    /// Returns whether there was one. An image being closed is waited for first (its last
    /// unmap writes it back, then it is cached or gone).
    pub fn forget(&self, id: ClusterId) -> bool {
        let entry = loop {
            let table = self.table.lock();
            match table.get(&id) {
                Some(e) if e.is_closing() => {
                    let e = e.clone();
                    drop(table);
                    e.wait_while_closing();
                }
                Some(e) if e.image.mappers() == 0 => {
                    e.set_closing(true);
                    break e.clone();
                }
                _ => return false,
            }
        };
        // Its modifications are discarded by the release (not counted as an abort).
        entry.image.release();
        self.table.remove(&entry);
        true
    }

    /// `clu_Where`: the site holding the cluster's image now ("" if none, or outside a cell).
    /// Anyone may ask.
    pub fn where_is(&self, id: ClusterId) -> Result<String, Refusal> {
        Ok(self.storage.where_is(id)?.unwrap_or_default())
    }

    /// `clu_Owner`: anyone may ask.
    pub fn owner(&self, id: ClusterId) -> Result<u32, Refusal> {
        Ok(self.storage.clu_get_desc(id)?.owner)
    }

    /// `clu_Grant` (`grant`) or `clu_Revoke`: the owner (or root) changes who may map it.
    pub fn set_grant(
        &self,
        uid: u32,
        id: ClusterId,
        grantee: u32,
        grant: Option<MapMode>,
    ) -> Result<(), Refusal> {
        let desc = self.storage.clu_get_desc(id)?;
        rights::may_administer(&desc, uid)?;
        let volume = self.storage.volume(id.vol())?;
        let mut outcome = Ok(());
        volume.clu_update(id.clu(), &mut |d| {
            outcome = match grant {
                Some(mode) => {
                    let g = Grant {
                        uid: grantee,
                        read_only: mode == MapMode::ReadOnly,
                    };
                    if d.grants.set(g) {
                        Ok(())
                    } else {
                        Err(Refusal::new(
                            ErrorCode::NoSpace,
                            format!(
                                "cluster {id} has {MAX_GRANTS} grants already; revoke one first"
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
    pub fn promote(&self, uid: u32, id: ClusterId) -> Result<(), Refusal> {
        let desc = self.storage.clu_get_desc(id)?;
        rights::may_administer(&desc, uid)?;
        if desc.kind != ClusterKind::Temporary {
            return Err(Refusal::invalid(format!(
                "cluster {id} is {}, not temporary",
                desc.kind.name()
            )));
        }
        if let Some(img) = self.table.image(id) {
            img.set_temporary(false);
            if let Err(e) = img.commit() {
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

    /// Whether any process maps a cluster of the volume, or a temporary cluster of it is in
    /// memory (cached images do not count: [`Manager::drop_cached`] drops them).
    pub fn volume_in_use(&self, vol: VolId) -> bool {
        self.table
            .lock()
            .values()
            .any(|e| e.image.id().vol() == vol && (e.image.mappers() > 0 || e.image.is_temporary()))
    }

    /// Drops the cached images (no process maps them) of the cluster `id`, or of every
    /// cluster of volume `vol`, or all of them; returns how many. The administrator's changes
    /// to stored images (a volume unmounted or restored, a cluster resized or destroyed) go
    /// through here, so that a cached image is never served stale.
    pub fn drop_cached(&self, which: CacheScope) -> usize {
        let ids: Vec<ClusterId> = self
            .table
            .lock()
            .values()
            .filter(|e| {
                let id = e.image.id();
                !e.image.is_temporary()
                    && match which {
                        CacheScope::All => true,
                        CacheScope::Volume(v) => id.vol() == v,
                        CacheScope::Cluster(c) => id == c,
                    }
            })
            .map(|e| e.image.id())
            .collect();
        ids.into_iter().filter(|&id| self.forget(id)).count()
    }
}
