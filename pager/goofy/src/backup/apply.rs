//! What a backup does with each message of a primary's session: operations applied through
//! its own journal, full copies received.

use std::sync::Mutex;

use clu_proto::CluId;
use clu_storage::{StorageError, Volume};
use clu_sys::sync::lock;
use journal::{Batch, Lsn};
use tracing::info;

use super::{BackupError, VolumeImage};
use crate::position::{Heard, Position};
use crate::wire::{Msg, Run};

/// The operations of a group received so far in a session (an atomic commit of several
/// clusters on the primary), stored together when its last operation comes.
#[derive(Default)]
pub(super) struct PendingGroup {
    /// Each operation's cluster and pages.
    ops: Vec<(CluId, Batch)>,
    /// Where the last one received ends: the next must start there.
    end: Option<Lsn>,
}

/// Applies one message of a primary's session (introduced at `session_epoch`); returns the
/// position to acknowledge (`None`: a message not answered). `group` holds the operations of
/// a group not complete yet.
pub(super) fn handle(
    img: &Mutex<VolumeImage>,
    session_epoch: u64,
    msg: Msg,
    group: &mut PendingGroup,
) -> Result<Option<Lsn>, BackupError> {
    let mut img = lock(img);
    let epoch = match &msg {
        Msg::Op { epoch, .. }
        | Msg::Written { epoch, .. }
        | Msg::CopyBegin { epoch, .. }
        | Msg::CopyPages { epoch, .. }
        | Msg::CopyEnd { epoch, .. }
        | Msg::Destroy { epoch, .. } => *epoch,
        other => {
            return Err(BackupError::Protocol(format!(
                "unexpected {} in a primary's session",
                other.kind()
            )))
        }
    };
    // A fence raised during the session (a restoration elsewhere) refuses the rest of it.
    if epoch != session_epoch || epoch < img.state.epoch {
        return Err(BackupError::Stale {
            name: img.state.name.clone(),
            have: img.state.epoch.max(session_epoch),
            got: epoch,
        });
    }
    if group.end.is_some() && !matches!(msg, Msg::Op { .. } | Msg::Written { .. }) {
        return Err(BackupError::Protocol(format!(
            "a {} in the middle of a group of operations",
            msg.kind()
        )));
    }
    let answer = match msg {
        Msg::Op {
            lsn,
            end,
            seq,
            written,
            clu,
            runs,
            group_open,
            ..
        } => {
            let at = img.state.position;
            if !at.complete {
                return Err(BackupError::Protocol(
                    "the image is incomplete: a full copy must come first".into(),
                ));
            }
            if at.epoch == epoch && end <= at.lsn {
                img.state.heard.hear(written);
                // Sent again after a reconnection (an operation inside a group is not
                // answered, held or not).
                return Ok((!group_open).then_some(at.lsn));
            }
            if at.epoch == epoch && lsn < at.lsn {
                return Err(BackupError::Protocol(format!(
                    "operation {lsn}..{end} overlaps position {}",
                    at.lsn
                )));
            }
            if let Some(expected) = group.end {
                if lsn != expected {
                    return Err(BackupError::Protocol(format!(
                        "operation {lsn}..{end} does not follow the group's operation ending \
                         at {expected}"
                    )));
                }
            }
            let id = CluId(clu.clu);
            // The last operation of a group may come without pages (its cluster was
            // destroyed on the primary since): it only ends the group.
            if !runs.is_empty() {
                img.volume.clu_ensure(id, clu.npages, clu.owner, clu.kind)?;
            } else if group.end.is_none() {
                return Err(BackupError::Protocol(format!(
                    "operation {lsn}..{end} has no page and ends no group"
                )));
            }
            let batch = Run::batch(&runs).map_err(StorageError::from)?;
            if group_open {
                group.ops.push((id, batch));
                group.end = Some(end);
                return Ok(None);
            }
            let position = Position {
                epoch,
                lsn: end,
                complete: true,
            };
            // Ordinals count within one run of the primary's journal: what was heard of
            // another run, or of another epoch's primary, no longer counts.
            let mut heard = Heard { seq, written };
            if at.epoch == epoch {
                heard.hear(img.state.heard.written);
            }
            // The pages and the position together, in one sync of the image's journal; a
            // group's operations all together, atomically.
            let note = position.encode_note(&heard);
            if group.end.take().is_some() {
                let mut ops = std::mem::take(&mut group.ops);
                if !batch.is_empty() {
                    ops.push((id, batch));
                }
                img.volume.clu_commit_group_noted(ops, Some(&note))?;
            } else {
                img.volume.clu_commit_noted(id, batch, &note)?;
            }
            img.state.position = position;
            img.state.heard = heard;
            end
        }
        Msg::Written { written, .. } => {
            // Kept in memory: the next operation's note records it; a backup that restarts
            // before knows less, never more.
            if img.state.position.epoch == epoch {
                img.state.heard.hear(written);
            }
            return Ok(None);
        }
        Msg::CopyBegin { clusters, .. } => {
            img.state.position.complete = false;
            img.save_position()?;
            for desc in img.volume.clu_list() {
                img.volume.clu_destroy(desc.id.clu())?;
            }
            for c in clusters {
                img.volume
                    .clu_ensure(CluId(c.clu), c.npages, c.owner, c.kind)?;
            }
            Lsn::default()
        }
        Msg::CopyPages { clu, runs, .. } => {
            if img.state.position.complete {
                return Err(BackupError::Protocol(
                    "pages of a copy that was not begun".into(),
                ));
            }
            img.volume.clu_write(CluId(clu), &Run::page_runs(&runs))?;
            Lsn::default()
        }
        Msg::CopyEnd { position, .. } => {
            if img.state.position.complete {
                return Err(BackupError::Protocol(
                    "the end of a copy that was not begun".into(),
                ));
            }
            img.volume.checkpoint()?;
            img.state.position = Position {
                complete: true,
                ..position
            };
            img.state.heard = Heard::default();
            img.save_position()?;
            info!(name = %img.state.name, position = ?img.state.position, "full copy received");
            position.lsn
        }
        Msg::Destroy { clu, .. } => {
            // Destroyed on the primary: gone here too (told again after a primary's restart,
            // or for a cluster this image never had: nothing to do).
            match img.volume.clu_destroy(CluId(clu)) {
                Ok(()) => {
                    info!(name = %img.state.name, clu, "cluster destroyed on the primary: destroyed here")
                }
                Err(clu_storage::StorageError::NoSuchCluster(_)) => {}
                Err(e) => return Err(e.into()),
            }
            img.state.position.lsn
        }
        _ => unreachable!("filtered above"),
    };
    Ok(Some(answer))
}
