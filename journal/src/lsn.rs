//! Log sequence numbers.

use std::fmt;

/// A position in the journal: the log file's sequence number and a byte offset in that file.
///
/// The thesis's LSNs "name the journal file and the offset in it" (I6). They are totally ordered:
/// file first, then offset. Offsets are always multiples of [`crate::PAGE_SIZE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn {
    /// Sequence number of the log file (`log-<file>` in the journal directory).
    pub file: u64,
    /// Byte offset in that file.
    pub offset: u64,
}

impl Lsn {
    /// The LSN at `offset` in log file `file`.
    pub const fn new(file: u64, offset: u64) -> Self {
        Lsn { file, offset }
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{:#x}", self.file, self.offset)
    }
}
