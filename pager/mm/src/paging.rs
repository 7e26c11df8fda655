//! The paging partition (*partition de pagination*, thesis D4): where evicted dirty pages wait,
//! never in the cluster's storage image. Execution memory: no durability promise, recreated empty
//! at every start.
//!
//! A slot allocator (pure) over a scratch file. A slot holds one page; freed slots are reused
//! first, and the file never grows past its capacity, so a full partition is an error the
//! eviction path handles (the page then stays resident).
//!
//! Or another machine's memory (thesis K2, `pager serve --paging-server`): a [`PagingServer`]
//! allocates the slots and holds the pages; the same promise (none beyond this run), and a
//! server that cannot be reached is a failed store (the page stays resident) or a failed load
//! (the fault raises SIGBUS in its process; abort still discards the page).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clu_proto::PAGE_SIZE;
use clu_sys::sync::lock;

/// A slot of the paging partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u32);

/// Why a slot operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// Every slot is in use.
    #[error(
        "the paging partition is full ({0} pages); raise --paging-pages or the resident budget"
    )]
    Full(u32),
    /// A slot that is not allocated (a bug in the caller).
    #[error("paging slot {0} is not in use")]
    NotInUse(u32),
    /// A buffer that is not one page.
    #[error("a paging slot holds one {PAGE_SIZE}-byte page, not {0} bytes")]
    BadLength(usize),
    /// The memory server failed or refused.
    #[error("paging server {server}: {message}")]
    Server {
        /// The server's address.
        server: String,
        /// What went wrong.
        message: String,
    },
    /// The memory server was not reached a moment ago: not tried again yet.
    #[error("paging server {0} was not reached a moment ago; the page stays resident")]
    Down(String),
    /// The scratch file failed.
    #[error("paging partition {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The slot allocator: pure.
#[derive(Debug)]
pub struct Slots {
    capacity: u32,
    /// Slots never handed out are `high..capacity`.
    high: u32,
    free: Vec<u32>,
    used: Vec<bool>,
}

impl Slots {
    /// An allocator of `capacity` slots, all free.
    pub fn new(capacity: u32) -> Slots {
        Slots {
            capacity,
            high: 0,
            free: Vec::new(),
            used: Vec::new(),
        }
    }

    /// Takes a free slot, the most recently freed first.
    pub fn alloc(&mut self) -> Result<Slot, PagingError> {
        let n = match self.free.pop() {
            Some(n) => n,
            None if self.high < self.capacity => {
                self.high += 1;
                self.used.push(false);
                self.high - 1
            }
            None => return Err(PagingError::Full(self.capacity)),
        };
        self.used[n as usize] = true;
        Ok(Slot(n))
    }

    /// Returns a slot.
    pub fn free(&mut self, slot: Slot) -> Result<(), PagingError> {
        match self.used.get_mut(slot.0 as usize) {
            Some(u) if *u => {
                *u = false;
                self.free.push(slot.0);
                Ok(())
            }
            _ => Err(PagingError::NotInUse(slot.0)),
        }
    }

    /// Slots in use.
    pub fn in_use(&self) -> u32 {
        self.high - self.free.len() as u32
    }
}

/// Another machine's memory as the paging partition: it allocates the slots and keeps the
/// pages (implemented over the cell's transport by the daemon).
pub trait PagingServer: Send + Sync {
    /// Stores one page in a new slot.
    fn store(&self, page: &[u8]) -> Result<Slot, PagingError>;
    /// Reads a slot's page into `buf` (one page).
    fn load(&self, slot: Slot, buf: &mut [u8]) -> Result<(), PagingError>;
    /// Releases a slot.
    fn free(&self, slot: Slot) -> Result<(), PagingError>;
    /// Slots this site holds there.
    fn in_use(&self) -> u32;
    /// Its address, for `pager status`.
    fn address(&self) -> String;
}

/// The paging partition: the allocator and its scratch file, or a memory server.
pub struct PagingPartition(Backing);

enum Backing {
    File {
        path: PathBuf,
        file: File,
        slots: Mutex<Slots>,
    },
    Server(std::sync::Arc<dyn PagingServer>),
}

fn at(slot: Slot) -> u64 {
    u64::from(slot.0) * PAGE_SIZE as u64
}

impl PagingPartition {
    /// Creates the partition at `path` afresh (an old one from an earlier run is discarded: its
    /// pages were execution memory of processes that are gone), with room for `capacity` pages.
    pub fn create(path: &Path, capacity: u32) -> Result<PagingPartition, PagingError> {
        let io = |source| PagingError::Io {
            path: path.to_owned(),
            source,
        };
        let _ = fs::remove_file(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        Ok(PagingPartition(Backing::File {
            path: path.to_owned(),
            file,
            slots: Mutex::new(Slots::new(capacity)),
        }))
    }

    /// The partition kept by a memory server.
    pub fn remote(server: std::sync::Arc<dyn PagingServer>) -> PagingPartition {
        PagingPartition(Backing::Server(server))
    }

    /// The memory server's address, if the partition is one.
    pub fn server(&self) -> Option<String> {
        match &self.0 {
            Backing::Server(s) => Some(s.address()),
            Backing::File { .. } => None,
        }
    }

    /// Copies one page into a new slot.
    pub fn store(&self, page: &[u8]) -> Result<Slot, PagingError> {
        if page.len() != PAGE_SIZE {
            return Err(PagingError::BadLength(page.len()));
        }
        match &self.0 {
            Backing::Server(server) => server.store(page),
            Backing::File { path, file, slots } => {
                let slot = lock(slots).alloc()?;
                if let Err(source) = file.write_all_at(page, at(slot)) {
                    let _ = lock(slots).free(slot);
                    return Err(PagingError::Io {
                        path: path.clone(),
                        source,
                    });
                }
                Ok(slot)
            }
        }
    }

    /// Reads a slot's page into `buf` (one page).
    pub fn load(&self, slot: Slot, buf: &mut [u8]) -> Result<(), PagingError> {
        if buf.len() != PAGE_SIZE {
            return Err(PagingError::BadLength(buf.len()));
        }
        match &self.0 {
            Backing::Server(server) => server.load(slot, buf),
            Backing::File { path, file, slots } => {
                let used = lock(slots).used.get(slot.0 as usize).copied();
                if used != Some(true) {
                    return Err(PagingError::NotInUse(slot.0));
                }
                file.read_exact_at(buf, at(slot))
                    .map_err(|source| PagingError::Io {
                        path: path.clone(),
                        source,
                    })
            }
        }
    }

    /// Releases a slot.
    pub fn free(&self, slot: Slot) -> Result<(), PagingError> {
        match &self.0 {
            Backing::Server(server) => server.free(slot),
            Backing::File { slots, .. } => lock(slots).free(slot),
        }
    }

    /// Slots in use.
    pub fn in_use(&self) -> u32 {
        match &self.0 {
            Backing::Server(server) => server.in_use(),
            Backing::File { slots, .. } => lock(slots).in_use(),
        }
    }
}

impl Drop for PagingPartition {
    fn drop(&mut self) {
        if let Backing::File { path, .. } = &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn slots_are_reused_bounded_and_double_frees_refused() {
        let mut s = Slots::new(2);
        let a = s.alloc().unwrap();
        let b = s.alloc().unwrap();
        assert_ne!(a, b);
        assert!(matches!(s.alloc(), Err(PagingError::Full(2))));
        s.free(a).unwrap();
        assert!(matches!(s.free(a), Err(PagingError::NotInUse(_))));
        assert!(matches!(s.free(Slot(99)), Err(PagingError::NotInUse(99))));
        assert_eq!(s.alloc().unwrap(), a, "a freed slot is reused first");
        assert_eq!(s.in_use(), 2);
    }

    #[test]
    fn pages_round_trip_through_the_scratch_file_which_is_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paging");
        fs::write(&path, b"stale pages of an earlier run").unwrap();
        let p = PagingPartition::create(&path, 8).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 0, "recreated empty");
        let slots: Vec<Slot> = (0..8u8)
            .map(|i| p.store(&[i; PAGE_SIZE]).unwrap())
            .collect();
        assert!(matches!(
            p.store(&[9; PAGE_SIZE]),
            Err(PagingError::Full(8))
        ));
        let mut buf = vec![0u8; PAGE_SIZE];
        p.load(slots[5], &mut buf).unwrap();
        assert_eq!(buf, vec![5u8; PAGE_SIZE]);
        p.free(slots[5]).unwrap();
        assert!(matches!(
            p.load(slots[5], &mut buf),
            Err(PagingError::NotInUse(_))
        ));
        assert!(matches!(p.store(&[1; 10]), Err(PagingError::BadLength(10))));
        assert_eq!(p.in_use(), 7);
        drop(p);
        assert!(!path.exists(), "execution memory leaves nothing behind");
    }

    proptest! {
        #[test]
        fn no_slot_is_ever_handed_out_twice(ops in proptest::collection::vec(any::<(bool, u8)>(), 1..300)) {
            let mut s = Slots::new(16);
            let mut held: Vec<Slot> = Vec::new();
            for (alloc, pick) in ops {
                if alloc {
                    match s.alloc() {
                        Ok(slot) => {
                            prop_assert!(!held.contains(&slot), "slot {slot:?} handed out twice");
                            held.push(slot);
                        }
                        Err(PagingError::Full(_)) => prop_assert_eq!(held.len(), 16),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                } else if !held.is_empty() {
                    let slot = held.swap_remove(pick as usize % held.len());
                    s.free(slot).unwrap();
                }
                prop_assert_eq!(s.in_use() as usize, held.len());
                let distinct: HashSet<_> = held.iter().collect();
                prop_assert_eq!(distinct.len(), held.len());
            }
        }
    }
}
