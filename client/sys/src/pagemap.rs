//! `PAGEMAP_SCAN` on a process's `/proc/PID/pagemap` (Linux 6.7+): which pages of a range were
//! written since they were last write-protected, re-protecting them in the same pass. With
//! `UFFD_FEATURE_WP_ASYNC`, the kernel resolves write-protect faults itself and this scan is how
//! the pager learns which clean pages a client has modified.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `PM_SCAN_WP_MATCHING`: write-protect the pages reported.
const WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail unless the range is registered with async write protection.
const CHECK_WPASYNC: u64 = 1 << 1;
/// `PAGE_IS_WRITTEN`: the page is not write-protected (written since the last protection).
const PAGE_IS_WRITTEN: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

nix::ioctl_readwrite!(pagemap_scan, b'f', 16, PmScanArg);

/// The ranges `[start, end)` of pages in `start..end` that were written since they were last
/// write-protected; they are write-protected again (atomically with the report, page by page).
pub fn take_written(pagemap: BorrowedFd<'_>, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut regions = [PageRegion::default(); 64];
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: WP_MATCHING | CHECK_WPASYNC,
            start: at,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_mask: PAGE_IS_WRITTEN,
            return_mask: PAGE_IS_WRITTEN,
            ..PmScanArg::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `regions`, a live array of
        // `vec_len` page_region structs that the kernel fills during the call; the address range
        // is checked by the kernel against the pagemap's process.
        let n = unsafe { pagemap_scan(pagemap.as_raw_fd(), &mut arg) }
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        for r in &regions[..(n.max(0) as usize).min(regions.len())] {
            out.push((r.start, r.end));
        }
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    Ok(out)
}
