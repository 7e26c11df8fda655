//! The shim's connection to the pager: one per process, opened on first use, serialising the
//! calls; the clusters this process maps and their regions; the process's userfaultfd.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clu_proto::channel::{Channel, ChannelError};
use clu_proto::protocol::{MapMode, Request, Response, ATTACH_WP_ASYNC};
use clu_sys::mem::Mapping;
use clu_sys::sync::lock;
use clu_sys::uffd::{self, feature, mode, Range};
use userfaultfd::Uffd;

use crate::config::{Config, SOCKET_ENV};
use crate::watcher::{self, Lifeline};
use crate::{CluError, ClusterId, ClusterKind, ErrorCode, Region};

/// A cluster this process maps.
struct MappedCluster {
    writable: bool,
    memfd: OwnedFd,
    regions: Vec<Region>,
}

impl MappedCluster {
    fn npages(&self) -> u64 {
        self.regions.iter().map(|r| r.npages).sum()
    }
}

pub(crate) struct Session {
    config: Config,
    chan: Channel,
    line: Arc<Lifeline>,
    uffd_sent: bool,
    /// `/proc/self/pagemap`, in write-protect-async mode (`CLU_WP_ASYNC=1`).
    pagemap: Option<std::fs::File>,
    mapped: HashMap<ClusterId, MappedCluster>,
}

fn unavailable(why: impl std::fmt::Display) -> CluError {
    CluError::new(
        ErrorCode::Unavailable,
        format!("the pager is unavailable: {why}"),
    )
}

fn protocol(why: impl std::fmt::Display) -> CluError {
    CluError::new(ErrorCode::Protocol, why.to_string())
}

fn os(what: &str, e: std::io::Error) -> CluError {
    let code = match e.raw_os_error() {
        Some(libc::ENOMEM) | Some(libc::ENOSPC) => ErrorCode::NoSpace,
        Some(libc::EPERM) | Some(libc::EACCES) => ErrorCode::AccessDenied,
        _ => ErrorCode::Io,
    };
    CluError::new(code, format!("{what}: {e}"))
}

impl Session {
    pub(crate) fn connect() -> Result<Session, CluError> {
        let config = Config::from_env();
        let path = config.socket.clone();
        let stream = UnixStream::connect(&path).map_err(|e| {
            unavailable(format_args!(
                "cannot connect to {} ({e}); start it with `pager serve --socket {0}` or set {SOCKET_ENV}",
                path.display()
            ))
        })?;
        let line = Arc::new(Lifeline::default());
        let watch = stream
            .try_clone()
            .map_err(|e| os("cloning the pager socket", e))?;
        watcher::spawn(watch, line.clone()).map_err(|e| os("starting the lifeline thread", e))?;
        Ok(Session {
            config,
            chan: Channel::new(stream),
            line,
            uffd_sent: false,
            pagemap: None,
            mapped: HashMap::new(),
        })
    }

    pub(crate) fn dead(&self) -> bool {
        self.line.dead.load(Ordering::Acquire)
    }

    /// The clusters mapped through this connection and their regions.
    pub(crate) fn all_regions(&self) -> HashMap<ClusterId, Vec<Region>> {
        self.mapped
            .iter()
            .map(|(id, m)| (*id, m.regions.clone()))
            .collect()
    }

    fn call(
        &mut self,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Response, Vec<OwnedFd>), CluError> {
        if self.dead() {
            return Err(unavailable("the connection was lost"));
        }
        let lost = |e: ChannelError, line: &Lifeline| {
            line.dead.store(true, Ordering::Release);
            unavailable(format_args!(
                "the connection was lost ({e}); clusters mapped by this process are no longer served"
            ))
        };
        if let Err(e) = self.chan.send(&req.encode(), fds) {
            return Err(lost(e, &self.line));
        }
        let (payload, fds) = match self.chan.recv() {
            Ok(x) => x,
            Err(ChannelError::Proto(e)) => return Err(protocol(e)),
            Err(e) => return Err(lost(e, &self.line)),
        };
        match Response::decode(&payload).map_err(protocol)? {
            Response::Error { code, message } => Err(CluError::new(
                ErrorCode::from_code(code).unwrap_or(ErrorCode::Protocol),
                message,
            )),
            resp => Ok((resp, fds)),
        }
    }

    /// A request answered with `Ok` (also grant, revoke, promote: no mapping needed here).
    pub(crate) fn simple(&mut self, req: &Request) -> Result<(), CluError> {
        match self.call(req, &[])? {
            (Response::Ok, _) => Ok(()),
            (other, _) => Err(protocol(format_args!("unexpected answer {other:?}"))),
        }
    }

    fn uffd(&mut self) -> Result<Arc<Uffd>, CluError> {
        let wp_async = self.config.wp_async;
        if wp_async && self.pagemap.is_none() && self.line.uffd.get().is_none() {
            self.pagemap = Some(
                std::fs::File::open("/proc/self/pagemap")
                    .map_err(|e| os("opening /proc/self/pagemap (CLU_WP_ASYNC=1)", e))?,
            );
        }
        if let Some(u) = self.line.uffd.get() {
            return Ok(u.clone());
        }
        // Trap kernel-mode faults too when allowed (a read(2) into a cluster page then works);
        // otherwise user-mode faults only, which unprivileged processes may always ask for.
        let features = feature::CLUSTER | if wp_async { feature::WP_ASYNC } else { 0 };
        let u = uffd::open(features, false)
            .or_else(|_| uffd::open(features, true))
            .map_err(|e| os("creating this process's userfaultfd", e))?;
        Ok(self.line.uffd.get_or_init(|| Arc::new(u)).clone())
    }

    /// Maps pages `first..first+npages` of the memfd and hands them to the pager.
    fn attach(
        &mut self,
        id: ClusterId,
        memfd: &OwnedFd,
        writable: bool,
        first: u64,
        npages: u64,
    ) -> Result<Region, CluError> {
        let u = self.uffd()?;
        let m = Mapping::cluster(memfd.as_fd(), first, npages, writable)
            .map_err(|e| os("mapping the cluster", e))?;
        let range = Range {
            start: m.addr() as u64,
            len: m.len() as u64,
        };
        let modes = mode::MISSING | mode::MINOR | if writable { mode::WP } else { 0 };
        // On any failure below, dropping `m` unmaps it.
        uffd::register(&u, range, modes)
            .map_err(|e| os("registering the mapping with userfaultfd", e))?;
        let req = Request::Attach {
            id,
            first_page: first,
            base: m.addr() as u64,
            npages,
            flags: if self.pagemap.is_some() {
                ATTACH_WP_ASYNC
            } else {
                0
            },
        };
        if self.uffd_sent {
            self.simple(&req)?;
        } else {
            let pagemap = self.pagemap.take();
            let mut fds = vec![u.as_fd()];
            if let Some(p) = &pagemap {
                fds.push(p.as_fd());
            }
            let r = match self.call(&req, &fds) {
                Ok((Response::Ok, _)) => Ok(()),
                Ok((other, _)) => Err(protocol(format_args!("unexpected answer {other:?}"))),
                Err(e) => Err(e),
            };
            self.pagemap = pagemap;
            r?;
        }
        self.uffd_sent = true;
        lock(&self.line.ranges).push(range);
        Ok(Region::new(first, npages, m))
    }

    fn mapped_answer(
        &mut self,
        resp: (Response, Vec<OwnedFd>),
        want: Option<ClusterId>,
    ) -> Result<Region, CluError> {
        let (resp, mut fds) = resp;
        let Response::Mapped {
            id,
            npages,
            writable,
        } = resp
        else {
            return Err(protocol(format_args!("unexpected answer {resp:?}")));
        };
        if fds.len() != 1 || want.is_some_and(|w| w != id) || npages == 0 {
            return Err(protocol("a mapping answer without its memory object"));
        }
        let memfd = fds.remove(0);
        match self.attach(id, &memfd, writable, 0, npages) {
            Ok(region) => {
                self.mapped.insert(
                    id,
                    MappedCluster {
                        writable,
                        memfd,
                        regions: vec![region.clone()],
                    },
                );
                Ok(region)
            }
            Err(e) => {
                // The pager counts us as a mapper since its answer: undo that.
                let _ = self.simple(&Request::Unmap { id });
                Err(e)
            }
        }
    }

    pub(crate) fn create_map(
        &mut self,
        vol: u16,
        npages: u64,
        kind: ClusterKind,
    ) -> Result<(ClusterId, Region), CluError> {
        let resp = self.call(&Request::CreateMap { vol, npages, kind }, &[])?;
        let Response::Mapped { id, .. } = &resp.0 else {
            return Err(protocol(format_args!("unexpected answer {:?}", resp.0)));
        };
        let id = *id;
        self.mapped_answer(resp, Some(id)).map(|r| (id, r))
    }

    pub(crate) fn map(&mut self, id: ClusterId, mode: MapMode) -> Result<Region, CluError> {
        if self.mapped.contains_key(&id) {
            return Err(CluError::new(
                ErrorCode::Busy,
                format!("cluster {id} is already mapped in this process"),
            ));
        }
        let resp = self.call(&Request::Map { id, mode }, &[])?;
        self.mapped_answer(resp, Some(id))
    }

    fn known(&self, id: ClusterId) -> Result<&MappedCluster, CluError> {
        self.mapped.get(&id).ok_or_else(|| {
            CluError::new(
                ErrorCode::NotFound,
                format!("cluster {id} is not mapped in this process"),
            )
        })
    }

    /// Maps what the cluster has beyond what this process maps, if anything.
    fn grow(&mut self, id: ClusterId, total: u64) -> Result<Option<Region>, CluError> {
        let m = self.known(id)?;
        let (known, writable) = (m.npages(), m.writable);
        if total <= known {
            return Ok(None);
        }
        let memfd = m.memfd.try_clone().map_err(|e| os("dup", e))?;
        let region = self.attach(id, &memfd, writable, known, total - known)?;
        if let Some(m) = self.mapped.get_mut(&id) {
            m.regions.push(region.clone());
        }
        Ok(Some(region))
    }

    pub(crate) fn resize(&mut self, id: ClusterId, add: u64) -> Result<Region, CluError> {
        self.known(id)?;
        let total = match self.call(&Request::Resize { id, add }, &[])? {
            (Response::Size { npages }, _) => npages,
            (other, _) => return Err(protocol(format_args!("unexpected answer {other:?}"))),
        };
        self.grow(id, total)?
            .ok_or_else(|| protocol("the cluster did not grow"))
    }

    pub(crate) fn extend(&mut self, id: ClusterId) -> Result<Option<Region>, CluError> {
        let known = self.known(id)?.npages();
        let total = match self.call(&Request::Extend { id, known }, &[])? {
            (Response::Size { npages }, _) => npages,
            (other, _) => return Err(protocol(format_args!("unexpected answer {other:?}"))),
        };
        self.grow(id, total)
    }

    pub(crate) fn unmap(&mut self, id: ClusterId) -> Result<(), CluError> {
        self.known(id)?;
        self.simple(&Request::Unmap { id })?;
        self.forget(id);
        Ok(())
    }

    /// Unmaps `id`'s regions here without telling the pager: each is revoked at once (an
    /// access raises SIGSEGV, as after `munmap`) and its address range released once the
    /// caller holds no handle of it either.
    fn forget(&mut self, id: ClusterId) {
        if let Some(m) = self.mapped.remove(&id) {
            let mut ranges = lock(&self.line.ranges);
            for region in m.regions {
                ranges.retain(|r| r.start != region.addr() as u64);
                region.revoke();
            }
        }
    }

    pub(crate) fn commit(&mut self, id: ClusterId) -> Result<(), CluError> {
        self.known(id)?;
        self.simple(&Request::Commit { id })
    }

    pub(crate) fn commit_group(&mut self, ids: &[ClusterId]) -> Result<(), CluError> {
        for &id in ids {
            self.known(id)?;
        }
        self.simple(&Request::CommitGroup { ids: ids.to_vec() })
    }

    pub(crate) fn abort(&mut self, id: ClusterId) -> Result<(), CluError> {
        self.known(id)?;
        self.simple(&Request::Abort { id })
    }

    pub(crate) fn regions(&self, id: ClusterId) -> Result<Vec<Region>, CluError> {
        Ok(self.known(id)?.regions.clone())
    }

    pub(crate) fn owner(&mut self, id: ClusterId) -> Result<u32, CluError> {
        match self.call(&Request::Owner { id }, &[])? {
            (Response::Owner { uid }, _) => Ok(uid),
            (other, _) => Err(protocol(format_args!("unexpected answer {other:?}"))),
        }
    }

    pub(crate) fn where_is(&mut self, id: ClusterId) -> Result<String, CluError> {
        match self.call(&Request::Where { id }, &[])? {
            (Response::Text(site), _) => Ok(site),
            (other, _) => Err(protocol(format_args!("unexpected answer {other:?}"))),
        }
    }

    pub(crate) fn admin(&mut self, words: Vec<String>) -> Result<String, CluError> {
        match self.call(&Request::Admin { words }, &[])? {
            (Response::Text(t), _) => Ok(t),
            (Response::Ok, _) => Ok(String::new()),
            (other, _) => Err(protocol(format_args!("unexpected answer {other:?}"))),
        }
    }
}
