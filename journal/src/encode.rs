//! Building the records of one operation (the inverse of the scan in `recovery`).

use crate::format::{payload_crc, FileId, RecordHeader, RecordKind, PAGE_SIZE};
use crate::{JournalError, Lsn};
use clu_sys::buf::PageBuf;

const PAGE: u64 = PAGE_SIZE as u64;

/// New page images for one contiguous run of a cluster's pages.
#[derive(Clone, Copy, Debug)]
pub struct PageRun<'a> {
    /// Page offset of the run in the cluster.
    pub first_page: u64,
    /// The page images: a non-empty multiple of [`PAGE_SIZE`] bytes.
    pub pages: &'a [u8],
}

/// Checks the runs of one operation and returns the bytes it will occupy in the log.
pub(crate) fn op_span(runs: &[PageRun<'_>]) -> Result<u64, JournalError> {
    let mut span = 0u64;
    for run in runs {
        if run.pages.is_empty() || run.pages.len() % PAGE_SIZE != 0 {
            return Err(JournalError::InvalidRun(format!(
                "a run must hold whole {PAGE_SIZE}-byte pages, got {} bytes",
                run.pages.len()
            )));
        }
        let count = run.pages.len() as u64 / PAGE;
        if count > u64::from(u32::MAX) || run.first_page.checked_add(count).is_none() {
            return Err(JournalError::InvalidRun(format!(
                "run at page {} of {count} pages is out of range",
                run.first_page
            )));
        }
        span += (1 + count) * PAGE;
    }
    Ok(span)
}

/// Where an operation stands in its group (a lone operation is a group of one).
#[derive(Clone, Copy, Debug)]
pub(crate) struct InGroup {
    /// Offset of the group's first record: every record of the group names it.
    pub op_offset: u64,
    /// The index of the operation's first record in the group (records are numbered across
    /// the group).
    pub first_index: u32,
    /// The group goes on with the next operation (the END record carries the group flag).
    pub open: bool,
}

impl InGroup {
    /// A lone operation at `offset`.
    pub(crate) fn alone(offset: u64) -> InGroup {
        InGroup {
            op_offset: offset,
            first_index: 0,
            open: false,
        }
    }
}

/// The header pages of an operation whose first record goes at `offset` of file `id`: one page
/// per run, the last one flagged END (the validation point, with the group flag if its group
/// goes on), in one page-aligned buffer (page `i` is run `i`'s header).
pub(crate) fn op_headers(
    id: FileId,
    offset: u64,
    cluster: u32,
    runs: &[PageRun<'_>],
    group: InGroup,
) -> PageBuf {
    let mut at = offset;
    let mut out = PageBuf::zeroed(runs.len() * PAGE_SIZE);
    for (index, run) in runs.iter().enumerate() {
        let last = index + 1 == runs.len();
        let h = RecordHeader {
            kind: RecordKind::Pages,
            lsn: Lsn::new(id.seq, at),
            op_offset: group.op_offset,
            index: group.first_index + index as u32,
            end: last,
            group: group.open && last,
            cluster,
            first_page: run.first_page,
            page_count: (run.pages.len() / PAGE_SIZE) as u32,
            payload_crc: payload_crc(&[run.pages]),
            salt: id.salt,
        };
        h.encode(&mut out[index * PAGE_SIZE..(index + 1) * PAGE_SIZE]);
        at += h.span();
    }
    out
}

/// The prepare record closing a prepared group (whose first record is at `group.op_offset`)
/// at `offset` of file `id`.
pub(crate) fn prepare_page(
    id: FileId,
    offset: u64,
    group: InGroup,
    txid: u64,
    coordinator: u32,
) -> PageBuf {
    let h = RecordHeader {
        kind: RecordKind::Prepare,
        lsn: Lsn::new(id.seq, offset),
        op_offset: group.op_offset,
        index: group.first_index,
        end: true,
        group: false,
        cluster: coordinator,
        first_page: txid,
        page_count: 0,
        payload_crc: payload_crc(&[]),
        salt: id.salt,
    };
    let mut page = PageBuf::zeroed(PAGE_SIZE);
    h.encode(&mut page);
    page
}

/// The decide record of transaction `txid` at `offset` of file `id`.
pub(crate) fn decide_page(id: FileId, offset: u64, txid: u64, commit: bool) -> PageBuf {
    let h = RecordHeader {
        kind: RecordKind::Decide,
        lsn: Lsn::new(id.seq, offset),
        op_offset: offset,
        index: 0,
        end: true,
        group: false,
        cluster: if commit {
            crate::format::DECIDE_COMMIT
        } else {
            crate::format::DECIDE_ABORT
        },
        first_page: txid,
        page_count: 0,
        payload_crc: payload_crc(&[]),
        salt: id.salt,
    };
    let mut page = PageBuf::zeroed(PAGE_SIZE);
    h.encode(&mut page);
    page
}

/// Lays a prepared group out as [`group_bytes`] does, closed by its prepare record.
pub fn prepared_bytes(
    id: FileId,
    offset: u64,
    ops: &[(u32, &[PageRun<'_>])],
    txid: u64,
    coordinator: u32,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut first_index = 0u32;
    for (cluster, runs) in ops {
        let group = InGroup {
            op_offset: offset,
            first_index,
            open: true,
        };
        out.extend(lay_out(
            id,
            offset + out.len() as u64,
            *cluster,
            runs,
            group,
        ));
        first_index += runs.len() as u32;
    }
    let group = InGroup {
        op_offset: offset,
        first_index,
        open: false,
    };
    out.extend_from_slice(&prepare_page(
        id,
        offset + out.len() as u64,
        group,
        txid,
        coordinator,
    ));
    out
}

/// The bytes of a decide record, as [`op_bytes`] lays out an operation.
pub fn decide_bytes(id: FileId, offset: u64, txid: u64, commit: bool) -> Vec<u8> {
    decide_page(id, offset, txid, commit).to_vec()
}

/// The seal record closing file `id` at `offset`.
pub(crate) fn seal_page(id: FileId, offset: u64) -> Vec<u8> {
    let h = RecordHeader {
        kind: RecordKind::Seal,
        lsn: Lsn::new(id.seq, offset),
        op_offset: offset,
        index: 0,
        end: true,
        group: false,
        cluster: 0,
        first_page: 0,
        page_count: 0,
        payload_crc: 0,
        salt: id.salt,
    };
    let mut page = vec![0u8; PAGE_SIZE];
    h.encode(&mut page);
    page
}

/// Lays an operation out as contiguous bytes (headers interleaved with page images), as the
/// writer's vectored write puts it on disk. Used by tests and tools that build logs in memory.
pub fn op_bytes(id: FileId, offset: u64, cluster: u32, runs: &[PageRun<'_>]) -> Vec<u8> {
    lay_out(id, offset, cluster, runs, InGroup::alone(offset))
}

/// Lays a group of operations out as [`op_bytes`] does one, the first at `offset`: an
/// operation is `(cluster, runs)`.
pub fn group_bytes(id: FileId, offset: u64, ops: &[(u32, &[PageRun<'_>])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut first_index = 0u32;
    for (i, (cluster, runs)) in ops.iter().enumerate() {
        let group = InGroup {
            op_offset: offset,
            first_index,
            open: i + 1 < ops.len(),
        };
        out.extend(lay_out(
            id,
            offset + out.len() as u64,
            *cluster,
            runs,
            group,
        ));
        first_index += runs.len() as u32;
    }
    out
}

fn lay_out(id: FileId, offset: u64, cluster: u32, runs: &[PageRun<'_>], group: InGroup) -> Vec<u8> {
    let mut out = Vec::new();
    for (header, run) in op_headers(id, offset, cluster, runs, group)
        .chunks(PAGE_SIZE)
        .zip(runs)
    {
        out.extend_from_slice(header);
        out.extend_from_slice(run.pages);
    }
    out
}
