//! Runs of consecutive pages: the one place a sorted list of pages becomes the ranges that
//! system calls and journal operations take.

/// The runs of consecutive page numbers in `pages`, in their order, each at most `max` pages
/// long: `(first, count)`. A sorted list gives its ranges; an access history (in the order
/// pages came in) gives the stretches read in one go.
pub fn page_runs(pages: &[u64], max: u64) -> PageRuns<'_> {
    PageRuns {
        pages,
        max: max.max(1),
    }
}

/// The iterator of [`page_runs`].
#[derive(Clone, Debug)]
pub struct PageRuns<'a> {
    pages: &'a [u64],
    max: u64,
}

impl Iterator for PageRuns<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let (&first, _) = self.pages.split_first()?;
        let mut n = 1;
        while (n as usize) < self.pages.len() && n < self.max && self.pages[n as usize] == first + n
        {
            n += 1;
        }
        self.pages = &self.pages[n as usize..];
        Some((first, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn runs_split_at_gaps_and_at_the_cap() {
        let r: Vec<_> = page_runs(&[1, 2, 3, 7, 8, 10], u64::MAX).collect();
        assert_eq!(r, vec![(1, 3), (7, 2), (10, 1)]);
        let r: Vec<_> = page_runs(&[0, 1, 2, 3, 4], 2).collect();
        assert_eq!(r, vec![(0, 2), (2, 2), (4, 1)]);
        assert_eq!(page_runs(&[], 4).count(), 0);
        let r: Vec<_> = page_runs(&[5, 6, 7, 2, 3, 9], u64::MAX).collect();
        assert_eq!(r, vec![(5, 3), (2, 2), (9, 1)], "in the order given");
    }

    proptest! {
        #[test]
        fn runs_cover_every_page_once_in_order(
            set in proptest::collection::btree_set(0u64..200, 0..80),
            max in 1u64..10,
        ) {
            let pages: Vec<u64> = set.into_iter().collect();
            let mut back = Vec::new();
            for (first, n) in page_runs(&pages, max) {
                prop_assert!(n >= 1 && n <= max);
                back.extend(first..first + n);
            }
            prop_assert_eq!(back, pages);
        }
    }
}
