//! Mappings owned by this process: a cluster's memfd (shared with the pager and other clients),
//! a file, or anonymous memory, and the few calls on such a mapping.
//!
//! A [`Mapping`] is released (`munmap`) when dropped. Its bytes may change under this process at
//! any time (other processes and other threads write the same pages, the pager punches them
//! out), so it hands out no Rust references into them: every access is a bounds-checked copy
//! made of relaxed atomic loads and stores, so that two threads of this process touching the
//! same bytes race only as atomics do (other processes are outside Rust's memory model; the
//! kernel keeps their stores and ours coherent). An access to a page nobody serves any more
//! raises SIGBUS, and one to a revoked mapping SIGSEGV: clear failures, not undefined behaviour.
//!
//! [`Mapping::addr`] and raw pointers derived from it are for callers that manage the memory
//! themselves (the C ABI); dereferencing them is their own `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::PAGE_SIZE;

/// An owned mapping of `len` bytes at `addr`; `munmap` when dropped.
#[derive(Debug)]
pub struct Mapping {
    addr: usize,
    len: usize,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

fn pages_len(npages: u64) -> io::Result<usize> {
    usize::try_from(npages)
        .ok()
        .and_then(|n| n.checked_mul(PAGE_SIZE))
        .filter(|&l| l > 0)
        .ok_or_else(|| bad("bad mapping length"))
}

impl Mapping {
    /// Maps `npages` pages of `fd` from page `first_page`: shared and writable if `writable`;
    /// otherwise private and read-only. The read-only case gets a read-only descriptor from the
    /// pager, and a private mapping is the one such a descriptor allows userfaultfd to register
    /// (registration needs a mapping that may become writable). It still shows the shared pages
    /// as others change them, and if the process makes it writable, its writes go to private
    /// copies: the cluster never sees them. The mapping is marked `MADV_DONTFORK`: a child
    /// process would inherit it without the parent's userfaultfd registration.
    pub fn cluster(
        fd: BorrowedFd<'_>,
        first_page: u64,
        npages: u64,
        writable: bool,
    ) -> io::Result<Mapping> {
        let len = pages_len(npages)?;
        let offset = first_page
            .checked_mul(PAGE_SIZE as u64)
            .ok_or_else(|| bad("bad mapping offset"))?;
        let share = if writable {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        let m = Self::map(Some(fd), offset, len, writable, share)?;
        // SAFETY: `m` is the mapping just created, which nothing else uses yet; MADV_DONTFORK
        // changes only what a fork inherits.
        if unsafe { libc::madvise(m.addr as *mut libc::c_void, len, libc::MADV_DONTFORK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(m)
    }

    /// Maps `len` bytes of the file `fd` from byte `offset`, shared (writable if `writable`).
    /// The kernel's own file pager serves it: the benchmarks' reference.
    pub fn file(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        writable: bool,
    ) -> io::Result<Mapping> {
        if len == 0 {
            return Err(bad("bad mapping length"));
        }
        Self::map(Some(fd), offset, len, writable, libc::MAP_SHARED)
    }

    /// Maps `len` bytes of private anonymous memory, read-write (zero-filled on first touch).
    pub fn anonymous(len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(bad("bad mapping length"));
        }
        Self::map(None, 0, len, true, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
    }

    fn map(
        fd: Option<BorrowedFd<'_>>,
        offset: u64,
        len: usize,
        writable: bool,
        flags: libc::c_int,
    ) -> io::Result<Mapping> {
        let offset = libc::off_t::try_from(offset).map_err(|_| bad("bad mapping offset"))?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let fd = fd.map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a new mapping at an address the kernel chooses: no existing memory of this
        // process is affected. `fd` is a live descriptor (or -1 for anonymous memory) for the
        // call's duration.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            addr: p as usize,
            len,
        })
    }

    /// Its address (where the client registered it, what the pager is told).
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a mapping has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of byte `offset` after checking that `offset..offset+n` is inside.
    ///
    /// # Panics
    /// If the range is outside the mapping (a bug in the caller, like an index out of bounds).
    fn at(&self, offset: usize, n: usize) -> *mut u8 {
        assert!(
            offset.checked_add(n).is_some_and(|end| end <= self.len),
            "bytes {offset}..+{n} are outside a mapping of {} bytes",
            self.len
        );
        (self.addr + offset) as *mut u8
    }

    /// Reads byte `offset` (faulting it in if needed).
    pub fn read_u8(&self, offset: usize) -> u8 {
        let p = self.at(offset, 1);
        // SAFETY: `p` is inside this mapping, which lives as long as `self`; a byte needs no
        // alignment; every access this type makes is atomic, so it races with other threads
        // only as atomics may.
        unsafe { AtomicU8::from_ptr(p) }.load(Ordering::Relaxed)
    }

    /// Writes byte `offset`.
    pub fn write_u8(&self, offset: usize, v: u8) {
        let p = self.at(offset, 1);
        // SAFETY: as in `read_u8`; the byte belongs to no Rust object. A read-only mapping
        // raises SIGSEGV here, which is the documented outcome of writing to one.
        unsafe { AtomicU8::from_ptr(p) }.store(v, Ordering::Relaxed)
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`, eight bytes at a time where aligned.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        let p = self.at(offset, buf.len());
        let mut i = 0;
        while i < buf.len() {
            let at = p.wrapping_add(i);
            if at as usize % 8 == 0 && buf.len() - i >= 8 {
                // SAFETY: `at..at+8` is inside the mapping (checked by `at`) and 8-aligned; the
                // access is atomic (see `read_u8`).
                let w = unsafe { AtomicU64::from_ptr(at.cast::<u64>()) }.load(Ordering::Relaxed);
                buf[i..i + 8].copy_from_slice(&w.to_ne_bytes());
                i += 8;
            } else {
                // SAFETY: `at` is inside the mapping; the access is atomic.
                buf[i] = unsafe { AtomicU8::from_ptr(at) }.load(Ordering::Relaxed);
                i += 1;
            }
        }
    }

    /// Copies `data` to `offset`, eight bytes at a time where aligned.
    pub fn write(&self, offset: usize, data: &[u8]) {
        let p = self.at(offset, data.len());
        let mut i = 0;
        while i < data.len() {
            let at = p.wrapping_add(i);
            if at as usize % 8 == 0 && data.len() - i >= 8 {
                let mut w = [0u8; 8];
                w.copy_from_slice(&data[i..i + 8]);
                // SAFETY: `at..at+8` is inside the mapping (checked by `at`) and 8-aligned; no
                // Rust object lives there; the access is atomic.
                unsafe { AtomicU64::from_ptr(at.cast::<u64>()) }
                    .store(u64::from_ne_bytes(w), Ordering::Relaxed);
                i += 8;
            } else {
                // SAFETY: `at` is inside the mapping; the access is atomic.
                unsafe { AtomicU8::from_ptr(at) }.store(data[i], Ordering::Relaxed);
                i += 1;
            }
        }
    }

    /// Revokes the mapping in place: its range becomes inaccessible anonymous memory (an
    /// access raises SIGSEGV), still reserved until the mapping is dropped, so that no other
    /// mapping can take the address while handles to this one live. What the client does at
    /// `clu_Unmap`.
    pub fn revoke(&self) -> io::Result<()> {
        // SAFETY: replaces exactly this mapping's range (MAP_FIXED) with a PROT_NONE anonymous
        // mapping; no Rust object lives in the range, and this type's accesses to it will fault
        // (SIGSEGV), never read freed memory.
        let p = unsafe {
            libc::mmap(
                self.addr as *mut libc::c_void,
                self.len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Drops this process's page-table entry for the page holding byte `offset`. For a shared
    /// mapping the data stays in the file or memfd and the next access faults again.
    pub fn drop_pte(&self, offset: usize) -> io::Result<()> {
        let page = self.at(offset, 1) as usize & !(PAGE_SIZE - 1);
        // SAFETY: the page is inside this mapping; MADV_DONTNEED on it only discards page-table
        // entries (and, for a private mapping, private copies), never memory of a Rust object.
        if unsafe { libc::madvise(page as *mut libc::c_void, PAGE_SIZE, libc::MADV_DONTNEED) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes the page holding byte `offset` writable (`mprotect`). Only the tests use it, to
    /// show that a client that forces its read-only mapping writable changes nothing in the
    /// cluster.
    pub fn force_writable(&self, offset: usize) -> io::Result<()> {
        let page = self.at(offset, 1) as usize & !(PAGE_SIZE - 1);
        // SAFETY: changes the protection of a page of this mapping; no Rust object lives there,
        // and making it writable invalidates no reference.
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

    /// `msync(MS_SYNC)`: writes a shared file mapping's dirty pages to the file and waits.
    pub fn sync(&self) -> io::Result<()> {
        self.sync_range(0, self.len)
    }

    /// `msync(MS_SYNC)` of bytes `at..at+len` (widened to whole pages).
    ///
    /// # Panics
    /// If the range is outside the mapping.
    pub fn sync_range(&self, at: usize, len: usize) -> io::Result<()> {
        let start = self.at(at, len) as usize & !(PAGE_SIZE - 1);
        let end = (self.addr + at + len).next_multiple_of(PAGE_SIZE);
        // SAFETY: the range is inside this mapping (checked by `at`, widened to its pages,
        // which the mapping covers whole); msync reads page state and touches no memory.
        if unsafe { libc::msync(start as *mut libc::c_void, end - start, libc::MS_SYNC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `self` describes a mapping made by `Mapping::map` (possibly revoked in place)
        // and not yet unmapped (only this drop unmaps it); no Rust object lives in it, this type
        // hands out no references into it, and raw pointers derived from `addr` are their
        // holders' own `unsafe` to dereference.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_memory_reads_back_what_was_written_at_any_alignment() {
        let m = Mapping::anonymous(2 * PAGE_SIZE).unwrap();
        assert_eq!(m.read_u8(5), 0);
        let data: Vec<u8> = (0..100u8).collect();
        m.write(PAGE_SIZE - 3, &data);
        let mut back = vec![0u8; 100];
        m.read(PAGE_SIZE - 3, &mut back);
        assert_eq!(back, data);
        m.write_u8(2 * PAGE_SIZE - 1, 7);
        assert_eq!(m.read_u8(2 * PAGE_SIZE - 1), 7);
        m.drop_pte(PAGE_SIZE).unwrap();
        assert_eq!(
            m.read_u8(PAGE_SIZE),
            0,
            "a private page dropped reads as zero again"
        );
    }

    #[test]
    #[should_panic(expected = "outside a mapping")]
    fn an_access_past_the_end_is_refused() {
        let m = Mapping::anonymous(PAGE_SIZE).unwrap();
        m.read_u8(PAGE_SIZE);
    }
}
