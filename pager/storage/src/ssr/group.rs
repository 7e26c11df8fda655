//! Commit groups: the batches of several clusters of one volume in one journal group (thesis
//! I14: all or nothing), with the commit locks of the clusters taken in cluster order; and this
//! volume's part of a group across volumes (two-phase commit): a prepared journal group, the
//! decision, and the coordinator's decisions file.

use clu_proto::{CluId, VolId, PAGE_SIZE};
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

impl LocalVolume {
    /// [`crate::Volume::clu_prepare_group`].
    pub fn prepare_group(
        &self,
        ops: Vec<(CluId, Batch)>,
        txid: u64,
        coordinator: VolId,
    ) -> Result<()> {
        let mut group = Vec::with_capacity(ops.len());
        for (clu, batch) in ops {
            let c = self.clusters.get(clu)?;
            let desc = *lock(&c.desc);
            for run in batch.runs() {
                self.range(&desc, run.first_page, run.pages.len())?;
            }
            group.push((desc.id.0, batch));
        }
        self.with_journal(|j| Ok(j.prepare_group(group, txid, u32::from(coordinator.0))?))?;
        Ok(())
    }

    /// Decides the prepared groups a crash left in doubt, from their coordinators' decisions
    /// files (presumed abort: a transaction not found there was not decided to commit). A
    /// coordinator volume that is gone leaves its groups undecidable: refused, with what to
    /// do.
    pub(super) fn resolve_in_doubt(&self) -> Result<()> {
        let doubts = self.with_journal(|j| Ok(j.in_doubt()))?;
        for (txid, coordinator) in doubts {
            let coordinator = VolId(coordinator as u16);
            let dir = self
                .location
                .with_file_name(format!("vol-{coordinator}"))
                .join("journal");
            if !dir.join("anchor").exists() {
                return Err(StorageError::Invalid(format!(
                    "volume {} holds a commit group (transaction {txid:#x}) prepared for \
                     coordinator volume {coordinator}, which is not found at {}; put that \
                     volume back (its decision decides this group) before mounting this one",
                    self.vol,
                    dir.display()
                )));
            }
            let commit = journal::decisions::committed(&dir)?.contains(&txid);
            self.with_journal(|j| Ok(j.decide(txid, commit)?))?;
            tracing::info!(vol = %self.vol, txid = format!("{txid:#x}"), %coordinator, commit,
                "a commit group left in doubt by a crash is decided");
        }
        Ok(())
    }
}
