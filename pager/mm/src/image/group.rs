//! The commit of a group of images, atomically: one snapshot of them all, one journal group
//! on their volume (thesis I14; a group within one volume needs no two-phase commit), or,
//! across volumes of this site, a two-phase commit whose decision the lowest volume records.

use std::collections::BTreeMap;
use std::sync::Arc;

use clu_proto::{CluId, VolId};
use clu_storage::Volume;
use journal::Batch;
use tracing::{error, warn};

use super::writeback::{Snapshot, Started};
use super::Image;
use crate::error::Refusal;

/// Commits the dirty pages of `images` (distinct, in cluster order, none
/// temporary: [`crate::manager::group::check_group`] and the manager see to it) as one atomic
/// group. The commits of every image are serialised first, in the given order; then every
/// image is write-protected and its dirty pages enter their commit before any is copied, so
/// that the pages written are those of one instant for the whole group. Returns the number
/// of pages committed; on an error every page is still dirty and nothing was stored (an
/// error after the journal's write keeps the journal's own rule: it stopped, and the
/// group is replayed whole at the next mount or not at all).
pub fn commit_group(images: &[Arc<Image>]) -> Result<u64, Refusal> {
    let t0 = std::time::Instant::now();
    if images.is_empty() {
        return Ok(0);
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
            // The batches by volume (each image's own volume object), in volume order.
            let mut by_vol: ByVolume = BTreeMap::new();
            for (img, snap) in images.iter().zip(snaps.iter_mut()) {
                if let Some(batch) = snap.as_mut().and_then(|s| s.batch.take()) {
                    by_vol
                        .entry(img.id.vol())
                        .or_insert_with(|| (img.vol.clone(), Vec::new()))
                        .1
                        .push((img.id.clu(), batch));
                }
            }
            match by_vol.len() {
                0 => Ok(()),
                // One volume: one journal group, no two-phase commit.
                1 => {
                    let (_, (vol, ops)) = by_vol.pop_first().expect("one volume");
                    vol.clu_commit_group(ops).map(drop).map_err(Refusal::from)
                }
                _ => two_phase(by_vol),
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

/// The batches of a group by volume: each volume's object (the images') and its clusters' batches.
type ByVolume = BTreeMap<VolId, (Arc<dyn Volume>, Vec<(CluId, Batch)>)>;

/// A transaction id: random, so that no two groups (of any run, of any site) share one.
fn new_txid() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    u64::from_le_bytes(b)
}

/// Two-phase commit of a group across volumes of this site (presumed abort). Every volume
/// prepares its part in parallel (durable, not applied); the coordinator, the lowest volume,
/// records the decision to commit in its decisions file (the commit point); then every volume
/// applies its part, its decide record not waited for (the decision is kept until they are
/// durable: see `forget`). A failure before the decision aborts every part (nothing is stored); a
/// failure after it does not undo the commit: that volume's journal stops and its next mount
/// applies the part from the coordinator's decision.
fn two_phase(by_vol: ByVolume) -> Result<(), Refusal> {
    let txid = new_txid();
    let coordinator = *by_vol.keys().next().expect("two volumes");
    let vols: Vec<(VolId, Arc<dyn Volume>)> = by_vol
        .iter()
        .map(|(v, (vol, _))| (*v, vol.clone()))
        .collect();
    let prepared: Vec<(VolId, Result<(), clu_storage::StorageError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = by_vol
            .into_iter()
            .map(|(v, (vol, ops))| {
                (
                    v,
                    s.spawn(move || vol.clu_prepare_group(ops, txid, coordinator)),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(v, h)| {
                let r = h.join().unwrap_or_else(|_| {
                    Err(clu_storage::StorageError::Invalid(
                        "a prepare thread panicked".into(),
                    ))
                });
                (v, r)
            })
            .collect()
    });
    let failed = prepared
        .iter()
        .find_map(|(v, r)| r.as_ref().err().map(|e| (*v, e.to_string())));
    let decided = match failed {
        Some((v, e)) => Err(Refusal::from(clu_storage::StorageError::Invalid(format!(
            "the commit group was not committed: volume {v} could not prepare its part: {e}"
        )))),
        None => vols[0].1.record_decision(txid).map_err(Refusal::from),
    };
    if let Err(e) = decided {
        for ((v, vol), (_, r)) in vols.iter().zip(&prepared) {
            if r.is_ok() {
                if let Err(err) = vol.clu_decide_group(txid, false) {
                    warn!(vol = %v, txid = format!("{txid:#x}"), "aborting a prepared part failed: {err}; its next mount aborts it");
                }
            }
        }
        return Err(e);
    }
    // Each part is applied; its decide record is written, not waited for: the decision is
    // durable, and it is kept until every decide record is (see `forget`).
    let mut parts = Vec::with_capacity(vols.len());
    let mut all = true;
    for (v, vol) in &vols {
        match vol.clu_decide_group_unsynced(txid, true) {
            Ok(Some(lsn)) => parts.push((vol.clone(), lsn)),
            Ok(None) => {}
            Err(err) => {
                all = false;
                error!(vol = %v, txid = format!("{txid:#x}"), "a committed group's part could not be applied here: {err}; the volume's journal stopped, its next mount applies it");
            }
        }
    }
    if all {
        super::forget::later(super::forget::Forget {
            txid,
            coordinator: vols[0].1.clone(),
            parts,
        });
    }
    Ok(())
}
