//! The chunks of a full copy, the same for a primary feeding a backup and for a backup feeding
//! a restorer.

use clu_proto::PAGE_SIZE;
use clu_storage::ssr::LocalVolume;
use clu_storage::{ClusterDesc, StorageError, Volume};

use crate::wire::{Msg, Run};

/// Pages per message of a full copy.
pub const COPY_CHUNK_PAGES: u64 = 256;

/// The chunks of a full copy of a cluster of `npages` pages: first page and length.
pub fn copy_chunks(npages: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..npages)
        .step_by(COPY_CHUNK_PAGES as usize)
        .map(move |first| (first, COPY_CHUNK_PAGES.min(npages - first)))
}

/// Pages `first..first + n` of cluster `d` as a `CopyPages` message, or `None` if they are
/// all zeros (the receiving side's clusters start zero-filled: such pages need not travel).
pub fn copy_chunk(
    volume: &LocalVolume,
    epoch: u64,
    d: &ClusterDesc,
    first: u64,
    n: u64,
) -> Result<Option<Msg>, StorageError> {
    let mut pages = vec![0u8; n as usize * PAGE_SIZE];
    volume.clu_read(d.id.clu(), first, &mut pages)?;
    Ok(pages.iter().any(|&b| b != 0).then(|| Msg::CopyPages {
        epoch,
        clu: d.id.clu().0,
        runs: vec![Run {
            first_page: first,
            pages,
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_a_cluster_exactly_once() {
        assert_eq!(copy_chunks(0).count(), 0);
        let c: Vec<_> = copy_chunks(2 * COPY_CHUNK_PAGES + 3).collect();
        assert_eq!(
            c,
            vec![
                (0, COPY_CHUNK_PAGES),
                (COPY_CHUNK_PAGES, COPY_CHUNK_PAGES),
                (2 * COPY_CHUNK_PAGES, 3)
            ]
        );
    }
}
