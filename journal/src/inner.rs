//! The live state of an open journal: the writer (append, rotation), group commit, the
//! background checkpoint thread, retention.
//!
//! Locks (each a leaf unless said; `applier.queue` is a leaf too, see `apply`): `writer` serialises appends and is held across the append's
//! `pwritev` and a rotation (a sealing `fdatasync` and building a log file): it is the order of
//! the log, not a table. Inside it, `pending` and then `sync` are taken briefly. `sync` is never
//! held across the group `fdatasync` (`syncing` marks it under way). `checkpoint` is held across
//! a checkpoint's syncs and anchor write (checkpoints are serialised by design); inside it,
//! `sync`, `pending`, `consumers` and `files` are taken briefly. `files` is the innermost.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use clu_sys::sync::{lock, wait};

use crate::anchor::Anchor;
use crate::apply::Applier;
use crate::encode::seal_page;
use crate::format::FileId;
use crate::journal::PAGE;
use crate::tail::TailCache;
use crate::{files, ApplyTarget, JournalConfig, JournalError, Lsn};

pub(crate) struct Writer {
    pub(crate) file: Arc<File>,
    /// The same file opened for direct I/O, if the file system allows it: operations whose
    /// pages are page-aligned in memory go through it (no copy into the page cache).
    pub(crate) direct: Option<File>,
    pub(crate) id: FileId,
    pub(crate) size: u64,
    pub(crate) offset: u64,
    /// The current file has its seal written: the next commit must start a new file.
    pub(crate) sealed: bool,
    /// Rotations since the background checkpoint was last asked for.
    pub(crate) rotations: u64,
}

pub(crate) struct SyncState {
    pub(crate) file: Arc<File>,
    pub(crate) written: Lsn,
    /// Operations written since the journal was opened (the last one's ordinal).
    pub(crate) written_ops: u64,
    /// The log's end when the journal was opened: names this run of the journal (the
    /// ordinals above count from it).
    pub(crate) opened_at: Lsn,
    pub(crate) synced: Lsn,
    pub(crate) syncing: bool,
}

/// Why the background thread is woken.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Wake {
    /// A rotation happened: make sure a spare is ready.
    pub(crate) rotated: bool,
    /// `checkpoint_files` rotations happened: checkpoint too.
    pub(crate) checkpoint_due: bool,
}

pub(crate) struct Checkpoint {
    pub(crate) anchor: Anchor,
    /// The oldest log file still on disk.
    pub(crate) oldest_file: u64,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) config: JournalConfig,
    pub(crate) target: Arc<dyn ApplyTarget>,
    pub(crate) writer: Mutex<Writer>,
    pub(crate) sync: Mutex<SyncState>,
    pub(crate) synced_cv: Condvar,
    /// Operations written but not yet applied (their first LSN).
    pub(crate) pending: Mutex<BTreeSet<Lsn>>,
    pub(crate) checkpoint: Mutex<Checkpoint>,
    pub(crate) consumers: Mutex<BTreeMap<u64, Lsn>>,
    pub(crate) next_consumer: AtomicU64,
    /// Set by rotation for the background thread, which waits on `checkpoint_cv`.
    pub(crate) want_checkpoint: Mutex<Wake>,
    pub(crate) checkpoint_cv: Condvar,
    pub(crate) shutdown: AtomicBool,
    /// Serialises creating, recycling and deleting log files (innermost lock).
    pub(crate) files: Mutex<()>,
    pub(crate) stopped: Mutex<Option<String>>,
    pub(crate) commits: AtomicU64,
    pub(crate) log_syncs: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    /// Validated operations waiting to be applied (see `apply`).
    pub(crate) applier: Applier,
    /// The operations just written, for readers (see `tail`); `None` unless asked for.
    pub(crate) tail: Mutex<Option<TailCache>>,
    /// Called after each write to the log, before its sync (see `Journal::on_written`).
    pub(crate) on_written: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    /// Prepared groups not decided yet, by transaction (their operations stay in `pending`,
    /// so `durableLSN` stays before them). A leaf.
    pub(crate) prepared: Mutex<std::collections::HashMap<u64, Prepared>>,
}

/// A prepared group held until its decision: the coordinator's id and each operation.
pub(crate) struct Prepared {
    pub(crate) coordinator: u32,
    pub(crate) ops: Vec<crate::apply::Queued>,
}

pub(crate) fn pwritev_all(file: &File, mut bufs: Vec<&[u8]>, mut offset: u64) -> io::Result<()> {
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

/// What a journal wrote in this run (since it was opened), read at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// The log's end when the journal was opened: names the run (ordinals count from it).
    pub run: Lsn,
    /// The end of what was written to the log, validated or not yet.
    pub end: Lsn,
    /// Operations written in this run: the ordinal of the one that ends at `end` (the first
    /// is 1; 0 if none yet). [`crate::LoggedOp::seq`] gives an operation's.
    pub ops: u64,
}

impl Inner {
    /// See [`crate::Journal::written`].
    pub(crate) fn written(&self) -> Written {
        let s = lock(&self.sync);
        Written {
            run: s.opened_at,
            end: s.written,
            ops: s.written_ops,
        }
    }

    pub(crate) fn log_lsn(&self) -> Lsn {
        lock(&self.sync).synced
    }

    pub(crate) fn oldest_file(&self) -> u64 {
        lock(&self.checkpoint).oldest_file
    }

    pub(crate) fn check_running(&self) -> Result<(), JournalError> {
        match &*lock(&self.stopped) {
            Some(reason) => Err(JournalError::Stopped(reason.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn stop(&self, reason: String) {
        tracing::error!(dir = %self.dir.display(), %reason, "journal stopped");
        lock(&self.stopped).get_or_insert(reason);
        self.synced_cv.notify_all();
    }

    /// The `journal-apply` thread: applies queued operations in order until shut down.
    pub(crate) fn apply_loop(&self) {
        while let Some(op) = self.applier.next() {
            let mut ok = true;
            for run in op.batch.runs() {
                if let Err(e) = self.target.apply(op.cluster, run.first_page, run.pages) {
                    self.stop(format!(
                        "applying operation {} for cluster {:#010x} failed: {e}; it is durable in the log, unmount and mount the volume again (`pager vol unmount VOL`, `pager vol mount VOL`) to replay it",
                        op.lsn, op.cluster
                    ));
                    ok = false;
                    break;
                }
            }
            if ok {
                lock(&self.pending).remove(&op.lsn);
            }
            self.applier.done(&op, ok);
        }
    }

    /// Group commit: the first waiter syncs for everyone written so far; the others wait.
    pub(crate) fn wait_synced(&self, end: Lsn) -> Result<(), JournalError> {
        let mut s = lock(&self.sync);
        loop {
            self.check_running()?;
            if s.synced >= end {
                return Ok(());
            }
            if s.syncing {
                s = wait(&self.synced_cv, s);
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
    pub(crate) fn rotate(&self, w: &mut Writer, span: u64) -> Result<(), JournalError> {
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
            direct: files::open_direct(&files::log_path(&self.dir, id.seq)),
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
    pub(crate) fn background(&self) {
        loop {
            let due = {
                let mut want = lock(&self.want_checkpoint);
                while !want.rotated && !self.shutdown.load(Ordering::Acquire) {
                    want = wait(&self.checkpoint_cv, want);
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

    pub(crate) fn checkpoint(&self) -> Result<(), JournalError> {
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
