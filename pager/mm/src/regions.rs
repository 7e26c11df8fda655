//! Where a client maps clusters: its regions, and the lookup from a fault address to the
//! cluster page. Each region was announced by the client (`Attach`), so nothing about it is
//! trusted until [`RegionSet::insert`] has checked it against the others.

use std::collections::BTreeMap;

use clu_proto::PAGE_SIZE;
use clu_sys::uffd::Range;

use crate::types::{PageNo, UserAddr};

const PAGE: u64 = PAGE_SIZE as u64;

/// Pages `first_page..first_page+npages` of a cluster, mapped at `base` in a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRegion {
    /// The cluster page at `base`.
    pub first_page: PageNo,
    /// Its length in pages.
    pub npages: u64,
    /// Where the process mapped it.
    pub base: UserAddr,
}

impl UserRegion {
    /// One past its last byte, if that does not wrap around.
    pub fn end(&self) -> Option<UserAddr> {
        self.npages
            .checked_mul(PAGE)
            .and_then(|l| self.base.0.checked_add(l))
            .map(UserAddr)
    }

    /// The cluster page at `addr`, if the region holds it.
    pub fn page_at(&self, addr: UserAddr) -> Option<PageNo> {
        let off = addr.0.checked_sub(self.base.0)? / PAGE;
        (off < self.npages).then(|| self.first_page.plus(off))
    }

    /// The part of pages `first..first+n` this region maps, as an address range.
    pub fn range_of(&self, first: PageNo, n: u64) -> Option<Range> {
        let lo = first.0.max(self.first_page.0);
        let hi = (first.0 + n).min(self.first_page.0 + self.npages);
        (lo < hi).then(|| Range {
            start: self.base.0 + (lo - self.first_page.0) * PAGE,
            len: (hi - lo) * PAGE,
        })
    }
}

/// Why a region was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// No pages, or not at a page boundary.
    #[error("a region at {0} is empty or not page-aligned")]
    Malformed(UserAddr),
    /// Its end is past the address space.
    #[error("a region at {0} wraps around the address space")]
    Wraps(UserAddr),
    /// It overlaps a region already there.
    #[error("a region at {at} of {npages} pages overlaps the region at {other}")]
    Overlaps {
        /// Where the new one starts.
        at: UserAddr,
        /// Its pages.
        npages: u64,
        /// Where the one it overlaps starts.
        other: UserAddr,
    },
}

/// A process's regions, each with what the caller attaches to it (the cluster's image): an
/// overlap-checked insert and a logarithmic lookup by address.
#[derive(Debug)]
pub struct RegionSet<T> {
    by_base: BTreeMap<UserAddr, (UserRegion, T)>,
}

impl<T> Default for RegionSet<T> {
    fn default() -> Self {
        RegionSet {
            by_base: BTreeMap::new(),
        }
    }
}

impl<T> RegionSet<T> {
    /// Adds `region` unless it is malformed or overlaps one already there.
    pub fn insert(&mut self, region: UserRegion, value: T) -> Result<(), RegionError> {
        self.check(&region)?;
        self.by_base.insert(region.base, (region, value));
        Ok(())
    }

    /// Whether `region` could be inserted: not malformed, not overlapping.
    pub fn check(&self, region: &UserRegion) -> Result<(), RegionError> {
        if region.npages == 0 || !region.base.is_page_aligned() {
            return Err(RegionError::Malformed(region.base));
        }
        let end = region.end().ok_or(RegionError::Wraps(region.base))?;
        // The region starting last before `end` is the only one that can overlap.
        if let Some((_, (other, _))) = self.by_base.range(..end).next_back() {
            if other.end().is_some_and(|e| e > region.base) {
                return Err(RegionError::Overlaps {
                    at: region.base,
                    npages: region.npages,
                    other: other.base,
                });
            }
        }
        Ok(())
    }

    /// The region holding `addr`, with its value and the cluster page there.
    pub fn find(&self, addr: UserAddr) -> Option<(&UserRegion, &T, PageNo)> {
        let (_, (r, v)) = self.by_base.range(..=addr).next_back()?;
        r.page_at(addr).map(|p| (r, v, p))
    }

    /// Keeps only the regions for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&UserRegion, &T) -> bool) {
        self.by_base.retain(|_, (r, v)| keep(r, v));
    }

    /// How many regions there are.
    pub fn len(&self) -> usize {
        self.by_base.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_base.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn region(base_page: u64, npages: u64, first: u64) -> UserRegion {
        UserRegion {
            first_page: PageNo(first),
            npages,
            base: UserAddr(base_page * PAGE),
        }
    }

    #[test]
    fn overlaps_wraps_and_malformed_regions_are_refused() {
        let mut s = RegionSet::default();
        s.insert(region(10, 5, 0), 'a').unwrap();
        s.insert(region(20, 5, 5), 'b').unwrap();
        s.insert(region(15, 5, 0), 'c').unwrap(); // exactly between: touching is fine
        for (base, n) in [(12, 1), (9, 2), (14, 2), (19, 2), (0, 100), (24, 1)] {
            assert!(
                matches!(
                    s.insert(region(base, n, 0), 'x'),
                    Err(RegionError::Overlaps { .. })
                ),
                "{base}+{n}"
            );
        }
        assert_eq!(
            s.insert(region(30, 0, 0), 'x'),
            Err(RegionError::Malformed(UserAddr(30 * PAGE)))
        );
        let unaligned = UserRegion {
            base: UserAddr(30 * PAGE + 1),
            ..region(30, 1, 0)
        };
        assert!(matches!(
            s.insert(unaligned, 'x'),
            Err(RegionError::Malformed(_))
        ));
        let wrap = UserRegion {
            base: UserAddr(u64::MAX - PAGE + 1),
            ..region(0, 2, 0)
        };
        assert!(matches!(s.insert(wrap, 'x'), Err(RegionError::Wraps(_))));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn a_fault_address_finds_its_region_and_page() {
        let mut s = RegionSet::default();
        s.insert(region(10, 5, 100), 'a').unwrap();
        s.insert(region(20, 5, 0), 'b').unwrap();
        let (r, v, p) = s.find(UserAddr(12 * PAGE + 77)).unwrap();
        assert_eq!((*v, p, r.base), ('a', PageNo(102), UserAddr(10 * PAGE)));
        assert_eq!(s.find(UserAddr(24 * PAGE)).map(|x| x.2), Some(PageNo(4)));
        for miss in [0, 9 * PAGE, 15 * PAGE, 19 * PAGE + 5, 25 * PAGE] {
            assert!(s.find(UserAddr(miss)).is_none(), "{miss:#x}");
        }
        s.retain(|_, v| *v == 'b');
        assert!(s.find(UserAddr(12 * PAGE)).is_none());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn range_of_clips_to_the_region() {
        let r = region(10, 5, 100);
        assert_eq!(
            r.range_of(PageNo(98), 4),
            Some(Range {
                start: 10 * PAGE,
                len: 2 * PAGE
            })
        );
        assert_eq!(r.range_of(PageNo(105), 3), None);
        assert_eq!(r.range_of(PageNo(90), 5), None);
    }

    proptest! {
        /// Whatever is inserted, the set never holds two regions sharing a byte, and a lookup
        /// agrees with a linear search.
        #[test]
        fn the_set_agrees_with_a_linear_model(
            ops in proptest::collection::vec((0u64..64, 1u64..8), 1..40),
            probes in proptest::collection::vec(0u64..80 * PAGE, 1..40),
        ) {
            let mut s = RegionSet::default();
            let mut model: Vec<UserRegion> = Vec::new();
            for (i, (base, n)) in ops.into_iter().enumerate() {
                let r = region(base, n, 0);
                let overlaps = model.iter().any(|m| r.base < m.end().unwrap() && m.base < r.end().unwrap());
                prop_assert_eq!(s.insert(r, i).is_ok(), !overlaps);
                if !overlaps {
                    model.push(r);
                }
            }
            for a in probes {
                let want = model.iter().find(|m| m.page_at(UserAddr(a)).is_some()).map(|m| m.base);
                prop_assert_eq!(s.find(UserAddr(a)).map(|(r, _, _)| r.base), want);
            }
        }
    }
}
