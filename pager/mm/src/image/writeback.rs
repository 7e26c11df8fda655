//! Commit, abort and release of an image: the write-back family of actions of the page state
//! machine (`Commit`, `CommitDone`, `CommitFailed`, `Abort`, `Release`), carried out here.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use clu_proto::PAGE_SIZE;
use clu_sys::sync::lock;
use journal::PageRun;
use nix::fcntl::{fallocate, FallocateFlags};
use tracing::warn;

use super::{io, Image, ImageState, PAGE};
use crate::error::Refusal;
use crate::page_state::{step, Action, Event, PageState, Residence};
use crate::runs::page_runs;
use crate::types::PageNo;

impl Image {
    /// `clu_Commit`: writes the dirty pages back atomically through the volume's journal.
    /// Returns the number of pages written.
    pub fn commit(&self) -> Result<u64, Refusal> {
        let _serial = lock(&self.commit_lock);
        if self.is_temporary() {
            // Never written to storage unless promoted (thesis G4): the pages stay dirty.
            return Ok(0);
        }
        let (dirty, keep, buf) = {
            let mut st = lock(&self.state);
            self.harvest(&mut st);
            let dirty: Vec<u64> = (0..st.pages.len() as u64)
                .filter(|&p| matches!(st.pages[p as usize], PageState::KWrite | PageState::SWrite))
                .collect();
            if dirty.is_empty() {
                return Ok(0);
            }
            // One write-protect per region makes the snapshot point-in-time: from here on, a
            // write to any page of the cluster faults and waits for the commit. This is every
            // page's `WriteProtect` action at once.
            let npages = st.pages.len() as u64;
            self.protect(PageNo(0), npages);
            let mut buf = vec![0u8; dirty.len() * PAGE_SIZE];
            // The pages to write: a zero-backed page still all zeros is equal to its stored
            // image already (its `CopyToJournal` is a no-op).
            let mut keep = Vec::with_capacity(dirty.len());
            for (i, &p) in dirty.iter().enumerate() {
                let at = keep.len() * PAGE_SIZE;
                let chunk = &mut buf[at..at + PAGE_SIZE];
                if let Err(e) = self.start_commit(&mut st, p, chunk) {
                    self.finish_commit(&mut st, &dirty[..=i], Event::CommitFailed);
                    return Err(e);
                }
                let zero_backed = st.zero_backed.get(p as usize).copied().unwrap_or(false);
                if !(zero_backed && chunk.iter().all(|&b| b == 0)) {
                    keep.push(p);
                }
            }
            buf.truncate(keep.len() * PAGE_SIZE);
            (dirty, keep, buf)
        };
        let runs: Vec<PageRun<'_>> = {
            let mut at = 0;
            page_runs(&keep, u64::MAX)
                .map(|(first, n)| {
                    let len = n as usize * PAGE_SIZE;
                    let run = PageRun {
                        first_page: first,
                        pages: &buf[at..at + len],
                    };
                    at += len;
                    run
                })
                .collect()
        };
        let written = if runs.is_empty() {
            Ok(Default::default())
        } else {
            self.vol.clu_write(self.id.clu(), &runs)
        };
        let mut st = lock(&self.state);
        if written.is_ok() {
            // Their stored images are not zero any more; a zero page brought in beside a
            // fault and written since counts as modified now (J3).
            let st = &mut *st;
            for &p in &keep {
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
        self.finish_commit(&mut st, &dirty, ev);
        written?;
        self.site.stats.commits.inc();
        self.site.stats.committed_pages.add(keep.len() as u64);
        Ok(dirty.len() as u64)
    }

    /// `Commit` for one dirty page: its actions copy it into `chunk`.
    fn start_commit(&self, st: &mut ImageState, p: u64, chunk: &mut [u8]) -> Result<(), Refusal> {
        let (next, actions) =
            step(st.pages[p as usize], Event::Commit).map_err(|e| io("commit", e))?;
        st.pages[p as usize] = next;
        for a in actions {
            match *a {
                // Done for the whole cluster before the copies.
                Action::WriteProtect => {}
                Action::CopyToJournal(Residence::Memory) => self
                    .memfd
                    .read_exact_at(chunk, p * PAGE)
                    .map_err(|e| io("reading the cluster's memory object", e))?,
                Action::CopyToJournal(Residence::Paging) => match st.slots.get(&p) {
                    Some(&slot) => self.site.paging.load(slot, chunk)?,
                    None => return Err(io("paging partition", "a dirty page has no slot")),
                },
                Action::Supply { .. }
                | Action::MapResident { .. }
                | Action::Unprotect
                | Action::CopyToPaging
                | Action::FreeSlot
                | Action::Drop
                | Action::Defer => self.unexpected(*a, "a commit"),
            }
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
