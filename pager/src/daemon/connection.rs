//! One client process: its requests, read from the socket in order and answered one by one, and
//! its faults, read from its userfaultfd by a thread of their own.
//!
//! The process is identified by its socket (`SO_PEERCRED` gives its uid, the owner of what it
//! creates). When the socket closes — the process unmapped everything and exited, or died —
//! the connection stops its fault thread and unmaps every cluster the process still had,
//! without write-back.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use client::channel::{Channel, ChannelError};
use client::proto::{Request, Response, ATTACH_WP_ASYNC};
use client::uffd;
use client::{ClusterId, ErrorCode, VolId, PAGE_SIZE};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tracing::{debug, error, info, warn};
use userfaultfd::{Event, FaultKind, ReadWrite, Uffd};

use super::error::Refusal;
use super::image::{sigbus, Fault, Image, Region};
use super::manager::Manager;
use crate::sync::{read, write};

const PAGE: u64 = PAGE_SIZE as u64;
/// How long an answer may wait for the client to read it.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The most clusters one process may map at once.
pub const MAX_CLUSTERS: usize = 1024;
/// The most regions one process may attach (mappings and their resizes).
pub const MAX_REGIONS: usize = 4096;

/// A region of this process, for finding the cluster page of a fault address.
struct Mapped {
    image: Arc<Image>,
    writable: bool,
    region: Region,
}

type Regions = Arc<RwLock<Vec<Mapped>>>;

struct Connection {
    m: Arc<Manager>,
    conn: u64,
    uid: u32,
    pid: i32,
    uffd: Option<Arc<Uffd>>,
    /// The client's `/proc/PID/pagemap`, in write-protect-async mode.
    pagemap: Option<Arc<File>>,
    regions: Regions,
    clusters: HashSet<ClusterId>,
    faults: Option<(JoinHandle<()>, OwnedFd)>,
}

/// Serves one client until its socket closes.
pub(crate) fn serve(m: Arc<Manager>, stream: UnixStream, conn: u64) {
    let (uid, pid) = match getsockopt(&stream, PeerCredentials) {
        Ok(c) => (c.uid(), c.pid()),
        Err(e) => {
            warn!("a connection without peer credentials: {e}");
            return;
        }
    };
    // A client that stops reading its answers must not hold a thread for ever.
    let _ = stream.set_write_timeout(Some(SEND_TIMEOUT));
    m.stats.connections.inc();
    m.live_connections.fetch_add(1, Ordering::Relaxed);
    debug!(conn, uid, pid, "connected");
    let chan = Channel::new(stream);
    let mut throttle = Throttle::default();
    let mut c = Connection {
        m: m.clone(),
        conn,
        uid,
        pid,
        uffd: None,
        pagemap: None,
        regions: Arc::new(RwLock::new(Vec::new())),
        clusters: HashSet::new(),
        faults: None,
    };
    loop {
        let (payload, fds) = match chan.recv() {
            Ok(x) => x,
            Err(ChannelError::Closed) => break,
            Err(ChannelError::Proto(e)) => {
                // The framing is lost: answer once, then close.
                warn!(conn, pid, "malformed frame: {e}; closing the connection");
                let _ = chan.send(&error(ErrorCode::Protocol, e.to_string()).encode(), &[]);
                break;
            }
            Err(e) => {
                debug!(conn, pid, "socket: {e}");
                break;
            }
        };
        let (resp, memfd) = match Request::decode(&payload) {
            Ok(req) => c.handle(req, fds),
            Err(e) => {
                debug!(conn, pid, "malformed request: {e}");
                (error(ErrorCode::Protocol, e.to_string()), None)
            }
        };
        if matches!(resp, Response::Error { .. }) {
            throttle.refused(conn, pid);
        }
        let fds: Vec<_> = memfd.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = chan.send(&resp.encode(), &fds) {
            if let ChannelError::Io(io) = &e {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    warn!(conn, pid, "the client has not read its answers for {SEND_TIMEOUT:?}; closing its connection");
                }
            }
            break;
        }
    }
    c.close();
    m.live_connections.fetch_sub(1, Ordering::Relaxed);
}

/// Refused requests a connection may make per second before each further one is delayed.
const REFUSALS_PER_SECOND: u32 = 200;
/// The delay of a refusal over that rate.
const REFUSAL_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Slows down a client whose requests keep being refused (malformed, foreign ids, ...), so that
/// a flood of bad requests costs the machine little and other clients keep their latency.
#[derive(Default)]
struct Throttle {
    second: Option<std::time::Instant>,
    count: u32,
    logged: bool,
}

impl Throttle {
    fn refused(&mut self, conn: u64, pid: i32) {
        let now = std::time::Instant::now();
        let new_second = self.second.map_or(true, |t| {
            now.duration_since(t) >= std::time::Duration::from_secs(1)
        });
        if new_second {
            if self.count > REFUSALS_PER_SECOND {
                warn!(
                    conn,
                    pid,
                    refused = self.count,
                    "client sent {} refused requests in a second; its requests are slowed down",
                    self.count
                );
            }
            self.second = Some(now);
            self.count = 0;
            self.logged = false;
        }
        self.count += 1;
        if self.count > REFUSALS_PER_SECOND {
            if !self.logged {
                warn!(conn, pid, "over {REFUSALS_PER_SECOND} refused requests in a second: slowing this client down");
                self.logged = true;
            }
            std::thread::sleep(REFUSAL_DELAY);
        }
    }
}

fn error(code: ErrorCode, message: String) -> Response {
    Response::Error {
        code: code as i32,
        message,
    }
}

impl Connection {
    fn handle(&mut self, req: Request, mut fds: Vec<OwnedFd>) -> (Response, Option<File>) {
        let attach = matches!(req, Request::Attach { .. });
        if !attach && !fds.is_empty() {
            return (
                error(
                    ErrorCode::Protocol,
                    "descriptors attached to a request that takes none".into(),
                ),
                None,
            );
        }
        let m = self.m.clone();
        if matches!(req, Request::CreateMap { .. } | Request::Map { .. })
            && self.clusters.len() >= MAX_CLUSTERS
        {
            warn!(conn = self.conn, pid = self.pid, "mapping limit reached");
            return (
                error(
                    ErrorCode::NoSpace,
                    format!("this process maps {MAX_CLUSTERS} clusters already; unmap some first"),
                ),
                None,
            );
        }
        if attach && read(&self.regions).len() >= MAX_REGIONS {
            warn!(conn = self.conn, pid = self.pid, "region limit reached");
            return (
                error(
                    ErrorCode::NoSpace,
                    format!(
                        "this process has {MAX_REGIONS} cluster regions already; unmap some first"
                    ),
                ),
                None,
            );
        }
        let r: Result<(Response, Option<File>), Refusal> = match req {
            Request::CreateMap { vol, npages, kind } => m
                .create_map(self.conn, self.uid, VolId(vol), npages, kind)
                .map(|(id, npages, memfd)| {
                    self.clusters.insert(id);
                    (
                        Response::Mapped {
                            id,
                            npages,
                            writable: true,
                        },
                        Some(memfd),
                    )
                }),
            Request::Map { id, mode } => {
                m.map(self.conn, self.uid, id, mode)
                    .map(|(npages, writable, memfd)| {
                        self.clusters.insert(id);
                        (
                            Response::Mapped {
                                id,
                                npages,
                                writable,
                            },
                            Some(memfd),
                        )
                    })
            }
            Request::Attach {
                id,
                first_page,
                base,
                npages,
                flags,
            } => self.attach(
                id,
                first_page,
                base,
                npages,
                flags,
                std::mem::take(&mut fds),
            ),
            Request::Unmap { id } => m.unmap(self.conn, id, true).map(|()| {
                self.clusters.remove(&id);
                write(&self.regions).retain(|r| r.image.id != id);
                (Response::Ok, None)
            }),
            Request::Resize { id, add } => m
                .resize(self.conn, id, add)
                .map(|npages| (Response::Size { npages }, None)),
            Request::Extend { id, known: _ } => m
                .extend(self.conn, id)
                .map(|npages| (Response::Size { npages }, None)),
            Request::Commit { id } => m.commit(self.conn, id).map(|_| (Response::Ok, None)),
            Request::Abort { id } => m.abort(self.conn, id).map(|_| (Response::Ok, None)),
            Request::Admin { words } => {
                crate::admin::execute(&m, self.uid, words).map(|text| (Response::Text(text), None))
            }
            Request::Grant { id, uid, mode } => m
                .set_grant(self.uid, id, uid, Some(mode))
                .map(|()| (Response::Ok, None)),
            Request::Revoke { id, uid } => m
                .set_grant(self.uid, id, uid, None)
                .map(|()| (Response::Ok, None)),
            Request::Promote { id } => m.promote(self.uid, id).map(|()| (Response::Ok, None)),
            Request::Owner { id } => m.owner(id).map(|uid| (Response::Owner { uid }, None)),
        };
        r.unwrap_or_else(|e| (error(e.code, e.message), None))
    }

    #[allow(clippy::too_many_arguments)]
    fn attach(
        &mut self,
        id: ClusterId,
        first_page: u64,
        base: u64,
        npages: u64,
        flags: u32,
        fds: Vec<OwnedFd>,
    ) -> Result<(Response, Option<File>), Refusal> {
        let wp_async = flags & ATTACH_WP_ASYNC != 0;
        let mut fds = fds.into_iter();
        let u = match (fds.next(), &self.uffd) {
            (Some(fd), None) => {
                let pagemap = match (wp_async, fds.next()) {
                    (true, Some(p)) => Some(Arc::new(self.adopt_pagemap(p)?)),
                    (false, None) => None,
                    _ => {
                        return Err(Refusal::new(
                            ErrorCode::Protocol,
                            "the first attach carries the userfaultfd, and the pagemap exactly in write-protect-async mode",
                        ))
                    }
                };
                let u = Arc::new(uffd::adopt(fd).map_err(|e| {
                    Refusal::invalid(format!("the descriptor sent is not usable: {e}"))
                })?);
                self.start_faults(u.clone())?;
                self.uffd = Some(u.clone());
                self.pagemap = pagemap;
                u
            }
            (None, Some(u)) if wp_async == self.pagemap.is_some() => u.clone(),
            (None, Some(_)) => {
                return Err(Refusal::invalid(
                    "this connection's write-protect mode cannot change",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(Refusal::invalid(
                    "this connection already gave its userfaultfd",
                ))
            }
            (None, None) => {
                return Err(Refusal::invalid(
                    "the first region of a connection comes with its userfaultfd",
                ))
            }
        };
        if fds.next().is_some() {
            return Err(Refusal::new(ErrorCode::Protocol, "too many descriptors"));
        }
        let region = Region {
            first_page,
            npages,
            base,
        };
        let end = npages.checked_mul(PAGE).and_then(|l| base.checked_add(l));
        let overlaps = read(&self.regions).iter().any(|r| {
            let r_end = r.region.base + r.region.npages * PAGE;
            end.is_some_and(|e| base < r_end && r.region.base < e)
        });
        if end.is_none() || overlaps {
            return Err(Refusal::invalid(format!(
                "region at {base:#x} of {npages} pages overlaps another or wraps around"
            )));
        }
        let (image, writable) = self
            .m
            .attach(self.conn, id, u, self.pagemap.clone(), region)?;
        write(&self.regions).push(Mapped {
            image,
            writable,
            region,
        });
        Ok((Response::Ok, None))
    }

    /// Checks that `fd` is the client's own pagemap (`/proc/PID/pagemap` of the peer).
    fn adopt_pagemap(&self, fd: OwnedFd) -> Result<File, Refusal> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| Refusal::invalid(format!("the pagemap sent is not usable: {e}")))?;
        if link != std::path::Path::new(&format!("/proc/{}/pagemap", self.pid)) {
            return Err(Refusal::invalid(format!(
                "{} is not this process's pagemap",
                link.display()
            )));
        }
        Ok(File::from(fd))
    }

    fn start_faults(&mut self, u: Arc<Uffd>) -> Result<(), Refusal> {
        let (stop_read, stop_write) =
            nix::unistd::pipe().map_err(|e| Refusal::new(ErrorCode::Io, format!("pipe: {e}")))?;
        let (m, regions, conn, pid) = (self.m.clone(), self.regions.clone(), self.conn, self.pid);
        let h = std::thread::Builder::new()
            .name(format!("faults-{pid}"))
            .spawn(move || fault_loop(&m, conn, pid, &u, &regions, stop_read))
            .map_err(|e| Refusal::new(ErrorCode::Io, format!("starting a fault thread: {e}")))?;
        self.faults = Some((h, stop_write));
        Ok(())
    }

    fn close(mut self) {
        if let Some((h, stop)) = self.faults.take() {
            drop(stop);
            let _ = h.join();
        }
        for id in std::mem::take(&mut self.clusters) {
            if let Err(e) = self.m.unmap(self.conn, id, false) {
                debug!(conn = self.conn, cluster = %id, "unmap at close: {e}");
            }
        }
        info!(conn = self.conn, pid = self.pid, "disconnected");
    }
}

fn fault_loop(m: &Manager, conn: u64, pid: i32, u: &Arc<Uffd>, regions: &Regions, stop: OwnedFd) {
    loop {
        let mut fds = [
            PollFd::new(u.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                warn!(conn, "poll on a userfaultfd: {e}");
                return;
            }
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        // Serve what is queued, then keep looking for `m.spin` after the last fault before
        // sleeping again: a thread that faults in a loop then finds this thread awake, instead
        // of paying for waking it (on this VM, waking an idle vCPU costs about 100 us). The
        // spin yields the CPU at every turn, so a client on the same CPU runs meanwhile.
        let mut last = std::time::Instant::now();
        loop {
            match u.read_event() {
                Ok(Some(ev)) => {
                    handle(m, conn, pid, u, regions, ev);
                    last = std::time::Instant::now();
                }
                Ok(None) if last.elapsed() < m.spin => std::thread::yield_now(),
                Ok(None) => break,
                Err(e) => {
                    debug!(conn, "reading the userfaultfd: {e}");
                    break;
                }
            }
        }
    }
}

fn handle(m: &Manager, conn: u64, pid: i32, u: &Arc<Uffd>, regions: &Regions, ev: Event) {
    let Event::Pagefault { kind, rw, addr, .. } = ev else {
        return;
    };
    match kind {
        FaultKind::Missing => m.stats.missing_faults.inc(),
        FaultKind::Minor => m.stats.minor_faults.inc(),
        FaultKind::WriteProtected => m.stats.wp_faults.inc(),
    }
    let addr = addr as u64 & !(PAGE - 1);
    let hit = read(regions).iter().find_map(|r| {
        let off = addr.checked_sub(r.region.base)? / PAGE;
        (off < r.region.npages).then(|| {
            let region = (r.region.first_page, r.region.npages);
            (
                r.image.clone(),
                r.region.first_page + off,
                region,
                r.writable,
            )
        })
    });
    let Some((image, page, region, writable)) = hit else {
        warn!(conn, pid, "fault at {addr:#x}, outside every cluster region of the process; the access raises SIGBUS");
        sigbus(m, u, addr);
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
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| image.fault(m, fault)));
    if served.is_err() {
        error!(conn, pid, cluster = %image.id, page, "BUG: serving a fault panicked; the access raises SIGBUS");
        sigbus(m, u, addr);
    }
}
