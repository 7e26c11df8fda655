//! The commit of a group of images, atomically: one snapshot of them all, one journal group
//! on their volume (thesis I14; a group within one volume needs no two-phase commit).

use std::sync::Arc;

use clu_proto::CluId;
use journal::Batch;

use super::writeback::{Snapshot, Started};
use super::Image;
use crate::error::Refusal;

/// Commits the dirty pages of `images` (distinct, in cluster order, of one volume, none
/// temporary: [`crate::manager::group::check_group`] and the manager see to it) as one atomic
/// group. The commits of every image are serialised first, in the given order; then every
/// image is write-protected and its dirty pages enter their commit before any is copied, so
/// that the pages written are those of one instant for the whole group. Returns the number
/// of pages committed; on an error every page is still dirty and nothing was stored (an
/// error after the journal's write keeps the journal's own rule: it stopped, and the
/// group is replayed whole at the next mount or not at all).
pub fn commit_group(images: &[Arc<Image>]) -> Result<u64, Refusal> {
    let t0 = std::time::Instant::now();
    let Some(first) = images.first() else {
        return Ok(0);
    };
    if let Some(other) = images.iter().find(|i| !i.is_of(&first.vol)) {
        return Err(Refusal::invalid(format!(
            "cluster {} is not on the volume of cluster {}",
            other.id, first.id
        )));
    }
    let _serial: Vec<_> = images.iter().map(|i| i.commit_serial()).collect();
    // The instant of the snapshot: every image write-protected, its dirty pages in commit.
    let started: Vec<Option<Started>> = images.iter().map(|i| i.begin_commit()).collect();
    let mut snaps: Vec<Option<Snapshot>> = Vec::with_capacity(images.len());
    let mut failed = None;
    for (img, s) in images.iter().zip(started) {
        match (s, &failed) {
            (None, _) => snaps.push(None),
            (Some(s), None) => match img.copy_commit(s) {
                Ok(snap) => snaps.push(Some(snap)),
                Err(e) => {
                    failed = Some(e);
                    snaps.push(None);
                }
            },
            // After a failure the rest go back to dirty without being copied.
            (Some(s), Some(_)) => {
                img.cancel_commit(s);
                snaps.push(None);
            }
        }
    }
    let written = match failed {
        Some(e) => Err(e),
        None => {
            let mut ops: Vec<(CluId, Batch)> = Vec::new();
            for (img, snap) in images.iter().zip(snaps.iter_mut()) {
                if let Some(batch) = snap.as_mut().and_then(|s| s.batch.take()) {
                    ops.push((img.id.clu(), batch));
                }
            }
            if ops.is_empty() {
                Ok(())
            } else {
                first
                    .vol
                    .clu_commit_group(ops)
                    .map(drop)
                    .map_err(Refusal::from)
            }
        }
    };
    // Every image ends its commit, whatever the outcome (no page stays in commit).
    let mut pages = 0;
    for (img, snap) in images.iter().zip(&snaps) {
        if let Some(snap) = snap {
            if let Ok(n) = img.end_commit(&snap.dirty, &snap.kept, written.clone(), t0) {
                pages += n;
            }
        }
    }
    written.map(|()| pages)
}
