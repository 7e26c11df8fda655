//! The thin raw layer over userfaultfd: every `unsafe` system call of the project's fault path is
//! here, each behind a safe function.
//!
//! The `userfaultfd` crate (0.9) cannot negotiate `MINOR_SHMEM` or `WP_HUGETLBFS_SHMEM`, which
//! write-protect and minor faults on shared memory (our clusters are memfds) need, and lacks
//! `UFFDIO_CONTINUE_MODE_WP`, `UFFDIO_COPY_MODE_WP` and `UFFDIO_POISON`. So this module creates the
//! userfaultfd and negotiates the API itself, then hands the fd to the crate's [`Uffd`] for
//! registration and event reading, and provides the resolution ioctls the crate lacks. Values
//! are the kernel's uapi (`include/uapi/linux/userfaultfd.h`), not Debian's older header.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use userfaultfd::Uffd;

/// Feature bits of `UFFDIO_API`.
pub mod feature {
    /// Report write-protect faults.
    pub const PAGEFAULT_FLAG_WP: u64 = 1 << 0;
    /// MISSING faults on shared memory.
    pub const MISSING_SHMEM: u64 = 1 << 5;
    /// Report the faulting thread's id.
    pub const THREAD_ID: u64 = 1 << 8;
    /// MINOR faults on shared memory (page cache present, PTE absent).
    pub const MINOR_SHMEM: u64 = 1 << 10;
    /// Write protection on hugetlbfs and shared memory.
    pub const WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
    /// `UFFDIO_POISON`.
    pub const POISON: u64 = 1 << 14;
    /// The kernel resolves write-protect faults itself; written pages are found with
    /// `PAGEMAP_SCAN` ([`crate::pagemap`]).
    pub const WP_ASYNC: u64 = 1 << 15;
    /// What the pager's design needs (`docs/uffd-facts.md`, "The design that works across processes").
    pub const CLUSTER: u64 =
        PAGEFAULT_FLAG_WP | MISSING_SHMEM | MINOR_SHMEM | WP_HUGETLBFS_SHMEM | POISON | THREAD_ID;
}

/// Register modes.
pub mod mode {
    /// Faults on pages absent from the page cache.
    pub const MISSING: u64 = 1 << 0;
    /// Write-protect faults.
    pub const WP: u64 = 1 << 1;
    /// Faults on pages in the page cache but not mapped.
    pub const MINOR: u64 = 1 << 2;
}

const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const COPY_MODE_WP: u64 = 1 << 1;
const CONTINUE_MODE_WP: u64 = 1 << 1;
const CONTINUE_MODE_DONTWAKE: u64 = 1 << 0;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
pub(crate) struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct UffdioContinue {
    range: UffdioRange,
    mode: u64,
    mapped: i64,
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct UffdioPoison {
    range: UffdioRange,
    mode: u64,
    updated: i64,
}

mod ioctl {
    use super::*;
    nix::ioctl_readwrite!(api, UFFD_API, 0x3F, UffdioApi);
    nix::ioctl_readwrite!(register, UFFD_API, 0x00, UffdioRegister);
    nix::ioctl_read!(wake, UFFD_API, 0x02, UffdioRange);
    nix::ioctl_readwrite!(copy, UFFD_API, 0x03, UffdioCopy);
    nix::ioctl_readwrite!(zeropage, UFFD_API, 0x04, UffdioZeropage);
    nix::ioctl_readwrite!(writeprotect, UFFD_API, 0x06, UffdioWriteprotect);
    nix::ioctl_readwrite!(r#continue, UFFD_API, 0x07, UffdioContinue);
    nix::ioctl_readwrite!(poison, UFFD_API, 0x08, UffdioPoison);
}

/// A page-aligned address range in some process's address space (the uffd's owner's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// Start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl From<Range> for UffdioRange {
    fn from(r: Range) -> Self {
        UffdioRange {
            start: r.start,
            len: r.len,
        }
    }
}

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Creates a non-blocking, close-on-exec userfaultfd and negotiates `features` (all must be
/// offered). `user_mode_only` traps only faults from user mode, which unprivileged processes
/// need when `vm.unprivileged_userfaultfd` is 0.
pub fn open(features: u64, user_mode_only: bool) -> io::Result<Uffd> {
    let mut flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    if user_mode_only {
        flags |= UFFD_USER_MODE_ONLY;
    }
    // SAFETY: userfaultfd(2) takes one int of flags and touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `fd` is a userfaultfd and `api` is a valid, exclusively borrowed uffdio_api.
    unsafe { ioctl::api(fd.as_raw_fd(), &mut api) }.map_err(errno)?;
    if api.features & features != features {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "kernel lacks userfaultfd features {:#x}",
                features & !api.features
            ),
        ));
    }
    // SAFETY: ownership of the negotiated fd moves into the crate's Uffd, which closes it.
    Ok(unsafe { Uffd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) })
}

/// Registers `range` with `modes` (see [`mode`]); returns the ioctls allowed on it.
pub fn register(uffd: &Uffd, range: Range, modes: u64) -> io::Result<u64> {
    let mut reg = UffdioRegister {
        range: range.into(),
        mode: modes,
        ioctls: 0,
    };
    // SAFETY: `reg` is a valid uffdio_register; the kernel checks that the range is mapped in the
    // uffd owner's address space and returns EINVAL otherwise.
    unsafe { ioctl::register(uffd.as_raw_fd(), &mut reg) }.map_err(errno)?;
    Ok(reg.ioctls)
}

/// Maps pages already in the page cache at `range` and wakes the waiters, write-protected if
/// `wp`. Returns bytes mapped. `EEXIST` (already mapped) counts as success: the waiter is woken.
pub fn continue_range(uffd: &Uffd, range: Range, wp: bool) -> io::Result<u64> {
    let mut c = UffdioContinue {
        range: range.into(),
        mode: if wp { CONTINUE_MODE_WP } else { 0 },
        mapped: 0,
    };
    // SAFETY: `c` is a valid uffdio_continue; the range lives in the uffd owner's address space
    // (the kernel validates it), not in ours, so no memory of this process is touched.
    match unsafe { ioctl::r#continue(uffd.as_raw_fd(), &mut c) } {
        Ok(_) => Ok(c.mapped.max(0) as u64),
        Err(nix::Error::EEXIST) => wake(uffd, range).map(|()| range.len),
        Err(e) => Err(errno(e)),
    }
}

/// Maps pages already in the page cache at `range` without waking anyone
/// (`UFFDIO_CONTINUE_MODE_DONTWAKE`): the neighbours of a fault, mapped after the faulting page
/// was. Stops at the first page already mapped (no error: there is nobody to wake). Returns
/// bytes mapped.
pub fn continue_quiet(uffd: &Uffd, range: Range, wp: bool) -> io::Result<u64> {
    let mut c = UffdioContinue {
        range: range.into(),
        mode: CONTINUE_MODE_DONTWAKE | if wp { CONTINUE_MODE_WP } else { 0 },
        mapped: 0,
    };
    // SAFETY: `c` is a valid uffdio_continue; the range lives in the uffd owner's address space
    // (the kernel validates it), not in ours, so no memory of this process is touched.
    match unsafe { ioctl::r#continue(uffd.as_raw_fd(), &mut c) } {
        Ok(_) => Ok(range.len),
        Err(nix::Error::EAGAIN) => Ok(c.mapped.max(0) as u64),
        Err(nix::Error::EEXIST) => Ok(0),
        Err(e) => Err(errno(e)),
    }
}

/// Maps every page of `range` that is in the page cache and not yet mapped, write-protected if
/// `wp`, and wakes the waiters on the range. Unlike [`continue_range`], a page already mapped
/// does not end the run: the kernel stops there (`EAGAIN` after a partial run, `EEXIST` at the
/// first page), and the rest of the range is asked for again past it. Returns bytes newly
/// mapped.
pub fn continue_all(uffd: &Uffd, range: Range, wp: bool) -> io::Result<u64> {
    let page = crate::PAGE_SIZE as u64;
    let end = range.start + range.len;
    let mut at = range.start;
    let mut mapped = 0;
    while at < end {
        let mut c = UffdioContinue {
            range: Range {
                start: at,
                len: end - at,
            }
            .into(),
            mode: if wp { CONTINUE_MODE_WP } else { 0 },
            mapped: 0,
        };
        // SAFETY: `c` is a valid uffdio_continue; the range lives in the uffd owner's address
        // space (the kernel validates it), not in ours, so no memory of this process is touched.
        match unsafe { ioctl::r#continue(uffd.as_raw_fd(), &mut c) } {
            Ok(_) => return Ok(mapped + (end - at)),
            Err(nix::Error::EAGAIN) if c.mapped > 0 => {
                // Mapped up to a page that is present already: skip it.
                mapped += c.mapped as u64;
                at += c.mapped as u64 + page;
            }
            Err(nix::Error::EEXIST) | Err(nix::Error::EAGAIN) => at += page,
            Err(e) => {
                let _ = wake(uffd, range);
                return Err(errno(e));
            }
        }
    }
    wake(uffd, range)?;
    Ok(mapped)
}

/// Copies `src` (in this process) to `dst` in the uffd owner's space, allocating the pages, and
/// wakes the waiters; write-protected if `wp`. Returns bytes copied; `EEXIST` counts as success.
pub fn copy(uffd: &Uffd, dst: u64, src: &[u8], wp: bool) -> io::Result<u64> {
    let mut c = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode: if wp { COPY_MODE_WP } else { 0 },
        copy: 0,
    };
    // SAFETY: `src` is a live slice of `len` bytes that the kernel only reads during the call;
    // `dst` is validated by the kernel against the uffd owner's registered ranges.
    match unsafe { ioctl::copy(uffd.as_raw_fd(), &mut c) } {
        Ok(_) => Ok(c.copy.max(0) as u64),
        Err(nix::Error::EEXIST) => {
            let range = Range {
                start: dst,
                len: src.len() as u64,
            };
            wake(uffd, range).map(|()| range.len)
        }
        Err(e) => Err(errno(e)),
    }
}

/// Maps zero pages at `range` and wakes the waiters (missing faults of a new cluster).
pub fn zeropage(uffd: &Uffd, range: Range) -> io::Result<()> {
    let mut z = UffdioZeropage {
        range: range.into(),
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: `z` is a valid uffdio_zeropage; the range is checked by the kernel.
    match unsafe { ioctl::zeropage(uffd.as_raw_fd(), &mut z) } {
        Ok(_) | Err(nix::Error::EEXIST) => Ok(()),
        Err(e) => Err(errno(e)),
    }
}

/// Write-protects `range` (`protect`), or removes the protection and wakes the waiters.
pub fn writeprotect(uffd: &Uffd, range: Range, protect: bool) -> io::Result<()> {
    let mut w = UffdioWriteprotect {
        range: range.into(),
        mode: if protect { WRITEPROTECT_MODE_WP } else { 0 },
    };
    // SAFETY: `w` is a valid uffdio_writeprotect; the range is checked by the kernel.
    unsafe { ioctl::writeprotect(uffd.as_raw_fd(), &mut w) }
        .map(drop)
        .map_err(errno)
}

/// Makes the next access to `range` raise SIGBUS (the Mach `data_error`), waking the waiters.
///
/// A page whose entry holds a write-protect marker (a page the pager evicted while it was
/// write-protected) cannot be poisoned as it is: the marker is cleared first, then the page is
/// poisoned. Fails with `EEXIST` if a page is mapped (no fault can be pending on it; the caller
/// wakes the waiter, whose retry then succeeds).
pub fn poison(uffd: &Uffd, range: Range) -> io::Result<()> {
    let attempt = || {
        let mut p = UffdioPoison {
            range: range.into(),
            mode: 0,
            updated: 0,
        };
        // SAFETY: `p` is a valid uffdio_poison; the range is checked by the kernel.
        unsafe { ioctl::poison(uffd.as_raw_fd(), &mut p) }
    };
    match attempt() {
        Ok(_) => Ok(()),
        Err(nix::Error::EEXIST) => {
            let mut w = UffdioWriteprotect {
                range: range.into(),
                mode: WRITEPROTECT_MODE_DONTWAKE,
            };
            // SAFETY: `w` is a valid uffdio_writeprotect; the range is checked by the kernel.
            // Removing the protection turns a marker-only entry back into an empty one.
            unsafe { ioctl::writeprotect(uffd.as_raw_fd(), &mut w) }.map_err(errno)?;
            attempt().map(drop).map_err(errno)
        }
        Err(e) => Err(errno(e)),
    }
}

/// Wakes the threads waiting on faults in `range` (after another process resolved them).
pub fn wake(uffd: &Uffd, range: Range) -> io::Result<()> {
    let mut r = UffdioRange::from(range);
    // SAFETY: `r` is a valid uffdio_range; the kernel only reads it.
    unsafe { ioctl::wake(uffd.as_raw_fd(), &mut r) }
        .map(drop)
        .map_err(errno)
}

/// Adopts a userfaultfd received from another process (the pager gets each client's). Refuses
/// any other kind of descriptor, and makes it non-blocking (the flag is on the shared open file
/// description; the client never reads its uffd while the pager serves it).
pub fn adopt(fd: OwnedFd) -> io::Result<Uffd> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    if link.as_os_str() != "anon_inode:[userfaultfd]" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a userfaultfd: {}", link.display()),
        ));
    }
    let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).map_err(errno)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(errno)?;
    // SAFETY: `fd` is an owned userfaultfd (checked above); its ownership moves into the Uffd,
    // which closes it once.
    Ok(unsafe { Uffd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) })
}

/// Poisons every page of `range` that is not mapped, skipping the mapped ones (`EEXIST` stops a
/// poison at the first mapped page), and wakes the waiters. What a client does to its own
/// mappings when the pager is gone: the next fault on them raises SIGBUS, never a zero page.
pub fn poison_unmapped(uffd: &Uffd, range: Range) {
    let page = crate::PAGE_SIZE as u64;
    let end = range.start + range.len;
    let mut at = range.start;
    while at < end {
        let mut p = UffdioPoison {
            range: UffdioRange {
                start: at,
                len: end - at,
            },
            mode: 0,
            updated: 0,
        };
        // SAFETY: `p` is a valid uffdio_poison; the range is checked by the kernel.
        let r = unsafe { ioctl::poison(uffd.as_raw_fd(), &mut p) };
        let done = (p.updated.max(0) as u64) / page * page;
        match r {
            Ok(_) => return,
            // Stopped at a mapped page (EEXIST) or interrupted (EAGAIN): skip what was done and,
            // for EEXIST, the mapped page.
            Err(nix::Error::EEXIST) => at += done + page,
            Err(nix::Error::EAGAIN) => at += done.max(page),
            Err(_) => return,
        }
    }
}
