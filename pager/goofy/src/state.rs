//! `goofy.state`: what a backup records of a volume besides its pages.
//!
//! The file has two slots of [`SLOT`] bytes, written alternately in place and synced (the
//! thesis's double anchor): a slot is `GOOFYST1`, a sequence number, the text's length and a
//! CRC-32C of those and the text, then the text. A write torn by a crash spoils one slot only;
//! the other, older one is read. One `fdatasync` per update, where a new file, a rename and a
//! directory sync cost three. The text:
//!
//! ```text
//! uid 9f3c2a7b11d04e55          the volume's identity
//! name rel                      its name on the primary
//! epoch 2                       the newest epoch seen: older primaries are refused
//! position 2 5 40960 1          epoch, LSN (file offset) of the history applied; complete?
//!                               (as of the last full copy: each operation records it in the
//!                               image's note, with its pages, in one sync of its journal)
//! heard 12 2 4096 2 81920 15     what it heard beyond it: the last operation's ordinal, the
//!                               primary's journal run (LSN), written end and its ordinal
//!                               (the loss window)
//! sync 0                        the volume's settings, as its primary last said
//! backup 127.0.0.1:7701         (one line per backup server)
//! ```

use journal::{Lsn, Written};

use clu_proto::codec::{Reader, Writer};

use crate::position::{Heard, Position};

/// A backup's record of one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// The volume's identity.
    pub uid: u64,
    /// The volume's name on its primary.
    pub name: String,
    /// The newest epoch seen.
    pub epoch: u64,
    /// Where the image stands.
    pub position: Position,
    /// What it heard of the primary's journal beyond that (the loss window).
    pub heard: Heard,
    /// The volume's backup servers.
    pub backups: Vec<String>,
    /// The volume's `sync` setting.
    pub sync: u32,
    /// The site that created this image (its first primary), as its certificate names it.
    pub creator: String,
    /// The site that owns the newest epoch and last wrote (empty: not known yet).
    pub writer: String,
}

impl State {
    /// The text form.
    pub fn format(&self) -> String {
        let p = self.position;
        let mut s = format!(
            "uid {:016x}\nname {}\nepoch {}\nposition {} {} {} {}\nsync {}\n",
            self.uid,
            self.name,
            self.epoch,
            p.epoch,
            p.lsn.file,
            p.lsn.offset,
            u8::from(p.complete),
            self.sync
        );
        let h = self.heard;
        if h != Heard::default() {
            let w = h.written;
            s.push_str(&format!(
                "heard {} {} {} {} {} {}\n",
                h.seq, w.run.file, w.run.offset, w.end.file, w.end.offset, w.ops
            ));
        }
        for b in &self.backups {
            s.push_str(&format!("backup {b}\n"));
        }
        if !self.creator.is_empty() {
            s.push_str(&format!("creator {}\n", self.creator));
        }
        if !self.writer.is_empty() {
            s.push_str(&format!("writer {}\n", self.writer));
        }
        s
    }

    /// Parses the text form; `None` if it is not one.
    pub fn parse(text: &str) -> Option<State> {
        let (mut uid, mut name, mut epoch, mut position) = (None, None, None, None);
        let (mut sync, mut backups, mut heard) = (0, Vec::new(), Heard::default());
        let (mut creator, mut writer) = (String::new(), String::new());
        for line in text.lines() {
            match line.split_once(' ')? {
                ("uid", v) => uid = Some(u64::from_str_radix(v, 16).ok()?),
                ("name", v) => name = Some(v.to_string()),
                ("epoch", v) => epoch = Some(v.parse().ok()?),
                ("position", v) => {
                    let [e, f, o, c @ (0 | 1)] = numbers(v)?[..] else {
                        return None;
                    };
                    position = Some(Position {
                        epoch: e,
                        lsn: Lsn::new(f, o),
                        complete: c == 1,
                    });
                }
                ("heard", v) => {
                    let [seq, rf, ro, ef, eo, ops] = numbers(v)?[..] else {
                        return None;
                    };
                    heard = Heard {
                        seq,
                        written: Written {
                            run: Lsn::new(rf, ro),
                            end: Lsn::new(ef, eo),
                            ops,
                        },
                    };
                }
                ("sync", v) => sync = v.parse().ok()?,
                ("backup", v) => backups.push(v.to_string()),
                ("creator", v) => creator = v.to_string(),
                ("writer", v) => writer = v.to_string(),
                _ => return None,
            }
        }
        Some(State {
            uid: uid?,
            name: name?,
            epoch: epoch?,
            position: position?,
            heard,
            backups,
            sync,
            creator,
            writer,
        })
    }
}

/// The numbers of a line's value, separated by single spaces.
fn numbers(v: &str) -> Option<Vec<u64>> {
    v.split(' ').map(|n| n.parse().ok()).collect()
}

/// The size of a slot; the file is two slots.
pub const SLOT: usize = 4096;
const MAGIC: &[u8; 8] = b"GOOFYST1";
const HEAD: usize = 8 + 8 + 4 + 4;

impl State {
    /// Slot `seq % 2`'s bytes for this state; `None` if the text does not fit.
    pub fn encode_slot(&self, seq: u64) -> Option<Vec<u8>> {
        let text = self.format();
        if text.len() > SLOT - HEAD {
            return None;
        }
        let mut w = Writer::with(MAGIC)
            .u64(seq)
            .u32(text.len() as u32)
            .u32(0)
            .raw(text.as_bytes())
            .pad_to(SLOT);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&w.as_bytes()[8..20]), text.as_bytes());
        w.set_u32(20, crc);
        Some(w.finish())
    }

    /// The newest intact slot of a state file's bytes, and its sequence number.
    pub fn decode_slots(bytes: &[u8]) -> Option<(State, u64)> {
        bytes
            .chunks(SLOT)
            .take(2)
            .filter_map(|slot| {
                let mut r = Reader::new(slot);
                if r.take(MAGIC.len()).ok()? != MAGIC {
                    return None;
                }
                let seq = r.u64().ok()?;
                let len = r.u32().ok()? as usize;
                let crc = r.u32().ok()?;
                let text = r.take(len).ok()?;
                if crc32c::crc32c_append(crc32c::crc32c(&slot[8..20]), text) != crc {
                    return None;
                }
                Some((State::parse(std::str::from_utf8(text).ok()?)?, seq))
            })
            .max_by_key(|(_, seq)| *seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_damage_is_refused() {
        let s = State {
            uid: 0xabc,
            name: "rel".into(),
            epoch: 4,
            position: Position {
                epoch: 3,
                lsn: Lsn::new(2, 8192),
                complete: false,
            },
            heard: Heard {
                seq: 5,
                written: Written {
                    run: Lsn::new(1, 4096),
                    end: Lsn::new(2, 16384),
                    ops: 7,
                },
            },
            backups: vec!["127.0.0.1:1".into()],
            sync: 1,
            creator: "site-a".into(),
            writer: "site-b".into(),
        };
        assert_eq!(State::parse(&s.format()), Some(s.clone()));
        let unheard = State {
            heard: Heard::default(),
            ..s.clone()
        };
        assert!(!unheard.format().contains("heard"));
        assert_eq!(State::parse(&unheard.format()), Some(unheard));
        assert_eq!(
            State::parse("uid 1\nname x\nepoch 1\nposition 1 2 3 1\nheard 1 2 3\n"),
            None
        );
        // Two slots: the newest intact one wins; a torn newer slot falls back to the older.
        let mut newer = s.clone();
        newer.position.complete = true;
        let mut file = s.encode_slot(6).unwrap();
        file.extend(newer.encode_slot(7).unwrap());
        assert_eq!(State::decode_slots(&file), Some((newer, 7)));
        file[SLOT + 30] ^= 1;
        assert_eq!(State::decode_slots(&file), Some((s.clone(), 6)));
        file[30] ^= 1;
        assert_eq!(State::decode_slots(&file), None);
        assert_eq!(State::decode_slots(&[]), None);
        let mut big = s.clone();
        big.backups = vec!["x".repeat(5000)];
        assert_eq!(big.encode_slot(1), None);
        assert_eq!(
            State::parse("uid 1\nname x\nepoch z\nposition 1 2 3 1\n"),
            None
        );
        assert_eq!(
            State::parse("uid 1\nname x\nepoch 1\nposition 1 2 3 2\n"),
            None
        );
        assert_eq!(State::parse("uid 1\nname x\nepoch 1\n"), None);
    }
}
