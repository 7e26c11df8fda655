//! The userfaultfd facts the pager's design rests on, checked on this kernel with the raw layer:
//! a memfd mapped shared and registered MISSING|WP|MINOR, a resolver thread filling the memfd with
//! pwrite and answering with CONTINUE (write-protected for reads), write-protect faults on first
//! writes, and eviction by punching the page out of the memfd.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use clu_sys::mem::Mapping;
use clu_sys::uffd::{self, feature, mode, Range};
use nix::fcntl::{fallocate, FallocateFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use userfaultfd::{Event, FaultKind, ReadWrite};

const P: usize = 4096;

fn pattern(page: usize) -> Vec<u8> {
    vec![0x10 + page as u8; P]
}

#[derive(Debug, PartialEq)]
enum Seen {
    Missing(usize, ReadWrite),
    Wp(usize),
    Minor(usize),
}

#[test]
fn faults_on_a_shared_memfd_resolve_as_the_design_expects() {
    let memfd: File =
        nix::sys::memfd::memfd_create(c"uffd-test", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
            .expect("memfd_create")
            .into();
    memfd.set_len(4 * P as u64).unwrap();
    let view = Mapping::file(memfd.as_fd(), 0, 4 * P, true).expect("mmap the memfd");
    let base = view.addr() as u64;
    let u = Arc::new(
        uffd::open(feature::CLUSTER, false).expect("userfaultfd with the cluster features"),
    );
    let ioctls = uffd::register(
        &u,
        Range {
            start: base,
            len: 4 * P as u64,
        },
        mode::MISSING | mode::WP | mode::MINOR,
    )
    .expect("register");
    assert_ne!(
        ioctls & (1 << 0x07),
        0,
        "CONTINUE allowed on the range: {ioctls:#x}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let resolver = {
        let (u, stop, memfd) = (u.clone(), stop.clone(), memfd.try_clone().unwrap());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let mut fds = [PollFd::new(u.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(50u16)).unwrap_or(0) == 0 {
                    continue;
                }
                while let Ok(Some(Event::Pagefault { kind, rw, addr, .. })) = u.read_event() {
                    let page = (addr as u64 - base) as usize / P;
                    let range = Range {
                        start: base + (page * P) as u64,
                        len: P as u64,
                    };
                    match kind {
                        FaultKind::Missing => {
                            memfd
                                .write_all_at(&pattern(page), (page * P) as u64)
                                .unwrap();
                            uffd::continue_range(&u, range, rw == ReadWrite::Read).unwrap();
                            tx.send(Seen::Missing(page, rw)).unwrap();
                        }
                        FaultKind::WriteProtected => {
                            uffd::writeprotect(&u, range, false).unwrap();
                            tx.send(Seen::Wp(page)).unwrap();
                        }
                        FaultKind::Minor => {
                            uffd::continue_range(&u, range, true).unwrap();
                            tx.send(Seen::Minor(page)).unwrap();
                        }
                    }
                }
            }
        })
    };
    let next = || {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("a fault event")
    };

    let read = |page: usize| view.read_u8(page * P + 100);
    let write = |page: usize, v: u8| view.write_u8(page * P + 100, v);

    // A first read: MISSING; filled by pwrite, mapped write-protected.
    assert_eq!(read(0), 0x10);
    assert_eq!(next(), Seen::Missing(0, ReadWrite::Read));
    // The first write to that clean page is a write-protect fault (data_unlock).
    write(0, 0xAB);
    assert_eq!(next(), Seen::Wp(0));
    let mut b = [0u8; 1];
    memfd.read_exact_at(&mut b, 100).unwrap();
    assert_eq!(
        b[0], 0xAB,
        "the pager sees the client's write through the memfd"
    );
    // A first write: MISSING, mapped writable, no write-protect fault after it.
    write(1, 0xCD);
    assert_eq!(next(), Seen::Missing(1, ReadWrite::Write));
    write(1, 0xCE);
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "no fault on a writable page"
    );
    // Eviction: punching the page out of the memfd makes the next access fault again.
    fallocate(
        memfd.as_raw_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        P as i64,
    )
    .unwrap();
    assert_eq!(
        read(0),
        0x10,
        "the evicted page came back from the resolver, not as zeros"
    );
    assert_eq!(next(), Seen::Missing(0, ReadWrite::Read));

    stop.store(true, Ordering::Release);
    resolver.join().unwrap();
}
