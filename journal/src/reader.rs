//! Reading validated operations back from the log, for replication (thesis VII.3.4: a backup
//! that missed operations gets them from the primary's journal).
//!
//! A reader walks the log files from a position, operation by operation, up to `logLSN`. It
//! trusts nothing it reads: every record must be live (its own position, its file's salt, its
//! checksums), exactly as recovery requires. The caller holds a [`crate::Retention`] at or before
//! the position so that the files stay on disk while they are read.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::files;
use crate::format::{decode_file_header, payload_crc, FileId, RecordHeader, RecordKind, PAGE_SIZE};
use crate::inner::Inner;
use crate::{JournalError, Lsn};
use clu_sys::sync::lock;

const PAGE: u64 = PAGE_SIZE as u64;

/// One validated operation read from the log, with its page images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedOp {
    /// LSN of its first record (what [`crate::Journal::commit`] returned).
    pub lsn: Lsn,
    /// LSN just past its last record: where the next operation is looked for.
    pub end: Lsn,
    /// The cluster it writes.
    pub cluster: u32,
    /// Its runs: first page and page images.
    pub runs: Vec<(u64, Vec<u8>)>,
    /// Its ordinal among the operations written since the journal was opened (1 for the
    /// first), when known: 0 for one read back from a log file.
    pub seq: u64,
    /// Its group goes on with the next operation: the operations of an atomic commit of
    /// several clusters ([`crate::Journal::commit_group`]) are only ever kept together, so a
    /// consumer that stores them must store the whole group at once.
    pub group_open: bool,
}

/// Reads operations from a journal's log files; keeps the current file open.
pub struct LogReader {
    pub(crate) inner: Arc<Inner>,
    open: Option<(File, FileId)>,
}

impl LogReader {
    pub(crate) fn new(inner: Arc<Inner>) -> LogReader {
        LogReader { inner, open: None }
    }

    fn file(&mut self, seq: u64) -> Result<(&File, FileId), JournalError> {
        if !matches!(&self.open, Some((_, id)) if id.seq == seq) {
            let path = files::log_path(&self.inner.dir, seq);
            let file = File::open(&path).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    JournalError::AlreadyDeleted {
                        from: Lsn::new(seq, PAGE),
                        oldest: self.inner.oldest_file(),
                    }
                } else {
                    JournalError::io(&path, e)
                }
            })?;
            let mut page = vec![0u8; PAGE_SIZE];
            file.read_exact_at(&mut page, 0)
                .map_err(|e| JournalError::io(&path, e))?;
            let id = decode_file_header(&page).map_err(|reason| JournalError::Unreadable {
                at: Lsn::new(seq, 0),
                why: format!("bad file header: {reason:?}"),
            })?;
            if id.seq != seq {
                return Err(JournalError::Unreadable {
                    at: Lsn::new(seq, 0),
                    why: format!("the file's header names file {}", id.seq),
                });
            }
            self.open = Some((file, id));
        }
        let (f, id) = self.open.as_ref().expect("just opened");
        Ok((f, *id))
    }

    /// The first validated operation at or after `pos` that ends at or before `logLSN`, or
    /// `None` when the log has nothing more. `pos` must be where an operation starts or where
    /// the previous one ended (an operation's `end`), or the start of a file.
    pub fn next(&mut self, pos: Lsn) -> Result<Option<LoggedOp>, JournalError> {
        self.next_before(pos, false)
    }

    /// What the journal wrote so far: see [`crate::Journal::written`].
    pub fn written(&self) -> crate::Written {
        self.inner.written()
    }

    /// As [`LogReader::next`], but also an operation written and not yet synced (its commit
    /// has not returned): a synchronous backup gets it while the primary syncs it. Such an
    /// operation is complete in the log but may still be lost here if the machine crashes
    /// before the sync; a consumer must then not trust what it got of it (see the Goofy
    /// links' rule: a backup ahead of what this run of the primary validated is copied in
    /// full). Taken from the tail kept in memory when it is there.
    pub fn next_written(&mut self, pos: Lsn) -> Result<Option<LoggedOp>, JournalError> {
        self.next_before(pos, true)
    }

    fn next_before(
        &mut self,
        mut pos: Lsn,
        written: bool,
    ) -> Result<Option<LoggedOp>, JournalError> {
        loop {
            let log_end = if written {
                lock(&self.inner.sync).written
            } else {
                self.inner.log_lsn()
            };
            if written {
                let kept = lock(&self.inner.tail).as_ref().and_then(|t| t.get(pos));
                if let Some(op) = kept.filter(|op| op.end <= log_end) {
                    return Ok(Some((*op).clone()));
                }
            }
            if pos >= log_end {
                return Ok(None);
            }
            if pos.offset < PAGE {
                pos = Lsn::new(pos.file, PAGE);
            }
            let (file, id) = self.file(pos.file)?;
            match read_op(file, id, pos)? {
                Some(op) if op.end <= log_end => return Ok(Some(op)),
                Some(_) => return Ok(None), // written, not yet validated
                None if pos.file < log_end.file => pos = Lsn::new(pos.file + 1, PAGE),
                None => {
                    return Err(JournalError::Unreadable {
                        at: pos,
                        why: "no operation starts here although the log goes on".into(),
                    })
                }
            }
        }
    }
}

fn unreadable(at: Lsn, why: impl Into<String>) -> JournalError {
    JournalError::Unreadable {
        at,
        why: why.into(),
    }
}

/// The live record header at `at`, if any.
fn header_at(file: &File, id: FileId, at: u64) -> Result<Option<RecordHeader>, JournalError> {
    let mut page = vec![0u8; PAGE_SIZE];
    match file.read_exact_at(&mut page, at) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(unreadable(Lsn::new(id.seq, at), e.to_string())),
    }
    Ok(RecordHeader::decode(&page)
        .ok()
        .filter(|h| h.lsn == Lsn::new(id.seq, at) && h.salt == id.salt))
}

/// The operation starting at `pos`; `None` at a seal or where no live record starts. An
/// operation of a group after the group's first starts at a record that names an earlier
/// offset (the group's) and a later index.
fn read_op(file: &File, id: FileId, pos: Lsn) -> Result<Option<LoggedOp>, JournalError> {
    let mut at = pos.offset;
    let mut runs = Vec::new();
    let mut cluster = None;
    // Where the record's group starts and the index the next record must carry.
    let mut expect: Option<(u64, u32)> = None;
    loop {
        let Some(h) = header_at(file, id, at)? else {
            return if runs.is_empty() {
                Ok(None)
            } else {
                Err(unreadable(pos, "an operation stops before its END record"))
            };
        };
        if h.kind == RecordKind::Seal && runs.is_empty() {
            return Ok(None);
        }
        let first = expect.is_none();
        let (op_offset, index) = *expect.get_or_insert((h.op_offset, h.index));
        let starts_well =
            !first || op_offset == pos.offset && index == 0 || op_offset < pos.offset && index > 0;
        if h.kind != RecordKind::Pages
            || !starts_well
            || h.op_offset != op_offset
            || h.index != index
            || *cluster.get_or_insert(h.cluster) != h.cluster
        {
            return Err(unreadable(
                Lsn::new(id.seq, at),
                "a record that does not continue its operation",
            ));
        }
        expect = Some((op_offset, index.saturating_add(1)));
        let mut pages = vec![0u8; h.page_count as usize * PAGE_SIZE];
        file.read_exact_at(&mut pages, at + PAGE)
            .map_err(|e| unreadable(Lsn::new(id.seq, at), e.to_string()))?;
        if payload_crc(&[&pages]) != h.payload_crc {
            return Err(unreadable(
                Lsn::new(id.seq, at),
                "page images fail their checksum",
            ));
        }
        runs.push((h.first_page, pages));
        at += h.span();
        if h.end {
            return Ok(Some(LoggedOp {
                lsn: pos,
                end: Lsn::new(id.seq, at),
                cluster: h.cluster,
                runs,
                seq: 0,
                group_open: h.group,
            }));
        }
    }
}
