//! The page state machine of the memory manager (thesis IV.2.2, Fig. 4.14; requirements D6-D12):
//! a pure function from a page's state and an event to its next state and the actions the pager
//! must carry out. No I/O; the daemon wires the actions to userfaultfd, the memfd, the paging
//! partition and the journal.
//!
//! # States (one per page of a cluster, for the single image on this site)
//! | state | where the current image is | mapped as |
//! |---|---|---|
//! | `None` | nowhere: the cluster is new, the page is zero | not mapped |
//! | `MapNone` | in storage only | not mapped |
//! | `Read` | in memory, equal to storage (clean) | write-protected |
//! | `KWrite` | in memory, modified since the last commit (dirty) | writable |
//! | `SWrite` | in the paging partition only (dirty, evicted) | not mapped |
//! | `Clean` | transient: a commit is copying the dirty page into the journal | write-protected |
//! | `Flush` | transient: an eviction is copying the dirty page to the paging partition | write-protected |
//! | `Beyond` | past the end of the cluster: not part of it (yet) | not mapped |
//!
//! Two rules carry the design. A page is mapped writable only in `KWrite`, so every modification
//! is known to the pager (the first write to a clean page is a write-protect fault). And
//! uncommitted data only ever goes to the paging partition, never to storage
//! (`CopyToJournal` happens only on `Commit`).
//!
//! # From Mach's external pager protocol to userfaultfd
//! | Mach message (thesis) | here |
//! |---|---|
//! | `memory_object_data_request` | a userfaultfd fault, MISSING or MINOR: [`Event::ReadFault`] / [`Event::WriteFault`] |
//! | `memory_object_data_supply` | fill the memfd page (zero, storage or paging partition) and `UFFDIO_CONTINUE`, with `MODE_WP` for a read: [`Action::Supply`], [`Action::MapResident`] |
//! | `memory_object_data_unlock` | a write-protect fault (flags WRITE\|WP): [`Event::WpFault`], answered by `UFFDIO_WRITEPROTECT` mode 0: [`Action::Unprotect`] |
//! | `memory_object_lock_request` | `UFFDIO_WRITEPROTECT` (WP) in every mapper: [`Action::WriteProtect`] |
//! | `memory_object_lock_completed` | that ioctl returning (it is synchronous) |
//! | `memory_object_data_return` | none: Linux never returns dirty shmem pages, so the pager reads them from the memfd itself: [`Action::CopyToPaging`], [`Action::CopyToJournal`] |
//! | `memory_object_terminate` | the last unmap on the site: commit every dirty page, then drop the cluster's memory: [`Event::Release`] |
//! | (eviction by the kernel) | the pager owns the resident set: [`Event::Evict`], `fallocate(PUNCH_HOLE)` on the memfd: [`Action::Drop`] |

/// Where a page being committed is: in memory or in the paging partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Residence {
    /// In the memfd.
    Memory,
    /// In the paging partition.
    Paging,
}

/// The state of one page (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageState {
    /// New cluster, never touched: the page is zero.
    None,
    /// The image is in storage only.
    MapNone,
    /// Resident and clean, mapped write-protected.
    Read,
    /// Resident and dirty, mapped writable.
    KWrite,
    /// Dirty, in the paging partition only.
    SWrite,
    /// Transient: the dirty page is being copied into the journal by a commit.
    Clean(Residence),
    /// Transient: the dirty page is being copied to the paging partition by an eviction.
    Flush,
    /// Past the end of the cluster: the page does not exist (yet). A fault there is refused;
    /// growing the cluster brings it in as a new zero page.
    Beyond,
}

/// What happens to a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A read access to a page the faulting process has not mapped (MISSING or MINOR).
    ReadFault,
    /// A write access to a page the faulting process has not mapped (MISSING or MINOR).
    WriteFault,
    /// A write to a page mapped write-protected (`data_unlock`).
    WpFault,
    /// The pager reclaims the page's memory (over the resident budget).
    Evict,
    /// The eviction's copy to the paging partition is done.
    FlushDone,
    /// The eviction's copy failed (the paging partition is full): the page stays resident.
    FlushFailed,
    /// `clu_Commit` (or the last unmap) starts writing the cluster back.
    Commit,
    /// The journal operation holding the page is validated.
    CommitDone,
    /// The commit failed (no space, I/O error): the page stays dirty.
    CommitFailed,
    /// `clu_Abort`: discard every modification since the last commit.
    Abort,
    /// The last mapper on the site is gone and every page was committed or aborted: the image's
    /// memory is given back (`memory_object_terminate`); the page is in storage only.
    Release,
    /// The cluster grows over the page (`clu_Resize`): it becomes a new zero page.
    Grow,
}

/// Where the page images for a supply come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A zero page.
    Zero,
    /// The cluster's storage image.
    Storage,
    /// The page's slot in the paging partition.
    Paging,
}

/// What the pager must do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Fill the memfd page from `source` and map it in the faulting process, write-protected if
    /// `wp` (`UFFDIO_CONTINUE` with or without `MODE_WP`).
    Supply {
        /// Where the data comes from.
        source: Source,
        /// Map it write-protected.
        wp: bool,
    },
    /// The page is in the memfd already: map it in the faulting process (`UFFDIO_CONTINUE`).
    MapResident {
        /// Map it write-protected.
        wp: bool,
    },
    /// Let the write proceed: clear the write protection in the faulting process.
    Unprotect,
    /// Write-protect the page in every process mapping it, so that a copy of it is stable.
    WriteProtect,
    /// Copy the page (from memory or from its paging slot) into the commit's journal operation.
    CopyToJournal(Residence),
    /// Copy the page to a slot of the paging partition.
    CopyToPaging,
    /// Release the page's paging slot.
    FreeSlot,
    /// Remove the page from the memfd (and so from every mapping).
    Drop,
    /// Hold the fault; replay it after the transient state ends (never drop it).
    Defer,
}

/// A state-event pair that cannot happen; the daemon reports it as a bug or refuses the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The operation waits for a commit or an eviction of this page to finish.
    #[error("page is busy ({0:?} in progress); retry when it completes")]
    Busy(PageState),
    /// The event cannot happen in this state (e.g. a write-protect fault on an unmapped page).
    #[error("event {1:?} cannot happen in state {0:?}")]
    Impossible(PageState, Event),
}

/// The outcome of an event: the next state and the actions, in order.
pub type Step = Result<(PageState, &'static [Action]), Invalid>;

/// The transition function.
pub fn step(state: PageState, event: Event) -> Step {
    use Action::*;
    use Event::*;
    use PageState as S;
    const WP: bool = true;
    let ok = |s: PageState, a: &'static [Action]| Ok((s, a));
    match (state, event) {
        // A new page: the first access gets a zero page, writable (thesis D7).
        (S::None, ReadFault | WriteFault) => ok(
            S::KWrite,
            &[Supply {
                source: Source::Zero,
                wp: !WP,
            }],
        ),
        (S::None, Commit | Abort) => ok(S::None, &[]),

        // In storage: a read maps it write-protected, so that the first write is seen (D8).
        (S::MapNone, ReadFault) => ok(
            S::Read,
            &[Supply {
                source: Source::Storage,
                wp: WP,
            }],
        ),
        (S::MapNone, WriteFault) => ok(
            S::KWrite,
            &[Supply {
                source: Source::Storage,
                wp: !WP,
            }],
        ),
        (S::MapNone, Commit | Abort) => ok(S::MapNone, &[]),

        // Clean and resident (D10).
        (S::Read, ReadFault) => ok(S::Read, &[MapResident { wp: WP }]),
        (S::Read, WriteFault) => ok(S::KWrite, &[MapResident { wp: !WP }]),
        (S::Read, WpFault) => ok(S::KWrite, &[Unprotect]),
        (S::Read, Evict) => ok(S::MapNone, &[Drop]),
        (S::Read, Commit | Abort) => ok(S::Read, &[]),

        // Dirty and resident (D9).
        (S::KWrite, ReadFault | WriteFault) => ok(S::KWrite, &[MapResident { wp: !WP }]),
        (S::KWrite, WpFault) => ok(S::KWrite, &[Unprotect]),
        (S::KWrite, Evict) => ok(S::Flush, &[WriteProtect, CopyToPaging]),
        (S::KWrite, Commit) => ok(
            S::Clean(Residence::Memory),
            &[WriteProtect, CopyToJournal(Residence::Memory)],
        ),
        (S::KWrite, Abort) => ok(S::MapNone, &[Drop]),

        // Dirty, in the paging partition (D11): it comes back dirty, so writable.
        (S::SWrite, ReadFault | WriteFault) => ok(
            S::KWrite,
            &[
                Supply {
                    source: Source::Paging,
                    wp: !WP,
                },
                FreeSlot,
            ],
        ),
        (S::SWrite, Commit) => ok(
            S::Clean(Residence::Paging),
            &[CopyToJournal(Residence::Paging)],
        ),
        (S::SWrite, Abort) => ok(S::MapNone, &[FreeSlot]),

        // Commit in progress (D12 Clean): reads of a resident page go on, writes wait for the
        // copy (a fault that arrives during write-back is queued, never dropped).
        (S::Clean(Residence::Memory), ReadFault) => ok(state, &[MapResident { wp: WP }]),
        (S::Clean(Residence::Memory), WriteFault | WpFault) => ok(state, &[Defer]),
        (S::Clean(Residence::Paging), ReadFault | WriteFault) => ok(state, &[Defer]),
        (S::Clean(Residence::Memory), CommitDone) => ok(S::Read, &[]),
        (S::Clean(Residence::Paging), CommitDone) => ok(S::MapNone, &[FreeSlot]),
        (S::Clean(Residence::Memory), CommitFailed) => ok(S::KWrite, &[]),
        (S::Clean(Residence::Paging), CommitFailed) => ok(S::SWrite, &[]),

        // Eviction in progress (D12 Flush): every fault waits for the copy.
        (S::Flush, ReadFault | WriteFault | WpFault) => ok(state, &[Defer]),
        (S::Flush, FlushDone) => ok(S::SWrite, &[Drop]),
        (S::Flush, FlushFailed) => ok(S::KWrite, &[]),

        // The end of the image (the last unmap): clean pages leave memory. A dirty page must be
        // committed or aborted first; a transient one waits.
        (S::None | S::MapNone, Release) => ok(S::MapNone, &[]),
        (S::Read, Release) => ok(S::MapNone, &[Drop]),

        // Growth: a page past the end becomes a new zero page.
        (S::Beyond, Grow) => ok(S::None, &[]),

        (S::Clean(_) | S::Flush, Commit | Abort | Evict | Release) => Err(Invalid::Busy(state)),
        _ => Err(Invalid::Impossible(state, event)),
    }
}

/// Every state, for exhaustive tests and tools.
pub const STATES: [PageState; 9] = [
    PageState::None,
    PageState::MapNone,
    PageState::Read,
    PageState::KWrite,
    PageState::SWrite,
    PageState::Clean(Residence::Memory),
    PageState::Clean(Residence::Paging),
    PageState::Flush,
    PageState::Beyond,
];

/// Every event.
pub const EVENTS: [Event; 12] = [
    Event::ReadFault,
    Event::WriteFault,
    Event::WpFault,
    Event::Evict,
    Event::FlushDone,
    Event::FlushFailed,
    Event::Commit,
    Event::CommitDone,
    Event::CommitFailed,
    Event::Abort,
    Event::Release,
    Event::Grow,
];

impl PageState {
    /// Whether the page's memory is in the memfd.
    pub fn resident(self) -> bool {
        matches!(
            self,
            PageState::Read
                | PageState::KWrite
                | PageState::Clean(Residence::Memory)
                | PageState::Flush
        )
    }

    /// Whether the page holds modifications not yet in storage.
    pub fn dirty(self) -> bool {
        matches!(
            self,
            PageState::KWrite | PageState::SWrite | PageState::Clean(_) | PageState::Flush
        )
    }

    /// Whether the page has a slot in the paging partition.
    pub fn has_slot(self) -> bool {
        matches!(
            self,
            PageState::SWrite | PageState::Clean(Residence::Paging)
        )
    }
}

#[cfg(test)]
mod tests;
