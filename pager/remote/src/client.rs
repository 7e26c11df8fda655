//! [`RemoteVolume`]: a volume another site mounts, as this site's memory manager sees it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clu_proto::{CluId, ClusterId, ClusterKind, ErrorCode, VolId, PAGE_SIZE};
use clu_storage::{ClusterDesc, Result, StorageError, Volume, VolumeInfo};
use clu_sys::sync::lock;
use clu_transport::{Stream, Transport};
use journal::{Batch, Lsn, PageRun};

use crate::peers::{PeerStats, Peers};
use crate::wire::{self, Req, Resp, MAX_RUN_PAGES};

/// Who mounts a volume now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The site's name (its certificate must name it).
    pub site: String,
    /// Where it listens, `HOST:PORT`.
    pub address: String,
}

/// Finds who mounts a volume now (the cell's catalog). Called with no lock held.
pub type Resolve = Arc<dyn Fn(VolId) -> Result<Holder> + Send + Sync>;

struct Conn {
    stream: Stream,
    site: String,
    stats: Arc<PeerStats>,
}

/// A volume mounted by another site, reached over the transport. Cheap to share; every call
/// is one request (a commit, one per 4 MiB part) on a pooled connection.
pub struct RemoteVolume {
    vol: VolId,
    me: String,
    transport: Transport,
    resolve: Resolve,
    timeout: Duration,
    peers: Arc<Peers>,
    /// Idle connections (short: taken and put back, never held across I/O).
    idle: Mutex<Vec<Conn>>,
    /// The figures of the last `info` that succeeded.
    last_info: Mutex<VolumeInfo>,
}

fn unreachable(site: &str, why: impl std::fmt::Display) -> StorageError {
    StorageError::Remote {
        site: site.to_owned(),
        code: ErrorCode::Unavailable,
        message: format!(
            "not reached ({why}); check that its pager runs (`pager site list` shows the cell's live sites) and that its --listen address is reachable from here; meanwhile a fault on a page not held here fails, and a commit fails with its pages still dirty and succeeds once the site is back"
        ),
    }
}

fn desc(site: &str, bytes: &[u8]) -> Result<ClusterDesc> {
    ClusterDesc::decode(bytes).map_err(|e| StorageError::Remote {
        site: site.to_owned(),
        code: ErrorCode::Protocol,
        message: format!("sent a descriptor that does not decode: {e}"),
    })
}

fn unexpected(site: &str, r: &Resp) -> StorageError {
    StorageError::Remote {
        site: site.to_owned(),
        code: ErrorCode::Protocol,
        message: format!(
            "gave an answer this site does not expect ({}); run the same pager release on every site of the cell",
            format!("{r:?}").chars().take(60).collect::<String>()
        ),
    }
}

impl RemoteVolume {
    /// Volume `vol`, served by whichever site `resolve` names, reached by `transport` as site
    /// `me`; each call waits at most `timeout` for an answer, and is counted in `peers`.
    pub fn new(
        vol: VolId,
        me: &str,
        transport: Transport,
        resolve: Resolve,
        timeout: Duration,
        peers: Arc<Peers>,
    ) -> RemoteVolume {
        RemoteVolume {
            vol,
            me: me.to_owned(),
            transport,
            resolve,
            timeout,
            peers,
            idle: Mutex::new(Vec::new()),
            last_info: Mutex::new(VolumeInfo {
                vol,
                clusters: 0,
                used_pages: 0,
                capacity_pages: 0,
                log_lsn: Lsn::default(),
                durable_lsn: Lsn::default(),
            }),
        }
    }

    fn connect(&self) -> Result<Conn> {
        let holder = (self.resolve)(self.vol)?;
        let stream = self
            .transport
            .connect(&holder.address, self.timeout)
            .map_err(|e| unreachable(&holder.site, e))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| unreachable(&holder.site, e))?;
        let hello = Req::Hello {
            site: self.me.clone(),
        };
        let mut conn = Conn {
            stream,
            site: holder.site.clone(),
            stats: self.peers.of(&holder.site),
        };
        match exchange(&mut conn, &hello)? {
            Resp::Site(s) if s == holder.site => Ok(conn),
            Resp::Site(s) => Err(StorageError::Remote {
                site: holder.site,
                code: ErrorCode::Unavailable,
                message: format!(
                    "the site at {} is `{s}` now, not the one the catalog names; try again",
                    holder.address
                ),
            }),
            Resp::Err(code, message) => Err(StorageError::Remote {
                site: holder.site,
                code,
                message,
            }),
            other => Err(unexpected(&holder.site, &other)),
        }
    }

    /// Runs `f` on a connection: an idle one, or a new one to the site that mounts the volume.
    /// A connection that failed is dropped; one that answered goes back to the pool.
    fn with_conn<T>(&self, idempotent: bool, f: impl Fn(&mut Conn) -> Result<T>) -> Result<T> {
        let pooled = lock(&self.idle).pop();
        let from_pool = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        match f(&mut conn) {
            Err(
                e @ StorageError::Remote {
                    code: ErrorCode::Unavailable,
                    ..
                },
            ) if from_pool && idempotent => {
                // An idle connection the other side closed (a restart): once more, afresh.
                tracing::debug!(vol = %self.vol, "retrying on a new connection: {e}");
                let mut conn = self.connect()?;
                let r = f(&mut conn);
                if r.is_ok() {
                    lock(&self.idle).push(conn);
                }
                r
            }
            Err(
                e @ StorageError::Remote {
                    code: ErrorCode::Unavailable,
                    ..
                },
            ) => Err(e),
            r => {
                // An answer, even a refusal: the connection is in step.
                lock(&self.idle).push(conn);
                r
            }
        }
    }

    /// One request, one answer; a refusal becomes its error.
    fn call(&self, req: &Req) -> Result<Resp> {
        let idempotent = !matches!(req, Req::Commit { .. } | Req::Create { .. });
        self.with_conn(idempotent, |c| ask(c, req))
    }
}

/// Sends `req` and reads its answer; a failure of the connection is `Unavailable`.
fn exchange(c: &mut Conn, req: &Req) -> Result<Resp> {
    let s = c.stats.clone();
    let failed = |e: &dyn std::fmt::Display| {
        s.failures.fetch_add(1, Ordering::Relaxed);
        unreachable(&c.site, e)
    };
    let t0 = Instant::now();
    let bytes = req.encode();
    wire::send(&mut c.stream, &bytes).map_err(|e| failed(&e))?;
    let payload = wire::recv(&mut c.stream).map_err(|e| failed(&e))?;
    let rtt = t0.elapsed().as_micros() as u64;
    let add = |a: &std::sync::atomic::AtomicU64, n: u64| a.fetch_add(n, Ordering::Relaxed);
    add(&s.requests, 1);
    add(&s.bytes_sent, bytes.len() as u64 + 8);
    add(&s.bytes_received, payload.len() as u64 + 8);
    add(&s.total_rtt_us, rtt);
    s.last_rtt_us.store(rtt, Ordering::Relaxed);
    let resp = Resp::decode(&payload).map_err(|e| StorageError::Remote {
        site: c.site.clone(),
        code: ErrorCode::Protocol,
        message: format!("sent an answer that does not decode: {e}"),
    })?;
    match (req, &resp) {
        (Req::Read(..), Resp::Pages(p)) => {
            add(&s.reads, 1);
            add(&s.pages_read, (p.len() / PAGE_SIZE) as u64);
        }
        (Req::Commit { last: true, .. }, Resp::Lsn(..)) => {
            add(&s.commits, 1);
        }
        _ => {}
    }
    Ok(resp)
}

/// Sends `req`; its answer, a refusal becoming its error.
fn ask(c: &mut Conn, req: &Req) -> Result<Resp> {
    let r = exchange(c, req)?;
    match r {
        Resp::Err(code, message) => Err(StorageError::Remote {
            site: c.site.clone(),
            code,
            message,
        }),
        r => Ok(r),
    }
}

impl Volume for RemoteVolume {
    fn id(&self) -> VolId {
        self.vol
    }

    fn info(&self) -> VolumeInfo {
        if let Ok(Resp::Info([clusters, used, cap, lf, lo, df, dof])) =
            self.call(&Req::Info(self.vol))
        {
            *lock(&self.last_info) = VolumeInfo {
                vol: self.vol,
                clusters: clusters as usize,
                used_pages: used,
                capacity_pages: cap,
                log_lsn: Lsn {
                    file: lf,
                    offset: lo,
                },
                durable_lsn: Lsn {
                    file: df,
                    offset: dof,
                },
            };
        }
        lock(&self.last_info).clone()
    }

    fn set_capacity(&self, capacity_pages: u64) -> Result<()> {
        self.call(&Req::SetCapacity(self.vol, capacity_pages))
            .map(|_| ())
    }

    fn checkpoint(&self) -> Result<()> {
        Ok(()) // the mounting site checkpoints its journal
    }

    fn unmount(&self) -> Result<()> {
        lock(&self.idle).clear();
        Ok(())
    }

    fn clu_create(&self, npages: u64, owner: u32, kind: ClusterKind) -> Result<ClusterDesc> {
        let req = Req::Create {
            vol: self.vol,
            npages,
            owner,
            kind,
        };
        self.with_conn(false, |c| match ask(c, &req)? {
            Resp::Desc(d) => desc(&c.site, &d),
            other => Err(unexpected(&c.site, &other)),
        })
    }

    fn clu_get_desc(&self, clu: CluId) -> Result<ClusterDesc> {
        let req = Req::GetDesc(ClusterId::new(self.vol, clu));
        self.with_conn(true, |c| match ask(c, &req)? {
            Resp::Desc(d) => desc(&c.site, &d),
            other => Err(unexpected(&c.site, &other)),
        })
    }

    fn clu_update(&self, clu: CluId, f: &mut dyn FnMut(&mut ClusterDesc)) -> Result<ClusterDesc> {
        // Read, change here, write back: the site that maps a cluster is its one writer (one
        // image per cluster), so nothing changes the descriptor in between but this site.
        let mut d = self.clu_get_desc(clu)?;
        f(&mut d);
        let req = Req::SetDesc(ClusterId::new(self.vol, clu), d.encode());
        self.with_conn(true, |c| match ask(c, &req)? {
            Resp::Desc(d) => desc(&c.site, &d),
            other => Err(unexpected(&c.site, &other)),
        })
    }

    fn clu_list(&self) -> Vec<ClusterDesc> {
        let req = Req::List(self.vol);
        self.with_conn(true, |c| match ask(c, &req)? {
            Resp::Descs(ds) => ds.iter().map(|d| desc(&c.site, d)).collect(),
            other => Err(unexpected(&c.site, &other)),
        })
        .unwrap_or_default()
    }

    fn clu_destroy(&self, clu: CluId) -> Result<()> {
        self.call(&Req::Destroy(ClusterId::new(self.vol, clu)))
            .map(|_| ())
    }

    fn clu_resize(&self, clu: CluId, add_pages: u64) -> Result<ClusterDesc> {
        let req = Req::Resize(ClusterId::new(self.vol, clu), add_pages);
        self.with_conn(false, |c| match ask(c, &req)? {
            Resp::Desc(d) => desc(&c.site, &d),
            other => Err(unexpected(&c.site, &other)),
        })
    }

    fn clu_read(&self, clu: CluId, first_page: u64, buf: &mut [u8]) -> Result<()> {
        if buf.len() % PAGE_SIZE != 0 {
            return Err(StorageError::Invalid(format!(
                "a read of {} bytes is not whole pages",
                buf.len()
            )));
        }
        let id = ClusterId::new(self.vol, clu);
        for (i, chunk) in buf
            .chunks_mut(MAX_RUN_PAGES as usize * PAGE_SIZE)
            .enumerate()
        {
            let first = first_page + i as u64 * MAX_RUN_PAGES;
            let req = Req::Read(id, first, (chunk.len() / PAGE_SIZE) as u64);
            let pages = self.with_conn(true, |c| match ask(c, &req)? {
                Resp::Pages(p) if p.len() == chunk.len() => Ok(p),
                other => Err(unexpected(&c.site, &other)),
            })?;
            chunk.copy_from_slice(&pages);
        }
        Ok(())
    }

    fn clu_write(&self, clu: CluId, runs: &[PageRun<'_>]) -> Result<Lsn> {
        let id = ClusterId::new(self.vol, clu);
        // Parts of at most MAX_RUN_PAGES pages each, all on one connection; the last commits.
        let mut parts: Vec<Vec<(u64, Vec<u8>)>> = Vec::new();
        let mut part = Vec::new();
        let mut in_part = 0u64;
        for r in runs {
            for (i, piece) in r
                .pages
                .chunks(MAX_RUN_PAGES as usize * PAGE_SIZE)
                .enumerate()
            {
                let n = (piece.len() / PAGE_SIZE) as u64;
                if in_part + n > MAX_RUN_PAGES && !part.is_empty() {
                    parts.push(std::mem::take(&mut part));
                    in_part = 0;
                }
                part.push((r.first_page + i as u64 * MAX_RUN_PAGES, piece.to_vec()));
                in_part += n;
            }
        }
        parts.push(part);
        self.with_conn(false, |c| {
            let last = parts.len() - 1;
            for (i, runs) in parts.iter().enumerate() {
                let req = Req::Commit {
                    id,
                    last: i == last,
                    runs: runs.clone(),
                };
                match ask(c, &req)? {
                    Resp::Ok if i != last => {}
                    Resp::Lsn(file, offset) if i == last => return Ok(Lsn { file, offset }),
                    other => return Err(unexpected(&c.site, &other)),
                }
            }
            Err(StorageError::Invalid("an empty commit".into()))
        })
    }

    fn clu_commit(&self, clu: CluId, batch: Batch) -> Result<Lsn> {
        self.clu_write(clu, &batch.runs())
    }

    fn clu_history(&self, clu: CluId) -> Vec<u32> {
        match self.call(&Req::History(ClusterId::new(self.vol, clu))) {
            Ok(Resp::History(h)) => h,
            _ => Vec::new(),
        }
    }

    fn cacheable(&self) -> bool {
        false // the site that mounts the volume, or another, may change it meanwhile
    }

    fn clu_set_history(&self, clu: CluId, pages: &[u32]) -> Result<()> {
        self.call(&Req::SetHistory(
            ClusterId::new(self.vol, clu),
            pages.to_vec(),
        ))
        .map(|_| ())
    }
}
