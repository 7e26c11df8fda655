//! A link from a primary to one backup server: a thread that connects, introduces the volume,
//! decides where the backup resumes ([`super::resume`]), sends a full copy if it must, then
//! ships the primary's journal operation by operation and reads the acknowledgements.
//!
//! The journal is the queue (thesis VII.3.4, done better): a link holds a [`Retention`] at the
//! position its backup acknowledged, so the log files it still needs stay on disk, and it reads
//! the operations back from them. A backup that comes back after an outage is caught up from
//! the log while commits go on; nothing blocks the volume, not even for a last stretch, since
//! the link reads up to the log's end and then simply follows it. A backup further behind than
//! the retention bound is marked stale: its hold is released, and it gets a full copy when it
//! returns.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::io::BufReader;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use clu_proto::{CluId, ClusterId, ClusterKind, PAGE_SIZE};
use clu_storage::ssr::LocalVolume;
use clu_storage::{StorageError, Volume};
use clu_sys::sync::{lock, wait_timeout_while};
use journal::{LogReader, Lsn, Retention};
use tracing::{info, warn};

use crate::conf::Conf;
use crate::copy::{copy_chunk, copy_chunks};
use crate::position::Position;
use crate::resume::{resume, History, Provenance, Resume};
use crate::wire::{self, CluInfo, Conn, Msg, Run};
use clu_transport::{Stream, Transport};

/// How many recent lags a link keeps for its median.
const LAGS: usize = 1024;
/// How many recent commit times a volume keeps (to measure lags).
const TIMES: usize = 8192;
/// How long an asynchronous link waits after a commit wakes it before it reads the log. On
/// this project's 2-vCPU machine, propagating at once delays the commit's own reply by 1-2 ms
/// (the link threads and the backups take the CPUs at that moment); the delay adds as much to
/// the propagation lag, which stays far below its 100 ms goal.
const PROPAGATION_DELAY: Duration = Duration::from_millis(2);

/// What a link is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected yet, or reconnecting after this.
    Unreachable(String),
    /// Sending a full copy.
    Copying,
    /// Sending operations the backup missed.
    CatchingUp,
    /// The backup has every operation of the log.
    InSync,
    /// Fell further behind than the retention bound: needs a full copy when it returns.
    Stale,
    /// The backup knows a newer epoch: this primary was replaced.
    Fenced(String),
}

impl LinkState {
    /// The word `pager status` shows.
    pub fn word(&self) -> &'static str {
        match self {
            LinkState::Unreachable(_) => "unreachable",
            LinkState::Copying => "copying",
            LinkState::CatchingUp => "catching up",
            LinkState::InSync => "in sync",
            LinkState::Stale => "stale",
            LinkState::Fenced(_) => "fenced",
        }
    }
}

/// What one reliable volume's links share.
pub struct Shared {
    /// The volume's name.
    pub name: String,
    /// Its directory (where `goofy.conf` is).
    pub location: std::path::PathBuf,
    /// Clusters destroyed here that not every backup acknowledged destroying (as in
    /// `goofy.conf`), each with the backups that did. Held to change the table and rewrite
    /// the file, nothing else.
    pub destroyed: Mutex<BTreeMap<u16, BTreeSet<String>>>,
    /// Its replication settings.
    pub conf: Conf,
    /// Its primary copy.
    pub volume: Arc<LocalVolume>,
    /// Set at unmount: links end.
    pub stop: AtomicBool,
    /// Why the volume is fenced, once a backup said so.
    pub fenced: Mutex<Option<String>>,
    /// Bumped, and its condvar notified, at each commit and each acknowledgement.
    pub progress: (Mutex<u64>, Condvar),
    /// When the latest commits were made, by LSN (for lags).
    pub times: Mutex<VecDeque<(Lsn, Instant)>>,
    /// How far (bytes of log) a backup may fall behind before it is marked stale.
    pub retain_bytes: u64,
    /// The journal's file size, to turn LSN distances into bytes.
    pub rotate_bytes: u64,
    /// How long connecting to a backup may take.
    pub connect_timeout: Duration,
    /// How to reach the backups.
    pub transport: Transport,
    /// Where the log ended when this primary mounted the volume: what it knows validated
    /// (see [`History::trusted_end`]).
    pub run_start: Lsn,
}

impl Shared {
    /// Records that cluster `clu` was destroyed here: in `goofy.conf` (durably), then for the
    /// links, which tell their backups.
    pub fn destroyed(&self, clu: CluId) -> clu_storage::Result<()> {
        let mut d = lock(&self.destroyed);
        d.entry(clu.0).or_default();
        self.store_destroyed(&d)?;
        drop(d);
        self.notify();
        Ok(())
    }

    fn store_destroyed(&self, d: &BTreeMap<u16, BTreeSet<String>>) -> clu_storage::Result<()> {
        let conf = Conf {
            destroyed: d.keys().copied().collect(),
            ..self.conf.clone()
        };
        conf.store(&self.location)
    }

    /// The destroyed clusters backup `addr` was not told of yet.
    fn to_tell(&self, addr: &str) -> Vec<u16> {
        lock(&self.destroyed)
            .iter()
            .filter(|(_, told)| !told.contains(addr))
            .map(|(c, _)| *c)
            .collect()
    }

    /// Backup `addr` has destroyed `clus` (or never had them); a destruction every backup
    /// has is forgotten.
    fn told(&self, addr: &str, clus: &[u16]) {
        let mut d = lock(&self.destroyed);
        let before = d.len();
        for c in clus {
            if let Some(told) = d.get_mut(c) {
                told.insert(addr.to_owned());
            }
        }
        let all = self.conf.backups.len();
        d.retain(|_, told| told.len() < all);
        if d.len() != before {
            if let Err(e) = self.store_destroyed(&d) {
                warn!(volume = %self.name, "recording the destructions still to tell: {e}");
            }
        }
    }

    /// Wakes the links and the commits that wait for acknowledgements.
    pub fn notify(&self) {
        let (m, cv) = &self.progress;
        *lock(m) += 1;
        cv.notify_all();
    }

    /// The notifications so far: taken *before* looking at what a notification announces,
    /// then given to [`Shared::wait`], so that one arriving in between is not missed.
    pub fn seen(&self) -> u64 {
        *lock(&self.progress.0)
    }

    /// Waits for a notification after `seen` (see [`Shared::seen`]), at most `timeout`.
    pub fn wait(&self, seen: u64, timeout: Duration) {
        let (m, cv) = &self.progress;
        let g = lock(m);
        drop(wait_timeout_while(cv, g, timeout, |n| {
            *n == seen && !self.stop.load(Ordering::Acquire)
        }));
    }

    /// Records a commit's time.
    pub fn committed(&self, lsn: Lsn) {
        let mut t = lock(&self.times);
        if t.len() == TIMES {
            t.pop_front();
        }
        t.push_back((lsn, Instant::now()));
    }

    /// Bytes of log from `from` to `to` (whole files counted at their size).
    pub fn distance(&self, from: Lsn, to: Lsn) -> u64 {
        if to <= from {
            0
        } else if to.file == from.file {
            to.offset - from.offset
        } else {
            (to.file - from.file) * self.rotate_bytes + to.offset - from.offset.min(to.offset)
        }
    }

    /// The end of the primary's log (the start of the history if the volume is unmounted).
    pub fn log_end(&self) -> Lsn {
        self.volume.log_lsn().unwrap_or_default()
    }

    /// The history as backup `link` may resume in it.
    fn history(&self, link: &Link) -> History {
        let sent = lock(&link.inner).sent;
        History {
            epoch: self.conf.epoch,
            origin: self.conf.origin,
            log_end: self.volume.written_lsn().unwrap_or_default(),
            trusted_end: self.run_start.max(sent),
        }
    }
}

/// One backup's link.
pub struct Link {
    /// The backup server, `HOST:PORT`.
    pub addr: String,
    /// What it knows.
    pub inner: Mutex<LinkInner>,
}

/// The mutable part of a link.
pub struct LinkInner {
    /// What it is doing.
    pub state: LinkState,
    /// Every operation before this LSN is acknowledged (in this primary's history).
    pub acked: Lsn,
    /// Whether the first connection attempt finished (either way).
    pub tried: bool,
    /// Whether the next connection must start with a full copy.
    pub stale: bool,
    /// A full copy's progress: pages sent, pages in all.
    pub copy: Option<(u64, u64)>,
    /// Propagation lags (commit to acknowledgement) of the latest operations, in seconds.
    pub lags: VecDeque<f64>,
    /// The end of the last operation this run of the primary sent the backup (see
    /// [`History::trusted_end`]).
    pub sent: Lsn,
    hold: Option<Retention>,
}

impl Link {
    /// A link not started yet.
    pub fn new(addr: &str) -> Link {
        Link {
            addr: addr.to_string(),
            inner: Mutex::new(LinkInner {
                state: LinkState::Unreachable("not connected yet".into()),
                acked: Lsn::default(),
                sent: Lsn::default(),
                tried: false,
                stale: false,
                copy: None,
                lags: VecDeque::new(),
                hold: None,
            }),
        }
    }
}

/// Why a connection ended.
enum End {
    Stopped,
    Fenced(String),
    Broken(String),
}

impl<E: std::fmt::Display> From<E> for End {
    fn from(e: E) -> End {
        End::Broken(e.to_string())
    }
}

/// The link's thread: connects, serves, reconnects with a growing delay, until stopped or
/// fenced.
pub fn run(shared: &Shared, link: &Link) {
    let mut delay = Duration::from_millis(50);
    loop {
        let end = serve(shared, link);
        let mut l = lock(&link.inner);
        l.tried = true;
        match end {
            End::Stopped => return,
            End::Fenced(why) => {
                warn!(volume = %shared.name, backup = %link.addr, "{why}: this primary was replaced; the volume is fenced here");
                l.state = LinkState::Fenced(why.clone());
                drop(l);
                lock(&shared.fenced).get_or_insert(why);
                shared.notify();
                return;
            }
            End::Broken(why) => {
                if l.state == LinkState::InSync || l.state == LinkState::CatchingUp {
                    delay = Duration::from_millis(50);
                }
                l.copy = None;
                l.state = if l.stale {
                    LinkState::Stale
                } else {
                    LinkState::Unreachable(why.clone())
                };
                drop(l);
                info!(volume = %shared.name, backup = %link.addr, "backup link: {why}; retrying in {delay:?}");
            }
        }
        shared.notify();
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            check_bound(shared, link);
            std::thread::sleep(Duration::from_millis(20));
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Marks the backup stale, releasing its hold on the log, once it is too far behind.
fn check_bound(shared: &Shared, link: &Link) {
    let log_end = shared.log_end();
    let mut l = lock(&link.inner);
    if !l.stale && l.hold.is_some() && shared.distance(l.acked, log_end) > shared.retain_bytes {
        warn!(volume = %shared.name, backup = %link.addr, acked = %l.acked, %log_end, "backup further behind than the retention bound: marked stale (it gets a full copy when it returns)");
        l.stale = true;
        l.hold = None;
        if !matches!(l.state, LinkState::InSync | LinkState::CatchingUp) {
            l.state = LinkState::Stale;
        }
    }
}

/// Sends `msg` and reads the answer: `Ok(lsn)` for an acknowledgement.
fn call(conn: &mut Conn, msg: &Msg) -> Result<Lsn, End> {
    wire::send(conn.get_mut(), msg)?;
    answer(conn)
}

/// How often an asynchronous link waiting for an acknowledgement looks whether the journal
/// wrote more (to tell the backup).
const TELL_EVERY: Duration = Duration::from_millis(5);

/// As [`call`], for an operation of an asynchronous link: while it waits for the
/// acknowledgement, tells the backup how far the journal has written whenever that moved
/// (a [`Msg::Written`], not answered), so that the backup knows what a restoration from it
/// would lose: the commits a primary acknowledged that no backup holds yet.
fn call_telling(
    conn: &mut Conn,
    msg: &Msg,
    epoch: u64,
    reader: &LogReader,
    told: &mut u64,
) -> Result<Lsn, End> {
    wire::send(conn.get_mut(), msg)?;
    while conn.buffer().is_empty() && !conn.get_mut().readable_within(TELL_EVERY)? {
        let written = reader.written();
        if written.ops > *told {
            wire::send(conn.get_mut(), &Msg::Written { epoch, written })?;
            *told = written.ops;
        }
    }
    answer(conn)
}

/// The backup's answer to an operation or a destruction.
fn answer(conn: &mut Conn) -> Result<Lsn, End> {
    match wire::recv(conn)? {
        Msg::Ack { lsn } => Ok(lsn),
        Msg::Fenced { why } => Err(End::Fenced(why)),
        Msg::Refused { why } => Err(End::Broken(format!("refused: {why}"))),
        other => Err(End::Broken(format!("unexpected answer {}", other.kind()))),
    }
}

fn set_state(link: &Link, state: LinkState) {
    lock(&link.inner).state = state;
}

/// One connection's life.
fn serve(shared: &Shared, link: &Link) -> End {
    let conn = match shared.transport.connect(&link.addr, shared.connect_timeout) {
        Ok(c) => c,
        Err(e) => return End::Broken(e.to_string()),
    };
    match serve_conn(shared, link, conn) {
        Ok(never) => match never {},
        Err(end) => end,
    }
}

/// Serves a connection until it ends (the `Err`: it never returns `Ok`).
fn serve_conn(shared: &Shared, link: &Link, conn: Stream) -> Result<Infallible, End> {
    let mut conn = BufReader::new(conn);
    let conf = &shared.conf;
    let hello = Msg::Hello {
        site: shared.transport.site(),
        uid: conf.uid,
        epoch: conf.epoch,
        name: shared.name.clone(),
        backups: conf.backups.clone(),
        sync: conf.sync,
    };
    wire::send(conn.get_mut(), &hello)?;
    let position = match wire::recv(&mut conn)? {
        Msg::Welcome { position } => position,
        Msg::Fenced { why } => return Err(End::Fenced(why)),
        Msg::Refused { why } => return Err(End::Broken(format!("refused: {why}"))),
        other => return Err(End::Broken(format!("unexpected answer {}", other.kind()))),
    };
    let stale = {
        let mut l = lock(&link.inner);
        l.tried = true;
        l.stale
    };
    shared.notify();
    let decision = if stale {
        Resume::FullCopy("it was marked stale")
    } else {
        let source = if conf.source.is_empty() || conf.source == link.addr {
            Provenance::Source
        } else {
            Provenance::Other
        };
        resume(position, shared.history(link), source)
    };
    let mut pos = match decision {
        Resume::FromLog(at) => match shared.volume.retain_from(at) {
            Ok(hold) => {
                let mut l = lock(&link.inner);
                l.hold = Some(hold);
                l.acked = at;
                info!(volume = %shared.name, backup = %link.addr, from = %at, "backup connected: catching up from the log");
                at
            }
            Err(e) => {
                info!(volume = %shared.name, backup = %link.addr, "the log no longer holds what the backup misses ({e}): full copy");
                full_copy(shared, link, &mut conn)?
            }
        },
        Resume::FullCopy(why) => {
            info!(volume = %shared.name, backup = %link.addr, ?position, "full copy: {why}");
            full_copy(shared, link, &mut conn)?
        }
    };
    {
        // A full copy sent the image as of `pos`, this run's.
        let mut l = lock(&link.inner);
        l.sent = l.sent.max(pos);
    }
    let mut reader = shared.volume.log_reader()?;
    // Operations of a group sent and not answered yet: the backup holds them until the
    // group's last operation comes.
    let mut in_group = false;
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return Err(End::Stopped);
        }
        // Destructions first: a destroyed cluster's operations are not sent any more. Not in
        // the middle of a group: the backup stores the group before it destroys anything.
        let to_tell = if in_group {
            Vec::new()
        } else {
            shared.to_tell(&link.addr)
        };
        for clu in to_tell {
            call(
                &mut conn,
                &Msg::Destroy {
                    epoch: conf.epoch,
                    clu,
                },
            )?;
            shared.told(&link.addr, &[clu]);
        }
        let seen = shared.seen();
        // Operations as soon as they are written: the backup stores one while the primary
        // syncs it.
        let Some(op) = reader.next_written(pos)? else {
            set_state(link, LinkState::InSync);
            shared.wait(seen, Duration::from_millis(200));
            check_bound(shared, link);
            if conf.sync == 0 {
                // Asynchronous: let the commit that woke us answer its client before the
                // propagation takes the CPUs (and gather the commits that follow it).
                std::thread::sleep(PROPAGATION_DELAY);
            }
            continue;
        };
        {
            let mut l = lock(&link.inner);
            if l.state != LinkState::InSync {
                l.state = LinkState::CatchingUp;
            }
        }
        let id = ClusterId(op.cluster);
        let end = op.end;
        let desc = shared.volume.clu_get_desc(id.clu());
        // A cluster destroyed since has nothing left to send; but the last operation of a
        // group whose first ones were sent still tells the backup that the group ends.
        let gone = desc.is_err();
        if gone && in_group && !op.group_open {
            let msg = Msg::Op {
                epoch: conf.epoch,
                lsn: op.lsn,
                end,
                seq: op.seq,
                written: reader.written(),
                clu: CluInfo {
                    clu: id.clu().0,
                    npages: 0,
                    owner: 0,
                    kind: ClusterKind::Protected,
                },
                runs: Vec::new(),
                group_open: false,
            };
            let got = call(&mut conn, &msg)?;
            if got != end {
                return Err(End::Broken(format!(
                    "the backup acknowledged {got} for the group ending at {end}"
                )));
            }
        }
        if let Ok(desc) = desc {
            let extent = op
                .runs
                .iter()
                .map(|(first, pages)| first + (pages.len() / PAGE_SIZE) as u64)
                .max()
                .unwrap_or(0);
            let written = reader.written();
            let msg = Msg::Op {
                epoch: conf.epoch,
                lsn: op.lsn,
                end,
                seq: op.seq,
                written,
                clu: CluInfo {
                    npages: desc.npages.max(extent),
                    ..CluInfo::of(&desc)
                },
                runs: op
                    .runs
                    .into_iter()
                    .map(|(first_page, pages)| Run { first_page, pages })
                    .collect(),
                group_open: op.group_open,
            };
            {
                let mut l = lock(&link.inner);
                l.sent = l.sent.max(end);
            }
            if op.group_open {
                // Not answered: the group's last operation is.
                wire::send(conn.get_mut(), &msg)?;
                in_group = true;
                pos = end;
                continue;
            }
            // The journal's written ordinal last told to the backup.
            let mut told = written.ops;
            let got = if conf.sync == 0 {
                call_telling(&mut conn, &msg, conf.epoch, &reader, &mut told)?
            } else {
                call(&mut conn, &msg)?
            };
            if got != end {
                return Err(End::Broken(format!(
                    "the backup acknowledged {got} for operation {}..{end}",
                    op.lsn
                )));
            }
        }
        if op.group_open {
            // Of a destroyed cluster, inside a group: the group's end is told with its last.
            pos = end;
            continue;
        }
        in_group = false;
        acknowledged(shared, link, op.lsn, end);
        pos = end;
    }
}

/// The backup has everything before `end` (the operation at `lsn` included).
fn acknowledged(shared: &Shared, link: &Link, lsn: Lsn, end: Lsn) {
    let when = lock(&shared.times)
        .iter()
        .rev()
        .find(|(l, _)| *l == lsn)
        .map(|(_, t)| t.elapsed().as_secs_f64());
    let mut l = lock(&link.inner);
    l.acked = end;
    if let Some(hold) = &l.hold {
        hold.advance(end);
    }
    if let Some(lag) = when {
        if l.lags.len() == LAGS {
            l.lags.pop_front();
        }
        l.lags.push_back(lag);
    }
    if end >= shared.log_end() {
        l.state = LinkState::InSync;
    }
    drop(l);
    shared.notify();
}

/// Sends every cluster, as of a point the journal is read from afterwards; returns that point.
fn full_copy(shared: &Shared, link: &Link, conn: &mut Conn) -> Result<Lsn, End> {
    let volume = &shared.volume;
    let epoch = shared.conf.epoch;
    // Everything before `from` is in the cluster files; whatever a commit changes while the
    // copy reads them is sent again from the log afterwards (whole pages, in order).
    let from = volume.applied_lsn()?;
    let hold = volume.retain_from(from)?;
    // Destroyed before the list is taken: the copy does not have them.
    let gone = shared.to_tell(&link.addr);
    let descs = volume.clu_list();
    let total: u64 = descs.iter().map(|d| d.npages).sum();
    {
        let mut l = lock(&link.inner);
        l.hold = Some(hold);
        l.state = LinkState::Copying;
        l.copy = Some((0, total));
    }
    shared.notify();
    let clusters = descs.iter().map(CluInfo::of).collect();
    call(conn, &Msg::CopyBegin { epoch, clusters })?;
    let mut sent = 0;
    for d in &descs {
        for (first, n) in copy_chunks(d.npages) {
            if shared.stop.load(Ordering::Acquire) {
                return Err(End::Stopped);
            }
            match copy_chunk(volume, epoch, d, first, n) {
                Ok(Some(msg)) => {
                    call(conn, &msg)?;
                }
                Ok(None) => {}
                // Destroyed during the copy: the backup keeps zeros.
                Err(StorageError::NoSuchCluster(_)) => break,
                Err(e) => return Err(End::Broken(format!("reading cluster {}: {e}", d.id))),
            }
            sent += n;
            lock(&link.inner).copy = Some((sent, total));
        }
    }
    let position = Position {
        epoch,
        lsn: from,
        complete: true,
    };
    call(conn, &Msg::CopyEnd { epoch, position })?;
    // The copy emptied the backup's image first: it holds none of those clusters.
    shared.told(&link.addr, &gone);
    let mut l = lock(&link.inner);
    l.stale = false;
    l.copy = None;
    l.acked = from;
    l.state = LinkState::CatchingUp;
    info!(volume = %shared.name, backup = %link.addr, pages = total, %from, "full copy sent");
    Ok(from)
}

/// Starts a link's thread.
pub fn start(shared: Arc<Shared>, link: Arc<Link>) {
    let spawned = std::thread::Builder::new()
        .name(format!("goofy-{}", link.addr))
        .spawn(move || run(&shared, &link));
    if let Err(e) = spawned {
        warn!("cannot start a propagation thread: {e}");
    }
}
