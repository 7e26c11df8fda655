//! The fault path (`memory_object_data_request` / `data_unlock`): a fault read from a mapper's
//! userfaultfd becomes an event of the page state machine, and its actions are carried out
//! here, all of them: supply (zero, storage, paging partition), map a resident page, lift the
//! write protection, free a slot, defer. A fault served from storage reads a run of pages (see
//! [`super::readahead`]); a fault on a resident page maps the clean resident pages around it.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use clu_proto::PAGE_SIZE;
use clu_sys::sync::lock;
use clu_sys::uffd::{self, Range};
use tracing::{debug, warn};
use userfaultfd::{FaultKind, Uffd};

use super::{io, readahead, sigbus, usage::FaultClass, Image, ImageState, PAGE};
use crate::error::Refusal;
use crate::page_state::{step, Action, Event, PageState, Source};
use crate::regions::UserRegion;
use crate::site::Served;
use crate::types::{ConnId, PageNo, UserAddr};

/// The block of resident pages mapped ahead under one hold of the image's lock (`populate`,
/// 8 MiB), and the cap of a fault-around of resident pages: mapping pages that are in the
/// memfd costs about 0.1 us a page in one `UFFDIO_CONTINUE`, a fault round trip 5 to 100 us on
/// this VM (`scripts/bench faults`, `resident_*` rows).
pub const RESIDENT_RUN: u64 = 2048;

/// The block of new (zero) pages one fault brings in at most (256 KiB).
pub const ZERO_RUN: u64 = 64;

/// A fault read from a mapper's userfaultfd.
pub struct Fault {
    /// The faulting process.
    pub conn: ConnId,
    /// Its userfaultfd.
    pub uffd: Arc<Uffd>,
    /// The mapping is writable (registered with write-protect mode).
    pub writable: bool,
    /// The page's address in the faulting process.
    pub addr: UserAddr,
    /// The cluster page.
    pub page: PageNo,
    /// The faulting process's region holding the page.
    pub region: UserRegion,
    /// Missing, minor or write-protect.
    pub kind: FaultKind,
    /// A write access.
    pub write: bool,
}

/// The pages around `page` within `lo..hi` that satisfy `keep`, contiguous with it:
/// `(first, end)`, `page` included whatever it is.
fn run_around(page: u64, lo: u64, hi: u64, keep: impl Fn(u64) -> bool) -> (u64, u64) {
    let mut first = page;
    while first > lo && keep(first - 1) {
        first -= 1;
    }
    let mut end = page + 1;
    while end < hi && keep(end) {
        end += 1;
    }
    (first, end)
}

impl Fault {
    fn range(&self) -> Range {
        Range {
            start: self.addr.0,
            len: PAGE,
        }
    }

    /// Maps in the faulting process, with write protection `wp`, the pages of `first..end`
    /// other than the faulting one (read-ahead and fault-around), after the faulting page:
    /// nobody waits on them, so nobody is woken. A page the process already maps ends its run
    /// early (EEXIST), which is harmless.
    fn map_neighbours(&self, first: u64, end: u64, wp: bool) {
        let p = self.page.0;
        for (a, b) in [(first, p), (p + 1, end)] {
            if let Some(r) = self.region.range_of(PageNo(a), b.saturating_sub(a)) {
                if let Err(e) = uffd::continue_quiet(&self.uffd, r, wp) {
                    debug!(page = p, "continue (neighbours): {e}");
                }
            }
        }
    }

    /// Maps the faulting page (which wakes the faulting thread), write-protected if `wp`.
    fn map_page(&self, wp: bool) {
        if let Err(e) = uffd::continue_range(&self.uffd, self.range(), wp) {
            // The process died or unmapped meanwhile; the page stays resident for others.
            debug!(page = self.page.0, "continue: {e}");
            let _ = uffd::wake(&self.uffd, self.range());
        }
    }
}

impl Image {
    /// Serves a fault (`memory_object_data_request` / `data_unlock`).
    pub fn fault(&self, f: Fault) {
        let t0 = std::time::Instant::now();
        let mut st = lock(&self.state);
        st.usage.last = None;
        self.serve(&mut st, f);
        let class = st.usage.last.take();
        drop(st);
        let served = match class {
            Some(FaultClass::Zero) => Served::Zero,
            Some(FaultClass::Storage) if !self.vol.cacheable() => Served::Remote,
            Some(FaultClass::Storage) => Served::Storage,
            Some(FaultClass::Paging) => Served::Paging,
            Some(FaultClass::WriteProtect) => Served::WriteProtect,
            // Resident already: mapped only (or a stale fault, woken).
            None => Served::Minor,
        };
        self.site.stats.fault_latency[served as usize].observe_duration(t0.elapsed());
        self.served[served as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The fault family: one fault's event, its transition and its actions.
    pub(super) fn serve(&self, st: &mut ImageState, f: Fault) {
        let state = st
            .pages
            .get(f.page.index())
            .copied()
            .unwrap_or(PageState::Beyond);
        let event = match (f.kind, f.write) {
            (FaultKind::WriteProtected, _) => Event::WpFault,
            (_, true) => Event::WriteFault,
            (_, false) => Event::ReadFault,
        };
        let (next, actions) = match step(state, event) {
            Ok(s) => s,
            Err(_) if state == PageState::Beyond => {
                return self.refuse(&f, "the page is beyond the end of the cluster")
            }
            Err(e) => {
                // A stale event (the page changed state since the fault was queued, e.g. a
                // write-protect fault on a page evicted since): wake the thread, which faults
                // again if it still needs to.
                debug!(cluster = %self.id, page = f.page.0, "stale fault: {e}");
                let _ = uffd::wake(&f.uffd, f.range());
                return;
            }
        };
        if actions.contains(&Action::Defer) {
            st.deferred.push(f);
            return;
        }
        if event == Event::WpFault {
            st.usage.fault(FaultClass::WriteProtect);
        } else {
            // The first fault on each page in this use, in order (prefetched pages come in
            // unmapped, so their first access is a fault too).
            st.history.record(f.page.0);
        }
        if next == PageState::KWrite && state != PageState::KWrite {
            st.usage.modified(f.page.0);
        }
        if let [Action::Supply {
            source: Source::Storage,
            wp,
        }] = *actions
        {
            return self.serve_from_storage(st, f, next, wp);
        }
        if let [Action::Supply {
            source: Source::Zero,
            wp,
        }] = *actions
        {
            if self.serve_zero_run(st, &f, next, wp) {
                return;
            }
        }
        let mut map_wp = None;
        for a in actions {
            match *a {
                Action::Supply { source, wp } => {
                    if let Err(e) = self.supply(st, f.page, source) {
                        return self.refuse(&f, &e.message);
                    }
                    map_wp = Some(wp);
                }
                Action::MapResident { wp } => map_wp = Some(wp),
                Action::Unprotect => {
                    let range = if event == Event::WpFault && state == PageState::Read {
                        self.write_around(st, &f)
                    } else {
                        f.range()
                    };
                    if let Err(e) = uffd::writeprotect(&f.uffd, range, false) {
                        debug!(cluster = %self.id, page = f.page.0, "unprotect: {e}");
                    }
                }
                Action::FreeSlot => self.free_slot(st, f.page.0),
                // Handled above: the fault waits for the transient state to end.
                Action::Defer => {}
                Action::WriteProtect
                | Action::CopyToJournal(_)
                | Action::CopyToPaging
                | Action::Drop => self.unexpected(*a, "a fault"),
            }
        }
        st.pages[f.page.index()] = next;
        if let Some(wp) = map_wp {
            // A read-only mapping is not registered for write protection (and cannot write).
            // The faulting page first, which wakes the thread; its neighbours after.
            f.map_page(wp && f.writable);
        }
        if matches!(actions, [Action::MapResident { .. }]) {
            self.map_around(st, &f);
        }
    }

    /// A fault on a page in storage only: reads a run of pages around it (see [`readahead`]),
    /// fills them into the memfd at once, and maps in the faulting process those its region
    /// holds. The faulting page becomes `next`; the others take the read-fault transition
    /// (MapNone to Read: clean, write-protected).
    fn serve_from_storage(&self, st: &mut ImageState, f: Fault, next: PageState, wp: bool) {
        let n = st.pages.len() as u64;
        let page = f.page.0;
        let (lo, hi) = st.readahead.plan(page, self.site.readahead_cap());
        let (mut first, mut end) = run_around(page, lo, hi.min(n), |p| {
            st.pages[p as usize] == PageState::MapNone
        });
        st.readahead.ran_to(end);
        let block = (page / readahead::AROUND) as usize;
        if st.readahead.started_over() && !st.hinted.get(block).copied().unwrap_or(false) {
            if st.hinted.len() <= block {
                st.hinted.resize(block + 1, false);
            }
            st.hinted[block] = true;
            let lo = block as u64 * readahead::AROUND;
            self.vol
                .clu_prefetch(self.id.clu(), lo, readahead::AROUND.min(n - lo));
        }
        self.make_room(st, end - first);
        let mut filled = self.fill_run(st, first, end);
        if filled.is_err() && end - first > 1 {
            // One unreadable or damaged page must not fail its neighbours: the faulting page
            // alone is tried again, and only its own failure raises SIGBUS.
            (first, end) = (page, page + 1);
            filled = self.fill_run(st, first, end);
        }
        if let Err(e) = filled {
            return self.refuse(&f, &e.message);
        }
        // The neighbours take the read-fault transition (MapNone to Read).
        let neighbour =
            step(PageState::MapNone, Event::ReadFault).map_or(PageState::MapNone, |(s, _)| s);
        // `serve` recorded the faulting page first; its neighbours follow.
        for p in first..end {
            st.history.record(p);
            st.pages[p as usize] = if p == page { next } else { neighbour };
        }
        self.gained(st, end - first);
        self.site.stats.storage_reads.add(end - first);
        st.usage.fault(FaultClass::Storage);
        // The faulting page first, which wakes the thread; then its neighbours,
        // write-protected (clean; a read-only mapping has no write protection), all under the
        // state's lock, so that none of them changes state meanwhile.
        f.map_page(wp && f.writable);
        f.map_neighbours(first, end, f.writable);
    }

    /// A fault on a new page (zero): the new pages of its aligned block of [`ZERO_RUN`]
    /// pages (within its region) come in at once, allocated zero in the memfd by one
    /// `fallocate`, and take the same transition as the faulting page (None to KWrite,
    /// mapped writable, thesis D7). They are marked zero-backed: a commit skips those still
    /// all zeros, so pages nobody wrote are not written. Returns false if the memfd could not
    /// allocate the run (the caller supplies the faulting page alone).
    fn serve_zero_run(&self, st: &mut ImageState, f: &Fault, next: PageState, wp: bool) -> bool {
        let n = st.pages.len() as u64;
        let page = f.page.0;
        let (rlo, rhi) = (
            f.region.first_page.0,
            f.region.first_page.0 + f.region.npages,
        );
        let lo = page / ZERO_RUN * ZERO_RUN;
        let (first, end) = run_around(page, lo.max(rlo), (lo + ZERO_RUN).min(n).min(rhi), |p| {
            st.pages[p as usize] == PageState::None
        });
        self.make_room(st, end - first);
        if let Err(e) = nix::fcntl::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&self.memfd),
            nix::fcntl::FallocateFlags::empty(),
            (first * PAGE) as i64,
            ((end - first) * PAGE) as i64,
        ) {
            debug!(cluster = %self.id, first, end, "fallocate of zero pages: {e}");
            return false;
        }
        if st.zero_backed.len() < n as usize {
            st.zero_backed.resize(n as usize, false);
        }
        for p in first..end {
            st.pages[p as usize] = next;
            st.zero_backed[p as usize] = true;
            st.history.record(p);
        }
        // The faulting page counts as modified (J3) now; the others when a commit finds
        // them written (not all zeros).
        if next.dirty() {
            st.usage.modified(page);
        }
        self.gained(st, end - first);
        self.site.stats.zero_fills.add(end - first);
        st.usage.fault(FaultClass::Zero);
        let wp = wp && f.writable;
        f.map_page(wp);
        f.map_neighbours(first, end, wp);
        true
    }

    /// Reads pages `first..end` from storage into the memfd.
    fn fill_run(&self, st: &mut ImageState, first: u64, end: u64) -> Result<(), Refusal> {
        let len = ((end - first) * PAGE) as usize;
        if st.run_buf.len() < len {
            st.run_buf.resize(len, 0);
        }
        let buf = &mut st.run_buf[..len];
        self.vol.clu_read(self.id.clu(), first, buf)?;
        self.memfd
            .write_all_at(buf, first * PAGE)
            .map_err(|e| io("filling the cluster's memory object", e))?;
        // The image is the cache: the file's copy of these pages goes.
        self.vol.clu_uncache(self.id.clu(), first, end - first);
        Ok(())
    }

    /// Fault-around for a page already resident: maps in the faulting process, write-protected,
    /// the clean resident pages of a run around it (within its region; the read-ahead policy
    /// over its own state, up to [`readahead::MAX_WINDOW`] pages), so that a cached image, or
    /// pages another process or the history prefetch brought in, cost one fault per run, not
    /// one per page; the rest of a resident image is mapped ahead by `populate`. The run stops
    /// at the first page that is not clean and resident.
    fn map_around(&self, st: &mut ImageState, f: &Fault) {
        let n = st.pages.len() as u64;
        let (rlo, rhi) = (
            f.region.first_page.0,
            f.region.first_page.0 + f.region.npages,
        );
        // The same doubling policy as storage read-ahead, with its own state: 16 pages around
        // a fault that starts over, doubling while faults continue the run.
        let (lo, hi) = st.resident_ra.plan(f.page.0, RESIDENT_RUN);
        let (first, end) = run_around(f.page.0, lo.max(rlo), hi.min(n).min(rhi), |p| {
            st.pages[p as usize] == PageState::Read
        });
        st.resident_ra.ran_to(end);
        f.map_neighbours(first, end, f.writable);
    }

    /// A first write to a clean page: the clean pages after it, within the run the
    /// [`readahead::WriteRun`] policy plans and the faulting region, take the same
    /// transition (Read to KWrite, dirty) so that one `UFFDIO_WRITEPROTECT` lifts the
    /// protection of all of them. Returns the range to unprotect in the faulting process.
    fn write_around(&self, st: &mut ImageState, f: &Fault) -> Range {
        let (_, hi) = st.write_run.plan(f.page.0);
        let rhi = f.region.first_page.0 + f.region.npages;
        let hi = hi.min(rhi).min(st.pages.len() as u64);
        let mut end = f.page.0 + 1;
        while end < hi && st.pages[end as usize] == PageState::Read {
            match step(PageState::Read, Event::WpFault) {
                Ok((next, _)) => st.pages[end as usize] = next,
                Err(_) => break,
            }
            st.usage.modified(end);
            end += 1;
        }
        st.write_run.ran_to(end);
        f.region
            .range_of(f.page, end - f.page.0)
            .unwrap_or_else(|| f.range())
    }

    /// A fault that cannot be served with data: the access raises SIGBUS (`data_error`).
    fn refuse(&self, f: &Fault, why: &str) {
        warn!(cluster = %self.id, page = f.page.0, "fault not served ({why}); the access raises SIGBUS");
        sigbus(&self.site, &f.uffd, f.addr);
    }

    /// Fills the memfd page from `source` (`memory_object_data_supply`).
    fn supply(&self, st: &mut ImageState, page: PageNo, source: Source) -> Result<(), Refusal> {
        self.make_room(st, 1);
        // The read-ahead buffer, kept between faults: no allocation per fault.
        let mut buf = std::mem::take(&mut st.run_buf);
        if buf.len() < PAGE_SIZE {
            buf.resize(PAGE_SIZE, 0);
        }
        let filled = self.fill_page(st, page.0, source, &mut buf[..PAGE_SIZE]);
        st.run_buf = buf;
        filled?;
        self.gained(st, 1);
        Ok(())
    }

    fn fill_page(
        &self,
        st: &mut ImageState,
        page: u64,
        source: Source,
        buf: &mut [u8],
    ) -> Result<(), Refusal> {
        let stats = &self.site.stats;
        match source {
            Source::Zero => {
                st.usage.fault(FaultClass::Zero);
                buf.fill(0);
                stats.zero_fills.inc();
                if st.zero_backed.len() <= page as usize {
                    st.zero_backed.resize(page as usize + 1, false);
                }
                st.zero_backed[page as usize] = true;
            }
            Source::Storage => {
                st.usage.fault(FaultClass::Storage);
                self.vol.clu_read(self.id.clu(), page, buf)?;
                self.vol.clu_uncache(self.id.clu(), page, 1);
                stats.storage_reads.inc();
            }
            Source::Paging => {
                st.usage.fault(FaultClass::Paging);
                let slot = *st
                    .slots
                    .get(&page)
                    .ok_or_else(|| io("paging partition", "the page has no slot"))?;
                self.site.paging.load(slot, buf)?;
                stats.paging_reads.inc();
            }
        }
        self.memfd
            .write_all_at(buf, page * PAGE)
            .map_err(|e| io("filling the cluster's memory object", e))
    }

    /// Releases the page's paging slot, if it has one.
    pub(super) fn free_slot(&self, st: &mut ImageState, page: u64) {
        if let Some(slot) = st.slots.remove(&page) {
            if let Err(e) = self.site.paging.free(slot) {
                warn!(cluster = %self.id, page, "{e}");
            }
        }
    }
}
