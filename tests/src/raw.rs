//! Clients that speak the protocol by hand, to do what the shim never does.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use clu_proto::channel::Channel;
use clu_proto::protocol::{Request, Response};
use clu_proto::{ClusterKind, PAGE_SIZE};
use clu_sys::mem::Mapping;
use clu_sys::uffd;

/// Creates a 2-page cluster, maps and registers both pages, but tells the pager about the first
/// only, then reads the second: the pager finds no region for the fault and poisons the page,
/// so this process dies of SIGBUS. Returns only on a setup failure.
pub fn outside() -> Result<String, String> {
    let path = client::socket_path();
    let chan = Channel::new(UnixStream::connect(&path).map_err(|e| format!("-107 {e}"))?);
    let call = |req: Request, fds: &[std::os::fd::BorrowedFd<'_>]| {
        chan.send(&req.encode(), fds)
            .map_err(|e| format!("-107 {e}"))?;
        let (payload, fds) = chan.recv().map_err(|e| format!("-107 {e}"))?;
        Ok::<_, String>((
            Response::decode(&payload).map_err(|e| format!("-71 {e}"))?,
            fds,
        ))
    };
    let (resp, mut fds) = call(
        Request::CreateMap {
            vol: 1,
            npages: 2,
            kind: ClusterKind::Shareable,
        },
        &[],
    )?;
    let Response::Mapped { id, .. } = resp else {
        return Err(format!("-71 {resp:?}"));
    };
    let memfd = fds.pop().ok_or("-71 no memfd")?;
    let m = Mapping::cluster(memfd.as_fd(), 0, 2, true).map_err(|e| format!("-5 {e}"))?;
    let u = uffd::open(uffd::feature::CLUSTER, false).map_err(|e| format!("-5 {e}"))?;
    let range = uffd::Range {
        start: m.addr() as u64,
        len: m.len() as u64,
    };
    uffd::register(
        &u,
        range,
        uffd::mode::MISSING | uffd::mode::MINOR | uffd::mode::WP,
    )
    .map_err(|e| format!("-5 {e}"))?;
    let (resp, _) = call(
        Request::Attach {
            id,
            first_page: 0,
            base: m.addr() as u64,
            npages: 1,
            flags: 0,
        },
        &[u.as_fd()],
    )?;
    if resp != Response::Ok {
        return Err(format!("-71 {resp:?}"));
    }
    let v = m.read_u8(PAGE_SIZE);
    Err(format!(
        "-5 read {v} outside the cluster's regions without SIGBUS"
    ))
}

/// A connection that speaks the protocol by hand.
pub struct RawClient {
    /// The framed socket.
    pub chan: Channel,
}

impl RawClient {
    /// Connects to the pager at `socket`.
    pub fn connect(socket: &std::path::Path) -> RawClient {
        RawClient {
            chan: Channel::new(UnixStream::connect(socket).expect("connect to the pager")),
        }
    }

    /// Sends raw bytes (a frame or garbage) and returns the decoded answer, or `None` if the
    /// pager closed the connection.
    pub fn bytes(&self, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> Option<Response> {
        self.chan.send(bytes, fds).ok()?;
        let (payload, _) = self.chan.recv().ok()?;
        Some(Response::decode(&payload).expect("the pager's answers decode"))
    }

    /// Sends a request.
    pub fn call(&self, req: &Request, fds: &[std::os::fd::BorrowedFd<'_>]) -> Option<Response> {
        self.bytes(&req.encode(), fds)
    }
}
