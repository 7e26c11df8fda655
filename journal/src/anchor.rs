//! The anchor (*ancre*): two 4 KiB slots written alternately, slot `seq % 2`, each with a
//! sequence number and a checksum, so one intact slot always survives a torn write (I10).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::format::{AnchorSlot, DecodeError, PAGE_SIZE};
use crate::recovery::choose_anchor;
use crate::{JournalError, Lsn};

/// The open anchor file and the newest slot written.
pub(crate) struct Anchor {
    file: File,
    path: PathBuf,
    current: AnchorSlot,
}

impl Anchor {
    /// Creates the anchor with both slots naming `lsn` as logLSN and durableLSN.
    pub(crate) fn create(path: &Path, lsn: Lsn) -> Result<(), JournalError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| JournalError::io(path, e))?;
        let mut pages = vec![0u8; 2 * PAGE_SIZE];
        for seq in 0..2u64 {
            let slot = AnchorSlot {
                seq,
                log_lsn: lsn,
                durable_lsn: lsn,
            };
            let at = seq as usize * PAGE_SIZE;
            slot.encode(&mut pages[at..at + PAGE_SIZE]);
        }
        file.write_all_at(&pages, 0)
            .map_err(|e| JournalError::io(path, e))?;
        file.sync_all().map_err(|e| JournalError::io(path, e))
    }

    /// Opens the anchor and picks the newest intact slot.
    pub(crate) fn open(path: &Path) -> Result<Anchor, JournalError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| JournalError::io(path, e))?;
        let mut pages = vec![0u8; 2 * PAGE_SIZE];
        let mut got = 0;
        while got < pages.len() {
            match file.read_at(&mut pages[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(JournalError::io(path, e)),
            }
        }
        let (slot0, slot1) = pages.split_at(PAGE_SIZE);
        let current = choose_anchor(
            &slot0[..got.min(PAGE_SIZE)],
            &slot1[..got.saturating_sub(PAGE_SIZE)],
        )
        .map_err(|[slot0, slot1]| match (slot0, slot1) {
            (DecodeError::UnknownVersion(found), _) | (_, DecodeError::UnknownVersion(found)) => {
                JournalError::UnsupportedVersion {
                    path: path.to_owned(),
                    found,
                }
            }
            _ => JournalError::AnchorUnreadable {
                path: path.to_owned(),
                slot0,
                slot1,
            },
        })?;
        Ok(Anchor {
            file,
            path: path.to_owned(),
            current,
        })
    }

    /// The newest slot.
    pub(crate) fn current(&self) -> AnchorSlot {
        self.current
    }

    /// Writes both LSNs to the other slot; durable before return when `sync`.
    pub(crate) fn write(
        &mut self,
        log_lsn: Lsn,
        durable_lsn: Lsn,
        sync: bool,
    ) -> Result<(), JournalError> {
        let slot = AnchorSlot {
            seq: self.current.seq + 1,
            log_lsn,
            durable_lsn,
        };
        let mut page = vec![0u8; PAGE_SIZE];
        slot.encode(&mut page);
        let at = (slot.seq % 2) * PAGE_SIZE as u64;
        self.file
            .write_all_at(&page, at)
            .map_err(|e| JournalError::io(&self.path, e))?;
        if sync {
            self.file
                .sync_data()
                .map_err(|e| JournalError::io(&self.path, e))?;
        }
        self.current = slot;
        Ok(())
    }
}
