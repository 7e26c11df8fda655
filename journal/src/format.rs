//! The on-disk formats: anchor slots, log file headers and record headers.
//!
//! Pure encoding and decoding over byte slices; no I/O. Every structure occupies the start of one
//! 4 KiB page (the rest of the page is zero) and ends with a CRC-32C of the bytes before it, so a
//! torn or bit-flipped page is recognised instead of trusted. All integers are little-endian.

use crate::Lsn;

/// The journal's unit of I/O and of page images.
pub const PAGE_SIZE: usize = 4096;
/// Format version written by this crate; any other version is refused, never guessed at.
pub const FORMAT_VERSION: u32 = 1;

pub(crate) const ANCHOR_MAGIC: [u8; 8] = *b"CLUANCHR";
pub(crate) const FILE_MAGIC: [u8; 8] = *b"CLULOGF\0";
pub(crate) const RECORD_MAGIC: [u8; 8] = *b"CLURECD\0";

/// Record flag: this record closes its operation (the validation point).
pub(crate) const FLAG_END: u32 = 1;
/// Record flag, only beside [`FLAG_END`]: the operation's *group* goes on with the next
/// operation. A group (the operations of one atomic commit of several clusters) is validated
/// with its last operation, the one whose END record lacks this flag: recovery keeps all of
/// its operations or none. Every record of a group names the group's first record
/// (`op_offset`), and their indexes run across the group.
pub(crate) const FLAG_GROUP: u32 = 2;

fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Why a page did not decode as the structure expected there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the structure needs.
    Short,
    /// The magic number is not this structure's: zeroes, another structure or garbage.
    BadMagic,
    /// The checksum does not match: a torn write or a bit flip.
    BadChecksum,
    /// The checksum matches but the format version is unknown (written by other software).
    UnknownVersion(u32),
    /// The checksum matches but a field is impossible (written by a buggy or hostile writer).
    BadField(&'static str),
}

// ------------------------------------------------------------------------------------------------
// Anchor slot: both LSNs, a sequence number to pick the newest slot, and a checksum.
// Layout: magic[0..8] version[8..12] page_size[12..16] seq[16..24] log.file[24..32]
//         log.offset[32..40] durable.file[40..48] durable.offset[48..56] crc[56..60]
const ANCHOR_LEN: usize = 60;

/// One slot of the anchor (*ancre*): `logLSN` and `durableLSN` as of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnchorSlot {
    /// Increases by one at every anchor write; the newest intact slot wins.
    pub seq: u64,
    /// Every validated operation before this LSN is in the log (I6 `logLSN`).
    pub log_lsn: Lsn,
    /// Every operation before this LSN is applied to the cluster files and synced (`durableLSN`).
    pub durable_lsn: Lsn,
}

impl AnchorSlot {
    /// Encodes the slot into the start of `page` (which must be a zeroed page).
    pub fn encode(&self, page: &mut [u8]) {
        page[0..8].copy_from_slice(&ANCHOR_MAGIC);
        put32(page, 8, FORMAT_VERSION);
        put32(page, 12, PAGE_SIZE as u32);
        put64(page, 16, self.seq);
        put64(page, 24, self.log_lsn.file);
        put64(page, 32, self.log_lsn.offset);
        put64(page, 40, self.durable_lsn.file);
        put64(page, 48, self.durable_lsn.offset);
        let c = crc(&page[..56]);
        put32(page, 56, c);
    }

    /// Decodes a slot. A slot is *intact* when this returns `Ok`: right magic, matching checksum,
    /// known version and page size, page-aligned LSNs and `durableLSN <= logLSN`.
    pub fn decode(page: &[u8]) -> Result<AnchorSlot, DecodeError> {
        if page.len() < ANCHOR_LEN {
            return Err(DecodeError::Short);
        }
        if page[0..8] != ANCHOR_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if crc(&page[..56]) != u32_at(page, 56) {
            return Err(DecodeError::BadChecksum);
        }
        let version = u32_at(page, 8);
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        if u32_at(page, 12) != PAGE_SIZE as u32 {
            return Err(DecodeError::BadField("page size"));
        }
        let slot = AnchorSlot {
            seq: u64_at(page, 16),
            log_lsn: Lsn::new(u64_at(page, 24), u64_at(page, 32)),
            durable_lsn: Lsn::new(u64_at(page, 40), u64_at(page, 48)),
        };
        let aligned = |l: Lsn| l.offset % PAGE_SIZE as u64 == 0 && l.offset >= PAGE_SIZE as u64;
        if !aligned(slot.log_lsn) || !aligned(slot.durable_lsn) {
            return Err(DecodeError::BadField("unaligned LSN"));
        }
        if slot.durable_lsn > slot.log_lsn {
            return Err(DecodeError::BadField("durableLSN after logLSN"));
        }
        Ok(slot)
    }
}

// ------------------------------------------------------------------------------------------------
// Log file header, page 0 of every log file.
// Layout: magic[0..8] version[8..12] page_size[12..16] seq[16..24] salt[24..32] crc[32..36]
const FILE_HEADER_LEN: usize = 36;

/// The identity of one log file: its sequence number and the random salt chosen when the file was
/// (re)initialised. Every record in the file repeats both, so records left over from a recycled
/// file, or record-shaped bytes inside a client's page images, are never taken for live records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    /// The file's sequence number (the `file` part of its LSNs).
    pub seq: u64,
    /// Random, chosen at each (re)initialisation of the file.
    pub salt: u64,
}

/// Encodes the header page of a log file into `page` (a zeroed page).
pub fn encode_file_header(id: FileId, page: &mut [u8]) {
    page[0..8].copy_from_slice(&FILE_MAGIC);
    put32(page, 8, FORMAT_VERSION);
    put32(page, 12, PAGE_SIZE as u32);
    put64(page, 16, id.seq);
    put64(page, 24, id.salt);
    let c = crc(&page[..32]);
    put32(page, 32, c);
}

/// Decodes a log file's header page.
pub fn decode_file_header(page: &[u8]) -> Result<FileId, DecodeError> {
    if page.len() < FILE_HEADER_LEN {
        return Err(DecodeError::Short);
    }
    if page[0..8] != FILE_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if crc(&page[..32]) != u32_at(page, 32) {
        return Err(DecodeError::BadChecksum);
    }
    let version = u32_at(page, 8);
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    if u32_at(page, 12) != PAGE_SIZE as u32 {
        return Err(DecodeError::BadField("page size"));
    }
    Ok(FileId {
        seq: u64_at(page, 16),
        salt: u64_at(page, 24),
    })
}

// ------------------------------------------------------------------------------------------------
// Record header: one page, followed by `page_count` page images.
// Layout: magic[0..8] version[8..10] kind[10..12] flags[12..16] lsn.file[16..24]
//         lsn.offset[24..32] op_offset[32..40] index[40..44] cluster[44..48] first_page[48..56]
//         page_count[56..60] payload_crc[60..64] salt[64..72] header_crc[72..76]
const RECORD_HEADER_LEN: usize = 76;

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Page images of one contiguous run of a cluster's pages (an elementary operation, I4).
    Pages,
    /// Closes a log file: the writer moved on to the next file. No payload.
    Seal,
    /// Closes a *prepared* group (two-phase commit): its operations are validated but not
    /// decided; recovery keeps them apart until a [`RecordKind::Decide`] names the group.
    /// No payload: `first_page` holds the transaction id, `cluster` the coordinator's id
    /// (opaque to the journal).
    Prepare,
    /// The outcome of a prepared group: `first_page` holds the transaction id, `cluster` 1
    /// (commit) or 2 (abort). A lone record, no payload.
    Decide,
}

/// [`RecordKind::Decide`]'s `cluster` for a commit.
pub(crate) const DECIDE_COMMIT: u32 = 1;
/// [`RecordKind::Decide`]'s `cluster` for an abort.
pub(crate) const DECIDE_ABORT: u32 = 2;

/// The header of one record, as stored in its first page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// What the record is.
    pub kind: RecordKind,
    /// The record's own position: a record found elsewhere is stale, not part of the log.
    pub lsn: Lsn,
    /// Offset (in the same file) of the first record of this record's operation, or of its
    /// group's first operation.
    pub op_offset: u64,
    /// Position of the record in its operation (in its group), from 0.
    pub index: u32,
    /// Whether this record closes its operation (validation).
    pub end: bool,
    /// On an END record: the operation's group goes on with the next operation (see
    /// [`FLAG_GROUP`]); always `false` on other records.
    pub group: bool,
    /// The cluster (its full 32-bit id); opaque to the journal.
    pub cluster: u32,
    /// Page offset of the run in the cluster.
    pub first_page: u64,
    /// Number of page images following the header.
    pub page_count: u32,
    /// CRC-32C of the page images.
    pub payload_crc: u32,
    /// The salt of the file the record was written in (see [`FileId`]).
    pub salt: u64,
}

impl RecordHeader {
    /// Bytes the record occupies in the log, header page included.
    pub fn span(&self) -> u64 {
        (1 + u64::from(self.page_count)) * PAGE_SIZE as u64
    }

    /// Encodes into the start of `page` (a zeroed page).
    pub fn encode(&self, page: &mut [u8]) {
        page[0..8].copy_from_slice(&RECORD_MAGIC);
        page[8..10].copy_from_slice(&(FORMAT_VERSION as u16).to_le_bytes());
        let kind: u16 = match self.kind {
            RecordKind::Pages => 1,
            RecordKind::Seal => 2,
            RecordKind::Prepare => 3,
            RecordKind::Decide => 4,
        };
        page[10..12].copy_from_slice(&kind.to_le_bytes());
        let flags = if self.end { FLAG_END } else { 0 } | if self.group { FLAG_GROUP } else { 0 };
        put32(page, 12, flags);
        put64(page, 16, self.lsn.file);
        put64(page, 24, self.lsn.offset);
        put64(page, 32, self.op_offset);
        put32(page, 40, self.index);
        put32(page, 44, self.cluster);
        put64(page, 48, self.first_page);
        put32(page, 56, self.page_count);
        put32(page, 60, self.payload_crc);
        put64(page, 64, self.salt);
        let c = crc(&page[..72]);
        put32(page, 72, c);
    }

    /// Decodes a record header (not its payload: see [`payload_crc`]). `page` is the whole header
    /// page: the bytes after the header must be zero, so no bit of the page goes unchecked.
    pub fn decode(page: &[u8]) -> Result<RecordHeader, DecodeError> {
        if page.len() < RECORD_HEADER_LEN {
            return Err(DecodeError::Short);
        }
        if page[0..8] != RECORD_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if crc(&page[..72]) != u32_at(page, 72) {
            return Err(DecodeError::BadChecksum);
        }
        if page[RECORD_HEADER_LEN..].iter().any(|&b| b != 0) {
            return Err(DecodeError::BadField(
                "non-zero padding after the record header",
            ));
        }
        let version = u32::from(u16::from_le_bytes([page[8], page[9]]));
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let kind = match u16::from_le_bytes([page[10], page[11]]) {
            1 => RecordKind::Pages,
            2 => RecordKind::Seal,
            3 => RecordKind::Prepare,
            4 => RecordKind::Decide,
            _ => return Err(DecodeError::BadField("record kind")),
        };
        let flags = u32_at(page, 12);
        if flags & !(FLAG_END | FLAG_GROUP) != 0 {
            return Err(DecodeError::BadField("record flags"));
        }
        if flags & FLAG_GROUP != 0 && flags & FLAG_END == 0 {
            return Err(DecodeError::BadField(
                "a group flag on a record that is not an END",
            ));
        }
        let h = RecordHeader {
            kind,
            lsn: Lsn::new(u64_at(page, 16), u64_at(page, 24)),
            op_offset: u64_at(page, 32),
            index: u32_at(page, 40),
            end: flags & FLAG_END != 0,
            group: flags & FLAG_GROUP != 0,
            cluster: u32_at(page, 44),
            first_page: u64_at(page, 48),
            page_count: u32_at(page, 56),
            payload_crc: u32_at(page, 60),
            salt: u64_at(page, 64),
        };
        if kind == RecordKind::Pages && h.page_count == 0 {
            return Err(DecodeError::BadField("empty page record"));
        }
        if kind == RecordKind::Seal && (h.page_count != 0 || h.group) {
            return Err(DecodeError::BadField("seal with payload"));
        }
        if matches!(kind, RecordKind::Prepare | RecordKind::Decide)
            && (h.page_count != 0 || h.group || !h.end)
        {
            return Err(DecodeError::BadField(
                "a prepare or decide record with a payload or not closing its operation",
            ));
        }
        if kind == RecordKind::Decide && !matches!(h.cluster, DECIDE_COMMIT | DECIDE_ABORT) {
            return Err(DecodeError::BadField("a decide record with no outcome"));
        }
        if h.first_page.checked_add(u64::from(h.page_count)).is_none() {
            return Err(DecodeError::BadField("page range overflows"));
        }
        Ok(h)
    }
}

/// The checksum stored in a record header for its page images.
pub fn payload_crc(pages: &[&[u8]]) -> u32 {
    pages.iter().fold(0, |c, p| crc32c::crc32c_append(c, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn page() -> Vec<u8> {
        vec![0u8; PAGE_SIZE]
    }

    fn header(lsn: Lsn) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Pages,
            lsn,
            op_offset: lsn.offset,
            index: 0,
            end: true,
            group: false,
            cluster: 0x0001_0002,
            first_page: 7,
            page_count: 3,
            payload_crc: 0xdead_beef,
            salt: 0x5a17,
        }
    }

    #[test]
    fn anchor_round_trip_and_every_single_bit_flip_is_caught() {
        let slot = AnchorSlot {
            seq: 9,
            log_lsn: Lsn::new(3, 8 * 4096),
            durable_lsn: Lsn::new(2, 4096),
        };
        let mut p = page();
        slot.encode(&mut p);
        assert_eq!(AnchorSlot::decode(&p), Ok(slot));
        for bit in 0..ANCHOR_LEN * 8 {
            let mut q = p.clone();
            q[bit / 8] ^= 1 << (bit % 8);
            assert!(
                AnchorSlot::decode(&q).is_err(),
                "bit {bit} flipped unnoticed"
            );
        }
    }

    #[test]
    fn anchor_refuses_unknown_version_and_impossible_lsns() {
        let mut p = page();
        AnchorSlot {
            seq: 1,
            log_lsn: Lsn::new(1, 4096),
            durable_lsn: Lsn::new(1, 8192),
        }
        .encode(&mut p);
        assert_eq!(
            AnchorSlot::decode(&p),
            Err(DecodeError::BadField("durableLSN after logLSN"))
        );
        let mut p = page();
        AnchorSlot {
            seq: 1,
            log_lsn: Lsn::new(1, 4096),
            durable_lsn: Lsn::new(1, 4096),
        }
        .encode(&mut p);
        put32(&mut p, 8, 2);
        let c = crc(&p[..56]);
        put32(&mut p, 56, c);
        assert_eq!(AnchorSlot::decode(&p), Err(DecodeError::UnknownVersion(2)));
        assert_eq!(AnchorSlot::decode(&page()), Err(DecodeError::BadMagic));
        assert_eq!(AnchorSlot::decode(&p[..10]), Err(DecodeError::Short));
    }

    #[test]
    fn record_header_round_trip_and_bit_flips() {
        let h = header(Lsn::new(4, 12 * 4096));
        let mut p = page();
        h.encode(&mut p);
        assert_eq!(RecordHeader::decode(&p), Ok(h));
        assert_eq!(h.span(), 4 * 4096);
        for bit in
            (0..RECORD_HEADER_LEN * 8).chain((RECORD_HEADER_LEN * 8..PAGE_SIZE * 8).step_by(61))
        {
            let mut q = p.clone();
            q[bit / 8] ^= 1 << (bit % 8);
            assert!(
                RecordHeader::decode(&q).is_err(),
                "bit {bit} flipped unnoticed"
            );
        }
    }

    #[test]
    fn the_group_flag_round_trips_only_on_an_end_record() {
        let h = RecordHeader {
            group: true,
            ..header(Lsn::new(2, 4096))
        };
        let mut p = page();
        h.encode(&mut p);
        assert_eq!(RecordHeader::decode(&p), Ok(h));
        let mut p = page();
        RecordHeader { end: false, ..h }.encode(&mut p);
        assert_eq!(
            RecordHeader::decode(&p),
            Err(DecodeError::BadField(
                "a group flag on a record that is not an END"
            ))
        );
    }

    #[test]
    fn file_header_round_trip() {
        let mut p = page();
        let id = FileId {
            seq: 77,
            salt: 0x1234_5678_9abc,
        };
        encode_file_header(id, &mut p);
        assert_eq!(decode_file_header(&p), Ok(id));
        p[20] ^= 4;
        assert_eq!(decode_file_header(&p), Err(DecodeError::BadChecksum));
        assert_eq!(decode_file_header(&page()), Err(DecodeError::BadMagic));
    }

    proptest! {
        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = AnchorSlot::decode(&bytes);
            let _ = RecordHeader::decode(&bytes);
            let _ = decode_file_header(&bytes);
        }

        #[test]
        fn record_headers_round_trip(file in 1u64..1000, off in 1u64..1000, idx in 0u32..50,
                                     cluster: u32, first in 0u64..1 << 40, count in 1u32..100_000,
                                     end: bool, group: bool, pcrc: u32) {
            let h = RecordHeader { kind: RecordKind::Pages, lsn: Lsn::new(file, off * 4096),
                op_offset: off * 4096, index: idx, end, group: group && end, cluster, first_page: first,
                page_count: count, payload_crc: pcrc, salt: 42 };
            let mut p = page();
            h.encode(&mut p);
            prop_assert_eq!(RecordHeader::decode(&p), Ok(h));
        }
    }
}
