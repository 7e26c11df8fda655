//! The image of one cluster on this site (thesis: one image per site): its memfd, the state of
//! each page, the processes mapping it, and the work the page state machine asks for. Every
//! transition goes through [`page_state::step`]; this module only carries out the actions.
//!
//! Locking: `state` guards everything; `commit_lock` serialises commit and abort. A commit
//! holds `state` while it write-protects and copies the dirty pages, releases it for the
//! journal write (faults on clean pages go on; writes to the pages being committed are
//! deferred and replayed when the commit ends), then takes it again to finish.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

mod history;
mod readahead;
mod residency;
pub(crate) mod usage;
mod writeback;

pub(crate) use history::spawn_replay;

use readahead::Readahead;

use client::uffd::{self, Range};
use client::{ClusterId, ErrorCode, PAGE_SIZE};
use tracing::{debug, warn};
use userfaultfd::{FaultKind, Uffd};

use super::error::Refusal;
use super::manager::Manager;
use crate::page_state::{step, Action, Event, PageState, Source};
use crate::paging::Slot;
use crate::storage::Volume;
use crate::sync::lock;

const PAGE: u64 = PAGE_SIZE as u64;
/// Pages evicted at once when the resident budget is reached.
const EVICT_BATCH: u64 = 32;

/// Pages `first_page..first_page+npages` mapped at `base` in a process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    pub first_page: u64,
    pub npages: u64,
    pub base: u64,
}

impl Region {
    /// The part of pages `first..first+n` this region maps, as an address range.
    fn range_of(&self, first: u64, n: u64) -> Option<Range> {
        let lo = first.max(self.first_page);
        let hi = (first + n).min(self.first_page + self.npages);
        (lo < hi).then(|| Range {
            start: self.base + (lo - self.first_page) * PAGE,
            len: (hi - lo) * PAGE,
        })
    }
}

/// A process mapping the cluster (one per connection).
pub(crate) struct Mapper {
    pub conn: u64,
    pub writable: bool,
    pub uffd: Option<Arc<Uffd>>,
    /// In write-protect-async mode, the process's pagemap, to collect written pages.
    pub pagemap: Option<Arc<File>>,
    pub regions: Vec<Region>,
}

/// A fault read from a mapper's userfaultfd.
pub(crate) struct Fault {
    pub conn: u64,
    pub uffd: Arc<Uffd>,
    /// The mapping is writable (registered with write-protect mode).
    pub writable: bool,
    /// The page's address in the faulting process.
    pub addr: u64,
    pub page: u64,
    /// The faulting process's region holding the page: (first page, pages).
    pub region: (u64, u64),
    pub kind: FaultKind,
    pub write: bool,
}

/// Makes the access to the page at `addr` raise SIGBUS in the process of `uffd`
/// (`UFFDIO_POISON`), or at least wakes its thread, and counts it.
pub(crate) fn sigbus(m: &Manager, uffd: &Uffd, addr: u64) {
    m.stats.poisoned.inc();
    let range = Range {
        start: addr,
        len: PAGE,
    };
    if uffd::poison(uffd, range).is_err() {
        let _ = uffd::wake(uffd, range);
    }
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
    /// Maps in the faulting process, with write protection `wp`, the pages of `first..end`
    /// other than the faulting one (read-ahead and fault-around). A page the process already
    /// maps ends its run early (EEXIST), which is harmless.
    fn map_neighbours(&self, first: u64, end: u64, wp: bool) {
        for (a, b) in [(first, self.page), (self.page + 1, end)] {
            if let Some(r) = self.span(a, b) {
                if let Err(e) = uffd::continue_range(&self.uffd, r, wp) {
                    debug!(page = self.page, "continue (neighbours): {e}");
                }
            }
        }
    }

    fn range(&self) -> Range {
        Range {
            start: self.addr,
            len: PAGE,
        }
    }

    /// The part of pages `lo..hi` mapped by the faulting region, as an address range.
    fn span(&self, lo: u64, hi: u64) -> Option<Range> {
        let (first, npages) = self.region;
        let lo = lo.max(first);
        let hi = hi.min(first + npages);
        let base = self.addr - (self.page - first) * PAGE;
        (lo < hi).then(|| Range {
            start: base + (lo - first) * PAGE,
            len: (hi - lo) * PAGE,
        })
    }
}

pub(crate) struct ImageState {
    pub pages: Vec<PageState>,
    slots: HashMap<u64, Slot>,
    pub mappers: Vec<Mapper>,
    deferred: Vec<Fault>,
    hand: u64,
    pub resident: u64,
    readahead: Readahead,
    /// The buffer of read-ahead runs, kept between faults (allocated and zeroed once).
    run_buf: Vec<u8>,
    /// Blocks of [`readahead::AROUND`] pages already hinted to storage.
    hinted: Vec<bool>,
    /// The order in which pages came in during this use (saved at release).
    history: history::Recorder,
    /// Set by `release`: the image is done; background work stops.
    closed: bool,
    /// The figures of the use in progress (J1-J6).
    usage: usage::Usage,
}

impl ImageState {
    /// (dirty pages, of which in the paging partition)
    pub fn dirty(&self) -> (u64, u64) {
        let d = self.pages.iter().filter(|p| p.dirty()).count() as u64;
        (d, self.slots.len() as u64)
    }
}

pub(crate) struct Image {
    pub id: ClusterId,
    vol: Arc<dyn Volume>,
    memfd: File,
    /// A temporary cluster: never written to storage (commit keeps its pages in memory).
    temporary: std::sync::atomic::AtomicBool,
    pub state: Mutex<ImageState>,
    commit_lock: Mutex<()>,
}

fn io(what: &str, e: impl std::fmt::Display) -> Refusal {
    Refusal::new(ErrorCode::Io, format!("{what}: {e}"))
}

impl Image {
    /// A new image of `npages` pages: all zero (`fresh`: a cluster just created) or in storage.
    pub fn new(
        id: ClusterId,
        vol: Arc<dyn Volume>,
        npages: u64,
        fresh: bool,
    ) -> Result<Image, Refusal> {
        let name = std::ffi::CString::new(format!("clu-{id}")).expect("no NUL in an id");
        let memfd: File =
            nix::sys::memfd::memfd_create(&name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
                .map_err(|e| io("memfd_create", e))?
                .into();
        memfd
            .set_len(npages * PAGE)
            .map_err(|e| io("sizing the cluster's memory object", e))?;
        let initial = if fresh {
            PageState::None
        } else {
            PageState::MapNone
        };
        Ok(Image {
            id,
            vol,
            memfd,
            temporary: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(ImageState {
                pages: vec![initial; npages as usize],
                slots: HashMap::new(),
                mappers: Vec::new(),
                deferred: Vec::new(),
                hand: 0,
                resident: 0,
                readahead: Readahead::default(),
                run_buf: Vec::new(),
                hinted: Vec::new(),
                history: history::Recorder::default(),
                closed: false,
                usage: usage::Usage::default(),
            }),
            commit_lock: Mutex::new(()),
        })
    }

    /// Marks the image as a temporary cluster's, or not.
    pub fn set_temporary(&self, t: bool) {
        self.temporary
            .store(t, std::sync::atomic::Ordering::Release);
    }

    /// Whether the image is a temporary cluster's.
    pub fn is_temporary(&self) -> bool {
        self.temporary.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The memory object, to hand to a new mapper.
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    // ---- mappers ----

    pub fn add_mapper(&self, conn: u64, writable: bool) -> Result<(), Refusal> {
        let mut st = lock(&self.state);
        if st.mappers.iter().any(|m| m.conn == conn) {
            return Err(Refusal::new(
                ErrorCode::Busy,
                format!("cluster {} is already mapped by this process", self.id),
            ));
        }
        st.mappers.push(Mapper {
            conn,
            writable,
            uffd: None,
            pagemap: None,
            regions: Vec::new(),
        });
        let n = st.mappers.len() as u64;
        st.usage.mappers(n);
        Ok(())
    }

    /// Records a region a mapper registered with its uffd. Returns whether it is writable.
    pub fn attach(
        &self,
        conn: u64,
        uffd: Arc<Uffd>,
        pagemap: Option<Arc<File>>,
        region: Region,
    ) -> Result<bool, Refusal> {
        let mut st = lock(&self.state);
        let npages = st.pages.len() as u64;
        let end = region.first_page.checked_add(region.npages);
        if region.npages == 0 || !end.is_some_and(|e| e <= npages) || region.base % PAGE != 0 {
            return Err(Refusal::invalid(format!(
                "region of {} pages from page {} at {:#x} is not within cluster {} ({npages} pages)",
                region.npages, region.first_page, region.base, self.id
            )));
        }
        let m = st
            .mappers
            .iter_mut()
            .find(|m| m.conn == conn)
            .ok_or_else(|| {
                Refusal::invalid(format!("cluster {} is not mapped by this process", self.id))
            })?;
        m.uffd = Some(uffd);
        m.pagemap = pagemap;
        m.regions.push(region);
        Ok(m.writable)
    }

    /// (whether `conn` maps the image, how many mappers there are)
    pub fn mapper_status(&self, conn: u64) -> (Option<bool>, usize) {
        let st = lock(&self.state);
        let me = st
            .mappers
            .iter()
            .find(|m| m.conn == conn)
            .map(|m| m.writable);
        (me, st.mappers.len())
    }

    /// How many processes map the image.
    pub fn mappers(&self) -> usize {
        lock(&self.state).mappers.len()
    }

    pub fn remove_mapper(&self, conn: u64) {
        let mut st = lock(&self.state);
        st.mappers.retain(|m| m.conn != conn);
        st.deferred.retain(|f| f.conn != conn);
        let n = st.mappers.len() as u64;
        st.usage.mappers(n);
    }

    /// Ends the current use, once no process maps the image: adds its figures to the
    /// statistics in the descriptor (J5).
    pub fn end_use(&self) {
        let mut st = lock(&self.state);
        if !st.mappers.is_empty() {
            return;
        }
        let usage = &mut st.usage;
        if let Err(e) = self.vol.clu_update(self.id.clu(), &mut |d| {
            if let Some(stats) = usage.end(&d.stats) {
                d.stats = stats;
            }
        }) {
            warn!(cluster = %self.id, "saving the statistics of a use: {e}");
        }
    }

    pub fn npages(&self) -> u64 {
        lock(&self.state).pages.len() as u64
    }

    // ---- faults ----

    /// Serves a fault (`memory_object_data_request` / `data_unlock`).
    pub fn fault(&self, m: &Manager, f: Fault) {
        let mut st = lock(&self.state);
        self.serve(m, &mut st, f);
    }

    fn serve(&self, m: &Manager, st: &mut ImageState, f: Fault) {
        let Some(&state) = st.pages.get(f.page as usize) else {
            return self.refuse(m, &f, "the page is beyond the end of the cluster");
        };
        let event = match (f.kind, f.write) {
            (FaultKind::WriteProtected, _) => Event::WpFault,
            (_, true) => Event::WriteFault,
            (_, false) => Event::ReadFault,
        };
        let (next, actions) = match step(state, event) {
            Ok(s) => s,
            Err(e) => {
                // A stale event (the page changed state since the fault was queued, e.g. a
                // write-protect fault on a page evicted since): wake the thread, which faults
                // again if it still needs to.
                debug!(cluster = %self.id, page = f.page, "stale fault: {e}");
                let _ = uffd::wake(&f.uffd, f.range());
                return;
            }
        };
        if actions.contains(&Action::Defer) {
            st.deferred.push(f);
            return;
        }
        if event != Event::WpFault {
            // The first fault on each page in this use, in order (prefetched pages come in
            // unmapped, so their first access is a fault too).
            st.history.record(f.page);
        } else {
            st.usage.fault(usage::FaultKind::WriteProtect);
        }
        if next == PageState::KWrite && state != PageState::KWrite {
            st.usage.modified(f.page);
        }
        if let [Action::Supply {
            source: Source::Storage,
            wp,
        }] = *actions
        {
            return self.serve_from_storage(m, st, f, next, wp);
        }
        let mut map_wp = None;
        for a in actions {
            match *a {
                Action::Supply { source, wp } => {
                    if let Err(e) = self.supply(m, st, f.page, source) {
                        return self.refuse(m, &f, &e.message);
                    }
                    map_wp = Some(wp);
                }
                Action::MapResident { wp } => map_wp = Some(wp),
                Action::Unprotect => {
                    if let Err(e) = uffd::writeprotect(&f.uffd, f.range(), false) {
                        debug!(cluster = %self.id, page = f.page, "unprotect: {e}");
                    }
                }
                Action::FreeSlot => self.free_slot(m, st, f.page),
                other => warn!(cluster = %self.id, "action {other:?} unexpected for a fault"),
            }
        }
        st.pages[f.page as usize] = next;
        if matches!(actions, [Action::MapResident { .. }]) {
            self.map_around(m, st, &f);
        }
        if let Some(wp) = map_wp {
            // A read-only mapping is not registered for write protection (and cannot write).
            let wp = wp && f.writable;
            if let Err(e) = uffd::continue_range(&f.uffd, f.range(), wp) {
                // The process died or unmapped meanwhile; the page stays resident for others.
                debug!(cluster = %self.id, page = f.page, "continue: {e}");
                let _ = uffd::wake(&f.uffd, f.range());
            }
        }
    }

    /// A fault on a page in storage only: reads a run of pages around it (see [`readahead`]),
    /// fills them into the memfd at once, and maps in the faulting process those its region
    /// holds. The faulting page becomes `next`; the others take the read-fault transition
    /// (MapNone to Read: clean, write-protected).
    fn serve_from_storage(
        &self,
        m: &Manager,
        st: &mut ImageState,
        f: Fault,
        next: PageState,
        wp: bool,
    ) {
        let n = st.pages.len() as u64;
        let (lo, hi) = st.readahead.plan(f.page, (m.budget / 8).max(1));
        let (mut first, mut end) = run_around(f.page, lo, hi.min(n), |p| {
            st.pages[p as usize] == PageState::MapNone
        });
        st.readahead.ran_to(end);
        let block = (f.page / readahead::AROUND) as usize;
        if st.readahead.started_over() && !st.hinted.get(block).copied().unwrap_or(false) {
            if st.hinted.len() <= block {
                st.hinted.resize(block + 1, false);
            }
            st.hinted[block] = true;
            let lo = block as u64 * readahead::AROUND;
            self.vol
                .clu_prefetch(self.id.clu(), lo, readahead::AROUND.min(n - lo));
        }
        self.make_room(m, st, end - first);
        let mut filled = self.fill_run(st, first, end);
        if filled.is_err() && end - first > 1 {
            // One unreadable or damaged page must not fail its neighbours: the faulting page
            // alone is tried again, and only its own failure raises SIGBUS.
            (first, end) = (f.page, f.page + 1);
            filled = self.fill_run(st, first, end);
        }
        if let Err(e) = filled {
            return self.refuse(m, &f, &e.message);
        }
        // The neighbours take the read-fault transition (MapNone to Read).
        let neighbour =
            step(PageState::MapNone, Event::ReadFault).map_or(PageState::MapNone, |(s, _)| s);
        // `serve` recorded the faulting page first; its neighbours follow.
        for p in first..end {
            st.history.record(p);
            st.pages[p as usize] = if p == f.page { next } else { neighbour };
        }
        st.resident += end - first;
        m.add_resident(end - first);
        m.stats.storage_reads.add(end - first);
        st.usage.fault(usage::FaultKind::Storage);
        // Neighbours first, write-protected (clean; a read-only mapping has no write
        // protection); the faulting page last, which wakes it.
        f.map_neighbours(first, end, f.writable);
        if let Err(e) = uffd::continue_range(&f.uffd, f.range(), wp && f.writable) {
            debug!(cluster = %self.id, page = f.page, "continue: {e}");
            let _ = uffd::wake(&f.uffd, f.range());
        }
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
            .map_err(|e| io("filling the cluster's memory object", e))
    }

    /// Fault-around for a page already resident: maps in the faulting process, write-protected,
    /// the clean resident pages next to it (the read-ahead window, within its region), so that
    /// pages another process or the history prefetch brought in cost one fault per run, not
    /// one per page. Stops at the first page that is not clean and resident.
    fn map_around(&self, m: &Manager, st: &mut ImageState, f: &Fault) {
        let n = st.pages.len() as u64;
        let (lo, hi) = st.readahead.plan(f.page, (m.budget / 8).max(1));
        let (rlo, rhi) = (f.region.0, f.region.0 + f.region.1);
        let (first, end) = run_around(f.page, lo.max(rlo), hi.min(n).min(rhi), |p| {
            st.pages[p as usize] == PageState::Read
        });
        st.readahead.ran_to(end);
        f.map_neighbours(first, end, f.writable);
    }

    /// A fault that cannot be served with data: the access raises SIGBUS (`data_error`).
    fn refuse(&self, m: &Manager, f: &Fault, why: &str) {
        warn!(cluster = %self.id, page = f.page, "fault not served ({why}); the access raises SIGBUS");
        sigbus(m, &f.uffd, f.addr);
    }

    /// Fills the memfd page from `source` (`memory_object_data_supply`).
    fn supply(
        &self,
        m: &Manager,
        st: &mut ImageState,
        page: u64,
        source: Source,
    ) -> Result<(), Refusal> {
        self.make_room(m, st, 1);
        // The read-ahead buffer, kept between faults: no allocation per fault.
        let mut buf = std::mem::take(&mut st.run_buf);
        if buf.len() < PAGE_SIZE {
            buf.resize(PAGE_SIZE, 0);
        }
        let filled = self.fill_page(m, st, page, source, &mut buf[..PAGE_SIZE]);
        st.run_buf = buf;
        filled?;
        st.resident += 1;
        m.add_resident(1);
        Ok(())
    }

    fn fill_page(
        &self,
        m: &Manager,
        st: &mut ImageState,
        page: u64,
        source: Source,
        buf: &mut [u8],
    ) -> Result<(), Refusal> {
        st.usage.fault(match source {
            Source::Zero => usage::FaultKind::Zero,
            Source::Storage => usage::FaultKind::Storage,
            Source::Paging => usage::FaultKind::Paging,
        });
        match source {
            Source::Zero => {
                buf.fill(0);
                m.stats.zero_fills.inc();
            }
            Source::Storage => {
                self.vol.clu_read(self.id.clu(), page, buf)?;
                m.stats.storage_reads.inc();
            }
            Source::Paging => {
                let slot = *st
                    .slots
                    .get(&page)
                    .ok_or_else(|| io("paging partition", "the page has no slot"))?;
                m.paging.load(slot, buf)?;
                m.stats.paging_reads.inc();
            }
        }
        self.memfd
            .write_all_at(buf, page * PAGE)
            .map_err(|e| io("filling the cluster's memory object", e))
    }

    fn free_slot(&self, m: &Manager, st: &mut ImageState, page: u64) {
        if let Some(slot) = st.slots.remove(&page) {
            if let Err(e) = m.paging.free(slot) {
                warn!(cluster = %self.id, page, "{e}");
            }
        }
    }

    /// `clu_Resize`: adds zero pages in storage and in the image.
    pub fn resize(&self, add: u64) -> Result<u64, Refusal> {
        let mut st = lock(&self.state);
        let desc = self.vol.clu_resize(self.id.clu(), add)?;
        self.memfd
            .set_len(desc.npages * PAGE)
            .map_err(|e| io("growing the cluster's memory object", e))?;
        st.pages.resize(desc.npages as usize, PageState::None);
        Ok(desc.npages)
    }
}
