//! The fault path's quantities, each its own type: a page number in a cluster, an address in a
//! client process, a connection (one client process).

use std::fmt;

use clu_proto::PAGE_SIZE;

const PAGE: u64 = PAGE_SIZE as u64;

/// A page number within a cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageNo(pub u64);

impl PageNo {
    /// As an index into a table of pages.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The page `n` pages further.
    pub fn plus(self, n: u64) -> PageNo {
        PageNo(self.0 + n)
    }
}

impl fmt::Display for PageNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An address in a client process's address space (never dereferenced by the pager: it names
/// pages for the client's userfaultfd).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserAddr(pub u64);

impl UserAddr {
    /// The start of the page holding this address.
    pub fn page_start(self) -> UserAddr {
        UserAddr(self.0 & !(PAGE - 1))
    }

    /// Whether the address is at a page boundary.
    pub fn is_page_aligned(self) -> bool {
        self.0 % PAGE == 0
    }
}

impl fmt::Display for UserAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A client connection, one per process: how the pager tells its mappers apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
