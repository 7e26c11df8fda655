//! Mapping a cluster's memfd into this process, and the few calls on such a mapping.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::PAGE_SIZE;

/// A shared mapping of `npages` pages of a memfd, owned: [`unmap`] releases it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Its address.
    pub addr: usize,
    /// Its length in bytes.
    pub len: usize,
}

/// Maps `npages` pages of `fd` from page `first_page`: shared and writable if `writable`;
/// otherwise private and read-only. The read-only case gets a read-only descriptor from the
/// pager, and a private mapping is the one such a descriptor allows userfaultfd to register
/// (registration needs a mapping that may become writable). It still shows the shared pages as
/// others change them, and if the process makes it writable, its writes go to private copies:
/// the cluster never sees them. The mapping is marked `MADV_DONTFORK`: a child process would
/// inherit it without the parent's userfaultfd registration.
pub fn map_shared(
    fd: BorrowedFd<'_>,
    first_page: u64,
    npages: u64,
    writable: bool,
) -> io::Result<Mapping> {
    let len = usize::try_from(npages)
        .ok()
        .and_then(|n| n.checked_mul(PAGE_SIZE))
        .filter(|&l| l > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad mapping length"))?;
    let offset = first_page
        .checked_mul(PAGE_SIZE as u64)
        .and_then(|o| libc::off_t::try_from(o).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad mapping offset"))?;
    let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
    let share = if writable {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    // SAFETY: a new mapping at an address the kernel chooses: no existing memory of this process
    // is affected. `fd` is a live descriptor for the call's duration.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            share,
            fd.as_raw_fd(),
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let m = Mapping {
        addr: p as usize,
        len,
    };
    // SAFETY: `m` is the mapping just created, which nothing else uses yet.
    if unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) } != 0 {
        let e = io::Error::last_os_error();
        unmap(m);
        return Err(e);
    }
    Ok(m)
}

/// Releases a mapping made by [`map_shared`]. The caller guarantees that no reference into it
/// is used afterwards (the C and Rust APIs hand out raw addresses and document this).
pub fn unmap(m: Mapping) {
    // SAFETY: `m` describes a mapping made by `map_shared` and not yet unmapped (the shim removes
    // it from its table before calling this); nothing of Rust's own lives in it.
    unsafe { libc::munmap(m.addr as *mut libc::c_void, m.len) };
}

/// Drops this process's page-table entry for one page of a shared mapping. The data stays in
/// the memfd; the next access faults again.
pub fn drop_pte(addr: usize) -> io::Result<()> {
    let page = addr & !(PAGE_SIZE - 1);
    // SAFETY: MADV_DONTNEED on a MAP_SHARED file mapping only discards page-table entries; the
    // contents stay in the file, so no memory is lost or invalidated for Rust.
    if unsafe { libc::madvise(page as *mut libc::c_void, PAGE_SIZE, libc::MADV_DONTNEED) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `SIGBUS` to thread `tid` of this process: how a fault that can no longer be served
/// (the pager is gone) fails when the page cannot be poisoned.
pub fn sigbus_thread(tid: u32) -> io::Result<()> {
    // SAFETY: tgkill(2) takes plain integers and touches no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            tid as libc::pid_t,
            libc::SIGBUS,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes one page of a mapping writable (`mprotect`). Only the tests use it, to show that a
/// client that forces its read-only mapping writable changes nothing in the cluster.
pub fn force_writable(addr: usize) -> io::Result<()> {
    let page = addr & !(PAGE_SIZE - 1);
    // SAFETY: changes the protection of a page of a mapping this process made; no Rust object
    // lives there, and making it writable invalidates no reference.
    if unsafe {
        libc::mprotect(
            page as *mut libc::c_void,
            PAGE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
