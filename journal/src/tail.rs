//! The log's tail kept in memory for its readers (replication): the operations just written,
//! so that a backup's link sends them without reading them back from a log file that was
//! written by direct I/O (which would be a read from the disk). Bounded in bytes; the oldest
//! go first. Only a journal that was asked to ([`crate::Journal::keep_tail`]) keeps one. An
//! LSN is never reused while a journal is open (a failed write is not kept; a failed sync stops
//! the journal), so what is kept under an LSN is what the log holds there.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::reader::LoggedOp;
use crate::Lsn;

/// The newest operations written, oldest first.
#[derive(Debug)]
pub(crate) struct TailCache {
    max_bytes: usize,
    bytes: usize,
    ops: VecDeque<Arc<LoggedOp>>,
}

fn size(op: &LoggedOp) -> usize {
    op.runs.iter().map(|(_, p)| p.len()).sum()
}

impl TailCache {
    pub(crate) fn new(max_bytes: usize) -> TailCache {
        TailCache {
            max_bytes,
            bytes: 0,
            ops: VecDeque::new(),
        }
    }

    /// Keeps `op` (written after every operation kept), dropping the oldest beyond the bound.
    /// An operation larger than the bound is not kept.
    pub(crate) fn push(&mut self, op: LoggedOp) {
        let n = size(&op);
        if n > self.max_bytes {
            self.ops.clear();
            self.bytes = 0;
            return;
        }
        while self.bytes + n > self.max_bytes {
            match self.ops.pop_front() {
                Some(old) => self.bytes -= size(&old),
                None => break,
            }
        }
        self.bytes += n;
        self.ops.push_back(Arc::new(op));
    }

    /// The operation that starts at `lsn`, if it is kept.
    pub(crate) fn get(&self, lsn: Lsn) -> Option<Arc<LoggedOp>> {
        let i = self.ops.partition_point(|op| op.lsn < lsn);
        self.ops.get(i).filter(|op| op.lsn == lsn).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(file: u64, offset: u64, pages: usize) -> LoggedOp {
        LoggedOp {
            lsn: Lsn::new(file, offset),
            end: Lsn::new(file, offset + 4096 * (1 + pages as u64)),
            cluster: 1,
            runs: vec![(0, vec![7; 4096 * pages])],
            seq: 0,
            group_open: false,
        }
    }

    #[test]
    fn the_tail_keeps_the_newest_operations_within_its_bound() {
        let mut t = TailCache::new(3 * 4096);
        t.push(op(1, 4096, 1));
        t.push(op(1, 12288, 2));
        assert!(t.get(Lsn::new(1, 4096)).is_some());
        assert!(t.get(Lsn::new(1, 12288)).is_some());
        assert!(
            t.get(Lsn::new(1, 8192)).is_none(),
            "not an operation's start"
        );
        t.push(op(2, 4096, 1));
        assert!(t.get(Lsn::new(1, 4096)).is_none(), "the oldest went first");
        assert!(t.get(Lsn::new(1, 12288)).is_some());
        assert!(t.get(Lsn::new(2, 4096)).is_some());
        t.push(op(2, 12288, 4));
        assert!(t.get(Lsn::new(2, 12288)).is_none(), "larger than the bound");
        assert!(t.get(Lsn::new(2, 4096)).is_none());
    }
}
