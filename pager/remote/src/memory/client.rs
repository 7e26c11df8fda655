//! [`MemoryClient`]: a memory server as this site's paging partition.
//!
//! The slots the memory manager holds are this client's own numbers, each mapped to the
//! server's slot *and the server's run*: a server that restarted lost its pages, and a slot of
//! its last run is refused here (a lost page: SIGBUS for a fault, nothing to free), never
//! confused with a slot the new run handed out. Every pooled connection carries the run its
//! welcome named, and a request about a slot goes only on a connection of the slot's run.
//! Frees leave the fault path: they are owed, and sent in batches by the `memory-free` thread
//! (every [`FLUSH_EVERY`], or as soon as [`FLUSH_AT`] are owed); a fault from the memory server
//! is then one round trip, not two. A free whose outcome is unknown (sent, no answer) is never
//! sent again: the server may have reused the slot for a live page; the slot is leaked until
//! this site's next run.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use clu_mm::paging::{PagingError, PagingServer, Slot};
use clu_proto::PAGE_SIZE;
use clu_sys::sync::lock;
use clu_transport::{Stream, Transport};
use tracing::warn;

use crate::wire::{self, Req, Resp, MAX_RUN_PAGES};

/// How often owed frees are sent.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Owed frees that wake the sender at once.
pub const FLUSH_AT: usize = 256;

/// After a failure to reach the server, evictions do not try it again for this long (they
/// keep their pages resident at once instead of each waiting for the timeout).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What this site did with its memory server, for `pager status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryFigures {
    /// The server's address.
    pub address: String,
    /// Its name, once it answered.
    pub server: String,
    /// Slots this site holds there.
    pub in_use: u32,
    /// Pages sent there.
    pub stored: u64,
    /// Pages read back.
    pub loaded: u64,
    /// Requests that failed (not reached, or refused).
    pub failures: u64,
}

/// The client's slots and what it knows of the server (a leaf lock, never held across I/O).
#[derive(Default)]
struct Link {
    /// The server's name and run, from its last welcome.
    server: String,
    run: Option<u64>,
    /// Our slot: the server's run it was stored in, and the server's slot.
    slots: HashMap<u32, (u64, u32)>,
    next: u32,
    /// Server slots freed here but not yet there, with the run they are of.
    owed: Vec<(u64, u32)>,
    /// The last failure to reach the server.
    failed_at: Option<Instant>,
}

/// A request that failed.
enum Fail {
    /// Nothing was sent: the server was not reached (connection or hello).
    NotSent(PagingError),
    /// Sent, and the answer is missing, malformed or of the wrong kind: the connection is out
    /// of step and dropped; the request's outcome is unknown.
    Lost(PagingError),
    /// The server refused (or the request does not belong on this connection); the
    /// connection is in step.
    Refused(PagingError),
}

impl Fail {
    fn error(self) -> PagingError {
        match self {
            Fail::NotSent(e) | Fail::Lost(e) | Fail::Refused(e) => e,
        }
    }
}

/// A connection and the server run its welcome named.
struct Pooled {
    s: Stream,
    run: u64,
}

/// A memory server, as this site's paging partition. Connections are pooled (taken and put
/// back, never held across I/O under a lock); each request waits at most the timeout.
pub struct MemoryClient {
    address: String,
    me: String,
    incarnation: u64,
    transport: Transport,
    timeout: Duration,
    idle: Mutex<Vec<Pooled>>,
    link: Mutex<Link>,
    /// Wakes the `memory-free` thread (with `link`).
    owed_ready: Condvar,
    stored: AtomicU64,
    loaded: AtomicU64,
    failures: AtomicU64,
}

impl MemoryClient {
    /// The memory server at `address`, reached by `transport` as site `me`, each request
    /// waiting at most `timeout`. Its slots from an earlier run of this site are freed at the
    /// first connection (a new incarnation).
    pub fn new(address: &str, me: &str, transport: Transport, timeout: Duration) -> MemoryClient {
        MemoryClient {
            address: address.to_owned(),
            me: me.to_owned(),
            incarnation: RandomState::new().build_hasher().finish(),
            transport,
            timeout,
            idle: Mutex::new(Vec::new()),
            link: Mutex::new(Link::default()),
            owed_ready: Condvar::new(),
            stored: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> PagingError {
        self.failures.fetch_add(1, Ordering::Relaxed);
        PagingError::Server {
            server: self.address.clone(),
            message: message.to_string(),
        }
    }

    /// Starts the `memory-free` thread, which sends the owed frees in batches while the
    /// client lives.
    pub fn start_freeing(self: &Arc<Self>) -> std::io::Result<()> {
        let weak: Weak<MemoryClient> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("memory-free".into())
            .spawn(move || loop {
                let Some(c) = weak.upgrade() else { return };
                c.flush_owed();
                drop(c);
            })?;
        Ok(())
    }

    /// Waits until frees are owed (at most [`FLUSH_EVERY`]), then sends those of the
    /// server's current run. Not sent (the server not reached): they stay owed, and the thread
    /// waits a full period before trying again. Sent without an answer: they are dropped.
    fn flush_owed(&self) {
        let batch: Vec<(u64, u32)> = {
            let l = lock(&self.link);
            let (mut l, _) = self
                .owed_ready
                .wait_timeout_while(l, FLUSH_EVERY, |l| l.owed.len() < FLUSH_AT)
                .unwrap_or_else(|e| e.into_inner());
            let run = l.run;
            l.owed.retain(|(r, _)| Some(*r) == run);
            let n = l.owed.len().min(MAX_RUN_PAGES as usize);
            l.owed.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        if self.recently_failed() {
            lock(&self.link).owed.extend(batch);
            std::thread::sleep(FLUSH_EVERY);
            return;
        }
        let sent = self.with_conn(false, |s, run| {
            // Slots of another run than this connection's are moot: that run is over.
            let slots: Vec<u32> = batch
                .iter()
                .filter(|(r, _)| *r == run)
                .map(|(_, n)| *n)
                .collect();
            if slots.is_empty() {
                return Ok(());
            }
            self.exchange(s, &Req::PageFree(slots), |r| matches!(r, Resp::Ok))
                .map(|_| ())
        });
        match sent {
            Ok(()) => {}
            Err(Fail::NotSent(_)) => {
                lock(&self.link).owed.extend(batch);
                std::thread::sleep(FLUSH_EVERY);
            }
            Err(Fail::Lost(e)) => {
                warn!(
                    slots = batch.len(),
                    "frees sent without an answer are not sent again (the slots stay held there until this site's next run): {e}"
                );
            }
            Err(Fail::Refused(e)) => warn!("frees refused by the memory server: {e}"),
        }
    }

    /// Connects (and says hello), so that a server that is not there is found at start.
    pub fn check(&self) -> Result<(), PagingError> {
        let c = self.connect()?;
        lock(&self.idle).push(c);
        Ok(())
    }

    fn connect(&self) -> Result<Pooled, PagingError> {
        let r = self.try_connect();
        if let Err(e) = &r {
            self.mark_down(e);
        }
        r
    }

    /// Notes a failure to reach the server, saying so when it was reached before.
    fn mark_down(&self, e: &PagingError) {
        let was_up = lock(&self.link).failed_at.replace(Instant::now()).is_none();
        if was_up {
            warn!("{e}: until it answers, evictions keep their pages resident and faults on the pages it holds raise SIGBUS");
        }
    }

    fn try_connect(&self) -> Result<Pooled, PagingError> {
        let not_reached = |e: &dyn std::fmt::Display| {
            self.error(format_args!(
                "not reached ({e}); is `pager memory-server --listen {}` running?",
                self.address
            ))
        };
        let mut s = self
            .transport
            .connect(&self.address, self.timeout)
            .map_err(|e| not_reached(&e))?;
        s.set_read_timeout(Some(self.timeout))
            .map_err(|e| not_reached(&e))?;
        let hello = Req::MemHello {
            site: self.me.clone(),
            incarnation: self.incarnation,
        };
        let welcome = self
            .exchange(&mut s, &hello, |r| matches!(r, Resp::Welcome { .. }))
            .map_err(Fail::error)?;
        let Resp::Welcome {
            server,
            incarnation: run,
        } = welcome
        else {
            return Err(self.error("answered a hello with something else"));
        };
        let mut l = lock(&self.link);
        if l.run.is_some_and(|r| r != run) {
            let lost = l.slots.len();
            warn!(
                server = %self.address,
                lost, "the memory server restarted: the pages it held are lost (a fault on one raises SIGBUS)"
            );
        }
        l.run = Some(run);
        l.server = server;
        l.failed_at = None;
        Ok(Pooled { s, run })
    }

    /// Sends `req` and reads its answer, which must be of the kind `want` accepts (or a
    /// refusal): anything else leaves the connection out of step.
    fn exchange(&self, s: &mut Stream, req: &Req, want: fn(&Resp) -> bool) -> Result<Resp, Fail> {
        let lost = |e: &dyn std::fmt::Display| Fail::Lost(self.error(e));
        wire::send(s, &req.encode()).map_err(|e| lost(&format_args!("not reached ({e})")))?;
        let payload = wire::recv(s).map_err(|e| lost(&format_args!("no answer ({e})")))?;
        match Resp::decode(&payload) {
            Ok(Resp::Err(code, m)) => Err(Fail::Refused(
                self.error(format_args!("refused ({code:?}): {m}")),
            )),
            Ok(r) if want(&r) => Ok(r),
            Ok(r) => Err(lost(&format_args!(
                "answered {r:?}, which does not answer the request"
            ))),
            Err(e) => Err(lost(&format_args!("an answer that does not decode: {e}"))),
        }
    }

    /// Runs `f` on a pooled connection, or a new one, with the server run it belongs to. A
    /// stale pooled connection is replaced once when `retry` (for a request that may run
    /// twice: a load). A connection that answered, even with a refusal, goes back to the pool.
    fn with_conn<T>(
        &self,
        retry: bool,
        f: impl Fn(&mut Stream, u64) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        let pooled = lock(&self.idle).pop();
        let from_pool = pooled.is_some();
        let mut c = match pooled {
            Some(c) => c,
            None => self.connect().map_err(Fail::NotSent)?,
        };
        let mut r = f(&mut c.s, c.run);
        if from_pool && retry && matches!(r, Err(Fail::Lost(_))) {
            c = self.connect().map_err(Fail::NotSent)?;
            r = f(&mut c.s, c.run);
        }
        match r {
            Err(Fail::Lost(e)) => {
                self.mark_down(&e);
                Err(Fail::Lost(e))
            }
            r => {
                lock(&self.link).failed_at = None;
                lock(&self.idle).push(c);
                r
            }
        }
    }

    fn recently_failed(&self) -> bool {
        lock(&self.link)
            .failed_at
            .is_some_and(|t| t.elapsed() < RETRY_AFTER)
    }

    /// The server's run and slot for `slot`, if it is of the server's current run.
    fn server_slot(&self, slot: Slot) -> Result<(u64, u32), PagingError> {
        let l = lock(&self.link);
        match l.slots.get(&slot.0) {
            Some((run, n)) if Some(*run) == l.run => Ok((*run, *n)),
            Some(_) => Err(self.lost_page(slot)),
            None => Err(PagingError::NotInUse(slot.0)),
        }
    }

    fn lost_page(&self, slot: Slot) -> PagingError {
        self.error(format_args!(
            "the page of slot {} was lost when the memory server restarted",
            slot.0
        ))
    }

    /// The figures.
    pub fn figures(&self) -> MemoryFigures {
        let l = lock(&self.link);
        MemoryFigures {
            address: self.address.clone(),
            server: l.server.clone(),
            in_use: l.slots.len() as u32,
            stored: self.stored.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

impl PagingServer for MemoryClient {
    fn store(&self, page: &[u8]) -> Result<Slot, PagingError> {
        if self.recently_failed() {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(PagingError::Down(self.address.clone()));
        }
        let req = Req::PageOut(page.to_vec());
        let (run, n) = self
            .with_conn(false, |s, run| {
                match self.exchange(s, &req, |r| matches!(r, Resp::Slot(_)))? {
                    Resp::Slot(n) => Ok((run, n)),
                    _ => Err(Fail::Lost(self.error("not a slot"))),
                }
            })
            .map_err(Fail::error)?;
        self.stored.fetch_add(1, Ordering::Relaxed);
        let mut l = lock(&self.link);
        let mut ours = l.next;
        while l.slots.contains_key(&ours) {
            ours = ours.wrapping_add(1);
        }
        l.next = ours.wrapping_add(1);
        l.slots.insert(ours, (run, n));
        Ok(Slot(ours))
    }

    fn load(&self, slot: Slot, buf: &mut [u8]) -> Result<(), PagingError> {
        let (run, n) = self.server_slot(slot)?;
        let page = self
            .with_conn(true, |s, conn_run| {
                if conn_run != run {
                    // The server restarted since the page went there: it is gone.
                    return Err(Fail::Refused(self.lost_page(slot)));
                }
                match self.exchange(
                    s,
                    &Req::PageIn(n),
                    |r| matches!(r, Resp::Pages(p) if p.len() == PAGE_SIZE),
                )? {
                    Resp::Pages(p) => Ok(p),
                    _ => Err(Fail::Lost(self.error("not a page"))),
                }
            })
            .map_err(Fail::error)?;
        if buf.len() != PAGE_SIZE {
            return Err(PagingError::BadLength(buf.len()));
        }
        buf.copy_from_slice(&page);
        self.loaded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn free(&self, slot: Slot) -> Result<(), PagingError> {
        // The slot is this site's no more at once; the server is told by the `memory-free`
        // thread.
        let mut l = lock(&self.link);
        match l.slots.remove(&slot.0) {
            Some((run, n)) if Some(run) == l.run => l.owed.push((run, n)),
            Some(_) => return Ok(()), // lost with the server's last run
            None => return Err(PagingError::NotInUse(slot.0)),
        }
        if l.owed.len() >= FLUSH_AT {
            self.owed_ready.notify_one();
        }
        Ok(())
    }

    fn in_use(&self) -> u32 {
        lock(&self.link).slots.len() as u32
    }

    fn address(&self) -> String {
        self.address.clone()
    }
}
