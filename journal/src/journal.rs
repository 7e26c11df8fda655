//! The journal of one volume: commit with group sync, checkpoint, rotation, retention, recovery.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use clu_sys::buf::direct_io_ready;
use clu_sys::sync::lock;

use crate::anchor::Anchor;
use crate::apply::{Batch, Queued};
use crate::encode::{decide_page, op_headers, op_span, prepare_page, InGroup, PageRun};
use crate::format::PAGE_SIZE;
use crate::inner::{pwritev_all, Inner, Prepared};
use crate::reader::{LogReader, LoggedOp};
use crate::tail::TailCache;
use crate::{files, JournalError, Lsn};

pub(crate) const PAGE: u64 = PAGE_SIZE as u64;
pub(crate) const ANCHOR: &str = "anchor";

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

/// The write-ahead journal of one volume. Cheap to share: all methods take `&self`.
///
/// A background thread checkpoints after each log rotation and keeps a zero-filled spare file
/// ready, so that no commit waits for the cluster files to be synced or a log file to be built.
pub struct Journal {
    pub(crate) inner: Arc<Inner>,
    pub(crate) checkpointer: Option<JoinHandle<()>>,
    pub(crate) applier: Option<JoinHandle<()>>,
}

/// A consumer's hold on the log (replication): files holding records at or after its position are
/// kept until it advances or is dropped.
pub struct Retention {
    inner: Arc<Inner>,
    id: u64,
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

    /// Commits one operation: the new images of some pages of `cluster`, atomically. When this
    /// returns `Ok`, the operation is validated (durable if the journal syncs) and applied to the
    /// cluster files; on `Err` it left no trace, except for [`JournalError::Apply`], after which
    /// the operation is durable and the journal stops until the volume is remounted.
    ///
    /// Returns the operation's LSN. Callers must not commit the same cluster concurrently (the
    /// storage service holds a per-cluster lock); commits of different clusters share syncs.
    pub fn commit(&self, cluster: u32, runs: &[PageRun<'_>]) -> Result<Lsn, JournalError> {
        match self.commit_many(&[(cluster, runs)])?.first() {
            Some(lsn) => Ok(*lsn),
            None => Ok(self.log_lsn()),
        }
    }

    /// Commits several operations, each as [`Journal::commit`] does, in this order and
    /// validated by one `fdatasync`: the operations follow each other in one log file, so
    /// recovery, which ends the log at the first operation not validated, keeps a prefix of
    /// them (after a crash, a later one is never kept without the earlier ones). Operations of
    /// different clusters or of one cluster; an operation with no run is left out. Returns the
    /// LSN of each operation logged.
    ///
    /// Not one atomic operation: a crash before the call returns may keep the first ones and
    /// drop the rest. When they do not fit together in one log file they are committed one
    /// after the other (one sync each), which keeps the same guarantee.
    pub fn commit_many(&self, ops: &[(u32, &[PageRun<'_>])]) -> Result<Vec<Lsn>, JournalError> {
        let inner = &*self.inner;
        let lsns = self.log_all(ops)?;
        for (&lsn, (cluster, runs)) in lsns.iter().zip(ops.iter().filter(|(_, r)| !r.is_empty())) {
            let cluster = *cluster;
            // This cluster's queued operations come first (they are earlier in the log).
            inner
                .applier
                .wait_applied(Some(cluster), || inner.check_running())?;
            for run in *runs {
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
        }
        Ok(lsns)
    }

    /// Commits one operation as [`Journal::commit`] does, but returns as soon as it is
    /// validated in the log: the `journal-apply` thread writes it into the cluster files
    /// afterwards (readers wait for it: [`Journal::wait_applied`]). A failure to apply it then
    /// stops the journal; the operation is durable and recovery replays it at the next mount.
    pub fn commit_batch(&self, cluster: u32, batch: Batch) -> Result<Lsn, JournalError> {
        match self.commit_batches(vec![(cluster, batch)])?.first() {
            Some(lsn) => Ok(*lsn),
            None => Ok(self.log_lsn()),
        }
    }

    /// Commits several operations as [`Journal::commit_many`] does (one sync, and a crash
    /// keeps a prefix of them), each applied afterwards as [`Journal::commit_batch`] does.
    pub fn commit_batches(&self, ops: Vec<(u32, Batch)>) -> Result<Vec<Lsn>, JournalError> {
        self.queue_batches(ops, false)
    }

    /// Commits several operations as one atomic *group*: after a crash, recovery keeps all of
    /// them or none (the operations follow each other in one log file, and every one but the
    /// last carries the group flag: see the crate's format docs). Validated by one sync, and
    /// applied afterwards as [`Journal::commit_batch`] does. The operations may write
    /// different clusters or one; an operation with no run is left out. Returns the LSN of
    /// each operation logged, in order. A group larger than a log file gets a file of its own.
    pub fn commit_group(&self, ops: Vec<(u32, Batch)>) -> Result<Vec<Lsn>, JournalError> {
        self.queue_batches(ops, true)
    }

    fn queue_batches(&self, ops: Vec<(u32, Batch)>, group: bool) -> Result<Vec<Lsn>, JournalError> {
        let logged = with_runs(&ops, |refs| {
            if group {
                Ok(self.log_many(refs, true)?.unwrap_or_default())
            } else {
                self.log_all(refs)
            }
        })?;
        for ((cluster, batch), &lsn) in ops.into_iter().filter(|(_, b)| !b.is_empty()).zip(&logged)
        {
            self.inner.applier.push(Queued {
                lsn,
                cluster,
                batch,
            });
        }
        Ok(logged)
    }

    /// Prepares a group (the first phase of a two-phase commit across volumes): logs and
    /// validates `ops` as [`Journal::commit_group`] does, closed by a prepare record of
    /// transaction `txid` naming `coordinator` (opaque here), but applies nothing: the group
    /// is held, in the log and in memory, until [`Journal::decide`]. After a crash before the
    /// decision, [`Journal::open`] holds it again ([`Journal::in_doubt`]). Returns the LSN of
    /// each operation; none (and nothing logged) when no operation has a page.
    pub fn prepare_group(
        &self,
        ops: Vec<(u32, Batch)>,
        txid: u64,
        coordinator: u32,
    ) -> Result<Vec<Lsn>, JournalError> {
        if ops.iter().all(|(_, b)| b.is_empty()) {
            return Ok(Vec::new());
        }
        if lock(&self.inner.prepared).contains_key(&txid) {
            return Err(JournalError::InvalidRun(format!(
                "transaction {txid:#x} is already prepared here"
            )));
        }
        let logged = with_runs(&ops, |refs| {
            self.log_ops(refs, true, Some((txid, coordinator)))
        })?
        .unwrap_or_default();
        let held = ops
            .into_iter()
            .filter(|(_, b)| !b.is_empty())
            .zip(&logged)
            .map(|((cluster, batch), &lsn)| Queued {
                lsn,
                cluster,
                batch,
            })
            .collect();
        lock(&self.inner.prepared).insert(
            txid,
            Prepared {
                coordinator,
                ops: held,
            },
        );
        Ok(logged)
    }

    /// The second phase: logs the decision of transaction `txid` (validated when this
    /// returns), then applies its prepared group (commit) or drops it (abort). A transaction
    /// not prepared here is no error (nothing to do).
    pub fn decide(&self, txid: u64, commit: bool) -> Result<(), JournalError> {
        if let Some(end) = self.decide_unsynced(txid, commit)? {
            self.sync_to(end)?;
        }
        Ok(())
    }

    /// [`Journal::decide`] without waiting for the decide record's sync: it is written and
    /// the group applied (commit) or dropped (abort) when this returns, and it is validated
    /// by the next sync of the log (any later commit's, or [`Journal::sync_to`] the LSN
    /// returned: none when nothing was prepared for `txid`). Until then a crash leaves the
    /// group in doubt again, so a coordinator keeps its decision until every participant's
    /// decide record is validated.
    pub fn decide_unsynced(&self, txid: u64, commit: bool) -> Result<Option<Lsn>, JournalError> {
        let Some(group) = lock(&self.inner.prepared).remove(&txid) else {
            return Ok(None);
        };
        let end = match self.log_decision(txid, commit) {
            Ok(end) => end,
            Err(e) => {
                // The group stays held, and the journal stops: the outcome may be decided
                // elsewhere already, and the next mount learns it (the coordinator's decisions).
                lock(&self.inner.prepared).insert(txid, group);
                self.inner.stop(format!(
                    "logging the decision of transaction {txid:#x} failed: {e}"
                ));
                return Err(e);
            }
        };
        if commit {
            for op in group.ops {
                self.inner.applier.push(op);
            }
        } else {
            let mut pending = lock(&self.inner.pending);
            for op in &group.ops {
                pending.remove(&op.lsn);
            }
        }
        Ok(Some(end))
    }

    /// Waits until the log is validated (synced) up to `end`, syncing it if no other commit
    /// is doing so.
    pub fn sync_to(&self, end: Lsn) -> Result<(), JournalError> {
        if self.inner.config.sync {
            self.inner.wait_synced(end)?;
        }
        Ok(())
    }

    /// The prepared groups held, not decided: transaction and coordinator.
    pub fn in_doubt(&self) -> Vec<(u64, u32)> {
        let mut v: Vec<(u64, u32)> = lock(&self.inner.prepared)
            .iter()
            .map(|(t, p)| (*t, p.coordinator))
            .collect();
        v.sort_unstable();
        v
    }

    /// The clusters of the prepared groups held (their stored image waits for a decision).
    pub fn in_doubt_clusters(&self) -> Vec<u32> {
        let mut v: Vec<u32> = lock(&self.inner.prepared)
            .values()
            .flat_map(|p| p.ops.iter().map(|o| o.cluster))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// As the coordinator of transaction `txid`: records the decision to commit it in the
    /// decisions file beside this journal (see [`crate::decisions`]), durably. This is the
    /// commit point of a two-phase commit.
    pub fn record_decision(&self, txid: u64) -> Result<(), JournalError> {
        self.inner.check_running()?;
        crate::decisions::append(&self.inner.dir, txid, true, self.inner.config.sync)
            .map_err(|e| JournalError::io(self.inner.dir.join("decisions"), e))
    }

    /// As the coordinator: every participant of `txid` recorded the outcome; the decision
    /// need not be kept (not synced: a decision kept too long costs 32 bytes).
    pub fn forget_decision(&self, txid: u64) -> Result<(), JournalError> {
        crate::decisions::append(&self.inner.dir, txid, false, false)
            .map_err(|e| JournalError::io(self.inner.dir.join("decisions"), e))
    }

    /// Logs a decide record (written, not waited for: returns the log's end after it).
    fn log_decision(&self, txid: u64, commit: bool) -> Result<Lsn, JournalError> {
        let inner = &*self.inner;
        inner.check_running()?;
        let end = {
            let mut w = lock(&inner.writer);
            if w.sealed || w.offset + 2 * PAGE > w.size {
                inner.rotate(&mut w, PAGE)?;
            }
            let at = w.offset;
            let page = decide_page(w.id, at, txid, commit);
            use std::os::unix::fs::FileExt;
            w.file
                .write_all_at(&page, at)
                .map_err(|e| JournalError::io(files::log_path(&inner.dir, w.id.seq), e))?;
            w.offset = at + PAGE;
            let end = Lsn::new(w.id.seq, w.offset);
            let mut s = lock(&inner.sync);
            s.written = end;
            if !inner.config.sync {
                s.synced = end;
            }
            end
        };
        Ok(end)
    }

    /// Waits until every operation of `cluster` that was committed is applied to its file, so
    /// that reading the file gives the committed pages. Fails if the journal stopped because an
    /// application failed.
    pub fn wait_applied(&self, cluster: u32) -> Result<(), JournalError> {
        let inner = &*self.inner;
        inner
            .applier
            .wait_applied(Some(cluster), || inner.check_running())
    }

    /// Waits until every committed operation is applied.
    pub fn drain(&self) -> Result<(), JournalError> {
        let inner = &*self.inner;
        inner.applier.wait_applied(None, || inner.check_running())
    }

    /// Logs and validates `ops` with one sync if they fit together in one log file, else one
    /// after the other (one sync each): either way a crash keeps a prefix of them.
    fn log_all(&self, ops: &[(u32, &[PageRun<'_>])]) -> Result<Vec<Lsn>, JournalError> {
        if let Some(lsns) = self.log_many(ops, false)? {
            return Ok(lsns);
        }
        let mut lsns = Vec::with_capacity(ops.len());
        for op in ops {
            lsns.extend(
                self.log_many(std::slice::from_ref(op), false)?
                    .unwrap_or_default(),
            );
        }
        Ok(lsns)
    }

    /// Logs and validates operations (steps 1 and 2), one after the other in one log file,
    /// then waits for one sync; returns their LSNs (none for an operation without a page), or
    /// `None`, having written nothing, when several do not fit together in one file (never
    /// for a `group`: it gets a file as large as it needs). Each operation is in `pending`
    /// until applied. A `group` is logged as one atomic group (see [`Journal::commit_group`]).
    fn log_many(
        &self,
        ops: &[(u32, &[PageRun<'_>])],
        group: bool,
    ) -> Result<Option<Vec<Lsn>>, JournalError> {
        self.log_ops(ops, group, None)
    }

    /// [`Journal::log_many`], the group closed by a prepare record of transaction `prepare`
    /// (id, coordinator) when given.
    fn log_ops(
        &self,
        ops: &[(u32, &[PageRun<'_>])],
        group: bool,
        prepare: Option<(u64, u32)>,
    ) -> Result<Option<Vec<Lsn>>, JournalError> {
        let inner = &*self.inner;
        inner.check_running()?;
        let mut spans = Vec::with_capacity(ops.len());
        for (_, runs) in ops {
            spans.push(op_span(runs)?);
        }
        let mut total: u64 = spans.iter().sum();
        if total == 0 {
            return Ok(Some(Vec::new()));
        }
        if prepare.is_some() {
            total += PAGE;
        }
        let mut lsns = Vec::with_capacity(ops.len());
        // The last operation with pages closes the group; the others carry the group flag.
        let last = ops.iter().rposition(|(_, r)| !r.is_empty());
        let open = |i: usize| group && (Some(i) != last || prepare.is_some());
        let end = {
            let mut w = lock(&inner.writer);
            if w.sealed || w.offset + total + PAGE > w.size {
                if !group
                    && ops.iter().filter(|(_, r)| !r.is_empty()).count() > 1
                    && total + 2 * PAGE > inner.config.rotate_bytes.max(PAGE)
                {
                    return Ok(None);
                }
                inner.rotate(&mut w, total)?;
            }
            let first = Lsn::new(w.id.seq, w.offset);
            let mut bufs = Vec::new();
            let mut headers = Vec::with_capacity(ops.len());
            let mut at = w.offset;
            let mut first_index = 0u32;
            for (i, ((cluster, runs), span)) in ops.iter().zip(&spans).enumerate() {
                if runs.is_empty() {
                    continue;
                }
                let place = if group {
                    InGroup {
                        op_offset: first.offset,
                        first_index,
                        open: open(i),
                    }
                } else {
                    InGroup::alone(at)
                };
                first_index = first_index.saturating_add(runs.len() as u32);
                headers.push((op_headers(w.id, at, *cluster, runs, place), *runs));
                lsns.push(Lsn::new(w.id.seq, at));
                at += span;
            }
            let closing = prepare.map(|(txid, coordinator)| {
                let place = InGroup {
                    op_offset: first.offset,
                    first_index,
                    open: false,
                };
                prepare_page(w.id, at, place, txid, coordinator)
            });
            for (h, runs) in &headers {
                for (h, run) in h.chunks(PAGE_SIZE).zip(runs.iter()) {
                    bufs.push(h);
                    bufs.push(run.pages);
                }
            }
            if let Some(page) = &closing {
                bufs.push(page);
                at += PAGE;
            }
            // Page-aligned pages go to disk by direct I/O, without a copy into the page cache
            // (the group `fdatasync` still validates them: it flushes the device's cache).
            let aligned = ops
                .iter()
                .all(|(_, runs)| runs.iter().all(|r| direct_io_ready(r.pages)));
            let file = match &w.direct {
                Some(direct) if aligned => direct,
                _ => &*w.file,
            };
            // A failed write leaves nothing validated (no END record with a matching checksum);
            // the offset does not advance and the next operation overwrites the debris.
            pwritev_all(file, bufs, first.offset)
                .map_err(|e| JournalError::io(files::log_path(&inner.dir, w.id.seq), e))?;
            // Kept for the readers before they can see it written.
            let before = lock(&inner.sync).written_ops;
            // (A prepared group is not for the readers: reliable volumes refuse it.)
            if let Some(tail) = lock(&inner.tail).as_mut().filter(|_| prepare.is_none()) {
                let mut ordinals = before + 1..;
                let mut ends = lsns.iter().skip(1).copied().chain([Lsn::new(w.id.seq, at)]);
                let with_pages = ops.iter().enumerate().filter(|(_, (_, r))| !r.is_empty());
                for ((i, (cluster, runs)), &lsn) in with_pages.zip(&lsns) {
                    tail.push(LoggedOp {
                        lsn,
                        end: ends.next().unwrap_or(lsn),
                        cluster: *cluster,
                        runs: runs
                            .iter()
                            .map(|r| (r.first_page, r.pages.to_vec()))
                            .collect(),
                        seq: ordinals.next().unwrap_or(0),
                        group_open: open(i),
                    });
                }
            }
            w.offset = at;
            let end = Lsn::new(w.id.seq, w.offset);
            lock(&inner.pending).extend(lsns.iter().copied());
            let mut s = lock(&inner.sync);
            s.written = end;
            s.written_ops = before + lsns.len() as u64;
            if !inner.config.sync {
                s.synced = end;
            }
            end
        };
        inner
            .commits
            .fetch_add(lsns.len() as u64, Ordering::Relaxed);
        let hook = lock(&inner.on_written).clone();
        if let Some(hook) = hook {
            hook();
        }
        if inner.config.sync {
            inner.wait_synced(end)?;
        }
        Ok(Some(lsns))
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
        // What is queued is applied first, so that the closing checkpoint covers it.
        self.inner.applier.shut_down();
        if let Some(t) = self.applier.take() {
            let _ = t.join();
        }
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

    /// Keeps the operations written last, up to `max_bytes` of pages, in memory for the
    /// readers ([`LogReader::next_written`]): a backup's link then sends them without reading
    /// them back from the disk.
    pub fn keep_tail(&self, max_bytes: usize) {
        *lock(&self.inner.tail) = Some(TailCache::new(max_bytes));
    }

    /// Calls `hook` after each write to the log, before the write is synced: a reader
    /// following [`LogReader::next_written`] can start on it while the commit waits for its
    /// sync.
    pub fn on_written(&self, hook: Arc<dyn Fn() + Send + Sync>) {
        *lock(&self.inner.on_written) = Some(hook);
    }

    /// The end of what was written to the log, validated or not yet (at least
    /// [`Journal::log_lsn`]).
    pub fn written_lsn(&self) -> Lsn {
        lock(&self.inner.sync).written
    }

    /// The end of what was written to the log and the number of operations written since the
    /// journal was opened, read together (see [`Written`]).
    pub fn written(&self) -> crate::Written {
        self.inner.written()
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

/// Calls `f` with the operations `ops` as the writer takes them: each cluster with its runs.
fn with_runs<T>(ops: &[(u32, Batch)], f: impl FnOnce(&[(u32, &[PageRun<'_>])]) -> T) -> T {
    let runs: Vec<Vec<PageRun<'_>>> = ops.iter().map(|(_, b)| b.runs()).collect();
    let refs: Vec<(u32, &[PageRun<'_>])> = ops
        .iter()
        .zip(&runs)
        .map(|((c, _), r)| (*c, r.as_slice()))
        .collect();
    f(&refs)
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
