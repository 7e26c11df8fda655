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

#[cfg(test)]
mod tests {
    use super::*;

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
