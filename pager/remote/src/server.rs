//! Serving the volumes this site mounts to the other sites of the cell: one thread per
//! connection, each request carried out on the mounted volume and answered.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use clu_proto::{ClusterId, ErrorCode, PAGE_SIZE};
use clu_storage::{Storage, StorageError};
use clu_sys::buf::PageBuf;
use clu_transport::{Peer, Stream, Transport};
use journal::Batch;
use tracing::{debug, info, warn};

use crate::wire::{self, Req, Resp, WireError};

/// How long a handshake and its Hello may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The commit being received on one connection.
struct Pending {
    id: ClusterId,
    runs: Vec<(u64, Vec<u8>)>,
    pages: u64,
}

/// Accepts connections from other sites on `listener` and serves each on a thread of its own,
/// until the listener fails. `me` is this site's name (what a Hello is answered with).
pub fn serve(storage: Arc<Storage>, listener: TcpListener, transport: Transport, me: String) {
    accept_each(listener, transport, "remote-peer", move |stream, peer| {
        connection(&storage, stream, &peer, &me)
    });
}

/// Accepts connections on `listener` until it fails, each on a thread `name` of its own that
/// completes the TLS handshake (within [`HELLO_TIMEOUT`]) and runs `serve` on it.
pub(crate) fn accept_each(
    listener: TcpListener,
    transport: Transport,
    name: &str,
    serve: impl Fn(Stream, Peer) + Clone + Send + 'static,
) {
    for tcp in listener.incoming() {
        let Ok(tcp) = tcp else { continue };
        let (serve, transport) = (serve.clone(), transport.clone());
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = tcp.set_read_timeout(Some(HELLO_TIMEOUT));
                match transport.accept(tcp) {
                    Ok((stream, peer)) => serve(stream, peer),
                    Err(e) => warn!("a site's connection refused: {e}"),
                }
            });
        if let Err(e) = spawned {
            warn!("cannot start a thread for a site's connection: {e}");
        }
    }
}

fn connection(storage: &Storage, mut stream: Stream, peer: &Peer, me: &str) {
    let site = match wire::recv(&mut stream).and_then(|p| Req::decode(&p)) {
        Ok(Req::Hello { site }) => site,
        Ok(other) => {
            warn!(
                peer = peer.name(),
                "a site began with {other:?} instead of a Hello"
            );
            return;
        }
        Err(e) => {
            warn!(peer = peer.name(), "a site's Hello: {e}");
            return;
        }
    };
    if let Err(e) = peer.check_site(&site) {
        let _ = wire::send(
            &mut stream,
            &Resp::Err(ErrorCode::AccessDenied, e.to_string()).encode(),
        );
        warn!(peer = peer.name(), site, "refused: {e}");
        return;
    }
    if wire::send(&mut stream, &Resp::Site(me.to_owned()).encode()).is_err() {
        return;
    }
    // Idle connections stay open for the pool of the other side.
    let _ = stream.set_read_timeout(None);
    info!(peer = peer.name(), site, "a site connected");
    let mut pending: Option<Pending> = None;
    loop {
        // The placement check of a commit's last part (one etcd read) runs while its pages
        // arrive, not after.
        let (received, early) = std::thread::scope(|scope| {
            // Without a thread (none to be had), the check runs after the frame, as before.
            let r = wire::recv_peeking(&mut stream, |head| {
                let id = wire::last_commit_of(head)?;
                std::thread::Builder::new()
                    .name("remote-placed".into())
                    .spawn_scoped(scope, move || storage.placed(id))
                    .ok()
                    .map(|h| (id, h))
            });
            match r {
                Ok((payload, early)) => {
                    let early = early.and_then(|(id, h)| h.join().ok().map(|r| (id, r)));
                    (Ok(payload), early)
                }
                Err(e) => (Err(e), None),
            }
        });
        let req = match received {
            Ok(p) => Req::decode(&p),
            Err(WireError::Io(e)) => {
                debug!(site, "connection closed: {e}");
                return;
            }
            Err(e) => Err(e),
        };
        let resp = match req {
            Ok(req) => answer(storage, &site, &mut pending, req, early),
            Err(e) => {
                // A frame that fails its checks: say so, and close (the stream may be out of
                // step).
                warn!(site, "a malformed request: {e}");
                let _ = wire::send(
                    &mut stream,
                    &Resp::Err(ErrorCode::Protocol, e.to_string()).encode(),
                );
                return;
            }
        };
        if let Err(e) = wire::send(&mut stream, &resp.encode()) {
            debug!(site, "answer not sent: {e}");
            return;
        }
    }
}

fn refusal(e: StorageError) -> Resp {
    Resp::Err(e.code(), e.to_string())
}

/// The placement of a commit's cluster, read while the commit arrived.
type Early = Option<(ClusterId, Result<Option<String>, StorageError>)>;

fn answer(
    storage: &Storage,
    site: &str,
    pending: &mut Option<Pending>,
    req: Req,
    early: Early,
) -> Resp {
    match carry_out(storage, site, pending, req, early) {
        Ok(r) => r,
        Err(e) => refusal(e),
    }
}

fn carry_out(
    storage: &Storage,
    site: &str,
    pending: &mut Option<Pending>,
    req: Req,
    early: Early,
) -> Result<Resp, StorageError> {
    let desc = |d: clu_storage::ClusterDesc| Resp::Desc(d.encode());
    Ok(match req {
        Req::Hello { .. } => Resp::Err(ErrorCode::Protocol, "a second Hello".into()),
        Req::MemHello { .. } | Req::PageOut(_) | Req::PageIn(_) | Req::PageFree(_) => Resp::Err(
            ErrorCode::Protocol,
            "this site serves volumes, not paged-out pages: give --paging-server the address of a `pager memory-server`".into(),
        ),
        Req::Info(vol) => {
            let i = storage.mounted_here(vol)?.info();
            Resp::Info([
                i.clusters as u64,
                i.used_pages,
                i.capacity_pages,
                i.log_lsn.file,
                i.log_lsn.offset,
                i.durable_lsn.file,
                i.durable_lsn.offset,
            ])
        }
        Req::GetDesc(id) => desc(storage.mounted_here(id.vol())?.clu_get_desc(id.clu())?),
        Req::List(vol) => Resp::Descs(
            storage
                .mounted_here(vol)?
                .clu_list()
                .iter()
                .map(|d| d.encode())
                .collect(),
        ),
        Req::Create {
            vol,
            npages,
            owner,
            kind,
        } => desc(storage.mounted_here(vol)?.clu_create(npages, owner, kind)?),
        Req::SetDesc(id, bytes) => {
            let new = clu_storage::ClusterDesc::decode(&bytes).map_err(|e| {
                StorageError::Invalid(format!("a descriptor that does not decode: {e}"))
            })?;
            desc(
                storage
                    .mounted_here(id.vol())?
                    .clu_update(id.clu(), &mut |d| {
                        // The id and the size stay this site's: resize has its own request.
                        let (keep_id, keep_npages) = (d.id, d.npages);
                        *d = new;
                        d.id = keep_id;
                        d.npages = keep_npages;
                    })?,
            )
        }
        Req::Destroy(id) => {
            storage.mounted_here(id.vol())?.clu_destroy(id.clu())?;
            Resp::Ok
        }
        Req::Resize(id, add) => desc(storage.mounted_here(id.vol())?.clu_resize(id.clu(), add)?),
        Req::SetCapacity(vol, n) => {
            storage.mounted_here(vol)?.set_capacity(n)?;
            Resp::Ok
        }
        Req::Read(id, first, n) => {
            if n > wire::MAX_RUN_PAGES {
                return Err(StorageError::Invalid(format!(
                    "a read of {n} pages; at most {} at once",
                    wire::MAX_RUN_PAGES
                )));
            }
            let mut buf = vec![0u8; n as usize * PAGE_SIZE];
            storage
                .mounted_here(id.vol())?
                .clu_read(id.clu(), first, &mut buf)?;
            Resp::Pages(buf)
        }
        Req::Commit { id, last, runs } => {
            let vol = storage.mounted_here(id.vol())?;
            let npages = vol.clu_get_desc(id.clu())?.npages;
            let p = pending.get_or_insert_with(|| Pending {
                id,
                runs: Vec::new(),
                pages: 0,
            });
            if p.id != id {
                *pending = None;
                return Err(StorageError::Invalid(
                    "a commit part of another cluster before the last part of the first".into(),
                ));
            }
            let added: u64 = runs.iter().map(|r| (r.1.len() / PAGE_SIZE) as u64).sum();
            p.pages += added;
            p.runs.extend(runs);
            // A commit never holds more pages than the cluster has (each at most once).
            if p.pages > npages {
                *pending = None;
                return Err(StorageError::Invalid(format!(
                    "a commit of more pages than cluster {id} has ({npages})"
                )));
            }
            if !last {
                return Ok(Resp::Ok);
            }
            let Some(p) = pending.take() else {
                return Err(StorageError::Invalid("no commit under way".into()));
            };
            // Only the site holding the cluster's image may commit it: one whose placement was
            // taken away (its lease expired, another site placed it) is refused, never applied.
            let holder = match early {
                Some((seen, placed)) if seen == id => placed?,
                _ => storage.placed(id)?,
            };
            if holder.as_deref() != Some(site) {
                return Err(StorageError::Remote {
                    site: site.to_owned(),
                    code: ErrorCode::Unavailable,
                    message: format!(
                        "may not commit cluster {id}: its image is {} now; the commit is refused and nothing of it applied (map the cluster again)",
                        holder.map_or("placed nowhere".to_owned(), |h| format!("held by site {h}"))
                    ),
                });
            }
            let batch = batch_of(p.runs)?;
            let lsn = vol.clu_commit(id.clu(), batch)?;
            Resp::Lsn(lsn.file, lsn.offset)
        }
        Req::History(id) => Resp::History(storage.mounted_here(id.vol())?.clu_history(id.clu())),
        Req::SetHistory(id, h) => {
            storage
                .mounted_here(id.vol())?
                .clu_set_history(id.clu(), &h)?;
            Resp::Ok
        }
    })
}

/// The runs received, in one page-aligned buffer as the journal takes them.
fn batch_of(runs: Vec<(u64, Vec<u8>)>) -> Result<Batch, StorageError> {
    let total: usize = runs.iter().map(|r| r.1.len()).sum();
    let mut buf = PageBuf::zeroed(total);
    let mut at = 0;
    let mut placed = Vec::with_capacity(runs.len());
    for (first, pages) in &runs {
        buf[at..at + pages.len()].copy_from_slice(pages);
        placed.push((*first, at, pages.len() / PAGE_SIZE));
        at += pages.len();
    }
    let mut batch = Batch::new(buf);
    for (first, at, n) in placed {
        batch
            .push(first, at, n)
            .map_err(|e| StorageError::Invalid(e.to_string()))?;
    }
    Ok(batch)
}
