//! The raw userfaultfd floor: a minimal resolver thread that answers each fault with one page of
//! constants (`UFFDIO_COPY`) or, for a write to a write-protected page, clears the protection.
//! No state machine, no locks, no I/O: what a round trip through the kernel costs by itself.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clu_sys::mem::Mapping;
use clu_sys::uffd::{self, feature, mode, Range};
use clu_sys::PAGE_SIZE;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use userfaultfd::{Event, FaultKind};

/// Mean microseconds per page of: a first read of each page (missing fault, answered with a
/// copy) and a first write to each page once it is write-protected (answered by unprotecting).
pub fn measure(pages: u64) -> Result<(f64, f64), String> {
    let e = |what: &str, err: std::io::Error| format!("uffd floor: {what}: {err}");
    let memfd: std::fs::File = nix::sys::memfd::memfd_create(
        c"clu-bench-floor",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|err| format!("memfd: {err}"))?
    .into();
    memfd
        .set_len(pages * PAGE_SIZE as u64)
        .map_err(|err| e("size", err))?;
    let m = Mapping::cluster(memfd.as_fd(), 0, pages, true).map_err(|err| e("mmap", err))?;
    let u = Arc::new(uffd::open(feature::CLUSTER, false).map_err(|err| e("open", err))?);
    let range = Range {
        start: m.addr() as u64,
        len: m.len() as u64,
    };
    uffd::register(&u, range, mode::MISSING | mode::WP).map_err(|err| e("register", err))?;
    let stop = Arc::new(AtomicBool::new(false));
    let resolver = {
        let (u, stop) = (u.clone(), stop.clone());
        std::thread::spawn(move || {
            let page = vec![0x5au8; PAGE_SIZE];
            while !stop.load(Ordering::Acquire) {
                let mut fds = [PollFd::new(u.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(20u16)).unwrap_or(0) == 0 {
                    continue;
                }
                while let Ok(Some(Event::Pagefault { kind, addr, .. })) = u.read_event() {
                    let at = addr as u64 & !(PAGE_SIZE as u64 - 1);
                    let r = Range {
                        start: at,
                        len: PAGE_SIZE as u64,
                    };
                    let _ = match kind {
                        FaultKind::WriteProtected => uffd::writeprotect(&u, r, false),
                        _ => uffd::copy(&u, at, &page, true).map(drop),
                    };
                }
            }
        })
    };
    let t = Instant::now();
    for p in 0..pages as usize {
        std::hint::black_box(m.read_u8(p * PAGE_SIZE));
    }
    let read = t.elapsed().as_secs_f64() * 1e6 / pages as f64;
    // The copies were write-protected (COPY_MODE_WP): first writes fault.
    let t = Instant::now();
    for p in 0..pages as usize {
        m.write_u8(p * PAGE_SIZE, 1);
    }
    let write = t.elapsed().as_secs_f64() * 1e6 / pages as f64;
    stop.store(true, Ordering::Release);
    let _ = resolver.join();
    drop(m);
    Ok((read, write))
}
