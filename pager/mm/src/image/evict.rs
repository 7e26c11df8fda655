//! The resident set of an image: keeping within the budget (eviction in clock order, dirty
//! pages to the paging partition: the eviction family of actions, carried out here), punching
//! pages out of the memfd, write protection in every mapper, mapping pages ahead of faults, and
//! collecting the writes of write-protect-async mappers.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;

use clu_proto::PAGE_SIZE;
use clu_sys::sync::lock;
use clu_sys::uffd;
use nix::fcntl::{fallocate, FallocateFlags};
use tracing::{debug, warn};

use super::{io, Image, ImageState, PAGE};
use crate::error::Refusal;
use crate::page_state::{step, Action, Event, PageState};
use crate::runs::page_runs;
use crate::types::PageNo;

/// Pages evicted at once when the resident budget is reached.
const EVICT_BATCH: u64 = 32;

impl Image {
    /// Makes room for `need` more resident pages within the budget: evicts from the cached
    /// images first (no process maps them; least recently used first), then from this image,
    /// then from the other mapped ones.
    pub(super) fn make_room(&self, st: &mut ImageState, need: u64) {
        let Some(excess) = self.site.budget.excess(need) else {
            return;
        };
        let want = excess.max(EVICT_BATCH);
        let mut freed = self.site.reclaim_cached(self.id, want);
        if freed < want {
            freed += self.evict_some(st, want - freed);
        }
        if freed < want {
            self.site.reclaim_elsewhere(self.id, want - freed);
        }
    }

    /// Evicts up to `want` pages of this image if its lock is free now (reclaim on behalf of
    /// another image never waits). Returns how many.
    pub fn try_evict(&self, want: u64) -> u64 {
        match self.state.try_lock() {
            Ok(mut st) => self.evict_some(&mut st, want),
            Err(_) => 0,
        }
    }

    /// Evicts up to `want` pages, in clock order. Returns how many.
    fn evict_some(&self, st: &mut ImageState, want: u64) -> u64 {
        self.harvest(st);
        let n = st.pages.len() as u64;
        let mut freed = 0;
        let mut seen = 0;
        while freed < want && seen < n && st.resident > 0 {
            let page = st.hand % n;
            st.hand = (page + 1) % n;
            seen += 1;
            if st.pages[page as usize].resident() && self.evict_page(st, page) {
                freed += 1;
            }
        }
        freed
    }

    /// The eviction family: `Evict`, then `FlushDone` or `FlushFailed` for a dirty page.
    /// Returns whether the page left memory.
    fn evict_page(&self, st: &mut ImageState, page: u64) -> bool {
        let Ok((mut state, actions)) = step(st.pages[page as usize], Event::Evict) else {
            return false;
        };
        for a in actions {
            match *a {
                Action::Drop => {
                    self.punch(st, page, 1);
                    self.site.stats.evicted_clean.inc();
                }
                Action::WriteProtect => self.protect(PageNo(page), 1),
                Action::CopyToPaging => {
                    let done = match self.copy_to_paging(page) {
                        Ok(slot) => {
                            st.slots.insert(page, slot);
                            st.usage.paged_out();
                            Event::FlushDone
                        }
                        Err(e) => {
                            // A memory server that is not reached says so itself, once.
                            if e.code == clu_proto::ErrorCode::Unavailable {
                                tracing::debug!(cluster = %self.id, page, "eviction failed, the page stays resident: {e}");
                            } else {
                                warn!(cluster = %self.id, page, "eviction failed, the page stays resident: {e}");
                            }
                            Event::FlushFailed
                        }
                    };
                    let Ok((after, more)) = step(state, done) else {
                        return false;
                    };
                    state = after;
                    for b in more {
                        match *b {
                            Action::Drop => {
                                self.punch(st, page, 1);
                                self.site.stats.evicted_dirty.inc();
                            }
                            Action::Supply { .. }
                            | Action::MapResident { .. }
                            | Action::Unprotect
                            | Action::WriteProtect
                            | Action::CopyToJournal(_)
                            | Action::CopyToPaging
                            | Action::FreeSlot
                            | Action::Defer => self.unexpected(*b, "the end of a flush"),
                        }
                    }
                }
                Action::Supply { .. }
                | Action::MapResident { .. }
                | Action::Unprotect
                | Action::CopyToJournal(_)
                | Action::FreeSlot
                | Action::Defer => self.unexpected(*a, "an eviction"),
            }
        }
        st.pages[page as usize] = state;
        !state.resident()
    }

    fn copy_to_paging(&self, page: u64) -> Result<crate::paging::Slot, Refusal> {
        let mut buf = vec![0u8; PAGE_SIZE];
        self.memfd
            .read_exact_at(&mut buf, page * PAGE)
            .map_err(|e| io("reading the cluster's memory object", e))?;
        Ok(self.site.paging.store(&buf)?)
    }

    /// Removes resident pages `first..first+n` from the memfd, and so from every mapping.
    pub(super) fn punch(&self, st: &mut ImageState, first: u64, n: u64) {
        if let Err(e) = fallocate(
            self.memfd.as_raw_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            (first * PAGE) as i64,
            (n * PAGE) as i64,
        ) {
            warn!(cluster = %self.id, first, n, "punching pages out of the memory object: {e}");
        }
        self.lost(st, n);
    }

    /// Removes a list of resident pages (sorted), a run of consecutive ones at a time.
    pub(super) fn punch_pages(&self, st: &mut ImageState, pages: &[u64]) {
        for (first, n) in page_runs(pages, u64::MAX) {
            self.punch(st, first, n);
        }
    }

    /// Maps clean resident `pages` (sorted) in every process mapping the cluster, write-protected
    /// where the mapping is writable, without waiting for a fault. A page already mapped there
    /// ends its run early (EEXIST), which is harmless.
    pub(super) fn map_in_all(&self, pages: &[u64]) {
        for mapper in self.mappers_now().iter() {
            let Some(u) = &mapper.uffd else { continue };
            for (first, n) in page_runs(pages, u64::MAX) {
                for r in &mapper.regions {
                    if let Some(range) = r.range_of(PageNo(first), n) {
                        let _ = uffd::continue_range(u, range, mapper.writable);
                    }
                }
            }
        }
    }

    /// Maps ahead, in the process `conn`, every clean resident page of `region` (as
    /// `MAP_POPULATE` would): a cluster mapped while its image is resident (cached, or mapped
    /// elsewhere) then takes no fault at all where it is resident. Works a block of
    /// [`super::fault::RESIDENT_RUN`] pages at a time under the state's lock, so that a page
    /// is only ever mapped while it is clean and resident (write-protected in a writable
    /// mapping), and faults and commits go on between blocks. Returns the pages mapped.
    pub fn populate(&self, conn: crate::types::ConnId, region: crate::regions::UserRegion) -> u64 {
        let block = super::fault::RESIDENT_RUN;
        let (lo, hi) = (region.first_page.0, region.first_page.0 + region.npages);
        let mut mapped = 0;
        let mut at = lo;
        while at < hi {
            let end = (at + block).min(hi);
            let st = lock(&self.state);
            if st.closed {
                break;
            }
            let mappers = self.mappers_now();
            let Some(m) = mappers.iter().find(|m| m.conn == conn) else {
                break;
            };
            let Some(u) = &m.uffd else { break };
            let pages: Vec<u64> = (at..end.min(st.pages.len() as u64))
                .filter(|&p| st.pages[p as usize] == PageState::Read)
                .collect();
            for (first, n) in page_runs(&pages, u64::MAX) {
                if let Some(range) = region.range_of(PageNo(first), n) {
                    match uffd::continue_all(u, range, m.writable) {
                        Ok(b) => mapped += b / PAGE,
                        Err(e) => {
                            debug!(cluster = %self.id, conn = %conn, "populate: {e}");
                            return mapped;
                        }
                    }
                }
            }
            drop(st);
            at = end;
        }
        mapped
    }

    /// Write-protect-async mappers write to clean pages without a fault (the kernel lifts the
    /// protection itself): finds the pages they wrote since the last harvest with
    /// `PAGEMAP_SCAN`, which write-protects them again in the same pass, and marks them dirty
    /// (Read to KWrite, the transition a write-protect fault would have made; its `Unprotect`
    /// the kernel already did). Runs before every decision that relies on a page being clean:
    /// commit, abort, eviction.
    pub(super) fn harvest(&self, st: &mut ImageState) {
        let mut written = Vec::new();
        for mapper in self.mappers_now().iter().filter(|m| m.writable) {
            let Some(pm) = &mapper.pagemap else { continue };
            for r in &mapper.regions {
                let Some(end) = r.end() else { continue };
                match clu_sys::pagemap::take_written(pm.as_fd(), r.base.0, end.0) {
                    Ok(ranges) => {
                        for (a, b) in ranges {
                            let (a, b) = (a.max(r.base.0), b.min(end.0));
                            written.extend(
                                (a..b)
                                    .step_by(PAGE as usize)
                                    .map(|x| r.first_page.0 + (x - r.base.0) / PAGE),
                            );
                        }
                    }
                    Err(e) => debug!(cluster = %self.id, conn = %mapper.conn, "PAGEMAP_SCAN: {e}"),
                }
            }
        }
        for p in written {
            if st.pages.get(p as usize) == Some(&PageState::Read) {
                if let Ok((next, _)) = step(PageState::Read, Event::WpFault) {
                    st.pages[p as usize] = next;
                    st.usage.modified(p);
                }
            }
        }
    }

    /// Write-protects pages `first..first+n` in every process mapping them
    /// (`memory_object_lock_request`).
    pub(super) fn protect(&self, first: PageNo, n: u64) {
        for mapper in self.mappers_now().iter().filter(|m| m.writable) {
            let Some(u) = &mapper.uffd else { continue };
            for r in &mapper.regions {
                if let Some(range) = r.range_of(first, n) {
                    if let Err(e) = uffd::writeprotect(u, range, true) {
                        debug!(cluster = %self.id, conn = %mapper.conn, "write-protect: {e}");
                    }
                }
            }
        }
    }
}
