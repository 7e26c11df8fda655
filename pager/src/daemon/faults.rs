//! A client's fault thread: reads its userfaultfd and hands each fault to the image of the
//! cluster holding the page. A fault outside every region the client announced is refused.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use clu_mm::{sigbus, ConnId, Fault, Image, RegionSet, UserAddr};
use clu_sys::sync::read;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{debug, error, warn};
use userfaultfd::{Event, FaultKind, ReadWrite, Uffd};

use super::Daemon;

/// What a region of a process leads to: the cluster's image, and whether it is mapped
/// writable there.
pub(super) struct Attached {
    pub image: Arc<Image>,
    pub writable: bool,
}

/// A process's regions, shared by its connection (which adds and removes them) and its fault
/// thread (which looks faults up).
pub(super) type Regions = Arc<RwLock<RegionSet<Attached>>>;

/// Starts the fault thread of a process; dropping the returned descriptor stops it.
pub(super) fn start(
    d: Arc<Daemon>,
    conn: ConnId,
    pid: i32,
    u: Arc<Uffd>,
    regions: Regions,
) -> std::io::Result<(JoinHandle<()>, OwnedFd)> {
    let (stop_read, stop_write) = nix::unistd::pipe().map_err(std::io::Error::from)?;
    let h = std::thread::Builder::new()
        .name(format!("faults-{pid}"))
        .spawn(move || fault_loop(&d, conn, pid, &u, &regions, stop_read))?;
    Ok((h, stop_write))
}

fn fault_loop(d: &Daemon, conn: ConnId, pid: i32, u: &Arc<Uffd>, regions: &Regions, stop: OwnedFd) {
    loop {
        let mut fds = [
            PollFd::new(u.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                warn!(%conn, "poll on a userfaultfd: {e}");
                return;
            }
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        // Serve what is queued, then keep looking for `spin` after the last fault before
        // sleeping again: a thread that faults in a loop then finds this thread awake, instead
        // of paying for waking it (on this VM, waking an idle vCPU costs about 100 us). The
        // spin yields the CPU at every turn, so a client on the same CPU runs meanwhile.
        let mut last = std::time::Instant::now();
        loop {
            match u.read_event() {
                Ok(Some(ev)) => {
                    handle(d, conn, pid, u, regions, ev);
                    last = std::time::Instant::now();
                }
                Ok(None) if last.elapsed() < d.spin => std::thread::yield_now(),
                Ok(None) => break,
                Err(e) => {
                    debug!(%conn, "reading the userfaultfd: {e}");
                    break;
                }
            }
        }
    }
}

fn handle(d: &Daemon, conn: ConnId, pid: i32, u: &Arc<Uffd>, regions: &Regions, ev: Event) {
    let Event::Pagefault { kind, rw, addr, .. } = ev else {
        return;
    };
    let site = d.manager.site();
    match kind {
        FaultKind::Missing => site.stats.missing_faults.inc(),
        FaultKind::Minor => site.stats.minor_faults.inc(),
        FaultKind::WriteProtected => site.stats.wp_faults.inc(),
    }
    let addr = UserAddr(addr as u64).page_start();
    let hit = read(regions)
        .find(addr)
        .map(|(region, a, page)| (a.image.clone(), *region, page, a.writable));
    let Some((image, region, page, writable)) = hit else {
        warn!(%conn, pid, "fault at {addr}, outside every cluster region of the process; the access raises SIGBUS");
        sigbus(site, u, addr);
        return;
    };
    let fault = Fault {
        conn,
        uffd: u.clone(),
        writable,
        addr,
        page,
        region,
        kind,
        write: rw == ReadWrite::Write,
    };
    // A panic here is a bug; it must not leave the client blocked for ever on a fault
    // nobody will answer: report it, and make the access raise SIGBUS.
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| image.fault(fault)));
    if served.is_err() {
        error!(%conn, pid, cluster = %image.id(), %page, "BUG: serving a fault panicked; the access raises SIGBUS");
        sigbus(site, u, addr);
    }
}
