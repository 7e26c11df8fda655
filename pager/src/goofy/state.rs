//! `goofy.state`: what a backup records of a volume besides its pages.
//!
//! ```text
//! uid 9f3c2a7b11d04e55          the volume's identity
//! name rel                      its name on the primary
//! epoch 2                       the newest epoch seen: older primaries are refused
//! position 2 5 40960 1          epoch, LSN (file offset) of the history applied; complete?
//! sync 0                        the volume's settings, as its primary last said
//! backup 127.0.0.1:7701         (one line per backup server)
//! ```

use journal::Lsn;

use super::wire::Position;

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
    /// The volume's backup servers.
    pub backups: Vec<String>,
    /// The volume's `sync` setting.
    pub sync: u32,
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
        for b in &self.backups {
            s.push_str(&format!("backup {b}\n"));
        }
        s
    }

    /// Parses the text form; `None` if it is not one.
    pub fn parse(text: &str) -> Option<State> {
        let (mut uid, mut name, mut epoch, mut position) = (None, None, None, None);
        let (mut sync, mut backups) = (0, Vec::new());
        for line in text.lines() {
            match line.split_once(' ')? {
                ("uid", v) => uid = Some(u64::from_str_radix(v, 16).ok()?),
                ("name", v) => name = Some(v.to_string()),
                ("epoch", v) => epoch = Some(v.parse().ok()?),
                ("position", v) => {
                    let n: Vec<u64> = v
                        .split(' ')
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .ok()?;
                    let [e, f, o, c @ (0 | 1)] = n[..] else {
                        return None;
                    };
                    position = Some(Position {
                        epoch: e,
                        lsn: Lsn::new(f, o),
                        complete: c == 1,
                    });
                }
                ("sync", v) => sync = v.parse().ok()?,
                ("backup", v) => backups.push(v.to_string()),
                _ => return None,
            }
        }
        Some(State {
            uid: uid?,
            name: name?,
            epoch: epoch?,
            position: position?,
            backups,
            sync,
        })
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
            backups: vec!["127.0.0.1:1".into()],
            sync: 1,
        };
        assert_eq!(State::parse(&s.format()), Some(s));
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
