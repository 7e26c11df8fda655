//! The primary side of a reliable volume: the reliable storage service (SSF, thesis H4) in the
//! driver table. A reliable volume is a local volume plus `goofy.conf`; after each validated
//! commit its modified whole pages go to every backup in parallel (thesis M5, M9, M11) through
//! the backup's [`link`](crate::link), and `clu_Commit` does not wait unless the volume asks for
//! `sync K` acknowledgements.
//!
//! Fencing: at mount, the volume waits (a few seconds at most) for each backup's first answer.
//! A backup that knows a newer epoch means this primary was replaced by `pager vol restore`
//! elsewhere: the volume stays mounted, so that `pager status` shows why, but every mapping,
//! read and commit on it fails with an error saying so. The same happens if a backup says so
//! later.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use clu_proto::{CluId, ClusterKind, VolId};
use clu_storage::ssr::{LocalVolume, Ssr};
use clu_storage::{
    ClusterDesc, Result, StorageError, StorageService, Volume, VolumeInfo, VolumeParams,
};
use clu_sys::sync::lock;
use journal::{Batch, Lsn, PageRun};
use tracing::warn;

use crate::conf::Conf;
use crate::link::{self, Link, LinkState, Shared};
use crate::restore::{self, Plan, Restorations};
use crate::{GoofyConfig, GoofyError};

/// The operations a reliable volume keeps in memory for its links, in bytes of pages: a
/// commit's pages are sent from there, not read back from the disk (the log is written by
/// direct I/O). Past it, a link catching up reads the log files.
const TAIL_BYTES: usize = 8 << 20;

/// A reliable volume's replication, for `pager status`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replication {
    /// The volume's name.
    pub name: String,
    /// The volume's epoch.
    pub epoch: u64,
    /// Why it is fenced (a backup knows a newer epoch), if it is.
    pub fenced: Option<String>,
    /// The end of its log.
    pub log_lsn: Lsn,
    /// Its backups.
    pub backups: Vec<BackupStatus>,
    /// For a restored volume, what its restoration lost (empty otherwise).
    pub restored: String,
}

/// One backup of a reliable volume, as its primary sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackupStatus {
    /// `HOST:PORT`.
    pub addr: String,
    /// In sync, catching up, copying, stale, unreachable, fenced.
    pub state: &'static str,
    /// Why it is unreachable or fenced.
    pub detail: Option<String>,
    /// Every operation before this LSN is acknowledged.
    pub acked: Lsn,
    /// Bytes of log not acknowledged yet.
    pub behind_bytes: u64,
    /// Age of the oldest commit not acknowledged yet, in seconds.
    pub behind_secs: f64,
    /// Median propagation lag (commit to acknowledgement) of the latest operations, and how
    /// many operations it covers.
    pub lag_median_ms: Option<(f64, usize)>,
    /// A full copy's progress: pages sent, pages in all.
    pub copy: Option<(u64, u64)>,
}

/// What a new reliable volume is made of (`pager vol create NAME --backup ... --sync K`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReliableSpec {
    /// Backup servers, `HOST:PORT`.
    pub backups: Vec<String>,
    /// Acknowledgements a commit waits for.
    pub sync: u32,
}

/// The state of a mounted reliable volume: its local part, what its links share, the links.
struct Reliable {
    inner: Arc<LocalVolume>,
    shared: Arc<Shared>,
    links: Vec<Arc<Link>>,
    sync_timeout: Duration,
}

/// A mounted reliable volume: a local volume whose commits are propagated.
pub struct ReliableVolume(Arc<Reliable>);

impl Reliable {
    fn check(&self) -> Result<()> {
        match &*lock(&self.shared.fenced) {
            Some(why) => Err(StorageError::Fenced {
                vol: self.inner.id(),
                why: why.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Waits until `want` backups acknowledged the operation at `lsn`.
    fn wait_acks(&self, lsn: Lsn, want: usize) -> Result<()> {
        let deadline = Instant::now() + self.sync_timeout;
        loop {
            let seen = self.shared.seen();
            self.check()?;
            let have = self
                .links
                .iter()
                .filter(|l| lock(&l.inner).acked > lsn)
                .count();
            if have >= want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StorageError::Invalid(format!(
                    "commit {lsn} is stored here but only {have} of the {want} backup acknowledgements it waits for came within {}s; see `pager status`",
                    self.sync_timeout.as_secs()
                )));
            }
            self.shared.wait(seen, Duration::from_millis(100));
        }
    }

    fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.notify();
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    fn replication(&self) -> Replication {
        let log_lsn = self.shared.log_end();
        let times: Vec<(Lsn, Instant)> = lock(&self.shared.times).iter().copied().collect();
        let backups = self
            .links
            .iter()
            .map(|link| {
                let l = lock(&link.inner);
                let mut lags: Vec<f64> = l.lags.iter().copied().collect();
                lags.sort_by(f64::total_cmp);
                let behind_secs = times
                    .iter()
                    .find(|(lsn, _)| *lsn >= l.acked)
                    .map_or(0.0, |(_, t)| t.elapsed().as_secs_f64());
                BackupStatus {
                    addr: link.addr.clone(),
                    state: l.state.word(),
                    detail: match &l.state {
                        LinkState::Unreachable(why) | LinkState::Fenced(why) => Some(why.clone()),
                        _ => None,
                    },
                    acked: l.acked,
                    behind_bytes: self.shared.distance(l.acked, log_lsn),
                    behind_secs,
                    lag_median_ms: lags.get(lags.len() / 2).map(|m| (m * 1e3, lags.len())),
                    copy: l.copy,
                }
            })
            .collect();
        Replication {
            name: self.shared.name.clone(),
            epoch: self.shared.conf.epoch,
            fenced: lock(&self.shared.fenced).clone(),
            log_lsn,
            backups,
            restored: self.shared.conf.restored.clone(),
        }
    }
}

impl Drop for ReliableVolume {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl ReliableVolume {
    /// After operation `lsn` is validated on this site: wakes the links, and with `--sync K`
    /// waits for K backups to have it.
    fn propagated(&self, lsn: Lsn) -> Result<Lsn> {
        let r = &self.0;
        r.shared.committed(lsn);
        r.shared.notify();
        match r.shared.conf.sync {
            0 => Ok(lsn),
            k => r.wait_acks(lsn, k as usize).map(|()| lsn),
        }
    }
}

impl Volume for ReliableVolume {
    fn id(&self) -> VolId {
        self.0.inner.id()
    }
    fn info(&self) -> VolumeInfo {
        self.0.inner.info()
    }
    fn set_capacity(&self, capacity_pages: u64) -> Result<()> {
        self.0.inner.set_capacity(capacity_pages)
    }
    fn checkpoint(&self) -> Result<()> {
        self.0.inner.checkpoint()
    }
    fn unmount(&self) -> Result<()> {
        self.0.stop();
        self.0.inner.unmount()
    }
    fn clu_create(&self, npages: u64, owner: u32, kind: ClusterKind) -> Result<ClusterDesc> {
        self.0.check()?;
        self.0.inner.clu_create(npages, owner, kind)
    }
    fn clu_get_desc(&self, clu: CluId) -> Result<ClusterDesc> {
        self.0.check()?;
        self.0.inner.clu_get_desc(clu)
    }
    fn clu_update(&self, clu: CluId, f: &mut dyn FnMut(&mut ClusterDesc)) -> Result<ClusterDesc> {
        self.0.check()?;
        self.0.inner.clu_update(clu, f)
    }
    fn clu_list(&self) -> Vec<ClusterDesc> {
        self.0.inner.clu_list()
    }
    fn clu_destroy(&self, clu: CluId) -> Result<()> {
        self.0.check()?;
        self.0.inner.clu_destroy(clu)?;
        // The links tell the backups; until every one acknowledged it, the destruction is
        // recorded in goofy.conf (a restart tells them again).
        self.0.shared.destroyed(clu)
    }
    fn clu_resize(&self, clu: CluId, add_pages: u64) -> Result<ClusterDesc> {
        self.0.check()?;
        self.0.inner.clu_resize(clu, add_pages)
    }
    fn clu_read(&self, clu: CluId, first_page: u64, buf: &mut [u8]) -> Result<()> {
        self.0.check()?;
        self.0.inner.clu_read(clu, first_page, buf)
    }
    fn clu_write(&self, clu: CluId, runs: &[PageRun<'_>]) -> Result<Lsn> {
        let r = &self.0;
        r.check()?;
        let lsn = r.inner.clu_write(clu, runs)?;
        self.propagated(lsn)
    }
    fn clu_commit(&self, clu: CluId, batch: Batch) -> Result<Lsn> {
        let r = &self.0;
        r.check()?;
        let lsn = r.inner.clu_commit(clu, batch)?;
        self.propagated(lsn)
    }
    fn clu_commit_group(&self, ops: Vec<(CluId, Batch)>) -> Result<Lsn> {
        let r = &self.0;
        r.check()?;
        // Shipped as a unit: the backups store the group's operations together.
        let lsn = r.inner.clu_commit_group(ops)?;
        self.propagated(lsn)
    }
    fn clu_prefetch(&self, clu: CluId, first_page: u64, npages: u64) {
        self.0.inner.clu_prefetch(clu, first_page, npages)
    }
    fn clu_uncache(&self, clu: CluId, first_page: u64, npages: u64) {
        self.0.inner.clu_uncache(clu, first_page, npages)
    }
    fn clu_history(&self, clu: CluId) -> Vec<u32> {
        self.0.inner.clu_history(clu)
    }
    fn clu_set_history(&self, clu: CluId, pages: &[u32]) -> Result<()> {
        self.0.inner.clu_set_history(clu, pages)
    }
}

/// The reliable storage service: local volumes with backups. The daemon keeps a handle of it
/// beside the driver table, for what only this service knows (replication status,
/// restorations).
pub struct Ssf {
    config: GoofyConfig,
    /// The volumes this service mounted, for [`Ssf::replication`].
    mounted: Mutex<HashMap<VolId, Weak<Reliable>>>,
    /// Restorations under way, for `pager status`.
    restorations: Restorations,
}

impl std::fmt::Debug for Ssf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ssf").field("config", &self.config).finish()
    }
}

fn random_uid() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    u64::from_le_bytes(b)
}

impl Ssf {
    /// The name the catalog records for its volumes.
    pub const NAME: &'static str = "ssf";

    /// The service, with its settings.
    pub fn new(config: GoofyConfig) -> Ssf {
        Ssf {
            config,
            mounted: Mutex::new(HashMap::new()),
            restorations: Restorations::default(),
        }
    }

    fn local(&self) -> Ssr {
        Ssr {
            journal: self.config.journal.clone(),
        }
    }

    /// Creates a new, empty reliable volume at `location` (what `Storage::vol_create_by` calls
    /// for `pager vol create NAME --backup ...`).
    pub fn create(
        &self,
        vol: VolId,
        location: &Path,
        params: &VolumeParams,
        spec: &ReliableSpec,
    ) -> std::result::Result<(), GoofyError> {
        self.config.transport.check()?;
        if spec.backups.is_empty() {
            return Err(GoofyError::Invalid(
                "a reliable volume needs at least one --backup HOST:PORT".into(),
            ));
        }
        if spec.sync as usize > spec.backups.len() {
            return Err(GoofyError::Invalid(format!(
                "--sync {} waits for more acknowledgements than the {} backups can give",
                spec.sync,
                spec.backups.len()
            )));
        }
        self.local().vol_create(vol, location, params)?;
        let conf = Conf {
            uid: random_uid(),
            name: params.name.clone(),
            epoch: 1,
            sync: spec.sync,
            backups: spec.backups.clone(),
            origin: (0, Lsn::default()),
            source: String::new(),
            destroyed: Vec::new(),
            restored: String::new(),
        };
        Ok(conf.store(location)?)
    }

    /// Steps 1 to 3 of a restoration (see [`crate::restore`]): inquire, fence, choose.
    pub fn prepare_restore(
        &self,
        name: &str,
        from: &str,
        at_least: u64,
    ) -> std::result::Result<Plan, GoofyError> {
        self.config.transport.check()?;
        restore::prepare(&self.config.transport, name, from, at_least)
    }

    /// Step 4: builds the volume at `location` from the plan's backup (what
    /// `Storage::vol_create_by` calls for `pager vol restore`).
    pub fn create_restored(
        &self,
        vol: VolId,
        location: &Path,
        params: &VolumeParams,
        plan: &Plan,
    ) -> std::result::Result<(), GoofyError> {
        let params = VolumeParams {
            first_log_file: plan.origin.1.file + 1,
            ..params.clone()
        };
        self.local().vol_create(vol, location, &params)?;
        let volume = LocalVolume::mount(vol, location, self.config.journal.clone())?;
        restore::fetch(&self.config.transport, plan, &volume, &self.restorations)?;
        volume.unmount()?;
        let conf = Conf {
            uid: plan.uid,
            name: plan.name.clone(),
            epoch: plan.epoch,
            sync: plan.sync,
            backups: plan.backups.clone(),
            origin: plan.origin,
            source: plan.source.clone(),
            destroyed: Vec::new(),
            restored: format!("from {}: {}", plan.source, plan.loss),
        };
        Ok(conf.store(location)?)
    }

    /// The restorations under way.
    pub fn restorations(&self) -> Vec<restore::Progress> {
        self.restorations.list()
    }

    /// The replication of every reliable volume mounted now, by volume.
    pub fn replication(&self) -> Vec<(VolId, Replication)> {
        let mut mounted = lock(&self.mounted);
        mounted.retain(|_, r| r.upgrade().is_some_and(|r| !r.stopped()));
        let mut out: Vec<(VolId, Replication)> = mounted
            .iter()
            .filter_map(|(vol, r)| Some((*vol, r.upgrade()?.replication())))
            .collect();
        out.sort_by_key(|(v, _)| *v);
        out
    }

    fn start(&self, vol: VolId, location: &Path, conf: Conf, inner: LocalVolume) -> ReliableVolume {
        let inner = Arc::new(inner);
        let name = conf.name.clone();
        let links: Vec<Arc<Link>> = conf
            .backups
            .iter()
            .map(|a| Arc::new(Link::new(a)))
            .collect();
        let shared = Arc::new(Shared {
            name: name.clone(),
            location: location.to_owned(),
            destroyed: Mutex::new(
                conf.destroyed
                    .iter()
                    .map(|c| (*c, Default::default()))
                    .collect(),
            ),
            conf,
            volume: inner.clone(),
            stop: AtomicBool::new(false),
            fenced: Mutex::new(None),
            progress: (Mutex::new(0), Condvar::new()),
            times: Mutex::new(VecDeque::new()),
            retain_bytes: self.config.retain_bytes,
            rotate_bytes: self.config.journal.rotate_bytes,
            connect_timeout: self.config.connect_timeout,
            transport: self.config.transport.clone(),
            run_start: inner.written_lsn().unwrap_or_default(),
        });
        // The links hear of each operation when it is written, and read it from memory.
        {
            let weak = Arc::downgrade(&shared);
            let hook = Arc::new(move || {
                if let Some(s) = weak.upgrade() {
                    s.notify();
                }
            });
            if let Err(e) = inner.on_written(TAIL_BYTES, hook) {
                warn!(volume = %name, "the links will read the log from its files: {e}");
            }
        }
        for l in &links {
            link::start(shared.clone(), l.clone());
        }
        let r = Arc::new(Reliable {
            inner,
            shared,
            links,
            sync_timeout: self.config.sync_timeout,
        });
        // The fencing check: hear from every backup (or fail to reach it) before serving.
        let deadline = Instant::now() + self.config.first_contact;
        loop {
            let seen = r.shared.seen();
            if Instant::now() >= deadline
                || lock(&r.shared.fenced).is_some()
                || r.links.iter().all(|l| lock(&l.inner).tried)
            {
                break;
            }
            r.shared.wait(seen, Duration::from_millis(50));
        }
        if let Some(why) = &*lock(&r.shared.fenced) {
            warn!(volume = %name, "mounted but fenced: {why}");
        }
        lock(&self.mounted).insert(vol, Arc::downgrade(&r));
        ReliableVolume(r)
    }
}

impl StorageService for Ssf {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn vol_create(&self, _vol: VolId, _location: &Path, _params: &VolumeParams) -> Result<()> {
        Err(StorageError::Invalid(
            "a reliable volume is created with its backups: `pager vol create NAME --backup HOST:PORT`".into(),
        ))
    }
    fn vol_resize(&self, location: &Path, capacity_pages: u64) -> Result<()> {
        self.local().vol_resize(location, capacity_pages)
    }
    fn vol_delete(&self, vol: VolId, location: &Path, force: bool) -> Result<()> {
        self.local().vol_delete(vol, location, force)
    }
    fn vol_mount(&self, vol: VolId, location: &Path) -> Result<Box<dyn Volume>> {
        let mut conf = Conf::load(location)?;
        if conf.name.is_empty() {
            conf.name = location
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        let inner = LocalVolume::mount(vol, location, self.config.journal.clone())?;
        Ok(Box::new(self.start(vol, location, conf, inner)))
    }
}
