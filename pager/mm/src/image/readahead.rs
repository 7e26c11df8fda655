//! Read-ahead for faults served from storage: resolve several pages per fault, adapting to the
//! access pattern. A fault that continues the previous run doubles the window (up to
//! [`MAX_WINDOW`]); any other fault starts over with a read-around of [`MIN_WINDOW`] pages
//! aligned on the window, as the kernel's file pager does. Pure: the image clips the window to
//! the pages still in storage only and carries it out.

/// The read-around of a fault that does not continue a run.
pub const MIN_WINDOW: u64 = 16;
/// The largest run read for one fault (2 MiB).
pub const MAX_WINDOW: u64 = 512;
/// Around a fault that starts over, the storage service is asked to read this many pages into
/// its cache in the background (`clu_prefetch`), as the kernel's read-around does for a file
/// mapping: later faults nearby then copy from memory instead of waiting for the disk.
pub const AROUND: u64 = 512;

/// The read-ahead state of one image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readahead {
    /// The page right after the last run.
    next: u64,
    /// The last window, 0 before the first fault.
    window: u64,
}

impl Readahead {
    /// The pages `[lo, hi)` to read for a fault at `page`, with at most `cap` pages.
    pub fn plan(&mut self, page: u64, cap: u64) -> (u64, u64) {
        let sequential = self.window > 0 && page == self.next;
        self.window = if sequential {
            (self.window * 2).min(MAX_WINDOW)
        } else {
            MIN_WINDOW
        };
        let w = self.window.min(cap).max(1);
        if sequential {
            (page, page + w)
        } else {
            let lo = page / w * w;
            (lo, lo + w)
        }
    }

    /// Whether the last plan started over (a random fault).
    pub fn started_over(&self) -> bool {
        self.window == MIN_WINDOW
    }

    /// Records where the run actually ended.
    pub fn ran_to(&mut self, end: u64) {
        self.next = end;
    }
}

/// The most pages one write-protect fault makes writable (1 MiB).
pub const MAX_WRITE_RUN: u64 = 256;

/// Consecutive first writes, one page each, before a run grows: a writer must show a
/// sequential pattern first, so that scattered writes never make pages nobody writes dirty.
pub const WRITE_STREAK: u64 = 4;

/// Write-around for first writes to clean pages in the default (write-protect) mode: once
/// [`WRITE_STREAK`] write-protect faults in a row each continued the previous one, every
/// further one doubles the run (up to [`MAX_WRITE_RUN`]); any other fault starts over with
/// the faulting page alone. The pages of a run become dirty together, so a sequential writer
/// pays one round trip per run, not per page; a random writer pays exactly what it did; at
/// most a run's worth of pages nobody wrote is committed (with the data it had) and counted
/// as modified. Pure, like [`Readahead`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteRun {
    /// The page right after the last run.
    next: u64,
    /// The last run, 0 before the first fault.
    window: u64,
    /// Faults in a row that continued the previous run.
    streak: u64,
}

impl WriteRun {
    /// The pages `[page, end)` to make writable for a write-protect fault at `page`.
    pub fn plan(&mut self, page: u64) -> (u64, u64) {
        let sequential = self.window > 0 && page == self.next;
        self.streak = if sequential { self.streak + 1 } else { 0 };
        self.window = if sequential && self.streak >= WRITE_STREAK {
            (self.window * 2).min(MAX_WRITE_RUN)
        } else {
            1
        };
        (page, page + self.window)
    }

    /// Records where the run actually ended.
    pub fn ran_to(&mut self, end: u64) {
        self.next = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_first_writes_grow_the_run_and_a_jump_starts_over() {
        let mut w = WriteRun::default();
        // A streak of single pages first.
        for p in 10..10 + WRITE_STREAK {
            assert_eq!(
                w.plan(p),
                (p, p + 1),
                "page {p}: one page while the streak builds"
            );
            w.ran_to(p + 1);
        }
        let mut end = 10 + WRITE_STREAK;
        assert_eq!(w.plan(end), (end, end + 2), "then the run doubles");
        end += 2;
        w.ran_to(end);
        assert_eq!(w.plan(end), (end, end + 4));
        end += 4;
        w.ran_to(end);
        for _ in 0..20 {
            let (a, b) = w.plan(end);
            assert_eq!(a, end);
            assert!(b - a <= MAX_WRITE_RUN);
            end = b;
            w.ran_to(end);
        }
        assert_eq!(w.plan(end), (end, end + MAX_WRITE_RUN));
        assert_eq!(w.plan(3), (3, 4), "a jump: one page again");
        w.ran_to(4);
        assert_eq!(w.plan(4), (4, 5), "and the streak builds again");
        // Scattered writes, even close together, never make more than their page writable.
        let mut s = WriteRun::default();
        for p in [1u64, 2, 4, 6, 7, 9, 12] {
            assert_eq!(s.plan(p), (p, p + 1));
            s.ran_to(p + 1);
        }
    }

    #[test]
    fn sequential_runs_grow_the_window_and_random_faults_shrink_it() {
        let mut ra = Readahead::default();
        assert_eq!(
            ra.plan(5, 1024),
            (0, 16),
            "first fault: aligned read-around"
        );
        ra.ran_to(16);
        assert_eq!(ra.plan(16, 1024), (16, 48));
        ra.ran_to(48);
        assert_eq!(ra.plan(48, 1024), (48, 112));
        let mut end = 112;
        for _ in 0..10 {
            let (lo, hi) = ra.plan(end, 1024);
            assert_eq!(lo, end);
            assert!(hi - lo <= MAX_WINDOW);
            end = hi;
            ra.ran_to(end);
        }
        assert_eq!(ra.plan(end, 1024), (end, end + MAX_WINDOW));
        assert_eq!(ra.plan(7, 1024), (0, 16), "a jump starts over");
        assert_eq!(ra.plan(100, 4), (100, 104), "the cap holds");
        let mut r = Readahead::default();
        assert_eq!(r.plan(3, 1), (3, 4), "a cap of one page is one page");
    }
}
