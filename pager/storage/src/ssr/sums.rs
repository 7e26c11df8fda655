//! Per-page checksums of a cluster's stored image: `clusters/XXXX.sums`, one little-endian
//! CRC-32C per page, in page order.
//!
//! Every page read from storage is checked against its sum, so a bit flipped on the disk (or a
//! page the disk returns from the wrong place) is reported instead of served. The sums are part
//! of the journal's apply target: a page and its sum are rewritten together when an operation is
//! applied, redone together by recovery, and synced together before `durableLSN` passes them.
//!
//! The file has no header: its length is the number of pages times four. A sums file shorter
//! than the cluster (one written before checksums existed, or lost) is rebuilt from the data at
//! mount, which is logged: from then on damage is detected, not before.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use clu_proto::codec::{Reader, Writer};
use clu_proto::PAGE_SIZE;

const PAGE: u64 = PAGE_SIZE as u64;
const SUM: u64 = 4;

/// The CRC-32C of one page.
pub(crate) fn page_sum(page: &[u8]) -> u32 {
    crc32c::crc32c(page)
}

/// A page that does not match its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mismatch {
    /// The page number in the cluster.
    pub page: u64,
    /// The sum recorded when the page was written.
    pub stored: u32,
    /// The sum of what was read.
    pub read: u32,
}

/// The sums of one cluster: in memory, and written through to the file.
pub(crate) struct PageSums {
    file: File,
    sums: Vec<u32>,
}

fn encode(sums: &[u32]) -> Vec<u8> {
    sums.iter().fold(Writer::new(), |w, s| w.u32(*s)).finish()
}

impl PageSums {
    /// The sums of `npages` zero pages, written and synced (a new cluster).
    pub(crate) fn create(path: &Path, npages: u64) -> io::Result<PageSums> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let mut sums = PageSums {
            file,
            sums: Vec::new(),
        };
        sums.grow(npages)?;
        Ok(sums)
    }

    /// Loads the sums of a cluster of `npages` pages whose pages are in `data`; rebuilds the
    /// missing tail from the data.
    pub(crate) fn load(path: &Path, npages: u64, data: &File) -> io::Result<PageSums> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let have = (file.metadata()?.len() / SUM).min(npages);
        let mut bytes = vec![0u8; (have * SUM) as usize];
        file.read_exact_at(&mut bytes, 0)?;
        let mut r = Reader::new(&bytes);
        let mut sums: Vec<u32> = (0..have).filter_map(|_| r.u32().ok()).collect();
        if have < npages {
            tracing::warn!(path = %path.display(), have, npages,
                "rebuilding missing page checksums from the stored pages");
            let mut page = vec![0u8; PAGE_SIZE];
            for p in have..npages {
                data.read_exact_at(&mut page, p * PAGE)?;
                sums.push(page_sum(&page));
            }
            file.write_all_at(&encode(&sums[have as usize..]), have * SUM)?;
            file.sync_data()?;
        }
        Ok(PageSums { file, sums })
    }

    /// Adds the sums of zero pages up to `npages` pages, durably.
    pub(crate) fn grow(&mut self, npages: u64) -> io::Result<()> {
        let old = self.sums.len() as u64;
        if npages <= old {
            return Ok(());
        }
        let zero = page_sum(&[0u8; PAGE_SIZE]);
        let added = vec![zero; (npages - old) as usize];
        self.file.write_all_at(&encode(&added), old * SUM)?;
        self.file.sync_data()?;
        self.sums.extend(added);
        Ok(())
    }

    /// Checks whole pages read from `first_page` against their sums.
    pub(crate) fn verify(&self, first_page: u64, pages: &[u8]) -> Result<(), Mismatch> {
        for (i, page) in pages.chunks_exact(PAGE_SIZE).enumerate() {
            let p = first_page + i as u64;
            let read = page_sum(page);
            let stored = self.sums.get(p as usize).copied().unwrap_or(!read);
            if stored != read {
                return Err(Mismatch {
                    page: p,
                    stored,
                    read,
                });
            }
        }
        Ok(())
    }

    /// Records the sums of whole pages written from `first_page` (not synced: see
    /// [`PageSums::sync`]).
    pub(crate) fn update(&mut self, first_page: u64, pages: &[u8]) -> io::Result<()> {
        let new: Vec<u32> = pages.chunks_exact(PAGE_SIZE).map(page_sum).collect();
        let end = first_page as usize + new.len();
        if end > self.sums.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "pages up to {end} written, sums held for {}",
                    self.sums.len()
                ),
            ));
        }
        self.file.write_all_at(&encode(&new), first_page * SUM)?;
        self.sums[first_page as usize..end].copy_from_slice(&new);
        Ok(())
    }

    /// Makes the written sums durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; PAGE_SIZE]
    }

    #[test]
    fn a_changed_page_is_caught_and_its_sum_survives_reloading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000.sums");
        let mut sums = PageSums::create(&path, 4).unwrap();
        assert_eq!(sums.verify(0, &page(0).repeat(4)), Ok(()));
        sums.update(2, &page(7)).unwrap();
        assert_eq!(sums.verify(2, &page(7)), Ok(()));
        let mut flipped = page(7);
        flipped[100] ^= 0x10;
        let err = sums.verify(1, &[page(0), flipped].concat()).unwrap_err();
        assert_eq!(err.page, 2);
        assert_eq!(err.stored, page_sum(&page(7)));

        let data = dir.path().join("0000.data");
        std::fs::write(&data, [page(0), page(0), page(7), page(0)].concat()).unwrap();
        let reloaded = PageSums::load(&path, 4, &File::open(&data).unwrap()).unwrap();
        assert_eq!(reloaded.sums, sums.sums);
        assert_eq!(reloaded.verify(3, &page(1)).unwrap_err().page, 3);
    }

    #[test]
    fn missing_sums_are_rebuilt_from_the_data_and_growing_adds_zero_pages() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("0000.data");
        std::fs::write(&data, [page(1), page(2), page(3)].concat()).unwrap();
        let path = dir.path().join("0000.sums");
        std::fs::write(&path, page_sum(&page(1)).to_le_bytes()).unwrap();
        let mut sums = PageSums::load(&path, 3, &File::open(&data).unwrap()).unwrap();
        assert_eq!(
            sums.verify(0, &[page(1), page(2), page(3)].concat()),
            Ok(())
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 12);
        sums.grow(5).unwrap();
        assert_eq!(sums.verify(3, &page(0).repeat(2)), Ok(()));
        assert!(sums.update(4, &page(9).repeat(2)).is_err(), "past the end");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 20);
    }
}
