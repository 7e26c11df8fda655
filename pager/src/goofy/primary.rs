//! The primary side of a reliable volume: the reliable storage service (SSF, thesis H4) in the
//! driver table. A reliable volume is a local volume plus `goofy.conf`; after each validated
//! commit its modified whole pages go to every backup in parallel (thesis M5, M9, M11), and
//! `clu_Commit` does not wait unless the volume asks for `sync K` acknowledgements.
//!
//! Each backup has a link: a thread that connects, introduces the volume (`Hello` with its uid
//! and epoch), then sends the queued operations in order and reads their acknowledgements. A link
//! that loses its backup reconnects with a growing delay; operations queue meanwhile, up to a
//! bound past which the backup is marked stale.

use std::collections::VecDeque;
use std::io::{BufReader, BufWriter};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use client::{CluId, ClusterKind, VolId};
use journal::{Lsn, PageRun};
use tracing::{info, warn};

use super::conf::Conf;
use super::wire::{self, Msg, Run};
use crate::storage::ssr::{LocalVolume, Ssr};
use crate::storage::{
    ClusterDesc, Result, StorageError, StorageService, Volume, VolumeInfo, VolumeParams,
};
use crate::sync::lock;

/// Operations a link keeps for a backup that does not answer; past it the backup is stale.
const MAX_QUEUED: usize = 4096;
/// How long a synchronous commit waits for its acknowledgements.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// What a primary knows of one backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Connecting or reconnecting.
    Unreachable(String),
    /// Connected; operations flow.
    Connected,
    /// Missed operations no longer queued: needs a full copy.
    Stale,
}

struct LinkInner {
    state: LinkState,
    /// Operations not yet acknowledged, with when each was queued.
    queue: VecDeque<(Arc<Msg>, Instant)>,
    acked: Lsn,
    /// Propagation lags (queued to acknowledged) of the latest operations, in seconds.
    lags: VecDeque<f64>,
}

/// How many recent lags a link keeps for its median.
const LAGS: usize = 1024;

struct Link {
    addr: String,
    inner: Mutex<LinkInner>,
    /// Wakes the link's thread when an operation is queued.
    cv: Condvar,
    /// Shared by the volume's links: notified (under its lock) at every acknowledgement, for
    /// the commits that wait for some (`sync K`).
    acks: Arc<(Mutex<()>, Condvar)>,
}

/// The propagation of one reliable volume to its backups.
pub struct Propagator {
    name: String,
    conf: Conf,
    links: Vec<Arc<Link>>,
    acks: Arc<(Mutex<()>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Propagator {
    /// Starts a link thread per backup.
    pub fn start(name: &str, conf: Conf) -> Propagator {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new((Mutex::new(()), Condvar::new()));
        let links: Vec<Arc<Link>> = conf
            .backups
            .iter()
            .map(|addr| {
                Arc::new(Link {
                    addr: addr.clone(),
                    inner: Mutex::new(LinkInner {
                        state: LinkState::Unreachable("not connected yet".into()),
                        queue: VecDeque::new(),
                        acked: Lsn::default(),
                        lags: VecDeque::new(),
                    }),
                    cv: Condvar::new(),
                    acks: acks.clone(),
                })
            })
            .collect();
        for link in &links {
            let (link, stop) = (link.clone(), stop.clone());
            let (uid, epoch, name) = (conf.uid, conf.epoch, name.to_string());
            std::thread::Builder::new()
                .name(format!("goofy-{}", link.addr))
                .spawn(move || run_link(&link, uid, epoch, &name, &stop))
                .expect("spawn a propagation thread");
        }
        Propagator {
            name: name.to_string(),
            conf,
            links,
            acks,
            stop,
        }
    }

    /// Queues a committed operation for every backup; waits for `sync` acknowledgements.
    pub fn propagate(&self, lsn: Lsn, clu: CluId, npages: u64, runs: &[PageRun<'_>]) -> Result<()> {
        let op = Arc::new(Msg::Op {
            epoch: self.conf.epoch,
            lsn,
            clu: clu.0,
            npages,
            runs: runs
                .iter()
                .map(|r| Run {
                    first_page: r.first_page,
                    pages: r.pages.to_vec(),
                })
                .collect(),
        });
        for link in &self.links {
            let mut l = lock(&link.inner);
            if l.state == LinkState::Stale {
                continue;
            }
            if l.queue.len() >= MAX_QUEUED {
                warn!(volume = %self.name, backup = %link.addr, "backup too far behind: marked stale (needs a full copy)");
                l.state = LinkState::Stale;
                l.queue.clear();
                continue;
            }
            l.queue.push_back((op.clone(), Instant::now()));
            link.cv.notify_all();
        }
        let want = self.conf.sync as usize;
        if want == 0 {
            return Ok(());
        }
        let deadline = Instant::now() + SYNC_TIMEOUT;
        let (m, cv) = &*self.acks;
        let mut g = lock(m);
        loop {
            let have = self
                .links
                .iter()
                .filter(|l| lock(&l.inner).acked >= lsn)
                .count();
            if have >= want {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StorageError::Invalid(format!(
                    "commit {lsn} is stored here but only {have} of the {want} backup acknowledgements it waits for came within {}s; see `pager status`",
                    SYNC_TIMEOUT.as_secs()
                )));
            }
            g = cv
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// One line per backup: its state, lag in LSN and seconds.
    pub fn report(&self, log_lsn: Lsn) -> Vec<String> {
        self.links
            .iter()
            .map(|link| {
                let l = lock(&link.inner);
                let state = match (&l.state, l.queue.is_empty()) {
                    (LinkState::Connected, true) => "in sync".to_string(),
                    (LinkState::Connected, false) => "catching up".to_string(),
                    (LinkState::Stale, _) => "stale (needs a full copy)".to_string(),
                    (LinkState::Unreachable(why), _) => format!("unreachable ({why})"),
                };
                let behind = l.queue.front().map_or(0.0, |(_, t)| t.elapsed().as_secs_f64());
                let mut lags: Vec<f64> = l.lags.iter().copied().collect();
                lags.sort_by(f64::total_cmp);
                let median = lags.get(lags.len() / 2).map_or(String::new(), |m| {
                    format!("; propagation lag median {:.1} ms over the last {} operations", m * 1e3, lags.len())
                });
                format!(
                    "backup {}: {state}; acknowledged {}, {} operations and {behind:.1} s behind (log at {log_lsn}){median}",
                    link.addr,
                    l.acked,
                    l.queue.len()
                )
            })
            .collect()
    }
}

impl Drop for Propagator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for l in &self.links {
            l.cv.notify_all();
        }
    }
}

fn run_link(link: &Link, uid: u64, epoch: u64, name: &str, stop: &AtomicBool) {
    let mut delay = Duration::from_millis(50);
    while !stop.load(Ordering::Acquire) {
        match serve_link(link, uid, epoch, name, stop) {
            Ok(()) => return,
            Err(why) => {
                let mut l = lock(&link.inner);
                if l.state != LinkState::Stale {
                    l.state = LinkState::Unreachable(why.clone());
                }
                drop(l);
                info!(volume = %name, backup = %link.addr, "backup link: {why}; retrying in {delay:?}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One connection's life: `Ok` when stopped, `Err` with why it broke.
fn serve_link(
    link: &Link,
    uid: u64,
    epoch: u64,
    name: &str,
    stop: &AtomicBool,
) -> std::result::Result<(), String> {
    let conn = TcpStream::connect(&link.addr).map_err(|e| e.to_string())?;
    conn.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut rd = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
    let mut wr = BufWriter::new(conn);
    let hello = Msg::Hello {
        uid,
        epoch,
        name: name.to_string(),
    };
    wire::send(&mut wr, &hello).map_err(|e| e.to_string())?;
    let applied = match wire::recv(&mut rd).map_err(|e| e.to_string())? {
        Msg::Welcome { applied } => applied,
        Msg::Refused { why } => return Err(format!("refused: {why}")),
        other => return Err(format!("unexpected answer {other:?}")),
    };
    {
        let mut l = lock(&link.inner);
        l.acked = l.acked.max(applied);
        // Drop what the backup already has.
        while l
            .queue
            .front()
            .is_some_and(|(m, _)| matches!(&**m, Msg::Op { lsn, .. } if *lsn <= applied))
        {
            l.queue.pop_front();
        }
        if l.state != LinkState::Stale {
            l.state = LinkState::Connected;
        }
        info!(volume = %name, backup = %link.addr, %applied, queued = l.queue.len(), "backup connected");
    }
    loop {
        let op = {
            let mut l = lock(&link.inner);
            loop {
                if stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                if let Some((op, _)) = l.queue.front() {
                    break op.clone();
                }
                l = link.cv.wait(l).unwrap_or_else(|e| e.into_inner());
            }
        };
        wire::send(&mut wr, &op).map_err(|e| e.to_string())?;
        match wire::recv(&mut rd).map_err(|e| e.to_string())? {
            Msg::Ack { lsn } => {
                let mut l = lock(&link.inner);
                l.acked = l.acked.max(lsn);
                if l.queue
                    .front()
                    .is_some_and(|(m, _)| matches!(&**m, Msg::Op { lsn: q, .. } if *q == lsn))
                {
                    if let Some((_, queued)) = l.queue.pop_front() {
                        if l.lags.len() == LAGS {
                            l.lags.pop_front();
                        }
                        l.lags.push_back(queued.elapsed().as_secs_f64());
                    }
                }
                drop(l);
                let _g = lock(&link.acks.0);
                link.acks.1.notify_all();
            }
            Msg::Refused { why } => return Err(format!("refused: {why}")),
            other => return Err(format!("unexpected answer {other:?}")),
        }
    }
}

/// A mounted reliable volume: a local volume whose commits are propagated.
pub struct ReliableVolume {
    inner: LocalVolume,
    propagator: Propagator,
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
        self.inner.unmount()
    }
    fn clu_create(&self, npages: u64, owner: u32, kind: ClusterKind) -> Result<ClusterDesc> {
        self.inner.clu_create(npages, owner, kind)
    }
    fn clu_get_desc(&self, clu: CluId) -> Result<ClusterDesc> {
        self.inner.clu_get_desc(clu)
    }
    fn clu_update(&self, clu: CluId, f: &mut dyn FnMut(&mut ClusterDesc)) -> Result<ClusterDesc> {
        self.inner.clu_update(clu, f)
    }
    fn clu_list(&self) -> Vec<ClusterDesc> {
        self.inner.clu_list()
    }
    fn clu_destroy(&self, clu: CluId) -> Result<()> {
        self.inner.clu_destroy(clu)
    }
    fn clu_resize(&self, clu: CluId, add_pages: u64) -> Result<ClusterDesc> {
        self.inner.clu_resize(clu, add_pages)
    }
    fn clu_read(&self, clu: CluId, first_page: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.clu_read(clu, first_page, buf)
    }
    fn clu_write(&self, clu: CluId, runs: &[PageRun<'_>]) -> Result<Lsn> {
        let lsn = self.inner.clu_write(clu, runs)?;
        let npages = self.inner.clu_get_desc(clu)?.npages;
        self.propagator.propagate(lsn, clu, npages, runs)?;
        Ok(lsn)
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
    fn replication(&self) -> Vec<String> {
        self.propagator.report(self.inner.info().log_lsn)
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

impl StorageService for Ssf {
    fn name(&self) -> &'static str {
        "ssf"
    }
    fn vol_create(&self, vol: VolId, location: &Path, params: &VolumeParams) -> Result<()> {
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
            epoch: 1,
            sync: params.sync,
            backups: params.backups.clone(),
        }
        .store(location)
    }
    fn vol_resize(&self, location: &Path, capacity_pages: u64) -> Result<()> {
        self.local.vol_resize(location, capacity_pages)
    }
    fn vol_delete(&self, vol: VolId, location: &Path, force: bool) -> Result<()> {
        self.local.vol_delete(vol, location, force)
    }
    fn vol_mount(&self, vol: VolId, location: &Path) -> Result<Box<dyn Volume>> {
        let conf = Conf::load(location)?;
        let inner = LocalVolume::mount(vol, location, self.local.journal.clone())?;
        let name = location
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Box::new(ReliableVolume {
            inner,
            propagator: Propagator::start(&name, conf),
        }))
    }
}
