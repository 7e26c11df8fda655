//! The image of one cluster on this site (thesis: one image per site): its memfd, the state of
//! each page, the processes mapping it. Every page transition goes through
//! [`page_state::step`](crate::page_state::step); each family of actions is carried out in one
//! place: faults in [`fault`], eviction in [`evict`], commit, abort and release in
//! [`writeback`].
//!
//! Locking, in order: `commit_lock` serialises commit and abort; `resize_lock` serialises
//! growth; `state` guards the pages and everything about them; `mappers` (a leaf, never held
//! across I/O or a system call) guards who maps the image and for how long, so that the image
//! table can ask without waiting behind a fault's I/O. A commit holds `state` while it
//! write-protects and copies the dirty pages, releases it for the journal write (faults on
//! clean pages go on; writes to the pages being committed are deferred and replayed when the
//! commit ends), then takes it again to finish. The fault path holds `state` while it fills the
//! faulting run (see `docs/architecture.md`).

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

pub use crate::placement::Placement;
use std::sync::{Arc, Mutex};

mod evict;
mod fault;
mod forget;
mod group;
mod history;
mod readahead;
pub(crate) mod usage;
mod writeback;

pub use fault::Fault;
pub use group::commit_group;
pub(crate) use history::spawn_replay;

use clu_proto::{ClusterId, ErrorCode, PAGE_SIZE};
use clu_storage::Volume;
use clu_sys::sync::lock;
use clu_sys::uffd::{self, Range};
use tracing::warn;
use userfaultfd::Uffd;

use crate::error::Refusal;
use crate::page_state::{step, Event, PageState};
use crate::paging::Slot;
use crate::regions::UserRegion;
use crate::site::{Served, Site};
use crate::types::{ConnId, UserAddr};
use readahead::Readahead;

const PAGE: u64 = PAGE_SIZE as u64;

/// A process mapping the cluster (one per connection).
#[derive(Clone)]
struct Mapper {
    conn: ConnId,
    writable: bool,
    uffd: Option<Arc<Uffd>>,
    /// In write-protect-async mode, the process's pagemap, to collect written pages.
    pagemap: Option<Arc<File>>,
    regions: Vec<UserRegion>,
}

/// Everything about an image that changes, under its lock.
struct ImageState {
    pages: Vec<PageState>,
    slots: HashMap<u64, Slot>,
    deferred: Vec<Fault>,
    hand: u64,
    resident: u64,
    readahead: Readahead,
    write_run: readahead::WriteRun,
    /// Fault-around of resident pages (the read-ahead policy, its own state).
    resident_ra: Readahead,
    /// Pages whose stored image is zero and that came in as zero pages (a page of a new
    /// cluster or grown over, not committed since): a commit need not write one that is
    /// still all zeros.
    zero_backed: Vec<bool>,
    /// The buffer of read-ahead runs, kept between faults (allocated and zeroed once).
    run_buf: Vec<u8>,
    /// Blocks of [`readahead::AROUND`] pages already hinted to storage.
    hinted: Vec<bool>,
    /// The order in which pages came in during this use (saved at release).
    history: history::Recorder,
    /// Set by `release`: the image is done; background work stops.
    closed: bool,
    /// What the use in progress did to the pages (J3-J6).
    usage: usage::Usage,
    /// This use brought pages into memory (its access history is worth saving; a use served
    /// entirely by the cached image leaves the saved history as it was).
    read_in: bool,
    /// Commits that changed storage so far: a read of storage made without the lock is good
    /// only if no commit came in between.
    commits: u64,
}

/// Who maps the image, and how much it was shared during this use (J1, J2).
#[derive(Default)]
struct Mappers {
    /// Copy-on-write: the fault, eviction and commit paths take the list without copying it.
    list: Arc<Vec<Mapper>>,
    sharing: usage::Sharing,
}

/// What `pager status` shows of an image, read in one go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageView {
    /// The cluster.
    pub id: ClusterId,
    /// Its size in pages.
    pub pages: u64,
    /// Pages in memory.
    pub resident: u64,
    /// Pages modified since the last commit.
    pub dirty: u64,
    /// Of which in the paging partition.
    pub paged_out: u64,
    /// Processes mapping it.
    pub mappers: usize,
    /// Kept as the site's cache: no process maps it, its pages are clean.
    pub cached: bool,
    /// Faults served since the image came to this site, by how (the order of [`Served::ALL`]).
    pub faults: [u64; Served::ALL.len()],
    /// Commits validated since the image came to this site.
    pub commits: u64,
}

/// The image of one cluster on this site.
pub struct Image {
    id: ClusterId,
    site: Arc<Site>,
    vol: Arc<dyn Volume>,
    memfd: File,
    /// A temporary cluster: never written to storage (commit keeps its pages in memory).
    temporary: AtomicBool,
    /// How the cell placed the image on this site while processes map it ([`Placement`]).
    placement: AtomicU8,
    state: Mutex<ImageState>,
    mappers: Mutex<Mappers>,
    commit_lock: Mutex<()>,
    resize_lock: Mutex<()>,
    /// Pages in memory, as `state.resident` (read without the state's lock by the reclaim,
    /// which must not wait for it).
    resident_now: AtomicU64,
    /// When the image was last mapped or unmapped, on the site's clock (reclaim takes the
    /// cached images least recently used first).
    last_used: AtomicU64,
    /// Faults served, by how (the order of [`Served::ALL`]), and commits validated, since the
    /// image came to this site: counters for `pager top`, read without any lock.
    served: [AtomicU64; Served::ALL.len()],
    commits_done: AtomicU64,
}

fn io(what: &str, e: impl std::fmt::Display) -> Refusal {
    Refusal::new(ErrorCode::Io, format!("{what}: {e}"))
}

/// Makes the access to the page at `addr` raise SIGBUS in the process of `uffd`
/// (`UFFDIO_POISON`), or at least wakes its thread, and counts it.
pub fn sigbus(site: &Site, uffd: &Uffd, addr: UserAddr) {
    site.stats.poisoned.inc();
    let range = Range {
        start: addr.0,
        len: PAGE,
    };
    if uffd::poison(uffd, range).is_err() {
        let _ = uffd::wake(uffd, range);
    }
}

impl Image {
    /// A new image of `npages` pages: all zero (`fresh`: a cluster just created, whose pages
    /// come in by growth) or in storage.
    pub fn new(
        id: ClusterId,
        site: Arc<Site>,
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
        let initial = if fresh { grown() } else { PageState::MapNone };
        Ok(Image {
            id,
            vol,
            memfd,
            temporary: AtomicBool::new(false),
            placement: AtomicU8::new(Placement::None as u8),
            state: Mutex::new(ImageState {
                pages: vec![initial; npages as usize],
                slots: HashMap::new(),
                deferred: Vec::new(),
                hand: 0,
                resident: 0,
                readahead: Readahead::default(),
                write_run: readahead::WriteRun::default(),
                resident_ra: Readahead::default(),
                zero_backed: Vec::new(),
                run_buf: Vec::new(),
                hinted: Vec::new(),
                history: history::Recorder::default(),
                closed: false,
                usage: usage::Usage::default(),
                read_in: false,
                commits: 0,
            }),
            mappers: Mutex::new(Mappers::default()),
            commit_lock: Mutex::new(()),
            resize_lock: Mutex::new(()),
            resident_now: AtomicU64::new(0),
            last_used: AtomicU64::new(site.tick()),
            served: Default::default(),
            commits_done: AtomicU64::new(0),
            site,
        })
    }

    /// Whether the image may stay as the site's cache after its last unmap (its volume says
    /// whether nobody else changes the cluster meanwhile).
    pub fn cacheable(&self) -> bool {
        self.vol.cacheable()
    }

    /// The cluster.
    pub fn id(&self) -> ClusterId {
        self.id
    }

    /// Marks the image as a temporary cluster's, or not.
    pub fn set_temporary(&self, t: bool) {
        self.temporary.store(t, Ordering::Release);
    }

    /// How the image is placed in the cell now.
    pub fn placement(&self) -> Placement {
        match self.placement.load(Ordering::Acquire) {
            2 => Placement::Write,
            1 => Placement::ReadCopy,
            _ => Placement::None,
        }
    }

    /// Records a placement (kept at the stronger of the two while processes map the image;
    /// cleared at the last unmap, when the cell's placement is given up).
    pub fn set_placement(&self, p: Placement) {
        if p == Placement::None {
            self.placement.store(p as u8, Ordering::Release);
        } else {
            self.placement.fetch_max(p as u8, Ordering::AcqRel);
        }
    }

    /// Whether the image is a temporary cluster's.
    pub fn is_temporary(&self) -> bool {
        self.temporary.load(Ordering::Acquire)
    }

    /// The memory object, to hand to a new mapper.
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// What `pager status` shows of it.
    pub fn view(&self) -> ImageView {
        let mappers = self.mappers();
        let st = lock(&self.state);
        ImageView {
            id: self.id,
            pages: st.pages.len() as u64,
            resident: st.resident,
            dirty: st.pages.iter().filter(|p| p.dirty()).count() as u64,
            paged_out: st.slots.len() as u64,
            mappers,
            cached: mappers == 0 && !self.is_temporary(),
            faults: std::array::from_fn(|i| self.served[i].load(Ordering::Relaxed)),
            commits: self.commits_done.load(Ordering::Relaxed),
        }
    }

    /// Pages in memory (without the state's lock: a reading that may be a moment old).
    pub fn resident_pages(&self) -> u64 {
        self.resident_now.load(Ordering::Relaxed)
    }

    /// When the image was last mapped or unmapped, on the site's clock.
    pub fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// The image is used now (mapped or unmapped).
    pub fn touch(&self) {
        self.last_used.store(self.site.tick(), Ordering::Relaxed);
    }

    /// Whether the image was read from `vol` (the volume mounted now): a cached image of a
    /// volume unmounted and mounted again, or restored, is not the stored image any more.
    pub fn is_of(&self, vol: &Arc<dyn Volume>) -> bool {
        std::ptr::eq(
            Arc::as_ptr(&self.vol) as *const (),
            Arc::as_ptr(vol) as *const (),
        )
    }

    /// The mappers now, for the paths that act on every mapper (write protection, mapping
    /// ahead, collecting writes) without holding the mappers' lock across their system calls.
    fn mappers_now(&self) -> Arc<Vec<Mapper>> {
        lock(&self.mappers).list.clone()
    }

    /// Reports an action the state machine asked of the wrong family (a bug).
    fn unexpected(&self, a: crate::page_state::Action, family: &str) {
        warn!(cluster = %self.id, "BUG: action {a:?} asked of {family}; ignored");
    }

    /// `n` more pages of this image are in memory.
    fn gained(&self, st: &mut ImageState, n: u64) {
        st.resident += n;
        st.read_in = true;
        self.resident_now.store(st.resident, Ordering::Relaxed);
        self.site.budget.add(n);
    }

    /// `n` pages of this image left memory.
    fn lost(&self, st: &mut ImageState, n: u64) {
        let n = n.min(st.resident);
        st.resident -= n;
        self.resident_now.store(st.resident, Ordering::Relaxed);
        self.site.budget.sub(n);
    }

    // ---- mappers (the mappers' lock only: the table asks these under its own lock) ----

    /// A process maps the image.
    pub fn add_mapper(&self, conn: ConnId, writable: bool) -> Result<(), Refusal> {
        let mut m = lock(&self.mappers);
        if m.list.iter().any(|m| m.conn == conn) {
            return Err(Refusal::new(
                ErrorCode::Busy,
                format!("cluster {} is already mapped by this process", self.id),
            ));
        }
        Arc::make_mut(&mut m.list).push(Mapper {
            conn,
            writable,
            uffd: None,
            pagemap: None,
            regions: Vec::new(),
        });
        let n = m.list.len() as u64;
        m.sharing.mappers(n);
        Ok(())
    }

    /// Records a region a mapper registered with its uffd. Returns whether it is writable.
    pub fn attach(
        &self,
        conn: ConnId,
        uffd: Arc<Uffd>,
        pagemap: Option<Arc<File>>,
        region: UserRegion,
    ) -> Result<bool, Refusal> {
        let npages = self.npages();
        let end = region.first_page.0.checked_add(region.npages);
        if region.npages == 0 || !end.is_some_and(|e| e <= npages) || !region.base.is_page_aligned()
        {
            return Err(Refusal::invalid(format!(
                "region of {} pages from page {} at {} is not within cluster {} ({npages} pages)",
                region.npages, region.first_page, region.base, self.id
            )));
        }
        let mut mappers = lock(&self.mappers);
        let m = Arc::make_mut(&mut mappers.list)
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

    /// (whether `conn` maps the image and, if so, writable; how many mappers there are)
    pub fn mapper_status(&self, conn: ConnId) -> (Option<bool>, usize) {
        let m = lock(&self.mappers);
        let me = m.list.iter().find(|m| m.conn == conn).map(|m| m.writable);
        (me, m.list.len())
    }

    /// How many processes map the image.
    pub fn mappers(&self) -> usize {
        lock(&self.mappers).list.len()
    }

    /// A process no longer maps the image; returns how many still do. Its deferred faults go
    /// with [`Image::forget_faults`], which needs the image's state.
    pub fn remove_mapper(&self, conn: ConnId) -> usize {
        let mut m = lock(&self.mappers);
        Arc::make_mut(&mut m.list).retain(|m| m.conn != conn);
        let n = m.list.len();
        m.sharing.mappers(n as u64);
        n
    }

    /// Drops the faults of `conn` waiting for a commit or an eviction (it no longer maps the
    /// image).
    pub fn forget_faults(&self, conn: ConnId) {
        lock(&self.state).deferred.retain(|f| f.conn != conn);
    }

    /// Ends the current use, once no process maps the image: adds its figures to the
    /// statistics in the descriptor (J5). The descriptor is written without the image's locks.
    pub fn end_use(&self) {
        let sharing = {
            let mut m = lock(&self.mappers);
            if !m.list.is_empty() {
                return;
            }
            std::mem::take(&mut m.sharing)
        };
        let usage = std::mem::take(&mut lock(&self.state).usage);
        let mut figures = Some((sharing, usage));
        if let Err(e) = self.vol.clu_update(self.id.clu(), &mut |d| {
            if let Some((sharing, usage)) = figures.take() {
                if let Some(stats) = usage::end(sharing, usage, &d.stats) {
                    d.stats = stats;
                }
            }
        }) {
            warn!(cluster = %self.id, "saving the statistics of a use: {e}");
        }
    }

    /// Its size in pages.
    pub fn npages(&self) -> u64 {
        lock(&self.state).pages.len() as u64
    }

    /// `clu_Resize`: adds zero pages in storage, then in the image (growth). Storage grows
    /// without the image's lock: the new pages are not mapped anywhere before this returns.
    pub fn resize(&self, add: u64) -> Result<u64, Refusal> {
        let _serial = lock(&self.resize_lock);
        let desc = self.vol.clu_resize(self.id.clu(), add)?;
        self.memfd
            .set_len(desc.npages * PAGE)
            .map_err(|e| io("growing the cluster's memory object", e))?;
        let mut st = lock(&self.state);
        st.pages.resize(desc.npages as usize, grown());
        Ok(desc.npages)
    }
}

/// The state of a page the cluster grows over (a new zero page).
fn grown() -> PageState {
    step(PageState::Beyond, Event::Grow).map_or(PageState::None, |(s, _)| s)
}
