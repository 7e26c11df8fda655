//! Applying validated operations to the cluster files after the commit has returned: the
//! redo log's point (thesis IV.2.3 step 3 moved off the commit's path).
//!
//! [`Journal::commit_batch`](crate::Journal::commit_batch) takes the operation's pages by value
//! (a [`Batch`]), returns once the operation is validated in the log, and queues it; the
//! `journal-apply` thread writes it into the cluster files. Until then the operation stays in
//! `pending`, so `durableLSN` (the checkpoint) and `applied_lsn` (a backup's full copy) stay
//! before it, and recovery replays it after a crash: durability is the log's, as before.
//!
//! Whoever reads a cluster file first waits until the cluster has no queued operation
//! ([`Journal::wait_applied`](crate::Journal::wait_applied)), so a read never sees a stored
//! page older than a commit that returned. Operations of one cluster are applied in the order
//! they were queued, which is their log order (the storage service serialises a cluster's
//! commits); an inline commit of a cluster waits for that cluster's queued ones first.
//!
//! The queue holds at most [`MAX_QUEUED_BYTES`] of pages: a commit that would exceed it waits
//! for room (after its validation), so memory stays bounded under a burst.
//!
//! Lock: `queue` is a leaf (never held across an apply, a sync or another lock).

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};

use clu_sys::buf::PageBuf;
use clu_sys::sync::{lock, wait};

use crate::encode::PageRun;
use crate::format::PAGE_SIZE;
use crate::{JournalError, Lsn};

/// Pages queued for application at most; a commit beyond waits.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

/// The new images of some pages of one cluster, owned: runs of whole pages in one page-aligned
/// buffer (which lets the journal write them by direct I/O, and keep them until applied).
#[derive(Debug)]
pub struct Batch {
    buf: PageBuf,
    runs: Vec<(u64, usize, usize)>,
}

impl Batch {
    /// A batch over `buf`, with no run yet.
    pub fn new(buf: PageBuf) -> Batch {
        Batch {
            buf,
            runs: Vec::new(),
        }
    }

    /// Adds the run of `npages` pages starting at page `first_page` of the cluster, whose images
    /// are at byte `at` of the buffer. Fails if that range is not whole pages inside the buffer.
    pub fn push(&mut self, first_page: u64, at: usize, npages: usize) -> Result<(), JournalError> {
        let len = npages.checked_mul(PAGE_SIZE);
        match len.and_then(|l| at.checked_add(l)) {
            Some(end) if npages > 0 && at % PAGE_SIZE == 0 && end <= self.buf.len() => {
                self.runs.push((first_page, at, npages * PAGE_SIZE));
                Ok(())
            }
            _ => Err(JournalError::InvalidRun(format!(
                "a run of {npages} pages at byte {at} of a {}-byte batch",
                self.buf.len()
            ))),
        }
    }

    /// The runs, as the journal writes them.
    pub fn runs(&self) -> Vec<PageRun<'_>> {
        self.runs
            .iter()
            .map(|&(first_page, at, len)| PageRun {
                first_page,
                pages: &self.buf[at..at + len],
            })
            .collect()
    }

    /// Bytes of page images in the runs.
    pub fn bytes(&self) -> usize {
        self.runs.iter().map(|r| r.2).sum()
    }

    /// Whether there is no run.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

pub(crate) struct Queued {
    pub(crate) lsn: Lsn,
    pub(crate) cluster: u32,
    pub(crate) batch: Batch,
}

#[derive(Default)]
pub(crate) struct ApplyQueue {
    pub(crate) ops: VecDeque<Queued>,
    /// Bytes of the operations queued or being applied.
    pub(crate) bytes: usize,
    /// Operations queued or being applied, per cluster.
    pub(crate) per_cluster: HashMap<u32, usize>,
    /// Close: apply what is queued, then end.
    pub(crate) shutdown: bool,
    /// An application failed: nothing more is applied (recovery replays the rest).
    pub(crate) failed: bool,
}

/// The queue and its condition variable (woken at every change: work queued, an operation
/// applied, a failure, shutdown).
#[derive(Default)]
pub(crate) struct Applier {
    pub(crate) queue: Mutex<ApplyQueue>,
    pub(crate) changed: Condvar,
}

impl Applier {
    /// Queues a validated operation, waiting for room first.
    pub(crate) fn push(&self, op: Queued) {
        let bytes = op.batch.bytes();
        let mut q = lock(&self.queue);
        while q.bytes > 0 && q.bytes + bytes > MAX_QUEUED_BYTES && !q.failed && !q.shutdown {
            q = wait(&self.changed, q);
        }
        q.bytes += bytes;
        *q.per_cluster.entry(op.cluster).or_default() += 1;
        q.ops.push_back(op);
        self.changed.notify_all();
    }

    /// Waits until `cluster` (every cluster if `None`) has no queued operation. Fails if the
    /// journal stopped (an application failed): the stored pages may then be stale.
    pub(crate) fn wait_applied(
        &self,
        cluster: Option<u32>,
        stopped: impl Fn() -> Result<(), JournalError>,
    ) -> Result<(), JournalError> {
        let mut q = lock(&self.queue);
        loop {
            let busy = match cluster {
                Some(c) => q.per_cluster.contains_key(&c),
                None => q.bytes > 0 || !q.per_cluster.is_empty(),
            };
            if !busy {
                return Ok(());
            }
            if q.failed {
                drop(q);
                stopped()?;
                return Err(JournalError::Stopped(
                    "applying a validated operation failed".into(),
                ));
            }
            q = wait(&self.changed, q);
        }
    }

    /// The next operation to apply, or `None` once shut down and empty. The operation still
    /// counts as queued until [`Applier::done`].
    pub(crate) fn next(&self) -> Option<Queued> {
        let mut q = lock(&self.queue);
        loop {
            if let Some(op) = q.ops.pop_front() {
                if !q.failed {
                    return Some(op);
                }
                continue; // dropped: recovery replays it from the log
            }
            if q.shutdown {
                return None;
            }
            q = wait(&self.changed, q);
        }
    }

    /// `op` was applied (`ok`) or its application failed.
    pub(crate) fn done(&self, op: &Queued, ok: bool) {
        let mut q = lock(&self.queue);
        if ok {
            q.bytes -= op.batch.bytes();
            if let Some(n) = q.per_cluster.get_mut(&op.cluster) {
                *n -= 1;
                if *n == 0 {
                    q.per_cluster.remove(&op.cluster);
                }
            }
        } else {
            q.failed = true;
        }
        self.changed.notify_all();
    }

    pub(crate) fn shut_down(&self) {
        lock(&self.queue).shutdown = true;
        self.changed.notify_all();
    }
}
