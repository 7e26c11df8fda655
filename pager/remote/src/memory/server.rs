//! The memory server: one thread per connection, each request carried out on the [`Store`]
//! (under its lock, which is never held across I/O).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use clu_proto::ErrorCode;
use clu_sys::sync::lock;
use clu_transport::{Peer, Stream, Transport};
use tracing::{debug, info, warn};

use super::store::{Store, StoreError};
use crate::server::accept_each;
use crate::wire::{self, Req, Resp, WireError};

/// Serves `pages` pages of this machine's memory to the sites that connect on `listener`, one
/// thread per connection, until the listener fails. `me` names this server in its answers.
pub fn serve(listener: TcpListener, transport: Transport, me: String, pages: u32) {
    let store = Arc::new(Mutex::new(Store::new(pages)));
    let incarnation = RandomState::new().build_hasher().finish();
    accept_each(listener, transport, "memory-peer", move |stream, peer| {
        connection(&store, stream, &peer, &me, incarnation)
    });
}

fn refuse(stream: &mut Stream, code: ErrorCode, why: impl std::fmt::Display) {
    let _ = wire::send(stream, &Resp::Err(code, why.to_string()).encode());
}

fn connection(store: &Mutex<Store>, mut stream: Stream, peer: &Peer, me: &str, incarnation: u64) {
    let site = match wire::recv_at_most(&mut stream, wire::MEM_MAX_FRAME)
        .and_then(|p| Req::decode(&p))
    {
        Ok(Req::MemHello { site, incarnation }) => {
            if let Err(e) = peer.check_site(&site) {
                warn!(peer = peer.name(), site, "refused: {e}");
                return refuse(&mut stream, ErrorCode::AccessDenied, e);
            }
            let freed = lock(store).hello(&site, incarnation);
            if freed > 0 {
                info!(
                    site,
                    freed, "a new run of the site: the pages of its last run are freed"
                );
            }
            site
        }
        Ok(other) => {
            warn!(peer = peer.name(), "a connection began with {other:?}");
            return refuse(
                &mut stream,
                ErrorCode::Protocol,
                "this is a memory server (pager memory-server): it keeps paged-out pages and mounts no volume",
            );
        }
        Err(e) => {
            warn!(peer = peer.name(), "a site's hello: {e}");
            return;
        }
    };
    let welcome = Resp::Welcome {
        server: me.to_owned(),
        incarnation,
    };
    if wire::send(&mut stream, &welcome.encode()).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(None);
    debug!(site, "a site connected");
    loop {
        let req = match wire::recv_at_most(&mut stream, wire::MEM_MAX_FRAME) {
            Ok(p) => Req::decode(&p),
            Err(WireError::Io(e)) => {
                debug!(site, "connection closed: {e}");
                return;
            }
            Err(e) => Err(e),
        };
        let resp = match req {
            Ok(req) => answer(store, &site, req),
            Err(e) => {
                warn!(site, "a malformed request: {e}");
                return refuse(&mut stream, ErrorCode::Protocol, e);
            }
        };
        if let Err(e) = wire::send(&mut stream, &resp.encode()) {
            debug!(site, "answer not sent: {e}");
            return;
        }
    }
}

fn answer(store: &Mutex<Store>, site: &str, req: Req) -> Resp {
    let refused = |e: StoreError| {
        let code = match e {
            StoreError::Full(_) => ErrorCode::NoSpace,
            StoreError::NotYours(_) => ErrorCode::NotFound,
            StoreError::BadLength(_) => ErrorCode::Invalid,
            StoreError::NoHello => ErrorCode::Protocol,
        };
        Resp::Err(code, e.to_string())
    };
    let mut s = lock(store);
    match req {
        Req::PageOut(page) => s.put(site, &page).map_or_else(refused, Resp::Slot),
        Req::PageIn(slot) => s
            .get(site, slot)
            .map_or_else(refused, |p| Resp::Pages(p.to_vec())),
        Req::PageFree(slots) => {
            // Every slot that is the site's is freed; the first that is not is named.
            let refusals: Vec<StoreError> = slots
                .iter()
                .filter_map(|n| s.free(site, *n).err())
                .collect();
            refusals.into_iter().next().map_or(Resp::Ok, refused)
        }
        other => Resp::Err(
            ErrorCode::Protocol,
            format!("a memory server keeps pages only; {other:?} is for a site"),
        ),
    }
}
