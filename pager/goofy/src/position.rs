//! Where a backup's image stands in a primary's history, and what the backup heard of that
//! history beyond it (the loss window of an asynchronous volume).

use journal::{Lsn, Written};

use clu_proto::codec::{Reader, Writer};

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

/// What a backup heard of its primary's journal, in the position's epoch: the ordinal of the
/// last operation it applied, and how far the primary had written when it last said so
/// (with each operation, and while an asynchronous link waits for an acknowledgement). The
/// operations between are the ones a restoration from this backup would lose, as the backup
/// knows them. Ordinals count the operations of one run of the primary's journal (from its
/// opening, [`Written::run`]); `seq` 0 is "not known" (an operation the primary read back
/// from its log, or a full copy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heard {
    /// The ordinal of the last operation applied, in the run of `written` (0: not known).
    pub seq: u64,
    /// What the primary's journal had written when it last said.
    pub written: Written,
}

impl Heard {
    /// What a later word of the same run of the primary's journal adds (its log's end only
    /// grows); a word of another run is not comparable with `seq` and is ignored.
    pub fn hear(&mut self, w: Written) {
        if w.run == self.written.run && (w.end, w.ops) > (self.written.end, self.written.ops) {
            self.written = w;
        }
    }
}

const NOTE_MAGIC_V1: &[u8; 8] = b"GOOFYPO1";
const NOTE_MAGIC: &[u8; 8] = b"GOOFYPO2";
const NOTE_V1_LEN: usize = 8 + 8 + 8 + 8 + 1;
const NOTE_LEN: usize = NOTE_V1_LEN + 8 + 16 + 16 + 8;

impl Position {
    /// The form kept in the backup image's note (written with the pages it describes, in
    /// one journal sync): magic, epoch, LSN, complete, what was heard, CRC-32C of what
    /// precedes.
    pub fn encode_note(&self, heard: &Heard) -> Vec<u8> {
        let w = Writer::with(NOTE_MAGIC)
            .u64(self.epoch)
            .u64(self.lsn.file)
            .u64(self.lsn.offset)
            .u8(u8::from(self.complete))
            .u64(heard.seq)
            .u64(heard.written.run.file)
            .u64(heard.written.run.offset)
            .u64(heard.written.end.file)
            .u64(heard.written.end.offset)
            .u64(heard.written.ops);
        let mut bytes = w.finish();
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// The position a note holds, and what was heard with it (nothing in a note of the
    /// first format); `None` if it holds none (a note of another kind, or damaged).
    pub fn decode_note(note: &[u8]) -> Option<(Position, Heard)> {
        let len = match note.get(..8)? {
            m if m == NOTE_MAGIC => NOTE_LEN,
            m if m == NOTE_MAGIC_V1 => NOTE_V1_LEN,
            _ => return None,
        };
        let body = note.get(..len)?;
        let crc = u32::from_le_bytes(note.get(len..len + 4)?.try_into().ok()?);
        if crc32c::crc32c(body) != crc {
            return None;
        }
        let mut r = Reader::new(&body[8..]);
        let (epoch, file, offset) = (r.u64().ok()?, r.u64().ok()?, r.u64().ok()?);
        let complete = match r.u8().ok()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let heard = if len == NOTE_LEN {
            Heard {
                seq: r.u64().ok()?,
                written: Written {
                    run: Lsn::new(r.u64().ok()?, r.u64().ok()?),
                    end: Lsn::new(r.u64().ok()?, r.u64().ok()?),
                    ops: r.u64().ok()?,
                },
            }
        } else {
            Heard::default()
        };
        let position = Position {
            epoch,
            lsn: Lsn::new(file, offset),
            complete,
        };
        Some((position, heard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_round_trips_and_damage_is_refused() {
        let p = Position {
            epoch: 7,
            lsn: Lsn::new(3, 40960),
            complete: true,
        };
        let h = Heard {
            seq: 12,
            written: Written {
                run: Lsn::new(2, 4096),
                end: Lsn::new(3, 81920),
                ops: 15,
            },
        };
        let mut note = p.encode_note(&h);
        note.resize(4096, 0);
        assert_eq!(Position::decode_note(&note), Some((p, h)));
        for i in 0..NOTE_LEN + 4 {
            let mut bad = note.clone();
            bad[i] ^= 1;
            assert_eq!(Position::decode_note(&bad), None, "byte {i}");
        }
        assert_eq!(Position::decode_note(&[0; 4096]), None);
        assert_eq!(Position::decode_note(&[]), None);
    }

    #[test]
    fn a_note_of_the_first_format_is_still_read() {
        let p = Position {
            epoch: 2,
            lsn: Lsn::new(1, 8192),
            complete: true,
        };
        let mut v1 = Writer::with(NOTE_MAGIC_V1)
            .u64(p.epoch)
            .u64(p.lsn.file)
            .u64(p.lsn.offset)
            .u8(1)
            .finish();
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        v1.resize(4096, 0);
        assert_eq!(Position::decode_note(&v1), Some((p, Heard::default())));
    }

    #[test]
    fn the_written_end_only_grows() {
        let w = |end: u64, ops| Written {
            run: Lsn::new(1, 4096),
            end: Lsn::new(1, end),
            ops,
        };
        let mut h = Heard {
            seq: 1,
            written: w(4096, 1),
        };
        h.hear(w(8192, 4));
        h.hear(w(4096, 3));
        assert_eq!(h.written, w(8192, 4));
        h.hear(w(12288, 9));
        assert_eq!(h.written, w(12288, 9));
        // Another run's ordinals count from another start: not heard.
        h.hear(Written {
            run: Lsn::new(5, 4096),
            ..w(99999, 20)
        });
        assert_eq!(h.written, w(12288, 9));
    }
}
