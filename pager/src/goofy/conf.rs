//! `goofy.conf`: what makes a volume reliable (beside its `volume.meta`).
//!
//! ```text
//! uid 9f3c2a7b11d04e55        the volume's identity on every backup (random, fixed at creation)
//! epoch 1                     raised at each restoration; backups refuse older epochs
//! sync 0                      commits wait for this many backup acknowledgements
//! backup 127.0.0.1:7701       one line per backup server
//! ```

use std::path::Path;

use crate::storage::fsutil::write_atomic;
use crate::storage::{Result, StorageError};

/// The file's name in the volume's directory.
pub const FILE: &str = "goofy.conf";

/// A reliable volume's replication settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conf {
    /// Identity of the volume on the backups.
    pub uid: u64,
    /// Fencing epoch.
    pub epoch: u64,
    /// Acknowledgements a commit waits for (0: asynchronous).
    pub sync: u32,
    /// The backup servers, `HOST:PORT`.
    pub backups: Vec<String>,
}

impl Conf {
    /// The text form.
    pub fn format(&self) -> String {
        let mut s = format!(
            "uid {:016x}\nepoch {}\nsync {}\n",
            self.uid, self.epoch, self.sync
        );
        for b in &self.backups {
            s.push_str(&format!("backup {b}\n"));
        }
        s
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> std::result::Result<Conf, String> {
        let (mut uid, mut epoch, mut sync, mut backups) = (None, None, 0, Vec::new());
        for (i, line) in text.lines().enumerate() {
            let bad = |what: &str| format!("line {}: {what}", i + 1);
            match line.split_once(' ') {
                Some(("uid", v)) => {
                    uid = Some(u64::from_str_radix(v, 16).map_err(|_| bad("bad uid"))?)
                }
                Some(("epoch", v)) => epoch = Some(v.parse().map_err(|_| bad("bad epoch"))?),
                Some(("sync", v)) => sync = v.parse().map_err(|_| bad("bad sync"))?,
                Some(("backup", v)) if !v.is_empty() => backups.push(v.to_string()),
                _ if line.trim().is_empty() => {}
                _ => return Err(bad("unknown setting")),
            }
        }
        Ok(Conf {
            uid: uid.ok_or("no uid")?,
            epoch: epoch.ok_or("no epoch")?,
            sync,
            backups,
        })
    }

    /// Reads `<location>/goofy.conf`.
    pub fn load(location: &Path) -> Result<Conf> {
        let path = location.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| StorageError::io(&path, e))?;
        Conf::parse(&text).map_err(|why| StorageError::corrupt(&path, why))
    }

    /// Writes it atomically.
    pub fn store(&self, location: &Path) -> Result<()> {
        write_atomic(&location.join(FILE), self.format().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let c = Conf {
            uid: 0x9f3c,
            epoch: 3,
            sync: 1,
            backups: vec!["127.0.0.1:1".into(), "[::1]:2".into()],
        };
        assert_eq!(Conf::parse(&c.format()), Ok(c));
        assert!(Conf::parse("uid zz\nepoch 1\n").is_err());
        assert!(Conf::parse("epoch 1\n").is_err());
        assert!(Conf::parse("uid 1\nepoch 1\nflavour x\n").is_err());
    }
}
