//! Recovery as a pure function: from the anchor slots and the bytes of the log files, decide what
//! to replay, where the log ends and what to truncate. No I/O here; `journal.rs` reads the files,
//! calls [`plan`] and carries the plan out.
//!
//! The rules (thesis IV.2.3.1, with "validated" and "intact" made precise):
//! - The newest *intact* anchor slot gives `durableLSN` (everything before it is in the cluster
//!   files) and `logLSN` (everything before it was validated at the last checkpoint).
//! - An operation is *validated* when all its records are present, each header and payload matches
//!   its checksum, each carries its own LSN and its file's salt, and the last one has the END flag.
//! - Replay every validated operation from `durableLSN` on, in log order (idempotent: each record
//!   overwrites whole pages with their new images).
//! - The operations of a *group* (one atomic commit of several clusters) are validated together:
//!   their records all name the group's first record and are numbered across the group, and
//!   every operation's END record but the last one's carries the group flag. The log ends at
//!   the start of a group that is not complete, and the whole group is truncated.
//! - A *prepared* group (two-phase commit) ends with a prepare record naming its transaction:
//!   its operations are replayed only if a later decide record of that transaction says
//!   commit, dropped if it says abort, and returned apart (`in_doubt`) if none follows.
//! - The log ends at the first operation that is not validated. Its records are truncated (zeroed).
//!   A file that is followed by a later file must end with a seal record: a validated log never has
//!   holes.
//! - Refuse, never guess: if the log ends before the anchor's `logLSN`, or an intact record of a
//!   *later* operation lies beyond the end, validated data was damaged; recovery stops with an
//!   error rather than drop committed operations silently.

use std::ops::Range;

use crate::format::{decode_file_header, payload_crc, AnchorSlot, DecodeError, FileId};
use crate::format::{RecordHeader, RecordKind, PAGE_SIZE};
use crate::Lsn;

const PAGE: u64 = PAGE_SIZE as u64;

/// The bytes of one log file, as read from disk.
#[derive(Clone, Copy, Debug)]
pub struct LogImage<'a> {
    /// The sequence number from the file's name.
    pub seq: u64,
    /// The whole file.
    pub bytes: &'a [u8],
}

/// One contiguous run of page images inside an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRef {
    /// Page offset of the run in the cluster.
    pub first_page: u64,
    /// Byte range of the page images in the file's bytes.
    pub bytes: Range<usize>,
}

/// One validated operation: the records of one cluster commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRef {
    /// LSN of its first record.
    pub lsn: Lsn,
    /// LSN just past its last record.
    pub end: Lsn,
    /// The cluster it writes.
    pub cluster: u32,
    /// Its runs, in log order.
    pub runs: Vec<RunRef>,
    /// Its group goes on with the next operation (it is validated only with the group's last).
    pub group_open: bool,
    /// The transaction of the prepared group it belongs to, if any (two-phase commit): kept
    /// apart until decided.
    pub txid: Option<u64>,
}

/// A prepared group found with no decision after it: its outcome is up to the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InDoubt {
    /// The transaction.
    pub txid: u64,
    /// The coordinator's id, as the prepare record names it.
    pub coordinator: u32,
    /// The group's operations, in log order.
    pub ops: Vec<OpRef>,
}

/// What one validated group (or lone record) is.
enum Parsed {
    /// Operations to replay (a lone operation or a group).
    Ops(Vec<OpRef>),
    /// A prepared group, closed by its prepare record.
    Prepared {
        ops: Vec<OpRef>,
        txid: u64,
        coordinator: u32,
    },
    /// A decision.
    Decided { txid: u64, commit: bool },
}

/// What scanning one file found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileScan {
    /// Validated operations, in order.
    pub ops: Vec<OpRef>,
    /// Offset just past the last validated operation.
    pub end: u64,
    /// Whether the file ends with a seal record at `end`.
    pub sealed: bool,
    /// End of the bytes the first unvalidated operation left behind (`end` if none).
    pub torn_until: u64,
    /// An intact record of another operation found beyond `torn_until`: the log was damaged.
    pub later_record: Option<u64>,
    /// Prepared groups, in order: transaction and coordinator (their operations are in `ops`,
    /// marked with the transaction).
    pub prepared: Vec<(u64, u32)>,
    /// Decisions, in order: transaction and whether it commits.
    pub decided: Vec<(u64, bool)>,
}

/// Why recovery refused to proceed. Each case names what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    /// A file between `durableLSN` and the newest file is missing.
    #[error("log file {seq} is missing but the anchor or a later file needs it; restore it from a backup or recreate the volume")]
    MissingFile {
        /// The missing file's sequence number.
        seq: u64,
    },
    /// A log file's header page is damaged or from another format.
    #[error("log file {seq} has a bad header ({reason:?}); the file is damaged or was not written by this journal; restore the volume from a backup")]
    BadFileHeader {
        /// The file.
        seq: u64,
        /// What was wrong.
        reason: DecodeError,
    },
    /// A log file that a later file follows does not end with a seal: validated records are damaged.
    #[error("log file {seq} is damaged at offset {offset:#x}: it is followed by a later file but does not end in a seal record; committed operations after this point cannot be trusted; restore the volume from a backup")]
    UnsealedFile {
        /// The file.
        seq: u64,
        /// Where its valid records stop.
        offset: u64,
    },
    /// The log ends before the anchor's `logLSN`.
    #[error("the log ends at {end} but operations up to {log_lsn} were validated: a validated record is damaged; restore the volume from a backup")]
    LostValidated {
        /// Where the valid log ends.
        end: Lsn,
        /// The anchor's `logLSN`.
        log_lsn: Lsn,
    },
    /// An intact record of a later operation lies beyond a damaged one.
    #[error("the log is damaged at {at}: an intact record of a later operation follows at {later}; restore the volume from a backup")]
    CorruptMidLog {
        /// Where the valid log stops.
        at: Lsn,
        /// The later intact record.
        later: Lsn,
    },
    /// `durableLSN` does not point at a record boundary inside its file.
    #[error(
        "the anchor's durableLSN {0} lies outside its log file; the anchor or the log is damaged; restore the volume from a backup"
    )]
    DurableOutOfRange(Lsn),
}

/// What recovery must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Validated operations from `durableLSN` on, to apply in order.
    pub replay: Vec<OpRef>,
    /// Where the log ends: the next record is written here.
    pub log_end: Lsn,
    /// Bytes of an unvalidated operation to zero: `(file, offsets)`.
    pub truncate: Option<(u64, Range<u64>)>,
    /// The newest file ends in a seal (a crash came between sealing it and linking the next file):
    /// the writer must start a new file.
    pub last_sealed: bool,
    /// Prepared groups with no decision: not in `replay`; the journal keeps them until the
    /// coordinator's decision is known.
    pub in_doubt: Vec<InDoubt>,
}

fn page_at(bytes: &[u8], offset: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    bytes.get(start..start.checked_add(PAGE_SIZE)?)
}

/// Decodes the record header at `offset` if it is a live record of file `id` at that position.
fn live_header(bytes: &[u8], id: FileId, offset: u64) -> Option<RecordHeader> {
    let h = RecordHeader::decode(page_at(bytes, offset)?).ok()?;
    (h.lsn == Lsn::new(id.seq, offset) && h.salt == id.salt).then_some(h)
}

/// The payload range of a record, if it lies in the file and matches its checksum.
fn checked_payload(bytes: &[u8], h: &RecordHeader) -> Option<Range<usize>> {
    let start = usize::try_from(h.lsn.offset.checked_add(PAGE)?).ok()?;
    let len = usize::try_from(u64::from(h.page_count) * PAGE).ok()?;
    let range = start..start.checked_add(len)?;
    let data = bytes.get(range.clone())?;
    (payload_crc(&[data]) == h.payload_crc).then_some(range)
}

/// Parses the operation starting at `offset` (or the group of operations: the records of a
/// group all name its first record's offset and are numbered across it, each operation's
/// last record carrying END, and the group flag too except on the last operation's; a
/// prepared group ends with a prepare record instead), or the decide record there; `None` if
/// it is not validated. Returns it and the offset just past it.
fn parse_group(bytes: &[u8], id: FileId, offset: u64) -> Option<(Parsed, u64)> {
    let mut at = offset;
    let mut index = 0u32;
    let mut ops = Vec::new();
    let mut op_start = offset;
    let mut runs = Vec::new();
    let mut cluster = None;
    loop {
        let h = live_header(bytes, id, at)?;
        if h.op_offset != offset || h.index != index {
            return None;
        }
        match h.kind {
            RecordKind::Decide if index == 0 => {
                let commit = h.cluster == crate::format::DECIDE_COMMIT;
                let decided = Parsed::Decided {
                    txid: h.first_page,
                    commit,
                };
                return Some((decided, at.checked_add(h.span())?));
            }
            // Closes a group whose operations all went on (at least one).
            RecordKind::Prepare if runs.is_empty() && !ops.is_empty() => {
                let txid = h.first_page;
                for op in &mut ops {
                    let op: &mut OpRef = op;
                    op.txid = Some(txid);
                }
                let prepared = Parsed::Prepared {
                    ops,
                    txid,
                    coordinator: h.cluster,
                };
                return Some((prepared, at.checked_add(h.span())?));
            }
            RecordKind::Pages => {}
            _ => return None,
        }
        if *cluster.get_or_insert(h.cluster) != h.cluster {
            return None;
        }
        runs.push(RunRef {
            first_page: h.first_page,
            bytes: checked_payload(bytes, &h)?,
        });
        at = at.checked_add(h.span())?;
        index = index.checked_add(1)?;
        if h.end {
            ops.push(OpRef {
                lsn: Lsn::new(id.seq, op_start),
                end: Lsn::new(id.seq, at),
                cluster: h.cluster,
                runs: std::mem::take(&mut runs),
                group_open: h.group,
                txid: None,
            });
            if !h.group {
                return Some((Parsed::Ops(ops), at));
            }
            op_start = at;
            cluster = None;
        }
    }
}

/// Scans file `id` (whose bytes are `bytes`) from `start`, which must be a record boundary.
pub fn scan_file(bytes: &[u8], id: FileId, start: u64) -> FileScan {
    let mut ops = Vec::new();
    let mut prepared = Vec::new();
    let mut decided = Vec::new();
    let mut at = start;
    let mut sealed = false;
    while let Some(h) = live_header(bytes, id, at) {
        if h.kind == RecordKind::Seal {
            sealed = true;
            break;
        }
        match parse_group(bytes, id, at) {
            Some((parsed, next)) => {
                at = next;
                match parsed {
                    Parsed::Ops(group) => ops.extend(group),
                    Parsed::Prepared {
                        ops: group,
                        txid,
                        coordinator,
                    } => {
                        ops.extend(group);
                        prepared.push((txid, coordinator));
                    }
                    Parsed::Decided { txid, commit } => decided.push((txid, commit)),
                }
            }
            None => break,
        }
    }
    let end = at;
    // The footprint of the operation (or group) that was being written when the writer
    // stopped: follow its records as far as their headers are intact.
    let mut torn_until = end;
    if !sealed {
        let mut p = end;
        while let Some(h) = live_header(bytes, id, p) {
            if h.kind != RecordKind::Pages || h.op_offset != end {
                break;
            }
            p = p.saturating_add(h.span());
            torn_until = p.min(bytes.len() as u64);
        }
    }
    // Nothing live may follow the end: look for an intact record of any *other* operation.
    // A record of the torn operation beyond a lost one is debris of the same write: the
    // truncation covers it too (else the next operation, written over the start of the
    // debris, would leave live records of an older operation after its end).
    let mut later_record = None;
    if !sealed {
        let mut p = torn_until.max(end + PAGE);
        while p + PAGE <= bytes.len() as u64 {
            if let Some(h) = live_header(bytes, id, p) {
                if h.op_offset != end || h.kind == RecordKind::Seal {
                    later_record = Some(p);
                    break;
                }
                torn_until = torn_until.max(p.saturating_add(h.span()).min(bytes.len() as u64));
            }
            p += PAGE;
        }
    }
    FileScan {
        ops,
        end,
        sealed,
        torn_until,
        later_record,
        prepared,
        decided,
    }
}

/// Picks the newest intact anchor slot. `Err` carries each slot's reason when neither is intact,
/// or the version found when a slot's checksum holds but its version is unknown (refuse: newer
/// software wrote it).
pub fn choose_anchor(slot0: &[u8], slot1: &[u8]) -> Result<AnchorSlot, [DecodeError; 2]> {
    let a = AnchorSlot::decode(slot0);
    let b = AnchorSlot::decode(slot1);
    let unknown =
        |r: &Result<AnchorSlot, DecodeError>| matches!(r, Err(DecodeError::UnknownVersion(_)));
    if unknown(&a) || unknown(&b) {
        let e = |r: Result<AnchorSlot, DecodeError>| r.err().unwrap_or(DecodeError::BadMagic);
        return Err([e(a), e(b)]);
    }
    match (a, b) {
        (Ok(x), Ok(y)) => Ok(if y.seq > x.seq { y } else { x }),
        (Ok(x), Err(_)) => Ok(x),
        (Err(_), Ok(y)) => Ok(y),
        (Err(x), Err(y)) => Err([x, y]),
    }
}

/// Plans recovery from the chosen anchor slot and the log files from `durableLSN`'s file on,
/// sorted by sequence number.
pub fn plan(anchor: &AnchorSlot, files: &[LogImage<'_>]) -> Result<Plan, RecoveryError> {
    let durable = anchor.durable_lsn;
    let mut replay = Vec::new();
    let Some(last_seq) = files.last().map(|f| f.seq) else {
        return Err(RecoveryError::MissingFile { seq: durable.file });
    };
    let mut log_end = durable;
    let mut truncate = None;
    let mut last_sealed = false;
    let mut prepared: Vec<(u64, u32)> = Vec::new();
    let mut decided: Vec<(u64, bool)> = Vec::new();
    for (expected, image) in (durable.file..).zip(files) {
        if image.seq != expected {
            return Err(RecoveryError::MissingFile { seq: expected });
        }
        let header = page_at(image.bytes, 0).ok_or(RecoveryError::BadFileHeader {
            seq: image.seq,
            reason: DecodeError::Short,
        })?;
        let id = decode_file_header(header).map_err(|reason| RecoveryError::BadFileHeader {
            seq: image.seq,
            reason,
        })?;
        if id.seq != image.seq {
            return Err(RecoveryError::BadFileHeader {
                seq: image.seq,
                reason: DecodeError::BadField("sequence number does not match the file name"),
            });
        }
        let start = if image.seq == durable.file {
            durable.offset
        } else {
            PAGE
        };
        if start % PAGE != 0 || start + PAGE > image.bytes.len() as u64 {
            return Err(RecoveryError::DurableOutOfRange(durable));
        }
        let scan = scan_file(image.bytes, id, start);
        let end = Lsn::new(image.seq, scan.end);
        if let Some(later) = scan.later_record {
            return Err(RecoveryError::CorruptMidLog {
                at: end,
                later: Lsn::new(image.seq, later),
            });
        }
        replay.extend(scan.ops);
        prepared.extend(scan.prepared);
        decided.extend(scan.decided);
        if image.seq != last_seq {
            if !scan.sealed {
                return Err(RecoveryError::UnsealedFile {
                    seq: image.seq,
                    offset: scan.end,
                });
            }
        } else {
            log_end = end;
            last_sealed = scan.sealed;
            if scan.torn_until > scan.end {
                truncate = Some((image.seq, scan.end..scan.torn_until));
            }
        }
    }
    if log_end < anchor.log_lsn {
        return Err(RecoveryError::LostValidated {
            end: log_end,
            log_lsn: anchor.log_lsn,
        });
    }
    // Prepared groups: replayed if a decision to commit follows them, dropped if one to abort
    // does, kept apart (in doubt) if none does.
    let outcome = |txid: u64| decided.iter().rev().find(|d| d.0 == txid).map(|d| d.1);
    let mut in_doubt: Vec<InDoubt> = prepared
        .iter()
        .filter(|(txid, _)| outcome(*txid).is_none())
        .map(|&(txid, coordinator)| InDoubt {
            txid,
            coordinator,
            ops: Vec::new(),
        })
        .collect();
    let mut kept = Vec::with_capacity(replay.len());
    for op in replay {
        match op.txid {
            None => kept.push(op),
            Some(t) => match outcome(t) {
                Some(true) => kept.push(op),
                Some(false) => {}
                None => {
                    if let Some(d) = in_doubt.iter_mut().find(|d| d.txid == t) {
                        d.ops.push(op);
                    }
                }
            },
        }
    }
    Ok(Plan {
        replay: kept,
        log_end,
        truncate,
        last_sealed,
        in_doubt,
    })
}

#[cfg(test)]
mod tests;
