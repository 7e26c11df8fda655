//! Commit, abort and release of an image: the write-back family of actions of the page state
//! machine (`Commit`, `CommitDone`, `CommitFailed`, `Abort`, `Release`), carried out here.

use std::os::fd::AsRawFd;

use clu_proto::PAGE_SIZE;
use clu_sys::buf::{Filler, PageBuf};
use clu_sys::sync::lock;
use journal::Batch;
use nix::fcntl::{fallocate, FallocateFlags};
use tracing::warn;

use super::{io, Image, ImageState, PAGE};
use crate::error::Refusal;
use crate::page_state::{step, Action, Event, PageState, Residence};
use crate::runs::page_runs;
use crate::types::PageNo;

/// A commit begun ([`Image::begin_commit`]): the dirty pages, each in its `Clean` state, and
/// where each is copied from.
pub(crate) struct Started {
    dirty: Vec<u64>,
    from: Vec<Residence>,
    /// A page refused its `Commit` event (the others went back to dirty).
    failed: Option<Refusal>,
}

/// A commit's snapshot copied ([`Image::copy_commit`]): the batch to write (`None` when
/// every dirty page equals its stored image), the pages of the snapshot and those written.
pub(crate) struct Snapshot {
    pub(crate) batch: Option<Batch>,
    pub(crate) dirty: Vec<u64>,
    pub(crate) kept: Vec<u64>,
}

impl Image {
    /// `clu_Commit`: writes the dirty pages back atomically through the volume's journal.
    /// Returns the number of pages written.
    pub fn commit(&self) -> Result<u64, Refusal> {
        let t0 = std::time::Instant::now();
        let _serial = lock(&self.commit_lock);
        if self.is_temporary() {
            // Never written to storage unless promoted (thesis G4): the pages stay dirty.
            return Ok(0);
        }
        let Some(started) = self.begin_commit() else {
            return Ok(0);
        };
        let snap = self.copy_commit(started)?;
        // The volume owns the batch from here (it may apply it after returning).
        let written = match snap.batch {
            Some(batch) => self
                .vol
                .clu_commit(self.id.clu(), batch)
                .map(|_| ())
                .map_err(Refusal::from),
            None => Ok(()),
        };
        self.end_commit(&snap.dirty, &snap.kept, written, t0)
    }

    /// The serialisation of commits and aborts of this image (a commit group holds it for
    /// each of its clusters, in cluster order).
    pub(crate) fn commit_serial(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.commit_lock)
    }

    /// The first step of a commit (the caller holds [`Image::commit_serial`]): collects the
    /// dirty pages and write-protects the cluster, so that from here on a write to any of its
    /// pages faults and waits for the commit (every page's `WriteProtect`), and each dirty
    /// page takes its `Commit` event. `None` if nothing is dirty. The snapshot is fixed
    /// here: a commit group takes this step for every cluster before it copies any.
    pub(crate) fn begin_commit(&self) -> Option<Started> {
        let mut st = lock(&self.state);
        self.harvest(&mut st);
        let dirty: Vec<u64> = (0..st.pages.len() as u64)
            .filter(|&p| matches!(st.pages[p as usize], PageState::KWrite | PageState::SWrite))
            .collect();
        if dirty.is_empty() {
            return None;
        }
        let npages = st.pages.len() as u64;
        self.protect(PageNo(0), npages);
        let mut from = Vec::with_capacity(dirty.len());
        for (i, &p) in dirty.iter().enumerate() {
            match self.start_commit(&mut st, p) {
                Ok(r) => from.push(r),
                Err(e) => {
                    // A page that cannot take `Commit` (a bug): the pages before it go back.
                    warn!(cluster = %self.id, page = p, "BUG: {e}");
                    self.finish_commit(&mut st, &dirty[..i], Event::CommitFailed);
                    return Some(Started {
                        dirty: Vec::new(),
                        from: Vec::new(),
                        failed: Some(e),
                    });
                }
            }
        }
        Some(Started {
            dirty,
            from,
            failed: None,
        })
    }

    /// The second step of a commit: copies the pages of the snapshot into one page-aligned
    /// buffer (so that the journal writes it by direct I/O, with no second copy) and makes
    /// the batch of the pages to write. On failure the pages go back to dirty.
    pub(crate) fn copy_commit(&self, started: Started) -> Result<Snapshot, Refusal> {
        let Started {
            dirty,
            from,
            failed,
        } = started;
        if let Some(e) = failed {
            return Err(e);
        }
        let mut st = lock(&self.state);
        let buf = match PageBuf::filled(dirty.len() * PAGE_SIZE, |buf| {
            self.copy_dirty(&st, &dirty, &from, buf)
        }) {
            Ok(buf) => buf,
            Err(e) => {
                self.finish_commit(&mut st, &dirty, Event::CommitFailed);
                return Err(e);
            }
        };
        // The pages to write: a zero-backed page still all zeros is equal to its stored
        // image already (its `CopyToJournal` is a no-op).
        let keep: Vec<usize> = (0..dirty.len())
            .filter(|&i| {
                let zero_backed = st.zero_backed.get(dirty[i] as usize).copied();
                let page = &buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                !(zero_backed == Some(true) && page.iter().all(|&b| b == 0))
            })
            .collect();
        drop(st);
        // Runs of pages consecutive in the cluster; consecutive in `buf` too, since `dirty` is
        // sorted and holds every dirty page between two kept ones.
        let kept: Vec<u64> = keep.iter().map(|&i| dirty[i]).collect();
        let mut batch = Batch::new(buf);
        let mut k = 0;
        let mut runs = Ok(());
        for (first, n) in page_runs(&kept, u64::MAX) {
            runs = runs.and(batch.push(first, keep[k] * PAGE_SIZE, n as usize));
            k += n as usize;
        }
        if let Err(e) = runs {
            let mut st = lock(&self.state);
            self.finish_commit(&mut st, &dirty, Event::CommitFailed);
            return Err(io("commit", e));
        }
        Ok(Snapshot {
            batch: (!batch.is_empty()).then_some(batch),
            dirty,
            kept,
        })
    }

    /// A commit begun and not copied goes back: its pages take `CommitFailed` (dirty again).
    pub(crate) fn cancel_commit(&self, started: Started) {
        let mut st = lock(&self.state);
        self.finish_commit(&mut st, &started.dirty, Event::CommitFailed);
    }

    /// The last step of a commit: each page of the snapshot takes `CommitDone` or
    /// `CommitFailed` as the write went, and the faults that waited are served. Returns the
    /// number of pages committed, or the write's error.
    pub(crate) fn end_commit(
        &self,
        dirty: &[u64],
        kept: &[u64],
        written: Result<(), Refusal>,
        t0: std::time::Instant,
    ) -> Result<u64, Refusal> {
        let mut st = lock(&self.state);
        if written.is_ok() {
            // Their stored images are not zero any more; a zero page brought in beside a
            // fault and written since counts as modified now (J3).
            let st = &mut *st;
            for &p in kept {
                if let Some(z) = st.zero_backed.get_mut(p as usize) {
                    if *z {
                        st.usage.modified(p);
                    }
                    *z = false;
                }
            }
        }
        // Even a failed commit may have reached storage (an error after the log write).
        st.commits += 1;
        let ev = if written.is_ok() {
            Event::CommitDone
        } else {
            Event::CommitFailed
        };
        self.finish_commit(&mut st, dirty, ev);
        drop(st);
        written?;
        self.commits_done
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.site.stats.commits.inc();
        self.site.stats.committed_pages.add(kept.len() as u64);
        self.site
            .stats
            .commit_latency
            .observe_duration(t0.elapsed());
        self.site.stats.commit_pages.0.observe(kept.len() as u64);
        Ok(dirty.len() as u64)
    }

    /// `Commit` for one dirty page; returns where its `CopyToJournal` copies it from (done
    /// for every page at once by [`Image::copy_dirty`]).
    fn start_commit(&self, st: &mut ImageState, p: u64) -> Result<Residence, Refusal> {
        let (next, actions) =
            step(st.pages[p as usize], Event::Commit).map_err(|e| io("commit", e))?;
        st.pages[p as usize] = next;
        let mut from = None;
        for a in actions {
            match *a {
                // Done for the whole cluster before the copies.
                Action::WriteProtect => {}
                Action::CopyToJournal(r) => from = Some(r),
                Action::Supply { .. }
                | Action::MapResident { .. }
                | Action::Unprotect
                | Action::CopyToPaging
                | Action::FreeSlot
                | Action::Drop
                | Action::Defer => self.unexpected(*a, "a commit"),
            }
        }
        from.ok_or_else(|| io("commit", "a dirty page with nothing to copy"))
    }

    /// The `CopyToJournal` actions of a commit: page `dirty[i]` into page `i` of `buf`, from
    /// its paging slot or from the memory object, one read per run of pages consecutive in
    /// memory.
    fn copy_dirty(
        &self,
        st: &ImageState,
        dirty: &[u64],
        from: &[Residence],
        buf: &mut Filler<'_>,
    ) -> Result<(), Refusal> {
        let mut i = 0;
        while i < dirty.len() {
            let p = dirty[i];
            if from[i] == Residence::Paging {
                let mut page = vec![0u8; PAGE_SIZE];
                match st.slots.get(&p) {
                    Some(&slot) => self.site.paging.load(slot, &mut page)?,
                    None => return Err(io("paging partition", "a dirty page has no slot")),
                }
                buf.copy(i * PAGE_SIZE, &page)
                    .map_err(|e| io("the commit's buffer", e))?;
                i += 1;
                continue;
            }
            let mut n = 1;
            while i + n < dirty.len()
                && dirty[i + n] == p + n as u64
                && from[i + n] == Residence::Memory
            {
                n += 1;
            }
            buf.read_at(i * PAGE_SIZE, n * PAGE_SIZE, &self.memfd, p * PAGE)
                .map_err(|e| io("reading the cluster's memory object", e))?;
            i += n;
        }
        Ok(())
    }

    /// `CommitDone` or `CommitFailed` for the pages of a commit, then the faults that waited.
    fn finish_commit(&self, st: &mut ImageState, pages: &[u64], ev: Event) {
        for &p in pages {
            if let Ok((next, actions)) = step(st.pages[p as usize], ev) {
                for a in actions {
                    match *a {
                        Action::FreeSlot => self.free_slot(st, p),
                        Action::Supply { .. }
                        | Action::MapResident { .. }
                        | Action::Unprotect
                        | Action::WriteProtect
                        | Action::CopyToJournal(_)
                        | Action::CopyToPaging
                        | Action::Drop
                        | Action::Defer => self.unexpected(*a, "the end of a commit"),
                    }
                }
                st.pages[p as usize] = next;
            }
        }
        self.replay(st);
    }

    fn replay(&self, st: &mut ImageState) {
        for f in std::mem::take(&mut st.deferred) {
            self.serve(st, f);
        }
    }

    /// `clu_Abort`: discards every modification since the last commit, in memory and in the
    /// paging partition. The next access reloads the page from storage.
    pub fn abort(&self) -> u64 {
        let _serial = lock(&self.commit_lock);
        let mut st = lock(&self.state);
        let discarded = self.discard_all(&mut st);
        self.replay(&mut st);
        self.site.stats.aborts.inc();
        discarded
    }

    /// `Abort` for every dirty page (after collecting the writes of write-protect-async
    /// mappers), the pages that must leave memory punched a run at a time. Returns how many
    /// pages were discarded.
    fn discard_all(&self, st: &mut ImageState) -> u64 {
        self.harvest(st);
        let mut drop = Vec::new();
        let mut discarded = 0;
        for p in 0..st.pages.len() as u64 {
            if let Some(punch) = self.discard_page(st, p) {
                if punch {
                    drop.push(p);
                }
                discarded += 1;
            }
        }
        self.punch_pages(st, &drop);
        discarded
    }

    /// `Abort` for page `p` if it is dirty: frees its slot; returns whether the page must
    /// leave memory (`Drop`, left to the caller, which punches runs at once), or `None` if
    /// there was nothing to discard.
    fn discard_page(&self, st: &mut ImageState, p: u64) -> Option<bool> {
        let state = st.pages[p as usize];
        if !state.dirty() {
            return None;
        }
        let (next, actions) = step(state, Event::Abort).ok()?;
        let mut punch = false;
        for a in actions {
            match *a {
                Action::Drop => punch = true,
                Action::FreeSlot => self.free_slot(st, p),
                Action::Supply { .. }
                | Action::MapResident { .. }
                | Action::Unprotect
                | Action::WriteProtect
                | Action::CopyToJournal(_)
                | Action::CopyToPaging
                | Action::Defer => self.unexpected(*a, "an abort"),
            }
        }
        st.pages[p as usize] = next;
        Some(punch)
    }

    /// The last mapper is gone and the image stays resident as the site's cache: its clean
    /// pages stay in the memfd (the next map finds them), a page still dirty is discarded as
    /// by an abort (see [`Image::release`]), the faults waiting for this use are dropped, and
    /// the access history is saved if this use read from storage. The reclaim takes its pages
    /// back like any other clean pages, the least recently used image first.
    pub fn retire(&self) {
        let (history, discarded) = {
            let mut st = lock(&self.state);
            let discarded = self.discard_all(&mut st);
            st.deferred.clear();
            st.hinted.clear();
            st.readahead = Default::default();
            st.resident_ra = Default::default();
            let history = std::mem::take(&mut st.read_in).then(|| st.history.take());
            if history.is_none() {
                st.history.take();
            }
            (history.unwrap_or_default(), discarded)
        };
        self.touch();
        if discarded > 0 {
            warn!(cluster = %self.id, pages = discarded, "pages modified after the last commit were discarded at the last unmap");
        }
        if !history.is_empty() {
            if let Err(e) = self.vol.clu_set_history(self.id.clu(), &history) {
                warn!(cluster = %self.id, "saving the access history: {e}");
            }
        }
    }

    /// The last mapper is gone: each page takes the `Release` event, the image's memory is
    /// given back at once, and the access history is saved (outside the image's lock). A page
    /// still dirty here (written after the last commit by the process that is unmapping, or a
    /// temporary cluster being destroyed) is discarded first, as by an abort.
    pub fn release(&self) {
        let (history, discarded) = {
            let mut st = lock(&self.state);
            let mut discarded = 0;
            for p in 0..st.pages.len() {
                // One punch of the whole memfd below does every `Drop`.
                if self.discard_page(&mut st, p as u64).is_some() {
                    discarded += 1;
                }
                match step(st.pages[p], Event::Release) {
                    Ok((next, actions)) => {
                        for a in actions {
                            match *a {
                                // One punch of the whole memfd below does every `Drop`.
                                Action::Drop => {}
                                Action::Supply { .. }
                                | Action::MapResident { .. }
                                | Action::Unprotect
                                | Action::WriteProtect
                                | Action::CopyToJournal(_)
                                | Action::CopyToPaging
                                | Action::FreeSlot
                                | Action::Defer => self.unexpected(*a, "a release"),
                            }
                        }
                        st.pages[p] = next;
                    }
                    Err(e) => {
                        warn!(cluster = %self.id, page = p, "BUG: releasing a page: {e}; it is dropped");
                        st.pages[p] = PageState::MapNone;
                    }
                }
            }
            let n = st.pages.len() as u64;
            if n > 0 {
                let _ = fallocate(
                    self.memfd.as_raw_fd(),
                    FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    0,
                    (n * PAGE) as i64,
                );
            }
            let resident = st.resident;
            self.lost(&mut st, resident);
            for (_, slot) in std::mem::take(&mut st.slots) {
                let _ = self.site.paging.free(slot);
            }
            st.deferred.clear();
            st.hinted.clear();
            st.closed = true;
            (st.history.take(), discarded)
        };
        if discarded > 0 && !self.is_temporary() {
            warn!(cluster = %self.id, pages = discarded, "pages modified after the last commit were discarded at the last unmap");
        }
        if !history.is_empty() {
            if let Err(e) = self.vol.clu_set_history(self.id.clu(), &history) {
                warn!(cluster = %self.id, "saving the access history: {e}");
            }
        }
    }
}
