//! One client process: its requests, read from the socket in order and answered one by one.
//! Its faults are read by a thread of their own (`faults`).
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

use clu_mm::{ConnId, PageNo, Refusal, UserAddr, UserRegion};
use clu_proto::channel::{Channel, ChannelError};
use clu_proto::protocol::{Request, Response, ATTACH_WP_ASYNC};
use clu_proto::{ClusterId, ErrorCode, VolId};
use clu_sys::sync::{read, write};
use clu_sys::uffd;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tracing::{debug, info, warn};
use userfaultfd::Uffd;

use super::faults::{self, Attached, Regions};
use super::throttle::Throttle;
use super::Daemon;

/// How long an answer may wait for the client to read it.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The most clusters one process may map at once.
pub const MAX_CLUSTERS: usize = 1024;
/// The most regions one process may attach (mappings and their resizes).
pub const MAX_REGIONS: usize = 4096;

/// A region a client announces (`Attach`), with the descriptors that came with it.
struct AttachRequest {
    id: ClusterId,
    region: UserRegion,
    wp_async: bool,
    fds: Vec<OwnedFd>,
}

struct Connection {
    d: Arc<Daemon>,
    conn: ConnId,
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
pub(crate) fn serve(d: Arc<Daemon>, stream: UnixStream, conn: ConnId) {
    let (uid, pid) = match getsockopt(&stream, PeerCredentials) {
        Ok(c) => (c.uid(), c.pid()),
        Err(e) => {
            warn!("a connection without peer credentials: {e}");
            return;
        }
    };
    // A client that stops reading its answers must not hold a thread for ever.
    let _ = stream.set_write_timeout(Some(SEND_TIMEOUT));
    d.connections.inc();
    d.live_connections.fetch_add(1, Ordering::Relaxed);
    debug!(%conn, uid, pid, "connected");
    let chan = Channel::new(stream);
    let mut throttle = Throttle::default();
    let mut c = Connection {
        d: d.clone(),
        conn,
        uid,
        pid,
        uffd: None,
        pagemap: None,
        regions: Arc::new(RwLock::new(Default::default())),
        clusters: HashSet::new(),
        faults: None,
    };
    loop {
        let (payload, fds) = match chan.recv() {
            Ok(x) => x,
            Err(ChannelError::Closed) => break,
            Err(ChannelError::Proto(e)) => {
                // The framing is lost: answer once, then close.
                warn!(%conn, pid, "malformed frame: {e}; closing the connection");
                let _ = chan.send(&error(ErrorCode::Protocol, e.to_string()).encode(), &[]);
                break;
            }
            Err(e) => {
                debug!(%conn, pid, "socket: {e}");
                break;
            }
        };
        let (resp, memfd) = match Request::decode(&payload) {
            Ok(req) => c.handle(req, fds),
            Err(e) => {
                debug!(%conn, pid, "malformed request: {e}");
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
                    warn!(%conn, pid, "the client has not read its answers for {SEND_TIMEOUT:?}; closing its connection");
                }
            }
            break;
        }
    }
    c.close();
    d.live_connections.fetch_sub(1, Ordering::Relaxed);
}

fn error(code: ErrorCode, message: String) -> Response {
    Response::Error {
        code: code as i32,
        message,
    }
}

fn mapped(m: clu_mm::MapReply) -> (Response, Option<File>) {
    (
        Response::Mapped {
            id: m.id,
            npages: m.npages,
            writable: m.writable,
        },
        Some(m.memfd),
    )
}

impl Connection {
    fn handle(&mut self, req: Request, fds: Vec<OwnedFd>) -> (Response, Option<File>) {
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
        if matches!(req, Request::CreateMap { .. } | Request::Map { .. })
            && self.clusters.len() >= MAX_CLUSTERS
        {
            warn!(conn = %self.conn, pid = self.pid, "mapping limit reached");
            return (
                error(
                    ErrorCode::NoSpace,
                    format!("this process maps {MAX_CLUSTERS} clusters already; unmap some first"),
                ),
                None,
            );
        }
        if attach && read(&self.regions).len() >= MAX_REGIONS {
            warn!(conn = %self.conn, pid = self.pid, "region limit reached");
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
        self.execute(req, fds)
            .unwrap_or_else(|e| (error(e.code, e.message), None))
    }

    fn execute(
        &mut self,
        req: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<(Response, Option<File>), Refusal> {
        let d = self.d.clone();
        let m = &d.manager;
        let (conn, uid) = (self.conn, self.uid);
        Ok(match req {
            Request::CreateMap { vol, npages, kind } => {
                let r = m.create_map(conn, uid, VolId(vol), npages, kind)?;
                self.clusters.insert(r.id);
                mapped(r)
            }
            Request::Map { id, mode } => {
                let r = m.map(conn, uid, id, mode)?;
                self.clusters.insert(id);
                mapped(r)
            }
            Request::Attach {
                id,
                first_page,
                base,
                npages,
                flags,
            } => self.attach(AttachRequest {
                id,
                region: UserRegion {
                    first_page: PageNo(first_page),
                    npages,
                    base: UserAddr(base),
                },
                wp_async: flags & ATTACH_WP_ASYNC != 0,
                fds,
            })?,
            Request::Unmap { id } => {
                m.unmap(conn, id, true)?;
                self.clusters.remove(&id);
                write(&self.regions).retain(|_, a| a.image.id() != id);
                (Response::Ok, None)
            }
            Request::Resize { id, add } => (
                Response::Size {
                    npages: m.resize(conn, id, add)?,
                },
                None,
            ),
            Request::Extend { id, known: _ } => (
                Response::Size {
                    npages: m.extend(conn, id)?,
                },
                None,
            ),
            Request::Commit { id } => {
                m.commit(conn, id)?;
                (Response::Ok, None)
            }
            Request::Abort { id } => {
                m.abort(conn, id)?;
                (Response::Ok, None)
            }
            Request::CommitGroup { ids } => {
                m.commit_group(conn, &ids)?;
                (Response::Ok, None)
            }
            Request::Admin { words } => (
                Response::Text(super::admin::execute(&d, uid, &words)?),
                None,
            ),
            Request::Grant { id, uid: who, mode } => {
                m.set_grant(uid, id, who, Some(mode))?;
                (Response::Ok, None)
            }
            Request::Revoke { id, uid: who } => {
                m.set_grant(uid, id, who, None)?;
                (Response::Ok, None)
            }
            Request::Promote { id } => {
                m.promote(uid, id)?;
                (Response::Ok, None)
            }
            Request::Owner { id } => (Response::Owner { uid: m.owner(id)? }, None),
            Request::Where { id } => (Response::Text(m.where_is(id)?), None),
        })
    }

    /// A region the client mapped and registered: the first one brings the client's
    /// userfaultfd (and, in write-protect-async mode, its pagemap), which starts its fault
    /// thread.
    fn attach(&mut self, a: AttachRequest) -> Result<(Response, Option<File>), Refusal> {
        let mut fds = a.fds.into_iter();
        let u = match (fds.next(), &self.uffd) {
            (Some(fd), None) => {
                let pagemap = match (a.wp_async, fds.next()) {
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
            (None, Some(u)) if a.wp_async == self.pagemap.is_some() => u.clone(),
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
        // Checked against this process's other regions before the image records it (this
        // connection's requests come one at a time: nothing is inserted in between).
        read(&self.regions)
            .check(&a.region)
            .map_err(|e| Refusal::invalid(e.to_string()))?;
        let (image, writable) =
            self.d
                .manager
                .attach(self.conn, a.id, u, self.pagemap.clone(), a.region)?;
        write(&self.regions)
            .insert(a.region, Attached { image, writable })
            .map_err(|e| Refusal::invalid(e.to_string()))?;
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
        let started = faults::start(self.d.clone(), self.conn, self.pid, u, self.regions.clone())
            .map_err(|e| {
            Refusal::new(ErrorCode::Io, format!("starting a fault thread: {e}"))
        })?;
        self.faults = Some(started);
        Ok(())
    }

    fn close(mut self) {
        if let Some((h, stop)) = self.faults.take() {
            drop(stop);
            let _ = h.join();
        }
        for id in std::mem::take(&mut self.clusters) {
            if let Err(e) = self.d.manager.unmap(self.conn, id, false) {
                debug!(conn = %self.conn, cluster = %id, "unmap at close: {e}");
            }
        }
        info!(conn = %self.conn, pid = self.pid, "disconnected");
    }
}
