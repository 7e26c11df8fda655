//! Where a backup's image stands in a primary's history.

use journal::Lsn;

/// Where a backup's image stands in a primary's history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// The epoch whose primary wrote the operations applied (0: none yet).
    pub epoch: u64,
    /// Every operation of that primary's journal before this LSN is applied (an operation's
    /// `end`, or where a full copy was taken).
    pub lsn: Lsn,
    /// False while a full copy is under way: the image is then unusable.
    pub complete: bool,
}
