//! The journal of one volume: commit with group sync, checkpoint, rotation, retention, recovery.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::anchor::Anchor;
use crate::encode::{op_headers, op_span, seal_page, PageRun};
use crate::format::{decode_file_header, FileId, PAGE_SIZE};
use crate::reader::LogReader;
use crate::recovery::{self, LogImage};
use crate::{files, JournalError, Lsn};

const PAGE: u64 = PAGE_SIZE as u64;
const ANCHOR: &str = "anchor";

/// Tunables of a journal.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// Size of each log file; a new file starts when the next operation does not fit. Default
    /// 16 MiB (see the crate docs for why).
    pub rotate_bytes: u64,
    /// Force data to disk (`fdatasync`) at every validation and checkpoint. `false` keeps
    /// atomicity across process crashes but not machine crashes (the thesis's Log+noSync).
    pub sync: bool,
    /// The background checkpoint runs after this many rotations (default 4, so up to 64 MiB of
    /// log between checkpoints): the log absorbs bursts while the cluster files are written back
    /// lazily, and recovery never has more than this many files to replay.
    pub checkpoint_files: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            rotate_bytes: 16 << 20,
            sync: true,
            checkpoint_files: 4,
        }
    }
}

/// Where validated operations are applied: the volume's cluster files.
pub trait ApplyTarget: Send + Sync {
    /// Writes `pages` (whole pages) at page `first_page` of `cluster`. Must be idempotent.
    fn apply(&self, cluster: u32, first_page: u64, pages: &[u8]) -> io::Result<()>;
    /// Makes every page applied so far durable.
    fn sync(&self) -> io::Result<()>;
}

/// What recovery did when the journal was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Validated operations replayed onto the cluster files.
    pub replayed_ops: usize,
    /// Pages they wrote.
    pub replayed_pages: u64,
    /// Bytes of an unvalidated operation that were truncated (zeroed).
    pub truncated_bytes: u64,
    /// Where the log ends.
    pub log_end: Lsn,
}

/// Counters, for tests and statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Operations committed.
    pub commits: u64,
    /// `fdatasync` calls on log files made to validate commits (group commit shares them).
    pub log_syncs: u64,
    /// Checkpoints written to the anchor.
    pub checkpoints: u64,
}

struct Writer {
    file: Arc<File>,
    id: FileId,
    size: u64,
    offset: u64,
    /// The current file has its seal written: the next commit must start a new file.
    sealed: bool,
    /// Rotations since the background checkpoint was last asked for.
    rotations: u64,
}

struct SyncState {
    file: Arc<File>,
    written: Lsn,
    synced: Lsn,
    syncing: bool,
}

/// Why the background thread is woken.
#[derive(Clone, Copy, Debug, Default)]
struct Wake {
    /// A rotation happened: make sure a spare is ready.
    rotated: bool,
    /// `checkpoint_files` rotations happened: checkpoint too.
    checkpoint_due: bool,
}

struct Checkpoint {
    anchor: Anchor,
    /// The oldest log file still on disk.
    oldest_file: u64,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    config: JournalConfig,
    target: Arc<dyn ApplyTarget>,
    writer: Mutex<Writer>,
    sync: Mutex<SyncState>,
    synced_cv: Condvar,
    /// Operations written but not yet applied (their first LSN).
    pending: Mutex<BTreeSet<Lsn>>,
    checkpoint: Mutex<Checkpoint>,
    consumers: Mutex<BTreeMap<u64, Lsn>>,
    next_consumer: AtomicU64,
    /// Set by rotation for the background thread, which waits on `checkpoint_cv`.
    want_checkpoint: Mutex<Wake>,
    checkpoint_cv: Condvar,
    shutdown: AtomicBool,
    /// Serialises creating, recycling and deleting log files (innermost lock).
    files: Mutex<()>,
    stopped: Mutex<Option<String>>,
    commits: AtomicU64,
    log_syncs: AtomicU64,
    checkpoints: AtomicU64,
}

/// The write-ahead journal of one volume. Cheap to share: all methods take `&self`.
///
/// A background thread checkpoints after each log rotation and keeps a zero-filled spare file
/// ready, so that no commit waits for the cluster files to be synced or a log file to be built.
pub struct Journal {
    inner: Arc<Inner>,
    checkpointer: Option<JoinHandle<()>>,
}

/// A consumer's hold on the log (replication): files holding records at or after its position are
/// kept until it advances or is dropped.
pub struct Retention {
    inner: Arc<Inner>,
    id: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a journal lock is a bug in this crate; the state it guards stays
    // consistent (every update is a single assignment), so go on rather than cascade the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pwritev_all(file: &File, mut bufs: Vec<&[u8]>, mut offset: u64) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    let mut first = 0;
    while first < bufs.len() {
        let iov: Vec<IoSlice<'_>> = bufs[first..]
            .iter()
            .take(IOV_MAX)
            .map(|b| IoSlice::new(b))
            .collect();
        let off =
            i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut n = nix::sys::uio::pwritev(file, &iov, off).map_err(io::Error::from)?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        offset += n as u64;
        while n > 0 {
            let len = bufs[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                bufs[first] = &bufs[first][n..];
                n = 0;
            }
        }
    }
    Ok(())
}

impl Journal {
    /// Creates an empty journal in `dir` (created if missing). Fails if one exists there.
    pub fn create(dir: &Path, config: &JournalConfig) -> Result<(), JournalError> {
        Self::create_at(dir, config, 1)
    }

    /// Creates an empty journal whose first log file is `first_file`, so that its LSNs all come
    /// after those of another journal (a volume restored from a backup continues the history of
    /// the primary it replaces: its LSNs must stay comparable with the backups').
    pub fn create_at(
        dir: &Path,
        config: &JournalConfig,
        first_file: u64,
    ) -> Result<(), JournalError> {
        fs::create_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
        let anchor = dir.join(ANCHOR);
        if anchor.exists() {
            return Err(JournalError::AlreadyExists(dir.to_owned()));
        }
        let first_file = first_file.max(1);
        files::create(dir, first_file, config.rotate_bytes.max(4 * PAGE), true)?;
        Anchor::create(&anchor, Lsn::new(first_file, PAGE))?;
        files::sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            files::sync_dir(parent)?;
        }
        Ok(())
    }

    /// Opens the journal in `dir` and recovers: replays validated operations onto `target`,
    /// truncates an unvalidated tail, checkpoints, and deletes files nothing needs.
    pub fn open(
        dir: &Path,
        config: JournalConfig,
        target: Arc<dyn ApplyTarget>,
    ) -> Result<(Journal, RecoveryReport), JournalError> {
        let anchor_path = dir.join(ANCHOR);
        if !anchor_path.exists() {
            return Err(JournalError::NotFound(dir.to_owned()));
        }
        let mut anchor = Anchor::open(&anchor_path)?;
        let slot = anchor.current();
        let seqs = files::list(dir)?;
        let (obsolete, needed): (Vec<u64>, Vec<u64>) =
            seqs.iter().partition(|&&s| s < slot.durable_lsn.file);
        let mut images = Vec::with_capacity(needed.len());
        for &seq in &needed {
            let path = files::log_path(dir, seq);
            images.push((
                seq,
                fs::read(&path).map_err(|e| JournalError::io(&path, e))?,
            ));
        }
        let views: Vec<LogImage<'_>> = images
            .iter()
            .map(|(seq, bytes)| LogImage { seq: *seq, bytes })
            .collect();
        let plan = recovery::plan(&slot, &views).map_err(|source| JournalError::Recovery {
            dir: dir.to_owned(),
            source,
        })?;
        let bytes_of = |seq: u64| &images[(seq - slot.durable_lsn.file) as usize].1;
        let mut report = RecoveryReport {
            log_end: plan.log_end,
            ..RecoveryReport::default()
        };
        for op in &plan.replay {
            for run in &op.runs {
                let pages = &bytes_of(op.lsn.file)[run.bytes.clone()];
                target
                    .apply(op.cluster, run.first_page, pages)
                    .map_err(|source| JournalError::Apply {
                        lsn: op.lsn,
                        cluster: op.cluster,
                        source,
                    })?;
                report.replayed_pages += (pages.len() / PAGE_SIZE) as u64;
            }
            report.replayed_ops += 1;
        }
        let last_seq = plan.log_end.file;
        let path = files::log_path(dir, last_seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| JournalError::io(&path, e))?;
        if let Some((_, range)) = &plan.truncate {
            let zeros = vec![0u8; (range.end - range.start) as usize];
            file.write_all_at(&zeros, range.start)
                .map_err(|e| JournalError::io(&path, e))?;
            file.sync_data().map_err(|e| JournalError::io(&path, e))?;
            report.truncated_bytes = zeros.len() as u64;
        }
        if config.sync {
            target.sync().map_err(|e| JournalError::io(dir, e))?;
        }
        if slot.log_lsn != plan.log_end || slot.durable_lsn != plan.log_end {
            anchor.write(plan.log_end, plan.log_end, config.sync)?;
        }
        files::retire(
            dir,
            &obsolete,
            config.checkpoint_files as usize,
            config.sync,
        )?;
        let last = bytes_of(last_seq);
        let id =
            decode_file_header(&last[..PAGE_SIZE]).map_err(|reason| JournalError::Recovery {
                dir: dir.to_owned(),
                source: recovery::RecoveryError::BadFileHeader {
                    seq: last_seq,
                    reason,
                },
            })?;
        let file = Arc::new(file);
        let writer = Writer {
            file: file.clone(),
            id,
            size: last.len() as u64,
            offset: plan.log_end.offset,
            sealed: plan.last_sealed,
            rotations: 0,
        };
        let oldest_file = needed.first().copied().unwrap_or(last_seq);
        if report.replayed_ops > 0 || report.truncated_bytes > 0 {
            tracing::info!(dir = %dir.display(), ?report, "journal recovered");
        }
        let inner = Inner {
            dir: dir.to_owned(),
            config,
            target,
            writer: Mutex::new(writer),
            sync: Mutex::new(SyncState {
                file,
                written: plan.log_end,
                synced: plan.log_end,
                syncing: false,
            }),
            synced_cv: Condvar::new(),
            pending: Mutex::new(BTreeSet::new()),
            checkpoint: Mutex::new(Checkpoint {
                anchor,
                oldest_file,
            }),
            consumers: Mutex::new(BTreeMap::new()),
            next_consumer: AtomicU64::new(0),
            want_checkpoint: Mutex::new(Wake::default()),
            checkpoint_cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
            files: Mutex::new(()),
            stopped: Mutex::new(None),
            commits: AtomicU64::new(0),
            log_syncs: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
        };
        let inner = Arc::new(inner);
        let checkpointer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("journal-checkpoint".into())
                .spawn(move || inner.background())
                .map_err(|e| JournalError::io(dir, e))?
        };
        Ok((
            Journal {
                inner,
                checkpointer: Some(checkpointer),
            },
            report,
        ))
    }

    /// Commits one operation: the new images of some pages of `cluster`, atomically. When this
    /// returns `Ok`, the operation is validated (durable if the journal syncs) and applied to the
    /// cluster files; on `Err` it left no trace, except for [`JournalError::Apply`], after which
    /// the operation is durable and the journal stops until the volume is remounted.
    ///
    /// Returns the operation's LSN. Callers must not commit the same cluster concurrently (the
    /// storage service holds a per-cluster lock); commits of different clusters share syncs.
    pub fn commit(&self, cluster: u32, runs: &[PageRun<'_>]) -> Result<Lsn, JournalError> {
        let inner = &*self.inner;
        inner.check_running()?;
        let span = op_span(runs)?;
        if runs.is_empty() {
            return Ok(self.log_lsn());
        }
        let (lsn, end) = {
            let mut w = lock(&inner.writer);
            if w.sealed || w.offset + span + PAGE > w.size {
                inner.rotate(&mut w, span)?;
            }
            let lsn = Lsn::new(w.id.seq, w.offset);
            let headers = op_headers(w.id, w.offset, cluster, runs);
            let mut bufs = Vec::with_capacity(2 * runs.len());
            for (h, run) in headers.iter().zip(runs) {
                bufs.push(h.as_slice());
                bufs.push(run.pages);
            }
            // A failed write leaves nothing validated (no END record with a matching checksum);
            // the offset does not advance and the next operation overwrites the debris.
            pwritev_all(&w.file, bufs, w.offset)
                .map_err(|e| JournalError::io(files::log_path(&inner.dir, w.id.seq), e))?;
            w.offset += span;
            let end = Lsn::new(w.id.seq, w.offset);
            lock(&inner.pending).insert(lsn);
            let mut s = lock(&inner.sync);
            s.written = end;
            if !inner.config.sync {
                s.synced = end;
            }
            (lsn, end)
        };
        inner.commits.fetch_add(1, Ordering::Relaxed);
        if inner.config.sync {
            inner.wait_synced(end)?;
        }
        for run in runs {
            if let Err(source) = inner.target.apply(cluster, run.first_page, run.pages) {
                inner.stop(format!("applying operation {lsn} failed: {source}"));
                return Err(JournalError::Apply {
                    lsn,
                    cluster,
                    source,
                });
            }
        }
        lock(&inner.pending).remove(&lsn);
        Ok(lsn)
    }

    /// Makes every applied operation durable in the cluster files, advances `durableLSN` in the
    /// anchor and deletes log files that neither recovery nor any consumer needs.
    pub fn checkpoint(&self) -> Result<(), JournalError> {
        self.inner.checkpoint()
    }

    /// Checkpoints and closes the journal.
    pub fn close(mut self) -> Result<(), JournalError> {
        self.stop_background();
        self.inner.checkpoint()
    }

    fn stop_background(&mut self) {
        self.inner.shutdown.store(true, Ordering::Release);
        self.inner.checkpoint_cv.notify_all();
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
    }

    /// LSN just past the last validated operation.
    pub fn log_lsn(&self) -> Lsn {
        lock(&self.inner.sync).synced
    }

    /// Every operation before this LSN is validated *and* applied to the cluster files (an
    /// operation still being applied holds it back). A copy of the cluster files taken after
    /// reading it, plus the operations from it on, gives the state of the log's end.
    pub fn applied_lsn(&self) -> Lsn {
        let pending = lock(&self.inner.pending);
        let synced = lock(&self.inner.sync).synced;
        pending.first().map_or(synced, |&p| p.min(synced))
    }

    /// A reader of the validated operations in the log (see [`LogReader`]).
    pub fn reader(&self) -> LogReader {
        LogReader::new(self.inner.clone())
    }

    /// `durableLSN` as last written to the anchor.
    pub fn durable_lsn(&self) -> Lsn {
        lock(&self.inner.checkpoint).anchor.current().durable_lsn
    }

    /// Counters since open.
    pub fn stats(&self) -> JournalStats {
        let i = &self.inner;
        JournalStats {
            commits: i.commits.load(Ordering::Relaxed),
            log_syncs: i.log_syncs.load(Ordering::Relaxed),
            checkpoints: i.checkpoints.load(Ordering::Relaxed),
        }
    }

    /// Registers a consumer that needs the log from `from` on (the "retain from LSN" hook):
    /// checkpoints keep every file holding records at or after its position. Fails if those files
    /// are already gone (the consumer then needs a full copy).
    pub fn retain_from(&self, from: Lsn) -> Result<Retention, JournalError> {
        let ck = lock(&self.inner.checkpoint);
        if from.file < ck.oldest_file {
            return Err(JournalError::AlreadyDeleted {
                from,
                oldest: ck.oldest_file,
            });
        }
        let id = self.inner.next_consumer.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.consumers).insert(id, from);
        Ok(Retention {
            inner: self.inner.clone(),
            id,
        })
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if self.checkpointer.is_none() {
            return; // closed
        }
        self.stop_background();
        if lock(&self.inner.stopped).is_none() {
            if let Err(e) = self.inner.checkpoint() {
                tracing::warn!(dir = %self.inner.dir.display(), error = %e, "checkpoint at close failed; recovery will replay the log");
            }
        }
    }
}

impl Retention {
    /// The consumer no longer needs records before `to`.
    pub fn advance(&self, to: Lsn) {
        if let Some(pos) = lock(&self.inner.consumers).get_mut(&self.id) {
            *pos = (*pos).max(to);
        }
    }

    /// The position retained from.
    pub fn position(&self) -> Lsn {
        lock(&self.inner.consumers)
            .get(&self.id)
            .copied()
            .unwrap_or_default()
    }
}

impl Drop for Retention {
    fn drop(&mut self) {
        lock(&self.inner.consumers).remove(&self.id);
    }
}

impl Inner {
    pub(crate) fn log_lsn(&self) -> Lsn {
        lock(&self.sync).synced
    }

    pub(crate) fn oldest_file(&self) -> u64 {
        lock(&self.checkpoint).oldest_file
    }

    fn check_running(&self) -> Result<(), JournalError> {
        match &*lock(&self.stopped) {
            Some(reason) => Err(JournalError::Stopped(reason.clone())),
            None => Ok(()),
        }
    }

    fn stop(&self, reason: String) {
        tracing::error!(dir = %self.dir.display(), %reason, "journal stopped");
        lock(&self.stopped).get_or_insert(reason);
        self.synced_cv.notify_all();
    }

    /// Group commit: the first waiter syncs for everyone written so far; the others wait.
    fn wait_synced(&self, end: Lsn) -> Result<(), JournalError> {
        let mut s = lock(&self.sync);
        loop {
            self.check_running()?;
            if s.synced >= end {
                return Ok(());
            }
            if s.syncing {
                s = self.synced_cv.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            s.syncing = true;
            let (file, target) = (s.file.clone(), s.written);
            drop(s);
            let result = file.sync_data();
            self.log_syncs.fetch_add(1, Ordering::Relaxed);
            s = lock(&self.sync);
            s.syncing = false;
            if let Err(e) = result {
                // After a failed fsync the kernel may have dropped the dirty pages: nothing
                // written since the last good sync can be trusted. Stop; recovery sorts it out.
                drop(s);
                self.stop(format!("fdatasync of the log failed: {e}"));
                return Err(JournalError::io(files::log_path(&self.dir, target.file), e));
            }
            s.synced = s.synced.max(target);
            self.synced_cv.notify_all();
        }
    }

    /// Seals the current file and moves to a new one that can hold `span` bytes. Called with the
    /// writer lock held. If the new file cannot be created (disk full), the old one stays sealed
    /// and the next commit tries again.
    fn rotate(&self, w: &mut Writer, span: u64) -> Result<(), JournalError> {
        let path = files::log_path(&self.dir, w.id.seq);
        if !w.sealed {
            let seal = seal_page(w.id, w.offset);
            let sealed = w.file.write_all_at(&seal, w.offset).and_then(|()| {
                if self.config.sync {
                    w.file.sync_data()
                } else {
                    Ok(())
                }
            });
            if let Err(e) = sealed {
                self.stop(format!("sealing log file {} failed: {e}", w.id.seq));
                return Err(JournalError::io(path, e));
            }
            w.sealed = true;
            let mut s = lock(&self.sync);
            s.synced = s.synced.max(Lsn::new(w.id.seq, w.offset));
        }
        let size = self.config.rotate_bytes.max(span + 2 * PAGE).div_ceil(PAGE) * PAGE;
        let (file, id, len) = {
            let _files = lock(&self.files);
            files::create(&self.dir, w.id.seq + 1, size, self.config.sync)?
        };
        let file = Arc::new(file);
        let rotations = w.rotations + 1;
        *w = Writer {
            file: file.clone(),
            id,
            size: len,
            offset: PAGE,
            sealed: false,
            rotations,
        };
        let start = Lsn::new(id.seq, PAGE);
        let mut s = lock(&self.sync);
        s.file = file;
        s.written = start;
        s.synced = s.synced.max(start);
        drop(s);
        let due = w.rotations >= self.config.checkpoint_files.max(1);
        if due {
            w.rotations = 0;
        }
        let mut want = lock(&self.want_checkpoint);
        want.rotated = true;
        want.checkpoint_due |= due;
        self.checkpoint_cv.notify_all();
        Ok(())
    }

    /// The background thread: after each rotation, make sure a spare is ready for the next one;
    /// every `checkpoint_files` rotations, checkpoint (which retires old files into spares).
    fn background(&self) {
        loop {
            let due = {
                let mut want = lock(&self.want_checkpoint);
                while !want.rotated && !self.shutdown.load(Ordering::Acquire) {
                    want = self
                        .checkpoint_cv
                        .wait(want)
                        .unwrap_or_else(|e| e.into_inner());
                }
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                std::mem::take(&mut *want).checkpoint_due
            };
            if due {
                if let Err(e) = self.checkpoint() {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "background checkpoint failed");
                    continue;
                }
            }
            let prepared = {
                let _files = lock(&self.files);
                files::prepare_spare(
                    &self.dir,
                    self.config.rotate_bytes.max(4 * PAGE),
                    self.config.sync,
                )
            };
            if let Err(e) = prepared {
                tracing::warn!(dir = %self.dir.display(), error = %e, "preparing a spare log file failed");
            }
        }
    }

    fn checkpoint(&self) -> Result<(), JournalError> {
        self.check_running()?;
        let mut ck = lock(&self.checkpoint);
        let synced = lock(&self.sync).synced;
        let durable = lock(&self.pending)
            .first()
            .map_or(synced, |&p| p.min(synced));
        let current = ck.anchor.current();
        if current.log_lsn != synced || current.durable_lsn != durable {
            if self.config.sync {
                if let Err(e) = self.target.sync() {
                    self.stop(format!("syncing the cluster files failed: {e}"));
                    return Err(JournalError::io(&self.dir, e));
                }
            }
            if let Err(e) = ck.anchor.write(synced, durable, self.config.sync) {
                self.stop(format!("writing the anchor failed: {e}"));
                return Err(e);
            }
            self.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        let keep_from = lock(&self.consumers)
            .values()
            .map(|l| l.file)
            .fold(durable.file, u64::min);
        if keep_from > ck.oldest_file {
            let old: Vec<u64> = (ck.oldest_file..keep_from).collect();
            let _files = lock(&self.files);
            files::retire(
                &self.dir,
                &old,
                self.config.checkpoint_files as usize,
                self.config.sync,
            )?;
            ck.oldest_file = keep_from;
        }
        Ok(())
    }
}
