//! Where a backup resumes (thesis VII.3.4): a pure decision over the backup's reported
//! [`Position`] and the primary's history, tested exhaustively below.
//!
//! A primary's history is its epoch, the origin it took over from (the image it was restored
//! from; epoch 0 and LSN 0 for a volume created empty) and its journal, which starts at file
//! `origin.file + 1`. A backup can be fed from the journal when its image is complete and
//! either sits exactly at the origin, or at a position of this history that the journal has not
//! passed. At the origin of a restored volume, only the backup it was fetched from qualifies:
//! a backup records its position just after it applies an operation, so a crash between the
//! two leaves an image one operation ahead of its position; the source's image is the restored
//! volume whatever it holds, another backup at the same position may differ from it. Anything else (an interrupted copy, an image of another history, one ahead of the
//! primary, or one past what this run of the primary validated or sent it: it may hold an
//! operation the primary lost in a machine crash before its sync, since operations are sent as
//! soon as they are written) needs a full copy. Whether the journal still holds the files from that position on
//! is the journal's to say (its retention); if not, a full copy too.

use journal::{Lsn, PAGE_SIZE};

use crate::position::Position;

/// The primary's side of the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct History {
    /// The primary's epoch.
    pub epoch: u64,
    /// What its journal continues: an epoch and an LSN of that epoch's journal.
    pub origin: (u64, Lsn),
    /// The end of its log now (what was written, validated or not).
    pub log_end: Lsn,
    /// How far this run of the primary (since it mounted the volume) knows the backup's
    /// image to be of this history: where its log ended when it mounted, or further if it
    /// sent this backup more since. Operations are sent as soon as they are written, before
    /// their sync; an image past this point may hold one that a machine crash took from the
    /// primary's log before it was validated, and the primary has since written others there.
    pub trusted_end: Lsn,
}

/// Whether the backup is the one a restored volume was fetched from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provenance {
    /// It is the source (or the volume was created empty, with no source).
    Source,
    /// It is another backup.
    Other,
}

impl History {
    /// The first position of this history's journal.
    pub fn first(&self) -> Lsn {
        Lsn::new(self.origin.1.file + 1, PAGE_SIZE as u64)
    }
}

/// How to bring a backup up to date.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Send the journal's operations from this LSN on.
    FromLog(Lsn),
    /// Copy every cluster, then the journal from where the copy was taken; why.
    FullCopy(&'static str),
}

/// Decides where a backup at `backup` resumes.
pub fn resume(backup: Position, history: History, provenance: Provenance) -> Resume {
    if !backup.complete {
        return Resume::FullCopy("its image is incomplete (a full copy was interrupted)");
    }
    if (backup.epoch, backup.lsn) == history.origin {
        return match provenance {
            Provenance::Source => Resume::FromLog(history.first()),
            Provenance::Other => {
                Resume::FullCopy("the volume was restored from another backup's image")
            }
        };
    }
    if backup.epoch != history.epoch {
        return Resume::FullCopy(if backup.epoch == 0 {
            "it holds nothing of this volume yet"
        } else {
            "its image comes from another primary's history (an older epoch)"
        });
    }
    if backup.lsn < history.first() {
        return Resume::FullCopy("its position is before this journal's start");
    }
    if backup.lsn > history.log_end {
        return Resume::FullCopy("it is ahead of this primary's log");
    }
    if backup.lsn > history.trusted_end {
        return Resume::FullCopy(
            "it may hold an operation this primary lost in a crash before validating it",
        );
    }
    Resume::FromLog(backup.lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE as u64;

    fn pos(epoch: u64, file: u64, offset: u64, complete: bool) -> Position {
        Position {
            epoch,
            lsn: Lsn::new(file, offset),
            complete,
        }
    }

    #[test]
    fn a_fresh_volume_feeds_a_fresh_backup_from_its_first_record() {
        let h = History {
            epoch: 1,
            origin: (0, Lsn::default()),
            log_end: Lsn::new(3, 5 * P),
            trusted_end: Lsn::new(3, 5 * P),
        };
        assert_eq!(
            resume(pos(0, 0, 0, true), h, Provenance::Source),
            Resume::FromLog(Lsn::new(1, P))
        );
        assert_eq!(
            resume(pos(1, 2, 7 * P, true), h, Provenance::Source),
            Resume::FromLog(Lsn::new(2, 7 * P))
        );
        assert_eq!(
            resume(pos(1, 3, 5 * P, true), h, Provenance::Source),
            Resume::FromLog(h.log_end)
        );
        assert!(matches!(
            resume(pos(1, 3, 6 * P, true), h, Provenance::Source),
            Resume::FullCopy(_)
        ));
        assert!(matches!(
            resume(pos(0, 0, 0, false), h, Provenance::Source),
            Resume::FullCopy(_)
        ));
    }

    #[test]
    fn a_restored_volume_continues_from_its_origin_only() {
        // Restored from an image of epoch 1 at 4/12P; now epoch 2, journal from file 5.
        let h = History {
            epoch: 2,
            origin: (1, Lsn::new(4, 12 * P)),
            log_end: Lsn::new(6, 3 * P),
            trusted_end: Lsn::new(6, 3 * P),
        };
        assert_eq!(
            resume(pos(1, 4, 12 * P, true), h, Provenance::Source),
            Resume::FromLog(Lsn::new(5, P))
        );
        // Behind the origin, past it in the old history, or an empty backup: a copy.
        for b in [
            pos(1, 4, 11 * P, true),
            pos(1, 4, 13 * P, true),
            pos(1, 5, 2 * P, true),
            pos(0, 0, 0, true),
            pos(2, 4, 12 * P, true),
            pos(3, 5, P, true),
        ] {
            assert!(
                matches!(resume(b, h, Provenance::Source), Resume::FullCopy(_)),
                "{b:?}"
            );
        }
        assert_eq!(
            resume(pos(2, 5, 9 * P, true), h, Provenance::Source),
            Resume::FromLog(Lsn::new(5, 9 * P))
        );
    }

    #[test]
    fn every_small_case_is_decided_consistently() {
        // Exhaustive over small epochs and positions: FromLog is only ever a position of this
        // history inside the journal, and the origin maps to the journal's start.
        for origin_epoch in 0..3u64 {
            for epoch in origin_epoch + 1..origin_epoch + 3 {
                for origin_file in 0..3u64 {
                    let origin = (origin_epoch, Lsn::new(origin_file, origin_file * P));
                    let log_end = Lsn::new(origin_file + 2, 4 * P);
                    for trusted_end in [log_end, Lsn::new(origin_file + 1, 3 * P)] {
                        let h = History {
                            epoch,
                            origin,
                            log_end,
                            trusted_end,
                        };
                        for be in 0..5u64 {
                            for bf in 0..6u64 {
                                for bo in 0..6u64 {
                                    for complete in [false, true] {
                                        let b = pos(be, bf, bo * P, complete);
                                        if complete && (be, b.lsn) == origin {
                                            // Only the source is trusted at the origin.
                                            assert!(matches!(
                                                resume(b, h, Provenance::Other),
                                                Resume::FullCopy(_)
                                            ));
                                        }
                                        match resume(b, h, Provenance::Source) {
                                            Resume::FromLog(at) => {
                                                assert!(complete);
                                                assert!(
                                                    at >= h.first() && at <= h.log_end,
                                                    "{b:?} {h:?}"
                                                );
                                                if (be, b.lsn) == origin {
                                                    assert_eq!(at, h.first());
                                                } else {
                                                    assert_eq!((be, at), (epoch, b.lsn));
                                                    assert!(at <= h.trusted_end, "{b:?} {h:?}");
                                                }
                                            }
                                            Resume::FullCopy(_) => assert!(
                                                !complete
                                                    || ((be, b.lsn) != origin
                                                        && (be != epoch
                                                            || b.lsn < h.first()
                                                            || b.lsn > h.trusted_end)),
                                                "{b:?} {h:?}"
                                            ),
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_backup_past_what_this_run_validated_or_sent_it_is_copied() {
        // The primary came back with its log ending at 2/4P (a machine crash took an
        // operation it had sent to the backup, 2/4P..2/9P, before its sync) and has since
        // written up to 2/12P: the backup's image at 2/9P is not of this history.
        let h = History {
            epoch: 1,
            origin: (0, Lsn::default()),
            log_end: Lsn::new(2, 12 * P),
            trusted_end: Lsn::new(2, 4 * P),
        };
        assert!(matches!(
            resume(pos(1, 2, 9 * P, true), h, Provenance::Source),
            Resume::FullCopy(_)
        ));
        assert_eq!(
            resume(pos(1, 2, 4 * P, true), h, Provenance::Source),
            Resume::FromLog(Lsn::new(2, 4 * P))
        );
        // Once this run sent it up to 2/9P itself, a reconnection resumes there.
        let h = History {
            trusted_end: Lsn::new(2, 9 * P),
            ..h
        };
        assert_eq!(
            resume(pos(1, 2, 9 * P, true), h, Provenance::Source),
            Resume::FromLog(Lsn::new(2, 9 * P))
        );
    }
}
