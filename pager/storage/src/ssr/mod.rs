//! The fast local storage service (SSR, thesis H3/H9): a volume is a directory, a cluster a file.
//!
//! ```text
//! <location>/volume.meta          the volume header (id, capacity, cluster number high-water)
//! <location>/journal/             the volume's write-ahead journal (crate `journal`)
//! <location>/clusters/XXXX.data   a cluster's pages, preallocated
//! <location>/clusters/XXXX.sums   their checksums, one CRC-32C per page (see [`sums`])
//! <location>/clusters/XXXX.desc   its descriptor
//! ```

mod clusters;
mod group;
mod sums;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use clu_proto::{CluId, ClusterId, ClusterKind, VolId, PAGE_SIZE};
use clu_sys::buf::PageBuf;
use clu_sys::sync::{lock, read, write};
use journal::{Batch, Journal, JournalConfig, LogReader, Lsn, PageRun, Retention};

pub use self::clusters::NOTE;
use self::clusters::{Cluster, ClusterTable};
use self::sums::PageSums;
use crate::fsutil::{preallocate, sync_dir, write_atomic};
use crate::{
    ClusterDesc, ClusterStats, Grants, Result, StorageError, StorageService, Volume, VolumeInfo,
    VolumeMeta, VolumeParams,
};

const PAGE: u64 = PAGE_SIZE as u64;
const META: &str = "volume.meta";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A cluster's size must be at least a page and fit in a file.
fn check_size(npages: u64) -> Result<()> {
    if npages == 0 || npages > u64::MAX / PAGE {
        return Err(StorageError::Invalid(format!(
            "a cluster needs 1 or more pages, not {npages}"
        )));
    }
    Ok(())
}

fn read_meta(location: &Path) -> Result<VolumeMeta> {
    let path = location.join(META);
    let bytes = fs::read(&path).map_err(|e| StorageError::io(&path, e))?;
    VolumeMeta::decode(&bytes).map_err(|r| StorageError::corrupt(&path, r.to_string()))
}

/// The fast local service.
#[derive(Clone, Debug, Default)]
pub struct Ssr {
    /// Journal settings for the volumes it mounts.
    pub journal: JournalConfig,
}

impl Ssr {
    /// The name the catalog records for its volumes.
    pub const NAME: &'static str = "ssr";
}

impl StorageService for Ssr {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn vol_create(&self, vol: VolId, location: &Path, params: &VolumeParams) -> Result<()> {
        if location.join(META).exists() {
            return Err(StorageError::corrupt(
                location,
                "a volume already exists there",
            ));
        }
        fs::create_dir_all(location.join("clusters")).map_err(|e| StorageError::io(location, e))?;
        Journal::create_at(
            &location.join("journal"),
            &self.journal,
            params.first_log_file.max(1),
        )?;
        let meta = VolumeMeta {
            vol,
            capacity_pages: params.capacity_pages,
            last_clu: 0,
            allocated_any: false,
            created: now(),
        };
        // The header is written last: a directory without one is not a volume.
        write_atomic(&location.join(META), &meta.encode())?;
        if let Some(parent) = location.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    fn vol_resize(&self, location: &Path, capacity_pages: u64) -> Result<()> {
        let mut meta = read_meta(location)?;
        meta.capacity_pages = capacity_pages;
        write_atomic(&location.join(META), &meta.encode())
    }

    fn vol_delete(&self, vol: VolId, location: &Path, force: bool) -> Result<()> {
        let meta = read_meta(location)?;
        if meta.vol != vol {
            return Err(StorageError::corrupt(
                location.join(META),
                format!("belongs to volume {}", meta.vol),
            ));
        }
        let clusters = fs::read_dir(location.join("clusters"))
            .map_err(|e| StorageError::io(location, e))?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".desc"))
            })
            .count();
        if clusters > 0 && !force {
            return Err(StorageError::VolumeNotEmpty { vol, clusters });
        }
        // The header goes first: from then on this is no longer a volume (thesis Q10: a crash
        // during deletion is harmless, the volume was being deleted anyway).
        fs::remove_file(location.join(META)).map_err(|e| StorageError::io(location, e))?;
        fs::remove_dir_all(location).map_err(|e| StorageError::io(location, e))?;
        if let Some(parent) = location.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    fn vol_mount(&self, vol: VolId, location: &Path) -> Result<Box<dyn Volume>> {
        Ok(Box::new(LocalVolume::mount(
            vol,
            location,
            self.journal.clone(),
        )?))
    }
}

/// A mounted local volume.
pub struct LocalVolume {
    vol: VolId,
    location: PathBuf,
    meta: Mutex<VolumeMeta>,
    clusters: Arc<ClusterTable>,
    journal: RwLock<Option<Journal>>,
}

impl LocalVolume {
    /// Mounts: loads the clusters, then opens the journal, which replays what was validated but
    /// not applied.
    pub fn mount(vol: VolId, location: &Path, config: JournalConfig) -> Result<LocalVolume> {
        let meta = read_meta(location)?;
        if meta.vol != vol {
            return Err(StorageError::corrupt(
                location.join(META),
                format!("belongs to volume {}, not {vol}", meta.vol),
            ));
        }
        let clusters = Arc::new(ClusterTable::load(vol, &location.join("clusters"))?);
        let (journal, report) = Journal::open(&location.join("journal"), config, clusters.clone())?;
        tracing::info!(%vol, location = %location.display(), replayed = report.replayed_ops,
            truncated = report.truncated_bytes, "volume mounted");
        let v = LocalVolume {
            vol,
            location: location.to_owned(),
            meta: Mutex::new(meta),
            clusters,
            journal: RwLock::new(Some(journal)),
        };
        v.resolve_in_doubt()?;
        Ok(v)
    }

    fn with_journal<T>(&self, f: impl FnOnce(&Journal) -> Result<T>) -> Result<T> {
        let guard = read(&self.journal);
        match guard.as_ref() {
            Some(j) => f(j),
            None => Err(StorageError::NotMounted(self.vol)),
        }
    }

    /// Commits `batch` of cluster `clu` and then the volume's note (one page: `note`, padded
    /// with zeros), validated by one `fdatasync`, and returns once they are: they are applied
    /// afterwards, as [`Volume::clu_commit`] does. After a crash the note is never newer than
    /// the pages (it may be older: the pages are kept, the note is not). See
    /// [`Journal::commit_many`].
    pub fn clu_commit_noted(&self, clu: CluId, batch: Batch, note: &[u8]) -> Result<Lsn> {
        let c = self.clusters.get(clu)?;
        let desc = *lock(&c.desc);
        for run in batch.runs() {
            self.range(&desc, run.first_page, run.pages.len())?;
        }
        let mut page = PageBuf::zeroed(PAGE_SIZE);
        page.copy_from_slice(&note_page(note)?);
        let mut note_batch = Batch::new(page);
        note_batch.push(0, 0, 1)?;
        let _serial = lock(&c.commit);
        let lsns = self.with_journal(|j| {
            Ok(j.commit_batches(vec![(desc.id.0, batch), (NOTE, note_batch)])?)
        })?;
        Ok(lsns.first().copied().unwrap_or_default())
    }

    /// Writes the volume's note alone (durable when this returns).
    pub fn write_note(&self, note: &[u8]) -> Result<()> {
        let page = note_page(note)?;
        let run = [PageRun {
            first_page: 0,
            pages: &page,
        }];
        self.with_journal(|j| Ok(j.commit(NOTE, &run)?))?;
        Ok(())
    }

    /// The volume's note as last written (`None` if it never was), padded to a page.
    pub fn note(&self) -> Result<Option<Vec<u8>>> {
        self.clusters.note()
    }

    /// For replication: keeps the last `tail_bytes` of operations in memory for the log's
    /// readers, and calls `hook` after each write to the log, before its sync (see
    /// [`Journal::keep_tail`], [`Journal::on_written`]).
    pub fn on_written(&self, tail_bytes: usize, hook: Arc<dyn Fn() + Send + Sync>) -> Result<()> {
        self.with_journal(|j| {
            j.keep_tail(tail_bytes);
            j.on_written(hook);
            Ok(())
        })
    }

    /// The end of what was written to the journal's log, validated or not yet.
    pub fn written_lsn(&self) -> Result<Lsn> {
        self.with_journal(|j| Ok(j.written_lsn()))
    }

    /// A reader of the journal's validated operations (replication).
    pub fn log_reader(&self) -> Result<LogReader> {
        self.with_journal(|j| Ok(j.reader()))
    }

    /// The end of the journal's log (`logLSN`), without the rest of [`Volume::info`] (which
    /// lists every cluster).
    pub fn log_lsn(&self) -> Result<Lsn> {
        self.with_journal(|j| Ok(j.log_lsn()))
    }

    /// Every operation before this LSN is applied to the cluster files.
    pub fn applied_lsn(&self) -> Result<Lsn> {
        self.with_journal(|j| Ok(j.applied_lsn()))
    }

    /// Keeps the log files from `from` on until the hold advances or is dropped.
    pub fn retain_from(&self, from: Lsn) -> Result<Retention> {
        self.with_journal(|j| Ok(j.retain_from(from)?))
    }

    fn used_pages(&self) -> u64 {
        self.clusters.descs().iter().map(|d| d.npages).sum()
    }

    fn check_quota(&self, meta: &VolumeMeta, wanted: u64) -> Result<()> {
        if meta.capacity_pages == 0 {
            return Ok(());
        }
        let free = meta.capacity_pages.saturating_sub(self.used_pages());
        if wanted > free {
            return Err(StorageError::Quota {
                vol: self.vol,
                wanted,
                free,
            });
        }
        Ok(())
    }

    fn range(&self, desc: &ClusterDesc, first: u64, bytes: usize) -> Result<()> {
        if bytes % PAGE_SIZE != 0 {
            return Err(StorageError::Invalid(format!(
                "{bytes} bytes is not a whole number of pages"
            )));
        }
        let end = first.saturating_add((bytes / PAGE_SIZE) as u64);
        if end > desc.npages {
            return Err(StorageError::OutOfRange {
                id: desc.id,
                first,
                end,
                npages: desc.npages,
            });
        }
        Ok(())
    }

    /// Allocates the next cluster number after the high-water mark, skipping numbers in use.
    fn allocate(&self, meta: &mut VolumeMeta) -> Result<CluId> {
        let start = if meta.allocated_any {
            meta.last_clu.wrapping_add(1)
        } else {
            0
        };
        let mut n = start;
        loop {
            if !self.clusters.contains(n) {
                meta.last_clu = n;
                meta.allocated_any = true;
                return Ok(CluId(n));
            }
            n = n.wrapping_add(1);
            if n == start {
                return Err(StorageError::NoClusterIds(self.vol));
            }
        }
    }

    /// Creates cluster number `clu` (its number already reserved).
    fn create_numbered(
        &self,
        clu: CluId,
        npages: u64,
        owner: u32,
        kind: ClusterKind,
    ) -> Result<ClusterDesc> {
        let dir = self.clusters.dir();
        let path = ClusterTable::data_path(dir, clu);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StorageError::io(&path, e))?;
        if let Err(e) = preallocate(&file, &path, 0, npages * PAGE) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        let spath = ClusterTable::sums_path(dir, clu);
        let sums = match PageSums::create(&spath, npages) {
            Ok(sums) => sums,
            Err(e) => {
                let _ = fs::remove_file(&path);
                let _ = fs::remove_file(&spath);
                return Err(StorageError::io(&spath, e));
            }
        };
        let desc = ClusterDesc {
            id: ClusterId::new(self.vol, clu),
            npages,
            owner,
            kind,
            created: now(),
            stats: ClusterStats::default(),
            grants: Grants::default(),
        };
        let cluster = Cluster {
            file,
            sums: RwLock::new(sums),
            desc: Mutex::new(desc),
            commit: Mutex::new(()),
        };
        // The descriptor is the commit point of creation.
        if let Err(e) = write_atomic(&ClusterTable::desc_path(dir, clu), &desc.encode()) {
            let _ = fs::remove_file(&path);
            let _ = fs::remove_file(&spath);
            return Err(e);
        }
        self.clusters.insert(clu, cluster);
        Ok(desc)
    }

    /// A backup's copy of cluster `clu` (numbered as on the primary): created with zero pages
    /// (owned by `owner`, of `kind`) if it does not exist, grown if it has fewer than `npages`.
    pub fn clu_ensure(
        &self,
        clu: CluId,
        npages: u64,
        owner: u32,
        kind: ClusterKind,
    ) -> Result<ClusterDesc> {
        match self.clusters.get(clu) {
            Ok(c) => {
                let have = lock(&c.desc).npages;
                if have < npages {
                    self.clu_resize(clu, npages - have)
                } else {
                    Ok(*lock(&c.desc))
                }
            }
            Err(_) => {
                check_size(npages)?;
                self.create_numbered(clu, npages, owner, kind)
            }
        }
    }
}

impl Volume for LocalVolume {
    fn id(&self) -> VolId {
        self.vol
    }

    fn info(&self) -> VolumeInfo {
        let journal = read(&self.journal);
        let (log_lsn, durable_lsn) = journal
            .as_ref()
            .map_or((Lsn::default(), Lsn::default()), |j| {
                (j.log_lsn(), j.durable_lsn())
            });
        let descs = self.clusters.descs();
        VolumeInfo {
            vol: self.vol,
            clusters: descs.len(),
            used_pages: descs.iter().map(|d| d.npages).sum(),
            capacity_pages: lock(&self.meta).capacity_pages,
            log_lsn,
            durable_lsn,
        }
    }

    fn set_capacity(&self, capacity_pages: u64) -> Result<()> {
        let mut meta = lock(&self.meta);
        let mut new = meta.clone();
        new.capacity_pages = capacity_pages;
        write_atomic(&self.location.join(META), &new.encode())?;
        *meta = new;
        Ok(())
    }

    fn checkpoint(&self) -> Result<()> {
        self.with_journal(|j| Ok(j.checkpoint()?))
    }

    fn unmount(&self) -> Result<()> {
        let mut guard = write(&self.journal);
        if let Some(j) = guard.as_ref() {
            // A group prepared here and not decided yet belongs to a commit under way.
            if let Some((txid, _)) = j.in_doubt().first() {
                return Err(StorageError::Invalid(format!(
                    "volume {} takes part in a commit group under way (transaction {txid:#x}); \
                     retry the unmount once it ends",
                    self.vol
                )));
            }
        }
        match guard.take() {
            Some(j) => Ok(j.close()?),
            None => Err(StorageError::NotMounted(self.vol)),
        }
    }

    fn clu_create(&self, npages: u64, owner: u32, kind: ClusterKind) -> Result<ClusterDesc> {
        self.with_journal(|_| Ok(()))?;
        check_size(npages)?;
        let mut meta = lock(&self.meta);
        self.check_quota(&meta, npages)?;
        let mut new_meta = meta.clone();
        let clu = self.allocate(&mut new_meta)?;
        // The high-water mark is durable before the number is used: no number is handed out twice.
        write_atomic(&self.location.join(META), &new_meta.encode())?;
        *meta = new_meta;
        drop(meta);
        self.create_numbered(clu, npages, owner, kind)
    }

    fn clu_get_desc(&self, clu: CluId) -> Result<ClusterDesc> {
        Ok(*lock(&self.clusters.get(clu)?.desc))
    }

    fn clu_update(&self, clu: CluId, f: &mut dyn FnMut(&mut ClusterDesc)) -> Result<ClusterDesc> {
        let c = self.clusters.get(clu)?;
        let _serial = lock(&c.commit);
        let old = *lock(&c.desc);
        let mut desc = old;
        f(&mut desc);
        // Only the owner's fields change here; identity and size have their own primitives.
        desc.id = old.id;
        desc.npages = old.npages;
        self.clusters.store_desc(&c, desc)?;
        Ok(desc)
    }

    fn clu_list(&self) -> Vec<ClusterDesc> {
        self.clusters.descs()
    }

    fn clu_destroy(&self, clu: CluId) -> Result<()> {
        let c = self.clusters.get(clu)?;
        let _serial = lock(&c.commit);
        // No operation for this cluster may be left to replay once its files are gone.
        self.with_journal(|j| {
            j.drain()?;
            Ok(j.checkpoint()?)
        })?;
        let dir = self.clusters.dir();
        let desc = ClusterTable::desc_path(dir, clu);
        fs::remove_file(&desc).map_err(|e| StorageError::io(&desc, e))?;
        let data = ClusterTable::data_path(dir, clu);
        fs::remove_file(&data).map_err(|e| StorageError::io(&data, e))?;
        let sums = ClusterTable::sums_path(dir, clu);
        fs::remove_file(&sums).map_err(|e| StorageError::io(&sums, e))?;
        let _ = fs::remove_file(ClusterTable::history_path(dir, clu));
        sync_dir(dir)?;
        self.clusters.remove(clu);
        Ok(())
    }

    fn clu_resize(&self, clu: CluId, add_pages: u64) -> Result<ClusterDesc> {
        let c = self.clusters.get(clu)?;
        let _serial = lock(&c.commit);
        let mut desc = *lock(&c.desc);
        let npages = desc
            .npages
            .checked_add(add_pages)
            .filter(|n| *n <= u64::MAX / PAGE)
            .ok_or_else(|| StorageError::Invalid(format!("cannot add {add_pages} pages")))?;
        self.check_quota(&lock(&self.meta), add_pages)?;
        // Grow the file first (a crash leaves a longer file, which is harmless), then the
        // descriptor, which makes the new pages part of the cluster.
        let path = ClusterTable::data_path(self.clusters.dir(), clu);
        preallocate(&c.file, &path, desc.npages * PAGE, npages * PAGE)?;
        let spath = ClusterTable::sums_path(self.clusters.dir(), clu);
        write(&c.sums)
            .grow(npages)
            .map_err(|e| StorageError::io(&spath, e))?;
        desc.npages = npages;
        self.clusters.store_desc(&c, desc)?;
        Ok(desc)
    }

    fn clu_read(&self, clu: CluId, first_page: u64, buf: &mut [u8]) -> Result<()> {
        let c = self.clusters.get(clu)?;
        let desc = *lock(&c.desc);
        self.range(&desc, first_page, buf.len())?;
        // A commit that returned may not be in the file yet.
        self.with_journal(|j| Ok(j.wait_applied(desc.id.0)?))?;
        let path = ClusterTable::data_path(self.clusters.dir(), clu);
        let sums = read(&c.sums);
        c.file
            .read_exact_at(buf, first_page * PAGE)
            .map_err(|e| StorageError::io(&path, e))?;
        sums.verify(first_page, buf).map_err(|m| {
            tracing::error!(cluster = %desc.id, page = m.page, path = %path.display(),
                "a stored page fails its checksum; it is not served");
            StorageError::corrupt(
                &path,
                format!(
                    "page {} of cluster {} fails its checksum (recorded {:08x}, read {:08x})",
                    m.page, desc.id, m.stored, m.read
                ),
            )
        })
    }

    fn clu_prefetch(&self, clu: CluId, first_page: u64, npages: u64) {
        if let Ok(c) = self.clusters.get(clu) {
            // The kernel reads the range into the page cache in the background (no copy here).
            let _ = nix::fcntl::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&c.file),
                (first_page * PAGE) as i64,
                (npages * PAGE) as i64,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
            );
        }
    }

    fn clu_uncache(&self, clu: CluId, first_page: u64, npages: u64) {
        if let Ok(c) = self.clusters.get(clu) {
            // Clean cached pages of the range go at once (dirty ones, not yet written back
            // by the journal's application, stay until they are).
            let _ = nix::fcntl::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&c.file),
                (first_page * PAGE) as i64,
                (npages * PAGE) as i64,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    }

    fn clu_history(&self, clu: CluId) -> Vec<u32> {
        if self.clusters.get(clu).is_err() {
            return Vec::new();
        }
        let path = ClusterTable::history_path(self.clusters.dir(), clu);
        fs::read(&path)
            .ok()
            .and_then(|b| crate::history::decode(&b))
            .unwrap_or_default()
    }

    fn clu_set_history(&self, clu: CluId, pages: &[u32]) -> Result<()> {
        self.clusters.get(clu)?;
        let path = ClusterTable::history_path(self.clusters.dir(), clu);
        if pages.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(StorageError::io(&path, e))
                }
                _ => Ok(()),
            };
        }
        write_atomic(&path, &crate::history::encode(pages))
    }

    fn clu_write(&self, clu: CluId, runs: &[PageRun<'_>]) -> Result<Lsn> {
        let c = self.clusters.get(clu)?;
        let desc = *lock(&c.desc);
        for run in runs {
            self.range(&desc, run.first_page, run.pages.len())?;
            if run.pages.is_empty() {
                return Err(StorageError::Invalid("an empty run".into()));
            }
        }
        let _serial = lock(&c.commit);
        self.with_journal(|j| Ok(j.commit(desc.id.0, runs)?))
    }

    fn clu_commit_group(&self, ops: Vec<(CluId, Batch)>) -> Result<Lsn> {
        self.clu_commit_group_noted(ops, None)
    }

    fn clu_prepare_group(
        &self,
        ops: Vec<(CluId, Batch)>,
        txid: u64,
        coordinator: VolId,
    ) -> Result<()> {
        self.prepare_group(ops, txid, coordinator)
    }

    fn clu_decide_group(&self, txid: u64, commit: bool) -> Result<()> {
        self.with_journal(|j| Ok(j.decide(txid, commit)?))
    }

    fn clu_decide_group_unsynced(&self, txid: u64, commit: bool) -> Result<Option<Lsn>> {
        self.with_journal(|j| Ok(j.decide_unsynced(txid, commit)?))
    }

    fn clu_sync_to(&self, lsn: Lsn) -> Result<()> {
        self.with_journal(|j| Ok(j.sync_to(lsn)?))
    }

    fn record_decision(&self, txid: u64) -> Result<()> {
        self.with_journal(|j| Ok(j.record_decision(txid)?))
    }

    fn forget_decision(&self, txid: u64) -> Result<()> {
        self.with_journal(|j| Ok(j.forget_decision(txid)?))
    }

    fn clu_commit(&self, clu: CluId, batch: Batch) -> Result<Lsn> {
        let c = self.clusters.get(clu)?;
        let desc = *lock(&c.desc);
        for run in batch.runs() {
            self.range(&desc, run.first_page, run.pages.len())?;
        }
        let _serial = lock(&c.commit);
        // Returns once validated in the log; the journal applies it to the file afterwards,
        // and `clu_read` waits for that.
        self.with_journal(|j| Ok(j.commit_batch(desc.id.0, batch)?))
    }
}

/// `note` padded to one page; refused if longer.
fn note_page(note: &[u8]) -> Result<Vec<u8>> {
    if note.len() > PAGE_SIZE {
        return Err(StorageError::Invalid(format!(
            "a volume's note is at most {PAGE_SIZE} bytes, not {}",
            note.len()
        )));
    }
    let mut page = vec![0u8; PAGE_SIZE];
    page[..note.len()].copy_from_slice(note);
    Ok(page)
}

impl Drop for LocalVolume {
    fn drop(&mut self) {
        if let Some(j) = write(&self.journal).take() {
            if let Err(e) = j.close() {
                tracing::warn!(vol = %self.vol, error = %e, "closing the journal failed; the next mount replays it");
            }
        }
    }
}
