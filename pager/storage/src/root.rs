//! The common part of the storage service: the storage root with its catalog and mount table,
//! the driver table of services, and dispatch of cluster primitives by volume id.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use clu_proto::{ClusterId, ClusterKind, VolId};
use clu_sys::sync::{lock, read, write};
use journal::{Batch, JournalConfig, Lsn, PageRun};
use nix::fcntl::Flock;

use crate::catalog::{format_mounts, parse_mounts, valid_name, Catalog, CatalogEntry};
use crate::cell::{CellCatalog, Fenced};
use crate::fsutil::{lock_root, sync_dir, write_atomic};
use crate::ssr::Ssr;
use crate::{ClusterDesc, Result, StorageError, StorageService, Volume, VolumeInfo, VolumeParams};

const CATALOG: &str = "catalog";
const MOUNTS: &str = "mounts";

/// Settings of a storage root that has only the fast local service.
#[derive(Clone, Debug, Default)]
pub struct StorageConfig {
    /// Journal settings for the volumes mounted.
    pub journal: JournalConfig,
}

/// The driver table (thesis H5): the storage services a storage root can use, by the name its
/// catalog records. The daemon assembles it; adding a service touches no file of this crate.
#[derive(Clone, Default)]
pub struct DriverTable {
    services: Vec<Arc<dyn StorageService>>,
}

impl DriverTable {
    /// An empty table.
    pub fn new() -> DriverTable {
        DriverTable::default()
    }

    /// The fast local service alone (`ssr`), with these journal settings.
    pub fn local(journal: JournalConfig) -> DriverTable {
        DriverTable::new().with(Arc::new(Ssr { journal }))
    }

    /// The table with `service` added (replacing one of the same name).
    pub fn with(mut self, service: Arc<dyn StorageService>) -> DriverTable {
        self.services.retain(|s| s.name() != service.name());
        self.services.push(service);
        self
    }

    /// The service called `name`.
    pub fn get(&self, name: &str) -> Option<&dyn StorageService> {
        self.services
            .iter()
            .find(|s| s.name() == name)
            .map(|s| &**s)
    }

    /// The services' names, in the order they were added.
    pub fn names(&self) -> Vec<&'static str> {
        self.services.iter().map(|s| s.name()).collect()
    }
}

impl std::fmt::Debug for DriverTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// A volume as listed: its catalog entry, and its figures if mounted.
#[derive(Clone, Debug)]
pub struct VolumeStatus {
    /// The catalog entry.
    pub entry: CatalogEntry,
    /// `Some` when mounted.
    pub mounted: Option<VolumeInfo>,
}

/// An open storage root. One process at a time holds it (an exclusive lock on `<root>/lock`):
/// one manager per volume (C8).
pub struct Storage {
    root: PathBuf,
    drivers: DriverTable,
    /// The catalog as last written (short critical sections, never across I/O).
    catalog: Mutex<Catalog>,
    /// Serialises replacing the catalog and mount table files (held across their write and
    /// sync; readers of the catalog use
    /// `catalog`, which shows the last durable catalog meanwhile).
    root_writes: Mutex<()>,
    /// Volumes being created: their ids and names are taken.
    creating: Mutex<Vec<CatalogEntry>>,
    /// The mounted volumes (short critical sections).
    mounted: RwLock<HashMap<VolId, Arc<dyn Volume>>>,
    /// Volumes being mounted (a journal's recovery, a reliable volume's first contact with its
    /// backups take a while): mounted without holding `mounted`.
    mounting: Mutex<Vec<VolId>>,
    /// Volumes other sites of the cell mount, as reached through them (short sections); each
    /// fenced by the lease under which it was reached, and reached again under a new one.
    remote: RwLock<HashMap<VolId, Arc<Fenced>>>,
    /// The cell's catalog, when the root is one site of a cell (ids and mount locks).
    cell: Option<Arc<dyn CellCatalog>>,
    _lock: Flock<File>,
}

fn read_text(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

impl Storage {
    /// Opens (creating if needed) a storage root with the fast local service only, and mounts
    /// every volume of the mount table.
    pub fn open(root: &Path, config: StorageConfig) -> Result<Storage> {
        Self::open_with(root, DriverTable::local(config.journal))
    }

    /// Opens (creating if needed) the storage root with the services of `drivers`, and mounts
    /// every volume of the mount table.
    pub fn open_with(root: &Path, drivers: DriverTable) -> Result<Storage> {
        Self::open_in_cell(root, drivers, None)
    }

    /// Opens the storage root as one site of a cell whose catalog is `cell`: the volumes this
    /// root has are recorded in the cell (refused if the cell gives one of their ids to another
    /// volume), and those of the mount table are mounted under their mount locks. A volume that
    /// another site holds stays unmounted here (with a warning) and in the mount table.
    pub fn open_in_cell(
        root: &Path,
        drivers: DriverTable,
        cell: Option<Arc<dyn CellCatalog>>,
    ) -> Result<Storage> {
        let root_lock = lock_root(root)?;
        let catalog_path = root.join(CATALOG);
        let catalog = match read_text(&catalog_path)? {
            Some(text) => Catalog::parse(&text)
                .map_err(|e| StorageError::corrupt(&catalog_path, e.to_string()))?,
            None => Catalog::default(),
        };
        let storage = Storage {
            root: root.to_owned(),
            drivers,
            catalog: Mutex::new(catalog),
            root_writes: Mutex::new(()),
            creating: Mutex::new(Vec::new()),
            mounted: RwLock::new(HashMap::new()),
            mounting: Mutex::new(Vec::new()),
            remote: RwLock::new(HashMap::new()),
            cell,
            _lock: root_lock,
        };
        if let Some(cell) = &storage.cell {
            let entries: Vec<CatalogEntry> =
                lock(&storage.catalog).volumes.values().cloned().collect();
            for e in entries {
                cell.adopt(e.vol, &e.name, &e.service, &e.location)?;
            }
        }
        for vol in storage.mount_table()? {
            match storage.mount_one(vol) {
                Ok(_) => {}
                Err(StorageError::MountedElsewhere { vol, site }) => tracing::warn!(
                    %vol,
                    site,
                    "not mounted at start: another site of the cell holds it"
                ),
                Err(e) => return Err(e),
            }
        }
        Ok(storage)
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn mount_table(&self) -> Result<Vec<VolId>> {
        let path = self.root.join(MOUNTS);
        match read_text(&path)? {
            Some(text) => {
                parse_mounts(&text).map_err(|e| StorageError::corrupt(&path, e.to_string()))
            }
            None => Ok(Vec::new()),
        }
    }

    fn set_mount_table(&self, vols: &[VolId]) -> Result<()> {
        write_atomic(&self.root.join(MOUNTS), format_mounts(vols).as_bytes())
    }

    fn service(&self, entry: &CatalogEntry) -> Result<&dyn StorageService> {
        self.drivers
            .get(&entry.service)
            .ok_or_else(|| StorageError::UnknownService {
                vol: entry.vol,
                service: entry.service.clone(),
            })
    }

    /// Finds a volume by name or id.
    pub fn find(&self, what: &str) -> Result<CatalogEntry> {
        lock(&self.catalog)
            .find(what)
            .cloned()
            .ok_or_else(|| StorageError::NoSuchVolume(what.to_owned()))
    }

    fn entry(&self, vol: VolId) -> Result<CatalogEntry> {
        if vol.is_foreign() {
            return Err(StorageError::ForeignVolume(vol));
        }
        lock(&self.catalog)
            .volumes
            .get(&vol)
            .cloned()
            .ok_or_else(|| StorageError::NoSuchVolume(vol.to_string()))
    }

    /// `vol_Create` with the fast local service (`ssr`): allocates an id, creates the volume
    /// and records it in the catalog. Does not mount it.
    pub fn vol_create(&self, name: &str, params: &VolumeParams) -> Result<CatalogEntry> {
        self.vol_create_in(name, Ssr::NAME, params)
    }

    /// `vol_Create` with the service called `service`, through its generic
    /// [`StorageService::vol_create`].
    pub fn vol_create_in(
        &self,
        name: &str,
        service: &str,
        params: &VolumeParams,
    ) -> Result<CatalogEntry> {
        self.vol_create_by(name, service, |svc, vol, location| {
            let params = VolumeParams {
                name: name.to_owned(),
                ..params.clone()
            };
            svc.vol_create(vol, location, &params)
        })
    }

    /// `vol_Create` where the caller builds the volume: `create` gets the service, the id
    /// allocated and the location, and does what that service needs (a reliable volume's
    /// backups, a restoration's fetch) with arguments this crate knows nothing of. The id and
    /// name are reserved meanwhile, without holding the catalog (a restoration takes a while);
    /// on failure whatever `create` left at the location is removed.
    pub fn vol_create_by<E: From<StorageError>>(
        &self,
        name: &str,
        service: &str,
        create: impl FnOnce(&dyn StorageService, VolId, &Path) -> std::result::Result<(), E>,
    ) -> std::result::Result<CatalogEntry, E> {
        if !valid_name(name) {
            return Err(StorageError::BadName(name.to_owned()).into());
        }
        let svc = self.drivers.get(service).ok_or_else(|| {
            StorageError::Invalid(format!(
                "this pager has no storage service `{service}` (it has {:?})",
                self.drivers.names()
            ))
        })?;
        // A name taken here is refused before the cell gives an id for it.
        if self.find(name).is_ok() {
            return Err(StorageError::NameTaken(name.to_owned()).into());
        }
        // In a cell, the id comes from the cell's catalog (a call to another machine: no lock
        // held); it is then this root's to use, and forgotten again if the creation fails.
        let from_cell = match &self.cell {
            Some(cell) => Some(cell.allocate(name, svc.name())?),
            None => None,
        };
        let result = self
            .reserve(name, svc, from_cell)
            .map_err(E::from)
            .and_then(|entry| {
                let created = self.create_reserved(&entry, svc, create);
                lock(&self.creating).retain(|e| e.vol != entry.vol);
                created.map(|()| entry)
            });
        if let (Err(_), Some(cell), Some(vol)) = (&result, &self.cell, from_cell) {
            if let Err(f) = cell.forget(vol) {
                tracing::warn!(%vol, "forgetting a volume whose creation failed: {f}");
            }
        }
        result
    }

    /// Creates volume `vol`, which the cell's catalog already records (a failover: this
    /// site takes over a volume another site served), with `create`, under its name. An
    /// unmounted volume of this root with that id (this site served it once: its copy is
    /// stale) is set aside first, renamed `<location>.replaced-<seconds>`, not deleted.
    pub fn vol_take_over_by<E: From<StorageError>>(
        &self,
        vol: VolId,
        name: &str,
        service: &str,
        create: impl FnOnce(&dyn StorageService, VolId, &Path) -> std::result::Result<(), E>,
    ) -> std::result::Result<CatalogEntry, E> {
        let svc = self.drivers.get(service).ok_or_else(|| {
            StorageError::Invalid(format!("this pager has no storage service `{service}`"))
        })?;
        if let Ok(old) = self.entry(vol) {
            if read(&self.mounted).contains_key(&vol) {
                return Err(StorageError::AlreadyMounted(vol).into());
            }
            self.refuse_if_mounting(vol)?;
            let from = self.root.join(&old.location);
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = self.root.join(format!("{}.replaced-{secs}", old.location));
            if from.exists() {
                fs::rename(&from, &aside).map_err(|e| StorageError::io(&from, e))?;
            }
            self.drop_from_mount_table(vol)?;
            self.update_catalog(|c| {
                c.volumes.remove(&vol);
            })?;
            sync_dir(&self.root)?;
            tracing::warn!(%vol, old = %from.display(), aside = %aside.display(), "this site's old copy of the volume set aside: another site served it since");
        }
        let entry = self.reserve(name, svc, Some(vol)).map_err(E::from)?;
        let created = self.create_reserved(&entry, svc, create);
        lock(&self.creating).retain(|e| e.vol != entry.vol);
        created.map(|()| entry)
    }

    /// Reserves the name and an id (`from_cell`'s, or the first free one) in `creating`.
    fn reserve(
        &self,
        name: &str,
        svc: &dyn StorageService,
        from_cell: Option<VolId>,
    ) -> Result<CatalogEntry> {
        let catalog = lock(&self.catalog);
        let mut creating = lock(&self.creating);
        if catalog.find(name).is_some() || creating.iter().any(|e| e.name == name) {
            return Err(StorageError::NameTaken(name.to_owned()));
        }
        let free =
            |v: &VolId| !catalog.volumes.contains_key(v) && !creating.iter().any(|e| e.vol == *v);
        let vol = match from_cell {
            Some(vol) if free(&vol) => vol,
            Some(vol) => {
                return Err(StorageError::Cell(format!(
                    "it gave id {vol}, which this root already uses; the cell's catalog lost a record: check `pager vol list`"
                )))
            }
            None => (1..VolId::FOREIGN_BIT)
                .map(VolId)
                .find(free)
                .ok_or(StorageError::NoVolumeIds)?,
        };
        let entry = CatalogEntry {
            vol,
            name: name.to_owned(),
            service: svc.name().to_owned(),
            location: format!("vol-{vol}"),
        };
        creating.push(entry.clone());
        Ok(entry)
    }

    fn create_reserved<E: From<StorageError>>(
        &self,
        entry: &CatalogEntry,
        svc: &dyn StorageService,
        create: impl FnOnce(&dyn StorageService, VolId, &Path) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let location = self.root.join(&entry.location);
        // The id is in no catalog entry: whatever is there is debris of a creation that did not
        // finish (a crash before the catalog named it). Clear it.
        if location.exists() {
            fs::remove_dir_all(&location).map_err(|e| StorageError::io(&location, e))?;
        }
        if let Err(e) = create(svc, entry.vol, &location) {
            // Not a volume (no catalog entry names it): remove what the failed creation left,
            // a partly fetched restoration for instance.
            let _ = fs::remove_dir_all(&location);
            return Err(e);
        }
        self.update_catalog(|c| {
            c.volumes.insert(entry.vol, entry.clone());
        })?;
        Ok(())
    }

    /// Changes the catalog with `f` and replaces its file durably, then installs it.
    fn update_catalog(&self, f: impl FnOnce(&mut Catalog)) -> Result<()> {
        let _writes = lock(&self.root_writes);
        let mut next = lock(&self.catalog).clone();
        f(&mut next);
        write_atomic(&self.root.join(CATALOG), next.format().as_bytes())?;
        *lock(&self.catalog) = next;
        Ok(())
    }

    /// `vol_Mount`: mounts the volume now and at every start.
    pub fn vol_mount(&self, vol: VolId) -> Result<Arc<dyn Volume>> {
        let v = self.mount_one(vol)?;
        let _writes = lock(&self.root_writes);
        let mut table = self.mount_table()?;
        if !table.contains(&vol) {
            table.push(vol);
            self.set_mount_table(&table)?;
        }
        Ok(v)
    }

    fn mount_one(&self, vol: VolId) -> Result<Arc<dyn Volume>> {
        let entry = self.entry(vol)?;
        let service = self.service(&entry)?;
        {
            let mut mounting = lock(&self.mounting);
            if read(&self.mounted).contains_key(&vol) || mounting.contains(&vol) {
                return Err(StorageError::AlreadyMounted(vol));
            }
            mounting.push(vol);
        }
        // In a cell, the mount lock first (a call to another machine, no lock held).
        if let Some(cell) = &self.cell {
            if let Err(e) = cell.lock_mount(vol) {
                lock(&self.mounting).retain(|v| *v != vol);
                return Err(e);
            }
        }
        let mounted = service.vol_mount(vol, &self.root.join(&entry.location));
        let result = mounted.map(|v| {
            let mut v: Arc<dyn Volume> = Arc::from(v);
            if let Some(cell) = &self.cell {
                v = Arc::new(Fenced::new(v, cell.clone()));
            }
            write(&self.mounted).insert(vol, v.clone());
            v
        });
        if result.is_err() {
            self.unlock_in_cell(vol);
        }
        lock(&self.mounting).retain(|v| *v != vol);
        result
    }

    /// Mounts again, under the site's lease now, every volume mounted under a lease the site
    /// lost (in a cell: [`Fenced`]); returns each volume tried with its outcome. A volume that
    /// another site mounted meanwhile ([`StorageError::MountedElsewhere`]) stays unmounted
    /// here; it stays in the mount table, as after a restart.
    pub fn remount_fenced(&self) -> Vec<(VolId, Result<()>)> {
        let stale: Vec<(VolId, Arc<dyn Volume>)> = read(&self.mounted)
            .iter()
            .filter(|(_, v)| v.fenced_out())
            .map(|(vol, v)| (*vol, v.clone()))
            .collect();
        let mut out = Vec::new();
        for (vol, v) in stale {
            {
                let mut mounted = write(&self.mounted);
                match mounted.get(&vol) {
                    Some(now) if Arc::ptr_eq(now, &v) => mounted.remove(&vol),
                    _ => continue, // unmounted or mounted again meanwhile
                };
            }
            if let Err(e) = v.unmount() {
                tracing::warn!(%vol, "closing a volume whose lease is gone: {e}");
            }
            out.push((vol, self.mount_one(vol).map(drop)));
        }
        out
    }

    /// A volume being mounted is as good as mounted for what needs it unmounted.
    fn refuse_if_mounting(&self, vol: VolId) -> Result<()> {
        if lock(&self.mounting).contains(&vol) {
            return Err(StorageError::StillMounted(vol));
        }
        Ok(())
    }

    /// `vol_Unmount`: checkpoints and closes the volume, and removes it from the mount table.
    pub fn vol_unmount(&self, vol: VolId) -> Result<()> {
        let v = write(&self.mounted)
            .remove(&vol)
            .ok_or(StorageError::NotMounted(vol))?;
        self.drop_from_mount_table(vol)?;
        let result = v.unmount();
        self.unlock_in_cell(vol);
        result
    }

    /// Removes `vol` from the mount table (it is not mounted at the next start).
    fn drop_from_mount_table(&self, vol: VolId) -> Result<()> {
        let _writes = lock(&self.root_writes);
        let table: Vec<VolId> = self
            .mount_table()?
            .into_iter()
            .filter(|v| *v != vol)
            .collect();
        self.set_mount_table(&table)
    }

    /// Releases `vol`'s mount lock in the cell, if the root is in one.
    fn unlock_in_cell(&self, vol: VolId) {
        if let Some(cell) = &self.cell {
            if let Err(e) = cell.unlock_mount(vol) {
                tracing::warn!(%vol, "releasing the mount lock: {e}; it goes with the site's lease");
            }
        }
    }

    /// `vol_Resize`: changes a volume's capacity.
    pub fn vol_resize(&self, vol: VolId, capacity_pages: u64) -> Result<()> {
        if let Ok(v) = self.mounted_here(vol) {
            return v.set_capacity(capacity_pages);
        }
        self.refuse_if_mounting(vol)?;
        let entry = self.entry(vol)?;
        self.service(&entry)?
            .vol_resize(&self.root.join(&entry.location), capacity_pages)
    }

    /// `vol_Delete`: deletes an unmounted volume and its catalog entry.
    pub fn vol_delete(&self, vol: VolId, force: bool) -> Result<()> {
        if self.mounted_here(vol).is_ok() {
            return Err(StorageError::StillMounted(vol));
        }
        self.refuse_if_mounting(vol)?;
        let entry = self.entry(vol)?;
        self.service(&entry)?
            .vol_delete(vol, &self.root.join(&entry.location), force)?;
        self.update_catalog(|c| {
            c.volumes.remove(&vol);
        })?;
        sync_dir(&self.root)?;
        if let Some(cell) = &self.cell {
            cell.forget(vol)?;
        }
        Ok(())
    }

    /// Every volume of the catalog.
    pub fn volumes(&self) -> Vec<VolumeStatus> {
        let catalog = lock(&self.catalog).clone();
        let mounted = read(&self.mounted);
        catalog
            .volumes
            .into_values()
            .map(|entry| VolumeStatus {
                mounted: mounted.get(&entry.vol).map(|v| v.info()),
                entry,
            })
            .collect()
    }

    /// A mounted volume.
    pub fn volume(&self, vol: VolId) -> Result<Arc<dyn Volume>> {
        let local = self.mounted_here(vol);
        let Some(cell) = &self.cell else {
            return local;
        };
        if local.is_ok() || vol.is_foreign() {
            return local;
        }
        // Mounted by another site of the cell: reached through it (remote paging).
        if let Some(v) = read(&self.remote).get(&vol).filter(|v| v.current()) {
            return Ok(v.clone());
        }
        match cell.remote(vol)? {
            Some(v) => {
                let v = Arc::new(Fenced::new(v, cell.clone()));
                write(&self.remote).insert(vol, v.clone());
                Ok(v)
            }
            None => local,
        }
    }

    /// Places cluster `id`'s image on this site (in a cell; always granted otherwise): see
    /// [`CellCatalog::place`].
    pub fn place(&self, id: ClusterId, read_copy: bool) -> Result<bool> {
        match &self.cell {
            Some(c) => c.place(id, read_copy),
            None => Ok(true),
        }
    }

    /// Gives up the placement of cluster `id`'s image (in a cell).
    pub fn unplace(&self, id: ClusterId) {
        if let Some(c) = &self.cell {
            if let Err(e) = c.unplace(id) {
                tracing::warn!(cluster = %id, "releasing a placement: {e}; it goes with the site's lease");
            }
        }
    }

    /// The site holding cluster `id`'s image for writing, or else a read copy of it:
    /// `None` outside a cell.
    pub fn where_is(&self, id: ClusterId) -> Result<Option<String>> {
        match &self.cell {
            Some(c) => c.where_is(id),
            None => Ok(None),
        }
    }

    /// The site holding cluster `id`'s image for writing now: `None` outside a cell.
    pub fn placed(&self, id: ClusterId) -> Result<Option<String>> {
        match &self.cell {
            Some(c) => c.placed(id),
            None => Ok(None),
        }
    }

    /// A volume mounted by this root itself (never one reached through another site).
    pub fn mounted_here(&self, vol: VolId) -> Result<Arc<dyn Volume>> {
        if vol.is_foreign() {
            return Err(StorageError::ForeignVolume(vol));
        }
        read(&self.mounted)
            .get(&vol)
            .cloned()
            .ok_or_else(|| match self.entry(vol) {
                Ok(_) => StorageError::NotMounted(vol),
                Err(e) => e,
            })
    }

    /// `vol_CluCreate` on a mounted volume.
    pub fn clu_create(
        &self,
        vol: VolId,
        npages: u64,
        owner: u32,
        kind: ClusterKind,
    ) -> Result<ClusterDesc> {
        self.volume(vol)?.clu_create(npages, owner, kind)
    }

    /// `vol_CluGetDesc`.
    pub fn clu_get_desc(&self, id: ClusterId) -> Result<ClusterDesc> {
        self.volume(id.vol())?.clu_get_desc(id.clu())
    }

    /// `vol_CluDestroy`.
    pub fn clu_destroy(&self, id: ClusterId) -> Result<()> {
        self.volume(id.vol())?.clu_destroy(id.clu())
    }

    /// `vol_CluResize`.
    pub fn clu_resize(&self, id: ClusterId, add_pages: u64) -> Result<ClusterDesc> {
        self.volume(id.vol())?.clu_resize(id.clu(), add_pages)
    }

    /// `vol_CluRead`.
    pub fn clu_read(&self, id: ClusterId, first_page: u64, buf: &mut [u8]) -> Result<()> {
        self.volume(id.vol())?.clu_read(id.clu(), first_page, buf)
    }

    /// `vol_CluWrite`: atomic.
    pub fn clu_write(&self, id: ClusterId, runs: &[PageRun<'_>]) -> Result<Lsn> {
        self.volume(id.vol())?.clu_write(id.clu(), runs)
    }

    /// `vol_CluWrite` with owned pages: atomic, and may return before the pages are in the
    /// cluster file (see [`Volume::clu_commit`]).
    pub fn clu_commit(&self, id: ClusterId, batch: Batch) -> Result<Lsn> {
        self.volume(id.vol())?.clu_commit(id.clu(), batch)
    }

    /// [`Volume::clu_commit_group`] on the volume of the clusters `ids` (all of one volume).
    pub fn clu_commit_group(&self, ops: Vec<(ClusterId, Batch)>) -> Result<Lsn> {
        let Some(vol) = ops.first().map(|(id, _)| id.vol()) else {
            return Err(StorageError::Invalid("an empty commit group".into()));
        };
        if let Some((other, _)) = ops.iter().find(|(id, _)| id.vol() != vol) {
            return Err(StorageError::Invalid(format!(
                "cluster {other} is not on volume {vol} like the group's first cluster: a \
                 commit group of one volume holds clusters of that volume only"
            )));
        }
        let ops = ops.into_iter().map(|(id, b)| (id.clu(), b)).collect();
        self.volume(vol)?.clu_commit_group(ops)
    }

    /// Unmounts everything (the mount table is kept: volumes come back at the next start).
    pub fn close(self) -> Result<()> {
        let vols: Vec<Arc<dyn Volume>> = write(&self.mounted).drain().map(|(_, v)| v).collect();
        vols.iter().try_for_each(|v| v.unmount())
    }
}
