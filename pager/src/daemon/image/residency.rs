//! The resident set of an image: keeping within the budget (eviction in clock order, dirty
//! pages to the paging partition), punching pages out of the memfd, write protection in every
//! mapper, mapping pages ahead of faults, and collecting the writes of write-protect-async
//! mappers.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;

use client::uffd;
use client::PAGE_SIZE;
use nix::fcntl::{fallocate, FallocateFlags};
use tracing::{debug, warn};

use super::{io, Image, ImageState, EVICT_BATCH, PAGE};
use crate::daemon::error::Refusal;
use crate::daemon::manager::Manager;
use crate::page_state::{step, Action, Event, PageState};

impl Image {
    /// Makes room for `need` more resident pages within the budget: evicts from this image
    /// first, then from others.
    pub(super) fn make_room(&self, m: &Manager, st: &mut ImageState, need: u64) {
        let resident = m.resident();
        if resident + need <= m.budget {
            return;
        }
        let want = (resident + need - m.budget).max(EVICT_BATCH);
        let freed = self.evict_some(m, st, want);
        if freed < want {
            m.evict_elsewhere(self.id, want - freed);
        }
    }

    /// Evicts up to `want` pages, in clock order. Returns how many.
    pub fn evict_some(&self, m: &Manager, st: &mut ImageState, want: u64) -> u64 {
        self.harvest(st);
        let n = st.pages.len() as u64;
        let mut freed = 0;
        let mut seen = 0;
        while freed < want && seen < n && st.resident > 0 {
            let page = st.hand % n;
            st.hand = (page + 1) % n;
            seen += 1;
            if st.pages[page as usize].resident() && self.evict_page(m, st, page) {
                freed += 1;
            }
        }
        freed
    }

    pub(super) fn evict_page(&self, m: &Manager, st: &mut ImageState, page: u64) -> bool {
        let Ok((next, actions)) = step(st.pages[page as usize], Event::Evict) else {
            return false;
        };
        let mut state = next;
        for a in actions {
            match a {
                Action::Drop => {
                    self.punch(m, st, page, 1);
                    m.stats.evicted_clean.inc();
                }
                Action::WriteProtect => self.protect(st, page, 1),
                Action::CopyToPaging => {
                    let mut buf = vec![0u8; PAGE_SIZE];
                    let stored = self
                        .memfd
                        .read_exact_at(&mut buf, page * PAGE)
                        .map_err(|e| io("reading the cluster's memory object", e))
                        .and_then(|()| m.paging.store(&buf).map_err(Refusal::from));
                    let done = match stored {
                        Ok(slot) => {
                            st.slots.insert(page, slot);
                            st.usage.paged_out();
                            Event::FlushDone
                        }
                        Err(e) => {
                            warn!(cluster = %self.id, page, "eviction failed, the page stays resident: {e}");
                            Event::FlushFailed
                        }
                    };
                    let Ok((after, more)) = step(state, done) else {
                        return false;
                    };
                    state = after;
                    if more.contains(&Action::Drop) {
                        self.punch(m, st, page, 1);
                        m.stats.evicted_dirty.inc();
                    }
                }
                _ => {}
            }
        }
        st.pages[page as usize] = state;
        !state.resident()
    }

    /// Removes resident pages `first..first+n` from the memfd, and so from every mapping.
    pub(super) fn punch(&self, m: &Manager, st: &mut ImageState, first: u64, n: u64) {
        if let Err(e) = fallocate(
            self.memfd.as_raw_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            (first * PAGE) as i64,
            (n * PAGE) as i64,
        ) {
            warn!(cluster = %self.id, first, n, "punching pages out of the memory object: {e}");
        }
        st.resident = st.resident.saturating_sub(n);
        m.sub_resident(n);
    }

    /// Removes a list of resident pages, a run of consecutive ones at a time.
    pub(super) fn punch_pages(&self, m: &Manager, st: &mut ImageState, pages: &[u64]) {
        let mut i = 0;
        while i < pages.len() {
            let mut j = i + 1;
            while j < pages.len() && pages[j] == pages[j - 1] + 1 {
                j += 1;
            }
            self.punch(m, st, pages[i], (j - i) as u64);
            i = j;
        }
    }

    /// Maps clean resident `pages` (sorted) in every process mapping the cluster, write-protected
    /// where the mapping is writable, without waiting for a fault. A page already mapped there
    /// ends its run early (EEXIST), which is harmless.
    pub(super) fn map_in_all(&self, st: &ImageState, pages: &[u64]) {
        for mapper in &st.mappers {
            let Some(u) = &mapper.uffd else { continue };
            let mut i = 0;
            while i < pages.len() {
                let mut j = i + 1;
                while j < pages.len() && pages[j] == pages[j - 1] + 1 {
                    j += 1;
                }
                for r in &mapper.regions {
                    if let Some(range) = r.range_of(pages[i], pages[j - 1] + 1 - pages[i]) {
                        let _ = uffd::continue_range(u, range, mapper.writable);
                    }
                }
                i = j;
            }
        }
    }

    /// Write-protect-async mappers write to clean pages without a fault (the kernel lifts the
    /// protection itself): finds the pages they wrote since the last harvest with
    /// `PAGEMAP_SCAN`, which write-protects them again in the same pass, and marks them dirty
    /// (Read to KWrite, the transition a write-protect fault would have made). Runs before
    /// every decision that relies on a page being clean: commit, abort, eviction.
    pub(super) fn harvest(&self, st: &mut ImageState) {
        let mut written = Vec::new();
        for mapper in st.mappers.iter().filter(|m| m.writable) {
            let Some(pm) = &mapper.pagemap else { continue };
            for r in &mapper.regions {
                let end = r.base + r.npages * PAGE;
                match client::sys::pagemap::take_written(pm.as_fd(), r.base, end) {
                    Ok(ranges) => {
                        for (a, b) in ranges {
                            let (a, b) = (a.max(r.base), b.min(end));
                            written.extend(
                                (a..b)
                                    .step_by(PAGE as usize)
                                    .map(|x| r.first_page + (x - r.base) / PAGE),
                            );
                        }
                    }
                    Err(e) => debug!(cluster = %self.id, conn = mapper.conn, "PAGEMAP_SCAN: {e}"),
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
    pub(super) fn protect(&self, st: &ImageState, first: u64, n: u64) {
        for mapper in st.mappers.iter().filter(|m| m.writable) {
            let Some(u) = &mapper.uffd else { continue };
            for r in &mapper.regions {
                if let Some(range) = r.range_of(first, n) {
                    if let Err(e) = uffd::writeprotect(u, range, true) {
                        debug!(cluster = %self.id, conn = mapper.conn, "write-protect: {e}");
                    }
                }
            }
        }
    }
}
