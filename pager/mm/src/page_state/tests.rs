use super::*;
use proptest::prelude::*;
use Event::*;
use PageState as S;

const MEM: Residence = Residence::Memory;
const PAG: Residence = Residence::Paging;

/// The specification, one row per state: the next state for each event in `EVENTS` order
/// (ReadFault, WriteFault, WpFault, Evict, FlushDone, FlushFailed, Commit, CommitDone,
/// CommitFailed, Abort, Release, Grow);
/// `X` = impossible, `B` = busy.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    To(PageState),
    X,
    B,
}
use Want::{To, B, X};

fn spec(state: PageState) -> [Want; 12] {
    match state {
        S::None => [
            To(S::KWrite),
            To(S::KWrite),
            X,
            X,
            X,
            X,
            To(S::None),
            X,
            X,
            To(S::None),
            To(S::MapNone),
            X,
        ],
        S::MapNone => [
            To(S::Read),
            To(S::KWrite),
            X,
            X,
            X,
            X,
            To(S::MapNone),
            X,
            X,
            To(S::MapNone),
            To(S::MapNone),
            X,
        ],
        S::Read => [
            To(S::Read),
            To(S::KWrite),
            To(S::KWrite),
            To(S::MapNone),
            X,
            X,
            To(S::Read),
            X,
            X,
            To(S::Read),
            To(S::MapNone),
            X,
        ],
        S::KWrite => [
            To(S::KWrite),
            To(S::KWrite),
            To(S::KWrite),
            To(S::Flush),
            X,
            X,
            To(S::Clean(MEM)),
            X,
            X,
            To(S::MapNone),
            X,
            X,
        ],
        S::SWrite => [
            To(S::KWrite),
            To(S::KWrite),
            X,
            X,
            X,
            X,
            To(S::Clean(PAG)),
            X,
            X,
            To(S::MapNone),
            X,
            X,
        ],
        S::Clean(MEM) => [
            To(state),
            To(state),
            To(state),
            B,
            X,
            X,
            B,
            To(S::Read),
            To(S::KWrite),
            B,
            B,
            X,
        ],
        S::Clean(PAG) => [
            To(state),
            To(state),
            X,
            B,
            X,
            X,
            B,
            To(S::MapNone),
            To(S::SWrite),
            B,
            B,
            X,
        ],
        S::Flush => [
            To(state),
            To(state),
            To(state),
            B,
            To(S::SWrite),
            To(S::KWrite),
            B,
            X,
            X,
            B,
            B,
            X,
        ],
        S::Beyond => [X, X, X, X, X, X, X, X, X, X, X, To(S::None)],
    }
}

#[test]
fn every_state_event_pair_matches_the_specification() {
    for state in STATES {
        for (event, want) in EVENTS.into_iter().zip(spec(state)) {
            let got = step(state, event);
            match (want, got) {
                (To(s), Ok((n, _))) => assert_eq!(n, s, "{state:?} --{event:?}"),
                (X, Err(Invalid::Impossible(..))) | (B, Err(Invalid::Busy(_))) => {}
                (w, g) => panic!("{state:?} --{event:?}: want {w:?}, got {g:?}"),
            }
        }
    }
}

#[test]
fn the_documented_answers_to_each_fault() {
    let supply = |source, wp| Action::Supply { source, wp };
    assert_eq!(
        step(S::None, ReadFault),
        Ok((S::KWrite, &[supply(Source::Zero, false)][..]))
    );
    assert_eq!(
        step(S::MapNone, ReadFault),
        Ok((S::Read, &[supply(Source::Storage, true)][..]))
    );
    assert_eq!(
        step(S::MapNone, WriteFault),
        Ok((S::KWrite, &[supply(Source::Storage, false)][..]))
    );
    assert_eq!(
        step(S::Read, WpFault),
        Ok((S::KWrite, &[Action::Unprotect][..]))
    );
    assert_eq!(
        step(S::SWrite, ReadFault),
        Ok((
            S::KWrite,
            &[supply(Source::Paging, false), Action::FreeSlot][..]
        ))
    );
    assert_eq!(
        step(S::KWrite, Evict),
        Ok((S::Flush, &[Action::WriteProtect, Action::CopyToPaging][..]))
    );
    assert_eq!(
        step(S::Flush, WpFault),
        Ok((S::Flush, &[Action::Defer][..]))
    );
}

fn invariants(old: PageState, event: Event, new: PageState, actions: &[Action]) {
    let ctx = format!("{old:?} --{event:?}--> {new:?} {actions:?}");
    for a in actions {
        match a {
            // Writable only in KWrite: every modification is known to the pager.
            Action::Supply { wp: false, .. }
            | Action::MapResident { wp: false }
            | Action::Unprotect => {
                assert_eq!(new, S::KWrite, "writable outside KWrite: {ctx}")
            }
            // Uncommitted data reaches storage only through a commit.
            Action::CopyToJournal(_) => assert_eq!(event, Commit, "{ctx}"),
            Action::CopyToPaging => assert_eq!(event, Evict, "{ctx}"),
            Action::Defer => {
                assert_eq!(old, new, "{ctx}");
                assert!(
                    matches!(old, S::Clean(_) | S::Flush),
                    "defer outside a transient state: {ctx}"
                );
                assert!(matches!(event, ReadFault | WriteFault | WpFault), "{ctx}");
            }
            _ => {}
        }
    }
    let has = |x: Action| actions.contains(&x);
    if new.resident() && !old.resident() {
        assert!(
            actions.iter().any(|a| matches!(a, Action::Supply { .. })),
            "resident without supply: {ctx}"
        );
    }
    if old.resident() && !new.resident() {
        assert!(has(Action::Drop), "memory left behind: {ctx}");
    }
    // Modifications are lost only by an abort, and leave the dirty set only once committed.
    if old.dirty() && !new.dirty() {
        assert!(
            matches!(event, Abort | CommitDone),
            "dirty data lost: {ctx}"
        );
    }
    if !old.dirty() && new.dirty() {
        assert!(matches!(event, ReadFault | WriteFault | WpFault), "{ctx}");
    }
    if old.has_slot() && !new.has_slot() && !matches!(new, S::Clean(PAG)) {
        assert!(has(Action::FreeSlot), "paging slot leaked: {ctx}");
    }
    if new.has_slot() && !old.has_slot() {
        assert_eq!(old, S::Flush, "a slot appeared without a flush: {ctx}");
    }
    // The end of an image leaves nothing in memory or in the paging partition, and loses
    // nothing: only clean pages are released.
    if event == Release {
        assert!(!old.dirty(), "a dirty page released: {ctx}");
        assert_eq!(new, S::MapNone, "{ctx}");
    }
    // A page comes into existence only by growth, and as a new zero page.
    if old == S::Beyond {
        assert_eq!((event, new), (Grow, S::None), "{ctx}");
    }
}

#[test]
fn every_transition_keeps_the_invariants() {
    for state in STATES {
        for event in EVENTS {
            if let Ok((new, actions)) = step(state, event) {
                invariants(state, event, new, actions);
            }
        }
    }
}

/// The page's contents, as versions: what storage, memory, the paging slot and a commit's journal
/// copy hold, and what the application last wrote (`current`).
#[derive(Debug)]
struct Model {
    state: PageState,
    storage: u32,
    mem: Option<u32>,
    slot: Option<u32>,
    journal: Option<u32>,
    current: u32,
    next: u32,
}

impl Model {
    fn apply(&mut self, event: Event) -> Result<(), String> {
        let Ok((new, actions)) = step(self.state, event) else {
            return Ok(());
        };
        let old = self.state;
        for a in actions {
            match *a {
                Action::Supply { source, .. } => {
                    let v = match source {
                        Source::Zero => 0,
                        Source::Storage => self.storage,
                        Source::Paging => self.slot.ok_or("supply from an empty slot")?,
                    };
                    if v != self.current {
                        return Err(format!(
                            "{old:?} --{event:?}: supplied version {v}, the application wrote {}",
                            self.current
                        ));
                    }
                    self.mem = Some(v);
                }
                Action::MapResident { .. } => {
                    if self.mem != Some(self.current) {
                        return Err(format!(
                            "{old:?} --{event:?}: mapped {:?}, current {}",
                            self.mem, self.current
                        ));
                    }
                }
                Action::CopyToPaging => {
                    self.slot = Some(self.mem.ok_or("flush of a missing page")?)
                }
                Action::CopyToJournal(MEM) => {
                    self.journal = Some(self.mem.ok_or("commit of a missing page")?)
                }
                Action::CopyToJournal(PAG) => {
                    self.journal = Some(self.slot.ok_or("commit of an empty slot")?)
                }
                Action::FreeSlot => self.slot = None,
                Action::Drop => self.mem = None,
                Action::Unprotect | Action::WriteProtect | Action::Defer => {}
            }
        }
        match event {
            CommitDone => self.storage = self.journal.take().ok_or("commit done without a copy")?,
            CommitFailed => self.journal = None,
            FlushFailed => self.slot = None,
            Abort => self.current = self.storage,
            // A write fault that was answered (not deferred) lets the application write.
            WriteFault | WpFault if !actions.contains(&Action::Defer) => {
                if new != S::KWrite {
                    return Err(format!("{old:?} --{event:?}: write let through in {new:?}"));
                }
                self.next += 1;
                self.current = self.next;
                self.mem = Some(self.current);
            }
            _ => {}
        }
        self.state = new;
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random event sequences from a new page and from a stored page: the application always
    /// reads back what it last wrote, or what the last commit stored after an abort.
    #[test]
    fn random_walks_never_serve_stale_or_torn_data(
        stored: bool,
        events in proptest::collection::vec(0usize..EVENTS.len(), 1..80),
    ) {
        let mut m = Model {
            state: if stored { S::MapNone } else { S::None },
            storage: if stored { 7 } else { 0 },
            mem: None,
            slot: None,
            journal: None,
            current: if stored { 7 } else { 0 },
            next: 100,
        };
        for e in events {
            if let Err(why) = m.apply(EVENTS[e]) {
                prop_assert!(false, "{why}; model {m:?}");
            }
            // Storage only ever holds a committed version: never a version newer than current
            // unless an abort rolled current back to it.
            prop_assert!(m.state.resident() == m.mem.is_some(), "residency out of step: {m:?}");
            prop_assert!(m.state.has_slot() == m.slot.is_some() || m.state == S::Flush, "slot out of step: {m:?}");
        }
    }
}
