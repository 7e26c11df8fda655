//! The primary side of a reliable volume: the reliable storage service (SSF, thesis H4) in the
//! driver table. A reliable volume is a local volume plus `goofy.conf`; after each validated
//! commit its modified whole pages go to every backup in parallel (thesis M5, M9, M11) through
//! the backup's [`link`](super::link), and `clu_Commit` does not wait unless the volume asks for
//! `sync K` acknowledgements.
//!
//! Fencing: at mount, the volume waits (a few seconds at most) for each backup's first answer.
//! A backup that knows a newer epoch means this primary was replaced by `pager vol restore`
//! elsewhere: the volume stays mounted, so that `pager status` shows why, but every mapping,
//! read and commit on it fails with an error saying so. The same happens if a backup says so
//! later.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use client::{CluId, ClusterKind, VolId};
use journal::{Lsn, PageRun};
use tracing::warn;

use super::conf::Conf;
use super::link::{self, Link, LinkState, Shared};
use super::restore;
use crate::storage::ssr::{LocalVolume, Ssr};
use crate::storage::{
    BackupStatus, ClusterDesc, Replication, Result, StorageError, StorageService, Volume,
    VolumeInfo, VolumeParams,
};
use crate::sync::lock;

/// How long a synchronous commit waits for its acknowledgements.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long mounting waits for the backups' first answers (the fencing check).
const FIRST_CONTACT: Duration = Duration::from_secs(3);
/// The default retention bound: a backup further behind is marked stale.
const RETAIN_MB: u64 = 256;

/// A mounted reliable volume: a local volume whose commits are propagated.
pub struct ReliableVolume {
    inner: Arc<LocalVolume>,
    shared: Arc<Shared>,
    links: Vec<Arc<Link>>,
}

impl ReliableVolume {
    fn start(name: &str, conf: Conf, inner: LocalVolume, rotate_bytes: u64) -> ReliableVolume {
        let inner = Arc::new(inner);
        let retain_mb = std::env::var("CLU_GOOFY_RETAIN_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(RETAIN_MB);
        let links: Vec<Arc<Link>> = conf
            .backups
            .iter()
            .map(|a| Arc::new(Link::new(a)))
            .collect();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            conf,
            volume: inner.clone(),
            stop: AtomicBool::new(false),
            fenced: Mutex::new(None),
            progress: (Mutex::new(0), Condvar::new()),
            times: Mutex::new(VecDeque::new()),
            retain_bytes: retain_mb << 20,
            rotate_bytes,
        });
        for l in &links {
            link::start(shared.clone(), l.clone());
        }
        let v = ReliableVolume {
            inner,
            shared,
            links,
        };
        // The fencing check: hear from every backup (or fail to reach it) before serving.
        let deadline = Instant::now() + FIRST_CONTACT;
        while Instant::now() < deadline
            && lock(&v.shared.fenced).is_none()
            && v.links.iter().any(|l| !lock(&l.inner).tried)
        {
            v.shared.wait(Duration::from_millis(50));
        }
        if let Some(why) = &*lock(&v.shared.fenced) {
            warn!(volume = %name, "mounted but fenced: {why}");
        }
        v
    }

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
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
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
                    SYNC_TIMEOUT.as_secs()
                )));
            }
            self.shared.wait(Duration::from_millis(100));
        }
    }

    fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.notify();
    }
}

impl Drop for ReliableVolume {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Volume for ReliableVolume {
    fn id(&self) -> VolId {
        self.inner.id()
    }
    fn info(&self) -> VolumeInfo {
        self.inner.info()
    }
    fn set_capacity(&self, capacity_pages: u64) -> Result<()> {
        self.inner.set_capacity(capacity_pages)
    }
    fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint()
    }
    fn unmount(&self) -> Result<()> {
        self.stop();
        self.inner.unmount()
    }
    fn clu_create(&self, npages: u64, owner: u32, kind: ClusterKind) -> Result<ClusterDesc> {
        self.check()?;
        self.inner.clu_create(npages, owner, kind)
    }
    fn clu_get_desc(&self, clu: CluId) -> Result<ClusterDesc> {
        self.check()?;
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
        self.check()?;
        self.inner.clu_read(clu, first_page, buf)
    }
    fn clu_write(&self, clu: CluId, runs: &[PageRun<'_>]) -> Result<Lsn> {
        self.check()?;
        let lsn = self.inner.clu_write(clu, runs)?;
        self.shared.committed(lsn);
        self.shared.notify();
        match self.shared.conf.sync {
            0 => Ok(lsn),
            k => self.wait_acks(lsn, k as usize).map(|()| lsn),
        }
    }
    fn clu_prefetch(&self, clu: CluId, first_page: u64, npages: u64) {
        self.inner.clu_prefetch(clu, first_page, npages)
    }
    fn clu_history(&self, clu: CluId) -> Vec<u32> {
        self.inner.clu_history(clu)
    }
    fn clu_set_history(&self, clu: CluId, pages: &[u32]) -> Result<()> {
        self.inner.clu_set_history(clu, pages)
    }
    fn replication(&self) -> Option<Replication> {
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
        Some(Replication {
            epoch: self.shared.conf.epoch,
            fenced: lock(&self.shared.fenced).clone(),
            log_lsn,
            backups,
        })
    }
}

/// The reliable storage service: local volumes with backups.
#[derive(Clone, Debug, Default)]
pub struct Ssf {
    /// The local part.
    pub local: Ssr,
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
    /// Creates the volume's local part and fills it from the plan's backup.
    fn restore_into(
        &self,
        vol: VolId,
        location: &Path,
        params: &VolumeParams,
        plan: &restore::Plan,
    ) -> Result<Conf> {
        let params = VolumeParams {
            first_log_file: plan.origin.1.file + 1,
            ..params.clone()
        };
        self.local.vol_create(vol, location, &params)?;
        let volume = LocalVolume::mount(vol, location, self.local.journal.clone())?;
        restore::fetch(plan, &volume)?;
        volume.unmount()?;
        Ok(Conf {
            uid: plan.uid,
            name: plan.name.clone(),
            epoch: plan.epoch,
            sync: plan.sync,
            backups: plan.backups.clone(),
            origin: plan.origin,
            source: plan.source.clone(),
        })
    }
}

impl StorageService for Ssf {
    fn name(&self) -> &'static str {
        "ssf"
    }
    fn vol_create(&self, vol: VolId, location: &Path, params: &VolumeParams) -> Result<()> {
        let conf = if let Some(plan) = &params.restore {
            self.restore_into(vol, location, params, plan)?
        } else {
            if params.backups.is_empty() {
                return Err(StorageError::Invalid(
                    "a reliable volume needs at least one --backup HOST:PORT".into(),
                ));
            }
            if params.sync as usize > params.backups.len() {
                return Err(StorageError::Invalid(format!(
                    "--sync {} waits for more acknowledgements than the {} backups can give",
                    params.sync,
                    params.backups.len()
                )));
            }
            self.local.vol_create(vol, location, params)?;
            Conf {
                uid: random_uid(),
                name: params.name.clone(),
                epoch: 1,
                sync: params.sync,
                backups: params.backups.clone(),
                origin: (0, Lsn::default()),
                source: String::new(),
            }
        };
        conf.store(location)
    }
    fn vol_resize(&self, location: &Path, capacity_pages: u64) -> Result<()> {
        self.local.vol_resize(location, capacity_pages)
    }
    fn vol_delete(&self, vol: VolId, location: &Path, force: bool) -> Result<()> {
        self.local.vol_delete(vol, location, force)
    }
    fn vol_mount(&self, vol: VolId, location: &Path) -> Result<Box<dyn Volume>> {
        let mut conf = Conf::load(location)?;
        if conf.name.is_empty() {
            conf.name = location
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        let inner = LocalVolume::mount(vol, location, self.local.journal.clone())?;
        let name = conf.name.clone();
        Ok(Box::new(ReliableVolume::start(
            &name,
            conf,
            inner,
            self.local.journal.rotate_bytes,
        )))
    }
}
