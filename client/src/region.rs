//! A cluster's pages as this process maps them.

use std::sync::Arc;

use clu_sys::mem::Mapping;

use crate::PAGE_SIZE;

/// Pages `first_page..first_page+npages` of a cluster, mapped in this process.
///
/// The memory is shared with other processes and with the pager, so a region hands out no Rust
/// references into it: [`Region::read`], [`Region::write`] and the byte accessors copy, with
/// atomic accesses, after checking bounds. A region is a handle: its clones share one mapping,
/// whose address range stays reserved as long as any handle lives (so access through a region
/// is always memory-safe). `clu_Unmap` revokes it: from then on an access raises SIGSEGV, as
/// after `munmap`. [`Region::as_ptr`] is for callers that manage the memory themselves, as C
/// programs do; that pointer is valid until the cluster is unmapped.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # if std::env::var_os("CLU_DOCTEST").is_none() { return Ok(()); } // run by scripts/test against a scratch pager
/// use client::{api, ClusterKind, PAGE_SIZE};
/// let (id, region) = api::create_map(1, 2, ClusterKind::Protected)?;
/// assert_eq!((region.first_page, region.npages, region.len()), (0, 2, 2 * PAGE_SIZE));
/// region.write(PAGE_SIZE, b"second page");
/// let mut back = [0u8; 11];
/// region.read(PAGE_SIZE, &mut back);
/// assert_eq!(&back, b"second page");
/// region.write_u8(0, 7);
/// assert_eq!(region.read_u8(0), 7);
/// assert_eq!(region.offset_of(PAGE_SIZE as u64), Some(PAGE_SIZE));
/// api::commit(id)?;
/// api::unmap(id)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Region {
    /// The cluster page it starts at.
    pub first_page: u64,
    /// Its length in pages.
    pub npages: u64,
    map: Arc<Mapping>,
}

impl PartialEq for Region {
    fn eq(&self, other: &Region) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
            && (self.first_page, self.npages) == (other.first_page, other.npages)
    }
}

impl Eq for Region {}

impl Region {
    pub(crate) fn new(first_page: u64, npages: u64, map: Mapping) -> Region {
        Region {
            first_page,
            npages,
            map: Arc::new(map),
        }
    }

    /// The address of its first byte in this process.
    pub fn addr(&self) -> usize {
        self.map.addr()
    }

    /// The first byte, for callers that access the memory through raw pointers.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.addr() as *mut u8
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.npages as usize * PAGE_SIZE
    }

    /// Whether the region is empty (never, for a region the pager handed out).
    pub fn is_empty(&self) -> bool {
        self.npages == 0
    }

    /// Where byte `offset` of the cluster is in this region, if it holds it.
    pub fn offset_of(&self, offset: u64) -> Option<usize> {
        let start = self.first_page * PAGE_SIZE as u64;
        let end = start + self.len() as u64;
        (start..end)
            .contains(&offset)
            .then(|| (offset - start) as usize)
    }

    /// The address of byte `offset` of the cluster, if this region holds it.
    pub fn addr_of(&self, offset: u64) -> Option<usize> {
        self.offset_of(offset).map(|o| self.addr() + o)
    }

    /// Byte `at` of the region (faulting its page in if needed).
    ///
    /// # Panics
    /// If `at` is outside the region.
    pub fn read_u8(&self, at: usize) -> u8 {
        self.map.read_u8(at)
    }

    /// Writes byte `at` of the region.
    ///
    /// # Panics
    /// If `at` is outside the region.
    pub fn write_u8(&self, at: usize, v: u8) {
        self.map.write_u8(at, v)
    }

    /// Copies `buf.len()` bytes from byte `at` of the region.
    ///
    /// # Panics
    /// If the range is outside the region.
    pub fn read(&self, at: usize, buf: &mut [u8]) {
        self.map.read(at, buf)
    }

    /// Copies `data` to byte `at` of the region.
    ///
    /// # Panics
    /// If the range is outside the region.
    pub fn write(&self, at: usize, data: &[u8]) {
        self.map.write(at, data)
    }

    /// Forgets this process's mapping of the page holding byte `at` (the data stays in the
    /// cluster); the next access faults again, which benchmarks use to measure the fault path.
    pub fn drop_pte(&self, at: usize) -> std::io::Result<()> {
        self.map.drop_pte(at)
    }

    /// Revokes the mapping (see the type's docs); what `clu_Unmap` does.
    pub(crate) fn revoke(&self) {
        // A failure leaves the pages mapped; the pager no longer serves them either way.
        let _ = self.map.revoke();
    }

    /// Makes the page holding byte `at` writable in this process (`mprotect`). The tests use
    /// it to show that a read-only mapper that forces its mapping writable writes to private
    /// copies the cluster never sees.
    pub fn force_writable(&self, at: usize) -> std::io::Result<()> {
        self.map.force_writable(at)
    }
}
