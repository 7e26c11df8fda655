//! Where a backup's image stands in a primary's history.

use journal::Lsn;

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

const NOTE_MAGIC: &[u8; 8] = b"GOOFYPO1";
const NOTE_LEN: usize = 8 + 8 + 8 + 8 + 1;

impl Position {
    /// The form kept in the backup image's note (written with the pages it describes, in
    /// one journal sync): magic, epoch, LSN, complete, CRC-32C of what precedes.
    pub fn encode_note(&self) -> Vec<u8> {
        let w = Writer::with(NOTE_MAGIC)
            .u64(self.epoch)
            .u64(self.lsn.file)
            .u64(self.lsn.offset)
            .u8(u8::from(self.complete));
        let mut bytes = w.finish();
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// The position a note holds; `None` if it holds none (a note of another kind, or
    /// damaged).
    pub fn decode_note(note: &[u8]) -> Option<Position> {
        let body = note.get(..NOTE_LEN)?;
        let crc = u32::from_le_bytes(note.get(NOTE_LEN..NOTE_LEN + 4)?.try_into().ok()?);
        if &body[..8] != NOTE_MAGIC || crc32c::crc32c(body) != crc {
            return None;
        }
        let mut r = Reader::new(&body[8..]);
        let (epoch, file, offset) = (r.u64().ok()?, r.u64().ok()?, r.u64().ok()?);
        let complete = match r.u8().ok()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        Some(Position {
            epoch,
            lsn: Lsn::new(file, offset),
            complete,
        })
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
        let mut note = p.encode_note();
        note.resize(4096, 0);
        assert_eq!(Position::decode_note(&note), Some(p));
        for i in 0..NOTE_LEN + 4 {
            let mut bad = note.clone();
            bad[i] ^= 1;
            assert_eq!(Position::decode_note(&bad), None, "byte {i}");
        }
        assert_eq!(Position::decode_note(&[0; 4096]), None);
        assert_eq!(Position::decode_note(&[]), None);
    }
}
