//! `goofy.conf`: what makes a volume reliable (beside its `volume.meta`).
//!
//! ```text
//! uid 9f3c2a7b11d04e55        the volume's identity on every backup (random, fixed at creation)
//! name rel                    its name in the catalog
//! epoch 1                     raised at each restoration; backups refuse older epochs
//! sync 0                      commits wait for this many backup acknowledgements
//! origin 0 0 0                the history this journal continues: epoch, LSN (file offset)
//! source 127.0.0.1:7701       the backup a restored volume was fetched from
//! restored from 127.0.0.1:7701: restored to LSN ... (what a restoration lost, in words)
//! backup 127.0.0.1:7701       one line per backup server
//! destroyed 17                a cluster destroyed here that some backup may still hold
//! ```

use std::path::Path;

use journal::Lsn;

use clu_storage::fsutil::write_atomic;
use clu_storage::{Result, StorageError};

/// The file's name in the volume's directory.
pub const FILE: &str = "goofy.conf";

/// Why a `goofy.conf` does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    /// A line is wrong.
    #[error("line {line}: {what}")]
    Line {
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// A setting is missing.
    #[error("no {0}")]
    Missing(&'static str),
}

/// A reliable volume's replication settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conf {
    /// Identity of the volume on the backups.
    pub uid: u64,
    /// Its name (as in the catalog; backups and restorers know it by this name).
    pub name: String,
    /// Fencing epoch.
    pub epoch: u64,
    /// Acknowledgements a commit waits for (0: asynchronous).
    pub sync: u32,
    /// The backup servers, `HOST:PORT`.
    pub backups: Vec<String>,
    /// Where this volume's journal takes over: the epoch and LSN of the image it was restored
    /// from (epoch 0, LSN 0 for a volume created empty). Its journal starts at file
    /// `origin.file + 1`.
    pub origin: (u64, Lsn),
    /// The backup a restored volume was fetched from (empty otherwise): the only one known to
    /// hold exactly the origin's pages.
    pub source: String,
    /// Clusters destroyed here whose destruction not every backup acknowledged yet.
    pub destroyed: Vec<u16>,
    /// For a restored volume, what its restoration lost, in words (empty otherwise).
    pub restored: String,
}

impl Conf {
    /// The text form.
    pub fn format(&self) -> String {
        let mut s = format!(
            "uid {:016x}\nname {}\nepoch {}\nsync {}\norigin {} {} {}\n",
            self.uid,
            self.name,
            self.epoch,
            self.sync,
            self.origin.0,
            self.origin.1.file,
            self.origin.1.offset
        );
        if !self.source.is_empty() {
            s.push_str(&format!("source {}\n", self.source));
        }
        for b in &self.backups {
            s.push_str(&format!("backup {b}\n"));
        }
        for c in &self.destroyed {
            s.push_str(&format!("destroyed {c}\n"));
        }
        if !self.restored.is_empty() {
            s.push_str(&format!("restored {}\n", self.restored.replace('\n', " ")));
        }
        s
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> std::result::Result<Conf, ConfError> {
        let (mut uid, mut epoch, mut sync, mut backups) = (None, None, 0, Vec::new());
        let mut origin = (0, Lsn::default());
        let mut name = String::new();
        let mut source = String::new();
        let mut destroyed = Vec::new();
        let mut restored = String::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |what: &'static str| ConfError::Line { line: i + 1, what };
            match line.split_once(' ') {
                Some(("uid", v)) => {
                    uid = Some(u64::from_str_radix(v, 16).map_err(|_| bad("bad uid"))?)
                }
                Some(("name", v)) => name = v.to_string(),
                Some(("restored", v)) => restored = v.to_string(),
                Some(("source", v)) => source = v.to_string(),
                Some(("epoch", v)) => epoch = Some(v.parse().map_err(|_| bad("bad epoch"))?),
                Some(("sync", v)) => sync = v.parse().map_err(|_| bad("bad sync"))?,
                Some(("backup", v)) if !v.is_empty() => backups.push(v.to_string()),
                Some(("destroyed", v)) => {
                    destroyed.push(v.parse().map_err(|_| bad("bad destroyed cluster"))?)
                }
                Some(("origin", v)) => {
                    let n: Vec<u64> = v
                        .split(' ')
                        .map(str::parse)
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|_| bad("bad origin"))?;
                    let [e, f, o] = n[..] else {
                        return Err(bad("origin needs an epoch, a file and an offset"));
                    };
                    origin = (e, Lsn::new(f, o));
                }
                _ if line.trim().is_empty() => {}
                _ => return Err(bad("unknown setting")),
            }
        }
        Ok(Conf {
            uid: uid.ok_or(ConfError::Missing("uid"))?,
            name,
            epoch: epoch.ok_or(ConfError::Missing("epoch"))?,
            sync,
            backups,
            origin,
            source,
            destroyed,
            restored,
        })
    }

    /// Reads `<location>/goofy.conf`.
    pub fn load(location: &Path) -> Result<Conf> {
        let path = location.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| StorageError::io(&path, e))?;
        Conf::parse(&text).map_err(|why| StorageError::corrupt(&path, why.to_string()))
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
            name: "rel".into(),
            epoch: 3,
            sync: 1,
            backups: vec!["127.0.0.1:1".into(), "[::1]:2".into()],
            origin: (2, Lsn::new(9, 8192)),
            source: "127.0.0.1:1".into(),
            destroyed: vec![3, 65535],
            restored: "restored to LSN 1:4096 of epoch 1; 3 later operations are lost".into(),
        };
        assert_eq!(Conf::parse(&c.format()), Ok(c));
        assert!(Conf::parse("uid zz\nepoch 1\n").is_err());
        assert!(Conf::parse("epoch 1\n").is_err());
        assert!(Conf::parse("uid 1\nepoch 1\nflavour x\n").is_err());
        assert!(Conf::parse("uid 1\nepoch 1\norigin 1 2\n").is_err());
        assert_eq!(
            Conf::parse("uid 1\nepoch 1\n").unwrap().origin,
            (0, Lsn::default())
        );
    }
}
