//! Commit groups of one volume: the batches of several clusters in one journal group (thesis
//! I14: all or nothing), with the commit locks of the clusters taken in cluster order.

use clu_proto::{CluId, PAGE_SIZE};
use clu_sys::buf::PageBuf;
use clu_sys::sync::lock;
use journal::{Batch, Lsn};

use super::{note_page, LocalVolume, NOTE};
use crate::{Result, StorageError};

impl LocalVolume {
    /// [`Volume::clu_commit_group`], with an optional note page written last in the group
    /// (the backups' position, stored atomically with the pages: see
    /// [`LocalVolume::clu_commit_noted`]).
    pub fn clu_commit_group_noted(
        &self,
        ops: Vec<(CluId, Batch)>,
        note: Option<&[u8]>,
    ) -> Result<Lsn> {
        if ops.is_empty() {
            return Err(StorageError::Invalid("an empty commit group".into()));
        }
        let mut clusters = Vec::with_capacity(ops.len());
        for (clu, batch) in &ops {
            let c = self.clusters.get(*clu)?;
            let desc = *lock(&c.desc);
            for run in batch.runs() {
                self.range(&desc, run.first_page, run.pages.len())?;
            }
            clusters.push((desc.id.0, c));
        }
        // Each cluster's commit lock, taken in cluster order (the lock order of a group).
        let mut order: Vec<usize> = (0..clusters.len()).collect();
        order.sort_by_key(|&i| clusters[i].0);
        if order
            .windows(2)
            .any(|w| clusters[w[0]].0 == clusters[w[1]].0)
        {
            return Err(StorageError::Invalid(
                "a cluster named twice in one commit group".into(),
            ));
        }
        let _serial: Vec<_> = order.iter().map(|&i| lock(&clusters[i].1.commit)).collect();
        let mut group: Vec<(u32, Batch)> = clusters
            .iter()
            .zip(ops)
            .map(|((id, _), (_, batch))| (*id, batch))
            .collect();
        if let Some(note) = note {
            let mut page = PageBuf::zeroed(PAGE_SIZE);
            page.copy_from_slice(&note_page(note)?);
            let mut note_batch = Batch::new(page);
            note_batch.push(0, 0, 1)?;
            group.push((NOTE, note_batch));
        }
        let lsns = self.with_journal(|j| Ok(j.commit_group(group)?))?;
        Ok(lsns.last().copied().unwrap_or_default())
    }
}
