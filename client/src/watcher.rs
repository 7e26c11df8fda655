//! The lifeline: a thread per connection that notices when the pager goes away and from then on
//! answers this process's own userfaultfd itself, so that a fault on a cluster page raises
//! SIGBUS instead of hanging for ever or reading a silent zero page.
//!
//! While the pager lives, the thread only waits for the socket's peer to hang up (`POLLRDHUP`;
//! it never reads the socket or the uffd, which belong to the calls and to the pager). Then:
//! 1. it marks the session dead, so the `clu_*` calls return "pager unavailable";
//! 2. it poisons every page of every registered range that this process has not mapped, and
//!    wakes every thread blocked on a fault the dead pager had read but not answered (also on
//!    pages that cannot be poisoned: each faults again and is answered below);
//! 3. it serves the uffd for the rest of the process's life: a missing or minor fault is
//!    poisoned (SIGBUS at the faulting address); a write to a write-protected page, which cannot
//!    be poisoned, gets SIGBUS sent to the faulting thread.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use userfaultfd::{Event, FaultKind, Uffd};

use clu_sys::sync::lock;
use clu_sys::{mem, uffd, uffd::Range, PAGE_SIZE};

/// What the session shares with its lifeline thread.
#[derive(Default)]
pub(crate) struct Lifeline {
    /// Set once the pager is gone.
    pub dead: AtomicBool,
    /// The session's userfaultfd, once created.
    pub uffd: OnceLock<Arc<Uffd>>,
    /// The ranges registered with it and still mapped.
    pub ranges: Mutex<Vec<Range>>,
}

/// Starts the thread watching `sock` (a clone of the session's socket).
pub(crate) fn spawn(sock: UnixStream, line: Arc<Lifeline>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("clu-lifeline".into())
        .spawn(move || watch(sock, line))
        .map(drop)
}

fn watch(sock: UnixStream, line: Arc<Lifeline>) {
    // nix does not name POLLRDHUP; it is a plain poll(2) bit.
    let rdhup = PollFlags::from_bits_retain(libc::POLLRDHUP);
    loop {
        let mut fds = [PollFd::new(sock.as_fd(), rdhup)];
        match poll(&mut fds, PollTimeout::NONE) {
            // Only hang-up, error or POLLRDHUP can be reported (nix's `revents` cannot name
            // POLLRDHUP, so count instead of decoding).
            Ok(n) if n > 0 => break,
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(_) => break,
        }
    }
    line.dead.store(true, Ordering::Release);
    let Some(u) = line.uffd.get().cloned() else {
        return;
    };
    let ranges = lock(&line.ranges).clone();
    for r in ranges {
        uffd::poison_unmapped(&u, r);
        // A thread may be blocked on a page that cannot be poisoned (a write-protect marker
        // left where the pager evicted a page is not an empty entry): wake every waiter of the
        // range. Each retries its access, faults again, and `serve_poison` answers it.
        let _ = uffd::wake(&u, r);
    }
    serve_poison(&u);
}

fn serve_poison(u: &Uffd) {
    loop {
        let mut fds = [PollFd::new(u.as_fd(), PollFlags::POLLIN)];
        if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
            if e != nix::Error::EINTR {
                return;
            }
        }
        while let Ok(Some(ev)) = u.read_event() {
            let Event::Pagefault {
                kind,
                addr,
                thread_id,
                ..
            } = ev
            else {
                continue;
            };
            let page = addr as u64 & !(PAGE_SIZE as u64 - 1);
            let range = Range {
                start: page,
                len: PAGE_SIZE as u64,
            };
            match kind {
                FaultKind::WriteProtected => {
                    let _ = mem::sigbus_thread(thread_id.as_raw() as u32);
                }
                FaultKind::Missing | FaultKind::Minor => {
                    if uffd::poison(u, range).is_err() {
                        let _ = mem::sigbus_thread(thread_id.as_raw() as u32);
                    }
                }
            }
        }
    }
}
