//! The decisions file of a coordinator (two-phase commit across volumes): the transactions it
//! decided to commit, kept beside its journal (`<journal dir>/decisions`) until every
//! participant has recorded the outcome in its own journal. Presumed abort: a transaction not
//! in the file was never decided to commit, so a participant that finds its prepared group in
//! doubt and no entry here aborts it.
//!
//! Format: 32-byte entries appended in order: magic `CLUDECS1` [0..8], transaction id
//! [8..16], kind [16..20] (1: committed, 2: forgotten), zero [20..24], CRC-32C of bytes 0..24
//! [24..28], zero [28..32]. A torn last entry (short, or its checksum wrong) is ignored: its
//! append did not return. A damaged entry followed by intact ones is refused.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::JournalError;

const NAME: &str = "decisions";
const MAGIC: [u8; 8] = *b"CLUDECS1";
const ENTRY: usize = 32;
const COMMITTED: u32 = 1;
const FORGOTTEN: u32 = 2;

fn path(dir: &Path) -> PathBuf {
    dir.join(NAME)
}

fn entry(txid: u64, kind: u32) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[..8].copy_from_slice(&MAGIC);
    e[8..16].copy_from_slice(&txid.to_le_bytes());
    e[16..20].copy_from_slice(&kind.to_le_bytes());
    let crc = crc32c::crc32c(&e[..24]);
    e[24..28].copy_from_slice(&crc.to_le_bytes());
    e
}

fn decode(e: &[u8]) -> Option<(u64, u32)> {
    if e.len() < ENTRY || e[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(e[24..28].try_into().ok()?);
    if crc != crc32c::crc32c(&e[..24]) {
        return None;
    }
    let txid = u64::from_le_bytes(e[8..16].try_into().ok()?);
    let kind = u32::from_le_bytes(e[16..20].try_into().ok()?);
    matches!(kind, COMMITTED | FORGOTTEN).then_some((txid, kind))
}

/// Appends an entry; with `sync`, durable when this returns.
pub(crate) fn append(dir: &Path, txid: u64, committed: bool, sync: bool) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path(dir))?;
    f.write_all(&entry(txid, if committed { COMMITTED } else { FORGOTTEN }))?;
    if sync {
        f.sync_data()?;
    }
    Ok(())
}

/// The transactions decided to commit and not forgotten, from the decisions file in `dir`
/// (none if there is no file).
pub fn committed(dir: &Path) -> Result<HashSet<u64>, JournalError> {
    let p = path(dir);
    let bytes = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(JournalError::io(&p, e)),
    };
    parse(&bytes).map_err(|at| JournalError::Unreadable {
        at: crate::Lsn::default(),
        why: format!(
            "{}: entry {at} is damaged and later entries are intact; restore the volume from a \
             backup",
            p.display()
        ),
    })
}

/// The committed set of a decisions file's bytes; `Err(entry index)` for a damaged entry
/// that is not the last.
fn parse(bytes: &[u8]) -> Result<HashSet<u64>, usize> {
    let mut set = HashSet::new();
    let n = bytes.len().div_ceil(ENTRY);
    for (i, e) in bytes.chunks(ENTRY).enumerate() {
        match decode(e) {
            Some((txid, COMMITTED)) => {
                set.insert(txid);
            }
            Some((txid, _)) => {
                set.remove(&txid);
            }
            None if i + 1 == n => {} // torn last entry: its append never returned
            None => return Err(i),
        }
    }
    Ok(set)
}

/// Rewrites the file with its committed entries only (atomically: a new file synced and
/// renamed over it), when it holds more than `max_entries`.
pub(crate) fn compact(dir: &Path, max_entries: usize) -> Result<(), JournalError> {
    let p = path(dir);
    let len = match fs::metadata(&p) {
        Ok(m) => m.len() as usize,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(JournalError::io(&p, e)),
    };
    if len / ENTRY <= max_entries {
        return Ok(());
    }
    let live = committed(dir)?;
    let tmp = dir.join("decisions-tmp");
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        let mut ids: Vec<u64> = live.iter().copied().collect();
        ids.sort_unstable();
        for id in ids {
            f.write_all(&entry(id, COMMITTED))?;
        }
        f.sync_all()?;
        fs::rename(&tmp, &p)
    };
    write().map_err(|e| JournalError::io(&p, e))?;
    crate::files::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_forgotten_and_a_torn_last_entry() {
        let mut b = Vec::new();
        b.extend(entry(1, COMMITTED));
        b.extend(entry(2, COMMITTED));
        b.extend(entry(1, FORGOTTEN));
        assert_eq!(parse(&b), Ok(HashSet::from([2])));
        // A torn last append: ignored, whatever it held.
        for cut in 1..ENTRY {
            let mut t = b.clone();
            t.extend(&entry(3, COMMITTED)[..cut]);
            assert_eq!(parse(&t), Ok(HashSet::from([2])), "cut at {cut}");
        }
        // A damaged entry before an intact one: refused.
        let mut d = b.clone();
        d[ENTRY + 9] ^= 1;
        assert_eq!(parse(&d), Err(1));
        // Every single bit flip of the last entry is caught (it reads as torn).
        for bit in 0..ENTRY * 8 {
            let mut f = b.clone();
            f[2 * ENTRY + bit / 8] ^= 1 << (bit % 8);
            let got = parse(&f);
            assert!(
                got == Ok(HashSet::from([1, 2])) || got == Ok(HashSet::from([2])),
                "bit {bit}: {got:?}"
            );
        }
    }

    #[test]
    fn append_compact_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(committed(dir.path()).unwrap().is_empty());
        for t in 0..10 {
            append(dir.path(), t, true, true).unwrap();
        }
        for t in 0..8 {
            append(dir.path(), t, false, false).unwrap();
        }
        compact(dir.path(), 4).unwrap();
        assert_eq!(committed(dir.path()).unwrap(), HashSet::from([8, 9]));
        assert_eq!(
            fs::metadata(path(dir.path())).unwrap().len(),
            2 * ENTRY as u64
        );
    }
}
